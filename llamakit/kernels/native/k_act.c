/* Activation quantization, once per matmul call: float32 rows -> 8-bit blocks for the integer dot products.
 *
 * lk_q8  (32 values): ggml's quantize_row_q8_0_ref rounding, which is also llamakit's Q8_0 codec:
 *        d = amax / 127, q = roundf(x * (1/d)) (halfway away from zero), d then kept f16-rounded.
 * lk_q8k (256 values): quantize_row_q8_K_ref: max = the value of largest |x| (first one), iscale = -127/max,
 *        q = min(127, nearest_int(iscale * x)) (ties to even), d = 1/iscale, bsums = sums of 16 q.
 * Both are written as plain loops over a block that the compiler vectorizes for each variant; the
 * arithmetic is the same float32 operations in every variant, so the bytes are identical.
 */
#include <math.h>
#include <string.h>

#include "k_half.h"
#include "k_internal.h"

/* C roundf, without a libm call: |x - trunc(x)| is exact */
static inline float round_away(float v) {
    float t = truncf(v);
    return fabsf(v - t) >= 0.5f ? t + copysignf(1.0f, v) : t;
}

/* ggml's nearest_int: the low mantissa bits of x + 1.5 * 2^23 (ties to even for |x| < 2^22) */
static inline int32_t nearest_int(float v) {
    float f = v + 12582912.0f;
    int32_t i;
    memcpy(&i, &f, 4);
    return (i & 0x007FFFFF) - 0x00400000;
}

#if defined(__AVX2__)
#include <immintrin.h>

static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* max |x| of 8k floats */
static inline float absmax(const float *x, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int j = 0; j < n; j += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
    return hmax8(m);
}

/* round_away of 8 floats, as int32 */
static inline __m256i round_away8(__m256 v) {
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 half = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(v, t)), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    const __m256 one = _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(1.0f)); /* copysign(1, v) */
    return _mm256_cvttps_epi32(_mm256_add_ps(t, _mm256_and_ps(half, one)));
}

/* 32 int32 (4 x 8, in order) -> 32 int8 */
static inline void store_i8x32(int8_t *dst, __m256i a, __m256i b, __m256i c, __m256i d) {
    __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d); /* lanes interleaved by 128 bits */
    __m256i q = _mm256_packs_epi16(ab, cd);
    q = _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)dst, q);
}

static inline int32_t hsum_i32x8(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}
#endif

void lk__quantize_q8(const float *x, int64_t cols, lk_q8 *out) {
    for (int64_t b = 0; b < cols / 32; b++, x += 32) {
#if defined(__AVX2__)
        const float amax = absmax(x, 32);
#else
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
#endif
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        int32_t s = 0;
#if defined(__AVX2__)
        const __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; k++) q[k] = round_away8(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), vid));
        store_i8x32(out[b].qs, q[0], q[1], q[2], q[3]);
        s = hsum_i32x8(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
#else
        for (int j = 0; j < 32; j++) {
            int8_t q = (int8_t)round_away(x[j] * id);
            out[b].qs[j] = q;
            s += q;
        }
#endif
        out[b].d = lk_h2f(lk_f2h(d));
        out[b].s = s;
        out[b].ds = out[b].d * (float)s;
        out[b].pad = 0;
    }
}

void lk__quantize_q8k(const float *x, int64_t cols, lk_q8k *out) {
    for (int64_t b = 0; b < cols / 256; b++, x += 256) {
        float amax = 0.0f, max = 0.0f;
#if defined(__AVX2__)
        amax = absmax(x, 256);
        for (int j = 0; j < 256; j++)
            if (fabsf(x[j]) == amax) { max = x[j]; break; } /* the first one, as C's strict `>` scan */
#else
        for (int j = 0; j < 256; j++) {
            float ax = fabsf(x[j]);
            if (ax > amax) { amax = ax; max = x[j]; }
        }
#endif
        lk_q8k *o = &out[b];
        o->pad = 0;
        if (amax == 0.0f) {
            memset(o, 0, sizeof *o);
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < 256; j++) {
            int32_t v = nearest_int(iscale * x[j]);
            o->qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < 16; j++) {
            int s = 0;
            for (int i = 0; i < 16; i++) s += o->qs[16 * j + i];
            o->bsums[j] = (int16_t)s;
        }
        o->d = 1.0f / iscale;
    }
}
