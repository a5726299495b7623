// The training loop on a toy objective whose gradient is known in closed form: resume after an interruption
// gives the uninterrupted run's values bit for bit, accumulation equals one big batch, every epoch visits every
// example once, foreign checkpoints are refused, and a failing objective stops the loop with a typed error.
import Foundation
import Runtime
import Testing
import Train

/// The shape of a tiny Gemma-3-like model (written once with GGUFWriter): an adapter on `attn_q` of one layer has
/// a few hundred values.
let toyModel: Model = try! TinyModel.make(arch: "gemma3", type: .f32, seed: 11, layers: 2)

func toyModelConfig() -> ModelConfig { toyModel.config }

/// `loss(p) = mean over the batch's examples i of ½‖p − tᵢ‖²` with a per-example target `tᵢ` (pseudo-random,
/// fixed), weighted by `tokensᵢ` so micro-batches of unequal weight are combined as the loop must:
/// the mean over all tokens. Gradient `Σ wᵢ(p − tᵢ) / Σ wᵢ`. Records every call's indices.
final class QuadraticObjective: TrainingObjective {
    let targets: [[Float]]
    let weights: [Double]
    var calls: [[Int]] = []
    var failAtCall: Int?
    var evalTarget: [Float]?

    init(count: Int, dim: Int, seed: UInt64 = 7) {
        var rng = TrainingRNG(seed: seed)
        targets = (0..<count).map { _ in (0..<dim).map { _ in Float(Int(rng.next() % 2001) - 1000) / 1000 } }
        weights = (0..<count).map { _ in Double(1 + rng.next() % 5) }
    }

    var trainingCount: Int { targets.count }

    func lossAndGradient(params: LoRAParameters, indices: [Int]) throws -> ObjectiveResult {
        calls.append(indices)
        if let f = failAtCall, calls.count == f {
            return ObjectiveResult(loss: .nan, weight: 1, tokens: 1, grad: [Float](repeating: 0, count: params.count))
        }
        var g = [Double](repeating: 0, count: params.count)
        var loss = 0.0
        var w = 0.0
        for i in indices {
            for k in 0..<params.count {
                let d = Double(params.values[k]) - Double(targets[i][k])
                g[k] += weights[i] * d
                loss += weights[i] * 0.5 * d * d
            }
            w += weights[i]
        }
        return ObjectiveResult(loss: loss / w, weight: w, tokens: Int(w), grad: g.map { Float($0 / w) })
    }

    func evalLoss(params: LoRAParameters) throws -> Double? {
        guard let t = evalTarget else { return nil }
        return zip(params.values, t).reduce(0.0) { $0 + 0.5 * Double($1.0 - $1.1) * Double($1.0 - $1.1) }
    }
}

/// Heavy-ball momentum (`m ← 0.9m + g; p ← p − lr·m`): enough state to show that a resume restores it.
struct MomentumSGD: TrainingOptimizer {
    var m: [Float]
    var steps = 0
    init(count: Int) { m = [Float](repeating: 0, count: count) }
    mutating func step(params: inout [Float], grad: [Float], lr: Double) {
        for i in 0..<params.count {
            m[i] = 0.9 * m[i] + grad[i]
            params[i] -= Float(lr) * m[i]
        }
        steps += 1
    }
    func exportState() -> OptimizerState { OptimizerState(step: steps, buffers: ["m": m]) }
    mutating func importState(_ state: OptimizerState) throws {
        guard let mm = state.buffers["m"], mm.count == m.count else {
            throw TrainingRunError.checkpointMismatch("momentum buffer")
        }
        m = mm
        steps = state.step
    }
}

/// Checkpoints kept in memory; `saves` counts writes.
final class MemoryStore: TrainingCheckpointStore {
    var latest: TrainingRunState?
    var saves: [Int] = []
    func save(_ state: TrainingRunState, config: LoRAConfig) throws {
        latest = state
        saves.append(state.step)
    }
    func loadLatest() throws -> TrainingRunState? { latest }
}

/// Clip to a global L2 norm of `maxNorm` (`clip_grad_norm_` semantics), returning the norm before clipping.
func clipTo(_ maxNorm: Double) -> (inout [Float]) -> Double {
    { g in
        let n = TrainingRun<MomentumSGD>.l2Norm(g)
        if n > maxNorm {
            let s = Float(maxNorm / (n + 1e-6))
            for i in g.indices { g[i] *= s }
        }
        return n
    }
}

func toyParams() -> LoRAParameters {
    var p = LoRAParameters(config: LoRAConfig(rank: 2, alpha: 4, targets: [.attnQ], layers: [0]), model: toyModelConfig())
    for i in 0..<p.count { p.values[i] = Float(i % 7) * 0.1 - 0.3 }
    return p
}

func makeRun(_ objective: QuadraticObjective, _ options: TrainingLoopOptions, store: MemoryStore?,
             fingerprint: String = "toy", seed: UInt64 = 42) -> TrainingRun<MomentumSGD> {
    let p = toyParams()
    return TrainingRun(params: p, objective: objective, optimizer: MomentumSGD(count: p.count), options: options,
                       schedule: { step in 0.05 * Double(1 + step % 3) / 3 }, clip: clipTo(1.0),
                       checkpoints: store, fingerprint: fingerprint, rng: TrainingRNG(seed: seed))
}

@Suite struct TrainingRunTests {
    @Test func resumeAfterCancellationEqualsUninterruptedRunBitForBit() throws {
        let options = TrainingLoopOptions(length: .steps(11), batchSize: 2, gradAccum: 2, checkpointEvery: 3)
        let full = makeRun(QuadraticObjective(count: 10, dim: toyParams().count), options, store: MemoryStore())
        let a = try full.run(resume: false)
        #expect(a.steps == 11 && !a.cancelled)

        // Interrupted after step 5 (between two periodic checkpoints), resumed in a new run object.
        let store = MemoryStore()
        var steps = 0
        let first = makeRun(QuadraticObjective(count: 10, dim: toyParams().count), options, store: store)
        let b1 = try first.run(resume: false, isCancelled: { steps >= 5 }, progress: { e in
            if case .step = e { steps += 1 }
        })
        #expect(b1.cancelled && b1.steps == 5)
        #expect(store.saves == [3, 5], "periodic checkpoint at 3, then one on cancellation: \(store.saves)")
        var resumedAt = -1
        let second = makeRun(QuadraticObjective(count: 10, dim: toyParams().count), options, store: store)
        let b2 = try second.run(resume: true, progress: { e in if case .resumed(let s) = e { resumedAt = s } })
        #expect(resumedAt == 5)
        #expect(b2.steps == 11 && !b2.cancelled)
        #expect(b2.params.values == a.params.values, "resumed values differ from the uninterrupted run's")
        #expect(b2.params.values.map(\.bitPattern) == a.params.values.map(\.bitPattern))
        #expect(b2.tokensSeen == a.tokensSeen)
        // And the run really moved: not a vacuous equality.
        #expect(a.params.values != toyParams().values)
    }

    @Test func accumulatedStepEqualsOneBigBatch() throws {
        let dim = toyParams().count
        let big = try makeRun(QuadraticObjective(count: 8, dim: dim),
                              TrainingLoopOptions(length: .steps(6), batchSize: 4, gradAccum: 1),
                              store: nil).run(resume: false)
        let accum = try makeRun(QuadraticObjective(count: 8, dim: dim),
                                TrainingLoopOptions(length: .steps(6), batchSize: 1, gradAccum: 4),
                                store: nil).run(resume: false)
        var worst: Float = 0
        for (x, y) in zip(big.params.values, accum.params.values) { worst = max(worst, abs(x - y)) }
        #expect(worst < 1e-5, "largest difference \(worst)")
        #expect(abs(big.lastLoss! - accum.lastLoss!) < 1e-6 * max(1, abs(big.lastLoss!)), "loss \(big.lastLoss!) vs \(accum.lastLoss!)")
    }

    @Test func everyEpochVisitsEveryExampleOnceInASeededOrder() throws {
        let obj = QuadraticObjective(count: 7, dim: toyParams().count)
        let options = TrainingLoopOptions(length: .epochs(3), batchSize: 2, gradAccum: 2)
        #expect(options.totalSteps(count: 7) == 6)  // 21 examples, 4 per step: 5 full steps and one of 1
        let out = try makeRun(obj, options, store: nil, seed: 9).run(resume: false)
        #expect(out.steps == 6)
        #expect(obj.calls.map(\.count) == [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1])
        let seen = obj.calls.flatMap { $0 }
        #expect(seen.count == 21)
        var epochs: [[Int]] = []
        for e in 0..<3 { epochs.append(Array(seen[(7 * e)..<(7 * e + 7)])) }
        for e in epochs { #expect(e.sorted() == Array(0..<7)) }
        #expect(epochs[0] != epochs[1] || epochs[1] != epochs[2], "epochs are reshuffled")
        // The same seed gives the same order; another seed another one.
        let again = QuadraticObjective(count: 7, dim: toyParams().count)
        _ = try makeRun(again, options, store: nil, seed: 9).run(resume: false)
        #expect(again.calls == obj.calls)
        let other = QuadraticObjective(count: 7, dim: toyParams().count)
        _ = try makeRun(other, options, store: nil, seed: 10).run(resume: false)
        #expect(other.calls != obj.calls)
    }

    @Test func reportsStepsEvalAndFinalCheckpoint() throws {
        let obj = QuadraticObjective(count: 4, dim: toyParams().count)
        obj.evalTarget = [Float](repeating: 0.25, count: toyParams().count)
        let store = MemoryStore()
        var events: [TrainingEvent] = []
        let out = try makeRun(obj, TrainingLoopOptions(length: .steps(4), batchSize: 2, evalEvery: 2),
                              store: store).run(resume: false, progress: { events.append($0) })
        let steps = events.compactMap { e -> TrainingStepReport? in if case .step(let r) = e { return r }; return nil }
        #expect(steps.map(\.step) == [1, 2, 3, 4])
        #expect(steps.allSatisfy { $0.totalSteps == 4 && $0.tokens > 0 && $0.gradNorm > 0 && $0.loss > 0 })
        let expected: [Double] = [0, 1, 2, 3].map { (k: Int) -> Double in 0.05 * Double(1 + k % 3) / 3 }
        #expect(steps.map(\.lr) == expected)
        let evals = events.compactMap { e -> Int? in if case .eval(let s, _, _) = e { return s }; return nil }
        #expect(evals == [2, 4])
        #expect(store.saves == [4])
        #expect(out.evalLoss != nil && out.evalLoss! > 0)
    }

    @Test func refusesACheckpointOfOtherSettings() throws {
        let store = MemoryStore()
        let options = TrainingLoopOptions(length: .steps(2), batchSize: 2)
        _ = try makeRun(QuadraticObjective(count: 4, dim: toyParams().count), options, store: store,
                        fingerprint: "lr=1e-4").run(resume: false)
        #expect(throws: TrainingRunError.self) {
            _ = try makeRun(QuadraticObjective(count: 4, dim: self.toyDim), options, store: store,
                            fingerprint: "lr=1e-3").run(resume: true)
        }
        // A different data set size is refused too, even with the same fingerprint.
        #expect(throws: TrainingRunError.self) {
            _ = try makeRun(QuadraticObjective(count: 5, dim: self.toyDim), options, store: store,
                            fingerprint: "lr=1e-4").run(resume: true)
        }
    }

    var toyDim: Int { toyParams().count }

    @Test func nonFiniteLossStopsWithATypedError() throws {
        let obj = QuadraticObjective(count: 4, dim: toyDim)
        obj.failAtCall = 3
        #expect(throws: TrainingRunError.self) {
            _ = try makeRun(obj, TrainingLoopOptions(length: .steps(5), batchSize: 1), store: nil).run(resume: false)
        }
        #expect(obj.calls.count == 3)
        #expect(throws: TrainingRunError.noExamples) {
            _ = try makeRun(QuadraticObjective(count: 0, dim: self.toyDim), TrainingLoopOptions(length: .steps(1)),
                            store: nil).run(resume: false)
        }
    }
}

/// The loop with its real parts on a tiny random Gemma-3-shaped model: `LoRATrainer` SFT and DPO objectives,
/// AdamW, clipping, a cosine schedule, checkpoints on disk (`RunCheckpointStore`).
@Suite(.serialized) struct TrainingRunModelTests {
    static let model: Model = try! TinyModel.make(arch: "gemma3", type: .q8_0, seed: 12, layers: 2)

    static func settings(_ config: LoRAConfig, total: Int) -> RunSettings {
        RunSettings(method: "sft", lora: config, adamw: AdamWConfig(), schedule:
                        LRSchedule(kind: .cosine, baseLR: 5e-3, warmupSteps: 1, totalSteps: total),
                    batchSize: 2, gradientAccumulation: 2, maxGradNorm: 1, seed: 3, maxLength: 64, baseModel: "tiny")
    }

    /// A run of `total` steps (2 × 2 sequences each) over 10 fixed sequences, cancelled after `stopAfter` steps.
    static func run(dir: String, total: Int, resume: Bool, stopAfter: Int? = nil) throws -> TrainingOutcome {
        let trainer = try LoRATrainer(model: model, threads: 2)
        let examples = (0..<10).map { TinyModel.sequence(12 + $0 % 4, seed: UInt64(100 + $0)) }
        var rng = TrainingRNG(seed: 3)
        let config = LoRAConfig(rank: 4, alpha: 8, targets: Projection.allCases, layers: [0, 1])
        let p = try LoRAParameters.fresh(config: config, model: model.config, rng: &rng)
        let s = settings(config, total: total)
        let store = RunCheckpointStore(store: CheckpointStore(directory: dir), settings: s, model: model.config)
        let options = TrainingLoopOptions(length: .steps(total), batchSize: 2, gradAccum: 2, checkpointEvery: 2)
        let run = TrainingRun(params: p, objective: SFTObjective(trainer: trainer, examples: examples,
                                                                 evalExamples: Array(examples.prefix(3))),
                              optimizer: AdamW(count: p.count), options: options, schedule: { s.schedule.lr($0) },
                              clip: { GradientClipping.clip(&$0, maxNorm: 1) }, checkpoints: store,
                              fingerprint: RunCheckpointStore.fingerprint, rng: rng)
        var steps = 0
        return try run.run(resume: resume, isCancelled: { stopAfter.map { steps >= $0 } ?? false },
                           progress: { if case .step = $0 { steps += 1 } })
    }

    @Test func resumeFromDiskEqualsUninterruptedRunAndTheLossFalls() throws {
        let base = NSTemporaryDirectory() + "lorad-loop-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: base) }
        let a = try Self.run(dir: base + "/a", total: 7, resume: false)
        let b1 = try Self.run(dir: base + "/b", total: 7, resume: false, stopAfter: 3)
        #expect(b1.cancelled && b1.steps == 3)
        #expect(CheckpointStore(directory: base + "/b").list().map(\.step) == [2, 3])
        let b2 = try Self.run(dir: base + "/b", total: 7, resume: true)
        #expect(b2.steps == 7)
        #expect(b2.params.values.map(\.bitPattern) == a.params.values.map(\.bitPattern),
                "resumed adapter differs from the uninterrupted one")
        #expect(b2.evalLoss == a.evalLoss)
        // The same run from scratch trains: held-out (here: seen) loss below the fresh adapter's.
        let trainer = try LoRATrainer(model: Self.model, threads: 2)
        let evalSet = (0..<3).map { TinyModel.sequence(12 + $0 % 4, seed: UInt64(100 + $0)) }
        var rng = TrainingRNG(seed: 3)
        let fresh = try LoRAParameters.fresh(config: a.params.config, model: Self.model.config, rng: &rng)
        let before = try SFTObjective.meanLoss(trainer: trainer, params: fresh, sequences: evalSet, batchSize: 4)!
        #expect(a.evalLoss! < before, "eval loss \(before) → \(a.evalLoss!)")
        // A checkpoint of other settings is refused.
        let other = RunCheckpointStore(store: CheckpointStore(directory: base + "/b"),
                                       settings: Self.settings(a.params.config, total: 8), model: Self.model.config)
        #expect(throws: CheckpointError.self) { _ = try other.loadLatest() }
    }

    @Test func dpoObjectiveWeighsByPairsAndItsEvalMatchesTheTrainingLoss() throws {
        let trainer = try LoRATrainer(model: Self.model, threads: 2)
        let pairs = (0..<4).map { i -> PreferencePair in
            let prompt = (0..<5).map { Int32(3 + ($0 * 7 + i) % 250) }
            func seq(_ tail: [Int32]) -> TrainingSequence {
                TrainingSequence(inputIds: prompt + tail, labelsMask: [UInt8](repeating: 0, count: 5) + tail.map { _ in 1 })
            }
            return PreferencePair(chosen: seq([10, 11, Int32(12 + i)]), rejected: seq([20, Int32(21 + i)]))
        }
        let p = TinyModel.params(Self.model, layers: [0, 1], seed: 9)
        let dpo = DPOObjective(trainer: trainer, pairs: pairs, evalPairs: pairs, beta: 0.1, reference: .base, evalBatchSize: 3)
        let r = try dpo.lossAndGradient(params: p, indices: [0, 1, 2, 3])
        #expect(r.weight == 4 && r.grad.count == p.count && r.tokens == pairs.reduce(0) { $0 + $1.chosen.inputIds.count + $1.rejected.inputIds.count })
        let e = try #require(try dpo.evalLoss(params: p))
        #expect(abs(e - r.loss) <= 1e-4 * max(1, abs(r.loss)), "eval \(e) vs training loss \(r.loss)")
    }
}
