/* IEEE half and bfloat16 -> float32, exact, in plain C (the scalar variant has no F16C). */
#ifndef K_HALF_H
#define K_HALF_H

#include <stdint.h>
#include <string.h>

static inline float lk_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline float lk_h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    if (exp == 0x1F) return lk_bits_f32(sign | 0x7F800000u | (man << 13));  /* inf / NaN */
    if (exp == 0) {                                                           /* zero / subnormal: man * 2^-24 */
        float v = (float)man * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    return lk_bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

static inline float lk_bf2f(uint16_t b) { return lk_bits_f32((uint32_t)b << 16); }

/* float32 -> IEEE half bits, round to nearest even (what F16C's vcvtps2ph and torch's .half() do) */
static inline uint16_t lk_f2h(float f) {
    uint32_t x; memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u) return (uint16_t)(sign | 0x7C00 | (ax > 0x7F800000u ? 0x200 : 0));
    if (ax >= 0x477FF000u) return (uint16_t)(sign | 0x7C00);                 /* rounds to >= 65520: inf */
    if (ax < 0x38800000u) {                                                  /* below 2^-14: subnormal half */
        float v = lk_bits_f32(ax) * 16777216.0f;                             /* exact: |v| < 2^10 */
        uint32_t m = (uint32_t)v; float frac = v - (float)m;
        if (frac > 0.5f || (frac == 0.5f && (m & 1))) m++;
        return (uint16_t)(sign | m);
    }
    uint32_t r = ax + 0xFFF + ((ax >> 13) & 1);                              /* round the 13 dropped bits */
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

#endif
