// Linear passes over a [n_vocab] logit row. Written as plain loops over raw pointers with independent accumulators
// and no branches in the body, so the optimizer vectorizes them; each result is defined by a fixed sequence of IEEE
// operations (fixed accumulation order), hence identical on every platform. Limits: rows of up to Int32.max entries.

/// Largest value (ignoring NaN) and whether any entry is NaN or ±inf.
func maxAndNonFinite(_ l: UnsafeBufferPointer<Float>) -> (max: Float, nonFinite: Bool) {
    let n = l.count
    guard let p = l.baseAddress, n > 0 else { return (-.infinity, false) }
    var m0 = -Float.infinity, m1 = m0, m2 = m0, m3 = m0, m4 = m0, m5 = m0, m6 = m0, m7 = m0
    var bad: UInt32 = 0
    var i = 0
    while i + 8 <= n {
        let v0 = p[i], v1 = p[i + 1], v2 = p[i + 2], v3 = p[i + 3]
        let v4 = p[i + 4], v5 = p[i + 5], v6 = p[i + 6], v7 = p[i + 7]
        m0 = v0 > m0 ? v0 : m0
        m1 = v1 > m1 ? v1 : m1
        m2 = v2 > m2 ? v2 : m2
        m3 = v3 > m3 ? v3 : m3
        m4 = v4 > m4 ? v4 : m4
        m5 = v5 > m5 ? v5 : m5
        m6 = v6 > m6 ? v6 : m6
        m7 = v7 > m7 ? v7 : m7
        // Exponent all ones ⇔ NaN or ±inf; only then does adding 1 to the exponent field carry into bit 31.
        bad |= ((v0.bitPattern & 0x7F80_0000) &+ 0x0080_0000) | ((v1.bitPattern & 0x7F80_0000) &+ 0x0080_0000)
        bad |= ((v2.bitPattern & 0x7F80_0000) &+ 0x0080_0000) | ((v3.bitPattern & 0x7F80_0000) &+ 0x0080_0000)
        bad |= ((v4.bitPattern & 0x7F80_0000) &+ 0x0080_0000) | ((v5.bitPattern & 0x7F80_0000) &+ 0x0080_0000)
        bad |= ((v6.bitPattern & 0x7F80_0000) &+ 0x0080_0000) | ((v7.bitPattern & 0x7F80_0000) &+ 0x0080_0000)
        i += 8
    }
    while i < n {
        let v = p[i]
        m0 = v > m0 ? v : m0
        bad |= (v.bitPattern & 0x7F80_0000) &+ 0x0080_0000
        i += 1
    }
    let m = Swift.max(Swift.max(Swift.max(m0, m1), Swift.max(m2, m3)), Swift.max(Swift.max(m4, m5), Swift.max(m6, m7)))
    return (m, bad & 0x8000_0000 != 0)
}

/// `w[i] = expNonPositive((l[i] - m) * invT)`. With `invT == 1` this is exactly `expNonPositive(l[i] - m)`.
func expShifted(_ l: UnsafeBufferPointer<Float>, max m: Float, invT: Float, into w: UnsafeMutableBufferPointer<Float>) {
    let n = Swift.min(l.count, w.count)
    guard let lp = l.baseAddress, let wp = w.baseAddress else { return }
    for i in 0..<n { wp[i] = expNonPositive((lp[i] - m) * invT) }
}

/// Index of the first entry equal to `value` (given the row maximum: the argmax, lowest index on ties); 0 if none.
func firstIndex(of value: Float, in l: UnsafeBufferPointer<Float>) -> Int {
    for i in 0..<l.count where l[i] == value { return i }
    return 0
}

/// Elements per block in `blockSums`.
let samplingBlock = 256

/// Per-block `orderedSum` of `w` (blocks of `samplingBlock`, the last one possibly shorter).
func blockSums(_ w: UnsafeBufferPointer<Float>) -> [Double] {
    let n = w.count
    guard let base = w.baseAddress, n > 0 else { return [] }
    let blocks = (n + samplingBlock - 1) / samplingBlock
    var sums = [Double](repeating: 0, count: blocks)
    for b in 0..<blocks {
        let start = b * samplingBlock
        sums[b] = orderedSum(UnsafeBufferPointer(start: base + start, count: Swift.min(samplingBlock, n - start)))
    }
    return sums
}

/// Mass and number of entries with `l[i] >= threshold`: `(Σ w[i], count)` over those entries. Explicit 8-lane
/// vectors (the optimizer does not vectorize a float reduction by itself); lanes are combined in a fixed order.
func massAndCount(_ l: UnsafeBufferPointer<Float>, _ w: UnsafeBufferPointer<Float>, atLeast threshold: Float)
    -> (mass: Double, count: Int)
{
    let n = Swift.min(l.count, w.count)
    guard let lp = l.baseAddress, let wp = w.baseAddress else { return (0, 0) }
    let lr = UnsafeRawPointer(lp), wr = UnsafeRawPointer(wp)
    let t = SIMD8<Float>(repeating: threshold)
    let zero = SIMD8<Float>(repeating: 0)
    let zeroCount = SIMD8<Int32>(repeating: 0)
    var total = 0.0
    var count = 0
    var start = 0
    while start < n {
        let end = Swift.min(start + samplingBlock, n)
        var acc = zero
        var cnt = zeroCount
        var i = start
        while i + 8 <= end {
            let lv = lr.loadUnaligned(fromByteOffset: i &* 4, as: SIMD8<Float>.self)
            let wv = wr.loadUnaligned(fromByteOffset: i &* 4, as: SIMD8<Float>.self)
            let keep = lv .>= t
            acc += zero.replacing(with: wv, where: keep)
            cnt &+= zeroCount.replacing(with: 1, where: keep)
            i += 8
        }
        var tail: Float = 0
        while i < end {
            let l0 = lp[i], w0 = wp[i]
            tail += l0 >= threshold ? w0 : 0
            count += l0 >= threshold ? 1 : 0
            i += 1
        }
        let lanes = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
        total += Double(lanes + tail)
        count += Int(cnt.wrappedSum())
        start = end
    }
    return (total, count)
}

/// Ids with `l[i] >= threshold`, ascending. `expected` sizes the result (a count from `massAndCount`).
func gatherIds(_ l: UnsafeBufferPointer<Float>, atLeast threshold: Float, expected: Int) -> [Int32] {
    guard let lp = l.baseAddress else { return [] }
    var ids = [Int32](repeating: 0, count: Swift.max(expected, 0) + 1)
    var c = 0
    ids.withUnsafeMutableBufferPointer { out in
        let cap = out.count - 1
        for i in 0..<l.count {
            // Branch-free compaction: always write, advance only on a hit (slot `cap` is a spill slot).
            out[Swift.min(c, cap)] = Int32(truncatingIfNeeded: i)
            c += lp[i] >= threshold ? 1 : 0
        }
    }
    if c + 1 > ids.count { return (0..<l.count).filter { l[$0] >= threshold }.map { Int32(truncatingIfNeeded: $0) } }
    ids.removeSubrange(c...)
    return ids
}

/// A sort key whose ascending order is rank order: logit descending, then id ascending (-0 and +0 are equal).
@inline(__always)
func rankKey(_ logit: Float, _ id: Int32) -> UInt64 {
    let v = logit == 0 ? 0 : logit
    let bits = v.bitPattern
    let ordered = bits & 0x8000_0000 != 0 ? ~bits : bits | 0x8000_0000  // monotonic in the float value
    return (UInt64(~ordered) << 32) | UInt64(UInt32(bitPattern: id))
}
