#ifndef ZS_KERNELS_H
#define ZS_KERNELS_H
#include <stddef.h>

// Vectorised element-wise kernels (AVX2/FMA, glibc's libmvec for expf/erff/tanhf).
// Each has a scalar reference in Kernels.swift (`*Reference`), compared in KernelTests.

/// Softmax over row[0..<m] in place; row[m..<n] = 0.
void zs_softmax_row(float *row, int m, int n);

/// In place over x[n]: x * sigmoid(1.702 x) (quick_gelu).
void zs_quick_gelu(float *x, size_t n);
/// In place over x[n]: 0.5 x (1 + erf(x / sqrt 2)) (gelu).
void zs_gelu_erf(float *x, size_t n);
/// In place over x[n]: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (gelu_pytorch_tanh, gelu_new).
void zs_gelu_tanh(float *x, size_t n);

/// CPU features as the OS enables them (cpuid + xgetbv, via the compiler's runtime).
int zs_cpu_has_avx2_fma(void);
int zs_cpu_has_avx512(void);

#endif
