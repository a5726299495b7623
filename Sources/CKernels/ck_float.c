// Float helpers for attention and the KV cache: dot products, axpy, f16 <-> f32 conversion.
// AVX-512 and AVX2 (+FMA, F16C) paths picked at run time, scalar fallback; all three compute bitwise the same
// values (the canonical order is described in ckernels.h).
#include "ck_internal.h"
#include <math.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define CK_T_AVX2 __attribute__((target("avx2,fma,f16c")))
#define CK_T_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c,tune=znver4")))

CK_T_AVX2 static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

CK_T_AVX2 static float dot_f32_avx2(const float *a, const float *b, size_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++) s = fmaf(a[i], b[i], s);
    return s;
}

CK_T_AVX2 static float dot_f32_f16_avx2(const float *a, const uint16_t *b, size_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i))), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i + 8))), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i + 16))), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i + 24))), s3);
    }
    for (; i + 8 <= n; i += 8) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i))), s0);
    }
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++) s = fmaf(a[i], ck_h2f(b[i]), s);
    return s;
}

CK_T_AVX2 static void axpy_f32_avx2(float a, const float *x, float *y, size_t n) {
    const __m256 va = _mm256_set1_ps(a);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
        _mm256_storeu_ps(y + i + 8, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8)));
    }
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}

CK_T_AVX2 static void axpy_f16_avx2(float a, const uint16_t *x, float *y, size_t n) {
    const __m256 va = _mm256_set1_ps(a);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 vx = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)));
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, vx, _mm256_loadu_ps(y + i)));
    }
    for (; i < n; i++) y[i] = fmaf(a, ck_h2f(x[i]), y[i]);
}

// Two heads against one f16 row: each head's arithmetic is exactly dot_f32_f16_avx2's; the row is converted once.
CK_T_AVX2 static void dot2_f32_f16_avx2(const float *a, const float *c, const uint16_t *b, size_t n, float *out) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    __m256 t0 = _mm256_setzero_ps(), t1 = _mm256_setzero_ps(), t2 = _mm256_setzero_ps(), t3 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m256 b0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i)));
        const __m256 b1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i + 8)));
        const __m256 b2 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i + 16)));
        const __m256 b3 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i + 24)));
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), b0, s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), b1, s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), b2, s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), b3, s3);
        t0 = _mm256_fmadd_ps(_mm256_loadu_ps(c + i), b0, t0);
        t1 = _mm256_fmadd_ps(_mm256_loadu_ps(c + i + 8), b1, t1);
        t2 = _mm256_fmadd_ps(_mm256_loadu_ps(c + i + 16), b2, t2);
        t3 = _mm256_fmadd_ps(_mm256_loadu_ps(c + i + 24), b3, t3);
    }
    for (; i + 8 <= n; i += 8) {
        const __m256 b0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i)));
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), b0, s0);
        t0 = _mm256_fmadd_ps(_mm256_loadu_ps(c + i), b0, t0);
    }
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    float t = hsum256(_mm256_add_ps(_mm256_add_ps(t0, t1), _mm256_add_ps(t2, t3)));
    for (; i < n; i++) {
        const float bi = ck_h2f(b[i]);
        s = fmaf(a[i], bi, s);
        t = fmaf(c[i], bi, t);
    }
    out[0] = s;
    out[1] = t;
}

// y_h += alpha[h] * x for na heads: each head's arithmetic is exactly axpy_f16_avx2's; x is converted once.
CK_T_AVX2 static void axpy_f16_heads_avx2(const float *alpha, size_t na, const uint16_t *x, float *y, size_t ys, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 vx = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)));
        for (size_t h = 0; h < na; h++) {
            float *yh = y + h * ys + i;
            _mm256_storeu_ps(yh, _mm256_fmadd_ps(_mm256_set1_ps(alpha[h]), vx, _mm256_loadu_ps(yh)));
        }
    }
    for (; i < n; i++) {
        const float xi = ck_h2f(x[i]);
        for (size_t h = 0; h < na; h++) y[h * ys + i] = fmaf(alpha[h], xi, y[h * ys + i]);
    }
}

CK_T_AVX2 static void f32_to_f16_avx2(const float *src, uint16_t *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i < n; i++) dst[i] = ck_f2h(src[i]);
}

CK_T_AVX2 static void f16_to_f32_avx2(const uint16_t *src, float *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = ck_h2f(src[i]);
}

// AVX-512: the canonical order with s0|s1 and s2|s3 held in two 16-lane registers (lane-wise the same FMAs).
CK_T_AVX512 static inline __m256 lo256(__m512 z) { return _mm512_castps512_ps256(z); }
CK_T_AVX512 static inline __m256 hi256(__m512 z) {
    return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z), 1));
}
// ((s0 + s1) + (s2 + s3)) summed horizontally, as the AVX2 functions do.
CK_T_AVX512 static inline float finish512(__m512 z01, __m512 z23) {
    return hsum256(_mm256_add_ps(_mm256_add_ps(lo256(z01), hi256(z01)), _mm256_add_ps(lo256(z23), hi256(z23))));
}
// z01 with its low 8 lanes (s0) replaced.
CK_T_AVX512 static inline __m512 with_lo(__m512 z01, __m256 s0) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(z01), _mm256_castps_pd(s0), 0));
}

CK_T_AVX512 static float dot_f32_avx512(const float *a, const float *b, size_t n) {
    __m512 z01 = _mm512_setzero_ps(), z23 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        z01 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), z01);
        z23 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), z23);
    }
    for (; i + 8 <= n; i += 8)
        z01 = with_lo(z01, _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), lo256(z01)));
    float s = finish512(z01, z23);
    for (; i < n; i++) s = fmaf(a[i], b[i], s);
    return s;
}

CK_T_AVX512 static float dot_f32_f16_avx512(const float *a, const uint16_t *b, size_t n) {
    __m512 z01 = _mm512_setzero_ps(), z23 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        z01 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(b + i))), z01);
        z23 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16),
                              _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(b + i + 16))), z23);
    }
    for (; i + 8 <= n; i += 8) {
        const __m256 vb = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i)));
        z01 = with_lo(z01, _mm256_fmadd_ps(_mm256_loadu_ps(a + i), vb, lo256(z01)));
    }
    float s = finish512(z01, z23);
    for (; i < n; i++) s = fmaf(a[i], ck_h2f(b[i]), s);
    return s;
}

// axpy is elementwise: y[i] = fma(a, x[i], y[i]) whatever the vector width (masked tail).
CK_T_AVX512 static void axpy_f32_avx512(float a, const float *x, float *y, size_t n) {
    const __m512 va = _mm512_set1_ps(a);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

CK_T_AVX512 static void axpy_f16_avx512(float a, const uint16_t *x, float *y, size_t n) {
    const __m512 va = _mm512_set1_ps(a);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 vx = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + i)));
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, vx, _mm512_loadu_ps(y + i)));
    }
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        const __m512 vx = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, x + i));
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, vx, _mm512_maskz_loadu_ps(m, y + i)));
    }
}
// y_h += alpha[h] * x for na heads, x converted once per 16 elements (elementwise fma: the same bits as AVX2).
CK_T_AVX512 static void axpy_f16_heads_avx512(const float *alpha, size_t na, const uint16_t *x, float *y, size_t ys,
                                              size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 vx = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + i)));
        for (size_t h = 0; h < na; h++) {
            float *yh = y + h * ys + i;
            _mm512_storeu_ps(yh, _mm512_fmadd_ps(_mm512_set1_ps(alpha[h]), vx, _mm512_loadu_ps(yh)));
        }
    }
    if (i < n)
        for (size_t h = 0; h < na; h++) axpy_f16_avx512(alpha[h], x + i, y + h * ys + i, n - i);
}
#endif

// Scalar path: the canonical order written out (fmaf is exact fused multiply-add: an instruction where the
// target has FMA, a correctly rounded libm call elsewhere).
#define CK_DOT_CANON(NAME, BT, LOADB)                                                                      \
    static float NAME(const float *a, const BT *b, size_t n) {                                             \
        float s[4][8];                                                                                     \
        memset(s, 0, sizeof s);                                                                            \
        size_t i = 0;                                                                                      \
        for (; i + 32 <= n; i += 32)                                                                       \
            for (int k = 0; k < 4; k++)                                                                    \
                for (int l = 0; l < 8; l++) s[k][l] = fmaf(a[i + 8 * k + l], LOADB(b[i + 8 * k + l]), s[k][l]); \
        for (; i + 8 <= n; i += 8)                                                                         \
            for (int l = 0; l < 8; l++) s[0][l] = fmaf(a[i + l], LOADB(b[i + l]), s[0][l]);               \
        float v[8];                                                                                        \
        for (int l = 0; l < 8; l++) v[l] = (s[0][l] + s[1][l]) + (s[2][l] + s[3][l]);                     \
        float r = ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));                      \
        for (; i < n; i++) r = fmaf(a[i], LOADB(b[i]), r);                                                 \
        return r;                                                                                          \
    }
#define CK_ID(v) (v)
CK_DOT_CANON(dot_f32_ref, float, CK_ID)
CK_DOT_CANON(dot_f32_f16_ref, uint16_t, ck_h2f)
#undef CK_DOT_CANON
#undef CK_ID

static int fpath(int path) {
    const int best = ck_best_path();
    return path < CK_PATH_REFERENCE ? CK_PATH_REFERENCE : (path > best ? best : path);
}

float ck_dot_f32_p(int path, const float *a, const float *b, size_t n) {
#if defined(__x86_64__)
    const int p = fpath(path);
    if (p >= CK_PATH_AVX512) return dot_f32_avx512(a, b, n);
    if (p >= CK_PATH_AVX2) return dot_f32_avx2(a, b, n);
#endif
    (void)path;
    return dot_f32_ref(a, b, n);
}

float ck_dot_f32_f16_p(int path, const float *a, const uint16_t *b, size_t n) {
#if defined(__x86_64__)
    const int p = fpath(path);
    if (p >= CK_PATH_AVX512) return dot_f32_f16_avx512(a, b, n);
    if (p >= CK_PATH_AVX2) return dot_f32_f16_avx2(a, b, n);
#endif
    (void)path;
    return dot_f32_f16_ref(a, b, n);
}

void ck_axpy_f32_p(int path, float a, const float *x, float *y, size_t n) {
#if defined(__x86_64__)
    const int p = fpath(path);
    if (p >= CK_PATH_AVX512) { axpy_f32_avx512(a, x, y, n); return; }
    if (p >= CK_PATH_AVX2) { axpy_f32_avx2(a, x, y, n); return; }
#endif
    (void)path;
    for (size_t i = 0; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}

void ck_axpy_f16_p(int path, float a, const uint16_t *x, float *y, size_t n) {
#if defined(__x86_64__)
    const int p = fpath(path);
    if (p >= CK_PATH_AVX512) { axpy_f16_avx512(a, x, y, n); return; }
    if (p >= CK_PATH_AVX2) { axpy_f16_avx2(a, x, y, n); return; }
#endif
    (void)path;
    for (size_t i = 0; i < n; i++) y[i] = fmaf(a, ck_h2f(x[i]), y[i]);
}

// Heads: the two-head AVX2 dot gives bitwise the single-head results (and is faster here than per-head AVX-512),
// so the AVX-512 path uses it too.
void ck_dot_f32_f16_heads_p(int path, const float *a, size_t a_stride, size_t na, const uint16_t *b, size_t n,
                            float *out) {
    size_t h = 0;
#if defined(__x86_64__)
    if (fpath(path) >= CK_PATH_AVX2)
        for (; h + 2 <= na; h += 2) dot2_f32_f16_avx2(a + h * a_stride, a + (h + 1) * a_stride, b, n, out + h);
#endif
    for (; h < na; h++) out[h] = ck_dot_f32_f16_p(path, a + h * a_stride, b, n);
}

void ck_axpy_f16_heads_p(int path, const float *alpha, size_t na, const uint16_t *x, float *y, size_t y_stride,
                         size_t n) {
#if defined(__x86_64__)
    const int p = fpath(path);
    if (p >= CK_PATH_AVX512) {
        axpy_f16_heads_avx512(alpha, na, x, y, y_stride, n);
        return;
    }
    if (p >= CK_PATH_AVX2) {
        axpy_f16_heads_avx2(alpha, na, x, y, y_stride, n);
        return;
    }
#endif
    for (size_t h = 0; h < na; h++) ck_axpy_f16_p(path, alpha[h], x, y + h * y_stride, n);
}

void ck_f32_to_f16_p(int path, const float *src, uint16_t *dst, size_t n) {
#if defined(__x86_64__)
    if (fpath(path) >= CK_PATH_AVX2) { f32_to_f16_avx2(src, dst, n); return; }
#endif
    (void)path;
    for (size_t i = 0; i < n; i++) dst[i] = ck_f2h(src[i]);
}

void ck_f16_to_f32_p(int path, const uint16_t *src, float *dst, size_t n) {
#if defined(__x86_64__)
    if (fpath(path) >= CK_PATH_AVX2) { f16_to_f32_avx2(src, dst, n); return; }
#endif
    (void)path;
    for (size_t i = 0; i < n; i++) dst[i] = ck_h2f(src[i]);
}

float ck_dot_f32(const float *a, const float *b, size_t n) { return ck_dot_f32_p(ck_best_path(), a, b, n); }
float ck_dot_f32_f16(const float *a, const uint16_t *b, size_t n) { return ck_dot_f32_f16_p(ck_best_path(), a, b, n); }
void ck_axpy_f32(float a, const float *x, float *y, size_t n) { ck_axpy_f32_p(ck_best_path(), a, x, y, n); }
void ck_axpy_f16(float a, const uint16_t *x, float *y, size_t n) { ck_axpy_f16_p(ck_best_path(), a, x, y, n); }
void ck_dot_f32_f16_heads(const float *a, size_t a_stride, size_t na, const uint16_t *b, size_t n, float *out) {
    ck_dot_f32_f16_heads_p(ck_best_path(), a, a_stride, na, b, n, out);
}
void ck_axpy_f16_heads(const float *alpha, size_t na, const uint16_t *x, float *y, size_t y_stride, size_t n) {
    ck_axpy_f16_heads_p(ck_best_path(), alpha, na, x, y, y_stride, n);
}
void ck_f32_to_f16(const float *src, uint16_t *dst, size_t n) { ck_f32_to_f16_p(ck_best_path(), src, dst, n); }
void ck_f16_to_f32(const uint16_t *src, float *dst, size_t n) { ck_f16_to_f32_p(ck_best_path(), src, dst, n); }
