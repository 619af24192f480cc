"""Session files: a context's tokens and KV cache, the sampler's random state and the chat so far, on disk.

Layout (little-endian), version 1:

    offset 0    8 bytes   magic b"LKSESS\\x00\\x01"
           8    u32       format version (1)
          12    u64       header length H
          20    H bytes   header: UTF-8 JSON (below)
       20 + H   D bytes   blobs, back to back, at the offsets the header gives (relative to 20 + H)
      end - 32  32 bytes  SHA-256 of every byte before it

    header = {"model": hex SHA-256 of the GGUF header (metadata + tensor infos: the model's identity and
              tensor layout), "n_ctx", "kv_dtype" ("float16" ...), "n_layer", "n_head_kv", "head_dim",
              "tokens": [ids in the context], "n_seq_tokens", "messages": [...] | null,
              "rng": blob, "kv": [[k blob, v blob] per layer], "extra": {...}}
    blob   = {"offset", "nbytes"}; K and V are (n_head_kv, len(tokens), head_dim) in kv_dtype, C order.

Only plain bytes and JSON are read back: no pickle anywhere. Every field is validated against the file size,
the checksum and the loading context before anything is changed, so a truncated, corrupted or foreign file is
an InputError and leaves the context as it was. Files are written to a temporary file and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..gguf import GGUFReader

MAGIC = b"LKSESS\x00\x01"
VERSION = 1
_PREFIX = struct.Struct("<8sIQ")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def model_identity(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a GGUF's header (version, metadata, tensor names, types, shapes and offsets)."""
    with GGUFReader(path) as r:
        n = r.data_offset
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while n > 0:
            chunk = f.read(min(n, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            n -= len(chunk)
    return h.hexdigest()


@dataclass
class SessionState:
    """What a session holds; also the in-memory state of Llama.save_state()."""
    model: str  # model_identity()
    n_ctx: int
    tokens: list[int]
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (n_head_kv, len(tokens), head_dim), CPU
    rng: torch.Tensor  # torch.Generator.get_state(), uint8
    messages: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kv_dtype(self) -> torch.dtype:
        return self.kv[0][0].dtype if self.kv else torch.float32

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k, _ in self.kv) + self.rng.numel()


def _dtype_name(dt: torch.dtype) -> str:
    for name, d in _DTYPES.items():
        if d == dt:
            return name
    raise InputError(f"session: KV cache type {dt} cannot be saved")


def _raw(t: torch.Tensor) -> bytes:
    return t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()


def write_session(path: str | os.PathLike[str], s: SessionState) -> Path:
    """Write `s` to `path` atomically (temporary file in the same directory, then rename)."""
    path = Path(path)
    blobs: list[bytes] = []
    offset = 0

    def add(data: bytes) -> dict[str, int]:
        nonlocal offset
        blobs.append(data)
        ref = {"offset": offset, "nbytes": len(data)}
        offset += len(data)
        return ref

    shape = tuple(s.kv[0][0].shape) if s.kv else (0, len(s.tokens), 0)
    header = {
        "model": s.model, "n_ctx": s.n_ctx, "kv_dtype": _dtype_name(s.kv_dtype), "n_layer": len(s.kv),
        "n_head_kv": shape[0], "head_dim": shape[2], "tokens": [int(t) for t in s.tokens],
        "messages": s.messages, "extra": s.extra,
        "rng": add(_raw(s.rng)), "kv": [[add(_raw(k)), add(_raw(v))] for k, v in s.kv],
    }
    head = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if not path.parent.is_dir():
        raise InputError(f"{path}: the directory {path.parent} does not exist")
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for part in (_PREFIX.pack(MAGIC, VERSION, len(head)), head, *blobs):
                h.update(part)
                f.write(part)
            f.write(h.digest())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def read_session(path: str | os.PathLike[str], *, model: str | None = None, n_ctx: int | None = None,
                 kv_dtype: torch.dtype | None = None, n_layer: int | None = None,
                 kv_shape: tuple[int, int] | None = None) -> SessionState:
    """Read and check a session file. The keyword arguments are what the loading context has: a file made for
    another model, a larger context or another cache layout is refused with a message saying which."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such session file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read the session file ({e.strerror})") from None

    def bad(what: str) -> InputError:
        return InputError(f"{path}: not a valid llamakit session file ({what})")

    if len(data) < _PREFIX.size + 32 or data[:8] != MAGIC:
        raise bad("wrong magic or too short") if data[:8] != MAGIC else bad("truncated")
    _, version, n_head = _PREFIX.unpack_from(data)
    if version != VERSION:
        raise InputError(f"{path}: session format version {version}, this llamakit reads version {VERSION}")
    if hashlib.sha256(data[:-32]).digest() != data[-32:]:
        raise bad("checksum mismatch: the file is truncated or corrupted")
    if _PREFIX.size + n_head > len(data) - 32:
        raise bad("header runs past the end")
    try:
        header = json.loads(data[_PREFIX.size:_PREFIX.size + n_head].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad("header is not JSON") from None
    base, end = _PREFIX.size + n_head, len(data) - 32
    try:
        tokens = [int(t) for t in header["tokens"]]
        dt = _DTYPES[header["kv_dtype"]]
        n_h, hd, nl = int(header["n_head_kv"]), int(header["head_dim"]), int(header["n_layer"])
        file_model, file_ctx = str(header["model"]), int(header["n_ctx"])
        refs = header["kv"]
        rng_ref = header["rng"]
        messages = header.get("messages")
        extra = dict(header.get("extra") or {})
    except (KeyError, TypeError, ValueError):
        raise bad("missing or malformed header fields") from None
    if model is not None and file_model != model:
        raise InputError(f"{path}: the session was saved with another model (or another file of it); "
                         f"load it with the model it was made with")
    if n_ctx is not None and len(tokens) > n_ctx:
        raise InputError(f"{path}: the session holds {len(tokens)} tokens, the context only {n_ctx}; "
                         f"use a context of at least {len(tokens)} (-c / n_ctx; it was saved with {file_ctx})")
    if kv_dtype is not None and dt != kv_dtype:
        raise InputError(f"{path}: the session's KV cache is {header['kv_dtype']}, this context's is "
                         f"{_dtype_name(kv_dtype)}")
    if n_layer is not None and nl != n_layer or kv_shape is not None and (n_h, hd) != tuple(kv_shape):
        raise InputError(f"{path}: the session's KV cache layout ({nl} layers, {n_h} heads x {hd}) does not "
                         f"match the model's")
    if not isinstance(refs, list) or len(refs) != nl:
        raise bad("KV layer count")

    def blob(ref: Any, nbytes: int | None, what: str) -> bytes:
        try:
            off, n = int(ref["offset"]), int(ref["nbytes"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"{what}: malformed blob reference") from None
        if off < 0 or n < 0 or base + off + n > end or (nbytes is not None and n != nbytes):
            raise bad(f"{what}: size or offset out of range")
        return data[base + off:base + off + n]

    per = n_h * len(tokens) * hd * torch.empty((), dtype=dt).element_size()
    kv = []
    for i, pair in enumerate(refs):
        if not isinstance(pair, list) or len(pair) != 2:
            raise bad(f"layer {i}")
        k, v = (torch.frombuffer(bytearray(blob(r, per, f"layer {i}")), dtype=torch.uint8).view(dt)
                .reshape(n_h, len(tokens), hd) if per else torch.empty((n_h, 0, hd), dtype=dt) for r in pair)
        kv.append((k, v))
    rng = torch.frombuffer(bytearray(blob(rng_ref, torch.Generator().get_state().numel(), "rng")),
                          dtype=torch.uint8)
    if messages is not None and not (isinstance(messages, list) and all(isinstance(m, dict) for m in messages)):
        raise bad("messages")
    return SessionState(file_model, file_ctx, tokens, kv, rng, messages, extra)


def capture(comp: Any, model: str, messages: list[dict[str, Any]] | None = None,
            extra: dict[str, Any] | None = None) -> SessionState:
    """The state of a Completer (its sequence's tokens and KV cache, its random state) as a SessionState."""
    return SessionState(model, comp.n_ctx, list(comp.tokens), comp.ctx.kv_export(comp.seq) if comp.seq
                        else comp.ctx.kv_export(), comp.rng.get_state(),
                        [dict(m) for m in messages] if messages is not None else None, dict(extra or {}))


def restore(comp: Any, st: SessionState) -> None:
    """Put a SessionState into a Completer (checked by read_session or the caller)."""
    if len(st.tokens) > comp.n_ctx:
        raise InputError(f"the session holds {len(st.tokens)} tokens, the context only {comp.n_ctx}")
    if st.kv and int(st.kv[0][0].shape[1]) != len(st.tokens):
        raise InputError("the session's KV cache does not match its tokens")
    comp.ctx.kv_import(st.kv, comp.seq) if comp.seq else comp.ctx.kv_import(st.kv)
    comp.tokens = list(st.tokens)
    comp.rng.set_state(st.rng.clone())


def read_for(path: str | os.PathLike[str], comp: Any, model: str) -> SessionState:
    """read_session checked against a Completer's context and model identity."""
    k = comp.ctx.cache.layers[0][0]
    return read_session(path, model=model, n_ctx=comp.n_ctx, kv_dtype=k.dtype, n_layer=len(comp.ctx.cache.layers),
                        kv_shape=(int(k.shape[0]), int(k.shape[2])))
