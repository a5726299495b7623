// Engine: continuous batching on one dedicated compute thread (never a NIO event loop).
//
// Each step: apply cancellations, admit waiting requests (FIFO) while the sequence limit and the kv_cache budget
// allow, plan rows (StepPlanner: one decode row per decoding sequence, prefill chunks after), build ONE
// StepBatch, call backend.forward once, then sample, detokenize and stop-check every sequence whose last row
// produced logits. Requests join between steps. The heartbeat closure runs once per loop iteration (and at
// least every `idleWakeInterval` while idle), so a forward pass that hangs stops the heartbeat. Steps are kept
// short so that a healthy engine beats often: prefill chunks are capped (`maxPrefillTokensPerStep`) and sized
// from the measured forward time per row so a step takes about `stepTimeTarget` seconds.
//
// Threading: `lock` guards the wait queue, cancellations, limits and the snapshot; everything else (active
// sequences, samplers, caches) is touched only by the compute thread.

import Foundation
import Runtime

/// Runs generation for many sequences with continuous batching.
public final class Engine: @unchecked Sendable {
    public let backend: any InferenceBackend
    private let metrics: DaemonMetrics?
    private let heartbeat: (@Sendable () -> Void)?
    private let idleWakeInterval: TimeInterval

    private let lock = NSCondition()
    private var limits: EngineLimits
    private var waiting: [PendingSequence] = []
    private var cancelled: Set<UInt64> = []
    private var nextID: UInt64 = 1
    private var accepting = true
    private var stopRequested = false
    private var snapshotValue = EngineSnapshot()
    private var thread: Thread?
    private var threadDone = false
    private var loadObserver: (@Sendable (Bool) -> Void)?
    private var reportedBusy = false

    // Compute-thread state.
    private var active: [ActiveSequence] = []
    private var kvReserved = 0
    /// Forward seconds per row, estimated from the steps that prefilled (nil until one has run).
    private var secondsPerRow: Double?

    /// Prefill rows of the first step under a `stepTimeTarget`, before any step has been timed.
    public static let probePrefillRows = 32

    /// - Parameters:
    ///   - backend: the model.
    ///   - limits: admission limits (see ``EngineLimits``).
    ///   - metrics: where to record TTFT, latencies, batch sizes and gauges (optional).
    ///   - heartbeat: called from the compute thread after every step and periodically while idle (the
    ///     systemd watchdog ping).
    ///   - idleWakeInterval: longest sleep while idle, seconds.
    public init(
        backend: any InferenceBackend, limits: EngineLimits, metrics: DaemonMetrics? = nil,
        heartbeat: (@Sendable () -> Void)? = nil, idleWakeInterval: TimeInterval = 1
    ) {
        self.backend = backend
        self.limits = limits
        self.metrics = metrics
        self.heartbeat = heartbeat
        self.idleWakeInterval = idleWakeInterval
        snapshotValue.kvBytesLimit = limits.kvCacheBytes
    }

    // MARK: - Public API (any thread)

    /// Starts the compute thread. Requests submitted before `start()` all join the first step.
    public func start() {
        lock.lock()
        defer { lock.unlock() }
        guard thread == nil else { return }
        let t = Thread { [self] in self.runLoop() }
        t.name = "lorad-engine"
        t.stackSize = 16 << 20
        thread = t
        t.start()
    }

    /// Queues a sequence. Validates it against the context and kv_cache budget and the wait-queue bound.
    /// - Throws: ``EngineError``.
    public func submit(_ request: GenerationRequest) throws -> GenerationHandle {
        guard !request.promptTokens.isEmpty else { throw EngineError.invalidRequest("the prompt is empty") }
        guard request.maxTokens >= 1 else { throw EngineError.invalidRequest("max_tokens must be at least 1") }
        let vocab = backend.vocabSize
        if let bad = request.promptTokens.first(where: { $0 < 0 || Int($0) >= vocab }) {
            throw EngineError.invalidRequest("token id \(bad) is outside the vocabulary (0..<\(vocab))")
        }
        lock.lock()
        defer { lock.unlock() }
        let l = limits
        let (total, overflow) = request.promptTokens.count.addingReportingOverflow(request.maxTokens)
        if overflow || total > l.contextSize {
            throw EngineError.exceedsContext(
                promptTokens: request.promptTokens.count, maxTokens: request.maxTokens, context: l.contextSize)
        }
        let need = total.multipliedReportingOverflow(by: backend.kvBytesPerToken)
        if need.overflow || need.partialValue > l.kvCacheBytes {
            throw EngineError.exceedsKVBudget(
                neededBytes: need.overflow ? Int.max : need.partialValue, limitBytes: l.kvCacheBytes)
        }
        guard accepting else { throw EngineError.shuttingDown }
        // The bound is on requests that must wait: ones a free slot will take at the next step do not count.
        let freeSlots = max(l.maxSequences - snapshotValue.running, 0)
        guard waiting.count < l.maxQueue + freeSlots else { throw EngineError.queueFull(limit: l.maxQueue) }
        let id = nextID
        nextID += 1
        let (stream, continuation) = AsyncStream<GenerationEvent>.makeStream(bufferingPolicy: .unbounded)
        continuation.onTermination = { [weak self] termination in
            if case .cancelled = termination { self?.cancel(id) }
        }
        waiting.append(
            PendingSequence(
                id: id, request: request, capacity: total, reservedBytes: need.partialValue,
                continuation: continuation, submitted: .now))
        snapshotValue.waiting = waiting.count
        noteLoadLocked()
        lock.signal()
        // Cancelling a finished id is a no-op, so releasing the iterator after `.finished` costs nothing.
        return GenerationHandle(
            id: id, events: GenerationEvents(stream: stream, onAbandon: { [weak self] in self?.cancel(id) }))
    }

    /// Cancels a sequence at the next step boundary (no-op for unknown or finished ids).
    public func cancel(_ id: UInt64) {
        lock.lock()
        cancelled.insert(id)
        lock.signal()
        lock.unlock()
    }

    /// Calls `observer(true)` when the engine goes from idle (no sequence running or waiting) to busy and
    /// `observer(false)` when it goes back, in that order, and once at once with the current state; nil removes it.
    /// It runs under the engine's lock, on the submitting or the compute thread: it must be quick and must not call
    /// the engine. The training governor uses it to pause training while serving has work.
    public func observeLoad(_ observer: (@Sendable (Bool) -> Void)?) {
        lock.lock()
        defer { lock.unlock() }
        loadObserver = observer
        reportedBusy = snapshotValue.running > 0 || !waiting.isEmpty
        observer?(reportedBusy)
    }

    /// Reports a change of busy/idle to the load observer (call with `lock` held, after updating the snapshot).
    private func noteLoadLocked() {
        let busy = snapshotValue.running > 0 || !waiting.isEmpty
        guard busy != reportedBusy else { return }
        reportedBusy = busy
        loadObserver?(busy)
    }

    /// Current load.
    public var snapshot: EngineSnapshot {
        lock.lock()
        defer { lock.unlock() }
        return snapshotValue
    }

    /// Current limits.
    public var currentLimits: EngineLimits {
        lock.lock()
        defer { lock.unlock() }
        return limits
    }

    /// Applies new limits from the next step on (`contextSize` changes apply to new submissions only).
    public func update(limits newLimits: EngineLimits) {
        lock.lock()
        limits = newLimits
        snapshotValue.kvBytesLimit = newLimits.kvCacheBytes
        lock.signal()
        lock.unlock()
    }

    /// Stops admitting new submissions (they fail with `.shuttingDown`); queued and running ones continue.
    public func stopAccepting() {
        lock.lock()
        accepting = false
        lock.unlock()
    }

    /// Whether nothing is queued or running.
    public var isIdle: Bool {
        let s = snapshot
        return s.running == 0 && s.waiting == 0
    }

    /// Cancels everything queued or running.
    public func cancelAll() {
        lock.lock()
        for p in waiting { cancelled.insert(p.id) }
        for id in snapshotActiveIDs { cancelled.insert(id) }
        lock.signal()
        lock.unlock()
    }

    /// Cancels all work, stops the compute thread and waits for it to exit.
    public func shutdown() {
        lock.lock()
        accepting = false
        stopRequested = true
        lock.signal()
        let started = thread != nil
        while started && !threadDone { lock.wait() }
        lock.unlock()
        if !started { failWaiting(reason: .cancelled) }
    }

    // MARK: - Compute thread

    private var snapshotActiveIDs: [UInt64] = []  // guarded by lock; copy of active ids for cancelAll

    private func runLoop() {
        while true {
            lock.lock()
            while !stopRequested && cancelled.isEmpty && active.isEmpty
                && !(waiting.count > 0 && canAdmitLocked())
            {
                lock.unlock()
                heartbeat?()
                lock.lock()
                if stopRequested || !cancelled.isEmpty || !active.isEmpty || (waiting.count > 0 && canAdmitLocked()) {
                    break
                }
                _ = lock.wait(until: Date(timeIntervalSinceNow: idleWakeInterval))
            }
            if stopRequested {
                lock.unlock()
                break
            }
            let cancels = cancelled
            cancelled.removeAll()
            let l = limits
            // Drop cancelled waiting requests while holding the lock.
            var cancelledWaiting: [PendingSequence] = []
            if !cancels.isEmpty {
                cancelledWaiting = waiting.filter { cancels.contains($0.id) }
                waiting.removeAll { cancels.contains($0.id) }
            }
            // Admission: FIFO; the head blocks the line so large requests are not starved.
            var admitted: [PendingSequence] = []
            var unfit: [PendingSequence] = []
            // A reload may shrink the budget below what a queued request needs; it could never run.
            while let head = waiting.first, active.isEmpty, head.reservedBytes > l.kvCacheBytes {
                unfit.append(waiting.removeFirst())
            }
            while let head = waiting.first, active.count + admitted.count < l.maxSequences,
                kvReserved + admitted.reduce(0, { $0 + $1.reservedBytes }) + head.reservedBytes <= l.kvCacheBytes
            {
                admitted.append(waiting.removeFirst())
            }
            snapshotValue.running = active.count + admitted.count
            snapshotValue.waiting = waiting.count
            noteLoadLocked()
            lock.unlock()

            for p in unfit {
                p.continuation.yield(
                    .finished(
                        GenerationSummary(
                            reason: .error, trailingText: "", promptTokens: p.request.promptTokens.count,
                            completionTokens: 0,
                            errorMessage: "the request needs \(p.reservedBytes) bytes of kv_cache, more than the "
                                + "current budget of \(l.kvCacheBytes) bytes")))
                p.continuation.finish()
            }
            for p in cancelledWaiting {
                p.continuation.yield(
                    .finished(
                        GenerationSummary(
                            reason: .cancelled, trailingText: "", promptTokens: p.request.promptTokens.count,
                            completionTokens: 0)))
                p.continuation.finish()
            }
            for seq in active where cancels.contains(seq.id) {
                _ = seq.machine.cancel()
                finish(seq, reason: .cancelled, trailing: "")
            }
            active.removeAll { $0.machine.isTerminal }
            for p in admitted { admit(p) }
            active.removeAll { $0.machine.isTerminal }

            if !active.isEmpty {
                step(limits: l)
                active.removeAll { $0.machine.isTerminal }
            }
            publishSnapshot()
            heartbeat?()
        }
        // Shutdown: everything still known is cancelled.
        for seq in active {
            _ = seq.machine.cancel()
            finish(seq, reason: .cancelled, trailing: "")
        }
        active.removeAll()
        kvReserved = 0
        failWaiting(reason: .cancelled)
        publishSnapshot()
        lock.lock()
        threadDone = true
        lock.broadcast()
        lock.unlock()
    }

    private func canAdmitLocked() -> Bool {
        guard let head = waiting.first else { return false }
        if active.isEmpty { return true }  // admits the head, or rejects it if it can never fit
        return active.count < limits.maxSequences && kvReserved + head.reservedBytes <= limits.kvCacheBytes
    }

    private func failWaiting(reason: FinishReason) {
        lock.lock()
        let pending = waiting
        waiting.removeAll()
        snapshotValue.waiting = 0
        noteLoadLocked()
        lock.unlock()
        for p in pending {
            p.continuation.yield(
                .finished(
                    GenerationSummary(
                        reason: reason, trailingText: "", promptTokens: p.request.promptTokens.count,
                        completionTokens: 0)))
            p.continuation.finish()
        }
    }

    private func admit(_ p: PendingSequence) {
        let seq = ActiveSequence(pending: p, detokenizer: backend.makeDetokenizer())
        _ = seq.machine.admit()
        do {
            seq.cache = try backend.makeCache(capacity: p.capacity)
        } catch {
            _ = seq.machine.fail()
            finish(seq, reason: .error, trailing: "", error: "kv_cache allocation failed: \(error)")
            return
        }
        kvReserved += seq.reservedBytes
        active.append(seq)
        metrics?.recordPromptTokens(p.request.promptTokens.count)
    }

    /// Prompt rows the next step may prefill: the configured cap, cut so the step fits `stepTimeTarget` at the
    /// estimated seconds per row (decode rows take their share first).
    private func prefillCap(_ l: EngineLimits, decodeRows: Int) -> Int {
        var cap = l.maxPrefillTokensPerStep
        if let target = l.stepTimeTarget {
            if let perRow = secondsPerRow, perRow > 0 {
                let rows = Int(min(target / perRow, 1e9)) - decodeRows
                cap = min(cap, max(rows, StepPlanner.minimumPrefillChunk))
            } else {
                cap = min(cap, Self.probePrefillRows)
            }
        }
        return max(cap, 1)
    }

    /// Folds one prefill step's time into the estimate: a slower step counts at once (the machine got busier, or
    /// attention grew with the position), a faster one only gradually.
    private func recordStepTime(_ elapsed: Duration, rows: Int) {
        guard rows > 0 else { return }
        let measured = seconds(elapsed) / Double(rows)
        guard measured.isFinite, measured >= 0 else { return }
        if let old = secondsPerRow {
            secondsPerRow = max(measured, 0.7 * old + 0.3 * measured)
        } else {
            secondsPerRow = measured
        }
    }

    private func step(limits l: EngineLimits) {
        let entries = active.map {
            PlannerEntry(id: $0.id, decoding: $0.machine.state == .decode, remainingPrompt: $0.machine.remainingPrompt)
        }
        let decodeRows = entries.reduce(0) { $0 + ($1.decoding ? 1 : 0) }
        let plan = StepPlanner.plan(
            entries, tokenBudget: l.stepTokenBudget, maxPrefillTokens: prefillCap(l, decodeRows: decodeRows))
        guard !plan.isEmpty else { return }
        var byID: [UInt64: ActiveSequence] = [:]
        for s in active { byID[s.id] = s }

        var batch = StepBatch()
        var caches: [any SequenceCache] = []
        var members: [(seq: ActiveSequence, rows: Int, wantsLogits: Bool)] = []
        for planned in plan {
            guard let seq = byID[planned.id], let cache = seq.cache else { continue }
            let slot = caches.count
            caches.append(cache)
            let start = cache.count
            if seq.machine.state == .decode {
                batch.append(
                    token: seq.lastToken, position: start, slot: slot, wantLogits: true, adapters: seq.request.adapters)
                members.append((seq, 1, true))
            } else {
                let prompt = seq.request.promptTokens
                let end = start + planned.rows
                for pos in start..<end {
                    batch.append(
                        token: prompt[pos], position: pos, slot: slot, wantLogits: pos == prompt.count - 1,
                        adapters: seq.request.adapters)
                }
                members.append((seq, planned.rows, end == prompt.count))
            }
        }
        guard batch.count > 0 else { return }
        metrics?.recordStep(sequences: members.count, tokens: batch.count)
        lock.lock()
        snapshotValue.steps += 1
        snapshotValue.maxStepSequences = max(snapshotValue.maxStepSequences, members.count)
        lock.unlock()

        var logits: [Float]
        let started = ContinuousClock.now
        do {
            logits = try backend.forward(batch, caches: caches)
        } catch {
            for m in members {
                _ = m.seq.machine.fail()
                finish(m.seq, reason: .error, trailing: "", error: "forward pass failed: \(error)")
            }
            return
        }
        let vocab = backend.vocabSize
        let nOut = members.reduce(0) { $0 + ($1.wantsLogits ? 1 : 0) }
        guard logits.count == nOut * vocab else {
            for m in members {
                _ = m.seq.machine.fail()
                finish(
                    m.seq, reason: .error, trailing: "",
                    error: "forward pass returned \(logits.count) logits, expected \(nOut) x \(vocab)")
            }
            return
        }
        let now = ContinuousClock.now
        if members.contains(where: { $0.seq.machine.state != .decode }) {
            recordStepTime(now - started, rows: batch.count)
        }
        for m in members where m.seq.machine.state != .decode {
            _ = m.seq.machine.prefilled(m.rows)
        }
        // Sample every row on the compute threads (each sequence owns its sampler and its logits row), then hand
        // the tokens out in order on this thread.
        let sampling = members.filter(\.wantsLogits).map(\.seq)
        var sampled = [SampledToken?](repeating: nil, count: sampling.count)
        logits.withUnsafeMutableBufferPointer { all in
            sampled.withUnsafeMutableBufferPointer { out in
                backend.parallelFor(sampling.count) { row in
                    let rowBuffer = UnsafeMutableBufferPointer(rebasing: all[(row * vocab)..<((row + 1) * vocab)])
                    out[row] = sampling[row].sampler.sample(rowBuffer, history: sampling[row].history)
                }
            }
        }
        for (seq, token) in zip(sampling, sampled) {
            guard !token!.nonFiniteLogits else {
                // Float32 overflowed somewhere in this row's forward pass (typically an adapter with an absurd
                // scale): fail the request rather than stream tokens drawn from garbage.
                let mix = seq.request.adapters?.entries.map { "\($0.name)@\($0.version)" } ?? []
                _ = seq.machine.fail()
                finish(
                    seq, reason: .error, trailing: "",
                    error: "the forward pass produced non-finite logits (NaN or infinity)"
                        + (mix.isEmpty ? "" : " with adapter \(mix.joined(separator: ", "))"))
                continue
            }
            handleSampled(seq, token!, now: now)
        }
        metrics?.recordGeneratedTokens(sampling.count)
    }

    private func handleSampled(_ seq: ActiveSequence, _ sampled: SampledToken, now: ContinuousClock.Instant) {
        if let last = seq.lastTokenAt {
            metrics?.recordInterTokenLatency(seconds: seconds(now - last))
        } else {
            metrics?.recordTimeToFirstToken(seconds: seconds(now - seq.submitted))
        }
        seq.lastTokenAt = now
        let id = sampled.id
        let outcome: SampleOutcome
        var text = ""
        if seq.request.stopTokenIDs.contains(id) || (!seq.request.ignoreEOS && backend.isEndOfGeneration(id)) {
            outcome = .stopToken
        } else {
            let piece = seq.detokenizer.push(id)
            if seq.stopMatcher != nil {
                let r = seq.stopMatcher!.push(piece)
                text = r.emit
                outcome = r.stopped ? .stopString : .normal
            } else {
                text = piece
                outcome = .normal
            }
        }
        seq.history.append(id)
        seq.lastToken = id
        let token = GeneratedToken(
            id: id, text: text, logprob: sampled.logprob, topLogprobs: sampled.topLogprobs)
        switch seq.machine.sampled(outcome) {
        case .emit:
            if case .terminated = seq.continuation.yield(.token(token)) {
                _ = seq.machine.cancel()
                finish(seq, reason: .cancelled, trailing: "")
            }
        case .emitAndFinish(let reason):
            seq.continuation.yield(.token(token))
            finish(seq, reason: reason, trailing: reason == .length ? flushText(seq) : "")
        case .finish(let reason):
            finish(seq, reason: reason, trailing: flushText(seq))
        default:
            break
        }
    }

    /// Text still pending at the end: incomplete UTF-8 and a held-back possible stop-string prefix.
    private func flushText(_ seq: ActiveSequence) -> String {
        let rest = seq.detokenizer.finish()
        guard seq.stopMatcher != nil else { return rest }
        let r = seq.stopMatcher!.push(rest)
        return r.stopped ? r.emit : r.emit + seq.stopMatcher!.finish()
    }

    private func finish(_ seq: ActiveSequence, reason: FinishReason, trailing: String, error: String? = nil) {
        if seq.cache != nil {
            kvReserved -= seq.reservedBytes
            seq.cache = nil
        }
        seq.continuation.yield(
            .finished(
                GenerationSummary(
                    reason: reason, trailingText: trailing, promptTokens: seq.request.promptTokens.count,
                    completionTokens: seq.machine.generated, errorMessage: error)))
        seq.continuation.finish()
    }

    private func publishSnapshot() {
        let running = active.filter { !$0.machine.isTerminal }
        let used = running.reduce(0) { $0 + max($1.reservedBytes, $1.cache?.byteCount ?? 0) }
        lock.lock()
        snapshotValue.running = running.count
        snapshotValue.waiting = waiting.count
        snapshotValue.kvBytesUsed = used
        snapshotValue.kvBytesLimit = limits.kvCacheBytes
        snapshotActiveIDs = running.map(\.id)
        let s = snapshotValue
        noteLoadLocked()
        lock.unlock()
        metrics?.setQueue(depth: s.waiting, running: s.running, kvUsed: s.kvBytesUsed, kvLimit: s.kvBytesLimit)
    }

    private func seconds(_ d: Duration) -> Double {
        let c = d.components
        return Double(c.seconds) + Double(c.attoseconds) * 1e-18
    }
}

/// A request waiting for admission.
private struct PendingSequence {
    let id: UInt64
    let request: GenerationRequest
    /// kv_cache capacity in tokens (prompt + max_tokens).
    let capacity: Int
    let reservedBytes: Int
    let continuation: AsyncStream<GenerationEvent>.Continuation
    let submitted: ContinuousClock.Instant
}

/// A sequence in prefill or decode; owned by the compute thread.
private final class ActiveSequence {
    let id: UInt64
    let request: GenerationRequest
    let reservedBytes: Int
    let continuation: AsyncStream<GenerationEvent>.Continuation
    let submitted: ContinuousClock.Instant
    var machine: SequenceStateMachine
    var cache: (any SequenceCache)?
    var sampler: Sampler
    var detokenizer: any IncrementalDetokenizer
    var stopMatcher: StopStringMatcher?
    /// Prompt + sampled ids (penalties look at both).
    var history: [Int32]
    var lastToken: Int32 = 0
    var lastTokenAt: ContinuousClock.Instant?

    init(pending p: PendingSequence, detokenizer: any IncrementalDetokenizer) {
        id = p.id
        request = p.request
        reservedBytes = p.reservedBytes
        continuation = p.continuation
        submitted = p.submitted
        machine = SequenceStateMachine(promptLength: p.request.promptTokens.count, maxTokens: p.request.maxTokens)
        sampler = Sampler(params: p.request.sampling)
        self.detokenizer = detokenizer
        stopMatcher = p.request.stop.isEmpty ? nil : StopStringMatcher(stops: p.request.stop)
        history = p.request.promptTokens
        history.reserveCapacity(p.request.promptTokens.count + p.request.maxTokens)
    }
}
