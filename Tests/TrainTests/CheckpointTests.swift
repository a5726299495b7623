// Checkpoints: exact round trip of everything a resume needs, keep-last-2, and damage handling: a truncated or
// corrupted file is a clear error and never harms its predecessor; a failing write (ENOSPC injected into
// AtomicFile) leaves the previous checkpoint intact.
import Foundation
import Runtime
import Testing
import Train

@Suite("Checkpoints", .enabled(if: TrainTestSupport.hasModel, "needs LORAD_MODEL (model shapes)"))
struct CheckpointTests {
    static func settings(_ lora: LoRAConfig) -> RunSettings {
        RunSettings(method: "sft", lora: lora, adamw: AdamWConfig(), schedule: LRSchedule(kind: .cosine, baseLR: 1e-3, warmupSteps: 2, totalSteps: 10),
                    batchSize: 2, maxGradNorm: 1, seed: 5, maxLength: 512, dataDigest: "abc", baseModel: "gemma")
    }

    /// A checkpoint after `steps` real AdamW steps on random gradients.
    static func checkpoint(steps: Int) throws -> TrainingCheckpoint {
        let model = try TrainTestSupport.model().config
        let lora = LoRAConfig(rank: 2, alpha: 4, targets: [.attnQ, .ffnDown], layers: [0, 3])
        var rng = TrainingRNG(seed: 5)
        var p = try LoRAParameters.fresh(config: lora, model: model, rng: &rng)
        var opt = AdamW(count: p.count)
        var order = DataOrder(count: 7, shuffle: true, rng: &rng)
        for _ in 0..<steps {
            _ = order.nextBatch(2, shuffle: true, rng: &rng)
            let g = (0..<p.count).map { _ in rng.uniform(bound: 1) }
            opt.step(params: &p.values, grad: g, lr: 1e-3)
        }
        return TrainingCheckpoint(settings: settings(lora), parameters: p, optimizer: opt.state, dataOrder: order, rng: rng,
                                  tokensSeen: 1000 * steps + 7)
    }

    @Test("save/load round trip restores values, moments, step, data order, RNG and settings exactly")
    func roundTrip() throws {
        let model = try TrainTestSupport.model().config
        let dir = try TrainTestSupport.temporaryDirectory("ckpt")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let c = try Self.checkpoint(steps: 3)
        let store = CheckpointStore(directory: dir)
        let path = try store.save(c)
        #expect(path.hasSuffix("checkpoint-000000003.lorackpt"))
        let (back, loadedPath, skipped) = try store.loadLatest(model: model, settings: c.settings)
        #expect(loadedPath == path && skipped.isEmpty)
        #expect(back.parameters.values.map(\.bitPattern) == c.parameters.values.map(\.bitPattern))
        #expect(back.optimizer == c.optimizer && back.step == 3)
        #expect(back.dataOrder == c.dataOrder && back.rng == c.rng && back.settings == c.settings)
        #expect(back.tokensSeen == 3007)
        #expect(back.parameters.config == c.parameters.config && back.parameters.slots == c.parameters.slots)
        // The resumed RNG and order continue the same stream.
        var r1 = c.rng, r2 = back.rng, o1 = c.dataOrder, o2 = back.dataOrder
        #expect(o1.nextBatch(9, shuffle: true, rng: &r1) == o2.nextBatch(9, shuffle: true, rng: &r2))
    }

    @Test("only the last two are kept; a damaged newest file is a clear error and the previous one loads")
    func keepAndDamage() throws {
        let model = try TrainTestSupport.model().config
        let dir = try TrainTestSupport.temporaryDirectory("ckpt-keep")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = CheckpointStore(directory: dir)
        for s in 1...4 { try store.save(try Self.checkpoint(steps: s)) }
        #expect(store.list().map(\.step) == [3, 4])
        let newest = store.list().last!.path, previous = store.list().first!.path
        let good = try AtomicFile.read(newest)
        let previousBytes = try AtomicFile.read(previous)

        // Truncated.
        try Data(good.prefix(good.count - 100)).write(to: URL(fileURLWithPath: newest))
        do {
            _ = try CheckpointStore.load(path: newest, model: model)
            Issue.record("a truncated checkpoint loaded")
        } catch let e as CheckpointError {
            guard case .truncated = e else { Issue.record("expected .truncated, got \(e)"); return }
            #expect(e.description.contains("is truncated"))
        }
        let fallback = try store.loadLatest(model: model)
        #expect(fallback.path == previous && fallback.checkpoint.step == 3 && fallback.skipped.count == 1)
        #expect(try AtomicFile.read(previous) == previousBytes)

        // One flipped bit in the values.
        var flipped = good
        flipped[good.count - 20] ^= 0x10
        try Data(flipped).write(to: URL(fileURLWithPath: newest))
        #expect(throws: CheckpointError.corrupt(path: newest, reason: "checksum mismatch")) {
            _ = try CheckpointStore.load(path: newest, model: model)
        }
        #expect(try store.loadLatest(model: model).checkpoint.step == 3)
        // Cut inside the header, and cut right after the magic.
        for length in [40, 12, 0] {
            try Data(good.prefix(length)).write(to: URL(fileURLWithPath: newest))
            #expect(throws: CheckpointError.self) { _ = try CheckpointStore.load(path: newest, model: model) }
        }
        // Not a checkpoint at all.
        try Data("hello".utf8).write(to: URL(fileURLWithPath: newest))
        #expect(throws: CheckpointError.self) { _ = try CheckpointStore.load(path: newest, model: model) }
        #expect(try store.loadLatest(model: model).checkpoint.step == 3)
        #expect(try AtomicFile.read(previous) == previousBytes)
    }

    @Test("ENOSPC while saving leaves the previous checkpoints untouched and no temporary file behind")
    func diskFull() throws {
        let model = try TrainTestSupport.model().config
        let dir = try TrainTestSupport.temporaryDirectory("ckpt-enospc")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var store = CheckpointStore(directory: dir)
        try store.save(try Self.checkpoint(steps: 1))
        try store.save(try Self.checkpoint(steps: 2))
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
        let bytes = try files.map { try AtomicFile.read(dir + "/" + $0) }
        store.fault = { _, offset in offset >= AtomicFile.chunkSize ? ENOSPC : nil }  // the disk fills mid-file
        #expect(throws: FileIOError.self) { try store.save(try Self.checkpoint(steps: 3)) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == files)
        #expect(try files.map { try AtomicFile.read(dir + "/" + $0) } == bytes)
        #expect(try store.loadLatest(model: model).checkpoint.step == 2)
    }

    @Test("resume refuses other settings and names the fields")
    func settingsMismatch() throws {
        let model = try TrainTestSupport.model().config
        let dir = try TrainTestSupport.temporaryDirectory("ckpt-settings")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let c = try Self.checkpoint(steps: 1)
        try CheckpointStore(directory: dir).save(c)
        var other = c.settings
        other.seed = 6
        other.schedule.baseLR = 2e-3
        #expect(throws: CheckpointError.settingsMismatch(path: dir + "/" + CheckpointStore.fileName(step: 1), fields: ["schedule", "seed"])) {
            _ = try CheckpointStore(directory: dir).loadLatest(model: model, settings: other)
        }
        // The file checksum is FNV-1a 64; test vectors (Fowler–Noll–Vo reference: "" → cbf29ce484222325,
        // "a" → af63dc4c8601ec8c).
        #expect([UInt8]().withUnsafeBytes { CheckpointCodec.fnv1a($0) } == 0xcbf2_9ce4_8422_2325)
        #expect(Array("a".utf8).withUnsafeBytes { CheckpointCodec.fnv1a($0) } == 0xaf63_dc4c_8601_ec8c)
        #expect(throws: CheckpointError.none(directory: dir + "/empty")) {
            _ = try CheckpointStore(directory: dir + "/empty").loadLatest(model: model)
        }
    }

    @Test("the tokens seen survive a checkpoint, through the loop's store too; a file written without them loads with 0")
    func tokensSeen() throws {
        let model = try TrainTestSupport.model().config
        let dir = try TrainTestSupport.temporaryDirectory("ckpt-tokens")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let c = try Self.checkpoint(steps: 2)
        #expect(try CheckpointCodec.decode(CheckpointCodec.encode(c), path: "x", model: model).tokensSeen == 2007)

        // The loop's store: a TrainingRunState saved with a token count comes back with it.
        let runStore = RunCheckpointStore(store: CheckpointStore(directory: dir + "/run"), settings: c.settings, model: model)
        let state = TrainingRunState(step: c.step, order: c.dataOrder, rng: c.rng, tokensSeen: 123_456,
                                     values: c.parameters.values,
                                     optimizer: OptimizerState(step: c.optimizer.step, buffers: ["m": c.optimizer.m, "v": c.optimizer.v]),
                                     fingerprint: RunCheckpointStore.fingerprint)
        try runStore.save(state, config: c.parameters.config)
        let back = try #require(try runStore.loadLatest())
        #expect(back.tokensSeen == 123_456 && back.step == c.step && back.values == c.parameters.values)

        // An older checkpoint: the same layout with no `tokensSeen` in the JSON header (header length and checksum
        // rewritten to match, as the older writer produced them).
        let bytes = try CheckpointCodec.encode(c)
        let headerLength = bytes.withUnsafeBytes { Int(UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 12, as: UInt64.self))) }
        let json = String(decoding: bytes[20..<(20 + headerLength)], as: UTF8.self)
        let field = ",\"tokensSeen\":2007"
        #expect(json.contains(field))
        let oldJSON = Array(json.replacingOccurrences(of: field, with: "").utf8)
        var old = Array(bytes[0..<12])
        withUnsafeBytes(of: UInt64(oldJSON.count).littleEndian) { old.append(contentsOf: $0) }
        old += oldJSON
        old += bytes[(20 + headerLength)..<(bytes.count - 8)]
        let sum = old.withUnsafeBytes { CheckpointCodec.fnv1a($0) }
        withUnsafeBytes(of: sum.littleEndian) { old.append(contentsOf: $0) }
        let loaded = try CheckpointCodec.decode(old, path: "old", model: model)
        #expect(loaded.tokensSeen == 0 && loaded.step == c.step)
        #expect(loaded.parameters.values.map(\.bitPattern) == c.parameters.values.map(\.bitPattern))
    }
}
