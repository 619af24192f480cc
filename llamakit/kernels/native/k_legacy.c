/* The 32-weight formats Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL: repacking, exact get_rows, integer matmul.
 *
 * Interleaved 16-row blocks (see k_internal.h), for one block column b of rows r = 0..15:
 *   q4_0x16  | d[16]: f16 | qs[4][64] |                                   288 B = 16 x 18
 *            qs[k][4r+i]: low nibble = weight 4k+i, high nibble = weight 16+4k+i of row r
 *            (that is the file's qs[4k+i] byte moved: ggml already pairs weights j and j+16)
 *   q4_1x16  | d[16] | m[16] | qs[4][64] |                                320 B = 16 x 20
 *   q5_0x16  | d[16] | qh[64] | qs[4][64] |                               352 B = 16 x 22
 *   q5_1x16  | d[16] | m[16] | qh[64] | qs[4][64] |                       384 B = 16 x 24
 *            qh[4r+i]: bit k = bit 4 of weight 4k+i, bit 4+k = bit 4 of weight 16+4k+i (k < 4)
 *   q8_0x16  | d[16] | qs[8][64] |                                        544 B = 16 x 34
 *            qs[k][4r+i] = q + 128 of weight 4k+i (unsigned, for vpdpbusd)
 *   iq4nlx16 = q4_0x16 layout, the nibbles being indices into the non-linear grid
 *
 * The dot product of one block with an activation block (d_x, s = sum q_x, q_x[32]) is
 *   Q4_0: d d_x (sum q q_x - 8 s)       Q4_1: d d_x sum q q_x + m d_x s       Q8_0: d d_x sum q q_x
 * in exact int32 before the two float multiplies.
 */
#include <string.h>

#include "k_half.h"
#include "k_internal.h"
#include "k_simd.h"

static const int8_t IQ4NL_VALUES[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
static const uint8_t IQ4NL_U8[16] = {1, 24, 45, 63, 79, 93, 106, 118, 129, 141, 153, 166, 181, 197, 217, 241};

typedef struct { uint16_t d[16]; uint8_t qs[4][64]; } q4_0x16;
typedef struct { uint16_t d[16]; uint16_t m[16]; uint8_t qs[4][64]; } q4_1x16;
typedef struct { uint16_t d[16]; uint8_t qh[64]; uint8_t qs[4][64]; } q5_0x16;
typedef struct { uint16_t d[16]; uint16_t m[16]; uint8_t qh[64]; uint8_t qs[4][64]; } q5_1x16;
typedef struct { uint16_t d[16]; uint8_t qs[8][64]; } q8_0x16;

_Static_assert(sizeof(block_q4_0) == 18 && sizeof(block_q4_1) == 20 && sizeof(block_q5_0) == 22 &&
               sizeof(block_q5_1) == 24 && sizeof(block_q8_0) == 34, "ggml block sizes");
_Static_assert(sizeof(q4_0x16) == 16 * 18 && sizeof(q4_1x16) == 16 * 20 && sizeof(q5_0x16) == 16 * 22 &&
               sizeof(q5_1x16) == 16 * 24 && sizeof(q8_0x16) == 16 * 34, "interleaved sizes");

/* ---- packing ------------------------------------------------------------------------------------- */
static void interleave_nibbles(const uint8_t *qs_of_row[LK_R], uint8_t qs[4][64]) {
    for (int r = 0; r < LK_R; r++)
        for (int k = 0; k < 4; k++) memcpy(&qs[k][4 * r], qs_of_row[r] + 4 * k, 4);
}

static uint8_t qh_byte(const uint8_t qh_file[4], int i) { /* qh[4r+i] of the layout above */
    uint32_t h;
    memcpy(&h, qh_file, 4);
    uint8_t out = 0;
    for (int k = 0; k < 4; k++) {
        out |= (uint8_t)(((h >> (4 * k + i)) & 1) << k);
        out |= (uint8_t)(((h >> (16 + 4 * k + i)) & 1) << (4 + k));
    }
    return out;
}

static void pack_q4_0(const uint8_t *const src[LK_R], uint8_t *dst) {
    q4_0x16 *o = (q4_0x16 *)dst;
    const uint8_t *qs[LK_R];
    for (int r = 0; r < LK_R; r++) {
        const block_q4_0 *b = (const block_q4_0 *)src[r];
        o->d[r] = b->d;
        qs[r] = b->qs;
    }
    interleave_nibbles(qs, o->qs);
}

static void pack_q4_1(const uint8_t *const src[LK_R], uint8_t *dst) {
    q4_1x16 *o = (q4_1x16 *)dst;
    const uint8_t *qs[LK_R];
    for (int r = 0; r < LK_R; r++) {
        const block_q4_1 *b = (const block_q4_1 *)src[r];
        o->d[r] = b->d;
        o->m[r] = b->m;
        qs[r] = b->qs;
    }
    interleave_nibbles(qs, o->qs);
}

static void pack_q5_0(const uint8_t *const src[LK_R], uint8_t *dst) {
    q5_0x16 *o = (q5_0x16 *)dst;
    const uint8_t *qs[LK_R];
    for (int r = 0; r < LK_R; r++) {
        const block_q5_0 *b = (const block_q5_0 *)src[r];
        o->d[r] = b->d;
        for (int i = 0; i < 4; i++) o->qh[4 * r + i] = qh_byte(b->qh, i);
        qs[r] = b->qs;
    }
    interleave_nibbles(qs, o->qs);
}

static void pack_q5_1(const uint8_t *const src[LK_R], uint8_t *dst) {
    q5_1x16 *o = (q5_1x16 *)dst;
    const uint8_t *qs[LK_R];
    for (int r = 0; r < LK_R; r++) {
        const block_q5_1 *b = (const block_q5_1 *)src[r];
        o->d[r] = b->d;
        o->m[r] = b->m;
        for (int i = 0; i < 4; i++) o->qh[4 * r + i] = qh_byte(b->qh, i);
        qs[r] = b->qs;
    }
    interleave_nibbles(qs, o->qs);
}

static void pack_q8_0(const uint8_t *const src[LK_R], uint8_t *dst) {
    q8_0x16 *o = (q8_0x16 *)dst;
    for (int r = 0; r < LK_R; r++) {
        const block_q8_0 *b = (const block_q8_0 *)src[r];
        o->d[r] = b->d;
        for (int k = 0; k < 8; k++)
            for (int i = 0; i < 4; i++) o->qs[k][4 * r + i] = (uint8_t)(b->qs[4 * k + i] ^ 0x80);
    }
}

/* ---- get_rows: the codecs' float32 values (every product below is exact, so contraction is harmless) */
static int nib(const uint8_t qs[4][64], int lane, int j) { /* weight j of row `lane` */
    const int i = j & 3, k = (j >> 2) & 3;
    const uint8_t b = qs[k][4 * lane + i];
    return j < 16 ? b & 15 : b >> 4;
}

static int hbit(const uint8_t *qh, int lane, int j) {
    const int i = j & 3, k = (j >> 2) & 3;
    return (qh[4 * lane + i] >> (j < 16 ? k : 4 + k)) & 1;
}

static void unpack_q4_0(const uint8_t *p, int lane, float *out) {
    const q4_0x16 *b = (const q4_0x16 *)p;
    const float d = lk_h2f(b->d[lane]);
    for (int j = 0; j < 32; j++) out[j] = (float)(nib(b->qs, lane, j) - 8) * d;
}

static void unpack_iq4_nl(const uint8_t *p, int lane, float *out) {
    const q4_0x16 *b = (const q4_0x16 *)p;
    const float d = lk_h2f(b->d[lane]);
    for (int j = 0; j < 32; j++) out[j] = (float)IQ4NL_VALUES[nib(b->qs, lane, j)] * d;
}

static void unpack_q4_1(const uint8_t *p, int lane, float *out) {
    const q4_1x16 *b = (const q4_1x16 *)p;
    const float d = lk_h2f(b->d[lane]), m = lk_h2f(b->m[lane]);
    for (int j = 0; j < 32; j++) out[j] = (float)nib(b->qs, lane, j) * d + m;
}

static void unpack_q5_0(const uint8_t *p, int lane, float *out) {
    const q5_0x16 *b = (const q5_0x16 *)p;
    const float d = lk_h2f(b->d[lane]);
    for (int j = 0; j < 32; j++) out[j] = (float)((nib(b->qs, lane, j) | hbit(b->qh, lane, j) << 4) - 16) * d;
}

static void unpack_q5_1(const uint8_t *p, int lane, float *out) {
    const q5_1x16 *b = (const q5_1x16 *)p;
    const float d = lk_h2f(b->d[lane]), m = lk_h2f(b->m[lane]);
    for (int j = 0; j < 32; j++) out[j] = (float)(nib(b->qs, lane, j) | hbit(b->qh, lane, j) << 4) * d + m;
}

static void unpack_q8_0(const uint8_t *p, int lane, float *out) {
    const q8_0x16 *b = (const q8_0x16 *)p;
    const float d = lk_h2f(b->d[lane]);
    for (int j = 0; j < 32; j++) out[j] = (float)(int8_t)(b->qs[j >> 2][4 * lane + (j & 3)] ^ 0x80) * d;
}

/* ---- kernels ------------------------------------------------------------------------------------- */
#define XB(r, b) ((const lk_q8 *)(xq + (size_t)(r) * xs) + (b))

/* the 5th bit of weights 4k+i (hi = 0) or 16+4k+i (hi = 1), moved to bit 4 */
LK_INL lk_b64 q5_high(lk_b64 qh, int k, int hi) {
    const int bit = hi ? 4 + k : k;
    return b64_and(bit <= 4 ? b64_sll(qh, 4 - bit) : b64_srl(qh, bit - 4), 0x10);
}

/* Shared body of the nibble formats: fmt 0 = Q4_0, 1 = Q4_1, 2 = Q5_0, 3 = Q5_1, 4 = IQ4_NL */
LK_INL void nibble_body(const uint8_t *g, int64_t nb, const uint8_t *xq, size_t xs, const int nx, float *y,
                        int64_t ldy, int nv, const int fmt, const size_t bsz) {
    lk_vf acc[LK_NX], accm[LK_NX];
    for (int r = 0; r < nx; r++) acc[r] = accm[r] = vf_zero();
    const int has_m = fmt == 1 || fmt == 3, has_h = fmt == 2 || fmt == 3;
    const size_t qs_off = bsz - 256, qh_off = bsz - 256 - 64;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = g + (size_t)b * bsz;
        lk_prefetch_block(blk, bsz);
        lk_vi s[LK_NX];
        lk_vs s4[LK_NX];
        for (int r = 0; r < nx; r++) s[r] = vi_zero(), s4[r] = vs_zero();
        lk_b64 qh = has_h ? b64_load(blk + qh_off) : b64_and(b64_load(blk), 0);
        for (int k = 0; k < 4; k++) {
            lk_b64 v = b64_load(blk + qs_off + 64 * k);
            lk_b64 lo = b64_and(v, 0x0F), hi = b64_srl(v, 4);
            if (has_h) {
                lo = b64_or(lo, q5_high(qh, k, 0));
                hi = b64_or(hi, q5_high(qh, k, 1));
            }
            if (fmt == 4) {
                lo = b64_lut16(lo, IQ4NL_U8);
                hi = b64_lut16(hi, IQ4NL_U8);
                for (int r = 0; r < nx; r++) {
                    s[r] = vi_dot128(s[r], lo, XB(r, b)->qs + 4 * k);
                    s[r] = vi_dot128(s[r], hi, XB(r, b)->qs + 16 + 4 * k);
                }
            } else if (has_h) {
                for (int r = 0; r < nx; r++) {
                    s[r] = vi_dot(s[r], lo, XB(r, b)->qs + 4 * k);
                    s[r] = vi_dot(s[r], hi, XB(r, b)->qs + 16 + 4 * k);
                }
            } else { /* 4-bit weights: 8 steps fit int16 pair sums */
                for (int r = 0; r < nx; r++) {
                    s4[r] = vs_dot(s4[r], lo, XB(r, b)->qs + 4 * k);
                    s4[r] = vs_dot(s4[r], hi, XB(r, b)->qs + 16 + 4 * k);
                }
            }
        }
        if (fmt == 0 || fmt == 1)
            for (int r = 0; r < nx; r++) s[r] = vi_from_vs(s4[r]);
        const lk_vf d = vf_f16((const uint16_t *)blk);
        const int off = fmt == 0 ? 8 : fmt == 2 ? 16 : fmt == 4 ? 128 * DOT128_BIAS : 0;
        for (int r = 0; r < nx; r++) {
            const lk_q8 *x = XB(r, b);
            if (off) s[r] = vi_sub(s[r], vi_set1(off * x->s));
            acc[r] = vf_fma(vf_cvt(s[r]), vf_mul(d, vf_set1(x->d)), acc[r]);
            if (has_m) accm[r] = vf_fma(vf_f16((const uint16_t *)blk + 16), vf_set1(x->ds), accm[r]);
        }
    }
    for (int r = 0; r < nx; r++) {
        lk_vf a = acc[r];
        if (has_m) a = vf_add(a, accm[r]);
        vf_store(y + r * ldy, a, nv);
    }
}

#define NIBBLE_KERN(name, fmt, T)                                                                            \
    LK_INL void name##_body(const uint8_t *g, int64_t nb, const uint8_t *xq, size_t xs, const int nx,      \
                            float *y, int64_t ldy, int nv) {                                                \
        nibble_body(g, nb, xq, xs, nx, y, ldy, nv, fmt, sizeof(T));                                         \
    }                                                                                                       \
    LK_KERN_DISPATCH(name, name##_body)

NIBBLE_KERN(kern_q4_0, 0, q4_0x16)
NIBBLE_KERN(kern_q4_1, 1, q4_1x16)
NIBBLE_KERN(kern_q5_0, 2, q5_0x16)
NIBBLE_KERN(kern_q5_1, 3, q5_1x16)
NIBBLE_KERN(kern_iq4_nl, 4, q4_0x16)

LK_INL void q8_0_body(const uint8_t *g, int64_t nb, const uint8_t *xq, size_t xs, const int nx, float *y,
                      int64_t ldy, int nv) {
    lk_vf acc[LK_NX];
    for (int r = 0; r < nx; r++) acc[r] = vf_zero();
    for (int64_t b = 0; b < nb; b++) {
        const q8_0x16 *w = (const q8_0x16 *)g + b;
        lk_prefetch_block(w, sizeof *w);
        lk_vi s[LK_NX];
        for (int r = 0; r < nx; r++) s[r] = vi_zero();
        for (int k = 0; k < 8; k++) {
            lk_b64 v = b64_load(w->qs[k]);
            for (int r = 0; r < nx; r++) s[r] = vi_dot128(s[r], v, XB(r, b)->qs + 4 * k);
        }
        const lk_vf d = vf_f16(w->d);
        for (int r = 0; r < nx; r++) {
            const lk_q8 *x = XB(r, b);
            if (DOT128_BIAS) s[r] = vi_sub(s[r], vi_set1(128 * x->s));
            acc[r] = vf_fma(vf_cvt(s[r]), vf_mul(d, vf_set1(x->d)), acc[r]);
        }
    }
    for (int r = 0; r < nx; r++) vf_store(y + r * ldy, acc[r], nv);
}
LK_KERN_DISPATCH(kern_q8_0, q8_0_body)

const lk_format lk__legacy_formats[] = {
    {2, 32, 18, sizeof(q4_0x16), LK_ACT_Q8, pack_q4_0, unpack_q4_0, kern_q4_0},
    {3, 32, 20, sizeof(q4_1x16), LK_ACT_Q8, pack_q4_1, unpack_q4_1, kern_q4_1},
    {6, 32, 22, sizeof(q5_0x16), LK_ACT_Q8, pack_q5_0, unpack_q5_0, kern_q5_0},
    {7, 32, 24, sizeof(q5_1x16), LK_ACT_Q8, pack_q5_1, unpack_q5_1, kern_q5_1},
    {8, 32, 34, sizeof(q8_0x16), LK_ACT_Q8, pack_q8_0, unpack_q8_0, kern_q8_0},
    {20, 32, 18, sizeof(q4_0x16), LK_ACT_Q8, pack_q4_0, unpack_iq4_nl, kern_iq4_nl},
    {-1, 0, 0, 0, 0, NULL, NULL, NULL},
};
