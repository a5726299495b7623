// TokenizerVocabulary: the GGUF tokenizer metadata (tokenizer.ggml.*) read into arrays, with llama.cpp's
// per-token attributes and special-token rules applied, so that lorad tokenizes as llama.cpp does.
//
// Source of the rules: llama.cpp src/llama-vocab.cpp (`llama_vocab::impl::load`), upstream commit 34af94cd:
// SPM defaults (BOS 1, EOS 2, UNK 0, add_bos true, add_space_prefix true), the token-type → attribute table,
// detection of end-of-turn / FIM tokens by their text, and the end-of-generation (EOG) list.

/// llama.cpp's `llama_token_attr` bits.
struct TokenAttributes: OptionSet, Sendable {
    let rawValue: UInt16
    static let unknown = TokenAttributes(rawValue: 1 << 0)
    static let unused = TokenAttributes(rawValue: 1 << 1)
    static let normal = TokenAttributes(rawValue: 1 << 2)
    static let control = TokenAttributes(rawValue: 1 << 3)
    static let userDefined = TokenAttributes(rawValue: 1 << 4)
    static let byte = TokenAttributes(rawValue: 1 << 5)

    /// Tokens that render only when special tokens are rendered, and that are matched in text only when special
    /// tokens are parsed.
    static let special: TokenAttributes = [.control, .unknown]

    /// The attribute of a GGUF `tokenizer.ggml.token_type` value (`llama_token_type`): 1 normal, 2 unknown,
    /// 3 control, 4 user-defined, 5 unused, 6 byte; anything else is "undefined" (no bit).
    init(ggufTokenType type: Int) {
        switch type {
        case 1: self = .normal
        case 2: self = .unknown
        case 3: self = .control
        case 4: self = .userDefined
        case 5: self = .unused
        case 6: self = .byte
        default: self = []
        }
    }

    init(rawValue: UInt16) { self.rawValue = rawValue }
}

/// A SentencePiece (`tokenizer.ggml.model = "llama"`) vocabulary with llama.cpp's attributes and special ids.
struct TokenizerVocabulary {
    /// Token texts in id order (`tokenizer.ggml.tokens`; an empty text becomes `[EMPTY_<id>]` as in llama.cpp).
    var tokens: [String]
    /// `tokenizer.ggml.scores`, or 0 for every token when absent.
    var scores: [Float]
    /// Per-token attributes after llama.cpp's load-time rules.
    var attributes: [TokenAttributes]

    var bosID: Int32?
    var eosID: Int32?
    var unkID: Int32?
    var padID: Int32?
    var eotID: Int32?
    var eomID: Int32?
    /// Ids that end generation (llama.cpp `special_eog_ids`).
    var endOfGenerationIDs: Set<Int32>

    var addBOS: Bool
    var addEOS: Bool
    var addSpacePrefix: Bool

    var count: Int { tokens.count }

    // MARK: - llama.cpp's text-based special-token tables (llama-vocab.cpp, 34af94cd)

    static let eotTexts: [String] = [
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>",
        "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
    ]
    static let eomTexts: [String] = ["<|eom_id|>"]
    static let fimPreTexts: [String] = [
        "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>",
        "<|prefix|>",
    ]
    static let fimSufTexts: [String] = [
        "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>",
        "<|suffix|>",
    ]
    static let fimMidTexts: [String] = [
        "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>",
        "<|middle|>",
    ]
    static let fimPadTexts: [String] = ["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"]
    static let fimRepTexts: [String] = ["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"]
    static let fimSepTexts: [String] = ["<|file_sep|>"]
    /// Texts llama.cpp treats as end of generation (and re-types as control). `</s>` is on the list: in Gemma
    /// it is the HTML strike-through tag, typed USER_DEFINED, and llama.cpp still ends generation on it.
    static let eogTexts: [String] = [
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
        "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
        "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
    ]
    /// Texts llama.cpp forces to USER_DEFINED (always rendered).
    static let alwaysRenderedTexts: [String] = ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"]

    // MARK: - Loading

    /// Reads the tokenizer metadata of `gguf`.
    /// - Throws: `TokenizerError.unsupportedTokenizerModel` unless `tokenizer.ggml.model` is `llama`;
    ///   `missingMetadata` / `arrayLengthMismatch` / `invalidVocabularySize` for malformed arrays.
    init(gguf: GGUFFile) throws {
        guard let model = gguf.string(GGUFKeys.tokenizerModel) else {
            throw TokenizerError.missingMetadata(key: GGUFKeys.tokenizerModel)
        }
        guard model == "llama" else { throw TokenizerError.unsupportedTokenizerModel(model) }
        guard var tokens = gguf.stringArray(GGUFKeys.tokens) else {
            throw TokenizerError.missingMetadata(key: GGUFKeys.tokens)
        }
        let n = tokens.count
        guard n > 0, n <= Int(Int32.max) else { throw TokenizerError.invalidVocabularySize(n) }
        for i in 0..<n where tokens[i].isEmpty { tokens[i] = "[EMPTY_\(i)]" }

        var scores = [Float](repeating: 0, count: n)
        if gguf.metadata[GGUFKeys.scores] != nil {
            guard let s = gguf.floatArray(GGUFKeys.scores) else {
                throw TokenizerError.missingMetadata(key: GGUFKeys.scores)
            }
            guard s.count >= n else { throw TokenizerError.arrayLengthMismatch(key: GGUFKeys.scores, count: s.count, expected: n) }
            scores = s.count == n ? s : Array(s[0..<n])
        }

        var attributes = [TokenAttributes](repeating: .normal, count: n)
        if gguf.metadata[GGUFKeys.tokenType] != nil {
            guard let t = gguf.intArray(GGUFKeys.tokenType) else {
                throw TokenizerError.missingMetadata(key: GGUFKeys.tokenType)
            }
            guard t.count >= n else {
                throw TokenizerError.arrayLengthMismatch(key: GGUFKeys.tokenType, count: t.count, expected: n)
            }
            for i in 0..<n { attributes[i] = TokenAttributes(ggufTokenType: t[i]) }
        }

        // Special ids: llama.cpp's SPM defaults, disabled when out of range, overridden by in-range metadata.
        func specialID(_ key: String, default def: Int32?) -> Int32? {
            var id = def.flatMap { Int($0) < n ? $0 : nil }
            if let v = gguf.int(key), v >= 0, v < n { id = Int32(v) }
            return id
        }
        let prefix = "tokenizer.ggml."
        bosID = specialID(GGUFKeys.bosTokenID, default: 1)
        eosID = specialID(GGUFKeys.eosTokenID, default: 2)
        unkID = specialID(GGUFKeys.unknownTokenID, default: 0)
        padID = specialID(GGUFKeys.paddingTokenID, default: nil)
        var eot = specialID(GGUFKeys.eotTokenID, default: nil)
        var eom = specialID(GGUFKeys.eomTokenID, default: nil)
        var fimPre = specialID(prefix + "fim_pre_token_id", default: nil) ?? specialID(prefix + "prefix_token_id", default: nil)
        var fimSuf = specialID(prefix + "fim_suf_token_id", default: nil) ?? specialID(prefix + "suffix_token_id", default: nil)
        var fimMid = specialID(prefix + "fim_mid_token_id", default: nil) ?? specialID(prefix + "middle_token_id", default: nil)
        var fimPad = specialID(prefix + "fim_pad_token_id", default: nil)
        var fimRep = specialID(prefix + "fim_rep_token_id", default: nil)
        var fimSep = specialID(prefix + "fim_sep_token_id", default: nil)

        addBOS = gguf.bool(GGUFKeys.addBOSToken) ?? true
        addEOS = gguf.bool(GGUFKeys.addEOSToken) ?? false
        addSpacePrefix = gguf.bool(GGUFKeys.addSpacePrefix) ?? true

        // Find the few tokens whose text matters, in one pass (lowest id wins when a text repeats).
        let tables = [
            Self.eotTexts, Self.eomTexts, Self.fimPreTexts, Self.fimSufTexts, Self.fimMidTexts, Self.fimPadTexts,
            Self.fimRepTexts, Self.fimSepTexts, Self.eogTexts, Self.alwaysRenderedTexts,
        ]
        let wanted = Set(tables.joined())
        // Cheap byte-level prefilter (length and first 4 bytes) before comparing Strings, whose hashing normalizes.
        func key(_ u: UnsafeBufferPointer<UInt8>) -> UInt64 {
            var k = UInt64(u.count) << 32
            for j in 0..<min(4, u.count) { k |= UInt64(u[j]) << (8 * UInt64(j)) }
            return k
        }
        var wantedKeys = Set<UInt64>()
        for var w in wanted { w.withUTF8 { _ = wantedKeys.insert(key($0)) } }
        var found: [String: Int32] = [:]
        for i in 0..<n {
            var t = tokens[i]
            guard t.withUTF8({ wantedKeys.contains(key($0)) }), wanted.contains(t), found[t] == nil else { continue }
            found[t] = Int32(i)
        }

        func markControl(_ id: Int32) { attributes[Int(id)].insert(.control) }
        func detect(_ current: inout Int32?, _ texts: [String]) {
            guard current == nil else { return }
            if let id = texts.compactMap({ found[$0] }).min() {
                current = id
                markControl(id)
            }
        }
        detect(&eot, Self.eotTexts)
        detect(&eom, Self.eomTexts)
        detect(&fimPre, Self.fimPreTexts)
        detect(&fimSuf, Self.fimSufTexts)
        detect(&fimMid, Self.fimMidTexts)
        detect(&fimPad, Self.fimPadTexts)
        detect(&fimRep, Self.fimRepTexts)
        detect(&fimSep, Self.fimSepTexts)

        var eog = Set<Int32>()
        for id in [fimPad, fimRep, fimSep].compactMap({ $0 }) { eog.insert(id) }
        for text in Self.eogTexts {
            if let id = found[text] {
                eog.insert(id)
                markControl(id)
            }
        }
        for text in Self.alwaysRenderedTexts {
            if let id = found[text] { attributes[Int(id)] = .userDefined }
        }
        for id in [eosID, eot, eom].compactMap({ $0 }) { eog.insert(id) }

        // llama.cpp workarounds: "<|end|>" is not an end of generation next to "<|return|>"/"<|call|>" (harmony)
        // or "<|calls|>"/"<|flush|>" (solar-open); "</s>" is not one next to "<|tool_response>" (Gemma 4).
        func inEOG(_ text: String) -> Int32? { found[text].flatMap { eog.contains($0) ? $0 : nil } }
        if let end = inEOG("<|end|>"),
            (inEOG("<|return|>") != nil && (inEOG("<|call|>") != nil || inEOG("<|calls|>") != nil))
                || ((inEOG("<|call|>") != nil || inEOG("<|calls|>") != nil) && inEOG("<|flush|>") != nil)
        {
            eog.remove(end)
            attributes[Int(end)] = .userDefined
        }
        if inEOG("<|tool_response>") != nil, let s = inEOG("</s>") {
            eog.remove(s)
            attributes[Int(s)] = .normal
        }

        self.tokens = tokens
        self.scores = scores
        self.attributes = attributes
        eotID = eot
        eomID = eom
        endOfGenerationIDs = eog
    }

    // MARK: - Derived tables

    /// The byte a BYTE token `<0xNN>` stands for.
    static func byteValue(_ text: String) -> UInt8? {
        let u = Array(text.utf8)
        guard u.count == 6, u[0] == 0x3C, u[1] == 0x30, u[2] == 0x78, u[5] == 0x3E,
            let hi = hexDigit(u[3]), let lo = hexDigit(u[4])
        else { return nil }
        return hi << 4 | lo
    }

    private static func hexDigit(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x41...0x46: return c - 0x41 + 10
        case 0x61...0x66: return c - 0x61 + 10
        default: return nil
        }
    }

    /// The SentencePiece type each token gets in the generated ModelProto.
    ///
    /// - the unknown id becomes UNKNOWN (Gemma's GGUF stores `<unk>` as CONTROL, and libsentencepiece refuses a
    ///   model without an UNKNOWN piece); any other UNKNOWN-typed token becomes CONTROL (only one is allowed);
    /// - every token llama.cpp treats as control (including re-typed ones such as Gemma's `</s>`) is CONTROL, so
    ///   SentencePiece never produces it from plain text;
    /// - BYTE, USER_DEFINED and UNUSED keep their type; NORMAL and undefined tokens are NORMAL.
    ///
    /// USER_DEFINED texts are written unchanged (Gemma's space runs keep their real spaces). lorad splits user-defined
    /// tokens out of the text itself, as llama.cpp does, before SentencePiece runs; written unchanged they cannot
    /// match escaped text, so SentencePiece never re-matches them either.
    func sentencePieceTypes() -> [SentencePieceType] {
        var types = [SentencePieceType](repeating: .normal, count: count)
        for i in 0..<count {
            let a = attributes[i]
            if let u = unkID, Int(u) == i {
                types[i] = .unknown
            } else if a.contains(.control) || a.contains(.unknown) {
                types[i] = .control
            } else if a.contains(.byte) {
                types[i] = .byte
            } else if a.contains(.userDefined) {
                types[i] = .userDefined
            } else if a.contains(.unused) {
                types[i] = .unused
            }
        }
        return types
    }
}
