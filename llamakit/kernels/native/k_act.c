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

void lk__quantize_q8(const float *x, int64_t cols, lk_q8 *out) {
    for (int64_t b = 0; b < cols / 32; b++, x += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        int32_t s = 0;
        for (int j = 0; j < 32; j++) {
            int8_t q = (int8_t)round_away(x[j] * id);
            out[b].qs[j] = q;
            s += q;
        }
        out[b].d = lk_h2f(lk_f2h(d));
        out[b].s = s;
        out[b].ds = out[b].d * (float)s;
        out[b].pad = 0;
    }
}

void lk__quantize_q8k(const float *x, int64_t cols, lk_q8k *out) {
    for (int64_t b = 0; b < cols / 256; b++, x += 256) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 256; j++) {
            float ax = fabsf(x[j]);
            if (ax > amax) { amax = ax; max = x[j]; }
        }
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
