// matmul: batch invariance (bitwise), agreement between kernel paths, pools and the fused dot product, and
// accuracy against Float64 over the dequantized operands.
import Foundation
import Runtime
import Testing

@Suite("Kernel matmul")
struct KernelMatmulTests {
    static let rows = 37  // not a multiple of any tile height

    static func cols(_ type: GGMLType) -> Int { type.blockSize == 256 ? 512 : (type.blockSize == 1 ? 165 : 160) }

    struct Case {
        let type: GGMLType
        let cols: Int
        let weights: [UInt8]
        let x: [Float]  // [64, cols]
    }

    static func makeCase(_ type: GGMLType, seed: UInt64) -> Case {
        var rng = KernelRNG(seed &+ UInt64(type.rawValue))
        let cols = Self.cols(type)
        let w = kernelQuantizedRows(type, kernelRandomFloats(rows * cols, &rng, scale: 0.1), rows: rows, cols: cols)
        let x = kernelRandomFloats(64 * cols, &rng)
        return Case(type: type, cols: cols, weights: w, x: x)
    }

    static func run(_ c: Case, n: Int, xOffset: Int = 0, pool: ComputePool, path: KernelPath = .best,
                    logits: Bool = false, batchCopy: Bool = false) -> [Float] {
        var y = [Float](repeating: .nan, count: n * rows)
        c.weights.withUnsafeBytes { wp in
            let plain = WeightMatrix(type: c.type, rows: rows, cols: c.cols, data: wp.baseAddress!)
            let w = batchCopy ? plain.withBatchCopy() : plain
            c.x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { yp in
                    matmul(w, xp.baseAddress! + xOffset * c.cols, n: n, yp.baseAddress!, pool: pool, path: path,
                           logits: logits)
                }
            }
        }
        return y
    }

    @Test("row j is bitwise the same for n = 1...9 and 64, alone or in a batch, on 1 or 2 threads",
          arguments: kernelWeightTypes)
    func batchInvariance(_ type: GGMLType) {
        let c = Self.makeCase(type, seed: 11)
        let one = ComputePool(threads: 1), two = ComputePool(threads: 2)
        for path in KernelPath.available {
            let full = Self.run(c, n: 64, pool: one, path: path)
            #expect(Self.run(c, n: 64, pool: two, path: path).bitPatterns() == full.bitPatterns(),
                    "\(type) \(path): 2 threads differ from 1")
            for n in 1...9 {
                let part = Self.run(c, n: n, pool: n % 2 == 0 ? two : one, path: path)
                #expect(part.bitPatterns() == Array(full[0..<(n * Self.rows)]).bitPatterns(),
                        "\(type) \(path): n = \(n) differs from n = 64")
            }
            for j in [0, 5, 31, 63] {
                let single = Self.run(c, n: 1, xOffset: j, pool: one, path: path)
                #expect(single.bitPatterns() == Array(full[(j * Self.rows)..<((j + 1) * Self.rows)]).bitPatterns(),
                        "\(type) \(path): row \(j) alone differs from the batch")
            }
        }
    }

    /// A matrix's batch copy (what the model loads for its layer projections) changes where batches read the
    /// weights from, never a result.
    @Test("the batch copy gives bitwise the same results, for every n and thread count", arguments: kernelWeightTypes)
    func batchCopySameResults(_ type: GGMLType) {
        let c = Self.makeCase(type, seed: 17)
        let legacy: Set<GGMLType> = [.q4_0, .q5_0, .q4_1, .q5_1]
        c.weights.withUnsafeBytes { wp in
            let w = WeightMatrix(type: type, rows: Self.rows, cols: c.cols, data: wp.baseAddress!).withBatchCopy()
            #expect((w.batchCopy != nil) == (legacy.contains(type) && KernelPath.best != .reference),
                    "\(type): batch copy presence")
        }
        let one = ComputePool(threads: 1), two = ComputePool(threads: 2)
        for n in [1, 2, 3, 4, 5, 8, 9, 17, 64] {
            for pool in [one, two] {
                let plain = Self.run(c, n: n, pool: pool)
                let copied = Self.run(c, n: n, pool: pool, batchCopy: true)
                #expect(copied.bitPatterns() == plain.bitPatterns(), "\(type) n = \(n): batch copy differs")
            }
        }
    }

    /// The output projection's packed q8_0 accumulation (`logits: true`): its own rounding, but the same
    /// guarantees: bitwise independent of n, threads and ISA, and within the Float64 bound of the exact product.
    @Test("logits matmul (packed q8_0): bitwise batch invariant and within Float64 bounds")
    func logitsMatmul() {
        let c = Self.makeCase(.q8_0, seed: 41)
        let one = ComputePool(threads: 1), two = ComputePool(threads: 2)
        let vt = Quant.vecDotType(.q8_0)!
        let xq = kernelQuantizedRows(vt, c.x, rows: 64, cols: c.cols)
        let xRowBytes = vt.byteCount(elements: c.cols)!
        let wRowBytes = GGMLType.q8_0.byteCount(elements: c.cols)!
        var results: [KernelPath: [Float]] = [:]
        for path in KernelPath.available where path != .reference {
            let full = Self.run(c, n: 64, pool: one, path: path, logits: true)
            results[path] = full
            #expect(Self.run(c, n: 64, pool: two, path: path, logits: true).bitPatterns() == full.bitPatterns(),
                    "\(path): 2 threads differ from 1")
            for n in 1...9 {
                let part = Self.run(c, n: n, pool: n % 2 == 0 ? two : one, path: path, logits: true)
                #expect(part.bitPatterns() == Array(full[0..<(n * Self.rows)]).bitPatterns(),
                        "\(path): n = \(n) differs from n = 64")
            }
            for j in [0, 5, 31, 63] {
                let single = Self.run(c, n: 1, xOffset: j, pool: one, path: path, logits: true)
                #expect(single.bitPatterns() == Array(full[(j * Self.rows)..<((j + 1) * Self.rows)]).bitPatterns(),
                        "\(path): row \(j) alone differs from the batch")
            }
            // Same products as the plain matmul, summed in another order: within the Float64 bound of both.
            let plain = Self.run(c, n: 64, pool: one, path: path)
            #expect(plain.bitPatterns() != full.bitPatterns(), "\(path): the packed order is not in use")
            c.weights.withUnsafeBytes { wp in
                xq.withUnsafeBytes { xp in
                    for j in 0..<64 {
                        let xd = kernelDequantized(vt, xp.baseAddress! + j * xRowBytes, count: c.cols)
                        for r in 0..<Self.rows {
                            let wd = kernelDequantized(.q8_0, wp.baseAddress! + r * wRowBytes, count: c.cols)
                            let exact = kernelDot64(wd, xd).dot
                            let bound = kernelDotBound(w: wd, x: xd, relative: KernelDotTests.relative(.q8_0))
                            #expect(abs(Double(full[j * Self.rows + r]) - exact) <= bound,
                                    "\(path) (\(r), \(j)): \(full[j * Self.rows + r]) vs \(exact)")
                        }
                    }
                }
            }
        }
        if let a = results[.avx2], let b = results[.avx512] {
            #expect(a.bitPatterns() == b.bitPatterns(), "avx2 and avx512 differ")
        }
    }

    @Test("matmul equals the fused dot of the quantized activation row, and Float64 within bounds",
          arguments: kernelWeightTypes)
    func matchesDotAndFloat64(_ type: GGMLType) {
        let c = Self.makeCase(type, seed: 23)
        let vt = Quant.vecDotType(type)!
        let pool = ComputePool(threads: 2)
        let n = 6
        let xq = kernelQuantizedRows(vt, Array(c.x[0..<(n * c.cols)]), rows: n, cols: c.cols)
        let xRowBytes = vt.byteCount(elements: c.cols)!
        let wRowBytes = type.byteCount(elements: c.cols)!
        var results: [KernelPath: [Float]] = [:]
        for path in KernelPath.available {
            let y = Self.run(c, n: n, pool: pool, path: path)
            results[path] = y
            c.weights.withUnsafeBytes { wp in
                xq.withUnsafeBytes { xp in
                    for j in 0..<n {
                        let xd = kernelDequantized(vt, xp.baseAddress! + j * xRowBytes, count: c.cols)
                        for r in 0..<Self.rows {
                            let wrow = wp.baseAddress! + r * wRowBytes
                            let dot = Quant.dot(type, count: c.cols, wrow, xp.baseAddress! + j * xRowBytes, path: path)
                            #expect(y[j * Self.rows + r].bitPattern == dot.bitPattern,
                                    "\(type) \(path) (\(r), \(j)): matmul \(y[j * Self.rows + r]) vs dot \(dot)")
                            let wd = kernelDequantized(type, wrow, count: c.cols)
                            let exact = kernelDot64(wd, xd).dot
                            let bound = kernelDotBound(w: wd, x: xd, relative: KernelDotTests.relative(type))
                                + kernelMinTermBound(type, wrow, xd: xd)
                            #expect(abs(Double(y[j * Self.rows + r]) - exact) <= bound,
                                    "\(type) \(path) (\(r), \(j)): \(y[j * Self.rows + r]) vs \(exact)")
                        }
                    }
                }
            }
        }
        if let a = results[.avx2], let b = results[.avx512] {
            #expect(a.bitPatterns() == b.bitPatterns(), "\(type): avx2 and avx512 differ")
        }
    }

    @Test("quantized matmul is close to the float product x · Wᵀ", arguments: kernelWeightTypes)
    func closeToFloatProduct(_ type: GGMLType) {
        // Error of 8-bit activation quantization: per element at most half a step, d = amax/127 per block.
        let c = Self.makeCase(type, seed: 31)
        let pool = ComputePool(threads: 1)
        let n = 3
        let y = Self.run(c, n: n, pool: pool)
        let wRowBytes = type.byteCount(elements: c.cols)!
        c.weights.withUnsafeBytes { wp in
            for j in 0..<n {
                let x = Array(c.x[(j * c.cols)..<((j + 1) * c.cols)])
                for r in 0..<Self.rows {
                    let wd = kernelDequantized(type, wp.baseAddress! + r * wRowBytes, count: c.cols)
                    let (exact, _) = kernelDot64(wd, x)
                    // bound: sum_i |w_i| * step_i / 2 with step = block amax / 127 (f16: relative 2^-11)
                    var bound = 0.0
                    let bs = (type == .f32 || type == .f16 || type == .bf16) ? 1 : (type.blockSize == 256 ? 256 : 32)
                    for b in stride(from: 0, to: c.cols, by: bs) {
                        let amax = x[b..<(b + bs)].map { abs(Double($0)) }.max() ?? 0
                        for i in b..<(b + bs) {
                            let step: Double
                            switch type {
                            case .f32: step = abs(Double(x[i])) * 1e-6
                            case .f16: step = abs(Double(x[i])) * 1e-3
                            case .bf16: step = abs(Double(x[i])) * 8e-3
                            default: step = amax / 127
                            }
                            bound += abs(Double(wd[i])) * step * 0.51
                        }
                    }
                    bound += kernelDotBound(w: wd, x: x, relative: 2e-5)
                        + kernelMinTermBound(type, wp.baseAddress! + r * wRowBytes, xd: x) * 1.1
                    #expect(abs(Double(y[j * Self.rows + r]) - exact) <= bound,
                            "\(type) (\(r), \(j)): \(y[j * Self.rows + r]) vs \(exact), bound \(bound)")
                }
            }
        }
    }

    @Test("the model's shapes: 2048 x 640 q5_0 and 640 x 2048 q4_K / q6_K, n = 1 and 7")
    func modelShapes() {
        var rng = KernelRNG(99)
        let pool = ComputePool(threads: 2)
        for (type, rows, cols) in [(GGMLType.q5_0, 2048, 640), (.q8_0, 256, 640), (.q4_K, 640, 2048), (.q6_K, 640, 2048)] {
            let w = kernelQuantizedRows(type, kernelRandomFloats(rows * cols, &rng, scale: 0.05), rows: rows, cols: cols)
            let x = kernelRandomFloats(7 * cols, &rng)
            var y7 = [Float](repeating: 0, count: 7 * rows), yRef = y7, y1 = [Float](repeating: 0, count: rows)
            w.withUnsafeBytes { wp in
                let m = WeightMatrix(type: type, rows: rows, cols: cols, data: wp.baseAddress!)
                matmul(m, x, n: 7, &y7, pool: pool)
                matmul(m, x, n: 7, &yRef, pool: pool, path: .reference)
                x.withUnsafeBufferPointer { xp in matmul(m, xp.baseAddress! + 3 * cols, n: 1, &y1, pool: pool) }
            }
            #expect(y1.bitPatterns() == Array(y7[(3 * rows)..<(4 * rows)]).bitPatterns(), "\(type): row 3 alone differs")
            var worst = 0.0
            for i in 0..<y7.count { worst = max(worst, abs(Double(y7[i]) - Double(yRef[i])) / (abs(Double(yRef[i])) + 1)) }
            #expect(worst < 1e-4, "\(type): fast path vs reference, worst relative difference \(worst)")
        }
    }
}
