// Reference quantizers: round-trip error against the step size each format implies, the activation formats'
// side fields (q8_1 s, q8_K bsums) recomputed independently, block geometry, and quantizeRows == quantize.
import Foundation
import Runtime
import Testing

@Suite("Kernel quantizers: round trip")
struct KernelQuantRoundTripTests {
    static let allTypes: [GGMLType] = [.f32, .f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1,
                                       .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .q8_K]

    @Test("block sizes and byte sizes are ggml-common.h's")
    func geometry() {
        // (block size, bytes) from the static_asserts in ggml/src/ggml-common.h
        let expected: [GGMLType: (Int, Int)] = [
            .f32: (1, 4), .f16: (1, 2), .bf16: (1, 2), .q4_0: (32, 18), .q4_1: (32, 20), .q5_0: (32, 22),
            .q5_1: (32, 24), .q8_0: (32, 34), .q8_1: (32, 36), .q2_K: (256, 84), .q3_K: (256, 110),
            .q4_K: (256, 144), .q5_K: (256, 176), .q6_K: (256, 210), .q8_K: (256, 292),
        ]
        for (t, (bs, ts)) in expected {
            #expect(t.blockSize == bs && t.typeSize == ts, "\(t)")
            #expect(Quant.isSupported(t), "\(t)")
            #expect(t.byteCount(elements: bs * 3) == ts * 3)
        }
        #expect(GGMLType.q4_K.byteCount(elements: 100) == nil)
        #expect(!Quant.isSupported(.i32))
        let w = WeightMatrix(type: .q6_K, rows: 3, cols: 512, data: UnsafeRawPointer(bitPattern: 64)!)
        #expect(w.rowBytes == 420)
    }

    /// RMS error / RMS value for normally distributed data, from each format's step size:
    /// a uniform rounding error of step/sqrt(12) with step = range / levels (block range ~ 2 * 2.6 sigma for
    /// 32 values, ~ 2 * 3 sigma for 256), with margin for the scale encodings.
    static func maxRelativeRMS(_ t: GGMLType) -> Double {
        switch t {
        case .f32: return 0
        case .f16: return 3e-4
        case .bf16: return 2.5e-3
        case .q8_0, .q8_1: return 0.012       // 5.2 sigma / 254 / sqrt(12) = 0.006
        case .q8_K: return 0.012
        case .q6_K: return 0.03               // 64 levels
        case .q5_0, .q5_1, .q5_K: return 0.06 // 32 levels
        case .q4_0, .q4_1, .q4_K: return 0.12 // 16 levels
        case .q3_K: return 0.25               // 8 levels
        case .q2_K: return 0.5                // 4 levels
        default: return 0
        }
    }

    @Test("quantize then dequantize stays within the format's step size", arguments: allTypes)
    func roundTrip(_ type: GGMLType) {
        var rng = KernelRNG(0xabc &+ UInt64(type.rawValue))
        let n = 256 * 16
        let x = (0..<n).map { _ in rng.normal() * 0.7 }
        let q = kernelQuantizedRows(type, x, rows: 1, cols: n)
        #expect(q.count == type.byteCount(elements: n))
        let back = q.withUnsafeBytes { kernelDequantized(type, $0.baseAddress!, count: n) }
        var err = 0.0, sig = 0.0
        for i in 0..<n {
            err += Double(back[i] - x[i]) * Double(back[i] - x[i])
            sig += Double(x[i]) * Double(x[i])
        }
        let rel = (err / sig).squareRoot()
        #expect(rel <= Self.maxRelativeRMS(type), "\(type): relative RMS error \(rel)")
        if type == .f32 { #expect(back == x) }
    }

    @Test("all-zero input quantizes to blocks that dequantize to zero", arguments: allTypes)
    func zeros(_ type: GGMLType) {
        let n = 512
        let q = kernelQuantizedRows(type, [Float](repeating: 0, count: n), rows: 1, cols: n)
        let back = q.withUnsafeBytes { kernelDequantized(type, $0.baseAddress!, count: n) }
        #expect(back.allSatisfy { $0 == 0 }, "\(type)")
    }

    @Test("q8_0 rounds half away from zero with d = amax / 127 (quantize_row_q8_0_ref)")
    func q8_0Exact() {
        var x = [Float](repeating: 0, count: 32)
        x[0] = 127; x[1] = -127; x[2] = 0.5; x[3] = -0.5; x[4] = 1.5; x[5] = 2.5; x[6] = -63.5
        let q = kernelQuantizedRows(.q8_0, x, rows: 1, cols: 32)
        #expect(Float(Float16(bitPattern: UInt16(q[0]) | UInt16(q[1]) << 8)) == 1)
        let qs = q[2...].map { Int8(bitPattern: $0) }
        #expect(Array(qs[0..<7]) == [127, -127, 1, -1, 2, 3, -64])
    }

    @Test("q8_1 stores s = d * sum(qs) as f16")
    func q8_1Sum() {
        var rng = KernelRNG(41)
        let x = (0..<(32 * 8)).map { _ in rng.normal() }
        let q = kernelQuantizedRows(.q8_1, x, rows: 1, cols: x.count)
        for b in 0..<8 {
            let blk = Array(q[(b * 36)..<((b + 1) * 36)])
            let d = Float(Float16(bitPattern: UInt16(blk[0]) | UInt16(blk[1]) << 8))
            let s = Float16(bitPattern: UInt16(blk[2]) | UInt16(blk[3]) << 8)
            let sum = blk[4...].reduce(0) { $0 + Int(Int8(bitPattern: $1)) }
            // s is rounded from sum * (amax / 127) before that d was rounded to f16: compare in f16 terms.
            let amax = x[(b * 32)..<((b + 1) * 32)].map { abs($0) }.max()!
            #expect(s == Float16(Float(sum) * (amax / 127)), "block \(b)")
            #expect(abs(Float(s) - Float(sum) * d) <= abs(Float(sum) * d) * 2e-3 + 1e-6)
        }
    }

    @Test("q8_K: d = max / -127, qs = nearest(x / d), bsums = sums of 16 (quantize_row_q8_K_ref)")
    func q8_K() {
        var rng = KernelRNG(42)
        let x = (0..<512).map { _ in rng.normal() * 2 }
        let q = kernelQuantizedRows(.q8_K, x, rows: 1, cols: 512)
        for b in 0..<2 {
            let blk = Array(q[(b * 292)..<((b + 1) * 292)])
            let d = blk[0..<4].withUnsafeBytes { $0.loadUnaligned(as: Float.self) }
            let xs = Array(x[(b * 256)..<((b + 1) * 256)])
            let maxv = xs.max { abs($0) < abs($1) }!
            let iscale = -127 / maxv
            #expect(d == 1 / iscale)
            let qs = blk[4..<260].map { Int8(bitPattern: $0) }
            for i in 0..<256 {
                let v = (iscale * xs[i]).rounded(.toNearestOrEven)
                #expect(Int(qs[i]) == min(127, Int(v)), "element \(i)")
            }
            for g in 0..<16 {
                let bs = blk[(260 + 2 * g)..<(262 + 2 * g)].withUnsafeBytes { $0.loadUnaligned(as: Int16.self) }
                #expect(Int(bs) == qs[(16 * g)..<(16 * g + 16)].reduce(0) { $0 + Int($1) }, "bsum \(g)")
            }
        }
        // dequantize(q8_K) = d * qs
        let back = q.withUnsafeBytes { kernelDequantized(.q8_K, $0.baseAddress!, count: 512) }
        let d0 = q[0..<4].withUnsafeBytes { $0.loadUnaligned(as: Float.self) }
        #expect(back[3] == d0 * Float(Int8(bitPattern: q[4 + 3])))
    }

    @Test("quantizeRows gives the same bytes as quantize, row by row",
          arguments: [GGMLType.q8_0, .q8_1, .q8_K, .f16, .bf16, .f32, .q4_K])
    func quantizeRows(_ type: GGMLType) {
        var rng = KernelRNG(43)
        let rows = 5, cols = 768
        let x = kernelRandomFloats(rows * 800, &rng)  // row stride 800 floats
        let rowBytes = type.byteCount(elements: cols)!
        var fast = [UInt8](repeating: 0xcd, count: rows * (rowBytes + 8))
        x.withUnsafeBufferPointer { xp in
            fast.withUnsafeMutableBytes {
                Quant.quantizeRows(type, xp.baseAddress!, srcStride: 800, rows: rows, cols: cols,
                                   into: $0.baseAddress!, dstStride: rowBytes + 8)
            }
        }
        for r in 0..<rows {
            let one = kernelQuantizedRows(type, Array(x[(r * 800)..<(r * 800 + cols)]), rows: 1, cols: cols)
            #expect(Array(fast[(r * (rowBytes + 8))..<(r * (rowBytes + 8) + rowBytes)]) == one, "\(type) row \(r)")
        }
    }
}
