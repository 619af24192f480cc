"""Matmul kernels for packed ggml weights, one per format, swappable per layer.

A kernel computes, for a weight held as the file's block bytes (uint8 (out, row_bytes)):
    linear(x, w, n_in) : float32 (T, n_in) -> float32 (T, out)      y = x @ dequant(w)^T
    rows(w, ids, n_in) : int64 (T,)        -> float32 (T, n_in)     dequant(w[ids])
Dequantization is exact (the codecs' float32 values), so results differ from a float32 matmul over the
dequantized weights only by summation order.

`DequantKernel` works for every codec. (Hand-written torch kernels for the 32-blocks that skip the nibble
reorder and the per-weight offset were measured no faster than the codecs on CPU: the cost is the few
elementwise passes over the weights that any torch-level dequantization needs; a fused kernel is what
would remove them, and it would register here.)
Weights are dequantized SLAB_VALUES at a time so no float copy of a whole matrix (the 49152 x 576 output
layer is 113 MB in float32) ever exists: memory holds the packed bytes plus one slab.
Fused or GPU kernels register per (ggml type, device type) in `kernel_for`.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from ..gguf.constants import GGMLType
from ..quants import Codec, get_codec

# floats dequantized at a time: 2^20 float32 = 4 MiB (fewer, larger slabs measured faster than 1 MiB ones)
SLAB_VALUES = 1 << 20


class Kernel(Protocol):
    def linear(self, x: torch.Tensor, w: torch.Tensor, n_in: int) -> torch.Tensor: ...

    def rows(self, w: torch.Tensor, ids: torch.Tensor, n_in: int) -> torch.Tensor: ...


class DequantKernel:
    """Any codec: dequantize a slab of rows, multiply, next slab."""

    def __init__(self, codec: Codec, slab_values: int = SLAB_VALUES) -> None:
        self.codec = codec
        self.slab_values = slab_values

    def linear(self, x: torch.Tensor, w: torch.Tensor, n_in: int) -> torch.Tensor:
        step = max(1, self.slab_values // n_in)
        if step >= w.shape[0]:
            return self._linear(x, w, n_in)
        # The output is allocated first and each slab's result copied in and freed at once: keeping the
        # small per-slab results alive between the big temporaries fragments the heap (~1 slab per slab).
        y = torch.empty(x.shape[0], w.shape[0], dtype=torch.float32, device=x.device)
        for r in range(0, w.shape[0], step):
            y[:, r:r + step] = self._linear(x, w[r:r + step], n_in)
        return y

    def _linear(self, x: torch.Tensor, w: torch.Tensor, n_in: int) -> torch.Tensor:
        return F.linear(x, self.codec.dequantize(w))

    def rows(self, w: torch.Tensor, ids: torch.Tensor, n_in: int) -> torch.Tensor:
        return self.codec.dequantize(w[ids])


class FloatKernel(DequantKernel):
    """F32 is used in place (a float32 view of the bytes); F16/BF16 rows are converted a slab at a time."""

    def __init__(self, codec: Codec, dtype: torch.dtype, slab_values: int = SLAB_VALUES) -> None:
        super().__init__(codec, slab_values)
        self.dtype = dtype

    def linear(self, x: torch.Tensor, w: torch.Tensor, n_in: int) -> torch.Tensor:
        if self.dtype == torch.float32:
            return F.linear(x, w.view(torch.float32))
        return super().linear(x, w, n_in)

    def _linear(self, x: torch.Tensor, w: torch.Tensor, n_in: int) -> torch.Tensor:
        return F.linear(x, w.view(self.dtype).float())

    def rows(self, w: torch.Tensor, ids: torch.Tensor, n_in: int) -> torch.Tensor:
        return w[ids].view(self.dtype).float()


_FLOATS = {GGMLType.F32: torch.float32, GGMLType.F16: torch.float16, GGMLType.BF16: torch.bfloat16}


def kernel_for(ggml_type: GGMLType, device_type: str = "cpu", what: str = "tensor") -> Kernel:
    """The kernel for a format on a device type; UnsupportedError (naming `what`) for a type llamakit
    cannot compute. The torch kernels here run on any device."""
    codec = get_codec(ggml_type, what=what)
    t = codec.ggml_type
    if t in _FLOATS:
        return FloatKernel(codec, _FLOATS[t])
    return DequantKernel(codec)
