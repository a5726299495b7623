// x86 fast paths (AVX2 and AVX-512 VNNI).
#include "ck_internal.h"

int ck_matmul_avx2(int type, size_t cols, const void *w, size_t w_stride, size_t r0, size_t r1,
                   const void *x, size_t x_stride, size_t nx, float *y, size_t ldy) {
    (void)type; (void)cols; (void)w; (void)w_stride; (void)r0; (void)r1; (void)x; (void)x_stride; (void)nx; (void)y; (void)ldy;
    return -1;
}

int ck_matmul_avx512(int type, size_t cols, const void *w, size_t w_stride, size_t r0, size_t r1,
                     const void *x, size_t x_stride, size_t nx, float *y, size_t ldy) {
    return ck_matmul_avx2(type, cols, w, w_stride, r0, r1, x, x_stride, nx, y, ldy);
}
