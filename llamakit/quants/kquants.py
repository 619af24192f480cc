"""The 256-weight super-block formats Q2_K..Q6_K and Q8_K (ggml-quants.c, ggml-common.h).

Byte layouts (little-endian; the byte offsets live in layouts.py). Element e of a super-block is written
e = 128*h + 32*k + l (h half, l < 32):
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

The quantizers are quantize_row_q*_K_ref (what llama-quantize runs without an imatrix): a scale search per
sub-block (search.py), 4/6-bit quantization of those scales against the super-block's f16 d (and dmin),
then every weight requantized against the decoded scales. A sub-block whose decoded scale is 0 keeps the
levels of its search, as in C.
"""

from __future__ import annotations

import torch

from ..gguf.constants import GGMLType
from . import layouts as lay
from .base import Codec, fp16_bytes, fp16_from_bytes, nearest_int
from .legacy import _f32
from .search import GROUP_MAX_EPS, div, div_by, make_q3, make_qkx2, make_qx, seq_sum, signed_absmax_cols, sqrt_f32

# Super-blocks quantized per call of _quantize_blocks: large enough that torch's per-op overhead is small
# next to the work (the searches run ~1000 small ops per call), small enough that the temporaries stay near
# the L2 cache. Q6_K evaluates all 19 candidate scales at once, hence its smaller chunk. (Measured on a
# 2-core EPYC; the result does not depend on it.)
CHUNK_BLOCKS = 1024


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


def pack_2bit(L: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 256) of values < 4 -> (n, 64); the inverse of unpack_2bit."""
    a = L.reshape(L.shape[0], 2, 4, 32)
    return (a[:, :, 0] | (a[:, :, 1] << 2) | (a[:, :, 2] << 4) | (a[:, :, 3] << 6)).reshape(L.shape[0], 64)


def pack_4bit(L: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 256) of values < 16 -> (n, 128); the inverse of unpack_4bit."""
    a = L.reshape(L.shape[0], 4, 2, 32)
    return (a[:, :, 0] | (a[:, :, 1] << 4)).reshape(L.shape[0], 128)


def pack_hbits(bits: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 256) of 0/1 -> (n, 32): bit e//32 of byte e%32; the inverse of unpack_hbits."""
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)[:, None]
    return (bits.reshape(bits.shape[0], 8, 32) << shifts).sum(dim=1, dtype=torch.uint8)


def pack_k4_scales(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """6-bit scales and mins, uint8 (n, 8) each -> (n, 12), the layout get_scale_min_k4 reads."""
    lo = torch.cat((ls[:, :4] | ((ls[:, 4:] >> 4) << 6), lm[:, :4] | ((lm[:, 4:] >> 4) << 6)), dim=1)
    return torch.cat((lo, (ls[:, 4:] & 15) | ((lm[:, 4:] & 15) << 4)), dim=1)


def fp16_round(x: torch.Tensor) -> torch.Tensor:
    """GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(x))."""
    return x.to(torch.float16).to(torch.float32)


def as_u8(i: torch.Tensor) -> torch.Tensor:
    """A C store of an int into a uint8_t (modulo 256)."""
    return (i & 255).to(torch.uint8)


def as_i8(i: torch.Tensor) -> torch.Tensor:
    """A C conversion of an int to int8_t (modulo 256, two's complement), kept as int32."""
    return ((i + 128) & 255) - 128


def positive_max(v: torch.Tensor) -> torch.Tensor:
    """(nb, k) -> (nb, 1): C's `m = 0; if (v > m) m = v;` (+0 when nothing is positive, even for -0 entries)."""
    m = v.amax(dim=1, keepdim=True)
    return torch.where(m > 0, m, torch.zeros_like(m))


def sub_blocks(xb: torch.Tensor, n: int) -> torch.Tensor:
    """float32 (nb, 256) -> (n, nb*256/n), element-major: column c is sub-block c (super-block c // (256/n))."""
    return xb.reshape(-1, n).t().contiguous()


class _KQuant(Codec):
    """Quantizes `chunk_blocks` super-blocks per call of `_quantize_blocks` (float32 (nb, 256) -> uint8)."""

    chunk_blocks = CHUNK_BLOCKS

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        xb, lead = self._blocks_in(x)
        out = torch.empty((xb.shape[0], self.type_size), dtype=torch.uint8, device=xb.device)
        step = self.chunk_blocks
        for s in range(0, xb.shape[0], step):
            out[s:s + step] = self._quantize_blocks(xb[s:s + step])
        return self._rows_out(out, lead)

    def _quantize_blocks(self, xb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _requantize(x: torch.Tensor, d: torch.Tensor, dm: torch.Tensor, L: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """The final pass shared by the K-quants: l = clamp(nearest_int((x + dm)/d), lo, hi), but a sub-block whose
    decoded scale d is 0 keeps L. x, L (nb, k, n); d, dm (nb, k)."""
    q = nearest_int((x + dm[..., None]) / d[..., None]).clamp_(lo, hi).to(torch.float32)
    return torch.where((d != 0)[..., None], q, L)


class Q2_K(_KQuant):
    ggml_type = GGMLType.Q2_K

    def _quantize_blocks(self, xb: torch.Tensor) -> torch.Tensor:
        nb = xb.shape[0]
        xs = sub_blocks(xb, 16)
        scales, mins, L = make_qkx2(xs, xs.abs(), 3, -0.5, 0.1, 15, True)
        scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
        L = L.t().reshape(nb, 16, 16)
        max_scale, max_min = positive_max(scales), positive_max(mins)
        has_s, has_m = max_scale > 0, max_min > 0
        ls = nearest_int(div(15.0, max_scale) * scales)
        lm = nearest_int(div(15.0, max_min) * mins)
        zero_i = torch.zeros_like(ls)
        sc = as_u8(torch.where(has_s, ls, zero_i))
        sc = sc | as_u8(torch.where(has_m, lm, zero_i) << 4)  # `scales[j] |= l << 4` (no min: stays as is)
        d = torch.where(has_s, div_by(max_scale, 15.0), torch.zeros_like(max_scale))
        dmin = torch.where(has_m, div_by(max_min, 15.0), torch.zeros_like(max_min))
        dsub = fp16_round(d) * (sc & 15).to(torch.float32)
        msub = fp16_round(dmin) * (sc >> 4).to(torch.float32)
        L = _requantize(xb.reshape(nb, 16, 16), dsub, msub, L, 0, 3)
        q = pack_2bit(L.reshape(nb, 256).to(torch.uint8))
        return lay.Q2_K.join(scales=sc, qs=q, d=fp16_bytes(d), dmin=fp16_bytes(dmin))

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        b, lead = self._bytes_in(data)
        n = b.shape[0]
        p = lay.Q2_K.split(b)
        dm = fp16_from_bytes(b[:, lay.Q2_K.span("d", "dmin")])  # (n, 2): d, dmin
        sc = p["scales"]
        scale = dm[:, :1] * (sc & 15).to(torch.float32)  # (n, 16)
        mins = dm[:, 1:] * (sc >> 4).to(torch.float32)
        y = _f32(unpack_2bit(p["qs"]).reshape(n, 16, 16)).mul_(scale[:, :, None]).sub_(mins[:, :, None])
        return self._rows_out(y.reshape(n, 256), lead)


class Q3_K(_KQuant):
    ggml_type = GGMLType.Q3_K

    def _quantize_blocks(self, xb: torch.Tensor) -> torch.Tensor:
        nb = xb.shape[0]
        scales, L = make_q3(sub_blocks(xb, 16), 4)
        scales = scales.reshape(nb, 16)
        L = L.t().reshape(nb, 16, 16)
        max_scale, _ = signed_absmax_cols(scales.t())
        max_scale = max_scale[:, None]
        has = max_scale != 0
        iscale = div(-32.0, torch.where(has, max_scale, torch.ones_like(max_scale)))
        l6 = (as_i8(nearest_int(iscale * scales)).clamp_(-32, 31) + 32).to(torch.uint8)
        l6 = torch.where(has, l6, torch.zeros_like(l6))  # (nb, 16) six-bit scales
        lo = (l6[:, :8] & 15) | ((l6[:, 8:] & 15) << 4)
        h = (l6 >> 4).reshape(nb, 4, 4)  # [j//4, j%4]
        hi = h[:, 0] | (h[:, 1] << 2) | (h[:, 2] << 4) | (h[:, 3] << 6)
        d = torch.where(has, div(1.0, iscale), torch.zeros_like(iscale))
        dsub = fp16_round(d) * (l6.to(torch.int32) - 32).to(torch.float32)
        q = nearest_int(xb.reshape(nb, 16, 16) / dsub[..., None]).clamp_(-4, 3).to(torch.float32) + 4
        L = torch.where((dsub != 0)[..., None], q, L)
        L = L.reshape(nb, 256).to(torch.uint8)
        high = L > 3
        q = pack_2bit(torch.where(high, L - 4, L))
        return lay.Q3_K.join(hmask=pack_hbits(high.to(torch.uint8)), qs=q, scales=torch.cat((lo, hi), dim=1),
                             d=fp16_bytes(d))

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        b, lead = self._bytes_in(data)
        n = b.shape[0]
        p = lay.Q3_K.split(b)
        scale = fp16_from_bytes(p["d"]) * unpack_q3_scales(p["scales"]).to(torch.float32)  # (n, 16)
        q = unpack_2bit(p["qs"]).view(torch.int8) - ((unpack_hbits(p["hmask"]) ^ 1) << 2).view(torch.int8)
        y = _f32(q.reshape(n, 16, 16)).mul_(scale[:, :, None])
        return self._rows_out(y.reshape(n, 256), lead)


def _k4_search(xb: torch.Tensor, nmax: int, rmin: float,
               nstep: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Q4_K / Q5_K ref: per 32-weight sub-block, weights av_x + |x| and make_qkx2_quants; then 6-bit scales
    and mins against d = max_scale/63, dmin = max_min/63; then requantization. Returns the d, dmin and scales
    fields (bytes) and the levels L, float32 (nb, 256)."""
    nb = xb.shape[0]
    xs = sub_blocks(xb, 32)
    av_x = sqrt_f32(div_by(seq_sum(xs * xs), 32.0))
    scales, mins, L = make_qkx2(xs, av_x + xs.abs(), nmax, rmin, 0.1, nstep, False)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    L = L.t().reshape(nb, 8, 32)
    max_scale, max_min = positive_max(scales), positive_max(mins)
    zero = torch.zeros_like(max_scale)
    inv_scale = torch.where(max_scale > 0, div(63.0, max_scale), zero)
    inv_min = torch.where(max_min > 0, div(63.0, max_min), zero)
    ls = as_u8(nearest_int(inv_scale * scales)).clamp_(max=63)
    lm = as_u8(nearest_int(inv_min * mins)).clamp_(max=63)
    d, dmin = div_by(max_scale, 63.0), div_by(max_min, 63.0)
    dsub = fp16_round(d) * ls.to(torch.float32)
    msub = fp16_round(dmin) * lm.to(torch.float32)
    L = _requantize(xb.reshape(nb, 8, 32), dsub, msub, L, 0, nmax)
    head = {"d": fp16_bytes(d), "dmin": fp16_bytes(dmin), "scales": pack_k4_scales(ls, lm)}
    return head, L.reshape(nb, 256)


class Q4_K(_KQuant):
    ggml_type = GGMLType.Q4_K

    def _quantize_blocks(self, xb: torch.Tensor) -> torch.Tensor:
        head, L = _k4_search(xb, 15, -1.0, 20)
        return lay.Q4_K.join(**head, qs=pack_4bit(L.to(torch.uint8)))

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        b, lead = self._bytes_in(data)
        n = b.shape[0]
        p = lay.Q4_K.split(b)
        dm = fp16_from_bytes(b[:, lay.Q4_K.span("d", "dmin")])  # (n, 2): d, dmin
        sc, m = unpack_k4_scales(p["scales"])
        scale = dm[:, :1] * sc.to(torch.float32)  # (n, 8)
        mins = dm[:, 1:] * m.to(torch.float32)
        y = _f32(unpack_4bit(p["qs"]).reshape(n, 8, 32)).mul_(scale[:, :, None]).sub_(mins[:, :, None])
        return self._rows_out(y.reshape(n, 256), lead)


class Q5_K(_KQuant):
    ggml_type = GGMLType.Q5_K

    def _quantize_blocks(self, xb: torch.Tensor) -> torch.Tensor:
        head, L = _k4_search(xb, 31, -0.5, 15)
        L = L.to(torch.uint8)
        return lay.Q5_K.join(**head, qh=pack_hbits(L >> 4), qs=pack_4bit(L & 15))

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        b, lead = self._bytes_in(data)
        n = b.shape[0]
        p = lay.Q5_K.split(b)
        dm = fp16_from_bytes(b[:, lay.Q5_K.span("d", "dmin")])  # (n, 2): d, dmin
        sc, m = unpack_k4_scales(p["scales"])
        scale = dm[:, :1] * sc.to(torch.float32)
        mins = dm[:, 1:] * m.to(torch.float32)
        q = unpack_4bit(p["qs"]) | (unpack_hbits(p["qh"]) << 4)
        y = _f32(q.reshape(n, 8, 32)).mul_(scale[:, :, None]).sub_(mins[:, :, None])
        return self._rows_out(y.reshape(n, 256), lead)


def pack_q6(L: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 256) of values < 64 -> ql (n, 128), qh (n, 64); the inverse of unpack_q6."""
    n = L.shape[0]
    a = L.reshape(n, 2, 4, 32)  # [h, k, l]
    lo = a & 15
    ql = torch.cat((lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)), dim=2)  # (n, 2, 64)
    hb = a >> 4
    qh = hb[:, :, 0] | (hb[:, :, 1] << 2) | (hb[:, :, 2] << 4) | (hb[:, :, 3] << 6)  # (n, 2, 32)
    return ql.reshape(n, 128), qh.reshape(n, 64)


class Q6_K(_KQuant):
    ggml_type = GGMLType.Q6_K
    chunk_blocks = CHUNK_BLOCKS // 8

    def _quantize_blocks(self, xb: torch.Tensor) -> torch.Tensor:
        nb = xb.shape[0]
        scales, L = make_qx(sub_blocks(xb, 16), 32)
        scales = scales.reshape(nb, 16)
        L = L.t().reshape(nb, 16, 16)
        max_scale, max_abs = signed_absmax_cols(scales.t())
        zero = (max_abs < GROUP_MAX_EPS)[:, None]
        max_scale = torch.where(zero[:, 0], torch.ones_like(max_scale), max_scale)[:, None]
        iscale = div(-128.0, max_scale)
        d = div(1.0, iscale)
        sc = as_i8(nearest_int(iscale * scales).clamp_(max=127))
        dsub = fp16_round(d) * sc.to(torch.float32)
        q = nearest_int(xb.reshape(nb, 16, 16) / dsub[..., None]).clamp_(-32, 31).to(torch.float32) + 32
        L = torch.where((dsub != 0)[..., None], q, L).reshape(nb, 256).to(torch.uint8)
        ql, qh = pack_q6(L)
        out = lay.Q6_K.join(ql=ql, qh=qh, scales=as_u8(sc), d=fp16_bytes(d))
        return torch.where(zero, torch.zeros_like(out), out)  # C memsets an all-tiny super-block

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        b, lead = self._bytes_in(data)
        n = b.shape[0]
        p = lay.Q6_K.split(b)
        scale = fp16_from_bytes(p["d"]) * p["scales"].view(torch.int8).to(torch.float32)  # (n, 16)
        q = unpack_q6(p["ql"], p["qh"]).view(torch.int8) - 32
        y = _f32(q.reshape(n, 16, 16)).mul_(scale[:, :, None])
        return self._rows_out(y.reshape(n, 256), lead)


class Q8_K(Codec):
    ggml_type = GGMLType.Q8_K

    def dequantize(self, data: torch.Tensor) -> torch.Tensor:
        b, lead = self._bytes_in(data)
        d = lay.Q8_K.typed(b, "d")  # (n, 1) float32
        return self._rows_out(_f32(lay.Q8_K.split(b)["qs"].view(torch.int8)).mul_(d), lead)
