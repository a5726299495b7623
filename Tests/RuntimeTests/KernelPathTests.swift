// Kernel paths: the path decision from (CPUID, XCR0) on synthetic states, the real detection, and every path this
// CPU has against the scalar reference on the default model's shapes (bitwise where the order is shared, else
// within a stated bound).
import CKernels
import Foundation
import Runtime
import Testing

@Suite("Kernel paths")
struct KernelPathTests {
    // CPUID bits (Intel SDM vol. 2, CPUID leaf 1 ECX and leaf 7 EBX/ECX/EDX).
    static let fma: UInt32 = 1 << 12, osxsave: UInt32 = 1 << 27, avx: UInt32 = 1 << 28, f16c: UInt32 = 1 << 29
    static let avx2: UInt32 = 1 << 5, avx512f: UInt32 = 1 << 16, avx512bw: UInt32 = 1 << 30, avx512vl: UInt32 = 1 << 31
    static let vnni: UInt32 = 1 << 11, amxTile: UInt32 = 1 << 24, amxInt8: UInt32 = 1 << 25
    static let leaf1 = fma | osxsave | avx | f16c
    static let leaf7AVX512 = avx2 | avx512f | avx512bw | avx512vl
    // XCR0: x87 | SSE | YMM = 0x7; + opmask | ZMM_Hi256 | Hi16_ZMM = 0xe7; + XTILECFG | XTILEDATA = 0x600e7.
    static let xcrAVX: UInt64 = 0x7, xcrAVX512: UInt64 = 0xe7, xcrAMX: UInt64 = 0x600e7

    @Test("the path needs both the CPUID bits and the register state the OS enabled in XCR0")
    func pathDecision() {
        let cases: [(String, CPUState, KernelPath)] = [
            ("nothing", CPUState(), .reference),
            ("AVX2 CPU, OS saves YMM", CPUState(leaf1ECX: Self.leaf1, leaf7EBX: Self.avx2, xcr0: Self.xcrAVX), .avx2),
            ("AVX2 CPU, OS saves only SSE", CPUState(leaf1ECX: Self.leaf1, leaf7EBX: Self.avx2, xcr0: 0x3), .reference),
            ("AVX2 CPU, OSXSAVE clear", CPUState(leaf1ECX: Self.leaf1 & ~Self.osxsave, leaf7EBX: Self.avx2, xcr0: Self.xcrAVX),
             .reference),
            ("no F16C", CPUState(leaf1ECX: Self.leaf1 & ~Self.f16c, leaf7EBX: Self.avx2, xcr0: Self.xcrAVX), .reference),
            ("no FMA", CPUState(leaf1ECX: Self.leaf1 & ~Self.fma, leaf7EBX: Self.avx2, xcr0: Self.xcrAVX), .reference),
            ("AVX-512 CPU, OS saves ZMM", CPUState(leaf1ECX: Self.leaf1, leaf7EBX: Self.leaf7AVX512, leaf7ECX: Self.vnni,
                                                   xcr0: Self.xcrAVX512), .avx512),
            ("AVX-512 CPU, OS saves only YMM", CPUState(leaf1ECX: Self.leaf1, leaf7EBX: Self.leaf7AVX512,
                                                        leaf7ECX: Self.vnni, xcr0: Self.xcrAVX), .avx2),
            ("AVX-512 CPU, no Hi16_ZMM state", CPUState(leaf1ECX: Self.leaf1, leaf7EBX: Self.leaf7AVX512,
                                                        leaf7ECX: Self.vnni, xcr0: 0x67), .avx2),
            ("AVX-512 CPU, no opmask state", CPUState(leaf1ECX: Self.leaf1, leaf7EBX: Self.leaf7AVX512,
                                                      leaf7ECX: Self.vnni, xcr0: 0xc7), .avx2),
            ("AVX-512 without VNNI", CPUState(leaf1ECX: Self.leaf1, leaf7EBX: Self.leaf7AVX512, xcr0: Self.xcrAVX512),
             .avx2),
            ("AVX-512 without BW", CPUState(leaf1ECX: Self.leaf1, leaf7EBX: Self.leaf7AVX512 & ~Self.avx512bw,
                                            leaf7ECX: Self.vnni, xcr0: Self.xcrAVX512), .avx2),
            ("AVX-512 bits without AVX2", CPUState(leaf1ECX: Self.leaf1, leaf7EBX: Self.leaf7AVX512 & ~Self.avx2,
                                                   leaf7ECX: Self.vnni, xcr0: Self.xcrAVX512), .reference),
        ]
        for (name, state, expected) in cases {
            #expect(state.path == expected, "\(name): \(state.path), expected \(expected)")
        }
    }

    @Test("AMX counts only with CPUID AMX-TILE/INT8, XCR0 tile state and the Linux permission")
    func amxDecision() {
        let full = CPUState(leaf1ECX: Self.leaf1, leaf7EBX: Self.leaf7AVX512, leaf7ECX: Self.vnni,
                            leaf7EDX: Self.amxTile | Self.amxInt8, xcr0: Self.xcrAMX, amxPermitted: true)
        #expect(full.amxUsable)
        #expect(full.path == .avx512)
        var listedNotEnabled = full  // CPUID lists AMX, the OS does not save tile state: using it raises SIGILL
        listedNotEnabled.xcr0 = Self.xcrAVX512
        #expect(!listedNotEnabled.amxUsable)
        var notPermitted = full
        notPermitted.amxPermitted = false
        #expect(!notPermitted.amxUsable)
        var noInt8 = full
        noInt8.leaf7EDX = Self.amxTile
        #expect(!noInt8.amxUsable)
        var noOSXSAVE = full
        noOSXSAVE.leaf1ECX &= ~Self.osxsave
        #expect(!noOSXSAVE.amxUsable)
        #expect(noOSXSAVE.path == .reference)
    }

    @Test("the real detection: the chosen path is what CPUID and XCR0 allow (capped by LORAD_KERNELS)")
    func realDetection() {
        let state = CPUState.detect()
        print("[kernels] \(state.summary); best \(KernelPath.best); available \(KernelPath.available)")
        #expect(KernelPath.best.rawValue <= state.path.rawValue)
        if ProcessInfo.processInfo.environment["LORAD_KERNELS"] == nil {
            #expect(KernelPath.best == state.path)
        }
        #expect(KernelPath.available == KernelPath.allCases.filter { $0.rawValue <= KernelPath.best.rawValue })
        // The OS-enabled state must cover the chosen path (what `detect_path` used to skip).
        if KernelPath.best.rawValue >= KernelPath.avx2.rawValue { #expect(state.xcr0 & 0x6 == 0x6) }
        if KernelPath.best == .avx512 { #expect(state.xcr0 & 0xe6 == 0xe6) }
    }

    // MARK: - Float helpers: bitwise the same on every path

    @Test("attention helpers (dot, axpy, grouped heads, f16 conversion) are bitwise the reference on every path")
    func floatHelpersBitwise() {
        var rng = KernelRNG(77)
        let lengths = Array(0...70) + [95, 96, 97, 127, 128, 255, 256, 257, 640, 1024, 1031]
        for n in lengths {
            let heads = 4, stride = n + 5
            var a = kernelRandomFloats(heads * stride, &rng)
            a[0] = 300  // large query components, as Gemma's are
            let b = kernelRandomFloats(n, &rng, scale: 2)
            let bh = b.map { Float16($0).bitPattern }
            let alpha = kernelRandomFloats(heads, &rng)
            let y0 = kernelRandomFloats(heads * stride, &rng)
            func run(_ p: KernelPath) -> [UInt32] {
                let path = p.rawValue
                var out: [Float] = []
                out.append(ck_dot_f32_p(path, a, b, n))
                out.append(ck_dot_f32_f16_p(path, a, bh, n))
                var hd = [Float](repeating: .nan, count: heads)
                ck_dot_f32_f16_heads_p(path, a, stride, heads, bh, n, &hd)
                out += hd
                var y = y0
                ck_axpy_f32_p(path, alpha[0], b, &y, n)
                ck_axpy_f16_p(path, alpha[1], bh, &y, n)
                ck_axpy_f16_heads_p(path, alpha, heads, bh, &y, stride, n)
                out += y
                var h16 = [UInt16](repeating: 0, count: n)
                ck_f32_to_f16_p(path, b, &h16, n)
                out += h16.map { Float(bitPattern: UInt32($0)) }
                var f32 = [Float](repeating: 0, count: n)
                ck_f16_to_f32_p(path, bh, &f32, n)
                out += f32
                return out.map(\.bitPattern)
            }
            let ref = run(.reference)
            for path in KernelPath.available where path != .reference {
                #expect(run(path) == ref, "n = \(n): \(path) differs from the reference")
            }
            // And the reference is a sum of the exact products within the usual float bound.
            var exact = 0.0, mag = 0.0
            for i in 0..<n {
                exact += Double(a[i]) * Double(b[i])
                mag += abs(Double(a[i]) * Double(b[i]))
            }
            let got = Double(Float(bitPattern: ref[0]))
            #expect(abs(got - exact) <= 2e-6 * Double(max(n, 1)).squareRoot() * mag + 1e-30, "n = \(n)")
        }
    }

    // MARK: - Matmul on the default model's shapes

    /// Gemma 3 270M (Q4_K_M), rows x cols: attn_q q5_0 1024x640, attn_k q5_0 256x640, attn_v q5_0 / q8_0 256x640,
    /// attn_output q4_K 640x1024, ffn_gate/up q5_0 2048x640, ffn_down q4_K / q6_K 640x2048, and a slice of the tied
    /// q8_0 output head 262144x640 (logits flag).
    static let modelShapes: [(GGMLType, Int, Int, Bool)] = [
        (.q5_0, 1024, 640, false), (.q5_0, 256, 640, false), (.q8_0, 256, 640, false), (.q4_K, 640, 1024, false),
        (.q5_0, 2048, 640, false), (.q4_K, 640, 2048, false), (.q6_K, 640, 2048, false), (.q8_0, 4096, 640, true),
    ]

    /// AVX2 and AVX-512 agree bitwise. The scalar reference sums each pair in ggml's order (block by block), the
    /// SIMD paths in 8 lanes, from the same exact integer block sums and the same scales. Each order is a sum of
    /// at most cols/32 + 8 block and correction terms, each with at most 3 roundings (scale product, FMA, final
    /// horizontal adds), so each is within (cols/32 + 16) u S of the exact sum (Higham, Accuracy and Stability of
    /// Numerical Algorithms, 2nd ed., §4.2; u = 2^-24), S = Σ|w_i x_i| + 2 max|w| Σ|x| bounding the absolute
    /// block terms (q4_0/q5_0 offsets included). The stated bound between a path and the reference is therefore
    /// |y_path − y_ref| ≤ 2 (cols/32 + 16) u S.
    @Test("every path against the scalar reference on the model's shapes: SIMD paths bitwise, reference within 2(cols/32+16)uS")
    func modelShapesEveryPath() {
        var rng = KernelRNG(2026)
        let pool = ComputePool(threads: 2)
        let n = 5
        for (type, rows, cols, logits) in Self.modelShapes {
            let w = kernelQuantizedRows(type, kernelRandomFloats(rows * cols, &rng, scale: 0.05), rows: rows, cols: cols)
            var x = kernelRandomFloats(n * cols, &rng)
            for i in stride(from: 3, to: x.count, by: 97) { x[i] *= 60 }  // outlier channels, as Gemma's residuals
            var results: [KernelPath: [Float]] = [:]
            w.withUnsafeBytes { wp in
                let m = WeightMatrix(type: type, rows: rows, cols: cols, data: wp.baseAddress!).withBatchCopy()
                for path in KernelPath.available {
                    var y = [Float](repeating: .nan, count: n * rows)
                    matmul(m, x, n: n, &y, pool: pool, path: path, logits: logits)
                    results[path] = y
                }
            }
            if let a = results[.avx2], let b = results[.avx512] {
                #expect(a.bitPatterns() == b.bitPatterns(), "\(type) \(rows)x\(cols): avx2 and avx512 differ")
            }
            guard let ref = results[.reference] else { continue }
            let vt = Quant.vecDotType(type)!
            let xq = kernelQuantizedRows(vt, x, rows: n, cols: cols)
            let wRowBytes = type.byteCount(elements: cols)!, xRowBytes = vt.byteCount(elements: cols)!
            var worst = 0.0
            w.withUnsafeBytes { wp in
                xq.withUnsafeBytes { xp in
                    let xds = (0..<n).map { kernelDequantized(vt, xp.baseAddress! + $0 * xRowBytes, count: cols) }
                    for r in 0..<rows {
                        let wrow = wp.baseAddress! + r * wRowBytes
                        let wd = kernelDequantized(type, wrow, count: cols)
                        for j in 0..<n {
                            let bound = 2 * kernelDotBound(w: wd, x: xds[j], relative: Double(cols / 32 + 16) * 0x1p-24)
                            for path in KernelPath.available where path != .reference {
                                let d = abs(Double(results[path]![j * rows + r]) - Double(ref[j * rows + r]))
                                worst = max(worst, d / bound)
                                #expect(d <= bound, "\(type) \(rows)x\(cols) \(path) (\(r), \(j)): \(d) > \(bound)")
                            }
                        }
                    }
                }
            }
            print("[kernels] \(type) \(rows)x\(cols)\(logits ? " logits" : ""): largest |path - reference| / bound = \(worst)")
        }
    }
}
