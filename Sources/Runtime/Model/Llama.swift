// Llama family (`general.architecture = "llama"`: Llama 2/3, TinyLlama, Mistral-style GQA): configuration and
// weights. Source: Touvron et al. 2023 (arXiv:2302.13971, 2307.09288); llama.cpp src/models/llama.cpp.
//  - RMSNorm → attention (GQA, RoPE with adjacent pairing: llama.cpp's converter permutes Q/K rows) → residual
//  - RMSNorm → SwiGLU FFN (silu(gate)·up → down) → residual
//  - output.weight, or the embedding when tied; optional `rope_freqs.weight` (Llama 3.1 frequency factors)

enum Llama {
    static let architecture = "llama"

    static func config(_ gguf: GGUFFile) throws -> ModelConfig {
        let m = MetadataReader(gguf: gguf, arch: architecture)
        let nEmbd = try m.int("embedding_length")
        let nHead = try m.int("attention.head_count")
        let nHeadKV = try m.int("attention.head_count_kv", default: nHead)
        let nLayer = try m.int("block_count")
        guard nHead % nHeadKV == 0 else {
            throw ModelError.invalidMetadata(key: "llama.attention.head_count_kv", reason: "must divide head_count")
        }
        let headDim = try m.int("attention.key_length", default: nEmbd / nHead)
        let scaleFactor = m.float("rope.scaling.factor", default: 1)
        let linearScaling = gguf.string("llama.rope.scaling.type").map { $0 == "linear" } ?? (scaleFactor != 1)
        return ModelConfig(
            architecture: architecture, nVocab: try vocabSize(gguf, nEmbd: nEmbd), nEmbd: nEmbd, nLayer: nLayer,
            nHead: nHead, nHeadKV: nHeadKV, headDim: headDim, nFF: try m.int("feed_forward_length"),
            nCtxTrain: try m.int("context_length", default: 4096), slidingWindow: nil,
            rmsEpsilon: m.float("attention.layer_norm_rms_epsilon", default: 1e-5),
            ropeFreqBase: m.float("rope.freq_base", default: 10_000), ropeFreqBaseSWA: 10_000,
            ropeScale: linearScaling && scaleFactor > 0 ? scaleFactor : 1,
            ropeDims: try m.int("rope.dimension_count", default: headDim), ropeStyle: .normal,
            attentionScale: 1 / Float(headDim).squareRoot(),
            layerUsesSlidingWindow: Array(repeating: false, count: nLayer), embeddingScale: 1, activation: .silu,
            hasQKNorm: false, hasPostNorms: false)
    }

    static func weights(_ loader: WeightLoader, config: ModelConfig) throws -> TransformerWeights {
        let g = try loader.globals(config: config)
        let layers = try (0..<config.nLayer).map { try loader.layer($0, config: config, gemma: false) }
        let factors = try loader.optionalVector("rope_freqs.weight", count: config.ropeDims / 2)
        return TransformerWeights(tokenEmbedding: g.embd, layers: layers, outputNorm: g.norm, output: g.output,
                                  ropeFreqFactors: factors)
    }
}
