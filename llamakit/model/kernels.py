"""Matmul kernels for packed ggml weights, one per format, swappable per layer.

A kernel computes, for a weight held as the file's block bytes (uint8 (out, row_bytes)):
    linear(x, w, n_in) : float32 (T, n_in) -> float32 (T, out)      y = x @ dequant(w)^T
    rows(w, ids, n_in) : int64 (T,)        -> float32 (T, n_in)     dequant(w[ids])
The default kernel dequantizes with the format's codec, a slab of rows at a time, so the float copy of a
weight never exists whole: the slab (SLAB_VALUES floats) stays in cache while the matmul reads it, and memory
holds the packed bytes plus one slab. Faster kernels (fused, GPU) register per (type, device type).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from ..gguf.constants import GGMLType
from ..quants import Codec, get_codec

# floats dequantized at a time: 2^18 float32 = 1 MiB, about an L2 cache
SLAB_VALUES = 1 << 18


class Kernel(Protocol):
    def linear(self, x: torch.Tensor, w: torch.Tensor, n_in: int) -> torch.Tensor: ...

    def rows(self, w: torch.Tensor, ids: torch.Tensor, n_in: int) -> torch.Tensor: ...


class DequantKernel:
    """Any codec: dequantize SLAB_VALUES at a time and multiply. Exact dequantization, float32 matmul."""

    def __init__(self, codec: Codec, slab_values: int = SLAB_VALUES) -> None:
        self.codec = codec
        self.slab_values = slab_values

    def dequant(self, w: torch.Tensor) -> torch.Tensor:
        """uint8 (r, row_bytes) -> float32 (r, n_in)."""
        return self.codec.dequantize(w)

    def linear(self, x: torch.Tensor, w: torch.Tensor, n_in: int) -> torch.Tensor:
        n_out = w.shape[0]
        step = max(1, self.slab_values // n_in)
        if step >= n_out:
            return F.linear(x, self.dequant(w))
        return torch.cat([F.linear(x, self.dequant(w[r:r + step])) for r in range(0, n_out, step)], dim=1)

    def rows(self, w: torch.Tensor, ids: torch.Tensor, n_in: int) -> torch.Tensor:
        return self.dequant(w[ids])


class F32Kernel(DequantKernel):
    """F32 weights are used in place: a float32 view of the bytes, no copy."""

    def linear(self, x: torch.Tensor, w: torch.Tensor, n_in: int) -> torch.Tensor:
        return F.linear(x, w.view(torch.float32))

    def rows(self, w: torch.Tensor, ids: torch.Tensor, n_in: int) -> torch.Tensor:
        return w.view(torch.float32)[ids]


def kernel_for(ggml_type: GGMLType, device_type: str = "cpu", what: str = "tensor") -> Kernel:
    """The kernel for a format on a device type; UnsupportedError (naming `what`) for a type llamakit
    cannot compute."""
    codec = get_codec(ggml_type, what=what)
    if codec.ggml_type == GGMLType.F32:
        return F32Kernel(codec)
    return DequantKernel(codec)
