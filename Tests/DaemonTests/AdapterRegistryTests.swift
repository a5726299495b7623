// AdapterRegistry with FakeBackend: the LRU cache bound, reloads after eviction (one load for concurrent misses),
// version pinning across replace and delete, durability (reopen, orphan sweep), a full disk (a 256 KiB tmpfs),
// and an engine batch whose rows use different adapters. The versioned registry (keep window, pins, lineage,
// compare-and-swap, rollback, the JSON-index migration) is in AdapterVersionTests.swift. Expected outputs come from FakeBackend's own definition
// (`referenceGreedy` with the adapter file's hash as salt), computed independently of the engine.

import Daemon
import Foundation
import Logging
import Runtime
import Testing

#if canImport(Glibc)
import Glibc
#endif

struct RegistryFixture {
    let root: String
    let importDir: String
    let backend = FakeBackend()

    init() throws {
        root = NSTemporaryDirectory() + "lorad-reg-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        importDir = root + "/import"
        try FileManager.default.createDirectory(atPath: importDir, withIntermediateDirectories: true)
    }

    /// Writes `<import>/<name>.gguf` with `content`.
    @discardableResult
    func file(_ name: String, _ content: String) throws -> String {
        let p = "\(importDir)/\(name).gguf"
        try content.write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    func registry(stateDir: String? = nil, cacheAdapters: Int = 1000, keepVersions: Int = 10) throws -> AdapterRegistry {
        let r = try AdapterRegistry(
            stateDir: stateDir ?? root + "/state", baseModelID: "fake-model", importDirs: [importDir], scanDir: nil,
            cacheBytes: cacheAdapters * FakeBackend.adapterBytes, keepVersions: keepVersions, logger: Logger(label: "test"))
        r.attach(backend: backend)
        return r
    }

    func cleanup() { try? FileManager.default.removeItem(atPath: root) }
}

func adapterTag(_ s: String) -> UInt64 { FakeAdapter.tag(of: Data(s.utf8)) }

@Suite struct AdapterRegistryTests {
    @Test func lruCacheStaysWithinBudgetAndReloadsEvictedAdapters() async throws {
        let f = try RegistryFixture()
        defer { f.cleanup() }
        let reg = try f.registry(cacheAdapters: 5)
        for i in 0..<40 { try await reg.register(name: "a\(i)", source: .path(try f.file("a\(i)", "adapter \(i)"))) }
        #expect(reg.stats.registered == 40)
        #expect(reg.stats.cached <= 5)
        let loadsAfterRegistering = f.backend.adapterLoads
        // Requests spread over all 40: every answer carries the right weights, and the cache never exceeds 5.
        for k in 0..<200 {
            let i = (k * 7) % 40
            let (rec, w) = try await reg.resolve("a\(i)")
            #expect(rec.name == "a\(i)")
            #expect((w as? FakeAdapter)?.tag == adapterTag("adapter \(i)"))
            #expect(reg.stats.cachedBytes <= 5 * FakeBackend.adapterBytes)
        }
        #expect(f.backend.adapterLoads > loadsAfterRegistering)  // evicted ones were loaded again
        #expect(reg.stats.evictions > 0)
        // The most recently used stay resident; a hit does not load.
        _ = try await reg.resolve("a7")
        let before = f.backend.adapterLoads
        _ = try await reg.resolve("a7")
        _ = try await reg.resolve("a7")
        #expect(f.backend.adapterLoads == before)
        #expect(reg.info("a7")?.resident == true)
    }

    @Test func concurrentMissesShareOneLoad() async throws {
        let f = try RegistryFixture()
        defer { f.cleanup() }
        let reg = try f.registry(cacheAdapters: 1)
        try await reg.register(name: "x", source: .path(try f.file("x", "xx")))
        try await reg.register(name: "y", source: .path(try f.file("y", "yy")))  // evicts x
        #expect(reg.info("x")?.resident == false)
        let before = f.backend.adapterLoads
        let tags = try await withThrowingTaskGroup(of: UInt64.self) { group in
            for _ in 0..<8 { group.addTask { ((try await reg.resolve("x").weights) as? FakeAdapter)?.tag ?? 0 } }
            var out: [UInt64] = []
            for try await t in group { out.append(t) }
            return out
        }
        #expect(tags == Array(repeating: adapterTag("xx"), count: 8))
        #expect(f.backend.adapterLoads == before + 1)
    }

    @Test func replaceAndDeleteKeepPinnedVersions() async throws {
        let f = try RegistryFixture()
        defer { f.cleanup() }
        let reg = try f.registry()
        let v1 = try await reg.register(name: "hot", source: .path(try f.file("one", "first"))).record
        var pinned: (any AdapterWeights)? = try await reg.resolve("hot").weights
        let v2 = try await reg.register(name: "hot", source: .path(try f.file("two", "second")))
        #expect(v2.replaced == v1.version)
        #expect(v2.record.version > v1.version)
        #expect((pinned as? FakeAdapter)?.tag == adapterTag("first"))  // the holder keeps version 1
        #expect(((try await reg.resolve("hot")).weights as? FakeAdapter)?.tag == adapterTag("second"))
        // Version 1 stays on disk (inside the keep window) and is alive while held; deleting the name removes every
        // version's files, and dropping the holder frees the weights.
        #expect(FileManager.default.fileExists(atPath: "\(f.root)/state/adapters/store/hot/\(v1.version)"))
        #expect(try reg.versions(of: "hot").map(\.record.version) == [v2.record.version, v1.version])
        try reg.remove(name: "hot")
        #expect(!FileManager.default.fileExists(atPath: "\(f.root)/state/adapters/store/hot"))
        await #expect(throws: AdapterRegistryError.notFound("hot")) { try await reg.resolve("hot") }
        #expect(reg.stats.liveBytes == FakeBackend.adapterBytes)  // `pinned` still holds version 1
        pinned = nil
        #expect(pinned == nil && reg.stats.liveBytes == 0)
        // Registering without replace refuses an existing name.
        try await reg.register(name: "k", source: .path(try f.file("k", "kk")))
        await #expect(throws: AdapterRegistryError.alreadyExists("k")) {
            try await reg.register(name: "k", source: .path(try f.file("k2", "kk2")), replace: false)
        }
    }

    @Test func registryIsDurableAndSweepsLeftovers() async throws {
        let f = try RegistryFixture()
        defer { f.cleanup() }
        var first: AdapterRecord?
        do {
            let reg = try f.registry()
            first = try await reg.register(name: "keep", source: .path(try f.file("keep", "kept bytes"))).record
            try await reg.register(name: "gone", source: .path(try f.file("gone", "gone bytes")))
            try reg.remove(name: "gone")
        }
        // Leftovers of an interrupted registration: a staged directory and a version directory never indexed.
        let adapters = f.root + "/state/adapters"
        try FileManager.default.createDirectory(atPath: adapters + "/staging/half", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: adapters + "/store/orphan/99", withIntermediateDirectories: true)
        let reg = try f.registry()
        #expect(reg.list().map(\.record) == [first!])
        #expect(reg.info("keep")?.resident == false)
        #expect(((try await reg.resolve("keep")).weights as? FakeAdapter)?.tag == adapterTag("kept bytes"))
        #expect(!FileManager.default.fileExists(atPath: adapters + "/staging/half"))
        #expect(!FileManager.default.fileExists(atPath: adapters + "/store/orphan"))
        // Versions keep increasing across restarts.
        let next = try await reg.register(name: "new", source: .path(try f.file("new", "n"))).record
        #expect(next.version > first!.version + 1)
        // Unusable sources and names.
        await #expect(throws: AdapterRegistryError.outsideImportDirs(path: "/etc/hostname")) {
            try await reg.register(name: "x", source: .path("/etc/hostname"))
        }
        await #expect(throws: AdapterRegistryError.self) { try await reg.register(name: "a/b", source: .path(try f.file("ab", "ab"))) }
        await #expect(throws: AdapterRegistryError.self) { try await reg.register(name: "fake-model", source: .path(try f.file("fm", "fm"))) }
        let bad = try f.file("bad", "bad adapter")
        do {
            try await reg.register(name: "bad", source: .path(bad))
            Issue.record("a bad adapter was accepted")
        } catch let AdapterRegistryError.invalidAdapter(name, reason) {
            #expect(name == "bad" && reason.contains("blk.0.attn_q.weight.lora_a"))
        }
        #expect(reg.info("bad") == nil)
    }

    /// A full disk fails the registration with 507-class error and loses nothing already registered.
    @Test func fullDiskKeepsExistingAdapters() async throws {
        let f = try RegistryFixture()
        defer { f.cleanup() }
        let mountPoint = f.root + "/small"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let mount = Process()
        mount.executableURL = URL(fileURLWithPath: "/bin/mount")
        // Room for the store's schema and WAL and the small adapter, not for the big one.
        mount.arguments = ["-t", "tmpfs", "-o", "size=1m", "tmpfs", mountPoint]
        try mount.run()
        mount.waitUntilExit()
        try #require(mount.terminationStatus == 0, "mounting a tmpfs needs root")
        defer {
            let u = Process()
            u.executableURL = URL(fileURLWithPath: "/bin/umount")
            u.arguments = [mountPoint]
            try? u.run()
            u.waitUntilExit()
        }
        let reg = try f.registry(stateDir: mountPoint)
        try await reg.register(name: "small", source: .path(try f.file("small", String(repeating: "s", count: 1000))))
        let big = try f.file("big", String(repeating: "b", count: 1_600_000))
        do {
            try await reg.register(name: "big", source: .path(big))
            Issue.record("registration on a full disk succeeded")
        } catch AdapterRegistryError.store(.diskFull) {
        }
        #expect(reg.list().map(\.record.name) == ["small"])
        // Replacing on a full disk fails too and keeps the old version serving.
        do {
            try await reg.register(name: "small", source: .path(big))
            Issue.record("replacement on a full disk succeeded")
        } catch AdapterRegistryError.store(.diskFull) {
        }
        #expect(((try await reg.resolve("small")).weights as? FakeAdapter)?.tag == adapterTag(String(repeating: "s", count: 1000)))
        let reopened = try f.registry(stateDir: mountPoint)
        #expect(reopened.list().map(\.record.name) == ["small"])
    }

    /// One engine batch with rows on different adapters (and the base): each sequence gets exactly the
    /// continuation FakeBackend defines for its adapter.
    @Test func engineBatchesRowsWithDifferentAdapters() async throws {
        let f = try RegistryFixture()
        defer { f.cleanup() }
        let reg = try f.registry()
        for i in 0..<4 { try await reg.register(name: "m\(i)", source: .path(try f.file("m\(i)", "mix \(i)"))) }
        let engine = Engine(
            backend: f.backend,
            limits: EngineLimits(maxSequences: 8, kvCacheBytes: 1 << 30, maxQueue: 8, stepTokenBudget: 64, contextSize: 4096))
        defer { engine.shutdown() }
        var p = SamplingParams()
        p.temperature = 0
        let prompt: [Int32] = [2, 10, 11, 12, 13]
        var handles: [(GenerationHandle, UInt64)] = []
        for i in 0..<5 {
            var mix: AdapterMix?
            if i < 4 {
                let (rec, w) = try await reg.resolve("m\(i)")
                mix = AdapterMix([.init(name: rec.name, version: rec.version, weights: w, scale: 1)])
            }
            let req = GenerationRequest(promptTokens: prompt, maxTokens: 12, sampling: p, adapters: mix)
            handles.append((try engine.submit(req), FakeBackend.salt(mix)))
        }
        // Started only now, so all five join the first step: resolving between submissions can take longer than
        // a whole 12-token run of the fake backend on a loaded machine.
        engine.start()
        var outputs: [[Int32]] = []
        for (h, salt) in handles {
            var ids: [Int32] = []
            for await e in h.events { if case .token(let t) = e { ids.append(t.id) } }
            #expect(ids == FakeBackend.referenceGreedy(prompt: prompt, count: 12, salt: salt))
            outputs.append(ids)
        }
        #expect(Set(outputs).count == 5)
        #expect(f.backend.batches.contains { $0.sequences >= 5 })
    }
}
