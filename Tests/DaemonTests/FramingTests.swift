// SSE framing, JSON serialization (checked by parsing with Foundation's JSONSerialization, an independent
// parser) and the OpenAI response shapes.

import Daemon
import Foundation
import Runtime
import Testing

private func parse(_ s: String) throws -> Any {
    try JSONSerialization.jsonObject(with: Data(s.utf8), options: [.fragmentsAllowed])
}

@Suite struct SSEFramingTests {
    @Test func eventIsOneDataLineAndBlankLine() throws {
        let json = JSONValue.object([("text", .string("a\nb")), ("n", .int(3))])
        let e = SSE.event(json)
        #expect(e.hasPrefix("data: "))
        #expect(e.hasSuffix("\n\n"))
        #expect(e.dropLast(2).contains("\n") == false)
        let payload = String(e.dropFirst(6).dropLast(2))
        let obj = try #require(try parse(payload) as? [String: Any])
        #expect(obj["text"] as? String == "a\nb")
        #expect(SSE.done == "data: [DONE]\n\n")
    }

    @Test func parserSplitsEvents() {
        let stream = SSE.event(.int(1)) + ": comment\n\n" + SSE.event(.string("x")) + "data: a\r\ndata: b\r\n\r\n" + SSE.done
        #expect(SSE.parse(stream) == ["1", "\"x\"", "a\nb", "[DONE]"])
    }
}

@Suite struct JSONValueTests {
    @Test func escapingRoundTrips() throws {
        let tricky = "quote\" backslash\\ tab\t ctrl\u{01} del\u{7F} ls\u{2028} emoji 🙂 é"
        let s = JSONValue.object([("k", .string(tricky)), ("a", .array([.null, .bool(true), .double(0.25), .int(-7)]))]).serialized
        let obj = try #require(try parse(s) as? [String: Any])
        #expect(obj["k"] as? String == tricky)
        let a = try #require(obj["a"] as? [Any])
        #expect(a[0] is NSNull)
        #expect(a[1] as? Bool == true)
        #expect(a[2] as? Double == 0.25)
        #expect(a[3] as? Int == -7)
    }

    @Test func nonFiniteBecomesNull() throws {
        #expect(JSONValue.number(-Float.infinity).serialized == "null")
        #expect(JSONValue.double(.nan).serialized == "null")
        #expect(try parse(JSONValue.double(1e-7).serialized) as? Double == 1e-7)
        #expect(try parse(JSONValue.double(2).serialized) as? Double == 2)
    }
}

@Suite struct ResponseShapeTests {
    let renderer = ResponseRenderer(
        kind: .completion, model: "m", logprobs: 1, tokensAsIDs: true, id: "cmpl-1", created: 5,
        tokenBytes: { Array(FakeBackend.text(of: $0).utf8) })

    @Test func completionResponseWithLegacyLogprobs() throws {
        var c = ChoiceResult()
        c.add(.token(GeneratedToken(id: 7, text: "h", logprob: -0.5, topLogprobs: [TokenLogprob(id: 7, logprob: -0.5)])))
        c.add(.token(GeneratedToken(id: 8, text: "i", logprob: -1.5, topLogprobs: [TokenLogprob(id: 9, logprob: -0.25)])))
        c.add(.finished(GenerationSummary(reason: .length, trailingText: "", promptTokens: 3, completionTokens: 2)))
        let obj = try #require(try parse(renderer.response([c]).serialized) as? [String: Any])
        #expect(obj["object"] as? String == "text_completion")
        #expect(obj["id"] as? String == "cmpl-1")
        let choice = try #require((obj["choices"] as? [[String: Any]])?.first)
        #expect(choice["text"] as? String == "hi")
        #expect(choice["finish_reason"] as? String == "length")
        let lp = try #require(choice["logprobs"] as? [String: Any])
        #expect(lp["tokens"] as? [String] == ["token_id:7", "token_id:8"])
        #expect(lp["token_logprobs"] as? [Double] == [-0.5, -1.5])
        #expect(lp["text_offset"] as? [Int] == [0, 1])
        #expect((lp["top_logprobs"] as? [[String: Double]])?[1] == ["token_id:9": -0.25])
        let usage = try #require(obj["usage"] as? [String: Int])
        #expect(usage == ["prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5])
    }

    @Test func chatChunksAndUsage() throws {
        let chat = ResponseRenderer(
            kind: .chat, model: "m", logprobs: 1, tokensAsIDs: false, id: "chatcmpl-1", created: 5,
            tokenBytes: { Array(FakeBackend.text(of: $0).utf8) })
        let first = try #require(
            try parse(chat.chunk(index: 0, text: "", tokens: [], offsetStart: 0, finishReason: nil, role: true).serialized)
                as? [String: Any])
        #expect(first["object"] as? String == "chat.completion.chunk")
        let delta = try #require(((first["choices"] as? [[String: Any]])?.first)?["delta"] as? [String: Any])
        #expect(delta["role"] as? String == "assistant")
        let t = GeneratedToken(id: 8, text: "i", logprob: -1, topLogprobs: [TokenLogprob(id: 8, logprob: -1)])
        let mid = try #require(
            try parse(chat.chunk(index: 0, text: "i", tokens: [t], offsetStart: 0, finishReason: nil).serialized)
                as? [String: Any])
        let choice = try #require((mid["choices"] as? [[String: Any]])?.first)
        #expect((choice["delta"] as? [String: Any])?["content"] as? String == "i")
        #expect(choice["finish_reason"] is NSNull)
        let content = try #require(((choice["logprobs"] as? [String: Any])?["content"]) as? [[String: Any]])
        #expect(content[0]["token"] as? String == "i")
        #expect(content[0]["bytes"] as? [Int] == [105])
        let usage = try #require(try parse(chat.usageChunk(prompt: 4, completion: 6).serialized) as? [String: Any])
        #expect((usage["choices"] as? [Any])?.isEmpty == true)
        #expect((usage["usage"] as? [String: Int])?["total_tokens"] == 10)
    }
}
