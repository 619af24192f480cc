/* The 256-weight super-block quantizers Q2_K..Q6_K, byte for byte the torch codecs of
 * llamakit/quants/kquants.py with the searches of search.py (ggml's quantize_row_q*_K_ref: what
 * llama-quantize runs without an imatrix). Byte layouts: see kquants.py's docstring. Every function here
 * is the scalar loop the torch code vectorises over sub-blocks, in the same float32 order of operations.
 */
#include "lkq.h"

#define QK_K 256

/* search.levels: clamp(round_half_even(iscale * xm), 0, nmax), NaN kept (torch.clamp) */
static inline float level(float iscale, float xm, float nmax) {
    return lkq_clampf(lkq_round_even(iscale * xm), 0.0f, nmax);
}

/* search.finite_or_zero */
static inline float finite_or_zero(float v) { return isfinite(v) ? v : 0.0f; }

/* Lanes: the searches run on NL sub-blocks at once, stored element-major (x[i][b] = weight i of sub-block
 * b), exactly the torch code's layout: every `for (b ...)` loop below is one elementwise torch op, which
 * the compiler turns into SIMD. Each lane keeps its own sums in index order, so the float32 results are
 * those of the one-sub-block C loops; only the latency of the serial sums is hidden. */
#define NL 16

/* search.make_qkx2 on NL sub-blocks of n <= 32 weights: scale[b], neg_min[b] = -min, L[i][b] (floats) */
static inline __attribute__((always_inline)) void make_qkx2(int n, const float (*x)[NL], const float (*w)[NL],
        float nmax, float rmin, float rdelta, int nstep, int use_mad, float *scale, float *neg_min, float (*L)[NL]) {
    float mn[NL], mx[NL], sum_w[NL], sum_x[NL], iscale[NL], best[NL], win_is[NL], win_mn[NL];
    int flat[NL];
    for (int b = 0; b < NL; ++b) {
        mn[b] = mx[b] = x[0][b];
        sum_w[b] = w[0][b];
        sum_x[b] = w[0][b] * x[0][b];
    }
    for (int i = 1; i < n; ++i)
        for (int b = 0; b < NL; ++b) {
            mn[b] = x[i][b] < mn[b] ? x[i][b] : mn[b];
            mx[b] = x[i][b] > mx[b] ? x[i][b] : mx[b];
            sum_w[b] += w[i][b];
            sum_x[b] += w[i][b] * x[i][b];
        }
    for (int b = 0; b < NL; ++b) {
        mn[b] = mn[b] > 0 ? 0.0f : mn[b];
        flat[b] = mx[b] == mn[b]; /* L = 0, scale 0: no candidate can win (D == 0) */
        float is = nmax / (mx[b] - mn[b]);
        scale[b] = 1.0f / is; /* from the raw iscale: 1/inf = 0, as C */
        iscale[b] = finite_or_zero(is);
        best[b] = 0.0f;
        win_is[b] = iscale[b];
        win_mn[b] = mn[b];
    }
    for (int i = 0; i < n; ++i)
        for (int b = 0; b < NL; ++b) {
            float la = level(iscale[b], x[i][b] - mn[b], nmax);
            float diff = scale[b] * la + mn[b] - x[i][b];
            best[b] += w[i][b] * (use_mad ? fabsf(diff) : diff * diff);
        }
    float la[32][NL];
    for (int is = 0; is <= nstep; ++is) {
        float c = (rmin + rdelta * (float)is) + nmax;
        float isc[NL], sum_l[NL], sum_l2[NL], sum_xl[NL], mad[NL], ts[NL], tm[NL];
        for (int b = 0; b < NL; ++b) {
            isc[b] = finite_or_zero(c / (mx[b] - mn[b]));
            sum_l[b] = sum_l2[b] = sum_xl[b] = mad[b] = 0.0f;
        }
        for (int i = 0; i < n; ++i)
            for (int b = 0; b < NL; ++b) {
                float l = level(isc[b], x[i][b] - mn[b], nmax);
                float wl = w[i][b] * l;
                la[i][b] = l;
                sum_l[b] += wl;
                sum_l2[b] += wl * l;
                sum_xl[b] += wl * x[i][b];
            }
        for (int b = 0; b < NL; ++b) {
            float D = sum_w[b] * sum_l2[b] - sum_l[b] * sum_l[b];
            float this_scale = (sum_w[b] * sum_xl[b] - sum_x[b] * sum_l[b]) / D;
            float this_min = (sum_l2[b] * sum_x[b] - sum_l[b] * sum_xl[b]) / D;
            int pos = this_min > 0;
            tm[b] = pos ? 0.0f : this_min;
            ts[b] = pos ? sum_xl[b] / sum_l2[b] : this_scale;
            sum_l[b] = D; /* reused: D */
        }
        for (int i = 0; i < n; ++i)
            for (int b = 0; b < NL; ++b) {
                float diff = la[i][b] * ts[b] + tm[b] - x[i][b];
                mad[b] += (use_mad ? fabsf(diff) : diff * diff) * w[i][b];
            }
        for (int b = 0; b < NL; ++b) {
            int take = sum_l[b] > 0 && mad[b] < best[b];
            win_is[b] = take ? isc[b] : win_is[b];
            win_mn[b] = take ? mn[b] : win_mn[b];
            best[b] = take ? mad[b] : best[b];
            scale[b] = take ? ts[b] : scale[b];
            mn[b] = take ? tm[b] : mn[b];
        }
    }
    for (int i = 0; i < n; ++i)
        for (int b = 0; b < NL; ++b) L[i][b] = flat[b] ? 0.0f : level(win_is[b], x[i][b] - win_mn[b], nmax);
    for (int b = 0; b < NL; ++b) {
        scale[b] = flat[b] ? 0.0f : scale[b];
        neg_min[b] = -mn[b];
    }
}

/* NL sub-blocks of n weights, contiguous (sub-block b at x + n*b) -> element-major */
static void to_lanes(int n, const float *x, float (*xl)[NL]) {
    for (int b = 0; b < NL; ++b)
        for (int i = 0; i < n; ++i) xl[i][b] = x[n * b + i];
}

/* the final requantization: clamp(nearest_int((x + dm)/d), lo, hi) where d != 0, else the search's L */
static void requantize(int n, const float *x, float d, float dm, float *L, int lo, int hi) {
    if (d == 0.0f) return;
    for (int i = 0; i < n; ++i) L[i] = (float)lkq_clampi(lkq_nearest_int((x[i] + dm) / d), lo, hi);
}

static inline uint8_t as_u8(int32_t v) { return (uint8_t)(v & 255); }

/* kquants.pack_2bit: qs[32h + l] = sum_k L[128h + 32k + l] << 2k */
static void pack_2bit(const uint8_t *L, uint8_t *qs) {
    for (int h = 0; h < 2; ++h)
        for (int l = 0; l < 32; ++l) {
            const uint8_t *a = L + 128 * h + l;
            qs[32 * h + l] = (uint8_t)(a[0] | (a[32] << 2) | (a[64] << 4) | (a[96] << 6));
        }
}

/* kquants.pack_hbits: bit e//32 of byte e%32 */
static void pack_hbits(const uint8_t *bits, uint8_t *hm) {
    for (int l = 0; l < 32; ++l) {
        uint8_t v = 0;
        for (int k = 0; k < 8; ++k) v |= (uint8_t)((bits[32 * k + l] & 1) << k);
        hm[l] = v;
    }
}

/* kquants.pack_4bit: qs[32c + l] = L[64c + l] | L[64c + 32 + l] << 4 */
static void pack_4bit(const uint8_t *L, uint8_t *qs) {
    for (int c = 0; c < 4; ++c)
        for (int l = 0; l < 32; ++l) qs[32 * c + l] = (uint8_t)(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
}

/* kquants.pack_k4_scales */
static void pack_k4_scales(const uint8_t *ls, const uint8_t *lm, uint8_t *s) {
    for (int j = 0; j < 4; ++j) {
        s[j] = (uint8_t)(ls[j] | ((ls[j + 4] >> 4) << 6));
        s[j + 4] = (uint8_t)(lm[j] | ((lm[j + 4] >> 4) << 6));
        s[j + 8] = (uint8_t)((ls[j + 4] & 15) | ((lm[j + 4] & 15) << 4));
    }
}

/* one Q2_K super-block from its scales/mins/levels (the search done) */
static void q2_k_finish(const float *x, const float *scales, const float *mins, float *L, uint8_t *y) {
    float max_scale = lkq_positive_max(scales, 16), max_min = lkq_positive_max(mins, 16);
    int has_s = max_scale > 0, has_m = max_min > 0;
    float inv_s = 15.0f / max_scale, inv_m = 15.0f / max_min;
    uint8_t *sc = y;
    for (int j = 0; j < 16; ++j) {
        uint8_t s = has_s ? as_u8(lkq_nearest_int(inv_s * scales[j])) : 0;
        uint8_t m = has_m ? as_u8(lkq_nearest_int(inv_m * mins[j])) : 0;
        sc[j] = (uint8_t)(s | (m << 4));
    }
    float d = has_s ? max_scale / 15.0f : 0.0f, dmin = has_m ? max_min / 15.0f : 0.0f;
    float df = lkq_f16_round(d), mf = lkq_f16_round(dmin);
    for (int j = 0; j < 16; ++j)
        requantize(16, x + 16 * j, df * (float)(sc[j] & 15), mf * (float)(sc[j] >> 4), L + 16 * j, 0, 3);
    uint8_t Lq[QK_K];
    for (int i = 0; i < QK_K; ++i) Lq[i] = (uint8_t)lkq_cvt_i32(L[i]);
    pack_2bit(Lq, y + 16);
    lkq_put_f16(y + 80, d);
    lkq_put_f16(y + 82, dmin);
}

/* lanes -> per-sub-block rows: L[16*b + i] = Ll[i][b] */
static void from_lanes(int n, const float (*Ll)[NL], float *L) {
    for (int b = 0; b < NL; ++b)
        for (int i = 0; i < n; ++i) L[n * b + i] = Ll[i][b];
}

void lkq_q2_k(const float *x, uint8_t *y, int64_t n) {
    for (int64_t blk = 0; blk < n / QK_K; ++blk, x += QK_K, y += 84) {
        float xl[16][NL], wl[16][NL], Ll[16][NL], L[QK_K], scales[16], mins[16];
        to_lanes(16, x, xl);
        for (int i = 0; i < 16; ++i)
            for (int b = 0; b < NL; ++b) wl[i][b] = fabsf(xl[i][b]);
        make_qkx2(16, xl, wl, 3.0f, -0.5f, 0.1f, 15, 1, scales, mins, Ll);
        from_lanes(16, Ll, L);
        q2_k_finish(x, scales, mins, L, y);
    }
}

/* search.make_q3 on NL 16-weight sub-blocks (nmax 4): scale[b], L[i][b] in 0..7. Sweeps stop when no
 * lane changed (a sweep that changes nothing leaves the state as it was, so this is C's per-block break) */
static void make_q3(const float (*x)[NL], float *scale, float (*L)[NL]) {
    const float nmax = 4.0f;
    float mx[NL], amax[NL], iscale[NL], sumlx[NL], suml2[NL], w[16][NL], wx[16][NL];
    int zero[NL];
    for (int b = 0; b < NL; ++b) amax[b] = mx[b] = 0.0f;
    for (int i = 0; i < 16; ++i)
        for (int b = 0; b < NL; ++b) {
            float a = fabsf(x[i][b]);
            int gt = a > amax[b];
            amax[b] = gt ? a : amax[b];
            mx[b] = gt ? x[i][b] : mx[b];
        }
    for (int b = 0; b < NL; ++b) {
        zero[b] = amax[b] < LKQ_GROUP_MAX_EPS;
        iscale[b] = -nmax / (zero[b] ? 1.0f : mx[b]);
        sumlx[b] = suml2[b] = 0.0f;
    }
    for (int i = 0; i < 16; ++i)
        for (int b = 0; b < NL; ++b) {
            float l = lkq_clampf(lkq_round_even(iscale[b] * x[i][b]), -nmax, nmax - 1);
            L[i][b] = l;
            w[i][b] = x[i][b] * x[i][b];
            wx[i][b] = w[i][b] * x[i][b];
            sumlx[b] += wx[i][b] * l;
            suml2[b] += w[i][b] * l * l;
        }
    for (int itry = 0; itry < 5; ++itry) {
        int changed = 0;
        for (int i = 0; i < 16; ++i)
            for (int b = 0; b < NL; ++b) {
                float li = L[i][b], slx = sumlx[b] - wx[i][b] * li, sl2 = suml2[b] - w[i][b] * li * li;
                float nw = (float)lkq_clampi(lkq_nearest_int(x[i][b] * sl2 / slx), -4, 3);
                int ok = slx > 0 && nw != li;
                slx = slx + wx[i][b] * nw;
                sl2 = sl2 + w[i][b] * nw * nw;
                ok = ok && sl2 > 0 && slx * slx * suml2[b] > sumlx[b] * sumlx[b] * sl2;
                L[i][b] = ok ? nw : li;
                sumlx[b] = ok ? slx : sumlx[b];
                suml2[b] = ok ? sl2 : suml2[b];
                changed |= ok;
            }
        if (!changed) break;
    }
    for (int b = 0; b < NL; ++b) scale[b] = zero[b] ? 0.0f : sumlx[b] / suml2[b];
    for (int i = 0; i < 16; ++i)
        for (int b = 0; b < NL; ++b) L[i][b] = zero[b] ? 0.0f : L[i][b] + nmax;
}

void lkq_q3_k(const float *x, uint8_t *y, int64_t n) {
    for (int64_t blk = 0; blk < n / QK_K; ++blk, x += QK_K, y += 110) {
        float xl[16][NL], Ll[16][NL], L[QK_K], scales[16];
        to_lanes(16, x, xl);
        make_q3(xl, scales, Ll);
        from_lanes(16, Ll, L);
        float amax, max_scale = lkq_signed_absmax(scales, 16, &amax);
        int has = max_scale != 0;
        float iscale = -32.0f / (has ? max_scale : 1.0f);
        uint8_t l6[16];
        for (int j = 0; j < 16; ++j) {
            int32_t v = lkq_nearest_int(iscale * scales[j]);
            v = ((v + 128) & 255) - 128; /* as_i8 */
            l6[j] = has ? (uint8_t)(lkq_clampi(v, -32, 31) + 32) : 0;
        }
        uint8_t *sc = y + 96;
        for (int j = 0; j < 8; ++j) sc[j] = (uint8_t)((l6[j] & 15) | ((l6[j + 8] & 15) << 4));
        for (int j = 0; j < 4; ++j)
            sc[8 + j] = (uint8_t)((l6[j] >> 4) | ((l6[4 + j] >> 4) << 2) | ((l6[8 + j] >> 4) << 4) |
                                  ((l6[12 + j] >> 4) << 6));
        float d = has ? 1.0f / iscale : 0.0f, df = lkq_f16_round(d);
        uint8_t Lq[QK_K], high[QK_K];
        for (int j = 0; j < 16; ++j) {
            float dsub = df * (float)((int32_t)l6[j] - 32);
            const float *xs = x + 16 * j;
            for (int i = 0; i < 16; ++i) {
                float l = dsub != 0.0f ? (float)(lkq_clampi(lkq_nearest_int(xs[i] / dsub), -4, 3) + 4) : L[16 * j + i];
                uint8_t q = (uint8_t)lkq_cvt_i32(l);
                high[16 * j + i] = q > 3;
                Lq[16 * j + i] = q > 3 ? (uint8_t)(q - 4) : q;
            }
        }
        pack_hbits(high, y);
        pack_2bit(Lq, y + 32);
        lkq_put_f16(y + 108, d);
    }
}

/* kquants._k4_search's tail + the packing of Q4_K (nmax 15) and Q5_K (nmax 31), one super-block */
static void k4_finish(const float *x, const float *scales, const float *mins, float *L, uint8_t *y, int nmax,
                      int five) {
    float max_scale = lkq_positive_max(scales, 8), max_min = lkq_positive_max(mins, 8);
    float inv_s = max_scale > 0 ? 63.0f / max_scale : 0.0f, inv_m = max_min > 0 ? 63.0f / max_min : 0.0f;
    uint8_t ls[8], lm[8];
    for (int j = 0; j < 8; ++j) {
        uint8_t s = as_u8(lkq_nearest_int(inv_s * scales[j])), m = as_u8(lkq_nearest_int(inv_m * mins[j]));
        ls[j] = s > 63 ? 63 : s;
        lm[j] = m > 63 ? 63 : m;
    }
    float d = max_scale / 63.0f, dmin = max_min / 63.0f;
    float df = lkq_f16_round(d), mf = lkq_f16_round(dmin);
    for (int j = 0; j < 8; ++j) requantize(32, x + 32 * j, df * (float)ls[j], mf * (float)lm[j], L + 32 * j, 0, nmax);
    lkq_put_f16(y, d);
    lkq_put_f16(y + 2, dmin);
    pack_k4_scales(ls, lm, y + 4);
    uint8_t Lq[QK_K];
    for (int i = 0; i < QK_K; ++i) Lq[i] = (uint8_t)lkq_cvt_i32(L[i]);
    if (five) {
        uint8_t hb[QK_K];
        for (int i = 0; i < QK_K; ++i) {
            hb[i] = Lq[i] >> 4;
            Lq[i] &= 15;
        }
        pack_hbits(hb, y + 16);
        pack_4bit(Lq, y + 48);
    } else {
        pack_4bit(Lq, y + 16);
    }
}

/* two super-blocks (16 sub-blocks of 32) per search; an odd last one is searched beside zeros */
static void k4(const float *x, uint8_t *y, int64_t nb, int nmax, float rmin, int nstep, int five, int type_size) {
    for (int64_t blk = 0; blk < nb; blk += 2) {
        float pad[2 * QK_K];
        const float *xp = x + blk * QK_K;
        int two = blk + 1 < nb;
        if (!two) {
            memcpy(pad, xp, QK_K * sizeof(float));
            memset(pad + QK_K, 0, QK_K * sizeof(float));
            xp = pad;
        }
        float xl[32][NL], wl[32][NL], Ll[32][NL], sum_x2[NL], L[2 * QK_K], scales[NL], mins[NL];
        to_lanes(32, xp, xl);
        for (int b = 0; b < NL; ++b) sum_x2[b] = 0.0f;
        for (int i = 0; i < 32; ++i)
            for (int b = 0; b < NL; ++b) sum_x2[b] += xl[i][b] * xl[i][b];
        for (int b = 0; b < NL; ++b) sum_x2[b] = sqrtf(sum_x2[b] / 32.0f); /* av_x */
        for (int i = 0; i < 32; ++i)
            for (int b = 0; b < NL; ++b) wl[i][b] = sum_x2[b] + fabsf(xl[i][b]);
        make_qkx2(32, xl, wl, (float)nmax, rmin, 0.1f, nstep, 0, scales, mins, Ll);
        from_lanes(32, Ll, L);
        k4_finish(xp, scales, mins, L, y + blk * type_size, nmax, five);
        if (two) k4_finish(xp + QK_K, scales + 8, mins + 8, L + QK_K, y + (blk + 1) * type_size, nmax, five);
    }
}

void lkq_q4_k(const float *x, uint8_t *y, int64_t n) { k4(x, y, n / QK_K, 15, -1.0f, 20, 0, 144); }

void lkq_q5_k(const float *x, uint8_t *y, int64_t n) { k4(x, y, n / QK_K, 31, -0.5f, 15, 1, 176); }

/* search.make_qx (rmse_type 1, weights x*x) on NL 16-weight sub-blocks, nmax 32: scale[b], L[i][b] in 0..63.
 * The chosen candidate's levels are recomputed from its inverse scale at the end (same arithmetic). */
static void make_qx(const float (*x)[NL], float *scale, float (*L)[NL]) {
    const float nmax = 32.0f;
    float mx[NL], amax[NL], best[NL], win[NL], w[16][NL], wx[16][NL];
    for (int b = 0; b < NL; ++b) amax[b] = mx[b] = 0.0f;
    for (int i = 0; i < 16; ++i)
        for (int b = 0; b < NL; ++b) {
            float a = fabsf(x[i][b]);
            int gt = a > amax[b];
            amax[b] = gt ? a : amax[b];
            mx[b] = gt ? x[i][b] : mx[b];
            w[i][b] = x[i][b] * x[i][b];
            wx[i][b] = w[i][b] * x[i][b];
        }
    for (int b = 0; b < NL; ++b) mx[b] = amax[b] < LKQ_GROUP_MAX_EPS ? 1.0f : mx[b];
    for (int k = 0; k < 19; ++k) {
        /* candidate k: -nmax/max, then -(nmax + 0.1f*is)/max for is = -9..-1, 1..9 */
        int is = k == 0 ? 0 : (k <= 9 ? k - 10 : k - 9);
        float neg = k == 0 ? -nmax : -(nmax + 0.1f * (float)is);
        float isc[NL], sumlx[NL], suml2[NL];
        for (int b = 0; b < NL; ++b) {
            isc[b] = neg / mx[b];
            sumlx[b] = suml2[b] = 0.0f;
        }
        for (int i = 0; i < 16; ++i)
            for (int b = 0; b < NL; ++b) {
                float l = lkq_clampf(lkq_round_even(isc[b] * x[i][b]), -nmax, nmax - 1);
                sumlx[b] += wx[i][b] * l;
                suml2[b] += w[i][b] * l * l;
            }
        for (int b = 0; b < NL; ++b) {
            if (k == 0) {
                scale[b] = suml2[b] != 0 ? sumlx[b] / suml2[b] : 0.0f;
                best[b] = scale[b] * sumlx[b];
                win[b] = isc[b];
            } else {
                float sk = sumlx[b] / suml2[b];
                int take = suml2[b] > 0 && sumlx[b] * sumlx[b] > best[b] * suml2[b];
                scale[b] = take ? sk : scale[b];
                best[b] = take ? sk * sumlx[b] : best[b];
                win[b] = take ? isc[b] : win[b];
            }
        }
    }
    for (int i = 0; i < 16; ++i)
        for (int b = 0; b < NL; ++b)
            L[i][b] = amax[b] < LKQ_GROUP_MAX_EPS ? 0.0f
                                                  : lkq_clampf(lkq_round_even(win[b] * x[i][b]), -nmax, nmax - 1) + nmax;
    for (int b = 0; b < NL; ++b) scale[b] = amax[b] < LKQ_GROUP_MAX_EPS ? 0.0f : scale[b];
}

/* kquants.pack_q6: ql[64h + l] = lo(128h+l) | lo(128h+64+l) << 4, ql[64h+32+l] = lo(128h+32+l) |
 * lo(128h+96+l) << 4; qh[32h + l] = the high 2 bits of 128h + 32k + l at bit 2k */
static void pack_q6(const uint8_t *L, uint8_t *ql, uint8_t *qh) {
    for (int h = 0; h < 2; ++h)
        for (int l = 0; l < 32; ++l) {
            const uint8_t *a = L + 128 * h + l;
            ql[64 * h + l] = (uint8_t)((a[0] & 15) | ((a[64] & 15) << 4));
            ql[64 * h + 32 + l] = (uint8_t)((a[32] & 15) | ((a[96] & 15) << 4));
            qh[32 * h + l] = (uint8_t)((a[0] >> 4) | ((a[32] >> 4) << 2) | ((a[64] >> 4) << 4) | ((a[96] >> 4) << 6));
        }
}

void lkq_q6_k(const float *x, uint8_t *y, int64_t n) {
    for (int64_t blk = 0; blk < n / QK_K; ++blk, x += QK_K, y += 210) {
        float xl[16][NL], Ll[16][NL], L[QK_K], scales[16];
        to_lanes(16, x, xl);
        make_qx(xl, scales, Ll);
        from_lanes(16, Ll, L);
        float max_abs, max_scale = lkq_signed_absmax(scales, 16, &max_abs);
        if (max_abs < LKQ_GROUP_MAX_EPS) { /* C memsets an all-tiny super-block */
            memset(y, 0, 210);
            continue;
        }
        float iscale = -128.0f / max_scale, d = 1.0f / iscale, df = lkq_f16_round(d);
        int8_t sc[16];
        for (int j = 0; j < 16; ++j) {
            int32_t v = lkq_nearest_int(iscale * scales[j]);
            v = v > 127 ? 127 : v;
            sc[j] = (int8_t)(((v + 128) & 255) - 128);
        }
        uint8_t Lq[QK_K];
        for (int j = 0; j < 16; ++j) {
            float dsub = df * (float)sc[j];
            const float *xs = x + 16 * j;
            for (int i = 0; i < 16; ++i) {
                float l = dsub != 0.0f ? (float)(lkq_clampi(lkq_nearest_int(xs[i] / dsub), -32, 31) + 32) : L[16 * j + i];
                Lq[16 * j + i] = (uint8_t)lkq_cvt_i32(l);
            }
        }
        pack_q6(Lq, y, y + 128);
        memcpy(y + 192, sc, 16);
        lkq_put_f16(y + 208, d);
    }
}
