// AdamW over flat f32 parameter buffers (LoRAParameters.values), with PyTorch's semantics.
// Math: Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization" (arXiv:1711.05101), as
// torch.optim.AdamW implements it (torch/optim/adamw.py, _single_tensor_adamw, amsgrad off, maximize off):
//   step t ← t + 1
//   p ← p − lr·wd·p                                  (decoupled decay, before the moments)
//   m ← β1·m + (1 − β1)·g ;  v ← β2·v + (1 − β2)·g²
//   m̂ = m / (1 − β1ᵗ) ;  v̂ = v / (1 − β2ᵗ)
//   p ← p − lr · m̂ / (√v̂ + eps)
// Gradient clipping: torch.nn.utils.clip_grad_norm_ (norm_type 2): total = ‖all grads‖₂;
// if total > max_norm, every grad is multiplied by max_norm / (total + 1e-6).
import Foundation

/// AdamW hyper-parameters (PyTorch defaults except `weightDecay`, whose PyTorch default is 0.01 as well).
public struct AdamWConfig: Sendable, Equatable, Codable {
    /// `beta1`, first-moment decay.
    public var beta1: Double
    /// `beta2`, second-moment decay.
    public var beta2: Double
    /// `eps`, added to √v̂.
    public var eps: Double
    /// Decoupled weight decay `wd` (multiplied by `lr`).
    public var weightDecay: Double

    /// - Parameters: see the properties.
    public init(beta1: Double = 0.9, beta2: Double = 0.999, eps: Double = 1e-8, weightDecay: Double = 0.01) {
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
    }
}

/// The optimizer state: both moments `[count]` (the layout of `LoRAParameters.values`) and the step count.
public struct AdamWState: Sendable, Equatable, Codable {
    /// First moment `m`, one per parameter.
    public var m: [Float]
    /// Second moment `v`, one per parameter.
    public var v: [Float]
    /// Updates applied so far (PyTorch's `state["step"]`).
    public var step: Int

    /// Zero moments for `count` parameters, step 0.
    public init(count: Int) {
        m = [Float](repeating: 0, count: count)
        v = [Float](repeating: 0, count: count)
        step = 0
    }

    /// - Parameters: see the properties. - Precondition: `m.count == v.count`.
    public init(m: [Float], v: [Float], step: Int) {
        precondition(m.count == v.count)
        self.m = m
        self.v = v
        self.step = step
    }
}

/// `torch.optim.AdamW` for one flat parameter buffer.
public struct AdamW: Sendable {
    /// Hyper-parameters.
    public var config: AdamWConfig
    /// Moments and step.
    public var state: AdamWState

    /// A fresh optimizer for `count` parameters.
    public init(count: Int, config: AdamWConfig = AdamWConfig()) {
        self.config = config
        self.state = AdamWState(count: count)
    }

    /// An optimizer resumed from saved state.
    public init(state: AdamWState, config: AdamWConfig) {
        self.config = config
        self.state = state
    }

    /// One update of `params` with gradient `grad` at learning rate `lr` (see the file header for the formula).
    /// Per-element arithmetic is f32 like PyTorch's f32 path; the bias corrections are computed in f64.
    /// - Precondition: `params.count == grad.count == state.m.count`.
    public mutating func step(params: inout [Float], grad: [Float], lr: Double) {
        precondition(params.count == grad.count && grad.count == state.m.count, "AdamW: buffer sizes differ")
        state.step += 1
        let t = Double(state.step)
        let bc1 = 1 - pow(config.beta1, t)
        let bc2 = 1 - pow(config.beta2, t)
        // PyTorch: step_size = lr / bc1; denom = sqrt(v) / sqrt(bc2) + eps; p -= step_size · m / denom.
        let stepSize = Float(lr / bc1)
        let bc2Sqrt = Float(bc2.squareRoot())
        let decay = Float(1 - lr * config.weightDecay)
        // As PyTorch, `1 − β` is formed in f64 before it meets the f32 tensors (Float(1 − 0.999) is 1e-3 to f32
        // precision; 1 − Float(0.999) would be off by 1.3e-5 relative).
        let b1 = Float(config.beta1), b2 = Float(config.beta2), eps = Float(config.eps)
        let oneMinusB1 = Float(1 - config.beta1), oneMinusB2 = Float(1 - config.beta2)
        params.withUnsafeMutableBufferPointer { p in
            grad.withUnsafeBufferPointer { g in
                state.m.withUnsafeMutableBufferPointer { m in
                    state.v.withUnsafeMutableBufferPointer { v in
                        for i in 0..<p.count {
                            let gi = g[i]
                            p[i] *= decay
                            m[i] = b1 * m[i] + oneMinusB1 * gi
                            v[i] = b2 * v[i] + oneMinusB2 * gi * gi
                            let denom = v[i].squareRoot() / bc2Sqrt + eps
                            p[i] -= stepSize * m[i] / denom
                        }
                    }
                }
            }
        }
    }
}

/// Gradient clipping by global L2 norm (`torch.nn.utils.clip_grad_norm_`, norm_type 2).
public enum GradientClipping {
    /// The L2 norm of all elements, accumulated in f64.
    public static func globalNorm(_ grad: [Float]) -> Double {
        var s = 0.0
        for g in grad { s += Double(g) * Double(g) }
        return s.squareRoot()
    }

    /// Scales `grad` in place so its global norm is at most `maxNorm`: when the norm exceeds `maxNorm`, every
    /// element is multiplied by `maxNorm / (norm + 1e-6)` (PyTorch's formula, hence slightly below `maxNorm`).
    /// - Returns: the norm before clipping (what PyTorch returns and what training logs report).
    @discardableResult
    public static func clip(_ grad: inout [Float], maxNorm: Double) -> Double {
        let norm = globalNorm(grad)
        if norm > maxNorm {
            let scale = Float(maxNorm / (norm + 1e-6))
            for i in grad.indices { grad[i] *= scale }
        }
        return norm
    }
}

/// Sums the gradients of several micro-batches so one optimizer step sees their combined gradient.
/// With a mean loss per micro-batch, `finish` divides by the number of micro-batches (the usual gradient
/// accumulation); with a token-weighted mean, pass each micro-batch's weight to `add`.
public struct GradientAccumulator: Sendable {
    /// The running weighted sum `[count]`.
    public private(set) var sum: [Float]
    /// Sum of the weights added so far.
    public private(set) var totalWeight: Double = 0
    /// Micro-batches added since the last `finish`.
    public private(set) var microBatches = 0

    /// An empty accumulator for `count` parameters.
    public init(count: Int) { sum = [Float](repeating: 0, count: count) }

    /// Adds `weight · grad` (weight e.g. 1, or the micro-batch's share of scored tokens).
    /// - Precondition: `grad.count == sum.count`.
    public mutating func add(_ grad: [Float], weight: Double = 1) {
        precondition(grad.count == sum.count, "gradient size differs")
        let w = Float(weight)
        for i in sum.indices { sum[i] += w * grad[i] }
        totalWeight += weight
        microBatches += 1
    }

    /// The weighted mean `sum / totalWeight` (zeros when nothing was added), and resets the accumulator.
    public mutating func finish() -> [Float] {
        let w = totalWeight > 0 ? Float(1 / totalWeight) : 0
        let out = sum.map { $0 * w }
        for i in sum.indices { sum[i] = 0 }
        totalWeight = 0
        microBatches = 0
        return out
    }
}
