"""The 32-weight block formats (ggml-quants.c quantize_row_q*_ref / dequantize_row_q*).

Q8_0 block, 34 bytes:  d: f16 | qs[32]: int8          x = d * q
"""

from __future__ import annotations

import torch

from ..gguf.constants import GGMLType
from .base import Codec, fp16_bytes, fp16_from_bytes, roundf


class Q8_0(Codec):
    ggml_type = GGMLType.Q8_0

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        xb, lead = self._blocks_in(x)
        amax = xb.abs().amax(dim=1, keepdim=True)
        d = amax / 127
        inv = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))  # from the f32 d, before fp16 rounding
        q = roundf(xb * inv).to(torch.int8)
        out = torch.cat([fp16_bytes(d), q.view(torch.uint8)], dim=1)
        return self._rows_out(out, lead)

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        b, lead = self._bytes_in(data)
        d = fp16_from_bytes(b[:, :2])
        q = b[:, 2:].view(torch.int8).to(torch.float32)
        return self._rows_out(d * q, lead)
