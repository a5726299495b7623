// Element-wise activations for the forward pass: GELU (tanh form, via an f16-indexed table as in
// ggml's CPU backend), SiLU, softmax. See ck_activations.h for the sources of the math.
#include "ck_activations.h"
#include "ckernels.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

static float gelu_table[65536];
static pthread_once_t gelu_once = PTHREAD_ONCE_INIT;

static const double SQRT_2_OVER_PI = 0.79788456080286535587989211986876;
static const double GELU_COEF_A = 0.044715;

double ck_gelu_exact(double x) {
    return 0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)));
}

static float f16_bits_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {  // subnormal: normalise
            exp = 127 - 15 + 1;
            while ((man & 0x400) == 0) { man <<= 1; exp--; }
            man &= 0x3ff;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

// Round-to-nearest-even f32 -> f16 bits (IEEE 754 binary16), the same rounding as F16C's vcvtps2ph.
static uint16_t f32_to_f16_bits(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    const uint32_t sign = (x >> 16) & 0x8000;
    const uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0));
    if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);  // overflow after rounding
    if (absx < 0x38800000u) {                                   // subnormal or zero in f16
        if (absx < 0x33000000u) return (uint16_t)sign;
        const uint32_t e = absx >> 23;
        const uint32_t m = (absx & 0x7fffff) | 0x800000;
        const uint32_t shift = 126 - e;  // 14 + (113 - e)
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1);
        const uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = absx - 0x38000000u;  // rebias exponent 127 -> 15
    const uint32_t rem = r & 0x1fff;
    r >>= 13;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return (uint16_t)(sign | r);
}

static void gelu_table_init(void) {
    for (uint32_t i = 0; i < 65536; i++) {
        const float x = f16_bits_to_f32((uint16_t)i);
        // ggml stores the table in f16; keep that rounding so results match its CPU backend.
        gelu_table[i] = f16_bits_to_f32(f32_to_f16_bits((float)ck_gelu_exact((double)x)));
    }
}

static inline float gelu_lookup(float x) {
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x;
    return gelu_table[f32_to_f16_bits(x)];
}

#if defined(__x86_64__)
__attribute__((target("avx2,f16c,fma")))
static void gelu_mul_f16c(const float *g, const float *u, float *o, size_t n, int with_up) {
    size_t i = 0;
    const __m256 lo = _mm256_set1_ps(-10.0f), hi = _mm256_set1_ps(10.0f);
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT);
        const __m256i idx = _mm256_cvtepu16_epi32(h);
        __m256 y = _mm256_i32gather_ps(gelu_table, idx, 4);
        y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LE_OQ));
        y = _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, hi, _CMP_GE_OQ));
        if (with_up) y = _mm256_mul_ps(y, _mm256_loadu_ps(u + i));
        _mm256_storeu_ps(o + i, y);
    }
    for (; i < n; i++) o[i] = with_up ? gelu_lookup(g[i]) * u[i] : gelu_lookup(g[i]);
}
#endif

static void gelu_mul_any(const float *g, const float *u, float *o, size_t n, int with_up) {
    pthread_once(&gelu_once, gelu_table_init);
#if defined(__x86_64__)
    if (ck_best_path() >= CK_PATH_AVX2) {  // the lookup is exact: same table entries on every path
        gelu_mul_f16c(g, u, o, n, with_up);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++) o[i] = with_up ? gelu_lookup(g[i]) * u[i] : gelu_lookup(g[i]);
}

void ck_gelu_mul(const float *gate, const float *up, float *out, size_t n) { gelu_mul_any(gate, up, out, n, 1); }

void ck_gelu(const float *x, float *out, size_t n) { gelu_mul_any(x, NULL, out, n, 0); }

void ck_silu_mul(const float *gate, const float *up, float *out, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const float x = gate[i];
        out[i] = x / (1.0f + expf(-x)) * up[i];
    }
}

double ck_softmax(float *x, size_t n) {
    if (n == 0) return 0.0;
    float max = x[0];
    for (size_t i = 1; i < n; i++) max = x[i] > max ? x[i] : max;
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) {
        const float e = expf(x[i] - max);
        x[i] = e;
        sum += (double)e;
    }
    const float inv = (float)(1.0 / sum);
    for (size_t i = 0; i < n; i++) x[i] *= inv;
    return sum;
}
