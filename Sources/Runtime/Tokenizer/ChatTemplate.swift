// ChatTemplate: renders chat messages into prompt token ids for the turn formats of Gemma, Llama 2, Llama 3 and
// ChatML, without a Jinja interpreter.
//
// Markup (turn markers, role names) is tokenized with special-token parsing; message content never is, so text a
// user types such as "<end_of_turn>" stays literal characters and cannot close or open a turn. Gemma prompts are
// tokenized piece by piece (header, content, `<end_of_turn>`, "\n" each on its own), the rule the trainer uses, so
// serving and training see the same ids for the same messages. The other formats are tokenized as one sequence
// (`Tokenizer.encode(_ segments:)`), so their ids equal llama.cpp's tokenization of the rendered prompt string
// whenever the content contains no control-token text.
//
// Formats (sources: the models' official chat templates in their tokenizer_config.json, and llama.cpp
// src/llama-chat.cpp for the same formats):
//   gemma   <start_of_turn>user\n{system}\n\n{content}<end_of_turn>\n<start_of_turn>model\n{content}<end_of_turn>\n
//   llama2  [INST] <<SYS>>\n{system}\n<</SYS>>\n\n{content} [/INST] {content} </s><s>[INST] …
//   llama3  <|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>
//   chatml  <|im_start|>{role}\n{content}<|im_end|>\n

/// One chat message: `role` is `system`, `user` or `assistant` (`model` is accepted for Gemma, `tool` for Llama 3
/// and ChatML).
public struct ChatMessage: Sendable, Codable, Equatable {
    public var role: String
    public var content: String
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// A run of rendered chat ids and what it holds (see `ChatTemplate.renderPieces`).
public struct ChatPiece: Sendable, Equatable {
    /// What a piece holds; `message` is the index in the rendered `[ChatMessage]`.
    public enum Kind: Sendable, Equatable {
        /// BOS, turn headers, separators, the generation prompt.
        case markup
        /// The content of a system, user or tool message (Gemma: the first user turn includes the system text).
        case content(message: Int)
        /// An assistant message's content (Llama 2: with the spaces around it).
        case assistantContent(message: Int)
        /// The token(s) closing an assistant turn: `<end_of_turn>`, `<|eot_id|>`, `<|im_end|>`, or Llama 2's EOS.
        case assistantEnd(message: Int)
    }
    /// What the ids hold.
    public let kind: Kind
    /// Token ids of this piece.
    public let ids: [Int32]
    /// - Parameters: kind: what the ids hold; ids: the piece's token ids.
    public init(kind: Kind, ids: [Int32]) {
        self.kind = kind
        self.ids = ids
    }
}

/// Why a conversation cannot be rendered. `description` is written for an HTTP 400 response body.
public enum ChatTemplateError: Error, CustomStringConvertible, Equatable {
    /// No messages were given.
    case emptyConversation
    /// Message `index` has a role the template does not know.
    case unknownRole(index: Int, role: String, allowed: [String])
    /// A system message that is not the first message (Gemma and Llama 2 only take one, first).
    case misplacedSystemMessage(index: Int)
    /// Roles do not alternate user/assistant starting with user (Gemma and Llama 2 require it).
    case rolesNotAlternating(index: Int, expected: String, found: String)
    /// Only a system message, with no user message to attach it to (Gemma and Llama 2).
    case noUserMessage
    /// Piece `piece` of a non-Gemma rendering ends inside a token, so its ids cannot be told apart from the next
    /// piece's (training masks need clean boundaries).
    case unstableBoundary(piece: Int)

    public var description: String {
        switch self {
        case .emptyConversation:
            return "messages must contain at least one message"
        case .unknownRole(let index, let role, let allowed):
            return "messages[\(index)].role \"\(role)\" is not supported; use one of: "
                + allowed.joined(separator: ", ")
        case .misplacedSystemMessage(let index):
            return "messages[\(index)]: a system message is only allowed as the first message"
        case .rolesNotAlternating(let index, let expected, let found):
            return "messages[\(index)].role is \"\(found)\" but \"\(expected)\" was expected: "
                + "after an optional system message, roles must alternate user/assistant starting with user"
        case .noUserMessage:
            return "messages must contain a user message after the system message"
        case .unstableBoundary(let piece):
            return "the rendered conversation cannot be split at piece \(piece): a token spans the boundary"
        }
    }
}

/// A chat prompt format, chosen from the GGUF metadata.
public struct ChatTemplate: Sendable, Equatable {
    /// The supported turn formats.
    public enum Format: String, Sendable, CaseIterable {
        /// Gemma 1/2/3: `<start_of_turn>{user|model}\n…<end_of_turn>\n`, no system role.
        case gemma
        /// Llama 2 chat: `[INST] <<SYS>>…<</SYS>> … [/INST] … </s><s>[INST] …`.
        case llama2
        /// Llama 3 instruct: `<|start_header_id|>{role}<|end_header_id|>\n\n…<|eot_id|>`.
        case llama3
        /// ChatML (Qwen and others): `<|im_start|>{role}\n…<|im_end|>\n`.
        case chatml
    }

    /// The format this template renders.
    public let format: Format

    /// Picks the format from `tokenizer.chat_template` when present (by its markers: `<start_of_turn>`,
    /// `<|start_header_id|>`, `<|im_start|>`, `[INST]`), else from `general.architecture` (`gemma*` → gemma;
    /// `llama` → llama3 if the vocabulary has `<|start_header_id|>`, else llama2), else ChatML.
    public init(gguf: GGUFFile) {
        if let template = gguf.string(GGUFKeys.chatTemplate), let f = Self.format(fromTemplate: template) {
            format = f
            return
        }
        let arch = gguf.architecture ?? ""
        if arch.hasPrefix("gemma") {
            format = .gemma
        } else if arch == "llama" {
            let hasHeaderTokens = gguf.stringArray(GGUFKeys.tokens)?.contains("<|start_header_id|>") ?? false
            format = hasHeaderTokens ? .llama3 : .llama2
        } else {
            format = .chatml
        }
    }

    /// A template with an explicit format.
    public init(format: Format) { self.format = format }

    /// The format whose markers appear in a Jinja chat template, or nil.
    public static func format(fromTemplate template: String) -> Format? {
        if template.contains("<start_of_turn>") { return .gemma }
        if template.contains("<|start_header_id|>") { return .llama3 }
        if template.contains("<|im_start|>") { return .chatml }
        if template.contains("[INST]") { return .llama2 }
        return nil
    }

    /// Token ids of the prompt for `messages`.
    ///
    /// Markup tokens are parsed as special; message content never is (`parseSpecial: false`). BOS is prepended once
    /// when `tokenizer.addBOS`. Gemma has no system role: a leading system message is prepended to the first user
    /// turn followed by a blank line, and `assistant` is written `model`, as in Gemma's official template; content is
    /// trimmed of surrounding whitespace as that template does.
    ///
    /// Gemma prompts follow the training rule (one rule for training and serving): every piece (turn header,
    /// content, `<end_of_turn>`, "\n") is tokenized on its own and the ids are concatenated, exactly as the
    /// training reference builds its sequences (reference/gemma-3-270m-q4_k_m/train/README.md), so a fine-tuned
    /// adapter is served the ids it was trained on. The other formats tokenize the rendered text as one sequence
    /// (llama.cpp's tokenization of the template's output); `renderPieces` cuts those ids at piece boundaries.
    /// - Parameter addGenerationPrompt: end with the opening of an assistant turn (`<start_of_turn>model\n`).
    /// - Returns: ids, `[BOS] + rendered prompt`.
    /// - Throws: `ChatTemplateError` for an empty conversation, unknown roles, or (Gemma, Llama 2) a misplaced system
    ///   message or roles that do not alternate.
    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool, tokenizer: Tokenizer) throws -> [Int32] {
        let groups = try pieceGroups(messages, addGenerationPrompt, tokenizer: tokenizer)
        if format == .gemma {
            return try renderPieces(groups, tokenizer: tokenizer).flatMap(\.ids)
        }
        return tokenizer.encode(groups.flatMap(\.segments), addBOS: tokenizer.addBOS)
    }

    /// The ids of `render(_:addGenerationPrompt:tokenizer:)`, cut into labelled pieces, so a trainer can score the
    /// assistant's tokens and nothing else. Concatenating the pieces' `ids` gives exactly `render`'s ids.
    ///
    /// Gemma: each piece is tokenized on its own (see `render`). Other formats: the whole text is tokenized once
    /// and cut where the text before a boundary tokenizes to a prefix of the whole; pieces whose boundary falls
    /// inside a token are merged (an assistant message's content with its end token, or two unscored pieces).
    /// - Throws: `ChatTemplateError` as `render`, and `.unstableBoundary` when a token spans the boundary between
    ///   an assistant message's tokens and other tokens (the mask would be ambiguous).
    public func renderPieces(_ messages: [ChatMessage], addGenerationPrompt: Bool, tokenizer: Tokenizer) throws
        -> [ChatPiece]
    {
        try renderPieces(pieceGroups(messages, addGenerationPrompt, tokenizer: tokenizer), tokenizer: tokenizer)
    }

    private func renderPieces(_ groups: [PieceGroup], tokenizer: Tokenizer) throws -> [ChatPiece] {
        var pieces: [ChatPiece] = []
        if tokenizer.addBOS, let bos = tokenizer.bosID { pieces.append(ChatPiece(kind: .markup, ids: [bos])) }
        if format == .gemma {
            for g in groups {
                let ids = g.segments.flatMap { tokenizer.encode([$0], addBOS: false) }
                pieces.append(ChatPiece(kind: g.kind, ids: ids))
            }
            return pieces
        }
        // A boundary is clean when the text up to it tokenizes to a prefix of the whole. Pieces between clean
        // boundaries are merged; that is harmless unless it mixes scored and unscored text (an assistant message's
        // tokens with anything else), which is an error.
        let all = groups.flatMap(\.segments)
        let full = tokenizer.encode(all, addBOS: tokenizer.addBOS)
        var cut = tokenizer.encode([], addBOS: tokenizer.addBOS).count
        var prefix: [Tokenizer.Segment] = []
        var run: [ChatPiece.Kind] = []
        for (k, g) in groups.enumerated() {
            prefix += g.segments
            run.append(g.kind)
            let ids = k == groups.count - 1 ? full : tokenizer.encode(prefix, addBOS: tokenizer.addBOS)
            guard ids.count <= full.count, full[..<ids.count].elementsEqual(ids) else { continue }
            guard let kind = Self.mergedKind(run) else { throw ChatTemplateError.unstableBoundary(piece: k) }
            pieces.append(ChatPiece(kind: kind, ids: Array(full[cut..<ids.count])))
            cut = ids.count
            run = []
        }
        return pieces
    }

    /// The kind of several adjacent pieces merged into one, or nil when they mix an assistant message's tokens
    /// with other tokens.
    private static func mergedKind(_ kinds: [ChatPiece.Kind]) -> ChatPiece.Kind? {
        guard let first = kinds.first else { return nil }
        if kinds.allSatisfy({ $0 == first }) { return first }
        func assistant(_ k: ChatPiece.Kind) -> Int? {
            switch k {
            case .assistantContent(let m), .assistantEnd(let m): return m
            case .markup, .content: return nil
            }
        }
        let messages = kinds.map(assistant)
        if let m = messages[0], messages.allSatisfy({ $0 == m }) { return .assistantContent(message: m) }
        guard messages.allSatisfy({ $0 == nil }) else { return nil }
        for k in kinds { if case .content = k { return k } }
        return .markup
    }

    /// Segments of one piece and what they hold.
    private struct PieceGroup {
        var segments: [Tokenizer.Segment]
        var kind: ChatPiece.Kind
    }

    private func pieceGroups(_ messages: [ChatMessage], _ addGenerationPrompt: Bool, tokenizer: Tokenizer) throws
        -> [PieceGroup]
    {
        guard !messages.isEmpty else { throw ChatTemplateError.emptyConversation }
        switch format {
        case .gemma: return try Self.gemma(messages, addGenerationPrompt)
        case .llama2: return try Self.llama2(messages, addGenerationPrompt, tokenizer: tokenizer)
        case .llama3: return try Self.llama3(messages, addGenerationPrompt)
        case .chatml: return try Self.chatml(messages, addGenerationPrompt)
        }
    }

    // MARK: - Formats

    private static func markup(_ s: String) -> Tokenizer.Segment { .text(s, parseSpecial: true) }
    private static func content(_ s: String) -> Tokenizer.Segment { .text(s, parseSpecial: false) }
    private static func group(_ kind: ChatPiece.Kind, _ segments: Tokenizer.Segment...) -> PieceGroup {
        PieceGroup(segments: segments, kind: kind)
    }

    /// Python's `str.strip()` (Jinja `trim`): removes leading and trailing Unicode whitespace.
    static func trim(_ s: String) -> String {
        func isSpace(_ u: Unicode.Scalar) -> Bool { u.properties.isWhitespace || (0x1C...0x1F).contains(u.value) }
        let scalars = s.unicodeScalars
        guard let first = scalars.firstIndex(where: { !isSpace($0) }),
            let last = scalars.lastIndex(where: { !isSpace($0) })
        else { return "" }
        return String(scalars[first...last])
    }

    /// Splits off a leading system message and checks that the rest alternates user/assistant from user.
    /// `assistantNames` are the roles accepted as the assistant. Each turn keeps its index in `messages`.
    private static func alternatingTurns(
        _ messages: [ChatMessage], assistantNames: Set<String>
    ) throws -> (system: String?, turns: [(isUser: Bool, content: String, index: Int)]) {
        let allowed = ["system", "user"] + assistantNames.sorted()
        var system: String?
        var turns: [(isUser: Bool, content: String, index: Int)] = []
        for (i, m) in messages.enumerated() {
            switch m.role {
            case "system":
                guard i == 0 else { throw ChatTemplateError.misplacedSystemMessage(index: i) }
                system = m.content
            case _ where m.role == "user" || assistantNames.contains(m.role):
                let isUser = m.role == "user"
                let expectUser = turns.count % 2 == 0
                guard isUser == expectUser else {
                    throw ChatTemplateError.rolesNotAlternating(
                        index: i, expected: expectUser ? "user" : "assistant", found: m.role)
                }
                turns.append((isUser, m.content, i))
            default:
                throw ChatTemplateError.unknownRole(index: i, role: m.role, allowed: allowed)
            }
        }
        if turns.isEmpty { throw ChatTemplateError.noUserMessage }
        return (system, turns)
    }

    private static func gemma(_ messages: [ChatMessage], _ addGenerationPrompt: Bool) throws -> [PieceGroup] {
        let (system, turns) = try alternatingTurns(messages, assistantNames: ["assistant", "model"])
        var out: [PieceGroup] = []
        for (k, turn) in turns.enumerated() {
            out.append(group(.markup, markup("<start_of_turn>" + (turn.isUser ? "user" : "model") + "\n")))
            var text = trim(turn.content)
            if k == 0, let system { text = system + "\n\n" + text }
            if turn.isUser {
                out.append(group(.content(message: turn.index), content(text)))
                out.append(group(.markup, markup("<end_of_turn>")))
            } else {
                out.append(group(.assistantContent(message: turn.index), content(text)))
                out.append(group(.assistantEnd(message: turn.index), markup("<end_of_turn>")))
            }
            out.append(group(.markup, markup("\n")))
        }
        if addGenerationPrompt { out.append(group(.markup, markup("<start_of_turn>model\n"))) }
        return out
    }

    private static func llama2(
        _ messages: [ChatMessage], _ addGenerationPrompt: Bool, tokenizer: Tokenizer
    ) throws -> [PieceGroup] {
        // Meta's template: BOS opens every [INST] after the first (the first BOS comes from addBOS), the answer is
        // surrounded by spaces and closed by EOS, and content is stripped.
        // Scored pieces: the answer with its surrounding spaces, and EOS.
        let (system, turns) = try alternatingTurns(messages, assistantNames: ["assistant"])
        var out: [PieceGroup] = []
        for (k, turn) in turns.enumerated() {
            if turn.isUser {
                var header: [Tokenizer.Segment] = []
                if k > 0, let bos = tokenizer.bosID { header.append(.token(bos)) }
                header.append(markup("[INST] "))
                if k == 0, let system {
                    header += [markup("<<SYS>>\n"), content(trim(system)), markup("\n<</SYS>>\n\n")]
                }
                out.append(PieceGroup(segments: header, kind: .markup))
                out.append(group(.content(message: turn.index), content(trim(turn.content))))
                out.append(group(.markup, markup(" [/INST]")))
            } else {
                out.append(group(.assistantContent(message: turn.index), markup(" "), content(trim(turn.content)), markup(" ")))
                if let eos = tokenizer.eosID { out.append(group(.assistantEnd(message: turn.index), .token(eos))) }
            }
        }
        _ = addGenerationPrompt  // the prompt already ends with " [/INST]"; the answer follows directly
        return out
    }

    private static func llama3(_ messages: [ChatMessage], _ addGenerationPrompt: Bool) throws -> [PieceGroup] {
        let allowed = ["system", "user", "assistant", "tool"]
        var out: [PieceGroup] = []
        for (i, m) in messages.enumerated() {
            guard allowed.contains(m.role) else {
                throw ChatTemplateError.unknownRole(index: i, role: m.role, allowed: allowed)
            }
            let isAssistant = m.role == "assistant"
            out.append(group(.markup, markup("<|start_header_id|>" + m.role + "<|end_header_id|>\n\n")))
            out.append(group(isAssistant ? .assistantContent(message: i) : .content(message: i), content(trim(m.content))))
            out.append(group(isAssistant ? .assistantEnd(message: i) : .markup, markup("<|eot_id|>")))
        }
        if addGenerationPrompt { out.append(group(.markup, markup("<|start_header_id|>assistant<|end_header_id|>\n\n"))) }
        return out
    }

    private static func chatml(_ messages: [ChatMessage], _ addGenerationPrompt: Bool) throws -> [PieceGroup] {
        let allowed = ["system", "user", "assistant", "tool"]
        var out: [PieceGroup] = []
        for (i, m) in messages.enumerated() {
            guard allowed.contains(m.role) else {
                throw ChatTemplateError.unknownRole(index: i, role: m.role, allowed: allowed)
            }
            let isAssistant = m.role == "assistant"
            out.append(group(.markup, markup("<|im_start|>" + m.role + "\n")))
            out.append(group(isAssistant ? .assistantContent(message: i) : .content(message: i), content(m.content)))
            out.append(group(isAssistant ? .assistantEnd(message: i) : .markup, markup("<|im_end|>")))
            out.append(group(.markup, markup("\n")))
        }
        if addGenerationPrompt { out.append(group(.markup, markup("<|im_start|>assistant\n"))) }
        return out
    }
}
