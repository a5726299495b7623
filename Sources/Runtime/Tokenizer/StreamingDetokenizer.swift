// StreamingDetokenizer: turns generated ids into text one token at a time without ever emitting half a character.
//
// Byte-fallback tokens carry single bytes, so one character (an emoji, a CJK ideograph) may span 2-4 tokens. Bytes
// are buffered while they form a valid but incomplete UTF-8 sequence (at most 3 bytes) and released as soon as it
// completes. A sequence that can no longer become valid is released at once as U+FFFD, so nothing is held for
// more than one incomplete character. Joining every `push` and `finish` gives exactly `Tokenizer.decode` of all
// ids: the split points are always at the start of a possible character, where Unicode's "maximal subpart"
// replacement (Swift's `String(decoding:as:)`) behaves the same on the parts as on the whole.

/// Incremental detokenizer over one generated sequence.
public struct StreamingDetokenizer: Sendable {
    private let tokenizer: Tokenizer
    private let renderSpecial: Bool
    private var pending: [UInt8] = []
    private var isFirstToken = true

    /// - Parameter renderSpecial: render control tokens (`<end_of_turn>`) as text, as `Tokenizer.decode` does.
    ///   Off by default, since generated text should not show them.
    public init(tokenizer: Tokenizer, renderSpecial: Bool = false) {
        self.tokenizer = tokenizer
        self.renderSpecial = renderSpecial
    }

    /// Adds token `id` and returns the text that became complete (possibly "").
    public mutating func push(_ id: Int32) -> String {
        tokenizer.appendBytes(
            of: id, renderSpecial: renderSpecial, stripLeadingSpace: isFirstToken && tokenizer.addSpacePrefix,
            to: &pending)
        isFirstToken = false
        let keep = Self.incompleteSuffixLength(pending)
        let emitCount = pending.count - keep
        guard emitCount > 0 else { return "" }
        let text = String(decoding: pending[0..<emitCount], as: UTF8.self)
        pending.removeFirst(emitCount)
        return text
    }

    /// Returns whatever is still held (an incomplete character becomes U+FFFD) and resets for reuse.
    public mutating func finish() -> String {
        let text = String(decoding: pending, as: UTF8.self)
        pending.removeAll()
        isFirstToken = true
        return text
    }

    /// Bytes held back: the length of the trailing valid-but-incomplete UTF-8 sequence of `bytes`, or 0.
    static func incompleteSuffixLength(_ bytes: [UInt8]) -> Int {
        let n = bytes.count
        // The lead byte of an incomplete sequence is at most 3 bytes from the end.
        var i = n - 1
        while i >= 0 && i >= n - 3 {
            let b = bytes[i]
            if b & 0xC0 != 0x80 {  // not a continuation byte: candidate lead
                let need: Int
                switch b {
                case 0xC2...0xDF: need = 2
                case 0xE0...0xEF: need = 3
                case 0xF0...0xF4: need = 4
                default: return 0  // ASCII or a byte that never starts a sequence
                }
                let have = n - i
                guard have < need else { return 0 }  // complete (or over-long: not ours to hold)
                // The second byte's range depends on the lead (RFC 3629 / Unicode Table 3-7).
                if have >= 2 {
                    let c = bytes[i + 1]
                    let ok: Bool
                    switch b {
                    case 0xE0: ok = (0xA0...0xBF).contains(c)
                    case 0xED: ok = (0x80...0x9F).contains(c)
                    case 0xF0: ok = (0x90...0xBF).contains(c)
                    case 0xF4: ok = (0x80...0x8F).contains(c)
                    default: ok = (0x80...0xBF).contains(c)
                    }
                    if !ok { return 0 }
                }
                return have
            }
            i -= 1
        }
        return 0
    }
}
