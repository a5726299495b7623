// Shared helpers for the kernel tests: a seeded generator, random weights/activations, Float64 references.
import Foundation
import Runtime

/// SplitMix64 (Steele et al. 2014), seeded so every test run sees the same data.
struct KernelRNG {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    mutating func uniform() -> Float { Float(Double(next() >> 11) / Double(1 << 53) * 2 - 1) }
    /// Approximately normal (sum of 4 uniforms, scaled).
    mutating func normal() -> Float { (uniform() + uniform() + uniform() + uniform()) * 0.866 }
    mutating func byte() -> UInt8 { UInt8(truncatingIfNeeded: next()) }
}

/// The weight types matmul accepts (every supported type except the activation-only q8_1 / q8_K).
let kernelWeightTypes: [GGMLType] = [.f32, .f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0,
                                     .q2_K, .q3_K, .q4_K, .q5_K, .q6_K]

/// Floats with occasional outliers, the shape of real weights.
func kernelRandomFloats(_ count: Int, _ rng: inout KernelRNG, scale: Float = 1) -> [Float] {
    (0..<count).map { i in
        let v = rng.normal() * scale
        return i % 61 == 7 ? v * 8 : v
    }
}

/// `rows` rows of `cols` floats quantized row by row to `type`.
func kernelQuantizedRows(_ type: GGMLType, _ values: [Float], rows: Int, cols: Int) -> [UInt8] {
    let rowBytes = type.byteCount(elements: cols)!
    var out = [UInt8](repeating: 0, count: rows * rowBytes)
    values.withUnsafeBufferPointer { src in
        out.withUnsafeMutableBytes { dst in
            for r in 0..<rows {
                Quant.quantize(type, src.baseAddress! + r * cols, count: cols, into: dst.baseAddress! + r * rowBytes)
            }
        }
    }
    return out
}

/// Dequantized values of `count` elements.
func kernelDequantized(_ type: GGMLType, _ bytes: UnsafeRawPointer, count: Int) -> [Float] {
    var out = [Float](repeating: 0, count: count)
    out.withUnsafeMutableBufferPointer { Quant.dequantize(type, bytes, count: count, into: $0.baseAddress!) }
    return out
}

/// Float64 dot product and the sum of absolute products (the scale for rounding bounds).
func kernelDot64(_ a: [Float], _ b: [Float]) -> (dot: Double, absSum: Double) {
    var s = 0.0, m = 0.0
    for i in 0..<a.count {
        let p = Double(a[i]) * Double(b[i])
        s += p
        m += abs(p)
    }
    return (s, m)
}

/// A per-pair bound for float accumulation differences of a fused dot product: integer parts are exact, so the
/// only error is float rounding of block scales and sums, relative to the sum of absolute block contributions.
/// `offsetScale` covers formulations that add an offset or a min per block (q4_0/q5_0 offsets, K-quant mins).
func kernelDotBound(w: [Float], x: [Float], relative: Double = 2e-5) -> Double {
    var absSum = 0.0, xAbs = 0.0, wMax = 0.0
    for i in 0..<w.count {
        absSum += abs(Double(w[i]) * Double(x[i]))
        xAbs += abs(Double(x[i]))
        wMax = max(wMax, abs(Double(w[i])))
    }
    return relative * (absSum + 2 * wMax * xAbs) + 1e-30
}

extension Array where Element == Float {
    func bitPatterns() -> [UInt32] { map(\.bitPattern) }
}

/// Extra error of the q4_1/q5_1 dot: ggml's q8_1 stores s = f16(d * sum(qs)), used as m * s in place of
/// m * sum(x) (ggml_vec_dot_q4_1_q8_1), so each block adds up to |m| * |sum(x_block)| * 2^-10.
func kernelMinTermBound(_ type: GGMLType, _ wrow: UnsafeRawPointer, xd: [Float]) -> Double {
    guard type == .q4_1 || type == .q5_1 else { return 0 }
    var extra = 0.0
    for b in 0..<(xd.count / 32) {
        let m = Float(Float16(bitPattern: wrow.loadUnaligned(fromByteOffset: b * type.typeSize + 2, as: UInt16.self)))
        let sum = xd[(b * 32)..<((b + 1) * 32)].reduce(0.0) { $0 + Double($1) }
        extra += abs(Double(m)) * abs(sum) * 1.1e-3
    }
    return extra
}
