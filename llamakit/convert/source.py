"""Lazy access to checkpoint tensors: safetensors (validated header, one tensor read at a time) and torch zip
pickles (`torch.load(mmap=True, weights_only=True)`: never unpickles arbitrary objects).

A `SourceTensor` knows its name, shape and dtype without touching the data; `.load()` reads that one tensor.
Peak memory therefore stays near the largest tensor, not the checkpoint.

safetensors layout (https://github.com/huggingface/safetensors):
    u64 little-endian N | N bytes of JSON header | data section
    header = {"__metadata__": {...}, "<name>": {"dtype": "BF16", "shape": [r, c], "data_offsets": [begin, end]}, ...}
    offsets are relative to the start of the data section; end - begin == prod(shape) * itemsize.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import InputError, UnsupportedError

# safetensors dtype names llama checkpoints use -> torch dtypes
ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
# every dtype name the format defines, with its item size, so a header using one is still validated
_ST_ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
    "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_MAX_HEADER = 100 << 20  # the format's own limit on the JSON header


@dataclass(frozen=True)
class SourceTensor:
    """One tensor of a checkpoint, not yet read. `load()` returns it in its stored dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    load: Callable[[], torch.Tensor]
    file: Path

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class SafetensorsFile:
    """A validated safetensors file. Tensors are read with plain file reads (no mmap), so reading one does not
    grow resident memory beyond that tensor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._f = open(path, "rb", buffering=0)
        except OSError as e:
            raise InputError(f"{path}: cannot open ({e.strerror})") from None
        try:
            self._entries = self._parse()
        except BaseException:
            self._f.close()
            raise

    def _bad(self, what: str) -> InputError:
        return InputError(f"{self.path}: not a valid safetensors file ({what}); re-download it")

    def _parse(self) -> dict[str, tuple[str, tuple[int, ...], int, int]]:
        size = os.fstat(self._f.fileno()).st_size
        head = self._f.read(8)
        if len(head) < 8:
            raise self._bad("shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise self._bad(f"header length {n} exceeds the file size {size}")
        raw = self._read_into(8, np.empty(n, dtype=np.uint8)).tobytes()
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self._bad(f"header is not JSON: {e}") from None
        if not isinstance(header, dict):
            raise self._bad("header is not a JSON object")
        self._data_start = 8 + n
        data_size = size - self._data_start
        entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if not isinstance(info, dict):
                raise self._bad(f"entry {name!r} is not an object")
            dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
            if dtype not in _ST_ITEMSIZE:
                raise self._bad(f"tensor {name!r} has unknown dtype {dtype!r}")
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise self._bad(f"tensor {name!r} has a malformed shape {shape!r}")
            if (not isinstance(offs, list) or len(offs) != 2 or not all(isinstance(o, int) for o in offs)
                    or not 0 <= offs[0] <= offs[1]):
                raise self._bad(f"tensor {name!r} has malformed data_offsets {offs!r}")
            want = math.prod(shape) * _ST_ITEMSIZE[dtype]
            if offs[1] - offs[0] != want:
                raise self._bad(f"tensor {name!r} is {dtype} {shape} = {want} bytes but its data_offsets span "
                                f"{offs[1] - offs[0]} bytes")
            if offs[1] > data_size:
                raise self._bad(f"tensor {name!r} ends at byte {offs[1]} of a {data_size}-byte data section "
                                "(truncated file?)")
            entries[name] = (dtype, tuple(shape), offs[0], offs[1])
        return entries

    def _read_into(self, offset: int, buf: np.ndarray) -> np.ndarray:
        mv = memoryview(buf).cast("B")
        self._f.seek(offset)
        got = 0
        while got < len(mv):  # a single read() returns at most ~2 GiB on Linux
            k = self._f.readinto(mv[got:])
            if not k:
                raise InputError(f"{self.path}: file ended early while reading (truncated?); re-download it")
            got += k
        return buf

    def names(self) -> list[str]:
        """Tensor names in the order `safetensors.safe_open(...).keys()` gives them (sorted), as llama.cpp reads."""
        return sorted(self._entries)

    def tensor(self, name: str) -> SourceTensor:
        dtype_name, shape, begin, end = self._entries[name]
        if dtype_name not in ST_DTYPES:
            raise UnsupportedError(f"{self.path}: tensor {name!r} is stored as {dtype_name}; llamakit converts "
                                   "F32, F16 and BF16 (and F64) weights only")
        dtype = ST_DTYPES[dtype_name]

        def load() -> torch.Tensor:
            if end == begin:
                return torch.empty(shape, dtype=dtype)
            buf = self._read_into(self._data_start + begin, np.empty(end - begin, dtype=np.uint8))
            return torch.frombuffer(buf, dtype=dtype).reshape(shape)

        return SourceTensor(name, shape, dtype, load, self.path)

    def close(self) -> None:
        self._f.close()


def torch_load(path: Path) -> dict[str, torch.Tensor]:
    """A torch zip checkpoint as {name: tensor}, memory-mapped. Refuses anything but plain tensors: with
    weights_only=True the unpickler only rebuilds tensors and primitive containers, so no code from the file runs."""
    import pickle

    try:
        obj = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"WeightsUnpickler error: ([^.]*)", str(e))  # e.g. "Unsupported global: GLOBAL exec was ..."
        why = m.group(1).strip() if m else "not a plain state dict"
        raise InputError(f"{path}: refused: the pickle holds more than tensors ({why[:120]}); llamakit never runs "
                         "code from a checkpoint, get a safetensors copy instead") from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, AttributeError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "zip" in msg.lower() or "mmap" in msg.lower():
            msg = "not a zip-format torch checkpoint (needs torch.save's default format since torch 1.6)"
        raise InputError(f"{path}: cannot load ({msg[:200]})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a dict of tensors, found a {type(obj).__name__}")
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise InputError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor; expected a plain "
                             "state dict")
    return obj


def torch_tensor(path: Path, name: str, t: torch.Tensor) -> SourceTensor:
    if t.dtype not in FLOAT_DTYPES:
        raise UnsupportedError(f"{path}: tensor {name!r} is {t.dtype}; llamakit converts float32, float16 and "
                               "bfloat16 weights only")
    return SourceTensor(name, tuple(t.shape), t.dtype, lambda: t, path)


def read_json(path: Path) -> dict[str, Any]:
    """A checkpoint's JSON file; every one llamakit reads (config, index, params, tokenizer files) is an object."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a JSON object, found a {type(obj).__name__}; the file is damaged")
    return obj
