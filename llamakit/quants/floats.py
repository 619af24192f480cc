"""F32 / F16 / BF16: 'blocks' of one element. BF16 rounds to nearest even, like ggml's fp32->bf16."""

from __future__ import annotations

import torch

from ..gguf.constants import GGMLType
from .base import Codec


class _Float(Codec):
    dtype: torch.dtype

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(torch.float32).to(self.dtype).contiguous()
        return y.view(torch.uint8)

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        return data.contiguous().view(self.dtype).to(torch.float32)


class F32(_Float):
    ggml_type = GGMLType.F32
    dtype = torch.float32


class F16(_Float):
    ggml_type = GGMLType.F16
    dtype = torch.float16


class BF16(_Float):
    ggml_type = GGMLType.BF16
    dtype = torch.bfloat16
