#ifndef ZS_PAMR_H
#define ZS_PAMR_H
#include <stddef.h>

// PAMR's weighted sum over neighbours for one row of several maps (the tiled full-resolution
// stage of one-stage segmentation, Sources/ZeroSegSegmentation/TiledRefinement.swift):
//
//   out[c][x] = sum over p = 0, 1, ..., np-1 (in this order, from 0.0f) of aff[p * astride + x] * src[c * np + p][x]
//
// for c < nc, x < n. Every product is rounded to float, then added (no fused multiply-add, no
// reordering), so the portable and the AVX2 builds give the same bits as the Swift reference
// (`PAMR.step`). `src` holds nc * np row pointers, each already moved to its neighbour's offset.
void zs_pamr_row(const float *const *src, const float *aff, size_t astride, float *const *out, int nc, int np, size_t n);
/// The build of one level (ZS_KERNELS_*), for tests comparing them; an unsupported level runs the portable one.
void zs_pamr_row_at(int level, const float *const *src, const float *aff, size_t astride, float *const *out, int nc, int np, size_t n);

#endif
