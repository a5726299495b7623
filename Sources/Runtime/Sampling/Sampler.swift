// Sampler: logits [n_vocab] → SampledToken. One Sampler per request; it owns the request's random stream, so calls
// must be sequential (it is a value type with mutating methods).
//
// Order of stages (llama.cpp common sampler default order, restricted to the stages offered here):
//   1. raw log_softmax bookkeeping (chosen-token logprob and top-N alternatives come from the raw logits)
//   2. logit bias (OpenAI logit_bias), then penalties (repetition, presence, frequency) on ids in the history
//   3. top_k → 4. top_p → 5. min_p (all on penalized, pre-temperature logits)
//   6. temperature → 7. draw one token with probability ∝ exp((logit − max) / temperature)
// Temperature ≤ 0 is greedy: the argmax of the penalized logits, lowest id on ties (the filters cannot remove it).
//
// Cost on n_vocab = 262144: a few vectorized linear passes (max, exp, sums), never a full sort. top_k and the top-N
// logprobs use a size-k heap; top_p over the whole vocabulary finds, with masked-sum passes, a logit gap below the
// maximum that holds mass p, and sorts only the tokens inside it. The draw walks block sums, then one block.
//
// Non-finite logits are sanitized first: NaN becomes -inf and +inf becomes the largest finite Float; if every
// logit is -inf the step is uniform over the vocabulary.

/// Chooses one token from a row of logits according to ``SamplingParams``.
///
/// Same params (same seed), same logits and history on each step ⇒ same tokens, on every platform: the random stream
/// is ``Xoshiro256StarStar`` and every decision uses only correctly rounded IEEE operations (see SamplingMath.swift).
public struct Sampler: Sendable {
    public let params: SamplingParams
    /// The seed in use (`params.seed`, or the one drawn from the system generator when that is nil).
    public let seed: UInt64

    private var rng: Xoshiro256StarStar
    private var scratch: [Float] = []

    public init(params: SamplingParams) {
        self.params = params
        var system = SystemRandomNumberGenerator()
        self.seed = params.seed ?? system.next()
        self.rng = Xoshiro256StarStar(seed: seed)
    }

    /// Samples one token.
    /// - Parameters:
    ///   - logits: `[n_vocab]` raw logits of one row. Modified in place (sanitized and penalized).
    ///   - history: prompt + generated token ids so far; used by the penalties only. Ids outside `0..<n_vocab` are
    ///     ignored.
    /// - Returns: the token, its raw `log_softmax` log-probability and the top `params.topLogprobs` alternatives.
    ///   An empty `logits` buffer yields id 0 with logprob -inf. `nonFiniteLogits` tells the caller the row held
    ///   NaN or ±inf (a broken forward pass): the token is then drawn from the sanitized row and means little.
    public mutating func sample(_ logits: UnsafeMutableBufferPointer<Float>, history: [Int32]) -> SampledToken {
        let n = logits.count
        guard n > 0 else { return SampledToken(id: 0, logprob: -.infinity, topLogprobs: []) }
        var buffer = takeScratch(count: n)
        var rngCopy = rng
        let (token, raw) = buffer.withUnsafeMutableBufferPointer { w in
            choose(logits, history: history, weights: w, rng: &rngCopy)
        }
        rng = rngCopy
        scratch = buffer
        let lp = raw.logprob(of: token)
        return SampledToken(id: token.id, logprob: lp, topLogprobs: raw.top, nonFiniteLogits: raw.nonFinite)
    }

    /// The distribution `sample` would draw from for these inputs, sorted by id: every surviving token with its
    /// probability after penalties, filters and temperature (a single entry of probability 1 when greedy).
    /// Does not advance the random stream. `logits` is modified as in `sample`.
    public mutating func distribution(_ logits: UnsafeMutableBufferPointer<Float>, history: [Int32])
        -> [TokenProbability]
    {
        let n = logits.count
        guard n > 0 else { return [] }
        var buffer = takeScratch(count: n)
        defer { scratch = buffer }
        var result: [TokenProbability] = []
        buffer.withUnsafeMutableBufferPointer { w in
            var set = prepare(logits, history: history, weights: w, wantTop: false).set
            if Temperature(temperature: params.temperature).isGreedy {
                result = [TokenProbability(id: argmax(set), probability: 1)]
                return
            }
            filter(&set)
            let ids = set.ids ?? (0..<n).map { Int32(truncatingIfNeeded: $0) }
            let invT = 1 / params.temperature
            let weights = ids.map { expNonPositive((logits[Int($0)] - set.maxLogit) * invT) }
            let total = weights.withUnsafeBufferPointer { orderedSum($0) }
            guard total > 0, total.isFinite else {
                result = [TokenProbability(id: argmax(set), probability: 1)]
                return
            }
            let order = ids.indices.sorted { ids[$0] < ids[$1] }
            result = order.map { TokenProbability(id: ids[$0], probability: Double(weights[$0]) / total) }
        }
        return result
    }

    // MARK: - steps

    /// Moves the reusable `[n_vocab]` weight buffer out of `self` (no copy), sized to `count`.
    private mutating func takeScratch(count: Int) -> [Float] {
        var buffer: [Float] = []
        swap(&buffer, &scratch)
        if buffer.count != count { buffer = [Float](repeating: 0, count: count) }
        return buffer
    }

    /// Raw-logit bookkeeping for the reported log-probabilities.
    private struct RawStats {
        var logZ: Double  // log Σ exp(raw logits)
        var top: [TokenLogprob]
        var rawOfPenalized: [Int32: Float]  // raw logits of ids the bias or the penalties changed
        var nonFinite = false  // the row held NaN or ±inf before sanitizing

        func logprob(of token: (id: Int32, rawLogit: Float)) -> Float {
            Float(Double(token.rawLogit) - logZ)
        }
    }

    private func prepare(_ logits: UnsafeMutableBufferPointer<Float>, history: [Int32],
                         weights w: UnsafeMutableBufferPointer<Float>, wantTop: Bool) -> (set: CandidateSet, raw: RawStats)
    {
        let n = logits.count
        var (rawMax, nonFinite) = maxAndNonFinite(UnsafeBufferPointer(logits))
        if nonFinite {
            sanitize(logits)
            rawMax = maxAndNonFinite(UnsafeBufferPointer(logits)).max
        }
        // w = exp(raw - rawMax); its sum gives log Σ exp(raw). Greedy decoding without reported log-probabilities
        // needs neither (the argmax reads the logits), so it skips this pass.
        let greedy = Temperature(temperature: params.temperature).isGreedy
        var logZ = Double.nan
        if !greedy || params.logprobs || (wantTop && params.topLogprobs > 0) {
            expShifted(UnsafeBufferPointer(logits), max: rawMax, invT: 1, into: w)
            let rawSum = orderedSum(UnsafeBufferPointer(w))
            logZ = Double(rawMax) + platformLog(rawSum)
        }

        var top: [TokenLogprob] = []
        if wantTop && params.topLogprobs > 0 {
            top = topTokens(UnsafeBufferPointer(logits), k: params.topLogprobs).map {
                TokenLogprob(id: $0, logprob: Float(Double(logits[Int($0)]) - logZ))
            }
        }

        // Logit bias, then penalties; remember raw values of what they touch.
        var rawOfPenalized: [Int32: Float] = [:]
        var touched: [Int32] = []
        for (id, bias) in params.logitBias where id >= 0 && Int(id) < n && bias != 0 {
            rawOfPenalized[id] = logits[Int(id)]
            logits[Int(id)] += bias
            touched.append(id)
        }
        let penalties = Penalties(repetition: params.repetitionPenalty, presence: params.presencePenalty,
                                  frequency: params.frequencyPenalty)
        if penalties.isActive {
            for id in history where id >= 0 && Int(id) < n && rawOfPenalized[id] == nil {
                rawOfPenalized[id] = logits[Int(id)]
            }
        }
        touched += penalties.apply(to: logits, history: history)

        var m = rawMax
        if !touched.isEmpty {
            m = maxAndNonFinite(UnsafeBufferPointer(logits)).max
            if m == rawMax {
                for id in touched { w[Int(id)] = expNonPositive(logits[Int(id)] - m) }
            } else {
                expShifted(UnsafeBufferPointer(logits), max: m, invT: 1, into: w)
            }
        }
        let set = CandidateSet(logits: logits, ids: nil, sorted: false, maxLogit: m, weights: w)
        return (set, RawStats(logZ: logZ, top: top, rawOfPenalized: rawOfPenalized, nonFinite: nonFinite))
    }

    private func filter(_ set: inout CandidateSet) {
        TopK(k: params.topK).apply(&set)
        TopP(p: params.topP).apply(&set)
        MinP(minP: params.minP).apply(&set)
    }

    private func choose(_ logits: UnsafeMutableBufferPointer<Float>, history: [Int32],
                        weights w: UnsafeMutableBufferPointer<Float>, rng: inout Xoshiro256StarStar)
        -> (token: (id: Int32, rawLogit: Float), raw: RawStats)
    {
        var (set, raw) = prepare(logits, history: history, weights: w, wantTop: true)
        func picked(_ id: Int32) -> (token: (id: Int32, rawLogit: Float), raw: RawStats) {
            ((id, raw.rawOfPenalized[id] ?? logits[Int(id)]), raw)
        }
        let temperature = Temperature(temperature: params.temperature)
        if temperature.isGreedy { return picked(argmax(set)) }
        filter(&set)

        let invT = 1 / temperature.temperature
        let m = set.maxLogit
        let u = rng.nextUnitDouble()
        if let ids = set.ids {
            // Small explicit set: weights in list order.
            let ws = ids.map { expNonPositive((logits[Int($0)] - m) * invT) }
            let total = ws.withUnsafeBufferPointer { orderedSum($0) }
            guard total > 0, total.isFinite else { return picked(argmax(set)) }
            let target = u * total
            var cum = 0.0
            for (j, id) in ids.enumerated() {
                cum += Double(ws[j])
                if cum > target { return picked(id) }
            }
            return picked(lastPositive(ids, ws) ?? argmax(set))
        }
        // Whole vocabulary: the weights already hold exp(logit - max) for temperature 1.
        if invT != 1 { expShifted(UnsafeBufferPointer(logits), max: m, invT: invT, into: w) }
        // Two-level inverse-CDF walk: block sums first, then within the block.
        let sums = blockSums(UnsafeBufferPointer(w))
        var total = 0.0
        for s in sums { total += s }
        guard total > 0, total.isFinite else { return picked(argmax(set)) }
        let target = u * total
        var cum = 0.0
        for (b, s) in sums.enumerated() {
            if cum + s > target {
                var c = cum
                let end = Swift.min((b + 1) * samplingBlock, w.count)
                for i in (b * samplingBlock)..<end {
                    c += Double(w[i])
                    if c > target { return picked(Int32(truncatingIfNeeded: i)) }
                }
            }
            cum += s
        }
        var i = w.count - 1
        while i > 0 && w[i] == 0 { i -= 1 }
        return picked(Int32(truncatingIfNeeded: i))
    }

    /// Highest logit in the set, lowest id on ties.
    private func argmax(_ set: CandidateSet) -> Int32 {
        let logits = set.logits
        if let ids = set.ids {
            var best = ids.first ?? 0
            for id in ids where ranksBefore(logits[Int(id)], id, logits[Int(best)], best) { best = id }
            return best
        }
        return Int32(truncatingIfNeeded: firstIndex(of: set.maxLogit, in: UnsafeBufferPointer(logits)))
    }

    private func lastPositive(_ ids: [Int32], _ ws: [Float]) -> Int32? {
        for j in stride(from: ids.count - 1, through: 0, by: -1) where ws[j] > 0 { return ids[j] }
        return nil
    }

    /// NaN → -inf, +inf → greatestFiniteMagnitude; all -inf → all 0 (uniform).
    private func sanitize(_ logits: UnsafeMutableBufferPointer<Float>) {
        if !logits.contains(where: { $0 > -.infinity }) {
            for i in logits.indices { logits[i] = 0 }
            return
        }
        for i in logits.indices {
            let l = logits[i]
            if l.isNaN { logits[i] = -.infinity } else if l == .infinity { logits[i] = .greatestFiniteMagnitude }
        }
    }
}
