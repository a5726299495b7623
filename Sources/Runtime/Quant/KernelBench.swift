// KernelBench: throughput figures of the quantized kernels on random data of the default model's shapes
// (Gemma 3 270M: tied Q8_0 output head 262144 x 640, Q5_0 / Q4_K / Q6_K projections of 640 <-> 2048).
// A benchmark, not a test: it prints figures and asserts nothing.
import CKernels
import COpenBLAS
import Foundation

/// Kernel throughput benchmark on random weights of the default model's shapes (see `run`).
public enum KernelBench {
    /// One measured configuration.
    public struct Result: Sendable {
        /// Label of the configuration, e.g. "q5_0 2048x640 n=512".
        public let name: String
        /// Weight type.
        public let type: GGMLType
        /// Weight rows (n_out).
        public let rows: Int
        /// Weight columns (n_in).
        public let cols: Int
        /// Activation rows per call (1 = mat-vec, as in decode).
        public let n: Int
        /// Pool threads.
        public let threads: Int
        /// Best wall time of one call, seconds.
        public let seconds: Double
        /// Process CPU time of that call (all threads, spinning included), seconds.
        public let cpuSeconds: Double
        /// Weight bytes streamed per second (GB/s, 1e9).
        public var gigabytesPerSecond: Double { Double(type.byteCount(elements: rows * cols) ?? 0) / seconds / 1e9 }
        /// Integer multiply-adds x 2 per second (1e9), counting every weight x activation product.
        public var gigaOpsPerSecond: Double { 2 * Double(rows) * Double(cols) * Double(n) / seconds / 1e9 }
    }

    /// Runs every configuration at each thread count and returns a printable report.
    /// - Parameter quick: fewer repetitions (for smoke runs).
    public static func run(threads: [Int] = [1, 2], quick: Bool = false) -> String {
        var lines: [String] = []
        lines.append("kernel path: \(KernelPath.best)")
        lines.append("cpu: \(CPUState.detect().summary)")
        for t in threads {
            let results = measure(threads: t, quick: quick)
            lines.append("threads: \(t)")
            for r in results {
                let name = r.name.padding(toLength: 34, withPad: " ", startingAt: 0)
                let figure = r.n == 1 ? String(format: "%6.2f GB/s", r.gigabytesPerSecond)
                                      : String(format: "%6.1f GOPS", r.gigaOpsPerSecond)
                lines.append("  \(name)" + String(format: "%8.3f ms  ", r.seconds * 1e3) + figure
                             + String(format: "   (cpu %.3f ms)", r.cpuSeconds * 1e3))
            }
            // Default model, non-embedding weights per token at n = 512 (parameter counts by type).
            var perToken = 0.0
            let mix: [(GGMLType, Double)] = [(.q5_0, 63.4e6), (.q4_K, 23.6e6), (.q6_K, 11.8e6), (.q8_0, 1.5e6)]
            for (type, params) in mix {
                if let r = results.first(where: { $0.type == type && $0.n > 1 }) {
                    perToken += 2 * params / (r.gigaOpsPerSecond * 1e9)
                }
            }
            lines.append(String(format: "  gemma-3-270m projections at n=512: %.2f ms/token (%.0f tokens/s, matmul only)",
                                perToken * 1e3, 1 / perToken))
        }
        lines.append("attention helpers, one thread (head_dim 256, 1024 f16 keys, 4 query heads per key head):")
        for path in KernelPath.available {
            let (dot, axpy) = attention(path: path, quick: quick)
            lines.append("  " + path.description.padding(toLength: 10, withPad: " ", startingAt: 0)
                         + String(format: " scores %7.1f ns/key   values %7.1f ns/key", dot * 1e9, axpy * 1e9))
        }
        lines.append("bf16 GEMM (vdpbf16ps, f32 accumulation) vs cblas_sgemm, one thread, training shapes (m = 1024 tokens):")
        if ck_bf16_available() == 0 { lines.append("  no AVX512_BF16 here: ck_gemm_bf16 runs its scalar reference (not timed)") } else {
            for (name, n, k) in [("x·Wᵀ 640 -> 2048 (gate/up)", 2048, 640), ("dy·W 2048 -> 640 (gate/up dx)", 640, 2048),
                                 ("x·Wᵀ 640 -> 1024 (q)", 1024, 640)] {
                let (f32, bf16) = gemmBF16(m: 1024, n: n, k: k, reps: quick ? 1 : 3)
                lines.append("  " + name.padding(toLength: 32, withPad: " ", startingAt: 0)
                             + String(format: "sgemm %6.1f GFLOP/s  bf16 %6.1f GFLOP/s", f32, bf16))
            }
        }
        return lines.joined(separator: "\n")
    }

    /// GFLOP/s (2·m·n·k per call, best of `reps`) of `cblas_sgemm` (row-major `x·Wᵀ`) and of `ck_gemm_bf16` on the
    /// same random operands, one thread (the activations' bf16 conversion included, the weight packing not).
    static func gemmBF16(m: Int, n: Int, k: Int, reps: Int) -> (sgemm: Double, bf16: Double) {
        var rng: UInt64 = 0x2545_F491_4F6C_DD1D
        func next() -> Float {
            rng = rng &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Float(Int64(bitPattern: rng >> 11) % 2001 - 1000) / 1000
        }
        let a = (0..<(m * k)).map { _ in next() }, w = (0..<(n * k)).map { _ in next() }
        var c = [Float](repeating: 0, count: m * n)
        let kp = (k + 1) & ~1
        var ab = [UInt16](repeating: 0, count: m * kp), bp = [UInt16](repeating: 0, count: ck_bf16_packed_count(n, k))
        ck_bf16_pack(w, k, 1, n, k, &bp)
        openblas_set_num_threads(1)
        var best = (Double.infinity, Double.infinity)
        for _ in 0..<max(1, reps) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k), 1, a, Int32(k), w,
                        Int32(k), 0, &c, Int32(n))
            let t1 = DispatchTime.now().uptimeNanoseconds
            ck_bf16_convert_rows(a, k, m, k, &ab, kp)
            _ = ck_gemm_bf16(m, 0, n, k, ab, kp, bp, 1, 0, &c, n)
            let t2 = DispatchTime.now().uptimeNanoseconds
            best = (min(best.0, Double(t1 - t0) / 1e9), min(best.1, Double(t2 - t1) / 1e9))
        }
        let flop = 2 * Double(m) * Double(n) * Double(k)
        return (flop / best.0 / 1e9, flop / best.1 / 1e9)
    }

    /// Best seconds per key of the grouped-query attention inner loops on `path`: the scores of 4 query heads
    /// against one f16 key row (`ck_dot_f32_f16_heads_p`) and the weighted sum of one f16 value row into 4 outputs
    /// (`ck_axpy_f16_heads_p`), over 1024 keys of head_dim 256.
    public static func attention(path: KernelPath, quick: Bool = false) -> (scores: Double, values: Double) {
        let keys = 1024, dim = 256, heads = 4
        var state: UInt64 = 0x9e37
        func next() -> Float {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Float(Int64(bitPattern: state >> 11) % 2_000_001 - 1_000_000) / 1e6
        }
        let q = (0..<(heads * dim)).map { _ in next() }
        var kv = [UInt16](repeating: 0, count: keys * dim)
        let f = (0..<(keys * dim)).map { _ in next() }
        ck_f32_to_f16(f, &kv, keys * dim)
        let alpha = (0..<heads).map { _ in next() / 1024 }
        var out = [Float](repeating: 0, count: heads), acc = [Float](repeating: 0, count: heads * dim)
        var bestDot = Double.infinity, bestAxpy = Double.infinity
        for _ in 0..<(quick ? 2 : 20) {
            var t0 = DispatchTime.now().uptimeNanoseconds
            kv.withUnsafeBufferPointer { k in
                for j in 0..<keys { ck_dot_f32_f16_heads_p(path.rawValue, q, dim, heads, k.baseAddress! + j * dim, dim, &out) }
            }
            bestDot = min(bestDot, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9 / Double(keys))
            t0 = DispatchTime.now().uptimeNanoseconds
            kv.withUnsafeBufferPointer { v in
                for j in 0..<keys { ck_axpy_f16_heads_p(path.rawValue, alpha, heads, v.baseAddress! + j * dim, &acc, dim, dim) }
            }
            bestAxpy = min(bestAxpy, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9 / Double(keys))
        }
        return (bestDot, bestAxpy)
    }

    /// Measures all configurations with a pool of `threads`.
    public static func measure(threads: Int, quick: Bool = false) -> [Result] {
        let pool = ComputePool(threads: threads)
        let configs: [(String, GGMLType, Int, Int, Int)] = [
            ("q8_0 262144x640 mat-vec (head)", .q8_0, 262_144, 640, 1),
            ("q8_0 262144x640 n=8 (head, batch)", .q8_0, 262_144, 640, 8),
            ("q5_0 2048x640 mat-vec", .q5_0, 2048, 640, 1),
            ("q5_0 640x2048 mat-vec", .q5_0, 640, 2048, 1),
            ("q4_K 640x2048 mat-vec", .q4_K, 640, 2048, 1),
            ("q6_K 640x2048 mat-vec", .q6_K, 640, 2048, 1),
            ("q5_0 2048x640 n=8", .q5_0, 2048, 640, 8),
            ("q5_0 640x2048 n=8", .q5_0, 640, 2048, 8),
            ("q8_0 2048x640 n=512", .q8_0, 2048, 640, 512),
            ("q5_0 2048x640 n=512", .q5_0, 2048, 640, 512),
            ("q4_K 640x2048 n=512", .q4_K, 640, 2048, 512),
            ("q6_K 640x2048 n=512", .q6_K, 640, 2048, 512),
        ]
        return configs.map { name, type, rows, cols, n in
            let reps = quick ? 2 : (n == 1 ? (rows > 100_000 ? 10 : 200) : 5)
            let (wall, cpu) = time(type, rows: rows, cols: cols, n: n, pool: pool, reps: reps)
            return Result(name: name, type: type, rows: rows, cols: cols, n: n, threads: threads,
                          seconds: wall, cpuSeconds: cpu)
        }
    }

    static func time(_ type: GGMLType, rows: Int, cols: Int, n: Int, pool: ComputePool, reps: Int) -> (Double, Double) {
        let rowBytes = type.byteCount(elements: cols)!
        let weights = UnsafeMutableRawPointer.allocate(byteCount: rows * rowBytes, alignment: 64)
        defer { weights.deallocate() }
        // 256 distinct quantized rows, repeated over the matrix (every byte is touched).
        var state: UInt64 = 0x1234_5678
        func next() -> Float {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Float(Int64(bitPattern: state >> 11) % 2_000_001 - 1_000_000) / 1e6
        }
        let distinct = min(rows, 256)
        var row = [Float](repeating: 0, count: cols)
        for r in 0..<distinct {
            for i in 0..<cols { row[i] = next() * 0.05 }
            Quant.quantize(type, row, count: cols, into: weights + r * rowBytes)
        }
        for r in distinct..<rows {
            (weights + r * rowBytes).copyMemory(from: weights + (r % distinct) * rowBytes, byteCount: rowBytes)
        }
        let x = (0..<(n * cols)).map { _ in next() }
        var y = [Float](repeating: 0, count: n * rows)
        let w = WeightMatrix(type: type, rows: rows, cols: cols, data: weights).withBatchCopy()  // as the model loads it
        var best = Double.infinity, bestCPU = Double.infinity
        for _ in 0..<(reps + 1) {  // the first call warms caches and workers
            let c0 = processCPUSeconds()
            let t0 = DispatchTime.now().uptimeNanoseconds
            matmul(w, x, n: n, &y, pool: pool, logits: rows > 100_000)
            let t = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            let c = processCPUSeconds() - c0
            if t < best { best = t; bestCPU = c }
        }
        return (best, bestCPU)
    }
}

private func processCPUSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
