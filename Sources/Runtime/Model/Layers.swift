// Shared layer functions of the decoder-only transformers: RMSNorm, RoPE, element-wise helpers.
// Sources: RMSNorm, Zhang & Sennrich 2019 (arXiv:1910.07467), as ggml_rms_norm computes it (sum of squares in
// double); RoPE, Su et al. 2021 (arXiv:2104.09864), angles as ggml's rope_f32 (theta_i = p · base^(-2i/n_dims)).
import Foundation

/// RMSNorm of `n` rows in place-or-out: `out[r] = x[r] / sqrt(mean(x[r]²) + eps) * weight`.
/// - Parameters: x `[n, width]`, weight `[width]` (nil = no gain), out `[n, width]` (may alias x).
@inline(__always)
func rmsNorm(_ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>?, _ out: UnsafeMutablePointer<Float>,
             rows n: Int, width: Int, eps: Float) {
    for r in 0..<n {
        let xr = x + r * width
        let orow = out + r * width
        var sum: Double = 0
        for i in 0..<width { sum += Double(xr[i] * xr[i]) }
        let mean = Float(sum / Double(width))
        let scale = 1 / (mean + eps).squareRoot()
        if let w = weight {
            for i in 0..<width { orow[i] = xr[i] * scale * w[i] }
        } else {
            for i in 0..<width { orow[i] = xr[i] * scale }
        }
    }
}

/// Precomputed cos/sin of RoPE angles for one row: `[n_dims / 2]` each.
package struct RopeAngles {
    package var cos: [Float]
    package var sin: [Float]

    /// Angles for position `p`: theta_i = p/scale · base^(-2i/n_dims), computed by repeated multiplication as
    /// ggml does, optionally divided by per-frequency factors (Llama 3 `rope_freqs.weight`).
    package init(position p: Int, base: Float, dims: Int, scale: Float, freqFactors: [Float]?) {
        let half = dims / 2
        cos = [Float](repeating: 0, count: half)
        sin = [Float](repeating: 0, count: half)
        let thetaScale = powf(base, -2.0 / Float(dims))
        var theta = Float(p) / scale
        for i in 0..<half {
            let t = freqFactors.map { theta / $0[i] } ?? theta
            cos[i] = cosf(t)
            sin[i] = sinf(t)
            theta *= thetaScale
        }
    }
}

/// Rotates the first `n_dims` values of each of `heads` vectors of width `headDim` at `x` in place.
@inline(__always)
func applyRope(_ x: UnsafeMutablePointer<Float>, heads: Int, headDim: Int, angles: RopeAngles, style: RopeStyle) {
    let half = angles.cos.count
    angles.cos.withUnsafeBufferPointer { c in
        angles.sin.withUnsafeBufferPointer { s in
            for h in 0..<heads {
                let v = x + h * headDim
                switch style {
                case .neox:
                    for i in 0..<half {
                        let x0 = v[i], x1 = v[i + half]
                        v[i] = x0 * c[i] - x1 * s[i]
                        v[i + half] = x0 * s[i] + x1 * c[i]
                    }
                case .normal:
                    for i in 0..<half {
                        let x0 = v[2 * i], x1 = v[2 * i + 1]
                        v[2 * i] = x0 * c[i] - x1 * s[i]
                        v[2 * i + 1] = x0 * s[i] + x1 * c[i]
                    }
                }
            }
        }
    }
}

/// `y[i] += x[i]` for `n` values.
@inline(__always)
func addInPlace(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, count n: Int) {
    for i in 0..<n { y[i] += x[i] }
}

/// A buffer of floats owned by one forward call.
final class FloatBuffer {
    let pointer: UnsafeMutablePointer<Float>
    let count: Int
    init(_ count: Int) {
        self.count = count
        pointer = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
        pointer.initialize(repeating: 0, count: max(count, 1))
    }
    deinit { pointer.deallocate() }
}
