// Element-wise activation kernels used by the forward pass. Source of the math:
// GELU tanh approximation, Hendrycks & Gimpel 2016 (arXiv:1606.08415), evaluated through a
// 65536-entry table indexed by the f16 bits of the input as ggml does (ggml-cpu vec.h,
// ggml_vec_gelu_f32 with GGML_GELU_FP16); SiLU x*sigmoid(x) (Elfwing et al. 2017).
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// out[i] = gelu_tanh(gate[i]) * up[i] for i < n. gelu(x) is read from a table of f16-rounded inputs
/// for -10 < x < 10 (0 below, x above), matching ggml's CPU backend. out may alias gate or up.
void ck_gelu_mul(const float *gate, const float *up, float *out, size_t n);
/// out[i] = gelu_tanh(x[i]) (same table as ck_gelu_mul).
void ck_gelu(const float *x, float *out, size_t n);
/// The exact gelu_tanh(x) in double precision, for tests.
double ck_gelu_exact(double x);
/// out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i]. out may alias gate or up.
void ck_silu_mul(const float *gate, const float *up, float *out, size_t n);
/// In-place softmax over x[0..<n] (max-subtracted, sum in double). Returns the sum of exponentials.
double ck_softmax(float *x, size_t n);

#ifdef __cplusplus
}
#endif
