// SpecialTokenPartition: splits text on the texts of special tokens before SentencePiece sees it, exactly as
// llama.cpp's `tokenizer_st_partition` (src/llama-vocab.cpp) does:
//
//   for each special token, longest text first:
//       in every still-unclaimed stretch of text, claim its occurrences from left to right
//
// Special tokens are the CONTROL, UNKNOWN and USER_DEFINED ones. CONTROL/UNKNOWN texts are only matched where
// special parsing is allowed; USER_DEFINED texts (Gemma's newline/space/tab runs, HTML tags, <start_of_image>)
// are matched everywhere, as llama.cpp does even with parse_special off.
//
// Cost: one trie walk per text position whose byte can start a special token, then one pass per distinct
// token length over the positions that matched. No allocation proportional to the vocabulary per call.

/// A trie over the UTF-8 texts of the special tokens.
struct SpecialTokenMatcher {
    /// Edges keyed by `node << 8 | byte`.
    private var edges: [Int: Int32] = [:]
    /// Token id ending at each node, or -1.
    private var terminal: [Int32] = [-1]
    /// Whether the token ending at each node needs special parsing (CONTROL/UNKNOWN).
    private var needsParseSpecial: [Bool] = [false]
    /// Bytes that start at least one special token.
    private var startsToken = [Bool](repeating: false, count: 256)
    /// Longest special token text, in bytes.
    private(set) var maxLength = 0
    private(set) var isEmpty = true

    /// Adds token `id` with text `bytes`. On a repeated text the first id added wins.
    mutating func insert(_ bytes: [UInt8], id: Int32, needsParseSpecial special: Bool) {
        guard let first = bytes.first else { return }
        var node = 0
        for b in bytes {
            let key = node << 8 | Int(b)
            if let next = edges[key] {
                node = Int(next)
            } else {
                let next = terminal.count
                terminal.append(-1)
                needsParseSpecial.append(false)
                edges[key] = Int32(next)
                node = next
            }
        }
        if terminal[node] < 0 {
            terminal[node] = id
            needsParseSpecial[node] = special
        }
        startsToken[Int(first)] = true
        maxLength = max(maxLength, bytes.count)
        isEmpty = false
    }

    /// Calls `body(length, id, needsParseSpecial)` for every special token whose text starts at `text[position]`.
    @inline(__always)
    func forEachMatch(
        in text: UnsafeBufferPointer<UInt8>, at position: Int, _ body: (Int, Int32, Bool) -> Void
    ) {
        guard startsToken[Int(text[position])] else { return }
        var node = 0
        var i = position
        while i < text.count, let next = edges[node << 8 | Int(text[i])] {
            node = Int(next)
            i += 1
            let id = terminal[node]
            if id >= 0 { body(i - position, id, needsParseSpecial[node]) }
        }
    }

    /// The token whose text is exactly `text[position ..< position + length]`, if any.
    func token(in text: UnsafeBufferPointer<UInt8>, at position: Int, length: Int) -> Int32? {
        var node = 0
        for i in position..<(position + length) {
            guard let next = edges[node << 8 | Int(text[i])] else { return nil }
            node = Int(next)
        }
        let id = terminal[node]
        return id >= 0 ? id : nil
    }
}

/// One piece of a partitioned text: a byte range left for SentencePiece, or a special token.
enum TextFragment: Equatable {
    case text(Range<Int>)
    case token(Int32)
}

extension SpecialTokenMatcher {
    /// Splits `text` into raw-text ranges and special tokens with llama.cpp's partition order (longest token text
    /// first, each claimed left to right in the unclaimed stretches).
    /// - Parameter specialAllowed: whether CONTROL/UNKNOWN texts may match the byte range (a match must lie entirely
    ///   inside text where special parsing is on).
    func partition(_ text: UnsafeBufferPointer<UInt8>, specialAllowed: (Range<Int>) -> Bool) -> [TextFragment] {
        let n = text.count
        if n == 0 { return [] }
        if isEmpty { return [.text(0..<n)] }

        // 1. Every (position, length) at which an allowed special token starts. Lengths up to 64 go into a bitmask
        //    per position; longer ones (rare) into a list.
        var positions: [Int] = []
        var masks: [UInt64] = []
        var longMatches: [(position: Int, length: Int)] = []
        var lengthsSeen = Set<Int>()
        for p in 0..<n {
            var mask: UInt64 = 0
            forEachMatch(in: text, at: p) { length, _, special in
                if special && !specialAllowed(p..<(p + length)) { return }
                if length <= 64 {
                    mask |= 1 << UInt64(length - 1)
                } else {
                    longMatches.append((p, length))
                }
                lengthsSeen.insert(length)
            }
            if mask != 0 {
                positions.append(p)
                masks.append(mask)
            }
        }
        if lengthsSeen.isEmpty { return [.text(0..<n)] }

        // 2. Claim, longest length first, left to right; a match must not overlap an earlier claim.
        var claimed = [Bool](repeating: false, count: n)
        var claims: [(start: Int, length: Int, id: Int32)] = []
        func tryClaim(_ p: Int, _ length: Int) {
            for i in p..<(p + length) where claimed[i] { return }
            guard let id = token(in: text, at: p, length: length) else { return }
            for i in p..<(p + length) { claimed[i] = true }
            claims.append((p, length, id))
        }
        for length in lengthsSeen.sorted(by: >) {
            if length <= 64 {
                let bit: UInt64 = 1 << UInt64(length - 1)
                for k in 0..<positions.count where masks[k] & bit != 0 { tryClaim(positions[k], length) }
            } else {
                for m in longMatches where m.length == length { tryClaim(m.position, length) }
            }
        }

        // 3. Fragments in text order.
        claims.sort { $0.start < $1.start }
        var fragments: [TextFragment] = []
        fragments.reserveCapacity(claims.count * 2 + 1)
        var cursor = 0
        for c in claims {
            if c.start > cursor { fragments.append(.text(cursor..<c.start)) }
            fragments.append(.token(c.id))
            cursor = c.start + c.length
        }
        if cursor < n { fragments.append(.text(cursor..<n)) }
        return fragments
    }
}
