/* The symmetric K-quants Q3_K (make_q3_quants) and Q6_K (make_qx_quants), byte for byte the torch codecs
 * of llamakit/quants/kquants.py and search.py, in the same float32 order of operations. */
#include "lkq_k.h"

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

