/* The exported entry points of lk.h: format lookup, prepare (repack), matmul (quantize x, then tiles over
 * the pool) and get_rows. The per-format code is in k_legacy.c, k_kquants.c and k_float.c. */
#include <stdlib.h>
#include <string.h>

#include "k_internal.h"
#include "k_simd.h"

#define LK_XBLOCK 64 /* activation rows per tile of a task: their quantized bytes stay in L2 */

static const lk_format *find_format(int type) {
    const lk_format *tables[] = {lk__legacy_formats, lk__kquant_formats, lk__kquant_low_formats, lk__float_formats};
    for (size_t t = 0; t < sizeof tables / sizeof *tables; t++)
        for (const lk_format *f = tables[t]; f->type >= 0; f++)
            if (f->type == type) return f;
    return NULL;
}

LK_API const char *lk_variant(void) { return LK_SIMD; }
LK_API int lk_abi_version(void) { return 3; }
LK_API int lk_supports(int type) { return find_format(type) != NULL; }

static int check(const lk_format *f, int64_t rows, int64_t cols) {
    if (!f) return LK_EUNSUPPORTED;
    if (rows <= 0 || cols <= 0 || cols % f->block) return LK_ESHAPE;
    return LK_OK;
}

static size_t group_bytes(const lk_format *f, int64_t cols) { return (size_t)(cols / f->block) * f->x16_bytes; }

LK_API size_t lk_prepared_size(int type, int64_t rows, int64_t cols) {
    const lk_format *f = find_format(type);
    if (check(f, rows, cols) != LK_OK) return 0;
    return (size_t)((rows + LK_R - 1) / LK_R) * group_bytes(f, cols);
}

/* ---- prepare ------------------------------------------------------------------------------------- */
static const uint8_t ZERO_BLOCK[512]; /* padding rows of the last group: all-zero blocks (d = 0) */

typedef struct { const lk_format *f; int64_t rows, nb; const uint8_t *src; uint8_t *dst; } prep_ctx;

static void prep_task(void *p, int g, int n_tasks) {
    (void)n_tasks;
    const prep_ctx *c = p;
    const size_t row_bytes = (size_t)c->nb * c->f->block_bytes;
    uint8_t *out = c->dst + (size_t)g * c->nb * c->f->x16_bytes;
    for (int64_t b = 0; b < c->nb; b++) {
        const uint8_t *src[LK_R];
        for (int r = 0; r < LK_R; r++) {
            const int64_t row = (int64_t)g * LK_R + r;
            src[r] = row < c->rows ? c->src + row * row_bytes + b * c->f->block_bytes : ZERO_BLOCK;
        }
        c->f->pack(src, out + b * c->f->x16_bytes);
    }
}

LK_API int lk_prepare(int type, int64_t rows, int64_t cols, const void *src, void *dst) {
    const lk_format *f = find_format(type);
    int rc = check(f, rows, cols);
    if (rc != LK_OK) return rc;
    prep_ctx c = {f, rows, cols / f->block, src, dst};
    lk_parallel(prep_task, &c, (int)((rows + LK_R - 1) / LK_R));
    return LK_OK;
}

/* ---- activations --------------------------------------------------------------------------------- */
static size_t act_row_bytes(const lk_format *f, int64_t cols) {
    if (f->act == LK_ACT_Q8) return (size_t)(cols / 32) * sizeof(lk_q8);
    if (f->act == LK_ACT_Q8K) return (size_t)(cols / 256) * sizeof(lk_q8k);
    return (size_t)cols * sizeof(float);
}

typedef struct { int act; int64_t n, cols, per_task; const float *x; uint8_t *xq; size_t xs; } act_ctx;

static void act_task(void *p, int i, int n_tasks) {
    (void)n_tasks;
    const act_ctx *c = p;
    for (int64_t r = i * c->per_task; r < c->n && r < (i + 1) * c->per_task; r++) {
        if (c->act == LK_ACT_Q8) lk__quantize_q8(c->x + r * c->cols, c->cols, (lk_q8 *)(c->xq + r * c->xs));
        else lk__quantize_q8k(c->x + r * c->cols, c->cols, (lk_q8k *)(c->xq + r * c->xs));
    }
}

/* the calling thread's scratch for quantized activations (grows, never shrinks) */
static uint8_t *scratch(size_t bytes) {
    static __thread uint8_t *buf;
    static __thread size_t cap;
    if (bytes > cap) {
        free(buf);
        cap = bytes + bytes / 4;
        buf = malloc(cap);
        if (!buf) cap = 0;
    }
    return buf;
}

/* ---- matmul -------------------------------------------------------------------------------------- */
typedef struct {
    const lk_format *f;
    int64_t rows, nb, n, ldy;
    const uint8_t *w, *xq;
    size_t xs, gbytes;
    float *y;
    int64_t g_per_task, n_gtasks, x_per_task;
} mm_ctx;

static void mm_task(void *p, int t, int n_tasks) {
    (void)n_tasks;
    const mm_ctx *c = p;
    const int64_t ngroups = (c->rows + LK_R - 1) / LK_R;
    const int64_t g0 = (t % c->n_gtasks) * c->g_per_task, g1 = g0 + c->g_per_task < ngroups ? g0 + c->g_per_task : ngroups;
    const int64_t xa = (t / c->n_gtasks) * c->x_per_task, xb = xa + c->x_per_task < c->n ? xa + c->x_per_task : c->n;
    for (int64_t x0 = xa; x0 < xb; x0 += LK_XBLOCK) {
        const int64_t x1 = x0 + LK_XBLOCK < xb ? x0 + LK_XBLOCK : xb;
        for (int64_t g = g0; g < g1; g++) {
            const int nv = c->rows - g * LK_R < LK_R ? (int)(c->rows - g * LK_R) : LK_R;
            for (int64_t r = x0; r < x1; r += LK_NX) {
                const int nx = x1 - r < LK_NX ? (int)(x1 - r) : LK_NX;
                c->f->kern(c->w + g * c->gbytes, c->nb, c->xq + r * c->xs, c->xs, nx, c->y + r * c->ldy + g * LK_R,
                           c->ldy, nv);
            }
        }
    }
}

LK_API int lk_matmul(int type, int64_t rows, int64_t cols, const void *w, int64_t n, const float *x, float *y,
                     int64_t ldy) {
    const lk_format *f = find_format(type);
    int rc = check(f, rows, cols);
    if (rc != LK_OK) return rc;
    if (n <= 0) return LK_OK;
    if (ldy < rows) return LK_ESHAPE;
    const size_t xs = act_row_bytes(f, cols);
    const uint8_t *xq = (const uint8_t *)x;
    if (f->act != LK_ACT_F32) {
        uint8_t *buf = scratch(xs * (size_t)n);
        if (!buf) return LK_ENOMEM;
        act_ctx a = {f->act, n, cols, 0, x, buf, xs};
        a.per_task = n * cols >= (1 << 16) ? 1 + (n - 1) / (4 * lk_get_threads()) : n;
        lk_parallel(act_task, &a, (int)((n + a.per_task - 1) / a.per_task));
        xq = buf;
    }
    const int64_t ngroups = (rows + LK_R - 1) / LK_R, threads = lk_get_threads();
    mm_ctx c = {f, rows, cols / f->block, n, ldy, w, xq, xs, group_bytes(f, cols), y, 0, 0, 0};
    c.g_per_task = ngroups / (4 * threads) > 1 ? ngroups / (4 * threads) : 1;
    c.n_gtasks = (ngroups + c.g_per_task - 1) / c.g_per_task;
    c.x_per_task = n;
    if (c.n_gtasks < 4 * threads && n > LK_XBLOCK) c.x_per_task = LK_XBLOCK; /* few rows: split x too */
    const int64_t n_xtasks = (n + c.x_per_task - 1) / c.x_per_task;
    lk_parallel(mm_task, &c, (int)(c.n_gtasks * n_xtasks));
    return LK_OK;
}

/* ---- get_rows ------------------------------------------------------------------------------------ */
LK_API int lk_get_rows(int type, int64_t rows, int64_t cols, const void *w, int64_t n, const int64_t *ids,
                       float *out) {
    const lk_format *f = find_format(type);
    int rc = check(f, rows, cols);
    if (rc != LK_OK) return rc;
    for (int64_t j = 0; j < n; j++)
        if (ids[j] < 0 || ids[j] >= rows) return LK_ESHAPE;
    const int64_t nb = cols / f->block;
    const size_t gbytes = group_bytes(f, cols);
    for (int64_t j = 0; j < n; j++) {
        const uint8_t *g = (const uint8_t *)w + (ids[j] / LK_R) * gbytes;
        for (int64_t b = 0; b < nb; b++) f->unpack(g + b * f->x16_bytes, (int)(ids[j] % LK_R), out + j * cols + b * f->block);
    }
    return LK_OK;
}

/* ---- activation quantization, exposed for the tests ----------------------------------------------- */
LK_API int lk_quantize_act(int type, int64_t n, int64_t cols, const float *x, void *out) {
    const lk_format *f = find_format(type);
    int rc = check(f, 1, cols);
    if (rc != LK_OK) return rc;
    if (f->act == LK_ACT_F32) return LK_EUNSUPPORTED;
    const size_t xs = act_row_bytes(f, cols);
    for (int64_t r = 0; r < n; r++) {
        if (f->act == LK_ACT_Q8) lk__quantize_q8(x + r * cols, cols, (lk_q8 *)((uint8_t *)out + r * xs));
        else lk__quantize_q8k(x + r * cols, cols, (lk_q8k *)((uint8_t *)out + r * xs));
    }
    return (int)xs;
}
