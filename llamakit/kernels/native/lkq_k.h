/* Shared by the K-quant sources (q_k*.c): the lanes layout and the packing helpers of kquants.py.
 * Byte layouts: see llamakit/quants/kquants.py's docstring. */
#ifndef LKQ_K_H
#define LKQ_K_H

#include "lkq.h"

#define QK_K 256

/* search.levels: clamp(round_half_even(iscale * xm), 0, nmax), NaN kept (torch.clamp) */
static inline float level(float iscale, float xm, float nmax) {
    return lkq_clampf(lkq_round_even(iscale * xm), 0.0f, nmax);
}

/* search.finite_or_zero */
static inline float finite_or_zero(float v) { return isfinite(v) ? v : 0.0f; }

/* Lanes: the searches run on NL sub-blocks at once, stored element-major (x[i][b] = weight i of sub-block
 * b), exactly the torch code's layout: every `for (b ...)` loop below is one elementwise torch op, which
 * the compiler turns into SIMD. Each lane keeps its own sums in index order, so the float32 results are
 * those of the one-sub-block C loops; only the latency of the serial sums is hidden. */
#define NL 16

/* NL sub-blocks of n weights, contiguous (sub-block b at x + n*b) -> element-major */
static inline void to_lanes(int n, const float *x, float (*xl)[NL]) {
    for (int b = 0; b < NL; ++b)
        for (int i = 0; i < n; ++i) xl[i][b] = x[n * b + i];
}

/* the final requantization: clamp(nearest_int((x + dm)/d), lo, hi) where d != 0, else the search's L */
static inline void requantize(int n, const float *x, float d, float dm, float *L, int lo, int hi) {
    if (d == 0.0f) return;
    for (int i = 0; i < n; ++i) L[i] = (float)lkq_clampi(lkq_nearest_int((x[i] + dm) / d), lo, hi);
}

static inline uint8_t as_u8(int32_t v) { return (uint8_t)(v & 255); }

/* kquants.pack_2bit: qs[32h + l] = sum_k L[128h + 32k + l] << 2k */
static inline void pack_2bit(const uint8_t *L, uint8_t *qs) {
    for (int h = 0; h < 2; ++h)
        for (int l = 0; l < 32; ++l) {
            const uint8_t *a = L + 128 * h + l;
            qs[32 * h + l] = (uint8_t)(a[0] | (a[32] << 2) | (a[64] << 4) | (a[96] << 6));
        }
}

/* kquants.pack_hbits: bit e//32 of byte e%32 */
static inline void pack_hbits(const uint8_t *bits, uint8_t *hm) {
    for (int l = 0; l < 32; ++l) {
        uint8_t v = 0;
        for (int k = 0; k < 8; ++k) v |= (uint8_t)((bits[32 * k + l] & 1) << k);
        hm[l] = v;
    }
}

/* kquants.pack_4bit: qs[32c + l] = L[64c + l] | L[64c + 32 + l] << 4 */
static inline void pack_4bit(const uint8_t *L, uint8_t *qs) {
    for (int c = 0; c < 4; ++c)
        for (int l = 0; l < 32; ++l) qs[32 * c + l] = (uint8_t)(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
}

/* kquants.pack_k4_scales */
static inline void pack_k4_scales(const uint8_t *ls, const uint8_t *lm, uint8_t *s) {
    for (int j = 0; j < 4; ++j) {
        s[j] = (uint8_t)(ls[j] | ((ls[j + 4] >> 4) << 6));
        s[j + 4] = (uint8_t)(lm[j] | ((lm[j + 4] >> 4) << 6));
        s[j + 8] = (uint8_t)((ls[j + 4] & 15) | ((lm[j + 4] & 15) << 4));
    }
}

/* lanes -> per-sub-block rows: L[16*b + i] = Ll[i][b] */
static inline void from_lanes(int n, const float (*Ll)[NL], float *L) {
    for (int b = 0; b < NL; ++b)
        for (int i = 0; i < n; ++i) L[n * b + i] = Ll[i][b];
}


#endif
