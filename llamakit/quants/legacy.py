"""The 32-weight block formats (ggml-quants.c quantize_row_q*_ref / dequantize_row_q*).

Block layouts (little-endian, ggml-common.h; byte offsets in layouts.py):
    Q4_0  18 bytes:  d: f16 | qs[16]                       x = d * (q - 8)
    Q4_1  20 bytes:  d: f16 | m: f16 | qs[16]              x = d * q + m
    Q5_0  22 bytes:  d: f16 | qh[4] | qs[16]               x = d * (q - 16)
    Q5_1  24 bytes:  d: f16 | m: f16 | qh[4] | qs[16]      x = d * q + m
    Q8_0  34 bytes:  d: f16 | qs[32]: int8                 x = d * q
qs byte j holds weight j in its low nibble and weight j+16 in its high nibble; qh is a u32 whose bit j is
bit 4 of weight j. Every dequantized value is exact in float32 (a 5-bit integer times an f16 is exact), so
only the final `+ m` rounds, as in C.

The quantizers follow the C operation by operation in float32: the scale `d` comes from the block's
max (or max - min), `id = 1/d` is taken from the float32 d (not the f16-rounded one), and the quant is a
truncating (int8_t) cast of `x*id + 8.5f` (a round-half-up), clamped from above.
"""

from __future__ import annotations

import torch

from ..gguf.constants import GGMLType
from . import layouts as lay
from .base import Codec, div, div_by, fp16_bytes, fp16_from_bytes, roundf


def _first_signed_absmax(xb: torch.Tensor) -> torch.Tensor:
    ax = xb.abs()
    idx = ax.argmax(dim=1, keepdim=True)  # argmax returns the first maximal index
    mx = xb.gather(1, idx)
    return torch.where(ax.gather(1, idx) > 0, mx, torch.zeros_like(mx))


def signed_absmax(xb: torch.Tensor) -> torch.Tensor:
    """(n, k) -> (n, 1): the value with the largest |x|, the first one on ties (C's `if (amax < fabsf(v))`).

    C starts from `max = 0.0f`, so an all-zero block gives +0 whatever the signs of its zeros (and then
    `d = max / -8` is -0: the f16 bytes 00 80). Computed from the (fast) row max and min; only rows where
    both +a and -a occur need the (slow) first-occurrence search.
    """
    mx = xb.amax(dim=1, keepdim=True)
    mn = xb.amin(dim=1, keepdim=True)
    out = torch.where(-mn > mx, mn, mx)
    out = torch.where(out == 0, torch.zeros_like(out), out)  # all zeros: +0
    tie = ((-mn == mx) & (mx != 0))[:, 0]
    if bool(tie.any()):
        out[tie] = _first_signed_absmax(xb[tie])
    return out


def first_min_max(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, k) -> (n, 1) min and max, each the first occurrence (C's strict `<`/`>` scans): the sign of a
    zero min/max is the sign of the first zero, which decides the sign of d = max - min in f16. Rows
    with a zero min or max take the slow first-occurrence search."""
    mn = xb.amin(dim=1, keepdim=True)
    mx = xb.amax(dim=1, keepdim=True)
    zero = ((mn == 0) | (mx == 0))[:, 0]
    if bool(zero.any()):
        z = xb[zero]
        mn[zero] = z.gather(1, z.argmin(dim=1, keepdim=True))
        mx[zero] = z.gather(1, z.argmax(dim=1, keepdim=True))
    return mn, mx


def safe_inverse(d: torch.Tensor) -> torch.Tensor:
    """C's `d ? 1.0f/d : 0.0f`."""
    return torch.where(d != 0, div(1.0, d), torch.zeros_like(d))


def trunc_u8(v: torch.Tensor) -> torch.Tensor:
    """A C (int8_t)/(uint8_t) cast of a float known to lie in [0, 128): truncation toward zero."""
    return v.to(torch.uint8)


def unpack_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 16) -> uint8 (n, 32): weight j from qs[j] & 15, weight j+16 from qs[j] >> 4."""
    return torch.cat((qs & 15, qs >> 4), dim=1)


def _f32(q: torch.Tensor) -> torch.Tensor:
    """Integers -> a fresh float32 tensor that the dequantizers then scale in place (one allocation: the
    elementwise passes over the weights are the whole cost of dequantizing)."""
    return torch.empty(q.shape, dtype=torch.float32, device=q.device).copy_(q)


def _nibbles_f32(qs: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 16) -> float32 (n, 32), unpack_nibbles converted straight into the output."""
    out = torch.empty((qs.shape[0], 32), dtype=torch.float32, device=qs.device)
    out[:, :16] = qs & 15
    out[:, 16:] = qs >> 4
    return out


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 32) with values < 16 -> (n, 16); the inverse of unpack_nibbles."""
    return q[:, :16] | (q[:, 16:] << 4)


def unpack_bits32(qh: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 4) little-endian u32 -> uint8 (n, 32) of its bits, bit j at column j."""
    shifts = torch.arange(8, dtype=torch.uint8, device=qh.device)
    return ((qh[:, :, None] >> shifts) & 1).reshape(qh.shape[0], 32)


def pack_bits32(bits: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 32) of 0/1 -> uint8 (n, 4), the little-endian u32 with bit j = bits[:, j]."""
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
    return (bits.reshape(bits.shape[0], 4, 8) << shifts).sum(dim=2, dtype=torch.uint8)


class Q4_0(Codec):
    ggml_type = GGMLType.Q4_0

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        xb, lead = self._blocks_in(x)
        d = div_by(signed_absmax(xb), -8.0)
        q = trunc_u8((xb * safe_inverse(d)).add_(8.5)).clamp_(max=15)
        return self._rows_out(lay.Q4_0.join(d=fp16_bytes(d), qs=pack_nibbles(q)), lead)

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        b, lead = self._bytes_in(data)
        p = lay.Q4_0.split(b)
        return self._rows_out(_nibbles_f32(p["qs"]).sub_(8).mul_(fp16_from_bytes(p["d"])), lead)


class Q4_1(Codec):
    ggml_type = GGMLType.Q4_1

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        xb, lead = self._blocks_in(x)
        mn, mx = first_min_max(xb)
        d = div_by(mx - mn, 15.0)
        q = trunc_u8((xb - mn).mul_(safe_inverse(d)).add_(0.5)).clamp_(max=15)
        return self._rows_out(lay.Q4_1.join(d=fp16_bytes(d), m=fp16_bytes(mn), qs=pack_nibbles(q)), lead)

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        b, lead = self._bytes_in(data)
        dm = fp16_from_bytes(b[:, lay.Q4_1.span("d", "m")])  # (n, 2): d, m
        qs = lay.Q4_1.split(b)["qs"]
        return self._rows_out(_nibbles_f32(qs).mul_(dm[:, :1]).add_(dm[:, 1:]), lead)


class Q5_0(Codec):
    ggml_type = GGMLType.Q5_0

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        xb, lead = self._blocks_in(x)
        d = div_by(signed_absmax(xb), -16.0)
        q = trunc_u8((xb * safe_inverse(d)).add_(16.5)).clamp_(max=31)
        out = lay.Q5_0.join(d=fp16_bytes(d), qh=pack_bits32(q >> 4), qs=pack_nibbles(q & 15))
        return self._rows_out(out, lead)

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        b, lead = self._bytes_in(data)
        p = lay.Q5_0.split(b)
        q = unpack_nibbles(p["qs"]) | (unpack_bits32(p["qh"]) << 4)
        return self._rows_out(_f32(q).sub_(16).mul_(fp16_from_bytes(p["d"])), lead)


class Q5_1(Codec):
    ggml_type = GGMLType.Q5_1

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        xb, lead = self._blocks_in(x)
        mn, mx = first_min_max(xb)
        d = div_by(mx - mn, 31.0)
        q = trunc_u8((xb - mn).mul_(safe_inverse(d)).add_(0.5))  # no clamp in C: (x-min)*id <= 31 + rounding
        out = lay.Q5_1.join(d=fp16_bytes(d), m=fp16_bytes(mn), qh=pack_bits32((q >> 4) & 1),
                            qs=pack_nibbles(q & 15))
        return self._rows_out(out, lead)

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        b, lead = self._bytes_in(data)
        p = lay.Q5_1.split(b)
        dm = fp16_from_bytes(b[:, lay.Q5_1.span("d", "m")])  # (n, 2): d, m
        q = unpack_nibbles(p["qs"]) | (unpack_bits32(p["qh"]) << 4)
        return self._rows_out(_f32(q).mul_(dm[:, :1]).add_(dm[:, 1:]), lead)


class Q8_0(Codec):
    ggml_type = GGMLType.Q8_0

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        xb, lead = self._blocks_in(x)
        amax = xb.abs().amax(dim=1, keepdim=True)
        d = div_by(amax, 127.0)
        inv = safe_inverse(d)  # from the f32 d, before fp16 rounding
        q = roundf(xb * inv).to(torch.int8)
        return self._rows_out(lay.Q8_0.join(d=fp16_bytes(d), qs=q), lead)

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        b, lead = self._bytes_in(data)
        p = lay.Q8_0.split(b)
        return self._rows_out(_f32(p["qs"].view(torch.int8)).mul_(fp16_from_bytes(p["d"])), lead)
