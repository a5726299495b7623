// Model: a loaded GGUF language model — memory-mapped weights, tokenizer, chat template and the forward pass.
import COpenBLAS

/// Options for loading a model.
public struct ModelOptions: Sendable {
    /// Compute threads for the forward pass (matmul rows and attention heads are split across them).
    public var threads: Int
    /// Element type of the KV caches this model makes.
    public var kvCacheType: KVCacheType
    /// Memory the layer projections' batch copies may take, bytes (see `WeightMatrix.withBatchCopy`): layers get
    /// theirs in order until the next would exceed it; 0 turns them off. The default model needs 85 MB.
    public var batchCopyBytes: Int
    /// Kernel path of the matmuls and attention dot products (`KernelPath.best` by default; an unavailable path
    /// runs as the best available one below it). Every path gives bitwise the same attention arithmetic and AVX2 /
    /// AVX-512 bitwise the same matmuls; the scalar reference matmul sums in ggml's order instead.
    public var kernels: KernelPath

    /// - Parameters: threads: compute threads (clamped to ≥ 1); kvCacheType: KV cache element type;
    ///   batchCopyBytes: budget of the batch copies, bytes (default 1 GiB); kernels: kernel path (default best).
    public init(threads: Int = 1, kvCacheType: KVCacheType = .f16, batchCopyBytes: Int = 1 << 30,
                kernels: KernelPath = .best) {
        self.threads = max(1, threads)
        self.kvCacheType = kvCacheType
        self.batchCopyBytes = max(0, batchCopyBytes)
        self.kernels = kernels
    }
}

/// A decoder-only language model loaded from a GGUF file (architectures `gemma3` and `llama`).
///
/// Weights stay in the read-only memory map of the file and are shared by every sequence. Per-sequence state
/// lives in `KVCache`s the caller creates with `makeKVCache(capacity:)`.
public final class Model: @unchecked Sendable {
    /// File stem, e.g. "gemma-3-270m-q4_k_m"; stable id of the base model.
    public let name: String
    /// Path of the GGUF file.
    public let path: String
    /// Hyperparameters.
    public let config: ModelConfig
    /// The parsed, memory-mapped file.
    public let gguf: GGUFFile
    /// Tokenizer built from the GGUF vocabulary.
    public let tokenizer: Tokenizer
    /// Chat template for the model family.
    public let chatTemplate: ChatTemplate
    /// Options the model was loaded with.
    public let options: ModelOptions

    /// The forward pass and its weights (package-visible for the trainer).
    package let transformer: Transformer
    /// Worker threads used by the forward pass.
    public let pool: ComputePool

    /// Loads a model.
    /// - Throws: `GGUFError` for a malformed file, `ModelError` for an unsupported architecture or missing or
    ///   mis-shaped tensors, tokenizer errors for an unsupported vocabulary.
    public static func load(path: String, options: ModelOptions = .init()) throws -> Model {
        let gguf = try GGUFFile(path: path)
        return try Model(gguf: gguf, path: path, options: options)
    }

    /// Builds a model over an already opened file; `path` names it (file stem = `name`) and locates a companion
    /// `tokenizer.model`. Throws as `load(path:options:)`.
    public init(gguf: GGUFFile, path: String, options: ModelOptions = .init()) throws {
        let arch = gguf.architecture ?? ""
        let config: ModelConfig
        let weights: TransformerWeights
        switch arch {
        case Gemma3.architecture:
            config = try Gemma3.config(gguf)
            weights = try Gemma3.weights(WeightLoader(gguf: gguf, batchCopyBytes: options.batchCopyBytes), config: config)
        case Llama.architecture:
            config = try Llama.config(gguf)
            weights = try Llama.weights(WeightLoader(gguf: gguf, batchCopyBytes: options.batchCopyBytes), config: config)
        default:
            throw ModelError.unsupportedArchitecture(arch)
        }
        self.gguf = gguf
        self.path = path
        let file = path.split(separator: "/").last.map(String.init) ?? path
        self.name = file.hasSuffix(".gguf") ? String(file.dropLast(5)) : file
        self.config = config
        self.options = options
        // A `tokenizer.model` next to the GGUF file takes precedence over the vocabulary arrays.
        self.tokenizer = try Tokenizer(gguf: gguf, sentencePieceModelPath: Tokenizer.companionModelPath(forGGUFAt: path))
        self.chatTemplate = ChatTemplate(gguf: gguf)
        // The forward pass parallelises itself; OpenBLAS (LoRA terms) runs single-threaded inside it.
        openblas_set_num_threads(1)
        self.pool = ComputePool(threads: options.threads)
        self.transformer = Transformer(config: config, weights: weights, pool: pool, kernels: options.kernels)
    }

    /// Bytes held by the layer projections' batch copies (bounded by `ModelOptions.batchCopyBytes`).
    public var batchCopyBytes: Int {
        transformer.weights.layers.reduce(0) { total, l in
            total + [l.wq, l.wk, l.wv, l.wo, l.gate, l.up, l.down].reduce(0) { $0 + $1.batchCopyByteCount }
        }
    }

    /// Creates an empty KV cache for one sequence of at most `capacity` tokens (clamped to `[1, n_ctx_train]`).
    public func makeKVCache(capacity: Int) -> KVCache {
        KVCache(config: config, capacity: min(max(1, capacity), config.nCtxTrain), type: options.kvCacheType)
    }

    /// Bytes of KV cache one token takes when every layer keeps it (an upper bound; sliding-window layers stop
    /// growing at their window).
    public var kvBytesPerToken: Int { 2 * config.nLayer * config.kvDim * options.kvCacheType.bytesPerValue }

    /// Runs one batched forward pass and appends the batch's keys and values to the caches.
    /// - Parameters:
    ///   - batch: rows from any sequences (see `ForwardBatch` for the ordering rules).
    ///   - caches: the KV caches the batch's `sequences` index into.
    /// - Returns: logits `[n_out, n_vocab]`, flat row-major, for the rows with `wantLogits`, in row order.
    /// - Throws: `ModelError.invalidBatch` / `.contextOverflow`; the caches are unchanged when it throws.
    /// Not thread-safe: call from one compute thread at a time.
    public func forward(_ batch: ForwardBatch, caches: [KVCache]) throws -> [Float] {
        try transformer.forward(batch, caches: caches)
    }
}
