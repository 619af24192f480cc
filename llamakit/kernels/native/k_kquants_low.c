/* Q2_K and Q3_K: repacking, exact get_rows, integer matmul against Q8_K-style activations.
 *
 * Interleaved 16-row super-blocks (see k_internal.h), rows r = 0..15, 4-weight groups g:
 *   q2_Kx16  | d[16] | dmin[16] | scales[16][16] | qs[2][8][64] |          1344 B = 16 x 84
 *            scales[j][r] = the file's scales[j] (low nibble scale, high nibble min of sub-block j);
 *            qs[h][g][4r+i] = file qs[32h + 4g + i]: bits 2k..2k+1 = weight 128h + 32k + 4g + i
 *   q3_Kx16  | d[16] | sc[16][16]: i8 | qs[2][8][64] | hmask[8][64] |       1824 B = 16 x 114
 *            sc = the 6-bit scales minus 32, unpacked (4 bytes more per super-block than the file);
 *            hmask[g][4r+i] = file hmask[4g + i]: bit 4h+k = the "no -4" bit of weight 128h+32k+4g+i
 * Sub-block j (16 weights) = e / 16 = 8h + 2k + (g >= 4). Dot products:
 *   Q2_K: d d_x sum_j sc_j (sum q q_x)_j - dmin d_x sum_j m_j bsums[j]
 *   Q3_K: d d_x sum_j sc_j ((sum u q_x)_j - 4 bsums[j]),  u = q + 4 in 0..7 (unsigned for vpdpbusd)
 */
#include <string.h>

#include "k_half.h"
#include "k_internal.h"
#include "k_simd.h"

typedef struct { uint16_t d[16]; uint16_t dmin[16]; uint8_t scales[16][16]; uint8_t qs[2][8][64]; } q2_Kx16;
typedef struct { uint16_t d[16]; int8_t sc[16][16]; uint8_t qs[2][8][64]; uint8_t hmask[8][64]; } q3_Kx16;

_Static_assert(sizeof(block_q2_K) == 84 && sizeof(block_q3_K) == 110, "ggml sizes");
_Static_assert(sizeof(q2_Kx16) == 16 * 84 && sizeof(q3_Kx16) == 16 * 114, "x16 sizes");

static void pack_2bit(const uint8_t qs_file[64], uint8_t qs[2][8][64], int r) {
    for (int h = 0; h < 2; h++)
        for (int g = 0; g < 8; g++) memcpy(&qs[h][g][4 * r], qs_file + 32 * h + 4 * g, 4);
}

static void pack_q2_K(const uint8_t *const src[LK_R], uint8_t *dst) {
    q2_Kx16 *o = (q2_Kx16 *)dst;
    for (int r = 0; r < LK_R; r++) {
        const block_q2_K *b = (const block_q2_K *)src[r];
        o->d[r] = b->d;
        o->dmin[r] = b->dmin;
        for (int j = 0; j < 16; j++) o->scales[j][r] = b->scales[j];
        pack_2bit(b->qs, o->qs, r);
    }
}

/* the 16 six-bit Q3_K scales: low 4 bits in scales[j] (j < 8) / scales[j-8] >> 4, high 2 bits in
 * scales[8 + j%4] >> 2(j/4) */
static int q3_scale(const uint8_t s[12], int j) {
    const int lo = j < 8 ? s[j] & 15 : s[j - 8] >> 4;
    const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (lo | hi << 4) - 32;
}

static void pack_q3_K(const uint8_t *const src[LK_R], uint8_t *dst) {
    q3_Kx16 *o = (q3_Kx16 *)dst;
    for (int r = 0; r < LK_R; r++) {
        const block_q3_K *b = (const block_q3_K *)src[r];
        o->d[r] = b->d;
        for (int j = 0; j < 16; j++) o->sc[j][r] = (int8_t)q3_scale(b->scales, j);
        pack_2bit(b->qs, o->qs, r);
        for (int g = 0; g < 8; g++) memcpy(&o->hmask[g][4 * r], b->hmask + 4 * g, 4);
    }
}

/* ---- get_rows: d*sc, q*(d*sc), dmin*m exact in float32; one rounding in Q2_K's subtraction ---------- */
static void unpack_q2_K(const uint8_t *p, int lane, float *out) {
    const q2_Kx16 *b = (const q2_Kx16 *)p;
    const float d = lk_h2f(b->d[lane]), dmin = lk_h2f(b->dmin[lane]);
    for (int e = 0; e < 256; e++) {
        const int h = e >> 7, k = (e >> 5) & 3, g = (e >> 2) & 7, i = e & 3, sm = b->scales[e >> 4][lane];
        const int q = (b->qs[h][g][4 * lane + i] >> (2 * k)) & 3;
        out[e] = (float)q * (d * (float)(sm & 15)) - dmin * (float)(sm >> 4);
    }
}

static void unpack_q3_K(const uint8_t *p, int lane, float *out) {
    const q3_Kx16 *b = (const q3_Kx16 *)p;
    const float d = lk_h2f(b->d[lane]);
    for (int e = 0; e < 256; e++) {
        const int h = e >> 7, k = (e >> 5) & 3, g = (e >> 2) & 7, i = e & 3;
        const int low = (b->qs[h][g][4 * lane + i] >> (2 * k)) & 3;
        const int high = (b->hmask[g][4 * lane + i] >> (4 * h + k)) & 1;
        out[e] = (float)(low - (high ? 0 : 4)) * (d * (float)b->sc[e >> 4][lane]);
    }
}

/* ---- kernels ------------------------------------------------------------------------------------- */
#define XK(r, b) ((const lk_q8k *)(xq + (size_t)(r) * xs) + (b))

/* is_q3: Q3_K (signed scales, hmask bit, -4 offset) else Q2_K (nibble scale/min pairs) */
LK_INL void low_body(const uint8_t *g0, int64_t nb, const uint8_t *xq, size_t xs, const int nx, float *y,
                     int64_t ldy, int nv, const int is_q3) {
    lk_vf acc[LK_NX];
    for (int r = 0; r < nx; r++) acc[r] = vf_zero();
    const size_t bsz = is_q3 ? sizeof(q3_Kx16) : sizeof(q2_Kx16);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = g0 + (size_t)b * bsz;
        lk_prefetch_block(blk, bsz);
        const q2_Kx16 *w2 = (const q2_Kx16 *)blk;
        const q3_Kx16 *w3 = (const q3_Kx16 *)blk;
        const uint8_t(*qs)[8][64] = is_q3 ? w3->qs : w2->qs;
        lk_vi isum[LK_NX], msum[LK_NX];
        for (int r = 0; r < nx; r++) isum[r] = msum[r] = vi_zero();
        for (int h = 0; h < 2; h++)
            for (int half = 0; half < 2; half++) {
                lk_vi a[4][LK_NX];
                for (int k = 0; k < 4; k++)
                    for (int r = 0; r < nx; r++) a[k][r] = vi_zero();
                for (int g = 4 * half; g < 4 * half + 4; g++) {
                    const lk_b64 v = b64_load(qs[h][g]);
                    lk_b64 q[4] = {b64_and(v, 3), b64_and(b64_srl(v, 2), 3), b64_and(b64_srl(v, 4), 3), b64_srl(v, 6)};
                    if (is_q3) {
                        const lk_b64 hm = b64_load(w3->hmask[g]);
                        for (int k = 0; k < 4; k++) {
                            const int bit = 4 * h + k; /* -> bit 2 */
                            q[k] = b64_or(q[k], b64_and(bit <= 2 ? b64_sll(hm, 2 - bit) : b64_srl(hm, bit - 2), 4));
                        }
                    }
                    for (int k = 0; k < 4; k++)
                        for (int r = 0; r < nx; r++) a[k][r] = vi_dot(a[k][r], q[k], XK(r, b)->qs + 128 * h + 32 * k + 4 * g);
                }
                for (int k = 0; k < 4; k++) {
                    const int j = 8 * h + 2 * k + half;
                    if (is_q3) {
                        const lk_vi sc = vi_i8(w3->sc[j]);
                        for (int r = 0; r < nx; r++)
                            isum[r] = vi_add(isum[r], vi_mul(vi_sub(a[k][r], vi_set1(4 * XK(r, b)->bsums[j])), sc));
                    } else {
                        const lk_vi sm = vi_u8(w2->scales[j]), sc = vi_and(sm, 15), m = vi_srl(sm, 4);
                        for (int r = 0; r < nx; r++) {
                            isum[r] = vi_add(isum[r], vi_mul(a[k][r], sc));
                            msum[r] = vi_add(msum[r], vi_mul(m, vi_set1(XK(r, b)->bsums[j])));
                        }
                    }
                }
            }
        const lk_vf d = vf_f16(is_q3 ? w3->d : w2->d);
        for (int r = 0; r < nx; r++) {
            const float dx = XK(r, b)->d;
            acc[r] = vf_fma(vf_cvt(isum[r]), vf_mul(d, vf_set1(dx)), acc[r]);
            if (!is_q3) acc[r] = vf_fma(vf_cvt(msum[r]), vf_mul(vf_f16(w2->dmin), vf_set1(-dx)), acc[r]);
        }
    }
    for (int r = 0; r < nx; r++) vf_store(y + r * ldy, acc[r], nv);
}

LK_INL void q2_K_body(const uint8_t *g, int64_t nb, const uint8_t *xq, size_t xs, const int nx, float *y,
                      int64_t ldy, int nv) {
    low_body(g, nb, xq, xs, nx, y, ldy, nv, 0);
}
LK_INL void q3_K_body(const uint8_t *g, int64_t nb, const uint8_t *xq, size_t xs, const int nx, float *y,
                      int64_t ldy, int nv) {
    low_body(g, nb, xq, xs, nx, y, ldy, nv, 1);
}
LK_KERN_DISPATCH(kern_q2_K, q2_K_body)
LK_KERN_DISPATCH(kern_q3_K, q3_K_body)

const lk_format lk__kquant_low_formats[] = {
    {10, 256, 84, sizeof(q2_Kx16), LK_ACT_Q8K, pack_q2_K, unpack_q2_K, kern_q2_K},
    {11, 256, 110, sizeof(q3_Kx16), LK_ACT_Q8K, pack_q3_K, unpack_q3_K, kern_q3_K},
    {-1, 0, 0, 0, 0, NULL, NULL, NULL},
};
