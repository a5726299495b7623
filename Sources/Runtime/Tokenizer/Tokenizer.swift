// Tokenizer: text <-> token ids for SentencePiece GGUF vocabularies, matching llama.cpp's llama_tokenize /
// llama_detokenize token for token.
//
// Encoding = llama.cpp's special-token partition (SpecialTokenPartition.swift) + libsentencepiece BPE on the
// raw-text fragments, over a ModelProto generated from the GGUF arrays (SentencePieceModelProto.swift).
// Decoding is done here from a per-token byte table (llama.cpp's token_to_piece rules), not by libsentencepiece,
// whose Decode drops control tokens and cannot render them.
//
// Limits: only `tokenizer.ggml.model = "llama"`. llama.cpp's per-model lstrip/rstrip attributes (Phi-3, Jina) are
// not applied, and EOS is never appended automatically (add_eos_token is false for the supported models).

import Foundation

/// A SentencePiece tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata.
///
/// Thread safety: immutable after init; `encode`/`decode` may run concurrently.
public final class Tokenizer: @unchecked Sendable {
    /// A piece of input for `encode(_:addBOS:)`: text with or without special-token parsing, or a literal token id.
    public enum Segment: Sendable, Equatable {
        /// UTF-8 text. With `parseSpecial`, texts of control tokens (e.g. `<start_of_turn>`) become those tokens;
        /// without it they are tokenized as plain characters.
        case text(String, parseSpecial: Bool)
        /// A token id emitted as is.
        case token(Int32)
    }

    /// Number of tokens (`tokenizer.ggml.tokens` length); valid ids are `0..<vocabSize`.
    public var vocabSize: Int { vocabulary.count }
    /// Beginning-of-sequence id (`tokenizer.ggml.bos_token_id`, default 1), nil if out of range.
    public let bosID: Int32?
    /// End-of-sequence id (`tokenizer.ggml.eos_token_id`, default 2), nil if out of range.
    public let eosID: Int32?
    /// End-of-turn id: `tokenizer.ggml.eot_token_id`, else found by text (`<end_of_turn>`, `<|eot_id|>`, `<|im_end|>`…).
    public let eotID: Int32?
    /// Whether prompts start with BOS (`tokenizer.ggml.add_bos_token`, default true).
    public let addBOS: Bool
    /// Whether a space is prepended to text at the start and after each special token
    /// (`tokenizer.ggml.add_space_prefix`, default true; false for Gemma).
    public let addSpacePrefix: Bool
    /// Every id that ends generation, ascending (see `isEndOfGeneration`).
    public let endOfGenerationIDs: [Int32]
    /// What loading decided that the file did not state (e.g. "tokenizer.ggml.bos_token_id is absent; using the
    /// CONTROL token \"<bos>\" (id 2)"), one sentence each; empty for a file that states everything. Callers log them.
    public let loadNotes: [String]

    let vocabulary: TokenizerVocabulary
    private let processor: SentencePieceProcessor
    private let matcher: SpecialTokenMatcher
    /// Bytes each token contributes when decoded with special tokens rendered: `pieceBytes[pieceOffsets[i]..<pieceOffsets[i+1]]`.
    private let pieceBytes: [UInt8]
    private let pieceOffsets: [Int32]
    /// `<0xNN>` token id per byte value (-1 if absent), used only if libsentencepiece ever fails on a fragment.
    private let byteTokens: [Int32]
    /// Whether lorad inserts llama.cpp's space prefix itself (true for a generated ModelProto; a companion
    /// tokenizer.model applies its own normalizer instead).
    private let insertsSpacePrefix: Bool

    /// Builds the tokenizer from the GGUF vocabulary alone (no tokenizer.model file needed).
    /// - Throws: `TokenizerError` (unsupported `tokenizer.ggml.model`, malformed arrays, or libsentencepiece rejecting
    ///   the generated model).
    public convenience init(gguf: GGUFFile) throws {
        try self.init(gguf: gguf, sentencePieceModelPath: nil)
    }

    /// Builds the tokenizer, using the SentencePiece model file at `sentencePieceModelPath` when given (for example
    /// `companionModelPath(forGGUFAt:)`), else a ModelProto generated from the GGUF vocabulary. Token texts, types
    /// and special ids always come from the GGUF metadata.
    /// - Throws: `TokenizerError`; `.companionModelUnusable` if the file cannot be read or its piece count differs
    ///   from the GGUF vocabulary.
    public init(gguf: GGUFFile, sentencePieceModelPath: String?) throws {
        let vocab = try TokenizerVocabulary(gguf: gguf)
        let n = vocab.count

        if let path = sentencePieceModelPath {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw TokenizerError.companionModelUnusable(path: path, reason: "cannot read the file")
            }
            let p: SentencePieceProcessor
            do {
                p = try SentencePieceProcessor(serializedModel: [UInt8](data))
            } catch let e as TokenizerError {
                throw TokenizerError.companionModelUnusable(path: path, reason: e.description)
            }
            guard p.pieceCount == n else {
                throw TokenizerError.companionModelUnusable(
                    path: path, reason: "it has \(p.pieceCount) pieces, the GGUF vocabulary has \(n)")
            }
            processor = p
            insertsSpacePrefix = false
        } else {
            guard let unk = vocab.unkID else { throw TokenizerError.missingMetadata(key: GGUFKeys.unknownTokenID) }
            let types = vocab.sentencePieceTypes()
            let byteCount = types.reduce(0) { $0 + ($1 == .byte ? 1 : 0) }
            let settings = SentencePieceModelProto.Settings(
                unkID: unk, bosID: vocab.bosID ?? -1, eosID: vocab.eosID ?? -1, padID: vocab.padID ?? -1,
                byteFallback: byteCount == 256)
            let proto = SentencePieceModelProto.serialize(
                pieces: vocab.tokens, scores: vocab.scores, types: types, settings: settings)
            processor = try SentencePieceProcessor(serializedModel: proto)
            insertsSpacePrefix = vocab.addSpacePrefix
        }

        // Decoding table (llama.cpp token_to_piece with special = true): control, unknown and user-defined tokens
        // render their text; normal tokens their text with U+2581 as space; byte tokens their byte; others nothing.
        var offsets = [Int32](repeating: 0, count: n + 1)
        var byteTokens = [Int32](repeating: -1, count: 256)
        var specialEntries: [(bytes: [UInt8], id: Int32, needsParseSpecial: Bool)] = []
        var totalBytes = 0
        for i in 0..<n { totalBytes += vocab.tokens[i].utf8.count }
        guard totalBytes <= Int(Int32.max) else { throw TokenizerError.invalidVocabularySize(n) }
        var bytes = [UInt8](repeating: 0, count: totalBytes)  // an upper bound: no rule makes a token longer
        var used = 0
        try bytes.withUnsafeMutableBufferPointer { out in
            for i in 0..<n {
                let a = vocab.attributes[i]
                var text = vocab.tokens[i]
                if a.contains(.control) || a.contains(.unknown) || a.contains(.userDefined) {
                    text.withUTF8 { u in
                        for b in u {
                            out[used] = b
                            used += 1
                        }
                        specialEntries.append((Array(u), Int32(i), !a.isDisjoint(with: .special)))
                    }
                } else if a.contains(.normal) {
                    text.withUTF8 { u in
                        var j = 0
                        while j < u.count {
                            if u[j] == 0xE2, j + 2 < u.count, u[j + 1] == 0x96, u[j + 2] == 0x81 {
                                out[used] = 0x20
                                j += 3
                            } else {
                                out[used] = u[j]
                                j += 1
                            }
                            used += 1
                        }
                    }
                } else if a.contains(.byte) {
                    guard let b = TokenizerVocabulary.byteValue(text) else {
                        throw TokenizerError.invalidByteToken(id: i, text: text)
                    }
                    out[used] = b
                    used += 1
                    if byteTokens[Int(b)] < 0 { byteTokens[Int(b)] = Int32(i) }
                }
                offsets[i + 1] = Int32(used)
            }
        }
        bytes.removeSubrange(used...)
        let matcher = SpecialTokenMatcher(specialEntries)

        vocabulary = vocab
        pieceBytes = bytes
        pieceOffsets = offsets
        self.byteTokens = byteTokens
        self.matcher = matcher
        bosID = vocab.bosID
        eosID = vocab.eosID
        eotID = vocab.eotID
        addBOS = vocab.addBOS
        addSpacePrefix = vocab.addSpacePrefix
        endOfGenerationIDs = vocab.endOfGenerationIDs.sorted()
        loadNotes = vocab.notes
    }

    /// `tokenizer.model` in the directory of the GGUF file at `ggufPath`, if such a file exists.
    public static func companionModelPath(forGGUFAt ggufPath: String) -> String? {
        let dir = (ggufPath as NSString).deletingLastPathComponent
        let candidate = (dir.isEmpty ? "." : dir) + "/tokenizer.model"
        return FileManager.default.fileExists(atPath: candidate) ? candidate : nil
    }

    // MARK: - Encoding

    /// Token ids of `text` (llama.cpp `llama_tokenize(vocab, text, add_special: addBOS, parse_special:)`, except that
    /// BOS is not prepended when the text's own first token already is BOS; see `encodeNotingBOS`).
    /// - Parameters:
    ///   - addBOS: prepend `bosID` (pass `tokenizer.addBOS` for a prompt). EOS is never appended.
    ///   - parseSpecial: match control-token texts such as `<start_of_turn>` as those tokens (llama.cpp's default for
    ///     raw prompts). Off, they are plain text, so user text cannot forge turn markers. User-defined tokens
    ///     (Gemma's whitespace runs, `<start_of_image>`) are matched either way, as in llama.cpp.
    /// - Returns: ids in `0..<vocabSize`; `[]` for "" without BOS.
    public func encode(_ text: String, addBOS: Bool, parseSpecial: Bool) -> [Int32] {
        encode([.text(text, parseSpecial: parseSpecial)], addBOS: addBOS)
    }

    /// Token ids of a sequence of segments, tokenized as their concatenation would be: SentencePiece runs over text
    /// across segment boundaries, but control-token texts are only matched inside segments with `parseSpecial`.
    /// Chat templates use this to parse markup while keeping message content literal.
    public func encode(_ segments: [Segment], addBOS: Bool) -> [Int32] {
        encodeNotingBOS(segments, addBOS: addBOS).ids
    }

    /// `encode(segments, addBOS:)`, also saying whether BOS came from the input itself.
    ///
    /// With `addBOS`, BOS is prepended only when the input's first token is not BOS already: a raw prompt that
    /// starts with the BOS text (`<bos>` with `parseSpecial`, or a `.token(bos)` segment) gets one BOS, not two.
    /// llama.cpp keeps both and only logs a warning (llama-vocab.cpp, `llama_vocab::impl::tokenize`); two BOS
    /// tokens put the model off its training distribution, so lorad drops its own.
    /// - Returns: the ids, and `bosFromInput` = true when `addBOS` was asked for, the model has a BOS, and the
    ///   input's first token already was it (so none was added; callers log this).
    public func encodeNotingBOS(_ segments: [Segment], addBOS: Bool) -> (ids: [Int32], bosFromInput: Bool) {
        var output: [Int32] = []
        if addBOS, let bos = bosID { output.append(bos) }
        var previousWasToken = true  // llama.cpp: the first text fragment gets the space prefix
        var run: [UInt8] = []
        var runParts: [(end: Int, parseSpecial: Bool)] = []

        func flush() {
            guard !run.isEmpty else { return }
            run.withUnsafeBufferPointer { text in
                encodeRun(text, parts: runParts, into: &output, previousWasToken: &previousWasToken)
            }
            run.removeAll(keepingCapacity: true)
            runParts.removeAll(keepingCapacity: true)
        }
        for segment in segments {
            switch segment {
            case .text(let s, let parseSpecial):
                run.append(contentsOf: s.utf8)
                runParts.append((run.count, parseSpecial))
            case .token(let id):
                flush()
                output.append(id)
                previousWasToken = true
            }
        }
        flush()
        if addBOS, let bos = bosID, output.count >= 2, output[1] == bos {
            output.removeFirst()
            return (output, true)
        }
        return (output, false)
    }

    private func encodeRun(
        _ text: UnsafeBufferPointer<UInt8>, parts: [(end: Int, parseSpecial: Bool)], into output: inout [Int32],
        previousWasToken: inout Bool
    ) {
        // Where may control-token texts match? A match must lie inside bytes whose segment parses special.
        let specialAllowed: (Range<Int>) -> Bool
        if parts.allSatisfy({ $0.parseSpecial }) {
            specialAllowed = { _ in true }
        } else if parts.allSatisfy({ !$0.parseSpecial }) {
            specialAllowed = { _ in false }
        } else {
            var literalBefore = [Int](repeating: 0, count: text.count + 1)  // literal bytes before each offset
            var start = 0
            for part in parts {
                for i in start..<part.end { literalBefore[i + 1] = literalBefore[i] + (part.parseSpecial ? 0 : 1) }
                start = part.end
            }
            specialAllowed = { r in literalBefore[r.upperBound] == literalBefore[r.lowerBound] }
        }

        var scratch: [UInt8] = []
        for fragment in matcher.partition(text, specialAllowed: specialAllowed) {
            switch fragment {
            case .token(let id):
                output.append(id)
                previousWasToken = true
            case .text(let range):
                let slice = UnsafeBufferPointer(rebasing: text[range])
                if insertsSpacePrefix && previousWasToken {
                    scratch.removeAll(keepingCapacity: true)
                    scratch.append(0x20)
                    scratch.append(contentsOf: slice)
                    scratch.withUnsafeBufferPointer { encodeFragment($0, into: &output) }
                } else {
                    encodeFragment(slice, into: &output)
                }
                previousWasToken = false
            }
        }
    }

    private func encodeFragment(_ bytes: UnsafeBufferPointer<UInt8>, into output: inout [Int32]) {
        if processor.encode(bytes, appendingTo: &output) { return }
        // libsentencepiece never fails on valid UTF-8 with a loaded model; if it does, keep the text as bytes.
        for b in bytes where byteTokens[Int(b)] >= 0 { output.append(byteTokens[Int(b)]) }
    }

    // MARK: - Decoding

    /// Text of `ids` (llama.cpp `llama_detokenize(remove_special: false, unparse_special: renderSpecial)`).
    /// Byte-fallback tokens are assembled into UTF-8; bytes that do not form valid UTF-8 become U+FFFD.
    /// With `addSpacePrefix`, one leading space of the first token is removed. Out-of-range ids contribute nothing.
    /// - Parameter renderSpecial: render control/unknown tokens (`<start_of_turn>`, `<eos>`) as their text;
    ///   otherwise they contribute nothing. User-defined tokens always render.
    public func decode(_ ids: [Int32], renderSpecial: Bool = true) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(ids.count * 4)
        for (i, id) in ids.enumerated() {
            appendBytes(of: id, renderSpecial: renderSpecial, stripLeadingSpace: i == 0 && addSpacePrefix, to: &bytes)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Appends what token `id` contributes to a decoded text (see `decode`).
    func appendBytes(of id: Int32, renderSpecial: Bool, stripLeadingSpace: Bool, to bytes: inout [UInt8]) {
        guard id >= 0, Int(id) < vocabulary.count else { return }
        if !renderSpecial && !vocabulary.attributes[Int(id)].isDisjoint(with: .special) { return }
        var start = Int(pieceOffsets[Int(id)])
        let end = Int(pieceOffsets[Int(id) + 1])
        if stripLeadingSpace && start < end && pieceBytes[start] == 0x20 { start += 1 }
        bytes.append(contentsOf: pieceBytes[start..<end])
    }

    /// The raw bytes token `id` contributes to decoded text with special tokens rendered (a byte-fallback token gives
    /// its single byte, which may be part of a multi-byte character); `[]` for an out-of-range id.
    public func tokenBytes(_ id: Int32) -> [UInt8] {
        guard id >= 0, Int(id) < vocabulary.count else { return [] }
        return Array(pieceBytes[Int(pieceOffsets[Int(id)])..<Int(pieceOffsets[Int(id) + 1])])
    }

    /// The token's text as stored in the GGUF vocabulary (e.g. `▁the`, `<0x0A>`, `<start_of_turn>`); "" if out of range.
    public func tokenText(_ id: Int32) -> String {
        guard id >= 0, Int(id) < vocabulary.count else { return "" }
        return vocabulary.tokens[Int(id)]
    }

    /// The id whose stored text is exactly `text` among special tokens (control, unknown, user-defined), if any.
    public func specialTokenID(_ text: String) -> Int32? {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty else { return nil }
        return bytes.withUnsafeBufferPointer { matcher.token(in: $0, at: 0, length: $0.count) }
    }

    /// Whether generation stops at `id`, as in llama.cpp `llama_vocab_is_eog`: EOS, end-of-turn and end-of-message ids
    /// (from metadata or found by text: Gemma's `<end_of_turn>` 106), FIM pad/repo/separator tokens, and the texts
    /// llama.cpp lists as end of generation, which include `</s>` (Gemma's id 212, an HTML tag llama.cpp also
    /// stops on).
    public func isEndOfGeneration(_ id: Int32) -> Bool { vocabulary.endOfGenerationIDs.contains(id) }

    /// Whether `id` is a control or unknown token (rendered only with `renderSpecial`).
    public func isSpecial(_ id: Int32) -> Bool {
        guard id >= 0, Int(id) < vocabulary.count else { return false }
        return !vocabulary.attributes[Int(id)].isDisjoint(with: .special)
    }
}
