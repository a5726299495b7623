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

/// A trie over the UTF-8 texts of the special tokens, built once per tokenizer.
///
/// Children of a node are stored contiguously, sorted by byte (`childBytes`/`childNodes` from `firstChild`);
/// nodes with many children (such as the one after `<`) also get a 256-entry table, so a walk step is one or a
/// few byte comparisons and never a hash.
struct SpecialTokenMatcher {
    private var firstChild: [Int32] = []
    private var childCount: [UInt16] = []
    private var childBytes: [UInt8] = []
    private var childNodes: [Int32] = []
    /// Start of a node's 256-entry table in `dense`, or -1.
    private var denseBase: [Int32] = []
    private var dense: [Int32] = []
    /// Token id ending at each node, or -1.
    private var terminal: [Int32] = []
    /// Whether the token ending at each node needs special parsing (CONTROL/UNKNOWN).
    private var needsParseSpecial: [Bool] = []
    /// Bytes that start at least one special token.
    private var startsToken = [Bool](repeating: false, count: 256)
    /// Longest special token text, in bytes.
    private(set) var maxLength = 0
    private(set) var isEmpty = true

    private static let denseThreshold = 8

    /// Builds the trie. `entries` are (text, id, needsParseSpecial); on a repeated text the first entry wins.
    init(_ entries: [(bytes: [UInt8], id: Int32, needsParseSpecial: Bool)]) {
        // Build with per-node child lists, then lay the lists out flat.
        var children: [[(byte: UInt8, node: Int32)]] = [[]]
        var term: [Int32] = [-1]
        var special: [Bool] = [false]
        for e in entries {
            guard let first = e.bytes.first else { continue }
            var node = 0
            for b in e.bytes {
                if let c = children[node].first(where: { $0.byte == b }) {
                    node = Int(c.node)
                } else {
                    let next = children.count
                    children.append([])
                    term.append(-1)
                    special.append(false)
                    children[node].append((b, Int32(next)))
                    node = next
                }
            }
            if term[node] < 0 {
                term[node] = e.id
                special[node] = e.needsParseSpecial
            }
            startsToken[Int(first)] = true
            maxLength = max(maxLength, e.bytes.count)
            isEmpty = false
        }
        let count = children.count
        firstChild = [Int32](repeating: 0, count: count)
        childCount = [UInt16](repeating: 0, count: count)
        denseBase = [Int32](repeating: -1, count: count)
        for node in 0..<count {
            let list = children[node].sorted { $0.byte < $1.byte }
            firstChild[node] = Int32(childBytes.count)
            childCount[node] = UInt16(list.count)
            childBytes.append(contentsOf: list.map(\.byte))
            childNodes.append(contentsOf: list.map(\.node))
            if list.count >= Self.denseThreshold {
                denseBase[node] = Int32(dense.count)
                var table = [Int32](repeating: -1, count: 256)
                for c in list { table[Int(c.byte)] = c.node }
                dense.append(contentsOf: table)
            }
        }
        terminal = term
        needsParseSpecial = special
    }

    /// The child of `node` along `byte`, or -1.
    @inline(__always)
    private func child(_ node: Int, _ byte: UInt8) -> Int {
        let base = denseBase[node]
        if base >= 0 { return Int(dense[Int(base) + Int(byte)]) }
        let start = Int(firstChild[node])
        let end = start + Int(childCount[node])
        var i = start
        while i < end {
            let b = childBytes[i]
            if b == byte { return Int(childNodes[i]) }
            if b > byte { return -1 }
            i += 1
        }
        return -1
    }

    /// Calls `body(length, id, needsParseSpecial)` for every special token whose text starts at `text[position]`.
    @inline(__always)
    func forEachMatch(
        in text: UnsafeBufferPointer<UInt8>, at position: Int, _ body: (Int, Int32, Bool) -> Void
    ) {
        guard startsToken[Int(text[position])] else { return }
        var node = 0
        var i = position
        while i < text.count {
            node = child(node, text[i])
            if node < 0 { return }
            i += 1
            let id = terminal[node]
            if id >= 0 { body(i - position, id, needsParseSpecial[node]) }
        }
    }

    /// The token whose text is exactly `text[position ..< position + length]`, if any.
    func token(in text: UnsafeBufferPointer<UInt8>, at position: Int, length: Int) -> Int32? {
        guard !isEmpty else { return nil }
        var node = 0
        for i in position..<(position + length) {
            node = child(node, text[i])
            if node < 0 { return nil }
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
        var lengthsSeen: UInt64 = 0
        for p in 0..<n {
            var mask: UInt64 = 0
            forEachMatch(in: text, at: p) { length, _, special in
                if special && !specialAllowed(p..<(p + length)) { return }
                if length <= 64 {
                    mask |= 1 << UInt64(length - 1)
                } else {
                    longMatches.append((p, length))
                }
            }
            if mask != 0 {
                positions.append(p)
                masks.append(mask)
                lengthsSeen |= mask
            }
        }
        if lengthsSeen == 0 && longMatches.isEmpty { return [.text(0..<n)] }

        // 2. Claim, longest length first, left to right; a match must not overlap an earlier claim.
        var claimed = [Bool](repeating: false, count: n)
        var claims: [(start: Int, length: Int, id: Int32)] = []
        func tryClaim(_ p: Int, _ length: Int) {
            for i in p..<(p + length) where claimed[i] { return }
            guard let id = token(in: text, at: p, length: length) else { return }
            for i in p..<(p + length) { claimed[i] = true }
            claims.append((p, length, id))
        }
        for length in Set(longMatches.map(\.length)).sorted(by: >) {
            for m in longMatches where m.length == length { tryClaim(m.position, length) }
        }
        for length in stride(from: 64, through: 1, by: -1) {
            let bit: UInt64 = 1 << UInt64(length - 1)
            guard lengthsSeen & bit != 0 else { continue }
            for k in 0..<positions.count where masks[k] & bit != 0 { tryClaim(positions[k], length) }
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
