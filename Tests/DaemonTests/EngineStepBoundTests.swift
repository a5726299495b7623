// Bounded steps: a long prompt is prefilled in chunks (a row cap per step, and chunks sized from the measured time
// per row to meet a time target), so the heartbeat that runs between steps keeps beating during a long prefill.
// Chunking must not change what is generated: with the real model, a prompt prefilled in small chunks gives the
// same greedy tokens and the same logprobs as the same prompt prefilled in one step.

import Daemon
import Foundation
import Runtime
import Testing

private func greedy(_ prompt: [Int32], _ n: Int, topLogprobs: Int = 0) -> GenerationRequest {
    var p = SamplingParams()
    p.temperature = 0
    p.topLogprobs = topLogprobs
    return GenerationRequest(promptTokens: prompt, maxTokens: n, sampling: p)
}

private func tokens(_ h: GenerationHandle) async -> (tokens: [GeneratedToken], summary: GenerationSummary?) {
    var out: [GeneratedToken] = []
    var summary: GenerationSummary?
    for await e in h.events {
        switch e {
        case .token(let t): out.append(t)
        case .finished(let s): summary = s
        }
    }
    return (out, summary)
}

/// A fake prompt of `n` tokens (BOS first).
private func longPrompt(_ n: Int) -> [Int32] {
    [FakeBackend.bos] + (1..<n).map { Int32(4 + ($0 * 11) % 59) }
}

/// Counts heartbeats.
private final class Beats: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func beat() { lock.withLock { n += 1 } }
    var count: Int { lock.withLock { n } }
}

@Suite struct EngineStepBoundTests {
    @Test("maxPrefillTokensPerStep splits a long prompt into chunks of at most that many rows; output unchanged")
    func prefillCapSplitsLongPrompts() async throws {
        let backend = FakeBackend()
        let beats = Beats()
        let limits = EngineLimits(
            maxSequences: 4, kvCacheBytes: 10_000 * FakeBackend.bytesPerToken, maxQueue: 8, stepTokenBudget: 512,
            contextSize: 4096, maxPrefillTokensPerStep: 40)
        let engine = Engine(backend: backend, limits: limits, heartbeat: { beats.beat() })
        engine.start()
        defer { engine.shutdown() }
        let prompt = longPrompt(300)
        let r = await tokens(try engine.submit(greedy(prompt, 5)))
        #expect(r.tokens.map(\.id) == FakeBackend.referenceGreedy(prompt: prompt, count: 5))
        #expect(r.summary?.reason == .length)
        // 300 prompt rows in chunks of 40 (8 steps, the last of 20 rows), then 4 decode steps for tokens 2...5.
        let rows = backend.batches.map(\.rows)
        #expect(rows == [40, 40, 40, 40, 40, 40, 40, 20, 1, 1, 1, 1])
        #expect(beats.count >= rows.count, "a heartbeat after every step")
    }

    @Test("stepTimeTarget sizes prefill chunks from the measured time per row (probe chunk first)")
    func timeTargetSizesChunks() async throws {
        let backend = FakeBackend()
        backend.secondsPerRow = 0.002  // a 20-row step takes at least 40 ms
        let limits = EngineLimits(
            maxSequences: 4, kvCacheBytes: 10_000 * FakeBackend.bytesPerToken, maxQueue: 8, stepTokenBudget: 512,
            contextSize: 4096, stepTimeTarget: 0.04)
        let engine = Engine(backend: backend, limits: limits)
        engine.start()
        defer { engine.shutdown() }
        let prompt = longPrompt(200)
        let r = await tokens(try engine.submit(greedy(prompt, 3)))
        #expect(r.tokens.map(\.id) == FakeBackend.referenceGreedy(prompt: prompt, count: 3))
        let prefill = backend.batches.map(\.rows).dropLast(2)  // the last two steps decode tokens 2 and 3
        #expect(prefill.reduce(0, +) == 200)
        // Nothing was measured before the first step: it takes the probe size.
        #expect(prefill.first == Engine.probePrefillRows)
        // Every later step was planned from a measured time per row of at least 2 ms (sleeping never takes less
        // than asked), so it holds at most 0.04 s / 2 ms = 20 rows; the minimum chunk is 16.
        for rows in prefill.dropFirst().dropLast() {
            #expect(rows >= StepPlanner.minimumPrefillChunk && rows <= 20, "\(Array(prefill))")
        }
    }

    @Test("a prompt prefilled in chunks of 24 rows gives the tokens and logprobs of one 1-step prefill (real model)")
    func chunkedPrefillMatchesUnchunked() async throws {
        let backend = try RuntimeBackend(path: try Paths.model(), options: ModelOptions(threads: 2))
        let text = String(
            repeating: "The river flows past the old mill, where the miller counts his sacks of grain and sings. ",
            count: 12)
        let prompt = backend.encode(text, addBOS: true, parseSpecial: false)
        #expect(prompt.count > 200, "\(prompt.count) prompt tokens")
        func run(maxPrefill: Int) async throws -> (tokens: [GeneratedToken], steps: Int) {
            let limits = EngineLimits(
                maxSequences: 1, kvCacheBytes: 1 << 30, maxQueue: 1, stepTokenBudget: 4096, contextSize: 4096,
                maxPrefillTokensPerStep: maxPrefill)
            let engine = Engine(backend: backend, limits: limits)
            engine.start()
            defer { engine.shutdown() }
            let r = await tokens(try engine.submit(greedy(prompt, 8, topLogprobs: 5)))
            #expect(r.summary?.reason == .length || r.summary?.reason == .stop)
            return (r.tokens, engine.snapshot.steps)
        }
        let whole = try await run(maxPrefill: .max)
        let chunked = try await run(maxPrefill: 24)
        let chunks = (prompt.count + 23) / 24
        #expect(whole.steps == whole.tokens.count, "one prefill step, then one step per further token")
        #expect(chunked.steps == chunks + chunked.tokens.count - 1)
        #expect(!whole.tokens.isEmpty)
        #expect(chunked.tokens.map(\.id) == whole.tokens.map(\.id))
        // Bitwise: every row's arithmetic is the same whichever step it is in.
        #expect(chunked.tokens.map(\.logprob) == whole.tokens.map(\.logprob))
        #expect(chunked.tokens.map(\.topLogprobs) == whole.tokens.map(\.topLogprobs))
    }
}
