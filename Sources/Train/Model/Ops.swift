// The ops of the training forward pass, each with its backward right below it (llm.c style, train_gpt2.c).
// All arithmetic is float32 over dequantized weights (LEARNING-DECISIONS #1): quantized matrices are dequantized
// into f32 scratch and multiplied with cblas_sgemm (OpenBLAS, one thread per call; the trainer's own pool splits
// the work). Row-major throughout; T rows of a packed batch (see Train.swift for the glossary).
//
// The ops are package-visible so Tests/TrainTests can check them. Every backward here is checked by central differences in Tests/TrainTests/OpGradientTests.swift.
import CKernels
import COpenBLAS
import Foundation
import Runtime

/// Floats owned by one training call, zero-initialised.
final class TrainBuffer {
    let p: UnsafeMutablePointer<Float>
    let count: Int
    init(_ count: Int) {
        self.count = count
        p = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
        p.initialize(repeating: 0, count: max(count, 1))
    }
    deinit { p.deallocate() }
    func zero() { p.update(repeating: 0, count: count) }
}

// MARK: - GEMM split over the pool

/// `C[m, n] = alpha · op(A)[m, k] · op(B)[k, n] + beta · C`, row-major (cblas_sgemm), split over the pool's
/// threads along the larger of `m` and `n` when the product is big enough; each piece is one single-threaded
/// OpenBLAS call, so results do not depend on OpenBLAS's own thread count.
package func gemm(_ pool: ComputePool, transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
          _ a: UnsafePointer<Float>, lda: Int, _ b: UnsafePointer<Float>, ldb: Int, beta: Float,
          _ c: UnsafeMutablePointer<Float>, ldc: Int) {
    guard m > 0, n > 0 else { return }
    let ta = transA ? CblasTrans : CblasNoTrans
    let tb = transB ? CblasTrans : CblasNoTrans
    if k == 0 {
        for i in 0..<m { for j in 0..<n { c[i * ldc + j] *= beta } }
        return
    }
    let threads = pool.threads
    if threads == 1 || m * n * k < 1 << 18 {
        cblas_sgemm(CblasRowMajor, ta, tb, Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta,
                    c, Int32(ldc))
        return
    }
    if m >= n {
        let parts = min(threads, max(1, m / 16))
        pool.parallelFor(parts) { t in
            let i0 = t * m / parts, i1 = (t + 1) * m / parts
            guard i1 > i0 else { return }
            let ap = transA ? a + i0 : a + i0 * lda
            cblas_sgemm(CblasRowMajor, ta, tb, Int32(i1 - i0), Int32(n), Int32(k), alpha, ap, Int32(lda), b,
                        Int32(ldb), beta, c + i0 * ldc, Int32(ldc))
        }
    } else {
        let parts = min(threads, max(1, n / 16))
        pool.parallelFor(parts) { t in
            let j0 = t * n / parts, j1 = (t + 1) * n / parts
            guard j1 > j0 else { return }
            let bp = transB ? b + j0 * ldb : b + j0
            cblas_sgemm(CblasRowMajor, ta, tb, Int32(m), Int32(j1 - j0), Int32(k), alpha, a, Int32(lda), bp,
                        Int32(ldb), beta, c + j0, Int32(ldc))
        }
    }
}

/// Runs `body(r0, r1)` over `rows` split into contiguous ranges across the pool (one range when small).
package func parallelRows(_ pool: ComputePool, _ rows: Int, work: Int, _ body: (Int, Int) -> Void) {
    let parts = pool.threads > 1 && rows * work >= 1 << 15 ? min(rows, pool.threads * 2) : 1
    if parts <= 1 { body(0, rows); return }
    pool.parallelFor(parts) { t in
        let r0 = t * rows / parts, r1 = (t + 1) * rows / parts
        if r1 > r0 { body(r0, r1) }
    }
}

/// Dequantizes all of `w` (`[rows, cols]`) into `dst` (values as `Quant.dequantize`, exact for every type).
package func dequantizeMatrix(_ pool: ComputePool, _ w: WeightMatrix, into dst: UnsafeMutablePointer<Float>) {
    parallelRows(pool, w.rows, work: w.cols) { r0, r1 in
        Quant.dequantize(w.type, w.data + r0 * w.rowBytes, count: (r1 - r0) * w.cols, into: dst + r0 * w.cols)
    }
}

// MARK: - Linear (frozen base + LoRA)

/// One LoRA module as the forward/backward reads it: pointers into the flat parameter and gradient buffers.
package struct LoRATerm {
    /// lora_A `[r, n_in]`.
    let a: UnsafeMutablePointer<Float>
    /// lora_B `[n_out, r]`.
    let b: UnsafeMutablePointer<Float>
    /// ∂loss/∂lora_A, accumulated (nil when no gradient is wanted).
    let dA: UnsafeMutablePointer<Float>?
    /// ∂loss/∂lora_B, accumulated.
    let dB: UnsafeMutablePointer<Float>?
    let rank: Int
    /// alpha/r (or alpha/√r).
    package let scale: Float

    package init(a: UnsafeMutablePointer<Float>, b: UnsafeMutablePointer<Float>, dA: UnsafeMutablePointer<Float>?,
                 dB: UnsafeMutablePointer<Float>?, rank: Int, scale: Float) {
        self.a = a; self.b = b; self.dA = dA; self.dB = dB; self.rank = rank; self.scale = scale
    }
}

/// `y[T, n_out] = x[T, n_in] · Wᵀ + s · (x·Aᵀ)·Bᵀ`; saves `t = x·Aᵀ [T, r]` for the backward.
/// `wf` is the dequantized `W [n_out, n_in]`. Math: Hu et al. 2021 (arXiv:2106.09685).
package func linearForward(_ pool: ComputePool, wf: UnsafePointer<Float>, nIn: Int, nOut: Int, x: UnsafePointer<Float>,
                   rows T: Int, y: UnsafeMutablePointer<Float>, lora: LoRATerm?, t: UnsafeMutablePointer<Float>?) {
    var t0 = TrainProfile.start()
    gemm(pool, transA: false, transB: true, m: T, n: nOut, k: nIn, alpha: 1, x, lda: nIn, wf, ldb: nIn, beta: 0,
         y, ldc: nOut)
    TrainProfile.add(.frozen, since: t0)
    guard let lora, let t else { return }
    t0 = TrainProfile.start()
    defer { TrainProfile.add(.lora, since: t0) }
    let r = lora.rank
    gemm(pool, transA: false, transB: true, m: T, n: r, k: nIn, alpha: 1, x, lda: nIn, lora.a, ldb: nIn, beta: 0,
         t, ldc: r)
    gemm(pool, transA: false, transB: true, m: T, n: nOut, k: r, alpha: lora.scale, t, lda: r, lora.b, ldb: r,
         beta: 1, y, ldc: nOut)
}

/// Backward of `linearForward`. The frozen W gives only `dx = dy·W`; LoRA adds `dB += s·dyᵀ·t`,
/// `dA += (s·dy·B)ᵀ·x` and `dx += (s·dy·B)·A`. `dx` is overwritten unless `accumulate`. `dt` is scratch `[T, r]`.
package func linearBackward(_ pool: ComputePool, wf: UnsafePointer<Float>, nIn: Int, nOut: Int,
                    dy: UnsafePointer<Float>, x: UnsafePointer<Float>, rows T: Int,
                    dx: UnsafeMutablePointer<Float>, accumulate: Bool,
                    lora: LoRATerm?, t: UnsafePointer<Float>?, dt: UnsafeMutablePointer<Float>) {
    var t0 = TrainProfile.start()
    gemm(pool, transA: false, transB: false, m: T, n: nIn, k: nOut, alpha: 1, dy, lda: nOut, wf, ldb: nIn,
         beta: accumulate ? 1 : 0, dx, ldc: nIn)
    TrainProfile.add(.frozen, since: t0)
    guard let lora, let t else { return }
    t0 = TrainProfile.start()
    defer { TrainProfile.add(.lora, since: t0) }
    let r = lora.rank
    if let dB = lora.dB {
        gemm(pool, transA: true, transB: false, m: nOut, n: r, k: T, alpha: lora.scale, dy, lda: nOut, t, ldb: r,
             beta: 1, dB, ldc: r)
    }
    gemm(pool, transA: false, transB: false, m: T, n: r, k: nOut, alpha: lora.scale, dy, lda: nOut, lora.b, ldb: r,
         beta: 0, dt, ldc: r)
    if let dA = lora.dA {
        gemm(pool, transA: true, transB: false, m: r, n: nIn, k: T, alpha: 1, dt, lda: r, x, ldb: nIn, beta: 1,
             dA, ldc: nIn)
    }
    gemm(pool, transA: false, transB: false, m: T, n: nIn, k: r, alpha: 1, dt, lda: r, lora.a, ldb: nIn, beta: 1,
         dx, ldc: nIn)
}

// MARK: - RMSNorm

/// `y[r] = x[r] · rstd[r] · w`, `rstd[r] = 1/√(mean(x[r]²) + eps)`, as serving's `rmsNorm` computes it (sum of
/// squares in double). Gemma GGUF gains already include the +1 and are used as stored. `y` may alias `x`.
/// Math: Zhang & Sennrich 2019 (arXiv:1910.07467). Shapes: x, y `[rows, width]`, w `[width]`, rstd `[rows]`.
package func rmsnormForward(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>?, _ y: UnsafeMutablePointer<Float>,
                    rstd: UnsafeMutablePointer<Float>, rows: Int, width: Int, eps: Float) {
    for r in 0..<rows {
        let xr = x + r * width, yr = y + r * width
        var sum: Double = 0
        for i in 0..<width { sum += Double(xr[i] * xr[i]) }
        let mean = Float(sum / Double(width))
        let s = 1 / (mean + eps).squareRoot()
        rstd[r] = s
        if let w { for i in 0..<width { yr[i] = xr[i] * s * w[i] } } else { for i in 0..<width { yr[i] = xr[i] * s } }
    }
}

/// Backward of `rmsnormForward`: with `g = w ∘ dy`, `dx = rstd·g − x·rstd³·(x·g)/width`. Overwrites `dx` unless
/// `accumulate`; `dx` may alias `dy` when not accumulating.
package func rmsnormBackward(_ dy: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>?,
                     rstd: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, rows: Int, width: Int,
                     accumulate: Bool) {
    for r in 0..<rows {
        let dyr = dy + r * width, xr = x + r * width, dxr = dx + r * width
        let s = rstd[r]
        var dot: Double = 0
        if let w { for i in 0..<width { dot += Double(xr[i] * w[i] * dyr[i]) } } else {
            for i in 0..<width { dot += Double(xr[i] * dyr[i]) }
        }
        let c = Float(dot) * s * s * s / Float(width)
        for i in 0..<width {
            let g = (w?[i] ?? 1) * dyr[i]
            let v = s * g - xr[i] * c
            dxr[i] = accumulate ? dxr[i] + v : v
        }
    }
}

/// `rmsnormForward` over rows split across the pool.
package func rmsnormForward(_ pool: ComputePool, _ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>?,
                    _ y: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>, rows: Int, width: Int,
                    eps: Float) {
    parallelRows(pool, rows, work: width) { r0, r1 in
        rmsnormForward(x + r0 * width, w, y + r0 * width, rstd: rstd + r0, rows: r1 - r0, width: width, eps: eps)
    }
}

/// `rmsnormBackward` over rows split across the pool.
package func rmsnormBackward(_ pool: ComputePool, _ dy: UnsafePointer<Float>, _ x: UnsafePointer<Float>,
                     _ w: UnsafePointer<Float>?, rstd: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
                     rows: Int, width: Int, accumulate: Bool) {
    parallelRows(pool, rows, work: width) { r0, r1 in
        rmsnormBackward(dy + r0 * width, x + r0 * width, w, rstd: rstd + r0, dx + r0 * width, rows: r1 - r0,
                        width: width, accumulate: accumulate)
    }
}

// MARK: - RoPE

/// cos/sin of the RoPE angles for positions `0..<positions`, `[positions, rope_dims/2]` each:
/// theta_i = p/scale · base^(-2i/n_dims) (divided by the Llama 3 frequency factor when given), evaluated in double
/// and rounded once. Serving (`RopeAngles`, as ggml) builds the angles by repeated float multiplication, whose error
/// grows with the position (~2e-4 rad at 700); the reference trainers (PyTorch) do not, and the gradients of long
/// sequences follow them more closely this way. Math: Su et al. 2021 (arXiv:2104.09864).
package struct RopeTable {
    let half: Int
    let cos: [Float]
    let sin: [Float]

    package init(positions: Int, base: Float, dims: Int, scale: Float, freqFactors: [Float]?) {
        half = dims / 2
        var c = [Float](), s = [Float]()
        c.reserveCapacity(positions * half)
        s.reserveCapacity(positions * half)
        let inv = (0..<half).map { i -> Double in
            let f = Foundation.pow(Double(base), -2 * Double(i) / Double(dims))
            return freqFactors.map { f / Double($0[i]) } ?? f
        }
        for p in 0..<positions {
            for i in 0..<half {
                let t = Double(p) / Double(scale) * inv[i]
                c.append(Float(Foundation.cos(t)))
                s.append(Float(Foundation.sin(t)))
            }
        }
        cos = c
        sin = s
    }
}

/// Rotates the first `rope_dims` values of each of `heads` head vectors per row, in place; row `i` of `x`
/// (`[rows, rowStride]`) is at position `positions[i]`. `inverse` rotates by −θ: the backward of the rotation
/// (its transpose). `.neox` pairs (i, i + rope_dims/2) (Hugging Face `rotate_half`), `.normal` pairs (2i, 2i+1).
package func ropeApply(_ x: UnsafeMutablePointer<Float>, rows: Int, rowStride: Int, heads: Int, headDim: Int,
               positions: UnsafePointer<Int32>, table: RopeTable, style: RopeStyle, inverse: Bool) {
    let half = table.half
    let sign: Float = inverse ? -1 : 1
    table.cos.withUnsafeBufferPointer { cp in
        table.sin.withUnsafeBufferPointer { sp in
            for r in 0..<rows {
                let base = Int(positions[r]) * half
                let c = cp.baseAddress! + base, s = sp.baseAddress! + base
                for h in 0..<heads {
                    let v = x + r * rowStride + h * headDim
                    switch style {
                    case .neox:
                        for i in 0..<half {
                            let x0 = v[i], x1 = v[i + half], si = sign * s[i]
                            v[i] = x0 * c[i] - x1 * si
                            v[i + half] = x0 * si + x1 * c[i]
                        }
                    case .normal:
                        for i in 0..<half {
                            let x0 = v[2 * i], x1 = v[2 * i + 1], si = sign * s[i]
                            v[2 * i] = x0 * c[i] - x1 * si
                            v[2 * i + 1] = x0 * si + x1 * c[i]
                        }
                    }
                }
            }
        }
    }
}

/// RoPE forward (in place). See `ropeApply`.
package func ropeForward(_ x: UnsafeMutablePointer<Float>, rows: Int, rowStride: Int, heads: Int, headDim: Int,
                 positions: UnsafePointer<Int32>, table: RopeTable, style: RopeStyle) {
    ropeApply(x, rows: rows, rowStride: rowStride, heads: heads, headDim: headDim, positions: positions,
              table: table, style: style, inverse: false)
}

/// RoPE backward (in place on the gradient): the rotation is orthogonal, so dx = R(−θ)·dy.
package func ropeBackward(_ dx: UnsafeMutablePointer<Float>, rows: Int, rowStride: Int, heads: Int, headDim: Int,
                  positions: UnsafePointer<Int32>, table: RopeTable, style: RopeStyle) {
    ropeApply(dx, rows: rows, rowStride: rowStride, heads: heads, headDim: headDim, positions: positions,
              table: table, style: style, inverse: true)
}

// MARK: - Gated feed-forward activation

/// `y = act(g) · u` element-wise. GELU is the tanh form `0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))` evaluated
/// exactly (PyTorch `gelu(approximate="tanh")`, Hendrycks & Gimpel 2016), not serving's f16 table, through the
/// identity `0.5·(1 + tanh(z)) = σ(2z)`: `gelu(x) = x·σ(2z)` (one expf, no cancellation); SiLU is `x·σ(x)`
/// (Elfwing et al. 2017). GELU runs in `ck_gelu_tanh_glu_fwd` (CKernels, SIMD exp, same bits on every path).
package func gluForward(_ g: UnsafePointer<Float>, _ u: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                count: Int, activation: FFNActivation) {
    switch activation {
    case .geluTanh:
        ck_gelu_tanh_glu_fwd(g, u, y, count)
    case .silu:
        for i in 0..<count {
            let x = g[i]
            y[i] = x / (1 + expf(-x)) * u[i]
        }
    }
}

/// Backward of `gluForward`: `dg = dy·u·act'(g)`, `du = dy·act(g)` (both overwritten). For GELU with
/// `s = σ(2z)`, `z = √(2/π)(x + 0.044715x³)`: `act' = s + x·s·(1 − s)·2·√(2/π)(1 + 3·0.044715x²)`
/// (`ck_gelu_tanh_glu_bwd`).
package func gluBackward(_ dy: UnsafePointer<Float>, _ g: UnsafePointer<Float>, _ u: UnsafePointer<Float>,
                 dg: UnsafeMutablePointer<Float>, du: UnsafeMutablePointer<Float>, count: Int,
                 activation: FFNActivation) {
    switch activation {
    case .geluTanh:
        ck_gelu_tanh_glu_bwd(dy, g, u, dg, du, count)
    case .silu:
        for i in 0..<count {
            let x = g[i]
            let s = 1 / (1 + expf(-x))
            let dyi = dy[i]
            dg[i] = dyi * u[i] * s * (1 + x * (1 - s))
            du[i] = dyi * x * s
        }
    }
}

/// `gluForward` split across the pool.
package func gluForward(_ pool: ComputePool, _ g: UnsafePointer<Float>, _ u: UnsafePointer<Float>,
                _ y: UnsafeMutablePointer<Float>, count: Int, activation: FFNActivation) {
    parallelRows(pool, count, work: 1) { a, b in gluForward(g + a, u + a, y + a, count: b - a, activation: activation) }
}

/// `gluBackward` split across the pool.
package func gluBackward(_ pool: ComputePool, _ dy: UnsafePointer<Float>, _ g: UnsafePointer<Float>,
                 _ u: UnsafePointer<Float>, dg: UnsafeMutablePointer<Float>, du: UnsafeMutablePointer<Float>,
                 count: Int, activation: FFNActivation) {
    parallelRows(pool, count, work: 1) { a, b in
        gluBackward(dy + a, g + a, u + a, dg: dg + a, du: du + a, count: b - a, activation: activation)
    }
}

// MARK: - Attention

/// Shape of the attention op.
package struct AttentionShape {
    package let nHead: Int
    package let nHeadKV: Int
    package let headDim: Int
    /// Multiplies q·k (1/√head_dim, or Gemma's query_pre_attn_scalar^-1/2).
    package let scale: Float
    /// Sliding window in tokens (a query at i sees keys i−window+1 … i), nil = full causal.
    package let window: Int?
    package var qDim: Int { nHead * headDim }
    package var kvDim: Int { nHeadKV * headDim }

    package init(nHead: Int, nHeadKV: Int, headDim: Int, scale: Float, window: Int?) {
        self.nHead = nHead; self.nHeadKV = nHeadKV; self.headDim = headDim; self.scale = scale; self.window = window
    }
}

/// Query rows per block of the causal attention: a block of rows `[i0, i1)` only meets keys `[c0, i1)` (earlier
/// ones for a sliding window are masked out), so the products skip the masked upper triangle of `S`.
let attentionRowBlock = 64

/// The keys `[c0, i1)` a block of query rows `[i0, i1)` can see (causal, and windowed when `shape.window` is set).
@inline(__always)
private func attentionBlockKeys(_ i0: Int, _ i1: Int, _ shape: AttentionShape) -> Int {
    shape.window.map { max(0, i0 - $0 + 1) } ?? 0
}

/// Softmax probabilities of one head of one sequence for the query rows `[i0, i1)` over the keys `[c0, i1)`:
/// `S = scale·Q·Kᵀ`, causal (and windowed) mask, row softmax (max-subtracted, `ck_exp_shift_sum`); masked entries are 0.
/// Row `i` is written at `p + (i − i0)·ldp`, column `j` at offset `j − c0` (`[i1 − i0, i1 − c0]`).
private func attentionBlockProbs(_ q: UnsafePointer<Float>, _ k: UnsafePointer<Float>, i0: Int, i1: Int, c0: Int,
                                 shape: AttentionShape, p: UnsafeMutablePointer<Float>, ldp: Int) {
    let Dh = shape.headDim, width = i1 - c0
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(i1 - i0), Int32(width), Int32(Dh), shape.scale,
                q + i0 * shape.qDim, Int32(shape.qDim), k + c0 * shape.kvDim, Int32(shape.kvDim), 0, p, Int32(ldp))
    for i in i0..<i1 {
        let row = p + (i - i0) * ldp - c0  // row[j] for j in [c0, i1)
        let lo = shape.window.map { max(0, i - $0 + 1) } ?? 0
        let n = i - lo + 1
        let mx = ck_max_f32(row + lo, n)
        let inv = 1 / ck_exp_shift_sum(row + lo, n, mx)  // SIMD exp (CKernels), f32 lane sums
        for j in c0..<lo { row[j] = 0 }
        for j in lo...i { row[j] *= inv }
        for j in (i + 1)..<i1 { row[j] = 0 }
    }
}

/// Scaled dot-product attention over packed sequences (`spans`: first row and length of each), causal within each
/// sequence, sliding window when `shape.window` is set, grouped-query (query head h reads KV head
/// h / (n_head/n_head_kv)). q, out `[T, n_head·head_dim]`; k, v `[T, n_head_kv·head_dim]`.
/// Math: Vaswani et al. 2017; per (sequence, KV head) as sgemm over blocks of `attentionRowBlock` query rows, each
/// against the keys it can see (the masked upper triangle is not multiplied).
package func attentionForward(_ pool: ComputePool, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
                      v: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, spans: [(start: Int, count: Int)],
                      shape: AttentionShape) {
    let group = shape.nHead / shape.nHeadKV
    let Dh = shape.headDim, B = attentionRowBlock
    pool.parallelFor(spans.count * shape.nHeadKV) { item in
        let (start, L) = spans[item / shape.nHeadKV]
        let g = item % shape.nHeadKV
        let p = UnsafeMutablePointer<Float>.allocate(capacity: min(B, L) * L)
        defer { p.deallocate() }
        let kg = k + start * shape.kvDim + g * Dh, vg = v + start * shape.kvDim + g * Dh
        for h in (g * group)..<((g + 1) * group) {
            let qh = q + start * shape.qDim + h * Dh, oh = out + start * shape.qDim + h * Dh
            for i0 in stride(from: 0, to: L, by: B) {
                let i1 = min(i0 + B, L), c0 = attentionBlockKeys(i0, i1, shape), width = i1 - c0
                attentionBlockProbs(qh, kg, i0: i0, i1: i1, c0: c0, shape: shape, p: p, ldp: width)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(i1 - i0), Int32(Dh), Int32(width), 1, p,
                            Int32(width), vg + c0 * shape.kvDim, Int32(shape.kvDim), 0, oh + i0 * shape.qDim,
                            Int32(shape.qDim))
            }
        }
    }
}

/// Backward of `attentionForward` (probabilities recomputed from q, k rather than stored: `[L, L]` per head would
/// dominate memory for long sequences). With `dP = dO·Vᵀ`, `D_i = dO_i·O_i`, `dS = P ∘ (dP − D)·scale`:
/// `dQ = dS·K`, `dK = Σ_heads dSᵀ·Q`, `dV = Σ_heads Pᵀ·dO`, over the same row blocks and visible keys as the
/// forward. dq, dk, dv are overwritten.
package func attentionBackward(_ pool: ComputePool, dOut: UnsafePointer<Float>, q: UnsafePointer<Float>,
                       k: UnsafePointer<Float>, v: UnsafePointer<Float>, out: UnsafePointer<Float>,
                       dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
                       dv: UnsafeMutablePointer<Float>, spans: [(start: Int, count: Int)], shape: AttentionShape) {
    let group = shape.nHead / shape.nHeadKV
    let Dh = shape.headDim, qd = shape.qDim, kvd = shape.kvDim, B = attentionRowBlock
    pool.parallelFor(spans.count * shape.nHeadKV) { item in
        let (start, L) = spans[item / shape.nHeadKV]
        let g = item % shape.nHeadKV
        let p = UnsafeMutablePointer<Float>.allocate(capacity: min(B, L) * L)
        let dp = UnsafeMutablePointer<Float>.allocate(capacity: min(B, L) * L)
        defer { p.deallocate(); dp.deallocate() }
        let kg = k + start * kvd + g * Dh, vg = v + start * kvd + g * Dh
        let dkg = dk + start * kvd + g * Dh, dvg = dv + start * kvd + g * Dh
        for i in 0..<L {
            (dkg + i * kvd).update(repeating: 0, count: Dh)
            (dvg + i * kvd).update(repeating: 0, count: Dh)
        }
        for h in (g * group)..<((g + 1) * group) {
            let qh = q + start * qd + h * Dh, doh = dOut + start * qd + h * Dh, oh = out + start * qd + h * Dh
            for i0 in stride(from: 0, to: L, by: B) {
                let i1 = min(i0 + B, L), c0 = attentionBlockKeys(i0, i1, shape), width = i1 - c0, rows = i1 - i0
                attentionBlockProbs(qh, kg, i0: i0, i1: i1, c0: c0, shape: shape, p: p, ldp: width)
                // dP = dO·Vᵀ [rows, width]
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(width), Int32(Dh), 1,
                            doh + i0 * qd, Int32(qd), vg + c0 * kvd, Int32(kvd), 0, dp, Int32(width))
                for i in 0..<rows {
                    let d = cblas_sdot(Int32(Dh), doh + (i0 + i) * qd, 1, oh + (i0 + i) * qd, 1)
                    let pr = p + i * width, dpr = dp + i * width
                    for j in 0..<width { dpr[j] = pr[j] * (dpr[j] - d) * shape.scale }
                }
                // dQ_h = dS·K
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(Dh), Int32(width), 1, dp,
                            Int32(width), kg + c0 * kvd, Int32(kvd), 0, dq + start * qd + h * Dh + i0 * qd, Int32(qd))
                // dK += dSᵀ·Q_h, dV += Pᵀ·dO_h
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(width), Int32(Dh), Int32(rows), 1, dp,
                            Int32(width), qh + i0 * qd, Int32(qd), 1, dkg + c0 * kvd, Int32(kvd))
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(width), Int32(Dh), Int32(rows), 1, p,
                            Int32(width), doh + i0 * qd, Int32(qd), 1, dvg + c0 * kvd, Int32(kvd))
            }
        }
    }
}

// MARK: - Output head and cross-entropy, chunked over the vocabulary

/// Log-probabilities of `targets` under `softmax(xn · Wᵀ)` and, when `grad` is given, the gradient of `−log p`
/// w.r.t. each row of `xn`: `grad[i] = Σ_v p_iv·W_v − W_{target_i}` (`[N, n_embd]`).
///
/// Never forms `[N, n_vocab]`: the vocabulary is processed in tiles of `tile` rows (dequantized to f32, then
/// sgemm), with an online log-sum-exp (running max and rescaled sums, Milakov & Gimelshein 2018) and the
/// softmax-weighted sum of W rows accumulated tile by tile, so logits, softmax and the gradient take one pass
/// over the head. Tiles are split over the pool: part `p` takes tiles `p, p + parts, …` in that order, one tile per
/// part per round (a pool job); the partial results are merged at the end. `yieldPoint` runs before each round.
/// When `hits` is given, `hits[i]` tells whether row `i`'s target has the largest logit (the argmax prediction is
/// right; a tie for the largest counts as right), which the running max gives for free: the token accuracy that
/// TRL's SFT trainer logs as `mean_token_accuracy`.
/// - Parameters: w: output head `[n_vocab, n_embd]`; xn: normalised final hidden rows `[N, n_embd]`; hits: `[N]`.
package func outputHead(_ pool: ComputePool, w: WeightMatrix, xn: UnsafePointer<Float>, rows N: Int, targets: [Int32],
                logp: UnsafeMutablePointer<Double>, grad: UnsafeMutablePointer<Float>?, hits: UnsafeMutablePointer<Bool>? = nil,
                tile: Int = 2048, yieldPoint: (() -> Void)? = nil) {
    guard N > 0 else { return }
    let V = w.rows, D = w.cols
    let nTiles = (V + tile - 1) / tile
    let parts = max(1, min(pool.threads, nTiles))
    let mx = UnsafeMutablePointer<Float>.allocate(capacity: parts * N)
    let sums = UnsafeMutablePointer<Double>.allocate(capacity: parts * N)
    let tl = UnsafeMutablePointer<Float>.allocate(capacity: N)
    let acc: UnsafeMutablePointer<Float>? = grad == nil ? nil : UnsafeMutablePointer<Float>.allocate(capacity: parts * N * D)
    // Per part: the dequantized tile `[tile, n_embd]` and its logits `[N, tile]`.
    let wts = UnsafeMutablePointer<Float>.allocate(capacity: parts * tile * D)
    let lgs = UnsafeMutablePointer<Float>.allocate(capacity: parts * N * tile)
    defer {
        mx.deallocate(); sums.deallocate(); tl.deallocate(); acc?.deallocate(); wts.deallocate(); lgs.deallocate()
    }
    mx.initialize(repeating: -Float.infinity, count: parts * N)
    sums.initialize(repeating: 0, count: parts * N)
    tl.initialize(repeating: 0, count: N)
    acc?.initialize(repeating: 0, count: parts * N * D)
    let rounds = (nTiles + parts - 1) / parts
    targets.withUnsafeBufferPointer { tg in
        for round in 0..<rounds {
            yieldPoint?()
            pool.parallelFor(parts) { part in
                let ti = round * parts + part
                guard ti < nTiles else { return }
                let wt = wts + part * tile * D, lg = lgs + part * N * tile
                let m = mx + part * N, s = sums + part * N
                let ac = acc.map { $0 + part * N * D }
                let v0 = ti * tile, vc = min(tile, V - v0)
                Quant.dequantize(w.type, w.data + v0 * w.rowBytes, count: vc * D, into: wt)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(N), Int32(vc), Int32(D), 1, xn, Int32(D),
                            wt, Int32(D), 0, lg, Int32(vc))
                for i in 0..<N {
                    let row = lg + i * vc
                    let t = Int(tg[i]) - v0
                    if t >= 0 && t < vc { tl[i] = row[t] }
                    let tmax = ck_max_f32(row, vc)
                    if tmax > m[i] {
                        if m[i] > -Float.infinity {
                            let f = expf(m[i] - tmax)
                            s[i] *= Double(f)
                            if let ac { for e in 0..<D { ac[i * D + e] *= f } }
                        }
                        m[i] = tmax
                    }
                    s[i] += Double(ck_exp_shift_sum(row, vc, m[i]))
                }
                if let ac {
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(N), Int32(D), Int32(vc), 1, lg,
                                Int32(vc), wt, Int32(D), 1, ac, Int32(D))
                }
            }
        }
    }
    // Merge the parts: M = max_p m_p, S = Σ_p s_p·e^(m_p − M), acc = Σ_p acc_p·e^(m_p − M).
    let wrow = UnsafeMutablePointer<Float>.allocate(capacity: D)
    defer { wrow.deallocate() }
    for i in 0..<N {
        var M = -Float.infinity
        for p in 0..<parts where mx[p * N + i] > M { M = mx[p * N + i] }
        var S: Double = 0
        var f = [Float](repeating: 0, count: parts)
        for p in 0..<parts {
            f[p] = mx[p * N + i] == -Float.infinity ? 0 : expf(mx[p * N + i] - M)
            S += sums[p * N + i] * Double(f[p])
        }
        logp[i] = Double(tl[i]) - (Double(M) + log(S))
        hits?[i] = tl[i] >= M
        if let grad, let acc {
            w.dequantizeRow(Int(targets[i]), into: wrow)
            let inv = Float(1 / S)
            let gi = grad + i * D
            for e in 0..<D {
                var a: Float = 0
                for p in 0..<parts { a += acc[(p * N + i) * D + e] * f[p] }
                gi[e] = a * inv - wrow[e]
            }
        }
    }
}
