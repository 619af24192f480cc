"""What `llamakit info` shows: a plain-data description of a GGUF file (rendering lives in cli.py)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from .constants import GGMLType, Keys, TokenType, file_type_name
from .reader import GGUFReader

_LONG = 16  # arrays longer than this are summarised in --json output


def _fmt_count(n: int) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, list) and len(v) > _LONG:
        return {"array_length": len(v), "first": [_jsonable(x) for x in v[:8]]}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.generic,)):
        return v.item()
    return v


def describe(r: GGUFReader) -> dict[str, Any]:
    md = r.metadata
    arch = r.architecture or "?"

    def a(key: str) -> Any:
        return md.get(key.format(arch=arch))

    n_params = sum(t.n_elements for t in r.tensors)
    n_bytes = sum(t.nbytes for t in r.tensors)
    by_type: Counter[GGMLType] = Counter()
    bytes_by_type: Counter[GGMLType] = Counter()
    for t in r.tensors:
        by_type[t.ggml_type] += 1
        bytes_by_type[t.ggml_type] += t.nbytes
    tokens = md.get(Keys.TOK_TOKENS)
    types = md.get(Keys.TOK_TYPES)
    special = {}
    for key, label in ((Keys.TOK_BOS, "bos"), (Keys.TOK_EOS, "eos"), (Keys.TOK_EOT, "eot"),
                       (Keys.TOK_UNK, "unk"), (Keys.TOK_PAD, "pad"), (Keys.TOK_SEP, "sep")):
        if key in md:
            tid = int(md[key])
            text = tokens[tid] if tokens is not None and 0 <= tid < len(tokens) else "?"
            special[label] = {"id": tid, "text": text}
    ft = md.get(Keys.FILE_TYPE)
    return {
        "file": str(r.path),
        "gguf_version": r.version,
        "architecture": arch,
        "name": md.get(Keys.NAME),
        "file_type": file_type_name(int(ft)) if ft is not None else None,
        "parameters": n_params,
        "parameters_human": _fmt_count(n_params),
        "context_length": a(Keys.CONTEXT_LENGTH),
        "block_count": a(Keys.BLOCK_COUNT),
        "embedding_length": a(Keys.EMBEDDING_LENGTH),
        "feed_forward_length": a(Keys.FEED_FORWARD_LENGTH),
        "head_count": a(Keys.HEAD_COUNT),
        "head_count_kv": a(Keys.HEAD_COUNT_KV),
        "rope_freq_base": a(Keys.ROPE_FREQ_BASE),
        "vocab": {
            "model": md.get(Keys.TOK_MODEL),
            "pre": md.get(Keys.TOK_PRE),
            "size": len(tokens) if tokens is not None else None,
            "merges": len(md[Keys.TOK_MERGES]) if Keys.TOK_MERGES in md else None,
            "control_tokens": int((np.asarray(types) == TokenType.CONTROL).sum()) if types is not None else None,
            "special": special,
            "add_bos": md.get(Keys.TOK_ADD_BOS),
            "add_eos": md.get(Keys.TOK_ADD_EOS),
        },
        "chat_template": Keys.CHAT_TEMPLATE in md,
        "tensor_count": len(r.tensors),
        "tensor_types": [
            {"type": t.name, "count": by_type[t], "bytes": bytes_by_type[t]}
            for t in sorted(by_type, key=lambda t: -bytes_by_type[t])
        ],
        "tensor_bytes": n_bytes,
        "file_bytes": r.path.stat().st_size,
        "bits_per_weight": n_bytes * 8 / n_params if n_params else None,
    }


def metadata_json(r: GGUFReader) -> dict[str, Any]:
    return {k: _jsonable(v) for k, v in r.metadata.items()}


def tensors_json(r: GGUFReader) -> list[dict[str, Any]]:
    return [
        {"name": t.name, "type": t.ggml_type.name, "shape": list(t.shape), "offset": t.offset, "bytes": t.nbytes}
        for t in r.tensors
    ]
