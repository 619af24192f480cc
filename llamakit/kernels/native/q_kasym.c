/* The asymmetric K-quants Q2_K, Q4_K, Q5_K (scale + min per sub-block, make_qkx2_quants), byte for byte
 * the torch codecs of llamakit/quants/kquants.py and search.py (ggml's quantize_row_q*_K_ref: what
 * llama-quantize runs without an imatrix), in the same float32 order of operations. */
#include "lkq_k.h"

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

