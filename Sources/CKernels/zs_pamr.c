// PAMR's neighbour sum for one row of several maps; see include/zs_pamr.h. Products and sums are
// kept apart (fp contract off, no FMA instructions): the result must be the Swift reference's bits.
//
// The row is done in chunks of columns: for each neighbour p in order, the chunk's affinities and
// each map's neighbour values are read as contiguous runs into sums that stay in L1. (Reading all
// np·nc neighbour rows at once per column is far slower: too many streams for the prefetchers.)
#include "zs_pamr.h"
#include "zs_kernels.h"

#define ZS_PAMR_CHUNK 512

// out[c][x] = sum_p aff[p][x] * src[c][p][x], p in order from 0.0f, for x in [x0, x0 + len).
#define ZS_PAMR_BODY                                                                              \
    for (int c = 0; c < nc; c++) {                                                                \
        float *o = out[c] + x0;                                                                   \
        for (size_t x = 0; x < len; x++) o[x] = 0.0f;                                             \
        for (int p = 0; p < np; p++) {                                                            \
            const float *a = aff + (size_t)p * astride + x0, *s = src[(size_t)c * np + p] + x0;  \
            for (size_t x = 0; x < len; x++) o[x] += a[x] * s[x];                                 \
        }                                                                                         \
    }

static void pamr_chunk_portable(const float *const *src, const float *aff, size_t astride, float *const *out, int nc, int np,
                                size_t x0, size_t len) {
#pragma clang fp contract(off)
    ZS_PAMR_BODY
}

#if defined(__x86_64__) && !defined(ZS_KERNELS_PORTABLE_ONLY)
// The same loops compiled for AVX2 (8 floats; still separate multiply and add).
__attribute__((target("avx2"))) static void pamr_chunk_avx2(const float *const *src, const float *aff, size_t astride,
                                                            float *const *out, int nc, int np, size_t x0, size_t len) {
#pragma clang fp contract(off)
    ZS_PAMR_BODY
}
#endif

void zs_pamr_row_at(int level, const float *const *src, const float *aff, size_t astride, float *const *out, int nc, int np, size_t n) {
    int vector = 0;
#if defined(__x86_64__) && !defined(ZS_KERNELS_PORTABLE_ONLY)
    vector = level != ZS_KERNELS_PORTABLE && zs_kernels_supported(level);
#else
    (void)level;
#endif
    for (size_t x0 = 0; x0 < n; x0 += ZS_PAMR_CHUNK) {
        size_t len = n - x0 < ZS_PAMR_CHUNK ? n - x0 : ZS_PAMR_CHUNK;
#if defined(__x86_64__) && !defined(ZS_KERNELS_PORTABLE_ONLY)
        if (vector) { pamr_chunk_avx2(src, aff, astride, out, nc, np, x0, len); continue; }
#endif
        pamr_chunk_portable(src, aff, astride, out, nc, np, x0, len);
    }
    (void)vector;
}

void zs_pamr_row(const float *const *src, const float *aff, size_t astride, float *const *out, int nc, int np, size_t n) {
    zs_pamr_row_at(zs_kernels_level(), src, aff, astride, out, nc, np, n);
}
