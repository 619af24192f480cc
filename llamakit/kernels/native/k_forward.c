/* One llama block per call (lk_forward.h): the matmuls go to lk_matmul (threaded by itself); the rest
 * (rmsnorm, bias, rope, the K/V stores, attention, SwiGLU, residuals) is here, threaded over lk_parallel
 * when there is enough of it to pay for waking the pool.
 *
 * SIMD: the reductions (dot products, sums) are written with intrinsics under __AVX512F__ / __AVX2__ and,
 * for the scalar build, as 8 independent lanes that -O3 turns into SSE without reassociating anything.
 * exp() in softmax and silu is a Cephes-style polynomial (max rel error ~2 ulp, checked by the tests
 * against torch at 1e-6) in the SIMD builds and libm's expf in the scalar one.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lk_forward.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif

/* ---- IEEE half <-> float (exact; round to nearest even like torch's .to(float16)) -------------------- */

/* Normal and subnormal halves are the float with the half's exponent+mantissa bits shifted into place,
 * times 2^112 (exact: only the exponent moves); the all-ones exponent (inf / nan) is patched. */
static inline float h2f(uint16_t h) {
    uint32_t u = (uint32_t)(h & 0x7fff) << 13;
    float f;
    memcpy(&f, &u, 4);
    f *= 0x1p112f;
    memcpy(&u, &f, 4);
    if ((h & 0x7c00) == 0x7c00) u = 0x7f800000u | ((uint32_t)(h & 0x3ff) << 13);
    u |= (uint32_t)(h & 0x8000) << 16;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f2h(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000, a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) /* inf, nan (quiet, top payload bits kept) */
        return (uint16_t)(sign | 0x7c00 | (a > 0x7f800000u ? 0x200 | ((a >> 13) & 0x3ff) : 0));
    if (a >= 0x477ff000u) /* rounds to >= 65520: inf */
        return (uint16_t)(sign | 0x7c00);
    if (a < 0x38800000u) { /* below 2^-14: subnormal half; a value + 0.5 rounds it in the FPU (RNE) */
        float v;
        memcpy(&v, &a, 4);
        v += 0.5f; /* the ulp of 0.5 is 2^-24, the half subnormal step: the sum's low bits are m */
        uint32_t w;
        memcpy(&w, &v, 4);
        return (uint16_t)(sign | (w - 0x3f000000u));
    }
    uint32_t odd = (a >> 13) & 1;
    a += 0xc8000fffu + odd; /* rebias exponent (-112 << 23) and add the RNE rounding bias */
    return (uint16_t)(sign | (a >> 13));
}

LK_API void lk_f32_to_f16(int64_t n, const float *x, uint16_t *out) {
    int64_t i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(out + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; i++) out[i] = f2h(x[i]);
}

LK_API void lk_f16_to_f32(int64_t n, const uint16_t *x, float *out) {
    int64_t i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
#endif
#if defined(__SSE2__) && !defined(__F16C__)
    /* h2f 4 lanes at a time in SSE2 (the x86-64 baseline) */
    const __m128i m7fff = _mm_set1_epi32(0x7fff), m7c00 = _mm_set1_epi32(0x7c00), m3ff = _mm_set1_epi32(0x3ff),
                  m8000 = _mm_set1_epi32(0x8000), inf = _mm_set1_epi32(0x7f800000);
    const __m128 scale = _mm_set1_ps(0x1p112f);
    for (; i + 8 <= n; i += 8) {
        __m128i h8 = _mm_loadu_si128((const __m128i *)(x + i));
        for (int k = 0; k < 2; k++) {
            __m128i h = k ? _mm_unpackhi_epi16(h8, _mm_setzero_si128()) : _mm_unpacklo_epi16(h8, _mm_setzero_si128());
            __m128i v = _mm_castps_si128(_mm_mul_ps(_mm_castsi128_ps(_mm_slli_epi32(_mm_and_si128(h, m7fff), 13)), scale));
            __m128i sp = _mm_cmpeq_epi32(_mm_and_si128(h, m7c00), m7c00);
            __m128i special = _mm_or_si128(inf, _mm_slli_epi32(_mm_and_si128(h, m3ff), 13));
            v = _mm_or_si128(_mm_and_si128(sp, special), _mm_andnot_si128(sp, v));
            v = _mm_or_si128(v, _mm_slli_epi32(_mm_and_si128(h, m8000), 16));
            _mm_storeu_si128((__m128i *)(out + i + 4 * k), v);
        }
    }
#endif
    for (; i < n; i++) out[i] = h2f(x[i]);
}

/* ---- vector helpers ------------------------------------------------------------------------------- */

#if defined(__AVX2__)
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Cephes expf: 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2]; x clamped to [-87.3, 88.3] (finite, no
 * denormals: softmax terms that small are 1e-38, silu's huge ones give 0 after the division). */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#endif

static inline float dot_f32(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    float s = 0.0f;
#if defined(__AVX512F__)
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (; i + 32 <= n; i += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), a1);
    }
    for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), a0);
    s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#elif defined(__AVX2__)
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), a1);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
    s = hsum8(_mm256_add_ps(a0, a1));
#else
    float acc[8] = {0};
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
    s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
#endif
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* y += c * v */
static inline void axpy_f32(float *y, float c, const float *v, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += c * v[i];
}

/* s[i] = exp(s[i] - m); returns the sum */
static float exp_sub_sum(float *s, int64_t n, float m) {
    int64_t i = 0;
    float sum = 0.0f;
#if defined(__AVX2__)
    __m256 acc = _mm256_setzero_ps(), mm = _mm256_set1_ps(m);
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), mm));
        _mm256_storeu_ps(s + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    sum = hsum8(acc);
#endif
    for (; i < n; i++) {
        s[i] = expf(s[i] - m);
        sum += s[i];
    }
    return sum;
}

/* g[i] = silu(g[i] + bg[i]) * (u[i] + bu[i]) */
static void swiglu(float *g, const float *u, const float *bg, const float *bu, int64_t n) {
    if (bg)
        for (int64_t i = 0; i < n; i++) g[i] += bg[i];
    int64_t i = 0;
#if defined(__AVX2__)
    if (!bu) {
        const __m256 one = _mm256_set1_ps(1.0f);
        for (; i + 8 <= n; i += 8) {
            __m256 x = _mm256_loadu_ps(g + i);
            __m256 sig = _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x)));
            _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(x, sig), _mm256_loadu_ps(u + i)));
        }
    }
#endif
    for (; i < n; i++) {
        float x = g[i];
        g[i] = x / (1.0f + expf(-x)) * (u[i] + (bu ? bu[i] : 0.0f));
    }
}

/* ---- attention kernels: scores over 4 slots at a time (4 independent FMA chains), V sums with the
 * output chunk held in registers. Need head_dim % VL == 0; other sizes take the generic row loop. --- */

#if defined(__AVX512F__)
#define VL 16
typedef __m512 vf;
#define vzero() _mm512_setzero_ps()
#define vload(p) _mm512_loadu_ps(p)
#define vloadh(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define vfma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define vset1(x) _mm512_set1_ps(x)
#define vmul(a, b) _mm512_mul_ps(a, b)
#define vstore(p, v) _mm512_storeu_ps(p, v)
#define vhsum(v) _mm512_reduce_add_ps(v)
#elif defined(__AVX2__)
#define VL 8
typedef __m256 vf;
#define vzero() _mm256_setzero_ps()
#define vload(p) _mm256_loadu_ps(p)
#define vloadh(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define vfma(a, b, c) _mm256_fmadd_ps(a, b, c)
#define vset1(x) _mm256_set1_ps(x)
#define vmul(a, b) _mm256_mul_ps(a, b)
#define vstore(p, v) _mm256_storeu_ps(p, v)
#define vhsum(v) hsum8(v)
#endif

#ifdef VL
#define DEF_SCORES(name, T, LOAD)                                                                          \
    static void name(const float *q, const T *K, int64_t n, int64_t hd, float scale, float *sc) {          \
        int64_t p = 0;                                                                                     \
        for (; p + 4 <= n; p += 4) {                                                                       \
            const T *k = K + p * hd;                                                                       \
            vf a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();                                     \
            for (int64_t d = 0; d < hd; d += VL) {                                                         \
                vf qv = vload(q + d);                                                                      \
                a0 = vfma(qv, LOAD(k + d), a0);                                                            \
                a1 = vfma(qv, LOAD(k + hd + d), a1);                                                       \
                a2 = vfma(qv, LOAD(k + 2 * hd + d), a2);                                                   \
                a3 = vfma(qv, LOAD(k + 3 * hd + d), a3);                                                   \
            }                                                                                              \
            sc[p] = vhsum(a0) * scale;                                                                     \
            sc[p + 1] = vhsum(a1) * scale;                                                                 \
            sc[p + 2] = vhsum(a2) * scale;                                                                 \
            sc[p + 3] = vhsum(a3) * scale;                                                                 \
        }                                                                                                  \
        for (; p < n; p++) {                                                                               \
            vf a0 = vzero();                                                                               \
            for (int64_t d = 0; d < hd; d += VL) a0 = vfma(vload(q + d), LOAD(K + p * hd + d), a0);        \
            sc[p] = vhsum(a0) * scale;                                                                     \
        }                                                                                                  \
    }

/* out = inv * sum_p sc[p] V[p], 4 vectors of the output at a time */
#define DEF_AV(name, T, LOAD)                                                                              \
    static void name(const float *sc, const T *V, int64_t n, int64_t hd, float inv, float *out) {          \
        for (int64_t d0 = 0; d0 < hd; d0 += 4 * VL) {                                                      \
            int nv = (int)((hd - d0) / VL < 4 ? (hd - d0) / VL : 4);                                       \
            vf a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();                                     \
            const T *v = V + d0;                                                                           \
            if (nv == 4) {                                                                                 \
                for (int64_t p = 0; p < n; p++, v += hd) {                                                 \
                    vf c = vset1(sc[p]);                                                                   \
                    a0 = vfma(c, LOAD(v), a0);                                                             \
                    a1 = vfma(c, LOAD(v + VL), a1);                                                        \
                    a2 = vfma(c, LOAD(v + 2 * VL), a2);                                                    \
                    a3 = vfma(c, LOAD(v + 3 * VL), a3);                                                    \
                }                                                                                          \
            } else {                                                                                       \
                for (int64_t p = 0; p < n; p++, v += hd) {                                                 \
                    vf c = vset1(sc[p]);                                                                   \
                    a0 = vfma(c, LOAD(v), a0);                                                             \
                    if (nv > 1) a1 = vfma(c, LOAD(v + VL), a1);                                            \
                    if (nv > 2) a2 = vfma(c, LOAD(v + 2 * VL), a2);                                        \
                }                                                                                          \
            }                                                                                              \
            vf iv = vset1(inv);                                                                            \
            vstore(out + d0, vmul(a0, iv));                                                                \
            if (nv > 1) vstore(out + d0 + VL, vmul(a1, iv));                                               \
            if (nv > 2) vstore(out + d0 + 2 * VL, vmul(a2, iv));                                           \
            if (nv > 3) vstore(out + d0 + 3 * VL, vmul(a3, iv));                                           \
        }                                                                                                  \
    }

DEF_SCORES(scores_f32, float, vload)
DEF_SCORES(scores_f16, uint16_t, vloadh)
DEF_AV(av_f32, float, vload)
DEF_AV(av_f16, uint16_t, vloadh)
#endif

/* the generic loops (scalar build, or a head_dim the vector kernels do not tile); f16 rows are converted
 * into `row` first so the float loops vectorize */
static void scores_any(const float *q, const void *K, int f16, int64_t n, int64_t hd, float scale, float *sc,
                       float *row) {
    for (int64_t p = 0; p < n; p++) {
        const float *k = (const float *)K + p * hd;
        if (f16) {
            lk_f16_to_f32(hd, (const uint16_t *)K + p * hd, row);
            k = row;
        }
        sc[p] = dot_f32(q, k, hd) * scale;
    }
}

static void av_any(const float *sc, const void *V, int f16, int64_t n, int64_t hd, float inv, float *out,
                   float *row) {
    memset(out, 0, hd * sizeof(float));
    for (int64_t p = 0; p < n; p++) {
        const float *v = (const float *)V + p * hd;
        if (f16) {
            lk_f16_to_f32(hd, (const uint16_t *)V + p * hd, row);
            v = row;
        }
        axpy_f32(out, sc[p], v, hd);
    }
    for (int64_t i = 0; i < hd; i++) out[i] *= inv;
}

/* ---- row-wise pieces ------------------------------------------------------------------------------ */

static void rmsnorm_row(const float *x, const float *w, int64_t n, float eps, float *out) {
    float ss = dot_f32(x, x, n);
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = (x[i] * r) * w[i];
}

static void rope_row(float *x, int64_t n_head, int64_t hd, int64_t n_rot, const float *c, const float *s) {
    for (int64_t h = 0; h < n_head; h++) {
        float *p = x + h * hd;
        for (int64_t i = 0; i < n_rot / 2; i++) {
            float x0 = p[2 * i], x1 = p[2 * i + 1];
            p[2 * i] = x0 * c[i] - x1 * s[i];
            p[2 * i + 1] = x0 * s[i] + x1 * c[i];
        }
    }
}

LK_API void lk_rmsnorm(int64_t T, int64_t n, const float *x, const float *w, float eps, float *out) {
    for (int64_t t = 0; t < T; t++) rmsnorm_row(x + t * n, w, n, eps, out + t * n);
}

LK_API void lk_rope(int64_t T, int64_t n_head, int64_t head_dim, int64_t n_rot, float *x, const int32_t *pos,
                    const float *cos, const float *sin) {
    for (int64_t t = 0; t < T; t++)
        rope_row(x + t * n_head * head_dim, n_head, head_dim, n_rot, cos + pos[t] * (n_rot / 2),
                 sin + pos[t] * (n_rot / 2));
}

/* ---- scratch -------------------------------------------------------------------------------------- */

typedef struct {
    float *h, *q, *k, *v, *a, *g, *u, *scores; /* scores: n_tasks x (n_ctx + head_dim + 16) */
    int64_t n_threads;
} scratch_t;

static size_t up64(size_t n) { return (n + 15) & ~(size_t)15; } /* floats, to 64-byte multiples */

/* the buffers of a T-token call with nt attention tasks at most; returns the bytes they take */
static size_t layout(const lk_block *b, int64_t T, int64_t nt, scratch_t *s, float *base) {
    int64_t nq = b->n_head * b->head_dim, nkv = b->n_head_kv * b->head_dim;
    size_t sizes[8] = {up64(T * b->n_embd), up64(T * nq), up64(T * nkv), up64(T * nkv), up64(T * nq),
                       up64(T * b->n_ff), up64(T * b->n_ff), up64(nt * (b->n_ctx + b->head_dim + 16))};
    float **dst[8] = {&s->h, &s->q, &s->k, &s->v, &s->a, &s->g, &s->u, &s->scores};
    size_t off = 0;
    for (int i = 0; i < 8; i++) {
        if (base) *dst[i] = base + off;
        off += sizes[i];
    }
    s->n_threads = nt;
    return off * sizeof(float);
}

LK_API int lk_block_reserve(lk_block *b, int64_t T) {
    scratch_t s;
    size_t bytes = layout(b, T, lk_get_threads(), &s, NULL);
    lk_scratch *sc = b->scratch;
    if (!sc) return LK_ESHAPE;
    if (sc->bytes >= bytes) return LK_OK;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes) != 0) return LK_ENOMEM;
    free(sc->p);
    sc->p = p;
    sc->bytes = bytes;
    return LK_OK;
}

LK_API void lk_scratch_free(lk_scratch *s) {
    free(s->p);
    s->p = NULL;
    s->bytes = 0;
}

/* ---- the parallel phases -------------------------------------------------------------------------- */

typedef struct {
    const lk_block *b;
    scratch_t s;
    int64_t T;
    float *x;
    const int32_t *pos, *seq;
    const float *cos, *sin;
    const int64_t *work; /* attention: prefix sums of per-(token, head) cost, T * n_head + 1 */
} job_t;

typedef void (*row_fn)(job_t *j, int64_t t);

static int64_t min_work(const lk_block *b) { return b->min_parallel > 0 ? b->min_parallel : (1 << 15); }

static void split(int i, int n, int64_t total, int64_t *lo, int64_t *hi) {
    *lo = total * i / n;
    *hi = total * (i + 1) / n;
}

/* phase 1: h = rmsnorm(x) * attn_norm */
static void row_norm1(job_t *j, int64_t t) {
    const lk_block *b = j->b;
    rmsnorm_row(j->x + t * b->n_embd, b->attn_norm, b->n_embd, b->eps, j->s.h + t * b->n_embd);
}

static void add_bias(float *y, const float *bias, int64_t n) {
    if (bias)
        for (int64_t i = 0; i < n; i++) y[i] += bias[i];
}

/* phase 2: biases, rope on q and k, k and v into the caches */
static void row_qkv(job_t *j, int64_t t) {
    const lk_block *b = j->b;
    int64_t hd = b->head_dim, nq = b->n_head * hd, nkv = b->n_head_kv * hd, half = b->n_rot / 2;
    float *q = j->s.q + t * nq, *k = j->s.k + t * nkv, *v = j->s.v + t * nkv;
    add_bias(q, b->q.bias, nq);
    add_bias(k, b->k.bias, nkv);
    add_bias(v, b->v.bias, nkv);
    const float *c = j->cos + (int64_t)j->pos[t] * half, *s = j->sin + (int64_t)j->pos[t] * half;
    rope_row(q, b->n_head, hd, b->n_rot, c, s);
    rope_row(k, b->n_head_kv, hd, b->n_rot, c, s);
    for (int64_t h = 0; h < b->n_head_kv; h++) {
        int64_t slot = (((int64_t)j->seq[t] * b->n_head_kv + h) * b->n_ctx + j->pos[t]) * hd;
        if (b->cache_f16) {
            lk_f32_to_f16(hd, k + h * hd, (uint16_t *)b->k_cache + slot);
            lk_f32_to_f16(hd, v + h * hd, (uint16_t *)b->v_cache + slot);
        } else {
            memcpy((float *)b->k_cache + slot, k + h * hd, hd * sizeof(float));
            memcpy((float *)b->v_cache + slot, v + h * hd, hd * sizeof(float));
        }
    }
}

/* phase 4: x += o + bias; h = rmsnorm(x) * ffn_norm   (o was written into h) */
static void row_resid_norm2(job_t *j, int64_t t) {
    const lk_block *b = j->b;
    int64_t n = b->n_embd;
    float *x = j->x + t * n, *o = j->s.h + t * n;
    for (int64_t i = 0; i < n; i++) x[i] += o[i] + (b->o.bias ? b->o.bias[i] : 0.0f);
    rmsnorm_row(x, b->ffn_norm, n, b->eps, o);
}

/* phase 5: g = silu(g) * u */
static void row_swiglu(job_t *j, int64_t t) {
    const lk_block *b = j->b;
    swiglu(j->s.g + t * b->n_ff, j->s.u + t * b->n_ff, b->gate.bias, b->up.bias, b->n_ff);
}

/* phase 6: x += down + bias   (down was written into h) */
static void row_resid(job_t *j, int64_t t) {
    const lk_block *b = j->b;
    int64_t n = b->n_embd;
    float *x = j->x + t * n, *d = j->s.h + t * n;
    for (int64_t i = 0; i < n; i++) x[i] += d[i] + (b->down.bias ? b->down.bias[i] : 0.0f);
}

typedef struct {
    job_t *j;
    row_fn fn;
} rows_ctx;

static void rows_task(void *ctx, int i, int n) {
    rows_ctx *r = ctx;
    int64_t lo, hi;
    split(i, n, r->j->T, &lo, &hi);
    for (int64_t t = lo; t < hi; t++) r->fn(r->j, t);
}

/* run fn over the T rows; on the pool when there are >= 2^15 elements of work */
static void for_rows(job_t *j, row_fn fn, int64_t row_elems) {
    int nt = lk_get_threads();
    int64_t tasks = j->T < nt ? j->T : nt;
    rows_ctx r = {j, fn};
    if (tasks < 2 || j->T * row_elems < min_work(j->b))
        rows_task(&r, 0, 1);
    else
        lk_parallel(rows_task, &r, (int)tasks);
}

/* phase 3: attention for (token, head) items [lo, hi) into s.a; scores buffer of this task */
static void attend(job_t *j, int64_t lo, int64_t hi, float *sc) {
    const lk_block *b = j->b;
    int64_t hd = b->head_dim, group = b->n_head / b->n_head_kv;
    float scale = 1.0f / sqrtf((float)hd);
    float *row = sc + b->n_ctx; /* head_dim floats after the scores (see layout) */
    size_t esz = b->cache_f16 ? 2 : 4;
    for (int64_t it = lo; it < hi; it++) {
        int64_t t = it / b->n_head, h = it % b->n_head, kvh = h / group, n = (int64_t)j->pos[t] + 1;
        const float *q = j->s.q + (t * b->n_head + h) * hd;
        float *out = j->s.a + (t * b->n_head + h) * hd;
        int64_t base = ((int64_t)j->seq[t] * b->n_head_kv + kvh) * b->n_ctx * hd;
        const void *K = (const char *)b->k_cache + base * esz, *V = (const char *)b->v_cache + base * esz;
#ifdef VL
        int vec = hd % VL == 0;
        if (vec) {
            if (b->cache_f16) scores_f16(q, K, n, hd, scale, sc);
            else scores_f32(q, K, n, hd, scale, sc);
        } else
#endif
            scores_any(q, K, b->cache_f16, n, hd, scale, sc, row);
        float m = -INFINITY;
        for (int64_t p = 0; p < n; p++) m = sc[p] > m ? sc[p] : m;
        float inv = 1.0f / exp_sub_sum(sc, n, m);
#ifdef VL
        if (vec) {
            if (b->cache_f16) av_f16(sc, V, n, hd, inv, out);
            else av_f32(sc, V, n, hd, inv, out);
        } else
#endif
            av_any(sc, V, b->cache_f16, n, hd, inv, out, row);
    }
}

static void attend_task(void *ctx, int i, int n) {
    job_t *j = ctx;
    int64_t items = j->T * j->b->n_head, total = 0;
    for (int64_t t = 0; t < j->T; t++) total += (int64_t)(j->pos[t] + 1) * j->b->n_head;
    /* balance by slots: item it costs pos[t] + 1; find the items whose cumulative cost falls in share i */
    int64_t want_lo = total * i / n, want_hi = total * (i + 1) / n, acc = 0, lo = -1, hi = items;
    for (int64_t it = 0; it < items; it++) {
        int64_t c = j->pos[it / j->b->n_head] + 1;
        if (lo < 0 && acc >= want_lo) lo = it;
        if (acc >= want_hi) {
            hi = it;
            break;
        }
        acc += c;
    }
    if (lo < 0) lo = items;
    attend(j, lo, hi, j->s.scores + (int64_t)i * (j->b->n_ctx + j->b->head_dim + 16));
}

/* ---- the block ------------------------------------------------------------------------------------ */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int mm_timed(lk_block *b, const lk_linear *l, int64_t T, const float *x, float *y) {
    if (!b->timing) return lk_matmul(l->type, l->rows, l->cols, l->w, T, x, y, l->rows);
    int64_t t0 = now_ns();
    int rc = lk_matmul(l->type, l->rows, l->cols, l->w, T, x, y, l->rows);
    b->ns_matmul += now_ns() - t0;
    return rc;
}
#define mm(l, T, x, y) mm_timed(b, l, T, x, y)

static int block_forward(lk_block *b, int64_t T, float *x, const int32_t *pos, const int32_t *seq,
                         const float *cos, const float *sin);

LK_API int lk_block_forward(lk_block *b, int64_t T, float *x, const int32_t *pos, const int32_t *seq,
                            const float *cos, const float *sin) {
    if (!b->timing) return block_forward(b, T, x, pos, seq, cos, sin);
    int64_t t0 = now_ns();
    int rc = block_forward(b, T, x, pos, seq, cos, sin);
    b->ns_total += now_ns() - t0;
    return rc;
}

static int block_forward(lk_block *b, int64_t T, float *x, const int32_t *pos, const int32_t *seq,
                         const float *cos, const float *sin) {
    if (T <= 0) return T == 0 ? LK_OK : LK_ESHAPE;
    if (b->n_head % b->n_head_kv || b->n_rot > b->head_dim || b->n_rot % 2) return LK_ESHAPE;
    for (int64_t t = 0; t < T; t++)
        if (pos[t] < 0 || pos[t] >= b->n_ctx || seq[t] < 0 || seq[t] >= b->n_seq) return LK_ESHAPE;
    int rc = lk_block_reserve(b, T);
    if (rc) return rc;
    job_t j = {.b = b, .T = T, .x = x, .pos = pos, .seq = seq, .cos = cos, .sin = sin};
    layout(b, T, lk_get_threads(), &j.s, (float *)b->scratch->p);
    int64_t nq = b->n_head * b->head_dim;

    for_rows(&j, row_norm1, b->n_embd);
    if ((rc = mm(&b->q, T, j.s.h, j.s.q)) || (rc = mm(&b->k, T, j.s.h, j.s.k)) ||
        (rc = mm(&b->v, T, j.s.h, j.s.v)))
        return rc;
    for_rows(&j, row_qkv, nq);

    int64_t slots = 0;
    for (int64_t t = 0; t < T; t++) slots += pos[t] + 1;
    int nt = lk_get_threads();
    int64_t items = T * b->n_head;
    int tasks = (int)(items < nt ? items : nt);
    if (tasks > j.s.n_threads) tasks = (int)j.s.n_threads;
    if (tasks < 2 || slots * nq < 2 * min_work(b))
        attend_task(&j, 0, 1);
    else
        lk_parallel(attend_task, &j, tasks);

    if ((rc = mm(&b->o, T, j.s.a, j.s.h))) return rc;
    for_rows(&j, row_resid_norm2, b->n_embd);
    if ((rc = mm(&b->gate, T, j.s.h, j.s.g)) || (rc = mm(&b->up, T, j.s.h, j.s.u))) return rc;
    for_rows(&j, row_swiglu, b->n_ff);
    if ((rc = mm(&b->down, T, j.s.g, j.s.h))) return rc;
    for_rows(&j, row_resid, b->n_embd);
    return LK_OK;
}
