// WireTypes: request bodies as clients send them (OpenAI field names, snake_case). Decoding only checks JSON
// types; ranges and cross-field rules are checked in RequestValidation. Unknown fields are ignored, as OpenAI
// clients send extras (`user`, `metadata`, ...).

/// `prompt`: a string, a list of strings, a list of token ids, or a list of token-id lists.
public enum PromptInput: Decodable, Sendable, Equatable {
    case text(String)
    case texts([String])
    case tokens([Int])
    case tokenLists([[Int]])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let s = try? c.decode(String.self) {
            self = .text(s)
        } else if let list = try? c.decode([String].self) {
            self = .texts(list)
        } else if let ids = try? c.decode([Int].self) {
            self = .tokens(ids)
        } else if let lists = try? c.decode([[Int]].self) {
            self = .tokenLists(lists)
        } else {
            throw DecodingError.typeMismatch(
                PromptInput.self,
                .init(
                    codingPath: decoder.codingPath,
                    debugDescription: "expected a string, a list of strings, a list of token ids, or a list of "
                        + "token-id lists"))
        }
    }
}

/// `stop`: one string or a list of strings.
public enum StopInput: Decodable, Sendable, Equatable {
    case one(String)
    case many([String])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let s = try? c.decode(String.self) {
            self = .one(s)
        } else if let list = try? c.decode([String].self) {
            self = .many(list)
        } else {
            throw DecodingError.typeMismatch(
                StopInput.self,
                .init(codingPath: decoder.codingPath, debugDescription: "expected a string or a list of strings"))
        }
    }

    public var strings: [String] {
        switch self {
        case .one(let s): return [s]
        case .many(let l): return l
        }
    }
}

/// `stream_options`.
public struct StreamOptions: Decodable, Sendable, Equatable {
    public var includeUsage: Bool?
    enum CodingKeys: String, CodingKey { case includeUsage = "include_usage" }
}

/// Sampling and stopping fields shared by both endpoints.
public struct SamplingFields: Decodable, Sendable, Equatable {
    public var temperature: Double?
    public var topP: Double?
    public var topK: Int?
    public var minP: Double?
    public var repetitionPenalty: Double?
    public var presencePenalty: Double?
    public var frequencyPenalty: Double?
    public var seed: Int64?
    public var stop: StopInput?
    public var stopTokenIDs: [Int]?
    public var ignoreEOS: Bool?
    public var n: Int?
    public var bestOf: Int?
    public var stream: Bool?
    public var streamOptions: StreamOptions?
    public var returnTokensAsTokenIDs: Bool?
    /// OpenAI `logit_bias`: token id (as a JSON object key) → bias added to its logit, -100...100.
    public var logitBias: [String: Double]?
    /// Chat `response_format`; only `{"type": "text"}` is supported (no constrained decoding).
    public var responseFormat: ResponseFormat?
    /// Chat `tools` / `functions`: tool calling is not supported, so a non-empty list is refused.
    public var tools: [IgnoredJSON]?
    public var functions: [IgnoredJSON]?

    enum CodingKeys: String, CodingKey {
        case temperature, seed, stop, n, stream, tools, functions
        case topP = "top_p"
        case topK = "top_k"
        case minP = "min_p"
        case repetitionPenalty = "repetition_penalty"
        case presencePenalty = "presence_penalty"
        case frequencyPenalty = "frequency_penalty"
        case stopTokenIDs = "stop_token_ids"
        case ignoreEOS = "ignore_eos"
        case bestOf = "best_of"
        case streamOptions = "stream_options"
        case returnTokensAsTokenIDs = "return_tokens_as_token_ids"
        case logitBias = "logit_bias"
        case responseFormat = "response_format"
    }
}

/// Any JSON value, accepted and not kept (only whether a list has entries matters).
public struct IgnoredJSON: Decodable, Sendable, Equatable {
    /// Accepts any value without reading it; never throws.
    public init(from decoder: Decoder) throws {}
}

/// `response_format`: `{"type": "text" | "json_object" | "json_schema", ...}`.
public struct ResponseFormat: Decodable, Sendable, Equatable {
    public var type: String
}

/// One entry of a request's `adapters` list: a registered adapter and its scale (default 1).
public struct AdapterRefBody: Decodable, Sendable, Equatable {
    /// A registered adapter's name.
    public var name: String
    /// Multiplier of its `scale·B·A` term (dimensionless, -100...100; default 1, 0 disables it).
    public var scale: Double?
}

/// `POST /v1/completions` body.
public struct CompletionRequestBody: Decodable, Sendable, Equatable {
    /// The base model's id, or a registered adapter's name (that adapter at scale 1).
    public var model: String?
    /// More adapters mixed in, each with its own scale (lorad extension, like LoRAX's merged adapters).
    public var adapters: [AdapterRefBody]?
    public var prompt: PromptInput
    public var maxTokens: Int?
    /// Legacy completions logprobs: number of alternatives (0...20); present means "report logprobs".
    public var logprobs: Int?
    public var echo: Bool?
    public var suffix: String?
    public var sampling: SamplingFields

    enum CodingKeys: String, CodingKey {
        case model, prompt, logprobs, echo, suffix, adapters
        case maxTokens = "max_tokens"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        model = try c.decodeIfPresent(String.self, forKey: .model)
        adapters = try c.decodeIfPresent([AdapterRefBody].self, forKey: .adapters)
        prompt = try c.decode(PromptInput.self, forKey: .prompt)
        maxTokens = try c.decodeIfPresent(Int.self, forKey: .maxTokens)
        logprobs = try c.decodeIfPresent(Int.self, forKey: .logprobs)
        echo = try c.decodeIfPresent(Bool.self, forKey: .echo)
        suffix = try c.decodeIfPresent(String.self, forKey: .suffix)
        sampling = try SamplingFields(from: decoder)
    }
}

/// One chat message; `content` may be a string, null, or a list of `{"type": "text", "text": ...}` parts.
public struct ChatMessageBody: Decodable, Sendable, Equatable {
    public var role: String
    public var content: String

    enum CodingKeys: String, CodingKey { case role, content }
    struct Part: Decodable {
        var type: String
        var text: String?
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        role = try c.decode(String.self, forKey: .role)
        if try !c.contains(.content) || c.decodeNil(forKey: .content) {
            content = ""
        } else if let s = try? c.decode(String.self, forKey: .content) {
            content = s
        } else {
            let parts = try c.decode([Part].self, forKey: .content)
            var text = ""
            for p in parts {
                guard p.type == "text", let t = p.text else {
                    throw DecodingError.dataCorruptedError(
                        forKey: .content, in: c,
                        debugDescription: "only text content parts are supported (got type '\(p.type)')")
                }
                text += t
            }
            content = text
        }
    }
}

/// `POST /v1/chat/completions` body.
public struct ChatRequestBody: Decodable, Sendable, Equatable {
    /// The base model's id, or a registered adapter's name (that adapter at scale 1).
    public var model: String?
    /// More adapters mixed in, each with its own scale.
    public var adapters: [AdapterRefBody]?
    public var messages: [ChatMessageBody]
    public var maxTokens: Int?
    public var maxCompletionTokens: Int?
    public var logprobs: Bool?
    public var topLogprobs: Int?
    public var sampling: SamplingFields

    enum CodingKeys: String, CodingKey {
        case model, messages, logprobs, adapters
        case maxTokens = "max_tokens"
        case maxCompletionTokens = "max_completion_tokens"
        case topLogprobs = "top_logprobs"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        model = try c.decodeIfPresent(String.self, forKey: .model)
        adapters = try c.decodeIfPresent([AdapterRefBody].self, forKey: .adapters)
        messages = try c.decode([ChatMessageBody].self, forKey: .messages)
        maxTokens = try c.decodeIfPresent(Int.self, forKey: .maxTokens)
        maxCompletionTokens = try c.decodeIfPresent(Int.self, forKey: .maxCompletionTokens)
        logprobs = try c.decodeIfPresent(Bool.self, forKey: .logprobs)
        topLogprobs = try c.decodeIfPresent(Int.self, forKey: .topLogprobs)
        sampling = try SamplingFields(from: decoder)
    }
}
