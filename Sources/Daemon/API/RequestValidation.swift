// RequestValidation: wire bodies -> tokenized, range-checked GenerationRequests. Every rule that can reject a
// request lives here, so each maps to one APIError (400 with `param`, 404 for an unknown model). Ranges follow
// OpenAI's API reference where it defines one (temperature 0...2 is widened to any finite value >= 0, as vLLM
// does; penalties -2...2; top_logprobs 0...20) and vLLM for its extensions (top_k -1 = off, min_p,
// repetition_penalty > 0, stop_token_ids, ignore_eos, return_tokens_as_token_ids).

import Foundation
import Runtime

/// A validated request: one tokenized prompt per choice plus how to render the answer.
public struct PreparedRequest: Sendable {
    public enum Kind: Sendable, Equatable {
        case completion
        case chat
    }
    public var kind: Kind
    /// One GenerationRequest per prompt (choice index = array index).
    public var generations: [GenerationRequest]
    public var stream: Bool
    /// `stream_options.include_usage`: a final chunk with usage and no choices.
    public var includeUsage: Bool
    /// `nil`: no logprobs; otherwise the number of alternatives per token (completions `logprobs: N`,
    /// chat `top_logprobs: N` with `logprobs: true`).
    public var logprobs: Int?
    /// Render tokens as `token_id:N` (vLLM `return_tokens_as_token_ids`).
    public var tokensAsIDs: Bool
    /// Indices of text prompts whose first token already was BOS, so no second BOS was added (logged).
    public var promptsWithOwnBOS: [Int] = []
}

extension PreparedRequest {
    /// Applies one adapter mix to every choice of the request.
    public mutating func attach(_ mix: AdapterMix?) {
        for i in generations.indices { generations[i].adapters = mix }
    }
}

/// Checks and tokenizes request bodies.
public struct RequestValidator: Sendable {
    public let backend: any InferenceBackend
    /// Served context (prompt + max_tokens must fit).
    public let contextSize: Int
    /// OpenAI's default `max_tokens` for the legacy completions endpoint.
    public static let defaultCompletionMaxTokens = 16
    /// `max_tokens` for requests that give none (`--default-max-tokens`), cut to what the context leaves after
    /// the prompt; `nil`: ``defaultCompletionMaxTokens`` for completions and the rest of the context for chat.
    public var defaultMaxTokens: Int?
    /// Largest `logprobs` / `top_logprobs`.
    public static let maxLogprobs = 20
    /// Largest number of stop strings.
    public static let maxStopStrings = 16
    /// Largest number of `logit_bias` entries (each costs a little per sampled token).
    public static let maxLogitBiasEntries = 1024

    public init(backend: any InferenceBackend, contextSize: Int, defaultMaxTokens: Int? = nil) {
        self.backend = backend
        self.contextSize = contextSize
        self.defaultMaxTokens = defaultMaxTokens
    }

    // MARK: - JSON

    /// Decodes a JSON body, mapping syntax errors to 400 `invalid_json` and type errors to 400 with `param`.
    /// - Throws: ``APIError``: `invalid_json` for an empty body, bytes that are not UTF-8 (RFC 8259 §8.1) or not
    ///   JSON; `invalid_type` / `invalid_value` / `missing_required_parameter` naming the field otherwise.
    public static func decode<T: Decodable>(_ type: T.Type, from body: [UInt8]) throws -> T {
        if body.isEmpty { throw APIError.malformedJSON("the body is empty") }
        if String(validating: body, as: UTF8.self) == nil {
            throw APIError.malformedJSON("the body is not valid UTF-8")
        }
        do {
            return try JSONDecoder().decode(T.self, from: Data(body))
        } catch let error as DecodingError {
            if case .dataCorrupted(let ctx) = error, ctx.codingPath.isEmpty, let e = valueError(T.self, body) {
                throw e
            }
            throw map(error)
        } catch {
            throw APIError.malformedJSON(String(describing: error))
        }
    }

    /// When a body is valid JSON but the decoder still reports it corrupted without a field (Foundation does so for a
    /// number its field's type cannot hold: `2.5` or `1e300` for an integer, `-1` for an unsigned one), finds the
    /// top-level field whose removal lets the body decode. Only runs on that error path.
    static func valueError<T: Decodable>(_ type: T.Type, _ body: [UInt8]) -> APIError? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] else { return nil }
        for key in object.keys.sorted() {
            var rest = object
            rest.removeValue(forKey: key)
            guard let data = try? JSONSerialization.data(withJSONObject: rest),
                (try? JSONDecoder().decode(T.self, from: data)) != nil
            else { continue }
            let shown = (try? JSONSerialization.data(withJSONObject: [object[key]!], options: [.fragmentsAllowed]))
                .map { String(decoding: $0.dropFirst().dropLast(), as: UTF8.self) } ?? "the value"
            return .invalidRequest(
                "Invalid value for '\(key)': \(shown) does not fit the field's type (integers must be whole numbers "
                    + "within range).", param: key, code: "invalid_value")
        }
        return .invalidRequest(
            "A value in the request does not fit its field's type (integers must be whole numbers within range).",
            code: "invalid_value")
    }

    static func path(_ codingPath: [CodingKey]) -> String? {
        let parts = codingPath.map { key -> String in
            if let i = key.intValue { return "[\(i)]" }
            return key.stringValue
        }
        guard !parts.isEmpty else { return nil }
        var out = ""
        for p in parts {
            if p.hasPrefix("[") || out.isEmpty { out += p } else { out += "." + p }
        }
        return out
    }

    static func map(_ error: DecodingError) -> APIError {
        switch error {
        case .dataCorrupted(let ctx):
            if ctx.codingPath.isEmpty {
                let detail = (ctx.underlyingError.map { String(describing: $0) }) ?? ctx.debugDescription
                return .malformedJSON(detail)
            }
            return .invalidRequest("Invalid value for '\(path(ctx.codingPath) ?? "")': \(ctx.debugDescription)",
                param: path(ctx.codingPath))
        case .keyNotFound(let key, let ctx):
            let full = path(ctx.codingPath + [key]) ?? key.stringValue
            return .invalidRequest("Missing required parameter: '\(full)'.", param: full, code: "missing_required_parameter")
        case .typeMismatch(_, let ctx), .valueNotFound(_, let ctx):
            let p = path(ctx.codingPath)
            if p == nil { return .invalidRequest("The request body must be a JSON object.") }
            return .invalidRequest("Invalid type for '\(p!)': \(ctx.debugDescription)", param: p, code: "invalid_type")
        @unknown default:
            return .invalidRequest("Invalid request body.")
        }
    }

    // MARK: - Completions

    /// Validates and tokenizes `POST /v1/completions`.
    /// - Throws: ``APIError`` (400; 404 for an unknown model is checked by the caller via ``checkModel(_:)``).
    public func prepare(_ body: CompletionRequestBody) throws -> PreparedRequest {
        try checkModel(body.model)
        if body.echo == true { throw APIError.invalidRequest("'echo' is not supported.", param: "echo") }
        if let s = body.suffix, !s.isEmpty {
            throw APIError.invalidRequest("'suffix' is not supported.", param: "suffix")
        }
        if let lp = body.logprobs, lp < 0 || lp > Self.maxLogprobs {
            throw APIError.invalidRequest(
                "'logprobs' must be between 0 and \(Self.maxLogprobs), got \(lp).", param: "logprobs")
        }
        let prompts: [[Int32]]
        var ownBOS: [Int] = []
        func encodeTexts(_ texts: [String]) -> [[Int32]] {
            texts.enumerated().map { i, s in
                let r = backend.encodePrompt(s, addBOS: true, parseSpecial: true)
                if r.bosFromText { ownBOS.append(i) }
                return r.tokens
            }
        }
        switch body.prompt {
        case .text(let s):
            prompts = encodeTexts([s])
        case .texts(let list):
            guard !list.isEmpty else { throw APIError.invalidRequest("'prompt' is empty.", param: "prompt") }
            prompts = encodeTexts(list)
        case .tokens(let ids):
            prompts = [try tokenIDs(ids, param: "prompt")]
        case .tokenLists(let lists):
            guard !lists.isEmpty else { throw APIError.invalidRequest("'prompt' is empty.", param: "prompt") }
            prompts = try lists.enumerated().map { try tokenIDs($0.element, param: "prompt[\($0.offset)]") }
        }
        if prompts.count > 64 {
            throw APIError.invalidRequest("At most 64 prompts per request, got \(prompts.count).", param: "prompt")
        }
        var base = try samplingRequest(body.sampling, topLogprobs: body.logprobs)
        var generations: [GenerationRequest] = []
        for (i, p) in prompts.enumerated() {
            guard !p.isEmpty else {
                throw APIError.invalidRequest(
                    "The prompt\(prompts.count > 1 ? " at index \(i)" : "") is empty.", param: "prompt")
            }
            let maxTokens = try resolveMaxTokens(
                body.maxTokens, param: "max_tokens", promptTokens: p.count,
                default: defaultMaxTokens.map { min($0, max(contextSize - p.count, 1)) }
                    ?? Self.defaultCompletionMaxTokens)
            base.promptTokens = p
            base.maxTokens = maxTokens
            generations.append(base)
        }
        return PreparedRequest(
            kind: .completion, generations: generations, stream: body.sampling.stream ?? false,
            includeUsage: body.sampling.streamOptions?.includeUsage ?? false, logprobs: body.logprobs,
            tokensAsIDs: body.sampling.returnTokensAsTokenIDs ?? false, promptsWithOwnBOS: ownBOS)
    }

    // MARK: - Chat

    /// Validates `POST /v1/chat/completions` and renders the messages with the chat template.
    /// - Throws: ``APIError``.
    public func prepare(_ body: ChatRequestBody) throws -> PreparedRequest {
        try checkModel(body.model)
        guard !body.messages.isEmpty else {
            throw APIError.invalidRequest("'messages' must contain at least one message.", param: "messages")
        }
        for (i, m) in body.messages.enumerated() where !["system", "developer", "user", "assistant"].contains(m.role) {
            throw APIError.invalidRequest(
                "Unsupported role '\(m.role)' in messages[\(i)] (use system, user or assistant).",
                param: "messages[\(i)].role")
        }
        var topLogprobs: Int? = nil
        if body.logprobs == true {
            let n = body.topLogprobs ?? 0
            guard n >= 0, n <= Self.maxLogprobs else {
                throw APIError.invalidRequest(
                    "'top_logprobs' must be between 0 and \(Self.maxLogprobs), got \(n).", param: "top_logprobs")
            }
            topLogprobs = n
        } else if let n = body.topLogprobs, n > 0 {
            throw APIError.invalidRequest("'top_logprobs' requires 'logprobs' to be true.", param: "top_logprobs")
        }
        let turns = body.messages.map { ChatTurn(role: $0.role == "developer" ? "system" : $0.role, content: $0.content) }
        let prompt: [Int32]
        do {
            prompt = try backend.renderChat(turns)
        } catch let e as APIError {
            throw e
        } catch {
            throw APIError.invalidRequest("The messages cannot be rendered: \(error)", param: "messages")
        }
        guard !prompt.isEmpty else { throw APIError.invalidRequest("The rendered prompt is empty.", param: "messages") }
        var req = try samplingRequest(body.sampling, topLogprobs: topLogprobs)
        let param = body.maxCompletionTokens != nil ? "max_completion_tokens" : "max_tokens"
        let requested = body.maxCompletionTokens ?? body.maxTokens
        req.promptTokens = prompt
        req.maxTokens = try resolveMaxTokens(
            requested, param: param, promptTokens: prompt.count,
            default: min(defaultMaxTokens ?? .max, max(contextSize - prompt.count, 1)))
        return PreparedRequest(
            kind: .chat, generations: [req], stream: body.sampling.stream ?? false,
            includeUsage: body.sampling.streamOptions?.includeUsage ?? false, logprobs: topLogprobs,
            tokensAsIDs: body.sampling.returnTokensAsTokenIDs ?? false)
    }

    // MARK: - Shared rules

    /// 404 unless `model` is absent, empty, or the served model id.
    public func checkModel(_ model: String?) throws {
        guard let m = model, !m.isEmpty, m != backend.modelID else { return }
        throw APIError.modelNotFound(m, available: backend.modelID)
    }

    func tokenIDs(_ ids: [Int], param: String) throws -> [Int32] {
        let vocab = backend.vocabSize
        var out: [Int32] = []
        out.reserveCapacity(ids.count)
        for (i, id) in ids.enumerated() {
            guard id >= 0, id < vocab else {
                throw APIError.invalidRequest(
                    "Token id \(id) at \(param)[\(i)] is outside the vocabulary (0..<\(vocab)).", param: param)
            }
            out.append(Int32(id))
        }
        return out
    }

    func resolveMaxTokens(_ requested: Int?, param: String, promptTokens: Int, default def: Int) throws -> Int {
        let maxTokens = requested ?? def
        guard maxTokens >= 1 else {
            throw APIError.invalidRequest("'\(param)' must be at least 1, got \(maxTokens).", param: param)
        }
        if promptTokens >= contextSize || maxTokens > contextSize - promptTokens {
            throw APIError.contextLengthExceeded(
                context: contextSize, promptTokens: promptTokens, maxTokens: maxTokens, param: param)
        }
        return maxTokens
    }

    func samplingRequest(_ f: SamplingFields, topLogprobs: Int?) throws -> GenerationRequest {
        if let n = f.n, n != 1 { throw APIError.invalidRequest("Only n=1 is supported, got n=\(n).", param: "n") }
        if let b = f.bestOf, b != 1 {
            throw APIError.invalidRequest("Only best_of=1 is supported, got \(b).", param: "best_of")
        }
        var p = SamplingParams()
        if let t = f.temperature {
            guard t.isFinite, t >= 0 else {
                throw APIError.invalidRequest("'temperature' must be a number >= 0, got \(t).", param: "temperature")
            }
            p.temperature = Float(t)
        }
        if let v = f.topP {
            guard v.isFinite, v > 0, v <= 1 else {
                throw APIError.invalidRequest("'top_p' must be in (0, 1], got \(v).", param: "top_p")
            }
            p.topP = Float(v)
        }
        if let k = f.topK {
            guard k >= -1 else { throw APIError.invalidRequest("'top_k' must be -1 (off) or >= 0, got \(k).", param: "top_k") }
            p.topK = max(k, 0)
        }
        if let v = f.minP {
            guard v.isFinite, v >= 0, v <= 1 else {
                throw APIError.invalidRequest("'min_p' must be in [0, 1], got \(v).", param: "min_p")
            }
            p.minP = Float(v)
        }
        if let v = f.repetitionPenalty {
            guard v.isFinite, v > 0, v <= 10 else {
                throw APIError.invalidRequest(
                    "'repetition_penalty' must be in (0, 10], got \(v).", param: "repetition_penalty")
            }
            p.repetitionPenalty = Float(v)
        }
        if let v = f.presencePenalty {
            guard v.isFinite, v >= -2, v <= 2 else {
                throw APIError.invalidRequest(
                    "'presence_penalty' must be in [-2, 2], got \(v).", param: "presence_penalty")
            }
            p.presencePenalty = Float(v)
        }
        if let v = f.frequencyPenalty {
            guard v.isFinite, v >= -2, v <= 2 else {
                throw APIError.invalidRequest(
                    "'frequency_penalty' must be in [-2, 2], got \(v).", param: "frequency_penalty")
            }
            p.frequencyPenalty = Float(v)
        }
        if let s = f.seed { p.seed = UInt64(bitPattern: s) }
        if let bias = f.logitBias {
            guard bias.count <= Self.maxLogitBiasEntries else {
                throw APIError.invalidRequest(
                    "'logit_bias' may list at most \(Self.maxLogitBiasEntries) tokens, got \(bias.count).",
                    param: "logit_bias")
            }
            let vocab = backend.vocabSize
            for (key, value) in bias {
                guard let id = Int(key), id >= 0, id < vocab else {
                    throw APIError.invalidRequest(
                        "'logit_bias' keys must be token ids in 0..<\(vocab), got '\(key)'.", param: "logit_bias")
                }
                guard value.isFinite, value >= -100, value <= 100 else {
                    throw APIError.invalidRequest(
                        "'logit_bias' values must be in [-100, 100], got \(value) for token \(id).", param: "logit_bias")
                }
                p.logitBias[Int32(id)] = Float(value)
            }
        }
        if let format = f.responseFormat?.type, format != "text" {
            throw APIError.invalidRequest(
                "response_format '\(format)' is not supported (no constrained decoding); use 'text'.",
                param: "response_format")
        }
        if !(f.tools ?? []).isEmpty || !(f.functions ?? []).isEmpty {
            throw APIError.invalidRequest(
                "Tool and function calling are not supported.", param: (f.tools ?? []).isEmpty ? "functions" : "tools")
        }
        p.topLogprobs = topLogprobs ?? 0
        p.logprobs = topLogprobs != nil
        let stops = f.stop?.strings ?? []
        if stops.count > Self.maxStopStrings {
            throw APIError.invalidRequest(
                "At most \(Self.maxStopStrings) stop strings are allowed, got \(stops.count).", param: "stop")
        }
        if stops.contains(where: \.isEmpty) {
            throw APIError.invalidRequest("Stop strings must not be empty.", param: "stop")
        }
        let vocab = backend.vocabSize
        var stopIDs = Set<Int32>()
        for id in f.stopTokenIDs ?? [] {
            guard id >= 0, id < vocab else {
                throw APIError.invalidRequest(
                    "stop_token_ids contains \(id), outside the vocabulary (0..<\(vocab)).", param: "stop_token_ids")
            }
            stopIDs.insert(Int32(id))
        }
        return GenerationRequest(
            promptTokens: [], maxTokens: 1, sampling: p, stop: stops, stopTokenIDs: stopIDs,
            ignoreEOS: f.ignoreEOS ?? false)
    }
}
