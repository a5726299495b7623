// ChatTemplate: renders chat messages into prompt token ids for the turn formats of Gemma, Llama 2, Llama 3 and
// ChatML, without a Jinja interpreter.
//
// Markup (turn markers, role names) is tokenized with special-token parsing; message content never is, so text a
// user types such as "<end_of_turn>" stays literal characters and cannot close or open a turn. Everything is
// tokenized as one sequence (`Tokenizer.encode(_ segments:)`), so the ids equal llama.cpp's tokenization of the
// rendered prompt string whenever the content contains no control-token text.
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
    /// - Parameter addGenerationPrompt: end with the opening of an assistant turn (`<start_of_turn>model\n`).
    /// - Returns: ids, `[BOS] + rendered prompt`.
    /// - Throws: `ChatTemplateError` for an empty conversation, unknown roles, or (Gemma, Llama 2) a misplaced system
    ///   message or roles that do not alternate.
    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool, tokenizer: Tokenizer) throws -> [Int32] {
        guard !messages.isEmpty else { throw ChatTemplateError.emptyConversation }
        let segments: [Tokenizer.Segment]
        switch format {
        case .gemma: segments = try Self.gemma(messages, addGenerationPrompt)
        case .llama2: segments = try Self.llama2(messages, addGenerationPrompt, tokenizer: tokenizer)
        case .llama3: segments = try Self.llama3(messages, addGenerationPrompt)
        case .chatml: segments = try Self.chatml(messages, addGenerationPrompt)
        }
        return tokenizer.encode(segments, addBOS: tokenizer.addBOS)
    }

    // MARK: - Formats

    private static func markup(_ s: String) -> Tokenizer.Segment { .text(s, parseSpecial: true) }
    private static func content(_ s: String) -> Tokenizer.Segment { .text(s, parseSpecial: false) }

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
    /// `assistantNames` are the roles accepted as the assistant.
    private static func alternatingTurns(
        _ messages: [ChatMessage], assistantNames: Set<String>
    ) throws -> (system: String?, turns: [(isUser: Bool, content: String)]) {
        let allowed = ["system", "user"] + assistantNames.sorted()
        var system: String?
        var turns: [(isUser: Bool, content: String)] = []
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
                turns.append((isUser, m.content))
            default:
                throw ChatTemplateError.unknownRole(index: i, role: m.role, allowed: allowed)
            }
        }
        if turns.isEmpty { throw ChatTemplateError.noUserMessage }
        return (system, turns)
    }

    static func gemma(_ messages: [ChatMessage], _ addGenerationPrompt: Bool) throws -> [Tokenizer.Segment] {
        let (system, turns) = try alternatingTurns(messages, assistantNames: ["assistant", "model"])
        var out: [Tokenizer.Segment] = []
        for (k, turn) in turns.enumerated() {
            out.append(markup("<start_of_turn>" + (turn.isUser ? "user" : "model") + "\n"))
            var text = trim(turn.content)
            if k == 0, let system { text = system + "\n\n" + text }
            out.append(content(text))
            out.append(markup("<end_of_turn>\n"))
        }
        if addGenerationPrompt { out.append(markup("<start_of_turn>model\n")) }
        return out
    }

    static func llama2(
        _ messages: [ChatMessage], _ addGenerationPrompt: Bool, tokenizer: Tokenizer
    ) throws -> [Tokenizer.Segment] {
        // Meta's template: BOS opens every [INST] after the first (the first BOS comes from addBOS), the answer is
        // surrounded by spaces and closed by EOS, and content is stripped.
        let (system, turns) = try alternatingTurns(messages, assistantNames: ["assistant"])
        var out: [Tokenizer.Segment] = []
        for (k, turn) in turns.enumerated() {
            if turn.isUser {
                if k > 0, let bos = tokenizer.bosID { out.append(.token(bos)) }
                out.append(markup("[INST] "))
                if k == 0, let system {
                    out.append(markup("<<SYS>>\n"))
                    out.append(content(trim(system)))
                    out.append(markup("\n<</SYS>>\n\n"))
                }
                out.append(content(trim(turn.content)))
                out.append(markup(" [/INST]"))
            } else {
                out.append(markup(" "))
                out.append(content(trim(turn.content)))
                out.append(markup(" "))
                if let eos = tokenizer.eosID { out.append(.token(eos)) }
            }
        }
        _ = addGenerationPrompt  // the prompt already ends with " [/INST]"; the answer follows directly
        return out
    }

    static func llama3(_ messages: [ChatMessage], _ addGenerationPrompt: Bool) throws -> [Tokenizer.Segment] {
        let allowed = ["system", "user", "assistant", "tool"]
        var out: [Tokenizer.Segment] = []
        for (i, m) in messages.enumerated() {
            guard allowed.contains(m.role) else {
                throw ChatTemplateError.unknownRole(index: i, role: m.role, allowed: allowed)
            }
            out.append(markup("<|start_header_id|>" + m.role + "<|end_header_id|>\n\n"))
            out.append(content(trim(m.content)))
            out.append(markup("<|eot_id|>"))
        }
        if addGenerationPrompt { out.append(markup("<|start_header_id|>assistant<|end_header_id|>\n\n")) }
        return out
    }

    static func chatml(_ messages: [ChatMessage], _ addGenerationPrompt: Bool) throws -> [Tokenizer.Segment] {
        let allowed = ["system", "user", "assistant", "tool"]
        var out: [Tokenizer.Segment] = []
        for (i, m) in messages.enumerated() {
            guard allowed.contains(m.role) else {
                throw ChatTemplateError.unknownRole(index: i, role: m.role, allowed: allowed)
            }
            out.append(markup("<|im_start|>" + m.role + "\n"))
            out.append(content(m.content))
            out.append(markup("<|im_end|>\n"))
        }
        if addGenerationPrompt { out.append(markup("<|im_start|>assistant\n")) }
        return out
    }
}
