// GGUFKeys: the metadata key strings lorad reads or writes, in one table, and the types the reader enforces.
// Source: ggml docs/gguf.md ("Standardized key-value pairs") and llama.cpp src/llama-arch.cpp (LLM_KV_NAMES).

/// Well-known GGUF metadata keys. Per-architecture keys take the `general.architecture` value as prefix,
/// e.g. `GGUFKeys.blockCount("gemma3") == "gemma3.block_count"`.
public enum GGUFKeys {
    // MARK: - general
    public static let architecture = "general.architecture"
    public static let alignment = "general.alignment"
    public static let name = "general.name"
    public static let type = "general.type"
    public static let fileType = "general.file_type"
    public static let quantizationVersion = "general.quantization_version"

    // MARK: - tokenizer
    public static let tokenizerModel = "tokenizer.ggml.model"
    public static let tokenizerPre = "tokenizer.ggml.pre"
    public static let tokens = "tokenizer.ggml.tokens"
    public static let scores = "tokenizer.ggml.scores"
    public static let tokenType = "tokenizer.ggml.token_type"
    public static let merges = "tokenizer.ggml.merges"
    public static let bosTokenID = "tokenizer.ggml.bos_token_id"
    public static let eosTokenID = "tokenizer.ggml.eos_token_id"
    public static let unknownTokenID = "tokenizer.ggml.unknown_token_id"
    public static let paddingTokenID = "tokenizer.ggml.padding_token_id"
    public static let eotTokenID = "tokenizer.ggml.eot_token_id"
    public static let eomTokenID = "tokenizer.ggml.eom_token_id"
    public static let addBOSToken = "tokenizer.ggml.add_bos_token"
    public static let addEOSToken = "tokenizer.ggml.add_eos_token"
    public static let addSpacePrefix = "tokenizer.ggml.add_space_prefix"
    public static let chatTemplate = "tokenizer.chat_template"

    // MARK: - adapters (llama.cpp LoRA adapter files)
    public static let adapterType = "adapter.type"
    public static let adapterLoRAAlpha = "adapter.lora.alpha"

    // MARK: - per architecture (`<arch>.…`)
    public static func contextLength(_ arch: String) -> String { "\(arch).context_length" }
    public static func embeddingLength(_ arch: String) -> String { "\(arch).embedding_length" }
    public static func blockCount(_ arch: String) -> String { "\(arch).block_count" }
    public static func feedForwardLength(_ arch: String) -> String { "\(arch).feed_forward_length" }
    public static func headCount(_ arch: String) -> String { "\(arch).attention.head_count" }
    public static func headCountKV(_ arch: String) -> String { "\(arch).attention.head_count_kv" }
    public static func keyLength(_ arch: String) -> String { "\(arch).attention.key_length" }
    public static func valueLength(_ arch: String) -> String { "\(arch).attention.value_length" }
    public static func layerNormRMSEpsilon(_ arch: String) -> String { "\(arch).attention.layer_norm_rms_epsilon" }
    public static func slidingWindow(_ arch: String) -> String { "\(arch).attention.sliding_window" }
    public static func ropeFreqBase(_ arch: String) -> String { "\(arch).rope.freq_base" }
    public static func ropeDimensionCount(_ arch: String) -> String { "\(arch).rope.dimension_count" }
    public static func vocabSize(_ arch: String) -> String { "\(arch).vocab_size" }

    /// The stored type a key must have, when the format fixes it.
    enum ExpectedType: Equatable, CustomStringConvertible {
        case scalar(GGUFValueType)
        /// An array whose elements are of this type (checked only for non-empty arrays: an empty array holds
        /// no element of the wrong type).
        case array(of: GGUFValueType)

        var description: String {
            switch self {
            case .scalar(let t): return t.description
            case .array(let t): return "array[\(t)]"
            }
        }
    }

    /// Keys whose type the reader enforces, because code that consumes them relies on it and every known
    /// writer (gguf-py, llama.cpp) stores them so. Integer hyperparameters and token ids are not listed:
    /// writers differ in their widths, and the accessors accept any integer type.
    static let expectedTypes: [String: ExpectedType] = [
        alignment: .scalar(.uint32),
        architecture: .scalar(.string),
        tokenizerModel: .scalar(.string),
        tokens: .array(of: .string),
        scores: .array(of: .float32),
        tokenType: .array(of: .int32),
        merges: .array(of: .string),
        chatTemplate: .scalar(.string),
    ]
}
