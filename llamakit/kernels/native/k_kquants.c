/* The 256-weight K-quants: repacking, exact get_rows, integer matmul against Q8_K-style activations.
 *
 * Interleaved 16-row super-blocks (see k_internal.h), rows r = 0..15, 4-weight groups g:
 *   q4_Kx16  | d[16] | dmin[16] | sc[8][16] | m[8][16] | qs[4][8][64] |              2368 B = 16 x 148
 *            sc/m: the 6-bit scale and min of sub-block j (32 weights) of row r, unpacked to bytes;
 *            qs[c][g][4r+i] = file qs[32c + 4g + i]: low nibble = weight 64c + 4g + i (sub-block 2c),
 *            high nibble = weight 64c + 32 + 4g + i (sub-block 2c+1)
 *   q5_Kx16  | d[16] | dmin[16] | sc[8][16] | m[8][16] | qh[8][64] | qs[4][8][64] |   2880 B = 16 x 180
 *            qh[g][4r+i] = file qh[4g + i]: bit j = bit 4 of weight 32j + 4g + i
 *   q6_Kx16  | d[16] | sc[16][16]: i8 | q[2][8][3][64] |                             3360 B = 16 x 210
 *            element e = 128h + 32k + 4g + i: low 4 bits = q[h][g][k%2][4r+i] >> 4(k/2),
 *            high 2 bits = q[h][g][2][4r+i] >> 2k & 3 (the file's ql/qh bytes moved); sub-block e/16.
 *            The three 64-byte vectors of one (h, g) lie together in the order the kernel reads them, so
 *            the weights are one sequential stream (three interleaved ones halved the DRAM bandwidth).
 *
 * Dot product of a super-block with an activation block (d_x, q_x[256], bsums[16]):
 *   Q4_K: d d_x sum_j sc_j (sum q q_x)_j - dmin d_x sum_j m_j (bsums[2j] + bsums[2j+1])
 *   Q6_K: d d_x sum_j sc_j ((sum q q_x)_j - 32 bsums[j])          (q = the unsigned 6-bit value)
 * with each sub-block sum in int32 and the scales applied as int32 multiplies (no rounding until the end).
 */
#include <string.h>

#include "k_half.h"
#include "k_internal.h"
#include "k_simd.h"

typedef struct { uint16_t d[16]; uint16_t dmin[16]; uint8_t sc[8][16]; uint8_t m[8][16]; uint8_t qs[4][8][64]; } q4_Kx16;
typedef struct {
    uint16_t d[16]; uint16_t dmin[16]; uint8_t sc[8][16]; uint8_t m[8][16]; uint8_t qh[8][64]; uint8_t qs[4][8][64];
} q5_Kx16;
typedef struct { uint16_t d[16]; int8_t sc[16][16]; uint8_t q[2][8][3][64]; } q6_Kx16;

_Static_assert(sizeof(block_q4_K) == 144 && sizeof(block_q5_K) == 176 && sizeof(block_q6_K) == 210, "ggml sizes");
_Static_assert(sizeof(q4_Kx16) == 16 * 148 && sizeof(q5_Kx16) == 16 * 180 && sizeof(q6_Kx16) == 16 * 210, "x16");

/* get_scale_min_k4: sub-block j's 6-bit scale and min from the 12 packed bytes */
static void scale_min_k4(const uint8_t s[12], int j, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4));
        *m = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

/* ---- packing ------------------------------------------------------------------------------------- */
#define PACK_K4_HEAD(o, b, r)                                                                              \
    do {                                                                                                    \
        (o)->d[r] = (b)->d;                                                                                 \
        (o)->dmin[r] = (b)->dmin;                                                                           \
        for (int j = 0; j < 8; j++) scale_min_k4((b)->scales, j, &(o)->sc[j][r], &(o)->m[j][r]);            \
        for (int c = 0; c < 4; c++)                                                                         \
            for (int g = 0; g < 8; g++) memcpy(&(o)->qs[c][g][4 * (r)], (b)->qs + 32 * c + 4 * g, 4);        \
    } while (0)

static void pack_q4_K(const uint8_t *const src[LK_R], uint8_t *dst) {
    q4_Kx16 *o = (q4_Kx16 *)dst;
    for (int r = 0; r < LK_R; r++) {
        const block_q4_K *b = (const block_q4_K *)src[r];
        PACK_K4_HEAD(o, b, r);
    }
}

static void pack_q5_K(const uint8_t *const src[LK_R], uint8_t *dst) {
    q5_Kx16 *o = (q5_Kx16 *)dst;
    for (int r = 0; r < LK_R; r++) {
        const block_q5_K *b = (const block_q5_K *)src[r];
        PACK_K4_HEAD(o, b, r);
        for (int g = 0; g < 8; g++) memcpy(&o->qh[g][4 * r], b->qh + 4 * g, 4);
    }
}

static void pack_q6_K(const uint8_t *const src[LK_R], uint8_t *dst) {
    q6_Kx16 *o = (q6_Kx16 *)dst;
    for (int r = 0; r < LK_R; r++) {
        const block_q6_K *b = (const block_q6_K *)src[r];
        o->d[r] = b->d;
        for (int j = 0; j < 16; j++) o->sc[j][r] = b->scales[j];
        for (int h = 0; h < 2; h++)
            for (int g = 0; g < 8; g++) {
                for (int k2 = 0; k2 < 2; k2++) memcpy(&o->q[h][g][k2][4 * r], b->ql + 64 * h + 32 * k2 + 4 * g, 4);
                memcpy(&o->q[h][g][2][4 * r], b->qh + 32 * h + 4 * g, 4);
            }
    }
}

/* ---- get_rows (exact: d*sc and q*(d*sc) and dmin*m are exact in float32; one rounding in the subtraction) */
static void unpack_k4(const uint16_t *dd, const uint16_t *dm, const uint8_t sc[8][16], const uint8_t m[8][16],
                      const uint8_t qs[4][8][64], const uint8_t (*qh)[64], int lane, float *out) {
    const float d = lk_h2f(dd[lane]), dmin = lk_h2f(dm[lane]);
    for (int j = 0; j < 8; j++) {
        const float scale = d * (float)sc[j][lane], mn = dmin * (float)m[j][lane];
        for (int l = 0; l < 32; l++) {
            const int g = l >> 2, i = l & 3;
            int q = (qs[j >> 1][g][4 * lane + i] >> (4 * (j & 1))) & 15;
            if (qh) q |= ((qh[g][4 * lane + i] >> j) & 1) << 4;
            out[32 * j + l] = (float)q * scale - mn;
        }
    }
}

static void unpack_q4_K(const uint8_t *p, int lane, float *out) {
    const q4_Kx16 *b = (const q4_Kx16 *)p;
    unpack_k4(b->d, b->dmin, b->sc, b->m, b->qs, NULL, lane, out);
}

static void unpack_q5_K(const uint8_t *p, int lane, float *out) {
    const q5_Kx16 *b = (const q5_Kx16 *)p;
    unpack_k4(b->d, b->dmin, b->sc, b->m, b->qs, b->qh, lane, out);
}

static void unpack_q6_K(const uint8_t *p, int lane, float *out) {
    const q6_Kx16 *b = (const q6_Kx16 *)p;
    const float d = lk_h2f(b->d[lane]);
    for (int e = 0; e < 256; e++) {
        const int h = e >> 7, k = (e >> 5) & 3, g = (e >> 2) & 7, i = e & 3;
        const int lo = (b->q[h][g][k & 1][4 * lane + i] >> (4 * (k >> 1))) & 15;
        const int hi = (b->q[h][g][2][4 * lane + i] >> (2 * k)) & 3;
        out[e] = (float)((lo | hi << 4) - 32) * (d * (float)b->sc[e >> 4][lane]);
    }
}

/* ---- kernels ------------------------------------------------------------------------------------- */
#define XK(r, b) ((const lk_q8k *)(xq + (size_t)(r) * xs) + (b))

/* Q4_K (has_h = 0) and Q5_K (has_h = 1) share everything but the 5th bit */
LK_INL void k4_body(const uint8_t *g0, int64_t nb, const uint8_t *xq, size_t xs, const int nx, float *y,
                    int64_t ldy, int nv, const int has_h) {
    lk_vf acc[LK_NX];
    for (int r = 0; r < nx; r++) acc[r] = vf_zero();
    const size_t bsz = has_h ? sizeof(q5_Kx16) : sizeof(q4_Kx16);
    for (int64_t b = 0; b < nb; b++) {
        const q4_Kx16 *w = (const q4_Kx16 *)(g0 + (size_t)b * bsz);     /* the common head */
        lk_prefetch_block(w, bsz);
        const uint8_t(*qs)[8][64] = has_h ? ((const q5_Kx16 *)w)->qs : w->qs;
        const uint8_t(*qh)[64] = has_h ? ((const q5_Kx16 *)w)->qh : NULL;
        lk_vi isum[LK_NX], msum[LK_NX];
        for (int r = 0; r < nx; r++) isum[r] = msum[r] = vi_zero();
        for (int c = 0; c < 4; c++) {
            lk_vi a0[LK_NX], a1[LK_NX];
            lk_vs b0[LK_NX], b1[LK_NX]; /* Q4_K: 8 steps of 4-bit weights fit int16 pair sums */
            for (int r = 0; r < nx; r++) a0[r] = a1[r] = vi_zero(), b0[r] = b1[r] = vs_zero();
            for (int g = 0; g < 8; g++) {
                lk_b64 v = b64_load(qs[c][g]);
                lk_b64 lo = b64_and(v, 0x0F), hi = b64_srl(v, 4);
                if (has_h) {
                    lk_b64 h = b64_load(qh[g]);
                    lo = b64_or(lo, b64_and(2 * c <= 4 ? b64_sll(h, 4 - 2 * c) : b64_srl(h, 2 * c - 4), 0x10));
                    hi = b64_or(hi, b64_and(2 * c + 1 <= 4 ? b64_sll(h, 3 - 2 * c) : b64_srl(h, 2 * c - 3), 0x10));
                }
                for (int r = 0; r < nx; r++) {
                    if (has_h) {
                        a0[r] = vi_dot(a0[r], lo, XK(r, b)->qs + 64 * c + 4 * g);
                        a1[r] = vi_dot(a1[r], hi, XK(r, b)->qs + 64 * c + 32 + 4 * g);
                    } else {
                        b0[r] = vs_dot(b0[r], lo, XK(r, b)->qs + 64 * c + 4 * g);
                        b1[r] = vs_dot(b1[r], hi, XK(r, b)->qs + 64 * c + 32 + 4 * g);
                    }
                }
            }
            if (!has_h)
                for (int r = 0; r < nx; r++) a0[r] = vi_from_vs(b0[r]), a1[r] = vi_from_vs(b1[r]);
            const lk_vi s0 = vi_u8(w->sc[2 * c]), s1 = vi_u8(w->sc[2 * c + 1]);
            const lk_vi m0 = vi_u8(w->m[2 * c]), m1 = vi_u8(w->m[2 * c + 1]);
            for (int r = 0; r < nx; r++) {
                const int16_t *bs = XK(r, b)->bsums + 4 * c;
                isum[r] = vi_add(isum[r], vi_add(vi_mul(a0[r], s0), vi_mul(a1[r], s1)));
                msum[r] = vi_add(msum[r], vi_add(vi_mul(m0, vi_set1(bs[0] + bs[1])), vi_mul(m1, vi_set1(bs[2] + bs[3]))));
            }
        }
        const lk_vf d = vf_f16(w->d), dmin = vf_f16(w->dmin);
        for (int r = 0; r < nx; r++) {
            const float dx = XK(r, b)->d;
            acc[r] = vf_fma(vf_cvt(isum[r]), vf_mul(d, vf_set1(dx)), acc[r]);
            acc[r] = vf_fma(vf_cvt(msum[r]), vf_mul(dmin, vf_set1(-dx)), acc[r]);
        }
    }
    for (int r = 0; r < nx; r++) vf_store(y + r * ldy, acc[r], nv);
}

LK_INL void q4_K_body(const uint8_t *g, int64_t nb, const uint8_t *xq, size_t xs, const int nx, float *y,
                      int64_t ldy, int nv) {
    k4_body(g, nb, xq, xs, nx, y, ldy, nv, 0);
}
LK_INL void q5_K_body(const uint8_t *g, int64_t nb, const uint8_t *xq, size_t xs, const int nx, float *y,
                      int64_t ldy, int nv) {
    k4_body(g, nb, xq, xs, nx, y, ldy, nv, 1);
}
LK_KERN_DISPATCH(kern_q4_K, q4_K_body)
LK_KERN_DISPATCH(kern_q5_K, q5_K_body)

LK_INL void q6_K_body(const uint8_t *g0, int64_t nb, const uint8_t *xq, size_t xs, const int nx, float *y,
                      int64_t ldy, int nv) {
    lk_vf acc[LK_NX];
    for (int r = 0; r < nx; r++) acc[r] = vf_zero();
    for (int64_t b = 0; b < nb; b++) {
        const q6_Kx16 *w = (const q6_Kx16 *)g0 + b;
        lk_prefetch_block(w, sizeof *w);
        lk_vi isum[LK_NX];
        for (int r = 0; r < nx; r++) isum[r] = vi_zero();
        for (int h = 0; h < 2; h++)
            for (int half = 0; half < 2; half++) {
                lk_vi a[4][LK_NX]; /* k = 0..3: sub-blocks 8h + 2k + half */
                for (int k = 0; k < 4; k++)
                    for (int r = 0; r < nx; r++) a[k][r] = vi_zero();
                for (int g = 4 * half; g < 4 * half + 4; g++) {
                    const uint8_t(*v)[64] = w->q[h][g];
                    const lk_b64 ql0 = b64_load(v[0]), ql1 = b64_load(v[1]), qh = b64_load(v[2]);
                    /* weight k: low nibble | qh bits 2k..2k+1 moved to bits 4-5 (16-bit shifts, then masks) */
                    const lk_b64 q[4] = {
                        b64_lo4_or(ql0, b64_and(b64_shl16(qh, 4), 0x30)),
                        b64_lo4_or(ql1, b64_and(b64_shl16(qh, 2), 0x30)),
                        b64_lo4_or(b64_shr16(ql0, 4), b64_and(qh, 0x30)),
                        b64_lo4_or(b64_shr16(ql1, 4), b64_and(b64_shr16(qh, 2), 0x30)),
                    };
                    for (int k = 0; k < 4; k++)
                        for (int r = 0; r < nx; r++)
                            a[k][r] = vi_dot(a[k][r], q[k], XK(r, b)->qs + 128 * h + 32 * k + 4 * g);
                }
                for (int k = 0; k < 4; k++) {
                    const int j = 8 * h + 2 * k + half;
                    const lk_vi sc = vi_i8(w->sc[j]);
                    for (int r = 0; r < nx; r++)
                        isum[r] = vi_add(isum[r], vi_mul(vi_sub(a[k][r], vi_set1(32 * XK(r, b)->bsums[j])), sc));
                }
            }
        const lk_vf d = vf_f16(w->d);
        for (int r = 0; r < nx; r++) acc[r] = vf_fma(vf_cvt(isum[r]), vf_mul(d, vf_set1(XK(r, b)->d)), acc[r]);
    }
    for (int r = 0; r < nx; r++) vf_store(y + r * ldy, acc[r], nv);
}
LK_KERN_DISPATCH(kern_q6_K, q6_K_body)

const lk_format lk__kquant_formats[] = {
    {12, 256, 144, sizeof(q4_Kx16), LK_ACT_Q8K, pack_q4_K, unpack_q4_K, kern_q4_K},
    {13, 256, 176, sizeof(q5_Kx16), LK_ACT_Q8K, pack_q5_K, unpack_q5_K, kern_q5_K},
    {14, 256, 210, sizeof(q6_Kx16), LK_ACT_Q8K, pack_q6_K, unpack_q6_K, kern_q6_K},
    {-1, 0, 0, 0, 0, NULL, NULL, NULL},
};
