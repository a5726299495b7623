// x86 fast paths: the tile kernels of ck_x86_body.h compiled for AVX2 (+FMA, F16C) and for AVX-512 VNNI.
#include "ck_internal.h"
#include <stdlib.h>
#include <math.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define CK_PASTE_(a, b) a##b
#define CK_PASTE(a, b) CK_PASTE_(a, b)

#ifndef CK_PF
#define CK_PF 4  // mat-vec prefetch distance, in row tiles
#endif
#define CK_RMAX_LEGACY 4
#define CK_CMAX_LEGACY 8
#define CK_RMAX_K 4
#define CK_CMAX_K 8

#define CK_TARGET "avx2,fma,f16c"
#define CK_SFX(name) CK_PASTE(name, _avx2)
#define CK_VNNI 0
#ifndef CK_RB_LEGACY_AVX2
#define CK_RB_LEGACY_AVX2 2
#endif
#ifndef CK_CB_LEGACY_AVX2
#define CK_CB_LEGACY_AVX2 4
#endif
#ifndef CK_RB_K_AVX2
#define CK_RB_K_AVX2 1
#endif
#ifndef CK_CB_K_AVX2
#define CK_CB_K_AVX2 4
#endif
#ifndef CK_RB_Q8_AVX2
#define CK_RB_Q8_AVX2 1
#endif
#ifndef CK_CB_Q8_AVX2
#define CK_CB_Q8_AVX2 8
#endif
#define CK_RB_Q8 CK_RB_Q8_AVX2
#define CK_CB_Q8 CK_CB_Q8_AVX2
#define CK_RB_LEGACY CK_RB_LEGACY_AVX2
#define CK_CB_LEGACY CK_CB_LEGACY_AVX2
#define CK_RB_K CK_RB_K_AVX2
#define CK_CB_K CK_CB_K_AVX2
#include "ck_x86_body.h"
#undef CK_TARGET
#undef CK_SFX
#undef CK_VNNI
#undef CK_RB_LEGACY
#undef CK_CB_LEGACY
#undef CK_RB_K
#undef CK_CB_K
#undef CK_RB_Q8
#undef CK_CB_Q8

#define CK_TARGET "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c,tune=znver4"
#define CK_SFX(name) CK_PASTE(name, _avx512)
#define CK_VNNI 1
#define CK_RB_LEGACY 4
#define CK_CB_LEGACY 4
#define CK_RB_K 2
#define CK_CB_K 4
#define CK_RB_Q8 2
#define CK_CB_Q8 8
#include "ck_x86_body.h"

int ck_matmul_avx2(int type, int flags, size_t cols, const void *w, size_t w_stride, const void *w_batch, size_t r0,
                   size_t r1, const void *x, size_t x_stride, size_t nx, float *y, size_t ldy) {
    return ck_matmul_impl_avx2(type, flags, cols, w, w_stride, w_batch, r0, r1, x, x_stride, nx, y, ldy);
}

void ck_repack_avx2(int type, size_t cols, const void *w, size_t w_stride, size_t rows, void *out) {
    repack_legacy_avx2(type, cols, w, w_stride, rows, out);
}

int ck_matmul_avx512(int type, int flags, size_t cols, const void *w, size_t w_stride, const void *w_batch, size_t r0,
                     size_t r1, const void *x, size_t x_stride, size_t nx, float *y, size_t ldy) {
    return ck_matmul_impl_avx512(type, flags, cols, w, w_stride, w_batch, r0, r1, x, x_stride, nx, y, ldy);
}
// ------------------------------------------------------------------------------------------------------------
// Activation quantization (q8_0, q8_1, q8_K): byte-identical to the reference quantizers in ck_ref.c.
// ------------------------------------------------------------------------------------------------------------
#define CK_T2 __attribute__((target("avx2,fma,f16c")))

CK_T2 static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

// roundf (half away from zero) of 8 floats, |v| < 2^23.
CK_T2 static inline __m256i round_away8(__m256 v) {
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 frac = _mm256_sub_ps(v, t);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 ge = _mm256_cmp_ps(_mm256_and_ps(frac, absmask), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    const __m256 one = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_andnot_ps(absmask, v));  // copysign(1, v)
    return _mm256_cvttps_epi32(_mm256_add_ps(t, _mm256_and_ps(ge, one)));
}

// 32 int32 (4 vectors) -> 32 int8 in order.
CK_T2 static inline __m256i pack32(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
    const __m256i v = _mm256_packs_epi16(ab, cd);
    return _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

CK_T2 static void quantize_q8_0_avx2(const float *x, uint8_t *y, size_t nb, int with_sum) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const size_t bsize = with_sum ? sizeof(block_q8_1) : sizeof(block_q8_0);
    for (size_t i = 0; i < nb; i++, x += QK, y += bsize) {
        const __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8), v2 = _mm256_loadu_ps(x + 16),
                     v3 = _mm256_loadu_ps(x + 24);
        const __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v0, absmask), _mm256_and_ps(v1, absmask)),
                                       _mm256_max_ps(_mm256_and_ps(v2, absmask), _mm256_and_ps(v3, absmask)));
        const float amax = hmax8(m);
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        const __m256 vid = _mm256_set1_ps(id);
        const __m256i q0 = round_away8(_mm256_mul_ps(v0, vid)), q1 = round_away8(_mm256_mul_ps(v1, vid));
        const __m256i q2 = round_away8(_mm256_mul_ps(v2, vid)), q3 = round_away8(_mm256_mul_ps(v3, vid));
        const ck_half dh = ck_f2h(d);
        memcpy(y, &dh, 2);
        _mm256_storeu_si256((__m256i *)(y + (with_sum ? 4 : 2)), pack32(q0, q1, q2, q3));
        if (with_sum) {
            __m256i s = _mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3));
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
            const int sum = _mm_cvtsi128_si32(s4);
            const ck_half sh = ck_f2h(sum * d);
            memcpy(y + 2, &sh, 2);
        }
    }
}

CK_T2 static void quantize_q8_K_avx2(const float *x, block_q8_K *y, size_t nb) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (size_t i = 0; i < nb; i++, x += QK_K) {
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < QK_K; j += 8) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + j), absmask));
        const float amax = hmax8(m);
        if (!amax) {
            memset(&y[i], 0, sizeof(block_q8_K));
            continue;
        }
        float max = 0;
        for (int j = 0; j < QK_K; j++) {
            if (fabsf(x[j]) == amax) { max = x[j]; break; }
        }
        const float iscale = -127.f / max;
        const __m256 vs = _mm256_set1_ps(iscale);
        const __m256i lim = _mm256_set1_epi32(127);
        for (int j = 0; j < QK_K; j += 32) {
            __m256i q[4];
            for (int k = 0; k < 4; k++) {
                const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + j + 8 * k), vs);
                q[k] = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)), lim);
            }
            _mm256_storeu_si256((__m256i *)(y[i].qs + j), pack32(q[0], q[1], q[2], q[3]));
            // bsums of the two groups of 16 in this chunk
            const __m256i s01 = _mm256_add_epi32(q[0], q[1]), s23 = _mm256_add_epi32(q[2], q[3]);
            const __m256i h = _mm256_hadd_epi32(s01, s23);          // [a0+a1 a2+a3 b0+b1 b2+b3 | a4+a5 ...]
            const __m256i h2 = _mm256_hadd_epi32(h, h);             // [A03 B03 A03 B03 | A47 B47 ...]
            const int g0 = _mm256_extract_epi32(h2, 0) + _mm256_extract_epi32(h2, 4);
            const int g1 = _mm256_extract_epi32(h2, 1) + _mm256_extract_epi32(h2, 5);
            y[i].bsums[j / 16] = (int16_t)g0;
            y[i].bsums[j / 16 + 1] = (int16_t)g1;
        }
        y[i].d = 1 / iscale;
    }
}

int ck_quantize_rows_avx2(int type, const float *src, size_t src_stride, void *dst, size_t dst_stride,
                          size_t rows, size_t cols) {
    uint8_t *d = dst;
    switch (type) {
    case CK_Q8_0:
    case CK_Q8_1:
        if (cols % QK) return -1;
        for (size_t j = 0; j < rows; j++) quantize_q8_0_avx2(src + j * src_stride, d + j * dst_stride, cols / QK, type == CK_Q8_1);
        return 0;
    case CK_Q8_K:
        if (cols % QK_K) return -1;
        for (size_t j = 0; j < rows; j++) quantize_q8_K_avx2(src + j * src_stride, (block_q8_K *)(d + j * dst_stride), cols / QK_K);
        return 0;
    case CK_F16:
        for (size_t j = 0; j < rows; j++) ck_f32_to_f16(src + j * src_stride, (uint16_t *)(d + j * dst_stride), cols);
        return 0;
    default:
        return -1;
    }
}

#endif
