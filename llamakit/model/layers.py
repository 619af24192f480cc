"""Linear and embedding layers whose weights stay packed as ggml blocks.

A weight is held exactly as the file stores it, one uint8 row per output feature:
    weight: uint8 (out_features, in_features // block_size * type_size)
(for F32 that is 4 bytes per value, for Q4_0 18 bytes per 32 values...). On load these are zero-copy views of
the memory-mapped file, so a quantized layer occupies its bytes in the file and nothing more.

The arithmetic is delegated to a kernel (llamakit/kernels): the exact torch kernel of the type by default;
the loader picks the kernel per weight from the registry (`kernels.registry.kernel_for`) and replaces the
buffer by the kernel's prepared form (`set_kernel(kernel, prepared)`), without touching the model code.
"""

from __future__ import annotations

import torch
from torch import nn

from ..gguf.constants import GGML_BLOCK, GGMLType
from ..kernels.torch_kernels import Kernel, torch_kernel_for


def row_bytes(ggml_type: GGMLType, n: int) -> int:
    block, size = GGML_BLOCK[ggml_type]
    return n // block * size


class QuantLinear(nn.Module):
    """y = x @ W^T (+ b), W packed. The buffer is named `weight` so state-dict keys are GGUF tensor names."""

    def __init__(self, in_features: int, out_features: int, ggml_type: GGMLType, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.ggml_type = GGMLType(ggml_type)
        self.kernel: Kernel = torch_kernel_for(self.ggml_type, what=f"{out_features}x{in_features} weight")
        # uint8 (out, row bytes): the file's rows, untouched
        self.register_buffer("weight", torch.empty(out_features, row_bytes(self.ggml_type, in_features),
                                                   dtype=torch.uint8))
        # float32 (out,): biases are F32 in GGUF
        self.register_buffer("bias", torch.empty(out_features) if bias else None)

    def set_kernel(self, kernel: Kernel, prepared: torch.Tensor | None = None) -> None:
        """Compute with `kernel` from now on; `prepared` (its `prepare` of the weight) replaces the buffer."""
        self.kernel = kernel
        if prepared is not None:
            self.weight = prepared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (..., in) -> float32 (..., out)."""
        lead = x.shape[:-1]
        y = self.kernel.linear(x.reshape(-1, self.in_features), self.weight, self.in_features)
        if y.shape[-1] != self.out_features:  # a kernel that pads the output rows (int4pack: to 16)
            y = y[:, :self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, type={self.ggml_type.name}"


class QuantEmbedding(nn.Module):
    """Row lookup in a packed (n_vocab, dim) table: only the looked-up rows are dequantized."""

    def __init__(self, n_vocab: int, dim: int, ggml_type: GGMLType) -> None:
        super().__init__()
        self.n_vocab, self.dim = n_vocab, dim
        self.ggml_type = GGMLType(ggml_type)
        self.kernel: Kernel = torch_kernel_for(self.ggml_type, what=f"{n_vocab}x{dim} embedding")
        self.register_buffer("weight", torch.empty(n_vocab, row_bytes(self.ggml_type, dim), dtype=torch.uint8))

    def set_kernel(self, kernel: Kernel, prepared: torch.Tensor | None = None) -> None:
        """Compute with `kernel` from now on; `prepared` (its `prepare` of the weight) replaces the buffer."""
        self.kernel = kernel
        if prepared is not None:
            self.weight = prepared

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """int64 (T,) -> float32 (T, dim)."""
        return self.kernel.rows(self.weight, ids.to(self.weight.device), self.dim)

    def extra_repr(self) -> str:
        return f"n_vocab={self.n_vocab}, dim={self.dim}, type={self.ggml_type.name}"
