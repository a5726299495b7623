// EventEncoder: server-sent events framing (WHATWG HTML "Server-sent events"): each event is one `data:` line
// holding compact JSON (which never contains a raw line break) followed by a blank line; the stream ends with
// OpenAI's `data: [DONE]` sentinel.

import Foundation

/// SSE framing for streamed responses.
public enum SSE {
    /// `data: <json>\n\n`.
    public static func event(_ json: JSONValue) -> String {
        "data: " + json.serialized + "\n\n"
    }

    /// The terminating event `data: [DONE]\n\n`.
    public static let done = "data: [DONE]\n\n"

    /// Splits an SSE byte stream into the payloads of its `data:` fields (one per event; multi-line data joined
    /// with "\n"). Used by clients and tests; comments (`:`) and other fields are ignored.
    public static func parse(_ text: String) -> [String] {
        var events: [String] = []
        var data: [String] = []
        var sawData = false
        // Split on scalars: in Swift "\r\n" is one Character, so splitting Characters on "\n" misses it.
        let normalized = text.replacingOccurrences(of: "\r\n", with: "\n")
        for rawLine in normalized.split(separator: "\n", omittingEmptySubsequences: false) {
            var line = Substring(rawLine)
            if line.hasSuffix("\r") { line = line.dropLast() }
            if line.isEmpty {
                if sawData { events.append(data.joined(separator: "\n")) }
                data.removeAll()
                sawData = false
                continue
            }
            if line.hasPrefix(":") { continue }
            if line.hasPrefix("data:") {
                var value = line.dropFirst(5)
                if value.hasPrefix(" ") { value = value.dropFirst() }
                data.append(String(value))
                sawData = true
            }
        }
        return events
    }
}
