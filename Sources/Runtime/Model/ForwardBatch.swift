// ForwardBatch: the ragged rows one forward pass processes, from any number of sequences.

/// Rows from several sequences, each at its own position, processed by one `Model.forward` call.
///
/// Row `i` feeds `tokens[i]` at absolute position `positions[i]` of sequence `sequences[i]` (an index into the
/// `caches` array given to `forward`). The rows of one sequence must be contiguous in the batch and have
/// consecutive positions starting at that sequence's `KVCache.count`. This is what continuous batching needs:
/// the next token of each decoding sequence plus a chunk of each new prompt, in one pass over the weights.
public struct ForwardBatch: Sendable {
    /// Token id per row, `[n_tokens]`.
    public var tokens: [Int32] = []
    /// Absolute position per row, `[n_tokens]`.
    public var positions: [Int] = []
    /// Sequence (index into `caches`) per row, `[n_tokens]`.
    public var sequences: [Int] = []
    /// Whether to return logits for the row, `[n_tokens]`.
    public var wantLogits: [Bool] = []
    /// Optional LoRA adapters per row, `[n_tokens]`; nil (or an empty array) means the base model for every row.
    public var adapters: [AdapterSet?] = []

    public init() {}

    /// Appends one row (base model, no adapter).
    public mutating func append(token: Int32, position: Int, sequence: Int, wantLogits: Bool) {
        tokens.append(token)
        positions.append(position)
        sequences.append(sequence)
        self.wantLogits.append(wantLogits)
        if !adapters.isEmpty { adapters.append(nil) }
    }

    /// Appends one row whose projections add the LoRA terms of `adapter` (nil = base model).
    public mutating func append(token: Int32, position: Int, sequence: Int, wantLogits: Bool, adapter: AdapterSet?) {
        // `adapters` stays empty while no row uses an adapter; once one does, it holds one entry per row.
        if adapters.count != tokens.count && adapter != nil {
            adapters = Array(repeating: nil, count: tokens.count)
        }
        let tracking = adapters.count == tokens.count && (adapter != nil || !adapters.isEmpty)
        tokens.append(token)
        positions.append(position)
        sequences.append(sequence)
        self.wantLogits.append(wantLogits)
        if tracking { adapters.append(adapter) }
    }

    /// Number of rows.
    public var count: Int { tokens.count }

    /// Number of rows whose logits are returned.
    public var outputCount: Int { wantLogits.reduce(0) { $0 + ($1 ? 1 : 0) } }
}
