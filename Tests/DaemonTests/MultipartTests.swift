// The multipart/form-data parser (RFC 7578 / RFC 2046 §5.1.1) on the exact body the OpenAI Python SDK sends for
// `files.create` (openai 3.63.0 over httpx, captured from the SDK with a mock transport), fed whole, one byte at a
// time and in random pieces; bodies whose content looks like a delimiter; every truncation; and malformed input.

import Daemon
import Foundation
import Testing

@Suite struct MultipartTests {
    /// `client.files.create(file=("train.jsonl", io.BytesIO(data)), purpose="fine-tune")`, as the SDK sent it,
    /// with `Content-Type: multipart/form-data; boundary=552d519e43404912c0f9b1ed4ee9df43`.
    static let sdkBoundary = "552d519e43404912c0f9b1ed4ee9df43"
    static let sdkLine = #"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}"# + "\n"
    static let sdkBody = Array(
        ("--552d519e43404912c0f9b1ed4ee9df43\r\n"
            + "Content-Disposition: form-data; name=\"purpose\"\r\n\r\n"
            + "fine-tune\r\n"
            + "--552d519e43404912c0f9b1ed4ee9df43\r\n"
            + "Content-Disposition: form-data; name=\"file\"; filename=\"train.jsonl\"\r\n"
            + "Content-Type: application/octet-stream\r\n\r\n"
            + sdkLine
            + "\r\n--552d519e43404912c0f9b1ed4ee9df43--\r\n").utf8)

    struct Part: Equatable {
        var name: String?
        var filename: String?
        var contentType: String?
        var body: [UInt8]
    }

    /// Feeds `body` in pieces of the given sizes (the rest in one piece) and collects the parts.
    static func parse(_ body: [UInt8], boundary: String, pieces: [Int] = []) throws -> (parts: [Part], complete: Bool) {
        var p = MultipartParser(boundary: boundary)
        var parts: [Part] = []
        var open = false
        var i = 0
        var sizes = pieces
        while i < body.count {
            let n = sizes.isEmpty ? body.count - i : max(1, min(sizes.removeFirst(), body.count - i))
            try p.feed(body[i..<(i + n)]) { e in
                switch e {
                case .partStart(let h):
                    #expect(!open)
                    open = true
                    parts.append(Part(name: h.name, filename: h.filename, contentType: h.value("Content-Type"), body: []))
                case .body(let b):
                    #expect(open)
                    parts[parts.count - 1].body += b
                case .partEnd:
                    #expect(open)
                    open = false
                }
            }
            i += n
        }
        return (parts, p.isComplete)
    }

    static let expectedSDKParts = [
        Part(name: "purpose", filename: nil, contentType: nil, body: Array("fine-tune".utf8)),
        Part(name: "file", filename: "train.jsonl", contentType: "application/octet-stream", body: Array(sdkLine.utf8)),
    ]

    @Test func sdkBodyWholeBytewiseAndRandomPieces() throws {
        let whole = try Self.parse(Self.sdkBody, boundary: Self.sdkBoundary)
        #expect(whole.parts == Self.expectedSDKParts && whole.complete)
        let bytewise = try Self.parse(Self.sdkBody, boundary: Self.sdkBoundary, pieces: Array(repeating: 1, count: Self.sdkBody.count))
        #expect(bytewise.parts == Self.expectedSDKParts && bytewise.complete)
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            let pieces = (0..<40).map { _ in Int.random(in: 1...60, using: &rng) }
            let r = try Self.parse(Self.sdkBody, boundary: Self.sdkBoundary, pieces: pieces)
            #expect(r.parts == Self.expectedSDKParts && r.complete, "pieces \(pieces)")
        }
    }

    @Test func boundaryFromContentType() throws {
        #expect(try MultipartParser.boundary(contentType: "multipart/form-data; boundary=\(Self.sdkBoundary)") == Self.sdkBoundary)
        #expect(try MultipartParser.boundary(contentType: "Multipart/Form-Data;boundary=\"a b'c\"") == "a b'c")
        #expect(try MultipartParser.boundary(contentType: "multipart/form-data; charset=utf-8; boundary=----x") == "----x")
        for bad in [nil, "application/json", "multipart/form-data", "multipart/form-data; boundary=", "multipart/mixed; boundary=x",
                    "multipart/form-data; boundary=" + String(repeating: "a", count: 71), "multipart/form-data; boundary=a{b"] {
            #expect(throws: MultipartError.self, "\(bad ?? "nil")") { try MultipartParser.boundary(contentType: bad) }
        }
    }

    /// Content full of near-delimiters (CRLF, "--", the boundary without its CRLF, a boundary prefix cut short)
    /// comes out byte for byte, whatever the piece sizes.
    @Test func delimiterLookalikesInContent() throws {
        let b = "xyzzy"
        let content = Array("a\r\n-\r\n--\r\n--xyzz\r\nQ--xyzzy\n\r\r\n--xyzz".utf8) + [0, 255, 13]
        let body = Array("preamble text\r\n--\(b)\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n".utf8)
            + content + Array("\r\n--\(b)  \r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n--\(b)--epilogue".utf8)
        let expected = [
            Part(name: "file", filename: "a.jsonl", contentType: nil, body: content),
            Part(name: "purpose", filename: nil, contentType: nil, body: Array("fine-tune".utf8)),
        ]
        for size in 1...body.count {
            let r = try Self.parse(body, boundary: b, pieces: Array(repeating: size, count: body.count))
            #expect(r.parts == expected && r.complete, "piece size \(size)")
        }
    }

    /// A body cut anywhere before its close delimiter is never complete.
    @Test func everyTruncationIsIncomplete() throws {
        let closeDashes = Self.sdkBody.count - 4  // "--\r\n" after the last boundary
        for cut in 0..<(closeDashes + 2) {
            let r = try? Self.parse(Array(Self.sdkBody[..<cut]), boundary: Self.sdkBoundary)
            #expect(r?.complete != true, "cut at \(cut)")
            var p = MultipartParser(boundary: Self.sdkBoundary)
            try? p.feed(Self.sdkBody[..<cut]) { _ in }
            #expect(throws: MultipartError.truncated) { try p.finish() }
        }
        let r = try Self.parse(Array(Self.sdkBody[..<(closeDashes + 2)]), boundary: Self.sdkBoundary)
        #expect(r.complete && r.parts == Self.expectedSDKParts)
    }

    @Test func malformedBodiesThrow() {
        let b = "B"
        let cases: [(String, String)] = [
            ("no colon", "--B\r\nContent-Disposition form-data\r\n\r\nx\r\n--B--"),
            ("no disposition", "--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B--"),
            ("not form-data", "--B\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nx\r\n--B--"),
            ("garbage after boundary", "--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--Bjunk\r\n"),
        ]
        for (what, text) in cases {
            var p = MultipartParser(boundary: b)
            #expect(throws: MultipartError.self, "\(what)") { try p.feed(Array(text.utf8)) { _ in } }
        }
        var p = MultipartParser(boundary: b)
        let huge = "--B\r\nContent-Disposition: form-data; name=\"a\"\r\nX-Pad: " + String(repeating: "p", count: 20_000)
        #expect(throws: MultipartError.headersTooLarge(MultipartParser.maxHeaderBytes)) { try p.feed(Array(huge.utf8)) { _ in } }
    }

    @Test func dispositionParameters() throws {
        let body = Array(
            ("--q\r\nContent-Disposition: form-data; name=\"file\"; filename=\"we\\\"ird;name.jsonl\"\r\n\r\nA\r\n"
                + "--q\r\ncontent-disposition: FORM-DATA; name=f2; filename*=UTF-8''%C3%A9t%C3%A9.jsonl\r\n\r\nB\r\n--q--").utf8)
        let r = try Self.parse(body, boundary: "q")
        #expect(r.complete)
        #expect(r.parts.map(\.filename) == ["we\"ird;name.jsonl", "été.jsonl"])
        #expect(r.parts.map(\.name) == ["file", "f2"])
    }
}
