// /tokenize and /detokenize on the real model against llama.cpp's ids (../shared/reference/gemma-3-270m-q4_k_m/
// tokenize.jsonl: ids without BOS, parse_special true; BOS is id 2), and a completion prompt that starts with the
// BOS text served exactly like the same prompt without it.

import Foundation
import Testing

@Suite(.serialized) struct TokenizeIntegrationTests {
    struct Case: Decodable {
        let name: String
        let text: String
        let ids: [Int]
        let detokenized: String
    }

    static func cases() throws -> [Case] {
        let path = try Paths.referenceDir() + "/tokenize.jsonl"
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        return try data.split(separator: UInt8(ascii: "\n")).filter { !$0.isEmpty }.map {
            try JSONDecoder().decode(Case.self, from: Data($0))
        }
    }

    @Test func tokenizeAndDetokenizeMatchLlamaCpp() throws {
        let d = try LoradProcess(extra: ["--context-size", "512"])
        defer { d.stop() }
        let cases = try Self.cases()
        #expect(cases.count == 62)
        for c in cases {
            // llama.cpp's shape and defaults (add_special false, parse_special true): the reference ids.
            let t = try d.post("/tokenize", json: ["content": c.text])
            #expect(t.status == 200, "\(c.name): \(t.text)")
            #expect(try t.json()["tokens"] as? [Int] == c.ids, "\(c.name)")
            // With BOS: one BOS, also when the text itself starts with "<bos>".
            let withBOS = try d.post("/tokenize", json: ["content": c.text, "add_special": true]).json()["tokens"] as? [Int]
            #expect(withBOS == (c.ids.first == 2 ? c.ids : [2] + c.ids), "\(c.name)")
            let back = try d.post("/detokenize", json: ["tokens": c.ids])
            #expect(back.status == 200)
            #expect(try back.json()["content"] as? String == c.detokenized, "\(c.name)")
        }

        // vLLM's shapes.
        let hello = try #require(cases.first { $0.name == "prose_simple" })  // "Hello, world!"
        let v = try d.post("/tokenize", json: ["model": "gemma-3-270m-q4_k_m", "prompt": hello.text]).json()
        #expect(v["tokens"] as? [Int] == [2] + hello.ids)
        #expect(v["count"] as? Int == hello.ids.count + 1)
        #expect(v["max_model_len"] as? Int == 512)
        let vBack = try d.post("/detokenize", json: ["model": "gemma-3-270m-q4_k_m", "tokens": [2] + hello.ids]).json()
        #expect(vBack["prompt"] as? String == "<bos>" + hello.text)
        #expect(vBack["content"] == nil)
        // Messages: the ids a chat completion is served with (its usage counts them).
        let messages: [[String: Any]] = [["role": "user", "content": "Name a fruit."]]
        let chatTokens = try d.post("/tokenize", json: ["messages": messages]).json()
        let chat = try d.post("/v1/chat/completions", json: ["messages": messages, "max_tokens": 1]).json()
        let usage = try #require(chat["usage"] as? [String: Int])
        #expect(chatTokens["count"] as? Int == usage["prompt_tokens"])
        let chatIDs = try #require(chatTokens["tokens"] as? [Int])
        #expect(chatIDs.first == 2 && chatIDs.contains(105) && chatIDs.contains(106))  // <bos>, <start_of_turn>, <end_of_turn>
        let noGen = try d.post("/tokenize", json: ["messages": messages, "add_generation_prompt": false]).json()
        #expect((noGen["count"] as? Int ?? 0) < (chatTokens["count"] as? Int ?? 0))
        // Pieces concatenate to the text.
        let pieces = try #require(try d.post("/tokenize", json: ["content": hello.text, "with_pieces": true]).json()["tokens"] as? [[String: Any]])
        #expect(pieces.map { $0["id"] as? Int ?? -1 } == hello.ids)
        #expect(pieces.map { $0["piece"] as? String ?? "" }.joined() == hello.text)

        // Errors: the JSON error body.
        let range = try d.post("/detokenize", json: ["tokens": [5, 262_144]])
        #expect(range.status == 400)
        let e = try #require(try range.json()["error"] as? [String: Any])
        #expect(e["param"] as? String == "tokens" && (e["message"] as? String ?? "").contains("262144"))
        #expect(try d.post("/tokenize", rawBody: "{\"content\": ").status == 400)
        #expect(try d.post("/tokenize", json: ["prompt": 5]).status == 400)
        #expect(try d.post("/tokenize", json: ["model": "nope", "prompt": "x"]).status == 404)
        #expect(try d.get("/tokenize").status == 405)
    }

    @Test func promptStartingWithBOSIsServedWithOneBOS() throws {
        let d = try LoradProcess(extra: ["--context-size", "512"])
        let prompt = "The capital of France is"
        let plain = try completionIDs(d, prompt: prompt, maxTokens: 8)
        let ownBOS = try completionIDs(d, prompt: "<bos>" + prompt, maxTokens: 8)
        #expect(ownBOS.ids == plain.ids)
        let a = try #require(plain.json["usage"] as? [String: Int])
        let b = try #require(ownBOS.json["usage"] as? [String: Int])
        #expect(a["prompt_tokens"] == b["prompt_tokens"])
        // The same prompt as ids with two BOS is used as given (one token longer).
        let ids = try #require(try d.post("/tokenize", json: ["content": prompt, "add_special": true]).json()["tokens"] as? [Int])
        let twice = try completionIDs(d, prompt: [2] + ids, maxTokens: 1)
        #expect((twice.json["usage"] as? [String: Int])?["prompt_tokens"] == ids.count + 1)
        #expect(d.stop() == 0)
        #expect(d.stderrText().contains("no second BOS added"))
    }
}
