// ResponseRenderer: GenerationEvents -> OpenAI JSON shapes, for whole responses and for stream chunks.
//
// Completions (`text_completion`): `choices[i].text`, legacy `logprobs` {tokens, token_logprobs, top_logprobs
// (one {token: logprob} object per position), text_offset}. Chat (`chat.completion[.chunk]`):
// `choices[i].message|delta`, `logprobs.content[]` of {token, logprob, bytes, top_logprobs[]}. Token strings are
// the token's bytes decoded as UTF-8 (U+FFFD for a partial character), or `token_id:N` when
// `return_tokens_as_token_ids` is set (vLLM).

import Foundation

/// What one choice produced, accumulated for a non-streamed response.
public struct ChoiceResult: Sendable {
    public var text = ""
    public var tokens: [GeneratedToken] = []
    /// Character offset (Unicode scalars) of each token's text within `text`.
    public var offsets: [Int] = []
    public var summary: GenerationSummary?

    public init() {}

    /// Adds one event.
    public mutating func add(_ event: GenerationEvent) {
        switch event {
        case .token(let t):
            offsets.append(text.unicodeScalars.count)
            tokens.append(t)
            text += t.text
        case .finished(let s):
            text += s.trailingText
            summary = s
        }
    }
}

/// Renders responses for one request.
public struct ResponseRenderer: Sendable {
    public let kind: PreparedRequest.Kind
    public let id: String
    public let created: Int
    public let model: String
    public let logprobs: Int?
    public let tokensAsIDs: Bool
    let tokenBytes: @Sendable (Int32) -> [UInt8]

    public init(
        kind: PreparedRequest.Kind, model: String, logprobs: Int?, tokensAsIDs: Bool,
        id: String? = nil, created: Int? = nil, tokenBytes: @escaping @Sendable (Int32) -> [UInt8]
    ) {
        self.kind = kind
        self.model = model
        self.logprobs = logprobs
        self.tokensAsIDs = tokensAsIDs
        self.tokenBytes = tokenBytes
        self.id = id ?? ((kind == .chat ? "chatcmpl-" : "cmpl-") + ResponseRenderer.randomHex(24))
        self.created = created ?? Int(Date().timeIntervalSince1970)
    }

    static func randomHex(_ n: Int) -> String {
        var g = SystemRandomNumberGenerator()
        let digits = Array("0123456789abcdef")
        return String((0..<n).map { _ in digits[Int(g.next() % 16)] })
    }

    var object: String { kind == .chat ? "chat.completion" : "text_completion" }
    var chunkObject: String { kind == .chat ? "chat.completion.chunk" : "text_completion" }

    /// The string shown for a token in logprobs.
    public func tokenString(_ id: Int32) -> String {
        tokensAsIDs ? "token_id:\(id)" : String(decoding: tokenBytes(id), as: UTF8.self)
    }

    // MARK: - Whole responses

    /// The non-streamed response body.
    public func response(_ choices: [ChoiceResult]) -> JSONValue {
        var items: [JSONValue] = []
        var prompt = 0
        var completion = 0
        for (i, c) in choices.enumerated() {
            prompt += c.summary?.promptTokens ?? 0
            completion += c.summary?.completionTokens ?? 0
            let finish = JSONValue.optional(c.summary.flatMap { Self.finishReason($0.reason) })
            switch kind {
            case .completion:
                items.append(
                    .object([
                        ("index", .int(i)), ("text", .string(c.text)),
                        ("logprobs", logprobs == nil ? .null : completionLogprobs(c.tokens, offsets: c.offsets)),
                        ("finish_reason", finish),
                    ]))
            case .chat:
                items.append(
                    .object([
                        ("index", .int(i)),
                        ("message", .object([("role", .string("assistant")), ("content", .string(c.text))])),
                        ("logprobs", logprobs == nil ? .null : chatLogprobs(c.tokens)),
                        ("finish_reason", finish),
                    ]))
            }
        }
        return .object([
            ("id", .string(id)), ("object", .string(object)), ("created", .int(created)), ("model", .string(model)),
            ("choices", .array(items)), ("usage", Self.usage(prompt: prompt, completion: completion)),
        ])
    }

    /// OpenAI `finish_reason` for a summary (`nil` for cancelled).
    public static func finishReason(_ r: FinishReason) -> String? {
        switch r {
        case .stop: return "stop"
        case .length: return "length"
        case .cancelled: return nil
        case .error: return "error"
        }
    }

    public static func usage(prompt: Int, completion: Int) -> JSONValue {
        .object([
            ("prompt_tokens", .int(prompt)), ("completion_tokens", .int(completion)),
            ("total_tokens", .int(prompt + completion)),
        ])
    }

    // MARK: - Stream chunks

    /// A streamed chunk for choice `index`: `text` plus logprobs for `tokens` (whose texts start at
    /// `offsetStart` within the choice's text so far), and `finishReason` on the last chunk.
    /// `includeUsageField` adds `"usage": null` (OpenAI does this on every chunk when usage is requested).
    public func chunk(
        index: Int, text: String, tokens: [GeneratedToken], offsetStart: Int, finishReason: String?,
        role: Bool = false, includeUsageField: Bool = false
    ) -> JSONValue {
        var choice: [(String, JSONValue)] = [("index", .int(index))]
        switch kind {
        case .completion:
            choice.append(("text", .string(text)))
            var offsets: [Int] = []
            var off = offsetStart
            for t in tokens {
                offsets.append(off)
                off += t.text.unicodeScalars.count
            }
            choice.append(
                ("logprobs", logprobs == nil || tokens.isEmpty ? .null : completionLogprobs(tokens, offsets: offsets)))
        case .chat:
            var delta: [(String, JSONValue)] = []
            if role { delta.append(("role", .string("assistant"))) }
            if role || !text.isEmpty || finishReason == nil { delta.append(("content", .string(text))) }
            choice.append(("delta", .object(delta)))
            choice.append(("logprobs", logprobs == nil || tokens.isEmpty ? .null : chatLogprobs(tokens)))
        }
        choice.append(("finish_reason", .optional(finishReason)))
        var fields: [(String, JSONValue)] = [
            ("id", .string(id)), ("object", .string(chunkObject)), ("created", .int(created)),
            ("model", .string(model)), ("choices", .array([.object(choice)])),
        ]
        if includeUsageField { fields.append(("usage", .null)) }
        return .object(fields)
    }

    /// The final usage chunk (`choices: []`), sent when `stream_options.include_usage` is true.
    public func usageChunk(prompt: Int, completion: Int) -> JSONValue {
        .object([
            ("id", .string(id)), ("object", .string(chunkObject)), ("created", .int(created)),
            ("model", .string(model)), ("choices", .array([])),
            ("usage", Self.usage(prompt: prompt, completion: completion)),
        ])
    }

    // MARK: - Logprobs

    func completionLogprobs(_ tokens: [GeneratedToken], offsets: [Int]) -> JSONValue {
        var strs: [JSONValue] = []
        var lps: [JSONValue] = []
        var tops: [JSONValue] = []
        for t in tokens {
            strs.append(.string(tokenString(t.id)))
            lps.append(.number(t.logprob))
            var seen = Set<String>()
            var obj: [(String, JSONValue)] = []
            for alt in t.topLogprobs.prefix(logprobs ?? 0) {
                let s = tokenString(alt.id)
                if seen.insert(s).inserted { obj.append((s, .number(alt.logprob))) }
            }
            tops.append(.object(obj))
        }
        return .object([
            ("tokens", .array(strs)), ("token_logprobs", .array(lps)), ("top_logprobs", .array(tops)),
            ("text_offset", .array(offsets.map { .int($0) })),
        ])
    }

    func chatLogprobs(_ tokens: [GeneratedToken]) -> JSONValue {
        func entry(_ id: Int32, _ lp: Float) -> [(String, JSONValue)] {
            let bytes: [UInt8] = tokensAsIDs ? Array("token_id:\(id)".utf8) : tokenBytes(id)
            return [
                ("token", .string(tokenString(id))), ("logprob", .number(lp)),
                ("bytes", .array(bytes.map { .int(Int($0)) })),
            ]
        }
        let content: [JSONValue] = tokens.map { t in
            var e = entry(t.id, t.logprob)
            e.append(("top_logprobs", .array(t.topLogprobs.prefix(logprobs ?? 0).map { .object(entry($0.id, $0.logprob)) })))
            return .object(e)
        }
        return .object([("content", .array(content)), ("refusal", .null)])
    }
}
