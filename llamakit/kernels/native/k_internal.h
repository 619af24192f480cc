/* Shared internal declarations of the "lk" library (hidden symbols: the build uses -fvisibility=hidden).
 *
 * Prepared weights ("repacked"): rows are taken 16 at a time (a group; the last one padded with zero
 * blocks) and, per block column b, the 16 rows' blocks are stored together as one interleaved struct
 * (the *_x16 structs of k_legacy.c / k_kquants.c / k_float.c). Inside it, quant bytes are laid out so one
 * 64-byte load holds 4 consecutive weights of each of the 16 rows:
 *
 *     byte 4r + i  of a 64-byte row of qs  =  row r's weight i of a 4-weight group
 *
 *     group 0: [b=0: x16 struct][b=1: x16 struct] ... [b=nb-1]      group 1: [b=0] ...
 *
 * so one broadcast of 4 activation bytes feeds 16 output rows (k_simd.h). Scales are stored per row as
 * arrays of 16 (d[16], ...): one vector load each. Sizes equal the file's (Q4_K/Q5_K: +4 bytes per block
 * for unpacked 6-bit scales), plus the padding rows of the last group.
 */
#ifndef K_INTERNAL_H
#define K_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "lk.h"

#define LK_R 16 /* rows per group */
#define LK_PACKED __attribute__((packed))

/* ---- ggml's file blocks (ggml-common.h; field names as in the llamakit.quants codecs) ------------------- */
typedef struct LK_PACKED { uint16_t d; uint8_t qs[16]; } block_q4_0;                /* 18 B, x = d(q-8) */
typedef struct LK_PACKED { uint16_t d, m; uint8_t qs[16]; } block_q4_1;             /* 20 B, x = dq+m */
typedef struct LK_PACKED { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } block_q5_0; /* 22 B */
typedef struct LK_PACKED { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } block_q5_1; /* 24 B */
typedef struct LK_PACKED { uint16_t d; int8_t qs[32]; } block_q8_0;                 /* 34 B, x = dq */
typedef struct LK_PACKED { uint16_t d; uint8_t qs[16]; } block_iq4_nl;              /* 18 B */
typedef struct LK_PACKED { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; } block_q2_K;   /* 84 */
typedef struct LK_PACKED { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d; } block_q3_K; /* 110 */
typedef struct LK_PACKED { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } block_q4_K;  /* 144 */
typedef struct LK_PACKED { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } block_q5_K; /* 176 */
typedef struct LK_PACKED { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } block_q6_K;    /* 210 */

/* ---- quantized activations ----------------------------------------------------------------------- */
/* 32 values, Q8_0's rounding (q = roundf(x / d), d = amax / 127, kept f16-rounded as ggml's block_q8_0):
 *   | d: f32 | ds = d * s: f32 | s = sum(qs): i32 | pad | qs[32]: i8 |     48 bytes */
typedef struct { float d; float ds; int32_t s; int32_t pad; int8_t qs[32]; } lk_q8;
/* 256 values, Q8_K's rounding (q = nearest_int(-127 x / max), d = 1 / iscale):
 *   | d: f32 | pad | bsums[16]: i16 (sums of 16 qs) | qs[256]: i8 |     296 bytes */
typedef struct { float d; int32_t pad; int16_t bsums[16]; int8_t qs[256]; } lk_q8k;

enum { LK_ACT_F32 = 0, LK_ACT_Q8 = 1, LK_ACT_Q8K = 2 };

void lk__quantize_q8(const float *x, int64_t cols, lk_q8 *out);
void lk__quantize_q8k(const float *x, int64_t cols, lk_q8k *out);

/* ---- formats ------------------------------------------------------------------------------------- */
/* kern: y[r * ldy + j] = row j (< nvalid) of one group . activation row r, for r < nx (nx <= LK_NX).
 * xq: activation rows (format `act`), xs bytes apart. */
typedef void (*lk_kern_fn)(const uint8_t *group, int64_t nb, const uint8_t *xq, size_t xs, int nx, float *y,
                           int64_t ldy, int nvalid);
typedef void (*lk_pack_fn)(const uint8_t *const src[LK_R], uint8_t *dst);     /* 16 file blocks -> x16 */
typedef void (*lk_unpack_fn)(const uint8_t *x16, int lane, float *out);       /* one row's block -> floats */

typedef struct {
    int type;
    int block;        /* weights per block */
    int block_bytes;  /* bytes per file block */
    int x16_bytes;    /* bytes per interleaved 16-row block */
    int act;          /* LK_ACT_* */
    lk_pack_fn pack;
    lk_unpack_fn unpack;
    lk_kern_fn kern;
} lk_format;

/* The max activation rows one kern call takes (register budget of the variant). */
#if defined(__AVX512F__)
#define LK_NX 4
#elif defined(__AVX2__)
#define LK_NX 2
#else
#define LK_NX 2
#endif

extern const lk_format lk__legacy_formats[];  /* terminated by type -1 */
extern const lk_format lk__kquant_formats[];
extern const lk_format lk__kquant_low_formats[];
extern const lk_format lk__float_formats[];

/* nx-specialised kernels: an always-inline body called with constant nx (1..LK_NX) */
#define LK_KERN_DISPATCH(name, body)                                                                       \
    static void name(const uint8_t *g, int64_t nb, const uint8_t *xq, size_t xs, int nx, float *y,          \
                     int64_t ldy, int nv) {                                                                 \
        switch (nx) {                                                                                       \
        case 1: body(g, nb, xq, xs, 1, y, ldy, nv); break;                                                  \
        case 2: body(g, nb, xq, xs, 2, y, ldy, nv); break;                                                  \
        case 3: if (LK_NX >= 3) { body(g, nb, xq, xs, 3, y, ldy, nv); break; } /* fallthrough */            \
        default: if (LK_NX >= 4) body(g, nb, xq, xs, 4, y, ldy, nv);                                        \
        }                                                                                                   \
    }

#endif
