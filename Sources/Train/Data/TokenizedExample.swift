// The token-level form of training data: ids plus a mask of the positions the loss scores.

/// One training sequence: `inputIds[T]` and `labelsMask[T]`, where `labelsMask[t] == 1` means token `t` is scored
/// (predicted from positions `< t`), as the training reference's `input_ids` / `labels_mask` arrays
/// (reference/gemma-3-270m-q4_k_m/train/README.md).
public struct TokenizedExample: Sendable, Equatable, Codable {
    /// Token ids `[T]`, BOS first.
    public var inputIds: [Int32]
    /// `[T]`: 1 where the token is scored, else 0.
    public var labelsMask: [UInt8]

    /// - Precondition: `inputIds.count == labelsMask.count`.
    public init(inputIds: [Int32], labelsMask: [UInt8]) {
        precondition(inputIds.count == labelsMask.count, "ids and mask differ in length")
        self.inputIds = inputIds
        self.labelsMask = labelsMask
    }

    /// `T`.
    public var count: Int { inputIds.count }
    /// Number of scored tokens.
    public var scoredCount: Int { labelsMask.reduce(0) { $0 + Int($1) } }
}

/// One preference pair for DPO: the same prompt followed by the preferred (`chosen`) and the non-preferred
/// (`rejected`) answer. Only the answer's tokens are scored in either sequence.
public struct TokenizedPair: Sendable, Equatable, Codable {
    /// Prompt + preferred answer.
    public var chosen: TokenizedExample
    /// Prompt + non-preferred answer.
    public var rejected: TokenizedExample
    /// Number of leading ids the two sequences share as the prompt (`chosen.inputIds[..<promptLength]`
    /// == `rejected.inputIds[..<promptLength]`).
    public var promptLength: Int

    /// - Parameters: see the properties.
    public init(chosen: TokenizedExample, rejected: TokenizedExample, promptLength: Int) {
        self.chosen = chosen
        self.rejected = rejected
        self.promptLength = promptLength
    }
}
