// Element-wise float kernels of the training ops (Sources/Train/Model/Ops.swift): exp, the exact GELU-tanh GLU
// forward/backward and the shifted-exp sums of a softmax. Every path computes bitwise the same result: the
// AVX-512 code and the scalar code run the same operations in the same order (fused multiply-adds as fmaf,
// 2^n scaling as VSCALEFPS / ldexpf, both exact or correctly rounded).
#include "ck_internal.h"
#include <math.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// exp(x): n = rint(x·log2 e), r = x − n·C1 − n·C2 (C1 + C2 = ln 2, C1 exact in 9 bits), degree-6 polynomial of
// Cephes expf (S. Moshier, Cephes Math Library), y·2^n. Max error ~1 ulp over the normal range; x < −104 gives 0,
// x > 89 gives +inf, NaN stays NaN.
#define CK_EXP_HI 89.0f
#define CK_EXP_LO -104.0f
#define CK_LOG2E 1.44269504088896341f
#define CK_C1 0.693359375f
#define CK_C2 -2.12194440e-4f
#define CK_P0 1.9875691500e-4f
#define CK_P1 1.3981999507e-3f
#define CK_P2 8.3334519073e-3f
#define CK_P3 4.1665795894e-2f
#define CK_P4 1.6666665459e-1f
#define CK_P5 5.0000001201e-1f

static inline float exp_scalar(float x) {
    if (x != x) return x;
    const float xc = x > CK_EXP_HI ? CK_EXP_HI : x < CK_EXP_LO ? CK_EXP_LO : x;
    const float n = rintf(xc * CK_LOG2E);
    float r = fmaf(-n, CK_C1, xc);
    r = fmaf(-n, CK_C2, r);
    float p = fmaf(CK_P0, r, CK_P1);
    p = fmaf(p, r, CK_P2);
    p = fmaf(p, r, CK_P3);
    p = fmaf(p, r, CK_P4);
    p = fmaf(p, r, CK_P5);
    const float r2 = r * r;
    const float y = fmaf(p, r2, r) + 1.0f;
    return ldexpf(y, (int)n);
}

#define CK_GELU_C 0.7978845608028654f  // √(2/π)
#define CK_GELU_K 0.044715f

/// σ(2z) of the GELU-tanh identity 0.5·(1 + tanh z) = σ(2z), z = √(2/π)(x + 0.044715x³).
static inline float gelu_s_scalar(float x) {
    const float x3 = x * x * x;
    const float z = fmaf(CK_GELU_K, x3, x);
    return 1.0f / (1.0f + exp_scalar(-2.0f * CK_GELU_C * z));
}

#if defined(__x86_64__)
#define CK_TRAIN_TARGET __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma")))

static inline __attribute__((always_inline)) CK_TRAIN_TARGET __m512 exp_v(__m512 x) {
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    const __m512 xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(CK_EXP_LO)), _mm512_set1_ps(CK_EXP_HI));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(CK_LOG2E)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(CK_C1), xc);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(CK_C2), r);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(CK_P0), r, _mm512_set1_ps(CK_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(CK_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(CK_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(CK_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(CK_P5));
    const __m512 r2 = _mm512_mul_ps(r, r);
    const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0f));
    return _mm512_mask_mov_ps(_mm512_scalef_ps(y, n), nan, x);
}

static inline __attribute__((always_inline)) CK_TRAIN_TARGET __m512 gelu_s_v(__m512 x) {
    const __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
    const __m512 z = _mm512_fmadd_ps(_mm512_set1_ps(CK_GELU_K), x3, x);
    const __m512 e = exp_v(_mm512_mul_ps(_mm512_set1_ps(-2.0f * CK_GELU_C), z));
    return _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

static CK_TRAIN_TARGET size_t exp_avx512(const float *x, float *y, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, exp_v(_mm512_loadu_ps(x + i)));
    return i;
}

static CK_TRAIN_TARGET size_t gelu_fwd_avx512(const float *g, const float *u, float *y, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 x = _mm512_loadu_ps(g + i);
        const __m512 s = gelu_s_v(x);
        _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_mul_ps(x, s), _mm512_loadu_ps(u + i)));
    }
    return i;
}

static CK_TRAIN_TARGET size_t gelu_bwd_avx512(const float *dy, const float *g, const float *u, float *dg, float *du,
                                              size_t n) {
    size_t i = 0;
    const __m512 one = _mm512_set1_ps(1.0f), c2 = _mm512_set1_ps(2.0f * CK_GELU_C),
                 k3 = _mm512_set1_ps(3.0f * CK_GELU_K);
    for (; i + 16 <= n; i += 16) {
        const __m512 x = _mm512_loadu_ps(g + i);
        const __m512 s = gelu_s_v(x);
        // act' = s + x·s·(1 − s)·2√(2/π)·(1 + 3·0.044715x²)
        const __m512 t = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(x, s), _mm512_sub_ps(one, s)), c2);
        const __m512 d = _mm512_fmadd_ps(t, _mm512_fmadd_ps(k3, _mm512_mul_ps(x, x), one), s);
        const __m512 dyi = _mm512_loadu_ps(dy + i);
        _mm512_storeu_ps(dg + i, _mm512_mul_ps(_mm512_mul_ps(dyi, _mm512_loadu_ps(u + i)), d));
        _mm512_storeu_ps(du + i, _mm512_mul_ps(_mm512_mul_ps(dyi, x), s));
    }
    return i;
}

/// exp(x − m) in place over the leading multiple of 16; *sum = the 16 lane sums added in lane order.
static CK_TRAIN_TARGET size_t exp_shift_avx512(float *x, size_t n, float m, float *sum) {
    size_t i = 0;
    const __m512 vm = _mm512_set1_ps(m);
    __m512 acc = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        const __m512 e = exp_v(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
        _mm512_storeu_ps(x + i, e);
        acc = _mm512_add_ps(acc, e);
    }
    float l[16];
    _mm512_storeu_ps(l, acc);
    float s = 0;
    for (int j = 0; j < 16; j++) s += l[j];
    *sum = s;
    return i;
}

static CK_TRAIN_TARGET float max_avx512(const float *x, size_t n, size_t *done) {
    __m512 m = _mm512_set1_ps(-INFINITY);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) m = _mm512_max_ps(_mm512_loadu_ps(x + i), m);  // a NaN in x keeps m
    *done = i;
    return _mm512_reduce_max_ps(m);
}

static CK_TRAIN_TARGET void dequant_q8_0_avx512(const void *src, float *y, size_t n) {
    const block_q8_0 *x = src;
    for (size_t i = 0; i < n / QK; i++, y += QK) {
        const __m512 d = _mm512_set1_ps(ck_h2f(x[i].d));
        const __m128i q0 = _mm_loadu_si128((const __m128i *)x[i].qs);
        const __m128i q1 = _mm_loadu_si128((const __m128i *)(x[i].qs + 16));
        _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)), d));
        _mm512_storeu_ps(y + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)), d));
    }
}

void ck_dequantize_q8_0_avx512(const void *src, float *y, size_t n) { dequant_q8_0_avx512(src, y, n); }
#endif

static int use_avx512(int path) { return path >= CK_PATH_AVX512 && ck_best_path() >= CK_PATH_AVX512; }

void ck_exp_f32_p(int path, const float *x, float *y, size_t n) {
    size_t i = 0;
#if defined(__x86_64__)
    if (use_avx512(path)) i = exp_avx512(x, y, n);
#endif
    for (; i < n; i++) y[i] = exp_scalar(x[i]);
}

void ck_gelu_tanh_glu_fwd_p(int path, const float *g, const float *u, float *y, size_t n) {
    size_t i = 0;
#if defined(__x86_64__)
    if (use_avx512(path)) i = gelu_fwd_avx512(g, u, y, n);
#endif
    for (; i < n; i++) {
        const float x = g[i];
        y[i] = x * gelu_s_scalar(x) * u[i];
    }
}

void ck_gelu_tanh_glu_bwd_p(int path, const float *dy, const float *g, const float *u, float *dg, float *du, size_t n) {
    size_t i = 0;
#if defined(__x86_64__)
    if (use_avx512(path)) i = gelu_bwd_avx512(dy, g, u, dg, du, n);
#endif
    for (; i < n; i++) {
        const float x = g[i], s = gelu_s_scalar(x);
        const float t = x * s * (1.0f - s) * (2.0f * CK_GELU_C);
        const float d = fmaf(t, fmaf(3.0f * CK_GELU_K, x * x, 1.0f), s);
        const float dyi = dy[i];
        dg[i] = dyi * u[i] * d;
        du[i] = dyi * x * s;
    }
}

float ck_max_f32_p(int path, const float *x, size_t n) {
    float m = -INFINITY;
    size_t i = 0;
#if defined(__x86_64__)
    if (use_avx512(path)) m = max_avx512(x, n, &i);
#endif
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

float ck_exp_shift_sum_p(int path, float *x, size_t n, float m) {
    // 16 lane sums (element i goes to lane i % 16 of the full chunks), added lane 0..15 in order, then the tail.
    float lanes[16] = {0};
    size_t i = 0;
#if defined(__x86_64__)
    if (use_avx512(path)) {
        float s = 0;
        i = exp_shift_avx512(x, n, m, &s);
        for (; i < n; i++) {
            x[i] = exp_scalar(x[i] - m);
            s += x[i];
        }
        return s;
    }
#endif
    for (; i + 16 <= n; i += 16) {
        for (int j = 0; j < 16; j++) {
            x[i + j] = exp_scalar(x[i + j] - m);
            lanes[j] += x[i + j];
        }
    }
    float s = 0;
    for (int j = 0; j < 16; j++) s += lanes[j];
    for (; i < n; i++) {
        x[i] = exp_scalar(x[i] - m);
        s += x[i];
    }
    return s;
}

void ck_exp_f32(const float *x, float *y, size_t n) { ck_exp_f32_p(ck_best_path(), x, y, n); }

void ck_gelu_tanh_glu_fwd(const float *g, const float *u, float *y, size_t n) { ck_gelu_tanh_glu_fwd_p(ck_best_path(), g, u, y, n); }

void ck_gelu_tanh_glu_bwd(const float *dy, const float *g, const float *u, float *dg, float *du, size_t n) { ck_gelu_tanh_glu_bwd_p(ck_best_path(), dy, g, u, dg, du, n); }

float ck_max_f32(const float *x, size_t n) { return ck_max_f32_p(ck_best_path(), x, n); }

float ck_exp_shift_sum(float *x, size_t n, float m) { return ck_exp_shift_sum_p(ck_best_path(), x, n, m); }
