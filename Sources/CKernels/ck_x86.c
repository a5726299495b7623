// x86 fast paths: the tile kernels of ck_x86_body.h compiled for AVX2 (+FMA, F16C) and for AVX-512 VNNI.
#include "ck_internal.h"
#include <stdlib.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define CK_PASTE_(a, b) a##b
#define CK_PASTE(a, b) CK_PASTE_(a, b)

#ifndef CK_PF
#define CK_PF 4  // mat-vec prefetch distance, in row tiles
#endif
#define CK_RMAX_LEGACY 4
#define CK_CMAX_LEGACY 4
#define CK_RMAX_K 4
#define CK_CMAX_K 4

#define CK_TARGET "avx2,fma,f16c"
#define CK_SFX(name) CK_PASTE(name, _avx2)
#define CK_VNNI 0
#ifndef CK_RB_LEGACY_AVX2
#define CK_RB_LEGACY_AVX2 2
#endif
#ifndef CK_RB_K_AVX2
#define CK_RB_K_AVX2 2
#endif
#define CK_RB_LEGACY CK_RB_LEGACY_AVX2
#define CK_RB_K CK_RB_K_AVX2
#include "ck_x86_body.h"
#undef CK_TARGET
#undef CK_SFX
#undef CK_VNNI
#undef CK_RB_LEGACY
#undef CK_RB_K

#define CK_TARGET "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c,tune=znver4"
#define CK_SFX(name) CK_PASTE(name, _avx512)
#define CK_VNNI 1
#define CK_RB_LEGACY 4
#define CK_RB_K 2
#include "ck_x86_body.h"

int ck_matmul_avx2(int type, size_t cols, const void *w, size_t w_stride, size_t r0, size_t r1,
                   const void *x, size_t x_stride, size_t nx, float *y, size_t ldy) {
    return ck_matmul_impl_avx2(type, cols, w, w_stride, r0, r1, x, x_stride, nx, y, ldy);
}

int ck_matmul_avx512(int type, size_t cols, const void *w, size_t w_stride, size_t r0, size_t r1,
                     const void *x, size_t x_stride, size_t nx, float *y, size_t ldy) {
    return ck_matmul_impl_avx512(type, cols, w, w_stride, r0, r1, x, x_stride, nx, y, ldy);
}
#endif
