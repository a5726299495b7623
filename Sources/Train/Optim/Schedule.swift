// Learning-rate schedules with linear warm-up, as Hugging Face transformers defines them
// (transformers/optimization.py: get_constant_schedule_with_warmup, get_linear_schedule_with_warmup,
// get_cosine_schedule_with_warmup with num_cycles 0.5). The multiplier at optimizer step k (0-based: the k-th
// update uses `lr(k)`) is what torch's LambdaLR applies before its k-th `scheduler.step()`.
import Foundation

/// A learning-rate schedule: `lr(step) = baseLR · factor(step)`.
public struct LRSchedule: Sendable, Equatable, Codable {
    /// The shape after warm-up.
    public enum Kind: String, Sendable, Codable, CaseIterable {
        /// factor 1 after warm-up.
        case constant
        /// Linear decay from 1 at the end of warm-up to 0 at `totalSteps`.
        case linear
        /// Half a cosine from 1 at the end of warm-up to 0 at `totalSteps`.
        case cosine
    }

    /// Shape after warm-up.
    public var kind: Kind
    /// Peak learning rate `lr`.
    public var baseLR: Double
    /// Warm-up steps (factor `k / warmupSteps` for `k < warmupSteps`).
    public var warmupSteps: Int
    /// Total optimizer steps of the run (used by linear and cosine).
    public var totalSteps: Int

    /// - Parameters: see the properties.
    public init(kind: Kind, baseLR: Double, warmupSteps: Int = 0, totalSteps: Int) {
        self.kind = kind
        self.baseLR = baseLR
        self.warmupSteps = max(0, warmupSteps)
        self.totalSteps = max(0, totalSteps)
    }

    /// The multiplier of `baseLR` at 0-based optimizer step `step`.
    public func factor(_ step: Int) -> Double {
        let s = Double(step), w = Double(warmupSteps), t = Double(totalSteps)
        if step < warmupSteps { return s / max(1, w) }
        switch kind {
        case .constant:
            return 1
        case .linear:
            return max(0, (t - s) / max(1, t - w))
        case .cosine:
            let progress = (s - w) / max(1, t - w)
            return max(0, 0.5 * (1 + cos(Double.pi * 0.5 * 2 * progress)))
        }
    }

    /// `baseLR · factor(step)`.
    public func lr(_ step: Int) -> Double { baseLR * factor(step) }
}
