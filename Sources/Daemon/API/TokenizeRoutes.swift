// TokenizeRoutes: `POST /tokenize` and `POST /detokenize`, each accepting llama.cpp's and vLLM's body shapes on the
// one route. The fields of the body say which shape it is, and the answer comes back in that shape:
//
//   llama.cpp (tools/server README, "POST /tokenize", "POST /detokenize"):
//     /tokenize    {"content", "add_special"?: false, "parse_special"?: true, "with_pieces"?: false}
//                  -> {"tokens": [id, ...]}, with pieces {"tokens": [{"id", "piece"}, ...]} (piece: a string, or the
//                  byte values when the token's bytes are not valid UTF-8 on their own)
//     /detokenize  {"tokens"}                                   -> {"content"}
//   vLLM (entrypoints/openai/protocol.py TokenizeCompletionRequest / TokenizeChatRequest / DetokenizeRequest):
//     /tokenize    {"model"?, "prompt", "add_special_tokens"?: true}
//                  {"model"?, "messages", "add_generation_prompt"?: true}
//                  -> {"count", "max_model_len", "tokens"}
//     /detokenize  {"model", "tokens"}                          -> {"prompt"}
//
// `content` marks llama.cpp's /tokenize, `prompt` or `messages` vLLM's; for /detokenize, `model` marks vLLM's. Text
// is tokenized as generation tokenizes it: special-token text parsed (unless llama.cpp's `parse_special: false`),
// BOS added by lorad's rule (not when the text's first token already is BOS), chat messages by the chat template
// with the model's BOS. Detokenizing renders special tokens as their text, as both servers do by default.

import Foundation

/// `POST /tokenize` body in either server's shape (see the file header for which fields belong to which).
public struct TokenizeRequestBody: Decodable, Sendable, Equatable {
    /// llama.cpp: the text to tokenize.
    public var content: String?
    /// llama.cpp: add BOS (default false).
    public var addSpecial: Bool?
    /// llama.cpp: match special-token text such as `<start_of_turn>` (default true).
    public var parseSpecial: Bool?
    /// llama.cpp: return `{"id", "piece"}` objects instead of bare ids (default false).
    public var withPieces: Bool?
    /// vLLM: the served model or a registered adapter (all share the base model's tokenizer).
    public var model: String?
    /// vLLM: the text to tokenize.
    public var prompt: String?
    /// vLLM: add BOS to `prompt` (default true). Chat messages get the chat template's BOS either way.
    public var addSpecialTokens: Bool?
    /// vLLM: chat messages, rendered with the model's chat template.
    public var messages: [ChatMessageBody]?
    /// vLLM: end the rendered messages with the generation prompt (default true).
    public var addGenerationPrompt: Bool?

    enum CodingKeys: String, CodingKey {
        case content, model, prompt, messages
        case addSpecial = "add_special"
        case parseSpecial = "parse_special"
        case withPieces = "with_pieces"
        case addSpecialTokens = "add_special_tokens"
        case addGenerationPrompt = "add_generation_prompt"
    }
}

/// `POST /detokenize` body: `{"tokens"}` (llama.cpp) or `{"model", "tokens"}` (vLLM).
public struct DetokenizeRequestBody: Decodable, Sendable, Equatable {
    /// vLLM: the served model or a registered adapter; its presence selects vLLM's answer shape.
    public var model: String?
    /// Token ids, each in `0..<n_vocab`.
    public var tokens: [Int]
}

/// What `RequestValidator.tokenize` produced.
public struct TokenizeResult: Sendable, Equatable {
    /// The response body in the request's shape.
    public var body: JSONValue
    /// The ids.
    public var tokens: [Int32]
    /// True when BOS was asked for but not added because the text's first token already was BOS (callers log it).
    public var bosFromText: Bool
}

extension RequestValidator {
    /// Answers `POST /tokenize` (the model id, if any, is checked by the caller or by ``checkModel(_:)``).
    /// - Throws: ``APIError`` 400: `content` together with `prompt`/`messages`, `prompt` with `messages`, none of
    ///   them, empty `messages`, an unsupported role, or messages the chat template cannot render; 404 for an
    ///   unknown `model`.
    public func tokenize(_ body: TokenizeRequestBody) throws -> TokenizeResult {
        try checkModel(body.model)
        if let content = body.content {
            if body.prompt != nil || body.messages != nil {
                throw APIError.invalidRequest(
                    "Send either 'content' (llama.cpp) or 'prompt' / 'messages' (vLLM), not both.", param: "content")
            }
            let (ids, fromText) = backend.encodePrompt(
                content, addBOS: body.addSpecial ?? false, parseSpecial: body.parseSpecial ?? true)
            let tokens: [JSONValue]
            if body.withPieces ?? false {
                tokens = ids.map { id in
                    let bytes = backend.tokenBytes(id)
                    let piece: JSONValue = String(validating: bytes, as: UTF8.self).map { .string($0) }
                        ?? .array(bytes.map { .int(Int($0)) })
                    return .object([("id", .int(Int(id))), ("piece", piece)])
                }
            } else {
                tokens = ids.map { .int(Int($0)) }
            }
            return TokenizeResult(body: .object([("tokens", .array(tokens))]), tokens: ids, bosFromText: fromText)
        }
        let ids: [Int32]
        var fromText = false
        switch (body.prompt, body.messages) {
        case (let p?, nil):
            let r = backend.encodePrompt(p, addBOS: body.addSpecialTokens ?? true, parseSpecial: true)
            ids = r.tokens
            fromText = r.bosFromText
        case (nil, let messages?):
            guard !messages.isEmpty else {
                throw APIError.invalidRequest("'messages' must contain at least one message.", param: "messages")
            }
            for (i, m) in messages.enumerated() where !["system", "developer", "user", "assistant"].contains(m.role) {
                throw APIError.invalidRequest(
                    "Unsupported role '\(m.role)' in messages[\(i)] (use system, user or assistant).",
                    param: "messages[\(i)].role")
            }
            let turns = messages.map { ChatTurn(role: $0.role == "developer" ? "system" : $0.role, content: $0.content) }
            do {
                ids = try backend.renderChat(turns, addGenerationPrompt: body.addGenerationPrompt ?? true)
            } catch let e as APIError {
                throw e
            } catch {
                throw APIError.invalidRequest("The messages cannot be rendered: \(error)", param: "messages")
            }
        case (.some, .some):
            throw APIError.invalidRequest("Send either 'prompt' or 'messages', not both.", param: "messages")
        case (nil, nil):
            throw APIError.invalidRequest(
                "Missing required parameter: 'content' (llama.cpp) or 'prompt' / 'messages' (vLLM).",
                param: "content", code: "missing_required_parameter")
        }
        let response: JSONValue = .object([
            ("count", .int(ids.count)), ("max_model_len", .int(contextSize)),
            ("tokens", .array(ids.map { .int(Int($0)) })),
        ])
        return TokenizeResult(body: response, tokens: ids, bosFromText: fromText)
    }

    /// Answers `POST /detokenize`: `{"content"}` for llama.cpp's shape, `{"prompt"}` when the body names a `model`.
    /// - Throws: ``APIError`` 400 naming the index of an id outside the vocabulary; 404 for an unknown `model`.
    public func detokenize(_ body: DetokenizeRequestBody) throws -> JSONValue {
        try checkModel(body.model)
        let ids = try tokenIDs(body.tokens, param: "tokens")
        let text = backend.decode(ids)
        return .object([(body.model == nil ? "content" : "prompt", .string(text))])
    }
}
