// Arithmetic used on the decision path of sampling. Everything that influences which token is chosen is built from
// IEEE-754 basic operations (+ − × ÷, comparisons, bit casts), which are correctly rounded everywhere, instead of the
// platform libm, whose exp/log may differ in the last bit between systems. That keeps "same seed and inputs, same
// output" true across platforms. Only the reported log-probabilities use libm's `log`.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// `e^x` for `x <= 0` in Float, relative error ≈ 2 ulp; returns 0 for `x < -87.3` (including -inf) and for NaN.
///
/// Cody–Waite range reduction `x = n·ln2 + r`, `|r| <= ln2/2` (split constants from Cephes `expf.c`), degree-7
/// Taylor polynomial for `e^r` (truncation < 6e-9), and `2^n` assembled from its bits. Branch-free so loops over
/// logits vectorize. No fused multiply-add: Swift does not contract `a * b + c`, so every platform rounds alike.
@inline(__always)
func expNonPositive(_ x: Float) -> Float {
    let ok = x >= -87.3  // false for NaN too
    let xc: Float = ok ? Swift.min(x, 0) : 0
    // Round x·log2(e) to the nearest integer with the 1.5·2²³ trick: no float→int conversion that could trap.
    let t = xc * 1.442_695_04 + 12_582_912
    let n = t - 12_582_912
    let ni = Int32(bitPattern: t.bitPattern) &- 0x4B40_0000
    let r = (xc - n * 0.693_359_375) - n * -2.121_944_40e-4
    var p: Float = 1.0 / 5040
    p = p * r + 1.0 / 720
    p = p * r + 1.0 / 120
    p = p * r + 1.0 / 24
    p = p * r + 1.0 / 6
    p = p * r + 0.5
    p = p * r + 1
    p = p * r + 1
    let scale = Float(bitPattern: UInt32(bitPattern: (ni &+ 127) &<< 23))
    return ok ? p * scale : 0
}

/// Natural logarithm of a positive finite Double from basic operations only: `x = m·2^e` with `m ∈ [√½, √2)`,
/// `ln m = 2·atanh(s)`, `s = (m−1)/(m+1)`, series to s²³ (error < 1e-18). Returns -inf for 0, NaN for negative or NaN.
func deterministicLog(_ x: Double) -> Double {
    guard x > 0 else { return x == 0 ? -.infinity : .nan }
    guard x.isFinite else { return x }
    var v = x
    var e = 0
    if v < 0x1p-1000 {  // subnormal or tiny: scale into the normal range first
        v *= 0x1p100
        e -= 100
    }
    let bits = v.bitPattern
    e += Int((bits >> 52) & 0x7FF) - 1023
    var m = Double(bitPattern: (bits & 0x000F_FFFF_FFFF_FFFF) | 0x3FF0_0000_0000_0000)  // [1, 2)
    if m >= 1.414_213_562_373_095_1 {
        m *= 0.5
        e += 1
    }
    let s = (m - 1) / (m + 1)
    let s2 = s * s
    var sum = 0.0
    var k = 23.0
    while k >= 3 {
        sum = (sum + 1 / k) * s2
        k -= 2
    }
    let lnm = 2 * s * (1 + sum)
    return Double(e) * 0.693_147_180_559_945_3 + lnm
}

/// Sum of `Double(w[i])` in a fixed order (four interleaved partial sums, combined in a fixed order), so the result
/// does not depend on the compiler or platform.
@inline(__always)
func orderedSum(_ w: UnsafeBufferPointer<Float>) -> Double {
    let n = w.count
    var a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0
    var i = 0
    while i + 4 <= n {
        a0 += Double(w[i])
        a1 += Double(w[i + 1])
        a2 += Double(w[i + 2])
        a3 += Double(w[i + 3])
        i += 4
    }
    while i < n {
        a0 += Double(w[i])
        i += 1
    }
    return (a0 + a1) + (a2 + a3)
}

/// Natural log via the platform libm (reporting only, never on the decision path).
@inline(__always)
func platformLog(_ x: Double) -> Double { log(x) }
