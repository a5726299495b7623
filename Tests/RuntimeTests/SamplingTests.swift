// Sampler tests. Every expectation comes from an independent computation in this file (Double-precision softmax /
// log_softmax, sorting, hand-computed penalties) or from a Python transcription of the reference PRNG algorithms;
// none is read back from the sampler under test. Randomness in inputs comes from a local generator.

import Foundation
import Runtime
import Testing

// MARK: - helpers

/// Small local generator for test inputs (64-bit LCG, Knuth MMIX constants, high bits out).
struct SamplingInputRNG {
    var state: UInt64
    init(_ seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 &+ 1 }
    mutating func next() -> UInt64 {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return state ^ (state >> 29)
    }
    mutating func unit() -> Double { Double(next() >> 11) * 0x1p-53 }
    mutating func normal() -> Double {
        let u1 = max(unit(), 1e-300), u2 = unit()
        return (-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2)
    }
    mutating func logits(_ n: Int, scale: Double = 2) -> [Float] {
        (0..<n).map { _ in Float(normal() * scale) }
    }
}

/// Double-precision softmax over the given ids (reference).
fileprivate func refSoftmax(_ logits: [Double]) -> [Double] {
    let m = logits.max() ?? 0
    let e = logits.map { Foundation.exp($0 - m) }
    let s = e.reduce(0, +)
    return e.map { $0 / s }
}

/// Double-precision log_softmax (reference).
fileprivate func refLogSoftmax(_ logits: [Float]) -> [Double] {
    let d = logits.map(Double.init)
    let m = d.max() ?? 0
    let lse = m + Foundation.log(d.map { Foundation.exp($0 - m) }.reduce(0, +))
    return d.map { $0 - lse }
}

/// Ids ordered by logit descending, id ascending (reference ranking).
fileprivate func refRanking(_ logits: [Float]) -> [Int32] {
    logits.indices.sorted { logits[$0] != logits[$1] ? logits[$0] > logits[$1] : $0 < $1 }.map { Int32($0) }
}

fileprivate func sampleOnce(_ sampler: inout Sampler, _ logits: [Float], history: [Int32] = []) -> SampledToken {
    var copy = logits
    return copy.withUnsafeMutableBufferPointer { sampler.sample($0, history: history) }
}

fileprivate func distributionOf(_ params: SamplingParams, _ logits: [Float], history: [Int32] = []) -> [TokenProbability] {
    var sampler = Sampler(params: params)
    var copy = logits
    return copy.withUnsafeMutableBufferPointer { sampler.distribution($0, history: history) }
}

fileprivate func params(temperature: Float = 1, topK: Int = 0, topP: Float = 1, minP: Float = 0, seed: UInt64? = 1)
    -> SamplingParams
{
    var p = SamplingParams()
    p.temperature = temperature
    p.topK = topK
    p.topP = topP
    p.minP = minP
    p.seed = seed
    return p
}

// MARK: - greedy, determinism

@Suite("Sampling")
struct SamplingTests {
    @Test func greedyIsArgmaxWithLowestIdOnTies() {
        var s = Sampler(params: params(temperature: 0))
        #expect(sampleOnce(&s, [1, 3, 0, 3, 2]).id == 1)
        #expect(sampleOnce(&s, [-5, -5, -5]).id == 0)
        #expect(sampleOnce(&s, [0, 0, 7]).id == 2)
        var rng = SamplingInputRNG(7)
        for trial in 0..<50 {
            // Quantized values make ties frequent.
            let logits = (0..<(10 + trial * 37)).map { _ in Float(Int(rng.next() % 9)) - 4 }
            let expected = Int32(logits.firstIndex(of: logits.max()!)!)
            #expect(sampleOnce(&s, logits).id == expected)
        }
    }

    /// `logprobs: false` only drops the log-sum-exp pass of greedy decoding: same ids, logprob NaN; a temperature
    /// or top-logprobs request still reports them.
    @Test func greedyWithoutLogprobsPicksTheSameIds() {
        var rng = SamplingInputRNG(5)
        var with = Sampler(params: params(temperature: 0))
        var quiet = params(temperature: 0)
        quiet.logprobs = false
        var without = Sampler(params: quiet)
        for trial in 0..<30 {
            let logits = (0..<(100 + trial * 53)).map { _ in Float(Int(rng.next() % 9)) - 4 }
            let a = sampleOnce(&with, logits), b = sampleOnce(&without, logits)
            #expect(a.id == b.id)
            #expect(a.logprob.isFinite && a.logprob <= 0)
            #expect(b.logprob.isNaN)
        }
        quiet.topLogprobs = 2
        var top = Sampler(params: quiet)
        let t = sampleOnce(&top, [0, 2, 1])
        #expect(t.id == 1 && t.logprob.isFinite && t.topLogprobs.count == 2)
        var warm = params(temperature: 0.8)
        warm.logprobs = false
        var sampled = Sampler(params: warm)
        #expect(sampleOnce(&sampled, [0, 2, 1]).logprob.isFinite)
    }

    @Test(arguments: [Float(0.05), 0.7, 1, 3, 100])
    func topKOneIsGreedy(temperature: Float) {
        var rng = SamplingInputRNG(11)
        for seed in UInt64(0)..<20 {
            var s = Sampler(params: params(temperature: temperature, topK: 1, seed: seed))
            let logits = rng.logits(500 + Int(seed) * 10)
            #expect(sampleOnce(&s, logits).id == refRanking(logits)[0])
        }
    }

    @Test func sameSeedSameSequenceDifferentSeedsDiffer() {
        var rng = SamplingInputRNG(3)
        let steps = (0..<200).map { _ in rng.logits(1000, scale: 1) }
        func run(_ seed: UInt64, topP: Float = 1, topK: Int = 0) -> [Int32] {
            var s = Sampler(params: params(temperature: 0.9, topK: topK, topP: topP, seed: seed))
            return steps.map { sampleOnce(&s, $0).id }
        }
        #expect(run(42) == run(42))
        #expect(run(42, topP: 0.9, topK: 50) == run(42, topP: 0.9, topK: 50))
        #expect(run(42) != run(43))
        #expect(run(1) != run(2))
        // A sampler without a seed reports the one it drew; reusing it reproduces the stream.
        let unseeded = Sampler(params: params(seed: nil))
        #expect(run(unseeded.seed) == run(unseeded.seed))
    }

    /// Reference values from a Python transcription of splitmix64.c / xoshiro256starstar.c (Vigna); splitmix64(0)'s
    /// first output 0xE220A8397B1DCDAF is the published value.
    @Test func randomStreamMatchesReferenceAlgorithms() {
        var sm = SplitMix64(seed: 0)
        #expect([sm.next(), sm.next(), sm.next()] == [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4, 0x06C4_5D18_8009_454F])
        var x = Xoshiro256StarStar(seed: 42)
        #expect((0..<5).map { _ in x.next() }
            == [0x1578_0B2E_0C2E_C716, 0x6104_D986_6D11_3A7E, 0xAE17_5332_39E4_99A1, 0xECB8_AD47_03B3_60A1,
                0xFDE6_DC7F_E2EC_5E64])
        var z = Xoshiro256StarStar(seed: 0)
        #expect(z.next() == 0x99EC_5F36_CB75_F2B4)
    }

    // MARK: - distribution of draws

    /// Pearson chi-square of observed counts against expected probabilities; df = k - 1. Critical values at
    /// p = 0.001 (df 2..7): 13.82, 16.27, 18.47, 20.52, 22.46, 24.32.
    func chiSquare(_ counts: [Int], _ probs: [Double], draws: Int) -> Double {
        zip(counts, probs).reduce(0) { acc, cp in
            let e = cp.1 * Double(draws)
            return acc + (Double(cp.0) - e) * (Double(cp.0) - e) / e
        }
    }

    @Test(arguments: [(Float(1), 0), (Float(0.7), 0), (Float(1.5), 4)])
    func empiricalFrequenciesMatchSoftmax(temperature: Float, topK: Int) {
        let logits: [Float] = [2.0, 1.0, 0.5, 0.0, -1.0, -2.5]
        let critical: [Int: Double] = [2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52]
        var kept = Array(0..<logits.count)
        if topK > 0 { kept = Array(refRanking(logits).prefix(topK).map { Int($0) }).sorted() }
        let probs = refSoftmax(kept.map { Double(logits[$0]) / Double(temperature) })
        let draws = 20_000
        var counts = [Int](repeating: 0, count: logits.count)
        var s = Sampler(params: params(temperature: temperature, topK: topK, seed: 2024))
        for _ in 0..<draws { counts[Int(sampleOnce(&s, logits).id)] += 1 }
        for id in logits.indices where !kept.contains(id) { #expect(counts[id] == 0) }
        let chi = chiSquare(kept.map { counts[$0] }, probs, draws: draws)
        #expect(chi < critical[kept.count - 1]!, "chi-square \(chi) counts \(counts) expected \(probs)")
    }

    // MARK: - filters

    func expectDistribution(_ got: [TokenProbability], ids expected: [Int32], logits: [Float], temperature: Float = 1,
                            sourceLocation: SourceLocation = #_sourceLocation)
    {
        let sortedIds = expected.sorted()
        #expect(got.map(\.id) == sortedIds, sourceLocation: sourceLocation)
        guard got.map(\.id) == sortedIds else { return }
        let ref = refSoftmax(sortedIds.map { Double(logits[Int($0)]) / Double(temperature) })
        for (g, r) in zip(got, ref) {
            #expect(abs(g.probability - r) <= 1e-6 * max(1, r), "id \(g.id)", sourceLocation: sourceLocation)
        }
    }

    @Test func topKKeepsExactlyTheKBest() {
        var rng = SamplingInputRNG(5)
        for k in [1, 2, 7, 40, 199, 200, 500] {
            // Values on a coarse grid: ties at the k-th boundary are common and must go to the lower id.
            let logits = (0..<200).map { _ in Float(Int(rng.next() % 41)) * 0.25 - 5 }
            let expected = Array(refRanking(logits).prefix(k))
            expectDistribution(distributionOf(params(topK: k), logits), ids: expected, logits: logits)
        }
    }

    @Test func topKOnFullSizeVocabulary() {
        var rng = SamplingInputRNG(6)
        let logits = rng.logits(262_144, scale: 3)
        let expected = Array(refRanking(logits).prefix(40))
        expectDistribution(distributionOf(params(temperature: 0.8, topK: 40), logits), ids: expected, logits: logits,
                           temperature: 0.8)
    }

    /// top_p keeps the shortest prefix (by rank) whose mass reaches p. p is placed midway between two consecutive
    /// cumulative sums of the reference softmax so rounding cannot move the cut.
    func checkTopP(_ logits: [Float], cuts: [Int], topK: Int = 0, temperature: Float = 1) {
        let ranking = Array(refRanking(logits).prefix(topK > 0 ? topK : logits.count))
        let probs = refSoftmax(ranking.map { Double(logits[Int($0)]) })  // filters act before temperature
        var cum: [Double] = []
        var acc = 0.0
        for p in probs {
            acc += p
            cum.append(acc)
        }
        for keep in cuts {
            let p = keep == 1 ? cum[0] / 2 : (cum[keep - 2] + cum[keep - 1]) / 2
            let got = distributionOf(params(temperature: temperature, topK: topK, topP: Float(p)), logits)
            expectDistribution(got, ids: Array(ranking.prefix(keep)), logits: logits, temperature: temperature)
        }
    }

    @Test func topPSmallVocabulary() {
        var rng = SamplingInputRNG(8)
        checkTopP(rng.logits(100), cuts: [1, 2, 3, 10, 40, 99])
        checkTopP(rng.logits(100), cuts: [1, 5, 20], temperature: 0.5)
    }

    @Test func topPAfterTopK() {
        var rng = SamplingInputRNG(9)
        checkTopP(rng.logits(300), cuts: [1, 4, 15], topK: 20)
    }

    @Test func topPFullSizeVocabulary() {
        var rng = SamplingInputRNG(10)
        // Sharp head (scale 4): the gap-doubling search must still find the exact cut.
        checkTopP(rng.logits(262_144, scale: 4), cuts: [1, 3, 12, 60])
    }

    @Test func minPKeepsTokensAboveFractionOfTop() {
        var rng = SamplingInputRNG(12)
        for (minP, n) in [(Float(0.05), 300), (0.5, 300), (0.01, 262_144)] {
            var logits = rng.logits(n, scale: 2)
            let m = Double(logits.max()!)
            let threshold = m + Foundation.log(Double(minP))
            // Keep every value clear of the threshold so the reference decision is unambiguous.
            for i in logits.indices where abs(Double(logits[i]) - threshold) < 1e-3 { logits[i] -= 2e-3 }
            let expected = logits.indices.filter { Double(logits[$0]) >= threshold }.map { Int32($0) }
            expectDistribution(distributionOf(params(minP: minP), logits), ids: expected, logits: logits)
        }
    }

    @Test func filtersChainInDocumentedOrder() {
        // top_k = 30 → top_p on the renormalized 30 → min_p relative to the max → temperature on what is left.
        var rng = SamplingInputRNG(13)
        let logits = rng.logits(1000, scale: 1.5)
        let ranking = Array(refRanking(logits).prefix(30))
        let probs = refSoftmax(ranking.map { Double(logits[Int($0)]) })
        var cum = 0.0
        var afterP: [Int32] = []
        for (id, p) in zip(ranking, probs) where cum < 0.8 {
            afterP.append(id)
            cum += p
        }
        let m = Double(logits[Int(ranking[0])])
        let expected = afterP.filter { Double(logits[Int($0)]) >= m + Foundation.log(0.2) }
        // Reference decisions must not sit on a boundary.
        #expect(!expected.isEmpty && expected.count < afterP.count && afterP.count < 30)
        let got = distributionOf(params(temperature: 0.6, topK: 30, topP: 0.8, minP: 0.2), logits)
        expectDistribution(got, ids: expected, logits: logits, temperature: 0.6)
    }

    // MARK: - penalties

    @Test func penaltiesMatchHandComputation() {
        let logits: [Float] = [2.0, -1.0, 0.5, 3.0, -0.2, 1.0]
        // id 0 once, id 1 twice, id 3 three times; 99 and -1 are outside the vocabulary and ignored.
        let history: [Int32] = [0, 1, 1, 3, 3, 99, 3, -1]
        var p = params()
        p.repetitionPenalty = 1.3
        p.presencePenalty = 0.4
        p.frequencyPenalty = 0.25
        let hand: [Double] = [
            2.0 / 1.3 - (1 * 0.25 + 0.4),
            -1.0 * 1.3 - (2 * 0.25 + 0.4),
            0.5,
            3.0 / 1.3 - (3 * 0.25 + 0.4),
            -0.2,
            1.0,
        ]
        let got = distributionOf(p, logits, history: history)
        let ref = refSoftmax(hand)
        #expect(got.map(\.id) == [0, 1, 2, 3, 4, 5])
        for (g, r) in zip(got, ref) { #expect(abs(g.probability - r) < 1e-6) }

        // Greedy follows the penalized logits; the reported logprob stays the raw one.
        var greedy = p
        greedy.temperature = 0
        greedy.presencePenalty = 1.5
        let handGreedy = hand.enumerated().map { i, h in [0, 1, 3].contains(i) ? h - 1.1 : h }
        let expectedId = Int32(handGreedy.firstIndex(of: handGreedy.max()!)!)
        var s = Sampler(params: greedy)
        let token = sampleOnce(&s, logits, history: history)
        #expect(token.id == expectedId && expectedId == 5)
        #expect(abs(Double(token.logprob) - refLogSoftmax(logits)[5]) < 1e-5)
    }

    @Test func repetitionPenaltyDividesPositiveAndMultipliesNegative() {
        let logits: [Float] = [1.0, -1.0, 0.0, 0.9]
        var p = params()
        p.repetitionPenalty = 2
        let got = distributionOf(p, logits, history: [0, 1, 2])
        let ref = refSoftmax([0.5, -2.0, 0.0, 0.9])
        for (g, r) in zip(got, ref) { #expect(abs(g.probability - r) < 1e-6) }
    }

    // MARK: - logprobs

    @Test(arguments: [Float(0), 1, 0.5])
    func logprobsAreRawLogSoftmax(temperature: Float) {
        var rng = SamplingInputRNG(21)
        var logits = rng.logits(5000, scale: 3)
        logits[17] = -.infinity  // a masked token
        logits[100] = logits[99]  // a tie
        let ref = refLogSoftmax(logits)
        var p = params(temperature: temperature, topK: 50)
        p.topLogprobs = 8
        p.repetitionPenalty = 1.5
        p.frequencyPenalty = 0.5
        let history: [Int32] = Array(refRanking(logits).prefix(3))  // penalize the current favourites
        var s = Sampler(params: p)
        for _ in 0..<5 {
            let t = sampleOnce(&s, logits, history: history)
            #expect(abs(Double(t.logprob) - ref[Int(t.id)]) < 1e-5)
            let expectedTop = Array(refRanking(logits).prefix(8))
            #expect(t.topLogprobs.map(\.id) == expectedTop)
            for tl in t.topLogprobs { #expect(abs(Double(tl.logprob) - ref[Int(tl.id)]) < 1e-5) }
        }
        var q = params()
        q.topLogprobs = 3
        var s2 = Sampler(params: q)
        let t = sampleOnce(&s2, [0, 0, -.infinity, 1])
        #expect(t.topLogprobs.map(\.id) == [3, 0, 1])
        #expect(t.id != 2)
    }

    @Test func fullVocabularyDrawIsReproducibleAndNeverPicksMaskedTokens() {
        var rng = SamplingInputRNG(31)
        var logits = rng.logits(262_144, scale: 1)
        for i in stride(from: 0, to: logits.count, by: 2) { logits[i] = -.infinity }
        var a = Sampler(params: params(seed: 99))
        var b = Sampler(params: params(seed: 99))
        for _ in 0..<3 {
            let x = sampleOnce(&a, logits), y = sampleOnce(&b, logits)
            #expect(x.id == y.id && x.id % 2 == 1)
        }
    }

    /// logit_bias shifts the listed raw logits before every other stage; reported logprobs stay the raw ones.
    @Test func logitBiasShiftsChoicesNotLogprobs() {
        let logits: [Float] = [2, 1, 0.5, -1]
        var plain = Sampler(params: params(temperature: 0))
        let base = sampleOnce(&plain, logits)
        var p = params(temperature: 0)
        p.logitBias = [3: 10, 0: -100, 99: 5]  // id 99 is outside the vocabulary: ignored
        var biased = Sampler(params: p)
        let t = sampleOnce(&biased, logits)
        #expect(base.id == 0 && t.id == 3)
        let logZ = log(logits.map { exp(Double($0)) }.reduce(0, +))
        #expect(abs(Double(t.logprob) - (-1 - logZ)) < 1e-5)
        // Under a temperature, the distribution is that of the biased logits: softmax([2-100, 1, 0.5, -1+10]).
        var q = params(temperature: 1)
        q.logitBias = [3: 10, 0: -100]
        let got = distributionOf(q, logits)
        let shifted = [2.0 - 100, 1, 0.5, 9]
        let z = shifted.map(exp).reduce(0, +)
        for e in got { #expect(abs(e.probability - exp(shifted[Int(e.id)]) / z) < 1e-6) }
        #expect(got.count == 4)
        // A bias that leaves the maximum where it was (only the biased weights are recomputed), with a penalty too.
        var r = params(temperature: 1)
        r.logitBias = [1: 0.5]
        r.presencePenalty = 0.25
        let small = distributionOf(r, logits, history: [2])
        let expected = [2.0, 1.5, 0.25, -1]
        let ze = expected.map(exp).reduce(0, +)
        #expect(small.count == 4)
        for e in small { #expect(abs(e.probability - exp(expected[Int(e.id)]) / ze) < 1e-6, "\(e)") }
    }

    @Test func nonFiniteLogitsDoNotTrap() {
        var s = Sampler(params: params(topP: 0.9))
        let a = sampleOnce(&s, [.nan, 1, .nan])
        #expect(a.id == 1 && a.nonFiniteLogits)
        let b = sampleOnce(&s, [0, .infinity, 2])
        #expect(b.id == 1 && b.nonFiniteLogits)
        let t = sampleOnce(&s, [-.infinity, -.infinity])
        #expect((t.id == 0 || t.id == 1) && t.nonFiniteLogits)
        // Finite rows, greedy or not, are not flagged (the check rides on the max pass every sample makes).
        #expect(!sampleOnce(&s, [0, -3e38, 3e38]).nonFiniteLogits)
        var g = Sampler(params: params(temperature: 0))
        #expect(!sampleOnce(&g, Array(repeating: 1.5, count: 37)).nonFiniteLogits)
        #expect(sampleOnce(&g, Array(repeating: 1.5, count: 36) + [.nan]).nonFiniteLogits)
        var empty: [Float] = []
        let e = empty.withUnsafeMutableBufferPointer { s.sample($0, history: []) }
        #expect(e.id == 0)
    }

    @Test func paramsDecodeWithMissingKeys() throws {
        let p = try JSONDecoder().decode(SamplingParams.self, from: Data(#"{"temperature":0.5,"seed":7}"#.utf8))
        var expected = SamplingParams()
        expected.temperature = 0.5
        expected.seed = 7
        #expect(p == expected)
        let round = try JSONDecoder().decode(SamplingParams.self, from: JSONEncoder().encode(p))
        #expect(round == p)
    }
}
