"""IQ4_NL: 32-weight blocks of 4-bit indices into a fixed non-linear grid (ggml-quants.c).

Block, 18 bytes (layouts.IQ4_NL):  d: f16 | qs[16]          x = d * kvalues[q]
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
from . import layouts as lay
from .base import Codec, fp16_bytes, fp16_from_bytes
from .legacy import pack_nibbles, unpack_nibbles
from .search import GROUP_MAX_EPS, div, div_by, seq_sum, signed_absmax_cols

KVALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
NTRY = 7


def best_index(v: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """ggml's best_index_int8, literally: the bisection's bracket val[mu-1] <= x < val[mu], then the upper
    one unless `x - val[mu-1] < val[mu] - x` (so exact ties go up). Reference for `nearest_level`."""
    mu = torch.searchsorted(grid, v.contiguous(), right=True).clamp_(1, len(KVALUES) - 1)
    lower = (v - grid[mu - 1]) < (grid[mu] - v)
    return mu - lower.to(mu.dtype)


# best_index_int8 as a table on floor(2x). Every midpoint (val[k] + val[k+1])/2 of this grid is a multiple of
# 1/2 and at least 4.5 from 0, which makes C's float test `x - val[k] < val[k+1] - x` exact near a midpoint
# (both differences are exact there), i.e. the same as `x < midpoint`; so the index is the number of
# midpoints m with 2x >= 2m, which only depends on floor(2x). Clamping floor(2x) to [-256, 256] keeps the
# two ends (x <= -127 -> 0, x >= 113 -> 15).
_HALF_RANGE = 256


def _level_table(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    twice_mid = [KVALUES[k] + KVALUES[k + 1] for k in range(len(KVALUES) - 1)]
    idx = [sum(f >= m for m in twice_mid) for f in range(-_HALF_RANGE, _HALF_RANGE + 1)]
    index = torch.tensor(idx, dtype=torch.uint8, device=device)
    return index, torch.tensor(KVALUES, dtype=torch.float32, device=device)[index.long()]


def nearest_level(v: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """table[best_index_int8(v)] for float32 v (any shape), via floor(2v). A NaN v (the final levels of a block
    whose x*x overflows, |x| >= 2^64, so that d is NaN) is the top level, as C's bisection (every compare false)."""
    t = (v * 2.0).floor_().nan_to_num_(nan=_HALF_RANGE).clamp_(-_HALF_RANGE, _HALF_RANGE).add_(_HALF_RANGE)
    t = t.to(torch.int32)
    return table.index_select(0, t.reshape(-1)).reshape(v.shape)


class IQ4_NL(Codec):
    ggml_type = GGMLType.IQ4_NL

    @staticmethod
    def _grid(device: torch.device) -> torch.Tensor:
        return torch.tensor(KVALUES, dtype=torch.float32, device=device)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        xb, lead = self._blocks_in(x)
        index, values = _level_table(xb.device)
        xs = xb.t().contiguous()  # (32, B), element-major
        mx, amax = signed_absmax_cols(xs)
        zero = amax < GROUP_MAX_EPS
        mx = torch.where(zero, torch.ones_like(mx), mx)
        w = xs * xs
        terms = torch.empty((2,) + xs.shape, dtype=torch.float32, device=xs.device)

        def sums(iscale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            q = nearest_level(iscale * xs, values)  # iscale*x first, as C; doubling inside is exact
            wq = torch.mul(w, q, out=terms[1])
            torch.mul(wq, xs, out=terms[0])
            wq.mul_(q)
            sumqx, sumq2 = seq_sum(terms.transpose(0, 1))
            return sumqx, sumq2

        d0 = div_by(-mx, float(KVALUES[0]))
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
        L = nearest_level(inv * xs, index).t()  # (B, 32) uint8
        return self._rows_out(lay.IQ4_NL.join(d=fp16_bytes(d[:, None]), qs=pack_nibbles(L)), lead)

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        b, lead = self._bytes_in(data)
        p = lay.IQ4_NL.split(b)
        idx = unpack_nibbles(p["qs"]).to(torch.int32)
        q = self._grid(b.device).index_select(0, idx.reshape(-1)).reshape(idx.shape)
        return self._rows_out(q.mul_(fp16_from_bytes(p["d"])), lead)
