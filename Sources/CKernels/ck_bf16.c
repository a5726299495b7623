// bf16 GEMM with f32 accumulation for the training mode `TrainingPrecision.bf16` (LEARNING-DECISIONS #1).
//
// C[m, n] = alpha · A[m, k] · Bᵀ + beta · C, with A bf16 row-major and B packed by ck_bf16_pack. The numbers are
// those of AVX512_BF16 VDPBF16PS (Intel SDM vol. 2, "VDPBF16PS"): per output element, for each pair of k indices
// (2p, 2p+1), acc += a[2p+1]·b[2p+1] then acc += a[2p]·b[2p], each product exact in f32 (8-bit × 8-bit
// significands) and each add rounded to nearest even; bf16 inputs that are denormal read as zero and a denormal
// sum is flushed to zero. The SIMD kernel keeps that order per element, so it equals the scalar reference
// (ck_gemm_bf16_ref) bit for bit.
#include "ck_internal.h"
#include <math.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

// MARK: - Conversion and packing (portable C)

/// f32 -> bf16, round to nearest even; NaN stays a quiet NaN; f32 denormals become a signed zero (as VCVTNE2PS2BF16).
static inline uint16_t f2bf(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
    if (ax < 0x00800000u) return (uint16_t)((x >> 16) & 0x8000u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

/// bf16 -> f32 with denormals read as zero (the DAZ of VDPBF16PS).
static inline float bf2f_daz(uint16_t h) {
    uint32_t x = (uint32_t)h << 16;
    if ((x & 0x7f800000u) == 0) x &= 0x80000000u;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static inline float ftz(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7f800000u) == 0) x &= 0x80000000u;
    memcpy(&f, &x, 4);
    return f;
}

uint16_t ck_f32_to_bf16(float f) { return f2bf(f); }

void ck_bf16_convert_rows(const float *src, size_t lds, size_t rows, size_t cols, uint16_t *dst, size_t ldd) {
    const size_t kp = (cols + 1) & ~(size_t)1;
    for (size_t r = 0; r < rows; r++) {
        const float *s = src + r * lds;
        uint16_t *d = dst + r * ldd;
        for (size_t i = 0; i < cols; i++) d[i] = f2bf(s[i]);
        for (size_t i = cols; i < kp; i++) d[i] = 0;
    }
}

size_t ck_bf16_packed_count(size_t n, size_t k) {
    return ((n + 15) / 16) * 16 * ((k + 1) & ~(size_t)1);
}

void ck_bf16_pack(const float *src, size_t rs, size_t cs, size_t n, size_t k, uint16_t *dst) {
    const size_t kp = (k + 1) / 2, panels = (n + 15) / 16;
    for (size_t pn = 0; pn < panels; pn++) {
        uint16_t *d = dst + pn * kp * 32;
        for (size_t j = 0; j < 16; j++) {
            const size_t col = pn * 16 + j;
            for (size_t p = 0; p < kp; p++) {
                const size_t k0 = 2 * p, k1 = 2 * p + 1;
                d[p * 32 + 2 * j] = col < n ? f2bf(src[col * rs + k0 * cs]) : 0;
                d[p * 32 + 2 * j + 1] = col < n && k1 < k ? f2bf(src[col * rs + k1 * cs]) : 0;
            }
        }
    }
}

// MARK: - Reference

/// The value VDPBF16PS gives one output element over `kp` pairs (a: bf16 row; b: the element's packed column).
static float dot_ref(const uint16_t *a, const uint16_t *bcol, size_t kp) {
    float acc = 0;
    for (size_t p = 0; p < kp; p++) {
        acc = ftz(acc + bf2f_daz(a[2 * p + 1]) * bf2f_daz(bcol[p * 32 + 1]));
        acc = ftz(acc + bf2f_daz(a[2 * p]) * bf2f_daz(bcol[p * 32]));
    }
    return acc;
}

static void gemm_ref(size_t m, size_t n0, size_t n1, size_t k, const uint16_t *a, size_t lda, const uint16_t *bp,
                     float alpha, float beta, float *c, size_t ldc) {
    const size_t kp = (k + 1) / 2;
    for (size_t i = 0; i < m; i++) {
        for (size_t j = n0; j < n1; j++) {
            const uint16_t *bcol = bp + (j / 16) * kp * 32 + 2 * (j % 16);
            const float acc = dot_ref(a + i * lda, bcol, kp);
            float *cij = c + i * ldc + j;
            *cij = beta == 0 ? alpha * acc : fmaf(beta, *cij, alpha * acc);
        }
    }
}

int ck_gemm_bf16_ref(size_t m, size_t n0, size_t n1, size_t k, const uint16_t *a, size_t lda, const uint16_t *bp,
                     float alpha, float beta, float *c, size_t ldc) {
    if (n0 % 16 != 0 || n1 < n0) return -1;
    gemm_ref(m, n0, n1, k, a, lda, bp, alpha, beta, c, ldc);
    return 0;
}

// MARK: - AVX512_BF16

#if defined(__x86_64__)
#define CK_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define CK_MR 12   // rows per register tile (12 × 2 accumulators of 16 floats)
#define CK_MC 96   // rows per cache block: 96 × k bf16 of A stay in L2 while the panels stream by

/// One tile: rows [0, MR) of `a` against one or two 16-column panels, over kp pairs; writes C.
static inline __attribute__((always_inline)) CK_BF16_TARGET void
tile_bf16(const int MR, const int NP, size_t kp, const uint16_t *a, size_t lda, const uint16_t *b0,
          const uint16_t *b1, float alpha, float beta, float *c, size_t ldc, __mmask16 mk0, __mmask16 mk1) {
    __m512 acc[CK_MR][2];
    for (int r = 0; r < MR; r++) {
        acc[r][0] = _mm512_setzero_ps();
        acc[r][1] = _mm512_setzero_ps();
    }
    for (size_t p = 0; p < kp; p++) {
        const __m512bh v0 = (__m512bh)_mm512_loadu_si512(b0 + p * 32);
        const __m512bh v1 = NP == 2 ? (__m512bh)_mm512_loadu_si512(b1 + p * 32) : v0;
        for (int r = 0; r < MR; r++) {
            int32_t pair;
            memcpy(&pair, a + r * lda + 2 * p, 4);
            const __m512bh va = (__m512bh)_mm512_set1_epi32(pair);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], va, v0);
            if (NP == 2) acc[r][1] = _mm512_dpbf16_ps(acc[r][1], va, v1);
        }
    }
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int r = 0; r < MR; r++) {
        float *cr = c + r * ldc;
        for (int h = 0; h < NP; h++) {
            const __mmask16 mk = h == 0 ? mk0 : mk1;
            const __m512 s = _mm512_mul_ps(va, acc[r][h]);
            __m512 out = s;
            if (beta != 0) out = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(mk, cr + 16 * h), s);
            _mm512_mask_storeu_ps(cr + 16 * h, mk, out);
        }
    }
}

#define CK_TILE_CASE(R)                                                                                            \
    case R:                                                                                                        \
        if (np == 2) tile_bf16(R, 2, kp, a, lda, b0, b1, alpha, beta, c, ldc, mk0, mk1);                           \
        else tile_bf16(R, 1, kp, a, lda, b0, b0, alpha, beta, c, ldc, mk0, mk1);                                   \
        break;

static CK_BF16_TARGET void tile_any(int mr, int np, size_t kp, const uint16_t *a, size_t lda, const uint16_t *b0,
                                    const uint16_t *b1, float alpha, float beta, float *c, size_t ldc,
                                    __mmask16 mk0, __mmask16 mk1) {
    switch (mr) {
        CK_TILE_CASE(1) CK_TILE_CASE(2) CK_TILE_CASE(3) CK_TILE_CASE(4) CK_TILE_CASE(5) CK_TILE_CASE(6)
        CK_TILE_CASE(7) CK_TILE_CASE(8) CK_TILE_CASE(9) CK_TILE_CASE(10) CK_TILE_CASE(11) CK_TILE_CASE(12)
    default: break;
    }
}

static CK_BF16_TARGET void gemm_avx512bf16(size_t m, size_t n0, size_t n1, size_t k, const uint16_t *a, size_t lda,
                                           const uint16_t *bp, float alpha, float beta, float *c, size_t ldc) {
    const size_t kp = (k + 1) / 2;
    for (size_t i0 = 0; i0 < m; i0 += CK_MC) {
        const size_t i1 = i0 + CK_MC < m ? i0 + CK_MC : m;
        for (size_t j = n0; j < n1; j += 32) {
            const size_t w = n1 - j < 32 ? n1 - j : 32;
            const int np = w > 16 ? 2 : 1;
            const __mmask16 mk0 = w >= 16 ? 0xffff : (__mmask16)((1u << w) - 1);
            const __mmask16 mk1 = w >= 32 ? 0xffff : w > 16 ? (__mmask16)((1u << (w - 16)) - 1) : 0;
            const uint16_t *b0 = bp + (j / 16) * kp * 32, *b1 = b0 + kp * 32;
            for (size_t i = i0; i < i1; i += CK_MR) {
                const int mr = (int)(i1 - i < CK_MR ? i1 - i : CK_MR);
                tile_any(mr, np, kp, a + i * lda, lda, b0, b1, alpha, beta, c + i * ldc + j, ldc, mk0, mk1);
            }
        }
    }
}
#endif

int ck_bf16_hw_usable(const ck_cpu_state *s, uint32_t leaf7_1_eax) {
    // AVX512_BF16 is CPUID.(7,1):EAX bit 5; it needs the AVX-512 path (F/BW/VL and the ZMM state in XCR0).
    return ck_path_for(s) >= CK_PATH_AVX512 && (leaf7_1_eax & (1u << 5)) != 0;
}

static int g_bf16 = -1;

int ck_bf16_available(void) {
    int v = __atomic_load_n(&g_bf16, __ATOMIC_RELAXED);
    if (v < 0) {
        v = 0;
#if defined(__x86_64__)
        ck_cpu_state s;
        ck_cpu_detect(&s);
        uint32_t eax = 0;
        if (__get_cpuid_max(0, NULL) >= 7) {
            unsigned a, b, c, d;
            __cpuid_count(7, 1, a, b, c, d);
            eax = a;
        }
        v = ck_bf16_hw_usable(&s, eax) && ck_best_path() >= CK_PATH_AVX512;
#endif
        __atomic_store_n(&g_bf16, v, __ATOMIC_RELAXED);
    }
    return v;
}

int ck_gemm_bf16(size_t m, size_t n0, size_t n1, size_t k, const uint16_t *a, size_t lda, const uint16_t *bp,
                 float alpha, float beta, float *c, size_t ldc) {
    if (n0 % 16 != 0 || n1 < n0) return -1;
    if (m == 0 || n1 == n0) return 0;
#if defined(__x86_64__)
    if (ck_bf16_available()) {
        gemm_avx512bf16(m, n0, n1, k, a, lda, bp, alpha, beta, c, ldc);
        return 0;
    }
#endif
    gemm_ref(m, n0, n1, k, a, lda, bp, alpha, beta, c, ldc);
    return 1;
}
