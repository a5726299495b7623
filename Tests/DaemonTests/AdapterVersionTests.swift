// The versioned adapter registry with FakeBackend: the JSON-index migration (once, idempotent after a crash before
// the rename), the keep window with a pinned and a held version surviving it, lineage and compare-and-swap
// publishing (and a repeated publish that changes nothing), rollback (atomic for new requests, durable, the hook
// called, running holders untouched), and start-up repair of rows whose files are gone. Expected weights come from
// FakeAdapter's definition (the FNV-1a hash of the file's bytes).

import Daemon
import Foundation
import Logging
import Testing

@Suite struct AdapterVersionTests {
    /// A version and the tag of its weights.
    private struct Served: Equatable {
        var version: Int
        var tag: UInt64?
        init(_ version: Int, _ tag: UInt64?) {
            self.version = version
            self.tag = tag
        }
    }

    /// Resolves `name` as a request does: the version and the weights served.
    private func served(_ reg: AdapterRegistry, _ name: String) async throws -> Served {
        let (rec, w) = try await reg.resolve(name)
        return Served(rec.version, (w as? FakeAdapter)?.tag)
    }

    @Test func legacyJSONIndexIsMigratedOnce() async throws {
        let f = try RegistryFixture()
        defer { f.cleanup() }
        // A state directory as the JSON-index registry left it: two names, and a record whose files are gone.
        let adapters = f.root + "/state/adapters"
        for (name, v, content) in [("alpha", 3, "alpha bytes"), ("beta", 5, "beta bytes")] {
            let dir = "\(adapters)/store/\(name)/\(v)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try content.write(toFile: dir + "/adapter.gguf", atomically: true, encoding: .utf8)
        }
        func record(_ name: String, _ v: Int, _ sha: String) -> String {
            """
            {"name": "\(name)", "version": \(v), "format": "gguf", "sha256": "\(sha)", "rank": 4, "alpha": 8,
             "targets": ["attn_q"], "resident_bytes": \(FakeBackend.adapterBytes), "file_bytes": 11,
             "source": "/import/\(name).gguf", "created_at": 1700000000.5}
            """
        }
        let index = """
            {"format_version": 1, "next_version": 8, "adapters": [\(record("alpha", 3, "aa")), \(record("beta", 5, "bb")),
             \(record("gone", 6, "cc"))]}
            """
        try index.write(toFile: adapters + "/index.json", atomically: true, encoding: .utf8)

        var reg = try f.registry()
        #expect(reg.list().map(\.record.name) == ["alpha", "beta"])
        let alpha = try #require(reg.info("alpha")?.record)
        #expect(alpha.version == 3 && alpha.sha256 == "aa" && alpha.source == "/import/alpha.gguf" && alpha.createdAt == 1700000000.5)
        #expect(alpha.lineage == AdapterLineage())
        #expect(try await served(reg, "alpha") == Served(3, adapterTag("alpha bytes")))
        #expect(try await served(reg, "beta") == Served(5, adapterTag("beta bytes")))
        #expect(!FileManager.default.fileExists(atPath: adapters + "/index.json"))
        #expect(FileManager.default.fileExists(atPath: adapters + "/index.json.migrated"))
        // Numbers continue after the legacy index's next_version.
        let v = try await reg.register(name: "alpha", source: .path(try f.file("a2", "alpha two"))).record.version
        #expect(v == 8)

        // A crash between the migration's commit and the rename: the JSON index is still there at the next start.
        // Migrating again changes nothing (no duplicate, and alpha stays on the version published since).
        try FileManager.default.copyItem(atPath: adapters + "/index.json.migrated", toPath: adapters + "/index.json")
        reg = try f.registry()
        #expect(reg.list().map(\.record.version) == [8, 5])
        #expect(try reg.versions(of: "alpha").map(\.record.version) == [8, 3])
        #expect(try await served(reg, "alpha") == Served(8, adapterTag("alpha two")))
        #expect(!FileManager.default.fileExists(atPath: adapters + "/index.json"))
        // A corrupt legacy index is an error, not an empty registry.
        try "{not json".write(toFile: adapters + "/index.json", atomically: true, encoding: .utf8)
        #expect(throws: AdapterStoreError.self) { try f.registry() }
    }

    @Test func keepWindowSparesPinnedAndHeldVersions() async throws {
        let f = try RegistryFixture()
        defer { f.cleanup() }
        let reg = try f.registry(keepVersions: 3)
        let dir = f.root + "/state/adapters/store/k"
        func onDisk() throws -> [Int] {
            try FileManager.default.contentsOfDirectory(atPath: dir).compactMap(Int.init).sorted()
        }
        var made: [Int] = []
        for i in 1...8 {
            made.append(try await reg.register(name: "k", source: .path(try f.file("k\(i)", "content \(i)"))).record.version)
            if i == 1 { try reg.pin(name: "k", version: made[0], holder: "ftjob-1") }
        }
        // k: the 3 newest, and the pinned first one; 2...5 are gone, rows and files.
        let expectK = [made[0], made[5], made[6], made[7]]
        #expect(try reg.versions(of: "k").map(\.record.version).sorted() == expectK)
        #expect(try onDisk() == expectK)
        #expect(try reg.versions(of: "k").first { $0.record.version == made[0] }?.pinned == true)
        #expect(throws: AdapterRegistryError.versionNotFound(name: "k", version: made[2])) {
            try reg.rollback(name: "k", to: made[2])
        }

        // h: version 1 is held the way a running sequence holds it (resolved while current, never released).
        let held = try await reg.publish(name: "h", source: .path(try f.file("h1", "held one"))).record.version
        var holder: (any AdapterWeights)? = try await reg.resolve("h").weights
        for i in 2...6 { try await reg.register(name: "h", source: .path(try f.file("h\(i)", "held \(i)"))) }
        let hVersions = try reg.versions(of: "h").map(\.record.version)
        #expect(hVersions.count == 4 && hVersions.last == held, "\(hVersions)")  // the 3 newest + the held one
        #expect((holder as? FakeAdapter)?.tag == adapterTag("held one"))
        // Once the holder lets go, the next publish prunes it.
        holder = nil
        #expect(holder == nil)
        try await reg.register(name: "h", source: .path(try f.file("h7", "held 7")))
        #expect(try reg.versions(of: "h").count == 3)
        #expect(!(try reg.versions(of: "h").map(\.record.version).contains(held)))
        #expect(reg.stats.versions == 4 + 3)
        // The keep window changed live (SIGHUP) prunes at once; current and pinned versions stay.
        reg.setKeepVersions(1)
        #expect(try reg.versions(of: "h").count == 1)
        #expect(try reg.versions(of: "k").map(\.record.version) == [made[7], made[0]])

        // Pins are durable: a reopened registry still keeps the pinned version through the next publishes.
        let reopened = try f.registry(keepVersions: 3)
        for i in 9...10 { try await reopened.register(name: "k", source: .path(try f.file("k\(i)", "content \(i)"))) }
        #expect(try reopened.versions(of: "k").map(\.record.version).contains(made[0]))
        #expect(try reopened.versions(of: "k").count == 4)
        // Unpinning lets it go (unpin prunes at once).
        try reopened.unpin(name: "k", version: made[0], holder: "ftjob-1")
        #expect(try reopened.versions(of: "k").count == 3)
        #expect(try onDisk().count == 3)
        // Pinning what does not exist.
        #expect(throws: AdapterRegistryError.versionNotFound(name: "k", version: made[1])) {
            try reopened.pin(name: "k", version: made[1])
        }
        #expect(throws: AdapterRegistryError.notFound("nope")) { try reopened.pin(name: "nope", version: 1) }
    }

    @Test func lineageAndCompareAndSwap() async throws {
        let f = try RegistryFixture()
        defer { f.cleanup() }
        let reg = try f.registry()
        // .some(nil): the name must not exist.
        let v1 = try await reg.publish(name: "c", source: .path(try f.file("c1", "c one")), expectedParent: .some(nil))
        #expect(!v1.unchanged && v1.replaced == nil)
        await #expect(throws: AdapterRegistryError.parentChanged(current: v1.record.version)) {
            try await reg.publish(name: "c", source: .path(try f.file("c1b", "c one b")), expectedParent: .some(nil))
        }
        // .some(v): the current version must be v.
        let lineage = AdapterLineage(
            parentVersion: v1.record.version, jobID: "ftjob-abc", dataRange: .object([("feedback_since", .int(1700000000))]),
            gate: .object([("heldout_loss_after", .double(1.25)), ("heldout_loss_before", .double(1.5))]),
            metadata: ["trigger": "min_new_feedback"])
        // A job's export directory, outside every import directory: `.directory` is trusted, `.path` is not.
        let export = f.root + "/jobs/ftjob-abc/export"
        try FileManager.default.createDirectory(atPath: export, withIntermediateDirectories: true)
        try "c two".write(toFile: export + "/adapter.gguf", atomically: true, encoding: .utf8)
        await #expect(throws: AdapterRegistryError.outsideImportDirs(path: export)) {
            try await reg.publish(name: "c", source: .path(export))
        }
        let v2 = try await reg.publish(
            name: "c", source: .directory(export), lineage: lineage, expectedParent: .some(v1.record.version))
        #expect(v2.replaced == v1.record.version && v2.record.lineage == lineage)
        #expect(try await served(reg, "c") == Served(v2.record.version, adapterTag("c two")))
        // The same job publishing the same files again (a repeat after a crash) is harmless, even though its
        // expected parent is no longer current: no new version.
        let again = try await reg.publish(
            name: "c", source: .directory(export), lineage: lineage, expectedParent: .some(v1.record.version))
        #expect(again.unchanged && again.record == v2.record)
        // Another job on the stale parent loses the compare and swap, and nothing changes.
        var other = lineage
        other.jobID = "ftjob-def"
        await #expect(throws: AdapterRegistryError.parentChanged(current: v2.record.version)) {
            try await reg.publish(
                name: "c", source: .path(try f.file("c3", "c three")), lineage: other, expectedParent: .some(v1.record.version))
        }
        #expect(try reg.versions(of: "c").map(\.record.version) == [v2.record.version, v1.record.version])
        // .some(v) on a name that does not exist: parentChanged(current: nil).
        await #expect(throws: AdapterRegistryError.parentChanged(current: nil)) {
            try await reg.publish(name: "fresh", source: .path(try f.file("f", "f")), expectedParent: .some(1))
        }
        #expect(reg.info("fresh") == nil)
        // Registering the current version's bytes again by hand writes nothing.
        let same = try await reg.publish(name: "c", source: .path(try f.file("c2copy", "c two")))
        #expect(same.unchanged && same.record.version == v2.record.version)
        // Lineage is durable and listed.
        let reopened = try f.registry()
        let listed = try reopened.versions(of: "c")
        #expect(listed.map(\.record) == [v2.record, v1.record])
        #expect(listed.map(\.current) == [true, false])
        let path = try reopened.files(name: "c", version: v2.record.version)
        #expect(path.format == .gguf)
        #expect(try String(contentsOfFile: path.path, encoding: .utf8) == "c two")
        #expect(throws: AdapterRegistryError.versionNotFound(name: "c", version: 999)) { try reopened.files(name: "c", version: 999) }
        #expect(try reopened.history(of: "c").map(\.kind) == ["publish", "publish"])
    }

    @Test func rollbackIsAtomicDurableAndCallsTheHook() async throws {
        let f = try RegistryFixture()
        defer { f.cleanup() }
        let reg = try f.registry()
        var vs: [Int] = []
        for i in 1...3 { vs.append(try await reg.register(name: "r", source: .path(try f.file("r\(i)", "r \(i)"))).record.version) }
        let running = try await reg.resolve("r")  // a stream on version 3
        let calls = RollbackLog()
        reg.onRollback = { calls.append($0) }
        let event = try reg.rollback(name: "r", to: vs[0])
        #expect(event.fromVersion == vs[2] && event.toVersion == vs[0])
        #expect(calls.events.map { [$0.fromVersion, $0.toVersion] } == [[vs[2], vs[0]]])
        // New requests get version 1; the running one keeps version 3.
        #expect(try await served(reg, "r") == Served(vs[0], adapterTag("r 1")))
        #expect(running.record.version == vs[2] && (running.weights as? FakeAdapter)?.tag == adapterTag("r 3"))
        #expect(try reg.versions(of: "r").map(\.current) == [false, false, true])
        // Bad targets.
        #expect(throws: AdapterRegistryError.versionNotFound(name: "r", version: 12345)) { try reg.rollback(name: "r", to: 12345) }
        #expect(throws: AdapterRegistryError.notFound("none")) { try reg.rollback(name: "none", to: vs[0]) }
        // A compare-and-swap publish on the rolled-back name sees the rollback.
        await #expect(throws: AdapterRegistryError.parentChanged(current: vs[0])) {
            try await reg.publish(name: "r", source: .path(try f.file("r4", "r 4")), expectedParent: .some(vs[2]))
        }
        // Durable: a reopened registry serves version 1 and lists the rollback.
        let reopened = try f.registry()
        #expect(try await served(reopened, "r") == Served(vs[0], adapterTag("r 1")))
        let h = try reopened.history(of: "r")
        #expect(h.first?.kind == "rollback" && h.first?.version == vs[0] && h.first?.fromVersion == vs[2])
        // Roll forward again.
        try reopened.rollback(name: "r", to: vs[2])
        #expect(try await served(reopened, "r") == Served(vs[2], adapterTag("r 3")))
    }

    /// Rows whose files vanished are dropped at start-up; a name whose current version is gone falls back to its
    /// newest remaining version; a version directory no row lists (a publish interrupted before its transaction)
    /// is removed; every name is pruned to the keep window.
    @Test func startupRepairsRowsAndOrphans() async throws {
        let f = try RegistryFixture()
        defer { f.cleanup() }
        var vs: [Int] = []
        do {
            let reg = try f.registry()
            for i in 1...3 { vs.append(try await reg.register(name: "x", source: .path(try f.file("x\(i)", "x \(i)"))).record.version) }
            try await reg.register(name: "y", source: .path(try f.file("y", "y")))
        }
        let store = f.root + "/state/adapters/store"
        try FileManager.default.removeItem(atPath: "\(store)/x/\(vs[2])")  // the current one
        try FileManager.default.createDirectory(atPath: "\(store)/x/\(vs[2] + 100)", withIntermediateDirectories: true)
        let reg = try f.registry()
        #expect(try reg.versions(of: "x").map(\.record.version) == [vs[1], vs[0]])
        #expect(try await served(reg, "x") == Served(vs[1], adapterTag("x 2")))
        #expect(!FileManager.default.fileExists(atPath: "\(store)/x/\(vs[2] + 100)"))
        #expect(reg.list().map(\.record.name) == ["x", "y"])
        // Numbers are not reused, even those of dropped versions.
        let next = try await reg.register(name: "x", source: .path(try f.file("x4", "x 4"))).record.version
        #expect(next > vs[2] + 1)
        // Start-up prunes to the window (a crash between a publish's transaction and its prune left extra ones).
        let small = try f.registry(keepVersions: 1)
        #expect(try small.versions(of: "x").map(\.record.version) == [next])
        #expect(try FileManager.default.contentsOfDirectory(atPath: "\(store)/x") == ["\(next)"])
    }
}

/// Rollback events seen by the hook.
final class RollbackLog: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [AdapterRollback] = []
    func append(_ e: AdapterRollback) { lock.withLock { list.append(e) } }
    var events: [AdapterRollback] { lock.withLock { list } }
}

@Suite struct AdapterVersionRouteTests {
    @Test func versionsAndRollbackRoutes() throws {
        #expect(try Route.resolve(method: "GET", uri: "/v1/adapters/a%3Ab/versions") == .adapterVersions(name: "a:b"))
        #expect(try Route.resolve(method: "POST", uri: "/v1/adapters/a/rollback") == .adapterRollback(name: "a"))
        #expect(try Route.resolve(method: "GET", uri: "/v1/adapters/a/") == .adapter(name: "a"))
        #expect(Route.adapterRollback(name: "a").isManagement(method: "POST"))
        #expect(!Route.adapterVersions(name: "a").isManagement(method: "GET"))
        #expect(Route.adapterVersions(name: "a").template == "/v1/adapters/{name}/versions")
        for (method, uri, status) in [
            ("GET", "/v1/adapters/a/rollback", 405), ("POST", "/v1/adapters/a/versions", 405),
            ("GET", "/v1/adapters/a/b", 404), ("GET", "/v1/adapters/a/versions/1", 404), ("GET", "/v1/adapters//versions", 404),
        ] {
            do {
                _ = try Route.resolve(method: method, uri: uri)
                Issue.record("\(method) \(uri) accepted")
            } catch let e as APIError {
                #expect(e.status == status, "\(method) \(uri)")
            }
        }
    }
}
