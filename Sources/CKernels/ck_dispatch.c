// Run-time CPU dispatch and the portable fallbacks of the public entry points.
#include "ck_internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int detect_path(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    const int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                       __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    if (avx512) return CK_PATH_AVX512;
    if (avx2) return CK_PATH_AVX2;
#endif
    return CK_PATH_REFERENCE;
}

static int g_best = -1;

int ck_cpu_vector_class(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
    return 0;
}

// LORAD_KERNELS=reference|avx2|avx512 caps the path (for comparisons and as an escape hatch).
static int env_cap(void) {
    const char *v = getenv("LORAD_KERNELS");
    if (!v) return CK_PATH_AVX512;
    if (strcmp(v, "reference") == 0) return CK_PATH_REFERENCE;
    if (strcmp(v, "avx2") == 0) return CK_PATH_AVX2;
    return CK_PATH_AVX512;
}

int ck_best_path(void) {
    int p = __atomic_load_n(&g_best, __ATOMIC_RELAXED);
    if (p < 0) {
        p = detect_path();
        const int cap = env_cap();
        if (p > cap) p = cap;
        __atomic_store_n(&g_best, p, __ATOMIC_RELAXED);
    }
    return p;
}

int ck_path_available(int path) {
    return path >= CK_PATH_REFERENCE && path <= ck_best_path();
}

static int clamp_path(int path) {
    const int best = ck_best_path();
    if (path < CK_PATH_REFERENCE) return CK_PATH_REFERENCE;
    return path > best ? best : path;
}

int ck_dequantize(int type, const void *src, float *dst, size_t n) {
    return ck_dequantize_ref(type, src, dst, n);
}

int ck_quantize(int type, const float *src, void *dst, size_t n) {
    return ck_quantize_ref(type, src, dst, n);
}

static int matmul_reference(int type, size_t cols, const void *w, size_t w_stride, size_t r0, size_t r1,
                            const void *x, size_t x_stride, size_t nx, float *y, size_t ldy) {
    if (ck_vec_dot_type(type) < 0) return -1;
    const uint8_t *wb = w, *xb = x;
    for (size_t r = r0; r < r1; r++) {
        for (size_t j = 0; j < nx; j++) {
            y[j * ldy + r] = ck_vec_dot_ref(type, cols, wb + r * w_stride, xb + j * x_stride);
        }
    }
    return 0;
}

int ck_matmul(int path, int type, size_t cols, const void *w, size_t w_stride, size_t r0, size_t r1,
              const void *x, size_t x_stride, size_t nx, float *y, size_t ldy) {
    return ck_matmul_ex(path, type, 0, cols, w, w_stride, NULL, r0, r1, x, x_stride, nx, y, ldy);
}

int ck_matmul_ex(int path, int type, int flags, size_t cols, const void *w, size_t w_stride, const void *w_batch,
                 size_t r0, size_t r1, const void *x, size_t x_stride, size_t nx, float *y, size_t ldy) {
    if (ck_vec_dot_type(type) < 0 || ck_block_size(type) == 0 || cols % ck_block_size(type) != 0) return -1;
    if (r1 <= r0 || nx == 0) return 0;
    switch (clamp_path(path)) {
#if defined(__x86_64__)
    case CK_PATH_AVX512:
        if (ck_matmul_avx512(type, flags, cols, w, w_stride, w_batch, r0, r1, x, x_stride, nx, y, ldy) == 0) return 0;
        break;
    case CK_PATH_AVX2:
        if (ck_matmul_avx2(type, flags, cols, w, w_stride, w_batch, r0, r1, x, x_stride, nx, y, ldy) == 0) return 0;
        break;
#endif
    default:
        break;
    }
    return matmul_reference(type, cols, w, w_stride, r0, r1, x, x_stride, nx, y, ldy);
}

size_t ck_repack_bytes(int type, size_t rows, size_t cols) {
    const int legacy = type == CK_Q4_0 || type == CK_Q5_0 || type == CK_Q4_1 || type == CK_Q5_1;
    if (!legacy || cols % 32 != 0 || ck_best_path() < CK_PATH_AVX2) return 0;
    return rows * ck_legacy_row_bytes(cols / 32);
}

int ck_repack(int type, size_t cols, const void *w, size_t w_stride, size_t rows, void *out) {
    if (ck_repack_bytes(type, rows, cols) == 0 || ((uintptr_t)out & 31) != 0) return -1;
#if defined(__x86_64__)
    ck_repack_avx2(type, cols, w, w_stride, rows, out);
    return 0;
#else
    return -1;
#endif
}

float ck_vec_dot(int path, int type, size_t n, const void *w, const void *x) {
    if (ck_vec_dot_type(type) < 0 || ck_block_size(type) == 0 || n % ck_block_size(type) != 0) return NAN;
    if (clamp_path(path) == CK_PATH_REFERENCE) return ck_vec_dot_ref(type, n, w, x);
    float out = NAN;
    ck_matmul(path, type, n, w, 0, 0, 1, x, 0, 1, &out, 1);
    return out;
}

int ck_quantize_rows(int type, const float *src, size_t src_stride, void *dst, size_t dst_stride,
                     size_t rows, size_t cols) {
#if defined(__x86_64__)
    if (ck_best_path() >= CK_PATH_AVX2 &&
        ck_quantize_rows_avx2(type, src, src_stride, dst, dst_stride, rows, cols) == 0) return 0;
#endif
    uint8_t *d = dst;
    for (size_t j = 0; j < rows; j++) {
        if (ck_quantize_ref(type, src + j * src_stride, d + j * dst_stride, cols) != 0) return -1;
    }
    return 0;
}
