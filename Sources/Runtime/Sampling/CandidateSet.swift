// The set of tokens still eligible during one sampling step, and the partial selection used by top_k and top-N
// logprobs. Token order is total and deterministic: higher logit first, lower id first among equal logits.

/// Tokens still eligible. `ids == nil` means every id of `logits` (the common case, kept implicit so that no
/// 262144-entry list is built). Every stage keeps the most likely token, so `maxLogit` stays the maximum over the set.
struct CandidateSet {
    /// Penalized logits indexed by token id, `[n_vocab]`.
    let logits: UnsafeMutableBufferPointer<Float>
    /// Surviving ids, or nil for all.
    var ids: [Int32]?
    /// True when `ids` is ordered by (logit desc, id asc).
    var sorted: Bool
    /// Maximum logit over the set.
    let maxLogit: Float
    /// `weights[i] == expNonPositive(logits[i] - maxLogit)` for every id, `[n_vocab]`.
    let weights: UnsafeMutableBufferPointer<Float>

    var count: Int { ids?.count ?? logits.count }
}

/// True when token `a` ranks strictly before token `b` (higher logit, then lower id).
@inline(__always)
func ranksBefore(_ la: Float, _ ia: Int32, _ lb: Float, _ ib: Int32) -> Bool {
    la > lb || (la == lb && ia < ib)
}

/// The `k` best tokens of `logits` (all ids), in rank order. Min-heap of size k keyed on rank: a scan by ascending id
/// replaces the heap's worst entry only on a strictly greater logit (an equal logit arriving later has a higher id,
/// so it ranks after). O(n + m·log k) for m replacements; no full sort.
func topTokens(_ logits: UnsafeBufferPointer<Float>, k: Int) -> [Int32] {
    let n = logits.count
    let k = Swift.min(k, n)
    guard k > 0 else { return [] }
    var heapL = [Float](repeating: 0, count: k)
    var heapI = [Int32](repeating: 0, count: k)
    heapL.withUnsafeMutableBufferPointer { hl in
        heapI.withUnsafeMutableBufferPointer { hi in
            // Seed with the first k ids, heapified so that the root is the worst-ranked.
            for i in 0..<k {
                hl[i] = logits[i]
                hi[i] = Int32(truncatingIfNeeded: i)
            }
            var start = k / 2 - 1
            while start >= 0 {
                siftDown(hl, hi, start, k)
                start -= 1
            }
            var rootL = hl[0]
            var i = k
            while i < n {
                let l = logits[i]
                if l > rootL {
                    hl[0] = l
                    hi[0] = Int32(truncatingIfNeeded: i)
                    siftDown(hl, hi, 0, k)
                    rootL = hl[0]
                }
                i += 1
            }
        }
    }
    var keys = (0..<k).map { rankKey(heapL[$0], heapI[$0]) }
    keys.sort()
    return keys.map { Int32(truncatingIfNeeded: UInt32(truncatingIfNeeded: $0)) }
}

/// The `k` best of the listed `ids`, in rank order (any input order).
func topTokens(_ logits: UnsafeBufferPointer<Float>, among ids: [Int32], k: Int) -> [Int32] {
    var sorted = ids
    sortByRank(&sorted, logits)
    if k < sorted.count { sorted.removeSubrange(k...) }
    return sorted
}

/// Sorts ids by rank (logit desc, id asc) through `rankKey`, so the sort compares plain integers.
func sortByRank(_ ids: inout [Int32], _ logits: UnsafeBufferPointer<Float>) {
    var keys = ids.map { rankKey(logits[Int($0)], $0) }
    keys.sort()
    for j in keys.indices { ids[j] = Int32(truncatingIfNeeded: UInt32(truncatingIfNeeded: keys[j])) }
}

/// Restores the heap property below `root` for a heap whose root is the worst-ranked entry.
@inline(__always)
private func siftDown(_ hl: UnsafeMutableBufferPointer<Float>, _ hi: UnsafeMutableBufferPointer<Int32>, _ root: Int,
                      _ n: Int) {
    var parent = root
    while true {
        let left = 2 * parent + 1
        if left >= n { return }
        var worst = left
        let right = left + 1
        // "worse" = ranks after.
        if right < n && ranksBefore(hl[left], hi[left], hl[right], hi[right]) { worst = right }
        if ranksBefore(hl[parent], hi[parent], hl[worst], hi[worst]) {
            hl.swapAt(parent, worst)
            hi.swapAt(parent, worst)
            parent = worst
        } else {
            return
        }
    }
}
