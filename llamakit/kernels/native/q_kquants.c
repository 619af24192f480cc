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

/* search.make_qkx2 for one sub-block of n <= 32 weights: returns the scale, *neg_min = -min, L (floats) */
static float make_qkx2(int n, const float *x, const float *w, float nmax, float rmin, float rdelta, int nstep,
                       int use_mad, float *neg_min, float *L) {
    float mn = x[0], mx = x[0], sum_w = w[0], sum_x = w[0] * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < mn) mn = x[i];
        if (x[i] > mx) mx = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (mn > 0) mn = 0.0f;
    if (mx == mn) { /* flat: no candidate can win (D == 0), scale and L are 0 */
        for (int i = 0; i < n; ++i) L[i] = 0.0f;
        *neg_min = -mn;
        return 0.0f;
    }
    float iscale = nmax / (mx - mn);
    float scale = 1.0f / iscale;
    iscale = finite_or_zero(iscale);
    float best = 0.0f;
    for (int i = 0; i < n; ++i) {
        float la = level(iscale, x[i] - mn, nmax);
        float diff = scale * la + mn - x[i];
        best += w[i] * (use_mad ? fabsf(diff) : diff * diff);
    }
    float win_iscale = iscale, win_mn = mn, la[32];
    for (int is = 0; is <= nstep; ++is) {
        float c = (rmin + rdelta * (float)is) + nmax;
        float isc = finite_or_zero(c / (mx - mn));
        float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
        for (int i = 0; i < n; ++i) {
            float l = level(isc, x[i] - mn, nmax);
            float wl = w[i] * l;
            la[i] = l;
            sum_l += wl;
            sum_l2 += wl * l;
            sum_xl += wl * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
        float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        if (this_min > 0) {
            this_min = 0.0f;
            this_scale = sum_xl / sum_l2;
        }
        float mad = 0.0f;
        for (int i = 0; i < n; ++i) {
            float diff = la[i] * this_scale + this_min - x[i];
            mad += (use_mad ? fabsf(diff) : diff * diff) * w[i];
        }
        if (D > 0 && mad < best) {
            win_iscale = isc;
            win_mn = mn;
            best = mad;
            scale = this_scale;
            mn = this_min;
        }
    }
    for (int i = 0; i < n; ++i) L[i] = level(win_iscale, x[i] - win_mn, nmax);
    *neg_min = -mn;
    return scale;
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

void lkq_q2_k(const float *x, uint8_t *y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; ++b, x += QK_K, y += 84) {
        float L[QK_K], w[16], scales[16], mins[16];
        for (int j = 0; j < 16; ++j) {
            const float *xs = x + 16 * j;
            for (int i = 0; i < 16; ++i) w[i] = fabsf(xs[i]);
            scales[j] = make_qkx2(16, xs, w, 3.0f, -0.5f, 0.1f, 15, 1, &mins[j], L + 16 * j);
        }
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
}

/* search.make_q3 for one 16-weight sub-block (nmax 4): returns the scale, L in 0..7 */
static float make_q3(const float *x, float *L) {
    const int n = 16;
    const float nmax = 4.0f;
    float amax, mx = lkq_signed_absmax(x, n, &amax);
    int zero = amax < LKQ_GROUP_MAX_EPS;
    if (zero) mx = 1.0f;
    float iscale = -nmax / mx, w[16], wx[16], sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; ++i) {
        L[i] = lkq_clampf(lkq_round_even(iscale * x[i]), -nmax, nmax - 1);
        w[i] = x[i] * x[i];
        wx[i] = w[i] * x[i];
        sumlx += wx[i] * L[i];
        suml2 += w[i] * L[i] * L[i];
    }
    for (int itry = 0; itry < 5; ++itry) {
        int changed = 0;
        for (int i = 0; i < n; ++i) {
            float li = L[i], slx = sumlx - wx[i] * li, sl2 = suml2 - w[i] * li * li;
            if (!(slx > 0)) continue;
            float nw = (float)lkq_clampi(lkq_nearest_int(x[i] * sl2 / slx), -4, 3);
            if (nw == li) continue;
            slx = slx + wx[i] * nw;
            sl2 = sl2 + w[i] * nw * nw;
            if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                L[i] = nw;
                sumlx = slx;
                suml2 = sl2;
                changed = 1;
            }
        }
        if (!changed) break; /* a sweep that changes nothing leaves the state as it is */
    }
    if (zero) {
        for (int i = 0; i < n; ++i) L[i] = 0.0f;
        return 0.0f;
    }
    for (int i = 0; i < n; ++i) L[i] += nmax;
    return sumlx / suml2;
}

void lkq_q3_k(const float *x, uint8_t *y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; ++b, x += QK_K, y += 110) {
        float L[QK_K], scales[16];
        for (int j = 0; j < 16; ++j) scales[j] = make_q3(x + 16 * j, L + 16 * j);
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

/* kquants._k4_search + the packing of Q4_K (nmax 15) and Q5_K (nmax 31) */
static void k4(const float *x, uint8_t *y, int nmax, float rmin, int nstep, int five) {
    float L[QK_K], w[32], scales[8], mins[8];
    for (int j = 0; j < 8; ++j) {
        const float *xs = x + 32 * j;
        float sum_x2 = 0.0f;
        for (int i = 0; i < 32; ++i) sum_x2 += xs[i] * xs[i];
        float av_x = sqrtf(sum_x2 / 32.0f);
        for (int i = 0; i < 32; ++i) w[i] = av_x + fabsf(xs[i]);
        scales[j] = make_qkx2(32, xs, w, (float)nmax, rmin, 0.1f, nstep, 0, &mins[j], L + 32 * j);
    }
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

void lkq_q4_k(const float *x, uint8_t *y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; ++b) k4(x + b * QK_K, y + b * 144, 15, -1.0f, 20, 0);
}

void lkq_q5_k(const float *x, uint8_t *y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; ++b) k4(x + b * QK_K, y + b * 176, 31, -0.5f, 15, 1);
}

/* search.make_qx (rmse_type 1, weights x*x) for one 16-weight sub-block, nmax 32: scale, L in 0..63 */
static float make_qx(const float *x, float *L) {
    const int n = 16;
    const float nmax = 32.0f;
    float amax, mx = lkq_signed_absmax(x, n, &amax);
    int zero = amax < LKQ_GROUP_MAX_EPS;
    if (zero) mx = 1.0f;
    float w[16], wx[16], l[16];
    for (int i = 0; i < n; ++i) {
        w[i] = x[i] * x[i];
        wx[i] = w[i] * x[i];
    }
    float scale = 0.0f, best = 0.0f;
    for (int k = 0; k < 19; ++k) {
        /* candidate k: -nmax/max, then -(nmax + 0.1f*is)/max for is = -9..-1, 1..9 */
        int is = k == 0 ? 0 : (k <= 9 ? k - 10 : k - 9);
        float neg = k == 0 ? -nmax : -(nmax + 0.1f * (float)is);
        float isc = neg / mx, sumlx = 0.0f, suml2 = 0.0f, lk[16];
        for (int i = 0; i < n; ++i) {
            lk[i] = lkq_clampf(lkq_round_even(isc * x[i]), -nmax, nmax - 1);
            sumlx += wx[i] * lk[i];
            suml2 += w[i] * lk[i] * lk[i];
        }
        int take;
        if (k == 0) {
            scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
            best = scale * sumlx;
            take = 1;
        } else {
            take = suml2 > 0 && sumlx * sumlx > best * suml2;
            if (take) {
                scale = sumlx / suml2;
                best = scale * sumlx;
            }
        }
        if (take) memcpy(l, lk, sizeof l);
    }
    if (zero) {
        for (int i = 0; i < n; ++i) L[i] = 0.0f;
        return 0.0f;
    }
    for (int i = 0; i < n; ++i) L[i] = l[i] + nmax;
    return scale;
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
    for (int64_t b = 0; b < n / QK_K; ++b, x += QK_K, y += 210) {
        float L[QK_K], scales[16];
        for (int j = 0; j < 16; ++j) scales[j] = make_qx(x + 16 * j, L + 16 * j);
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
