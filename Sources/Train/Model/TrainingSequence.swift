// The unit of training data the model side consumes: token ids and which of them are scored.

/// One tokenized training example: `input_ids` and `labels_mask` as in the training reference
/// (`../shared/reference/gemma-3-270m-q4_k_m/train/README.md`).
///
/// `labelsMask[i] == 1` means token `inputIds[i]` is scored: it is predicted from the positions before it, i.e. from
/// the output at position `i - 1`. `labelsMask[0]` must be 0 (nothing precedes the first token).
public struct TrainingSequence: Sendable, Equatable, Codable {
    /// Token ids `[n_tokens]`.
    public var inputIds: [Int32]
    /// `[n_tokens]`, 1 where the token is scored, else 0.
    public var labelsMask: [UInt8]

    /// - Parameters: inputIds: token ids `[n_tokens]`; labelsMask: `[n_tokens]`, 1 = scored.
    public init(inputIds: [Int32], labelsMask: [UInt8]) {
        self.inputIds = inputIds
        self.labelsMask = labelsMask
    }

    enum CodingKeys: String, CodingKey { case inputIds = "input_ids", labelsMask = "labels_mask" }

    /// Number of scored tokens.
    public var scoredCount: Int { labelsMask.reduce(0) { $0 + ($1 != 0 ? 1 : 0) } }
}

/// A DPO preference pair: the same prompt with a preferred (`chosen`) and a dispreferred (`rejected`) completion,
/// each a whole sequence whose mask scores the completion's tokens only.
public struct PreferencePair: Sendable, Equatable {
    /// Prompt + preferred completion.
    public var chosen: TrainingSequence
    /// Prompt + dispreferred completion.
    public var rejected: TrainingSequence

    /// - Parameters: chosen / rejected: the two sequences.
    public init(chosen: TrainingSequence, rejected: TrainingSequence) {
        self.chosen = chosen
        self.rejected = rejected
    }
}

/// Errors of the training forward/backward for bad input. Never a crash: the caller gets one of these.
public enum TrainError: Error, CustomStringConvertible, Equatable {
    /// The batch has no sequence.
    case emptyBatch
    /// Sequence `index` is malformed (lengths differ, a token outside the vocabulary, a scored first token, …).
    case invalidSequence(index: Int, reason: String)
    /// No token of the batch (or of one DPO sequence) is scored.
    case noScoredTokens
    /// The parameters do not fit the model (shapes, layers).
    case adapterMismatch(String)
    /// An argument is out of range (thread count, `beta`, …).
    case invalidArgument(String)

    public var description: String {
        switch self {
        case .emptyBatch: return "the training batch is empty"
        case .invalidSequence(let i, let r): return "training sequence \(i) is invalid: \(r)"
        case .noScoredTokens: return "no token of the batch is scored (labels_mask is all zero)"
        case .adapterMismatch(let r): return "the LoRA parameters do not fit the model: \(r)"
        case .invalidArgument(let r): return "invalid argument: \(r)"
        }
    }
}
