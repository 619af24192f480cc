"""The 256-weight super-block formats Q2_K..Q6_K and Q8_K (ggml-quants.c, ggml-common.h).

Byte layouts (little-endian). Element e of a super-block is written e = 128*h + 32*k + l (h half, l < 32):
    Q2_K  84 bytes:  scales[16] | qs[64] | d: f16 | dmin: f16
          q = qs[32h + l] >> 2k & 3;  scales[e//16]: low nibble scale, high nibble min
          x = d*sc*q - dmin*m
    Q3_K 110 bytes:  hmask[32] | qs[64] | scales[12] | d: f16
          q = (qs[32h + l] >> 2k & 3) - (bit e//32 of hmask[e%32] ? 0 : 4)
          16 six-bit scales s_j: low 4 bits in scales[j] (j<8) / scales[j-8] >> 4, high 2 bits in
          scales[8 + j%4] >> 2*(j//4);  x = d*(s_{e//16} - 32)*q
    Q4_K 144 bytes:  d: f16 | dmin: f16 | scales[12] | qs[128]
          element e = 64c + 32k + l: q = qs[32c + l] >> 4k & 15; 8 six-bit (scale, min) pairs for e//32
          packed as get_scale_min_k4 (j<4: scales[j], scales[j+4]; j>=4: nibbles of scales[j+4] plus the
          top 2 bits of scales[j-4] / scales[j]);  x = d*sc*q - dmin*m
    Q5_K 176 bytes:  d | dmin | scales[12] | qh[32] | qs[128];  q as Q4_K plus 16 * (qh[e%32] >> e//32 & 1)
    Q6_K 210 bytes:  ql[128] | qh[64] | scales[16]: int8 | d: f16
          e = 128h + 32k + l: low 4 bits ql[64h + 32*(k%2) + l] >> 4*(k//2), high 2 bits qh[32h + l] >> 2k
          x = d*sc[e//16]*(q - 32)
    Q8_K 292 bytes:  d: f32 | qs[256]: int8 | bsums[16]: int16 (sums of 16 quants);  x = d*q
Every product above is exact in float32 (at most 24 significant bits), so the only rounding is the final
`- dmin*m`, exactly as in C whatever the order of the exact products.
"""

from __future__ import annotations

import torch

from ..gguf.constants import GGMLType
from .base import Codec, fp16_from_bytes


def _shifts(values: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8, device=device)


def unpack_2bit(qs: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 64) -> (n, 256): element 128h + 32k + l = qs[32h + l] >> 2k & 3."""
    n = qs.shape[0]
    return ((qs.reshape(n, 2, 1, 32) >> _shifts((0, 2, 4, 6), qs.device)[:, None]) & 3).reshape(n, 256)


def unpack_4bit(qs: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 128) -> (n, 256): element 64c + 32k + l = qs[32c + l] >> 4k & 15."""
    n = qs.shape[0]
    return ((qs.reshape(n, 4, 1, 32) >> _shifts((0, 4), qs.device)[:, None]) & 15).reshape(n, 256)


def unpack_hbits(hm: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 32) -> (n, 256) of 0/1: element e = bit e//32 of hm[e%32]."""
    n = hm.shape[0]
    return ((hm.reshape(n, 1, 32) >> _shifts(tuple(range(8)), hm.device)[:, None]) & 1).reshape(n, 256)


def unpack_q3_scales(sc: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 12) -> int16 (n, 16): the 6-bit Q3_K scales minus 32."""
    n = sc.shape[0]
    lo = (sc[:, :8].reshape(n, 1, 8) >> _shifts((0, 4), sc.device)[:, None]) & 15  # j<8 low, j>=8 high nibble
    hi = (sc[:, 8:].reshape(n, 1, 4) >> _shifts((0, 2, 4, 6), sc.device)[:, None]) & 3  # j%4 byte, 2*(j//4)
    return (lo.reshape(n, 16) | (hi.reshape(n, 16) << 4)).to(torch.int16) - 32


def unpack_k4_scales(sc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 12) -> (scales, mins), uint8 (n, 8) each: get_scale_min_k4 for j = 0..7."""
    a, b, c = sc[:, 0:4], sc[:, 4:8], sc[:, 8:12]
    scales = torch.cat((a & 63, (c & 15) | ((a >> 6) << 4)), dim=1)
    mins = torch.cat((b & 63, (c >> 4) | ((b >> 6) << 4)), dim=1)
    return scales, mins


def unpack_q6(ql: torch.Tensor, qh: torch.Tensor) -> torch.Tensor:
    """ql uint8 (n, 128), qh (n, 64) -> uint8 (n, 256) of 6-bit values (before the -32)."""
    n = ql.shape[0]
    low = (ql.reshape(n, 2, 1, 64) >> _shifts((0, 4), ql.device)[:, None]) & 15  # (h, k//2, 32*(k%2) + l)
    high = (qh.reshape(n, 2, 1, 32) >> _shifts((0, 2, 4, 6), qh.device)[:, None]) & 3  # (h, k, l)
    return low.reshape(n, 256) | (high.reshape(n, 256) << 4)


class Q2_K(Codec):
    ggml_type = GGMLType.Q2_K

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        b, lead = self._bytes_in(data)
        n = b.shape[0]
        dm = fp16_from_bytes(b[:, 80:84])  # (n, 2): d, dmin
        sc = b[:, :16]
        scale = dm[:, :1] * (sc & 15).to(torch.float32)  # (n, 16)
        mins = dm[:, 1:] * (sc >> 4).to(torch.float32)
        q = unpack_2bit(b[:, 16:80]).to(torch.float32).reshape(n, 16, 16)
        y = q * scale[:, :, None] - mins[:, :, None]
        return self._rows_out(y.reshape(n, 256), lead)


class Q3_K(Codec):
    ggml_type = GGMLType.Q3_K

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        b, lead = self._bytes_in(data)
        n = b.shape[0]
        d = fp16_from_bytes(b[:, 108:110])
        scale = d * unpack_q3_scales(b[:, 96:108]).to(torch.float32)  # (n, 16)
        q = unpack_2bit(b[:, 32:96]).to(torch.int8) - ((unpack_hbits(b[:, :32]) ^ 1) << 2).to(torch.int8)
        y = q.to(torch.float32).reshape(n, 16, 16) * scale[:, :, None]
        return self._rows_out(y.reshape(n, 256), lead)


class Q4_K(Codec):
    ggml_type = GGMLType.Q4_K

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        b, lead = self._bytes_in(data)
        n = b.shape[0]
        dm = fp16_from_bytes(b[:, :4])
        sc, m = unpack_k4_scales(b[:, 4:16])
        scale = dm[:, :1] * sc.to(torch.float32)  # (n, 8)
        mins = dm[:, 1:] * m.to(torch.float32)
        q = unpack_4bit(b[:, 16:144]).to(torch.float32).reshape(n, 8, 32)
        y = q * scale[:, :, None] - mins[:, :, None]
        return self._rows_out(y.reshape(n, 256), lead)


class Q5_K(Codec):
    ggml_type = GGMLType.Q5_K

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        b, lead = self._bytes_in(data)
        n = b.shape[0]
        dm = fp16_from_bytes(b[:, :4])
        sc, m = unpack_k4_scales(b[:, 4:16])
        scale = dm[:, :1] * sc.to(torch.float32)
        mins = dm[:, 1:] * m.to(torch.float32)
        q = unpack_4bit(b[:, 48:176]) | (unpack_hbits(b[:, 16:48]) << 4)
        y = q.to(torch.float32).reshape(n, 8, 32) * scale[:, :, None] - mins[:, :, None]
        return self._rows_out(y.reshape(n, 256), lead)


class Q6_K(Codec):
    ggml_type = GGMLType.Q6_K

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        b, lead = self._bytes_in(data)
        n = b.shape[0]
        d = fp16_from_bytes(b[:, 208:210])
        scale = d * b[:, 192:208].view(torch.int8).to(torch.float32)  # (n, 16)
        q = unpack_q6(b[:, :128], b[:, 128:192]).to(torch.int8) - 32
        y = q.to(torch.float32).reshape(n, 16, 16) * scale[:, :, None]
        return self._rows_out(y.reshape(n, 256), lead)


class Q8_K(Codec):
    ggml_type = GGMLType.Q8_K

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        b, lead = self._bytes_in(data)
        d = b[:, :4].contiguous().view(torch.float32)
        q = b[:, 4:260].view(torch.int8).to(torch.float32)
        return self._rows_out(d * q, lead)
