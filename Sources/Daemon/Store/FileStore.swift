// FileStore: OpenAI-style files (`POST /v1/files` uploads and the CSVs jobs write) in the durable store.
//
// Content lives in `<state_dir>/files/<id>.<ext>`, the metadata in the `file` table (migration "v2_files").
// Write order, so that a crash at any point leaves either a complete file with its row or nothing a client
// was told about:
//   1. the bytes go to `files/.upload-<random>.tmp` (a full disk fails here: the temp file is removed),
//   2. fsync(temp), rename(temp -> <id>.<ext>), fsync(files/),
//   3. the row is inserted (synchronous = FULL); only then is the client answered.
// A crash between 2 and 3 leaves a content file without a row: start-up removes it (and any temp file).
// Delete removes the row first, then the content file.
//
// Files in use by fine-tuning jobs: deleting them is allowed, as in OpenAI's API. A job that must keep reading
// a file takes a private copy when it is created, with ``LoradStore/linkFileContent(id:to:)`` (a hard link:
// no bytes copied, and the content stays readable through the link after the file is deleted).

import CCrypto
import Foundation
import GRDB

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One stored file (OpenAI's `file` object plus lorad's `line_count`, `sha256` and uploader uid).
public struct StoredFile: Sendable, Equatable {
    /// `file-` + 24 hex digits.
    public var id: String
    /// `fine-tune` (uploads) or `fine-tune-results` (CSV of step metrics written by jobs).
    public var purpose: String
    /// The client's file name, as sent.
    public var filename: String
    /// Size of the content, bytes.
    public var bytes: Int
    /// Unix seconds.
    public var createdAt: Int
    /// `processed` (validated and usable) or `error`.
    public var status: String
    /// Why the status is `error`; nil otherwise.
    public var statusDetails: String?
    /// Non-blank lines of the content (training lines for `fine-tune`, rows for CSVs).
    public var lineCount: Int
    /// SO_PEERCRED uid of the uploader (nil: unknown or made by the daemon).
    public var uid: UInt32?
    /// SHA-256 of the content, lowercase hex.
    public var sha256: String
    /// Absolute path of the content on disk.
    public var contentPath: String

    /// `"file"`.
    public var object: String { "file" }
}

/// Sort order of a file list (by creation).
public enum FileListOrder: String, Sendable {
    case asc, desc
}

/// An upload being written to a temporary file in `<state_dir>/files/`: ``write(_:)`` its bytes, then hand it to
/// ``LoradStore/commitUpload(_:purpose:filename:uid:lineCount:)``, or ``abort()``. Not thread-safe.
public final class FileUpload {
    /// The temporary file.
    public let tempPath: String
    private var fd: Int32
    private let hasher = SHA256Hasher()
    /// Bytes written so far.
    public private(set) var bytes = 0

    init(dir: String) throws {
        tempPath = dir + "/.upload-" + ResponseRenderer.randomHex(16) + ".tmp"
        fd = open(tempPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw LoradStore.ioError(errno, "create \(tempPath)") }
    }

    deinit { abort() }

    /// Appends bytes to the file (and to the running SHA-256).
    /// - Throws: ``StoreError/diskFull(_:)`` on ENOSPC/EDQUOT, ``StoreError/database(_:)`` on other I/O errors
    ///   (the caller then aborts the upload).
    public func write(_ data: some Collection<UInt8>) throws {
        guard fd >= 0 else { throw StoreError.database("write to a closed upload") }
        try data.withContiguousStorageIfAvailable { try writeAll($0) } ?? Array(data).withUnsafeBufferPointer { try writeAll($0) }
    }

    private func writeAll(_ p: UnsafeBufferPointer<UInt8>) throws {
        guard let base = p.baseAddress, p.count > 0 else { return }
        hasher.update(UnsafeRawBufferPointer(p))
        var off = 0
        while off < p.count {
            let n = Glibc.write(fd, base + off, p.count - off)
            if n < 0 {
                if errno == EINTR { continue }
                throw LoradStore.ioError(errno, "write \(tempPath)")
            }
            off += n
        }
        bytes += p.count
    }

    /// fsyncs and closes the file; returns its SHA-256 (hex).
    func close() throws -> String {
        if fsync(fd) != 0 { throw LoradStore.ioError(errno, "fsync \(tempPath)") }
        Glibc.close(fd)
        fd = -1
        return SHA256Hasher.hex(hasher.finish())
    }

    /// Closes and removes the temporary file (safe to call more than once).
    public func abort() {
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
        }
        unlink(tempPath)
    }
}

extension LoradStore {
    /// Registers the `file` table. Never edit; add a new migration.
    static func registerFilesMigration(_ m: inout DatabaseMigrator) {
        m.registerMigration("v2_files") { db in
            try db.execute(
                sql: """
                    CREATE TABLE file (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT,
                        id TEXT NOT NULL UNIQUE,
                        object TEXT NOT NULL DEFAULT 'file',
                        purpose TEXT NOT NULL,
                        filename TEXT NOT NULL,
                        bytes INTEGER NOT NULL,
                        created_at INTEGER NOT NULL,
                        status TEXT NOT NULL CHECK (status IN ('processed', 'error')),
                        status_details TEXT,
                        line_count INTEGER NOT NULL,
                        uid INTEGER,
                        sha256 TEXT NOT NULL
                    );
                    CREATE INDEX file_purpose ON file(purpose, seq);
                    """)
        }
    }

    static func ioError(_ e: Int32, _ what: String) -> StoreError {
        let msg = "\(what): \(String(cString: strerror(e)))"
        return e == ENOSPC || e == EDQUOT ? .diskFull(msg) : .database(msg)
    }

    /// The content file name of a file: `<id>.jsonl` for training data, `<id>.csv` for results.
    static func contentName(id: String, purpose: String) -> String {
        id + (purpose == "fine-tune-results" ? ".csv" : ".jsonl")
    }

    /// Starts an upload: a new temporary file in `<state_dir>/files/`.
    /// - Throws: ``StoreError`` when the file cannot be created.
    public func beginUpload() throws -> FileUpload {
        try FileUpload(dir: filesDir)
    }

    /// Makes an upload durable and visible: fsync, rename to its final name, fsync the directory, insert the row.
    /// On any failure the upload's bytes are removed and nothing is recorded.
    /// - Parameters:
    ///   - purpose: `fine-tune` or `fine-tune-results`.
    ///   - lineCount: non-blank lines of the content (the caller validated them).
    /// - Throws: ``StoreError/diskFull(_:)`` (ENOSPC or SQLITE_FULL), ``StoreError/database(_:)``.
    public func commitUpload(
        _ upload: FileUpload, purpose: String, filename: String, uid: UInt32?, lineCount: Int
    ) async throws -> StoredFile {
        let id = "file-" + ResponseRenderer.randomHex(24)
        let path = filesDir + "/" + Self.contentName(id: id, purpose: purpose)
        let sha: String
        do {
            sha = try upload.close()
            guard rename(upload.tempPath, path) == 0 else { throw Self.ioError(errno, "rename to \(path)") }
        } catch {
            upload.abort()
            throw Self.map(error)
        }
        do {
            try Self.fsyncDirectory(filesDir)
        } catch {
            unlink(path)
            throw Self.map(error)
        }
        let f = StoredFile(
            id: id, purpose: purpose, filename: filename, bytes: upload.bytes,
            createdAt: Int(Date().timeIntervalSince1970), status: "processed", statusDetails: nil,
            lineCount: lineCount, uid: uid, sha256: sha, contentPath: path)
        do {
            try await run(write: true) { db in
                try db.execute(
                    sql: """
                        INSERT INTO file (id, object, purpose, filename, bytes, created_at, status, status_details,
                          line_count, uid, sha256) VALUES (?, 'file', ?, ?, ?, ?, ?, ?, ?, ?, ?)
                        """,
                    arguments: [
                        f.id, f.purpose, f.filename, f.bytes, f.createdAt, f.status, f.statusDetails, f.lineCount,
                        f.uid.map { Int64($0) }, f.sha256,
                    ])
            }
        } catch {
            unlink(path)
            throw error
        }
        return f
    }

    /// Stores `data` as a new file (used for the result CSVs of jobs, purpose `fine-tune-results`). The content
    /// is not validated; `line_count` counts its non-blank lines.
    /// - Throws: ``StoreError/diskFull(_:)``, ``StoreError/database(_:)``.
    public func createFile(purpose: String, filename: String, data: [UInt8], uid: UInt32?) async throws -> StoredFile {
        let upload = try beginUpload()
        do {
            try upload.write(data)
        } catch {
            upload.abort()
            throw Self.map(error)
        }
        var lines = 0
        for line in data.split(separator: 10) where line.contains(where: { $0 != 32 && $0 != 9 && $0 != 13 }) {
            lines += 1
        }
        return try await commitUpload(upload, purpose: purpose, filename: filename, uid: uid, lineCount: lines)
    }

    /// One file, or nil when unknown.
    public func file(id: String) async throws -> StoredFile? {
        let dir = filesDir
        return try await run(write: false) { db in
            try Row.fetchOne(db, sql: "SELECT * FROM file WHERE id = ?", arguments: [id]).map { Self.storedFile($0, dir: dir) }
        }
    }

    /// A page of files.
    /// - Parameters:
    ///   - purpose: only this purpose.
    ///   - after: a file id; the page starts after it in `order`.
    ///   - limit: page size (1…10000).
    ///   - order: by creation; OpenAI's default is `desc`.
    ///   - uid: only files uploaded by this uid (non-admin callers).
    public func listFiles(
        purpose: String?, after: String?, limit: Int, order: FileListOrder = .desc, uid: UInt32? = nil
    ) async throws -> StorePage<StoredFile> {
        let dir = filesDir
        return try await run(write: false) { db in
            var conds: [String] = []
            var args: [(any DatabaseValueConvertible)?] = []
            if let purpose {
                conds.append("purpose = ?")
                args.append(purpose)
            }
            if let uid {
                conds.append("uid = ?")
                args.append(Int64(uid))
            }
            let asc = order == .asc
            if let after {
                conds.append(
                    "seq \(asc ? ">" : "<") coalesce((SELECT seq FROM file WHERE id = ?), \(asc ? "-1" : "9223372036854775807"))")
                args.append(after)
            }
            let whereSQL = conds.isEmpty ? "" : "WHERE " + conds.joined(separator: " AND ")
            args.append(limit + 1)
            let rows = try Row.fetchAll(
                db, sql: "SELECT * FROM file \(whereSQL) ORDER BY seq \(asc ? "ASC" : "DESC") LIMIT ?",
                arguments: StatementArguments(args))
            return StorePage(items: rows.prefix(limit).map { Self.storedFile($0, dir: dir) }, hasMore: rows.count > limit)
        }
    }

    /// Deletes a file: the row first, then its content. Returns false when unknown.
    /// - Throws: ``StoreError`` when the row cannot be deleted (then the content stays too).
    public func deleteFile(id: String) async throws -> Bool {
        let dir = filesDir
        let removed = try await run(write: true) { db -> StoredFile? in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM file WHERE id = ?", arguments: [id]) else { return nil }
            try db.execute(sql: "DELETE FROM file WHERE id = ?", arguments: [id])
            return Self.storedFile(row, dir: dir)
        }
        guard let removed else { return false }
        unlink(removed.contentPath)
        return true
    }

    /// Gives the caller a private copy of a file's content at `path` (a hard link, falling back to a copy across
    /// file systems), so that it stays readable if the file is deleted. Returns the file, or nil when unknown.
    /// - Throws: ``StoreError`` when neither link nor copy works (a full disk is ``StoreError/diskFull(_:)``).
    public func linkFileContent(id: String, to path: String) async throws -> StoredFile? {
        guard let f = try await file(id: id) else { return nil }
        if link(f.contentPath, path) == 0 { return f }
        let e = errno
        guard e == EXDEV || e == EPERM || e == EMLINK else { throw Self.ioError(e, "link \(f.contentPath) to \(path)") }
        do {
            _ = try AdapterStore.copySynced(from: f.contentPath, to: path, hasher: SHA256Hasher())
        } catch let e as AdapterStoreError {
            unlink(path)
            if case .diskFull(let m) = e { throw StoreError.diskFull(m) }
            throw StoreError.database("\(e)")
        }
        return f
    }

    /// Removes what a crash can leave in `<state_dir>/files/`: temporary uploads, and content files whose row was
    /// never inserted. Returns the names removed.
    @discardableResult
    static func removeOrphanFiles(pool: DatabasePool, dir: String) throws -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        let known = try pool.read { db in
            Set(
                try Row.fetchAll(db, sql: "SELECT id, purpose FROM file").map {
                    contentName(id: $0["id"], purpose: $0["purpose"])
                })
        }
        var removed: [String] = []
        for name in names where name.hasPrefix(".upload-") || (name.hasPrefix("file-") && !known.contains(name)) {
            if unlink(dir + "/" + name) == 0 { removed.append(name) }
        }
        if !removed.isEmpty { try? fsyncDirectory(dir) }
        return removed
    }

    static func fsyncDirectory(_ path: String) throws {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw ioError(errno, "open \(path)") }
        defer { close(fd) }
        if fsync(fd) != 0 { throw ioError(errno, "fsync \(path)") }
    }

    static func storedFile(_ row: Row, dir: String) -> StoredFile {
        let uid: Int64? = row["uid"]
        let id: String = row["id"]
        let purpose: String = row["purpose"]
        return StoredFile(
            id: id, purpose: purpose, filename: row["filename"], bytes: row["bytes"], createdAt: row["created_at"],
            status: row["status"], statusDetails: row["status_details"], lineCount: row["line_count"],
            uid: uid.map { UInt32(truncatingIfNeeded: $0) }, sha256: row["sha256"],
            contentPath: dir + "/" + contentName(id: id, purpose: purpose))
    }
}
