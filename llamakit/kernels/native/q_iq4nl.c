/* IQ4_NL, byte for byte the torch codec of llamakit/quants/iq4nl.py (ggml's quantize_row_iq4_nl_impl, ntry 7,
 * weights x*x, no imatrix). Block: d: f16 | qs[16], indices into KVALUES; qs byte j: weight j in the low
 * nibble, weight j+16 in the high one.
 *
 * The cost is the grid search: 16 candidate scales per block, each mapping all 32 weights to their nearest
 * grid level and summing in index order. Both paths below search NLB blocks at once, element-major (one SIMD
 * lane per block, its sums in index order, so the float32 results are those of the scalar loops):
 *   - portable C (scalar and avx2 variants): the level as 15 compares and adds, vectorised by the compiler;
 *   - AVX-512: the level from a bucket table (see "buckets"), 3 permutes instead of 15 compares.
 */
#include "lkq.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define QK 32
#define NLB 16 /* IQ4_NL blocks searched at once, element-major */

static const int8_t KVALUES[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

static inline float safe_inverse(float d) { return d != 0.0f ? 1.0f / d : 0.0f; }

/* iq4nl.nearest_level: best_index_int8 as a function of floor(2v) clamped to [-256, 256] (see iq4nl.py):
 * the index is the number of grid midpoints m with floor(2v) >= 2m, i.e. with v >= m. Written as compares
 * and adds (no table), so that the lanes loops below vectorise; the grid value is accumulated the same way
 * (exact). */
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

/* the final levels; a NaN v (x/d with d NaN: |x| >= 2^64 overflows x*x) is 15, as best_index_int8's bisection
 * (every compare false) */
static inline int level_index(float v) {
    float f = floor2(v);
    int idx = 0;
    for (int k = 0; k < 15; ++k) idx += f >= (float)(KVALUES[k] + KVALUES[k + 1]);
    return v != v ? 15 : idx;
}

/* the 16 candidate scales: 1/d0 with d0 = -max/KVALUES[0] (written as C does, (-max)/-127), then
 * (itry + KVALUES[0])/max for itry = -7..7 */
static void iq4_scales(const float *mx, float (*is)[NLB]) {
    for (int b = 0; b < NLB; ++b) is[0][b] = 1.0f / ((-mx[b]) / -127.0f);
    for (int t = 1; t < 16; ++t)
        for (int b = 0; b < NLB; ++b) is[t][b] = (float)(t - 8 + KVALUES[0]) / mx[b];
}

/* the search over the sums of the 16 candidates, in order: the first gives d, each later one replaces it
 * when Σwqx² > best·Σwq² (and Σwq² > 0) */
static void iq4_choose(const float (*sqx)[NLB], const float (*sq2)[NLB], const float *amax, float *d) {
    float best[NLB];
    for (int b = 0; b < NLB; ++b) {
        d[b] = sqx[0][b] / sq2[0][b];
        best[b] = d[b] * sqx[0][b];
    }
    for (int t = 1; t < 16; ++t)
        for (int b = 0; b < NLB; ++b) {
            float dk = sqx[t][b] / sq2[t][b];
            int acc = (sq2[t][b] > 0) & (sqx[t][b] * sqx[t][b] > best[b] * sq2[t][b]);
            d[b] = acc ? dk : d[b];
            best[b] = acc ? dk * sqx[t][b] : best[b];
        }
    for (int b = 0; b < NLB; ++b) d[b] = amax[b] < LKQ_GROUP_MAX_EPS ? 0.0f : d[b];
}

#if !defined(__AVX512F__)

/* the amax / signed max of each lane (search.signed_absmax_cols), the weights x*x, the elements of lanes */
static void iq4_prepare(const float *x, float (*xl)[NLB], float (*w)[NLB], float *mx, float *amax) {
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
    for (int b = 0; b < NLB; ++b) mx[b] = amax[b] < LKQ_GROUP_MAX_EPS ? 1.0f : mx[b];
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
    float xl[QK][NLB], w[QK][NLB], mx[NLB], amax[NLB], is[16][NLB], d[NLB], sqx[16][NLB], sq2[16][NLB];
    iq4_prepare(x, xl, w, mx, amax);
    iq4_scales(mx, is);
    for (int t = 0; t < 16; ++t) iq4_sums((const float (*)[NLB])xl, (const float (*)[NLB])w, is[t], sqx[t], sq2[t]);
    iq4_choose((const float (*)[NLB])sqx, (const float (*)[NLB])sq2, amax, d);
    for (int b = 0; b < NLB; ++b) {
        float inv = safe_inverse(d[b]);
        uint8_t *yb = y + 18 * b;
        const float *xb = x + QK * b;
        lkq_put_f16(yb, d[b]);
        for (int j = 0; j < 16; ++j)
            yb[2 + j] = (uint8_t)(level_index(inv * xb[j]) | (level_index(inv * xb[j + 16]) << 4));
    }
}

#else /* AVX-512 */

/* Buckets. The level of v is "the number of midpoints m <= v" (above). Split the line into 32 buckets
 * k = floor(v*BC + BO) (one FMA and a round-down conversion): each bucket holds at most one midpoint, thr[k]
 * (+1e30 if none), so the level is lo[k] if v < thr[k], else hi[k]; the compare v >= thr[k] is the exact one
 * of the portable code. The bucket itself may be computed inexactly: no midpoint lies within 1.4 of a bucket
 * edge (BC = 0.0875f, BO = 11.8f: edges at (k - 11.8)/0.0875, 11.43 apart; the midpoints are >= 11.5 apart), so
 * a v put in the neighbouring bucket by rounding still gets its own level. Range: the search's v = s*x with
 * |x| <= |max| and |s| <= 134/|max| (rounded), so |v| < 134.001 -> k in [0, 23]; the final levels (v = x/d,
 * any size) clamp v to [-130, 120] first, which keeps the two end levels.
 * Generated by: for each k, edges e_k = (k - BO)/BC in exact arithmetic on the float constants,
 * thr = the midpoint in [e_k, e_{k+1}), lo = KVALUES[#midpoints < e_k], hi = the next value. */
#define BC 0.0875f
#define BO 11.8f
#define NONE 1e30f
static const float THR[32] = {NONE, -115.5f, NONE, -93.5f, NONE, -74.0f, -57.0f, NONE, -42.0f, -28.5f, -16.0f,
                              -4.5f, 7.0f, 19.0f, 31.5f, 45.5f, NONE, 61.0f, 79.0f, NONE, 101.0f, NONE, NONE, NONE,
                              NONE, NONE, NONE, NONE, NONE, NONE, NONE, NONE};
static const int32_t BASE[32] = {0, 0, 1, 1, 2, 2, 3, 4, 4, 5, 6, 7, 8, 9, 10, 11,
                                 12, 12, 13, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15};

typedef struct {
    __m512 thr0, thr1, lo0, lo1, hi0, hi1, bc, bo;
} buckets;

static inline buckets buckets_load(void) {
    float lo[32], hi[32];
    for (int k = 0; k < 32; ++k) {
        lo[k] = KVALUES[BASE[k]];
        hi[k] = THR[k] == NONE ? lo[k] : KVALUES[BASE[k] + 1];
    }
    buckets B = {_mm512_loadu_ps(THR), _mm512_loadu_ps(THR + 16), _mm512_loadu_ps(lo), _mm512_loadu_ps(lo + 16),
                 _mm512_loadu_ps(hi), _mm512_loadu_ps(hi + 16), _mm512_set1_ps(BC), _mm512_set1_ps(BO)};
    return B;
}

static inline __m512i bucket_of(__m512 v, const buckets *B) {
    return _mm512_cvt_roundps_epi32(_mm512_fmadd_ps(v, B->bc, B->bo), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
}

/* best_index(v) for any v, as level_index: v clamped to [-130, 120] first (max/min return their second operand
 * if one is NaN: a NaN v becomes 120, level 15) */
static inline __m512i grid_index(__m512 v, const buckets *B, __m512i base0, __m512i base1) {
    v = _mm512_min_ps(_mm512_max_ps(_mm512_set1_ps(-130.0f), v), _mm512_set1_ps(120.0f));
    __m512i k = bucket_of(v, B), base = _mm512_permutex2var_epi32(base0, k, base1);
    __mmask16 up = _mm512_cmp_ps_mask(v, _mm512_permutex2var_ps(B->thr0, k, B->thr1), _CMP_GE_OQ);
    return _mm512_mask_add_epi32(base, up, base, _mm512_set1_epi32(1));
}

/* KVALUES[best_index(v)] for |v| < 134.001 (the search's range, no clamp) */
static inline __m512 grid_value(__m512 v, const buckets *B) {
    __m512i k = bucket_of(v, B);
    __mmask16 up = _mm512_cmp_ps_mask(v, _mm512_permutex2var_ps(B->thr0, k, B->thr1), _CMP_GE_OQ);
    __m512 lo = _mm512_permutex2var_ps(B->lo0, k, B->lo1), hi = _mm512_permutex2var_ps(B->hi0, k, B->hi1);
    return _mm512_mask_blend_ps(up, lo, hi);
}

#define GROUP 4 /* candidates summed per pass over the weights: independent sum chains hide the add latency */

/* iq4_prepare of the portable code: lane b = block b, gathered with stride 32 */
static void iq4_prepare(const float *x, float (*xl)[NLB], float (*w)[NLB], float *mx, float *amax) {
    const __m512i gi = _mm512_setr_epi32(0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448, 480);
    __m512 am = _mm512_setzero_ps(), m = _mm512_setzero_ps();
    for (int j = 0; j < QK; ++j) {
        __m512 xj = _mm512_i32gather_ps(gi, x + j, 4);
        __m512 a = _mm512_abs_ps(xj);
        __mmask16 gt = _mm512_cmp_ps_mask(a, am, _CMP_GT_OQ);
        am = _mm512_mask_mov_ps(am, gt, a);
        m = _mm512_mask_mov_ps(m, gt, xj);
        _mm512_storeu_ps(xl[j], xj);
        _mm512_storeu_ps(w[j], _mm512_mul_ps(xj, xj));
    }
    __mmask16 z = _mm512_cmp_ps_mask(am, _mm512_set1_ps(LKQ_GROUP_MAX_EPS), _CMP_LT_OQ);
    _mm512_storeu_ps(amax, am);
    _mm512_storeu_ps(mx, _mm512_mask_mov_ps(m, z, _mm512_set1_ps(1.0f)));
}

static void iq4_nl_lanes(const float *x, uint8_t *y) {
    float xl[QK][NLB], w[QK][NLB], mx[NLB], amax[NLB], is[16][NLB], d[NLB], sqx[16][NLB], sq2[16][NLB];
    iq4_prepare(x, xl, w, mx, amax);
    iq4_scales(mx, is);
    const buckets B = buckets_load();
    for (int t0 = 0; t0 < 16; t0 += GROUP) {
        __m512 s[GROUP], ax[GROUP], aq[GROUP];
        for (int g = 0; g < GROUP; ++g) {
            s[g] = _mm512_loadu_ps(is[t0 + g]);
            ax[g] = aq[g] = _mm512_setzero_ps();
        }
        for (int j = 0; j < QK; ++j) {
            __m512 xj = _mm512_loadu_ps(xl[j]), wj = _mm512_loadu_ps(w[j]);
            for (int g = 0; g < GROUP; ++g) {
                __m512 q = grid_value(_mm512_mul_ps(s[g], xj), &B);
                __m512 wq = _mm512_mul_ps(wj, q);
                ax[g] = _mm512_add_ps(ax[g], _mm512_mul_ps(wq, xj));
                aq[g] = _mm512_add_ps(aq[g], _mm512_mul_ps(wq, q));
            }
        }
        for (int g = 0; g < GROUP; ++g) {
            _mm512_storeu_ps(sqx[t0 + g], ax[g]);
            _mm512_storeu_ps(sq2[t0 + g], aq[g]);
        }
    }
    iq4_choose((const float (*)[NLB])sqx, (const float (*)[NLB])sq2, amax, d);

    /* final levels best_index(x/d) (x * (1/d), as C), block by block from x, 4-bit packed */
    const __m512i base0 = _mm512_loadu_si512(BASE), base1 = _mm512_loadu_si512(BASE + 16);
    for (int b = 0; b < NLB; ++b) {
        __m512 inv = _mm512_set1_ps(safe_inverse(d[b]));
        __m512i idx[2];
        for (int h = 0; h < 2; ++h)
            idx[h] = grid_index(_mm512_mul_ps(inv, _mm512_loadu_ps(x + QK * b + 16 * h)), &B, base0, base1);
        uint8_t *yb = y + 18 * b;
        lkq_put_f16(yb, d[b]);
        __m512i packed = _mm512_or_si512(idx[0], _mm512_slli_epi32(idx[1], 4)); /* weight j | weight j+16 << 4 */
        _mm_storeu_si128((__m128i *)(yb + 2), _mm512_cvtepi32_epi8(packed));
    }
}

#endif

LKQ_API void lkq_iq4_nl_levels(const float *v, int32_t *level, float *value, int64_t n) {
#if defined(__AVX512F__)
    const buckets B = buckets_load();
    const __m512i base0 = _mm512_loadu_si512(BASE), base1 = _mm512_loadu_si512(BASE + 16);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 vi = _mm512_maskz_loadu_ps(m, v + i);
        _mm512_mask_storeu_epi32(level + i, m, grid_index(vi, &B, base0, base1));
        _mm512_mask_storeu_ps(value + i, m, grid_value(vi, &B));
    }
#else
    for (int64_t i = 0; i < n; ++i) {
        level[i] = level_index(v[i]);
        value[i] = level_value(v[i]);
    }
#endif
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
