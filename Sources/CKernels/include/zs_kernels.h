#ifndef ZS_KERNELS_H
#define ZS_KERNELS_H
#include <stddef.h>

// Element-wise kernels in three builds, chosen at run time by the CPU's features (one binary runs
// on any x86-64; other architectures get the portable build):
//   ZS_KERNELS_AVX512   AVX-512F/BW/DQ/VL, glibc's libmvec (16 floats)
//   ZS_KERNELS_AVX2     AVX2 + FMA, glibc's libmvec (8 floats)
//   ZS_KERNELS_PORTABLE plain C over libm's expf/erff/tanhf
// The level is resolved once, on first use (thread-safe): the best the CPU supports, or the one the
// environment variable ZEROSEG_KERNELS asks for (portable | avx2 | avx512 | auto). A level the CPU
// cannot run falls back to the best it can, with one line on stderr.
// Each kernel has a scalar reference in Kernels.swift (`*Reference`), compared in KernelTests.

enum {
    ZS_KERNELS_PORTABLE = 0,
    ZS_KERNELS_AVX2 = 1,
    ZS_KERNELS_AVX512 = 2,
};

/// Softmax over row[0..<m] in place; row[m..<n] = 0.
void zs_softmax_row(float *row, int m, int n);

/// In place over x[n]: x * sigmoid(1.702 x) (quick_gelu).
void zs_quick_gelu(float *x, size_t n);
/// In place over x[n]: 0.5 x (1 + erf(x / sqrt 2)) (gelu).
void zs_gelu_erf(float *x, size_t n);
/// In place over x[n]: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (gelu_pytorch_tanh, gelu_new).
void zs_gelu_tanh(float *x, size_t n);

/// Backward of the activations, in place over g[n]: g[i] *= f'(x[i]), x the activation's input.
void zs_quick_gelu_grad(const float *x, float *g, size_t n);
void zs_gelu_erf_grad(const float *x, float *g, size_t n);
void zs_gelu_tanh_grad(const float *x, float *g, size_t n);

/// float16 (IEEE binary16 bit patterns) to float32, exactly: dst[i] = src[i] for i < n.
/// F16C's vcvtph2ps on CPUs that have it (with the AVX2 or AVX-512 level), else bit arithmetic.
void zs_f16_to_f32(const unsigned short *src, float *dst, size_t n);
/// float32 to float16 bit patterns, rounding to nearest even (as numpy's astype(float16)):
/// F16C's vcvtps2ph where available, else bit arithmetic. NaN stays NaN, overflow gives inf.
void zs_f32_to_f16(const float *src, unsigned short *dst, size_t n);
/// The portable versions of the two, whatever the CPU (for tests comparing the paths).
void zs_f16_to_f32_portable(const unsigned short *src, float *dst, size_t n);
void zs_f32_to_f16_portable(const float *src, unsigned short *dst, size_t n);

/// The active level (ZS_KERNELS_*), resolved on first call.
int zs_kernels_level(void);
/// 1 when this CPU (and build) can run `level`.
int zs_kernels_supported(int level);

/// The kernels of one level, whatever the active one is (for tests comparing the paths). `level`
/// must be supported (zs_kernels_supported); otherwise the portable kernel runs.
void zs_softmax_row_at(int level, float *row, int m, int n);
void zs_quick_gelu_at(int level, float *x, size_t n);
void zs_gelu_erf_at(int level, float *x, size_t n);
void zs_gelu_tanh_at(int level, float *x, size_t n);
void zs_quick_gelu_grad_at(int level, const float *x, float *g, size_t n);
void zs_gelu_erf_grad_at(int level, const float *x, float *g, size_t n);
void zs_gelu_tanh_grad_at(int level, const float *x, float *g, size_t n);

/// CPU features as the OS enables them (cpuid + xgetbv, via the compiler's runtime).
int zs_cpu_has_avx2_fma(void);
int zs_cpu_has_avx512(void);

#endif
