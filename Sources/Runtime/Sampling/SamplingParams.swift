// SamplingParams and the values a Sampler hands back: the per-request knobs of token selection and the chosen token
// with its log-probabilities. Validation of user-supplied ranges belongs to the API layer; the sampler itself never
// traps on odd values (see each field for how out-of-range values behave).

/// Per-request sampling settings. The stages run in llama.cpp's common-sampler order:
/// logit bias → penalties → top_k → top_p → min_p → temperature → draw (see ``Sampler``).
///
/// Decoding with `Codable` accepts missing keys (each keeps its default), so a JSON object may name only the fields it
/// changes. Keys are the Swift property names (`topK`, `repetitionPenalty`, …).
public struct SamplingParams: Sendable, Equatable, Codable {
    /// Softmax temperature applied to the logits that survive the filters. `0` (or any value that is not `> 0`)
    /// selects greedy decoding: the argmax of the penalized logits, the lowest token id winning ties.
    public var temperature: Float = 1
    /// Keep only the `topK` highest logits (ties broken by lower token id). `0` or less turns the stage off; values at
    /// or above `n_vocab` keep everything.
    public var topK: Int = 0
    /// Nucleus sampling: keep the smallest prefix of the candidates, sorted by probability, whose probability mass is
    /// at least `topP` (llama.cpp `llama_sampler_top_p`). `1` or more turns the stage off.
    public var topP: Float = 1
    /// Keep tokens whose probability is at least `minP` times that of the most likely token, i.e.
    /// `logit >= max_logit + ln(minP)` (llama.cpp `llama_sampler_min_p`). `0` or less turns the stage off.
    public var minP: Float = 0
    /// CTRL-style repetition penalty with llama.cpp semantics: every token id present in the history has its logit
    /// divided by the penalty when positive, multiplied by it otherwise. `1` turns it off.
    public var repetitionPenalty: Float = 1
    /// OpenAI presence penalty: `logit -= presencePenalty` for every token id present in the history.
    public var presencePenalty: Float = 0
    /// OpenAI frequency penalty: `logit -= frequencyPenalty * count`, `count` = occurrences in the history.
    public var frequencyPenalty: Float = 0
    /// Seed of the request's random stream (``Xoshiro256StarStar`` seeded through ``SplitMix64``). `nil` draws a seed
    /// from the system generator; ``Sampler/seed`` reports it so the output can be reproduced.
    public var seed: UInt64? = nil
    /// Number of most likely alternatives (by raw logits) reported with each token. `0` reports none.
    public var topLogprobs: Int = 0
    /// Whether each ``SampledToken`` carries the chosen token's `log_softmax` log-probability. `false` lets greedy
    /// decoding skip the log-sum-exp pass over `n_vocab` logits (about 1 ms per token at n_vocab = 262144); the
    /// token's `logprob` is then NaN. Sampling with a temperature computes it anyway. `topLogprobs > 0` implies it.
    public var logprobs: Bool = true
    /// OpenAI `logit_bias`: added to the raw logit of each listed token id before every other stage (llama.cpp's
    /// `llama_sampler_init_logit_bias` comes first in its chain too). Ids outside `0..<n_vocab` are ignored; the
    /// reported log-probabilities stay those of the raw logits.
    public var logitBias: [Int32: Float] = [:]

    public init() {}

    private enum CodingKeys: String, CodingKey {
        case temperature, topK, topP, minP, repetitionPenalty, presencePenalty, frequencyPenalty, seed, topLogprobs, logprobs
        case logitBias
    }

    /// Decodes any subset of the fields; absent keys keep their defaults.
    /// - Throws: `DecodingError` when a present key has the wrong type.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        temperature = try c.decodeIfPresent(Float.self, forKey: .temperature) ?? temperature
        topK = try c.decodeIfPresent(Int.self, forKey: .topK) ?? topK
        topP = try c.decodeIfPresent(Float.self, forKey: .topP) ?? topP
        minP = try c.decodeIfPresent(Float.self, forKey: .minP) ?? minP
        repetitionPenalty = try c.decodeIfPresent(Float.self, forKey: .repetitionPenalty) ?? repetitionPenalty
        presencePenalty = try c.decodeIfPresent(Float.self, forKey: .presencePenalty) ?? presencePenalty
        frequencyPenalty = try c.decodeIfPresent(Float.self, forKey: .frequencyPenalty) ?? frequencyPenalty
        seed = try c.decodeIfPresent(UInt64.self, forKey: .seed)
        topLogprobs = try c.decodeIfPresent(Int.self, forKey: .topLogprobs) ?? topLogprobs
        logprobs = try c.decodeIfPresent(Bool.self, forKey: .logprobs) ?? logprobs
        logitBias = try c.decodeIfPresent([Int32: Float].self, forKey: .logitBias) ?? logitBias
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(temperature, forKey: .temperature)
        try c.encode(topK, forKey: .topK)
        try c.encode(topP, forKey: .topP)
        try c.encode(minP, forKey: .minP)
        try c.encode(repetitionPenalty, forKey: .repetitionPenalty)
        try c.encode(presencePenalty, forKey: .presencePenalty)
        try c.encode(frequencyPenalty, forKey: .frequencyPenalty)
        try c.encodeIfPresent(seed, forKey: .seed)
        try c.encode(topLogprobs, forKey: .topLogprobs)
        try c.encode(logprobs, forKey: .logprobs)
        if !logitBias.isEmpty { try c.encode(logitBias, forKey: .logitBias) }
    }
}

/// A token id with its natural-log probability under `log_softmax` of the raw logits (before penalties and
/// temperature). `logprob` is `-infinity` for a token whose raw logit is `-infinity`.
public struct TokenLogprob: Sendable, Equatable {
    public let id: Int32
    public let logprob: Float

    public init(id: Int32, logprob: Float) {
        self.id = id
        self.logprob = logprob
    }
}

/// The result of one sampling step.
public struct SampledToken: Sendable {
    /// The chosen token id, in `0..<n_vocab`.
    public let id: Int32
    /// `log_softmax(raw logits)[id]`, natural log; NaN when greedy decoding ran with `SamplingParams.logprobs` off.
    public let logprob: Float
    /// The `SamplingParams.topLogprobs` most likely tokens under the raw logits, most likely first (ties: lower id
    /// first). Empty when `topLogprobs` is 0.
    public let topLogprobs: [TokenLogprob]
    /// True when the logits row held NaN or ±inf. A sound forward pass never produces them (an adapter or input
    /// that overflows Float32 does), so callers should treat the step as failed rather than use `id`.
    public let nonFiniteLogits: Bool

    public init(id: Int32, logprob: Float, topLogprobs: [TokenLogprob], nonFiniteLogits: Bool = false) {
        self.id = id
        self.logprob = logprob
        self.topLogprobs = topLogprobs
        self.nonFiniteLogits = nonFiniteLogits
    }
}

/// One entry of the distribution a ``Sampler`` draws from: a surviving token and its probability after every stage
/// (penalties, filters, temperature). Probabilities of one distribution sum to 1.
public struct TokenProbability: Sendable, Equatable {
    public let id: Int32
    public let probability: Double

    public init(id: Int32, probability: Double) {
        self.id = id
        self.probability = probability
    }
}
