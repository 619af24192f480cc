/* One llama transformer block in one native call (k_forward.c), for T tokens of any sequences.
 *
 *   h = rmsnorm(x) * attn_norm
 *   q, k, v = h @ Wq^T (+bq), h @ Wk^T (+bk), h @ Wv^T (+bv)       lk_matmul, prepared weights
 *   rope(q), rope(k)         GGUF NORM layout: pairs (x[2i], x[2i+1]) rotated by cos/sin[pos][i], i < n_rot/2
 *   k_cache[seq][kvh][pos] = k, v_cache[seq][kvh][pos] = v        (every token first, then attention)
 *   a = softmax(q . K[seq][kvh][0..pos] / sqrt(head_dim)) V        head h reads kv head h / (n_head/n_head_kv)
 *   x += a @ Wo^T (+bo)
 *   h = rmsnorm(x) * ffn_norm
 *   x += (silu(h @ Wg^T) * (h @ Wu^T)) @ Wd^T
 *
 * Cache layout (n_seq, n_head_kv, n_ctx, head_dim), float32 (cache_f16 = 0) or IEEE half (cache_f16 = 1,
 * stored with round-to-nearest-even as torch's .to(float16)). cos/sin: float32 (n_ctx, n_rot/2), row = pos.
 *
 * The caller fills every field once. `scratch` points at an lk_scratch the caller owns (zeroed at first),
 * whose buffer the library grows (lk_block_reserve, or the first forward needing more) and frees
 * (lk_scratch_free): steady-state calls allocate nothing. Blocks that never run at the same time (the
 * layers of one model) should share one lk_scratch: a 512-token TinyLlama batch needs ~37 MB of it.
 */
#ifndef LK_FORWARD_H
#define LK_FORWARD_H

#include "lk.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lk_linear {
    int32_t type;        /* ggml type id (lk.h) */
    int32_t _pad;
    int64_t rows, cols;  /* out features, in features */
    const void *w;       /* lk_prepare'd bytes */
    const float *bias;   /* (rows,) or NULL */
} lk_linear;

typedef struct lk_scratch {
    void *p;
    size_t bytes;
} lk_scratch;

typedef struct lk_block {
    int64_t n_embd, n_head, n_head_kv, head_dim, n_ff, n_rot;
    float eps;
    int32_t cache_f16;   /* 0: float32 caches, 1: float16 caches */
    int64_t n_seq, n_ctx;
    lk_linear q, k, v, o, gate, up, down;
    const float *attn_norm, *ffn_norm;   /* (n_embd,) */
    void *k_cache, *v_cache;             /* (n_seq, n_head_kv, n_ctx, head_dim) */
    int64_t min_parallel;                /* elements of work below which a phase runs on the caller's
                                            thread alone; 0: the default (2^15) */
    int64_t timing;                      /* nonzero: add each call's nanoseconds to the two below */
    int64_t ns_matmul, ns_total;         /* (benchmarks: the share of the 7 lk_matmul calls) */
    lk_scratch *scratch;
} lk_block;

/* Make b->scratch hold T tokens with the pool's current thread count (lk_block_forward does it when
 * needed; call it up front to keep the first forward free of allocation). */
LK_API int lk_block_reserve(lk_block *b, int64_t T);
LK_API void lk_scratch_free(lk_scratch *s);

/* x float32 (T, n_embd) updated in place; pos, seq int32 (T,). Returns LK_OK or a negative LK_E* code
 * (LK_ESHAPE for a pos outside [0, n_ctx) or a seq outside [0, n_seq); nothing is written then). */
LK_API int lk_block_forward(lk_block *b, int64_t T, float *x, const int32_t *pos, const int32_t *seq,
                            const float *cos, const float *sin);

/* Pieces, exported for the tests. */
LK_API void lk_rmsnorm(int64_t T, int64_t n, const float *x, const float *w, float eps, float *out);
LK_API void lk_rope(int64_t T, int64_t n_head, int64_t head_dim, int64_t n_rot, float *x, const int32_t *pos,
                    const float *cos, const float *sin);
LK_API void lk_f32_to_f16(int64_t n, const float *x, uint16_t *out);
LK_API void lk_f16_to_f32(int64_t n, const uint16_t *x, float *out);

#ifdef __cplusplus
}
#endif
#endif
