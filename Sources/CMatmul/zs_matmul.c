// Pre-packed matrix products through oneDNN's C API, and the low-precision helpers; see
// include/zs_matmul.h. No target-wide -m flags: the AVX-512 helpers carry their own target
// attributes and run only when the CPU has the instructions.
#pragma STDC FP_CONTRACT OFF
#include "zs_matmul.h"
#include <oneapi/dnnl/dnnl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

// oneDNN's code may leave the SSE control/status register (MXCSR) changed on the calling thread;
// every entry point puts it back as it found it, so the kernels that run afterwards on the same
// thread (libm's, zeroseg's own) compute as they would without oneDNN.
// libgomp (oneDNN's threading runtime in Debian's build): the number of threads oneDNN may use
// on the calling thread (a per-thread setting for threads OpenMP did not create).
extern void omp_set_num_threads(int n);
extern int omp_get_max_threads(void);

static dnnl_engine_t engine;
static dnnl_status_t engine_status = dnnl_runtime_error;
static pthread_once_t engine_once = PTHREAD_ONCE_INIT;

static void make_engine(void) { engine_status = dnnl_engine_create(&engine, dnnl_cpu, 0); }

#if defined(__x86_64__)
#include <xmmintrin.h>
#define SAVE_FP_STATE unsigned int saved_csr_ = _mm_getcsr()
#define RESTORE_FP_STATE _mm_setcsr(saved_csr_)
#else
#define SAVE_FP_STATE
#define RESTORE_FP_STATE
#endif

static void one_thread(void) {
    static __thread int set = 0;
    if (!set) { omp_set_num_threads(1); set = 1; }
}

#define TRY(call) do { dnnl_status_t s_ = (call); if (s_ != dnnl_success) { \
    snprintf(err, errlen, "oneDNN: %s failed (status %d)", #call, (int)s_); goto fail; } } while (0)

struct zs_mm_weights {
    zs_mm_type type;
    int64_t n, k;
    dnnl_memory_desc_t md;  // the packed layout
    void *data;
    size_t bytes;
    char impl[64];
};

static void types_of(zs_mm_type t, dnnl_data_type_t *src, dnnl_data_type_t *wei, dnnl_data_type_t *dst) {
    switch (t) {
    case ZS_MM_BF16: *src = dnnl_bf16; *wei = dnnl_bf16; *dst = dnnl_f32; break;
    case ZS_MM_U8S8: *src = dnnl_u8; *wei = dnnl_s8; *dst = dnnl_s32; break;
    default: *src = dnnl_f32; *wei = dnnl_f32; *dst = dnnl_f32; break;
    }
}

// Packed weights of 2 MiB and more start on a 2 MiB boundary and ask for transparent huge pages
// (the whole 2 MiB pages inside them): fewer page faults while packing, fewer TLB misses while
// streaming the weights. Only touched pages count: the alignment's slack is never written.
#define ZS_HUGE (2u << 20)
static void *packed_alloc(size_t bytes) {
    void *p = NULL;
    if (bytes >= ZS_HUGE) {
        if (posix_memalign(&p, ZS_HUGE, bytes) != 0) return NULL;
#ifdef MADV_HUGEPAGE
        madvise(p, bytes / ZS_HUGE * ZS_HUGE, MADV_HUGEPAGE);  // advice only: failure changes nothing
#endif
        return p;
    }
    return aligned_alloc(64, (bytes + 63) / 64 * 64);
}

// The rows the layout is chosen for (oneDNN's brgemm matmul picks the same weight layout for any M).
#define ZS_NOMINAL_M 256

zs_mm_weights *zs_mm_pack(zs_mm_type type, const void *w, int64_t n, int64_t k, char *err, size_t errlen) {
    pthread_once(&engine_once, make_engine);
    if (engine_status != dnnl_success) { snprintf(err, errlen, "oneDNN: no CPU engine (status %d)", (int)engine_status); return NULL; }
    one_thread();
    SAVE_FP_STATE;
    zs_mm_weights *r = calloc(1, sizeof *r);
    dnnl_primitive_desc_t pd = NULL, rpd = NULL;
    dnnl_primitive_t reorder = NULL;
    dnnl_memory_t user = NULL, packed = NULL;
    dnnl_stream_t stream = NULL;
    if (!r) { snprintf(err, errlen, "out of memory"); return NULL; }
    r->type = type; r->n = n; r->k = k;
    dnnl_data_type_t st, wt, dt;
    types_of(type, &st, &wt, &dt);
    dnnl_memory_desc_t s, wany, d, wuser;
    dnnl_dims_t sd = {ZS_NOMINAL_M, k}, wd = {k, n}, dd = {ZS_NOMINAL_M, n};
    TRY(dnnl_memory_desc_init_by_tag(&s, 2, sd, st, dnnl_ab));
    TRY(dnnl_memory_desc_init_by_tag(&wany, 2, wd, wt, dnnl_format_tag_any));
    TRY(dnnl_memory_desc_init_by_tag(&d, 2, dd, dt, dnnl_ab));
    // The user's W[N, K] row-major is the [K, N] weights of oneDNN's matmul in layout "ba".
    TRY(dnnl_memory_desc_init_by_tag(&wuser, 2, wd, wt, dnnl_ba));
    dnnl_matmul_desc_t mmd;
    TRY(dnnl_matmul_desc_init(&mmd, &s, &wany, NULL, &d));
    TRY(dnnl_primitive_desc_create(&pd, &mmd, NULL, engine, NULL));
    const char *impl = "";
    TRY(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl));
    snprintf(r->impl, sizeof r->impl, "%s", impl);
    r->md = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    r->bytes = dnnl_memory_desc_get_size(&r->md);
    r->data = packed_alloc(r->bytes);
    if (!r->data) { snprintf(err, errlen, "out of memory (%zu bytes of packed weights)", r->bytes); goto fail; }
    TRY(dnnl_memory_create(&user, &wuser, engine, (void *)w));
    TRY(dnnl_memory_create(&packed, &r->md, engine, r->data));
    TRY(dnnl_reorder_primitive_desc_create(&rpd, &wuser, engine, &r->md, engine, NULL));
    TRY(dnnl_primitive_create(&reorder, rpd));
    TRY(dnnl_stream_create(&stream, engine, dnnl_stream_default_flags));
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, packed}};
    TRY(dnnl_primitive_execute(reorder, stream, 2, args));
    TRY(dnnl_stream_wait(stream));
    dnnl_stream_destroy(stream); dnnl_primitive_destroy(reorder); dnnl_primitive_desc_destroy(rpd);
    dnnl_memory_destroy(user); dnnl_memory_destroy(packed); dnnl_primitive_desc_destroy(pd);
    RESTORE_FP_STATE;
    return r;
fail:
    if (stream) dnnl_stream_destroy(stream);
    if (reorder) dnnl_primitive_destroy(reorder);
    if (rpd) dnnl_primitive_desc_destroy(rpd);
    if (user) dnnl_memory_destroy(user);
    if (packed) dnnl_memory_destroy(packed);
    if (pd) dnnl_primitive_desc_destroy(pd);
    free(r->data); free(r);
    RESTORE_FP_STATE;
    return NULL;
}

void zs_mm_free(zs_mm_weights *w) {
    if (!w) return;
    free(w->data); free(w);
}

size_t zs_mm_bytes(const zs_mm_weights *w) { return w->bytes; }
const char *zs_mm_impl(const zs_mm_weights *w) { return w->impl; }

int zs_mm_run(const zs_mm_weights *w, const void *x, int64_t m, int64_t ldx, void *out, int64_t ldo,
              const float *bias, int accumulate, char *err, size_t errlen) {
    if (m <= 0) return 0;
    one_thread();
    SAVE_FP_STATE;
    int rc = -1;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t ops = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_memory_t sm = NULL, wm = NULL, dm = NULL, bm = NULL, padm = NULL;
    dnnl_stream_t stream = NULL;
    void *pad = NULL;
    if (w->type == ZS_MM_U8S8 && (bias || accumulate)) { snprintf(err, errlen, "u8s8 products take no bias and do not accumulate"); return -1; }
    dnnl_data_type_t st, wt, dt;
    types_of(w->type, &st, &wt, &dt);
    dnnl_memory_desc_t s, d, b;
    dnnl_dims_t sd = {m, w->k}, dd = {m, w->n}, bd = {1, w->n};
    dnnl_dims_t ss = {ldx, 1}, ds = {ldo, 1};
    TRY(dnnl_memory_desc_init_by_strides(&s, 2, sd, st, ss));
    TRY(dnnl_memory_desc_init_by_strides(&d, 2, dd, dt, ds));
    TRY(dnnl_memory_desc_init_by_tag(&b, 2, bd, dnnl_f32, dnnl_ab));
    TRY(dnnl_primitive_attr_create(&attr));
    TRY(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
    if (accumulate) {
        TRY(dnnl_post_ops_create(&ops));
        TRY(dnnl_post_ops_append_sum(ops, 1.0f));
        TRY(dnnl_primitive_attr_set_post_ops(attr, ops));
    }
    dnnl_matmul_desc_t mmd;
    TRY(dnnl_matmul_desc_init(&mmd, &s, &w->md, bias ? &b : NULL, &d));
    TRY(dnnl_primitive_desc_create(&pd, &mmd, attr, engine, NULL));
    TRY(dnnl_primitive_create(&prim, pd));
    const dnnl_memory_desc_t *padmd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    size_t padBytes = padmd ? dnnl_memory_desc_get_size(padmd) : 0;
    TRY(dnnl_memory_create(&sm, &s, engine, (void *)x));
    TRY(dnnl_memory_create(&wm, &w->md, engine, w->data));
    TRY(dnnl_memory_create(&dm, &d, engine, out));
    dnnl_exec_arg_t args[5];
    int nargs = 0;
    args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SRC, sm};
    args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_WEIGHTS, wm};
    args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_DST, dm};
    if (bias) {
        TRY(dnnl_memory_create(&bm, &b, engine, (void *)bias));
        args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, bm};
    }
    if (padBytes > 0) {
        pad = aligned_alloc(64, (padBytes + 63) / 64 * 64);
        if (!pad) { snprintf(err, errlen, "out of memory (scratchpad of %zu bytes)", padBytes); goto fail; }
        memset(pad, 0, padBytes);
        TRY(dnnl_memory_create(&padm, padmd, engine, pad));
        args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, padm};
    }
    TRY(dnnl_stream_create(&stream, engine, dnnl_stream_default_flags));
    TRY(dnnl_primitive_execute(prim, stream, nargs, args));
    TRY(dnnl_stream_wait(stream));
    rc = 0;
fail:
    if (stream) dnnl_stream_destroy(stream);
    if (padm) dnnl_memory_destroy(padm);
    free(pad);
    if (bm) dnnl_memory_destroy(bm);
    if (dm) dnnl_memory_destroy(dm);
    if (wm) dnnl_memory_destroy(wm);
    if (sm) dnnl_memory_destroy(sm);
    if (prim) dnnl_primitive_destroy(prim);
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (ops) dnnl_post_ops_destroy(ops);
    if (attr) dnnl_primitive_attr_destroy(attr);
    RESTORE_FP_STATE;
    return rc;
}

int zs_mm_isa(void) { return (int)dnnl_get_effective_cpu_isa(); }

int zs_mm_native(zs_mm_type type) {
    int isa = zs_mm_isa();
    switch (type) {
    case ZS_MM_BF16: return (isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16;
    case ZS_MM_U8S8:
        return (isa & dnnl_cpu_isa_avx512_core_vnni) == dnnl_cpu_isa_avx512_core_vnni
            || (isa & dnnl_cpu_isa_avx2_vnni) == dnnl_cpu_isa_avx2_vnni;
    default: return 1;
    }
}

static char version_text[32];
static pthread_once_t version_once = PTHREAD_ONCE_INIT;
static void fill_version(void) {
    const dnnl_version_t *v = dnnl_version();
    snprintf(version_text, sizeof version_text, "%d.%d.%d", v->major, v->minor, v->patch);
}

const char *zs_mm_version(void) {
    pthread_once(&version_once, fill_version);
    return version_text;
}

// MARK: - Low-precision helpers

static uint16_t bf16_rne(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // NaN: quiet
    if ((u & 0x7f800000u) == 0) return (uint16_t)((u >> 16) & 0x8000);          // denormal: signed zero
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

void zs_f32_to_bf16_portable(const float *src, uint16_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = bf16_rne(src[i]);
}

static void quantize_row_portable(const float *x, int64_t k, uint8_t *q, float *scale, int32_t *zp) {
    float lo = 0, hi = 0;
    for (int64_t i = 0; i < k; i++) { float v = x[i]; lo = v < lo ? v : lo; hi = v > hi ? v : hi; }
    float s = hi > lo ? (hi - lo) / 255.0f : 1.0f;
    float z = rintf(-lo / s);
    z = z < 0 ? 0 : (z > 255 ? 255 : z);
    for (int64_t i = 0; i < k; i++) {
        float v = rintf(x[i] / s) + z;
        v = v < 0 ? 0 : (v > 255 ? 255 : v);
        q[i] = (uint8_t)v;
    }
    *scale = s; *zp = (int32_t)z;
}

void zs_quantize_rows_u8_portable(const float *x, int64_t m, int64_t k, int64_t ldx, uint8_t *q, float *scale, int32_t *zp) {
    for (int64_t r = 0; r < m; r++) quantize_row_portable(x + r * ldx, k, q + r * k, scale + r, zp + r);
}

static void dequantize_portable(const int32_t *acc, int64_t m, int64_t n, const float *xs, const int32_t *zp,
                                const float *ws, const int32_t *colsum, const float *bias, float *out, int64_t ldo, int accumulate) {
    for (int64_t i = 0; i < m; i++) {
        const int32_t *a = acc + i * n;
        float *o = out + i * ldo;
        for (int64_t j = 0; j < n; j++) {
            float t = (float)(a[j] - zp[i] * colsum[j]);
            float f = xs[i] * ws[j];
            float v = f * t;
            if (bias) v = v + bias[j];
            o[j] = accumulate ? o[j] + v : v;
        }
    }
}

#if defined(__x86_64__)
#include <immintrin.h>
#define ZS_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))
#define ZS_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))

int zs_cpu_has_avx512_bf16(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}

static int has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")
        && __builtin_cpu_supports("avx512vl");
}

ZS_AVX512BF16 static void f32_to_bf16_avx512(const float *src, uint16_t *dst, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
        _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)h);
    }
    if (i < n) {
        __mmask16 mk = (__mmask16)((1u << (n - i)) - 1);
        __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mk, src + i));
        _mm256_mask_storeu_epi16(dst + i, mk, (__m256i)h);
    }
}

ZS_AVX512 static void quantize_row_avx512(const float *x, int64_t k, uint8_t *q, float *scale, int32_t *zp) {
    __m512 vlo = _mm512_setzero_ps(), vhi = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) { __m512 v = _mm512_loadu_ps(x + i); vlo = _mm512_min_ps(vlo, v); vhi = _mm512_max_ps(vhi, v); }
    if (i < k) {
        __mmask16 mk = (__mmask16)((1u << (k - i)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(mk, x + i);  // zeros in the tail do not change min(0, .), max(0, .)
        vlo = _mm512_min_ps(vlo, v); vhi = _mm512_max_ps(vhi, v);
    }
    float lo = _mm512_reduce_min_ps(vlo), hi = _mm512_reduce_max_ps(vhi);
    float s = hi > lo ? (hi - lo) / 255.0f : 1.0f;
    float z = rintf(-lo / s);
    z = z < 0 ? 0 : (z > 255 ? 255 : z);
    __m512 vs = _mm512_set1_ps(s), vz = _mm512_set1_ps(z), v0 = _mm512_setzero_ps(), v255 = _mm512_set1_ps(255);
    for (i = 0; i + 16 <= k; i += 16) {
        __m512 v = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(x + i), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v, vz), v0), v255);
        _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v)));
    }
    if (i < k) {
        __mmask16 mk = (__mmask16)((1u << (k - i)) - 1);
        __m512 v = _mm512_roundscale_ps(_mm512_div_ps(_mm512_maskz_loadu_ps(mk, x + i), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v, vz), v0), v255);
        _mm_mask_storeu_epi8(q + i, mk, _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v)));
    }
    *scale = s; *zp = (int32_t)z;
}

ZS_AVX512 static void dequantize_avx512(const int32_t *acc, int64_t m, int64_t n, const float *xs, const int32_t *zp,
                                        const float *ws, const int32_t *colsum, const float *bias, float *out, int64_t ldo, int accumulate) {
    for (int64_t i = 0; i < m; i++) {
        const int32_t *a = acc + i * n;
        float *o = out + i * ldo;
        __m512i vzp = _mm512_set1_epi32(zp[i]);
        __m512 vxs = _mm512_set1_ps(xs[i]);
        for (int64_t j = 0; j < n; j += 16) {
            __mmask16 mk = n - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - j)) - 1);
            __m512i c = _mm512_maskz_loadu_epi32(mk, colsum + j);
            __m512 t = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_maskz_loadu_epi32(mk, a + j), _mm512_mullo_epi32(vzp, c)));
            __m512 f = _mm512_mul_ps(vxs, _mm512_maskz_loadu_ps(mk, ws + j));
            __m512 v = _mm512_mul_ps(f, t);
            if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, bias + j));
            if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mk, o + j), v);
            _mm512_mask_storeu_ps(o + j, mk, v);
        }
    }
}
#else
int zs_cpu_has_avx512_bf16(void) { return 0; }
static int has_avx512(void) { return 0; }
#endif

void zs_f32_to_bf16(const float *src, uint16_t *dst, size_t n) {
#if defined(__x86_64__)
    if (zs_cpu_has_avx512_bf16()) { f32_to_bf16_avx512(src, dst, n); return; }
#endif
    zs_f32_to_bf16_portable(src, dst, n);
}

void zs_quantize_rows_u8(const float *x, int64_t m, int64_t k, int64_t ldx, uint8_t *q, float *scale, int32_t *zp) {
#if defined(__x86_64__)
    if (has_avx512()) {
        for (int64_t r = 0; r < m; r++) quantize_row_avx512(x + r * ldx, k, q + r * k, scale + r, zp + r);
        return;
    }
#endif
    zs_quantize_rows_u8_portable(x, m, k, ldx, q, scale, zp);
}

void zs_dequantize_s32(const int32_t *acc, int64_t m, int64_t n, const float *xs, const int32_t *zp,
                       const float *ws, const int32_t *colsum, const float *bias, float *out, int64_t ldo, int accumulate) {
#if defined(__x86_64__)
    if (has_avx512()) { dequantize_avx512(acc, m, n, xs, zp, ws, colsum, bias, out, ldo, accumulate); return; }
#endif
    dequantize_portable(acc, m, n, xs, zp, ws, colsum, bias, out, ldo, accumulate);
}
