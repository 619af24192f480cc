/* The 32-weight block quantizers, byte for byte the torch codecs of llamakit/quants/legacy.py and iq4nl.py
 * (ggml's quantize_row_q*_ref / quantize_row_iq4_nl_impl without an imatrix). Block layouts:
 *   Q4_0  d: f16 | qs[16]            Q4_1  d | m | qs[16]
 *   Q5_0  d | qh: u32 | qs[16]       Q5_1  d | m | qh | qs[16]
 *   Q8_0  d | qs[32]: int8           IQ4_NL d | qs[16] (indices into KVALUES)
 * qs byte j: weight j in the low nibble, weight j+16 in the high one; qh bit j: bit 4 of weight j.
 */
#include "lkq.h"

#define QK 32

/* legacy.signed_absmax: the value of largest |x| (first on ties), +0 for an all-zero block */
static float absmax_value(const float *x) {
    float amax;
    return lkq_signed_absmax(x, QK, &amax);
}

/* legacy.first_min_max: C's strict `<` / `>` scans (the first of equal values, so a zero's sign) */
static void min_max(const float *x, float *mn, float *mx) {
    float a = x[0], b = x[0];
    for (int j = 1; j < QK; ++j) {
        if (x[j] < a) a = x[j];
        if (x[j] > b) b = x[j];
    }
    *mn = a;
    *mx = b;
}

static inline float safe_inverse(float d) { return d != 0.0f ? 1.0f / d : 0.0f; }

/* trunc_u8: `.to(torch.uint8)` of a float */
static inline uint8_t trunc_u8(float v) { return (uint8_t)lkq_cvt_i32(v); }

static void put_u32(uint8_t *p, uint32_t v) {
    for (int k = 0; k < 4; ++k) p[k] = (uint8_t)(v >> (8 * k));
}

void lkq_q4_0(const float *x, uint8_t *y, int64_t n) {
    for (int64_t b = 0; b < n / QK; ++b, x += QK, y += 18) {
        float d = absmax_value(x) / -8.0f, id = safe_inverse(d);
        lkq_put_f16(y, d);
        for (int j = 0; j < 16; ++j) {
            uint8_t q0 = trunc_u8(x[j] * id + 8.5f), q1 = trunc_u8(x[j + 16] * id + 8.5f);
            q0 = q0 > 15 ? 15 : q0;
            q1 = q1 > 15 ? 15 : q1;
            y[2 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void lkq_q4_1(const float *x, uint8_t *y, int64_t n) {
    for (int64_t b = 0; b < n / QK; ++b, x += QK, y += 20) {
        float mn, mx;
        min_max(x, &mn, &mx);
        float d = (mx - mn) / 15.0f, id = safe_inverse(d);
        lkq_put_f16(y, d);
        lkq_put_f16(y + 2, mn);
        for (int j = 0; j < 16; ++j) {
            uint8_t q0 = trunc_u8((x[j] - mn) * id + 0.5f), q1 = trunc_u8((x[j + 16] - mn) * id + 0.5f);
            q0 = q0 > 15 ? 15 : q0;
            q1 = q1 > 15 ? 15 : q1;
            y[4 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void lkq_q5_0(const float *x, uint8_t *y, int64_t n) {
    for (int64_t b = 0; b < n / QK; ++b, x += QK, y += 22) {
        float d = absmax_value(x) / -16.0f, id = safe_inverse(d);
        lkq_put_f16(y, d);
        uint32_t qh = 0;
        for (int j = 0; j < 16; ++j) {
            uint8_t q0 = trunc_u8(x[j] * id + 16.5f), q1 = trunc_u8(x[j + 16] * id + 16.5f);
            q0 = q0 > 31 ? 31 : q0;
            q1 = q1 > 31 ? 31 : q1;
            y[6 + j] = (uint8_t)((q0 & 15) | ((q1 & 15) << 4));
            qh |= (uint32_t)(q0 >> 4) << j; /* q >> 4: 0 or 1 after the clamp */
            qh |= (uint32_t)(q1 >> 4) << (j + 16);
        }
        put_u32(y + 2, qh);
    }
}

void lkq_q5_1(const float *x, uint8_t *y, int64_t n) {
    for (int64_t b = 0; b < n / QK; ++b, x += QK, y += 24) {
        float mn, mx;
        min_max(x, &mn, &mx);
        float d = (mx - mn) / 31.0f, id = safe_inverse(d);
        lkq_put_f16(y, d);
        lkq_put_f16(y + 2, mn);
        uint32_t qh = 0;
        for (int j = 0; j < 16; ++j) {
            uint8_t q0 = trunc_u8((x[j] - mn) * id + 0.5f), q1 = trunc_u8((x[j + 16] - mn) * id + 0.5f);
            y[8 + j] = (uint8_t)((q0 & 15) | ((q1 & 15) << 4));
            qh |= (uint32_t)((q0 >> 4) & 1) << j;
            qh |= (uint32_t)((q1 >> 4) & 1) << (j + 16);
        }
        put_u32(y + 4, qh);
    }
}

void lkq_q8_0(const float *x, uint8_t *y, int64_t n) {
    for (int64_t b = 0; b < n / QK; ++b, x += QK, y += 34) {
        float amax = 0.0f;
        for (int j = 0; j < QK; ++j) {
            float a = fabsf(x[j]);
            amax = a > amax ? a : amax;
        }
        float d = amax / 127.0f, id = safe_inverse(d);
        lkq_put_f16(y, d);
        for (int j = 0; j < QK; ++j) y[2 + j] = (uint8_t)lkq_cvt_i32(lkq_roundf(x[j] * id));
    }
}

/* -- IQ4_NL ------------------------------------------------------------------------------------------ */

static const int8_t KVALUES[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* iq4nl.nearest_level: best_index_int8 as a function of floor(2v) clamped to [-256, 256] (see iq4nl.py):
 * the index is the number of grid midpoints m with floor(2v) >= 2m. Written as compares and adds (no
 * table), so that the lanes loops below vectorise; the grid value is accumulated the same way (exact). */
#define NLB 16 /* IQ4_NL blocks searched at once, element-major */

static inline float floor2(float v) {
    float f = floorf(v * 2.0f);
    f = f < -256.0f ? -256.0f : f;
    return f > 256.0f ? 256.0f : f;
}

/* twice the midpoints KVALUES[k] + KVALUES[k+1] and the steps KVALUES[k+1] - KVALUES[k], written out (a loop
 * here would keep the lanes loops from vectorising) */
static inline float level_value(float v) {
    float f = floor2(v), q = -127.0f;
    q += (float)(f >= -231.0f) * 23.0f;
    q += (float)(f >= -187.0f) * 21.0f;
    q += (float)(f >= -148.0f) * 18.0f;
    q += (float)(f >= -114.0f) * 16.0f;
    q += (float)(f >= -84.0f) * 14.0f;
    q += (float)(f >= -57.0f) * 13.0f;
    q += (float)(f >= -32.0f) * 12.0f;
    q += (float)(f >= -9.0f) * 11.0f;
    q += (float)(f >= 14.0f) * 12.0f;
    q += (float)(f >= 38.0f) * 12.0f;
    q += (float)(f >= 63.0f) * 13.0f;
    q += (float)(f >= 91.0f) * 15.0f;
    q += (float)(f >= 122.0f) * 16.0f;
    q += (float)(f >= 158.0f) * 20.0f;
    q += (float)(f >= 202.0f) * 24.0f;
    return q;
}

static inline int level_index(float v) {
    float f = floor2(v);
    int idx = 0;
    for (int k = 0; k < 15; ++k) idx += f >= (float)(KVALUES[k] + KVALUES[k + 1]);
    return idx;
}

static void iq4_sums(const float (*x)[NLB], const float (*w)[NLB], const float *iscale, float *sumqx, float *sumq2) {
    for (int b = 0; b < NLB; ++b) sumqx[b] = sumq2[b] = 0.0f;
    for (int j = 0; j < QK; ++j)
        for (int b = 0; b < NLB; ++b) {
            float q = level_value(iscale[b] * x[j][b]);
            float wq = w[j][b] * q;
            sumqx[b] += wq * x[j][b];
            sumq2[b] += wq * q;
        }
}

/* NLB blocks (x: NLB*32 floats) -> NLB*18 bytes */
static void iq4_nl_lanes(const float *x, uint8_t *y) {
    float xl[QK][NLB], w[QK][NLB], mx[NLB], amax[NLB], is[NLB], d[NLB], best[NLB], sumqx[NLB], sumq2[NLB];
    for (int b = 0; b < NLB; ++b) {
        amax[b] = mx[b] = 0.0f;
        for (int j = 0; j < QK; ++j) xl[j][b] = x[QK * b + j];
    }
    for (int j = 0; j < QK; ++j)
        for (int b = 0; b < NLB; ++b) {
            float a = fabsf(xl[j][b]);
            int gt = a > amax[b];
            amax[b] = gt ? a : amax[b];
            mx[b] = gt ? xl[j][b] : mx[b];
            w[j][b] = xl[j][b] * xl[j][b];
        }
    for (int b = 0; b < NLB; ++b) {
        mx[b] = amax[b] < LKQ_GROUP_MAX_EPS ? 1.0f : mx[b];
        is[b] = 1.0f / ((-mx[b]) / -127.0f);
    }
    iq4_sums(xl, w, is, sumqx, sumq2);
    for (int b = 0; b < NLB; ++b) {
        d[b] = sumqx[b] / sumq2[b];
        best[b] = d[b] * sumqx[b];
    }
    for (int itry = -7; itry <= 7; ++itry) {
        for (int b = 0; b < NLB; ++b) is[b] = (float)(itry + KVALUES[0]) / mx[b];
        iq4_sums(xl, w, is, sumqx, sumq2);
        for (int b = 0; b < NLB; ++b) {
            float dk = sumqx[b] / sumq2[b];
            int acc = (sumq2[b] > 0) & (sumqx[b] * sumqx[b] > best[b] * sumq2[b]);
            d[b] = acc ? dk : d[b];
            best[b] = acc ? dk * sumqx[b] : best[b];
        }
    }
    for (int b = 0; b < NLB; ++b) {
        float db = amax[b] < LKQ_GROUP_MAX_EPS ? 0.0f : d[b], inv = safe_inverse(db);
        uint8_t *yb = y + 18 * b;
        const float *xb = x + QK * b;
        lkq_put_f16(yb, db);
        for (int j = 0; j < 16; ++j)
            yb[2 + j] = (uint8_t)(level_index(inv * xb[j]) | (level_index(inv * xb[j + 16]) << 4));
    }
}

void lkq_iq4_nl(const float *x, uint8_t *y, int64_t n) {
    int64_t nb = n / QK;
    for (int64_t b = 0; b < nb; b += NLB) {
        if (b + NLB <= nb) {
            iq4_nl_lanes(x + b * QK, y + b * 18);
            continue;
        }
        float pad[NLB * QK];
        uint8_t out[NLB * 18];
        memset(pad, 0, sizeof pad);
        memcpy(pad, x + b * QK, (size_t)(nb - b) * QK * sizeof(float));
        iq4_nl_lanes(pad, out);
        memcpy(y + b * 18, out, (size_t)(nb - b) * 18);
    }
}
