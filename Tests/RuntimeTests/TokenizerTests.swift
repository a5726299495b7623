// Tokenizer tests against llama.cpp's reference outputs for Gemma 3 270M (tokenize.jsonl, greedy.jsonl; see
// ../shared/reference/gemma-3-270m-q4_k_m/README.md), plus hand-derived cases on tiny vocabularies built with
// GGUFWriter.

import Foundation
import Runtime
import Testing

@Suite("Tokenizer: llama.cpp reference (Gemma 3 270M)")
struct TokenizerReferenceTests {
    typealias Case = TokenizerTestSupport.TokenizeCase

    @Test("tokenize.jsonl holds the 62 reference cases")
    func referenceFileIsPresent() throws {
        let cases = try TokenizerTestSupport.readJSONLines("tokenize.jsonl", as: Case.self)
        #expect(cases.count == 62)
        #expect(TokenizerTestSupport.tokenizeCases.count == 62)
    }

    @Test("encode with parseSpecial matches llama_tokenize(parse_special: true)", arguments: TokenizerTestSupport.tokenizeCases)
    func encodeParseSpecial(_ c: Case) throws {
        let tok = try TokenizerTestSupport.tokenizer()
        #expect(tok.encode(c.text, addBOS: false, parseSpecial: true) == c.ids)
        // llama.cpp would give [2, 2, ...] for a text starting with "<bos>"; lorad adds no second BOS.
        #expect(tok.encode(c.text, addBOS: true, parseSpecial: true) == (c.ids.first == 2 ? c.ids : [2] + c.ids))
    }

    @Test("encode without parseSpecial matches llama_tokenize(parse_special: false)", arguments: TokenizerTestSupport.tokenizeCases)
    func encodePlain(_ c: Case) throws {
        let tok = try TokenizerTestSupport.tokenizer()
        #expect(tok.encode(c.text, addBOS: false, parseSpecial: false) == (c.ids_parse_special_false ?? c.ids))
    }

    @Test("decode matches llama_detokenize(unparse_special: true)", arguments: TokenizerTestSupport.tokenizeCases)
    func decode(_ c: Case) throws {
        let tok = try TokenizerTestSupport.tokenizer()
        #expect(tok.decode(c.ids) == c.detokenized)
        if let ids = c.ids_parse_special_false, let text = c.detokenized_parse_special_false {
            #expect(tok.decode(ids) == text)
        }
    }

    @Test("streaming token by token equals the full decode", arguments: TokenizerTestSupport.tokenizeCases)
    func streaming(_ c: Case) throws {
        let tok = try TokenizerTestSupport.tokenizer()
        for renderSpecial in [true, false] {
            var stream = StreamingDetokenizer(tokenizer: tok, renderSpecial: renderSpecial)
            var text = ""
            for id in c.ids {
                let piece = stream.push(id)
                #expect(!piece.unicodeScalars.contains("\u{FFFD}"), "emitted a replacement character")
                text += piece
            }
            text += stream.finish()
            #expect(text == tok.decode(c.ids, renderSpecial: renderSpecial))
            if renderSpecial { #expect(text == c.detokenized) }
        }
    }

    @Test("greedy.jsonl prompt_ids: BOS + encode with parseSpecial")
    func greedyPromptIDs() throws {
        let tok = try TokenizerTestSupport.tokenizer()
        let records = try TokenizerTestSupport.readJSONLines("greedy.jsonl", as: TokenizerTestSupport.GreedyRecord.self)
        #expect(records.count == 12)
        for r in records {
            #expect(tok.encode(r.prompt, addBOS: tok.addBOS, parseSpecial: true) == r.prompt_ids, "\(r.name)")
        }
    }

    @Test("metadata facts from the reference README")
    func specialTokens() throws {
        let tok = try TokenizerTestSupport.tokenizer()
        #expect(tok.vocabSize == 262_144)
        #expect(tok.bosID == 2)
        #expect(tok.eosID == 1)
        #expect(tok.addBOS)
        #expect(!tok.addSpacePrefix)
        #expect(tok.tokenText(105) == "<start_of_turn>")
        #expect(tok.tokenText(106) == "<end_of_turn>")
        #expect(tok.tokenText(255_999) == "<start_of_image>")
        #expect(tok.tokenText(-1) == "" && tok.tokenText(262_144) == "")
        // README: llama-tokenize "Hello, world!" gives [2, 9259, 236764, 1902, 236888].
        #expect(tok.encode("Hello, world!", addBOS: true, parseSpecial: true) == [2, 9259, 236764, 1902, 236888])
    }

    @Test("end of generation: EOS, <end_of_turn> and </s> as in llama.cpp")
    func endOfGeneration() throws {
        let tok = try TokenizerTestSupport.tokenizer()
        #expect(tok.isEndOfGeneration(1))  // <eos>
        #expect(tok.isEndOfGeneration(106))  // <end_of_turn>
        #expect(tok.isEndOfGeneration(212))  // </s>: llama.cpp's EOG text list
        #expect(tok.eotID == 106)
        for id: Int32 in [0, 2, 3, 105, 107, 9259, 255_999, -1, 262_144] { #expect(!tok.isEndOfGeneration(id)) }
        #expect(tok.endOfGenerationIDs == [1, 106, 212])
    }

    @Test("</s> is a control token: parsed only with parseSpecial, hidden without renderSpecial")
    func closingSTag() throws {
        let tok = try TokenizerTestSupport.tokenizer()
        #expect(tok.tokenText(212) == "</s>")
        #expect(tok.encode("a</s>b", addBOS: false, parseSpecial: true).contains(212))
        // Plain text: by hand from the vocabulary, SentencePiece-style merging of "<", "/", "s", ">" can only form
        // "</" (954): neither "/s", "s>" nor "</s" exist. So: "</" "s" ">".
        #expect(tok.encode("</s>", addBOS: false, parseSpecial: false) == [954, 236_751, 236_813])
        #expect(tok.decode([212]) == "</s>")
        #expect(tok.decode([212], renderSpecial: false) == "")
    }

    @Test("decode: byte tokens, special rendering, out-of-range ids")
    func decodeDetails() throws {
        let tok = try TokenizerTestSupport.tokenizer()
        // README: <0x00>...<0xFF> are ids 238...493.
        #expect(tok.tokenBytes(238 + 0x41) == [0x41])
        #expect(tok.tokenBytes(238 + 0xF0) == [0xF0])
        #expect(tok.decode([238 + 0xF0, 238 + 0x9F, 238 + 0x8D, 238 + 0x95]) == "🍕")
        #expect(tok.decode([238 + 0xFF]) == "\u{FFFD}")
        #expect(tok.decode([2, 9259]) == "<bos>Hello")
        #expect(tok.decode([2, 9259], renderSpecial: false) == "Hello")
        #expect(tok.decode([-5, 9259, 1 << 30]) == "Hello")
        #expect(tok.tokenBytes(-1) == [] && tok.tokenBytes(262_144) == [])
        #expect(tok.tokenBytes(138) == Array("  ".utf8))  // user-defined space run renders its real spaces
    }

    @Test("<start_of_image> is user-defined: matched with or without parseSpecial")
    func userDefinedAlwaysMatched() throws {
        let tok = try TokenizerTestSupport.tokenizer()
        for parse in [true, false] {
            #expect(tok.encode("x<start_of_image>y", addBOS: false, parseSpecial: parse).contains(255_999))
            #expect(!tok.encode("x<start_of_turn>y", addBOS: false, parseSpecial: false).contains(105))
        }
    }

    @Test("segments: content never parses special, the joined text tokenizes as a whole")
    func segments() throws {
        let tok = try TokenizerTestSupport.tokenizer()
        let markup = "<start_of_turn>user\n"
        let content = "Hello"
        #expect(
            tok.encode([.text(markup, parseSpecial: true), .text(content, parseSpecial: false)], addBOS: false)
                == tok.encode(markup + content, addBOS: false, parseSpecial: true))
        // A control text split across a markup/content boundary is not matched.
        let split = tok.encode([.text("<end_of", parseSpecial: true), .text("_turn>", parseSpecial: false)], addBOS: false)
        #expect(!split.contains(106))
        #expect(tok.decode(split) == "<end_of_turn>")
        #expect(tok.encode([.token(105), .text("x", parseSpecial: false)], addBOS: true).prefix(2) == [2, 105])
    }
}

@Suite("Tokenizer: streaming UTF-8")
struct TokenizerStreamingTests {
    @Test("a character split across byte tokens is held until complete")
    func holdsSplitCharacter() throws {
        let tok = try TokenizerTestSupport.tokenizer()
        var s = StreamingDetokenizer(tokenizer: tok)
        // 🍕 = F0 9F 8D 95; byte token ids are 238 + byte (README).
        #expect(s.push(238 + 0xF0) == "")
        #expect(s.push(238 + 0x9F) == "")
        #expect(s.push(238 + 0x8D) == "")
        #expect(s.push(238 + 0x95) == "🍕")
        #expect(s.finish() == "")
    }

    @Test("text before an incomplete character is released at once")
    func releasesCompletePrefix() throws {
        let tok = try TokenizerTestSupport.tokenizer()
        var s = StreamingDetokenizer(tokenizer: tok)
        #expect(s.push(9259) == "Hello")  // "Hello" (tokenize.jsonl prose_simple)
        #expect(s.push(238 + 0xE2) == "")  // € = E2 82 AC
        #expect(s.push(238 + 0x82) == "")
        #expect(s.push(238 + 0xAC) == "€")
    }

    @Test("invalid sequences are flushed as U+FFFD instead of being held")
    func flushesInvalid() throws {
        let tok = try TokenizerTestSupport.tokenizer()
        var s = StreamingDetokenizer(tokenizer: tok)
        #expect(s.push(238 + 0xFF) == "\u{FFFD}")  // 0xFF never starts a sequence
        #expect(s.push(238 + 0xF0) == "")
        #expect(s.push(9259) == "\u{FFFD}Hello")  // the lead byte is cut off by ASCII
        #expect(s.push(238 + 0xE0) == "")
        #expect(s.push(238 + 0x80) == "\u{FFFD}\u{FFFD}")  // E0 80 is never valid (overlong)
        #expect(s.push(238 + 0xE2) == "")
        #expect(s.push(238 + 0x82) == "")
        #expect(s.finish() == "\u{FFFD}")  // incomplete at the end
        #expect(s.finish() == "")
    }

    @Test("streaming equals decode on random byte-token sequences")
    func randomBytes() throws {
        let tok = try TokenizerTestSupport.tokenizer()
        var rng = TokenizerTestRNG(seed: 0x5EED)
        for _ in 0..<300 {
            let n = Int(rng.next() % 12)
            let ids: [Int32] = (0..<n).map { _ in
                // Mostly lead/continuation bytes, some ASCII and a normal token.
                switch rng.next() % 4 {
                case 0: return 238 + Int32(0x80 + rng.next() % 64)
                case 1: return 238 + Int32(0xC0 + rng.next() % 64)
                case 2: return 238 + Int32(rng.next() % 128)
                default: return 9259
                }
            }
            var s = StreamingDetokenizer(tokenizer: tok, renderSpecial: true)
            var text = ""
            for id in ids { text += s.push(id) }
            text += s.finish()
            // Independent reference: Foundation-free decoding of the concatenated token bytes.
            let bytes = ids.flatMap { tok.tokenBytes($0) }
            #expect(text == String(decoding: bytes, as: UTF8.self), "\(ids)")
        }
    }
}

/// SplitMix64 (Steele et al. 2014): small deterministic generator for test inputs.
private struct TokenizerTestRNG {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite("Tokenizer: GGUF vocabularies")
struct TokenizerVocabularyTests {
    /// A GGUF holding only tokenizer metadata.
    static func vocabGGUF(
        model: String = "llama", tokens: [String], scores: [Float]? = nil, types: [Int32]? = nil,
        extra: [(String, GGUFValue)] = []
    ) throws -> GGUFFile {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("tokenizer.ggml.model", .string(model))
        w.set("tokenizer.ggml.tokens", .array(tokens.map { .string($0) }))
        if let scores { w.set("tokenizer.ggml.scores", .array(scores.map { .float32($0) })) }
        if let types { w.set("tokenizer.ggml.token_type", .array(types.map { .int32($0) })) }
        for (k, v) in extra { w.set(k, v) }
        return try GGUFFile(bytes: w.serialized())
    }

    @Test("a BPE (gpt2) vocabulary is rejected with a clear error")
    func rejectsBPE() throws {
        let gguf = try Self.vocabGGUF(model: "gpt2", tokens: ["a", "b", "ab"])
        #expect(throws: TokenizerError.unsupportedTokenizerModel("gpt2")) { try Tokenizer(gguf: gguf) }
        let message = TokenizerError.unsupportedTokenizerModel("gpt2").description
        #expect(message.contains("gpt2") && message.contains("not supported"))
    }

    @Test("missing tokenizer metadata is a typed error")
    func missingMetadata() throws {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        let gguf = try GGUFFile(bytes: w.serialized())
        #expect(throws: TokenizerError.missingMetadata(key: "tokenizer.ggml.model")) { try Tokenizer(gguf: gguf) }
        let noTokens = try Self.vocabGGUF(tokens: [])
        #expect(throws: TokenizerError.invalidVocabularySize(0)) { try Tokenizer(gguf: noTokens) }
        let shortScores = try Self.vocabGGUF(tokens: ["<unk>", "<s>", "</s>"], scores: [0, 0])
        #expect(throws: TokenizerError.arrayLengthMismatch(key: "tokenizer.ggml.scores", count: 2, expected: 3)) {
            try Tokenizer(gguf: shortScores)
        }
    }

    /// Tokens: 0 <unk> (UNKNOWN), 1 <s>, 2 </s> (CONTROL), 3 ▁, 4 a, 5 b, 6 ▁a, 7 ab, 8 ▁ab, 9 <sep> (CONTROL),
    /// 10 <|im_end|> (NORMAL in the file; llama.cpp re-types it as control and end of generation).
    static func tinyLlama(extra: [(String, GGUFValue)] = []) throws -> Tokenizer {
        let tokens = ["<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab", "▁ab", "<sep>", "<|im_end|>"]
        let scores: [Float] = [0, 0, 0, -1, -2, -3, -4, -5, -6, 0, 0]
        let types: [Int32] = [2, 3, 3, 1, 1, 1, 1, 1, 1, 3, 1]
        return try Tokenizer(gguf: vocabGGUF(tokens: tokens, scores: scores, types: types, extra: extra))
    }

    @Test("llama defaults: BOS 1, EOS 2, add_bos, add_space_prefix (hand-derived ids)")
    func llamaDefaults() throws {
        let tok = try Self.tinyLlama()
        #expect(tok.bosID == 1 && tok.eosID == 2 && tok.addBOS && tok.addSpacePrefix)
        // "ab" -> "▁ab" (space prefix); merges by score: "▁a" (-4) beats "ab" (-5), then "▁a"+"b" = "▁ab".
        #expect(tok.encode("ab", addBOS: true, parseSpecial: true) == [1, 8])
        // The prefix is added at the start and after a special token only: "▁ab" <sep> "▁ab".
        #expect(tok.encode("ab<sep>ab", addBOS: false, parseSpecial: true) == [8, 9, 8])
        // Decoding removes the one leading space the prefix introduced.
        #expect(tok.decode([8, 9, 8]) == "ab<sep> ab")
        #expect(tok.decode([8, 9, 8], renderSpecial: false) == "ab ab")
        var s = StreamingDetokenizer(tokenizer: tok, renderSpecial: true)
        #expect(s.push(8) + s.push(9) + s.push(8) + s.finish() == "ab<sep> ab")
        #expect(tok.isEndOfGeneration(2) && tok.isEndOfGeneration(10) && !tok.isEndOfGeneration(9))
        #expect(tok.eotID == 10)
        // <|im_end|> is now control: parsed as a token only with parseSpecial.
        #expect(tok.encode("a<|im_end|>", addBOS: false, parseSpecial: true).last == 10)
        #expect(!tok.encode("a<|im_end|>", addBOS: false, parseSpecial: false).contains(10))
    }

    @Test("metadata overrides: add_space_prefix false, explicit special ids and eot")
    func metadataOverrides() throws {
        let tok = try Self.tinyLlama(extra: [
            ("tokenizer.ggml.add_space_prefix", .bool(false)), ("tokenizer.ggml.add_bos_token", .bool(false)),
            ("tokenizer.ggml.bos_token_id", .uint32(9)), ("tokenizer.ggml.eos_token_id", .uint32(1)),
            ("tokenizer.ggml.eot_token_id", .uint32(9)), ("tokenizer.ggml.padding_token_id", .int32(-1)),
        ])
        #expect(tok.bosID == 9 && tok.eosID == 1 && tok.eotID == 9 && !tok.addBOS && !tok.addSpacePrefix)
        // No prefix: "ab" -> "ab" (7).
        #expect(tok.encode("ab", addBOS: false, parseSpecial: true) == [7])
        #expect(tok.decode([8]) == " ab")
        // EOG: eos 1, eot 9, and by text </s> (2) and <|im_end|> (10), both on llama.cpp's list.
        #expect(tok.endOfGenerationIDs == [1, 2, 9, 10])
    }

    /// A serialized SentencePiece ModelProto written out field by field (protobuf wire format, field numbers from
    /// sentencepiece_model.proto), independent of lorad's generator.
    static func handWrittenModel(pieces: [(String, Float, UInt8)], addDummyPrefix: Bool) -> [UInt8] {
        func varint(_ v: UInt64) -> [UInt8] {
            var v = v, out: [UInt8] = []
            while v >= 0x80 { out.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
            return out + [UInt8(v)]
        }
        func len(_ field: UInt64, _ payload: [UInt8]) -> [UInt8] { varint(field << 3 | 2) + varint(UInt64(payload.count)) + payload }
        func int(_ field: UInt64, _ v: UInt64) -> [UInt8] { varint(field << 3) + varint(v) }
        var model: [UInt8] = []
        for (text, score, type) in pieces {
            let bits = score.bitPattern
            let fixed: [UInt8] = [UInt8(bits & 0xFF), UInt8(bits >> 8 & 0xFF), UInt8(bits >> 16 & 0xFF), UInt8(bits >> 24)]
            model += len(1, len(1, Array(text.utf8)) + [0x15] + fixed + int(3, UInt64(type)))
        }
        model += len(2, int(3, 2) + int(4, UInt64(pieces.count)))  // trainer_spec: BPE, vocab_size
        model += len(3, len(1, Array("identity".utf8)) + int(3, addDummyPrefix ? 1 : 0) + int(4, 0) + int(5, 1))
        return model
    }

    @Test("a companion tokenizer.model is used when given, and rejected when unusable")
    func companionModel() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lorad-tok-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let tokens = ["<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab", "▁ab", "<sep>", "<|im_end|>"]
        let scores: [Float] = [0, 0, 0, -1, -2, -3, -4, -5, -6, 0, 0]
        let types: [Int32] = [2, 3, 3, 1, 1, 1, 1, 1, 1, 3, 1]
        let gguf = try Self.vocabGGUF(tokens: tokens, scores: scores, types: types)
        let ggufPath = dir.appendingPathComponent("tiny.gguf").path
        #expect(Tokenizer.companionModelPath(forGGUFAt: ggufPath) == nil)

        // The model's own normalizer adds the dummy prefix "▁" to each text fragment.
        let pieces = (0..<tokens.count).map { (tokens[$0], scores[$0], UInt8(types[$0])) }
        let modelPath = dir.appendingPathComponent("tokenizer.model").path
        #expect(FileManager.default.createFile(atPath: modelPath, contents: Data(Self.handWrittenModel(pieces: pieces, addDummyPrefix: true))))
        #expect(Tokenizer.companionModelPath(forGGUFAt: ggufPath) == modelPath)
        let tok = try Tokenizer(gguf: gguf, sentencePieceModelPath: modelPath)
        #expect(tok.encode("ab", addBOS: true, parseSpecial: true) == [1, 8])
        #expect(tok.encode("ab<sep>ab", addBOS: false, parseSpecial: true) == [8, 9, 8])

        let short = dir.appendingPathComponent("short.model").path
        #expect(FileManager.default.createFile(atPath: short, contents: Data(Self.handWrittenModel(pieces: Array(pieces.prefix(4)), addDummyPrefix: true))))
        #expect(throws: TokenizerError.companionModelUnusable(path: short, reason: "it has 4 pieces, the GGUF vocabulary has 11")) {
            try Tokenizer(gguf: gguf, sentencePieceModelPath: short)
        }
        let garbage = dir.appendingPathComponent("garbage.model").path
        #expect(FileManager.default.createFile(atPath: garbage, contents: Data([0xFF, 0xFF, 0xFF, 0x01])))
        #expect(throws: (any Error).self) { try Tokenizer(gguf: gguf, sentencePieceModelPath: garbage) }
        do {
            _ = try Tokenizer(gguf: gguf, sentencePieceModelPath: garbage)
        } catch let TokenizerError.companionModelUnusable(path, _) {
            #expect(path == garbage)
        }
        let missing = dir.appendingPathComponent("missing.model").path
        #expect(throws: TokenizerError.companionModelUnusable(path: missing, reason: "cannot read the file")) {
            try Tokenizer(gguf: gguf, sentencePieceModelPath: missing)
        }
    }
}

@Suite("Tokenizer: BOS and EOS ids")
struct TokenizerSpecialIDTests {
    static let bosKey = "tokenizer.ggml.bos_token_id"
    static let eosKey = "tokenizer.ggml.eos_token_id"

    /// Gemma's layout: 0 <pad>, 1 <eos>, 2 <bos>, 3 <unk> (CONTROL, CONTROL, CONTROL, UNKNOWN), then plain pieces.
    /// llama.cpp's SPM defaults (BOS 1, EOS 2) are exactly backwards here.
    static func gemmaLike(types: [Int32]? = nil, extra: [(String, GGUFValue)] = []) throws -> Tokenizer {
        let tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "▁", "a", "b", "▁a", "ab"]
        let scores: [Float] = [0, 0, 0, 0, -1, -2, -3, -4, -5]
        let t = types ?? [3, 3, 3, 2, 1, 1, 1, 1, 1]
        return try Tokenizer(gguf: TokenizerVocabularyTests.vocabGGUF(tokens: tokens, scores: scores, types: t, extra: extra))
    }

    @Test("a BOS or EOS id outside the vocabulary is refused, not replaced by another token")
    func outOfRangeIsRefused() throws {
        #expect(throws: TokenizerError.specialTokenIDOutOfRange(key: Self.bosKey, id: 11, vocabSize: 11)) {
            try TokenizerVocabularyTests.tinyLlama(extra: [(Self.bosKey, .uint32(11))])
        }
        #expect(throws: TokenizerError.specialTokenIDOutOfRange(key: Self.eosKey, id: -1, vocabSize: 11)) {
            try TokenizerVocabularyTests.tinyLlama(extra: [(Self.eosKey, .int32(-1))])
        }
        #expect(throws: TokenizerError.specialTokenIDOutOfRange(key: Self.bosKey, id: 1 << 40, vocabSize: 9)) {
            try Self.gemmaLike(extra: [(Self.bosKey, .uint64(1 << 40))])
        }
        let message = TokenizerError.specialTokenIDOutOfRange(key: Self.bosKey, id: 11, vocabSize: 11).description
        #expect(message.contains(Self.bosKey) && message.contains("11") && message.contains("0..<11"))
        // Not an integer at all.
        #expect(throws: TokenizerError.missingMetadata(key: Self.eosKey)) {
            try TokenizerVocabularyTests.tinyLlama(extra: [(Self.eosKey, .string("2"))])
        }
    }

    @Test("absent BOS/EOS ids come from the CONTROL tokens <bos>/<eos>, not from ids 1 and 2, and are noted")
    func absentIDsFromTokenTypes() throws {
        let tok = try Self.gemmaLike()
        #expect(tok.bosID == 2 && tok.eosID == 1)
        #expect(tok.encode("ab", addBOS: true, parseSpecial: true).first == 2)
        #expect(tok.isEndOfGeneration(1) && !tok.isEndOfGeneration(2))
        #expect(tok.loadNotes.count == 2)
        #expect(tok.loadNotes.contains { $0.contains(Self.bosKey) && $0.contains("<bos>") && $0.contains("id 2") })
        #expect(tok.loadNotes.contains { $0.contains(Self.eosKey) && $0.contains("<eos>") && $0.contains("id 1") })
        // Stated ids are used as they are, without notes.
        let stated = try Self.gemmaLike(extra: [(Self.bosKey, .uint32(2)), (Self.eosKey, .uint32(1))])
        #expect(stated.bosID == 2 && stated.eosID == 1 && stated.loadNotes.isEmpty)
        // Llama's SPM names, found the same way.
        let llama = try TokenizerVocabularyTests.tinyLlama()
        #expect(llama.bosID == 1 && llama.eosID == 2 && llama.loadNotes.count == 2)
    }

    @Test("absent BOS/EOS with no CONTROL token of that name is refused unless the token is not needed")
    func absentWithoutCandidate() throws {
        // <bos> and <eos> typed NORMAL (1): a plain piece is never taken for a special token.
        let normal: [Int32] = [3, 1, 1, 2, 1, 1, 1, 1, 1]
        #expect(throws: TokenizerError.specialTokenNotFound(key: Self.bosKey, candidates: ["<bos>", "<s>", "<|begin_of_text|>", "<|startoftext|>"])) {
            try Self.gemmaLike(types: normal)
        }
        // BOS is not needed when add_bos_token is false; EOS always is.
        #expect(throws: TokenizerError.specialTokenNotFound(key: Self.eosKey, candidates: ["<eos>", "</s>", "<|end_of_text|>", "<|endoftext|>"])) {
            try Self.gemmaLike(types: normal, extra: [("tokenizer.ggml.add_bos_token", .bool(false))])
        }
        let noBOS = try Self.gemmaLike(
            types: normal, extra: [("tokenizer.ggml.add_bos_token", .bool(false)), (Self.eosKey, .uint32(0))])
        #expect(noBOS.bosID == nil && noBOS.eosID == 0)
        #expect(noBOS.encode("ab", addBOS: true, parseSpecial: true) == noBOS.encode("ab", addBOS: false, parseSpecial: true))
        #expect(noBOS.loadNotes.contains { $0.contains(Self.bosKey) && $0.contains("none is used") })
        // A stated id that names a plain piece is used (the file says so) but noted.
        let odd = try Self.gemmaLike(extra: [(Self.bosKey, .uint32(5))])
        #expect(odd.bosID == 5 && odd.loadNotes.contains { $0.contains(Self.bosKey) && $0.contains("not a CONTROL token") })
    }

    @Test("a prompt whose first token already is BOS gets no second BOS")
    func noDoubleBOS() throws {
        let tok = try TokenizerVocabularyTests.tinyLlama()  // 1 <s> (BOS), 8 ▁ab, 9 <sep>
        #expect(tok.encode("<s>ab", addBOS: false, parseSpecial: true) == [1, 8])
        #expect(tok.encode("<s>ab", addBOS: true, parseSpecial: true) == [1, 8])
        #expect(tok.encodeNotingBOS([.text("<s>ab", parseSpecial: true)], addBOS: true) == ([1, 8], true))
        #expect(tok.encodeNotingBOS([.text("ab", parseSpecial: true)], addBOS: true) == ([1, 8], false))
        #expect(tok.encodeNotingBOS([.text("<s>ab", parseSpecial: true)], addBOS: false) == ([1, 8], false))
        #expect(tok.encodeNotingBOS([.token(1), .text("ab", parseSpecial: false)], addBOS: true) == ([1, 8], true))
        // Without special parsing "<s>" is plain text, so BOS is added in front of it.
        let plain = tok.encode("<s>ab", addBOS: true, parseSpecial: false)
        #expect(plain.first == 1 && plain.dropFirst().first != 1)
        // BOS later in the prompt is the user's business and stays.
        #expect(tok.encode("ab<s>", addBOS: true, parseSpecial: true) == [1, 8, 1])
    }

    @Test("Gemma: \"<bos>text after bos\" gets one BOS (llama.cpp's ids, which start with BOS already)")
    func gemmaNoDoubleBOS() throws {
        let tok = try TokenizerTestSupport.tokenizer()
        guard let c = TokenizerTestSupport.tokenizeCases.first(where: { $0.name == "special_bos_text" }) else {
            Issue.record("tokenize.jsonl has no special_bos_text case")
            return
        }
        #expect(c.ids.first == 2)
        let r = tok.encodeNotingBOS([.text(c.text, parseSpecial: true)], addBOS: true)
        #expect(r.ids == c.ids && r.bosFromInput)
        #expect(tok.loadNotes.isEmpty)
    }
}
