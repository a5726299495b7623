// matmul: y = x · Wᵀ over quantized weights, with activations quantized once per call (as ggml's mul_mat).
import CKernels

/// y[n, w.rows] = x[n, w.cols] · Wᵀ.
///
/// Activations are quantized once per row to the weight type's vec_dot type exactly as ggml does (q8_0 for
/// q4_0/q5_0/q8_0, q8_1 for q4_1/q5_1, q8_K for K-quants, f16 for f16, bf16 for bf16, f32 for f32; reference
/// quantizers of ggml-quants.c) and integer dot products are used. Weight rows are split across pool threads;
/// each weight row is read once for all n activation rows. The result for row j is bitwise independent of n
/// and of the other rows.
/// - Parameters:
///   - w: weights `[w.rows, w.cols]` (ggml ne = [cols, rows]).
///   - x: activations `[n, w.cols]`, row-major.
///   - y: output `[n, w.rows]`, row-major.
///   - logits: `w` is the output projection: q8_0 weights use the packed accumulation of `CK_MATMUL_LOGITS`
///     (faster in batches, rounded differently; a matrix must always be used with the same value).
/// - Precondition: `Quant.isWeightType(w.type)`.
public func matmul(_ w: WeightMatrix, _ x: UnsafePointer<Float>, n: Int, _ y: UnsafeMutablePointer<Float>,
                   pool: ComputePool, logits: Bool = false) {
    matmul(w, x, n: n, y, pool: pool, path: .best, logits: logits)
}

/// `matmul` with an explicit kernel path (tests compare paths; `.best` is what the model uses).
public func matmul(_ w: WeightMatrix, _ x: UnsafePointer<Float>, n: Int, _ y: UnsafeMutablePointer<Float>,
                   pool: ComputePool, path: KernelPath, logits: Bool = false) {
    guard n > 0, w.rows > 0 else { return }
    guard let vt = Quant.vecDotType(w.type) else { preconditionFailure("matmul: \(w.type) is not a weight type") }
    if vt == .f32 {
        matmulQuantized(w, UnsafeRawPointer(x), stride: w.cols * 4, n: n, y, pool: pool, path: path, logits: logits)
        return
    }
    let stride = w.cols / vt.blockSize * vt.typeSize
    let scratch = UnsafeMutableRawPointer.allocate(byteCount: max(64, n * stride), alignment: 64)
    defer { scratch.deallocate() }
    // Quantize activations (in parallel when there is enough work to pay for a fork/join).
    let cols = w.cols
    if pool.threads > 1 && n * cols >= 1 << 15 {
        let tasks = min(n, pool.threads * 4)
        pool.parallelFor(tasks) { t in
            let j0 = t * n / tasks, j1 = (t + 1) * n / tasks
            ck_quantize_rows(Int32(vt.rawValue), x + j0 * cols, cols, scratch + j0 * stride, stride, j1 - j0, cols)
        }
    } else {
        ck_quantize_rows(Int32(vt.rawValue), x, cols, scratch, stride, n, cols)
    }
    matmulQuantized(w, UnsafeRawPointer(scratch), stride: stride, n: n, y, pool: pool, path: path, logits: logits)
}

/// y[n, w.rows] = X · Wᵀ for activations already quantized to `Quant.vecDotType(w.type)`: row j of X at
/// `xq + j * stride`. Rows of W are split across the pool in chunks (dynamic claiming). `logits` as in `matmul`.
public func matmulQuantized(_ w: WeightMatrix, _ xq: UnsafeRawPointer, stride: Int, n: Int,
                            _ y: UnsafeMutablePointer<Float>, pool: ComputePool, path: KernelPath = .best,
                            logits: Bool = false) {
    guard n > 0, w.rows > 0 else { return }
    let type = Int32(w.type.rawValue)
    let flags = Int32(logits ? CK_MATMUL_LOGITS : 0)
    if pool.threads == 1 {
        ck_matmul_ex(path.rawValue, type, flags, w.cols, w.data, w.rowBytes, w.batchCopy, 0, w.rows, xq, stride, n, y,
                     w.rows)
        return
    }
    // Chunks: many small ones for mat-vec (bandwidth bound; balances a busy core) and for very tall matrices
    // (the output head: a chunk per thread-eighth would leave one thread finishing alone), fewer for batches.
    let perThread = n <= 4 || w.rows >= 1 << 15 ? 16 : 4
    var chunk = (w.rows + pool.threads * perThread - 1) / (pool.threads * perThread)
    chunk = max(16, (chunk + 15) / 16 * 16)
    let tasks = (w.rows + chunk - 1) / chunk
    pool.parallelFor(tasks) { t in
        let r0 = t * chunk, r1 = min(w.rows, r0 + chunk)
        ck_matmul_ex(path.rawValue, type, flags, w.cols, w.data, w.rowBytes, w.batchCopy, r0, r1, xq, stride, n, y,
                     w.rows)
    }
}
