"""Vocabulary -> `tokenizer.*` metadata, in the keys, value types and order llama.cpp's converter writes.

Order of LlamaModel.set_vocab (convert_hf_to_gguf.py at c392e50):
  SentencePiece (tokenizer.model):  model="llama", pre="default", tokens, scores, token_type
  byte-level BPE (tokenizer.json):  model="gpt2", pre=<detected>, tokens, token_type, merges
  then the special vocab:           <type>_token_id (bos, eos, unk, sep, pad, mask in the order first set),
                                    add_bos_token / add_eos_token, chat_template
  then:                             eot_token_id (CodeLlama, vocab 32016), add_space_prefix (tokenizer_config's
                                    add_prefix_space), add_bos_token=False when vocab_size == 49152
Types: tokens/merges STRING arrays, scores FLOAT32 array, token_type INT32 array, ids UINT32, flags BOOL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, UnsupportedError
from ..gguf import GGUFValue, GGUFValueType, Keys, TokenType
from .source import read_json

T = GGUFValueType
_SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
_ID_KEYS = {"bos": Keys.TOK_BOS, "eos": Keys.TOK_EOS, "unk": Keys.TOK_UNK, "sep": Keys.TOK_SEP,
            "pad": Keys.TOK_PAD, "mask": Keys.TOK_MASK}  # cls has no GGUF key: llama.cpp skips it
_ADD_KEYS = {"bos": Keys.TOK_ADD_BOS, "eos": Keys.TOK_ADD_EOS}


def looks_special(text: str) -> bool:
    """Added tokens some models forget to mark special (convert_hf_to_gguf.py does_token_look_special)."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


@dataclass
class SpecialVocab:
    """Special token ids, add_* flags, merges and chat template, read like gguf-py's SpecialVocab."""

    ids: dict[str, int] = field(default_factory=dict)
    add: dict[str, bool] = field(default_factory=dict)
    merges: list[str] = field(default_factory=list)
    chat_template: Any = None

    def set_id(self, typ: str, tid: Any, n_vocab: int | None, warnings: list[str], where: Path) -> None:
        if not isinstance(tid, int) or isinstance(tid, bool):
            return  # lists (e.g. Llama 3.1's eos_token_id) and nulls are ignored, as llama.cpp does
        if tid < 0:
            raise InputError(f"{where}: invalid {typ} token id {tid}")
        if n_vocab is not None and tid >= n_vocab:
            warnings.append(f"{where.name}: {typ} token id {tid} is outside the vocabulary of {n_vocab}; skipped")
            return
        self.ids.setdefault(typ, tid)  # the first setting wins

    def kvs(self, out: dict[str, GGUFValue], warnings: list[str]) -> None:
        if self.merges:
            out[Keys.TOK_MERGES] = GGUFValue(self.merges, T.ARRAY, T.STRING)
        for typ, tid in self.ids.items():
            if typ in _ID_KEYS:
                out[_ID_KEYS[typ]] = GGUFValue(tid, T.UINT32)
        for typ, flag in self.add.items():
            if typ in _ADD_KEYS:
                out[_ADD_KEYS[typ]] = GGUFValue(flag, T.BOOL)
        add_chat_template(out, self.chat_template)


def add_chat_template(out: dict[str, GGUFValue], tmpl: Any) -> None:
    """A string, or the list form [{"name": ..., "template": ...}] (gguf_writer.add_chat_template)."""
    if tmpl is None:
        return
    if isinstance(tmpl, str):
        out[Keys.CHAT_TEMPLATE] = GGUFValue(tmpl, T.STRING)
        return
    default, names = None, []
    for choice in tmpl:
        if not isinstance(choice, dict):
            continue
        name = "".join(c if c.isascii() and c.isalnum() else "_" for c in str(choice.get("name", "")))
        template = choice.get("template")
        if not name or template is None:
            continue
        if name == "default":
            default = template
        elif name not in names:
            names.append(name)  # llama.cpp collects these in a set (arbitrary order); llamakit keeps file order
            out[f"{Keys.CHAT_TEMPLATE}.{name}"] = GGUFValue(template, T.STRING)
    if names:
        out["tokenizer.chat_templates"] = GGUFValue(names, T.ARRAY, T.STRING)
    if default is not None:
        out[Keys.CHAT_TEMPLATE] = GGUFValue(default, T.STRING)


def _merges_from_tokenizer_json(tj: dict[str, Any], where: Path) -> list[str]:
    merges = (tj.get("model") or {}).get("merges")
    if not isinstance(merges, list) or not merges:
        return []
    if isinstance(merges[0], str):
        return merges
    if isinstance(merges[0], list) and len(merges[0]) == 2 and isinstance(merges[0][0], str):
        # pair form (transformers >= 4.45): spaces inside a part are stored as U+0120, like byte-level tokens
        return [" ".join(p.replace(" ", "\u0120") for p in pair) for pair in merges]
    raise InputError(f"{where}: unknown merges format in model.merges")


def _merges_txt(path: Path) -> list[str]:
    merges = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            line = line.strip()
            if not line or (i == 0 and line.startswith("#")):
                continue
            parts = line.split(None, 3)
            if len(parts) == 2:
                merges.append(f"{parts[0]} {parts[1]}")
    return merges


def load_special_vocab(directory: Path, n_vocab: int | None, load_merges: bool, warnings: list[str],
                       config: dict[str, Any] | None = None,
                       tokenizer_config: dict[str, Any] | None = None) -> SpecialVocab:
    """tokenizer.json (added tokens, merges), then tokenizer_config.json (chat template, add_* flags, special
    token texts resolved through the added tokens), then config.json's <type>_token_id for types still unset.
    `config` / `tokenizer_config` stand in for missing files (Meta checkpoints)."""
    sv = SpecialVocab()
    tj_path = directory / "tokenizer.json"
    added: list[dict[str, Any]] = []
    if tj_path.is_file():
        tj = read_json(tj_path)
        if load_merges:
            sv.merges = _merges_from_tokenizer_json(tj, tj_path)
        added = [a for a in tj.get("added_tokens") or [] if isinstance(a, dict)]
    tc_path = directory / "tokenizer_config.json"
    tc = read_json(tc_path) if tc_path.is_file() else tokenizer_config
    if tc is not None:
        tmpl = tc.get("chat_template")
        if tmpl is None and (directory / "chat_template.jinja").is_file():
            # transformers >= 4.47 saves the template beside tokenizer_config.json (llama.cpp c392e50 predates it)
            tmpl = (directory / "chat_template.jinja").read_text(encoding="utf-8")
        if tmpl is None or isinstance(tmpl, (str, list)):
            sv.chat_template = tmpl
        else:
            warnings.append(f"{tc_path.name}: chat_template is neither a string nor a list; ignored")
        for typ in _SPECIAL_TYPES:
            flag = tc.get(f"add_{typ}_token")
            if isinstance(flag, bool):
                sv.add[typ] = flag
            entry = tc.get(f"{typ}_token")
            content = entry.get("content") if isinstance(entry, dict) else entry
            if not isinstance(content, str):
                continue
            tid = next((a.get("id") for a in added if a.get("content") == content), None)
            sv.set_id(typ, tid, n_vocab, warnings, tc_path)
    cfg_path = directory / "config.json"
    cfg = read_json(cfg_path) if cfg_path.is_file() else config
    if cfg is not None:
        for typ in _SPECIAL_TYPES:
            sv.set_id(typ, cfg.get(f"{typ}_token_id"), n_vocab, warnings, cfg_path)
    if load_merges and not sv.merges and (directory / "merges.txt").is_file():
        sv.merges = _merges_txt(directory / "merges.txt")
    if "cls" in sv.ids:
        warnings.append(f"cls token id {sv.ids['cls']} has no GGUF key; skipped (as llama.cpp does)")
    return sv


# -- SentencePiece --------------------------------------------------------------------------------------------

def is_tiktoken_file(path: Path) -> bool:
    """Llama 3's tokenizer.model is tiktoken text ('<base64> <rank>' lines), not a SentencePiece protobuf."""
    with open(path, "rb") as f:
        head = f.read(256)
    return re.match(rb"[A-Za-z0-9+/=]+ \d+\n", head) is not None


def sentencepiece_vocab(directory: Path, vocab_size: int | None,
                        warnings: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """tokens, scores (float32), token types (int32) from tokenizer.model plus added_tokens.json and
    tokenizer_config.json's added_tokens_decoder (convert_hf_to_gguf.py _create_vocab_sentencepiece)."""
    from sentencepiece import SentencePieceProcessor

    path = directory / "tokenizer.model"
    if is_tiktoken_file(path):
        raise UnsupportedError(
            f"{path}: this is a tiktoken (Llama 3) vocabulary, not SentencePiece; put the tokenizer.json and "
            "tokenizer_config.json of the matching Hugging Face release beside it and convert again")
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as e:
        raise InputError(f"{path}: not a SentencePiece model ({str(e).strip()[:120]})") from None
    n_sp = sp.vocab_size()
    n = n_sp if vocab_size is None else vocab_size
    if n_sp > n:
        raise InputError(f"{path}: {n_sp} pieces but the model's vocab_size is {n}; the tokenizer does not "
                         "belong to these weights")
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = np.full(n, -10000.0, dtype=np.float32)
    types = np.full(n, TokenType.UNUSED, dtype=np.int32)
    for i in range(n_sp):
        tokens[i] = sp.IdToPiece(i)
        scores[i] = sp.GetScore(i)
        if sp.IsUnknown(i):
            types[i] = TokenType.UNKNOWN
        elif sp.IsControl(i):
            types[i] = TokenType.CONTROL
        elif sp.IsUnused(i):
            types[i] = TokenType.UNUSED
        elif sp.IsByte(i):
            types[i] = TokenType.BYTE
        else:
            types[i] = TokenType.NORMAL
    added_path = directory / "added_tokens.json"
    if added_path.is_file():
        for text, tid in read_json(added_path).items():
            if not isinstance(tid, int) or not 0 <= tid < n:
                warnings.append(f"{added_path.name}: token {text!r} has id {tid} outside the vocabulary; ignored")
                continue
            tokens[tid], scores[tid], types[tid] = text, -1000.0, TokenType.USER_DEFINED
    tc_path = directory / "tokenizer_config.json"
    if tc_path.is_file():
        for key, data in (read_json(tc_path).get("added_tokens_decoder") or {}).items():
            tid = int(key)
            text = data.get("content") if isinstance(data, dict) else None
            if not isinstance(text, str) or not 0 <= tid < n:
                warnings.append(f"{tc_path.name}: added token {key} is outside the vocabulary; ignored")
                continue
            if data.get("special") or looks_special(text):
                types[tid] = TokenType.CONTROL
            else:
                text = text.replace("\u2581", " ")  # user-defined tokens are matched pre-normalized
                types[tid] = TokenType.USER_DEFINED
            tokens[tid], scores[tid] = text, -1000.0
    return tokens, scores, types


# -- byte-level BPE (tokenizer.json) ----------------------------------------------------------------------------

def load_tokenizer_json(path: Path) -> Any:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception subclass for any parse problem
        raise InputError(f"{path}: cannot load with the tokenizers library ({str(e).strip()[:160]})") from None


def bpe_vocab(directory: Path, vocab_size: int | None,
              warnings: list[str]) -> tuple[list[str], np.ndarray, str]:
    """tokens, token types, pre-tokenizer name (convert_hf_to_gguf.py get_vocab_base / get_vocab_base_pre)."""
    from .pretok import detect_pre

    path = directory / "tokenizer.json"
    tok = load_tokenizer_json(path)
    vocab: dict[str, int] = tok.get_vocab(with_added_tokens=True)
    n = len(vocab) if vocab_size is None else vocab_size
    if vocab and max(vocab.values()) >= n:
        raise InputError(f"{path}: token id {max(vocab.values())} is beyond the model's vocab_size {n}")
    pre, warn = detect_pre(tok)
    if warn:
        warnings.append(f"{path.name}: {warn}")
    reverse = {i: t for t, i in vocab.items()}
    added = tok.get_added_tokens_decoder()  # id -> AddedToken
    added_texts = {a.content for a in added.values()}
    tokens: list[str] = []
    types = np.empty(n, dtype=np.int32)
    for i in range(n):
        text = reverse.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types[i] = TokenType.UNUSED
            continue
        if text in added_texts and i in added:
            a = added[i]
            if not a.normalized:  # llama.cpp's tokenizer expects added tokens in normalized form
                text = tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False)
            if a.special or looks_special(text):
                types[i] = TokenType.CONTROL
            else:
                text = text.replace("\u2581", " ")
                types[i] = TokenType.USER_DEFINED
        else:
            types[i] = TokenType.NORMAL
        tokens.append(text)
    return tokens, types, pre


def _check_bpe_json(path: Path) -> None:
    """Only byte-level BPE tokenizer.json files become gpt2 vocabularies here."""
    tj = read_json(path)
    model = (tj.get("model") or {}) if isinstance(tj, dict) else {}
    decoder = (tj.get("decoder") or {}) if isinstance(tj, dict) else {}
    if model.get("type") != "BPE":
        raise UnsupportedError(f"{path}: a {model.get('type')!r} tokenizer; llamakit converts SentencePiece "
                               "(tokenizer.model) and byte-level BPE vocabularies")
    if model.get("byte_fallback") and decoder.get("type") == "Sequence":
        # a Llama-2-style tokenizer.json: SentencePiece in disguise (llama.cpp's LlamaHfVocab, needs transformers)
        raise UnsupportedError(f"{path}: a SentencePiece-style BPE tokenizer.json without tokenizer.model; put the "
                               "model's tokenizer.model beside it")


def vocab_metadata(directory: Path, vocab_size: int | None, warnings: list[str],
                   config: dict[str, Any] | None = None,
                   tokenizer_config: dict[str, Any] | None = None) -> dict[str, GGUFValue]:
    """All tokenizer.* keys for a llama checkpoint directory, in llama.cpp's order.
    config / tokenizer_config: stand-ins for config.json / tokenizer_config.json when the directory has none."""
    out: dict[str, GGUFValue] = {}
    if (directory / "tokenizer.model").is_file() and not (
            (directory / "tokenizer.json").is_file() and is_tiktoken_file(directory / "tokenizer.model")):
        tokens, scores, types = sentencepiece_vocab(directory, vocab_size, warnings)
        out[Keys.TOK_MODEL] = GGUFValue("llama", T.STRING)
        out[Keys.TOK_PRE] = GGUFValue("default", T.STRING)
        out[Keys.TOK_TOKENS] = GGUFValue(tokens, T.ARRAY, T.STRING)
        out[Keys.TOK_SCORES] = GGUFValue(scores, T.ARRAY, T.FLOAT32)
        out[Keys.TOK_TYPES] = GGUFValue(types, T.ARRAY, T.INT32)
        sv = load_special_vocab(directory, len(tokens), False, warnings, config, tokenizer_config)
    elif (directory / "tokenizer.json").is_file():
        _check_bpe_json(directory / "tokenizer.json")
        tokens, types, pre = bpe_vocab(directory, vocab_size, warnings)
        out[Keys.TOK_MODEL] = GGUFValue("gpt2", T.STRING)
        out[Keys.TOK_PRE] = GGUFValue(pre, T.STRING)
        out[Keys.TOK_TOKENS] = GGUFValue(tokens, T.ARRAY, T.STRING)
        out[Keys.TOK_TYPES] = GGUFValue(types, T.ARRAY, T.INT32)
        sv = load_special_vocab(directory, None, True, warnings, config, tokenizer_config)
        if not sv.merges:
            warnings.append("tokenizer.json has no merges (nor is there a merges.txt); the vocabulary may not work")
    else:
        raise InputError(f"{directory}: no tokenizer.model or tokenizer.json; copy the model's tokenizer files "
                         "into this directory")
    sv.kvs(out, warnings)

    n = vocab_size if vocab_size is not None else len(out[Keys.TOK_TOKENS].value)
    if n == 32016 and Keys.TOK_EOT not in out:  # CodeLlama: <EOT> is 32010 (its FIM ids have no GGUF key here)
        out[Keys.TOK_EOT] = GGUFValue(32010, T.UINT32)
    tc_path = directory / "tokenizer_config.json"
    tc = read_json(tc_path) if tc_path.is_file() else (tokenizer_config or {})
    if isinstance(tc.get("add_prefix_space"), bool):
        out[Keys.TOK_ADD_SPACE_PREFIX] = GGUFValue(tc["add_prefix_space"], T.BOOL)
    if n == 49152:
        # llama.cpp forces this for vocab size 49152 (meant for Granite; it hits SmolLM too). Where
        # tokenizer_config also sets add_bos_token, llama.cpp fails on the duplicate key; llamakit keeps the
        # first position and the forced value.
        out[Keys.TOK_ADD_BOS] = GGUFValue(False, T.BOOL)
    return out
