// AdapterRegistry: named LoRA adapters, their versions, and the resident-weights cache.
//
// Each name has one current version and keeps earlier ones: the newest `keepVersions` (`--adapter-keep-versions`),
// the current one (a rollback may make an old version current), any version a caller pinned (a fine-tuning job's
// parent), and any version a running sequence still holds. Older ones are pruned, rows first and files after, once a
// publish, rollback or unpin has committed. The index lives in the daemon's SQLite store (AdapterVersionStore.swift),
// the files under `<state_dir>/adapters/store/<name>/<version>/` (AdapterStore.swift).
//
// A publish: files durable in the version directory -> one transaction (insert the version, make it current) -> the
// in-memory switch. Publishing the same files again is harmless: a repeat of a job's publish (same job id and
// sha256) returns the version it made, and a manual registration of the current version's bytes changes nothing.
// A compare-and-swap (`expectedParent`) lets a job publish only if the version it continued is still current.
//
// A request resolves its adapter names once, when it is accepted, and holds the weights of those versions (an
// `AdapterMix`) until it ends: publishing, rolling back or deleting never changes a running sequence, and the old
// weights are freed by reference counting when the last sequence using them finishes.
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
    /// A directory the daemon itself wrote (a fine-tuning job's export), in the same layouts as `path`. It is not
    /// checked against the import directories, so it must never come from a client's request.
    case directory(String)
}

/// Registry failures; each maps to one HTTP status in the API.
public enum AdapterRegistryError: Error, CustomStringConvertible, Equatable {
    /// 404
    case notFound(String)
    /// 404: the name exists but has no such version (never existed, or pruned).
    case versionNotFound(name: String, version: Int)
    /// 400
    case invalidName(String)
    /// 400: the request's source is unusable (missing files, wrong layout).
    case badSource(String)
    /// 403: a path outside every import directory.
    case outsideImportDirs(path: String)
    /// 409: the name exists and replacing was not asked for.
    case alreadyExists(String)
    /// 409: a compare-and-swap publish found another current version (nil: the name is not registered) than the
    /// expected parent.
    case parentChanged(current: Int?)
    /// 400: the adapter failed validation against the base model.
    case invalidAdapter(name: String, reason: String)
    /// 500 / 507
    case store(AdapterStoreError)
    /// 503: the model is not loaded yet.
    case notReady

    public var description: String {
        switch self {
        case .notFound(let n): return "adapter '\(n)' is not registered"
        case .versionNotFound(let n, let v): return "adapter '\(n)' has no version \(v)"
        case .invalidName(let m): return m
        case .badSource(let m): return m
        case .outsideImportDirs(let p):
            return "path '\(p)' is not inside an adapter import directory (--adapter-import-dir)"
        case .alreadyExists(let n): return "adapter '\(n)' is already registered"
        case .parentChanged(let c):
            return "the adapter's current version changed (now \(c.map { "version \($0)" } ?? "unregistered"))"
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
    /// Versions of this name kept on disk (the current one included).
    public var versionCount = 1
}

/// One kept version of an adapter, as listed by `GET /v1/adapters/{name}/versions`.
public struct AdapterVersionInfo: Sendable, Equatable {
    public var record: AdapterRecord
    /// Whether it is the name's current version.
    public var current: Bool
    /// Whether a caller pinned it (see ``AdapterRegistry/pin(name:version:holder:)``).
    public var pinned: Bool
    /// Whether its weights are in memory.
    public var resident: Bool
}

/// What a publish did.
public struct AdapterPublishResult: Sendable, Equatable {
    /// The version now current (the new one, or the existing one when `unchanged`).
    public var record: AdapterRecord
    /// The version that was current before (nil: the name was new, or nothing changed).
    public var replaced: Int?
    /// True when an identical version already existed (a repeated publish): nothing was written.
    public var unchanged: Bool
}

/// A rollback, as handed to ``AdapterRegistry/onRollback``.
public struct AdapterRollback: Sendable, Equatable {
    public var name: String
    /// The version that was current before.
    public var fromVersion: Int
    /// The version made current.
    public var toVersion: Int
    /// Seconds since 1970.
    public var at: Double
}

/// Counters for `/v1/status` and `/metrics`.
public struct AdapterStats: Sendable, Equatable {
    /// Registered names.
    public var registered = 0
    /// Kept versions over all names.
    public var versions = 0
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
    /// Default of `--adapter-keep-versions`.
    public static let defaultKeepVersions = 10
    /// Largest number of history events `history(name:limit:)` returns.
    public static let maxHistory = 1000
    private let fileStore: AdapterStore
    private let db: LoradStore
    private let logger: Logger
    private let loadQueue = DispatchQueue(label: "lorad.adapters.load", qos: .userInitiated, attributes: .concurrent)

    private let lock = NSLock()
    /// Serialises every change of the index (publish commits, rollback, delete, pin, prune).
    private let commitLock = NSLock()
    private var backend: (any InferenceBackend)?
    private var baseModelID: String
    /// name -> current version's record.
    private var records: [String: AdapterRecord] = [:]
    /// name -> version -> record, every kept version.
    private var versions: [String: [Int: AdapterRecord]] = [:]
    /// version -> pin count over all holders.
    private var pins: [Int: Int] = [:]
    private var keepVersions: Int
    private var rollbackHandler: (@Sendable (AdapterRollback) -> Void)?
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

    /// Opens (or creates) the registry: files under `<stateDir>/adapters`, index in the daemon's store. On the first
    /// start over a state directory of an earlier release, the JSON index is copied into the store and renamed
    /// `index.json.migrated`. Version directories no row lists are removed, rows whose files are missing are
    /// dropped (a name then falls back to its newest remaining version), and every name is pruned to the window.
    /// - Parameters:
    ///   - stateDir: the daemon's state directory.
    ///   - baseModelID: the base model's id (an adapter may not take this name).
    ///   - importDirs: directories whose files may be registered by path.
    ///   - scanDir: optional directory auto-registered at startup and on SIGHUP.
    ///   - cacheBytes: resident-weights budget, bytes.
    ///   - keepVersions: versions kept per name besides current, pinned and held ones (at least 1).
    ///   - store: the daemon's store; nil opens `<stateDir>/lorad.sqlite` for the registry alone.
    /// - Throws: ``AdapterStoreError`` when a directory cannot be created, the store cannot be opened, or the legacy
    ///   index is unreadable.
    public init(
        stateDir: String, baseModelID: String, importDirs: [String], scanDir: String?, cacheBytes: Int,
        keepVersions: Int = AdapterRegistry.defaultKeepVersions, store: LoradStore? = nil, logger: Logger
    ) throws {
        fileStore = try AdapterStore(root: stateDir + "/adapters")
        do { db = try store ?? LoradStore(stateDir: stateDir) } catch let e as StoreError { throw AdapterStoreError.from(e) }
        self.baseModelID = baseModelID
        self.importDirs = importDirs.map { Self.resolvedPath($0) ?? $0 }
        self.scanDir = scanDir.map { Self.resolvedPath($0) ?? $0 }
        cacheLimit = max(cacheBytes, 0)
        self.keepVersions = max(keepVersions, 1)
        self.logger = logger
        do {
            try migrateLegacyIndex()
            var state = try db.adapterIndexState()
            let missing = state.versions.filter {
                !FileManager.default.fileExists(atPath: fileStore.versionDir(name: $0.name, version: $0.version))
            }
            if !missing.isEmpty {
                for r in missing {
                    logger.error(
                        "adapter files are missing; dropping the version",
                        metadata: ["adapter": "\(r.name)", "version": "\(r.version)"])
                }
                try db.deleteAdapterVersions(missing.map(\.version))
                state = try db.adapterIndexState()
            }
            let swept = fileStore.sweepOrphans(keeping: Set(state.versions.map { "\($0.name)/\($0.version)" }))
            if !swept.isEmpty {
                logger.notice("removed adapter files no version lists (an interrupted publish)", metadata: ["dirs": "\(swept)"])
            }
            for r in state.versions { versions[r.name, default: [:]][r.version] = r }
            for (name, v) in state.current { records[name] = versions[name]?[v] }
            pins = state.pins
            nextVersion = max(state.nextVersion, (state.versions.map(\.version).max() ?? 0) + 1)
        } catch let e as StoreError {
            throw AdapterStoreError.from(e)
        }
        // A crash between a publish's transaction and its prune leaves one version too many: prune now (nothing
        // holds weights yet; pins are respected).
        setKeepVersions(self.keepVersions)
    }

    /// Copies a legacy `index.json` into the store (idempotent) and renames it.
    private func migrateLegacyIndex() throws {
        guard let legacy = try fileStore.legacyIndex() else { return }
        let present = legacy.adapters.filter {
            FileManager.default.fileExists(atPath: fileStore.versionDir(name: $0.name, version: $0.version))
        }
        try db.importAdapterIndex(present, nextVersion: legacy.nextVersion)
        try fileStore.retireLegacyIndex()
        logger.notice(
            "adapter index migrated into the store",
            metadata: ["adapters": "\(present.count)", "dropped": "\(legacy.adapters.count - present.count)"])
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
            s.versions = versions.values.reduce(0) { $0 + $1.count }
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
        return AdapterInfo(record: r, resident: resident, lastUsed: lastUsed[r.name], versionCount: versions[r.name]?.count ?? 1)
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
            let dir = fileStore.versionDir(name: r.name, version: r.version)
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

    // MARK: - Publishing

    /// Publishes `source` as a new version of `name`: copies the files into the state directory, validates them
    /// against the base model, and makes the new version current, atomically for new requests (running ones keep
    /// theirs). Durable before it returns; earlier versions past the keep window are pruned afterwards.
    ///
    /// Repeating a publish is harmless: when `lineage.jobID` is set and `name` already has a version from that job
    /// with the same files (sha256), that version is returned with `unchanged`; without a job id, files equal to
    /// the current version's also return it unchanged.
    /// - Parameters:
    ///   - name: the adapter name (created when new).
    ///   - source: where the files come from.
    ///   - lineage: parent version, job id, data range and gate numbers to record with the version.
    ///   - expectedParent: compare and swap: nil = no check; `.some(nil)` = `name` must not exist yet;
    ///     `.some(v)` = the current version must be `v`.
    /// - Throws: ``AdapterRegistryError``: `parentChanged(current:)` when the check fails, `invalidAdapter`,
    ///   `badSource`, `outsideImportDirs`, `store` (`diskFull` = HTTP 507), `notReady`.
    @discardableResult
    public func publish(
        name: String, source: AdapterSource, lineage: AdapterLineage = AdapterLineage(), expectedParent: Int?? = nil
    ) async throws -> AdapterPublishResult {
        try await publish(name: name, source: source, lineage: lineage, expectedParent: expectedParent, refuseExisting: false)
    }

    /// Registers `source` under `name` (``publish(name:source:lineage:expectedParent:)`` without lineage or check),
    /// refusing an existing name unless `replace`. Returns the current record and the version it replaced.
    /// - Throws: ``AdapterRegistryError`` (`alreadyExists` when `replace` is false and the name exists).
    @discardableResult
    public func register(name: String, source: AdapterSource, replace: Bool = true) async throws
        -> (record: AdapterRecord, replaced: Int?)
    {
        let r = try await publish(name: name, source: source, lineage: AdapterLineage(), expectedParent: nil, refuseExisting: !replace)
        return (r.record, r.replaced)
    }

    /// ``publish(name:source:lineage:expectedParent:)``; `refuseExisting` fails with `alreadyExists` when the name
    /// exists (`register(replace: false)`, vLLM's load without `load_inplace`).
    func publish(
        name: String, source: AdapterSource, lineage: AdapterLineage, expectedParent: Int??, refuseExisting: Bool
    ) async throws -> AdapterPublishResult {
        try validate(name: name)
        guard let backend = lock.withLock({ self.backend }) else { throw AdapterRegistryError.notReady }
        let current = lock.withLock { records[name]?.version }
        if refuseExisting, current != nil { throw AdapterRegistryError.alreadyExists(name) }
        // Fail early on a lost compare-and-swap, unless this may be the repeat of a job's publish that succeeded.
        if lineage.jobID == nil, let expected = expectedParent, expected != current {
            throw AdapterRegistryError.parentChanged(current: current)
        }
        let staging: String
        do { staging = try fileStore.makeStaging() } catch let e as AdapterStoreError { throw AdapterRegistryError.store(e) }
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
        // 3. Commit: version dir, then the transaction; the in-memory switch happens only after both are durable.
        let result = try await runInBackground {
            try self.commit(
                name: name, staging: staging, staged: staged, weights: weights, lineage: lineage,
                expectedParent: expectedParent, refuseExisting: refuseExisting, promoted: &promoted)
        }
        if result.unchanged {
            logger.info("adapter publish repeated; the version exists", metadata: ["adapter": "\(name)", "version": "\(result.record.version)"])
        } else {
            logger.notice(
                "adapter published",
                metadata: [
                    "adapter": "\(name)", "version": "\(result.record.version)",
                    "replaced": "\(result.replaced.map { String($0) } ?? "none")", "format": "\(staged.format.rawValue)",
                    "rank": "\(result.record.rank)", "sha256": "\(result.record.sha256)",
                    "parent": "\(lineage.parentVersion.map { String($0) } ?? "none")", "job": "\(lineage.jobID ?? "none")",
                ])
        }
        return result
    }

    private func commit(
        name: String, staging: String, staged: Staged, weights: any AdapterWeights, lineage: AdapterLineage,
        expectedParent: Int??, refuseExisting: Bool, promoted: inout Bool
    ) throws -> AdapterPublishResult {
        commitLock.lock()
        defer { commitLock.unlock() }
        let (version, previous, kept): (Int, AdapterRecord?, [Int: AdapterRecord]) = lock.withLock {
            (nextVersion, records[name], versions[name] ?? [:])
        }
        // A repeat of a job's publish (e.g. after a crash before the job recorded it): the version exists.
        if let job = lineage.jobID,
            let same = kept.values.first(where: { $0.lineage.jobID == job && $0.sha256 == staged.sha256 && $0.format == staged.format })
        {
            return AdapterPublishResult(record: same, replaced: nil, unchanged: true)
        }
        if refuseExisting, previous != nil { throw AdapterRegistryError.alreadyExists(name) }
        if let expected = expectedParent, expected != previous?.version {
            throw AdapterRegistryError.parentChanged(current: previous?.version)
        }
        if lineage.jobID == nil, let p = previous, p.sha256 == staged.sha256, p.format == staged.format {
            return AdapterPublishResult(record: p, replaced: nil, unchanged: true)
        }
        // JSON as the store gives it back (object keys sorted), so the record is the same before and after a restart.
        var stored = lineage
        stored.dataRange = lineage.dataRange.map { JSONValue.parse($0.serialized) }
        stored.gate = lineage.gate.map { JSONValue.parse($0.serialized) }
        let record = AdapterRecord(
            name: name, version: version, format: staged.format, sha256: staged.sha256, rank: weights.adapterRank,
            alpha: weights.adapterAlpha, targets: weights.adapterTargets, residentBytes: weights.residentBytes,
            fileBytes: staged.bytes, source: staged.source, createdAt: Date().timeIntervalSince1970, lineage: stored)
        // The number is spent even if the commit fails below: numbers are never reused.
        lock.withLock { nextVersion = version + 1 }
        do {
            _ = try fileStore.promote(staging: staging, name: name, version: version)
            promoted = true
            do {
                try db.commitAdapterVersion(record, previous: previous?.version)
            } catch let e as StoreError {
                fileStore.removeVersion(name: name, version: version)
                throw AdapterStoreError.from(e)
            }
        } catch let e as AdapterStoreError {
            throw AdapterRegistryError.store(e)
        }
        lock.withLock {
            records[name] = record
            versions[name, default: [:]][version] = record
            // The replaced version stays on disk; only the cache lets go of it (a holder keeps its weights).
            if let p = previous, let c = cache.removeValue(forKey: p.version) {
                cachedBytes -= c.weights.residentBytes
            }
            insertLocked(version: version, weights: weights)
        }
        pruneCommitted(name: name)
        return AdapterPublishResult(record: record, replaced: previous?.version, unchanged: false)
    }

    /// Removes the versions of `name` outside the keep window that nobody pins or holds: rows first (one
    /// transaction), then files (a crash in between leaves directories that start-up sweeps). Caller holds
    /// `commitLock`. A failure is logged; the next prune tries again.
    private func pruneCommitted(name: String) {
        let victims: [Int] = lock.withLock {
            guard let kept = versions[name], let current = records[name]?.version else { return [] }
            let newestFirst = kept.keys.sorted(by: >)
            let window = Set(newestFirst.prefix(keepVersions)).union([current])
            var out: [Int] = []
            for v in newestFirst where !window.contains(v) && (pins[v] ?? 0) == 0 && inflight[v] == nil {
                // Let the cache go first: whatever still holds the weights then is a running sequence.
                if let c = cache.removeValue(forKey: v) { cachedBytes -= c.weights.residentBytes }
                if live[v]?.value != nil { continue }
                out.append(v)
            }
            return out
        }
        guard !victims.isEmpty else { return }
        do {
            try db.deleteAdapterVersions(victims)
        } catch {
            logger.error("pruning adapter versions failed", metadata: ["adapter": "\(name)", "error": "\(error)"])
            return
        }
        lock.withLock {
            for v in victims {
                versions[name]?[v] = nil
                live[v] = nil
            }
        }
        for v in victims { fileStore.removeVersion(name: name, version: v) }
        logger.info("pruned adapter versions", metadata: ["adapter": "\(name)", "versions": "\(victims.sorted())"])
    }

    /// Changes how many versions are kept per name (SIGHUP); prunes every name to it at once.
    public func setKeepVersions(_ n: Int) {
        commitLock.lock()
        defer { commitLock.unlock() }
        let names: [String] = lock.withLock {
            keepVersions = max(n, 1)
            return Array(records.keys)
        }
        for name in names { pruneCommitted(name: name) }
    }

    /// Makes an earlier kept version of `name` current again: one transaction (recorded in the history), then the
    /// in-memory switch, so new requests get it and running streams finish on theirs. Calls ``onRollback``.
    /// Rolling back to the current version is allowed (recorded, hook called).
    /// - Returns: the rollback (from and to versions).
    /// - Throws: ``AdapterRegistryError/notFound(_:)``, ``AdapterRegistryError/versionNotFound(name:version:)``,
    ///   ``AdapterRegistryError/store(_:)``.
    @discardableResult
    public func rollback(name: String, to version: Int) throws -> AdapterRollback {
        let event: AdapterRollback
        do {
            commitLock.lock()
            defer { commitLock.unlock() }
            let (current, target): (AdapterRecord?, AdapterRecord?) = lock.withLock { (records[name], versions[name]?[version]) }
            guard let current else { throw AdapterRegistryError.notFound(name) }
            guard let target else { throw AdapterRegistryError.versionNotFound(name: name, version: version) }
            let now = Date().timeIntervalSince1970
            do {
                try db.setCurrentAdapterVersion(name: name, version: version, from: current.version, kind: "rollback", at: now)
            } catch let e as StoreError {
                throw AdapterRegistryError.store(AdapterStoreError.from(e))
            }
            lock.withLock { records[name] = target }
            event = AdapterRollback(name: name, fromVersion: current.version, toVersion: version, at: now)
            pruneCommitted(name: name)
        }
        logger.notice("adapter rolled back", metadata: ["adapter": "\(name)", "from": "\(event.fromVersion)", "to": "\(version)"])
        lock.withLock { rollbackHandler }?(event)
        return event
    }

    /// Called after every rollback (outside the registry's locks), e.g. by the continual-learning policy to pause
    /// itself so that it does not replace the version the operator chose.
    public var onRollback: (@Sendable (AdapterRollback) -> Void)? {
        get { lock.withLock { rollbackHandler } }
        set { lock.withLock { rollbackHandler = newValue } }
    }

    /// Keeps `version` of `name` (its row and files) until unpinned, even outside the keep window, e.g. the parent
    /// of a fine-tuning job from creation to publish. Pins are durable and counted per holder (a job id); pinning
    /// twice needs two unpins.
    /// - Throws: ``AdapterRegistryError/notFound(_:)``, ``AdapterRegistryError/versionNotFound(name:version:)``,
    ///   ``AdapterRegistryError/store(_:)``.
    public func pin(name: String, version: Int, holder: String = "") throws {
        commitLock.lock()
        defer { commitLock.unlock() }
        let (exists, kept) = lock.withLock { (records[name] != nil, versions[name]?[version] != nil) }
        guard exists else { throw AdapterRegistryError.notFound(name) }
        guard kept else { throw AdapterRegistryError.versionNotFound(name: name, version: version) }
        do { try db.pinAdapterVersion(version, holder: holder) } catch let e as StoreError {
            throw AdapterRegistryError.store(AdapterStoreError.from(e))
        }
        lock.withLock { pins[version, default: 0] += 1 }
    }

    /// Removes one pin of `holder` on `version` (nothing when there is none, e.g. the name was deleted since), then
    /// prunes the name.
    /// - Throws: ``AdapterRegistryError/store(_:)``.
    public func unpin(name: String, version: Int, holder: String = "") throws {
        commitLock.lock()
        defer { commitLock.unlock() }
        let had: Bool
        do { had = try db.unpinAdapterVersion(version, holder: holder) } catch let e as StoreError {
            throw AdapterRegistryError.store(AdapterStoreError.from(e))
        }
        guard had else { return }
        lock.withLock {
            let n = (pins[version] ?? 1) - 1
            pins[version] = n > 0 ? n : nil
        }
        pruneCommitted(name: name)
    }

    /// Unregisters `name` and removes all its versions (rows, pins, history, files). Running sequences keep the
    /// weights they hold; new requests get 404.
    /// - Throws: ``AdapterRegistryError/notFound(_:)``, ``AdapterRegistryError/store(_:)``.
    @discardableResult
    public func remove(name: String) throws -> AdapterRecord {
        commitLock.lock()
        defer { commitLock.unlock() }
        guard let rec = lock.withLock({ records[name] }) else { throw AdapterRegistryError.notFound(name) }
        do { try db.deleteAdapter(name: name) } catch let e as StoreError {
            throw AdapterRegistryError.store(AdapterStoreError.from(e))
        }
        let gone: [Int] = lock.withLock {
            let vs = Array((versions.removeValue(forKey: name) ?? [:]).keys)
            records[name] = nil
            lastUsed[name] = nil
            for v in vs {
                pins[v] = nil
                if let c = cache.removeValue(forKey: v) { cachedBytes -= c.weights.residentBytes }
            }
            return vs
        }
        fileStore.removeAll(name: name)
        logger.notice("adapter removed", metadata: ["adapter": "\(name)", "version": "\(rec.version)", "versions": "\(gone.count)"])
        return rec
    }

    /// Kept versions of `name`, newest first.
    /// - Throws: ``AdapterRegistryError/notFound(_:)``.
    public func versions(of name: String) throws -> [AdapterVersionInfo] {
        try lock.withLock {
            guard let current = records[name]?.version, let kept = versions[name] else { throw AdapterRegistryError.notFound(name) }
            return kept.keys.sorted(by: >).map { v in
                AdapterVersionInfo(
                    record: kept[v]!, current: v == current, pinned: (pins[v] ?? 0) > 0,
                    resident: cache[v] != nil || live[v]?.value != nil)
            }
        }
    }

    /// The newest publish and rollback events of `name` (at most `limit`, newest first).
    /// - Throws: ``AdapterRegistryError/notFound(_:)``, ``AdapterRegistryError/store(_:)``.
    public func history(of name: String, limit: Int = 50) throws -> [AdapterHistoryEvent] {
        guard contains(name) else { throw AdapterRegistryError.notFound(name) }
        do { return try db.adapterHistory(name: name, limit: min(max(limit, 1), Self.maxHistory)) } catch let e as StoreError {
            throw AdapterRegistryError.store(AdapterStoreError.from(e))
        }
    }

    /// Where a kept version's files are: the `.gguf` file, or the PEFT directory. Read-only for callers (a job
    /// continuing from this version loads them); pin the version first if it must outlive a publish.
    /// - Throws: ``AdapterRegistryError/notFound(_:)``, ``AdapterRegistryError/versionNotFound(name:version:)``.
    public func files(name: String, version: Int) throws -> (format: AdapterFormat, path: String) {
        let r: AdapterRecord = try lock.withLock {
            guard versions[name] != nil else { throw AdapterRegistryError.notFound(name) }
            guard let r = versions[name]?[version] else { throw AdapterRegistryError.versionNotFound(name: name, version: version) }
            return r
        }
        let dir = fileStore.versionDir(name: name, version: version)
        return (r.format, r.format == .gguf ? dir + "/adapter.gguf" : dir)
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

    /// The adapter name rule: 1–128 ASCII letters, digits, `.`, `_`, `-`, `:`; not `.` or `..` (a name is a
    /// directory name in the store).
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 128 && name != "." && name != ".."
            && name.unicodeScalars.allSatisfy {
                ($0.value < 128) && (CharacterSet.alphanumerics.contains($0) || "._-:".unicodeScalars.contains($0))
            }
    }

    private func validate(name: String) throws {
        guard Self.isValidName(name) else {
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
        case .path(let raw), .directory(let raw):
            guard let real = Self.resolvedPath(raw) else { throw AdapterRegistryError.badSource("'\(raw)' does not exist") }
            var trusted = false
            if case .directory = source { trusted = true }
            let allowed = importDirs + (scanDir.map { [$0] } ?? [])
            func inside(_ p: String) -> Bool { trusted || allowed.contains { p.hasPrefix($0 + "/") } }
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
