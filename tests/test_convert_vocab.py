"""Vocabulary conversion: pre-tokenizer detection, BPE/SentencePiece token tables, special tokens, chat templates.

gguf-py's SpecialVocab + GGUFWriter (the `gguf` package, llama.cpp's own code) is the oracle for which special
token keys are written, with which values, types and in which order.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from llamakit.convert import convert
from llamakit.convert.pretok import CHKHSH, CHKTXT, _candidates, chkhsh, detect_pre
from llamakit.errors import UnsupportedError
from llamakit.gguf import GGUFReader, GGUFValueType, TokenType

from .conftest import TINY

SRC = TINY / "source"


def test_check_text_is_llama_cpps() -> None:
    assert hashlib.sha256(CHKTXT.encode()).hexdigest() == \
        "a36179c1e2b1cfcfbfad1dc779addad2ffc778201e4cf0d538bddeafa2c526da"
    assert CHKHSH["0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5"] == "llama-bpe"
    assert CHKHSH["855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"] == "smollm"


def _byte_tokenizer(pre):  # type: ignore[no-untyped-def]
    """A byte-level BPE with only the 256 byte symbols (no merges): its chkhsh is in no table."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers import pre_tokenizers as pt

    alphabet = sorted(pt.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE({c: i for i, c in enumerate(alphabet)}, []))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    return tok


@pytest.mark.parametrize("name", [n for n, _ in _candidates()])
def test_unknown_tokenizer_falls_back_to_closest_pre_tokenizer(name: str) -> None:
    tok = _byte_tokenizer(dict(_candidates())[name])
    assert chkhsh(tok) not in CHKHSH
    pre, warning = detect_pre(tok)
    assert pre == name
    assert warning is not None and "not recognized" in warning and f"using '{name}'" in warning and "100%" in warning


def _bpe_model_dir(tmp_path: Path, vocab_size: int, tokenizer_config: dict, config_extra: dict | None = None) -> Path:
    """An HF directory with only config.json and a small byte-level BPE tokenizer (enough for --vocab-only)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from tokenizers import pre_tokenizers as pt

    d = tmp_path / "bpe"
    d.mkdir()
    alphabet = sorted(pt.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    for t in ("Ġt", "he", "Ġthe", "a b", "a bc"):
        vocab[t] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]))
    tok.pre_tokenizer = pt.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|begin|>", special=True, normalized=False),
                            AddedToken("<|end|>", special=True, normalized=False)])
    tok.add_tokens([AddedToken("<|tool|>", special=False, normalized=False),  # looks special -> CONTROL
                    AddedToken("\u2581hello", special=False, normalized=False)])  # user-defined, '▁' -> ' '
    tok.save(str(d / "tokenizer.json"))
    # transformers >= 4.45 pair form with a space inside a part
    tj = json.loads((d / "tokenizer.json").read_text())
    tj["model"]["merges"] = [["Ġ", "t"], ["h", "e"], ["Ġt", "he"], ["a b", "c"]]
    (d / "tokenizer.json").write_text(json.dumps(tj))
    cfg = json.loads((SRC / "hf" / "config.json").read_text())
    cfg["vocab_size"] = vocab_size
    cfg.pop("bos_token_id")
    cfg |= config_extra or {}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return d


def _oracle_special_keys(d: Path, tmp_path: Path) -> list[tuple[str, object, GGUFValueType]]:
    """The tokenizer keys gguf-py's SpecialVocab writes for this directory (llama.cpp's code path)."""
    import gguf

    w = gguf.GGUFWriter(tmp_path / "oracle.gguf", arch="llama")
    gguf.SpecialVocab(d, load_merges=True).add_to_gguf(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    with GGUFReader(tmp_path / "oracle.gguf") as r:
        return [(k, _plain(f.value), f.type) for k, f in r.fields.items() if k.startswith("tokenizer.")]


def _plain(v: object) -> object:
    return v.tolist() if isinstance(v, np.ndarray) else v


def test_bpe_vocab_special_tokens_and_templates(tmp_path: Path) -> None:
    templates = [{"name": "default", "template": "{{ messages }}"}, {"name": "tool-use", "template": "T"},
                 {"name": "rag", "template": "R"}]
    tc = {"chat_template": templates, "eos_token": "<|end|>", "pad_token": {"content": "<|begin|>"},
          "unk_token": "<nope>", "add_eos_token": True, "add_bos_token": False, "add_prefix_space": False}
    d = _bpe_model_dir(tmp_path, 272, tc, {"bos_token_id": 256, "eos_token_id": 3, "unk_token_id": [1, 2]})
    out = tmp_path / "v.gguf"
    convert(d, "f16", out, vocab_only=True)
    with GGUFReader(out) as r:
        md, fields = r.metadata, r.fields
        keys = [k for k in fields if k.startswith("tokenizer.")]
    assert md["tokenizer.ggml.model"] == "gpt2" and md["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.pre"].type == GGUFValueType.STRING
    tokens, types = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"]
    assert len(tokens) == 272 and fields["tokenizer.ggml.token_type"].elem_type == GGUFValueType.INT32
    assert tokens[256:265] == ["Ġt", "he", "Ġthe", "a b", "a bc", "<|begin|>", "<|end|>", "<|tool|>", " hello"]
    assert types[:261].tolist() == [TokenType.NORMAL] * 261
    assert types[261:265].tolist() == [TokenType.CONTROL, TokenType.CONTROL, TokenType.CONTROL,
                                       TokenType.USER_DEFINED]
    assert tokens[265:] == [f"[PAD{i}]" for i in range(265, 272)] and set(types[265:]) == {TokenType.UNUSED}
    assert md["tokenizer.ggml.merges"] == ["Ġ t", "h e", "Ġt he", "aĠb c"]
    # special ids, add_* flags and templates: what llama.cpp's own SpecialVocab writes, in its order
    ours = [(k, _plain(fields[k].value), fields[k].type) for k in keys]
    oracle = _oracle_special_keys(d, tmp_path)
    # llama.cpp gathers the template names in a set (order varies run to run); llamakit keeps the file's order
    unordered = lambda kvs: [(k, sorted(v) if k == "tokenizer.chat_templates" else v, t) for k, v, t in kvs]  # noqa
    assert unordered(ours[4:4 + len(oracle)]) == unordered(oracle)  # after model, pre, tokens, token_type
    assert md["tokenizer.ggml.eos_token_id"] == 262 and md["tokenizer.ggml.padding_token_id"] == 261
    assert md["tokenizer.ggml.bos_token_id"] == 256 and "tokenizer.ggml.unknown_token_id" not in md
    assert md["tokenizer.chat_template"] == "{{ messages }}" and md["tokenizer.chat_template.tool_use"] == "T"
    assert md["tokenizer.chat_templates"] == ["tool_use", "rag"]
    assert keys[-1] == "tokenizer.ggml.add_space_prefix" and md["tokenizer.ggml.add_space_prefix"] is False


def test_sentencepiece_added_tokens_padding_and_codellama_eot(tmp_path: Path) -> None:
    d = tmp_path / "spm"
    d.mkdir()
    shutil.copy(SRC / "hf" / "tokenizer.model", d)
    cfg = json.loads((SRC / "hf" / "config.json").read_text())
    cfg["vocab_size"] = 32016  # CodeLlama's size: padded with [PAD{i}], eot = 32010
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "added_tokens.json").write_text(json.dumps({"<extra>": 1000, "<way-out>": 40000}))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "chat_template": "{{ x }}",
        "added_tokens_decoder": {"1": {"content": "<s>", "special": True},
                                 "1001": {"content": "\u2581user", "special": False},
                                 "1002": {"content": "<|im_end|>", "special": False}}}))
    out = tmp_path / "s.gguf"
    convert(d, "f16", out, vocab_only=True)
    with GGUFReader(out) as r:
        md, fields = r.metadata, r.fields
    tokens, scores, types = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.scores"], md["tokenizer.ggml.token_type"]
    assert len(tokens) == len(scores) == len(types) == 32016
    assert (tokens[1000], scores[1000], types[1000]) == ("<extra>", -1000.0, TokenType.USER_DEFINED)
    assert (tokens[1001], types[1001]) == (" user", TokenType.USER_DEFINED)
    assert types[1002] == TokenType.CONTROL and types[1] == TokenType.CONTROL
    assert (tokens[5000], scores[5000], types[5000]) == ("[PAD5000]", -10000.0, TokenType.UNUSED)
    assert md["tokenizer.ggml.eot_token_id"] == 32010
    assert fields["tokenizer.ggml.scores"].elem_type == GGUFValueType.FLOAT32
    assert md["tokenizer.chat_template"] == "{{ x }}"
    assert md["tokenizer.ggml.bos_token_id"] == 1 and md["tokenizer.ggml.add_bos_token"] is True


def test_chat_template_jinja_file(tmp_path: Path) -> None:
    d = _bpe_model_dir(tmp_path, 265, {"eos_token": "<|end|>"})
    (d / "chat_template.jinja").write_text("{% for m in messages %}{{ m }}{% endfor %}")
    convert(d, "f16", tmp_path / "t.gguf", vocab_only=True)
    with GGUFReader(tmp_path / "t.gguf") as r:
        assert r.metadata["tokenizer.chat_template"] == "{% for m in messages %}{{ m }}{% endfor %}"


def test_llama3_tiktoken_tokenizer_model_is_explained(tmp_path: Path) -> None:
    d = tmp_path / "meta"
    shutil.copytree(SRC / "meta", d)
    (d / "tokenizer.model").chmod(0o644)
    (d / "tokenizer.model").write_text("IQ== 0\nIg== 1\nIw== 2\n")
    with pytest.raises(UnsupportedError, match="tiktoken .*tokenizer.json"):
        convert(d, "f16", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("kind", ["wordpiece", "spm-style-bpe"])
def test_unsupported_tokenizer_json_kinds(tmp_path: Path, kind: str) -> None:
    d = _bpe_model_dir(tmp_path, 265, {})
    tj = json.loads((d / "tokenizer.json").read_text())
    if kind == "wordpiece":
        tj["model"]["type"] = "WordPiece"
        match = "'WordPiece' tokenizer"
    else:
        tj["model"]["byte_fallback"] = True
        tj["decoder"] = {"type": "Sequence", "decoders": []}
        match = "without tokenizer.model"
    (d / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(UnsupportedError, match=match):
        convert(d, "f16", tmp_path / "x.gguf", vocab_only=True)
    assert not (tmp_path / "x.gguf").exists()
