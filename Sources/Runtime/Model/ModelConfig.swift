// ModelConfig: the hyperparameters of a decoder-only transformer, read once from GGUF metadata.
// Key names follow llama.cpp's llama-arch.cpp (`<arch>.embedding_length`, `<arch>.attention.head_count_kv`, ...).

/// Errors raised while building a model from a GGUF file.
public enum ModelError: Error, CustomStringConvertible, Equatable {
    /// `general.architecture` names an architecture lorad does not implement.
    case unsupportedArchitecture(String)
    /// A required metadata key is absent or has the wrong type.
    case missingMetadata(key: String)
    /// A metadata value is out of range (e.g. a head count of 0).
    case invalidMetadata(key: String, reason: String)
    /// A required tensor is absent.
    case missingTensor(String)
    /// A tensor's type or dims do not fit the configuration.
    case tensorShape(name: String, expected: [Int], found: [Int])
    /// A tensor's element type has no matmul kernel.
    case unsupportedTensorType(name: String, type: GGMLType)
    /// A forward batch is malformed (positions not continuing the cache, sequence index out of range, ...).
    case invalidBatch(String)
    /// A sequence would grow past its KV cache capacity.
    case contextOverflow(sequence: Int, needed: Int, capacity: Int)

    public var description: String {
        switch self {
        case .unsupportedArchitecture(let a):
            return "unsupported model architecture '\(a)' (supported: gemma3, llama)"
        case .missingMetadata(let k): return "GGUF metadata key '\(k)' is missing or has the wrong type"
        case .invalidMetadata(let k, let r): return "GGUF metadata key '\(k)' is invalid: \(r)"
        case .missingTensor(let n): return "tensor '\(n)' is missing from the model"
        case .tensorShape(let n, let e, let f): return "tensor '\(n)' has dims \(f), expected \(e)"
        case .unsupportedTensorType(let n, let t): return "tensor '\(n)' has unsupported type \(t)"
        case .invalidBatch(let r): return "invalid forward batch: \(r)"
        case .contextOverflow(let s, let n, let c):
            return "sequence \(s) needs \(n) tokens of KV cache but its capacity is \(c)"
        }
    }
}

/// How rotary position embeddings pair dimensions (llama.cpp `LLAMA_ROPE_TYPE_NORM` / `_NEOX`).
public enum RopeStyle: Sendable, Equatable {
    /// Adjacent pairs (2i, 2i+1): llama GGUFs, whose Q/K rows llama.cpp's converter permuted.
    case normal
    /// Half-split pairs (i, i + head_dim/2): Hugging Face `rotate_half` order (Gemma).
    case neox
}

/// Feed-forward gate activation.
public enum FFNActivation: Sendable, Equatable {
    /// GELU, tanh approximation (Gemma).
    case geluTanh
    /// SiLU / swish (Llama).
    case silu
}

/// Hyperparameters of a decoder-only transformer. Immutable; decoded from `<arch>.*` GGUF keys.
///
/// Dimension glossary used across Runtime: `n_tokens` rows in a batch, `n_embd` model width,
/// `n_head`/`n_head_kv` query/key-value heads, `head_dim` per head, `n_ff` feed-forward width,
/// `n_vocab` vocabulary size.
public struct ModelConfig: Sendable {
    /// `general.architecture`: "gemma3" or "llama".
    public let architecture: String
    /// Vocabulary size (rows of `token_embd.weight`).
    public let nVocab: Int
    /// Model width (`<arch>.embedding_length`).
    public let nEmbd: Int
    /// Number of transformer blocks (`<arch>.block_count`).
    public let nLayer: Int
    /// Query heads (`<arch>.attention.head_count`).
    public let nHead: Int
    /// Key/value heads (`<arch>.attention.head_count_kv`); `nHead % nHeadKV == 0` (grouped-query attention).
    public let nHeadKV: Int
    /// Per-head width (`<arch>.attention.key_length`, else `nEmbd / nHead`).
    public let headDim: Int
    /// Feed-forward width (`<arch>.feed_forward_length`).
    public let nFF: Int
    /// Training context length in tokens (`<arch>.context_length`).
    public let nCtxTrain: Int
    /// Sliding attention window in tokens for the layers that use one (Gemma 3: 512), else nil.
    public let slidingWindow: Int?
    /// RMSNorm epsilon (`<arch>.attention.layer_norm_rms_epsilon`).
    public let rmsEpsilon: Float
    /// RoPE base for full-attention layers (`<arch>.rope.freq_base`).
    public let ropeFreqBase: Float
    /// RoPE base for sliding-window layers (Gemma 3: 10000, not stored in GGUF).
    public let ropeFreqBaseSWA: Float
    /// Linear RoPE scaling factor for full-attention layers (`<arch>.rope.scaling.factor`, 1 = none).
    public let ropeScale: Float
    /// Number of rotated dimensions per head (`<arch>.rope.dimension_count`, else `headDim`).
    public let ropeDims: Int
    /// Rotary pairing.
    public let ropeStyle: RopeStyle
    /// Scale applied to attention scores: 1/sqrt(head_dim) unless the architecture says otherwise.
    public let attentionScale: Float
    /// Per layer: true when the layer uses the sliding window (Gemma 3: every layer but each 6th).
    public let layerUsesSlidingWindow: [Bool]
    /// Gemma: input embeddings are multiplied by sqrt(n_embd).
    public let embeddingScale: Float
    /// Gate activation of the feed-forward network.
    public let activation: FFNActivation
    /// Gemma: per-head RMSNorm of Q and K before RoPE (`attn_q_norm`, `attn_k_norm`).
    public let hasQKNorm: Bool
    /// Gemma: RMSNorm after attention and after the FFN (`post_attention_norm`, `post_ffw_norm`).
    public let hasPostNorms: Bool

    /// Query width `n_head * head_dim`.
    public var qDim: Int { nHead * headDim }
    /// Key/value width `n_head_kv * head_dim`.
    public var kvDim: Int { nHeadKV * headDim }
}

/// Typed access to `<arch>.*` keys with the errors a loader needs.
struct MetadataReader {
    let gguf: GGUFFile
    let arch: String

    func int(_ suffix: String) throws -> Int {
        let key = "\(arch).\(suffix)"
        guard let v = gguf.int(key) else { throw ModelError.missingMetadata(key: key) }
        guard v > 0 else { throw ModelError.invalidMetadata(key: key, reason: "must be positive, got \(v)") }
        return v
    }

    func int(_ suffix: String, default value: Int) throws -> Int {
        gguf.int("\(arch).\(suffix)") == nil ? value : try int(suffix)
    }

    func float(_ suffix: String, default value: Float) -> Float {
        gguf.double("\(arch).\(suffix)").map { Float($0) } ?? value
    }
}
