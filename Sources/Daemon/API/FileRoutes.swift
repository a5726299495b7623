// FileRoutes: OpenAI's Files API over the socket.
//
//   POST   /v1/files                multipart/form-data: `purpose` = fine-tune, `file` = the JSONL (admin only)
//   GET    /v1/files                list (purpose, after, limit, order)
//   GET    /v1/files/{id}           one file object
//   GET    /v1/files/{id}/content   the raw bytes
//   DELETE /v1/files/{id}           admin only -> {"id", "object": "file", "deleted": true}
//
// Uploads are streamed: HTTPServer hands the body over piece by piece, the multipart parser cuts out the `file`
// part, its bytes go to a temporary file in the store while every line is validated with the trainer's own
// parser (DatasetRecord), and only a complete, valid upload is committed (LoradStore.commitUpload). Size is
// bounded by `--max-upload-mb` (413 as soon as it is passed). Access (SO_PEERCRED): uploading and deleting are
// admin operations; others may read only the files their uid uploaded.

import Foundation
import NIOCore
import NIOHTTP1
import Train

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Validates a training JSONL file line by line as its bytes arrive, with the rules of
/// `DatasetRecord.parseLines` (blank lines skipped, a trailing CR removed) plus a UTF-8 check.
struct TrainingLineValidator {
    /// Lines seen (1-based number of the last complete line).
    private(set) var line = 0
    /// Valid training lines.
    private(set) var count = 0
    /// The first bad line, if any (later bytes are not examined).
    private(set) var error: DatasetError?
    private var pending: [UInt8] = []

    /// Consumes file bytes.
    mutating func feed(_ bytes: ArraySlice<UInt8>) {
        guard error == nil else { return }
        var rest = bytes
        while let nl = rest.firstIndex(of: 10) {
            pending.append(contentsOf: rest[rest.startIndex..<nl])
            check()
            rest = rest[(nl + 1)...]
            if error != nil { return }
        }
        pending.append(contentsOf: rest)
    }

    /// Ends the file (a last line without a newline is checked).
    mutating func finish() {
        guard error == nil, !pending.isEmpty else { return }
        check()
    }

    private mutating func check() {
        line += 1
        defer { pending.removeAll(keepingCapacity: true) }
        if pending.last == 13 { pending.removeLast() }
        if pending.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { return }
        guard String(validating: pending, as: UTF8.self) != nil else {
            error = DatasetError(line: line, field: "", reason: "the line is not valid UTF-8")
            return
        }
        do {
            _ = try DatasetRecord.parse(pending, line: line)
            count += 1
        } catch let e as DatasetError {
            error = e
        } catch {
            self.error = DatasetError(line: line, field: "", reason: "\(error)")
        }
    }
}

/// Reading a file's content failed after the response head was sent.
struct ContentReadError: Error {
    let path: String
}

extension APIError {
    /// 400 for a multipart body that cannot be parsed.
    static func invalidMultipart(_ e: MultipartError) -> APIError {
        APIError(
            status: 400, message: "\(e.description.prefix(1).uppercased())\(e.description.dropFirst()).",
            type: "invalid_request_error", param: "file", code: "invalid_multipart")
    }

    /// 400 for an uploaded file that is not valid training data: `line N: 'field': reason`.
    static func invalidFile(_ message: String) -> APIError {
        APIError(status: 400, message: message, type: "invalid_request_error", param: "file", code: "invalid_file")
    }

    static func invalidFile(_ e: DatasetError) -> APIError {
        if e.line == 0 { return invalidFile("The file holds no training line.") }
        return invalidFile(e.field.isEmpty ? "line \(e.line): \(e.reason)" : "line \(e.line): '\(e.field)': \(e.reason)")
    }

    /// 404 for an unknown (or not visible) file id.
    static func fileNotFound(_ id: String) -> APIError {
        APIError(
            status: 404, message: "No file with id '\(id)'.", type: "not_found_error", param: "file_id",
            code: "file_not_found")
    }
}

extension APIHandler {
    /// The OpenAI `file` object, plus lorad's `line_count` and `sha256`.
    static func fileJSON(_ f: StoredFile) -> JSONValue {
        .object([
            ("id", .string(f.id)), ("object", .string("file")), ("bytes", .int(f.bytes)),
            ("created_at", .int(f.createdAt)), ("expires_at", .null), ("filename", .string(f.filename)),
            ("purpose", .string(f.purpose)), ("status", .string(f.status)),
            ("status_details", .optional(f.statusDetails)), ("line_count", .int(f.lineCount)),
            ("sha256", .string(f.sha256)),
        ])
    }

    /// Purposes a client may upload.
    static let uploadablePurposes: Set<String> = ["fine-tune"]

    /// Serves `POST /v1/files` from a streamed body. `next` returns the next body piece, nil at the end of the
    /// body; it throws when the client goes away. Returns whether the connection may serve another request
    /// (false after a 413, which answers before the body is read).
    func handleUpload(
        head: HTTPRequestHead, writer: ResponseWriter, peer: PeerCredentials?, limit: Int,
        next: () async throws -> ByteBuffer?
    ) async -> Bool {
        var status = 500
        var keep = true
        do {
            status = try await upload(head: head, writer: writer, peer: peer, limit: limit, next: next)
        } catch let e as APIError {
            status = e.status
            // Past the size limit: answer at once and close without reading the rest. Any other refusal (403,
            // 404, no boundary, ...) reads and drops what is left of the body first, so that a client still
            // sending gets the answer on an intact connection.
            var close = e.status == 413
            if !close {
                do {
                    var n = 0
                    while let c = try await next() {
                        n += c.readableBytes
                        if n > limit {
                            close = true
                            break
                        }
                    }
                } catch {
                    close = true
                }
            }
            let w = close
                ? ResponseWriter(outbound: writer.outbound, version: writer.version, keepAlive: false, allocator: writer.allocator)
                : writer
            do { try await w.send(error: e) } catch { keep = false }
            if close { keep = false }
        } catch {
            status = 499
            keep = false
        }
        state.metrics.recordRequest(route: Route.files.template, status: status)
        logger.debug("request", metadata: ["method": "POST", "uri": "\(head.uri)", "status": "\(status)"])
        return keep
    }

    private func upload(
        head: HTTPRequestHead, writer: ResponseWriter, peer: PeerCredentials?, limit: Int,
        next: () async throws -> ByteBuffer?
    ) async throws -> Int {
        try Route.checkNotBrowser(headerNames: head.headers.map(\.name))
        guard state.adminPolicy.allows(peer) else { throw APIError.storeAdminRequired(peer, what: "Uploading files") }
        let s = try store()
        var parser: MultipartParser
        do {
            parser = MultipartParser(boundary: try MultipartParser.boundary(contentType: head.headers.first(name: "content-type")))
        } catch let e as MultipartError {
            throw APIError.invalidMultipart(e)
        }

        enum Part { case none, purpose, file, other }
        var part = Part.none
        var purposeBytes: [UInt8] = []
        var sawPurpose = false
        var filename: String?
        var sawFile = false
        var validator = TrainingLineValidator()
        var failure: APIError?
        var storeFailure: StoreError?
        let upload: FileUpload
        do { upload = try s.beginUpload() } catch let e as StoreError { throw APIError.from(e) }
        defer { upload.abort() }  // a no-op once committed (the temp file was renamed)
        var total = 0
        // Read the whole body even after a failure, so the client gets the answer on an intact connection;
        // only the size limit stops reading early.
        while let chunk = try await next() {
            total += chunk.readableBytes
            if total > limit { throw APIError.bodyTooLarge(limit: limit) }
            guard failure == nil else { continue }
            do {
                try parser.feed(chunk.readableBytesView) { event in
                    switch event {
                    case .partStart(let h):
                        switch h.name {
                        case "file":
                            guard !sawFile else {
                                throw APIError.invalidRequest("The body has more than one 'file' part.", param: "file")
                            }
                            guard let f = h.filename, !f.isEmpty else {
                                throw APIError.invalidRequest(
                                    "The 'file' part needs a filename in its Content-Disposition.", param: "file",
                                    code: "invalid_multipart")
                            }
                            sawFile = true
                            filename = f
                            part = .file
                        case "purpose":
                            sawPurpose = true
                            part = .purpose
                        default:
                            part = .other
                        }
                    case .body(let bytes):
                        switch part {
                        case .purpose:
                            purposeBytes += bytes
                            if purposeBytes.count > 256 {
                                throw APIError.invalidRequest("'purpose' is too long.", param: "purpose")
                            }
                        case .file:
                            if storeFailure == nil {
                                do { try upload.write(bytes) } catch let e as StoreError { storeFailure = e }
                            }
                            validator.feed(bytes)
                        case .none, .other:
                            break
                        }
                    case .partEnd:
                        if part == .file { validator.finish() }
                        part = .none
                    }
                }
            } catch let e as MultipartError {
                failure = .invalidMultipart(e)
            } catch let e as APIError {
                failure = e
            }
        }
        if let failure { throw failure }
        do { try parser.finish() } catch let e as MultipartError { throw APIError.invalidMultipart(e) }
        guard sawFile, let filename else {
            throw APIError.invalidRequest("The body has no 'file' part.", param: "file", code: "invalid_multipart")
        }
        guard sawPurpose else {
            throw APIError.invalidRequest("'purpose' is required; use fine-tune.", param: "purpose")
        }
        let purpose = String(decoding: purposeBytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard Self.uploadablePurposes.contains(purpose) else {
            let why = purpose == "fine-tune-results" ? " (result files are written by fine-tuning jobs)" : ""
            throw APIError.invalidRequest(
                "'purpose' must be fine-tune; '\(purpose.prefix(64))' is not supported\(why).", param: "purpose")
        }
        if let e = storeFailure { throw APIError.from(e) }
        if let e = validator.error { throw APIError.invalidFile(e) }
        guard upload.bytes > 0 else { throw APIError.invalidFile("The file is empty.") }
        guard validator.count > 0 else { throw APIError.invalidFile("The file holds no training line.") }
        let stored: StoredFile
        do {
            stored = try await s.commitUpload(
                upload, purpose: purpose, filename: filename, uid: peer?.uid, lineCount: validator.count)
        } catch let e as StoreError {
            throw APIError.from(e)
        }
        logger.info(
            "file uploaded",
            metadata: [
                "id": "\(stored.id)", "bytes": "\(stored.bytes)", "lines": "\(stored.lineCount)",
                "uid": "\(peer.map { "\($0.uid)" } ?? "?")",
            ])
        try await writer.send(json: Self.fileJSON(stored))
        return 200
    }

    /// A file the caller may see (admins: any; others: those their uid uploaded), else 404.
    private func visibleFile(_ id: String, peer: PeerCredentials?) async throws -> StoredFile {
        let s = try store()
        let f: StoredFile?
        do { f = try await s.file(id: id) } catch let e as StoreError { throw APIError.from(e) }
        guard let f, mayRead(ownedBy: f.uid, peer: peer) else {
            throw APIError.fileNotFound(id)
        }
        return f
    }

    /// Serves the file routes other than the upload.
    func dispatchFiles(
        _ route: Route, method: String, uri: String, body: [UInt8], peer: PeerCredentials?, writer: ResponseWriter
    ) async throws -> Int {
        let s = try store()
        let admin = state.adminPolicy.allows(peer)
        let q = QueryParams(uri: uri)
        do {
            switch (route, method) {
            case (.files, "GET"):
                let order = q["order"] ?? "desc"
                guard let o = FileListOrder(rawValue: order) else {
                    throw APIError.invalidRequest("'order' must be asc or desc.", param: "order")
                }
                var limit = 10_000
                if let l = q["limit"] {
                    guard let n = Int(l), (1...10_000).contains(n) else {
                        throw APIError.invalidRequest("'limit' must be an integer from 1 to 10000; got '\(l)'.", param: "limit")
                    }
                    limit = n
                }
                let page = try await s.listFiles(
                    purpose: q["purpose"], after: q["after"], limit: limit, order: o,
                    uid: admin ? nil : (peer?.uid ?? UInt32.max))
                try await writer.send(
                    json: listJSON(page.items.map(Self.fileJSON), ids: page.items.map(\.id), hasMore: page.hasMore))
                return 200
            case (.file(let id), "GET"):
                try await writer.send(json: Self.fileJSON(try await visibleFile(id, peer: peer)))
                return 200
            case (.fileContent(let id), "GET"):
                let f = try await visibleFile(id, peer: peer)
                try await sendContent(f, writer: writer)
                return 200
            case (.file(let id), "DELETE"):
                guard admin else { throw APIError.storeAdminRequired(peer, what: "Deleting files") }
                guard try await s.deleteFile(id: id) else { throw APIError.fileNotFound(id) }
                logger.info("file deleted", metadata: ["id": "\(id)"])
                try await writer.send(
                    json: .object([("id", .string(id)), ("object", .string("file")), ("deleted", .bool(true))]))
                return 200
            default:
                throw APIError.routeNotFound(method: method, path: route.template)
            }
        } catch let e as StoreError {
            throw APIError.from(e)
        }
    }

    /// Streams a file's content with its Content-Length, 256 KiB at a time; the last piece goes out with the end.
    private func sendContent(_ f: StoredFile, writer: ResponseWriter) async throws {
        let fd = open(f.contentPath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw APIError.fileNotFound(f.id) }  // deleted meanwhile
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw APIError.internalError("cannot stat the content of \(f.id)") }
        let size = Int(st.st_size)
        let contentType = f.purpose == "fine-tune-results" ? "text/csv" : "application/octet-stream"
        let safeName = f.filename.replacingOccurrences(of: "\"", with: "").replacingOccurrences(of: "\r", with: "")
            .replacingOccurrences(of: "\n", with: "")
        try await writer.outbound.write(
            .head(
                writer.head(
                    200,
                    [
                        ("Content-Type", contentType), ("Content-Length", String(size)),
                        ("Content-Disposition", "attachment; filename=\"\(safeName)\""),
                    ])))
        if writer.headOnly {
            try await writer.outbound.write(.end(nil))
            return
        }
        let chunk = 256 << 10
        var sent = 0
        var buf = [UInt8](repeating: 0, count: chunk)
        while sent < size {
            let want = min(chunk, size - sent)
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, want) }
            if n < 0 && errno == EINTR { continue }
            // The head is out: a failure now can only cut the connection.
            guard n > 0 else { throw ContentReadError(path: f.contentPath) }
            sent += n
            let piece = HTTPServerResponsePart.body(.byteBuffer(writer.allocator.buffer(bytes: buf[0..<n])))
            if sent >= size {
                try await writer.outbound.write(contentsOf: [piece, .end(nil)])
            } else {
                try await writer.outbound.write(piece)
            }
        }
        if size == 0 { try await writer.outbound.write(.end(nil)) }
    }
}
