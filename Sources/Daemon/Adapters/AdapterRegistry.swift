// AdapterRegistry: named LoRA adapters, their versions, and the resident-weights cache.
//
// Names map to one current version each. A request resolves its adapter names once, when it is accepted, and
// holds the weights of those versions (an `AdapterMix`) until it ends: registering a new version under the same
// name, or deleting the name, never changes a running sequence, and the old weights are freed by reference
// counting when the last sequence using them finishes.
//
// Resident weights sit in an LRU cache bounded in bytes (`--adapter-cache-mb`). A miss loads the files from the
// state directory on a background queue while the request task waits (the engine's compute thread never loads
// anything); concurrent misses on one version share one load. Weights still held by running sequences are found
// again through weak references instead of being loaded twice.

import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Where the files of a registration come from.
public enum AdapterSource: Sendable {
    /// A `.gguf` file, or a directory with PEFT files (or exactly one `.gguf`), inside an import directory.
    case path(String)
    /// Uploaded files by name: `adapter_config.json` + `adapter_model.safetensors`, or one `*.gguf`.
    case files([String: Data])
}

/// Registry failures; each maps to one HTTP status in the API.
public enum AdapterRegistryError: Error, CustomStringConvertible, Equatable {
    /// 404
    case notFound(String)
    /// 400
    case invalidName(String)
    /// 400: the request's source is unusable (missing files, wrong layout).
    case badSource(String)
    /// 403: a path outside every import directory.
    case outsideImportDirs(path: String)
    /// 409: the name exists and replacing was not asked for.
    case alreadyExists(String)
    /// 400: the adapter failed validation against the base model.
    case invalidAdapter(name: String, reason: String)
    /// 500 / 507
    case store(AdapterStoreError)
    /// 503: the model is not loaded yet.
    case notReady

    public var description: String {
        switch self {
        case .notFound(let n): return "adapter '\(n)' is not registered"
        case .invalidName(let m): return m
        case .badSource(let m): return m
        case .outsideImportDirs(let p):
            return "path '\(p)' is not inside an adapter import directory (--adapter-import-dir)"
        case .alreadyExists(let n): return "adapter '\(n)' is already registered"
        case .invalidAdapter(let n, let r): return "adapter '\(n)' was rejected: \(r)"
        case .store(let e): return "\(e)"
        case .notReady: return "the model is still loading"
        }
    }
}

/// A registered adapter as listed by the API.
public struct AdapterInfo: Sendable, Equatable {
    /// The persisted record of the current version.
    public var record: AdapterRecord
    /// Whether its weights are in memory (cached, or held by a running sequence).
    public var resident: Bool
    /// Last time a request resolved it (this process), seconds since 1970.
    public var lastUsed: Double?
}

/// Counters for `/v1/status` and `/metrics`.
public struct AdapterStats: Sendable, Equatable {
    /// Registered names.
    public var registered = 0
    /// Versions in the LRU cache and their bytes.
    public var cached = 0
    /// Bytes of weights in the cache, and the cache's budget (`--adapter-cache-mb`), bytes.
    public var cachedBytes = 0
    public var cacheLimitBytes = 0
    /// Bytes of every adapter version still in memory (cache plus running sequences).
    public var liveBytes = 0
    /// Loads from disk (cache misses) and evictions since start.
    public var loads = 0
    public var evictions = 0

    /// All counts and byte sizes zero (an empty registry).
    public init() {}
}

/// The adapter registry of one daemon (see the file comment).
public final class AdapterRegistry: @unchecked Sendable {
    /// Import directories (resolved, without trailing slash) that `POST /v1/adapters` paths must be inside.
    public let importDirs: [String]
    /// Directory scanned at startup and on SIGHUP: each `*.gguf` file or PEFT subdirectory is registered under its
    /// name (the file stem or directory name) when new or changed.
    public let scanDir: String?
    private let store: AdapterStore
    private let logger: Logger
    private let loadQueue = DispatchQueue(label: "lorad.adapters.load", qos: .userInitiated, attributes: .concurrent)

    private let lock = NSLock()
    private let commitLock = NSLock()
    private var backend: (any InferenceBackend)?
    private var baseModelID: String
    private var records: [String: AdapterRecord] = [:]
    private var nextVersion = 1
    private var lastUsed: [String: Double] = [:]
    private var cacheLimit: Int
    private struct Cached {
        let weights: any AdapterWeights
        var tick: UInt64
    }
    private var cache: [Int: Cached] = [:]
    private var cachedBytes = 0
    private var tick: UInt64 = 0
    private final class WeakBox {
        weak var value: (any AdapterWeights)?
        let bytes: Int
        init(_ v: any AdapterWeights) {
            value = v
            bytes = v.residentBytes
        }
    }
    private var live: [Int: WeakBox] = [:]
    private var inflight: [Int: [CheckedContinuation<any AdapterWeights, any Error>]] = [:]
    private var loads = 0
    private var evictions = 0

    /// Opens (or creates) the registry under `<stateDir>/adapters`.
    /// - Parameters:
    ///   - stateDir: the daemon's state directory.
    ///   - baseModelID: the base model's id (an adapter may not take this name).
    ///   - importDirs: directories whose files may be registered by path.
    ///   - scanDir: optional directory auto-registered at startup and on SIGHUP.
    ///   - cacheBytes: resident-weights budget, bytes.
    /// - Throws: ``AdapterStoreError`` when the directory cannot be created or the index is unreadable.
    public init(
        stateDir: String, baseModelID: String, importDirs: [String], scanDir: String?, cacheBytes: Int, logger: Logger
    ) throws {
        store = try AdapterStore(root: stateDir + "/adapters")
        self.baseModelID = baseModelID
        self.importDirs = importDirs.map { Self.resolvedPath($0) ?? $0 }
        self.scanDir = scanDir.map { Self.resolvedPath($0) ?? $0 }
        cacheLimit = max(cacheBytes, 0)
        self.logger = logger
        let index = try store.loadIndex()
        nextVersion = max(index.nextVersion, (index.adapters.map(\.version).max() ?? 0) + 1)
        for r in index.adapters {
            let dir = store.versionDir(name: r.name, version: r.version)
            if FileManager.default.fileExists(atPath: dir) {
                records[r.name] = r
            } else {
                logger.error("adapter files are missing; dropping it from the registry", metadata: ["adapter": "\(r.name)", "dir": "\(dir)"])
            }
        }
    }

    /// Gives the registry the loaded model (adapters are validated against it).
    public func attach(backend: any InferenceBackend) {
        lock.withLock {
            self.backend = backend
            baseModelID = backend.modelID
        }
    }

    /// Changes the resident budget (SIGHUP); evicts down to it at once.
    public func setCacheLimit(bytes: Int) {
        lock.withLock {
            cacheLimit = max(bytes, 0)
            evictLocked(keep: nil)
        }
    }

    // MARK: - Queries

    /// Current counters (registered, cached, live bytes, loads, evictions).
    public var stats: AdapterStats {
        lock.withLock {
            var s = AdapterStats()
            s.registered = records.count
            s.cached = cache.count
            s.cachedBytes = cachedBytes
            s.cacheLimitBytes = cacheLimit
            pruneLiveLocked()
            s.liveBytes = live.values.reduce(0) { $0 + ($1.value == nil ? 0 : $1.bytes) }
            s.loads = loads
            s.evictions = evictions
            return s
        }
    }

    /// Every registered adapter, by name.
    public func list() -> [AdapterInfo] {
        lock.withLock { records.keys.sorted().map { infoLocked(records[$0]!) } }
    }

    /// One registered adapter, or nil.
    public func info(_ name: String) -> AdapterInfo? {
        lock.withLock { records[name].map { infoLocked($0) } }
    }

    /// Whether `name` is registered.
    public func contains(_ name: String) -> Bool { lock.withLock { records[name] != nil } }

    private func infoLocked(_ r: AdapterRecord) -> AdapterInfo {
        let resident = cache[r.version] != nil || live[r.version]?.value != nil
        return AdapterInfo(record: r, resident: resident, lastUsed: lastUsed[r.name])
    }

    // MARK: - Serving

    /// The current version of `name` and its weights, loading them if they are not resident.
    /// - Throws: ``AdapterRegistryError/notFound(_:)``, ``AdapterRegistryError/invalidAdapter(name:reason:)`` when
    ///   the stored files no longer load.
    public func resolve(_ name: String) async throws -> (record: AdapterRecord, weights: any AdapterWeights) {
        let (record, hit): (AdapterRecord, (any AdapterWeights)?) = try lock.withLock {
            guard let r = records[name] else { throw AdapterRegistryError.notFound(name) }
            lastUsed[name] = Date().timeIntervalSince1970
            return (r, hitLocked(r.version))
        }
        if let hit { return (record, hit) }
        let weights = try await load(record)
        return (record, weights)
    }

    private func hitLocked(_ version: Int) -> (any AdapterWeights)? {
        tick += 1
        if var c = cache[version] {
            c.tick = tick
            cache[version] = c
            return c.weights
        }
        if let w = live[version]?.value {
            insertLocked(version: version, weights: w)
            return w
        }
        return nil
    }

    private func insertLocked(version: Int, weights: any AdapterWeights) {
        tick += 1
        if cache[version] == nil { cachedBytes += weights.residentBytes }
        cache[version] = Cached(weights: weights, tick: tick)
        if live[version]?.value == nil { live[version] = WeakBox(weights) }
        evictLocked(keep: version)
    }

    /// Evicts least recently used versions until the cache fits (the version just used is kept even alone).
    private func evictLocked(keep: Int?) {
        while cachedBytes > cacheLimit, cache.count > (keep == nil ? 0 : 1) {
            guard let victim = cache.filter({ $0.key != keep }).min(by: { $0.value.tick < $1.value.tick })?.key
            else { break }
            cachedBytes -= cache[victim]!.weights.residentBytes
            cache[victim] = nil
            evictions += 1
        }
    }

    private func pruneLiveLocked() {
        live = live.filter { $0.value.value != nil }
    }

    /// Loads one stored version on the background queue; concurrent callers share the load.
    private func load(_ r: AdapterRecord) async throws -> any AdapterWeights {
        try await withCheckedThrowingContinuation { (cont: CheckedContinuation<any AdapterWeights, any Error>) in
            let start: Bool = lock.withLock {
                if let w = cache[r.version]?.weights ?? live[r.version]?.value {
                    cont.resume(returning: w)
                    return false
                }
                if inflight[r.version] != nil {
                    inflight[r.version]!.append(cont)
                    return false
                }
                inflight[r.version] = [cont]
                return true
            }
            guard start else { return }
            let dir = store.versionDir(name: r.name, version: r.version)
            let path = r.format == .gguf ? dir + "/adapter.gguf" : dir
            loadQueue.async { [self] in
                let result: Result<any AdapterWeights, any Error>
                if let backend = lock.withLock({ self.backend }) {
                    do {
                        result = .success(try backend.loadAdapter(at: path, format: r.format, name: r.name))
                    } catch {
                        result = .failure(AdapterRegistryError.invalidAdapter(name: r.name, reason: "\(error)"))
                    }
                } else {
                    result = .failure(AdapterRegistryError.notReady)
                }
                let waiters: [CheckedContinuation<any AdapterWeights, any Error>] = lock.withLock {
                    let w = inflight.removeValue(forKey: r.version) ?? []
                    if case .success(let weights) = result {
                        loads += 1
                        // Keep it only if this version is still the registered one.
                        if records[r.name]?.version == r.version { insertLocked(version: r.version, weights: weights) }
                        live[r.version] = WeakBox(weights)
                    }
                    return w
                }
                for c in waiters { c.resume(with: result) }
            }
        }
    }

    // MARK: - Registration

    /// Registers `source` under `name`: copies the files into the state directory, validates them against the
    /// base model, and makes the new version current (atomically replacing an existing one when `replace`).
    /// Returns the new record and the version it replaced. Durable before it returns.
    /// - Throws: ``AdapterRegistryError``.
    @discardableResult
    public func register(name: String, source: AdapterSource, replace: Bool = true) async throws
        -> (record: AdapterRecord, replaced: Int?)
    {
        try validate(name: name)
        guard let backend = lock.withLock({ self.backend }) else { throw AdapterRegistryError.notReady }
        if !replace, contains(name) { throw AdapterRegistryError.alreadyExists(name) }
        let staging: String
        do { staging = try store.makeStaging() } catch let e as AdapterStoreError { throw AdapterRegistryError.store(e) }
        var promoted = false
        defer { if !promoted { try? FileManager.default.removeItem(atPath: staging) } }

        // 1. Files into staging, hashed as they are written.
        let staged = try await runInBackground { try self.stage(source, into: staging) }
        // 2. Validate against the base model from exactly the bytes that will be stored, while the staged files
        //    are flushed to disk on another thread (both must finish before the commit).
        let path = staged.format == .gguf ? staging + "/adapter.gguf" : staging
        async let durable: Void = runInBackground {
            do { try AdapterStore.syncTree(staging) } catch let e as AdapterStoreError { throw AdapterRegistryError.store(e) }
        }
        let weights: any AdapterWeights
        do {
            weights = try await runInBackground { try backend.loadAdapter(at: path, format: staged.format, name: name) }
        } catch {
            try? await durable
            throw AdapterRegistryError.invalidAdapter(name: name, reason: "\(error)")
        }
        try await durable
        // 3. Commit: version dir, then index; the in-memory switch happens only after both are durable.
        let (record, previous) = try commit(
            name: name, staging: staging, staged: staged, weights: weights, replace: replace, promoted: &promoted)
        if let p = previous { store.removeVersion(name: p.name, version: p.version) }
        logger.notice(
            "adapter registered",
            metadata: [
                "adapter": "\(name)", "version": "\(record.version)", "replaced": "\(previous.map { String($0.version) } ?? "none")",
                "format": "\(staged.format.rawValue)", "rank": "\(record.rank)", "sha256": "\(record.sha256)",
            ])
        return (record, previous?.version)
    }

    private func commit(
        name: String, staging: String, staged: Staged, weights: any AdapterWeights, replace: Bool, promoted: inout Bool
    ) throws -> (AdapterRecord, AdapterRecord?) {
        commitLock.lock()
        defer { commitLock.unlock() }
        let (version, previous): (Int, AdapterRecord?) = lock.withLock { (nextVersion, records[name]) }
        if !replace, previous != nil { throw AdapterRegistryError.alreadyExists(name) }
        let record = AdapterRecord(
            name: name, version: version, format: staged.format, sha256: staged.sha256, rank: weights.adapterRank,
            alpha: weights.adapterAlpha, targets: weights.adapterTargets, residentBytes: weights.residentBytes,
            fileBytes: staged.bytes, source: staged.source, createdAt: Date().timeIntervalSince1970)
        do {
            _ = try store.promote(staging: staging, name: name, version: version)
            promoted = true
            var index = AdapterStore.Index()
            index.nextVersion = version + 1
            index.adapters = lock.withLock { Array(records.values) }.filter { $0.name != name } + [record]
            index.adapters.sort { $0.name < $1.name }
            do {
                try store.writeIndex(index)
            } catch {
                store.removeVersion(name: name, version: version)
                throw error
            }
        } catch let e as AdapterStoreError {
            throw AdapterRegistryError.store(e)
        }
        lock.withLock {
            nextVersion = version + 1
            records[name] = record
            if let p = previous, let c = cache.removeValue(forKey: p.version) {
                cachedBytes -= c.weights.residentBytes
            }
            insertLocked(version: version, weights: weights)
        }
        return (record, previous)
    }

    /// Unregisters `name`. Running sequences keep the weights they hold; new requests get 404.
    /// - Throws: ``AdapterRegistryError/notFound(_:)``, ``AdapterRegistryError/store(_:)``.
    @discardableResult
    public func remove(name: String) throws -> AdapterRecord {
        commitLock.lock()
        defer { commitLock.unlock() }
        let (rec, rest, next): (AdapterRecord?, [AdapterRecord], Int) = lock.withLock {
            (records[name], records.values.filter { $0.name != name }, nextVersion)
        }
        guard let rec else { throw AdapterRegistryError.notFound(name) }
        var index = AdapterStore.Index()
        index.nextVersion = next
        index.adapters = rest.sorted { $0.name < $1.name }
        do { try store.writeIndex(index) } catch let e as AdapterStoreError { throw AdapterRegistryError.store(e) }
        lock.withLock {
            records[name] = nil
            lastUsed[name] = nil
            if let c = cache.removeValue(forKey: rec.version) { cachedBytes -= c.weights.residentBytes }
        }
        store.removeVersion(name: rec.name, version: rec.version)
        logger.notice("adapter removed", metadata: ["adapter": "\(name)", "version": "\(rec.version)"])
        return rec
    }

    /// Registers every new or changed adapter in ``scanDir`` (a `*.gguf` file or a PEFT directory per name).
    /// Failures are logged and skipped. Returns the names registered.
    @discardableResult
    public func rescan() async -> [String] {
        guard let dir = scanDir, let entries = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
        var done: [String] = []
        for entry in entries.sorted() where !entry.hasPrefix(".") {
            let path = dir + "/" + entry
            let name = entry.hasSuffix(".gguf") ? String(entry.dropLast(5)) : entry
            guard (try? validate(name: name)) != nil else {
                logger.warning("skipping adapter with an invalid name", metadata: ["path": "\(path)"])
                continue
            }
            guard let (format, files) = try? Self.layout(of: path) else { continue }
            guard let hash = try? Self.hash(files: files.map { path + ($0.isEmpty ? "" : "/" + $0) }) else { continue }
            if let r = lock.withLock({ records[name] }), r.sha256 == hash, r.format == format { continue }
            do {
                try await register(name: name, source: .path(path))
                done.append(name)
            } catch {
                logger.error("adapter scan: registration failed", metadata: ["path": "\(path)", "error": "\(error)"])
            }
        }
        return done
    }

    // MARK: - Helpers

    private func validate(name: String) throws {
        let ok =
            !name.isEmpty && name.utf8.count <= 128 && name != "." && name != ".."
            && name.unicodeScalars.allSatisfy {
                ($0.value < 128) && (CharacterSet.alphanumerics.contains($0) || "._-:".unicodeScalars.contains($0))
            }
        guard ok else {
            throw AdapterRegistryError.invalidName(
                "adapter name '\(name)' is invalid: use 1 to 128 ASCII letters, digits, '.', '_', '-' or ':'")
        }
        let base = lock.withLock { baseModelID }
        if name == base {
            throw AdapterRegistryError.invalidName("adapter name '\(name)' is the base model's id")
        }
    }

    private struct Staged {
        let format: AdapterFormat
        let sha256: String
        let bytes: Int
        let source: String
    }

    /// The files of an adapter at `path`: (format, file names inside the directory, or [""] for a file).
    static func layout(of path: String) throws -> (AdapterFormat, [String]) {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw AdapterRegistryError.badSource("'\(path)' does not exist")
        }
        if !isDir.boolValue {
            guard path.hasSuffix(".gguf") else {
                throw AdapterRegistryError.badSource("'\(path)' is neither a .gguf file nor a PEFT adapter directory")
            }
            return (.gguf, [""])
        }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        if names.contains("adapter_config.json") {
            guard names.contains("adapter_model.safetensors") else {
                throw AdapterRegistryError.badSource(
                    "'\(path)' has adapter_config.json but no adapter_model.safetensors (adapter_model.bin is not supported)")
            }
            return (.peft, ["adapter_config.json", "adapter_model.safetensors"])
        }
        let ggufs = names.filter { $0.hasSuffix(".gguf") }
        guard ggufs.count == 1 else {
            throw AdapterRegistryError.badSource(
                "'\(path)' holds neither adapter_config.json + adapter_model.safetensors nor exactly one .gguf file")
        }
        return (.gguf, ggufs)
    }

    static func hash(files: [String]) throws -> String {
        let h = SHA256Hasher()
        for f in files {
            guard let handle = FileHandle(forReadingAtPath: f) else { throw AdapterRegistryError.badSource("cannot read \(f)") }
            defer { try? handle.close() }
            while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty { h.update(chunk) }
        }
        return SHA256Hasher.hex(h.finish())
    }

    private func stage(_ source: AdapterSource, into staging: String) throws -> Staged {
        var total = 0
        switch source {
        case .path(let raw):
            guard let real = Self.resolvedPath(raw) else { throw AdapterRegistryError.badSource("'\(raw)' does not exist") }
            let allowed = importDirs + (scanDir.map { [$0] } ?? [])
            func inside(_ p: String) -> Bool { allowed.contains { p.hasPrefix($0 + "/") } }
            guard inside(real) else { throw AdapterRegistryError.outsideImportDirs(path: raw) }
            let (format, files) = try Self.layout(of: real)
            let hasher = SHA256Hasher()  // over the files in order, as `hash(files:)` computes it
            for f in files {
                let src = f.isEmpty ? real : real + "/" + f
                // Each file must itself resolve inside an import directory (no symlink escapes).
                guard let realFile = Self.resolvedPath(src), inside(realFile) else {
                    throw AdapterRegistryError.outsideImportDirs(path: src)
                }
                let dst = staging + "/" + (format == .gguf ? "adapter.gguf" : f)
                do {
                    total += try AdapterStore.copySynced(from: realFile, to: dst, hasher: hasher, sync: false)
                } catch let e as AdapterStoreError {
                    throw AdapterRegistryError.store(e)
                }
            }
            return Staged(format: format, sha256: SHA256Hasher.hex(hasher.finish()), bytes: total, source: raw)
        case .files(let files):
            let format: AdapterFormat
            var plan: [(src: String, dst: String)] = []
            if files.keys.contains("adapter_config.json") || files.keys.contains("adapter_model.safetensors") {
                guard files["adapter_config.json"] != nil, files["adapter_model.safetensors"] != nil, files.count == 2
                else {
                    throw AdapterRegistryError.badSource(
                        "a PEFT upload needs exactly the files adapter_config.json and adapter_model.safetensors")
                }
                format = .peft
                plan = [("adapter_config.json", "adapter_config.json"), ("adapter_model.safetensors", "adapter_model.safetensors")]
            } else {
                guard files.count == 1, let only = files.keys.first, only.hasSuffix(".gguf") else {
                    throw AdapterRegistryError.badSource(
                        "upload either one .gguf file or adapter_config.json + adapter_model.safetensors")
                }
                format = .gguf
                plan = [(only, "adapter.gguf")]
            }
            for (src, dst) in plan {
                let data = files[src]!
                do { try AdapterStore.writeSynced(data, to: staging + "/" + dst, sync: false) } catch let e as AdapterStoreError {
                    throw AdapterRegistryError.store(e)
                }
                total += data.count
            }
            let h = SHA256Hasher()
            for (src, _) in plan { h.update(files[src]!) }
            return Staged(format: format, sha256: SHA256Hasher.hex(h.finish()), bytes: total, source: "upload")
        }
    }

    private func runInBackground<T>(_ body: @escaping () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (cont: CheckedContinuation<T, any Error>) in
            loadQueue.async { cont.resume(with: Result { try body() }) }
        }
    }

    /// `realpath(3)`: absolute, symlinks resolved; nil when the path does not exist.
    static func resolvedPath(_ p: String) -> String? {
        guard let r = realpath(p, nil) else { return nil }
        defer { free(r) }
        return String(cString: r)
    }
}
