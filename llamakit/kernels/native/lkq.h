/* llamakit native quantizers ("lkq" = every q_*.c): the C ABI called from ../quantizers.py, and the
 * scalar helpers the q_*.c files share.
 *
 * Contract: byte-identical to the torch codecs in llamakit/quants/ (the reference), which mirror ggml's
 * quantize_row_*_ref. That needs float32 arithmetic in the torch code's order of operations: build.py
 * compiles this library with -ffp-contract=off (no FMA contraction; GCC ignores `#pragma STDC
 * FP_CONTRACT`), never -ffast-math, and every helper below names the torch/C operation it reproduces.
 *
 * ggml type ids (ggml's own numbers): F32 0, F16 1, Q4_0 2, Q4_1 3, Q5_0 6, Q5_1 7, Q8_0 8, Q2_K 10,
 * Q3_K 11, Q4_K 12, Q5_K 13, Q6_K 14, IQ4_NL 20, BF16 30.
 */
#ifndef LKQ_H
#define LKQ_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define LKQ_API __attribute__((visibility("default")))

/* int64_t lkq_quantize(int dst_type, int src_type, const void *src, void *dst, int64_t n):
 *   quantize n weights (a multiple of dst's block size) read as src_type (F32, F16 or BF16) into dst's
 *   blocks. Returns -1 when done, the index of the first NaN/inf weight (nothing past its piece written),
 *   or -2 for an unsupported type / size. Thread-safe, no allocation, no global state. */
LKQ_API int64_t lkq_quantize(int dst_type, int src_type, const void *src, void *dst, int64_t n);
/* 1 when lkq_quantize handles dst_type, else 0 */
LKQ_API int lkq_supports(int dst_type);
/* for the tests: IQ4_NL's grid search on its own. level[i] = best_index_int8(v[i]) as the final levels compute it
 * (any v; NaN -> 15), value[i] = KVALUES[level] as the scale search computes it (for |v| < 134 only) */
LKQ_API void lkq_iq4_nl_levels(const float *v, int32_t *level, float *value, int64_t n);

#define LKQ_GROUP_MAX_EPS 1e-15f

static inline uint32_t lkq_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float lkq_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* IEEE half, round to nearest even (torch's .to(torch.float16)); written out so every variant computes it
 * the same way whatever the compiler's _Float16 support. */
static inline uint16_t lkq_f16(float f) {
    uint32_t x = lkq_bits(f), sign = (x >> 16) & 0x8000, ax = x & 0x7fffffff;
    if (ax >= 0x7f800000) return (uint16_t)(sign | (ax > 0x7f800000 ? 0x7e00 : 0x7c00));
    if (ax >= 0x477ff000) return (uint16_t)(sign | 0x7c00); /* >= 65520 rounds to inf */
    if (ax < 0x38800000) { /* below 2^-14: a subnormal half, in units of 2^-24 */
        uint32_t e = ax >> 23;
        if (e < 102) return (uint16_t)sign; /* below 2^-25 */
        uint32_t m = (ax & 0x7fffff) | 0x800000, shift = 126 - e;
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = (ax - 0x38000000) >> 13, rem = ax & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++; /* a carry into the exponent is right */
    return (uint16_t)(sign | r);
}

static inline float lkq_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0x1f) return lkq_from_bits(sign | 0x7f800000 | (m << 13));
    if (e) return lkq_from_bits(sign | ((e + 112) << 23) | (m << 13));
    float v = (float)m * 0x1p-24f; /* exact */
    return sign ? -v : v;
}

/* kquants.fp16_round: GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(x)) */
static inline float lkq_f16_round(float f) { return lkq_f16_to_f32(lkq_f16(f)); }

static inline void lkq_put_f16(uint8_t *p, float f) {
    uint16_t h = lkq_f16(f);
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

/* base.nearest_int: ggml's bit trick, also for |x| >= 2^22 and inf/NaN (the wrapped values C clamps) */
static inline int32_t lkq_nearest_int(float x) {
    uint32_t v = lkq_bits(x + 12582912.0f);
    return (int32_t)(v & 0x7fffff) - 0x400000;
}

/* torch's float -> int conversions (cvttss2si): truncation, INT32_MIN for NaN and out of range; then
 * .to(uint8/int8) keeps the low byte */
static inline int32_t lkq_cvt_i32(float v) {
    return (v >= -2147483648.0f && v < 2147483648.0f) ? (int32_t)v : INT32_MIN;
}

/* torch.round: half to even; NaN and |x| >= 2^23 (already integers) pass through */
static inline float lkq_round_even(float x) {
    float a = fabsf(x), r = copysignf((a + 8388608.0f) - 8388608.0f, x);
    return a < 8388608.0f ? r : x; /* a select, so that loops over lanes vectorise */
}

/* base.roundf (C roundf): half away from zero */
static inline float lkq_roundf(float x) {
    float a = fabsf(x);
    if (!(a < 8388608.0f)) return x;
    float fl = (float)(int32_t)a;
    return copysignf(fl + ((a - fl) >= 0.5f ? 1.0f : 0.0f), x);
}

/* torch.clamp on floats: NaN propagates */
static inline float lkq_clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }
static inline int32_t lkq_clampi(int32_t v, int32_t lo, int32_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* search.signed_absmax_cols: the first element of largest magnitude (+0 for all zeros), and that magnitude */
static inline float lkq_signed_absmax(const float *x, int n, float *amax_out) {
    float amax = 0.0f, mx = 0.0f;
    for (int i = 0; i < n; ++i) {
        float a = fabsf(x[i]);
        if (a > amax) { amax = a; mx = x[i]; }
    }
    *amax_out = amax;
    return mx;
}

/* kquants.positive_max: torch amax (NaN wins) then `m > 0 ? m : 0` */
static inline float lkq_positive_max(const float *v, int n) {
    float m = v[0];
    for (int i = 1; i < n; ++i) {
        if (v[i] != v[i] || m != m) m = NAN;
        else if (v[i] > m) m = v[i];
    }
    return m > 0 ? m : 0.0f;
}

/* the quantizers of one piece of whole blocks; x float32, n a multiple of the block size */
void lkq_q4_0(const float *x, uint8_t *y, int64_t n);
void lkq_q4_1(const float *x, uint8_t *y, int64_t n);
void lkq_q5_0(const float *x, uint8_t *y, int64_t n);
void lkq_q5_1(const float *x, uint8_t *y, int64_t n);
void lkq_q8_0(const float *x, uint8_t *y, int64_t n);
void lkq_iq4_nl(const float *x, uint8_t *y, int64_t n);
void lkq_q2_k(const float *x, uint8_t *y, int64_t n);
void lkq_q3_k(const float *x, uint8_t *y, int64_t n);
void lkq_q4_k(const float *x, uint8_t *y, int64_t n);
void lkq_q5_k(const float *x, uint8_t *y, int64_t n);
void lkq_q6_k(const float *x, uint8_t *y, int64_t n);

#endif
