// Engine tests with FakeBackend: continuous batching must not change any sequence's output, steps must batch
// several sequences, limits must hold, and a dropped consumer must free its sequence.

import Daemon
import Foundation
import Runtime
import Testing

private func limits(
    maxSequences: Int = 8, kvTokens: Int = 100_000, maxQueue: Int = 64, step: Int = 64, context: Int = 4096
) -> EngineLimits {
    EngineLimits(
        maxSequences: maxSequences, kvCacheBytes: kvTokens * FakeBackend.bytesPerToken, maxQueue: maxQueue,
        stepTokenBudget: step, contextSize: context)
}

private func greedy(_ prompt: [Int32], _ n: Int, stop: [String] = [], stopIDs: Set<Int32> = []) -> GenerationRequest {
    var p = SamplingParams()
    p.temperature = 0
    return GenerationRequest(promptTokens: prompt, maxTokens: n, sampling: p, stop: stop, stopTokenIDs: stopIDs)
}

private func collect(_ h: GenerationHandle) async -> (ids: [Int32], text: String, summary: GenerationSummary?) {
    var ids: [Int32] = []
    var text = ""
    var summary: GenerationSummary?
    for await e in h.events {
        switch e {
        case .token(let t):
            ids.append(t.id)
            text += t.text
        case .finished(let s):
            summary = s
            text += s.trailingText
        }
    }
    return (ids, text, summary)
}

private func prompts() -> [[Int32]] {
    // Different lengths so prefill chunks and decode rows mix in the same steps.
    var out: [[Int32]] = []
    for i in 0..<6 {
        var p: [Int32] = [FakeBackend.bos]
        for j in 0..<(5 + i * 23) { p.append(Int32(4 + (j * 7 + i * 13) % 59)) }
        out.append(p)
    }
    return out
}

@Suite struct EngineBatchingTests {
    @Test func greedyMatchesReferenceAlone() async throws {
        let backend = FakeBackend()
        let engine = Engine(backend: backend, limits: limits())
        engine.start()
        defer { engine.shutdown() }
        let prompt = prompts()[2]
        let r = await collect(try engine.submit(greedy(prompt, 20)))
        #expect(r.ids == FakeBackend.referenceGreedy(prompt: prompt, count: 20))
        #expect(r.summary?.reason == .length)
        #expect(r.summary?.promptTokens == prompt.count)
        #expect(r.summary?.completionTokens == 20)
        #expect(r.text == String(r.ids.map { Character(FakeBackend.text(of: $0)) }))
    }

    @Test func concurrentSequencesEqualTheirSoloRuns() async throws {
        let ps = prompts()
        // Solo runs, one engine each.
        var solo: [[Int32]] = []
        for p in ps {
            let e = Engine(backend: FakeBackend(), limits: limits())
            e.start()
            solo.append(await collect(try e.submit(greedy(p, 24))).ids)
            e.shutdown()
        }
        // All at once: submitted before start so they share the first steps.
        let backend = FakeBackend()
        let engine = Engine(backend: backend, limits: limits(step: 40))
        let handles = try ps.map { try engine.submit(greedy($0, 24)) }
        engine.start()
        defer { engine.shutdown() }
        var batched: [[Int32]] = []
        for h in handles { batched.append(await collect(h).ids) }
        #expect(batched == solo)
        for (p, ids) in zip(ps, batched) {
            #expect(ids == FakeBackend.referenceGreedy(prompt: p, count: 24))
        }
        let maxSeqs = backend.batches.map(\.sequences).max() ?? 0
        #expect(maxSeqs == ps.count)
        #expect(engine.snapshot.maxStepSequences == ps.count)
        // The step budget caps rows per step (decode rows + prefill chunks).
        #expect(backend.batches.allSatisfy { $0.rows <= 40 })
    }

    @Test func seededSamplingIsBatchInvariant() async throws {
        let ps = prompts()
        func request(_ p: [Int32], seed: UInt64) -> GenerationRequest {
            var s = SamplingParams()
            s.temperature = 0.9
            s.topK = 20
            s.seed = seed
            return GenerationRequest(promptTokens: p, maxTokens: 16, sampling: s)
        }
        var solo: [[Int32]] = []
        for (i, p) in ps.enumerated() {
            let e = Engine(backend: FakeBackend(), limits: limits())
            e.start()
            solo.append(await collect(try e.submit(request(p, seed: UInt64(100 + i)))).ids)
            e.shutdown()
        }
        let engine = Engine(backend: FakeBackend(), limits: limits())
        let handles = try ps.enumerated().map { try engine.submit(request($0.element, seed: UInt64(100 + $0.offset))) }
        engine.start()
        defer { engine.shutdown() }
        var batched: [[Int32]] = []
        for h in handles { batched.append(await collect(h).ids) }
        #expect(batched == solo)
    }

    @Test func logprobIsLogSoftmaxOfRawLogits() async throws {
        let engine = Engine(backend: FakeBackend(), limits: limits())
        engine.start()
        defer { engine.shutdown() }
        let prompt = prompts()[0]
        var req = greedy(prompt, 1)
        req.sampling.topLogprobs = 3
        var first: GeneratedToken?
        for await e in try engine.submit(req).events {
            if case .token(let t) = e { first = t }
        }
        let l = FakeBackend.logits(after: prompt).map(Double.init)
        let m = l.max()!
        let lse = m + Foundation.log(l.map { Foundation.exp($0 - m) }.reduce(0, +))
        let order = l.indices.sorted { l[$0] > l[$1] || (l[$0] == l[$1] && $0 < $1) }
        let token = try #require(first)
        #expect(Int(token.id) == order[0])
        #expect(abs(Double(token.logprob) - (l[order[0]] - lse)) < 1e-4)
        #expect(token.topLogprobs.map { Int($0.id) } == Array(order.prefix(3)))
    }
}

@Suite struct EngineStoppingTests {
    @Test func stopTokenIDEndsWithStopAndIsNotEmitted() async throws {
        let prompt = prompts()[1]
        let ref = FakeBackend.referenceGreedy(prompt: prompt, count: 10)
        let stopAt = ref[4]
        let firstIndex = ref.firstIndex(of: stopAt)!
        let engine = Engine(backend: FakeBackend(), limits: limits())
        engine.start()
        defer { engine.shutdown() }
        let r = await collect(try engine.submit(greedy(prompt, 10, stopIDs: [stopAt])))
        #expect(r.ids == Array(ref[..<firstIndex]))
        #expect(r.summary?.reason == .stop)
        #expect(r.summary?.completionTokens == firstIndex + 1)
    }

    @Test func stopStringTruncatesText() async throws {
        let prompt = prompts()[3]
        let ref = FakeBackend.referenceGreedy(prompt: prompt, count: 12)
        let fullText = ref.map { FakeBackend.text(of: $0) }.joined()
        let stop = String(Array(fullText)[5...6])
        let cut = fullText.range(of: stop)!.lowerBound
        let engine = Engine(backend: FakeBackend(), limits: limits())
        engine.start()
        defer { engine.shutdown() }
        let r = await collect(try engine.submit(greedy(prompt, 12, stop: [stop])))
        #expect(r.text == String(fullText[..<cut]))
        #expect(r.summary?.reason == .stop)
    }

    @Test func forwardFailureFinishesWithError() async throws {
        let backend = FakeBackend()
        backend.failNextForward = true
        let engine = Engine(backend: backend, limits: limits())
        engine.start()
        defer { engine.shutdown() }
        let r = await collect(try engine.submit(greedy(prompts()[0], 5)))
        #expect(r.summary?.reason == .error)
        #expect(r.summary?.errorMessage?.contains("injected failure") == true)
        // The engine keeps serving afterwards.
        let again = await collect(try engine.submit(greedy(prompts()[0], 5)))
        #expect(again.ids == FakeBackend.referenceGreedy(prompt: prompts()[0], count: 5))
    }

    /// A NaN in a row's logits fails that request with an error instead of streaming tokens drawn from a sanitized
    /// row; the tokens before it are delivered and the engine keeps serving.
    @Test func nonFiniteLogitsFinishWithError() async throws {
        let backend = FakeBackend()
        let prompt = prompts()[0]
        backend.nanLogitsAtLength = prompt.count + 2  // the third sampled token sees a NaN
        let engine = Engine(backend: backend, limits: limits())
        engine.start()
        defer { engine.shutdown() }
        let r = await collect(try engine.submit(greedy(prompt, 8)))
        #expect(r.summary?.reason == .error)
        #expect(r.summary?.errorMessage?.contains("non-finite logits") == true)
        #expect(r.ids == FakeBackend.referenceGreedy(prompt: prompt, count: 2))
        backend.nanLogitsAtLength = nil
        let again = await collect(try engine.submit(greedy(prompt, 5)))
        #expect(again.ids == FakeBackend.referenceGreedy(prompt: prompt, count: 5))
    }
}

@Suite struct EngineLimitTests {
    @Test func queueBoundRejectsWith503Error() throws {
        // Not started, so nothing is admitted: one request will take the free slot, two more may wait.
        let engine = Engine(backend: FakeBackend(), limits: limits(maxSequences: 1, maxQueue: 2))
        _ = try engine.submit(greedy([2, 5], 4))
        _ = try engine.submit(greedy([2, 6], 4))
        _ = try engine.submit(greedy([2, 7], 4))
        #expect(throws: EngineError.queueFull(limit: 2)) { try engine.submit(greedy([2, 8], 4)) }
        engine.shutdown()
    }

    @Test func contextAndBudgetAreChecked() throws {
        let engine = Engine(backend: FakeBackend(), limits: limits(kvTokens: 50, context: 40))
        #expect(throws: EngineError.exceedsContext(promptTokens: 3, maxTokens: 38, context: 40)) {
            try engine.submit(greedy([2, 5, 6], 38))
        }
        let engine2 = Engine(backend: FakeBackend(), limits: limits(kvTokens: 20, context: 40))
        #expect(throws: EngineError.exceedsKVBudget(neededBytes: 23 * FakeBackend.bytesPerToken, limitBytes: 2000)) {
            try engine2.submit(greedy([2, 5, 6], 20))
        }
        #expect(throws: EngineError.invalidRequest("token id 64 is outside the vocabulary (0..<64)")) {
            try engine.submit(greedy([2, 64], 2))
        }
        engine.shutdown()
        engine2.shutdown()
    }

    @Test func maxSequencesLimitsEachStep() async throws {
        let backend = FakeBackend()
        let engine = Engine(backend: backend, limits: limits(maxSequences: 2))
        let ps = prompts()
        let handles = try ps.map { try engine.submit(greedy($0, 6)) }
        engine.start()
        defer { engine.shutdown() }
        for (h, p) in zip(handles, ps) {
            #expect(await collect(h).ids == FakeBackend.referenceGreedy(prompt: p, count: 6))
        }
        #expect(backend.batches.allSatisfy { $0.sequences <= 2 })
        #expect(backend.batches.contains { $0.sequences == 2 })
    }

    @Test func kvBudgetLimitsAdmission() async throws {
        let backend = FakeBackend()
        // Each request reserves prompt + 8 tokens (37, 60 and 83 here); a budget of 88 fits any one of them but
        // no two at once.
        let ps = Array(prompts()[1...3])
        let needs = ps.map { $0.count + 8 }
        #expect(needs == [37, 60, 83])
        let engine = Engine(backend: backend, limits: limits(kvTokens: 88))
        let handles = try ps.map { try engine.submit(greedy($0, 8)) }
        engine.start()
        defer { engine.shutdown() }
        for (h, p) in zip(handles, ps) {
            #expect(await collect(h).ids == FakeBackend.referenceGreedy(prompt: p, count: 8))
        }
        #expect(backend.batches.allSatisfy { $0.sequences == 1 })
    }
}

/// A thread-safe boolean.
final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var v = false
    func set() { lock.lock(); v = true; lock.unlock() }
    var value: Bool { lock.lock(); defer { lock.unlock() }; return v }
}

@Suite struct EngineCancellationTests {
    @Test func droppedConsumerFreesTheSequence() async throws {
        let backend = FakeBackend()
        // Each forward step needs a signal, so the engine cannot run ahead of the test.
        backend.gate = DispatchSemaphore(value: 0)
        let engine = Engine(backend: backend, limits: limits(context: 8000))
        engine.start()
        let handle = try engine.submit(greedy(prompts()[0], 7000))
        let consumerDone = Flag()
        let consumer = Task {
            var n = 0
            for await e in handle.events {
                if case .token = e { n += 1 }
                if n == 3 { break }  // stop iterating: like a client that went away
            }
            consumerDone.set()
            return n
        }
        // Allow at most 1000 steps; without cancellation the sequence would need 7000.
        var released = false
        for _ in 0..<1000 {
            backend.gate?.signal()
            try await Task.sleep(for: .milliseconds(2))
            let s = engine.snapshot
            if consumerDone.value && s.running == 0 && s.kvBytesUsed == 0 {
                released = true
                break
            }
        }
        #expect(await consumer.value == 3)
        #expect(released)
        #expect(backend.batches.count < 1000)
        // And the engine still serves.
        backend.openGate()
        let r = await collect(try engine.submit(greedy(prompts()[1], 4)))
        #expect(r.ids == FakeBackend.referenceGreedy(prompt: prompts()[1], count: 4))
        engine.shutdown()
    }

    @Test func explicitCancelFinishesWithCancelled() async throws {
        let engine = Engine(backend: FakeBackend(), limits: limits(context: 8000))
        let handle = try engine.submit(greedy(prompts()[0], 7000))
        engine.cancel(handle.id)
        engine.start()
        defer { engine.shutdown() }
        let r = await collect(handle)
        #expect(r.summary?.reason == .cancelled)
        #expect(r.summary?.completionTokens == 0)
    }
}
