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

final class FakeBackend: InferenceBackend, @unchecked Sendable {
    static let vocab = 64
    static let bytesPerToken = 100
    static let bos: Int32 = 2
    static let eog: Int32 = 1

    private let lock = NSLock()
    private var batchLog: [(rows: Int, sequences: Int)] = []
    /// Makes `forward` throw once, for error-path tests.
    var failNextForward = false
    /// When set (before the engine starts), every forward call first waits for one `signal()`, so a test decides
    /// how many steps can run. `openGate()` lets all further steps run freely.
    var gate: DispatchSemaphore?
    private var gateOpen = false

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

    /// Logits after `history` (the tokens in the cache, last one included).
    static func logits(after history: [Int32]) -> [Float] {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
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
            if batch.wantLogits[i] { out += Self.logits(after: c.tokens) }
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

    /// Each character maps to (scalar % 60) + 4; BOS optional.
    func encode(_ text: String, addBOS: Bool, parseSpecial: Bool) -> [Int32] {
        (addBOS ? [Self.bos] : []) + text.unicodeScalars.map { Int32($0.value % 60) + 4 }
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
    static func referenceGreedy(prompt: [Int32], count: Int) -> [Int32] {
        var history = prompt
        var out: [Int32] = []
        for _ in 0..<count {
            let l = logits(after: history)
            var best = 0
            for v in 1..<l.count where l[v] > l[best] { best = v }
            out.append(Int32(best))
            history.append(Int32(best))
        }
        return out
    }
}
