/* The 32-weight block quantizers, byte for byte the torch codecs of llamakit/quants/legacy.py
 * (ggml's quantize_row_q*_ref). Block layouts:
 *   Q4_0  d: f16 | qs[16]            Q4_1  d | m | qs[16]
 *   Q5_0  d | qh: u32 | qs[16]       Q5_1  d | m | qh | qs[16]
 *   Q8_0  d | qs[32]: int8           (IQ4_NL: q_iq4nl.c)
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
        /* the max of |x| (x finite: any order gives the same value), 16 lanes then their max */
        float m[16], amax = 0.0f;
        for (int j = 0; j < 16; ++j) {
            float a = fabsf(x[j]), b = fabsf(x[j + 16]);
            m[j] = a > b ? a : b;
        }
        for (int j = 0; j < 16; ++j) amax = m[j] > amax ? m[j] : amax;
        float d = amax / 127.0f, id = safe_inverse(d);
        lkq_put_f16(y, d);
        /* roundf as base.roundf computes it (floor, then +1 from a half up: exact for every float, and inf/NaN
         * pass through), then lkq_cvt_i32's truncation; written without branches so that it vectorises */
        int32_t q[QK];
        for (int j = 0; j < QK; ++j) {
            float v = x[j] * id, a = fabsf(v), fl = floorf(a);
            float r = copysignf(fl + ((a - fl) >= 0.5f ? 1.0f : 0.0f), v);
            int ok = r >= -2147483648.0f && r < 2147483648.0f;
            q[j] = ok ? (int32_t)(ok ? r : 0.0f) : INT32_MIN;
        }
        for (int j = 0; j < QK; ++j) y[2 + j] = (uint8_t)q[j];
    }
}
