/* llamakit native CPU kernels: the C ABI called through ctypes (see kernel.py).
 *
 * One source serves every instruction-set variant (build.py compiles it once per variant with that
 * variant's flags; code paths are chosen with __AVX2__, __AVX512F__, __AVX512VNNI__, __AVXVNNI__,
 * __ARM_NEON). All functions return 0 on success, a negative LK_E* code otherwise; none aborts.
 *
 * ggml type ids are ggml's own numbers:
 *   F32 0  F16 1  Q4_0 2  Q4_1 3  Q5_0 6  Q5_1 7  Q8_0 8  Q2_K 10  Q3_K 11  Q4_K 12  Q5_K 13  Q6_K 14
 *   IQ4_NL 20  BF16 30
 *
 * Matrices: W is the logical (rows = out features, cols = in features) weight, given as the file's
 * block rows (rows x row_bytes). Activations x are float32 row-major (n, cols); outputs float32 (n, rows).
 */
#ifndef LK_H
#define LK_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define LK_API __attribute__((visibility("default")))
#else
#define LK_API
#endif

#define LK_OK 0
#define LK_EUNSUPPORTED (-1) /* type (or type for this variant) not implemented */
#define LK_ESHAPE (-2)       /* cols not a multiple of the block size, or bad sizes */
#define LK_ENOMEM (-3)

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the library ---------------------------------------------------------------------------------- */
LK_API const char *lk_variant(void);       /* "scalar", "avx2", "avx512": what this object was built for */
LK_API int lk_abi_version(void);           /* bumped when this header changes (2: lk_supports, lk_quantize_act; 3: lk_parallel_selftest) */
LK_API int lk_supports(int type);          /* 1 if lk_prepare/lk_matmul/lk_get_rows implement `type` */

/* ---- threads: one pool per process, used by every parallel kernel -------------------------------- */
LK_API int lk_set_threads(int n);          /* n >= 1; returns the count in use */
LK_API int lk_get_threads(void);
/* Run fn(ctx, i, n_tasks) for i in [0, n_tasks) over the pool (the caller's thread takes part). Workers
 * spin briefly, then sleep, so an idle pool costs no CPU. Not re-entrant: fn must not call lk_parallel. */
typedef void (*lk_task_fn)(void *ctx, int i, int n_tasks);
LK_API void lk_parallel(lk_task_fn fn, void *ctx, int n_tasks);
/* Run `jobs` small jobs through lk_parallel and return how many hand-off violations were seen (0 = sound). */
LK_API int64_t lk_parallel_selftest(int64_t jobs);

/* ---- weights -------------------------------------------------------------------------------------- */
/* The prepared form (k_internal.h): rows in groups of 16 (the last padded with zero rows), each group's
 * blocks interleaved column by column; about the file's size (Q4_K/Q5_K: +4 bytes per 256 weights).
 * Bytes of the prepared (possibly repacked) form of a rows x cols matrix of `type`; 0 if unsupported. */
LK_API size_t lk_prepared_size(int type, int64_t rows, int64_t cols);
/* Write the prepared form of the file's block rows `src` into `dst` (dst must not alias src). */
LK_API int lk_prepare(int type, int64_t rows, int64_t cols, const void *src, void *dst);

/* y (n, rows) [row stride ldy] = x (n, cols) @ W^T, W prepared. Threaded over the pool. Activations are
 * quantized internally (per 32- or 256-block, as the weight format's integer dot product needs) into a
 * thread-local scratch. Cost per extra row of x is near-linear (x rows are processed in tiles). */
LK_API int lk_matmul(int type, int64_t rows, int64_t cols, const void *w, int64_t n, const float *x,
                     float *y, int64_t ldy);

/* out (n, cols) = dequant(W[ids[j]]) exactly (the codec's float32 values), W prepared. */
LK_API int lk_get_rows(int type, int64_t rows, int64_t cols, const void *w, int64_t n, const int64_t *ids,
                       float *out);

/* The activation quantization lk_matmul applies for `type` (exposed for tests): n rows of cols floats into
 * `out`; returns the bytes per row (> 0), or LK_EUNSUPPORTED for the float formats (no quantization).
 * Records: legacy/IQ4_NL 48 B per 32 values | d: f32 | d*s: f32 | s: i32 | 0: i32 | qs[32]: i8 |;
 * K-quants 296 B per 256 values | d: f32 | 0: i32 | bsums[16]: i16 | qs[256]: i8 |. */
LK_API int lk_quantize_act(int type, int64_t n, int64_t cols, const float *x, void *out);

#ifdef __cplusplus
}
#endif
#endif
