// Request parsing and validation: wire JSON -> GenerationRequest, and each rejection -> status/type/param.
// Expected token ids come from FakeBackend's documented mapping, written out in the test.

import Daemon
import Foundation
import Runtime
import Testing

private let validator = RequestValidator(backend: FakeBackend(), contextSize: 100)

private func completion(_ json: String) throws -> PreparedRequest {
    try validator.prepare(RequestValidator.decode(CompletionRequestBody.self, from: Array(json.utf8)))
}

private func chat(_ json: String) throws -> PreparedRequest {
    try validator.prepare(RequestValidator.decode(ChatRequestBody.self, from: Array(json.utf8)))
}

/// The APIError a body produces (fails the test if it is accepted).
private func rejection(_ body: () throws -> PreparedRequest) -> APIError? {
    do {
        _ = try body()
        Issue.record("request was accepted")
        return nil
    } catch let e as APIError {
        return e
    } catch {
        Issue.record("unexpected error \(error)")
        return nil
    }
}

@Suite struct CompletionParsingTests {
    @Test func logprobsRequestedOnlyWhenAsked() throws {
        #expect(try completion(#"{"model":"fake-model","prompt":"AB","logprobs":0}"#).generations[0].sampling.logprobs)
        #expect(try !completion(#"{"model":"fake-model","prompt":"AB"}"#).generations[0].sampling.logprobs)
    }

    @Test func stringPromptGetsBOSAndDefaults() throws {
        let r = try completion(#"{"model":"fake-model","prompt":"AB"}"#)
        // 'A' = 65 -> 65 % 60 + 4 = 9, 'B' -> 10, BOS = 2.
        #expect(r.generations.map(\.promptTokens) == [[2, 9, 10]])
        #expect(r.generations[0].maxTokens == 16)
        var defaults = SamplingParams()
        defaults.logprobs = false  // not asked for: greedy decoding may skip computing them
        #expect(r.generations[0].sampling == defaults)
        #expect(r.stream == false)
        #expect(r.logprobs == nil)
        #expect(r.kind == .completion)
    }

    @Test func tokenPromptsAreUsedExactly() throws {
        let one = try completion(#"{"prompt":[7,8,9],"max_tokens":5}"#)
        #expect(one.generations.map(\.promptTokens) == [[7, 8, 9]])
        let many = try completion(#"{"prompt":[[5],[6,7]],"max_tokens":5}"#)
        #expect(many.generations.map(\.promptTokens) == [[5], [6, 7]])
        let texts = try completion(#"{"prompt":["A","B"]}"#)
        #expect(texts.generations.map(\.promptTokens) == [[2, 9], [2, 10]])
    }

    @Test func samplingFieldsMapToSamplingParams() throws {
        let r = try completion(
            #"{"prompt":"A","temperature":0.5,"top_p":0.9,"top_k":-1,"min_p":0.1,"repetition_penalty":1.2,"#
                + #""presence_penalty":0.5,"frequency_penalty":-0.5,"seed":-1,"stop":"xy","stop_token_ids":[1,3],"#
                + #""logprobs":2,"stream":true,"stream_options":{"include_usage":true},"return_tokens_as_token_ids":true}"#)
        var p = SamplingParams()
        p.temperature = 0.5
        p.topP = 0.9
        p.topK = 0
        p.minP = 0.1
        p.repetitionPenalty = 1.2
        p.presencePenalty = 0.5
        p.frequencyPenalty = -0.5
        p.seed = UInt64.max
        p.topLogprobs = 2
        let g = r.generations[0]
        #expect(g.sampling == p)
        #expect(g.stop == ["xy"])
        #expect(g.stopTokenIDs == [1, 3])
        #expect(r.stream && r.includeUsage && r.tokensAsIDs)
        #expect(r.logprobs == 2)
    }

    @Test func logitBiasAndUnsupportedChatFields() throws {
        let r = try completion(#"{"prompt":"A","logit_bias":{"5":100,"7":-2.5}}"#)
        #expect(r.generations[0].sampling.logitBias == [5: 100, 7: -2.5])
        for (json, param) in [
            (#"{"prompt":"A","logit_bias":{"x":1}}"#, "logit_bias"), (#"{"prompt":"A","logit_bias":{"-1":1}}"#, "logit_bias"),
            (#"{"prompt":"A","logit_bias":{"99999999":1}}"#, "logit_bias"),
            (#"{"prompt":"A","logit_bias":{"5":100.5}}"#, "logit_bias"),
        ] {
            #expect(rejection { try completion(json) }?.param == param, "\(json)")
        }
        let msgs = #""messages":[{"role":"user","content":"hi"}]"#
        _ = try chat("{\(msgs),\"response_format\":{\"type\":\"text\"},\"tools\":[]}")
        #expect(rejection { try chat("{\(msgs),\"response_format\":{\"type\":\"json_object\"}}") }?.param == "response_format")
        #expect(rejection { try chat("{\(msgs),\"tools\":[{\"type\":\"function\"}]}") }?.param == "tools")
    }

    @Test func malformedJSONIs400InvalidJSON() {
        let e = rejection { try completion(#"{"prompt": "a",,}"#) }
        #expect(e?.status == 400)
        #expect(e?.code == "invalid_json")
        #expect(e?.type == "invalid_request_error")
        #expect(rejection { try completion("") }?.code == "invalid_json")
        // A string holding bytes that are not UTF-8 makes the body invalid JSON (RFC 8259 §8.1), not a type error.
        let notUTF8 = Array(#"{"prompt":""#.utf8) + [0xFF, 0xFE] + Array(#" abc"}"#.utf8)
        let u = rejection { try validator.prepare(RequestValidator.decode(CompletionRequestBody.self, from: notUTF8)) }
        #expect(u?.code == "invalid_json" && u?.message.contains("UTF-8") == true)
    }

    /// Numbers an integer field cannot hold are valid JSON: the error names the field instead of calling the body
    /// malformed.
    @Test func numbersOutsideTheirTypeNameTheParam() {
        for (json, param) in [
            (#"{"prompt":"a","max_tokens":2.5}"#, "max_tokens"), (#"{"prompt":"a","max_tokens":1e300}"#, "max_tokens"),
            (#"{"prompt":"a","max_tokens":99999999999999999999999}"#, "max_tokens"),
            (#"{"prompt":"a","max_tokens":2,"seed":1e30}"#, "seed"),
        ] {
            let e = rejection { try completion(json) }
            #expect(e?.status == 400 && e?.code == "invalid_value" && e?.param == param, "\(json): \(String(describing: e))")
        }
        let both = rejection { try completion(#"{"prompt":"a","max_tokens":2.5,"seed":1e30}"#) }
        #expect(both?.code == "invalid_value" && both?.param == nil)
        #expect(rejection { try completion(#"{"prompt":"a","max_tokens":2.5"#) }?.code == "invalid_json")
    }

    @Test func wrongTypesNameTheParam() {
        #expect(rejection { try completion(#"{"prompt":"a","max_tokens":"ten"}"#) }?.param == "max_tokens")
        #expect(rejection { try completion(#"{"prompt":{"x":1}}"#) }?.param == "prompt")
        #expect(rejection { try completion(#"{"max_tokens":3}"#) }?.param == "prompt")
        #expect(rejection { try completion(#"[1,2]"#) }?.status == 400)
        #expect(rejection { try completion(#"{"prompt":[1.5]}"#) }?.status == 400)
    }

    @Test func unknownModelIs404() {
        let e = rejection { try completion(#"{"model":"gpt-4","prompt":"a"}"#) }
        #expect(e?.status == 404)
        #expect(e?.code == "model_not_found")
        #expect(e?.param == "model")
    }

    @Test func contextOverflowNamesBothNumbers() {
        // Prompt = BOS + 10 chars = 11 tokens; 11 + 95 > 100.
        let e = rejection { try completion(#"{"prompt":"ABCDEFGHIJ","max_tokens":95}"#) }
        #expect(e?.status == 400)
        #expect(e?.code == "context_length_exceeded")
        #expect(e?.message.contains("100") == true)
        #expect(e?.message.contains("11 in the prompt") == true)
        #expect(e?.message.contains("95 for the completion") == true)
        // Exactly at the limit is fine.
        #expect((try? completion(#"{"prompt":"ABCDEFGHIJ","max_tokens":89}"#)) != nil)
    }

    @Test func rangeChecks() {
        let cases: [(String, String)] = [
            (#"{"prompt":"a","n":2}"#, "n"),
            (#"{"prompt":"a","temperature":-1}"#, "temperature"),
            (#"{"prompt":"a","top_p":0}"#, "top_p"),
            (#"{"prompt":"a","top_k":-2}"#, "top_k"),
            (#"{"prompt":"a","min_p":1.5}"#, "min_p"),
            (#"{"prompt":"a","presence_penalty":3}"#, "presence_penalty"),
            (#"{"prompt":"a","frequency_penalty":-3}"#, "frequency_penalty"),
            (#"{"prompt":"a","repetition_penalty":0}"#, "repetition_penalty"),
            (#"{"prompt":"a","max_tokens":0}"#, "max_tokens"),
            (#"{"prompt":"a","logprobs":21}"#, "logprobs"),
            (#"{"prompt":[1,64]}"#, "prompt"),
            (#"{"prompt":[]}"#, "prompt"),
            (#"{"prompt":"a","stop_token_ids":[99]}"#, "stop_token_ids"),
            (#"{"prompt":"a","stop":["x",""]}"#, "stop"),
            (#"{"prompt":"a","echo":true}"#, "echo"),
        ]
        for (body, param) in cases {
            let e = rejection { try completion(body) }
            #expect(e?.status == 400, "\(body)")
            #expect(e?.param == param, "\(body)")
        }
    }
}

@Suite struct ChatParsingTests {
    @Test func messagesAreRenderedWithTheTemplate() throws {
        let r = try chat(#"{"messages":[{"role":"user","content":"A"}],"max_tokens":4}"#)
        // FakeBackend template: BOS, then per message [3] + encode("role:content"), then [3].
        let fake = FakeBackend()
        let expected: [Int32] = [2, 3] + fake.encode("user:A", addBOS: false, parseSpecial: false) + [3]
        #expect(r.generations[0].promptTokens == expected)
        #expect(r.generations[0].maxTokens == 4)
        #expect(r.kind == .chat)
    }

    @Test func contentPartsAndDefaults() throws {
        let r = try chat(#"{"messages":[{"role":"user","content":[{"type":"text","text":"A"},{"type":"text","text":"B"}]}]}"#)
        let fake = FakeBackend()
        let prompt: [Int32] = [2, 3] + fake.encode("user:AB", addBOS: false, parseSpecial: false) + [3]
        #expect(r.generations[0].promptTokens == prompt)
        // Default max_tokens: the rest of the context.
        #expect(r.generations[0].maxTokens == 100 - prompt.count)
    }

    @Test func maxCompletionTokensWins() throws {
        let r = try chat(#"{"messages":[{"role":"user","content":"A"}],"max_tokens":4,"max_completion_tokens":7}"#)
        #expect(r.generations[0].maxTokens == 7)
    }

    @Test func logprobsFields() throws {
        let r = try chat(#"{"messages":[{"role":"user","content":"A"}],"logprobs":true,"top_logprobs":3}"#)
        #expect(r.logprobs == 3)
        #expect(r.generations[0].sampling.topLogprobs == 3)
        let e = rejection { try chat(#"{"messages":[{"role":"user","content":"A"}],"top_logprobs":3}"#) }
        #expect(e?.param == "top_logprobs")
    }

    @Test func rejections() {
        #expect(rejection { try chat(#"{"messages":[]}"#) }?.param == "messages")
        #expect(rejection { try chat(#"{"messages":[{"role":"robot","content":"x"}]}"#) }?.param == "messages[0].role")
        #expect(rejection { try chat(#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#) }?.status == 400)
        #expect(rejection { try chat(#"{"model":"other","messages":[{"role":"user","content":"x"}]}"#) }?.status == 404)
        let e = rejection { try chat(#"{"messages":[{"role":"user","content":"x"}],"max_tokens":200}"#) }
        #expect(e?.code == "context_length_exceeded")
        #expect(e?.message.contains("200") == true)
    }
}

@Suite struct RouteTests {
    @Test func routesMethodsAndErrors() throws {
        #expect(try Route.resolve(method: "POST", uri: "/v1/completions?x=1") == .completions)
        #expect(try Route.resolve(method: "GET", uri: "/v1/models/") == .models)
        #expect(try Route.resolve(method: "GET", uri: "/v1/models/a%20b") == .model(id: "a b"))
        do {
            _ = try Route.resolve(method: "GET", uri: "/v1/completions")
            Issue.record("GET accepted")
        } catch let e as APIError {
            #expect(e.status == 405)
            #expect(e.headers.contains { $0.0 == "Allow" && $0.1 == "POST" })
        }
        // Stored completions and feedback.
        #expect(try Route.resolve(method: "GET", uri: "/v1/chat/completions?limit=3") == .chatCompletions)
        #expect(try Route.resolve(method: "DELETE", uri: "/v1/chat/completions/chatcmpl-1") == .storedCompletion(id: "chatcmpl-1"))
        #expect(
            try Route.resolve(method: "GET", uri: "/v1/chat/completions/chatcmpl-1/messages")
                == .storedCompletionMessages(id: "chatcmpl-1"))
        #expect(try Route.resolve(method: "POST", uri: "/v1/feedback") == .feedback)
        #expect(try Route.resolve(method: "GET", uri: "/v1/feedback/export?format=dpo") == .feedbackExport)
        #expect(try Route.resolve(method: "GET", uri: "/v1/feedback/fb-1") == .feedbackItem(id: "fb-1"))
        #expect(throws: APIError.self) { try Route.resolve(method: "GET", uri: "/v1/chat/completions/a/b") }
        #expect(throws: APIError.self) { try Route.resolve(method: "DELETE", uri: "/v1/feedback/fb-1") }
        do {
            _ = try Route.resolve(method: "GET", uri: "/nope")
            Issue.record("unknown route accepted")
        } catch let e as APIError {
            #expect(e.status == 404)
        }
    }

    @Test func browserHeadersAre403() {
        #expect(throws: APIError.forbiddenBrowser(header: "Origin")) {
            try Route.checkNotBrowser(headerNames: ["Host", "origin"])
        }
        #expect(throws: APIError.forbiddenBrowser(header: "Referer")) {
            try Route.checkNotBrowser(headerNames: ["Referer"])
        }
        #expect(throws: Never.self) { try Route.checkNotBrowser(headerNames: ["Host", "Content-Type"]) }
    }

    @Test func errorBodyHasOpenAIShape() throws {
        let e = APIError.unavailable("busy", retryAfter: 3, code: "server_busy")
        let parsed = try JSONSerialization.jsonObject(with: Data(e.body.serialized.utf8)) as? [String: Any]
        let err = try #require(parsed?["error"] as? [String: Any])
        #expect(err["message"] as? String == "busy")
        #expect(err["type"] as? String == "service_unavailable_error")
        #expect(err["code"] as? String == "server_busy")
        #expect(err["param"] is NSNull)
        #expect(e.status == 503)
        #expect(e.headers.contains { $0.0 == "Retry-After" && $0.1 == "3" })
    }
}

@Suite struct DefaultMaxTokensTests {
    /// FakeBackend's chat rendering of one user message "hi": BOS, 3, "user:hi" (7 tokens), 3 = 10 tokens.
    static let chatBody = #"{"messages":[{"role":"user","content":"hi"}]}"#

    @Test("without --default-max-tokens: 16 for completions, the rest of the context for chat")
    func apiDefaults() throws {
        let v = RequestValidator(backend: FakeBackend(), contextSize: 100)
        let c = try v.prepare(RequestValidator.decode(CompletionRequestBody.self, from: Array(#"{"prompt":"AB"}"#.utf8)))
        #expect(c.generations[0].maxTokens == 16)
        let chat = try v.prepare(RequestValidator.decode(ChatRequestBody.self, from: Array(Self.chatBody.utf8)))
        #expect(chat.generations[0].maxTokens == 100 - chat.generations[0].promptTokens.count)
    }

    @Test("--default-max-tokens applies to requests without max_tokens, cut to what the context leaves")
    func configuredDefault() throws {
        let v = RequestValidator(backend: FakeBackend(), contextSize: 100, defaultMaxTokens: 40)
        let c = try v.prepare(RequestValidator.decode(CompletionRequestBody.self, from: Array(#"{"prompt":"AB"}"#.utf8)))
        #expect(c.generations[0].maxTokens == 40)
        let chat = try v.prepare(RequestValidator.decode(ChatRequestBody.self, from: Array(Self.chatBody.utf8)))
        #expect(chat.generations[0].maxTokens == 40)
        // An explicit max_tokens wins (also above the default).
        let explicit = try v.prepare(
            RequestValidator.decode(CompletionRequestBody.self, from: Array(#"{"prompt":"AB","max_tokens":70}"#.utf8)))
        #expect(explicit.generations[0].maxTokens == 70)
        // A 90-token prompt leaves 10 tokens of the 100-token context: the default shrinks instead of failing.
        let long = String(repeating: "A", count: 89)
        let near = try v.prepare(
            RequestValidator.decode(CompletionRequestBody.self, from: Array("{\"prompt\":\"\(long)\"}".utf8)))
        #expect(near.generations[0].promptTokens.count == 90)
        #expect(near.generations[0].maxTokens == 10)
    }
}
