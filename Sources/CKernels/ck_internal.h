// Block layouts (ggml/src/ggml-common.h) and scalar helpers shared by the kernel files.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "ckernels.h"

#define QK 32      // legacy block size
#define QK_K 256   // K-quant super-block size

typedef uint16_t ck_half;

typedef struct { ck_half d; uint8_t qs[QK / 2]; } block_q4_0;
typedef struct { ck_half d, m; uint8_t qs[QK / 2]; } block_q4_1;
typedef struct { ck_half d; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_0;
typedef struct { ck_half d, m; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_1;
typedef struct { ck_half d; int8_t qs[QK]; } block_q8_0;
typedef struct { ck_half d, s; int8_t qs[QK]; } block_q8_1;   // s = d * sum(qs)
typedef struct { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; ck_half d, dmin; } block_q2_K;
typedef struct { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; ck_half d; } block_q3_K;
typedef struct { ck_half d, dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; } block_q4_K;
typedef struct { ck_half d, dmin; uint8_t scales[12]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; } block_q5_K;
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; ck_half d; } block_q6_K;
typedef struct { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; } block_q8_K;

_Static_assert(sizeof(block_q4_0) == 18, "q4_0");
_Static_assert(sizeof(block_q4_1) == 20, "q4_1");
_Static_assert(sizeof(block_q5_0) == 22, "q5_0");
_Static_assert(sizeof(block_q5_1) == 24, "q5_1");
_Static_assert(sizeof(block_q8_0) == 34, "q8_0");
_Static_assert(sizeof(block_q8_1) == 36, "q8_1");
_Static_assert(sizeof(block_q2_K) == 84, "q2_K");
_Static_assert(sizeof(block_q3_K) == 110, "q3_K");
_Static_assert(sizeof(block_q4_K) == 144, "q4_K");
_Static_assert(sizeof(block_q5_K) == 176, "q5_K");
_Static_assert(sizeof(block_q6_K) == 210, "q6_K");
_Static_assert(sizeof(block_q8_K) == 292, "q8_K");

/// IEEE binary16 -> binary32, exact (subnormals, inf, NaN).
static inline float ck_h2f(ck_half h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {
            float f = (float)mant * 5.9604644775390625e-8f;  // mant * 2^-24, exact
            memcpy(&bits, &f, 4);
            bits |= sign;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

/// binary32 -> binary16 with round-to-nearest-even (what F16C vcvtps2ph with imm 0 and numpy do).
static inline ck_half ck_f2h(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (ck_half)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));  // NaN stays quiet NaN
    if (ax >= 0x477ff000u) return (ck_half)(sign | 0x7c00u);                          // rounds to infinity
    if (ax < 0x38800000u) {                                                            // below 2^-14: subnormal
        float v;
        memcpy(&v, &ax, 4);
        v += 0.5f;  // ulp of [0.5, 1) is 2^-24 = the binary16 subnormal step; the add rounds to nearest even
        uint32_t b;
        memcpy(&b, &v, 4);
        return (ck_half)(sign | (b - 0x3f000000u));
    }
    ax += 0xc8000fffu + ((ax >> 13) & 1u);  // rebias exponent (-112 << 23) and round to nearest even
    return (ck_half)(sign | (ax >> 13));
}

/// bfloat16 -> binary32.
static inline float ck_bf2f(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

/// binary32 -> bfloat16, round to nearest even, NaN forced quiet (ggml_compute_fp32_to_bf16).
static inline uint16_t ck_f2bf(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64u);
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

/// ggml nearest_int: round half to even via the 1.5*2^23 trick (valid for |f| <= 4194303).
static inline int ck_nearest_int(float fval) {
    float val = fval + 12582912.f;
    int i;
    memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

/// 6-bit scale and min j (0..7) of a q4_K / q5_K super-block (ggml get_scale_min_k4).
static inline void ck_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/// The 16 signed 6-bit scales of a q3_K super-block, minus 32.
static inline void ck_q3k_scales(const uint8_t *s, int8_t out[16]) {
    for (int i = 0; i < 16; i++) {
        const int lo = i < 8 ? (s[i] & 0xF) : (s[i - 8] >> 4);
        const int hi = (s[8 + (i % 4)] >> (2 * (i / 4))) & 3;
        out[i] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

// Scalar reference entry points (ck_ref.c).
float ck_vec_dot_ref(int type, size_t n, const void *w, const void *x);
int ck_quantize_ref(int type, const float *src, void *dst, size_t n);
int ck_dequantize_ref(int type, const void *src, float *dst, size_t n);
/// Q8_0 dequantization with AVX-512 (ck_train.c): the same values as ck_dequantize_ref (int8 → f32 exact, one
/// multiply by the block scale). n % 32 == 0.
void ck_dequantize_q8_0_avx512(const void *src, float *dst, size_t n);

// Fast paths (ck_x86.c). Each returns 0 when it handled the call, -1 when the type has no fast path.
int ck_matmul_avx2(int type, int flags, size_t cols, const void *w, size_t w_stride, const void *w_batch, size_t r0,
                   size_t r1, const void *x, size_t x_stride, size_t nx, float *y, size_t ldy);
int ck_matmul_avx512(int type, int flags, size_t cols, const void *w, size_t w_stride, const void *w_batch, size_t r0,
                     size_t r1, const void *x, size_t x_stride, size_t nx, float *y, size_t ldy);
void ck_repack_avx2(int type, size_t cols, const void *w, size_t w_stride, size_t rows, void *out);

// Bytes per row of the batch layout of a legacy matrix with nb blocks per row (see ck_x86_body.h): the quants as
// bytes, then c_w and d_w padded to a multiple of 8 blocks. A multiple of 32.
static inline size_t ck_legacy_row_bytes(size_t nb) {
    return nb * 32 + 2 * ((nb + 7) & ~(size_t)7) * sizeof(float);
}
int ck_quantize_rows_avx2(int type, const float *src, size_t src_stride, void *dst, size_t dst_stride,
                          size_t rows, size_t cols);
