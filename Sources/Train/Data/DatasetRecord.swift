// Training data lines (JSONL), validated one by one. Formats (OpenAI's fine-tuning formats):
//   chat               {"messages": [{"role": "system"|"user"|"assistant", "content": "…", "weight": 0|1}, …]}
//   prompt/completion  {"prompt": "…", "completion": "…"}
//   preference (DPO)   {"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", "content": "…"}],
//                       "non_preferred_output": [{"role": "assistant", "content": "…"}]}
// Source: OpenAI's fine-tuning guide (chat format with per-message `weight`, DPO format). Tool messages, tool calls
// and function definitions are not implemented and are refused by name.
import Foundation

/// One chat message of a training line.
public struct TrainingMessage: Sendable, Equatable {
    /// `system`, `user` or `assistant`.
    public var role: String
    /// The text (trimmed later by the chat template, as Gemma's template does).
    public var content: String
    /// For assistant messages: 0 = not trained on, 1 or nil = trained on (OpenAI's `weight`).
    public var weight: Int?

    /// - Parameters: see the properties.
    public init(role: String, content: String, weight: Int? = nil) {
        self.role = role
        self.content = content
        self.weight = weight
    }

    /// Whether the loss scores this message: an assistant message whose weight is not 0.
    public var isTrained: Bool { role == "assistant" && weight != 0 }
}

/// One validated line of a training file.
public enum DatasetRecord: Sendable, Equatable {
    /// A conversation; the loss scores the trained assistant messages.
    case chat([TrainingMessage])
    /// A prompt and its completion; the loss scores the completion and EOS.
    case promptCompletion(prompt: String, completion: String)
    /// A preference pair: the conversation so far and the preferred / non-preferred assistant answers.
    case preference(input: [TrainingMessage], preferred: String, nonPreferred: String)
}

/// A training line that cannot be used. `line` is 1-based; `field` is a JSON path such as `messages[2].role`
/// ("" for the line as a whole).
public struct DatasetError: Error, CustomStringConvertible, Equatable {
    /// 1-based line number in the file.
    public let line: Int
    /// JSON path of the offending field, "" for the whole line.
    public let field: String
    /// What is wrong.
    public let reason: String

    /// - Parameters: see the properties.
    public init(line: Int, field: String, reason: String) {
        self.line = line
        self.field = field
        self.reason = reason
    }

    public var description: String {
        field.isEmpty ? "line \(line): \(reason)" : "line \(line): \(field): \(reason)"
    }
}

/// A JSON value as decoded by Foundation's `JSONDecoder` (booleans and numbers kept apart).
enum JSONTree: Decodable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONTree])
    case object([String: JSONTree])

    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let b = try? c.decode(Bool.self) {
            self = .bool(b)
        } else if let d = try? c.decode(Double.self) {
            self = .number(d)
        } else if let s = try? c.decode(String.self) {
            self = .string(s)
        } else if let a = try? c.decode([JSONTree].self) {
            self = .array(a)
        } else {
            self = .object(try c.decode([String: JSONTree].self))
        }
    }

    var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .number: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }
}

extension DatasetRecord {
    /// Parses and validates one JSONL line.
    /// - Parameters: text: the line's UTF-8 bytes (no newline); line: its 1-based number, for errors.
    /// - Throws: `DatasetError` naming the line and the field.
    public static func parse(_ text: [UInt8], line: Int) throws -> DatasetRecord {
        func fail(_ field: String, _ reason: String) -> DatasetError { DatasetError(line: line, field: field, reason: reason) }
        let tree: JSONTree
        do {
            tree = try JSONDecoder().decode(JSONTree.self, from: Data(text))
        } catch {
            throw fail("", "not valid JSON")
        }
        guard case .object(let top) = tree else { throw fail("", "a line must be a JSON object, not \(tree.typeName)") }

        func string(_ v: JSONTree?, _ field: String) throws -> String {
            guard let v else { throw fail(field, "missing") }
            guard case .string(let s) = v else { throw fail(field, "must be a string, not \(v.typeName)") }
            return s
        }
        func refuseUnknown(_ object: [String: JSONTree], allowed: Set<String>, prefix: String) throws {
            for key in object.keys.sorted() where !allowed.contains(key) {
                let field = prefix.isEmpty ? key : prefix + "." + key
                switch key {
                case "tools", "functions", "parallel_tool_calls", "tool_calls", "function_call", "tool_call_id":
                    throw fail(field, "tool and function calling is not supported for training")
                default:
                    throw fail(field, "unknown field")
                }
            }
        }
        func messages(_ v: JSONTree?, _ field: String) throws -> [TrainingMessage] {
            guard let v else { throw fail(field, "missing") }
            guard case .array(let items) = v else { throw fail(field, "must be an array, not \(v.typeName)") }
            guard !items.isEmpty else { throw fail(field, "must contain at least one message") }
            var out: [TrainingMessage] = []
            for (i, item) in items.enumerated() {
                let f = "\(field)[\(i)]"
                guard case .object(let m) = item else { throw fail(f, "must be an object, not \(item.typeName)") }
                try refuseUnknown(m, allowed: ["role", "content", "weight", "name"], prefix: f)
                let role = try string(m["role"], f + ".role")
                switch role {
                case "system", "user", "assistant": break
                case "tool", "function": throw fail(f + ".role", "\(role) messages are not supported for training")
                default: throw fail(f + ".role", "unknown role \"\(role)\"; use system, user or assistant")
                }
                let content = try string(m["content"], f + ".content")
                var weight: Int?
                if let w = m["weight"] {
                    guard role == "assistant" else { throw fail(f + ".weight", "only assistant messages take a weight") }
                    guard case .number(let d) = w, d == 0 || d == 1 else { throw fail(f + ".weight", "must be 0 or 1") }
                    weight = Int(d)
                }
                if let n = m["name"] {  // a participant name (OpenAI's format); accepted and not rendered
                    guard case .string = n else { throw fail(f + ".name", "must be a string") }
                }
                out.append(TrainingMessage(role: role, content: content, weight: weight))
            }
            return out
        }
        func answer(_ v: JSONTree?, _ field: String) throws -> String {
            guard let v else { throw fail(field, "missing") }
            guard case .array(let items) = v else { throw fail(field, "must be an array, not \(v.typeName)") }
            guard items.count == 1 else { throw fail(field, "must hold exactly one assistant message") }
            guard case .object(let m) = items[0] else { throw fail(field + "[0]", "must be an object") }
            try refuseUnknown(m, allowed: ["role", "content"], prefix: field + "[0]")
            let role = try string(m["role"], field + "[0].role")
            guard role == "assistant" else { throw fail(field + "[0].role", "must be \"assistant\"") }
            return try string(m["content"], field + "[0].content")
        }

        if top["messages"] != nil {
            try refuseUnknown(top, allowed: ["messages"], prefix: "")
            let m = try messages(top["messages"], "messages")
            guard m.contains(where: \.isTrained) else {
                throw fail("messages", "no assistant message to train on (all absent or weight 0)")
            }
            return .chat(m)
        }
        if top["input"] != nil || top["preferred_output"] != nil || top["non_preferred_output"] != nil {
            try refuseUnknown(top, allowed: ["input", "preferred_output", "non_preferred_output"], prefix: "")
            guard let input = top["input"] else { throw fail("input", "missing") }
            guard case .object(let inputObject) = input else { throw fail("input", "must be an object") }
            try refuseUnknown(inputObject, allowed: ["messages"], prefix: "input")
            let m = try messages(inputObject["messages"], "input.messages")
            if let w = m.firstIndex(where: { $0.weight != nil }) {
                throw fail("input.messages[\(w)].weight", "weights are not used in preference lines")
            }
            guard m.last?.role == "user" else { throw fail("input.messages", "must end with a user message") }
            let preferred = try answer(top["preferred_output"], "preferred_output")
            let nonPreferred = try answer(top["non_preferred_output"], "non_preferred_output")
            return .preference(input: m, preferred: preferred, nonPreferred: nonPreferred)
        }
        if top["prompt"] != nil || top["completion"] != nil {
            try refuseUnknown(top, allowed: ["prompt", "completion"], prefix: "")
            let prompt = try string(top["prompt"], "prompt")
            let completion = try string(top["completion"], "completion")
            guard !completion.isEmpty else { throw fail("completion", "must not be empty") }
            return .promptCompletion(prompt: prompt, completion: completion)
        }
        throw fail("", "expected \"messages\", \"prompt\"/\"completion\" or \"input\"/\"preferred_output\"/\"non_preferred_output\"")
    }

    /// Parses every non-blank line of a JSONL file's contents.
    /// - Returns: `(line number, record)` pairs in file order.
    /// - Throws: `DatasetError` for the first bad line (and for a file with no line at all).
    public static func parseLines(_ bytes: [UInt8]) throws -> [(line: Int, record: DatasetRecord)] {
        var out: [(line: Int, record: DatasetRecord)] = []
        var lineNumber = 0
        for raw in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNumber += 1
            var line = Array(raw)
            if line.last == UInt8(ascii: "\r") { line.removeLast() }
            if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { continue }
            out.append((lineNumber, try parse(line, line: lineNumber)))
        }
        guard !out.isEmpty else { throw DatasetError(line: 0, field: "", reason: "the file holds no training line") }
        return out
    }
}
