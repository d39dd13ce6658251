// Element-wise kernels: portable C, AVX2+FMA and AVX-512 builds, chosen at run time; see
// include/zs_kernels.h. No target-wide -m flags: each vector function carries its own target
// attribute, so the library runs on any x86-64 (and compiles elsewhere with the portable build).
#include "zs_kernels.h"
#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

// MARK: - Portable (plain C over libm; the compiler may vectorise the loops without calls)

static void softmax_row_portable(float *row, int m, int n) {
    float mx = -INFINITY;
    for (int i = 0; i < m; i++) mx = row[i] > mx ? row[i] : mx;
    float s = 0;
    for (int i = 0; i < m; i++) { float e = expf(row[i] - mx); row[i] = e; s += e; }
    float inv = 1.0f / s;
    for (int i = 0; i < m; i++) row[i] *= inv;
    for (int i = m < 0 ? 0 : m; i < n; i++) row[i] = 0;
}

static void quick_gelu_portable(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) { float v = x[i]; x[i] = v / (1.0f + expf(-1.702f * v)); }
}

static void gelu_erf_portable(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) { float v = x[i]; x[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }
}

static void gelu_tanh_portable(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
    }
}

// Backward of the activations: g[i] *= f'(x[i]) (x: the activation's input).
static void quick_gelu_grad_portable(const float *x, float *g, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = x[i], s = 1.0f / (1.0f + expf(-1.702f * v));
        g[i] *= s * (1.0f + 1.702f * v * (1.0f - s));
    }
}

static void gelu_erf_grad_portable(const float *x, float *g, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        g[i] *= 0.5f * (1.0f + erff(v * 0.70710678118654752f)) + v * expf(-0.5f * v * v) * 0.39894228040143268f;
    }
}

static void gelu_tanh_grad_portable(const float *x, float *g, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = x[i], v2 = v * v;
        float t = tanhf(0.79788456080286536f * (v + 0.044715f * v2 * v));
        g[i] *= 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * 0.79788456080286536f * (1.0f + 3.0f * 0.044715f * v2);
    }
}

// ZS_KERNELS_PORTABLE_ONLY (a compile-time define, for checking that build on x86-64) leaves the
// vector builds out, as on other architectures.
#if defined(__x86_64__) && !defined(ZS_KERNELS_PORTABLE_ONLY)
#define ZS_X86 1
#include <immintrin.h>

#define ZS_AVX2 __attribute__((target("avx2,fma")))
#define ZS_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))

// MARK: - AVX2 + FMA (glibc libmvec, 8 floats)

ZS_AVX2 __m256 _ZGVdN8v_expf(__m256 x);
ZS_AVX2 __m256 _ZGVdN8v_erff(__m256 x);
ZS_AVX2 __m256 _ZGVdN8v_tanhf(__m256 x);

ZS_AVX2 static inline float hmax8(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 m = _mm_max_ps(lo, hi);
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

ZS_AVX2 static inline float hsum8(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

ZS_AVX2 static void softmax_row_avx2(float *row, int m, int n) {
    int i = 0;
    float mx = -INFINITY;
    if (m >= 8) {
        __m256 vm = _mm256_set1_ps(-INFINITY);
        for (; i + 8 <= m; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(row + i));
        mx = hmax8(vm);
    }
    for (; i < m; i++) mx = row[i] > mx ? row[i] : mx;
    __m256 vmx = _mm256_set1_ps(mx), vs = _mm256_setzero_ps();
    float s = 0;
    for (i = 0; i + 8 <= m; i += 8) {
        __m256 e = _ZGVdN8v_expf(_mm256_sub_ps(_mm256_loadu_ps(row + i), vmx));
        _mm256_storeu_ps(row + i, e);
        vs = _mm256_add_ps(vs, e);
    }
    for (; i < m; i++) { float e = expf(row[i] - mx); row[i] = e; s += e; }
    s += hsum8(vs);
    float inv = 1.0f / s;
    __m256 vinv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= m; i += 8) _mm256_storeu_ps(row + i, _mm256_mul_ps(_mm256_loadu_ps(row + i), vinv));
    for (; i < m; i++) row[i] *= inv;
    for (i = m < 0 ? 0 : m; i < n; i++) row[i] = 0;
}

ZS_AVX2 static void quick_gelu_avx2(float *x, size_t n) {
    size_t i = 0;
    const __m256 one = _mm256_set1_ps(1.0f), k = _mm256_set1_ps(-1.702f);
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 e = _ZGVdN8v_expf(_mm256_mul_ps(k, v));
        _mm256_storeu_ps(x + i, _mm256_div_ps(v, _mm256_add_ps(one, e)));
    }
    for (; i < n; i++) { float v = x[i]; x[i] = v / (1.0f + expf(-1.702f * v)); }
}

ZS_AVX2 static void gelu_erf_avx2(float *x, size_t n) {
    size_t i = 0;
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f), r = _mm256_set1_ps(0.70710678118654752f);
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 e = _ZGVdN8v_erff(_mm256_mul_ps(v, r));
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, e)));
    }
    for (; i < n; i++) { float v = x[i]; x[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }
}

ZS_AVX2 static void gelu_tanh_avx2(float *x, size_t n) {
    size_t i = 0;
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    const __m256 c = _mm256_set1_ps(0.79788456080286536f), a = _mm256_set1_ps(0.044715f);
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 inner = _mm256_mul_ps(c, _mm256_add_ps(v, _mm256_mul_ps(a, _mm256_mul_ps(v, _mm256_mul_ps(v, v)))));
        __m256 t = _ZGVdN8v_tanhf(inner);
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, t)));
    }
    for (; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
    }
}

// g *= f'(x), 8 lanes at a time, the tail by the portable kernel.
#define ZS_AVX2_GRAD(name, body)                                                        \
    ZS_AVX2 static void name##_avx2(const float *x, float *g, size_t n) {              \
        size_t i = 0;                                                                  \
        for (; i + 8 <= n; i += 8) {                                                   \
            __m256 v = _mm256_loadu_ps(x + i);                                         \
            _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_loadu_ps(g + i), body));      \
        }                                                                              \
        name##_portable(x + i, g + i, n - i);                                          \
    }

ZS_AVX2 static inline __m256 quick_gelu_grad8(__m256 v) {
    const __m256 one = _mm256_set1_ps(1.0f), k = _mm256_set1_ps(1.702f);
    __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, _ZGVdN8v_expf(_mm256_mul_ps(_mm256_set1_ps(-1.702f), v))));
    return _mm256_mul_ps(s, _mm256_fmadd_ps(_mm256_mul_ps(k, v), _mm256_sub_ps(one, s), one));
}

ZS_AVX2 static inline __m256 gelu_erf_grad8(__m256 v) {
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    __m256 cdf = _mm256_mul_ps(half, _mm256_add_ps(one, _ZGVdN8v_erff(_mm256_mul_ps(v, _mm256_set1_ps(0.70710678118654752f)))));
    __m256 pdf = _mm256_mul_ps(_mm256_set1_ps(0.39894228040143268f), _ZGVdN8v_expf(_mm256_mul_ps(_mm256_set1_ps(-0.5f), _mm256_mul_ps(v, v))));
    return _mm256_fmadd_ps(v, pdf, cdf);
}

ZS_AVX2 static inline __m256 gelu_tanh_grad8(__m256 v) {
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f), c = _mm256_set1_ps(0.79788456080286536f);
    __m256 v2 = _mm256_mul_ps(v, v);
    __m256 t = _ZGVdN8v_tanhf(_mm256_mul_ps(c, _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), v2), v, v)));
    __m256 dinner = _mm256_mul_ps(c, _mm256_fmadd_ps(_mm256_set1_ps(3.0f * 0.044715f), v2, one));
    __m256 left = _mm256_mul_ps(half, _mm256_add_ps(one, t));
    __m256 right = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_fnmadd_ps(t, t, one)), dinner);
    return _mm256_add_ps(left, right);
}

ZS_AVX2_GRAD(quick_gelu_grad, quick_gelu_grad8(v))
ZS_AVX2_GRAD(gelu_erf_grad, gelu_erf_grad8(v))
ZS_AVX2_GRAD(gelu_tanh_grad, gelu_tanh_grad8(v))

// MARK: - AVX-512 (glibc libmvec, 16 floats; tails through masks)

ZS_AVX512 __m512 _ZGVeN16v_expf(__m512 x);
ZS_AVX512 __m512 _ZGVeN16v_erff(__m512 x);
ZS_AVX512 __m512 _ZGVeN16v_tanhf(__m512 x);

/// Lanes 0..<r (r in 1...15).
static inline __mmask16 tail_mask(size_t r) { return (__mmask16)((1u << r) - 1); }

ZS_AVX512 static void softmax_row_avx512(float *row, int m, int n) {
    int i = 0;
    __m512 vm = _mm512_set1_ps(-INFINITY);
    for (; i + 16 <= m; i += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(row + i));
    if (i < m) vm = _mm512_max_ps(vm, _mm512_mask_loadu_ps(vm, tail_mask((size_t)(m - i)), row + i));
    const float mx = _mm512_reduce_max_ps(vm);
    const __m512 vmx = _mm512_set1_ps(mx);
    __m512 vs = _mm512_setzero_ps();
    for (i = 0; i + 16 <= m; i += 16) {
        __m512 e = _ZGVeN16v_expf(_mm512_sub_ps(_mm512_loadu_ps(row + i), vmx));
        _mm512_storeu_ps(row + i, e);
        vs = _mm512_add_ps(vs, e);
    }
    if (i < m) {
        __mmask16 k = tail_mask((size_t)(m - i));
        __m512 e = _ZGVeN16v_expf(_mm512_sub_ps(_mm512_mask_loadu_ps(vmx, k, row + i), vmx));
        e = _mm512_maskz_mov_ps(k, e);
        _mm512_mask_storeu_ps(row + i, k, e);
        vs = _mm512_add_ps(vs, e);
    }
    const __m512 vinv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vs));
    for (i = 0; i + 16 <= m; i += 16) _mm512_storeu_ps(row + i, _mm512_mul_ps(_mm512_loadu_ps(row + i), vinv));
    if (i < m) {
        __mmask16 k = tail_mask((size_t)(m - i));
        _mm512_mask_storeu_ps(row + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, row + i), vinv));
    }
    for (i = m < 0 ? 0 : m; i < n; i++) row[i] = 0;
}

// y = f(x) over x[n], 16 lanes at a time, the tail through a mask.
#define ZS_AVX512_MAP(name, body)                                                      \
    ZS_AVX512 static void name(float *x, size_t n) {                                   \
        size_t i = 0;                                                                  \
        for (; i + 16 <= n; i += 16) {                                                 \
            __m512 v = _mm512_loadu_ps(x + i);                                         \
            _mm512_storeu_ps(x + i, body);                                             \
        }                                                                              \
        if (i < n) {                                                                   \
            __mmask16 k = tail_mask(n - i);                                            \
            __m512 v = _mm512_maskz_loadu_ps(k, x + i);                                \
            _mm512_mask_storeu_ps(x + i, k, body);                                     \
        }                                                                              \
    }

ZS_AVX512 static inline __m512 quick_gelu16(__m512 v) {
    const __m512 one = _mm512_set1_ps(1.0f), k = _mm512_set1_ps(-1.702f);
    return _mm512_div_ps(v, _mm512_add_ps(one, _ZGVeN16v_expf(_mm512_mul_ps(k, v))));
}

ZS_AVX512 static inline __m512 gelu_erf16(__m512 v) {
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f), r = _mm512_set1_ps(0.70710678118654752f);
    return _mm512_mul_ps(_mm512_mul_ps(half, v), _mm512_add_ps(one, _ZGVeN16v_erff(_mm512_mul_ps(v, r))));
}

ZS_AVX512 static inline __m512 gelu_tanh16(__m512 v) {
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
    const __m512 c = _mm512_set1_ps(0.79788456080286536f), a = _mm512_set1_ps(0.044715f);
    __m512 inner = _mm512_mul_ps(c, _mm512_add_ps(v, _mm512_mul_ps(a, _mm512_mul_ps(v, _mm512_mul_ps(v, v)))));
    return _mm512_mul_ps(_mm512_mul_ps(half, v), _mm512_add_ps(one, _ZGVeN16v_tanhf(inner)));
}

ZS_AVX512_MAP(quick_gelu_avx512, quick_gelu16(v))
ZS_AVX512_MAP(gelu_erf_avx512, gelu_erf16(v))
ZS_AVX512_MAP(gelu_tanh_avx512, gelu_tanh16(v))

// g *= f'(x), 16 lanes at a time, the tail through a mask.
#define ZS_AVX512_GRAD(name, body)                                                      \
    ZS_AVX512 static void name##_avx512(const float *x, float *g, size_t n) {          \
        size_t i = 0;                                                                  \
        for (; i + 16 <= n; i += 16) {                                                 \
            __m512 v = _mm512_loadu_ps(x + i);                                         \
            _mm512_storeu_ps(g + i, _mm512_mul_ps(_mm512_loadu_ps(g + i), body));      \
        }                                                                              \
        if (i < n) {                                                                   \
            __mmask16 k = tail_mask(n - i);                                            \
            __m512 v = _mm512_maskz_loadu_ps(k, x + i);                                \
            _mm512_mask_storeu_ps(g + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, g + i), body)); \
        }                                                                              \
    }

ZS_AVX512 static inline __m512 quick_gelu_grad16(__m512 v) {
    const __m512 one = _mm512_set1_ps(1.0f), k = _mm512_set1_ps(1.702f);
    __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, _ZGVeN16v_expf(_mm512_mul_ps(_mm512_set1_ps(-1.702f), v))));
    return _mm512_mul_ps(s, _mm512_fmadd_ps(_mm512_mul_ps(k, v), _mm512_sub_ps(one, s), one));
}

ZS_AVX512 static inline __m512 gelu_erf_grad16(__m512 v) {
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
    __m512 cdf = _mm512_mul_ps(half, _mm512_add_ps(one, _ZGVeN16v_erff(_mm512_mul_ps(v, _mm512_set1_ps(0.70710678118654752f)))));
    __m512 pdf = _mm512_mul_ps(_mm512_set1_ps(0.39894228040143268f), _ZGVeN16v_expf(_mm512_mul_ps(_mm512_set1_ps(-0.5f), _mm512_mul_ps(v, v))));
    return _mm512_fmadd_ps(v, pdf, cdf);
}

ZS_AVX512 static inline __m512 gelu_tanh_grad16(__m512 v) {
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f), c = _mm512_set1_ps(0.79788456080286536f);
    __m512 v2 = _mm512_mul_ps(v, v);
    __m512 t = _ZGVeN16v_tanhf(_mm512_mul_ps(c, _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), v2), v, v)));
    __m512 dinner = _mm512_mul_ps(c, _mm512_fmadd_ps(_mm512_set1_ps(3.0f * 0.044715f), v2, one));
    __m512 left = _mm512_mul_ps(half, _mm512_add_ps(one, t));
    __m512 right = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(half, v), _mm512_fnmadd_ps(t, t, one)), dinner);
    return _mm512_add_ps(left, right);
}

ZS_AVX512_GRAD(quick_gelu_grad, quick_gelu_grad16(v))
ZS_AVX512_GRAD(gelu_erf_grad, gelu_erf_grad16(v))
ZS_AVX512_GRAD(gelu_tanh_grad, gelu_tanh_grad16(v))

int zs_cpu_has_avx2_fma(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

int zs_cpu_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           zs_cpu_has_avx2_fma();
}

#else  // not x86-64: the portable build only

int zs_cpu_has_avx2_fma(void) { return 0; }
int zs_cpu_has_avx512(void) { return 0; }

#endif

// MARK: - Level choice (once) and dispatch

int zs_kernels_supported(int level) {
    switch (level) {
    case ZS_KERNELS_PORTABLE: return 1;
    case ZS_KERNELS_AVX2: return zs_cpu_has_avx2_fma();
    case ZS_KERNELS_AVX512: return zs_cpu_has_avx512();
    default: return 0;
    }
}

static const char *const level_names[] = {"portable", "avx2", "avx512"};

static int best_level(void) {
    if (zs_kernels_supported(ZS_KERNELS_AVX512)) return ZS_KERNELS_AVX512;
    if (zs_kernels_supported(ZS_KERNELS_AVX2)) return ZS_KERNELS_AVX2;
    return ZS_KERNELS_PORTABLE;
}

static int active_level = -1;
static pthread_once_t active_once = PTHREAD_ONCE_INIT;

static void resolve_level(void) {
    int best = best_level(), level = best;
    const char *env = getenv("ZEROSEG_KERNELS");
    if (env && *env) {
        char want[16] = {0};
        size_t len = strlen(env);
        for (size_t i = 0; i < len && i + 1 < sizeof want; i++) want[i] = (char)tolower((unsigned char)env[i]);
        int asked = -1;
        if (len < sizeof want) {
            if (strcmp(want, "auto") == 0) asked = best;
            for (int l = 0; l < 3; l++) if (strcmp(want, level_names[l]) == 0) asked = l;
        }
        if (asked < 0) {
            fprintf(stderr, "zeroseg: ZEROSEG_KERNELS=%s is not one of portable, avx2, avx512, auto: using %s\n",
                    env, level_names[best]);
        } else if (!zs_kernels_supported(asked)) {
            fprintf(stderr, "zeroseg: ZEROSEG_KERNELS=%s: this CPU cannot run the %s kernels: using %s\n",
                    env, level_names[asked], level_names[best]);
        } else {
            level = asked;
        }
    }
    __atomic_store_n(&active_level, level, __ATOMIC_RELEASE);
}

int zs_kernels_level(void) {
    int level = __atomic_load_n(&active_level, __ATOMIC_ACQUIRE);
    if (level < 0) {
        pthread_once(&active_once, resolve_level);
        level = __atomic_load_n(&active_level, __ATOMIC_ACQUIRE);
    }
    return level;
}

// An unsupported level runs the portable kernel (the vector ones would die with SIGILL).
static int runnable(int level) { return zs_kernels_supported(level) ? level : ZS_KERNELS_PORTABLE; }

#if ZS_X86
#define ZS_DISPATCH(level, name, ...)                                                  \
    switch (level) {                                                                   \
    case ZS_KERNELS_AVX512: name##_avx512(__VA_ARGS__); return;                        \
    case ZS_KERNELS_AVX2: name##_avx2(__VA_ARGS__); return;                            \
    default: name##_portable(__VA_ARGS__); return;                                     \
    }
#else
#define ZS_DISPATCH(level, name, ...) { (void)(level); name##_portable(__VA_ARGS__); }
#endif

void zs_softmax_row(float *row, int m, int n) { ZS_DISPATCH(zs_kernels_level(), softmax_row, row, m, n) }
void zs_quick_gelu(float *x, size_t n) { ZS_DISPATCH(zs_kernels_level(), quick_gelu, x, n) }
void zs_gelu_erf(float *x, size_t n) { ZS_DISPATCH(zs_kernels_level(), gelu_erf, x, n) }
void zs_gelu_tanh(float *x, size_t n) { ZS_DISPATCH(zs_kernels_level(), gelu_tanh, x, n) }

void zs_softmax_row_at(int level, float *row, int m, int n) { ZS_DISPATCH(runnable(level), softmax_row, row, m, n) }
void zs_quick_gelu_at(int level, float *x, size_t n) { ZS_DISPATCH(runnable(level), quick_gelu, x, n) }
void zs_gelu_erf_at(int level, float *x, size_t n) { ZS_DISPATCH(runnable(level), gelu_erf, x, n) }
void zs_gelu_tanh_at(int level, float *x, size_t n) { ZS_DISPATCH(runnable(level), gelu_tanh, x, n) }

void zs_quick_gelu_grad(const float *x, float *g, size_t n) { ZS_DISPATCH(zs_kernels_level(), quick_gelu_grad, x, g, n) }
void zs_gelu_erf_grad(const float *x, float *g, size_t n) { ZS_DISPATCH(zs_kernels_level(), gelu_erf_grad, x, g, n) }
void zs_gelu_tanh_grad(const float *x, float *g, size_t n) { ZS_DISPATCH(zs_kernels_level(), gelu_tanh_grad, x, g, n) }
void zs_quick_gelu_grad_at(int level, const float *x, float *g, size_t n) { ZS_DISPATCH(runnable(level), quick_gelu_grad, x, g, n) }
void zs_gelu_erf_grad_at(int level, const float *x, float *g, size_t n) { ZS_DISPATCH(runnable(level), gelu_erf_grad, x, g, n) }
void zs_gelu_tanh_grad_at(int level, const float *x, float *g, size_t n) { ZS_DISPATCH(runnable(level), gelu_tanh_grad, x, g, n) }

// MARK: - float16 conversions (the embedding index's shards)

void zs_f16_to_f32_portable(const unsigned short *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t h = src[i], sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu, bits;
        if (exp == 0) {
            if (man == 0) {
                bits = sign;
            } else {  // subnormal: normalise
                int e = -1;
                do { e++; man <<= 1; } while ((man & 0x400u) == 0);
                bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
            }
        } else if (exp == 31) {
            bits = sign | 0x7f800000u | (man << 13);
        } else {
            bits = sign | ((exp + 112) << 23) | (man << 13);
        }
        memcpy(dst + i, &bits, 4);
    }
}

void zs_f32_to_f16_portable(const float *src, unsigned short *dst, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t x;
        memcpy(&x, src + i, 4);
        uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
        uint16_t out;
        if (ax > 0x7f800000u) {
            out = (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));  // NaN, quiet
        } else if (ax >= 0x477ff000u) {
            out = (uint16_t)(sign | 0x7c00u);  // rounds to >= 65520: inf
        } else if (ax < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
            if (ax < 0x33000000u) {  // below 2^-25: rounds to zero
                out = (uint16_t)sign;
            } else {
                uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
                uint32_t shift = 126 - e;  // so that m >> shift is in half-subnormal units (2^-24)
                uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
                if (rem > half || (rem == half && (q & 1u))) q++;
                out = (uint16_t)(sign | q);
            }
        } else {
            uint32_t q = ((ax >> 13) - (112u << 10)), rem = ax & 0x1fffu;
            if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) q++;  // may carry into the exponent: right
            out = (uint16_t)(sign | q);
        }
        dst[i] = out;
    }
}

#if ZS_X86
#define ZS_F16C __attribute__((target("avx,f16c")))
ZS_F16C static void f16_to_f32_f16c(const unsigned short *src, float *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    if (i < n) zs_f16_to_f32_portable(src + i, dst + i, n - i);
}
ZS_F16C static void f32_to_f16_f16c(const float *src, unsigned short *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    if (i < n) zs_f32_to_f16_portable(src + i, dst + i, n - i);
}
static int has_f16c(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
}
#endif

void zs_f16_to_f32(const unsigned short *src, float *dst, size_t n) {
#if ZS_X86
    if (zs_kernels_level() != ZS_KERNELS_PORTABLE && has_f16c()) { f16_to_f32_f16c(src, dst, n); return; }
#endif
    zs_f16_to_f32_portable(src, dst, n);
}

void zs_f32_to_f16(const float *src, unsigned short *dst, size_t n) {
#if ZS_X86
    if (zs_kernels_level() != ZS_KERNELS_PORTABLE && has_f16c()) { f32_to_f16_f16c(src, dst, n); return; }
#endif
    zs_f32_to_f16_portable(src, dst, n);
}
