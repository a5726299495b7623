// The objectives the loop trains: SFT and DPO over a `LoRATrainer`, and the checkpoint store of a run as the
// loop sees it (a `CheckpointStore` directory plus the run's settings).
import Foundation
import Runtime

/// SFT over tokenized sequences: a micro-batch's loss is the mean cross-entropy over its scored tokens, and its
/// weight is the number of scored tokens, so accumulated micro-batches give the mean over all of the step's tokens
/// (the training reference's "one mean over the batch's tokens").
public final class SFTObjective: TrainingObjective {
    /// The model math.
    public let trainer: LoRATrainer
    /// Training sequences (`input_ids`, `labels_mask`).
    public let examples: [TrainingSequence]
    /// Held-out sequences (empty: no eval).
    public let evalExamples: [TrainingSequence]
    /// Sequences per eval forward.
    public let evalBatchSize: Int

    /// - Parameters: see the properties.
    public init(trainer: LoRATrainer, examples: [TrainingSequence], evalExamples: [TrainingSequence] = [],
                evalBatchSize: Int = 4) {
        self.trainer = trainer
        self.examples = examples
        self.evalExamples = evalExamples
        self.evalBatchSize = max(1, evalBatchSize)
    }

    public var trainingCount: Int { examples.count }

    /// Mean cross-entropy of the sequences `indices` and its gradient (`LoRATrainer.sftLossAndGradient`).
    /// - Throws: `TrainError`.
    public func lossAndGradient(params: LoRAParameters, indices: [Int]) throws -> ObjectiveResult {
        let batch = indices.map { examples[$0] }
        let r = try trainer.sftLossAndGradient(params: params, batch: batch)
        return ObjectiveResult(loss: r.loss, weight: Double(r.tokens),
                               tokens: batch.reduce(0) { $0 + $1.inputIds.count }, grad: r.grad,
                               scoredTokens: r.tokens, correctTokens: r.correct)
    }

    /// Mean cross-entropy (nats per scored token) over all held-out sequences, nil without any.
    /// - Throws: `TrainError`.
    public func evalLoss(params: LoRAParameters) throws -> Double? {
        try evalMetrics(params: params)?.loss
    }

    /// Mean cross-entropy and token accuracy over all held-out sequences (one pass), nil without any.
    /// - Throws: `TrainError`.
    public func evalMetrics(params: LoRAParameters) throws -> EvalMetrics? {
        try Self.meanMetrics(trainer: trainer, params: params, sequences: evalExamples, batchSize: evalBatchSize)
    }

    /// Mean cross-entropy over every scored token of `sequences` (batches of `batchSize`), nil when empty.
    /// - Parameter params: the adapter, or nil for the base model alone.
    /// - Throws: `TrainError`.
    public static func meanLoss(trainer: LoRATrainer, params: LoRAParameters?, sequences: [TrainingSequence],
                                batchSize: Int) throws -> Double? {
        try meanMetrics(trainer: trainer, params: params, sequences: sequences, batchSize: batchSize)?.loss
    }

    /// Mean cross-entropy and token accuracy (scored tokens whose largest logit is the target) over every scored
    /// token of `sequences` (batches of `batchSize`), nil when empty.
    /// - Parameter params: the adapter, or nil for the base model alone.
    /// - Throws: `TrainError`.
    public static func meanMetrics(trainer: LoRATrainer, params: LoRAParameters?, sequences: [TrainingSequence],
                                   batchSize: Int) throws -> EvalMetrics? {
        guard !sequences.isEmpty else { return nil }
        var sum = 0.0
        var tokens = 0
        var correct = 0
        for start in stride(from: 0, to: sequences.count, by: max(1, batchSize)) {
            let batch = Array(sequences[start..<min(sequences.count, start + batchSize)])
            let r = try trainer.evalLoss(params: params, batch: batch)
            sum += r.loss * Double(r.tokens)
            tokens += r.tokens
            correct += r.correct
        }
        return tokens > 0 ? EvalMetrics(loss: sum / Double(tokens), tokenAccuracy: Double(correct) / Double(tokens)) : nil
    }
}

/// DPO (Rafailov et al. 2023, sigmoid loss) over preference pairs: a micro-batch's loss is the mean over its pairs,
/// its weight the number of pairs. The reference is the base model or a frozen adapter (`DPOReference`).
public final class DPOObjective: TrainingObjective {
    /// The model math.
    public let trainer: LoRATrainer
    /// Training pairs.
    public let pairs: [PreferencePair]
    /// Held-out pairs (empty: no eval).
    public let evalPairs: [PreferencePair]
    /// `beta` of the implicit reward.
    public let beta: Double
    /// Reference log-probabilities' model.
    public let reference: DPOReference
    /// Pairs per eval forward.
    public let evalBatchSize: Int

    /// - Parameters: see the properties.
    public init(trainer: LoRATrainer, pairs: [PreferencePair], evalPairs: [PreferencePair] = [], beta: Double,
                reference: DPOReference, evalBatchSize: Int = 4) {
        self.trainer = trainer
        self.pairs = pairs
        self.evalPairs = evalPairs
        self.beta = beta
        self.reference = reference
        self.evalBatchSize = max(1, evalBatchSize)
    }

    public var trainingCount: Int { pairs.count }

    /// DPO loss of the pairs `indices` and its gradient (`LoRATrainer.dpoLossAndGradient`).
    /// - Throws: `TrainError`.
    public func lossAndGradient(params: LoRAParameters, indices: [Int]) throws -> ObjectiveResult {
        let batch = indices.map { pairs[$0] }
        let r = try trainer.dpoLossAndGradient(params: params, pairs: batch, beta: beta, reference: reference)
        let tokens = batch.reduce(0) { $0 + $1.chosen.inputIds.count + $1.rejected.inputIds.count }
        return ObjectiveResult(loss: r.loss, weight: Double(batch.count), tokens: tokens, grad: r.grad)
    }

    /// Mean DPO loss over the held-out pairs, `mean −log σ(beta·((π_c − ref_c) − (π_r − ref_r)))`, from
    /// `LoRATrainer.logProbs` of the policy and the reference; nil without pairs.
    /// - Throws: `TrainError`.
    public func evalLoss(params: LoRAParameters) throws -> Double? {
        guard !evalPairs.isEmpty else { return nil }
        let refParams: LoRAParameters?
        switch reference {
        case .base: refParams = nil
        case .adapter(let p): refParams = p
        }
        var sum = 0.0
        for start in stride(from: 0, to: evalPairs.count, by: evalBatchSize) {
            let chunk = evalPairs[start..<min(evalPairs.count, start + evalBatchSize)]
            let seqs = chunk.flatMap { [$0.chosen, $0.rejected] }
            let pol = try trainer.logProbs(params: params, batch: seqs).map(\.sum)
            let ref = try trainer.logProbs(params: refParams, batch: seqs).map(\.sum)
            for p in 0..<chunk.count {
                let z = beta * ((pol[2 * p] - ref[2 * p]) - (pol[2 * p + 1] - ref[2 * p + 1]))
                sum += z > 0 ? log1p(exp(-z)) : -z + log1p(exp(z))  // −log σ(z) = softplus(−z)
            }
        }
        return sum / Double(evalPairs.count)
    }
}

/// The loop's checkpoint store over a `CheckpointStore` directory: checkpoints carry the run's `RunSettings`, and
/// loading refuses one written with other settings (`CheckpointError.settingsMismatch`).
public struct RunCheckpointStore: TrainingCheckpointStore {
    /// The checkpoint directory.
    public var store: CheckpointStore
    /// The run's settings.
    public let settings: RunSettings
    /// The model shape the adapter is laid out for.
    public let model: ModelConfig
    /// Called with the path of every checkpoint written.
    public var onSave: ((String) -> Void)?

    /// - Parameters: see the properties.
    public init(store: CheckpointStore, settings: RunSettings, model: ModelConfig, onSave: ((String) -> Void)? = nil) {
        self.store = store
        self.settings = settings
        self.model = model
        self.onSave = onSave
    }

    /// The fingerprint the loop stores; checkpoints are matched by `RunSettings` instead, so it is constant.
    public static let fingerprint = "run-settings"

    /// Writes a checkpoint file (atomically; the previous one stays until this one is durable).
    /// - Throws: `FileIOError` (e.g. ENOSPC), `TrainingRunError.checkpointMismatch` for a non-AdamW state.
    public func save(_ state: TrainingRunState, config: LoRAConfig) throws {
        guard let m = state.optimizer.buffers["m"], let v = state.optimizer.buffers["v"], m.count == v.count else {
            throw TrainingRunError.checkpointMismatch("checkpoints hold AdamW moments (m, v)")
        }
        var p = LoRAParameters(config: config, model: model)
        p.values = state.values
        let c = TrainingCheckpoint(settings: settings, parameters: p,
                                   optimizer: AdamWState(m: m, v: v, step: state.optimizer.step),
                                   dataOrder: state.order, rng: state.rng, tokensSeen: state.tokensSeen)
        let path = try store.save(c)
        onSave?(path)
    }

    /// The newest readable checkpoint, or nil when the directory has none.
    /// - Throws: `CheckpointError` when files exist but none loads, or the newest was written with other settings.
    public func loadLatest() throws -> TrainingRunState? {
        if store.list().isEmpty { return nil }
        let (c, _, _) = try store.loadLatest(model: model, settings: settings)
        return TrainingRunState(step: c.step, order: c.dataOrder, rng: c.rng, tokensSeen: c.tokensSeen, values: c.parameters.values,
                                optimizer: OptimizerState(step: c.optimizer.step, buffers: ["m": c.optimizer.m, "v": c.optimizer.v]),
                                fingerprint: Self.fingerprint)
    }
}

/// SFT and DPO in one run (continual learning's `method: auto`, LEARNING-DECISIONS #9): indices
/// `0..<sft.trainingCount` address the SFT sequences, the rest the DPO pairs. A micro-batch's loss is the
/// example-weighted mean of the two objectives' losses over the examples it holds,
/// `L = (n_sft·L_sft + n_dpo·L_dpo) / (n_sft + n_dpo)`, and so is its gradient (each part is its objective's own,
/// finite-difference-checked gradient); its weight is the number of examples. Adding an NLL term on preferred
/// answers to DPO is the RPO objective (Pang et al. 2024, "Iterative Reasoning Preference Optimization", eq. 2);
/// here the NLL runs on the SFT examples, the DPO term on the pairs.
public final class MixedObjective: TrainingObjective {
    /// The SFT part.
    public let sft: SFTObjective
    /// The DPO part.
    public let dpo: DPOObjective

    /// - Parameters: the two parts (on the same trainer).
    public init(sft: SFTObjective, dpo: DPOObjective) {
        self.sft = sft
        self.dpo = dpo
    }

    public var trainingCount: Int { sft.trainingCount + dpo.trainingCount }

    /// The example-weighted mix of the parts' losses and gradients over `indices` (see the type).
    /// - Throws: `TrainError`.
    public func lossAndGradient(params: LoRAParameters, indices: [Int]) throws -> ObjectiveResult {
        let n = sft.trainingCount
        let s = indices.filter { $0 < n }
        let d = indices.filter { $0 >= n }.map { $0 - n }
        let rs = s.isEmpty ? nil : try sft.lossAndGradient(params: params, indices: s)
        let rd = d.isEmpty ? nil : try dpo.lossAndGradient(params: params, indices: d)
        return Self.mix(rs.map { ($0, s.count) }, rd.map { ($0, d.count) })
    }

    /// `(n_a·a + n_b·b) / (n_a + n_b)` of two parts' losses and gradients; tokens add up; weight = n_a + n_b.
    public static func mix(_ a: (ObjectiveResult, Int)?, _ b: (ObjectiveResult, Int)?) -> ObjectiveResult {
        let parts = [a, b].compactMap { $0 }
        let total = parts.reduce(0) { $0 + $1.1 }
        guard total > 0, let first = parts.first else { return ObjectiveResult(loss: 0, weight: 0, tokens: 0, grad: []) }
        var grad = [Float](repeating: 0, count: first.0.grad.count)
        var loss = 0.0
        var tokens = 0
        var scored = 0
        var correct = 0
        for (r, k) in parts {
            let w = Double(k) / Double(total)
            loss += w * r.loss
            tokens += r.tokens
            scored += r.scoredTokens
            correct += r.correctTokens
            let wf = Float(w)
            for i in grad.indices { grad[i] += wf * r.grad[i] }
        }
        return ObjectiveResult(loss: loss, weight: Double(total), tokens: tokens, grad: grad, scoredTokens: scored,
                               correctTokens: correct)
    }

    /// The SFT part's held-out loss (nats per scored token), else the DPO part's; nil without held-out data.
    /// - Throws: `TrainError`.
    public func evalLoss(params: LoRAParameters) throws -> Double? {
        try evalMetrics(params: params)?.loss
    }

    /// The SFT part's held-out loss and token accuracy, else the DPO part's loss; nil without held-out data.
    /// - Throws: `TrainError`.
    public func evalMetrics(params: LoRAParameters) throws -> EvalMetrics? {
        try sft.evalMetrics(params: params) ?? dpo.evalMetrics(params: params)
    }
}
