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

    public init() {}

    public mutating func append(token: Int32, position: Int, slot: Int, wantLogits: Bool) {
        tokens.append(token)
        positions.append(position)
        slots.append(slot)
        self.wantLogits.append(wantLogits)
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
    /// Whether `id` ends generation (eos, `<end_of_turn>`, ...).
    func isEndOfGeneration(_ id: Int32) -> Bool
    /// Raw bytes the token contributes to the text.
    func tokenBytes(_ id: Int32) -> [UInt8]
    /// A fresh UTF-8-safe incremental detokenizer (special tokens not rendered).
    func makeDetokenizer() -> any IncrementalDetokenizer
}
