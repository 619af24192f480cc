"""The vocabulary as llama.cpp loads it from `tokenizer.ggml.*` metadata (src/llama-vocab.cpp, impl::load).

Everything here is plain data: token texts, scores, attributes, special ids and the flags that steer
tokenization. The order of the steps matters and follows llama.cpp: defaults per tokenizer model, then the
pre-tokenizer name's flags, then the metadata keys, then special tokens detected by their text (which may
turn a token into a CONTROL token), then the cache of special tokens used to split the prompt.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from enum import IntFlag
from typing import Any, Mapping, Sequence

from ..errors import InputError, UnsupportedError
from .pretokenize import PRE_TOKENIZERS, PreTokenizer
from .stdmap import iteration_order


class Attr(IntFlag):
    """llama_token_attr (include/llama.h)."""

    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    NORMALIZED = 1 << 6
    LSTRIP = 1 << 7
    RSTRIP = 1 << 8
    SINGLE_WORD = 1 << 9


# tokenizer.ggml.token_type values (llama_token_type) -> attribute; anything else is UNDEFINED.
_TYPE_TO_ATTR = {
    0: Attr.UNDEFINED, 1: Attr.NORMAL, 2: Attr.UNKNOWN, 3: Attr.CONTROL, 4: Attr.USER_DEFINED, 5: Attr.UNUSED,
    6: Attr.BYTE,
}

K = "tokenizer.ggml."

# Key -> field, in llama.cpp's order (later keys overwrite earlier ones: the deprecated prefix/suffix/middle
# ids come last and win over fim_*).
_SPECIAL_ID_KEYS = (
    ("bos_token_id", "bos"), ("eos_token_id", "eos"), ("eot_token_id", "eot"), ("eom_token_id", "eom"),
    ("unknown_token_id", "unk"), ("seperator_token_id", "sep"), ("padding_token_id", "pad"),
    ("mask_token_id", "mask"), ("fim_pre_token_id", "fim_pre"), ("fim_suf_token_id", "fim_suf"),
    ("fim_mid_token_id", "fim_mid"), ("fim_pad_token_id", "fim_pad"), ("fim_rep_token_id", "fim_rep"),
    ("fim_sep_token_id", "fim_sep"), ("prefix_token_id", "fim_pre"), ("suffix_token_id", "fim_suf"),
    ("middle_token_id", "fim_mid"),
)

# Special tokens found by their text when the metadata does not name them (llama-vocab.cpp ~1763-1950).
# llama.cpp walks an unordered_map, so when a vocabulary has two candidates for the same role the winner
# depends on the hash table's layout: stdmap.py reproduces libstdc++'s.
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>",
              "<｜end▁of▁sentence｜>")
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_PRE_TEXTS = ("<|fim_prefix|>", "<fim-prefix>", "<｜fim▁begin｜>", "<PRE>")
_FIM_SUF_TEXTS = ("<|fim_suffix|>", "<fim-suffix>", "<｜fim▁hole｜>", "<SUF>")
_FIM_MID_TEXTS = ("<|fim_middle|>", "<fim-middle>", "<｜fim▁end｜>", "<MID>")
_FIM_PAD_TEXTS = ("<|fim_pad|>", "<fim-pad>", "<PAD>")
_FIM_REP_TEXTS = ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>")
_FIM_SEP_TEXTS = ("<|file_sep|>",)
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>")


@dataclass
class Vocab:
    """What llama.cpp's llama_vocab holds after load(), for the SPM and BPE tokenizer models."""

    model: str  # "llama" (SentencePiece-style) or "gpt2" (byte-level BPE)
    pre: str  # the tokenizer.ggml.pre name as given ("" when absent)
    pre_tokenizer: PreTokenizer | None  # BPE only
    texts: list[str]
    scores: list[float]
    attrs: list[int]
    token_to_id: dict[str, int]
    merges: list[tuple[str, str]]  # BPE: rank = index (first occurrence wins)
    special: dict[str, int | None] = field(default_factory=dict)  # bos, eos, eot, eom, unk, sep, pad, ...
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False
    ignore_merges: bool = False
    clean_spaces: bool = False
    eog_ids: frozenset[int] = frozenset()
    special_cache: tuple[int, ...] = ()  # CONTROL/USER_DEFINED/UNKNOWN ids, longest text first

    @property
    def n_vocab(self) -> int:
        return len(self.texts)


def _get(md: Mapping[str, Any], key: str, default: Any = None) -> Any:
    return md.get(K + key, default)


def _as_bool(v: Any, key: str) -> bool:
    if isinstance(v, (bool, int)) or type(v).__name__.startswith("bool"):
        return bool(v)
    raise InputError(f"GGUF metadata {K}{key} should be a bool, got {v!r}: fix or regenerate the file")


def load_vocab(md: Mapping[str, Any]) -> Vocab:
    """Build a Vocab from the dict of `GGUFReader.metadata` (plain values; arrays as lists/numpy arrays)."""
    model = _get(md, "model")
    if model is None:
        raise InputError(f"GGUF metadata has no {K}model: this file carries no tokenizer (convert it with one)")
    model = str(model)
    if model in ("no_vocab", "none", "bert", "t5", "rwkv"):
        raise UnsupportedError(
            f"tokenizer model {model!r} ({K}model) is not supported by llamakit: only 'llama' (SentencePiece) "
            "and 'gpt2' (byte-level BPE) vocabularies are")
    if model not in ("llama", "gpt2"):
        raise UnsupportedError(f"unknown tokenizer model {model!r} in {K}model: llamakit supports 'llama' and 'gpt2'")

    pre = str(_get(md, "pre", "") or "")
    special: dict[str, int | None] = dict.fromkeys(
        ("bos", "eos", "eot", "eom", "unk", "sep", "pad", "mask",
         "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep"))
    pre_tok: PreTokenizer | None = None
    merges: list[tuple[str, str]] = []
    if model == "llama":
        special.update(bos=1, eos=2, unk=0)
        add_space_prefix, clean_spaces, add_bos, add_eos, ignore_merges = True, False, True, False, False
    else:
        raw_merges = _get(md, "merges")
        if raw_merges is None:
            raise InputError(f"GGUF metadata has no {K}merges, which a 'gpt2' vocabulary needs: regenerate the file")
        merges = _parse_merges(raw_merges)
        special.update(bos=11, eos=11)
        if pre == "":
            warnings.warn(f"{K}pre is missing: using the 'default' pre-tokenizer as llama.cpp does; "
                          "tokenization quality may be degraded (regenerate the GGUF)", stacklevel=3)
            name = "default"
        else:
            name = pre
        pre_tok = PRE_TOKENIZERS.get(name)
        if pre_tok is None:
            raise UnsupportedError(
                f"unknown BPE pre-tokenizer {pre!r} in {K}pre: llamakit knows "
                + ", ".join(sorted(PRE_TOKENIZERS)))
        add_space_prefix, clean_spaces, add_bos, add_eos = False, pre_tok.clean_spaces, pre_tok.add_bos, False
        ignore_merges = pre_tok.ignore_merges
        if pre_tok.no_bos:
            special["bos"] = None

    v = _get(md, "add_space_prefix")
    if v is not None:
        add_space_prefix = _as_bool(v, "add_space_prefix")

    tokens = _get(md, "tokens")
    if tokens is None:
        raise InputError(f"GGUF metadata has no {K}tokens: this file carries no vocabulary")
    texts = [str(t) for t in tokens]
    n = len(texts)
    if n == 0:
        raise InputError(f"{K}tokens is empty: regenerate the file")
    scores_raw = _get(md, "scores")
    types_raw = _get(md, "token_type")
    if scores_raw is not None and len(scores_raw) < n:
        raise InputError(f"{K}scores has {len(scores_raw)} entries for {n} tokens: regenerate the file")
    if types_raw is not None and len(types_raw) < n:
        raise InputError(f"{K}token_type has {len(types_raw)} entries for {n} tokens: regenerate the file")
    # float32 values widened to Python floats: comparisons between them are unchanged
    scores = [float(s) for s in scores_raw[:n]] if scores_raw is not None else [0.0] * n
    if types_raw is not None:
        to_attr = {k: int(v) for k, v in _TYPE_TO_ATTR.items()}
        attrs = [to_attr.get(t, 0) for t in map(int, types_raw[:n])]
    else:
        attrs = [int(Attr.NORMAL)] * n

    token_to_id: dict[str, int] = {}
    for i, t in enumerate(texts):
        if t == "":
            t = texts[i] = f"[EMPTY_{i}]"
        first = token_to_id.setdefault(t, i)
        if first != i:  # llama.cpp aborts on such a vocabulary (id_to_token and token_to_id sizes differ)
            raise InputError(f"GGUF metadata {K}tokens has {t!r} twice (ids {first} and {i}): the vocabulary is "
                             "corrupt; re-convert the model")

    for key, name in _SPECIAL_ID_KEYS:
        val = _get(md, key)
        if val is None:
            continue
        val = int(val)
        if 0 <= val < n:
            special[name] = val
        else:
            warnings.warn(f"bad special token {K}{key} = {val} (vocabulary has {n} tokens): "
                          f"keeping the default {special[name]}", stacklevel=3)

    v = _get(md, "add_bos_token")
    if v is not None:
        add_bos = _as_bool(v, "add_bos_token")
    v = _get(md, "add_eos_token")
    if v is not None:
        add_eos = _as_bool(v, "add_eos_token")

    roles = (("eot", _EOT_TEXTS), ("eom", _EOM_TEXTS), ("fim_pre", _FIM_PRE_TEXTS), ("fim_suf", _FIM_SUF_TEXTS),
             ("fim_mid", _FIM_MID_TEXTS), ("fim_pad", _FIM_PAD_TEXTS), ("fim_rep", _FIM_REP_TEXTS),
             ("fim_sep", _FIM_SEP_TEXTS))
    found = {role: [token_to_id[t] for t in texts if t in token_to_id] for role, texts in roles
             if special[role] is None}
    rank: dict[int, int] = {}
    if any(len(ids) > 1 for ids in found.values()):
        # llama.cpp takes the candidate its unordered_map lists first: emulate libstdc++ (Linux builds)
        order = iteration_order([t.encode("utf-8") for t in texts])
        if order is not None:
            rank = {tid: r for r, tid in enumerate(order)}
    for role, ids in found.items():
        if ids:
            tid = min(ids, key=lambda i: rank.get(i, 0))  # without a rank: the first in llama.cpp's list
            special[role] = tid
            if not attrs[tid] & Attr.CONTROL:
                attrs[tid] = int(Attr.CONTROL)  # llama.cpp overrides the type (assignment, not OR)

    eog: set[int] = set()
    for role in ("fim_pad", "fim_rep", "fim_sep"):
        if special[role] is not None:
            eog.add(special[role])  # type: ignore[arg-type]
    for text in _EOG_TEXTS:
        tid = token_to_id.get(text)
        if tid is not None:
            eog.add(tid)
            if not attrs[tid] & Attr.CONTROL:
                attrs[tid] = int(Attr.CONTROL)
    for role in ("eos", "eot", "eom"):
        if special[role] is not None:
            eog.add(special[role])  # type: ignore[arg-type]

    # Tokens that split the prompt before tokenization, longest text first. llama.cpp uses std::sort (not
    # stable); we break ties by id.
    wanted = int(Attr.CONTROL | Attr.USER_DEFINED | Attr.UNKNOWN)
    cache = [i for i in range(n) if attrs[i] & wanted]
    cache.sort(key=lambda i: -len(texts[i].encode("utf-8")))

    # Per-model attribute tweaks llama.cpp applies by name.
    name = str(md.get("general.name", "") or "").lower()
    if any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")):
        if "<mask>" in token_to_id:
            attrs[token_to_id["<mask>"]] |= int(Attr.LSTRIP)
    elif "phi-3" in name or "phi3" in name:
        for i in cache:
            attrs[i] |= int(Attr.RSTRIP)
        for text, on in (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False)):
            tid = token_to_id.get(text)
            if tid is None:
                raise InputError(f"phi-3 vocabulary without the token {text!r}: the file looks damaged")
            attrs[tid] = attrs[tid] | int(Attr.RSTRIP) if on else attrs[tid] & ~int(Attr.RSTRIP)

    return Vocab(
        model=model, pre=pre, pre_tokenizer=pre_tok, texts=texts, scores=scores, attrs=attrs,
        token_to_id=token_to_id, merges=merges, special=special, add_bos=add_bos, add_eos=add_eos,
        add_space_prefix=add_space_prefix, ignore_merges=ignore_merges, clean_spaces=clean_spaces,
        eog_ids=frozenset(eog), special_cache=tuple(cache),
    )


def _parse_merges(raw: Sequence[str]) -> list[tuple[str, str]]:
    """'left right' strings -> pairs, split at the first space after the first character (llama.cpp:
    `word.find(' ', 1)`; a line without one gives an empty pair). The first rank of a repeated pair wins."""
    out: list[tuple[str, str]] = []
    for m in raw:
        m = str(m)
        pos = m.find(" ", 1)
        out.append((m[:pos], m[pos + 1 :]) if pos >= 0 else ("", ""))
    return out
