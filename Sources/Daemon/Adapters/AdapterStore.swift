// AdapterStore: the files of the adapter registry, under `<state_dir>/adapters/`. The index (which versions exist,
// which one is current per name, their lineage) lives in the daemon's SQLite store (LoradStore, migration
// "v3_adapters"); this type only keeps the files.
//
//   store/<name>/<version>/     that version's files: adapter.gguf, or adapter_config.json + adapter_model.safetensors
//   staging/<random>/           files being received or copied; promoted by rename, swept at startup
//   index.json.migrated         the JSON index of earlier releases, once its rows were copied into the store
//
// A publish is durable before it is answered: the files are written and fsynced in staging, the directory is renamed
// into store/ (both parents fsynced), then one SQLite transaction inserts the version and makes it current. A crash
// before the transaction leaves a version directory no row lists: start-up removes it. A full disk fails the
// publish with the old state intact.

import CCrypto
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Where a version came from: what it was trained from, by which job, on which data, and the evaluation gate's
/// numbers. Everything is optional: a version registered by hand has no lineage.
public struct AdapterLineage: Sendable, Equatable {
    /// The version the training continued from (fixed when the job was created), nil for a fresh adapter.
    public var parentVersion: Int?
    /// The fine-tuning job that produced it (`ftjob-…`).
    public var jobID: String?
    /// The data the job trained on (e.g. `{"feedback": {"since": …, "until": …}}` or file ids), as the job gives it.
    public var dataRange: JSONValue?
    /// The evaluation gate's numbers (held-out loss before/after, forgetting probe), as the job gives them.
    /// (`dataRange` and `gate` are stored as JSON text; object keys come back sorted.)
    public var gate: JSONValue?
    /// Free-form string pairs kept with the version.
    public var metadata: [String: String]

    /// A lineage; every field defaults to "unknown".
    public init(
        parentVersion: Int? = nil, jobID: String? = nil, dataRange: JSONValue? = nil, gate: JSONValue? = nil,
        metadata: [String: String] = [:]
    ) {
        self.parentVersion = parentVersion
        self.jobID = jobID
        self.dataRange = dataRange
        self.gate = gate
        self.metadata = metadata
    }
}

/// One adapter version as persisted in the store and listed by `GET /v1/adapters` (the current one) and
/// `GET /v1/adapters/{name}/versions` (all kept ones). Codable only to read the JSON index of earlier releases.
public struct AdapterRecord: Codable, Sendable, Equatable {
    /// Registry name: what requests put in `model`.
    public var name: String
    /// Version number, unique over the whole registry and increasing with each registration.
    public var version: Int
    public var format: AdapterFormat
    /// SHA-256 (hex) over the adapter's files, in file-name order.
    public var sha256: String
    /// Largest rank over the patched modules.
    public var rank: Int
    /// The adapter's alpha, when the format gives one.
    public var alpha: Float?
    /// Patched projections (`attn_q`, `ffn_down`, ...).
    public var targets: [String]
    /// Bytes the weights occupy in memory once loaded (f32 lora_A and lora_B).
    public var residentBytes: Int
    /// Bytes of the files on disk.
    public var fileBytes: Int
    /// Where it came from: the registered path, or `upload`.
    public var source: String
    /// Registration time, seconds since 1970.
    public var createdAt: Double
    /// Parent version, job, data range and gate numbers (not part of the legacy JSON index).
    public var lineage = AdapterLineage()

    enum CodingKeys: String, CodingKey {
        case name, version, format, sha256, rank, alpha, targets, source
        case residentBytes = "resident_bytes"
        case fileBytes = "file_bytes"
        case createdAt = "created_at"
    }
}

/// Why the store could not do what was asked. `diskFull` maps to HTTP 507.
public enum AdapterStoreError: Error, CustomStringConvertible, Equatable {
    case io(String)
    case diskFull(String)
    case corruptIndex(String)

    /// The store's failure as a registry store failure (SQLITE_FULL stays a full disk).
    static func from(_ e: StoreError) -> AdapterStoreError {
        if case .diskFull(let m) = e { return .diskFull(m) }
        return .io("adapter index (SQLite): \(e)")
    }

    public var description: String {
        switch self {
        case .io(let m): return m
        case .diskFull(let m): return "not enough disk space: \(m)"
        case .corruptIndex(let m): return "adapter index is unreadable: \(m)"
        }
    }

    static func from(errno e: Int32, _ what: String) -> AdapterStoreError {
        let msg = "\(what): \(String(cString: strerror(e)))"
        return e == ENOSPC || e == EDQUOT ? .diskFull(msg) : .io(msg)
    }
}

/// Files of the registry on disk. Not thread-safe: the registry serialises calls.
final class AdapterStore {
    let root: String
    var storeDir: String { root + "/store" }
    var stagingDir: String { root + "/staging" }
    /// The JSON index of earlier releases (read once, then renamed to `index.json.migrated`).
    var legacyIndexPath: String { root + "/index.json" }

    /// The legacy `index.json` layout.
    struct Index: Codable {
        var formatVersion: Int = 1
        var nextVersion: Int = 1
        var adapters: [AdapterRecord] = []
        enum CodingKeys: String, CodingKey {
            case formatVersion = "format_version"
            case nextVersion = "next_version"
            case adapters
        }
    }

    /// Creates the directories (mode 0750) and sweeps staging leftovers of an interrupted registration.
    /// - Throws: ``AdapterStoreError``.
    init(root: String) throws {
        self.root = root
        do {
            try FileManager.default.createDirectory(
                atPath: root, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o750])
        } catch {
            throw AdapterStoreError.io("cannot create \(root): \(error)")
        }
        for d in [root + "/store", root + "/staging"] {
            if mkdir(d, 0o750) != 0 && errno != EEXIST { throw AdapterStoreError.from(errno: errno, "mkdir \(d)") }
        }
        if let leftovers = try? FileManager.default.contentsOfDirectory(atPath: stagingDir) {
            for l in leftovers { try? FileManager.default.removeItem(atPath: stagingDir + "/" + l) }
        }
    }

    /// The legacy `index.json`, or nil when there is none (already migrated, or a new state directory).
    /// - Throws: ``AdapterStoreError/corruptIndex(_:)`` when it exists but does not parse.
    func legacyIndex() throws -> Index? {
        guard let data = FileManager.default.contents(atPath: legacyIndexPath) else { return nil }
        do {
            return try JSONDecoder().decode(Index.self, from: data)
        } catch {
            throw AdapterStoreError.corruptIndex("\(legacyIndexPath): \(error)")
        }
    }

    /// Renames `index.json` to `index.json.migrated` (durably), once its rows are in the store.
    func retireLegacyIndex() throws {
        let dest = legacyIndexPath + ".migrated"
        if rename(legacyIndexPath, dest) != 0 { throw AdapterStoreError.from(errno: errno, "rename \(legacyIndexPath)") }
        try Self.fsyncDirectory(root)
    }

    /// Removes version directories that `listed` ("name/version") does not contain: versions whose publish
    /// crashed between the files and the transaction, or whose rows a prune deleted before its files.
    /// Returns the removed "name/version" entries.
    @discardableResult
    func sweepOrphans(keeping listed: Set<String>) -> [String] {
        let fm = FileManager.default
        var removed: [String] = []
        for name in (try? fm.contentsOfDirectory(atPath: storeDir)) ?? [] {
            let dir = storeDir + "/" + name
            for v in (try? fm.contentsOfDirectory(atPath: dir)) ?? [] where !listed.contains("\(name)/\(v)") {
                try? fm.removeItem(atPath: dir + "/" + v)
                removed.append("\(name)/\(v)")
            }
            if ((try? fm.contentsOfDirectory(atPath: dir)) ?? []).isEmpty { try? fm.removeItem(atPath: dir) }
        }
        return removed
    }

    /// Directory holding one version's files.
    func versionDir(name: String, version: Int) -> String { "\(storeDir)/\(name)/\(version)" }

    /// A fresh staging directory.
    func makeStaging() throws -> String {
        let dir = stagingDir + "/" + UUID().uuidString
        if mkdir(dir, 0o750) != 0 { throw AdapterStoreError.from(errno: errno, "mkdir \(dir)") }
        return dir
    }

    /// Moves a staged directory to its version's place and fsyncs both parents.
    func promote(staging: String, name: String, version: Int) throws -> String {
        let parent = storeDir + "/" + name
        if mkdir(parent, 0o750) != 0 && errno != EEXIST { throw AdapterStoreError.from(errno: errno, "mkdir \(parent)") }
        let dest = versionDir(name: name, version: version)
        if rename(staging, dest) != 0 { throw AdapterStoreError.from(errno: errno, "rename to \(dest)") }
        try Self.fsyncDirectory(parent)
        try Self.fsyncDirectory(storeDir)
        return dest
    }

    /// Removes every version directory of `name` (best effort: the store no longer lists them).
    func removeAll(name: String) {
        try? FileManager.default.removeItem(atPath: storeDir + "/" + name)
    }

    /// Removes one version's files (best effort: the store no longer lists them).
    func removeVersion(name: String, version: Int) {
        let fm = FileManager.default
        try? fm.removeItem(atPath: versionDir(name: name, version: version))
        let parent = storeDir + "/" + name
        if ((try? fm.contentsOfDirectory(atPath: parent)) ?? []).isEmpty { try? fm.removeItem(atPath: parent) }
    }

    // MARK: - Durable file primitives

    /// Writes `data` to `path` through a temporary file: write, fsync, rename, fsync the directory.
    static func writeDurably(_ data: Data, to path: String) throws {
        let tmp = path + ".tmp-\(getpid())"
        try writeSynced(data, to: tmp)
        if rename(tmp, path) != 0 {
            let e = errno
            unlink(tmp)
            throw AdapterStoreError.from(errno: e, "rename \(tmp)")
        }
        try fsyncDirectory((path as NSString).deletingLastPathComponent)
    }

    /// Creates `path` (mode 0640) with `data` and fsyncs it (unless `sync` is false).
    static func writeSynced(_ data: Data, to path: String, sync: Bool = true) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw AdapterStoreError.from(errno: errno, "open \(path)") }
        defer { close(fd) }
        try data.withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = write(fd, raw.baseAddress! + off, raw.count - off)
                if n < 0 {
                    if errno == EINTR { continue }
                    let e = errno
                    unlink(path)
                    throw AdapterStoreError.from(errno: e, "write \(path)")
                }
                off += n
            }
        }
        if sync, fsync(fd) != 0 {
            let e = errno
            unlink(path)
            throw AdapterStoreError.from(errno: e, "fsync \(path)")
        }
    }

    /// fsyncs every file in `dir`, then `dir` itself.
    static func syncTree(_ dir: String) throws {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
            let path = dir + "/" + name
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw AdapterStoreError.from(errno: errno, "open \(path)") }
            defer { close(fd) }
            if fsync(fd) != 0 { throw AdapterStoreError.from(errno: errno, "fsync \(path)") }
        }
        try fsyncDirectory(dir)
    }

    /// Copies a file, fsyncs the copy (unless `sync` is false), feeds the bytes to `hasher`, and returns the size
    /// in bytes.
    static func copySynced(from src: String, to dst: String, hasher: SHA256Hasher, sync: Bool = true) throws -> Int {
        let inFD = open(src, O_RDONLY | O_CLOEXEC)
        guard inFD >= 0 else { throw AdapterStoreError.io("cannot open \(src): \(String(cString: strerror(errno)))") }
        defer { close(inFD) }
        let outFD = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard outFD >= 0 else { throw AdapterStoreError.from(errno: errno, "open \(dst)") }
        defer { close(outFD) }
        let chunk = 1 << 20
        let buf = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 64)
        defer { buf.deallocate() }
        var total = 0
        while true {
            let n = read(inFD, buf, chunk)
            if n < 0 {
                if errno == EINTR { continue }
                throw AdapterStoreError.io("reading \(src): \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }
            hasher.update(UnsafeRawBufferPointer(start: buf, count: n))
            var off = 0
            while off < n {
                let w = write(outFD, buf + off, n - off)
                if w < 0 {
                    if errno == EINTR { continue }
                    throw AdapterStoreError.from(errno: errno, "write \(dst)")
                }
                off += w
            }
            total += n
        }
        if sync, fsync(outFD) != 0 { throw AdapterStoreError.from(errno: errno, "fsync \(dst)") }
        return total
    }

    static func fsyncDirectory(_ path: String) throws {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw AdapterStoreError.from(errno: errno, "open \(path)") }
        defer { close(fd) }
        if fsync(fd) != 0 { throw AdapterStoreError.from(errno: errno, "fsync \(path)") }
    }
}

/// Streaming SHA-256 (FIPS 180-4) over OpenSSL's EVP interface.
final class SHA256Hasher {
    private let ctx: OpaquePointer?

    init() {
        ctx = EVP_MD_CTX_new()
        EVP_DigestInit_ex(ctx, EVP_sha256(), nil)
    }

    deinit { EVP_MD_CTX_free(ctx) }

    func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        EVP_DigestUpdate(ctx, base, bytes.count)
    }

    func update(_ data: Data) { data.withUnsafeBytes { update($0) } }

    /// The 32-byte digest.
    func finish() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var len: UInt32 = 0
        EVP_DigestFinal_ex(ctx, &out, &len)
        return out
    }

    static func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }
}
