// Float helpers for attention / KV cache (ck_dot_f32, ck_dot_f32_f16, ck_axpy_*, f16 conversions) against plain
// Float64 loops and Swift's own Float16 conversions.
import CKernels
import Foundation
import Runtime
import Testing

@Suite("Kernel float helpers")
struct KernelFloatTests {
    static let lengths = Array(0...40) + [63, 64, 65, 127, 256, 1000, 4099]

    @Test("ck_dot_f32 and ck_dot_f32_f16 match a Float64 loop")
    func dots() {
        var rng = KernelRNG(5)
        for n in Self.lengths {
            let a = kernelRandomFloats(n, &rng), b = kernelRandomFloats(n, &rng)
            let bh = b.map { Float16($0) }
            let bhBits = bh.map(\.bitPattern)
            var exact = 0.0, exactH = 0.0, mag = 0.0
            for i in 0..<n {
                exact += Double(a[i]) * Double(b[i])
                exactH += Double(a[i]) * Double(Float(bh[i]))
                mag += abs(Double(a[i]) * Double(b[i])) * 1.01
            }
            let bound = 2e-6 * Double(max(n, 1)).squareRoot() * mag + 1e-30
            let got = ck_dot_f32(a, b, n)
            let gotH = ck_dot_f32_f16(a, bhBits, n)
            #expect(abs(Double(got) - exact) <= bound, "n = \(n): \(got) vs \(exact)")
            #expect(abs(Double(gotH) - exactH) <= bound, "n = \(n): \(gotH) vs \(exactH)")
        }
    }

    @Test("ck_axpy_f32 and ck_axpy_f16 match y + a*x per element")
    func axpy() {
        var rng = KernelRNG(6)
        for n in Self.lengths {
            let x = kernelRandomFloats(n, &rng), y0 = kernelRandomFloats(n, &rng)
            let a: Float = rng.uniform() * 3
            let xh = x.map { Float16($0) }
            var y = y0, yh = y0
            ck_axpy_f32(a, x, &y, n)
            ck_axpy_f16(a, xh.map(\.bitPattern), &yh, n)
            for i in 0..<n {
                // One rounding (FMA) or two (multiply, add): within 2 ulp of the exact value.
                let e = Double(y0[i]) + Double(a) * Double(x[i])
                let eh = Double(y0[i]) + Double(a) * Double(Float(xh[i]))
                let tol = 2.5e-7 * (abs(Double(y0[i])) + abs(Double(a) * Double(x[i]))) + 1e-30
                #expect(abs(Double(y[i]) - e) <= tol, "n = \(n), i = \(i)")
                #expect(abs(Double(yh[i]) - eh) <= tol, "n = \(n), i = \(i) (f16)")
            }
        }
    }

    /// Grouped-query attention converts a key/value row once for several query heads; each head's result must
    /// still be bitwise the single-head kernel's (the batch invariance of attention depends on it).
    @Test("ck_dot_f32_f16_heads and ck_axpy_f16_heads equal the single-head kernels bitwise")
    func headsBitwise() {
        var rng = KernelRNG(9)
        for n in [1, 7, 8, 31, 32, 33, 64, 100, 256, 257] {
            for heads in 1...5 {
                let stride = n + 3
                let a = kernelRandomFloats(heads * stride, &rng)
                let b = kernelRandomFloats(n, &rng).map { Float16($0).bitPattern }
                var out = [Float](repeating: .nan, count: heads)
                ck_dot_f32_f16_heads(a, stride, heads, b, n, &out)
                let alpha = kernelRandomFloats(heads, &rng)
                let y0 = kernelRandomFloats(heads * stride, &rng)
                var y = y0
                ck_axpy_f16_heads(alpha, heads, b, &y, stride, n)
                for h in 0..<heads {
                    let single = a.withUnsafeBufferPointer { ck_dot_f32_f16($0.baseAddress! + h * stride, b, n) }
                    #expect(out[h].bitPattern == single.bitPattern, "dot n = \(n), head \(h) of \(heads)")
                    var yh = Array(y0[(h * stride)..<(h * stride + n)])
                    ck_axpy_f16(alpha[h], b, &yh, n)
                    #expect(Array(y[(h * stride)..<(h * stride + n)]).map(\.bitPattern) == yh.map(\.bitPattern),
                            "axpy n = \(n), head \(h) of \(heads)")
                    #expect(Array(y[(h * stride + n)..<((h + 1) * stride)]) == Array(y0[(h * stride + n)..<((h + 1) * stride)]),
                            "axpy wrote past n")
                }
            }
        }
    }

    @Test("f16 -> f32 is exact for all 65536 bit patterns")
    func halfToFloatAllPatterns() {
        let bits = (0...0xffff).map { UInt16($0) }
        var out = [Float](repeating: 0, count: bits.count)
        ck_f16_to_f32(bits, &out, bits.count)
        var bad = 0
        for (i, h) in bits.enumerated() {
            let expected = Float(Float16(bitPattern: h))
            if expected.isNaN ? !out[i].isNaN : out[i].bitPattern != expected.bitPattern { bad += 1 }
        }
        #expect(bad == 0)
        // The scalar dequantizer agrees (Quant.dequantize for f16 uses the same conversion rules).
        var viaQuant = [Float](repeating: 0, count: bits.count)
        bits.withUnsafeBytes { Quant.dequantize(.f16, $0.baseAddress!, count: bits.count, into: &viaQuant) }
        #expect(zip(viaQuant, out).allSatisfy { $0.isNaN ? $1.isNaN : $0.bitPattern == $1.bitPattern })
    }

    @Test("f32 -> f16 rounds to nearest even like Swift's Float16, incl. subnormals, overflow, ties")
    func floatToHalf() {
        var rng = KernelRNG(8)
        var values: [Float] = [0, -0, 1, -1, 65504, 65519.99, 65520, -65520, 1e9, -1e9, .infinity, -.infinity,
                               5.96e-8, 2.98e-8, 2.99e-8, 6.1e-5, 6.09e-5, 1e-10, -3e-6, 0.1, 1.0009765625,
                               1.00048828125, 1.00146484375, 2049, 2051]
        for _ in 0..<20_000 {
            let e = Int(rng.next() % 40) - 28
            values.append(rng.uniform() * Float(pow(2.0, Double(e))))
            values.append(Float(bitPattern: UInt32(truncatingIfNeeded: rng.next()) & 0x7fff_ffff | 0x3000_0000))
        }
        values = values.filter { !$0.isNaN }
        var out = [UInt16](repeating: 0, count: values.count)
        ck_f32_to_f16(values, &out, values.count)
        var viaQuant = [UInt16](repeating: 0, count: values.count)
        values.withUnsafeBufferPointer { src in
            viaQuant.withUnsafeMutableBytes { Quant.quantize(.f16, src.baseAddress!, count: values.count, into: $0.baseAddress!) }
        }
        var bad = 0, badQuant = 0
        for i in 0..<values.count {
            let expected = Float16(values[i]).bitPattern
            if out[i] != expected { bad += 1 }
            if viaQuant[i] != expected { badQuant += 1 }
        }
        #expect(bad == 0)
        #expect(badQuant == 0)
        var nanOut: [UInt16] = [0]
        ck_f32_to_f16([Float.nan], &nanOut, 1)
        #expect(Float16(bitPattern: nanOut[0]).isNaN)
    }
}

