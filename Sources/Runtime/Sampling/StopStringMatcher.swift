// StopStringMatcher: finds stop strings in streamed text that arrives in arbitrary chunks. Text that could still be
// the beginning of a stop string is held back until the next chunk decides it; text before a stop is emitted, the
// stop string and anything after it are not. Matching is on Unicode scalars (not grapheme clusters), so a stop string
// is found even when a combining mark follows it, and chunk boundaries never change the outcome.

/// Incremental stop-string matcher for one generation stream.
///
/// ```
/// var m = StopStringMatcher(stops: ["STOP"])
/// m.push("Hel")        // ("Hel", false)
/// m.push("lo ST")      // ("lo ", false)   "ST" held back
/// m.push("OP and on")  // ("", true)       emitted text so far: "Hello "
/// ```
public struct StopStringMatcher: Sendable {
    private let stops: [[Unicode.Scalar]]
    private var held: [Unicode.Scalar] = []
    /// True once a stop string has been seen; later pushes emit nothing.
    public private(set) var stopped = false
    /// The stop string that ended the stream, if any.
    public private(set) var matchedStop: String?

    /// - Parameter stops: stop strings; empty strings are ignored.
    public init(stops: [String]) {
        self.stops = stops.filter { !$0.isEmpty }.map { Array($0.unicodeScalars) }
    }

    /// Adds the next chunk of generated text.
    /// - Returns: `emit`, the text now known not to belong to a stop string (everything before the stop when one is
    ///   found), and `stopped`, true when a stop string has been found (in this chunk or earlier).
    public mutating func push(_ text: String) -> (emit: String, stopped: Bool) {
        guard !stopped else { return ("", true) }
        held.append(contentsOf: text.unicodeScalars)
        if stops.isEmpty {
            defer { held.removeAll() }
            return (String(scalars: held[...]), false)
        }
        // Earliest occurrence of any stop string.
        var best: (start: Int, stop: Int)? = nil
        for (s, stop) in stops.enumerated() {
            if let at = firstIndex(of: stop, in: held), best == nil || at < best!.start { best = (at, s) }
        }
        if let best {
            let emit = String(scalars: held[..<best.start])
            matchedStop = String(scalars: stops[best.stop][...])
            held.removeAll()
            stopped = true
            return (emit, true)
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let keep = longestPartialSuffix()
        let cut = held.count - keep
        let emit = String(scalars: held[..<cut])
        held.removeSubrange(..<cut)
        return (emit, false)
    }

    /// Ends the stream: returns the held-back text (nothing if a stop string was found) and resets the hold buffer.
    public mutating func finish() -> String {
        defer { held.removeAll() }
        return stopped ? "" : String(scalars: held[...])
    }

    private func firstIndex(of needle: [Unicode.Scalar], in hay: [Unicode.Scalar]) -> Int? {
        guard needle.count <= hay.count else { return nil }
        var i = 0
        while i + needle.count <= hay.count {
            if hay[i] == needle[0] {
                var j = 1
                while j < needle.count && hay[i + j] == needle[j] { j += 1 }
                if j == needle.count { return i }
            }
            i += 1
        }
        return nil
    }

    private func longestPartialSuffix() -> Int {
        var best = 0
        for stop in stops {
            var len = Swift.min(stop.count - 1, held.count)
            while len > best {
                if held[(held.count - len)...].elementsEqual(stop[..<len]) {
                    best = len
                    break
                }
                len -= 1
            }
        }
        return best
    }
}

extension String {
    fileprivate init(scalars: ArraySlice<Unicode.Scalar>) {
        var view = String.UnicodeScalarView()
        view.append(contentsOf: scalars)
        self.init(view)
    }
}
