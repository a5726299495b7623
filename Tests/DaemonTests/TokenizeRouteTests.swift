// POST /tokenize and /detokenize in both body shapes (llama.cpp's and vLLM's), and the BOS rule for raw prompts,
// on FakeBackend: its ids are written out by hand from its documented mapping (a character c is c % 60 + 4,
// BOS = 2, "<bos>" at the start parsed as BOS; token id t renders as the letter 97 + t % 26).

import Daemon
import Foundation
import Runtime
import Testing

private let validator = RequestValidator(backend: FakeBackend(), contextSize: 100)

private func tokenize(_ json: String) throws -> TokenizeResult {
    try validator.tokenize(RequestValidator.decode(TokenizeRequestBody.self, from: Array(json.utf8)))
}

private func detokenize(_ json: String) throws -> JSONValue {
    try validator.detokenize(RequestValidator.decode(DetokenizeRequestBody.self, from: Array(json.utf8)))
}

private func completion(_ json: String) throws -> PreparedRequest {
    try validator.prepare(RequestValidator.decode(CompletionRequestBody.self, from: Array(json.utf8)))
}

/// The APIError `body` throws (fails the test if it returns).
private func rejection<T>(_ body: () throws -> T) -> APIError? {
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

private func ids(_ values: [Int]) -> JSONValue { .array(values.map { .int($0) }) }

@Suite struct TokenizeRouteTests {
    @Test func routesResolve() throws {
        #expect(try Route.resolve(method: "POST", uri: "/tokenize") == .tokenize)
        #expect(try Route.resolve(method: "POST", uri: "/detokenize/") == .detokenize)
        #expect(rejection { try Route.resolve(method: "GET", uri: "/tokenize") }?.status == 405)
    }

    @Test func llamaCppShape() throws {
        // 'A' = 65 -> 9, 'B' -> 10; add_special defaults to false.
        #expect(try tokenize(#"{"content":"AB"}"#).body == .object([("tokens", ids([9, 10]))]))
        #expect(try tokenize(#"{"content":"AB","add_special":true}"#).body == .object([("tokens", ids([2, 9, 10]))]))
        let pieces = try tokenize(#"{"content":"AB","with_pieces":true}"#).body
        #expect(pieces == .object([("tokens", .array([
            .object([("id", .int(9)), ("piece", .string("j"))]), .object([("id", .int(10)), ("piece", .string("k"))]),
        ]))]))
        #expect(try tokenize(#"{"content":""}"#).body == .object([("tokens", .array([]))]))
    }

    @Test func vllmShape() throws {
        let p = try tokenize(#"{"model":"fake-model","prompt":"AB"}"#)
        #expect(p.body == .object([("count", .int(3)), ("max_model_len", .int(100)), ("tokens", ids([2, 9, 10]))]))
        let plain = try tokenize(#"{"prompt":"AB","add_special_tokens":false}"#)
        #expect(plain.body == .object([("count", .int(2)), ("max_model_len", .int(100)), ("tokens", ids([9, 10]))]))
        // Messages: exactly the prompt a chat completion would get (FakeBackend: BOS, [3] role:content ..., [3]).
        let chat = try tokenize(#"{"model":"fake-model","messages":[{"role":"user","content":"A"}]}"#)
        let expected = try FakeBackend().renderChat([ChatTurn(role: "user", content: "A")])
        #expect(chat.tokens == expected)
        #expect(chat.body == .object([("count", .int(expected.count)), ("max_model_len", .int(100)),
                                      ("tokens", ids(expected.map(Int.init)))]))
        // FakeBackend cannot leave the generation prompt out: refused with the field named.
        let noGen = rejection { try tokenize(#"{"messages":[{"role":"user","content":"A"}],"add_generation_prompt":false}"#) }
        #expect(noGen?.status == 400 && noGen?.param == "add_generation_prompt")
    }

    @Test func detokenizeShapes() throws {
        #expect(try detokenize(#"{"tokens":[9,10]}"#) == .object([("content", .string("jk"))]))
        #expect(try detokenize(#"{"model":"fake-model","tokens":[9,10]}"#) == .object([("prompt", .string("jk"))]))
        #expect(try detokenize(#"{"tokens":[]}"#) == .object([("content", .string(""))]))
    }

    @Test func promptStartingWithBOSGetsNoSecondBOS() throws {
        let own = try tokenize(#"{"content":"<bos>AB","add_special":true}"#)
        #expect(own.tokens == [2, 9, 10] && own.bosFromText)
        let vllm = try tokenize(#"{"prompt":"<bos>AB"}"#)
        #expect(vllm.tokens == [2, 9, 10] && vllm.bosFromText)
        let notAsked = try tokenize(#"{"content":"<bos>AB"}"#)
        #expect(notAsked.tokens == [2, 9, 10] && !notAsked.bosFromText)
        let normal = try tokenize(#"{"content":"AB","add_special":true}"#)
        #expect(!normal.bosFromText)
        // Completions: the same rule, and the request says which prompts brought their own BOS.
        let one = try completion(#"{"prompt":"<bos>AB"}"#)
        #expect(one.generations.map(\.promptTokens) == [[2, 9, 10]])
        #expect(one.promptsWithOwnBOS == [0])
        let two = try completion(#"{"prompt":["AB","<bos>B"]}"#)
        #expect(two.generations.map(\.promptTokens) == [[2, 9, 10], [2, 10]])
        #expect(two.promptsWithOwnBOS == [1])
        // Token-id prompts are used exactly, two BOS included.
        #expect(try completion(#"{"prompt":[2,2,9]}"#).generations.map(\.promptTokens) == [[2, 2, 9]])
    }

    @Test func badBodiesAre400() throws {
        let range = rejection { try detokenize(#"{"tokens":[9,64]}"#) }
        #expect(range?.status == 400 && range?.param == "tokens")
        #expect(range?.message.contains("64") == true && range?.message.contains("tokens[1]") == true)
        #expect(rejection { try detokenize(#"{"tokens":[-1]}"#) }?.status == 400)
        let wrongType = rejection { try detokenize(#"{"tokens":"9 10"}"#) }
        #expect(wrongType?.status == 400 && wrongType?.param == "tokens" && wrongType?.code == "invalid_type")
        let missing = rejection { try detokenize(#"{"model":"fake-model"}"#) }
        #expect(missing?.status == 400 && missing?.code == "missing_required_parameter")
        #expect(rejection { try tokenize(#"{"content":5}"#) }?.code == "invalid_type")
        #expect(rejection { try tokenize(#"{"content":"A","prompt":"B"}"#) }?.param == "content")
        #expect(rejection { try tokenize(#"{"prompt":"A","messages":[{"role":"user","content":"B"}]}"#) }?.status == 400)
        let none = rejection { try tokenize(#"{"add_special":true}"#) }
        #expect(none?.status == 400 && none?.code == "missing_required_parameter")
        #expect(rejection { try tokenize(#"{"messages":[]}"#) }?.param == "messages")
        #expect(rejection { try tokenize(#"{"messages":[{"role":"tool","content":"x"}]}"#) }?.param == "messages[0].role")
        #expect(rejection { try tokenize("[1,2]") }?.status == 400)
        #expect(rejection { try tokenize("") }?.code == "invalid_json")
        let model = rejection { try tokenize(#"{"model":"nope","prompt":"A"}"#) }
        #expect(model?.status == 404 && model?.code == "model_not_found")
        #expect(rejection { try detokenize(#"{"model":"nope","tokens":[1]}"#) }?.status == 404)
    }
}
