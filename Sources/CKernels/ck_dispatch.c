// Run-time CPU dispatch and the portable fallbacks of the public entry points.
#include "ck_internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

int ck_path_for(const ck_cpu_state *s) {
    // CPUID.1:ECX FMA (12), OSXSAVE (27), AVX (28), F16C (29); CPUID.(7,0):EBX AVX2 (5).
    const uint32_t need1 = (1u << 12) | (1u << 27) | (1u << 28) | (1u << 29);
    if ((s->leaf1_ecx & need1) != need1 || !(s->leaf7_ebx & (1u << 5))) return CK_PATH_REFERENCE;
    // With OSXSAVE set, XCR0 says which register state the OS saves: SSE (bit 1) and YMM (bit 2) for AVX2.
    if ((s->xcr0 & CK_XCR0_YMM) != CK_XCR0_YMM) return CK_PATH_REFERENCE;
    // AVX-512 F (EBX 16), BW (EBX 30), VL (EBX 31), VNNI (ECX 11), and opmask + ZMM state (XCR0 bits 5, 6, 7).
    const uint32_t need7 = (1u << 16) | (1u << 30) | (1u << 31);
    if ((s->leaf7_ebx & need7) == need7 && (s->leaf7_ecx & (1u << 11)) &&
        (s->xcr0 & CK_XCR0_ZMM) == CK_XCR0_ZMM) return CK_PATH_AVX512;
    return CK_PATH_AVX2;
}

int ck_amx_usable(const ck_cpu_state *s) {
    // AMX-TILE (CPUID.(7,0):EDX 24) and AMX-INT8 (EDX 25), XCR0 XTILECFG (17) + XTILEDATA (18), OSXSAVE, and
    // the Linux per-process permission for XTILEDATA.
    const uint32_t need = (1u << 24) | (1u << 25);
    return (s->leaf1_ecx & (1u << 27)) && (s->leaf7_edx & need) == need &&
           (s->xcr0 & CK_XCR0_TILE) == CK_XCR0_TILE && s->amx_permitted;
}

void ck_cpu_detect(ck_cpu_state *out) {
    memset(out, 0, sizeof *out);
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (__get_cpuid(1, &a, &b, &c, &d)) out->leaf1_ecx = c;
    if (__get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        out->leaf7_ebx = b;
        out->leaf7_ecx = c;
        out->leaf7_edx = d;
    }
    if (out->leaf1_ecx & (1u << 27)) {  // XGETBV is only defined when the OS set CR4.OSXSAVE
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        out->xcr0 = ((uint64_t)hi << 32) | lo;
    }
#if defined(__linux__)
    // Linux grants AMX tile data per process (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 18); ask only when the
    // CPU and XCR0 have it, and record whether the grant is in place.
    if ((out->leaf7_edx & (1u << 24)) && (out->xcr0 & CK_XCR0_TILE) == CK_XCR0_TILE) {
        unsigned long perm = 0;
        if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18) == 0 &&
            syscall(SYS_arch_prctl, 0x1022 /* ARCH_GET_XCOMP_PERM */, &perm) == 0)
            out->amx_permitted = (perm & CK_XCR0_TILE) == CK_XCR0_TILE;
    }
#endif
#endif
}

static int detect_path(void) {
    ck_cpu_state s;
    ck_cpu_detect(&s);
    return ck_path_for(&s);
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
#if defined(__x86_64__)
    // Q8_0 is the tied output head of the default model, dequantized tile by tile in every training step.
    if (type == CK_Q8_0 && n % QK == 0 && ck_best_path() >= CK_PATH_AVX512) {
        ck_dequantize_q8_0_avx512(src, dst, n);
        return 0;
    }
#endif
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
