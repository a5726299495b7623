// The sampling stages, one small type each, in the order Sampler runs them (llama.cpp common/common.h default
// sampler chain, without the stages lorad does not offer): penalties → top_k → top_p → min_p → temperature → draw.
// Filters run on pre-temperature logits, as in llama.cpp, so top_p / min_p thresholds do not move with temperature.

/// Repetition (llama.cpp `llama_sampler_penalties`), presence and frequency (OpenAI) penalties, on every id that
/// occurs in the history. For a token seen `count` times:
/// `logit = logit <= 0 ? logit * repetition : logit / repetition; logit -= count * frequency + presence`.
struct Penalties {
    var repetition: Float
    var presence: Float
    var frequency: Float

    var isActive: Bool { repetition != 1 || presence != 0 || frequency != 0 }

    /// Applies the penalties in place and returns the penalized ids (ascending). Ids outside the vocabulary are
    /// ignored.
    func apply(to logits: UnsafeMutableBufferPointer<Float>, history: [Int32]) -> [Int32] {
        guard isActive, !history.isEmpty else { return [] }
        var counts: [Int32: Int] = [:]
        counts.reserveCapacity(Swift.min(history.count, 4096))
        for id in history where id >= 0 && Int(id) < logits.count {
            counts[id, default: 0] += 1
        }
        let ids = counts.keys.sorted()
        for id in ids {
            let count = counts[id] ?? 0
            var l = logits[Int(id)]
            if repetition != 1 {
                l = l <= 0 ? l * repetition : l / repetition
            }
            l -= Float(count) * frequency + (count > 0 ? presence : 0)
            // Odd parameters (a zero or non-finite penalty) must not leave NaN or +inf behind.
            logits[Int(id)] = l.isNaN ? -.infinity : Swift.min(l, .greatestFiniteMagnitude)
        }
        return ids
    }
}

/// Keeps the `k` highest logits (ties: lower id). Produces a ranked list.
struct TopK {
    var k: Int

    func apply(_ set: inout CandidateSet) {
        guard k > 0, k < set.count else { return }
        let logits = UnsafeBufferPointer(set.logits)
        if let ids = set.ids {
            set.ids = topTokens(logits, among: ids, k: k)
        } else {
            set.ids = topTokens(logits, k: k)
        }
        set.sorted = true
    }
}

/// Keeps the shortest rank-ordered prefix whose softmax mass reaches `p` (at least one token), as llama.cpp
/// `llama_sampler_top_p_apply`. Over the full vocabulary it avoids a full sort: linear passes find a logit gap `g`
/// below the maximum such that the tokens within `g` carry at least mass `p` (doubling, then a few bisection steps
/// to keep that set small); only that subset is sorted and cut.
struct TopP {
    var p: Float

    func apply(_ set: inout CandidateSet) {
        guard p < 1, set.count > 1 else { return }
        let logits = UnsafeBufferPointer(set.logits)
        let weights = UnsafeBufferPointer(set.weights)
        let m = set.maxLogit
        if var ids = set.ids {
            if !set.sorted { sortByRank(&ids, logits) }
            let w = ids.map { weights[Int($0)] }
            let total = w.withUnsafeBufferPointer { orderedSum($0) }
            let keep = prefixLength(w, target: Double(p) * total)
            ids.removeSubrange(keep...)
            set.ids = ids
            set.sorted = true
            return
        }
        // Full vocabulary.
        let total = orderedSum(weights)
        let target = Double(p) * total
        // Smallest doubling gap whose mass reaches the target.
        var low: Float = 0
        var high: Float = 1
        var stats = massAndCount(logits, weights, atLeast: m - high)
        while stats.mass < target && stats.count < logits.count && high < 0x1p100 {
            low = high
            high *= 2
            stats = massAndCount(logits, weights, atLeast: m - high)
        }
        // Narrow [low, high] while the gathered set would be large.
        var steps = 0
        while stats.count > 512 && steps < 8 {
            let mid = (low + high) / 2
            let s = massAndCount(logits, weights, atLeast: m - mid)
            if s.mass >= target {
                high = mid
                stats = s
            } else {
                low = mid
            }
            steps += 1
        }
        while true {
            let threshold = m - high
            var ids = gatherIds(logits, atLeast: threshold, expected: stats.count)
            let everything = ids.count == logits.count || high >= 0x1p100
            sortByRank(&ids, logits)
            let keep = prefixLength(ids.map { weights[Int($0)] }, target: target)
            if keep < ids.count || everything {
                // The cut falls inside the gathered prefix (or nothing more can be gathered).
                ids.removeSubrange(keep...)
                set.ids = ids
                set.sorted = true
                return
            }
            // Rank-order summation fell just short of the target: widen and retry.
            high *= 2
            stats = massAndCount(logits, weights, atLeast: m - high)
        }
    }

    /// Length of the shortest prefix of `w` whose running sum reaches `target` (at least 1); `w.count` if never.
    private func prefixLength(_ w: [Float], target: Double) -> Int {
        var cum = 0.0
        for (j, x) in w.enumerated() {
            cum += Double(x)
            if cum >= target { return j + 1 }
        }
        return w.count
    }
}

/// Keeps tokens with `logit >= max_logit + ln(minP)`, i.e. probability at least `minP` times the top probability
/// (llama.cpp `llama_sampler_min_p_apply`). The most likely token always survives.
struct MinP {
    var minP: Float

    func apply(_ set: inout CandidateSet) {
        guard minP > 0, set.count > 1 else { return }
        let logits = set.logits
        let threshold = Swift.min(Float(Double(set.maxLogit) + deterministicLog(Double(minP))), set.maxLogit)
        if let ids = set.ids {
            set.ids = ids.filter { logits[Int($0)] >= threshold }  // order (and rank order) preserved
        } else {
            var ids: [Int32] = []
            for i in 0..<logits.count where logits[i] >= threshold { ids.append(Int32(truncatingIfNeeded: i)) }
            set.ids = ids
            set.sorted = false
        }
    }
}

/// Softmax temperature: the draw uses weights `exp((logit - max_logit) / temperature)`.
struct Temperature {
    var temperature: Float

    /// Greedy when the temperature is not > 0 (also for NaN).
    var isGreedy: Bool { !(temperature > 0) }
}
