/* F32, F16, BF16: float dot products in float32, no activation quantization (greedy output with float
 * files stays llama.cpp's). Repacked like the quantized formats, one column per "block":
 *   f32x16   | w[16]: f32 |    64 B: column c of the 16 rows of a group
 *   f16x16   | w[16]: f16 |    32 B       (F16C vcvtph2ps in the avx2/avx512 variants)
 *   bf16x16  | w[16]: bf16 |   32 B       (bf16 -> f32 is a 16-bit shift: exact)
 * Each output is a sum over columns in order, split over two accumulators (even and odd columns; the
 * fma chain would otherwise bound the speed), added at the end.
 */
#include <string.h>

#include "k_half.h"
#include "k_internal.h"
#include "k_simd.h"

enum { K_F32 = 0, K_F16 = 1, K_BF16 = 2 };

#define PACK_FLOAT(name, T)                                                                                 \
    static void name(const uint8_t *const src[LK_R], uint8_t *dst) {                                        \
        for (int r = 0; r < LK_R; r++) memcpy(dst + r * sizeof(T), src[r], sizeof(T));                       \
    }
PACK_FLOAT(pack_f32, float)
PACK_FLOAT(pack_f16, uint16_t)

static void unpack_f32(const uint8_t *p, int lane, float *out) { memcpy(out, p + 4 * lane, 4); }
static void unpack_f16(const uint8_t *p, int lane, float *out) {
    uint16_t h;
    memcpy(&h, p + 2 * lane, 2);
    *out = lk_h2f(h);
}
static void unpack_bf16(const uint8_t *p, int lane, float *out) {
    uint16_t h;
    memcpy(&h, p + 2 * lane, 2);
    *out = lk_bf2f(h);
}

LK_INL lk_vf load_col(const uint8_t *g, int64_t c, const int kind) {
    if (kind == K_F32) return vf_f32((const float *)g + 16 * c);
    if (kind == K_F16) return vf_f16((const uint16_t *)g + 16 * c);
    return vf_bf16((const uint16_t *)g + 16 * c);
}

LK_INL void float_body(const uint8_t *g, int64_t cols, const uint8_t *xq, size_t xs, const int nx, float *y,
                       int64_t ldy, int nv, const int kind) {
    lk_vf a0[LK_NX], a1[LK_NX];
    for (int r = 0; r < nx; r++) a0[r] = a1[r] = vf_zero();
#define XF(r) ((const float *)(xq + (size_t)(r) * xs))
    int64_t c = 0;
    const size_t col_bytes = kind == K_F32 ? 64 : 32;
    for (; c + 1 < cols; c += 2) {
        lk_prefetch_block(g + (size_t)c * col_bytes, 2 * col_bytes);
        const lk_vf w0 = load_col(g, c, kind), w1 = load_col(g, c + 1, kind);
        for (int r = 0; r < nx; r++) {
            a0[r] = vf_fma(w0, vf_set1(XF(r)[c]), a0[r]);
            a1[r] = vf_fma(w1, vf_set1(XF(r)[c + 1]), a1[r]);
        }
    }
    if (c < cols) {
        const lk_vf w0 = load_col(g, c, kind);
        for (int r = 0; r < nx; r++) a0[r] = vf_fma(w0, vf_set1(XF(r)[c]), a0[r]);
    }
    for (int r = 0; r < nx; r++) vf_store(y + r * ldy, vf_add(a0[r], a1[r]), nv);
#undef XF
}

#define FLOAT_KERN(name, kind)                                                                               \
    LK_INL void name##_body(const uint8_t *g, int64_t nb, const uint8_t *xq, size_t xs, const int nx,      \
                            float *y, int64_t ldy, int nv) {                                                \
        float_body(g, nb, xq, xs, nx, y, ldy, nv, kind);                                                    \
    }                                                                                                       \
    LK_KERN_DISPATCH(name, name##_body)
FLOAT_KERN(kern_f32, K_F32)
FLOAT_KERN(kern_f16, K_F16)
FLOAT_KERN(kern_bf16, K_BF16)

const lk_format lk__float_formats[] = {
    {0, 1, 4, 64, LK_ACT_F32, pack_f32, unpack_f32, kern_f32},
    {1, 1, 2, 32, LK_ACT_F32, pack_f16, unpack_f16, kern_f16},
    {30, 1, 2, 32, LK_ACT_F32, pack_f16, unpack_bf16, kern_bf16},
    {-1, 0, 0, 0, 0, NULL, NULL, NULL},
};
