"""The Triton code of triton_kernels.py (imported only when a Triton kernel is first built: `import triton`
never happens at `import llamakit`).

One dequantizer, `_dequant`, specialised per format at compile time (FMT is a constexpr), turns a tile of
packed rows into float32 exactly as the torch codecs do: same integer unpacking, same float32 products,
and launched with fp fusion off so `q * scale - min` is not contracted into an FMA (which would round
once instead of twice and differ from the codec in the last bit). Element k of a row lives in block
k // QK at byte (k // QK) * TS, position j = k % QK inside it (layouts: quants/legacy.py, kquants.py):
    Q4_0  18 B: d | qs[16]                     q = qs[j%16] >> 4(j//16) & 15            x = (q - 8) d
    Q4_1  20 B: d | m | qs[16]                                                            x = q d + m
    Q5_0  22 B: d | qh[4] | qs[16]             q |= (qh >> j & 1) << 4                  x = (q - 16) d
    Q5_1  24 B: d | m | qh[4] | qs[16]                                                    x = q d + m
    Q8_0  34 B: d | qs[32] int8                                                           x = q d
    IQ4_NL 18 B: d | qs[16]                                                               x = kvalues[q] d
    Q2_K  84 B: scales[16] | qs[64] | d | dmin  q = qs[32h+l] >> 2k & 3   x = q (d sc) - dmin m
    Q3_K 110 B: hmask[32] | qs[64] | scales[12] | d                       x = (q2 - 4 (1 - hbit)) (d (s - 32))
    Q4_K 144 B: d | dmin | scales[12] | qs[128] q = qs[32c+l] >> 4k & 15  x = q (d sc) - dmin m
    Q5_K 176 B: d | dmin | scales[12] | qh[32] | qs[128]
    Q6_K 210 B: ql[128] | qh[64] | scales[16] int8 | d                    x = (q - 32) (d sc)
with e = j = 128h + 32k + l (K-quants, Q2/Q3/Q6) or 64c + 32k + l (Q4_K/Q5_K). f16 scales sit at even
byte offsets of every format, so they are read through a float16 view of the same bytes (`wf`).
F32/F16/BF16 read `wf` typed as the format.
"""

from __future__ import annotations

import triton
import triton.language as tl

# format ids (the FMT constexpr)
F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = range(14)


@triton.jit
def _u8(w8, off, m):
    return tl.load(w8 + off, mask=m, other=0).to(tl.int32)


@triton.jit
def _h(wf, off, m):
    """The f16 at byte offset `off` (even) as float32."""
    return tl.load(wf + off // 2, mask=m, other=0.0).to(tl.float32)


@triton.jit
def _dequant(w8, wf, tab, rows, k, m, row_bytes, row_f, FMT: tl.constexpr, QK: tl.constexpr,
             TS: tl.constexpr):
    """float32 [BN, BK] of rows[:, None] x k[None, :]; masked entries are 0."""
    r64 = rows.to(tl.int64)[:, None]
    kk = k[None, :]
    if FMT <= BF16:
        x = tl.load(wf + r64 * row_f + kk, mask=m, other=0.0).to(tl.float32)
    else:
        j = kk % QK
        base = r64 * row_bytes + (kk // QK) * TS
        if FMT == Q4_0 or FMT == IQ4_NL:
            d = _h(wf, base, m)
            q = (_u8(w8, base + 2 + j % 16, m) >> ((j // 16) * 4)) & 15
            if FMT == Q4_0:
                x = (q - 8).to(tl.float32) * d
            else:
                x = tl.load(tab + q, mask=m, other=0.0) * d
        elif FMT == Q4_1:
            q = (_u8(w8, base + 4 + j % 16, m) >> ((j // 16) * 4)) & 15
            x = q.to(tl.float32) * _h(wf, base, m) + _h(wf, base + 2, m)
        elif FMT == Q5_0:
            q = (_u8(w8, base + 6 + j % 16, m) >> ((j // 16) * 4)) & 15
            q = q | (((_u8(w8, base + 2 + j // 8, m) >> (j % 8)) & 1) << 4)
            x = (q - 16).to(tl.float32) * _h(wf, base, m)
        elif FMT == Q5_1:
            q = (_u8(w8, base + 8 + j % 16, m) >> ((j // 16) * 4)) & 15
            q = q | (((_u8(w8, base + 4 + j // 8, m) >> (j % 8)) & 1) << 4)
            x = q.to(tl.float32) * _h(wf, base, m) + _h(wf, base + 2, m)
        elif FMT == Q8_0:
            b = _u8(w8, base + 2 + j, m)
            x = (b - ((b >> 7) << 8)).to(tl.float32) * _h(wf, base, m)
        elif FMT == Q2_K:
            q = (_u8(w8, base + 16 + 32 * (j // 128) + j % 32, m) >> (2 * ((j % 128) // 32))) & 3
            sc = _u8(w8, base + j // 16, m)
            scale = _h(wf, base + 80, m) * (sc & 15).to(tl.float32)
            mn = _h(wf, base + 82, m) * (sc >> 4).to(tl.float32)
            x = q.to(tl.float32) * scale - mn
        elif FMT == Q3_K:
            q = (_u8(w8, base + 32 + 32 * (j // 128) + j % 32, m) >> (2 * ((j % 128) // 32))) & 3
            hbit = (_u8(w8, base + j % 32, m) >> (j // 32)) & 1
            q = q - 4 * (1 - hbit)
            s = j // 16
            lo = _u8(w8, base + 96 + s % 8, m)
            lo = tl.where(s < 8, lo & 15, lo >> 4)
            hi = (_u8(w8, base + 104 + s % 4, m) >> (2 * (s // 4))) & 3
            scale = _h(wf, base + 108, m) * ((lo | (hi << 4)) - 32).to(tl.float32)
            x = q.to(tl.float32) * scale
        elif FMT == Q4_K or FMT == Q5_K:
            if FMT == Q4_K:
                q = (_u8(w8, base + 16 + 32 * (j // 64) + j % 32, m) >> (4 * ((j // 32) % 2))) & 15
            else:
                q = (_u8(w8, base + 48 + 32 * (j // 64) + j % 32, m) >> (4 * ((j // 32) % 2))) & 15
                q = q | (((_u8(w8, base + 16 + j % 32, m) >> (j // 32)) & 1) << 4)
            sub = j // 32
            a = _u8(w8, base + 4 + sub % 4, m)
            b = _u8(w8, base + 8 + sub % 4, m)
            c = _u8(w8, base + 12 + sub % 4, m)
            sc = tl.where(sub < 4, a & 63, (c & 15) | ((a >> 6) << 4))
            mm = tl.where(sub < 4, b & 63, (c >> 4) | ((b >> 6) << 4))
            scale = _h(wf, base, m) * sc.to(tl.float32)
            mn = _h(wf, base + 2, m) * mm.to(tl.float32)
            x = q.to(tl.float32) * scale - mn
        else:  # Q6_K
            h = j // 128
            k4 = (j % 128) // 32
            lo = (_u8(w8, base + 64 * h + 32 * (k4 % 2) + j % 32, m) >> (4 * (k4 // 2))) & 15
            hi = (_u8(w8, base + 128 + 32 * h + j % 32, m) >> (2 * k4)) & 3
            s = _u8(w8, base + 192 + j // 16, m)
            scale = _h(wf, base + 208, m) * (s - ((s >> 7) << 8)).to(tl.float32)
            x = ((lo | (hi << 4)) - 32).to(tl.float32) * scale
    return tl.where(m, x, 0.0)


@triton.jit
def dequant_kernel(w8, wf, tab, out, N, K, row_bytes, row_f, FMT: tl.constexpr, QK: tl.constexpr,
                   TS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """out float32 (N, K) = the rows dequantized; grid (cdiv(N, BN), cdiv(K, BK))."""
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    k = tl.program_id(1) * BK + tl.arange(0, BK)
    m = (rows[:, None] < N) & (k[None, :] < K)
    x = _dequant(w8, wf, tab, rows, k, m, row_bytes, row_f, FMT, QK, TS)
    tl.store(out + rows.to(tl.int64)[:, None] * K + k[None, :], x, mask=m)


@triton.jit
def matmul_kernel(x, w8, wf, tab, y, M, N, K, row_bytes, row_f, FMT: tl.constexpr, QK: tl.constexpr,
                  TS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """y float32 (M, N) = x (M, K) @ dequant(w)^T, the weights dequantized in registers, never stored;
    grid (cdiv(N, BN), cdiv(M, BM)). Accumulates in float32 with IEEE products (no TF32)."""
    rm = tl.program_id(1) * BM + tl.arange(0, BM)
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK)
        xt = tl.load(x + rm.to(tl.int64)[:, None] * K + k[None, :], mask=(rm[:, None] < M) & (k[None, :] < K),
                     other=0.0)
        wt = _dequant(w8, wf, tab, rn, k, (rn[:, None] < N) & (k[None, :] < K), row_bytes, row_f, FMT, QK, TS)
        acc += tl.dot(xt, tl.trans(wt), input_precision="ieee")
    tl.store(y + rm.to(tl.int64)[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))
