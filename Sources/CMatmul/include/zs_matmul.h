#ifndef ZS_MATMUL_H
#define ZS_MATMUL_H
#include <stddef.h>
#include <stdint.h>

// Matrix products with pre-packed weights through oneDNN (Debian: libdnnl-dev, oneDNN 2.6), and
// the element-wise helpers of the low-precision paths. Shapes are row-major:
//   out[M, N] (+)= x[M, K] · W[N, K]ᵀ (+ bias[N])
// Weights are reordered once (`zs_mm_pack`) into the layout oneDNN's matmul prefers for the CPU;
// a product runs on the calling thread only (oneDNN is told to use one thread: the callers split
// rows over their own threads), so the result of a row depends on that row alone and on nothing
// else the machine does. Each call passes its own scratchpad, so calls may run concurrently.

typedef enum {
    ZS_MM_F32 = 0,   // x f32, W f32, out f32
    ZS_MM_BF16 = 1,  // x bf16, W bf16, out f32 (fp32 accumulation)
    ZS_MM_U8S8 = 2,  // x u8, W s8, out s32 (VNNI)
} zs_mm_type;

typedef struct zs_mm_weights zs_mm_weights;

/// W[N, K] packed for `type`: `w` holds N·K values of the type's weight element (float, bf16 bit
/// patterns as uint16_t, or int8_t), row-major. NULL on failure, with a message in err.
zs_mm_weights *zs_mm_pack(zs_mm_type type, const void *w, int64_t n, int64_t k, char *err, size_t errlen);
void zs_mm_free(zs_mm_weights *w);
/// Bytes held by the packed weights.
size_t zs_mm_bytes(const zs_mm_weights *w);
/// oneDNN's name of the implementation chosen when packing (e.g. "brg:avx512_core_bf16").
const char *zs_mm_impl(const zs_mm_weights *w);

/// out[M, N] = x[M, K] · Wᵀ (+ bias) (accumulate: out += ...); strides ldx, ldo in elements.
/// F32/BF16: out is float, bias optional. U8S8: out is int32_t, bias must be NULL, accumulate 0.
/// Returns 0, or -1 with a message in err.
int zs_mm_run(const zs_mm_weights *w, const void *x, int64_t m, int64_t ldx, void *out, int64_t ldo,
              const float *bias, int accumulate, char *err, size_t errlen);

/// oneDNN's effective ISA (dnnl_cpu_isa_t: the CPU's, limited by ONEDNN_MAX_CPU_ISA).
int zs_mm_isa(void);
/// 1 when oneDNN runs this type with the instructions it needs (bf16: AVX512_BF16 or AMX;
/// u8s8: AVX512_VNNI or AVX_VNNI), not an emulation.
int zs_mm_native(zs_mm_type type);
/// oneDNN's version, "major.minor.patch".
const char *zs_mm_version(void);

// MARK: - Low-precision helpers (portable C, and AVX-512 builds chosen at run time)

/// bf16 bit patterns of src[n], rounding to nearest even; NaN gives a quiet NaN ((bits >> 16) | 0x40)
/// and a denormal a signed zero, as AVX512_BF16's vcvtneps2bf16 does (which the dispatching
/// version uses when the CPU has it).
void zs_f32_to_bf16(const float *src, uint16_t *dst, size_t n);
void zs_f32_to_bf16_portable(const float *src, uint16_t *dst, size_t n);

/// Per-row asymmetric u8 quantisation of x[M, K] (row stride ldx) into q[M, K] (stride K):
/// lo = min(0, min x), hi = max(0, max x), scale = (hi - lo) / 255 (1 when hi == lo),
/// zp = clamp(rint(-lo / scale), 0, 255), q = clamp(rint(x / scale) + zp, 0, 255)
/// (rint: round half to even). scale[M], zp[M] out.
void zs_quantize_rows_u8(const float *x, int64_t m, int64_t k, int64_t ldx, uint8_t *q, float *scale, int32_t *zp);
void zs_quantize_rows_u8_portable(const float *x, int64_t m, int64_t k, int64_t ldx, uint8_t *q, float *scale, int32_t *zp);

/// out[i, j] (+)= xs[i] · ws[j] · (acc[i, j] - zp[i] · colsum[j]) (+ bias[j]) for acc[M, N] (stride N),
/// out stride ldo; bias optional.
void zs_dequantize_s32(const int32_t *acc, int64_t m, int64_t n, const float *xs, const int32_t *zp,
                       const float *ws, const int32_t *colsum, const float *bias, float *out, int64_t ldo, int accumulate);

/// 1 when the CPU has AVX-512 BF16 (vcvtneps2bf16).
int zs_cpu_has_avx512_bf16(void);

#endif
