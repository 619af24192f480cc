/* A tiny vector layer so each format's kernel is written once and compiled for every variant.
 *
 * The repacked weights put 16 output rows side by side (see k_internal.h), so the kernels work on:
 *   lk_b64  64 bytes of weights: 16 rows x 4 consecutive weights (byte 4r + i = row r, weight i)
 *   lk_vi   16 int32 lanes, lane r = output row r
 *   lk_vf   16 float lanes, lane r = output row r
 * One "dot" step multiplies row r's 4 weight bytes by the same 4 activation bytes (broadcast) and adds
 * the sum into lane r, which is exactly `vpdpbusd` with a broadcast operand:
 *   avx512  __m512i / __m512, vpdpbusd (AVX-512 VNNI)
 *   avx2    two __m256i / __m256 halves (rows 0-7, 8-15), vpmaddubsw + vpmaddwd
 *   scalar  plain arrays and loops (the reference; compilers vectorize some of it)
 * Weights are unsigned bytes, activations signed int8. vi_dot needs w*x pair sums to fit int16 for the
 * avx2 path (w <= 128: 2*128*127 < 32768). vi_dot128 takes bytes w = q + 128 of a signed q and returns
 * sum(q*x) + DOT128_BIAS * 128*sum(x): the caller subtracts that bias using the activation block's sum.
 * lk_vs / vs_dot: the same dot steps into accumulators that are int16 pairs on avx2 (widened once by
 * vi_from_vs): only for 4-bit weights and at most 8 steps (8 * 2 * 15 * 127 < 32768).
 */
#ifndef K_SIMD_H
#define K_SIMD_H

#include <stdint.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define LK_INL static inline __attribute__((always_inline))
/* software prefetch of the weight stream, LK_PF_AHEAD bytes ahead of the read (no fault past the end) */
#define LK_PF_AHEAD 8192
#define lk_prefetch(p) __builtin_prefetch((const void *)(p), 0, 0)
/* the block LK_PF_AHEAD bytes ahead of p, one prefetch per 64-byte line (bytes: a constant, so unrolled) */
LK_INL void lk_prefetch_block(const void *p, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64) lk_prefetch((const uint8_t *)p + LK_PF_AHEAD + o);
}

static inline int32_t lk_rd32(const void *p) { int32_t v; memcpy(&v, p, 4); return v; }

#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define LK_SIMD "avx512"
#define DOT128_BIAS 1
typedef __m512i lk_b64;
typedef __m512i lk_vi;
typedef __m512 lk_vf;
LK_INL lk_b64 b64_load(const void *p) { return _mm512_loadu_si512(p); }
LK_INL lk_b64 b64_and(lk_b64 a, uint8_t m) { return _mm512_and_si512(a, _mm512_set1_epi8((char)m)); }
LK_INL lk_b64 b64_or(lk_b64 a, lk_b64 b) { return _mm512_or_si512(a, b); }
/* byte shifts: a 16-bit shift, then the bits that crossed from the neighbour byte are masked off */
LK_INL lk_b64 b64_srl(lk_b64 a, int n) { return b64_and(_mm512_srli_epi16(a, n), (uint8_t)(0xFF >> n)); }
LK_INL lk_b64 b64_sll(lk_b64 a, int n) { return b64_and(_mm512_slli_epi16(a, n), (uint8_t)(0xFF << n)); }
/* raw 16-bit lane shifts (bits cross between the two bytes of a lane: mask afterwards) */
LK_INL lk_b64 b64_shl16(lk_b64 a, int n) { return _mm512_slli_epi16(a, n); }
LK_INL lk_b64 b64_shr16(lk_b64 a, int n) { return _mm512_srli_epi16(a, n); }
/* (lo & 0x0F) | hi, for hi with no bits in 0x0F: one vpternlogd ((A & C) | B = 0xEC) */
LK_INL lk_b64 b64_lo4_or(lk_b64 lo, lk_b64 hi) {
    return _mm512_ternarylogic_epi32(lo, hi, _mm512_set1_epi8(0x0F), 0xEC);
}
/* t[b & 15] per byte (b < 16) */
LK_INL lk_b64 b64_lut16(lk_b64 a, const uint8_t *t) {
    return _mm512_shuffle_epi8(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)t)), a);
}
LK_INL lk_vi vi_zero(void) { return _mm512_setzero_si512(); }
LK_INL lk_vi vi_set1(int32_t v) { return _mm512_set1_epi32(v); }
LK_INL lk_vi vi_dot(lk_vi acc, lk_b64 w, const int8_t *x4) {
    return _mm512_dpbusd_epi32(acc, w, _mm512_set1_epi32(lk_rd32(x4)));
}
LK_INL lk_vi vi_dot128(lk_vi acc, lk_b64 w, const int8_t *x4) { return vi_dot(acc, w, x4); }
typedef lk_vi lk_vs;
LK_INL lk_vs vs_zero(void) { return _mm512_setzero_si512(); }
LK_INL lk_vs vs_dot(lk_vs acc, lk_b64 w, const int8_t *x4) { return vi_dot(acc, w, x4); }
LK_INL lk_vi vi_from_vs(lk_vs a) { return a; }
LK_INL lk_vi vi_add(lk_vi a, lk_vi b) { return _mm512_add_epi32(a, b); }
LK_INL lk_vi vi_sub(lk_vi a, lk_vi b) { return _mm512_sub_epi32(a, b); }
LK_INL lk_vi vi_mul(lk_vi a, lk_vi b) { return _mm512_mullo_epi32(a, b); }
LK_INL lk_vi vi_and(lk_vi a, int32_t m) { return _mm512_and_si512(a, _mm512_set1_epi32(m)); }
LK_INL lk_vi vi_srl(lk_vi a, int n) { return _mm512_srli_epi32(a, n); }
LK_INL lk_vi vi_u8(const uint8_t *p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)); }
LK_INL lk_vi vi_i8(const int8_t *p) { return _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)); }
LK_INL lk_vf vf_zero(void) { return _mm512_setzero_ps(); }
LK_INL lk_vf vf_set1(float v) { return _mm512_set1_ps(v); }
LK_INL lk_vf vf_cvt(lk_vi a) { return _mm512_cvtepi32_ps(a); }
LK_INL lk_vf vf_f16(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
LK_INL lk_vf vf_f32(const float *p) { return _mm512_loadu_ps(p); }
LK_INL lk_vf vf_bf16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
LK_INL lk_vf vf_add(lk_vf a, lk_vf b) { return _mm512_add_ps(a, b); }
LK_INL lk_vf vf_mul(lk_vf a, lk_vf b) { return _mm512_mul_ps(a, b); }
LK_INL lk_vf vf_fma(lk_vf a, lk_vf b, lk_vf c) { return _mm512_fmadd_ps(a, b, c); }
LK_INL void vf_store(float *p, lk_vf v, int n) {
    if (n >= 16) _mm512_storeu_ps(p, v);
    else _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), v);
}

#elif defined(__AVX2__)
#define LK_SIMD "avx2"
#define DOT128_BIAS 0
typedef struct { __m256i a, b; } lk_b64;
typedef struct { __m256i a, b; } lk_vi;
typedef struct { __m256 a, b; } lk_vf;
LK_INL lk_b64 b64_load(const void *p) {
    return (lk_b64){_mm256_loadu_si256((const __m256i *)p), _mm256_loadu_si256((const __m256i *)p + 1)};
}
LK_INL lk_b64 b64_and(lk_b64 v, uint8_t m) {
    __m256i k = _mm256_set1_epi8((char)m);
    return (lk_b64){_mm256_and_si256(v.a, k), _mm256_and_si256(v.b, k)};
}
LK_INL lk_b64 b64_or(lk_b64 x, lk_b64 y) { return (lk_b64){_mm256_or_si256(x.a, y.a), _mm256_or_si256(x.b, y.b)}; }
LK_INL lk_b64 b64_srl(lk_b64 v, int n) {
    return b64_and((lk_b64){_mm256_srli_epi16(v.a, n), _mm256_srli_epi16(v.b, n)}, (uint8_t)(0xFF >> n));
}
LK_INL lk_b64 b64_sll(lk_b64 v, int n) {
    return b64_and((lk_b64){_mm256_slli_epi16(v.a, n), _mm256_slli_epi16(v.b, n)}, (uint8_t)(0xFF << n));
}
LK_INL lk_b64 b64_shl16(lk_b64 v, int n) { return (lk_b64){_mm256_slli_epi16(v.a, n), _mm256_slli_epi16(v.b, n)}; }
LK_INL lk_b64 b64_shr16(lk_b64 v, int n) { return (lk_b64){_mm256_srli_epi16(v.a, n), _mm256_srli_epi16(v.b, n)}; }
LK_INL lk_b64 b64_lo4_or(lk_b64 lo, lk_b64 hi) { return b64_or(b64_and(lo, 0x0F), hi); }
LK_INL lk_b64 b64_lut16(lk_b64 v, const uint8_t *t) {
    __m256i tt = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t));
    return (lk_b64){_mm256_shuffle_epi8(tt, v.a), _mm256_shuffle_epi8(tt, v.b)};
}
LK_INL lk_vi vi_zero(void) { return (lk_vi){_mm256_setzero_si256(), _mm256_setzero_si256()}; }
LK_INL lk_vi vi_set1(int32_t v) { return (lk_vi){_mm256_set1_epi32(v), _mm256_set1_epi32(v)}; }
LK_INL __m256i lk_dot8(__m256i w, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));
}
LK_INL lk_vi vi_dot(lk_vi acc, lk_b64 w, const int8_t *x4) {
    __m256i x = _mm256_set1_epi32(lk_rd32(x4));
    return (lk_vi){_mm256_add_epi32(acc.a, lk_dot8(w.a, x)), _mm256_add_epi32(acc.b, lk_dot8(w.b, x))};
}
/* int16 pair sums, widened once at the end (vs_dot: at most 8 steps of weights <= 15) */
typedef struct { __m256i a, b; } lk_vs;
LK_INL lk_vs vs_zero(void) { return (lk_vs){_mm256_setzero_si256(), _mm256_setzero_si256()}; }
LK_INL lk_vs vs_dot(lk_vs acc, lk_b64 w, const int8_t *x4) {
    __m256i x = _mm256_set1_epi32(lk_rd32(x4));
    return (lk_vs){_mm256_add_epi16(acc.a, _mm256_maddubs_epi16(w.a, x)), _mm256_add_epi16(acc.b, _mm256_maddubs_epi16(w.b, x))};
}
LK_INL lk_vi vi_from_vs(lk_vs v) {
    const __m256i one = _mm256_set1_epi16(1);
    return (lk_vi){_mm256_madd_epi16(v.a, one), _mm256_madd_epi16(v.b, one)};
}
/* signed q = w ^ 0x80: |q| * (x with q's sign) keeps vpmaddubsw's pair sums within int16 */
LK_INL __m256i lk_dot8s(__m256i w, __m256i x) {
    __m256i q = _mm256_xor_si256(w, _mm256_set1_epi8((char)0x80));
    return lk_dot8(_mm256_abs_epi8(q), _mm256_sign_epi8(x, q));
}
LK_INL lk_vi vi_dot128(lk_vi acc, lk_b64 w, const int8_t *x4) {
    __m256i x = _mm256_set1_epi32(lk_rd32(x4));
    return (lk_vi){_mm256_add_epi32(acc.a, lk_dot8s(w.a, x)), _mm256_add_epi32(acc.b, lk_dot8s(w.b, x))};
}
LK_INL lk_vi vi_add(lk_vi x, lk_vi y) { return (lk_vi){_mm256_add_epi32(x.a, y.a), _mm256_add_epi32(x.b, y.b)}; }
LK_INL lk_vi vi_sub(lk_vi x, lk_vi y) { return (lk_vi){_mm256_sub_epi32(x.a, y.a), _mm256_sub_epi32(x.b, y.b)}; }
LK_INL lk_vi vi_mul(lk_vi x, lk_vi y) { return (lk_vi){_mm256_mullo_epi32(x.a, y.a), _mm256_mullo_epi32(x.b, y.b)}; }
LK_INL lk_vi vi_and(lk_vi x, int32_t m) {
    __m256i k = _mm256_set1_epi32(m);
    return (lk_vi){_mm256_and_si256(x.a, k), _mm256_and_si256(x.b, k)};
}
LK_INL lk_vi vi_srl(lk_vi x, int n) { return (lk_vi){_mm256_srli_epi32(x.a, n), _mm256_srli_epi32(x.b, n)}; }
LK_INL lk_vi vi_u8(const uint8_t *p) {
    return (lk_vi){_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)),
                   _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8)))};
}
LK_INL lk_vi vi_i8(const int8_t *p) {
    return (lk_vi){_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)),
                   _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8)))};
}
LK_INL lk_vf vf_zero(void) { return (lk_vf){_mm256_setzero_ps(), _mm256_setzero_ps()}; }
LK_INL lk_vf vf_set1(float v) { return (lk_vf){_mm256_set1_ps(v), _mm256_set1_ps(v)}; }
LK_INL lk_vf vf_cvt(lk_vi v) { return (lk_vf){_mm256_cvtepi32_ps(v.a), _mm256_cvtepi32_ps(v.b)}; }
LK_INL lk_vf vf_f16(const uint16_t *p) {
    return (lk_vf){_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)),
                   _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8)))};
}
LK_INL lk_vf vf_f32(const float *p) { return (lk_vf){_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
LK_INL __m256 lk_bf8(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
LK_INL lk_vf vf_bf16(const uint16_t *p) { return (lk_vf){lk_bf8(p), lk_bf8(p + 8)}; }
LK_INL lk_vf vf_add(lk_vf x, lk_vf y) { return (lk_vf){_mm256_add_ps(x.a, y.a), _mm256_add_ps(x.b, y.b)}; }
LK_INL lk_vf vf_mul(lk_vf x, lk_vf y) { return (lk_vf){_mm256_mul_ps(x.a, y.a), _mm256_mul_ps(x.b, y.b)}; }
LK_INL lk_vf vf_fma(lk_vf x, lk_vf y, lk_vf z) {
    return (lk_vf){_mm256_fmadd_ps(x.a, y.a, z.a), _mm256_fmadd_ps(x.b, y.b, z.b)};
}
LK_INL void vf_store(float *p, lk_vf v, int n) {
    if (n >= 16) { _mm256_storeu_ps(p, v.a); _mm256_storeu_ps(p + 8, v.b); return; }
    float t[16];
    _mm256_storeu_ps(t, v.a);
    _mm256_storeu_ps(t + 8, v.b);
    memcpy(p, t, (size_t)n * sizeof(float));
}

#else
#define LK_SIMD "scalar"
#define DOT128_BIAS 0
#include "k_half.h"
typedef struct { uint8_t v[64]; } lk_b64;
typedef struct { int32_t v[16]; } lk_vi;
typedef struct { float v[16]; } lk_vf;
#define LK_EACH(n) for (int _i = 0; _i < (n); _i++)
LK_INL lk_b64 b64_load(const void *p) { lk_b64 r; memcpy(r.v, p, 64); return r; }
LK_INL lk_b64 b64_and(lk_b64 a, uint8_t m) { LK_EACH(64) a.v[_i] &= m; return a; }
LK_INL lk_b64 b64_or(lk_b64 a, lk_b64 b) { LK_EACH(64) a.v[_i] |= b.v[_i]; return a; }
LK_INL lk_b64 b64_srl(lk_b64 a, int n) { LK_EACH(64) a.v[_i] = (uint8_t)(a.v[_i] >> n); return a; }
LK_INL lk_b64 b64_sll(lk_b64 a, int n) { LK_EACH(64) a.v[_i] = (uint8_t)(a.v[_i] << n); return a; }
LK_INL lk_b64 b64_shl16(lk_b64 a, int n) {
    LK_EACH(32) { uint16_t w = (uint16_t)(a.v[2 * _i] | a.v[2 * _i + 1] << 8); w = (uint16_t)(w << n); a.v[2 * _i] = (uint8_t)w; a.v[2 * _i + 1] = (uint8_t)(w >> 8); }
    return a;
}
LK_INL lk_b64 b64_shr16(lk_b64 a, int n) {
    LK_EACH(32) { uint16_t w = (uint16_t)(a.v[2 * _i] | a.v[2 * _i + 1] << 8); w = (uint16_t)(w >> n); a.v[2 * _i] = (uint8_t)w; a.v[2 * _i + 1] = (uint8_t)(w >> 8); }
    return a;
}
LK_INL lk_b64 b64_lo4_or(lk_b64 lo, lk_b64 hi) { return b64_or(b64_and(lo, 0x0F), hi); }
LK_INL lk_b64 b64_lut16(lk_b64 a, const uint8_t *t) { LK_EACH(64) a.v[_i] = t[a.v[_i] & 15]; return a; }
LK_INL lk_vi vi_zero(void) { lk_vi r; memset(&r, 0, sizeof r); return r; }
LK_INL lk_vi vi_set1(int32_t v) { lk_vi r; LK_EACH(16) r.v[_i] = v; return r; }
LK_INL lk_vi vi_dot(lk_vi acc, lk_b64 w, const int8_t *x) {
    LK_EACH(16) acc.v[_i] += w.v[4 * _i] * x[0] + w.v[4 * _i + 1] * x[1] + w.v[4 * _i + 2] * x[2] + w.v[4 * _i + 3] * x[3];
    return acc;
}
LK_INL lk_vi vi_dot128(lk_vi acc, lk_b64 w, const int8_t *x) {
    LK_EACH(16) for (int j = 0; j < 4; j++) acc.v[_i] += ((int)w.v[4 * _i + j] - 128) * x[j];
    return acc;
}
LK_INL lk_vi vi_add(lk_vi a, lk_vi b) { LK_EACH(16) a.v[_i] += b.v[_i]; return a; }
typedef lk_vi lk_vs;
LK_INL lk_vs vs_zero(void) { return vi_zero(); }
LK_INL lk_vs vs_dot(lk_vs acc, lk_b64 w, const int8_t *x4) { return vi_dot(acc, w, x4); }
LK_INL lk_vi vi_from_vs(lk_vs a) { return a; }
LK_INL lk_vi vi_sub(lk_vi a, lk_vi b) { LK_EACH(16) a.v[_i] -= b.v[_i]; return a; }
LK_INL lk_vi vi_mul(lk_vi a, lk_vi b) { LK_EACH(16) a.v[_i] *= b.v[_i]; return a; }
LK_INL lk_vi vi_and(lk_vi a, int32_t m) { LK_EACH(16) a.v[_i] &= m; return a; }
LK_INL lk_vi vi_srl(lk_vi a, int n) { LK_EACH(16) a.v[_i] = (int32_t)((uint32_t)a.v[_i] >> n); return a; }
LK_INL lk_vi vi_u8(const uint8_t *p) { lk_vi r; LK_EACH(16) r.v[_i] = p[_i]; return r; }
LK_INL lk_vi vi_i8(const int8_t *p) { lk_vi r; LK_EACH(16) r.v[_i] = p[_i]; return r; }
LK_INL lk_vf vf_zero(void) { lk_vf r; LK_EACH(16) r.v[_i] = 0.0f; return r; }
LK_INL lk_vf vf_set1(float v) { lk_vf r; LK_EACH(16) r.v[_i] = v; return r; }
LK_INL lk_vf vf_cvt(lk_vi a) { lk_vf r; LK_EACH(16) r.v[_i] = (float)a.v[_i]; return r; }
LK_INL lk_vf vf_f16(const uint16_t *p) { lk_vf r; LK_EACH(16) r.v[_i] = lk_h2f(p[_i]); return r; }
LK_INL lk_vf vf_f32(const float *p) { lk_vf r; memcpy(r.v, p, 64); return r; }
LK_INL lk_vf vf_bf16(const uint16_t *p) { lk_vf r; LK_EACH(16) r.v[_i] = lk_bf2f(p[_i]); return r; }
LK_INL lk_vf vf_add(lk_vf a, lk_vf b) { LK_EACH(16) a.v[_i] += b.v[_i]; return a; }
LK_INL lk_vf vf_mul(lk_vf a, lk_vf b) { LK_EACH(16) a.v[_i] *= b.v[_i]; return a; }
LK_INL lk_vf vf_fma(lk_vf a, lk_vf b, lk_vf c) { LK_EACH(16) c.v[_i] += a.v[_i] * b.v[_i]; return c; }
LK_INL void vf_store(float *p, lk_vf v, int n) { memcpy(p, v.v, (size_t)(n < 16 ? n : 16) * sizeof(float)); }
#endif

#endif
