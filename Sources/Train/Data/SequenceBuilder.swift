// Turns validated dataset records into token ids and loss masks, by the rules of the training reference
// (reference/gemma-3-270m-q4_k_m/train/README.md "How sequences are built"):
//   chat               ChatTemplate.renderPieces (Gemma: each piece tokenized on its own, content never parsed for
//                      control tokens, trimmed); scored: every trained assistant message's content and its end token
//   prompt/completion  <bos> + tok(prompt) + tok(completion) + <eos>; scored: completion and <eos>
//   preference         prompt conversation + one assistant turn each; scored: the answer and its end token
// Serving renders the same messages with the same ChatTemplate, so a model is served the ids it was trained on.
import Runtime

/// Why a record cannot become a training sequence.
public enum SequenceError: Error, CustomStringConvertible, Equatable {
    /// The model's chat format is not known, so chat lines cannot be rendered the way the model expects.
    case noChatTemplate(architecture: String)
    /// The conversation breaks the chat template's rules (roles, order).
    case template(ChatTemplateError)
    /// The sequence is longer than the limit and the builder rejects over-long sequences.
    case tooLong(length: Int, limit: Int)
    /// Even with the whole prompt cut away, the scored part does not fit the limit.
    case completionTooLong(scoredSpan: Int, limit: Int)
    /// The tokenizer has no EOS (needed to end a completion).
    case noEOS
    /// Nothing in the sequence is scored.
    case nothingScored

    public var description: String {
        switch self {
        case .noChatTemplate(let a):
            return "no chat template is known for architecture '\(a)': chat training is refused (use prompt/completion lines)"
        case .template(let e): return e.description
        case .tooLong(let n, let l): return "the sequence has \(n) tokens, more than the limit of \(l)"
        case .completionTooLong(let n, let l):
            return "the scored part alone needs \(n) tokens (with BOS), more than the limit of \(l)"
        case .noEOS: return "the tokenizer has no EOS token to end a completion"
        case .nothingScored: return "no token of the sequence is scored"
        }
    }
}

/// Builds `TokenizedExample`s and `TokenizedPair`s from dataset records for one model's tokenizer and chat format.
public struct SequenceBuilder: Sendable {
    /// What to do with a sequence longer than `maxLength`.
    public enum Overflow: String, Sendable, Codable {
        /// Drop prompt tokens right after BOS (the oldest context) until it fits; scored tokens are never dropped.
        case truncatePromptLeft = "truncate"
        /// Refuse the sequence.
        case reject
    }

    /// The model's tokenizer.
    public let tokenizer: Tokenizer
    /// The model's chat format, or nil when none is known (chat and preference lines are then refused).
    public let template: ChatTemplate?
    /// Longest sequence in tokens (≥ 2).
    public let maxLength: Int
    /// Over-long sequence policy.
    public let overflow: Overflow
    /// `general.architecture`, for error messages.
    public let architecture: String

    /// - Parameters:
    ///   - tokenizer: the model's tokenizer.
    ///   - template: the chat format; nil refuses chat training.
    ///   - maxLength: token limit per sequence (clamped to ≥ 2).
    ///   - overflow: over-long sequence policy.
    ///   - architecture: for messages only.
    public init(tokenizer: Tokenizer, template: ChatTemplate?, maxLength: Int, overflow: Overflow = .reject,
                architecture: String = "") {
        self.tokenizer = tokenizer
        self.template = template
        self.maxLength = max(2, maxLength)
        self.overflow = overflow
        self.architecture = architecture
    }

    /// A builder for a model file: its tokenizer and the chat format its metadata names
    /// (`knownChatTemplate(gguf:)`).
    public init(gguf: GGUFFile, tokenizer: Tokenizer, maxLength: Int, overflow: Overflow = .reject) {
        self.init(tokenizer: tokenizer, template: knownChatTemplate(gguf: gguf), maxLength: maxLength,
                  overflow: overflow, architecture: gguf.architecture ?? "")
    }

    // MARK: - Records

    /// The sequence of an SFT record: a chat or prompt/completion line; a preference line gives its prompt
    /// followed by the preferred answer (the SFT loader refuses preference lines; DPO uses `pair(_:)`).
    /// - Throws: `SequenceError`.
    public func example(_ record: DatasetRecord) throws -> TokenizedExample {
        switch record {
        case .chat(let messages): return try chat(messages)
        case .promptCompletion(let p, let c): return try promptCompletion(prompt: p, completion: c)
        case .preference(let input, let preferred, _):
            // As SFT data a preference line trains on its preferred answer.
            return try chat(input + [TrainingMessage(role: "assistant", content: preferred)])
        }
    }

    /// A chat sequence: the template's pieces, scored on trained assistant content and end tokens.
    /// - Throws: `SequenceError.noChatTemplate`, `.template`, `.nothingScored`, `.tooLong`, `.completionTooLong`.
    public func chat(_ messages: [TrainingMessage]) throws -> TokenizedExample {
        let (ids, mask) = try rendered(messages)
        return try fit(TokenizedExample(inputIds: ids, labelsMask: mask))
    }

    /// `<bos> + tok(prompt) + tok(completion) + <eos>`, scored on the completion and EOS. Each text is tokenized
    /// on its own without control-token parsing.
    /// - Throws: `SequenceError.noEOS`, `.nothingScored` (empty completion), `.tooLong`, `.completionTooLong`.
    public func promptCompletion(prompt: String, completion: String) throws -> TokenizedExample {
        var head: [Int32] = []
        if tokenizer.addBOS, let bos = tokenizer.bosID { head.append(bos) }
        return try promptCompletion(promptIds: head + tokenizer.encode(prompt, addBOS: false, parseSpecial: false),
                                    completion: completion)
    }

    /// As `promptCompletion(prompt:completion:)` for a prompt given as ids (BOS included if wanted).
    public func promptCompletion(promptIds: [Int32], completion: String) throws -> TokenizedExample {
        guard let eos = tokenizer.eosID else { throw SequenceError.noEOS }
        let c = tokenizer.encode(completion, addBOS: false, parseSpecial: false)
        guard !c.isEmpty else { throw SequenceError.nothingScored }
        let ids = promptIds + c + [eos]
        let mask = [UInt8](repeating: 0, count: promptIds.count) + [UInt8](repeating: 1, count: c.count + 1)
        return try fit(TokenizedExample(inputIds: ids, labelsMask: mask))
    }

    /// A preference pair from a preference record.
    /// - Throws: `SequenceError` as `preferencePair(input:preferred:nonPreferred:)`; other records are
    ///   `.nothingScored`.
    public func pair(_ record: DatasetRecord) throws -> TokenizedPair {
        guard case .preference(let input, let p, let n) = record else { throw SequenceError.nothingScored }
        return try preferencePair(input: input, preferred: p, nonPreferred: n)
    }

    /// The prompt conversation followed by each answer as one assistant turn; only the final answer and its end
    /// token are scored (earlier assistant turns of the prompt are context). Over-long pairs lose the same prompt
    /// tokens in both sequences.
    /// - Throws: `SequenceError`.
    public func preferencePair(input: [TrainingMessage], preferred: String, nonPreferred: String) throws
        -> TokenizedPair
    {
        // Assistant turns of the prompt are context (weight 0); the answer is the only trained message.
        let context = input.map { TrainingMessage(role: $0.role, content: $0.content, weight: 0) }
        func build(_ answer: String) throws -> TokenizedExample {
            let (ids, mask) = try rendered(context + [TrainingMessage(role: "assistant", content: answer)])
            return TokenizedExample(inputIds: ids, labelsMask: mask)
        }
        var chosen = try build(preferred), rejected = try build(nonPreferred)
        var promptLength = 0
        while promptLength < min(chosen.count, rejected.count),
            chosen.inputIds[promptLength] == rejected.inputIds[promptLength],
            chosen.labelsMask[promptLength] == 0, rejected.labelsMask[promptLength] == 0
        {
            promptLength += 1
        }
        let longest = max(chosen.count, rejected.count)
        if longest > maxLength {
            guard overflow == .truncatePromptLeft else { throw SequenceError.tooLong(length: longest, limit: maxLength) }
            let keep = headLength(chosen)
            let drop = longest - maxLength
            guard drop <= promptLength - keep else {
                throw SequenceError.completionTooLong(scoredSpan: longest - promptLength + keep, limit: maxLength)
            }
            chosen = Self.dropping(chosen, from: keep, count: drop)
            rejected = Self.dropping(rejected, from: keep, count: drop)
            promptLength -= drop
        }
        return TokenizedPair(chosen: chosen, rejected: rejected, promptLength: promptLength)
    }

    // MARK: - Helpers

    private func rendered(_ messages: [TrainingMessage]) throws -> (ids: [Int32], mask: [UInt8]) {
        guard let template else { throw SequenceError.noChatTemplate(architecture: architecture) }
        let pieces: [ChatPiece]
        do {
            pieces = try template.renderPieces(messages.map { ChatMessage(role: $0.role, content: $0.content) },
                                               addGenerationPrompt: false, tokenizer: tokenizer)
        } catch let e as ChatTemplateError {
            throw SequenceError.template(e)
        }
        var ids: [Int32] = [], mask: [UInt8] = []
        for p in pieces {
            let scored: Bool
            switch p.kind {
            case .assistantContent(let m), .assistantEnd(let m): scored = messages[m].isTrained
            case .markup, .content: scored = false
            }
            ids += p.ids
            mask += [UInt8](repeating: scored ? 1 : 0, count: p.ids.count)
        }
        guard mask.contains(1) else { throw SequenceError.nothingScored }
        return (ids, mask)
    }

    /// Leading tokens never cut: BOS when the sequence starts with it.
    private func headLength(_ e: TokenizedExample) -> Int {
        if let bos = tokenizer.bosID, e.inputIds.first == bos { return 1 }
        return 0
    }

    /// Applies the length limit to one sequence.
    private func fit(_ e: TokenizedExample) throws -> TokenizedExample {
        guard e.scoredCount > 0 else { throw SequenceError.nothingScored }
        guard e.count > maxLength else { return e }
        guard overflow == .truncatePromptLeft else { throw SequenceError.tooLong(length: e.count, limit: maxLength) }
        let keep = headLength(e)
        let firstScored = e.labelsMask.firstIndex(of: 1)!
        let drop = e.count - maxLength
        guard drop <= firstScored - keep else {
            throw SequenceError.completionTooLong(scoredSpan: e.count - firstScored + keep, limit: maxLength)
        }
        return Self.dropping(e, from: keep, count: drop)
    }

    private static func dropping(_ e: TokenizedExample, from start: Int, count: Int) -> TokenizedExample {
        var ids = e.inputIds, mask = e.labelsMask
        ids.removeSubrange(start..<start + count)
        mask.removeSubrange(start..<start + count)
        return TokenizedExample(inputIds: ids, labelsMask: mask)
    }
}

/// The chat format a model file names, or nil when lorad does not know it: the format of its
/// `tokenizer.chat_template` when that template has a known format's markers, else Gemma for a `gemma*`
/// architecture and Llama 2/3 for `llama` (as `ChatTemplate(gguf:)`); nil otherwise (serving falls back to
/// ChatML there, training refuses chat data).
public func knownChatTemplate(gguf: GGUFFile) -> ChatTemplate? {
    if let t = gguf.string(GGUFKeys.chatTemplate) {
        return ChatTemplate.format(fromTemplate: t).map { ChatTemplate(format: $0) }
    }
    let arch = gguf.architecture ?? ""
    if arch.hasPrefix("gemma") || arch == "llama" { return ChatTemplate(gguf: gguf) }
    return nil
}

/// Loads training files: JSONL records, validated line by line, turned into sequences.
public enum DatasetLoader {
    /// SFT sequences from a JSONL file's contents (chat and prompt/completion lines may be mixed).
    /// - Throws: `DatasetError` naming the line and field, including sequence errors (too long, no template)
    ///   and preference lines (use `preferencePairs`).
    public static func supervisedExamples(_ bytes: [UInt8], builder: SequenceBuilder) throws -> [TokenizedExample] {
        try DatasetRecord.parseLines(bytes).map { line, record in
            if case .preference = record {
                throw DatasetError(line: line, field: "", reason: "a preference (DPO) line in an SFT dataset")
            }
            do { return try builder.example(record) } catch let e as SequenceError {
                throw DatasetError(line: line, field: field(of: e, record), reason: e.description)
            }
        }
    }

    /// DPO pairs from a JSONL file's contents (every line a preference line).
    /// - Throws: `DatasetError` naming the line and field.
    public static func preferencePairs(_ bytes: [UInt8], builder: SequenceBuilder) throws -> [TokenizedPair] {
        try DatasetRecord.parseLines(bytes).map { line, record in
            guard case .preference = record else {
                throw DatasetError(line: line, field: "", reason: "a DPO dataset needs preference lines (input, preferred_output, non_preferred_output)")
            }
            do { return try builder.pair(record) } catch let e as SequenceError {
                throw DatasetError(line: line, field: field(of: e, record), reason: e.description)
            }
        }
    }

    /// Reads a file and calls `supervisedExamples`.
    /// - Throws: `DatasetError` (line 0 for an unreadable file).
    public static func supervisedExamples(path: String, builder: SequenceBuilder) throws -> [TokenizedExample] {
        try supervisedExamples(read(path), builder: builder)
    }

    /// Reads a file and calls `preferencePairs`.
    /// - Throws: `DatasetError` (line 0 for an unreadable file).
    public static func preferencePairs(path: String, builder: SequenceBuilder) throws -> [TokenizedPair] {
        try preferencePairs(read(path), builder: builder)
    }

    static func read(_ path: String) throws -> [UInt8] {
        do { return try AtomicFile.read(path) } catch {
            throw DatasetError(line: 0, field: "", reason: "cannot read \(path): \(error)")
        }
    }

    private static func field(of e: SequenceError, _ record: DatasetRecord) -> String {
        let messagesField: String
        if case .preference = record { messagesField = "input.messages" } else { messagesField = "messages" }
        switch e {
        case .template(let t):
            switch t {
            case .unknownRole(let i, _, _), .rolesNotAlternating(let i, _, _): return "\(messagesField)[\(i)].role"
            case .misplacedSystemMessage(let i): return "\(messagesField)[\(i)]"
            default: return messagesField
            }
        case .noChatTemplate: return messagesField
        default: return ""
        }
    }
}
