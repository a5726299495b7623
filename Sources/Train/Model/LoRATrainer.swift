// LoRATrainer: the training forward/backward of a LoRA adapter over the frozen, memory-mapped quantized base, and
// the SFT and DPO losses. Same function as serving (Runtime/Model/Transformer.swift), in float32 over dequantized
// weights (LEARNING-DECISIONS #1), with float activations throughout (serving quantizes them for its integer dot
// products); two evaluations differ at rounding level: GELU-tanh is exact (as PyTorch) rather than serving's
// f16 table, and RoPE angles are computed in double (see `RopeTable`).
//
// Memory strategy: the forward keeps every activation the backward needs for the layers at and above the first
// patched layer (about 37 KB per token per layer for Gemma 3 270M: 0.7 GB for 4 × 256 tokens), because
// recomputing a block would add ~20% to a step whose time is mostly matrix products. Attention probabilities
// are the exception: they are recomputed per head in the backward from the saved q and k (a dense [L, L] tile
// per sequence and head would grow quadratically with the sequence length). Layers below the first patched layer
// are run forward only and keep nothing; the backward stops there (the embedding has no trainable parameter).
//
// Threads: the trainer owns its ComputePool (separate from serving's). OpenBLAS stays at one thread
// (process-global, as serving sets it: `openblas_set_num_threads(1)` in Model.init); every large product is split
// over the trainer's pool, one single-threaded sgemm per thread, so the thread count is exactly the pool's and
// the two pools never oversubscribe each other through OpenBLAS's own threads.
import COpenBLAS
import Foundation
import Runtime
#if canImport(Glibc)
import Glibc
#endif

/// Where the DPO reference log-probabilities come from.
public enum DPOReference: Sendable {
    /// The base model without any adapter (TRL's default for a PEFT model without a separate reference).
    case base
    /// A frozen copy of an adapter, e.g. the one the run started from.
    case adapter(LoRAParameters)
}

/// Result of an SFT loss/gradient evaluation.
public struct SFTResult: Sendable {
    /// Mean cross-entropy over all scored tokens of the batch (nats per token).
    public let loss: Double
    /// Number of scored tokens.
    public let tokens: Int
    /// Scored tokens whose largest logit is the target (argmax prediction right; `correct / tokens` is the token
    /// accuracy, TRL's `mean_token_accuracy`).
    public let correct: Int
    /// ∂loss/∂parameters, the layout of `LoRAParameters.values`.
    public let grad: [Float]
}

/// Log-probabilities of one DPO pair, summed over each completion's scored tokens (nats).
public struct DPOPairLogProbs: Sendable, Equatable {
    /// log π(chosen), the policy = base + adapter.
    public let policyChosen: Double
    /// log π(rejected).
    public let policyRejected: Double
    /// log π_ref(chosen).
    public let referenceChosen: Double
    /// log π_ref(rejected).
    public let referenceRejected: Double
}

/// Result of a DPO loss/gradient evaluation.
public struct DPOResult: Sendable {
    /// Mean over pairs of `−log σ(beta·((π_c − ref_c) − (π_r − ref_r)))`.
    public let loss: Double
    /// Per pair, in input order.
    public let pairs: [DPOPairLogProbs]
    /// ∂loss/∂parameters, the layout of `LoRAParameters.values`.
    public let grad: [Float]
}

/// Log-probabilities of one sequence's scored tokens.
public struct SequenceLogProbs: Sendable {
    /// `log p(token_i | tokens before i)` for each scored index `i`, in order (nats).
    public let tokenLogProbs: [Double]
    /// Their sum.
    public var sum: Double { tokenLogProbs.reduce(0, +) }
}

/// Trains LoRA adapters on a loaded model: loss and gradient of a batch, on its own compute pool.
///
/// The base weights are read from `model` (memory-mapped, never modified); `lora_A` / `lora_B` come from a
/// `LoRAParameters` and gradients are returned in its layout. Calls are not reentrant: one call at a time.
public final class LoRATrainer: @unchecked Sendable {
    /// The base model.
    public let model: Model
    /// The trainer's own worker threads (separate from `model.pool`).
    public let pool: ComputePool
    let config: ModelConfig
    let weights: TransformerWeights
    /// f32 copies of the layer projections, `[layer][Projection]`, when `cacheWeights` (built on first use).
    var weightCache: [[Projection: TrainBuffer]]?
    /// Keep dequantized f32 copies of the layer projections between calls (forward and backward then skip the
    /// dequantization; Gemma 3 270M: 400 MB). Off: each projection is dequantized into one scratch per use.
    public let cacheWeights: Bool
    /// Asked at fine-grained points of every pass (before each layer projection, between output-head tile rounds)
    /// whether training goes on, sleeps or uses fewer threads; nil: never asked. Results are the same bit for bit
    /// with or without it (see `TrainingPacer`). Set it between calls, not during one; setting nil gives the
    /// trainer all of its pool's threads again.
    public var pacer: (any TrainingPacer)? {
        didSet { if pacer == nil { pool.participants = pool.threads } }
    }

    /// Per-layer activation buffers of the last call, reused by the next call with the same row count and LoRA
    /// rank (`spareKey`): every buffer is fully overwritten by the forward, and reusing them spares each step
    /// faulting in and zeroing fresh pages (0.7 GB for Gemma 3 270M at 4 × 256 tokens, about 4% of a step).
    /// The peak resident set is unchanged; between calls the buffers stay allocated.
    var spareActivations: [LayerActivations] = []
    var spareKey = (rows: 0, rank: 0)

    /// - Parameters:
    ///   - model: the base model (Gemma 3 or Llama).
    ///   - threads: compute threads of the trainer's pool (≥ 1; the calling thread is one of them).
    ///   - background: run the pool's threads under SCHED_IDLE (the calling thread included, since it takes part
    ///     in every job). Off by default: on 2 busy cores an idle-priority trainer starves (LEARNING-DECISIONS #8).
    /// - Throws: `TrainError.invalidArgument` for `threads < 1`.
    ///   - cacheWeights: see `cacheWeights`.
    public init(model: Model, threads: Int, background: Bool = false, cacheWeights: Bool = false) throws {
        guard threads >= 1 else { throw TrainError.invalidArgument("threads must be ≥ 1, got \(threads)") }
        self.model = model
        self.cacheWeights = cacheWeights
        self.pool = ComputePool(threads: threads)
        self.config = model.transformer.config
        self.weights = model.transformer.weights
        openblas_set_num_threads(1)
        if background { Self.lowerPriority(pool) }
    }

    /// Puts every thread of `pool` under SCHED_IDLE (Linux `sched(7)`: runs only when no other thread wants the
    /// core). Each thread changes its own policy with `pthread_setschedparam`; repeated until every thread was seen,
    /// since a fork/join job may run two indices on one thread.
    static func lowerPriority(_ pool: ComputePool) {
        let lock = NSLock()
        var seen = Set<UInt>()
        for _ in 0..<100 where seen.count < pool.threads {
            pool.run { _ in
                var param = sched_param()
                param.sched_priority = 0
                let me = pthread_self()
                _ = pthread_setschedparam(me, schedIdle, &param)
                lock.lock(); seen.insert(UInt(me)); lock.unlock()
                usleep(1000)
            }
        }
    }

    /// A yield point: asks the pacer (if any), then applies its thread limit to the pool for the work up to the
    /// next yield point.
    func yieldPoint() {
        guard let pacer else { return }
        pacer.yieldPoint()
        let n = min(pool.threads, max(1, pacer.threadLimit ?? pool.threads))
        if pool.participants != n { pool.participants = n }
    }

    /// `SCHED_IDLE` (5 in linux/sched.h; glibc declares it only under _GNU_SOURCE).
    static let schedIdle: Int32 = 5

    /// The kernel set OpenBLAS chose at load time (`openblas_get_corename`, e.g. "SkylakeX", "Haswell").
    /// OpenBLAS 0.3.21 does not recognise every recent CPU and then falls back to "Prescott" (SSE3, ~4x slower
    /// sgemm); `OPENBLAS_CORETYPE=SkylakeX` in the environment of the process fixes that on AVX-512 machines.
    public static var blasCoreName: String { openblas_get_corename().map { String(cString: $0) } ?? "unknown" }

    // MARK: - Public API

    /// SFT: mean cross-entropy over every scored token of the batch (one mean over the batch's tokens, not a mean
    /// of per-sequence means) and its gradient. Logits are computed only at the positions that predict a scored
    /// token, chunked over the vocabulary.
    /// - Parameters: params: the adapter (shape must fit the model); batch: whole sequences, packed together.
    /// - Throws: `TrainError` for an empty batch, a malformed sequence, no scored token, or mismatched parameters.
    public func sftLossAndGradient(params: LoRAParameters, batch: [TrainingSequence]) throws -> SFTResult {
        try check(params)
        let packed = try Packed(batch, config: config)
        guard !packed.headRows.isEmpty else { throw TrainError.noScoredTokens }
        let n = Double(packed.headRows.count)
        let run = try pass(params: params, packed: packed, wantGrad: true) { logp in
            // d(mean −logp)/d(logp_i) = −1/N: weight of row i's "−logp gradient".
            (logp.map { _ in Float(1 / n) }, ())
        }
        return SFTResult(loss: -run.logp.reduce(0, +) / n, tokens: packed.headRows.count,
                         correct: run.correct, grad: run.grad)
    }

    /// The SFT loss without a gradient (no activation is kept).
    /// - Parameter params: the adapter, or nil for the base model alone.
    /// - Returns: mean cross-entropy over the scored tokens (nats/token), their count, and how many of them the
    ///   argmax predicts right (as `SFTResult.correct`).
    /// - Throws: as `sftLossAndGradient`.
    public func evalLoss(params: LoRAParameters?, batch: [TrainingSequence]) throws
        -> (loss: Double, tokens: Int, correct: Int)
    {
        if let params { try check(params) }
        let packed = try Packed(batch, config: config)
        guard !packed.headRows.isEmpty else { throw TrainError.noScoredTokens }
        let run = try pass(params: params, packed: packed, wantGrad: false) { _ in ([], ()) }
        return (-run.logp.reduce(0, +) / Double(packed.headRows.count), packed.headRows.count,
                run.correct)
    }

    /// Log-probabilities of every scored token, per sequence (no gradient).
    /// - Parameter params: the adapter, or nil for the base model alone.
    /// - Throws: `TrainError` for an empty batch, a malformed sequence or mismatched parameters.
    public func logProbs(params: LoRAParameters?, batch: [TrainingSequence]) throws -> [SequenceLogProbs] {
        if let params { try check(params) }
        let packed = try Packed(batch, config: config)
        let run = try pass(params: params, packed: packed, wantGrad: false) { _ in ([], ()) }
        var out = [[Double]](repeating: [], count: batch.count)
        for (r, s) in packed.headSeq.enumerated() { out[s].append(run.logp[r]) }
        return out.map { SequenceLogProbs(tokenLogProbs: $0) }
    }

    /// DPO (Rafailov et al. 2023, arXiv:2305.18290, sigmoid loss as TRL's default): for each pair
    /// `z = beta·((π_c − ref_c) − (π_r − ref_r))` with log-probabilities summed over each completion's scored tokens,
    /// `loss = mean over pairs of −log σ(z)`, and its gradient w.r.t. the adapter (the reference is frozen).
    /// - Parameters: params: the policy adapter; pairs: preference pairs; beta: > 0; reference: see `DPOReference`.
    /// - Throws: `TrainError` for no pair, `beta ≤ 0`, a malformed sequence, a sequence with no scored token, or
    ///   mismatched parameters.
    public func dpoLossAndGradient(params: LoRAParameters, pairs: [PreferencePair], beta: Double,
                                   reference: DPOReference) throws -> DPOResult {
        try check(params)
        guard !pairs.isEmpty else { throw TrainError.emptyBatch }
        guard beta > 0, beta.isFinite else { throw TrainError.invalidArgument("beta must be > 0, got \(beta)") }
        var seqs: [TrainingSequence] = []
        for p in pairs { seqs.append(p.chosen); seqs.append(p.rejected) }
        for (i, s) in seqs.enumerated() where s.scoredCount == 0 {
            throw TrainError.invalidSequence(index: i, reason: "a DPO completion must score at least one token")
        }
        let packed = try Packed(seqs, config: config)
        let refParams: LoRAParameters?
        switch reference {
        case .base: refParams = nil
        case .adapter(let p): try check(p); refParams = p
        }
        let refRun = try pass(params: refParams, packed: packed, wantGrad: false) { _ in ([], ()) }
        var refSum = [Double](repeating: 0, count: seqs.count)
        for (r, s) in packed.headSeq.enumerated() { refSum[s] += refRun.logp[r] }
        let nPairs = Double(pairs.count)
        let run = try pass(params: params, packed: packed, wantGrad: true) { logp -> ([Float], (Double, [DPOPairLogProbs])) in
            var pol = [Double](repeating: 0, count: seqs.count)
            for (r, s) in packed.headSeq.enumerated() { pol[s] += logp[r] }
            var loss: Double = 0
            var coef = [Double](repeating: 0, count: seqs.count)  // ∂loss/∂π_seq
            var out: [DPOPairLogProbs] = []
            for p in 0..<pairs.count {
                let z = beta * ((pol[2 * p] - refSum[2 * p]) - (pol[2 * p + 1] - refSum[2 * p + 1]))
                // −log σ(z) = softplus(−z), computed stably.
                loss += z > 0 ? log1p(exp(-z)) : -z + log1p(exp(z))
                let sNeg = 1 / (1 + exp(z))  // σ(−z)
                coef[2 * p] = -beta * sNeg / nPairs
                coef[2 * p + 1] = beta * sNeg / nPairs
                out.append(DPOPairLogProbs(policyChosen: pol[2 * p], policyRejected: pol[2 * p + 1],
                                           referenceChosen: refSum[2 * p], referenceRejected: refSum[2 * p + 1]))
            }
            // Row weights multiply ∂(−logp_i)/∂x: ∂loss/∂logp_i = coef ⇒ weight = −coef.
            let w = packed.headSeq.map { Float(-coef[$0]) }
            return (w, (loss / nPairs, out))
        }
        return DPOResult(loss: run.extra.0, pairs: run.extra.1, grad: run.grad)
    }

    // MARK: - Validation

    func check(_ params: LoRAParameters) throws {
        for s in params.slots {
            guard s.key.layer >= 0, s.key.layer < config.nLayer else {
                throw TrainError.adapterMismatch("layer \(s.key.layer) outside 0..<\(config.nLayer)")
            }
            let (nIn, nOut) = projectionShape(s.key.projection, config)
            guard s.nIn == nIn, s.nOut == nOut, s.offsetB + s.countB <= params.values.count else {
                throw TrainError.adapterMismatch(
                    "\(s.key.projection.rawValue) of layer \(s.key.layer) is [\(s.nOut), \(s.nIn)], the model's is [\(nOut), \(nIn)]")
            }
        }
    }

    // MARK: - One forward (+ backward) pass

    struct PassResult<Extra> {
        var logp: [Double]
        /// Head rows whose target has the largest logit.
        var correct: Int
        var grad: [Float]
        var extra: Extra
    }

    /// Runs the forward pass, the head at the scored positions, then (when `wantGrad`) asks `weights` for each
    /// head row's weight on `∂(−logp)/∂x` and runs the backward down to the first patched layer.
    func pass<Extra>(params: LoRAParameters?, packed: Packed, wantGrad: Bool,
                     weights rowWeights: ([Double]) -> ([Float], Extra)) throws -> PassResult<Extra> {
        let c = config
        let T = packed.tokens.count, D = c.nEmbd
        let paramCount = params?.values.count ?? 0
        let pbuf = TrainBuffer(paramCount)
        let gbuf = TrainBuffer(wantGrad ? paramCount : 0)
        if let params, paramCount > 0 { params.values.withUnsafeBufferPointer { pbuf.p.update(from: $0.baseAddress!, count: paramCount) } }
        var terms: [ModuleKey: LoRATerm] = [:]
        if let params {
            for s in params.slots {
                terms[s.key] = LoRATerm(a: pbuf.p + s.offsetA, b: pbuf.p + s.offsetB,
                                        dA: wantGrad ? gbuf.p + s.offsetA : nil, dB: wantGrad ? gbuf.p + s.offsetB : nil,
                                        rank: s.rank, scale: params.config.scale)
            }
        }
        let firstPatched = wantGrad ? (params?.slots.map(\.key.layer).min() ?? c.nLayer) : c.nLayer
        if cacheWeights && weightCache == nil {
            weightCache = weights.layers.map { lw in
                var m: [Projection: TrainBuffer] = [:]
                for p in Projection.allCases {
                    yieldPoint()
                    let w = lw.matrix(p)
                    let b = TrainBuffer(w.rows * w.cols)
                    dequantizeMatrix(pool, w, into: b.p)
                    m[p] = b
                }
                return m
            }
        }
        let ctx = PassContext(trainer: self, packed: packed, terms: terms)

        // Embeddings (× √n_embd for Gemma).
        let x = TrainBuffer(T * D)
        let scaleE = c.embeddingScale
        parallelRows(pool, T, work: D) { r0, r1 in
            for i in r0..<r1 {
                self.weights.tokenEmbedding.dequantizeRow(Int(packed.tokens[i]), into: x.p + i * D)
                if scaleE != 1 { for e in 0..<D { x.p[i * D + e] *= scaleE } }
            }
        }
        // Layers.
        let key = (rows: T, rank: terms.values.map(\.rank).max() ?? 0)
        if spareKey != key { spareActivations = []; spareKey = key }
        var saved: [LayerActivations?] = Array(repeating: nil, count: c.nLayer)
        let scratch = firstPatched > 0 ? (spareActivations.popLast() ?? LayerActivations(ctx, T: T)) : nil
        defer {
            if let scratch { spareActivations.append(scratch) }
            spareActivations.append(contentsOf: saved.compactMap { $0 })
        }
        for l in 0..<c.nLayer {
            yieldPoint()
            let acts = l >= firstPatched ? (spareActivations.popLast() ?? LayerActivations(ctx, T: T)) : scratch!
            ctx.layerForward(l, x: x.p, acts: acts)
            if l >= firstPatched { saved[l] = acts }
        }
        // Head at the scored positions.
        let N = packed.headRows.count
        let xh = TrainBuffer(N * D), xn = TrainBuffer(N * D), rstd = TrainBuffer(N)
        for (j, r) in packed.headRows.enumerated() { (xh.p + j * D).update(from: x.p + r * D, count: D) }
        self.weights.outputNorm.withUnsafeBufferPointer {
            rmsnormForward(pool, xh.p, $0.baseAddress, xn.p, rstd: rstd.p, rows: N, width: D, eps: c.rmsEpsilon)
        }
        var logp = [Double](repeating: 0, count: N)
        var hits = [Bool](repeating: false, count: N)
        let g = wantGrad && firstPatched < c.nLayer ? TrainBuffer(N * D) : nil
        let t0 = TrainProfile.start()
        logp.withUnsafeMutableBufferPointer { lp in
            hits.withUnsafeMutableBufferPointer { h in
                outputHead(pool, w: self.weights.output, xn: xn.p, rows: N, targets: packed.headTargets,
                           logp: lp.baseAddress!, grad: g?.p, hits: h.baseAddress,
                           yieldPoint: pacer == nil ? nil : { self.yieldPoint() })
            }
        }
        TrainProfile.add(.head, since: t0)
        let correct = hits.reduce(0) { $0 + ($1 ? 1 : 0) }
        let (w, extra) = rowWeights(logp)
        guard let g, wantGrad else {
            return PassResult(logp: logp, correct: correct, grad: wantGrad ? [Float](repeating: 0, count: paramCount) : [],
                              extra: extra)
        }
        // Backward: head rows → final norm → residual stream.
        for i in 0..<N { for e in 0..<D { g.p[i * D + e] *= w[i] } }
        let dxh = TrainBuffer(N * D)
        self.weights.outputNorm.withUnsafeBufferPointer {
            rmsnormBackward(pool, g.p, xh.p, $0.baseAddress, rstd: rstd.p, dxh.p, rows: N, width: D, accumulate: false)
        }
        let dx = TrainBuffer(T * D)
        for (j, r) in packed.headRows.enumerated() {
            for e in 0..<D { dx.p[r * D + e] += dxh.p[j * D + e] }
        }
        let bscratch = BackwardScratch(ctx, T: T)
        for l in stride(from: c.nLayer - 1, through: firstPatched, by: -1) {
            yieldPoint()
            ctx.layerBackward(l, dx: dx.p, acts: saved[l]!, s: bscratch)
        }
        let grad = Array(UnsafeBufferPointer(start: gbuf.p, count: paramCount))
        return PassResult(logp: logp, correct: correct, grad: grad, extra: extra)
    }
}

// MARK: - Packed batch

/// Sequences packed row after row, with the head rows (positions that predict a scored token).
struct Packed {
    var tokens: [Int32] = []
    var positions: [Int32] = []
    var spans: [(start: Int, count: Int)] = []
    /// Row whose output predicts a scored token, its target id and its sequence index.
    var headRows: [Int] = []
    var headTargets: [Int32] = []
    var headSeq: [Int] = []
    var maxLength = 0

    init(_ batch: [TrainingSequence], config: ModelConfig) throws {
        guard !batch.isEmpty else { throw TrainError.emptyBatch }
        for (si, s) in batch.enumerated() {
            guard !s.inputIds.isEmpty else { throw TrainError.invalidSequence(index: si, reason: "no tokens") }
            guard s.labelsMask.count == s.inputIds.count else {
                throw TrainError.invalidSequence(
                    index: si, reason: "labels_mask has \(s.labelsMask.count) entries for \(s.inputIds.count) tokens")
            }
            guard s.inputIds.count <= config.nCtxTrain else {
                throw TrainError.invalidSequence(
                    index: si, reason: "\(s.inputIds.count) tokens exceed the context of \(config.nCtxTrain)")
            }
            guard s.labelsMask[0] == 0 else {
                throw TrainError.invalidSequence(index: si, reason: "the first token cannot be scored")
            }
            let start = tokens.count
            for (i, t) in s.inputIds.enumerated() {
                guard t >= 0, Int(t) < config.nVocab else {
                    throw TrainError.invalidSequence(index: si, reason: "token id \(t) outside the vocabulary of \(config.nVocab)")
                }
                guard s.labelsMask[i] <= 1 else {
                    throw TrainError.invalidSequence(index: si, reason: "labels_mask values must be 0 or 1")
                }
                tokens.append(t)
                positions.append(Int32(i))
                if s.labelsMask[i] == 1 {
                    headRows.append(start + i - 1)
                    headTargets.append(t)
                    headSeq.append(si)
                }
            }
            spans.append((start, s.inputIds.count))
            maxLength = max(maxLength, s.inputIds.count)
        }
    }
}

// MARK: - Per-layer state

/// What one layer's forward keeps for its backward (`[T, …]` row-major).
final class LayerActivations {
    let xIn, h1, qRaw, qF, kRaw, kF, v, att, oRaw, xMid, h2, g, u, a, dRaw: TrainBuffer
    let rstd1, rstdQ, rstdK, rstdO, rstd2, rstdD: TrainBuffer
    /// LoRA intermediates `t = x·Aᵀ [T, r]` per projection (allocated when the layer is patched).
    var t: [Projection: TrainBuffer] = [:]

    init(_ ctx: PassContext, T: Int) {
        let c = ctx.config
        let D = c.nEmbd
        xIn = TrainBuffer(T * D); h1 = TrainBuffer(T * D)
        qRaw = TrainBuffer(T * c.qDim); qF = TrainBuffer(T * c.qDim)
        kRaw = TrainBuffer(T * c.kvDim); kF = TrainBuffer(T * c.kvDim); v = TrainBuffer(T * c.kvDim)
        att = TrainBuffer(T * c.qDim); oRaw = TrainBuffer(T * D); xMid = TrainBuffer(T * D); h2 = TrainBuffer(T * D)
        g = TrainBuffer(T * c.nFF); u = TrainBuffer(T * c.nFF); a = TrainBuffer(T * c.nFF); dRaw = TrainBuffer(T * D)
        rstd1 = TrainBuffer(T); rstdQ = TrainBuffer(T * c.nHead); rstdK = TrainBuffer(T * c.nHeadKV)
        rstdO = TrainBuffer(T); rstd2 = TrainBuffer(T); rstdD = TrainBuffer(T)
        let r = ctx.terms.values.map(\.rank).max() ?? 0
        if r > 0 { for p in Projection.allCases { t[p] = TrainBuffer(T * r) } }
    }
}

/// Scratch of the backward, shared by all layers.
final class BackwardScratch {
    let tmpD, dh, datt, dq, dk, dv, da, dg, du, dt: TrainBuffer
    init(_ ctx: PassContext, T: Int) {
        let c = ctx.config
        tmpD = TrainBuffer(T * c.nEmbd); dh = TrainBuffer(T * c.nEmbd)
        datt = TrainBuffer(T * c.qDim); dq = TrainBuffer(T * c.qDim)
        dk = TrainBuffer(T * c.kvDim); dv = TrainBuffer(T * c.kvDim)
        da = TrainBuffer(T * c.nFF); dg = TrainBuffer(T * c.nFF); du = TrainBuffer(T * c.nFF)
        dt = TrainBuffer(T * max(1, ctx.terms.values.map(\.rank).max() ?? 1))
    }
}

/// Everything one pass needs: model, packed rows, LoRA terms, RoPE tables, the dequantization scratch.
final class PassContext {
    let config: ModelConfig
    let weights: TransformerWeights
    let pool: ComputePool
    let packed: Packed
    let terms: [ModuleKey: LoRATerm]
    let globalRope: RopeTable
    let swaRope: RopeTable?
    /// Dequantized weight `[n_out, n_in]` of the projection in use.
    let wf: TrainBuffer
    let tmpD: TrainBuffer
    let weightCache: [[Projection: TrainBuffer]]?
    /// The trainer's yield point (nil without a pacer), called before each projection.
    let yieldPoint: (() -> Void)?

    init(trainer: LoRATrainer, packed: Packed, terms: [ModuleKey: LoRATerm]) {
        let c = trainer.config
        config = c
        yieldPoint = trainer.pacer == nil ? nil : { [unowned trainer] in trainer.yieldPoint() }
        weights = trainer.weights
        pool = trainer.pool
        self.packed = packed
        self.terms = terms
        globalRope = RopeTable(positions: packed.maxLength, base: c.ropeFreqBase, dims: c.ropeDims, scale: c.ropeScale,
                               freqFactors: trainer.weights.ropeFreqFactors)
        swaRope = c.layerUsesSlidingWindow.contains(true)
            ? RopeTable(positions: packed.maxLength, base: c.ropeFreqBaseSWA, dims: c.ropeDims, scale: 1,
                        freqFactors: nil)
            : nil
        let maxW = Projection.allCases.map { p -> Int in let s = projectionShape(p, c); return s.nIn * s.nOut }.max()!
        weightCache = trainer.weightCache
        wf = TrainBuffer(weightCache == nil ? maxW : 0)
        tmpD = TrainBuffer(packed.tokens.count * c.nEmbd)
    }

    var T: Int { packed.tokens.count }

    func attentionShape(_ l: Int) -> AttentionShape {
        AttentionShape(nHead: config.nHead, nHeadKV: config.nHeadKV, headDim: config.headDim,
                       scale: config.attentionScale,
                       window: config.layerUsesSlidingWindow[l] ? config.slidingWindow : nil)
    }

    func rope(_ l: Int) -> RopeTable { config.layerUsesSlidingWindow[l] ? (swaRope ?? globalRope) : globalRope }

    /// The f32 weight of a projection: the cached copy, or a fresh dequantization into `wf`.
    func f32Weight(_ p: Projection, _ l: Int) -> (WeightMatrix, UnsafePointer<Float>) {
        let w = weights.layers[l].matrix(p)
        if let cached = weightCache?[l][p] { return (w, UnsafePointer(cached.p)) }
        dequantizeMatrix(pool, w, into: wf.p)
        return (w, UnsafePointer(wf.p))
    }

    func linF(_ p: Projection, _ l: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
              _ acts: LayerActivations) {
        yieldPoint?()
        let (w, wfp) = f32Weight(p, l)
        let term = terms[ModuleKey(layer: l, projection: p)]
        linearForward(pool, wf: wfp, nIn: w.cols, nOut: w.rows, x: x, rows: T, y: y, lora: term,
                      t: term == nil ? nil : acts.t[p]?.p)
    }

    func linB(_ p: Projection, _ l: Int, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
              dx: UnsafeMutablePointer<Float>, accumulate: Bool, _ acts: LayerActivations, _ s: BackwardScratch) {
        yieldPoint?()
        let (w, wfp) = f32Weight(p, l)
        let term = terms[ModuleKey(layer: l, projection: p)]
        linearBackward(pool, wf: wfp, nIn: w.cols, nOut: w.rows, dy: dy, x: x, rows: T, dx: dx,
                       accumulate: accumulate, lora: term, t: term == nil ? nil : acts.t[p]?.p, dt: s.dt.p)
    }

    /// Residual add of a block's branch output `branch [T, n_embd]` into `x`, through the Gemma post-norm when the
    /// layer has one (its `rstd [T]` kept for the backward; `scratch [T, n_embd]` holds the normed branch).
    func addResidual(_ x: UnsafeMutablePointer<Float>, _ branch: UnsafeMutablePointer<Float>, postNorm: [Float]?,
                     rstd: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>, rows T: Int) {
        let D = config.nEmbd
        var added = UnsafePointer(branch)
        if let pn = postNorm {
            pn.withUnsafeBufferPointer {
                rmsnormForward(pool, branch, $0.baseAddress, scratch, rstd: rstd, rows: T, width: D, eps: config.rmsEpsilon)
            }
            added = UnsafePointer(scratch)
        }
        for i in 0..<(T * D) { x[i] += added[i] }
    }

    /// One transformer block forward on the residual stream `x [T, n_embd]` (updated in place).
    func layerForward(_ l: Int, x: UnsafeMutablePointer<Float>, acts A: LayerActivations) {
        let c = config, lw = weights.layers[l], D = c.nEmbd, T = self.T, eps = c.rmsEpsilon
        A.xIn.p.update(from: x, count: T * D)
        lw.attnNorm.withUnsafeBufferPointer {
            rmsnormForward(pool, x, $0.baseAddress, A.h1.p, rstd: A.rstd1.p, rows: T, width: D, eps: eps)
        }
        linF(.attnQ, l, A.h1.p, A.qRaw.p, A)
        linF(.attnK, l, A.h1.p, A.kRaw.p, A)
        linF(.attnV, l, A.h1.p, A.v.p, A)
        if let qn = lw.qNorm, let kn = lw.kNorm {
            qn.withUnsafeBufferPointer {
                rmsnormForward(pool, A.qRaw.p, $0.baseAddress, A.qF.p, rstd: A.rstdQ.p, rows: T * c.nHead,
                               width: c.headDim, eps: eps)
            }
            kn.withUnsafeBufferPointer {
                rmsnormForward(pool, A.kRaw.p, $0.baseAddress, A.kF.p, rstd: A.rstdK.p, rows: T * c.nHeadKV,
                               width: c.headDim, eps: eps)
            }
        } else {
            A.qF.p.update(from: A.qRaw.p, count: T * c.qDim)
            A.kF.p.update(from: A.kRaw.p, count: T * c.kvDim)
        }
        let table = rope(l)
        packed.positions.withUnsafeBufferPointer { pos in
            ropeForward(A.qF.p, rows: T, rowStride: c.qDim, heads: c.nHead, headDim: c.headDim,
                        positions: pos.baseAddress!, table: table, style: c.ropeStyle)
            ropeForward(A.kF.p, rows: T, rowStride: c.kvDim, heads: c.nHeadKV, headDim: c.headDim,
                        positions: pos.baseAddress!, table: table, style: c.ropeStyle)
        }
        yieldPoint?()
        let t0 = TrainProfile.start()
        attentionForward(pool, q: A.qF.p, k: A.kF.p, v: A.v.p, out: A.att.p, spans: packed.spans,
                         shape: attentionShape(l))
        TrainProfile.add(.attention, since: t0)
        linF(.attnOutput, l, A.att.p, A.oRaw.p, A)
        addResidual(x, A.oRaw.p, postNorm: lw.postAttnNorm, rstd: A.rstdO.p, scratch: tmpD.p, rows: T)
        A.xMid.p.update(from: x, count: T * D)
        lw.ffnNorm.withUnsafeBufferPointer {
            rmsnormForward(pool, x, $0.baseAddress, A.h2.p, rstd: A.rstd2.p, rows: T, width: D, eps: eps)
        }
        linF(.ffnGate, l, A.h2.p, A.g.p, A)
        linF(.ffnUp, l, A.h2.p, A.u.p, A)
        gluForward(pool, A.g.p, A.u.p, A.a.p, count: T * c.nFF, activation: c.activation)
        linF(.ffnDown, l, A.a.p, A.dRaw.p, A)
        addResidual(x, A.dRaw.p, postNorm: lw.postFFNNorm, rstd: A.rstdD.p, scratch: tmpD.p, rows: T)
    }

    /// Backward of `layerForward`: `dx [T, n_embd]` holds ∂loss/∂(block output) and becomes ∂loss/∂(block input);
    /// LoRA gradients accumulate into the terms' dA/dB.
    func layerBackward(_ l: Int, dx: UnsafeMutablePointer<Float>, acts A: LayerActivations, s: BackwardScratch) {
        let c = config, lw = weights.layers[l], D = c.nEmbd, T = self.T
        // Feed-forward branch: x_out = x_mid + post_ffw_norm(down(act(gate(h2))·up(h2))), h2 = ffn_norm(x_mid).
        var dBranch: UnsafePointer<Float> = UnsafePointer(dx)
        if let pn = lw.postFFNNorm {
            pn.withUnsafeBufferPointer {
                rmsnormBackward(pool, dx, A.dRaw.p, $0.baseAddress, rstd: A.rstdD.p, s.tmpD.p, rows: T, width: D,
                                accumulate: false)
            }
            dBranch = UnsafePointer(s.tmpD.p)
        }
        linB(.ffnDown, l, dy: dBranch, x: A.a.p, dx: s.da.p, accumulate: false, A, s)
        gluBackward(pool, s.da.p, A.g.p, A.u.p, dg: s.dg.p, du: s.du.p, count: T * c.nFF, activation: c.activation)
        linB(.ffnGate, l, dy: s.dg.p, x: A.h2.p, dx: s.dh.p, accumulate: false, A, s)
        linB(.ffnUp, l, dy: s.du.p, x: A.h2.p, dx: s.dh.p, accumulate: true, A, s)
        lw.ffnNorm.withUnsafeBufferPointer {
            rmsnormBackward(pool, s.dh.p, A.xMid.p, $0.baseAddress, rstd: A.rstd2.p, dx, rows: T, width: D,
                            accumulate: true)
        }
        // Attention branch: x_mid = x_in + post_attention_norm(o(attn(rope(qnorm(q(h1))), …))), h1 = attn_norm(x_in).
        dBranch = UnsafePointer(dx)
        if let pn = lw.postAttnNorm {
            pn.withUnsafeBufferPointer {
                rmsnormBackward(pool, dx, A.oRaw.p, $0.baseAddress, rstd: A.rstdO.p, s.tmpD.p, rows: T, width: D,
                                accumulate: false)
            }
            dBranch = UnsafePointer(s.tmpD.p)
        }
        linB(.attnOutput, l, dy: dBranch, x: A.att.p, dx: s.datt.p, accumulate: false, A, s)
        yieldPoint?()
        let t0 = TrainProfile.start()
        attentionBackward(pool, dOut: s.datt.p, q: A.qF.p, k: A.kF.p, v: A.v.p, out: A.att.p, dq: s.dq.p, dk: s.dk.p,
                          dv: s.dv.p, spans: packed.spans, shape: attentionShape(l))
        TrainProfile.add(.attention, since: t0)
        let table = rope(l)
        packed.positions.withUnsafeBufferPointer { pos in
            ropeBackward(s.dq.p, rows: T, rowStride: c.qDim, heads: c.nHead, headDim: c.headDim,
                         positions: pos.baseAddress!, table: table, style: c.ropeStyle)
            ropeBackward(s.dk.p, rows: T, rowStride: c.kvDim, heads: c.nHeadKV, headDim: c.headDim,
                         positions: pos.baseAddress!, table: table, style: c.ropeStyle)
        }
        if let qn = lw.qNorm, let kn = lw.kNorm {
            qn.withUnsafeBufferPointer {
                rmsnormBackward(pool, s.dq.p, A.qRaw.p, $0.baseAddress, rstd: A.rstdQ.p, s.dq.p, rows: T * c.nHead,
                                width: c.headDim, accumulate: false)
            }
            kn.withUnsafeBufferPointer {
                rmsnormBackward(pool, s.dk.p, A.kRaw.p, $0.baseAddress, rstd: A.rstdK.p, s.dk.p, rows: T * c.nHeadKV,
                                width: c.headDim, accumulate: false)
            }
        }
        linB(.attnQ, l, dy: s.dq.p, x: A.h1.p, dx: s.dh.p, accumulate: false, A, s)
        linB(.attnK, l, dy: s.dk.p, x: A.h1.p, dx: s.dh.p, accumulate: true, A, s)
        linB(.attnV, l, dy: s.dv.p, x: A.h1.p, dx: s.dh.p, accumulate: true, A, s)
        lw.attnNorm.withUnsafeBufferPointer {
            rmsnormBackward(pool, s.dh.p, A.xIn.p, $0.baseAddress, rstd: A.rstd1.p, dx, rows: T, width: D,
                            accumulate: true)
        }
    }
}
