// TokenizerError: why a tokenizer could not be built from a GGUF file (or a companion tokenizer.model).

/// Why `Tokenizer` could not be created. Each case names the metadata key or file involved.
public enum TokenizerError: Error, CustomStringConvertible, Equatable {
    /// `tokenizer.ggml.model` names a tokenizer family lorad does not implement. Only `llama`
    /// (SentencePiece) is supported; `gpt2` (byte-level BPE), `bert` (WordPiece), `t5` (Unigram) and others are not.
    case unsupportedTokenizerModel(String)
    /// A required metadata key is absent or holds the wrong type (e.g. `tokenizer.ggml.tokens`).
    case missingMetadata(key: String)
    /// An array under `key` has `count` elements where `expected` are needed (one per token).
    case arrayLengthMismatch(key: String, count: Int, expected: Int)
    /// The vocabulary is empty or larger than token ids (`Int32`) can address.
    case invalidVocabularySize(Int)
    /// A BYTE-typed token whose text is not `<0xNN>`.
    case invalidByteToken(id: Int, text: String)
    /// libsentencepiece rejected the model (`message` is its status text), e.g. for a token text that appears twice.
    case sentencePieceLoadFailed(String)
    /// A companion `tokenizer.model` could not be read (`reason`), or its piece count differs from the GGUF vocabulary.
    case companionModelUnusable(path: String, reason: String)
    /// A special-token id in the metadata (`key`, e.g. `tokenizer.ggml.bos_token_id`) is `id`, outside `0..<vocabSize`.
    case specialTokenIDOutOfRange(key: String, id: Int, vocabSize: Int)
    /// `key` is absent, the token is needed (EOS always; BOS when `add_bos_token` is true), and no CONTROL token
    /// has one of the `candidates` texts.
    case specialTokenNotFound(key: String, candidates: [String])

    public var description: String {
        switch self {
        case .unsupportedTokenizerModel(let name):
            return "tokenizer.ggml.model \"\(name)\" is not supported: lorad only implements SentencePiece "
                + "vocabularies (tokenizer.ggml.model = \"llama\")"
        case .missingMetadata(let key):
            return "GGUF metadata \(key) is missing or has the wrong type"
        case .arrayLengthMismatch(let key, let count, let expected):
            return "GGUF metadata \(key) has \(count) elements, expected \(expected) (one per token)"
        case .invalidVocabularySize(let n):
            return "vocabulary size \(n) is out of range (1...\(Int32.max))"
        case .invalidByteToken(let id, let text):
            return "token \(id) \(String(reflecting: text)) has type BYTE but is not of the form <0xNN>"
        case .sentencePieceLoadFailed(let message):
            return "libsentencepiece rejected the tokenizer model: \(message)"
        case .companionModelUnusable(let path, let reason):
            return "tokenizer model \(path) cannot be used: \(reason)"
        case .specialTokenIDOutOfRange(let key, let id, let vocabSize):
            return "GGUF metadata \(key) is \(id), outside the vocabulary (0..<\(vocabSize)); the file is refused "
                + "rather than using another token in its place"
        case .specialTokenNotFound(let key, let candidates):
            return "GGUF metadata \(key) is absent and no CONTROL token is named "
                + candidates.joined(separator: ", ") + "; the token cannot be determined"
        }
    }
}
