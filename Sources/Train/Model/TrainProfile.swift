// TrainProfile: where a training step's wall time goes, by kind of work, for `lorad bench --train`.
import Foundation

/// Wall time of the trainer's passes by kind of work (seconds, summed over calls while `enabled`). Measured on the
/// thread that drives a pass (each part is a fork/join over the pool, so its wall time is the part's cost); the rest
/// of a step (norms, RoPE, activations, residuals, embedding, optimizer) is the step time minus these parts.
/// Not thread-safe: enable it for one trainer at a time (the benchmark does).
public enum TrainProfile {
    /// A kind of work.
    public enum Part: Int, CaseIterable, Sendable {
        /// Products with the frozen base weights (`x·Wᵀ` forward, `dy·W` backward).
        case frozen
        /// The LoRA products (`x·Aᵀ`, `t·Bᵀ`, `dA`, `dB` and their `dx` term).
        case lora
        /// Attention (scores, softmax, weighted values) forward and backward.
        case attention
        /// The output head and cross-entropy at the scored positions.
        case head

        /// How `lorad bench --train` labels the part.
        public var name: String { ["frozen products", "LoRA products", "attention", "output head"][rawValue] }
    }

    /// Whether `add` records (off by default).
    nonisolated(unsafe) public static var enabled = false
    nonisolated(unsafe) static var totals = [Double](repeating: 0, count: Part.allCases.count)

    /// Seconds recorded per part since the last `reset`.
    public static var seconds: [Part: Double] {
        Dictionary(uniqueKeysWithValues: Part.allCases.map { ($0, totals[$0.rawValue]) })
    }

    /// Clears the totals.
    public static func reset() { totals = [Double](repeating: 0, count: Part.allCases.count) }

    /// A start time for `add` (0 when disabled).
    @inline(__always) static func start() -> UInt64 { enabled ? DispatchTime.now().uptimeNanoseconds : 0 }

    /// Adds the time since `t0` (from `start`) to `part`.
    @inline(__always) static func add(_ part: Part, since t0: UInt64) {
        guard enabled, t0 != 0 else { return }
        totals[part.rawValue] += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    }
}
