// TrainingPacer: a paced run does the same arithmetic as an unpaced one. A pacer that sleeps at some yield points
// and drops the trainer to one thread at others must leave the trained adapter identical bit for bit, and the
// output head, now run in rounds of tiles with a yield point before each, must give the same bits as without one.
import Foundation
import Runtime
import Testing
import Train
#if canImport(Glibc)
import Glibc
#endif

/// Sleeps every 5th yield point and limits the trainer to one thread after every 3rd.
final class ChaosPacer: TrainingPacer, @unchecked Sendable {
    let lock = NSLock()
    var calls = 0
    var limited = 0

    func yieldPoint() {
        let n: Int = lock.withLock {
            calls += 1
            return calls
        }
        if n % 5 == 0 { usleep(100) }
    }

    var threadLimit: Int? {
        lock.withLock {
            guard calls % 3 == 0 else { return nil }
            limited += 1
            return 1
        }
    }
}

@Suite("Training pacer")
struct TrainingPacerTests {
    /// Four AdamW steps of batch 2 over a tiny Gemma-3-shaped model (weight cache on, so its yield points run too).
    static func train(_ model: Model, pacer: (any TrainingPacer)?) throws -> (values: [Float], losses: [Double]) {
        let trainer = try LoRATrainer(model: model, threads: 2, cacheWeights: true)
        trainer.pacer = pacer
        var rng = TrainingRNG(seed: 9)
        let config = LoRAConfig(rank: 4, alpha: 8, targets: Projection.allCases, layers: [0, 1])
        let p = try LoRAParameters.fresh(config: config, model: model.config, rng: &rng)
        let examples = (0..<6).map { TinyModel.sequence(10 + 3 * $0, seed: UInt64(40 + $0)) }
        let run = TrainingRun(params: p, objective: SFTObjective(trainer: trainer, examples: examples),
                              optimizer: AdamW(count: p.count), options: TrainingLoopOptions(length: .steps(4), batchSize: 2),
                              schedule: { _ in 1e-2 }, clip: { GradientClipping.clip(&$0, maxNorm: 1) }, checkpoints: nil,
                              fingerprint: "pacer", rng: rng)
        var losses: [Double] = []
        let outcome = try run.run(resume: false, progress: { if case .step(let r) = $0 { losses.append(r.loss) } })
        return (outcome.params.values, losses)
    }

    @Test("a run paced by sleeps and thread limits ends with the same adapter, bit for bit, as an unpaced one")
    func pacedRunIsBitIdentical() throws {
        let model = try TinyModel.make(arch: "gemma3", type: .q8_0, seed: 17, layers: 2)
        let plain = try Self.train(model, pacer: nil)
        let pacer = ChaosPacer()
        let paced = try Self.train(model, pacer: pacer)
        #expect(pacer.calls > 100, "yield points: \(pacer.calls)")
        #expect(pacer.limited > 0)
        #expect(plain.values.map(\.bitPattern) == paced.values.map(\.bitPattern))
        #expect(plain.losses.map(\.bitPattern) == paced.losses.map(\.bitPattern))
        // The adapter did train (a run that changed nothing would match trivially).
        #expect(plain.values.contains { $0 != 0 } && plain.losses.count == 4)
    }

    @Test("the output head yields once per round of tiles and gives the same bits with or without yield points")
    func outputHeadRounds() {
        var rng = SplitMix(21)
        let N = 5, D = 32, V = 1000, tile = 64
        let pool = ComputePool(threads: 2)
        let w = (0..<(V * D)).map { _ in rng.nextFloat() }, xn = (0..<(N * D)).map { _ in rng.nextFloat() }
        let targets: [Int32] = [0, 999, 500, 63, 64]
        func head(_ yieldPoint: (() -> Void)?) -> ([Double], [Float]) {
            var logp = [Double](repeating: 0, count: N), grad = [Float](repeating: 0, count: N * D)
            w.withUnsafeBytes { raw in
                let m = WeightMatrix(type: .f32, rows: V, cols: D, data: raw.baseAddress!)
                outputHead(pool, w: m, xn: xn, rows: N, targets: targets, logp: &logp, grad: &grad, tile: tile,
                           yieldPoint: yieldPoint)
            }
            return (logp, grad)
        }
        let plain = head(nil)
        var yields = 0
        let paced = head {
            yields += 1
            pool.participants = yields % 2 == 0 ? 1 : 2
        }
        pool.participants = 2
        #expect(yields == (V + tile - 1) / tile / 2)  // 16 tiles over 2 parts: 8 rounds
        #expect(plain.0.map(\.bitPattern) == paced.0.map(\.bitPattern))
        #expect(plain.1.map(\.bitPattern) == paced.1.map(\.bitPattern))
    }
}
