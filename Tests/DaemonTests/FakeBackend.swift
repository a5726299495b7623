// FakeBackend: a deterministic stand-in model for engine tests. Its "kv_cache" stores the tokens; the logits of a
// row are a fixed hash of the sequence's tokens up to and including that row, so the next token depends only on
// that sequence's own history. `referenceGreedy` computes a greedy continuation directly from that definition,
// independently of the engine.

import Daemon
import Foundation

final class FakeCache: SequenceCache {
    let capacity: Int
    var tokens: [Int32] = []
    init(capacity: Int) { self.capacity = capacity }
    var count: Int { tokens.count }
    var byteCount: Int { capacity * FakeBackend.bytesPerToken }
}

struct FakeDetokenizer: IncrementalDetokenizer {
    mutating func push(_ id: Int32) -> String { FakeBackend.text(of: id) }
    mutating func finish() -> String { "" }
}

enum FakeError: Error { case badBatch(String) }

/// A fake adapter: the FNV-1a hash of its file's bytes salts the logits of rows that use it.
final class FakeAdapter: AdapterWeights, @unchecked Sendable {
    let tag: UInt64
    let residentBytes: Int
    init(tag: UInt64, bytes: Int) {
        self.tag = tag
        residentBytes = bytes
    }
    var adapterRank: Int { 4 }
    var adapterAlpha: Float? { 8 }
    var adapterTargets: [String] { ["attn_q"] }

    static func tag(of data: Data) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in data {
            h ^= UInt64(b)
            h = h &* 0x100_0000_01b3
        }
        return h
    }
}

final class FakeBackend: InferenceBackend, @unchecked Sendable {
    static let vocab = 64
    static let bytesPerToken = 100
    static let bos: Int32 = 2
    static let eog: Int32 = 1

    private let lock = NSLock()
    private var batchLog: [(rows: Int, sequences: Int)] = []
    /// Makes `forward` throw once, for error-path tests.
    var failNextForward = false
    /// Rows whose cache has reached this many tokens get a NaN among their logits (a forward pass that overflowed).
    var nanLogitsAtLength: Int?
    /// When set (before the engine starts), every forward call first waits for one `signal()`, so a test decides
    /// how many steps can run. `openGate()` lets all further steps run freely.
    var gate: DispatchSemaphore?
    private var gateOpen = false
    /// Seconds every forward call sleeps per row, so steps take time in proportion to their rows as a real model's do.
    var secondsPerRow: Double = 0

    func openGate() {
        lock.lock()
        gateOpen = true
        lock.unlock()
        gate?.signal()
    }

    var modelID: String { "fake-model" }
    var vocabSize: Int { Self.vocab }
    var trainedContextLength: Int { 8192 }
    var kvBytesPerToken: Int { Self.bytesPerToken }

    /// (rows, distinct sequences) of every forward call so far.
    var batches: [(rows: Int, sequences: Int)] { lock.lock(); defer { lock.unlock() }; return batchLog }

    func makeCache(capacity: Int) throws -> any SequenceCache { FakeCache(capacity: capacity) }

    /// Adapter loads so far (each call of `loadAdapter`).
    var adapterLoads: Int { lock.lock(); defer { lock.unlock() }; return loadCount }
    private var loadCount = 0
    /// Bytes each fake adapter claims to occupy.
    static let adapterBytes = 1_000_000

    /// Reads the adapter's file (`adapter.gguf`, or `adapter_model.safetensors` in a directory); files starting
    /// with "bad" are rejected.
    func loadAdapter(at path: String, format: AdapterFormat, name: String) throws -> any AdapterWeights {
        let file = format == .gguf ? path : path + "/adapter_model.safetensors"
        guard let data = FileManager.default.contents(atPath: file) else { throw AdapterLoadError("cannot read \(file)") }
        if data.starts(with: Array("bad".utf8)) { throw AdapterLoadError("tensor 'blk.0.attn_q.weight.lora_a' is bad") }
        lock.lock()
        loadCount += 1
        lock.unlock()
        usleep(20_000)  // a load takes a moment, so concurrent misses overlap
        return FakeAdapter(tag: FakeAdapter.tag(of: data), bytes: Self.adapterBytes)
    }

    /// The salt a row's adapter mix adds to the history hash (0 = base).
    static func salt(_ mix: AdapterMix?) -> UInt64 {
        guard let mix else { return 0 }
        var s: UInt64 = 0
        for e in mix.entries where e.scale != 0 {
            s = s &* 31 &+ ((e.weights as? FakeAdapter)?.tag ?? 1) &+ UInt64(e.scale.bitPattern)
        }
        return s
    }

    /// Logits after `history` (the tokens in the cache, last one included), salted by the row's adapters.
    static func logits(after history: [Int32], salt: UInt64 = 0) -> [Float] {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325 ^ salt
        for t in history {
            h ^= UInt64(UInt32(bitPattern: t))
            h = h &* 0x100_0000_01b3
        }
        var out = [Float](repeating: 0, count: vocab)
        for v in 0..<vocab {
            var x = h ^ (UInt64(v) &* 0x9E37_79B9_7F4A_7C15)
            x ^= x >> 29
            x = x &* 0xBF58_476D_1CE4_E5B9
            x ^= x >> 32
            out[v] = Float(x % 1000) / 100
        }
        out[Int(eog)] = -50  // never the argmax: sequences end by length or stop rules
        return out
    }

    func forward(_ batch: StepBatch, caches: [any SequenceCache]) throws -> [Float] {
        if let g = gate {
            lock.lock()
            let open = gateOpen
            lock.unlock()
            if !open {
                g.wait()
            }
        }
        if failNextForward {
            failNextForward = false
            throw FakeError.badBatch("injected failure")
        }
        if secondsPerRow > 0 { usleep(UInt32(secondsPerRow * Double(batch.count) * 1e6)) }
        var out: [Float] = []
        var seen = Set<Int>()
        for i in 0..<batch.count {
            let slot = batch.slots[i]
            guard slot >= 0, slot < caches.count, let c = caches[slot] as? FakeCache else {
                throw FakeError.badBatch("slot \(slot)")
            }
            guard batch.positions[i] == c.tokens.count, c.tokens.count < c.capacity else {
                throw FakeError.badBatch("position \(batch.positions[i]) vs cache \(c.tokens.count)/\(c.capacity)")
            }
            c.tokens.append(batch.tokens[i])
            seen.insert(slot)
            let mix = batch.adapters.count == batch.count ? batch.adapters[i] : nil
            if batch.wantLogits[i] {
                var row = Self.logits(after: c.tokens, salt: Self.salt(mix))
                if let n = nanLogitsAtLength, c.tokens.count >= n { row[row.count / 2] = .nan }
                out += row
            }
        }
        lock.lock()
        batchLog.append((batch.count, seen.count))
        lock.unlock()
        return out
    }

    /// Token text: letters, so every token is one ASCII character.
    static func text(of id: Int32) -> String {
        String(UnicodeScalar(UInt8(97 + Int(id) % 26)))
    }

    /// Each character maps to (scalar % 60) + 4; BOS optional. With `parseSpecial`, a leading "<bos>" is BOS.
    func encode(_ text: String, addBOS: Bool, parseSpecial: Bool) -> [Int32] {
        var rest = Substring(text)
        var ids: [Int32] = addBOS ? [Self.bos] : []
        if parseSpecial, rest.hasPrefix("<bos>") {
            ids.append(Self.bos)
            rest = rest.dropFirst(5)
        }
        return ids + rest.unicodeScalars.map { Int32($0.value % 60) + 4 }
    }

    func renderChat(_ messages: [ChatTurn]) throws -> [Int32] {
        var out: [Int32] = [Self.bos]
        for m in messages { out += [3] + encode(m.role + ":" + m.content, addBOS: false, parseSpecial: false) }
        return out + [3]
    }

    func isEndOfGeneration(_ id: Int32) -> Bool { id == Self.eog }
    func tokenBytes(_ id: Int32) -> [UInt8] { Array(Self.text(of: id).utf8) }
    func makeDetokenizer() -> any IncrementalDetokenizer { FakeDetokenizer() }

    /// Greedy continuation computed straight from the logits definition (argmax, lowest id wins ties).
    static func referenceGreedy(prompt: [Int32], count: Int, salt: UInt64 = 0) -> [Int32] {
        var history = prompt
        var out: [Int32] = []
        for _ in 0..<count {
            let l = logits(after: history, salt: salt)
            var best = 0
            for v in 1..<l.count where l[v] > l[best] { best = v }
            out.append(Int32(best))
            history.append(Int32(best))
        }
        return out
    }
}
