// Evaluation of an adapter version for continual learning's publication gate: held-out loss of preferred answers,
// preference accuracy on held-out pairs, and the forgetting probe; the gate's decision between the current version
// and a candidate; and the stable held-out split of feedback items.
//
// Definitions (LEARNING-DECISIONS #9, #10):
// - held-out loss: mean cross-entropy (nats per scored token) of the preferred answers — SFT sequences and the
//   chosen side of each pair — under the adapter;
// - preference accuracy: TRL's `rewards/accuracies`: the fraction of pairs whose implicit DPO reward of the chosen
//   answer is strictly greater than the rejected one's, rewards measured against the base model
//   (`r = log π(y|x) − log π_base(y|x)`, Rafailov et al. 2023, arXiv:2305.18290 §5). β > 0 scales both rewards
//   alike, so it does not change the comparison and is not a parameter here. The base model itself scores 0.
// - forgetting: the relative rise of the probe loss, `(probe_candidate − probe_current) / probe_current`.
import Foundation

/// Figures of one adapter version on one evaluation set.
public struct AdapterEvaluation: Sendable, Equatable, Codable {
    /// Mean cross-entropy of the preferred answers, nats/token (nil: no held-out answer).
    public var heldOutLoss: Double?
    /// Scored tokens behind `heldOutLoss`.
    public var heldOutTokens: Int
    /// Fraction of held-out pairs the adapter prefers correctly (nil: no pair).
    public var preferenceAccuracy: Double?
    /// Held-out pairs behind `preferenceAccuracy`.
    public var pairs: Int
    /// Mean cross-entropy on the forgetting probe, nats/token (nil: no probe).
    public var probeLoss: Double?

    /// - Parameters: see the properties.
    public init(heldOutLoss: Double?, heldOutTokens: Int, preferenceAccuracy: Double?, pairs: Int, probeLoss: Double?) {
        self.heldOutLoss = heldOutLoss
        self.heldOutTokens = heldOutTokens
        self.preferenceAccuracy = preferenceAccuracy
        self.pairs = pairs
        self.probeLoss = probeLoss
    }

    enum CodingKeys: String, CodingKey {
        case heldOutLoss = "held_out_loss", heldOutTokens = "held_out_tokens"
        case preferenceAccuracy = "preference_accuracy", pairs, probeLoss = "probe_loss"
    }
}

/// Measures adapter versions on held-out feedback and the forgetting probe (see the file comment).
public enum AdapterEvaluator {
    /// Evaluates `params` (nil: the base model alone).
    /// - Parameters:
    ///   - trainer: the model math (its arithmetic mode is the one used for both versions of a comparison).
    ///   - params: the adapter, or nil for the base model.
    ///   - heldOut: preferred-answer sequences (SFT examples; pass the chosen sides of pairs here too).
    ///   - pairs: held-out preference pairs.
    ///   - probe: the forgetting probe's sequences (`ForgettingProbe.sequences`).
    ///   - baseLogProbs: summed log-probabilities of `pairs` under the base model, `[pair][chosen, rejected]`;
    ///     computed when nil (pass the same array when evaluating several versions on the same pairs).
    ///   - batchSize: sequences per forward.
    /// - Throws: `TrainError` for malformed sequences or mismatched parameters.
    public static func evaluate(trainer: LoRATrainer, params: LoRAParameters?, heldOut: [TrainingSequence],
                                pairs: [PreferencePair], probe: [TrainingSequence],
                                baseLogProbs: [[Double]]? = nil, batchSize: Int = 4) throws -> AdapterEvaluation {
        var loss: Double? = nil
        var tokens = 0
        if !heldOut.isEmpty {
            loss = try SFTObjective.meanLoss(trainer: trainer, params: params, sequences: heldOut, batchSize: batchSize)
            tokens = heldOut.reduce(0) { $0 + $1.scoredCount }
        }
        var accuracy: Double? = nil
        if !pairs.isEmpty {
            let policy = try pairLogProbs(trainer: trainer, params: params, pairs: pairs, batchSize: batchSize)
            let base = try baseLogProbs ?? pairLogProbs(trainer: trainer, params: nil, pairs: pairs, batchSize: batchSize)
            guard base.count == pairs.count else {
                throw TrainError.invalidArgument("baseLogProbs has \(base.count) pairs, expected \(pairs.count)")
            }
            accuracy = preferenceAccuracy(policy: policy, base: base)
        }
        let probeLoss = try SFTObjective.meanLoss(trainer: trainer, params: params, sequences: probe, batchSize: batchSize)
        return AdapterEvaluation(heldOutLoss: loss, heldOutTokens: tokens, preferenceAccuracy: accuracy,
                                 pairs: pairs.count, probeLoss: probeLoss)
    }

    /// Summed log-probabilities of each pair's scored tokens, `[pair][chosen, rejected]`.
    /// - Throws: `TrainError`.
    public static func pairLogProbs(trainer: LoRATrainer, params: LoRAParameters?, pairs: [PreferencePair],
                                    batchSize: Int = 4) throws -> [[Double]] {
        var out: [[Double]] = []
        let step = max(1, batchSize / 2)
        for start in stride(from: 0, to: pairs.count, by: step) {
            let chunk = pairs[start..<min(pairs.count, start + step)]
            let seqs = chunk.flatMap { [$0.chosen, $0.rejected] }
            let lp = try trainer.logProbs(params: params, batch: seqs)
            for i in 0..<chunk.count { out.append([lp[2 * i].sum, lp[2 * i + 1].sum]) }
        }
        return out
    }

    /// TRL's reward accuracy: the fraction of pairs with `(π_c − base_c) > (π_r − base_r)` (strict).
    /// - Parameters: policy / base: `[pair][chosen, rejected]` summed log-probabilities, same length.
    /// - Returns: a value in [0, 1]; nil for no pair.
    public static func preferenceAccuracy(policy: [[Double]], base: [[Double]]) -> Double? {
        guard !policy.isEmpty, policy.count == base.count else { return nil }
        var right = 0
        for (p, b) in zip(policy, base) where (p[0] - b[0]) > (p[1] - b[1]) { right += 1 }
        return Double(right) / Double(policy.count)
    }
}

/// The publication gate's settings (`gate` of a training policy, LEARNING-DECISIONS #9).
public struct GateSettings: Sendable, Equatable, Codable {
    /// Required relative improvement of the held-out loss, `(current − candidate) / current ≥ minImprovement`
    /// (0 = must not get worse).
    public var minImprovement: Double
    /// Largest allowed relative rise of the forgetting probe's loss.
    public var maxForgetting: Double

    /// - Parameters: see the properties; defaults 0.0 and 0.02.
    public init(minImprovement: Double = 0.0, maxForgetting: Double = 0.02) {
        self.minImprovement = minImprovement
        self.maxForgetting = maxForgetting
    }

    enum CodingKeys: String, CodingKey { case minImprovement = "min_improvement", maxForgetting = "max_forgetting" }
}

/// The gate's decision and the numbers behind it (stored with a published version, given in a job's event).
public struct GateVerdict: Sendable, Equatable, Codable {
    /// Whether the candidate may be published.
    public var passed: Bool
    /// One sentence per failed condition (empty when passed).
    public var reasons: [String]
    /// The current version's figures (the base model's when there is no version yet).
    public var current: AdapterEvaluation
    /// The candidate's figures.
    public var candidate: AdapterEvaluation
    /// `(current − candidate) / current` of the held-out loss (nil: no held-out answer).
    public var improvement: Double?
    /// `(candidate − current) / current` of the probe loss (nil: no probe).
    public var forgetting: Double?
    /// The settings applied.
    public var settings: GateSettings

    /// Decides: passes iff there is held-out data, the held-out loss improved by at least `minImprovement`, the
    /// preference accuracy (when there are pairs) did not fall, and the probe loss rose by at most `maxForgetting`.
    /// - Parameters: current / candidate: figures on the same sets; settings: the thresholds.
    public init(current: AdapterEvaluation, candidate: AdapterEvaluation, settings: GateSettings) {
        self.current = current
        self.candidate = candidate
        self.settings = settings
        var reasons: [String] = []
        improvement = nil
        if let c = current.heldOutLoss, let n = candidate.heldOutLoss, c > 0 {
            let imp = (c - n) / c
            improvement = imp
            if !(imp >= settings.minImprovement) {
                reasons.append(String(format: "held-out loss %.4f → %.4f (%+.2f%%), needs an improvement of at least %.2f%%",
                                      c, n, -imp * 100, settings.minImprovement * 100))
            }
        } else if current.preferenceAccuracy == nil {
            reasons.append("no held-out feedback to evaluate on")
        }
        if let a = current.preferenceAccuracy, let b = candidate.preferenceAccuracy, b < a {
            reasons.append(String(format: "held-out preference accuracy fell from %.3f to %.3f", a, b))
        }
        forgetting = nil
        if let c = current.probeLoss, let n = candidate.probeLoss, c > 0 {
            let f = (n - c) / c
            forgetting = f
            if !(f <= settings.maxForgetting) {
                reasons.append(String(format: "forgetting probe loss %.4f → %.4f (%+.2f%%), allowed at most %+.2f%%",
                                      c, n, f * 100, settings.maxForgetting * 100))
            }
        }
        self.reasons = reasons
        passed = reasons.isEmpty
    }

    enum CodingKeys: String, CodingKey { case passed, reasons, current, candidate, improvement, forgetting, settings }
}

/// The stable held-out split of feedback items: the same key always falls on the same side, whatever else is in
/// the data set, and across restarts and versions (a 64-bit FNV-1a hash of the key's UTF-8 bytes, finished with
/// SplitMix64's mixer so that nearby keys spread evenly; Fowler–Noll–Vo, and Steele et al. 2014).
public enum HoldoutSplit {
    /// Whether the item `key` (e.g. a feedback id) is held out at `fraction` (0…1).
    public static func isHeldOut(_ key: String, fraction: Double) -> Bool {
        guard fraction > 0 else { return false }
        guard fraction < 1 else { return true }
        return unitValue(key) < fraction
    }

    /// The key's position in [0, 1).
    public static func unitValue(_ key: String) -> Double {
        var h = fnv1a64(key)
        h = (h ^ (h >> 30)) &* 0xbf58_476d_1ce4_e5b9
        h = (h ^ (h >> 27)) &* 0x94d0_49bb_1331_11eb
        h ^= h >> 31
        return Double(h >> 11) / Double(UInt64(1) << 53)
    }

    /// 64-bit FNV-1a of the UTF-8 bytes (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
    public static func fnv1a64(_ key: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in key.utf8 {
            h ^= UInt64(b)
            h = h &* 0x0000_0100_0000_01b3
        }
        return h
    }
}
