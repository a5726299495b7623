// Multipart: an incremental `multipart/form-data` parser (RFC 7578 over RFC 2046 §5.1.1) for `POST /v1/files`.
//
// Bytes are fed as they arrive from the socket; the parser reports each part's headers, its body bytes in
// pieces, and its end, without ever holding more than one header block or one delimiter's worth of body in
// memory. The stream must end with the close delimiter (`--boundary--`); anything else is `truncated`.
//
// Grammar handled (RFC 2046 §5.1.1):
//   body        := preamble? dash-boundary padding CRLF part (CRLF dash-boundary padding CRLF part)* close
//   close       := CRLF dash-boundary "--" epilogue?
//   part        := header-lines CRLF octets
// The delimiter inside the body is CRLF "--" boundary; the first boundary may come without its CRLF (the
// parser pretends the stream starts with one). `padding` is linear whitespace (transport padding).
//
// vapor/multipart-kit 4.7.1 was considered: its parser keeps its state private and reports a part complete
// one byte after the delimiter, so a body cut short there ("…\r\n--boundary-") cannot be told from a finished
// one; its header lines grow without a bound; and it adds swift-collections' whole umbrella product for the
// ordered dictionary of its form decoder.

/// A failure to parse a multipart body (a 400 for the client).
public enum MultipartError: Error, Equatable, CustomStringConvertible {
    /// `Content-Type` is not `multipart/form-data` with a usable `boundary` parameter.
    case noBoundary(String)
    /// The bytes do not follow the multipart grammar.
    case syntax(String)
    /// The body ended before the close delimiter.
    case truncated
    /// A part's header block is larger than ``MultipartParser/maxHeaderBytes``.
    case headersTooLarge(Int)

    public var description: String {
        switch self {
        case .noBoundary(let m): return m
        case .syntax(let m): return "malformed multipart body: \(m)"
        case .truncated: return "the multipart body ends before its closing boundary"
        case .headersTooLarge(let n): return "a multipart part's headers exceed \(n) bytes"
        }
    }
}

/// The headers of one part, with its `Content-Disposition` parameters decoded.
public struct MultipartPartHeaders: Sendable, Equatable {
    /// Header fields as sent (names lowercased), in order.
    public var fields: [(name: String, value: String)]
    /// `Content-Disposition: form-data; name="…"`.
    public var name: String?
    /// `filename="…"` (or RFC 5987 `filename*=UTF-8''…`), when the part is a file.
    public var filename: String?

    public static func == (a: Self, b: Self) -> Bool {
        a.name == b.name && a.filename == b.filename && a.fields.map { "\($0.name):\($0.value)" } == b.fields.map { "\($0.name):\($0.value)" }
    }

    /// The value of header `name` (case-insensitive), if present.
    public func value(_ name: String) -> String? {
        let n = name.lowercased()
        return fields.first { $0.name == n }?.value
    }
}

/// What the parser reports while it consumes bytes.
public enum MultipartEvent {
    /// A part begins.
    case partStart(MultipartPartHeaders)
    /// Body bytes of the current part (valid only during the callback).
    case body(ArraySlice<UInt8>)
    /// The current part ended.
    case partEnd
}

/// Incremental `multipart/form-data` parser. Feed bytes with ``feed(_:_:)``, then call ``finish()``.
public struct MultipartParser {
    /// Largest header block of one part, bytes.
    public static let maxHeaderBytes = 16 << 10

    private enum State {
        case preamble
        /// After a boundary: "--" (close) or padding CRLF (a part follows).
        case afterBoundary
        case headers
        case body
        case epilogue
    }

    private let delimiter: [UInt8]
    private var state = State.preamble
    private var buffer: [UInt8]

    /// - Parameter boundary: the `boundary` parameter of the request's `Content-Type` (1…70 characters).
    public init(boundary: String) {
        delimiter = Array("\r\n--\(boundary)".utf8)
        // The first boundary may start the body without a CRLF before it.
        buffer = [13, 10]
    }

    /// Extracts the boundary from a `Content-Type` header value.
    /// - Throws: ``MultipartError/noBoundary(_:)`` when the type is not `multipart/form-data` or the boundary is
    ///   missing, empty, longer than 70 characters, or has characters RFC 2046 §5.1.1 does not allow.
    public static func boundary(contentType: String?) throws -> String {
        guard let contentType else {
            throw MultipartError.noBoundary("the request has no Content-Type; send multipart/form-data")
        }
        let params = HeaderParams(contentType)
        guard params.value.lowercased() == "multipart/form-data" else {
            throw MultipartError.noBoundary(
                "the Content-Type must be multipart/form-data, not '\(params.value.prefix(100))'")
        }
        guard let b = params["boundary"], !b.isEmpty else {
            throw MultipartError.noBoundary("the multipart/form-data Content-Type has no boundary parameter")
        }
        let allowed = Set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")
        guard b.count <= 70, b.allSatisfy({ allowed.contains($0) }), b.last != " " else {
            throw MultipartError.noBoundary("the multipart boundary must be 1 to 70 characters of RFC 2046's set")
        }
        return b
    }

    /// Whether the close delimiter has been seen.
    public var isComplete: Bool {
        if case .epilogue = state { return true }
        return false
    }

    /// Consumes `bytes`, reporting events in order.
    /// - Throws: ``MultipartError``, or whatever `onEvent` throws.
    public mutating func feed(_ bytes: some Collection<UInt8>, _ onEvent: (MultipartEvent) throws -> Void) throws {
        if case .epilogue = state { return }
        buffer.append(contentsOf: bytes)
        var pos = 0
        defer { buffer.removeFirst(pos) }
        loop: while true {
            switch state {
            case .preamble:
                if let i = find(delimiter, in: buffer, from: pos) {
                    pos = i + delimiter.count
                    state = .afterBoundary
                } else {
                    pos = max(pos, buffer.count - (delimiter.count - 1))
                    break loop
                }
            case .afterBoundary:
                guard buffer.count - pos >= 2 else { break loop }
                if buffer[pos] == 45 && buffer[pos + 1] == 45 {  // "--": the close delimiter
                    state = .epilogue
                    pos = buffer.count
                    break loop
                }
                // Transport padding, then CRLF.
                var i = pos
                while i < buffer.count, buffer[i] == 32 || buffer[i] == 9 { i += 1 }
                guard i + 1 < buffer.count else {
                    if i - pos > 1024 { throw MultipartError.syntax("whitespace after a boundary does not end") }
                    break loop
                }
                guard buffer[i] == 13 && buffer[i + 1] == 10 else {
                    throw MultipartError.syntax("a boundary line is not followed by CRLF")
                }
                pos = i + 2
                state = .headers
            case .headers:
                let end: Int
                let next: Int
                if buffer.count - pos >= 2, buffer[pos] == 13, buffer[pos + 1] == 10 {
                    end = pos  // no header lines
                    next = pos + 2
                } else if let i = find([13, 10, 13, 10], in: buffer, from: pos) {
                    end = i + 2
                    next = i + 4
                } else {
                    if buffer.count - pos > Self.maxHeaderBytes {
                        throw MultipartError.headersTooLarge(Self.maxHeaderBytes)
                    }
                    break loop
                }
                if end - pos > Self.maxHeaderBytes { throw MultipartError.headersTooLarge(Self.maxHeaderBytes) }
                let headers = try Self.parseHeaders(buffer[pos..<end])
                pos = next
                state = .body
                try onEvent(.partStart(headers))
            case .body:
                if let i = find(delimiter, in: buffer, from: pos) {
                    if i > pos { try onEvent(.body(buffer[pos..<i])) }
                    pos = i + delimiter.count
                    state = .afterBoundary
                    try onEvent(.partEnd)
                } else {
                    // Keep what could be the start of a delimiter split across reads.
                    let keep = min(delimiter.count - 1, buffer.count - pos)
                    let upTo = buffer.count - keep
                    if upTo > pos { try onEvent(.body(buffer[pos..<upTo])) }
                    pos = upTo
                    break loop
                }
            case .epilogue:
                pos = buffer.count
                break loop
            }
        }
    }

    /// Checks that the body ended with the close delimiter.
    /// - Throws: ``MultipartError/truncated`` otherwise.
    public func finish() throws {
        guard isComplete else { throw MultipartError.truncated }
    }

    /// First index of `needle` in `hay[from...]`.
    private func find(_ needle: [UInt8], in hay: [UInt8], from: Int) -> Int? {
        let n = needle.count
        guard hay.count - from >= n else { return nil }
        let first = needle[0]
        return hay.withUnsafeBufferPointer { h -> Int? in
            needle.withUnsafeBufferPointer { nd -> Int? in
                var i = from
                let last = h.count - n
                while i <= last {
                    if h[i] == first {
                        var j = 1
                        while j < n && h[i + j] == nd[j] { j += 1 }
                        if j == n { return i }
                    }
                    i += 1
                }
                return nil
            }
        }
    }

    /// Parses `Name: value` lines (each ending in CRLF).
    static func parseHeaders(_ bytes: ArraySlice<UInt8>) throws -> MultipartPartHeaders {
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw MultipartError.syntax("part headers are not UTF-8")
        }
        var fields: [(name: String, value: String)] = []
        for line in text.components(separatedBy: "\r\n") where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else {
                throw MultipartError.syntax("a part header line has no colon: '\(line.prefix(80))'")
            }
            let name = line[..<colon].lowercased()
            guard !name.isEmpty, !name.contains(where: { $0 == " " || $0 == "\t" }) else {
                throw MultipartError.syntax("a part header name is empty or contains whitespace")
            }
            fields.append((name, line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        var h = MultipartPartHeaders(fields: fields)
        guard let cd = h.value("content-disposition") else {
            throw MultipartError.syntax("a part has no Content-Disposition header")
        }
        let params = HeaderParams(cd)
        guard params.value.lowercased() == "form-data" else {
            throw MultipartError.syntax("a part's Content-Disposition is '\(params.value.prefix(40))', not form-data")
        }
        h.name = params["name"]
        h.filename = params["filename*"].flatMap(Self.rfc5987) ?? params["filename"]
        return h
    }

    /// Decodes RFC 5987 `charset'lang'percent-encoded` (UTF-8 only).
    static func rfc5987(_ v: String) -> String? {
        let parts = v.split(separator: "'", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0].lowercased() == "utf-8" else { return nil }
        return String(parts[2]).removingPercentEncodingSafely()
    }
}

/// A header value with `;`-separated parameters: `type; key=value; key="quoted \" value"`.
struct HeaderParams {
    /// The part before the first `;`, trimmed.
    var value: String
    /// Parameters with lowercased keys (quoted strings unescaped).
    var params: [String: String] = [:]

    init(_ header: String) {
        let chars = Array(header)
        var i = 0
        func skipSpace() { while i < chars.count, chars[i] == " " || chars[i] == "\t" { i += 1 } }
        var v = ""
        while i < chars.count, chars[i] != ";" {
            v.append(chars[i])
            i += 1
        }
        value = v.trimmingCharacters(in: .whitespaces)
        while i < chars.count {
            i += 1  // the ';'
            skipSpace()
            var key = ""
            while i < chars.count, chars[i] != "=", chars[i] != ";" {
                key.append(chars[i])
                i += 1
            }
            key = key.trimmingCharacters(in: .whitespaces).lowercased()
            var val = ""
            if i < chars.count, chars[i] == "=" {
                i += 1
                skipSpace()
                if i < chars.count, chars[i] == "\"" {
                    i += 1
                    while i < chars.count, chars[i] != "\"" {
                        if chars[i] == "\\", i + 1 < chars.count { i += 1 }
                        val.append(chars[i])
                        i += 1
                    }
                    i += 1  // closing quote
                    while i < chars.count, chars[i] != ";" { i += 1 }
                } else {
                    while i < chars.count, chars[i] != ";" {
                        val.append(chars[i])
                        i += 1
                    }
                    val = val.trimmingCharacters(in: .whitespaces)
                }
            }
            if !key.isEmpty, params[key] == nil { params[key] = val }
        }
    }

    subscript(_ key: String) -> String? { params[key.lowercased()] }
}
