// Gemma 3 (`general.architecture = "gemma3"`): configuration and weights.
// Source of the architecture facts: Gemma 3 Technical Report (arXiv:2503.19786); llama.cpp src/models/gemma3.cpp;
// ../shared/reference/gemma-3-270m-q4_k_m/README.md ("Architecture facts for this file").
//  - embeddings × sqrt(n_embd); tied output head
//  - RMSNorm gains stored as (1 + w) in GGUF: multiplied as stored
//  - per-head RMSNorm of Q and K (attn_q_norm / attn_k_norm) before RoPE (NEOX pairing)
//  - 5 sliding-window layers (window `gemma3.attention.sliding_window`, RoPE base 10000) per global layer
//    (every 6th: indices 5, 11, 17, ...; RoPE base `gemma3.rope.freq_base`, linear scaling if given)
//  - attention scale 1/sqrt(head_dim) (query_pre_attn_scalar = head_dim for the released sizes)
//  - GELU-tanh gated FFN, post-attention and post-FFN norms, no soft-capping

enum Gemma3 {
    static let architecture = "gemma3"
    /// Every `slidingWindowPattern`-th layer uses global attention (llama.cpp `set_swa_pattern(6)`).
    static let slidingWindowPattern = 6
    /// RoPE base of the sliding-window layers (llama.cpp `rope_freq_base_train_swa`; not stored in GGUF).
    static let ropeFreqBaseSWA: Float = 10_000

    static func config(_ gguf: GGUFFile) throws -> ModelConfig {
        let m = MetadataReader(gguf: gguf, arch: architecture)
        let nEmbd = try m.int("embedding_length")
        let nHead = try m.int("attention.head_count")
        let nHeadKV = try m.int("attention.head_count_kv", default: nHead)
        let nLayer = try m.int("block_count")
        let headDim = try m.int("attention.key_length", default: nEmbd / nHead)
        guard nHead % nHeadKV == 0 else {
            throw ModelError.invalidMetadata(key: "gemma3.attention.head_count_kv", reason: "must divide head_count")
        }
        let vocab = try vocabSize(gguf, nEmbd: nEmbd)
        let window = try m.int("attention.sliding_window", default: 512)
        let swa = (0..<nLayer).map { ($0 + 1) % slidingWindowPattern != 0 }
        let scaleFactor = m.float("rope.scaling.factor", default: 1)
        return ModelConfig(
            architecture: architecture, nVocab: vocab, nEmbd: nEmbd, nLayer: nLayer, nHead: nHead, nHeadKV: nHeadKV,
            headDim: headDim, nFF: try m.int("feed_forward_length"), nCtxTrain: try m.int("context_length", default: 8192),
            slidingWindow: window, rmsEpsilon: m.float("attention.layer_norm_rms_epsilon", default: 1e-6),
            ropeFreqBase: m.float("rope.freq_base", default: 1_000_000), ropeFreqBaseSWA: ropeFreqBaseSWA,
            ropeScale: scaleFactor > 0 ? scaleFactor : 1, ropeDims: try m.int("rope.dimension_count", default: headDim),
            ropeStyle: .neox, attentionScale: 1 / Float(headDim).squareRoot(), layerUsesSlidingWindow: swa,
            embeddingScale: Float(nEmbd).squareRoot(), activation: .geluTanh, hasQKNorm: true, hasPostNorms: true)
    }

    static func weights(_ loader: WeightLoader, config: ModelConfig) throws -> TransformerWeights {
        let g = try loader.globals(config: config)
        let layers = try (0..<config.nLayer).map { try loader.layer($0, config: config, gemma: true) }
        return TransformerWeights(tokenEmbedding: g.embd, layers: layers, outputNorm: g.norm, output: g.output,
                                  ropeFreqFactors: nil)
    }
}

/// Vocabulary size from the embedding tensor (`token_embd.weight` dims `[n_embd, n_vocab]`).
func vocabSize(_ gguf: GGUFFile, nEmbd: Int) throws -> Int {
    guard let t = gguf.tensor(named: "token_embd.weight") else { throw ModelError.missingTensor("token_embd.weight") }
    guard t.dims.count == 2, t.dims[0] == nEmbd, t.dims[1] > 0 else {
        throw ModelError.tensorShape(name: "token_embd.weight", expected: [nEmbd, -1], found: t.dims)
    }
    return t.dims[1]
}
