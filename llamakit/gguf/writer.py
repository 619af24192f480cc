"""GGUF writer: metadata in insertion order, tensor infos, aligned data streamed tensor by tensor.

Calls must come in order (the writer refuses anything else):
    with GGUFWriter(path) as w:
        w.add("general.architecture", "llama")               # any number of KVs
        w.add_tensor_info("token_embd.weight", (32000, 4096), GGMLType.F16)
        w.write_header()                                      # header + KVs + tensor infos + padding
        w.write_tensor("token_embd.weight", data)             # in add_tensor_info order
The file is written to `<target>.tmp-<pid>` beside the target and renamed only when the `with` block ends
without an exception, so a failure or Ctrl-C leaves neither a partial model nor the temp file.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import InputError
from .constants import (
    GGML_BLOCK,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGUF_VERSION,
    SCALAR_DTYPE,
    SCALAR_STRUCT,
    GGMLType,
    GGUFValueType,
    Keys,
    tensor_nbytes,
)
from .reader import GGUFValue


def _infer(value: Any) -> GGUFValue:
    """Default value types for plain Python values: bool, u32/i32/u64/i64 by range, f32, str, arrays."""
    if isinstance(value, GGUFValue):
        return value
    if isinstance(value, bool):
        return GGUFValue(value, GGUFValueType.BOOL)
    if isinstance(value, int):
        if 0 <= value < 1 << 32:
            return GGUFValue(value, GGUFValueType.UINT32)
        if -(1 << 31) <= value < 0:
            return GGUFValue(value, GGUFValueType.INT32)
        return GGUFValue(value, GGUFValueType.UINT64 if value >= 0 else GGUFValueType.INT64)
    if isinstance(value, float):
        return GGUFValue(value, GGUFValueType.FLOAT32)
    if isinstance(value, str):
        return GGUFValue(value, GGUFValueType.STRING)
    if isinstance(value, np.ndarray):
        by_dtype = {np.dtype(v): k for k, v in SCALAR_DTYPE.items() if k != GGUFValueType.BOOL}
        etype = GGUFValueType.BOOL if value.dtype == bool else by_dtype[value.dtype.newbyteorder("<")]
        return GGUFValue(value, GGUFValueType.ARRAY, etype)
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("cannot infer the element type of an empty list; pass a GGUFValue")
        first = _infer(value[0])
        return GGUFValue(list(value), GGUFValueType.ARRAY, first.type)
    raise TypeError(f"no GGUF type for {type(value).__name__}")


def _encode_str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _encode_value(v: Any, vtype: GGUFValueType, elem_type: GGUFValueType | None) -> bytes:
    if vtype == GGUFValueType.STRING:
        return _encode_str(v)
    if vtype == GGUFValueType.ARRAY:
        assert elem_type is not None
        head = struct.pack("<IQ", elem_type, len(v))
        if elem_type in SCALAR_DTYPE:
            return head + np.asarray(v).astype(SCALAR_DTYPE[elem_type]).tobytes()
        if elem_type == GGUFValueType.STRING:
            return head + b"".join(_encode_str(s) for s in v)
        # nested arrays: the element type of inner arrays is inferred
        return head + b"".join(_encode_inner(x) for x in v)
    return struct.pack("<" + SCALAR_STRUCT[vtype], v)


def _encode_inner(x: Any) -> bytes:
    g = _infer(x)
    return struct.pack("<I", g.type) + _encode_value(g.value, g.type, g.elem_type)


class GGUFWriter:
    def __init__(self, path: str | os.PathLike[str], alignment: int = GGUF_DEFAULT_ALIGNMENT) -> None:
        self.path = Path(path)
        self.alignment = alignment
        self._kv: dict[str, GGUFValue] = {}
        self._encoded: dict[str, bytes] = {}  # keys added with their value already encoded (copy_kv)
        self._tensors: list[tuple[str, tuple[int, ...], GGMLType, int]] = []
        self._offset = 0  # running offset inside the data section
        self._state = "kv"  # kv -> tensors -> data -> done
        self._next = 0  # index of the next tensor whose data is expected
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._f: BinaryIO | None = None

    # -- building ------------------------------------------------------------------------------

    def add(self, key: str, value: Any, vtype: GGUFValueType | None = None,
            elem_type: GGUFValueType | None = None) -> None:
        """Add a KV. Without vtype the type is inferred (see _infer); a GGUFValue keeps its own types."""
        if self._state != "kv":
            raise RuntimeError("metadata must be added before tensor infos")
        if key in self._kv:
            raise ValueError(f"duplicate key {key!r}")
        g = GGUFValue(value, vtype, elem_type) if vtype is not None else _infer(value)
        if key == Keys.ALIGNMENT:
            self.alignment = int(g.value)
        self._kv[key] = g

    def copy_kv(self, key: str, value: GGUFValue, encoded: bytes) -> None:
        """add() for a KV copied from another file: `encoded` is that file's encoding of `value` (from
        GGUFReader.encoded_value) and is written as it is."""
        self.add(key, value.value, value.type, value.elem_type)
        self._encoded[key] = encoded

    def add_tensor_info(self, name: str, shape: tuple[int, ...], ggml_type: GGMLType) -> None:
        """shape in torch order (rows last-but-one, row length last); stored reversed in the file."""
        if self._state == "kv":
            self._state = "tensors"
        if self._state != "tensors":
            raise RuntimeError("tensor infos must be added before write_header()")
        n = 1
        for d in shape:
            n *= d
        if shape and shape[-1] % GGML_BLOCK[ggml_type].block_size:
            raise ValueError(f"{name}: row length {shape[-1]} is not a multiple of the {ggml_type.name} block size")
        nbytes = tensor_nbytes(ggml_type, n)
        self._tensors.append((name, tuple(shape), ggml_type, nbytes))

    def _pad(self, n: int) -> int:
        return -n % self.alignment

    # -- writing -------------------------------------------------------------------------------

    def write_header(self) -> None:
        if self._state not in ("kv", "tensors"):
            raise RuntimeError("write_header() called twice")
        if not self.path.parent.is_dir():
            raise InputError(f"{self.path}: the directory {self.path.parent} does not exist")
        try:
            self._f = open(self._tmp, "wb")
        except OSError as e:
            raise InputError(f"{self.path}: cannot write here ({e.strerror})") from None
        out = bytearray(struct.pack("<IIQQ", GGUF_MAGIC, GGUF_VERSION, len(self._tensors), len(self._kv)))
        for key, g in self._kv.items():
            enc = self._encoded.get(key)
            out += _encode_str(key) + struct.pack("<I", g.type) + (
                enc if enc is not None else _encode_value(g.value, g.type, g.elem_type))
        offset = 0
        for name, shape, gtype, nbytes in self._tensors:
            out += _encode_str(name) + struct.pack("<I", len(shape))
            out += struct.pack(f"<{len(shape)}Q", *reversed(shape))
            out += struct.pack("<IQ", gtype, offset)
            offset += nbytes + self._pad(nbytes)
        if self._tensors:  # llama.cpp pads before a data section only when there is one (vocab-only files)
            out += bytes(self._pad(len(out)))
        self._f.write(out)
        self._state = "data"

    def write_tensor(self, name: str, data: Any) -> None:
        """Write the next tensor's bytes (anything exposing the buffer protocol, e.g. a numpy array)."""
        if self._state != "data" or self._f is None:
            raise RuntimeError("write_header() must come before write_tensor()")
        if self._next >= len(self._tensors):
            raise RuntimeError(f"unexpected tensor {name!r}: all tensors are written")
        want, _, _, nbytes = self._tensors[self._next]
        if name != want:
            raise RuntimeError(f"tensor {name!r} written out of order; expected {want!r}")
        mv = memoryview(data).cast("B")
        if mv.nbytes != nbytes:
            raise RuntimeError(f"tensor {name!r} has {mv.nbytes} bytes, its info says {nbytes}")
        self._f.write(mv)
        self._f.write(bytes(self._pad(nbytes)))
        self._next += 1

    def _finish(self) -> None:
        if self._state == "kv" or self._state == "tensors":
            self.write_header()
        if self._next != len(self._tensors):
            missing = self._tensors[self._next][0]
            raise RuntimeError(f"GGUF writer closed before tensor {missing!r} was written")
        assert self._f is not None
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        os.replace(self._tmp, self.path)
        self._state = "done"

    def abort(self) -> None:
        """Drop the temp file; the target is left untouched."""
        if self._f is not None:
            self._f.close()
            self._f = None
        self._tmp.unlink(missing_ok=True)
        self._state = "done"

    def __enter__(self) -> "GGUFWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            try:
                self._finish()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
