// TrainingRun: the loop that turns an objective (loss + LoRA gradient), an optimizer and a data order into a
// trained adapter: steps of `batch_size × grad_accum` examples, clip, schedule, optimizer update, progress
// reports, periodic checkpoints, eval, cancellation between steps, and resume to the bit-identical result.
//
// The loop owns no model math and no file format: the objective, the optimizer, the clip, the schedule and the
// checkpoint store are handed in, so `lorad train` and the daemon's fine-tuning jobs run the same code.
//
// Determinism: the data order comes from a `DataOrder` driven by the run's `TrainingRNG` (xoshiro256**), a
// step's micro-batches are reduced in a fixed order, and a checkpoint stores the values, the optimizer state,
// the data order and the RNG state bit for bit. A resumed run therefore repeats exactly the float operations of
// an uninterrupted one, provided the objective itself is deterministic at the same thread count.
import Foundation

/// The loss and LoRA gradient of one micro-batch, as an objective returns it.
public struct ObjectiveResult: Sendable {
    /// Mean loss over the micro-batch's `weight` units (nats per scored token for SFT, per pair for DPO).
    public var loss: Double
    /// What the mean divides by: scored tokens (SFT) or pairs (DPO). Micro-batches of one step are combined as
    /// `Σ weightᵢ·gradᵢ / Σ weightᵢ`, so an accumulated step equals one big batch (the mean over all its units).
    public var weight: Double
    /// Tokens run through the model (all positions of all sequences), for tokens/s.
    public var tokens: Int
    /// ∂loss/∂(every lora_A, lora_B): `LoRAParameters.count` floats in its layout.
    public var grad: [Float]
    /// Scored tokens the token accuracy counts (SFT's; 0 when the objective has none, e.g. DPO pairs).
    public var scoredTokens: Int
    /// Of those, the ones whose largest logit is the target.
    public var correctTokens: Int

    /// - Parameters: see the properties.
    public init(loss: Double, weight: Double, tokens: Int, grad: [Float], scoredTokens: Int = 0, correctTokens: Int = 0) {
        self.loss = loss
        self.weight = weight
        self.tokens = tokens
        self.grad = grad
        self.scoredTokens = scoredTokens
        self.correctTokens = correctTokens
    }
}

/// What a held-out evaluation measured. Token accuracy is the share of scored tokens whose argmax prediction is the
/// target, as TRL's SFT trainer logs `mean_token_accuracy` and OpenAI's jobs report `*_mean_token_accuracy`.
public struct EvalMetrics: Sendable, Equatable {
    /// The objective's held-out loss (nats per scored token for SFT, per pair for DPO).
    public var loss: Double
    /// Fraction of held-out scored tokens whose largest logit is the target; nil when the objective does not
    /// measure it (DPO).
    public var tokenAccuracy: Double?

    /// - Parameters: see the properties.
    public init(loss: Double, tokenAccuracy: Double? = nil) {
        self.loss = loss
        self.tokenAccuracy = tokenAccuracy
    }
}

/// What the loop trains: a set of examples addressed by index, and the loss and gradient of any subset.
/// SFT and DPO objectives, on the real model or a toy function, conform to it.
public protocol TrainingObjective: AnyObject {
    /// Number of training examples (sequences for SFT, pairs for DPO); indices are `0..<trainingCount`.
    var trainingCount: Int { get }
    /// Loss and gradient of the examples `indices` at `params`.
    /// - Throws: whatever the model math throws; the loop stops and rethrows it.
    func lossAndGradient(params: LoRAParameters, indices: [Int]) throws -> ObjectiveResult
    /// Loss on the held-out set at `params`, or nil when there is none.
    /// - Throws: whatever the model math throws.
    func evalLoss(params: LoRAParameters) throws -> Double?
    /// Loss and, where the objective measures it, token accuracy on the held-out set (one pass), nil without one.
    /// The default is `evalLoss` without an accuracy.
    /// - Throws: whatever the model math throws.
    func evalMetrics(params: LoRAParameters) throws -> EvalMetrics?
}

extension TrainingObjective {
    public func evalMetrics(params: LoRAParameters) throws -> EvalMetrics? {
        try evalLoss(params: params).map { EvalMetrics(loss: $0) }
    }
}

/// An optimizer over the flat parameter buffer whose whole state can be saved and restored bit for bit.
public protocol TrainingOptimizer {
    /// Applies one update `params ← update(params, grad, lr)`; `grad` has `params.count` floats.
    mutating func step(params: inout [Float], grad: [Float], lr: Double)
    /// The optimizer's state (e.g. AdamW's `m`, `v` and its step count) as float arrays, for checkpoints.
    func exportState() -> OptimizerState
    /// Restores what `exportState` returned.
    /// - Throws: `TrainingRunError.checkpointMismatch` when the state does not fit the parameters.
    mutating func importState(_ state: OptimizerState) throws
}

/// An optimizer's saved state: named float buffers plus a step counter.
public struct OptimizerState: Sendable, Equatable, Codable {
    /// The optimizer's own update count (bias correction uses it).
    public var step: Int
    /// Buffers by name (`"m"`, `"v"` for AdamW), each `LoRAParameters.count` floats.
    public var buffers: [String: [Float]]

    /// - Parameters: see the properties.
    public init(step: Int, buffers: [String: [Float]]) {
        self.step = step
        self.buffers = buffers
    }
}

/// Everything a resumed run needs to continue exactly where the checkpoint was taken.
public struct TrainingRunState: Sendable {
    /// Optimizer steps completed.
    public var step: Int
    /// The epoch, its order of example indices and the cursor in it.
    public var order: DataOrder
    /// The generator that draws the next epochs' orders.
    public var rng: TrainingRNG
    /// Tokens run through the model so far.
    public var tokensSeen: Int
    /// The adapter values (`LoRAParameters.values`).
    public var values: [Float]
    /// The optimizer state.
    public var optimizer: OptimizerState
    /// The run's settings as the caller fingerprints them; a resume with other settings is refused.
    public var fingerprint: String

    /// - Parameters: see the properties.
    public init(step: Int, order: DataOrder, rng: TrainingRNG, tokensSeen: Int, values: [Float],
                optimizer: OptimizerState, fingerprint: String) {
        self.step = step
        self.order = order
        self.rng = rng
        self.tokensSeen = tokensSeen
        self.values = values
        self.optimizer = optimizer
        self.fingerprint = fingerprint
    }
}

/// Where the loop saves and finds checkpoints.
public protocol TrainingCheckpointStore {
    /// Saves `state` so that a crash at any moment leaves either it or the previous checkpoint loadable.
    /// - Throws: I/O errors (full disk, unwritable folder); the previous checkpoint must stay intact.
    func save(_ state: TrainingRunState, config: LoRAConfig) throws
    /// The newest loadable checkpoint, or nil when there is none.
    /// - Throws: when checkpoints exist but none can be read.
    func loadLatest() throws -> TrainingRunState?
}

/// Errors of the loop itself.
public enum TrainingRunError: Error, CustomStringConvertible, Equatable {
    /// A setting is out of range (names it).
    case invalidSetting(String)
    /// The training set is empty.
    case noExamples
    /// A checkpoint does not belong to this run (different settings or shapes).
    case checkpointMismatch(String)
    /// The objective returned a gradient of the wrong size or a non-finite loss.
    case badObjectiveResult(String)

    public var description: String {
        switch self {
        case .invalidSetting(let s): return "invalid setting: \(s)"
        case .noExamples: return "the training data has no examples"
        case .checkpointMismatch(let s): return "checkpoint does not match this run: \(s)"
        case .badObjectiveResult(let s): return "training step failed: \(s)"
        }
    }
}

/// How long the loop runs and how a step is built.
public struct TrainingLoopOptions: Sendable, Equatable {
    /// How long to train.
    public enum Length: Sendable, Equatable {
        /// Whole passes over the data: `epochs · count` examples; a step may span two epochs, and the run's
        /// last step may hold fewer examples.
        case epochs(Int)
        /// A number of optimizer steps, continuing into further epochs as needed.
        case steps(Int)
    }
    /// Epochs or steps.
    public var length: Length
    /// Examples per micro-batch (one objective call).
    public var batchSize: Int
    /// Micro-batches per optimizer step.
    public var gradAccum: Int
    /// Shuffle each epoch (else the file order).
    public var shuffle: Bool
    /// Checkpoint every N steps (0: only at the end and on cancellation).
    public var checkpointEvery: Int
    /// Eval every N steps (0: only at the end).
    public var evalEvery: Int
    /// Also eval before the first step of a fresh run (the starting adapter's loss, as a baseline).
    public var evalAtStart: Bool

    /// - Parameters: see the properties.
    public init(length: Length, batchSize: Int = 4, gradAccum: Int = 1, shuffle: Bool = true,
                checkpointEvery: Int = 0, evalEvery: Int = 0, evalAtStart: Bool = false) {
        self.evalAtStart = evalAtStart
        self.length = length
        self.batchSize = batchSize
        self.gradAccum = gradAccum
        self.shuffle = shuffle
        self.checkpointEvery = checkpointEvery
        self.evalEvery = evalEvery
    }

    /// Examples per optimizer step.
    public var examplesPerStep: Int { batchSize * gradAccum }

    /// Optimizer steps of the whole run on `count` examples.
    public func totalSteps(count: Int) -> Int {
        switch length {
        case .steps(let n): return n
        case .epochs(let e): return (e * count + examplesPerStep - 1) / examplesPerStep
        }
    }

    /// Examples of 1-based step `step`: `examplesPerStep`, or what is left of `epochs · count` at the end.
    public func examples(inStep step: Int, count: Int) -> Int {
        switch length {
        case .steps: return examplesPerStep
        case .epochs(let e): return min(examplesPerStep, e * count - (step - 1) * examplesPerStep)
        }
    }
}

/// One finished optimizer step.
public struct TrainingStepReport: Sendable, Equatable {
    /// 1-based step number.
    public var step: Int
    /// Steps of the whole run.
    public var totalSteps: Int
    /// Epoch of the step's examples (0-based).
    public var epoch: Int
    /// Mean loss of the step's examples, before this step's update.
    public var loss: Double
    /// Global L2 norm of the step's gradient before clipping.
    public var gradNorm: Double
    /// Learning rate used by the update.
    public var lr: Double
    /// Fraction of the step's scored SFT tokens whose largest logit was the target (before the update); nil when
    /// the step had none (DPO pairs only).
    public var tokenAccuracy: Double?
    /// Tokens of the step's examples.
    public var tokens: Int
    /// Tokens run through the model by the run through this step, over all sessions (a resumed run counts the
    /// steps before its checkpoint once).
    public var tokensSeen: Int
    /// Tokens per second of this step (wall time of objective + update).
    public var tokS: Double
    /// Wall seconds since this process started training (not counting earlier, checkpointed sessions).
    public var elapsed: Double
    /// Estimated seconds to the last step, from this session's mean step time.
    public var eta: Double
}

/// What the loop reports while running.
public enum TrainingEvent: Sendable, Equatable {
    /// A step finished.
    case step(TrainingStepReport)
    /// An eval finished after `step` steps: the held-out loss and, for SFT, token accuracy.
    case eval(step: Int, loss: Double, tokenAccuracy: Double?)
    /// A checkpoint was written after `step` steps.
    case checkpoint(step: Int)
    /// Training continues from a checkpoint taken after `step` steps.
    case resumed(step: Int)
}

/// How a run ended.
public struct TrainingOutcome: Sendable {
    /// The trained adapter.
    public var params: LoRAParameters
    /// Steps completed in total.
    public var steps: Int
    /// True when the cancellation flag stopped the run before its last step (a checkpoint was written).
    public var cancelled: Bool
    /// The last step's loss, nil when no step ran.
    public var lastLoss: Double?
    /// The final eval loss, nil without eval data (or when cancelled).
    public var evalLoss: Double?
    /// The final eval token accuracy, nil when not measured (see `EvalMetrics`).
    public var evalTokenAccuracy: Double?
    /// Tokens run through the model, over all sessions.
    public var tokensSeen: Int
}

/// The training loop. Create it with its parts, then call `run` once.
///
/// Usage:
/// ```swift
/// let run = TrainingRun(params: p, objective: sft, optimizer: adamw, options: o,
///                       schedule: { step in lr(step) }, clip: { g in clipGradNorm(&g, 1.0) },
///                       checkpoints: store, fingerprint: settingsJSON, rng: rng)
/// let outcome = try run.run(resume: true, isCancelled: { flag.isSet }, progress: { print($0) })
/// ```
public final class TrainingRun<Optimizer: TrainingOptimizer> {
    /// The adapter being trained (its values change as steps run).
    public private(set) var params: LoRAParameters
    /// The objective.
    public let objective: TrainingObjective
    /// The optimizer and its state.
    public private(set) var optimizer: Optimizer
    /// Length, batch shape, seed, checkpoint and eval cadence.
    public let options: TrainingLoopOptions
    /// Learning rate for a 0-based step index.
    public let schedule: (Int) -> Double
    /// Clips a gradient in place and returns its global L2 norm before clipping (nil: no clipping, norm only).
    public let clip: ((inout [Float]) -> Double)?
    /// Where checkpoints go (nil: none).
    public let checkpoints: TrainingCheckpointStore?
    /// The caller's fingerprint of the run's settings, stored in checkpoints and checked on resume.
    public let fingerprint: String
    /// Draws the data order (after whatever the caller drew from it, e.g. the adapter init).
    public private(set) var rng: TrainingRNG

    /// - Parameters: see the properties.
    public init(params: LoRAParameters, objective: TrainingObjective, optimizer: Optimizer, options: TrainingLoopOptions,
                schedule: @escaping (Int) -> Double, clip: ((inout [Float]) -> Double)?,
                checkpoints: TrainingCheckpointStore?, fingerprint: String, rng: TrainingRNG) {
        self.rng = rng
        self.params = params
        self.objective = objective
        self.optimizer = optimizer
        self.options = options
        self.schedule = schedule
        self.clip = clip
        self.checkpoints = checkpoints
        self.fingerprint = fingerprint
    }

    /// Global L2 norm of `g`, accumulated in Double in index order.
    public static func l2Norm(_ g: [Float]) -> Double {
        var s = 0.0
        for x in g { s += Double(x) * Double(x) }
        return s.squareRoot()
    }

    /// Runs the loop to its last step or until `isCancelled()` returns true after a step.
    ///
    /// With `resume`, continues from the store's latest checkpoint (if any) after checking it belongs to this run.
    /// A checkpoint is written every `checkpointEvery` steps, after the last step and when cancelled; eval runs
    /// every `evalEvery` steps and at the end (and before the first step of a fresh run with `evalAtStart`).
    /// - Throws: `TrainingRunError` for bad settings, a foreign checkpoint or a bad objective result; the
    ///   objective's, optimizer's and store's errors unchanged. A failed checkpoint save stops the run.
    public func run(resume: Bool, isCancelled: () -> Bool = { false },
                    progress: (TrainingEvent) -> Void = { _ in }) throws -> TrainingOutcome {
        guard options.batchSize >= 1 else { throw TrainingRunError.invalidSetting("batch size must be ≥ 1") }
        guard options.gradAccum >= 1 else { throw TrainingRunError.invalidSetting("grad accum must be ≥ 1") }
        let count = objective.trainingCount
        guard count > 0 else { throw TrainingRunError.noExamples }
        let total = options.totalSteps(count: count)
        guard total >= 1 else { throw TrainingRunError.invalidSetting("the run has no steps (steps or epochs must be ≥ 1)") }

        var step = 0
        var order = DataOrder(count: count, shuffle: options.shuffle, rng: &rng)
        var tokensSeen = 0
        if resume, let store = checkpoints, let s = try store.loadLatest() {
            guard s.fingerprint == fingerprint else {
                throw TrainingRunError.checkpointMismatch(
                    "it was written with other settings (checkpoint: \(s.fingerprint); now: \(fingerprint))")
            }
            guard s.values.count == params.count, s.order.isValid(count: count), s.step <= total else {
                throw TrainingRunError.checkpointMismatch(
                    "\(s.values.count) parameters and \(s.order.permutation.count) examples at step \(s.step), expected \(params.count) and \(count) within \(total) steps")
            }
            try optimizer.importState(s.optimizer)
            params.values = s.values
            step = s.step
            order = s.order
            rng = s.rng
            tokensSeen = s.tokensSeen
            progress(.resumed(step: step))
        }

        func state() -> TrainingRunState {
            TrainingRunState(step: step, order: order, rng: rng, tokensSeen: tokensSeen, values: params.values, optimizer: optimizer.exportState(),
                             fingerprint: fingerprint)
        }
        func saveCheckpoint() throws {
            guard let store = checkpoints else { return }
            try store.save(state(), config: params.config)
            progress(.checkpoint(step: step))
        }

        if options.evalAtStart, step == 0, let e = try objective.evalMetrics(params: params) {
            progress(.eval(step: 0, loss: e.loss, tokenAccuracy: e.tokenAccuracy))
        }
        let session0 = DispatchTime.now().uptimeNanoseconds
        let firstStep = step
        var lastLoss: Double?
        var cancelled = false
        var lastSaved = -1
        while step < total {
            let t0 = DispatchTime.now().uptimeNanoseconds
            let take = options.examples(inStep: step + 1, count: count)
            let epoch = order.cursor == order.permutation.count ? order.epoch + 1 : order.epoch
            var nextOrder = order
            var nextRNG = rng
            let stepIndices = nextOrder.nextBatch(take, shuffle: options.shuffle, rng: &nextRNG)
            var grad = [Float](repeating: 0, count: params.count)
            var lossSum = 0.0
            var weightSum = 0.0
            var tokens = 0
            var scored = 0
            var correct = 0
            var results: [ObjectiveResult] = []
            for start in stride(from: 0, to: take, by: options.batchSize) {
                let micro = Array(stepIndices[start..<min(take, start + options.batchSize)])
                let r = try objective.lossAndGradient(params: params, indices: micro)
                guard r.grad.count == params.count else {
                    throw TrainingRunError.badObjectiveResult("gradient has \(r.grad.count) values, expected \(params.count)")
                }
                guard r.loss.isFinite else {
                    throw TrainingRunError.badObjectiveResult("loss is \(r.loss) at step \(step + 1)")
                }
                lossSum += r.loss * r.weight
                weightSum += r.weight
                tokens += r.tokens
                scored += r.scoredTokens
                correct += r.correctTokens
                results.append(r)
            }
            // Σ wᵢ·gᵢ / Σ wᵢ in micro-batch order (a single micro-batch is used as is, bit for bit).
            if results.count == 1 {
                grad = results[0].grad
            } else if weightSum > 0 {
                for r in results {
                    let w = Float(r.weight / weightSum)
                    for i in 0..<grad.count { grad[i] += w * r.grad[i] }
                }
            }
            let loss = weightSum > 0 ? lossSum / weightSum : 0
            let norm = clip.map { $0(&grad) } ?? Self.l2Norm(grad)
            guard norm.isFinite else {
                throw TrainingRunError.badObjectiveResult("gradient norm is \(norm) at step \(step + 1)")
            }
            let lr = schedule(step)
            optimizer.step(params: &params.values, grad: grad, lr: lr)
            order = nextOrder
            rng = nextRNG
            step += 1
            tokensSeen += tokens
            lastLoss = loss

            let now = DispatchTime.now().uptimeNanoseconds
            let dt = max(1e-9, Double(now - t0) / 1e9)
            let elapsed = Double(now - session0) / 1e9
            let perStep = elapsed / Double(step - firstStep)
            progress(.step(TrainingStepReport(
                step: step, totalSteps: total, epoch: epoch, loss: loss, gradNorm: norm, lr: lr,
                tokenAccuracy: scored > 0 ? Double(correct) / Double(scored) : nil, tokens: tokens, tokensSeen: tokensSeen,
                tokS: Double(tokens) / dt, elapsed: elapsed, eta: perStep * Double(total - step))))

            if options.evalEvery > 0, step % options.evalEvery == 0, step < total,
               let e = try objective.evalMetrics(params: params) {
                progress(.eval(step: step, loss: e.loss, tokenAccuracy: e.tokenAccuracy))
            }
            if isCancelled() {
                cancelled = step < total
                break
            }
            if options.checkpointEvery > 0, step % options.checkpointEvery == 0, step < total {
                try saveCheckpoint()
                lastSaved = step
            }
        }
        if lastSaved != step { try saveCheckpoint() }
        var eval: EvalMetrics?
        if !cancelled {
            eval = try objective.evalMetrics(params: params)
            if let e = eval { progress(.eval(step: step, loss: e.loss, tokenAccuracy: e.tokenAccuracy)) }
        }
        return TrainingOutcome(params: params, steps: step, cancelled: cancelled, lastLoss: lastLoss,
                               evalLoss: eval?.loss, evalTokenAccuracy: eval?.tokenAccuracy, tokensSeen: tokensSeen)
    }
}

extension AdamW: TrainingOptimizer {
    /// `m`, `v` and the step count.
    public func exportState() -> OptimizerState {
        OptimizerState(step: state.step, buffers: ["m": state.m, "v": state.v])
    }

    /// Restores `m`, `v` and the step count.
    /// - Throws: `TrainingRunError.checkpointMismatch` when a moment is missing or of another size.
    public mutating func importState(_ saved: OptimizerState) throws {
        guard let m = saved.buffers["m"], let v = saved.buffers["v"], m.count == state.m.count, v.count == m.count,
              saved.step >= 0
        else { throw TrainingRunError.checkpointMismatch("the AdamW moments do not fit \(state.m.count) parameters") }
        state = AdamWState(m: m, v: v, step: saved.step)
    }
}
