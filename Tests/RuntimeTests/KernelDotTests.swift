// Fused dot products (every weight type, every kernel path this CPU has) against a Float64 dot product of the
// dequantized operands, on random, zero and saturated blocks.
import Foundation
import Runtime
import Testing

@Suite("Kernel dot products")
struct KernelDotTests {
    static func cols(_ type: GGMLType) -> Int { type.blockSize == 256 ? 1024 : (type.blockSize == 1 ? 643 : 640) }

    /// Byte offsets of the f16 scale fields of each block (ggml-common.h), so random blocks get finite scales.
    static func scaleOffsets(_ type: GGMLType) -> [Int] {
        switch type {
        case .q4_0, .q5_0, .q8_0: return [0]
        case .q4_1, .q5_1: return [0, 2]
        case .q2_K: return [80, 82]
        case .q3_K: return [108]
        case .q4_K, .q5_K: return [0, 2]
        case .q6_K: return [208]
        default: return []
        }
    }

    /// Random bytes for `blocks` blocks, with every f16 scale replaced by `scale` (bits).
    static func randomBlocks(_ type: GGMLType, blocks: Int, scale: UInt16, _ rng: inout KernelRNG) -> [UInt8] {
        var bytes = (0..<(blocks * type.typeSize)).map { _ in rng.byte() }
        for b in 0..<blocks {
            for off in scaleOffsets(type) {
                bytes[b * type.typeSize + off] = UInt8(scale & 0xff)
                bytes[b * type.typeSize + off + 1] = UInt8(scale >> 8)
            }
        }
        return bytes
    }

    static func check(_ type: GGMLType, weights: [UInt8], activations xf: [Float], cols: Int, relative: Double,
                      sourceLocation: SourceLocation = #_sourceLocation) {
        let vt = Quant.vecDotType(type)!
        let xq = kernelQuantizedRows(vt, xf, rows: 1, cols: cols)
        let rows = weights.count / type.byteCount(elements: cols)!
        weights.withUnsafeBytes { wp in
            xq.withUnsafeBytes { xp in
                let xd = kernelDequantized(vt, xp.baseAddress!, count: cols)
                for r in 0..<rows {
                    let wrow = wp.baseAddress! + r * type.byteCount(elements: cols)!
                    let wd = kernelDequantized(type, wrow, count: cols)
                    let exact = kernelDot64(wd, xd).dot
                    let bound = kernelDotBound(w: wd, x: xd, relative: relative) + kernelMinTermBound(type, wrow, xd: xd)
                    var values: [KernelPath: Float] = [:]
                    for path in KernelPath.available {
                        let got = Quant.dot(type, count: cols, wrow, xp.baseAddress!, path: path)
                        values[path] = got
                        #expect(abs(Double(got) - exact) <= bound,
                                "\(type) row \(r) \(path): \(got) vs \(exact) (bound \(bound))",
                                sourceLocation: sourceLocation)
                    }
                    // The SIMD paths share one arithmetic: bitwise equal.
                    if let a = values[.avx2], let b = values[.avx512] {
                        #expect(a.bitPattern == b.bitPattern, "\(type) row \(r): avx2 \(a) != avx512 \(b)",
                                sourceLocation: sourceLocation)
                    }
                }
            }
        }
    }

    static func relative(_ type: GGMLType) -> Double {
        switch type {
        case .f32, .f16, .bf16: return 1e-4  // float products and sums in a different order
        default: return 2e-5                 // exact integer sums; float scales and block sums only
        }
    }

    @Test("random weights quantized from floats", arguments: kernelWeightTypes)
    func randomWeights(_ type: GGMLType) {
        var rng = KernelRNG(0x5eed_0001 &+ UInt64(type.rawValue))
        let cols = Self.cols(type), rows = 12
        let w = kernelQuantizedRows(type, kernelRandomFloats(rows * cols, &rng, scale: 0.05), rows: rows, cols: cols)
        let x = kernelRandomFloats(cols, &rng, scale: 3)
        Self.check(type, weights: w, activations: x, cols: cols, relative: Self.relative(type))
    }

    @Test("random raw blocks with finite scales", arguments: kernelWeightTypes.filter { $0.blockSize > 1 })
    func randomRawBlocks(_ type: GGMLType) {
        var rng = KernelRNG(0x5eed_0002 &+ UInt64(type.rawValue))
        let cols = Self.cols(type), rows = 8
        var w: [UInt8] = []
        for r in 0..<rows {
            let scale: UInt16 = [0x3c00, 0x2e66, 0x1400, 0x5640, 0x0001, 0x8400, 0xbc00, 0x3555][r]  // incl. subnormal, negative
            w += Self.randomBlocks(type, blocks: cols / type.blockSize, scale: scale, &rng)
        }
        let x = kernelRandomFloats(cols, &rng)
        Self.check(type, weights: w, activations: x, cols: cols, relative: Self.relative(type))
    }

    @Test("saturated blocks: every quant bit set, largest finite scale, extreme activations",
          arguments: kernelWeightTypes.filter { $0.blockSize > 1 })
    func saturatedBlocks(_ type: GGMLType) {
        let cols = Self.cols(type)
        let blocks = cols / type.blockSize
        var rng = KernelRNG(7)
        for (fill, scale) in [(UInt8(0xff), UInt16(0x7bff)), (UInt8(0x80), UInt16(0xfbff)), (UInt8(0x00), UInt16(0x7bff))] {
            var w = [UInt8](repeating: fill, count: blocks * type.typeSize)
            for b in 0..<blocks {
                for off in Self.scaleOffsets(type) {
                    w[b * type.typeSize + off] = UInt8(scale & 0xff)
                    w[b * type.typeSize + off + 1] = UInt8(scale >> 8)
                }
            }
            // Activations at +-max in every block quantize to +-127 exactly.
            let x: [Float] = (0..<cols).map { i in (i % 3 == 0 ? -1 : 1) * (i % 32 == 5 ? 1000 : 999) }
            Self.check(type, weights: w, activations: x, cols: cols, relative: Self.relative(type))
            let xr = kernelRandomFloats(cols, &rng)
            Self.check(type, weights: w, activations: xr, cols: cols, relative: Self.relative(type))
        }
    }

    @Test("zero weights and zero activations give exactly zero", arguments: kernelWeightTypes)
    func zeros(_ type: GGMLType) {
        let cols = Self.cols(type)
        let vt = Quant.vecDotType(type)!
        let w = [UInt8](repeating: 0, count: type.byteCount(elements: cols)!)
        var rng = KernelRNG(3)
        let xNonZero = kernelQuantizedRows(vt, kernelRandomFloats(cols, &rng), rows: 1, cols: cols)
        let xZero = kernelQuantizedRows(vt, [Float](repeating: 0, count: cols), rows: 1, cols: cols)
        let wNonZero = kernelQuantizedRows(type, kernelRandomFloats(cols, &rng), rows: 1, cols: cols)
        for path in KernelPath.available {
            let a = w.withUnsafeBytes { wp in xNonZero.withUnsafeBytes { Quant.dot(type, count: cols, wp.baseAddress!, $0.baseAddress!, path: path) } }
            let b = wNonZero.withUnsafeBytes { wp in xZero.withUnsafeBytes { Quant.dot(type, count: cols, wp.baseAddress!, $0.baseAddress!, path: path) } }
            #expect(a == 0, "\(type) \(path): zero weights gave \(a)")
            #expect(b == 0, "\(type) \(path): zero activations gave \(b)")
        }
    }

    @Test("activations are quantized to ggml's vec_dot type")
    func vecDotTypes() {
        let expected: [GGMLType: GGMLType] = [
            .f32: .f32, .f16: .f16, .bf16: .bf16, .q4_0: .q8_0, .q5_0: .q8_0, .q8_0: .q8_0, .q4_1: .q8_1, .q5_1: .q8_1,
            .q2_K: .q8_K, .q3_K: .q8_K, .q4_K: .q8_K, .q5_K: .q8_K, .q6_K: .q8_K,
        ]
        for (type, vt) in expected { #expect(Quant.vecDotType(type) == vt, "\(type)") }
        #expect(Quant.vecDotType(.q8_K) == nil)
        #expect(Quant.vecDotType(.q8_1) == nil)
        #expect(Quant.vecDotType(.i32) == nil)
    }
}
