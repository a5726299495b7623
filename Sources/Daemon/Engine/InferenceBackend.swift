// InferenceBackend: the narrow seam between the engine and a model. The engine needs a batched forward over
// per-sequence caches plus the few tokenizer facts that generation depends on. `RuntimeBackend` implements it
// over Runtime.Model; tests implement it with a deterministic model whose outputs they compute on their own.
//
// Glossary: B = rows in one step (tokens of all sequences), V = n_vocab.

/// One engine step's rows: tokens of several sequences, each at its own position.
///
/// Rows of one sequence are consecutive positions continuing that sequence's cache: the first row of sequence
/// `s` in a batch has `position == caches[s].count`. Mirrors `Runtime.ForwardBatch`.
public struct StepBatch: Sendable, Equatable {
    /// Token id per row, `[B]`.
    public var tokens: [Int32] = []
    /// Absolute position of each row in its sequence, `[B]`.
    public var positions: [Int] = []
    /// Index into the `caches` array passed to `forward`, `[B]`.
    public var slots: [Int] = []
    /// Whether the row's logits are returned, `[B]`.
    public var wantLogits: [Bool] = []
    /// LoRA adapters applied to each row, `[B]` (nil = the base model). Rows of one sequence share one mix.
    public var adapters: [AdapterMix?] = []

    public init() {}

    public mutating func append(token: Int32, position: Int, slot: Int, wantLogits: Bool, adapters mix: AdapterMix? = nil) {
        tokens.append(token)
        positions.append(position)
        slots.append(slot)
        self.wantLogits.append(wantLogits)
        adapters.append(mix)
    }

    /// Number of rows (B).
    public var count: Int { tokens.count }
}

/// A per-sequence attention cache (the kv_cache) as the engine sees it.
public protocol SequenceCache: AnyObject {
    /// Tokens stored so far.
    var count: Int { get }
    /// Bytes allocated for this cache.
    var byteCount: Int { get }
}

/// Turns a stream of token ids into text, emitting only complete UTF-8 (see `Runtime.StreamingDetokenizer`).
public protocol IncrementalDetokenizer {
    /// Text completed by `id` (possibly empty while a multi-byte character is pending).
    mutating func push(_ id: Int32) -> String
    /// Whatever is pending at the end (incomplete bytes become U+FFFD).
    mutating func finish() -> String
}

/// One chat message handed to the chat template.
public struct ChatTurn: Sendable, Equatable {
    public var role: String
    public var content: String
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// What the engine and the API need from a loaded model.
///
/// `forward` is called from the engine's single compute thread only; the other members may be called from any
/// thread (tokenizing happens on request tasks).
public protocol InferenceBackend: AnyObject, Sendable {
    /// Stable model id served in `/v1/models` (the GGUF file stem).
    var modelID: String { get }
    /// n_vocab: length of one logits row.
    var vocabSize: Int { get }
    /// The context the model was trained with (n_ctx_train); the served context is capped at this.
    var trainedContextLength: Int { get }
    /// Bytes of kv_cache one token occupies in one sequence (all layers, K and V).
    var kvBytesPerToken: Int { get }

    /// A cache for one sequence holding up to `capacity` tokens.
    func makeCache(capacity: Int) throws -> any SequenceCache
    /// Runs one batched forward pass, appending every row to its sequence's cache.
    /// - Returns: logits `[n_out, V]` flat row-major, for the rows with `wantLogits`, in row order.
    func forward(_ batch: StepBatch, caches: [any SequenceCache]) throws -> [Float]

    /// Tokenizes `text` (SentencePiece), optionally prepending BOS and parsing special-token text.
    func encode(_ text: String, addBOS: Bool, parseSpecial: Bool) -> [Int32]
    /// Renders messages with the model's chat template and a trailing generation prompt (BOS included).
    func renderChat(_ messages: [ChatTurn]) throws -> [Int32]
    /// Renders messages with the model's chat template, with or without the trailing generation prompt.
    func renderChat(_ messages: [ChatTurn], addGenerationPrompt: Bool) throws -> [Int32]
    /// Tokenizes a raw prompt as generation does: BOS prepended when asked for and the model adds one, except when
    /// the text's own first token already is BOS (no second BOS; llama.cpp keeps both and warns).
    /// - Returns: the ids, and `bosFromText` = true when that exception applied (callers log it).
    func encodePrompt(_ text: String, addBOS: Bool, parseSpecial: Bool) -> (tokens: [Int32], bosFromText: Bool)
    /// Text of `ids` (each in `0..<V`) with special tokens rendered as their text (llama.cpp `/detokenize`).
    func decode(_ ids: [Int32]) -> String
    /// Whether `id` ends generation (eos, `<end_of_turn>`, ...).
    func isEndOfGeneration(_ id: Int32) -> Bool
    /// Raw bytes the token contributes to the text.
    func tokenBytes(_ id: Int32) -> [UInt8]
    /// A fresh UTF-8-safe incremental detokenizer (special tokens not rendered).
    func makeDetokenizer() -> any IncrementalDetokenizer

    /// Loads a LoRA adapter from disk and validates it against this model (every target exists, shapes match,
    /// rank within the limit, values finite, at least one module patched). Called off the compute thread.
    /// - Parameters:
    ///   - path: a `.gguf` file (llama.cpp adapter) or a directory with `adapter_config.json` and
    ///     `adapter_model.safetensors` (Hugging Face PEFT).
    ///   - format: which of the two.
    ///   - name: the registry name (for messages).
    /// - Throws: an error whose description names the offending file, key or tensor.
    func loadAdapter(at path: String, format: AdapterFormat, name: String) throws -> any AdapterWeights

    /// Runs `body(0..<tasks)` on the backend's compute threads (the calling thread takes part) and returns when all
    /// are done. The engine samples the rows of a step this way. Called on the engine thread, between forwards.
    func parallelFor(_ tasks: Int, _ body: (Int) -> Void)
}

extension InferenceBackend {
    /// Serial default.
    public func parallelFor(_ tasks: Int, _ body: (Int) -> Void) {
        for t in 0..<tasks { body(t) }
    }

    public func loadAdapter(at path: String, format: AdapterFormat, name: String) throws -> any AdapterWeights {
        throw AdapterLoadError("this model backend does not support LoRA adapters")
    }

    /// Default: the generation prompt is always there; without it the request is refused.
    public func renderChat(_ messages: [ChatTurn], addGenerationPrompt: Bool) throws -> [Int32] {
        guard addGenerationPrompt else {
            throw APIError.invalidRequest(
                "This model backend always adds the generation prompt.", param: "add_generation_prompt")
        }
        return try renderChat(messages)
    }

    /// Default from `encode`: the BOS id is what `addBOS: true` puts in front; the text is encoded twice.
    public func encodePrompt(_ text: String, addBOS: Bool, parseSpecial: Bool) -> (tokens: [Int32], bosFromText: Bool) {
        let bare = encode(text, addBOS: false, parseSpecial: parseSpecial)
        guard addBOS else { return (bare, false) }
        let withBOS = encode(text, addBOS: true, parseSpecial: parseSpecial)
        guard withBOS.count == bare.count + 1, let bos = withBOS.first else { return (withBOS, false) }
        return bare.first == bos ? (bare, true) : (withBOS, false)
    }

    /// Default: the tokens' bytes joined (invalid UTF-8 becomes U+FFFD).
    public func decode(_ ids: [Int32]) -> String {
        String(decoding: ids.flatMap { tokenBytes($0) }, as: UTF8.self)
    }
}

/// On-disk format of an adapter.
public enum AdapterFormat: String, Sendable, Codable, Equatable {
    /// llama.cpp GGUF LoRA adapter: one `.gguf` file (`general.type = adapter`).
    case gguf
    /// Hugging Face PEFT: a directory with `adapter_config.json` and `adapter_model.safetensors`.
    case peft
}

/// A generic adapter loading failure (message shown to the client with HTTP 400).
public struct AdapterLoadError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ message: String) { description = message }
}

/// Loaded, validated adapter weights, immutable once built (a running sequence keeps its version alive).
public protocol AdapterWeights: AnyObject, Sendable {
    /// Bytes of weights held in memory (lora_A and lora_B of every module, f32).
    var residentBytes: Int { get }
    /// Largest rank over the patched modules.
    var adapterRank: Int { get }
    /// The adapter's alpha (nil when the format does not say).
    var adapterAlpha: Float? { get }
    /// Names of the patched projections (`attn_q`, `ffn_down`, ...), sorted.
    var adapterTargets: [String] { get }
}

/// The adapters one request applies: each pinned at the version the request started with, with a user scale.
///
/// One object per request, shared by all its rows, so the backend can recognise rows that use the same mix and
/// process them as one segment. Holding the object keeps every listed version's weights in memory.
public final class AdapterMix: @unchecked Sendable, Equatable {
    /// One adapter in the mix.
    public struct Entry: Sendable {
        /// Registry name and the version pinned for this request.
        public let name: String
        public let version: Int
        /// The weights of that version (kept alive by this entry).
        public let weights: any AdapterWeights
        /// Multiplier of this adapter's `scale·B·A` term (dimensionless; 0 disables it).
        public let scale: Float
        public init(name: String, version: Int, weights: any AdapterWeights, scale: Float) {
            self.name = name
            self.version = version
            self.weights = weights
            self.scale = scale
        }
    }

    /// The adapters, applied in order.
    public let entries: [Entry]
    /// Backend-private state built from `entries` on first use (touched by the compute thread only).
    public var prepared: AnyObject?

    public init(_ entries: [Entry]) { self.entries = entries }

    public static func == (a: AdapterMix, b: AdapterMix) -> Bool { a === b }
}
