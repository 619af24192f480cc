"""GGUF reader: memory-mapped, validated, zero-copy tensor views.

File layout (all little-endian):
    u32 magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv x  [u64 len, key bytes][u32 value type][value]
            value = scalar | [u64 len, utf-8 bytes] | [u32 elem type][u64 count][items]
    n_tensors x [u64 len, name][u32 n_dims][u64 ne[n_dims]] (ggml order)[u32 ggml type][u64 offset]
    zero padding to `general.alignment` (default 32), then the data section; offsets are relative to it.

Every length and count is checked against the bytes left in the file before anything is allocated or
sliced, so a truncated or hostile file raises GGUFFormatError quickly and never anything else.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GGUFFormatError, InputError
from .constants import (
    GGML_BLOCK,
    GGML_MAX_DIMS,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGUF_READABLE_VERSIONS,
    SCALAR_DTYPE,
    SCALAR_STRUCT,
    GGMLType,
    GGUFValueType,
    Keys,
)

_MAX_ARRAY_DEPTH = 4  # arrays of arrays are legal; deeper nesting than this is hostile


@dataclass(frozen=True)
class GGUFValue:
    """A metadata value with the types needed to write it back byte for byte."""

    value: Any  # int/float/bool/str, np.ndarray (numeric arrays), list (string/nested arrays)
    type: GGUFValueType
    elem_type: GGUFValueType | None = None  # for arrays


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: GGMLType
    shape: tuple[int, ...]  # torch order: GGUF dims reversed, rows last-but-one, ne0 last
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class _Cursor:
    """Bounds-checked sequential reads over a buffer."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path

    def fail(self, what: str) -> GGUFFormatError:
        return GGUFFormatError(f"{self.path}: {what} (at byte {self.pos}); the file is corrupt or not a GGUF model")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(f"truncated: {what} needs {n} bytes, {len(self.buf) - self.pos} left")

    def unpack(self, fmt: str, what: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", what)

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None

    def _strings(self, count: int, what: str) -> list[str]:
        """A string array (vocabularies: 10^5 entries), decoded in one tight loop."""
        buf, pos, end = self.buf, self.pos, len(self.buf)
        unpack = struct.Struct("<Q").unpack_from
        out = []
        try:
            for _ in range(count):
                if pos + 8 > end:
                    break
                (n,) = unpack(buf, pos)
                pos += 8
                if n > end - pos:
                    break
                out.append(str(buf[pos : pos + n], "utf-8"))
                pos += n
        except UnicodeDecodeError:
            self.pos = pos
            raise self.fail(f"{what}[{len(out)}] is not valid UTF-8") from None
        self.pos = pos
        if len(out) < count:
            raise self.fail(f"truncated: {what}[{len(out)}] runs past the end of the file")
        return out

    def value_type(self, what: str) -> GGUFValueType:
        t = self.u32(f"type of {what}")
        try:
            return GGUFValueType(t)
        except ValueError:
            raise self.fail(f"{what} has unknown value type {t}") from None

    def value(self, vtype: GGUFValueType, what: str, depth: int = 0) -> GGUFValue:
        if vtype == GGUFValueType.STRING:
            return GGUFValue(self.string(what), vtype)
        if vtype == GGUFValueType.ARRAY:
            if depth >= _MAX_ARRAY_DEPTH:
                raise self.fail(f"{what}: arrays nested deeper than {_MAX_ARRAY_DEPTH}")
            etype = self.value_type(f"elements of {what}")
            count = self.u64(f"length of {what}")
            if etype in SCALAR_DTYPE:
                dt = np.dtype(SCALAR_DTYPE[etype])
                self.need(count * dt.itemsize, what)
                arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos).copy()
                self.pos += count * dt.itemsize
                if etype == GGUFValueType.BOOL:
                    arr = arr.astype(bool)
                return GGUFValue(arr, vtype, etype)
            # strings (8+ bytes each) or nested arrays (12+ bytes each): bound the count before looping
            self.need(count * 8, what)
            if etype == GGUFValueType.STRING:
                return GGUFValue(self._strings(count, what), vtype, etype)
            items = [self.value(etype, f"{what}[{i}]", depth + 1).value for i in range(count)]
            return GGUFValue(items, vtype, etype)
        v = self.unpack("<" + SCALAR_STRUCT[vtype], what)
        if vtype == GGUFValueType.BOOL:
            if v > 1:
                raise self.fail(f"{what}: bool value {v}")
            v = bool(v)
        return GGUFValue(v, vtype)


class GGUFReader:
    """Reads a GGUF file's metadata and tensor infos; tensor bytes stay in the memory map.

    >>> r = GGUFReader("model.gguf"); r.metadata["general.architecture"]; r.tensor_data("token_embd.weight")
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise GGUFFormatError(f"{self.path}: the file is empty; expected a GGUF model")
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise InputError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise InputError(f"{self.path}: is a directory, expected a .gguf file") from None
        except PermissionError:
            raise InputError(f"{self.path}: permission denied") from None
        self._buf = memoryview(self._mmap)
        try:
            self._parse()
        except BaseException:
            self.close()
            raise

    # -- parsing -------------------------------------------------------------------------------

    def _parse(self) -> None:
        c = _Cursor(self._buf, self.path)
        magic = c.u32("magic")
        if magic != GGUF_MAGIC:
            raise GGUFFormatError(f"{self.path}: not a GGUF file (magic {magic:#010x}); expected a .gguf model")
        self.version = c.u32("version")
        if self.version not in GGUF_READABLE_VERSIONS:
            raise GGUFFormatError(
                f"{self.path}: unsupported GGUF version {self.version} (llamakit reads versions 2 and 3)"
            )
        n_tensors = c.u64("tensor count")
        n_kv = c.u64("metadata count")
        # each KV needs at least 8 (key len) + 4 (type) + 1 bytes, each tensor info 8 + 4 + 4 + 8
        if n_kv * 13 > len(self._buf) - c.pos:
            raise c.fail(f"metadata count {n_kv} is larger than the file could hold")
        if n_tensors * 24 > len(self._buf) - c.pos:
            raise c.fail(f"tensor count {n_tensors} is larger than the file could hold")

        self.fields: dict[str, GGUFValue] = {}
        self._spans: dict[str, tuple[int, int]] = {}  # key -> file range of its encoded value (after the type)
        for i in range(n_kv):
            key = c.string(f"key of metadata entry {i}")
            if key in self.fields:
                raise c.fail(f"duplicate metadata key {key!r}")
            vtype = c.value_type(f"metadata {key!r}")
            start = c.pos
            self.fields[key] = c.value(vtype, f"metadata {key!r}")
            self._spans[key] = (start, c.pos)

        self.alignment = GGUF_DEFAULT_ALIGNMENT
        if Keys.ALIGNMENT in self.fields:
            f = self.fields[Keys.ALIGNMENT]
            if f.type != GGUFValueType.UINT32 or f.value == 0 or f.value & (f.value - 1):
                raise c.fail(f"general.alignment must be a power-of-two u32, got {f.value!r}")
            self.alignment = f.value

        raw: list[tuple[str, GGMLType, tuple[int, ...], int, int]] = []
        names: set[str] = set()
        for i in range(n_tensors):
            name = c.string(f"name of tensor {i}")
            if name in names:
                raise c.fail(f"duplicate tensor name {name!r}")
            names.add(name)
            n_dims = c.u32(f"dimension count of {name!r}")
            if not 1 <= n_dims <= GGML_MAX_DIMS:
                raise c.fail(f"tensor {name!r} has {n_dims} dimensions (1..{GGML_MAX_DIMS} allowed)")
            ne = [c.u64(f"dimension {d} of {name!r}") for d in range(n_dims)]
            t = c.u32(f"type of {name!r}")
            try:
                gtype = GGMLType(t)
            except ValueError:
                raise c.fail(f"tensor {name!r} has unknown ggml type {t}") from None
            offset = c.u64(f"offset of {name!r}")
            n_el = 1
            for d in ne:
                n_el *= d
                if n_el >= 1 << 62:
                    raise c.fail(f"tensor {name!r} has absurd dimensions {ne}")
            block, tsize = GGML_BLOCK[gtype]
            if ne[0] % block:
                raise c.fail(f"tensor {name!r}: row length {ne[0]} is not a multiple of the {gtype.name} block size {block}")
            if offset % self.alignment:
                raise c.fail(f"tensor {name!r}: data offset {offset} is not aligned to {self.alignment}")
            raw.append((name, gtype, tuple(reversed(ne)), offset, n_el // block * tsize))

        self.data_offset = -(-c.pos // self.alignment) * self.alignment
        if self.data_offset > len(self._buf) and raw:
            raise c.fail("truncated before the tensor data")
        data_size = len(self._buf) - self.data_offset
        self.tensors: list[TensorInfo] = []
        for name, gtype, shape, offset, nbytes in raw:
            if offset + nbytes > data_size:
                raise GGUFFormatError(
                    f"{self.path}: tensor {name!r} data runs past the end of the file "
                    f"(needs {offset + nbytes} bytes of data, the file has {max(data_size, 0)}); the file is truncated"
                )
            self.tensors.append(TensorInfo(name, gtype, shape, self.data_offset + offset, nbytes))
        spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in self.tensors if t.nbytes)
        for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:]):
            if start_b < end_a:
                raise GGUFFormatError(f"{self.path}: tensors {a!r} and {b!r} overlap; the file is corrupt")
        self._by_name = {t.name: t for t in self.tensors}

    # -- access --------------------------------------------------------------------------------

    @property
    def metadata(self) -> dict[str, Any]:
        """Plain values: numeric arrays as numpy arrays, string arrays as lists of str."""
        return {k: v.value for k, v in self.fields.items()}

    @property
    def architecture(self) -> str | None:
        f = self.fields.get(Keys.ARCHITECTURE)
        return f.value if f is not None and isinstance(f.value, str) else None

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self._by_name[name]
        except KeyError:
            raise GGUFFormatError(f"{self.path}: has no tensor {name!r}") from None

    def tensor_data(self, info: TensorInfo | str) -> np.ndarray:
        """The tensor's raw bytes as a read-only uint8 view into the memory map (no copy)."""
        if isinstance(info, str):
            info = self.tensor(info)
        return np.frombuffer(self._buf, dtype=np.uint8, count=info.nbytes, offset=info.offset)

    def encoded_value(self, key: str) -> bytes:
        """The file's own encoding of metadata `key`'s value (what follows its type), for copying a KV
        without re-encoding it (a vocabulary is 10^5 strings)."""
        lo, hi = self._spans[key]
        return bytes(self._buf[lo:hi])

    def release(self, info: TensorInfo) -> None:
        """Drop the tensor's pages from this process's resident memory (madvise MADV_DONTNEED on the whole
        pages inside its range; the map is read-only, so a later read simply faults them in again from the
        page cache). A streaming pass calls this once a tensor is done, so its RSS stays bounded whatever
        the file's size."""
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if advice is None or getattr(self, "_buf", None) is None:
            return
        page = mmap.PAGESIZE
        lo = -(-info.offset // page) * page
        hi = (info.offset + info.nbytes) // page * page
        if hi > lo:
            self._mmap.madvise(advice, lo, hi - lo)

    def close(self) -> None:
        """Release the map; views returned by tensor_data must be dropped first."""
        buf = getattr(self, "_buf", None)
        if buf is not None:
            try:
                buf.release()
            except BufferError:
                pass  # tensor views still alive; the map is freed when they are
            self._buf = None  # type: ignore[assignment]
        try:
            self._mmap.close()
        except (AttributeError, BufferError):
            pass  # views still alive; the map is freed when they are

    def __enter__(self) -> "GGUFReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
