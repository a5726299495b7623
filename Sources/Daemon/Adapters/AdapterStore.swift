// AdapterStore: the durable half of the adapter registry, under `<state_dir>/adapters/`.
//
//   index.json                  every registered adapter's current version (written atomically, fsynced)
//   store/<name>/<version>/     that version's files: adapter.gguf, or adapter_config.json + adapter_model.safetensors
//   staging/<random>/           files being received or copied; promoted by rename, swept at startup
//
// A registration is durable before it is answered: the files are written and fsynced in staging, the directory
// is renamed into store/, then index.json is replaced (write temp, fsync, rename, fsync directory). A crash at
// any point leaves either the old index (the new files are swept as orphans) or the new one with its files.
// A full disk fails the registration with the old state intact.

import CCrypto
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One registered adapter version as persisted in `index.json` and listed by `GET /v1/adapters`.
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

/// Files and index of the registry on disk. Not thread-safe: the registry serialises calls.
final class AdapterStore {
    let root: String
    var storeDir: String { root + "/store" }
    var stagingDir: String { root + "/staging" }
    var indexPath: String { root + "/index.json" }

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

    /// Reads `index.json` (an absent file is an empty registry) and removes version directories it does not list.
    func loadIndex() throws -> Index {
        var index = Index()
        if let data = FileManager.default.contents(atPath: indexPath) {
            do {
                index = try JSONDecoder().decode(Index.self, from: data)
            } catch {
                throw AdapterStoreError.corruptIndex("\(indexPath): \(error)")
            }
        }
        // Orphans: directories of versions that never made it into the index (crash between rename and index).
        let listed = Set(index.adapters.map { "\($0.name)/\($0.version)" })
        let fm = FileManager.default
        for name in (try? fm.contentsOfDirectory(atPath: storeDir)) ?? [] {
            let dir = storeDir + "/" + name
            for v in (try? fm.contentsOfDirectory(atPath: dir)) ?? [] where !listed.contains("\(name)/\(v)") {
                try? fm.removeItem(atPath: dir + "/" + v)
            }
            if ((try? fm.contentsOfDirectory(atPath: dir)) ?? []).isEmpty { try? fm.removeItem(atPath: dir) }
        }
        return index
    }

    /// Replaces `index.json` atomically and durably.
    func writeIndex(_ index: Index) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data: Data
        do { data = try enc.encode(index) } catch { throw AdapterStoreError.io("encoding the index: \(error)") }
        try Self.writeDurably(data, to: indexPath)
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

    /// Removes one version's files (best effort: the index no longer lists them).
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
