// Each op's backward (float32) against central differences of an independent float64 forward written here from the
// op's equations, for the scalar L = Σ r ∘ y with a random r (so ∂L/∂y = r). Step 1e-5 in double; tolerance 1e-4 on
// the relative L2 error (the analytic side is float32). The float32 forward is also checked against the float64
// one.
import Foundation
import Runtime
import Testing
import Train

/// Central differences of `loss` at `x` (double).
func centralDifferences(_ x: [Double], h: Double = 1e-5, _ loss: ([Double]) -> Double) -> [Double] {
    var out = [Double](repeating: 0, count: x.count)
    var p = x
    for i in x.indices {
        p[i] = x[i] + h
        let a = loss(p)
        p[i] = x[i] - h
        let b = loss(p)
        p[i] = x[i]
        out[i] = (a - b) / (2 * h)
    }
    return out
}

func randomFloats(_ n: Int, _ rng: inout SplitMix, scale: Float = 1) -> [Float] {
    (0..<n).map { _ in rng.nextFloat() * scale }
}

func dotD(_ a: [Double], _ b: [Float]) -> Double { zip(a, b).reduce(0) { $0 + $1.0 * Double($1.1) } }

@Suite struct OpGradientTests {
    static let tol = 1e-4

    @Test func rmsnorm() {
        var rng = SplitMix(1)
        let rows = 3, width = 16
        let x = randomFloats(rows * width, &rng), w = randomFloats(width, &rng).map { 1 + 0.5 * $0 }
        let r = randomFloats(rows * width, &rng)
        let eps = 1e-6
        func ref(_ x: [Double]) -> [Double] {
            var y = x
            for i in 0..<rows {
                let s = 1 / ((0..<width).reduce(0.0) { $0 + x[i * width + $1] * x[i * width + $1] } / Double(width) + eps).squareRoot()
                for j in 0..<width { y[i * width + j] = x[i * width + j] * s * Double(w[j]) }
            }
            return y
        }
        var y = [Float](repeating: 0, count: rows * width), rstd = [Float](repeating: 0, count: rows)
        var dx = [Float](repeating: 0, count: rows * width)
        rmsnormForward(x, w, &y, rstd: &rstd, rows: rows, width: width, eps: Float(eps))
        rmsnormBackward(r, x, w, rstd: rstd, &dx, rows: rows, width: width, accumulate: false)
        let xd = x.map(Double.init)
        #expect(compare(y.map(Double.init), ref(xd)).rel < 1e-6)
        let fd = centralDifferences(xd) { dotD(ref($0), r) }
        let (rel, maxAbs) = compare(dx.map(Double.init), fd)
        print("rmsnorm backward: rel \(rel), max abs \(maxAbs)")
        #expect(rel < Self.tol)
    }

    @Test(arguments: [RopeStyle.neox, RopeStyle.normal])
    func rope(style: RopeStyle) {
        var rng = SplitMix(2)
        let rows = 3, heads = 2, headDim = 8, dims = 6  // partial rotation: 6 of 8 dims
        let stride = heads * headDim
        let positions: [Int32] = [0, 5, 17]
        let table = RopeTable(positions: 18, base: 10_000, dims: dims, scale: 1, freqFactors: nil)
        let x = randomFloats(rows * stride, &rng), r = randomFloats(rows * stride, &rng)
        let half = dims / 2
        func ref(_ x: [Double]) -> [Double] {
            var y = x
            for i in 0..<rows {
                for h in 0..<heads {
                    for k in 0..<half {
                        let theta = Double(positions[i]) * pow(10_000, -2 * Double(k) / Double(dims))
                        let (a, b) = style == .neox ? (k, k + half) : (2 * k, 2 * k + 1)
                        let o = i * stride + h * headDim
                        y[o + a] = x[o + a] * cos(theta) - x[o + b] * sin(theta)
                        y[o + b] = x[o + a] * sin(theta) + x[o + b] * cos(theta)
                    }
                }
            }
            return y
        }
        var y = x
        positions.withUnsafeBufferPointer {
            ropeForward(&y, rows: rows, rowStride: stride, heads: heads, headDim: headDim, positions: $0.baseAddress!,
                        table: table, style: style)
        }
        #expect(compare(y.map(Double.init), ref(x.map(Double.init))).rel < 1e-5)
        var dx = r
        positions.withUnsafeBufferPointer {
            ropeBackward(&dx, rows: rows, rowStride: stride, heads: heads, headDim: headDim, positions: $0.baseAddress!,
                         table: table, style: style)
        }
        let fd = centralDifferences(x.map(Double.init)) { dotD(ref($0), r) }
        let (rel, maxAbs) = compare(dx.map(Double.init), fd)
        print("rope \(style) backward: rel \(rel), max abs \(maxAbs)")
        #expect(rel < Self.tol)
    }

    @Test(arguments: [FFNActivation.geluTanh, FFNActivation.silu])
    func gatedActivation(activation: FFNActivation) {
        var rng = SplitMix(3)
        let n = 64
        let g = randomFloats(n, &rng, scale: 4), u = randomFloats(n, &rng, scale: 2), r = randomFloats(n, &rng)
        func act(_ x: Double) -> Double {
            activation == .silu ? x / (1 + exp(-x))
                : 0.5 * x * (1 + tanh((2 / Double.pi).squareRoot() * (x + 0.044715 * x * x * x)))
        }
        var y = [Float](repeating: 0, count: n), dg = y, du = y
        gluForward(g, u, &y, count: n, activation: activation)
        #expect(compare(y.map(Double.init), (0..<n).map { act(Double(g[$0])) * Double(u[$0]) }).rel < 1e-6)
        gluBackward(r, g, u, dg: &dg, du: &du, count: n, activation: activation)
        let all = (g + u).map(Double.init)
        let fd = centralDifferences(all) { v in (0..<n).reduce(0.0) { $0 + act(v[$1]) * v[n + $1] * Double(r[$1]) } }
        let (rel, maxAbs) = compare((dg + du).map(Double.init), fd)
        print("\(activation) gated backward: rel \(rel), max abs \(maxAbs)")
        #expect(rel < Self.tol)
    }

    @Test func linearWithLoRA() {
        var rng = SplitMix(4)
        let T = 3, nIn = 32, nOut = 16, rank = 2, scale: Float = 1.5
        let pool = ComputePool(threads: 2)
        let w = randomFloats(nOut * nIn, &rng, scale: 0.3), x = randomFloats(T * nIn, &rng)
        var a = randomFloats(rank * nIn, &rng, scale: 0.3), b = randomFloats(nOut * rank, &rng, scale: 0.3)
        let r = randomFloats(T * nOut, &rng)
        func ref(_ v: [Double]) -> [Double] {  // v = x ‖ A ‖ B
            let xs = v[0..<(T * nIn)].map { $0 }, A = Array(v[(T * nIn)..<(T * nIn + rank * nIn)])
            let B = Array(v[(T * nIn + rank * nIn)...])
            var y = [Double](repeating: 0, count: T * nOut)
            for t in 0..<T {
                var ax = [Double](repeating: 0, count: rank)
                for k in 0..<rank { for i in 0..<nIn { ax[k] += A[k * nIn + i] * xs[t * nIn + i] } }
                for o in 0..<nOut {
                    var s = 0.0
                    for i in 0..<nIn { s += Double(w[o * nIn + i]) * xs[t * nIn + i] }
                    for k in 0..<rank { s += Double(scale) * B[o * rank + k] * ax[k] }
                    y[t * nOut + o] = s
                }
            }
            return y
        }
        var y = [Float](repeating: 0, count: T * nOut), t = [Float](repeating: 0, count: T * rank)
        var dx = [Float](repeating: 0, count: T * nIn), dt = t
        var dA = [Float](repeating: 0, count: rank * nIn), dB = [Float](repeating: 0, count: nOut * rank)
        a.withUnsafeMutableBufferPointer { ap in
            b.withUnsafeMutableBufferPointer { bp in
                dA.withUnsafeMutableBufferPointer { dap in
                    dB.withUnsafeMutableBufferPointer { dbp in
                        let term = LoRATerm(a: ap.baseAddress!, b: bp.baseAddress!, dA: dap.baseAddress!,
                                            dB: dbp.baseAddress!, rank: rank, scale: scale)
                        linearForward(pool, wf: w, nIn: nIn, nOut: nOut, x: x, rows: T, y: &y, lora: term, t: &t)
                        linearBackward(pool, wf: w, nIn: nIn, nOut: nOut, dy: r, x: x, rows: T, dx: &dx,
                                       accumulate: false, lora: term, t: t, dt: &dt)
                    }
                }
            }
        }
        let v = (x + a + b).map(Double.init)
        #expect(compare(y.map(Double.init), ref(v)).rel < 1e-6)
        let fd = centralDifferences(v) { dotD(ref($0), r) }
        let (rel, maxAbs) = compare((dx + dA + dB).map(Double.init), fd)
        print("linear + LoRA backward (dx, dA, dB): rel \(rel), max abs \(maxAbs)")
        #expect(rel < Self.tol)
    }

    @Test(arguments: [nil, 3] as [Int?])
    func attention(window: Int?) {
        var rng = SplitMix(5)
        let shape = AttentionShape(nHead: 4, nHeadKV: 2, headDim: 8, scale: 0.35, window: window)
        let spans: [(start: Int, count: Int)] = [(0, 5), (5, 4)]
        let T = 9, qd = shape.qDim, kvd = shape.kvDim, Dh = shape.headDim
        let pool = ComputePool(threads: 2)
        let q = randomFloats(T * qd, &rng), k = randomFloats(T * kvd, &rng), v = randomFloats(T * kvd, &rng)
        let r = randomFloats(T * qd, &rng)
        func ref(_ all: [Double]) -> [Double] {
            let Q = Array(all[0..<(T * qd)]), K = Array(all[(T * qd)..<(T * qd + T * kvd)]), V = Array(all[(T * qd + T * kvd)...])
            var out = [Double](repeating: 0, count: T * qd)
            for (start, L) in spans {
                for h in 0..<shape.nHead {
                    let g = h / (shape.nHead / shape.nHeadKV)
                    for i in 0..<L {
                        let lo = window.map { max(0, i - $0 + 1) } ?? 0
                        var s = [Double]()
                        for j in lo...i {
                            var d = 0.0
                            let qo: Int = (start + i) * qd + h * Dh
                            let ko: Int = (start + j) * kvd + g * Dh
                            for e in 0..<Dh { d += Q[qo + e] * K[ko + e] }
                            s.append(d * Double(shape.scale))
                        }
                        let m = s.max()!
                        let ex = s.map { exp($0 - m) }
                        let z = ex.reduce(0, +)
                        for (jj, j) in (lo...i).enumerated() {
                            let oo: Int = (start + i) * qd + h * Dh
                            let vo: Int = (start + j) * kvd + g * Dh
                            let pj: Double = ex[jj] / z
                            for e in 0..<Dh { out[oo + e] += pj * V[vo + e] }
                        }
                    }
                }
            }
            return out
        }
        var out = [Float](repeating: 0, count: T * qd)
        attentionForward(pool, q: q, k: k, v: v, out: &out, spans: spans, shape: shape)
        let all = (q + k + v).map(Double.init)
        #expect(compare(out.map(Double.init), ref(all)).rel < 1e-5)
        var dq = [Float](repeating: 0, count: T * qd), dk = [Float](repeating: 0, count: T * kvd), dv = dk
        attentionBackward(pool, dOut: r, q: q, k: k, v: v, out: out, dq: &dq, dk: &dk, dv: &dv, spans: spans, shape: shape)
        let fd = centralDifferences(all) { dotD(ref($0), r) }
        let (rel, maxAbs) = compare((dq + dk + dv).map(Double.init), fd)
        print("attention (GQA, 2 packed sequences, window \(window.map(String.init) ?? "none")) backward: rel \(rel), max abs \(maxAbs)")
        #expect(rel < Self.tol)
    }

    /// Attention in float64, as the test above (q, k, v concatenated in `all`).
    static func attentionReference(_ all: [Double], T: Int, spans: [(start: Int, count: Int)],
                                   shape: AttentionShape) -> [Double] {
        let qd = shape.qDim, kvd = shape.kvDim, Dh = shape.headDim
        var out = [Double](repeating: 0, count: T * qd)
        for (start, L) in spans {
            for h in 0..<shape.nHead {
                let g = h / (shape.nHead / shape.nHeadKV)
                for i in 0..<L {
                    let lo = shape.window.map { max(0, i - $0 + 1) } ?? 0
                    var s = [Double]()
                    for j in lo...i {
                        var d = 0.0
                        for e in 0..<Dh { d += all[(start + i) * qd + h * Dh + e] * all[T * qd + (start + j) * kvd + g * Dh + e] }
                        s.append(d * Double(shape.scale))
                    }
                    let m = s.max()!
                    let ex = s.map { exp($0 - m) }
                    let z = ex.reduce(0, +)
                    for (jj, j) in (lo...i).enumerated() {
                        for e in 0..<Dh {
                            out[(start + i) * qd + h * Dh + e] += ex[jj] / z * all[T * qd + T * kvd + (start + j) * kvd + g * Dh + e]
                        }
                    }
                }
            }
        }
        return out
    }

    /// Sequences longer than one block of query rows (`attentionRowBlock` = 64: the products skip the masked upper
    /// triangle block by block), with a window that crosses block boundaries or none: forward against float64,
    /// backward against central differences at 90 sampled inputs (rows before, at and after block boundaries).
    @Test(arguments: [nil, 40] as [Int?])
    func attentionRowBlocks(window: Int?) {
        var rng = SplitMix(15)
        let shape = AttentionShape(nHead: 4, nHeadKV: 2, headDim: 4, scale: 0.5, window: window)
        let spans: [(start: Int, count: Int)] = [(0, 150), (150, 70)]
        let T = 220, qd = shape.qDim, kvd = shape.kvDim
        let pool = ComputePool(threads: 2)
        let q = randomFloats(T * qd, &rng), k = randomFloats(T * kvd, &rng), v = randomFloats(T * kvd, &rng)
        let r = randomFloats(T * qd, &rng)
        let all = (q + k + v).map(Double.init)
        var out = [Float](repeating: 0, count: T * qd)
        attentionForward(pool, q: q, k: k, v: v, out: &out, spans: spans, shape: shape)
        let fwd = compare(out.map(Double.init), Self.attentionReference(all, T: T, spans: spans, shape: shape))
        #expect(fwd.rel < 1e-5)
        var dq = [Float](repeating: 0, count: T * qd), dk = [Float](repeating: 0, count: T * kvd), dv = dk
        attentionBackward(pool, dOut: r, q: q, k: k, v: v, out: out, dq: &dq, dk: &dk, dv: &dv, spans: spans, shape: shape)
        let grad = (dq + dk + dv).map(Double.init)
        let rows = [0, 1, 40, 63, 64, 65, 100, 127, 128, 149, 150, 151, 200, 213, 219]
        var picked: [Double] = [], fd: [Double] = []
        var p = all
        for (n, row) in rows.enumerated() {
            for idx in [row * qd + (n * 5) % qd, T * qd + row * kvd + (n * 3) % kvd, T * qd + T * kvd + row * kvd + n % kvd,
                        row * qd + (n * 7 + 3) % qd, T * qd + row * kvd + (n + 1) % kvd, T * qd + T * kvd + row * kvd + (n + 5) % kvd] {
                let h = 1e-5
                p[idx] = all[idx] + h
                let a = dotD(Self.attentionReference(p, T: T, spans: spans, shape: shape), r)
                p[idx] = all[idx] - h
                let b = dotD(Self.attentionReference(p, T: T, spans: spans, shape: shape), r)
                p[idx] = all[idx]
                fd.append((a - b) / (2 * h))
                picked.append(grad[idx])
            }
        }
        let (rel, maxAbs) = compare(picked, fd)
        print("attention row blocks (L = 150 and 70, window \(window.map(String.init) ?? "none")): forward rel \(fwd.rel), backward rel \(rel), max abs \(maxAbs) at \(fd.count) inputs")
        #expect(rel < Self.tol)
    }

    /// The chunked head (tiles of 64 over a 300-word vocabulary, split over 2 threads) against a float64 log-softmax,
    /// its gradient against central differences of −log p, and its hits against the float64 logits' argmax.
    @Test func outputHeadCrossEntropy() {
        var rng = SplitMix(6)
        let N = 3, D = 32, V = 300
        let pool = ComputePool(threads: 2)
        let w = randomFloats(V * D, &rng), xn = randomFloats(N * D, &rng)
        func argmax(_ i: Int) -> Int {
            let logits = (0..<V).map { v in (0..<D).reduce(0.0) { $0 + Double(w[v * D + $1]) * Double(xn[i * D + $1]) } }
            return logits.indices.max { logits[$0] < logits[$1] }!
        }
        // Rows 0 and 2 target their most likely word, row 1 another one.
        let targets: [Int32] = [Int32(argmax(0)), argmax(1) == 299 ? 298 : 299, Int32(argmax(2))]
        func nll(_ x: [Double]) -> [Double] {
            (0..<N).map { i in
                let logits = (0..<V).map { v in (0..<D).reduce(0.0) { $0 + Double(w[v * D + $1]) * x[i * D + $1] } }
                let m = logits.max()!
                let lse = m + log(logits.reduce(0) { $0 + exp($1 - m) })
                return lse - logits[Int(targets[i])]
            }
        }
        var logp = [Double](repeating: 0, count: N), grad = [Float](repeating: 0, count: N * D)
        var hits = [Bool](repeating: false, count: N)
        w.withUnsafeBytes { raw in
            let m = WeightMatrix(type: .f32, rows: V, cols: D, data: raw.baseAddress!)
            outputHead(pool, w: m, xn: xn, rows: N, targets: targets, logp: &logp, grad: &grad, hits: &hits, tile: 64)
        }
        #expect(hits == [true, false, true])
        let xd = xn.map(Double.init)
        #expect(compare(logp.map { -$0 }, nll(xd)).rel < 1e-6)
        let fd = centralDifferences(xd) { nll($0).reduce(0, +) }
        let (rel, maxAbs) = compare(grad.map(Double.init), fd)
        print("output head cross-entropy backward: rel \(rel), max abs \(maxAbs)")
        #expect(rel < Self.tol)
    }
}
