// The Files API through the real lorad binary: uploads shaped exactly as the OpenAI Python SDK sends them, the
// round trip upload/list/get/content/delete, every bad-input answer (malformed multipart, a bad line 7, empty and
// non-UTF-8 files, wrong purposes, unknown ids, oversize bodies, non-admin callers), loractl files, a file that got
// its 200 surviving kill -9, and 507 on a full disk with nothing half-stored and the daemon serving on.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Multipart bodies as the OpenAI Python SDK (httpx) builds them: a 32-hex-digit boundary, `purpose` first with no
/// Content-Type, then `file` with its filename and `Content-Type: application/octet-stream`, CRLF line ends, and a
/// close delimiter followed by CRLF (see MultipartTests.sdkBody for a captured one).
enum OpenAIMultipart {
    static func boundary() -> String { (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined() }

    static func body(
        boundary: String, purpose: String? = "fine-tune", filename: String? = "train.jsonl", fileField: String = "file",
        content: [UInt8], close: Bool = true
    ) -> [UInt8] {
        var out: [UInt8] = []
        if let purpose {
            out += Array("--\(boundary)\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n\(purpose)\r\n".utf8)
        }
        let fn = filename.map { "; filename=\"\($0)\"" } ?? ""
        out += Array(
            "--\(boundary)\r\nContent-Disposition: form-data; name=\"\(fileField)\"\(fn)\r\nContent-Type: application/octet-stream\r\n\r\n".utf8)
        out += content
        if close { out += Array("\r\n--\(boundary)--\r\n".utf8) }
        return out
    }

    /// The raw HTTP request (Content-Length, or chunked transfer-encoding in 64 KiB chunks).
    static func request(contentType: String?, body: [UInt8], chunked: Bool = false, path: String = "/v1/files") -> [UInt8] {
        var head = "POST \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAccept: application/json\r\n"
        if let contentType { head += "Content-Type: \(contentType)\r\n" }
        if !chunked { return Array((head + "Content-Length: \(body.count)\r\n\r\n").utf8) + body }
        var out = Array((head + "Transfer-Encoding: chunked\r\n\r\n").utf8)
        var i = 0
        while i < body.count {
            let n = min(65536, body.count - i)
            out += Array((String(n, radix: 16) + "\r\n").utf8) + body[i..<(i + n)] + [13, 10]
            i += n
        }
        return out + Array("0\r\n\r\n".utf8)
    }
}

extension LoradProcess {
    /// `POST /v1/files` with a body as the SDK sends it.
    func upload(_ content: [UInt8], purpose: String? = "fine-tune", filename: String? = "train.jsonl") throws -> HTTPResult {
        let b = OpenAIMultipart.boundary()
        return try raw(
            OpenAIMultipart.request(
                contentType: "multipart/form-data; boundary=\(b)",
                body: OpenAIMultipart.body(boundary: b, purpose: purpose, filename: filename, content: content)))
    }

    /// Sends a request whose body the server may refuse to read (it answers and closes): send errors are ignored.
    /// Reads until EOF or an error (a Unix socket closed with unread data reports ECONNRESET after the
    /// response bytes).
    func rawTolerant(_ request: [UInt8]) throws -> HTTPResult {
        let c = try RawConnection(path: socket)
        try? c.send(request)
        var all: [UInt8] = []
        while let chunk = try? c.receive(), !chunk.isEmpty { all += chunk }
        return try HTTP.parse(all)
    }
}

@Suite(.serialized) struct FilesIntegrationTests {
    static func chatLine(_ i: Int) -> String {
        #"{"messages": [{"role": "user", "content": "Question \#(i)?"}, {"role": "assistant", "content": "Answer \#(i)."}]}"#
    }

    static var goodFile: [UInt8] {
        let lines = (1...4).map(chatLine) + [
            #"{"prompt": "Two plus two is", "completion": " four."}"#,
            #"{"input": {"messages": [{"role": "user", "content": "Hi"}]}, "preferred_output": [{"role": "assistant", "content": "Hello!"}], "non_preferred_output": [{"role": "assistant", "content": "Go away."}]}"#,
        ]
        return Array((lines.joined(separator: "\n") + "\n\n").utf8)
    }

    static func error(_ r: HTTPResult) -> (message: String, param: String?, code: String?) {
        let e = (try? r.json())?["error"] as? [String: Any]
        return (e?["message"] as? String ?? r.text, e?["param"] as? String, e?["code"] as? String)
    }

    @Test func roundTripAndBadInput() throws {
        let d = try LoradProcess(extra: ["--max-upload-mb", "1"])
        defer { d.stop() }
        chmod(d.socket, 0o666)
        chmod(d.dir.path, 0o755)

        // The SDK's own captured body (fixed boundary), then one built the same way.
        let sdk = try d.raw(
            OpenAIMultipart.request(
                contentType: "multipart/form-data; boundary=\(MultipartTests.sdkBoundary)", body: MultipartTests.sdkBody))
        #expect(sdk.status == 200, "\(sdk.text)")
        let sdkID = try #require(try sdk.json()["id"] as? String)

        let up = try d.upload(Self.goodFile)
        #expect(up.status == 200, "\(up.text)")
        let f = try up.json()
        let id = try #require(f["id"] as? String)
        #expect(id.hasPrefix("file-") && f["object"] as? String == "file" && f["purpose"] as? String == "fine-tune")
        #expect(f["bytes"] as? Int == Self.goodFile.count && f["filename"] as? String == "train.jsonl")
        #expect(f["status"] as? String == "processed" && f["line_count"] as? Int == 6 && f["created_at"] is Int)

        // list / get / content
        let list = try d.get("/v1/files").json()
        #expect(list["object"] as? String == "list")
        #expect((list["data"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == [id, sdkID])
        let asc = try d.get("/v1/files?order=asc&limit=1").json()
        #expect((asc["data"] as? [[String: Any]])?.first?["id"] as? String == sdkID && asc["has_more"] as? Bool == true)
        let after = try d.get("/v1/files?order=asc&after=\(sdkID)").json()
        #expect((after["data"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == [id])
        #expect((try d.get("/v1/files?purpose=fine-tune-results").json()["data"] as? [Any])?.isEmpty == true)
        #expect(try d.get("/v1/files?order=sideways").status == 400)
        #expect(try d.get("/v1/files?limit=0").status == 400)
        let got = try d.get("/v1/files/\(id)")
        let gotBytes = try got.json()["bytes"] as? Int
        #expect(got.status == 200 && gotBytes == Self.goodFile.count)
        let content = try d.get("/v1/files/\(id)/content")
        #expect(content.status == 200 && content.body == Self.goodFile)
        #expect(content.header("Content-Length") == "\(Self.goodFile.count)")
        #expect(try d.get("/v1/files/\(sdkID)/content").body == Array(MultipartTests.sdkLine.utf8))
        #expect(FileManager.default.fileExists(atPath: d.dir.path + "/state/files/\(id).jsonl"))

        // A bad line 7 is named with its field; nothing is stored.
        let bad = (1...6).map(Self.chatLine) + [#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "x"}]}"#]
        var r = try d.upload(Array(bad.joined(separator: "\n").utf8))
        var e = Self.error(r)
        #expect(r.status == 400 && e.param == "file" && e.code == "invalid_file", "\(r.text)")
        #expect(e.message.hasPrefix("line 7: 'messages[1].role'"), "\(e.message)")
        r = try d.upload(Array((Self.chatLine(1) + "\n" + #"{"prompt": "p"}"#).utf8))
        #expect(r.status == 400 && Self.error(r).message.hasPrefix("line 2: 'completion'"), "\(r.text)")
        r = try d.upload([])
        #expect(r.status == 400 && Self.error(r).code == "invalid_file", "\(r.text)")
        r = try d.upload(Array("\n \n".utf8))
        #expect(r.status == 400 && Self.error(r).code == "invalid_file", "\(r.text)")
        r = try d.upload(Array((Self.chatLine(1) + "\n").utf8) + [0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d, 10])
        e = Self.error(r)
        #expect(r.status == 400 && e.message.contains("line 2") && e.message.contains("UTF-8"), "\(r.text)")

        // Purposes: only fine-tune is uploadable.
        for p in ["batch", "fine-tune-results", "assistants"] {
            r = try d.upload(Self.goodFile, purpose: p)
            #expect(r.status == 400 && Self.error(r).param == "purpose", "\(p): \(r.text)")
        }
        r = try d.upload(Self.goodFile, purpose: nil)
        #expect(r.status == 400 && Self.error(r).param == "purpose", "\(r.text)")

        // Malformed multipart: no boundary, not multipart, truncated, no file part, a file part without filename.
        let b = OpenAIMultipart.boundary()
        let body = OpenAIMultipart.body(boundary: b, content: Self.goodFile)
        for ct in [nil, "multipart/form-data", "application/json", "multipart/form-data; boundary="] {
            r = try d.raw(OpenAIMultipart.request(contentType: ct, body: body))
            #expect(r.status == 400 && Self.error(r).code == "invalid_multipart", "\(ct ?? "nil"): \(r.text)")
        }
        let ct = "multipart/form-data; boundary=\(b)"
        r = try d.raw(OpenAIMultipart.request(contentType: ct, body: Array(body.dropLast(12))))
        #expect(r.status == 400 && Self.error(r).message.contains("closing boundary"), "\(r.text)")
        r = try d.raw(OpenAIMultipart.request(contentType: ct, body: OpenAIMultipart.body(boundary: b, content: Self.goodFile, close: false)))
        #expect(r.status == 400 && Self.error(r).code == "invalid_multipart", "\(r.text)")
        r = try d.raw(OpenAIMultipart.request(contentType: ct, body: OpenAIMultipart.body(boundary: b, fileField: "data", content: Self.goodFile)))
        #expect(r.status == 400 && Self.error(r).message.contains("no 'file' part"), "\(r.text)")
        r = try d.raw(OpenAIMultipart.request(contentType: ct, body: OpenAIMultipart.body(boundary: b, filename: nil, content: Self.goodFile)))
        #expect(r.status == 400 && Self.error(r).message.contains("filename"), "\(r.text)")
        r = try d.raw(OpenAIMultipart.request(contentType: ct, body: Array("garbage without any boundary".utf8)))
        #expect(r.status == 400 && Self.error(r).code == "invalid_multipart", "\(r.text)")

        // Oversize (limit 1 MiB): refused from Content-Length before reading, and while reading a chunked body.
        let big = OpenAIMultipart.body(boundary: b, content: Array(repeating: UInt8(ascii: "x"), count: 2 << 20))
        r = try d.rawTolerant(OpenAIMultipart.request(contentType: ct, body: big))
        #expect(r.status == 413 && Self.error(r).code == "request_too_large", "\(r.text)")
        r = try d.rawTolerant(OpenAIMultipart.request(contentType: ct, body: big, chunked: true))
        #expect(r.status == 413, "\(r.text)")
        // A chunked upload within the limit is fine.
        r = try d.raw(OpenAIMultipart.request(contentType: ct, body: body, chunked: true))
        #expect(r.status == 200, "\(r.text)")
        let chunkedID = try #require(try r.json()["id"] as? String)

        // Unknown ids.
        for path in ["/v1/files/file-nope", "/v1/files/file-nope/content"] {
            r = try d.get(path)
            #expect(r.status == 404 && Self.error(r).code == "file_not_found", "\(path): \(r.text)")
        }
        #expect(try d.delete("/v1/files/file-nope").status == 404)
        #expect(try d.get("/v1/files/\(id)/other").status == 404)

        // Non-admin (uid 65534): may not upload or delete, and sees none of the admin's files.
        let tmp = d.dir.path + "/nobody.jsonl"
        try Data(Self.goodFile).write(to: URL(fileURLWithPath: tmp))
        chmod(tmp, 0o644)
        var (st, text) = try StoreIntegrationTests.curlAsNobody(d, ["-F", "purpose=fine-tune", "-F", "file=@\(tmp)", "http://l/v1/files"])
        #expect(st == 403 && text.contains("admin_required"), "\(text)")
        (st, text) = try StoreIntegrationTests.curlAsNobody(d, ["-X", "DELETE", "http://l/v1/files/\(id)"])
        #expect(st == 403, "\(text)")
        (st, text) = try StoreIntegrationTests.curlAsNobody(d, ["http://l/v1/files"])
        #expect(st == 200 && text.contains("\"data\":[]"), "\(text)")
        (st, _) = try StoreIntegrationTests.curlAsNobody(d, ["http://l/v1/files/\(id)"])
        #expect(st == 404)
        (st, _) = try StoreIntegrationTests.curlAsNobody(d, ["http://l/v1/files/\(id)/content"])
        #expect(st == 404)
        // curl's own multipart encoding (as root) is accepted too.
        (st, text) = try Self.curl(d, ["-F", "purpose=fine-tune", "-F", "file=@\(tmp)", "http://l/v1/files"])
        #expect(st == 200, "\(text)")

        // Delete: the row, then the content.
        let del = try d.delete("/v1/files/\(id)")
        #expect(del.status == 200, "\(del.text)")
        let delBody = try del.json()
        #expect(delBody["id"] as? String == id && delBody["object"] as? String == "file" && delBody["deleted"] as? Bool == true)
        #expect(try d.get("/v1/files/\(id)").status == 404)
        #expect(try d.get("/v1/files/\(id)/content").status == 404)
        #expect(try d.delete("/v1/files/\(id)").status == 404)
        #expect(!FileManager.default.fileExists(atPath: d.dir.path + "/state/files/\(id).jsonl"))
        // Nothing from the refused uploads was left behind: the content files are exactly the stored ones.
        let stored = Set((try d.get("/v1/files").json()["data"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String })
        #expect(stored.count == 3 && stored.contains(sdkID) && stored.contains(chunkedID))
        let onDisk = Set(try FileManager.default.contentsOfDirectory(atPath: d.dir.path + "/state/files"))
        #expect(onDisk == Set(stored.map { $0 + ".jsonl" }), "\(onDisk)")

        #expect(try d.get("/health").status == 200)
        let gen = try d.post("/v1/completions", json: ["prompt": "Hi", "max_tokens": 2])
        #expect(gen.status == 200)
        #expect(try d.get("/metrics").text.contains("route=\"/v1/files\""))
    }

    /// curl as the test's own (admin) user; returns (status, body).
    static func curl(_ d: LoradProcess, _ args: [String]) throws -> (Int, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        p.arguments = ["-s", "-w", "\n%{http_code}", "--unix-socket", d.socket] + args
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
        return (Int(lines.last ?? "") ?? -1, lines.dropLast().joined(separator: "\n"))
    }

    @Test func loractlFiles() throws {
        let d = try LoradProcess()
        defer { d.stop() }
        let path = d.dir.path + "/data.jsonl"
        try Data(Self.goodFile).write(to: URL(fileURLWithPath: path))
        var r = try loractl(d, ["files", "upload", path])
        #expect(r.0 == 0 && r.1.hasPrefix("file-"), "\(r)")
        let id = r.1.trimmingCharacters(in: .whitespacesAndNewlines)
        r = try loractl(d, ["files", "list"])
        #expect(r.0 == 0 && r.1.contains(id) && r.1.contains("data.jsonl") && r.1.contains("fine-tune"), "\(r)")
        r = try loractl(d, ["files", "show", id])
        #expect(r.0 == 0 && r.1.contains("\"line_count\" : 6"), "\(r)")
        r = try loractl(d, ["files", "content", id])
        #expect(r.0 == 0 && Array(r.1.utf8) == Self.goodFile, "\(r)")
        let badPath = d.dir.path + "/bad.jsonl"
        try "{\"messages\": []}\n".write(toFile: badPath, atomically: true, encoding: .utf8)
        r = try loractl(d, ["files", "upload", badPath])
        #expect(r.0 != 0 && r.2.contains("line 1: 'messages'") && r.2.contains("HTTP 400"), "\(r)")
        r = try loractl(d, ["files", "upload", path, "--purpose", "batch"])
        #expect(r.0 != 0 && r.2.contains("purpose"), "\(r)")
        r = try loractl(d, ["files", "rm", id])
        #expect(r.0 == 0 && r.1 == "\(id): deleted\n", "\(r)")
        r = try loractl(d, ["files", "show", id])
        #expect(r.0 != 0 && r.2.contains("No file with id"), "\(r)")
        r = try loractl(d, ["files", "content", "file-nope"])
        #expect(r.0 != 0 && r.2.contains("HTTP 404"), "\(r)")
    }

    /// A file whose upload got its 200 is there after kill -9 and a restart, with the same bytes; an upload
    /// killed mid-body leaves nothing (its temporary file, like a content file without a row, is removed at
    /// start-up).
    @Test func uploadSurvivesKill9() throws {
        let d = try LoradProcess()
        d.removeDirOnExit = false
        let r = try d.upload(Self.goodFile)
        #expect(r.status == 200, "\(r.text)")
        let id = try #require(try r.json()["id"] as? String)
        // A second upload is mid-body (its Content-Length promises more) when the daemon is killed.
        let files = d.dir.path + "/state/files"
        let b = OpenAIMultipart.boundary()
        let partial = OpenAIMultipart.body(boundary: b, content: Self.goodFile + Self.goodFile, close: false)
        let c = try RawConnection(path: d.socket)
        try c.send(
            Array(
                ("POST /v1/files HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=\(b)\r\n"
                    + "Content-Length: \(partial.count + 10_000)\r\n\r\n").utf8) + partial)
        var sawTemp = false
        for _ in 0..<1000 where !sawTemp {  // 20 s, below the 30 s read timeout that would remove the file
            sawTemp = (try FileManager.default.contentsOfDirectory(atPath: files)).contains { $0.hasPrefix(".upload-") }
            if !sawTemp { usleep(20_000) }
        }
        #expect(sawTemp, "the interrupted upload's temporary file never appeared")
        kill(d.process.processIdentifier, SIGKILL)
        d.process.waitUntilExit()
        // What a kill between the content's rename and its row's insert would leave.
        try "{}\n".write(toFile: files + "/file-ffffffffffffffffffffffff.jsonl", atomically: false, encoding: .utf8)

        let d2 = try LoradProcess(reuse: d.dir)
        defer { d2.stop() }
        let got = try d2.get("/v1/files/\(id)")
        let lineCount = try got.json()["line_count"] as? Int
        #expect(got.status == 200 && lineCount == 6, "\(got.text)")
        #expect(try d2.get("/v1/files/\(id)/content").body == Self.goodFile)
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: files)) == ["\(id).jsonl"])
        #expect(try d2.get("/v1/files/file-ffffffffffffffffffffffff").status == 404)
        let listed = (try d2.get("/v1/files").json()["data"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }
        #expect(listed == [id])
    }

    /// The state directory on a 1 MiB tmpfs: an upload that does not fit answers 507 and leaves no trace; files
    /// stored before keep their bytes; the daemon keeps serving (and stores a small file again).
    @Test func fullDiskAnswers507() throws {
        let disk = try SmallTmpfs(size: "1m", tag: "files-full")
        defer { disk.unmount() }
        let mnt = disk.path
        let d = try LoradProcess(extra: ["--state-dir", mnt])
        defer { d.stop() }
        let small = try d.upload(Self.goodFile)
        #expect(small.status == 200, "\(small.text)")
        let keptID = try #require(try small.json()["id"] as? String)

        // 1.5 MiB of valid lines cannot fit.
        var lines: [UInt8] = []
        var i = 0
        while lines.count < 1_500_000 {
            lines += Array((Self.chatLine(i) + "\n").utf8)
            i += 1
        }
        let full = try d.upload(lines)
        #expect(full.status == 507 && Self.error(full).code == "insufficient_storage", "\(full.text)")
        let listed = (try d.get("/v1/files").json()["data"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }
        #expect(listed == [keptID])
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: mnt + "/files")) == ["\(keptID).jsonl"])
        #expect(try d.get("/v1/files/\(keptID)/content").body == Self.goodFile)
        #expect(try d.get("/health").status == 200)
        #expect(try d.post("/v1/completions", json: ["prompt": "Hi", "max_tokens": 2]).status == 200)
        let again = try d.upload(Self.goodFile)
        #expect(again.status == 200, "\(again.text)")
        print("full disk: a \(lines.count)-byte upload on a 1 MiB tmpfs answered \(full.status); \(Self.goodFile.count)-byte uploads before and after stored")
    }
}
