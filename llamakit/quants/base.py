"""The codec interface every ggml block format implements, and the rounding helpers they share.

A codec maps float rows to packed block bytes and back, in torch, on whatever device its input lives:
    quantize(x)   float32 (..., n)              -> uint8 (..., n // block_size * type_size)
    dequantize(b) uint8 (..., n_blocks*type_size) -> float32 (..., n_blocks * block_size)
Bit-exactness with llama.cpp needs float32 arithmetic in its order of operations, so the helpers below are
named after the C they mirror.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np
import torch

from ..errors import UnsupportedError
from ..gguf.constants import GGML_BLOCK, GGMLType


class Codec:
    ggml_type: ClassVar[GGMLType]

    @property
    def block_size(self) -> int:
        return GGML_BLOCK[self.ggml_type].block_size

    @property
    def type_size(self) -> int:
        return GGML_BLOCK[self.ggml_type].type_size

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        raise UnsupportedError(f"llamakit cannot quantize to {self.ggml_type.name} (it can only read that type)")

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- shape helpers shared by the block codecs --------------------------------------------

    def _blocks_in(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """float (..., n) -> float32 (n_blocks, block_size), plus the leading shape."""
        if x.shape[-1] % self.block_size:
            raise ValueError(f"row length {x.shape[-1]} is not a multiple of {self.block_size}")
        return x.to(torch.float32).reshape(-1, self.block_size), tuple(x.shape[:-1])

    def _bytes_in(self, data: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """uint8 (..., nbytes) -> uint8 (n_blocks, type_size), plus the leading shape."""
        if data.dtype != torch.uint8 or data.shape[-1] % self.type_size:
            raise ValueError(f"expected uint8 rows of whole {self.ggml_type.name} blocks")
        return data.reshape(-1, self.type_size), tuple(data.shape[:-1])

    def _rows_out(self, blocks: torch.Tensor, lead: tuple[int, ...]) -> torch.Tensor:
        return blocks.reshape(*lead, -1)


def as_tensor(data: np.ndarray) -> torch.Tensor:
    """Zero-copy torch view of a (possibly read-only, memory-mapped) numpy array."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only buffers: we never write through the view
        return torch.from_numpy(data)


# -- rounding helpers (float32 in, exact integer-valued float32 or int out) ---------------------

def roundf(x: torch.Tensor) -> torch.Tensor:
    """C roundf: nearest integer, halfway cases away from zero. Exact (no x+0.5 double rounding)."""
    a = x.abs()
    fl = a.floor()
    r = fl + ((a - fl) >= 0.5).to(x.dtype)
    return r.copysign(x)


def nearest_int(x: torch.Tensor) -> torch.Tensor:
    """ggml's nearest_int, bit for bit: the low 23 bits of the float32 `x + 1.5*2^23`, minus 2^22, as int32.

    That is round-half-to-even for |x| < 2^22; beyond it (and for inf/NaN, which give -2^22 and 0) it is the
    same wrapped garbage C computes, which matters where ggml clamps the result afterwards.
    """
    v = (x.to(torch.float32) + 12582912.0).view(torch.int32)
    return (v & 0x7FFFFF) - 0x400000


def div(num: float, t: torch.Tensor) -> torch.Tensor:
    """float32 `num / t`, correctly rounded on every device (Tensor.__rtruediv__ is reciprocal(t) * num:
    two roundings)."""
    return torch.div(torch.full_like(t, num, dtype=torch.float32), t)


def div_by(t: torch.Tensor, den: float) -> torch.Tensor:
    """float32 `t / den`, correctly rounded on every device (CUDA turns a division by a Python scalar into a
    multiplication by its reciprocal)."""
    return torch.div(t, torch.full_like(t, den, dtype=torch.float32))


def fp16_bytes(x: torch.Tensor) -> torch.Tensor:
    """float32 (..., 1) -> IEEE half, round to nearest even, as uint8 (..., 2) little-endian."""
    return x.to(torch.float16).contiguous().view(torch.uint8)


def fp16_from_bytes(b: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 2k) -> float32 (..., k)."""
    return b.contiguous().view(torch.float16).to(torch.float32)


def unsupported(ggml_type: GGMLType, what: str) -> UnsupportedError:
    return UnsupportedError(f"{what}: ggml type {ggml_type.name} is not supported by llamakit")
