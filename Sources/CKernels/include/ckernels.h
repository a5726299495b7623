// CKernels: quantized tensor kernels for lorad.
//
// Block formats, dequantization and the reference quantizers follow ggml (ggml/src/ggml-common.h,
// ggml/src/ggml-quants.c). Type ids are ggml's `enum ggml_type` values, as stored in GGUF.
//
// Fused dot products pair each weight type with ggml's "vec_dot type" for the activations:
//   q4_0, q5_0, q8_0 -> q8_0      q4_1, q5_1 -> q8_1      q2_K..q6_K -> q8_K
//   f16 -> f16                    bf16 -> bf16            f32 -> f32
// Integer products inside a block are exact; the float accumulation order of the fast paths is fixed per
// (weight row, activation row) pair, so a result never depends on the batch it was computed in.
//
// Every fast path is selected at run time (CPUID and the OS-enabled state in XCR0): AVX-512 (F/BW/VL/VNNI), AVX2
// (+FMA, F16C), or portable C.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// ggml type ids handled here.
enum {
    CK_F32 = 0, CK_F16 = 1, CK_Q4_0 = 2, CK_Q4_1 = 3, CK_Q5_0 = 6, CK_Q5_1 = 7, CK_Q8_0 = 8, CK_Q8_1 = 9,
    CK_Q2_K = 10, CK_Q3_K = 11, CK_Q4_K = 12, CK_Q5_K = 13, CK_Q6_K = 14, CK_Q8_K = 15, CK_BF16 = 30,
};

/// Kernel implementation levels. CK_PATH_REFERENCE is the plain scalar C reference (always available).
enum {
    CK_PATH_REFERENCE = 0,
    CK_PATH_AVX2 = 1,
    CK_PATH_AVX512 = 2,
};

/// Elements per block (1 for f32/f16/bf16), or 0 for an unknown type.
size_t ck_block_size(int type);
/// Bytes per block, or 0 for an unknown type.
size_t ck_type_size(int type);
/// The activation type the fused dot of `type` consumes (see above), or -1 when `type` is not a weight type.
int ck_vec_dot_type(int type);

/// What the path decision reads: CPUID words and the register state the OS enabled.
typedef struct {
    uint32_t leaf1_ecx;   ///< CPUID.1:ECX (FMA 12, OSXSAVE 27, AVX 28, F16C 29)
    uint32_t leaf7_ebx;   ///< CPUID.(7,0):EBX (AVX2 5, AVX512F 16, AVX512BW 30, AVX512VL 31)
    uint32_t leaf7_ecx;   ///< CPUID.(7,0):ECX (AVX512_VNNI 11)
    uint32_t leaf7_edx;   ///< CPUID.(7,0):EDX (AMX-TILE 24, AMX-INT8 25)
    uint64_t xcr0;        ///< XGETBV(0) when OSXSAVE is set, else 0
    int amx_permitted;    ///< Linux granted XFEATURE_XTILEDATA (arch_prctl ARCH_REQ_XCOMP_PERM / ARCH_GET_XCOMP_PERM)
} ck_cpu_state;

/// XCR0 bits: SSE + YMM (AVX state), those + opmask + ZMM_Hi256 + Hi16_ZMM (AVX-512 state), XTILECFG + XTILEDATA.
#define CK_XCR0_YMM 0x6ull
#define CK_XCR0_ZMM 0xe6ull
#define CK_XCR0_TILE 0x60000ull

/// The fastest path a CPU in state `s` can run (pure; no environment cap). A path needs both its CPUID feature
/// bits and the OS-enabled register state in XCR0 (Intel SDM vol. 1, 13.3 and 15.2): AVX2 = AVX2 + FMA + F16C +
/// AVX + OSXSAVE and XCR0 SSE|YMM; AVX-512 = that + AVX-512 F/BW/VL/VNNI and XCR0 opmask|ZMM_Hi256|Hi16_ZMM.
int ck_path_for(const ck_cpu_state *s);
/// 1 when AMX tiles may be used in state `s` (AMX-TILE + AMX-INT8, XCR0 XTILECFG|XTILEDATA, OSXSAVE, and the
/// Linux permission), else 0. lorad has no AMX kernel; this is what one would have to check.
int ck_amx_usable(const ck_cpu_state *s);
/// Reads this CPU's state (CPUID, XGETBV when OSXSAVE is set; on Linux asks for the AMX permission only when CPUID
/// and XCR0 offer AMX). Zeroes on other architectures.
void ck_cpu_detect(ck_cpu_state *out);

/// The best path this CPU supports (ck_path_for of ck_cpu_detect), capped by the environment variable
/// LORAD_KERNELS (reference|avx2|avx512) when it is set. Detected once.
int ck_best_path(void);
/// 1 if `path` can run on this CPU.
int ck_path_available(int path);

/// The widest x86 vector class this CPU and OS both enable, for choosing OpenBLAS's kernel set
/// (`OPENBLAS_CORETYPE`): 2 = AVX-512 F/BW/VL/DQ (OpenBLAS "SkylakeX"), 1 = AVX2 + FMA ("Haswell"), 0 = neither
/// or not x86. Not capped by LORAD_KERNELS. (`__builtin_cpu_supports` checks XGETBV, i.e. OS support.)
int ck_cpu_vector_class(void);

/// Dequantize `n` elements (n % block size == 0). Returns 0, or -1 for an unsupported type / bad n.
/// Value for value equal to ggml's dequantize_row_* (and the gguf Python package).
int ck_dequantize(int type, const void *src, float *dst, size_t n);

/// Reference quantization of `n` elements (ggml quantize_row_*_ref semantics), every type above.
/// Returns 0, or -1 for an unsupported type / bad n.
int ck_quantize(int type, const float *src, void *dst, size_t n);

/// Fused dot product of one weight row (`type`, n elements) and one activation row already quantized to
/// ck_vec_dot_type(type). `path` picks the implementation (CK_PATH_REFERENCE = scalar reference); an
/// unavailable path falls back to the best available one below it. Returns NAN for an unsupported type.
float ck_vec_dot(int path, int type, size_t n, const void *w, const void *x);

/// y[j*ldy + r] = dot(W_r, X_j) for weight rows r in [r0, r1) and activation rows j in [0, nx).
/// W_r starts at w + r*w_stride; X_j (already in ck_vec_dot_type(type)) at x + j*x_stride; each row has
/// `cols` elements. Every weight row is read once per block of activation rows (tiles in registers).
/// The value for (r, j) is bitwise the same whatever nx, r0, r1 and the other rows are, and the same for
/// CK_PATH_AVX2 and CK_PATH_AVX512. Returns 0, or -1 for an unsupported type.
int ck_matmul(int path, int type, size_t cols,
              const void *w, size_t w_stride, size_t r0, size_t r1,
              const void *x, size_t x_stride, size_t nx,
              float *y, size_t ldy);

/// Flags of ck_matmul_ex.
enum {
    /// The output projection (logits): q8_0 weights use the packed accumulation (4 pairs share one convert and FMA
    /// per block; about 20% faster in batches). Still bitwise independent of nx, r0, r1 and ISA, but rounded
    /// differently from ck_matmul, so a matrix must always be used with the same flags. Other types ignore it.
    CK_MATMUL_LOGITS = 1,
};

/// ck_matmul with `flags` (CK_MATMUL_*) and, optionally, the matrix's batch copy `w_batch` (from ck_repack of the
/// same w, or NULL): batches of activation rows then read it instead of decoding weight blocks per call. Results
/// are bitwise the same with or without it.
int ck_matmul_ex(int path, int type, int flags, size_t cols,
                 const void *w, size_t w_stride, const void *w_batch, size_t r0, size_t r1,
                 const void *x, size_t x_stride, size_t nx,
                 float *y, size_t ldy);

/// Bytes of the batch copy of a `rows` x `cols` matrix of `type`, or 0 when the type has none (only q4_0, q5_0,
/// q4_1 and q5_1 with a SIMD path have one: their quants as bytes plus float scales, ~2.3x the q5_0 size for
/// rows of 640).
size_t ck_repack_bytes(int type, size_t rows, size_t cols);
/// Writes the batch copy of rows [0, rows) of w (row stride w_stride bytes) to out (32-byte aligned,
/// ck_repack_bytes bytes). Returns 0, or -1 when the type has no batch copy.
int ck_repack(int type, size_t cols, const void *w, size_t w_stride, size_t rows, void *out);

/// Quantize `rows` float rows of `cols` elements (row stride `src_stride` floats) into `type`, writing row j
/// at dst + j*dst_stride. Fast path for q8_0 / q8_1 / q8_K / f16 / bf16 with results identical to ck_quantize.
int ck_quantize_rows(int type, const float *src, size_t src_stride, void *dst, size_t dst_stride,
                     size_t rows, size_t cols);

// Float helpers for attention and the KV cache. Every path (scalar, AVX2, AVX-512) computes bitwise the same
// result: the AVX2 arithmetic below, with every product-sum a fused multiply-add (fmaf in the scalar path).
//   dot(a, b, n): four 8-lane accumulators s0..s3; chunk c of 32 elements adds a[32c+8k+l]*b[..] into sk lane l;
//     then 8-element chunks into s0; v = (s0 + s1) + (s2 + s3); t_l = v_l + v_(l+4); r = (t0 + t2) + (t1 + t3);
//     the last n % 8 products are added to r one by one, in order.
//   axpy(a, x, y, n): y[i] = fma(a, x[i], y[i]), elementwise (no summation order).
// The `_p` forms take a path (CK_PATH_*; clamped to ck_best_path()); the others use ck_best_path().
/// sum_i a[i]*b[i]
float ck_dot_f32(const float *a, const float *b, size_t n);
float ck_dot_f32_p(int path, const float *a, const float *b, size_t n);
/// sum_i a[i]*half(b[i])
float ck_dot_f32_f16(const float *a, const uint16_t *b, size_t n);
float ck_dot_f32_f16_p(int path, const float *a, const uint16_t *b, size_t n);
/// y[i] += a*x[i]
void ck_axpy_f32(float a, const float *x, float *y, size_t n);
void ck_axpy_f32_p(int path, float a, const float *x, float *y, size_t n);
/// y[i] += a*half(x[i])
void ck_axpy_f16(float a, const uint16_t *x, float *y, size_t n);
void ck_axpy_f16_p(int path, float a, const uint16_t *x, float *y, size_t n);
/// out[h] = ck_dot_f32_f16(a + h*a_stride, b, n) for h < na, bitwise, converting b once for the heads
/// (grouped-query attention: the query heads of a group against one f16 key row).
void ck_dot_f32_f16_heads(const float *a, size_t a_stride, size_t na, const uint16_t *b, size_t n, float *out);
void ck_dot_f32_f16_heads_p(int path, const float *a, size_t a_stride, size_t na, const uint16_t *b, size_t n,
                            float *out);
/// ck_axpy_f16(alpha[h], x, y + h*y_stride, n) for h < na, bitwise, converting x once (one f16 value row
/// into the outputs of a group's query heads).
void ck_axpy_f16_heads(const float *alpha, size_t na, const uint16_t *x, float *y, size_t y_stride, size_t n);
void ck_axpy_f16_heads_p(int path, const float *alpha, size_t na, const uint16_t *x, float *y, size_t y_stride,
                         size_t n);
/// IEEE binary16, round to nearest even.
void ck_f32_to_f16(const float *src, uint16_t *dst, size_t n);
void ck_f32_to_f16_p(int path, const float *src, uint16_t *dst, size_t n);
void ck_f16_to_f32(const uint16_t *src, float *dst, size_t n);
void ck_f16_to_f32_p(int path, const uint16_t *src, float *dst, size_t n);

// bf16 GEMM with f32 accumulation (ck_bf16.c), for the bf16 training mode. Numbers of AVX512_BF16 VDPBF16PS: per
// output element and pair of k indices (2p, 2p+1), acc += a[2p+1]*b[2p+1] then acc += a[2p]*b[2p] (products exact
// in f32, each add rounded to nearest even), k pairs in increasing order from acc = 0; bf16 denormal inputs read as
// zero, denormal sums flush to zero; then c = alpha*acc (beta == 0, C not read) or fma(beta, c, alpha*acc).
// The AVX512_BF16 kernel and the scalar reference give the same bits. Math: Intel SDM vol. 2, VDPBF16PS;
// Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep Learning Training" (arXiv:1905.12322).
/// f32 -> bf16, round to nearest even (NaN stays NaN; f32 denormals become a signed zero, as VCVTNE2PS2BF16).
uint16_t ck_f32_to_bf16(float f);
/// Rows of f32 `src [rows, cols]` (row stride lds floats) to bf16 `dst [rows, ldd]` (ldd >= cols rounded up to
/// even); an odd `cols` gets one zero of padding.
void ck_bf16_convert_rows(const float *src, size_t lds, size_t rows, size_t cols, uint16_t *dst, size_t ldd);
/// bf16 elements of the packed form of an `n` x `k` operand: 16-column panels, k padded to even.
size_t ck_bf16_packed_count(size_t n, size_t k);
/// Packs B (element (j, kk), j < n columns of C, kk < k, at src[j*rs + kk*cs]) to bf16 panels
/// `[ceil(n/16)][ceil(k/2)][16][2]`, zero padded. rs = k, cs = 1 packs a row-major W `[n, k]` (x·Wᵀ);
/// rs = 1, cs = n packs a row-major W `[k, n]` (dy·W).
void ck_bf16_pack(const float *src, size_t rs, size_t cs, size_t n, size_t k, uint16_t *dst);
/// C[i, j] for i < m, n0 <= j < n1: `a` bf16 `[m, lda]` (lda even, k padded to even), `bp` from ck_bf16_pack,
/// c f32 `[m, ldc]`. n0 must be a multiple of 16. Returns 0 (AVX512_BF16 kernel), 1 (scalar reference: same
/// numbers, no bf16 hardware), -1 (bad n0/n1).
int ck_gemm_bf16(size_t m, size_t n0, size_t n1, size_t k, const uint16_t *a, size_t lda, const uint16_t *bp,
                 float alpha, float beta, float *c, size_t ldc);
/// The scalar reference of ck_gemm_bf16 (always this path). Returns 0, or -1 for bad n0/n1.
int ck_gemm_bf16_ref(size_t m, size_t n0, size_t n1, size_t k, const uint16_t *a, size_t lda, const uint16_t *bp,
                     float alpha, float beta, float *c, size_t ldc);
/// 1 when a CPU in state `s` with CPUID.(7,1):EAX = `leaf7_1_eax` can run the AVX512_BF16 kernel (AVX512_BF16
/// bit 5 and the AVX-512 path of ck_path_for, which includes the OS-enabled ZMM state in XCR0), else 0.
int ck_bf16_hw_usable(const ck_cpu_state *s, uint32_t leaf7_1_eax);
/// ck_bf16_hw_usable for this CPU, and not capped below avx512 by LORAD_KERNELS. Detected once.
int ck_bf16_available(void);

// Float kernels of the training ops (ck_train.c). The AVX-512 and scalar paths give the same bits (the same
// operations in the same order, fmaf for fused multiply-adds).
/// y[i] = exp(x[i]): Cephes expf's range reduction and degree-6 polynomial, then y·2^n; ~1 ulp on the normal
/// range, 0 below −104, +inf above 89, NaN stays NaN. y may alias x.
void ck_exp_f32(const float *x, float *y, size_t n);
/// Exact GELU-tanh GLU (PyTorch gelu(approximate="tanh")): y[i] = g[i]·s·u[i], s = σ(2z) = 0.5·(1 + tanh z),
/// z = √(2/π)(g + 0.044715g³) (Hendrycks & Gimpel 2016), with ck_f32 exp.
void ck_gelu_tanh_glu_fwd(const float *g, const float *u, float *y, size_t n);
/// Its backward: dg = dy·u·act'(g), act' = s + g·s·(1 − s)·2√(2/π)(1 + 3·0.044715g²); du = dy·g·s.
void ck_gelu_tanh_glu_bwd(const float *dy, const float *g, const float *u, float *dg, float *du, size_t n);
/// max_i x[i] (−inf for n = 0; NaNs are skipped).
float ck_max_f32(const float *x, size_t n);
/// x[i] = exp(x[i] − m) in place (ck_exp_f32), and returns their sum in f32: 16 lane sums (element i of the
/// leading multiple of 16 into lane i % 16) added in lane order, then the remaining elements one by one.
float ck_exp_shift_sum(float *x, size_t n, float m);
// The same with a path (CK_PATH_*; AVX-512 when the path and the CPU allow it, else scalar), for tests.
void ck_exp_f32_p(int path, const float *x, float *y, size_t n);
void ck_gelu_tanh_glu_fwd_p(int path, const float *g, const float *u, float *y, size_t n);
void ck_gelu_tanh_glu_bwd_p(int path, const float *dy, const float *g, const float *u, float *dg, float *du, size_t n);
float ck_max_f32_p(int path, const float *x, size_t n);
float ck_exp_shift_sum_p(int path, float *x, size_t n, float m);

#ifdef __cplusplus
}
#endif
