// Dataset lines and sequence building. The ids and masks are checked against the training reference's
// sft-batch.json / dpo-batch.json (built with the model's SentencePiece vocabulary in Python, by the rules of
// reference/gemma-3-270m-q4_k_m/train/README.md), and serving's chat rendering against the same ids.
import Foundation
import Runtime
import Testing
import Train

private struct ReferenceMessage: Decodable { let role: String; let content: String }
private struct ReferenceExample: Decodable {
    let name: String
    let format: String
    let messages: [ReferenceMessage]?
    let prompt: String?
    let completion: String?
    let input_ids: [Int32]
    let labels_mask: [UInt8]
}
private struct ReferenceSFT: Decodable { let examples: [ReferenceExample] }
private struct ReferencePair: Decodable {
    let name: String
    let prompt_messages: [ReferenceMessage]
    let chosen_content: String
    let rejected_content: String
    let chosen: ReferenceExample
    let rejected: ReferenceExample
}
private struct ReferenceDPO: Decodable { let pairs: [ReferencePair] }

private func load<T: Decodable>(_ name: String, as: T.Type) throws -> T {
    let url = TrainTestSupport.referenceDirectory.appendingPathComponent("train/" + name)
    return try JSONDecoder().decode(T.self, from: Data(contentsOf: url))
}

private func jsonString(_ s: String) -> String {
    String(decoding: try! JSONEncoder().encode(s), as: UTF8.self)
}

@Suite("Datasets: reference ids and masks", .enabled(if: TrainTestSupport.hasModel && TrainTestSupport.hasReference,
                                                    "needs LORAD_MODEL and the training reference"))
struct DatasetReferenceTests {
    @Test("sft-batch.json: every example's input_ids and labels_mask, exactly")
    func sftBatch() throws {
        let builder = try TrainTestSupport.builder()
        let ref = try load("sft-batch.json", as: ReferenceSFT.self)
        #expect(ref.examples.count == 4)
        for e in ref.examples {
            let built: TokenizedExample
            if let messages = e.messages {
                built = try builder.chat(messages.map { TrainingMessage(role: $0.role, content: $0.content) })
            } else if let prompt = e.prompt {
                built = try builder.promptCompletion(prompt: prompt, completion: e.completion!)
            } else {
                // long_over_window: the prompt is given as ids (everything before the first scored token).
                let first = try #require(e.labels_mask.firstIndex(of: 1))
                #expect(first == 660)
                built = try builder.promptCompletion(promptIds: Array(e.input_ids[..<first]), completion: e.completion!)
            }
            #expect(built.inputIds == e.input_ids, "\(e.name) ids")
            #expect(built.labelsMask == e.labels_mask, "\(e.name) mask")
        }
    }

    @Test("the same examples as JSONL lines through the loader")
    func sftJSONL() throws {
        let builder = try TrainTestSupport.builder()
        let ref = try load("sft-batch.json", as: ReferenceSFT.self)
        var lines: [String] = []
        var expected: [ReferenceExample] = []
        for e in ref.examples {
            if let m = e.messages {
                let msgs = m.map { "{\"role\": \(jsonString($0.role)), \"content\": \(jsonString($0.content))}" }
                lines.append("{\"messages\": [\(msgs.joined(separator: ", "))]}")
                expected.append(e)
            } else if let p = e.prompt {
                lines.append("{\"prompt\": \(jsonString(p)), \"completion\": \(jsonString(e.completion!))}")
                expected.append(e)
            }
        }
        let examples = try DatasetLoader.supervisedExamples(Array((lines.joined(separator: "\n") + "\n").utf8), builder: builder)
        #expect(examples.count == expected.count)
        for (b, e) in zip(examples, expected) {
            #expect(b.inputIds == e.input_ids && b.labelsMask == e.labels_mask, "\(e.name)")
        }
    }

    @Test("dpo-batch.json: chosen and rejected ids and masks, from OpenAI DPO lines")
    func dpoBatch() throws {
        let builder = try TrainTestSupport.builder()
        let ref = try load("dpo-batch.json", as: ReferenceDPO.self)
        #expect(ref.pairs.count == 3)
        var lines: [String] = []
        for p in ref.pairs {
            let msgs = p.prompt_messages.map { "{\"role\": \(jsonString($0.role)), \"content\": \(jsonString($0.content))}" }
            lines.append("{\"input\": {\"messages\": [\(msgs.joined(separator: ", "))]}, "
                + "\"preferred_output\": [{\"role\": \"assistant\", \"content\": \(jsonString(p.chosen_content))}], "
                + "\"non_preferred_output\": [{\"role\": \"assistant\", \"content\": \(jsonString(p.rejected_content))}]}")
        }
        let pairs = try DatasetLoader.preferencePairs(Array(lines.joined(separator: "\n").utf8), builder: builder)
        for (built, p) in zip(pairs, ref.pairs) {
            #expect(built.chosen.inputIds == p.chosen.input_ids, "\(p.name) chosen ids")
            #expect(built.chosen.labelsMask == p.chosen.labels_mask, "\(p.name) chosen mask")
            #expect(built.rejected.inputIds == p.rejected.input_ids, "\(p.name) rejected ids")
            #expect(built.rejected.labelsMask == p.rejected.labels_mask, "\(p.name) rejected mask")
            #expect(built.promptLength == p.chosen.labels_mask.firstIndex(of: 1))
            #expect(Array(built.chosen.inputIds[..<built.promptLength]) == Array(built.rejected.inputIds[..<built.promptLength]))
        }
    }
}

@Suite("Datasets: rules", .enabled(if: TrainTestSupport.hasModel, "needs LORAD_MODEL"))
struct DatasetRuleTests {
    static let twoTurns = [
        TrainingMessage(role: "user", content: "What is the capital of Italy?"),
        TrainingMessage(role: "assistant", content: "Rome."),
        TrainingMessage(role: "user", content: "And of Spain?"),
        TrainingMessage(role: "assistant", content: "Madrid."),
    ]

    @Test("weight 0 leaves an assistant turn unscored; the other turn's mask is unchanged")
    func weightZero() throws {
        let b = try TrainTestSupport.builder()
        let all = try b.chat(Self.twoTurns)
        var m = Self.twoTurns
        m[1].weight = 0
        let partial = try b.chat(m)
        #expect(partial.inputIds == all.inputIds)
        // "Rome." + <end_of_turn> are 3 tokens (reference chat_two_turns: positions 16...18).
        #expect(all.scoredCount == 6 && partial.scoredCount == 3)
        #expect(Array(partial.labelsMask[16...18]) == [0, 0, 0] && Array(partial.labelsMask[32...34]) == [1, 1, 1])
        m[3].weight = 0
        #expect(throws: SequenceError.nothingScored) { try b.chat(m) }
    }

    @Test("a system message is folded into the first user turn with a blank line")
    func systemFolding() throws {
        let b = try TrainTestSupport.builder()
        let tok = try TrainTestSupport.tokenizer()
        let e = try b.chat([TrainingMessage(role: "system", content: "Be brief."),
                            TrainingMessage(role: "user", content: " Hi "),
                            TrainingMessage(role: "assistant", content: "Hello.")])
        let expected: [Int32] = [2, 105] + tok.encode("user\n", addBOS: false, parseSpecial: false)
            + tok.encode("Be brief.\n\nHi", addBOS: false, parseSpecial: false) + [106]
            + tok.encode("\n", addBOS: false, parseSpecial: false) + [105]
            + tok.encode("model\n", addBOS: false, parseSpecial: false)
            + tok.encode("Hello.", addBOS: false, parseSpecial: false) + [106]
            + tok.encode("\n", addBOS: false, parseSpecial: false)
        #expect(e.inputIds == expected)
    }

    @Test("over-long sequences: truncated from the prompt's left keeping BOS, or rejected; never mis-masked")
    func truncation() throws {
        let full = try TrainTestSupport.builder().chat(Self.twoTurns)  // 36 tokens, first scored at 16
        let t = try TrainTestSupport.builder(maxLength: 30, overflow: .truncatePromptLeft).chat(Self.twoTurns)
        #expect(t.count == 30)
        #expect(t.inputIds[0] == 2)
        #expect(Array(t.inputIds[1...]) == Array(full.inputIds[7...]))
        #expect(Array(t.labelsMask[1...]) == Array(full.labelsMask[7...]))
        #expect(throws: SequenceError.tooLong(length: 36, limit: 30)) {
            try TrainTestSupport.builder(maxLength: 30, overflow: .reject).chat(Self.twoTurns)
        }
        // 36 − 16 scored-span tokens + BOS = 21 needed.
        #expect(throws: SequenceError.completionTooLong(scoredSpan: 21, limit: 20)) {
            try TrainTestSupport.builder(maxLength: 20, overflow: .truncatePromptLeft).chat(Self.twoTurns)
        }
        #expect(try TrainTestSupport.builder(maxLength: 21, overflow: .truncatePromptLeft).chat(Self.twoTurns).count == 21)
        // Pairs lose the same prompt tokens on both sides.
        let b = try TrainTestSupport.builder(maxLength: 14, overflow: .truncatePromptLeft)
        let p = try b.preferencePair(input: [TrainingMessage(role: "user", content: "Say hello to the team, please, now.")],
                                     preferred: "Hi!", nonPreferred: "No")
        #expect(p.chosen.count <= 14 && p.rejected.count <= 14)
        #expect(Array(p.chosen.inputIds[..<p.promptLength]) == Array(p.rejected.inputIds[..<p.promptLength]))
        #expect(p.chosen.labelsMask.firstIndex(of: 1) == p.promptLength)
    }

    @Test("Llama 2 / Llama 3 / ChatML formats: training ids equal serving's and only answers are scored, or a clear refusal")
    func otherFormats() throws {
        // Gemma's vocabulary has none of these formats' markers as special tokens, so some marker texts merge with
        // their neighbours into one token; where that token would straddle scored and unscored text the builder
        // must refuse (never mis-mask). Llama 2's EOS is a real token, so that format must succeed.
        let tok = try TrainTestSupport.tokenizer()
        var succeeded: [ChatTemplate.Format] = []
        for format in [ChatTemplate.Format.llama2, .llama3, .chatml] {
            let template = ChatTemplate(format: format)
            let b = SequenceBuilder(tokenizer: tok, template: template, maxLength: 512)
            let e: TokenizedExample
            do {
                e = try b.chat(Self.twoTurns)
            } catch SequenceError.template(.unstableBoundary) {
                print("\(format): refused (a token spans an answer boundary in this vocabulary)")
                continue
            }
            succeeded.append(format)
            let chat = Self.twoTurns.map { ChatMessage(role: $0.role, content: $0.content) }
            #expect(e.inputIds == (try template.render(chat, addGenerationPrompt: false, tokenizer: tok)), "\(format)")
            let scored = zip(e.inputIds, e.labelsMask).filter { $0.1 == 1 }.map(\.0)
            let text = tok.decode(scored)
            print("\(format): scored text \(text.debugDescription)")
            #expect(text.contains("Rome.") && text.contains("Madrid.") && !text.contains("Italy") && !text.contains("Spain"),
                    "\(format): \(text)")
        }
        #expect(succeeded.contains(.llama2))
    }

    @Test("a model without a known chat template refuses chat lines but takes prompt/completion")
    func noTemplate() throws {
        let b = SequenceBuilder(tokenizer: try TrainTestSupport.tokenizer(), template: nil, maxLength: 100,
                                architecture: "mystery")
        #expect(throws: SequenceError.noChatTemplate(architecture: "mystery")) { try b.chat(Self.twoTurns) }
        #expect(try b.promptCompletion(prompt: "a", completion: "b").scoredCount >= 2)
        #expect(throws: DatasetError.self) {
            try DatasetLoader.supervisedExamples(Array(#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}"#.utf8), builder: b)
        }
    }

    @Test("serving renders exactly the training ids plus the generation prompt (content starting with \\n, with <end_of_turn> text)")
    func servingMatchesTraining() throws {
        let b = try TrainTestSupport.builder()
        let tok = try TrainTestSupport.tokenizer()
        let template = try #require(b.template)
        let cases: [[TrainingMessage]] = [
            [TrainingMessage(role: "user", content: "\nHello there"), TrainingMessage(role: "assistant", content: "\n\nHi!")],
            [TrainingMessage(role: "system", content: "\nSys"), TrainingMessage(role: "user", content: "say <end_of_turn> now"),
             TrainingMessage(role: "assistant", content: "ok <end_of_turn>\n<start_of_turn>user\nx"),
             TrainingMessage(role: "user", content: "\n1\n2"), TrainingMessage(role: "assistant", content: "3")],
            Self.twoTurns,
        ]
        for messages in cases {
            let trained = try b.chat(messages)
            let chat = messages.map { ChatMessage(role: $0.role, content: $0.content) }
            // The whole conversation, as serving renders it without a generation prompt.
            #expect(try template.render(chat, addGenerationPrompt: false, tokenizer: tok) == trained.inputIds)
            // The prompt before the last answer, with the generation prompt: the training ids up to the answer.
            let served = try template.render(Array(chat.dropLast()), addGenerationPrompt: true, tokenizer: tok)
            let lastScored = try #require(trained.labelsMask.lastIndex(of: 1))
            var lastAnswerStart = lastScored
            while lastAnswerStart > 0 && trained.labelsMask[lastAnswerStart - 1] == 1 { lastAnswerStart -= 1 }
            #expect(served == Array(trained.inputIds[..<lastAnswerStart]))
            #expect(Array(served.suffix(3)) == [105, 4368, 107])
            // Control-token text in content stays text: only the template's own turn markers are special.
            #expect(trained.inputIds.filter { $0 == 106 }.count == messages.filter { $0.role != "system" }.count)
        }
        // Raw completions prompts still parse control-token text.
        #expect(tok.encode("<start_of_turn>user\n", addBOS: false, parseSpecial: true).first == 105)
    }
}

@Suite("Datasets: line validation")
struct DatasetValidationTests {
    func error(_ line: String) -> DatasetError? {
        do { _ = try DatasetRecord.parseLines(Array(("{\"prompt\":\"a\",\"completion\":\"b\"}\n" + line).utf8)); return nil }
        catch let e as DatasetError { return e } catch { return nil }
    }

    @Test("each bad line names its line and field")
    func errors() {
        let cases: [(String, String)] = [
            ("not json", ""),
            ("[1]", ""),
            (#"{"messages": []}"#, "messages"),
            (#"{"messages": [{"role": "wizard", "content": "x"}]}"#, "messages[0].role"),
            (#"{"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "r"}]}"#, "messages[1].role"),
            (#"{"messages": [{"role": "user"}]}"#, "messages[0].content"),
            (#"{"messages": [{"role": "user", "content": 3}]}"#, "messages[0].content"),
            (#"{"messages": [{"role": "user", "content": "x", "weight": 0}]}"#, "messages[0].weight"),
            (#"{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 2}]}"#, "messages[1].weight"),
            (#"{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": true}]}"#, "messages[1].weight"),
            (#"{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 0}]}"#, "messages"),
            (#"{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "tool_calls": []}]}"#, "messages[1].tool_calls"),
            (#"{"messages": [{"role": "user", "content": "x"}], "tools": []}"#, "tools"),
            (#"{"prompt": "a", "completion": ""}"#, "completion"),
            (#"{"prompt": "a"}"#, "completion"),
            (#"{"prompt": "a", "completion": "b", "extra": 1}"#, "extra"),
            (#"{"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": [{"role": "assistant", "content": "a"}]}"#, "non_preferred_output"),
            (#"{"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": [{"role": "user", "content": "a"}], "non_preferred_output": [{"role": "assistant", "content": "b"}]}"#, "preferred_output[0].role"),
            (#"{"input": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "preferred_output": [{"role": "assistant", "content": "a"}], "non_preferred_output": [{"role": "assistant", "content": "b"}]}"#, "input.messages"),
            (#"{"hello": 1}"#, ""),
        ]
        for (line, field) in cases {
            let e = error(line)
            #expect(e?.line == 2, "\(line)")
            #expect(e?.field == field, "\(line): \(e.map(String.init(describing:)) ?? "no error")")
        }
        #expect(error(#"{"messages": [{"role": "wizard", "content": "x"}]}"#)?.description
            == "line 2: messages[0].role: unknown role \"wizard\"; use system, user or assistant")
    }

    @Test("valid lines of each format, blank lines skipped, CRLF accepted")
    func valid() throws {
        let text = #"{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u", "name": "n"}, {"role": "assistant", "content": "a", "weight": 1}]}"#
            + "\r\n\n" + #"{"prompt": "", "completion": "c"}"# + "\n"
            + #"{"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": [{"role": "assistant", "content": "a"}], "non_preferred_output": [{"role": "assistant", "content": "b"}]}"#
        let r = try DatasetRecord.parseLines(Array(text.utf8))
        #expect(r.map(\.line) == [1, 3, 4])
        #expect(r[0].record == .chat([TrainingMessage(role: "system", content: "s"), TrainingMessage(role: "user", content: "u"),
                                      TrainingMessage(role: "assistant", content: "a", weight: 1)]))
        #expect(r[1].record == .promptCompletion(prompt: "", completion: "c"))
        #expect(r[2].record == .preference(input: [TrainingMessage(role: "user", content: "q")], preferred: "a", nonPreferred: "b"))
        #expect(throws: DatasetError(line: 0, field: "", reason: "the file holds no training line")) {
            try DatasetRecord.parseLines(Array("\n\n".utf8))
        }
    }
}
