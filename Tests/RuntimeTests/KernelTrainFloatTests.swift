// The float kernels of the training ops (ck_train.c) and the bf16 GEMM (ck_bf16.c): SIMD paths against their scalar
// paths bitwise, and the scalar paths against Float64 math.
import CKernels
import Foundation
import Runtime
import Testing

@Suite("Kernel training floats")
struct KernelTrainFloatTests {
    static let lengths = Array(0...40) + [63, 64, 65, 127, 256, 1000, 4099]

    @Test("ck_exp_f32: within 1 ulp of exp over the normal range, 0 / inf / NaN at the edges, paths bitwise equal")
    func exp() {
        var rng = KernelRNG(21)
        for n in Self.lengths {
            var x = (0..<n).map { _ in rng.uniform() * 110 }
            if n > 6 { x[0] = .nan; x[1] = .infinity; x[2] = -.infinity; x[3] = 0; x[4] = -200; x[5] = 200 }
            var ref = [Float](repeating: 0, count: n), simd = ref
            ck_exp_f32_p(Int32(CK_PATH_REFERENCE), x, &ref, n)
            ck_exp_f32_p(Int32(CK_PATH_AVX512), x, &simd, n)
            #expect(ref.map(\.bitPattern) == simd.map(\.bitPattern), "n = \(n)")
            var worst = 0.0
            for i in 0..<n {
                let e = Foundation.exp(Double(x[i]))
                if x[i].isNaN { #expect(ref[i].isNaN); continue }
                if e > Double(Float.greatestFiniteMagnitude) { #expect(ref[i] == .infinity, "exp(\(x[i]))"); continue }
                if e < Double(Float.leastNormalMagnitude) { #expect(ref[i] >= 0 && ref[i] < 2e-38); continue }
                let ulp = Double(Float(e).nextUp - Float(e))
                worst = max(worst, abs(Double(ref[i]) - e) / ulp)
            }
            #expect(worst <= 1.0, "n = \(n): \(worst) ulp")
        }
    }

    @Test("ck_gelu_tanh_glu_fwd/bwd: exact GELU-tanh and its derivative (Float64), paths bitwise equal")
    func gelu() {
        var rng = KernelRNG(22)
        for n in Self.lengths {
            let g = kernelRandomFloats(n, &rng, scale: 3), u = kernelRandomFloats(n, &rng), dy = kernelRandomFloats(n, &rng)
            var y0 = [Float](repeating: 0, count: n), y1 = y0, dg0 = y0, dg1 = y0, du0 = y0, du1 = y0
            ck_gelu_tanh_glu_fwd_p(Int32(CK_PATH_REFERENCE), g, u, &y0, n)
            ck_gelu_tanh_glu_fwd_p(Int32(CK_PATH_AVX512), g, u, &y1, n)
            ck_gelu_tanh_glu_bwd_p(Int32(CK_PATH_REFERENCE), dy, g, u, &dg0, &du0, n)
            ck_gelu_tanh_glu_bwd_p(Int32(CK_PATH_AVX512), dy, g, u, &dg1, &du1, n)
            #expect(y0.map(\.bitPattern) == y1.map(\.bitPattern), "n = \(n)")
            #expect(dg0.map(\.bitPattern) == dg1.map(\.bitPattern), "n = \(n)")
            #expect(du0.map(\.bitPattern) == du1.map(\.bitPattern), "n = \(n)")
            let c = (2 / Double.pi).squareRoot(), k = 0.044715
            for i in 0..<n {
                let x = Double(g[i])
                let t = Foundation.tanh(c * (x + k * x * x * x))
                let act = 0.5 * x * (1 + t)
                let dact = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * k * x * x)
                let ey = act * Double(u[i]), edg = Double(dy[i]) * Double(u[i]) * dact, edu = Double(dy[i]) * act
                #expect(abs(Double(y0[i]) - ey) <= 1e-6 * abs(Double(u[i])) * (abs(x) + 1e-3), "y, g = \(x)")
                #expect(abs(Double(dg0[i]) - edg) <= 2e-6 * abs(Double(dy[i]) * Double(u[i])) * (abs(x) + 1), "dg, g = \(x)")
                #expect(abs(Double(du0[i]) - edu) <= 1e-6 * abs(Double(dy[i])) * (abs(x) + 1e-3), "du, g = \(x)")
            }
        }
    }

    @Test("ck_max_f32 and ck_exp_shift_sum: max, exp(x − m) in place and their sum, paths bitwise equal")
    func shiftedExp() {
        var rng = KernelRNG(23)
        for n in Self.lengths where n > 0 {
            let x = kernelRandomFloats(n, &rng, scale: 5)
            let m0 = ck_max_f32_p(Int32(CK_PATH_REFERENCE), x, n), m1 = ck_max_f32_p(Int32(CK_PATH_AVX512), x, n)
            #expect(m0 == x.max()! && m1 == m0, "n = \(n)")
            var a = x, b = x
            let s0 = ck_exp_shift_sum_p(Int32(CK_PATH_REFERENCE), &a, n, m0)
            let s1 = ck_exp_shift_sum_p(Int32(CK_PATH_AVX512), &b, n, m0)
            #expect(s0.bitPattern == s1.bitPattern && a.map(\.bitPattern) == b.map(\.bitPattern), "n = \(n)")
            let exact = x.reduce(0.0) { $0 + Foundation.exp(Double($1 - m0)) }
            #expect(abs(Double(s0) - exact) <= 1e-6 * exact * Double(n).squareRoot(), "n = \(n): \(s0) vs \(exact)")
        }
        var withNaN: [Float] = [1, .nan, 3, 2] + [Float](repeating: 0, count: 20)
        withNaN[17] = .nan
        #expect(ck_max_f32_p(Int32(CK_PATH_REFERENCE), withNaN, withNaN.count) == 3)
        #expect(ck_max_f32_p(Int32(CK_PATH_AVX512), withNaN, withNaN.count) == 3)
    }

    /// bf16 values as Double (exact).
    static func bf(_ h: UInt16) -> Double { Double(Float(bitPattern: UInt32(h) << 16)) }

    @Test("ck_gemm_bf16: the AVX512_BF16 kernel equals the scalar reference bitwise; the reference is the exact bf16 product sum up to f32 accumulation")
    func gemmBF16() {
        var rng = KernelRNG(24)
        for (m, n, k) in [(1, 1, 1), (3, 17, 5), (13, 33, 64), (25, 48, 129), (12, 31, 640), (97, 70, 300)] {
            let a = kernelRandomFloats(m * k, &rng), b = kernelRandomFloats(n * k, &rng)
            let kp = (k + 1) & ~1
            var ab = [UInt16](repeating: 0, count: m * kp)
            ck_bf16_convert_rows(a, k, m, k, &ab, kp)
            var bp = [UInt16](repeating: 0, count: ck_bf16_packed_count(n, k))
            ck_bf16_pack(b, k, 1, n, k, &bp)
            let c0 = kernelRandomFloats(m * n, &rng)
            for (alpha, beta) in [(Float(1), Float(0)), (Float(0.5), Float(1)), (Float(-2), Float(0.25))] {
                var cRef = c0, cFast = c0
                #expect(ck_gemm_bf16_ref(m, 0, n, k, ab, kp, bp, alpha, beta, &cRef, n) == 0)
                let rc = ck_gemm_bf16(m, 0, n, k, ab, kp, bp, alpha, beta, &cFast, n)
                #expect(rc == (ck_bf16_available() != 0 ? 0 : 1))
                #expect(cRef.map(\.bitPattern) == cFast.map(\.bitPattern), "\(m)x\(n)x\(k) alpha \(alpha) beta \(beta)")
                // Products of bf16 values are exact; 2k rounded adds of terms ≤ Σ|a·b| bound the error.
                for i in 0..<m {
                    for j in 0..<n {
                        var exact = 0.0, mag = 0.0
                        for l in 0..<k {
                            let p = Self.bf(ck_f32_to_bf16(a[i * k + l])) * Self.bf(ck_f32_to_bf16(b[j * k + l]))
                            exact += p
                            mag += abs(p)
                        }
                        let want = Double(alpha) * exact + (beta == 0 ? 0 : Double(beta) * Double(c0[i * n + j]))
                        let tol = Double(abs(alpha)) * mag * Double(2 * k) * 6e-8 + 1e-6 * abs(want) + 1e-30
                        #expect(abs(Double(cRef[i * n + j]) - want) <= tol, "(\(i), \(j)) of \(m)x\(n)x\(k)")
                    }
                }
            }
            // Column ranges starting at a panel boundary give the same values as the whole product.
            if n > 16 {
                var whole = [Float](repeating: 0, count: m * n), split = whole
                _ = ck_gemm_bf16(m, 0, n, k, ab, kp, bp, 1, 0, &whole, n)
                _ = ck_gemm_bf16(m, 0, 16, k, ab, kp, bp, 1, 0, &split, n)
                _ = ck_gemm_bf16(m, 16, n, k, ab, kp, bp, 1, 0, &split, n)
                #expect(whole.map(\.bitPattern) == split.map(\.bitPattern))
            }
        }
        #expect(ck_f32_to_bf16(1.00390625) == 0x3F80)  // halfway 1 + 2^-8: ties to even (down)
        #expect(ck_f32_to_bf16(1.01171875) == 0x3F82)  // halfway 1 + 3·2^-8: ties to even (up)
        #expect(ck_f32_to_bf16(.nan) & 0x7FC0 == 0x7FC0)
    }
}
