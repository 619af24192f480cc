"""IQ4_NL: 32-weight blocks of 4-bit indices into a fixed non-linear grid (ggml-quants.c).

Block, 18 bytes:  d: f16 | qs[16]          x = d * kvalues[q]
qs byte j holds the index of weight j (low nibble) and of weight j+16 (high nibble), as Q4_0.

llamakit writes IQ4_NL only where llama-quantize does without an imatrix: as the fallback for Q2_K / Q3_K
tensors whose rows are not a multiple of 256 (e.g. every 576-wide SmolLM2 matrix). llama-quantize calls
quantize_iq4_nl, i.e. quantize_row_iq4_nl_impl with ntry = 7 and weights x*x:
    d = -max/kvalues[0]; levels = best_index(x/d); d = Σwqx/Σwq²        (first guess)
    for itry in -7..7: id = (itry + kvalues[0])/max, levels = best_index(id*x), keep d = Σwqx/Σwq² when
                        Σwqx² > best*Σwq²  (best = d*Σwqx of the kept one)
    final levels = best_index(x/d) with the float32 d (not the f16-rounded one).
"""

from __future__ import annotations

import torch

from ..gguf.constants import GGMLType
from .base import Codec, fp16_bytes, fp16_from_bytes
from .legacy import pack_nibbles, unpack_nibbles
from .search import GROUP_MAX_EPS, div, seq_sum, signed_absmax_cols

KVALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
NTRY = 7


def best_index(v: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """ggml's best_index_int8 for every element: the nearest grid value, the upper one on exact ties
    (`x - val[mu-1] < val[mu] - x ? mu-1 : mu` after a bisection with val[mu-1] <= x < val[mu])."""
    mu = torch.searchsorted(grid, v.contiguous(), right=True).clamp_(1, len(KVALUES) - 1)
    lower = (v - grid[mu - 1]) < (grid[mu] - v)
    return mu - lower.to(mu.dtype)


class IQ4_NL(Codec):
    ggml_type = GGMLType.IQ4_NL

    @staticmethod
    def _grid(device: torch.device) -> torch.Tensor:
        return torch.tensor(KVALUES, dtype=torch.float32, device=device)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        xb, lead = self._blocks_in(x)
        grid = self._grid(xb.device)
        xs = xb.t().contiguous()  # (32, B), element-major
        mx, amax = signed_absmax_cols(xs)
        zero = amax < GROUP_MAX_EPS
        mx = torch.where(zero, torch.ones_like(mx), mx)
        w = xs * xs

        def sums(iscale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            q = grid[best_index(iscale * xs, grid)]
            wq = w * q
            return seq_sum(wq * xs), seq_sum(wq * q)

        d0 = -mx / float(KVALUES[0])
        sumqx, sumq2 = sums(div(1.0, d0))
        d = sumqx / sumq2
        best = d * sumqx
        for itry in range(-NTRY, NTRY + 1):
            sumqx, sumq2 = sums(div(float(itry + KVALUES[0]), mx))
            acc = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            dk = sumqx / sumq2
            d = torch.where(acc, dk, d)
            best = torch.where(acc, dk * sumqx, best)
        d = d.masked_fill_(zero, 0.0)
        inv = torch.where(d != 0, div(1.0, d), torch.zeros_like(d))
        L = best_index(inv * xs, grid).t().to(torch.uint8)  # (B, 32)
        out = torch.cat((fp16_bytes(d[:, None]), pack_nibbles(L)), dim=1)
        return self._rows_out(out, lead)

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        b, lead = self._bytes_in(data)
        d = fp16_from_bytes(b[:, :2])
        q = self._grid(b.device)[unpack_nibbles(b[:, 2:]).long()]
        return self._rows_out(q * d, lead)
