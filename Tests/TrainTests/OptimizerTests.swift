// AdamW, clipping, schedules, accumulation and the RNG, each against an independent float64 computation of the
// published formula (torch.optim.AdamW's documentation, clip_grad_norm_, transformers' schedule functions) or
// against published test vectors (xoshiro256**, SplitMix64).
import Foundation
import Testing
import Train

@Suite("Optimizer")
struct OptimizerTests {
    /// torch.optim.AdamW's algorithm as its documentation writes it, in f64.
    struct ReferenceAdamW {
        var m: [Double], v: [Double], t = 0
        let lr: Double, b1: Double, b2: Double, eps: Double, wd: Double
        mutating func step(_ p: inout [Double], _ g: [Double]) {
            t += 1
            for i in p.indices {
                p[i] -= lr * wd * p[i]
                m[i] = b1 * m[i] + (1 - b1) * g[i]
                v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
                let mh = m[i] / (1 - pow(b1, Double(t))), vh = v[i] / (1 - pow(b2, Double(t)))
                p[i] -= lr * mh / (vh.squareRoot() + eps)
            }
        }
    }

    @Test("AdamW equals an independent f64 implementation over 20 steps")
    func adamwMatchesReference() {
        var rng = TrainingRNG(seed: 7)
        let n = 257
        var p = (0..<n).map { _ in rng.uniform(bound: 1) }
        var ref = ReferenceAdamW(m: .init(repeating: 0, count: n), v: .init(repeating: 0, count: n),
                                 lr: 1e-2, b1: 0.9, b2: 0.999, eps: 1e-8, wd: 0.1)
        var p64 = p.map(Double.init)
        var opt = AdamW(count: n, config: AdamWConfig(beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1))
        var worst = 0.0
        for _ in 0..<20 {
            let g = (0..<n).map { i in rng.uniform(bound: 1) * (i % 3 == 0 ? 1e-3 : 1) }
            opt.step(params: &p, grad: g, lr: 1e-2)
            ref.step(&p64, g.map(Double.init))
            for i in 0..<n { worst = max(worst, abs(Double(p[i]) - p64[i])) }
        }
        print("AdamW vs f64 reference, 20 steps: max |Δp| = \(worst)")
        #expect(worst < 2e-6)
        #expect(opt.state.step == 20)
        for i in 0..<n {
            #expect(abs(Double(opt.state.m[i]) - ref.m[i]) <= 1e-6 * max(1, abs(ref.m[i])))
            #expect(abs(Double(opt.state.v[i]) - ref.v[i]) <= 1e-6 * max(1e-3, abs(ref.v[i])))
        }
    }

    @Test("weight decay is decoupled: with zero gradients p shrinks by (1 − lr·wd) per step and the moments stay 0")
    func decoupledDecay() {
        var p: [Float] = [1, -2, 0.5, 0]
        var opt = AdamW(count: 4, config: AdamWConfig(weightDecay: 0.1))
        for _ in 0..<10 { opt.step(params: &p, grad: [0, 0, 0, 0], lr: 0.5) }
        let f = pow(1 - 0.5 * 0.1, 10.0)
        for (a, b) in zip(p, [1, -2, 0.5, 0].map { $0 * f }) { #expect(abs(Double(a) - b) < 1e-6) }
        #expect(opt.state.m == [0, 0, 0, 0] && opt.state.v == [0, 0, 0, 0])
        // L2-in-the-gradient (Adam + weight decay) would instead move p by ≈ lr per step regardless of |p|.
        var q: [Float] = [1]
        var plain = AdamW(count: 1, config: AdamWConfig(weightDecay: 0))
        plain.step(params: &q, grad: [0], lr: 0.5)
        #expect(q == [1])
    }

    @Test("clipping by global norm: PyTorch's max_norm/(norm+1e-6), untouched below the limit")
    func clipping() {
        var g: [Float] = [3, 4, 0, 12]  // norm 13
        let norm = GradientClipping.clip(&g, maxNorm: 1)
        #expect(norm == 13)
        let s = 1 / (13 + 1e-6)
        for (a, b) in zip(g, [3.0, 4, 0, 12].map { $0 * s }) { #expect(abs(Double(a) - b) < 1e-7) }
        var small: [Float] = [0.3, 0.4]
        #expect(abs(GradientClipping.clip(&small, maxNorm: 1) - 0.5) < 1e-7)
        #expect(small == [0.3, 0.4])
    }

    @Test("schedules at known points (transformers' get_*_schedule_with_warmup)")
    func schedules() {
        let lin = LRSchedule(kind: .linear, baseLR: 2, warmupSteps: 10, totalSteps: 110)
        #expect(lin.lr(0) == 0)
        #expect(lin.lr(5) == 1)
        #expect(lin.lr(10) == 2)
        #expect(lin.lr(60) == 1)
        #expect(lin.lr(110) == 0 && lin.lr(200) == 0)
        let cosine = LRSchedule(kind: .cosine, baseLR: 1, warmupSteps: 10, totalSteps: 98)
        #expect(cosine.lr(3) == 0.3)
        #expect(cosine.lr(10) == 1)
        #expect(abs(cosine.lr(32) - 0.5 * (1 + cos(Double.pi / 4))) < 1e-15)  // progress 0.25
        #expect(abs(cosine.lr(54) - 0.5) < 1e-15)  // progress 0.5
        #expect(abs(cosine.lr(98)) < 1e-15)
        let constant = LRSchedule(kind: .constant, baseLR: 1e-3, warmupSteps: 4, totalSteps: 0)
        #expect(constant.lr(1) == 1e-3 * 0.25)
        #expect(constant.lr(4) == 1e-3 && constant.lr(1000) == 1e-3)
        #expect(LRSchedule(kind: .constant, baseLR: 5e-4, totalSteps: 4).lr(0) == 5e-4)
    }

    @Test("gradient accumulation averages micro-batch gradients")
    func accumulation() {
        var acc = GradientAccumulator(count: 3)
        acc.add([1, 2, 3])
        acc.add([3, 2, 1])
        #expect(acc.microBatches == 2)
        #expect(acc.finish() == [2, 2, 2])
        acc.add([4, 0, 0], weight: 3)
        acc.add([0, 4, 0], weight: 1)
        #expect(acc.finish() == [3, 1, 0])
        #expect(acc.finish() == [0, 0, 0])
    }

    @Test("xoshiro256** and SplitMix64 match their published outputs; the state resumes the stream")
    func rng() throws {
        var r = try #require(TrainingRNG(state: [1, 2, 3, 4]))
        #expect([r.next(), r.next(), r.next(), r.next()] == [11520, 0, 1_509_978_240, 1_215_971_899_390_074_240])
        #expect(TrainingRNG(seed: 0).state[0] == 0xE220_A839_7B1D_CDAF)  // SplitMix64(0), first output
        #expect(TrainingRNG(state: [0, 0, 0, 0]) == nil)
        var a = TrainingRNG(seed: 42)
        _ = a.permutation(10)
        let saved = try JSONDecoder().decode(TrainingRNG.self, from: JSONEncoder().encode(a))
        var b = saved
        #expect((0..<5).map { _ in a.next() } == (0..<5).map { _ in b.next() })
        let perm = a.permutation(100)
        #expect(perm.sorted() == Array(0..<100) && perm != Array(0..<100))
        // Bounded draws are in range and roughly uniform.
        var counts = [Int](repeating: 0, count: 6)
        for _ in 0..<60_000 { counts[Int(a.nextInt(below: 6))] += 1 }
        #expect(counts.allSatisfy { abs($0 - 10_000) < 500 })
    }

    @Test("data order: epochs reshuffle, and a saved (order, RNG) continues the same batches")
    func dataOrder() {
        var rng = TrainingRNG(seed: 1)
        var order = DataOrder(count: 5, shuffle: true, rng: &rng)
        #expect(order.isValid(count: 5))
        let first = order.nextBatch(3, shuffle: true, rng: &rng)
        let (savedOrder, savedRNG) = (order, rng)
        let rest = (0..<4).flatMap { _ in order.nextBatch(3, shuffle: true, rng: &rng) }
        #expect(order.epoch == 2)
        var o2 = savedOrder, r2 = savedRNG
        #expect((0..<4).flatMap { _ in o2.nextBatch(3, shuffle: true, rng: &r2) } == rest)
        #expect(Set(first + rest.prefix(2)) == Set(0..<5))  // the first epoch covers every example once
        #expect(!DataOrder(epoch: 0, permutation: [0, 0, 1], cursor: 0).isValid(count: 3))
    }
}
