/* lkq_quantize: source weights (F32 / F16 / BF16, widened exactly) -> blocks of one type, in pieces of
 * PIECE weights converted into a float32 buffer on the stack, each checked for NaN/inf before it is
 * quantized (quantize.check_finite's contract: a non-finite weight is reported, never quantized). */
#include "lkq.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

#define PIECE 4096 /* a multiple of every block size; 16 KiB of floats */

typedef void (*quantizer)(const float *, uint8_t *, int64_t);

static int block_of(int t, quantizer *fn, int *type_size) {
    switch (t) {
    case 2: *fn = lkq_q4_0; *type_size = 18; return 32;
    case 3: *fn = lkq_q4_1; *type_size = 20; return 32;
    case 6: *fn = lkq_q5_0; *type_size = 22; return 32;
    case 7: *fn = lkq_q5_1; *type_size = 24; return 32;
    case 8: *fn = lkq_q8_0; *type_size = 34; return 32;
    case 10: *fn = lkq_q2_k; *type_size = 84; return 256;
    case 11: *fn = lkq_q3_k; *type_size = 110; return 256;
    case 12: *fn = lkq_q4_k; *type_size = 144; return 256;
    case 13: *fn = lkq_q5_k; *type_size = 176; return 256;
    case 14: *fn = lkq_q6_k; *type_size = 210; return 256;
    case 20: *fn = lkq_iq4_nl; *type_size = 18; return 32;
    default: return 0;
    }
}

LKQ_API int lkq_supports(int dst_type) {
    quantizer fn;
    int ts;
    return block_of(dst_type, &fn, &ts) != 0;
}

static void widen(int src_type, const void *src, int64_t off, int64_t m, float *out) {
    if (src_type == 0) {
        memcpy(out, (const float *)src + off, (size_t)m * sizeof(float));
    } else if (src_type == 1) {
        const uint16_t *h = (const uint16_t *)src + off;
        int64_t i = 0;
#if defined(__F16C__)
        for (; i + 8 <= m; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
#endif
        for (; i < m; ++i) out[i] = lkq_f16_to_f32(h[i]);
    } else {
        const uint16_t *h = (const uint16_t *)src + off;
        for (int64_t i = 0; i < m; ++i) out[i] = lkq_from_bits((uint32_t)h[i] << 16);
    }
}

LKQ_API int64_t lkq_quantize(int dst_type, int src_type, const void *src, void *dst, int64_t n) {
    quantizer fn;
    int ts, bs = block_of(dst_type, &fn, &ts);
    if (!bs || n < 0 || n % bs || (src_type != 0 && src_type != 1 && src_type != 30)) return -2;
    float buf[PIECE];
    uint8_t *y = (uint8_t *)dst;
    for (int64_t off = 0; off < n; off += PIECE) {
        int64_t m = n - off < PIECE ? n - off : PIECE;
        widen(src_type, src, off, m, buf);
        uint32_t bad = 0;
        for (int64_t i = 0; i < m; ++i) bad |= (lkq_bits(buf[i]) & 0x7f800000) == 0x7f800000;
        if (bad)
            for (int64_t i = 0; i < m; ++i)
                if ((lkq_bits(buf[i]) & 0x7f800000) == 0x7f800000) return off + i;
        fn(buf, y + off / bs * ts, m);
    }
    return -1;
}
