// ContinualLoop: adapters that learn from their feedback by themselves. Every few seconds (and at once when
// feedback arrives or a job ends) it looks at each enabled training policy; when the policy's trigger fires
// (`TriggerState.reason`) it creates an ordinary fine-tuning job, visible in the jobs API, that
//
//   - starts from the adapter's current version (a fresh adapter when the name has none, decision #9),
//   - trains on the feedback that arrived since the data of the job that made the current version, plus a replay sample of older
//     feedback (`replay_fraction` of the job's examples; against forgetting, Robins 1995, "Catastrophic
//     forgetting, rehearsal and pseudorehearsal"),
//   - keeps a stable held-out split of the adapter's feedback out of training (`HoldoutSplit` on the served prompt,
//     `holdout_fraction`: all feedback on one prompt falls on one side, so a prompt trained on is never also
//     measured, and both halves of a pair stay together) and is gated on it and on the forgetting probe before it
//     publishes (decisions #6, #10),
//   - trains SFT on thumbs-up answers and corrections and, with `method: auto`, DPO as well where there are at
//     least 8 pairs (a correction against the served answer; a thumbs-up and a thumbs-down answer to one prompt).
//
// The job's `metadata` carries `trigger` (why), `continual` (the adapter), `feedback_from`/`feedback_through` (the
// feedback `seq` range it learned from) and the example counts; the loop's own state is read back from there
// (ContinualStore.swift), so a crash between two steps never loses a trigger nor starts one twice.

import Foundation
import Logging
import Runtime
import Train

/// The training data of one continual job, built from an adapter's feedback (see the file comment).
public struct ContinualData: Sendable {
    /// What the job trains on: new items, then the replayed ones (SFT items have no `rejected`).
    public var train: [FeedbackItem]
    /// Held-out items for the gate: preferred answers (no `rejected`) and pairs.
    public var heldOut: [FeedbackItem]
    /// Training examples from feedback newer than the last published job's.
    public var newExamples: Int
    /// Training examples replayed from older feedback.
    public var replayExamples: Int
    /// Training examples that are DPO pairs.
    public var pairs: Int
    /// "supervised", or "dpo" when the job trains pairs (with SFT items too under `method: auto`).
    public var methodType: String
    /// Why no job can be made from this feedback (nil: a job can be made).
    public var waiting: String?

    /// Most held-out answers (and, separately, pairs) a gate measures: the newest ones.
    public static let maxHeldOut = 200

    /// The key that decides a feedback item's side of the held-out split: its completion's served prompt (token ids,
    /// `[n_prompt]`) when the completion is known, so every answer, correction and thumb on one prompt lands on the
    /// same side; otherwise the feedback id.
    public static func splitKey(_ feedback: FeedbackRecord, prompt: [Int32]?) -> String {
        guard let prompt, !prompt.isEmpty else { return "feedback:" + feedback.id }
        return "prompt:" + prompt.map { String($0) }.joined(separator: ",")
    }

    /// Splits `feedback` (oldest first, every item of the adapter up to the trigger) into held-out and training
    /// sides by `HoldoutSplit` on `splitKey(record)` (see ``splitKey(_:prompt:)``), then the training side into new
    /// (`seq > publishedThrough`) and replay pool, and draws the replay sample. `toItems(feedback, dpo)` turns
    /// feedback into SFT items (`dpo` false) or pairs (`dpo` true).
    /// The replay sample is drawn by `seed` (SplitMix64), so a job re-created from the same state has the same data.
    /// - Throws: what `toItems` throws.
    public static func build(
        feedback: [SequencedFeedback], publishedThrough: Int, policy: TrainingPolicy, seed: UInt64,
        splitKey: (FeedbackRecord) -> String,
        toItems: ([FeedbackRecord], Bool) async throws -> [FeedbackItem]
    ) async throws -> ContinualData {
        var heldOutFB: [FeedbackRecord] = []
        var newFB: [FeedbackRecord] = []
        var oldFB: [FeedbackRecord] = []
        var keys = (heldOut: Set<String>(), training: Set<String>())
        var newHeldOut = 0
        for f in feedback {
            let key = splitKey(f.record)
            if HoldoutSplit.isHeldOut(key, fraction: policy.holdoutFraction) {
                heldOutFB.append(f.record)
                keys.heldOut.insert(key)
                if f.seq > publishedThrough { newHeldOut += 1 }
                continue
            }
            keys.training.insert(key)
            if f.seq > publishedThrough {
                newFB.append(f.record)
            } else {
                oldFB.append(f.record)
            }
        }
        let sft = policy.method != .dpo
        var newItems = sft ? try await toItems(newFB, false) : []
        var oldItems = sft ? try await toItems(oldFB, false) : []
        if policy.method != .supervised {
            let newPairs = try await toItems(newFB, true)
            let oldPairs = try await toItems(oldFB, true)
            // auto: pairs join only when there are at least 8 of them (decision #9).
            if policy.method == .dpo || newPairs.count + oldPairs.count >= 8 {
                newItems += newPairs
                oldItems += oldPairs
            }
        }
        // The replay sample: replay / (new + replay) = replay_fraction, as far as the pool allows.
        let f = policy.replayFraction
        let want = f > 0 ? Int((Double(newItems.count) * f / (1 - f)).rounded()) : 0
        var pool = oldItems
        var rng = SplitMix64(seed: seed)  // Runtime's, the sampler's seed expander
        var replay: [FeedbackItem] = []
        for _ in 0..<min(want, pool.count) {
            replay.append(pool.remove(at: Int(rng.next() % UInt64(pool.count))))
        }
        let train = newItems + replay
        let pairs = train.filter { $0.rejected != nil }.count
        // The gate measures the newest held-out items, at most `maxHeldOut` answers and as many pairs, so its cost
        // stays bounded as feedback accumulates.
        var heldOut = Array(try await toItems(heldOutFB, false).suffix(maxHeldOut))
        if policy.method != .supervised { heldOut += try await toItems(heldOutFB, true).suffix(maxHeldOut) }
        var waiting: String? = nil
        let prompts = "\(keys.training.count) prompt\(keys.training.count == 1 ? "" : "s") on the training side, "
            + "\(keys.heldOut.count) held out (holdout_fraction \(policy.holdoutFraction), split by prompt)"
        if newItems.isEmpty {
            waiting = "the new feedback gives no training example (thumbs-up answers, corrections\(policy.method == .supervised ? "" : " or pairs"))"
                + (newHeldOut > 0 ? "; \(newHeldOut) new item\(newHeldOut == 1 ? " is" : "s are") on held-out prompts" : "")
                + "; \(prompts)"
        } else if !heldOut.contains(where: { $0.rejected == nil }) {
            waiting = "no held-out answer to measure a new version on: \(prompts); feedback on more distinct prompts "
                + "(or a larger holdout_fraction) gives the gate some"
        }
        return ContinualData(
            train: train, heldOut: heldOut, newExamples: newItems.count, replayExamples: replay.count, pairs: pairs,
            methodType: pairs > 0 ? "dpo" : "supervised", waiting: waiting)
    }
}

/// The loop (see the file comment). One per daemon with a state directory.
public final class ContinualLoop: @unchecked Sendable {
    let state: ServerState
    let store: LoradStore
    let jobs: FineTuningJobs
    let logger: Logger
    /// How often policies are looked at without a wake-up.
    let interval: Duration
    private let wake = WakeSignal()
    private let lock = NSLock()
    /// Per adapter: the newest feedback `seq` already found unusable, and why (so it is logged once and not
    /// rebuilt every tick until newer feedback arrives).
    private var waitingValue: [String: (through: Int, setAt: Double, why: String)] = [:]
    private var stopped = false

    /// - Parameters:
    ///   - interval: how often policies are checked besides wake-ups (time triggers fire within it).
    public init(state: ServerState, store: LoradStore, jobs: FineTuningJobs, interval: Duration = .seconds(5),
                logger: Logger) {
        self.state = state
        self.store = store
        self.jobs = jobs
        self.interval = interval
        self.logger = logger
    }

    /// Looks at the policies now (feedback arrived, a job ended, a policy changed).
    public func notify() { wake.notify() }

    /// Stops the loop after its current pass.
    public func shutdown() {
        lock.withLock { stopped = true }
        wake.notify()
    }

    /// Why `name` waits although its trigger fired (nil: it does not), for the policy's API view.
    func waitingReason(_ name: String) -> String? { lock.withLock { waitingValue[name]?.why } }

    /// Runs until ``shutdown()``.
    public func run() async {
        while !lock.withLock({ stopped }) {
            if case .ready = state.phase {
                for p in store.policyCache.all where p.policy.enabled {
                    if lock.withLock({ stopped }) { break }
                    do { try await consider(p) } catch {
                        logger.error(
                            "continual learning: cannot consider the adapter",
                            metadata: ["adapter": "\(p.name)", "error": "\(error)"])
                    }
                }
            } else if case .failed = state.phase {
                return
            }
            await wake.wait(timeout: interval)
        }
    }

    /// Starts a job for `p` when its trigger fires and its feedback makes one.
    /// - Returns: the created job, or nil.
    @discardableResult
    func consider(_ p: StoredPolicy, now: Date = Date()) async throws -> FineTuningJob? {
        let name = p.name
        let history = try await store.continualHistory(
            name: name, currentJobID: state.registry?.info(name)?.record.lineage.jobID)
        let fresh = try await store.feedbackCount(model: name, after: history.lastThrough)
        guard let newest = fresh.newest else { return nil }
        if let w = lock.withLock({ waitingValue[name] }), w.through >= newest, w.setAt == p.setAt { return nil }
        let trigger = TriggerState(
            newFeedback: fresh.count, lastJobAt: history.lastJobAt,
            policySetAt: Date(timeIntervalSince1970: p.setAt), jobActive: history.jobActive)
        guard let reason = trigger.reason(policy: p.policy, now: now) else { return nil }

        let feedback = try await store.sequencedFeedback(model: name, through: newest)
        // Each completion is read once, though the split asks for items up to six times.
        let completions = try await FeedbackTrainingData.completions(of: feedback.map(\.record), store: store)
        let data = try await ContinualData.build(
            feedback: feedback, publishedThrough: history.publishedThrough, policy: p.policy, seed: UInt64(newest),
            splitKey: { ContinualData.splitKey($0, prompt: completions[$0.completionID]?.promptTokenIDs.first) }
        ) { records, dpo in FeedbackTrainingData.items(feedback: records, completions: completions, dpo: dpo) }
        if let why = data.waiting {
            lock.withLock { waitingValue[name] = (newest, p.setAt, why) }
            logger.notice("continual learning: trigger fired, no job yet", metadata: ["adapter": "\(name)", "reason": "\(why)"])
            return nil
        }
        lock.withLock { _ = waitingValue.removeValue(forKey: name) }
        do {
            let job = try await createJob(p, data: data, reason: reason, from: history.publishedThrough, through: newest)
            // The policy may have been deleted or paused (a rollback, the adapter deleted) while the job was made,
            // after that change cancelled the adapter's jobs: look again, now that the job is in the store.
            if let current = store.cachedPolicy(name: name), current.policy.enabled { return job }
            await jobs.cancelContinualJobs(of: name, reason: "the adapter's training policy was deleted or paused as the job was created")
            return try await store.job(id: job.id) ?? job
        } catch let e as APIError where e.status < 500 || e.status == 507 {
            // Refused for good with this data (e.g. the current version cannot be trained further) or no disk space:
            // wait for newer feedback or a policy change instead of retrying every tick.
            let why = "the job could not be created: \(e.message)"
            lock.withLock { waitingValue[name] = (newest, p.setAt, why) }
            logger.error("continual learning: job not created", metadata: ["adapter": "\(name)", "error": "\(e.message)"])
            return nil
        }
    }

    /// Creates the job through the jobs API's own code path (same validation, files and records).
    private func createJob(_ p: StoredPolicy, data: ContinualData, reason: String, from: Int, through: Int) async throws
        -> FineTuningJob
    {
        let name = p.name
        let policy = p.policy
        let registered = state.registry?.info(name) != nil
        var body = CreateJobBody(model: registered ? name : state.modelID)
        if !registered { body.suffix = name }
        body.methodType = data.methodType
        body.nEpochs = policy.nEpochs
        body.batchSize = policy.batchSize
        body.learningRateMultiplier = policy.learningRateMultiplier
        body.seed = policy.jobSeed(name: name, through: through)
        body.rank = policy.rank
        body.alpha = policy.alpha
        body.gate = .object([
            ("min_improvement", .double(policy.gate.minImprovement)), ("max_forgetting", .double(policy.gate.maxForgetting)),
        ])
        let sftCount = data.train.count - data.pairs
        body.trainingSource = .object([
            ("feedback", .object([
                ("model", .string(name)), ("after_seq", .int(from)), ("through_seq", .int(through)),
                ("new_examples", .int(data.newExamples)), ("replay_examples", .int(data.replayExamples)),
                ("held_out_examples", .int(data.heldOut.count)),
            ]))
        ])
        body.metadata = [
            "trigger": String(reason.prefix(512)), "continual": name, "feedback_from": "\(from)",
            "feedback_through": "\(through)", "new_examples": "\(data.newExamples)",
            "replay_examples": "\(data.replayExamples)", "held_out_examples": "\(data.heldOut.count)",
            "method": policy.method == .auto
                ? "auto: SFT on \(sftCount) answers" + (data.pairs > 0 ? " + DPO on \(data.pairs) pairs" : "")
                : policy.method.rawValue,
        ]
        body.prepared = PreparedJobData(train: data.train, heldOut: data.heldOut)
        let handler = APIHandler(state: state, logger: logger)
        let job = try await handler.createJob(body, jobs: jobs, peer: nil)
        state.metrics.recordContinualJobStarted()
        await jobs.event(
            job.id, "Started by the adapter's training policy: \(reason).",
            data: .object([
                ("trigger", .string(reason)), ("feedback_from", .int(from)), ("feedback_through", .int(through)),
                ("new_examples", .int(data.newExamples)), ("replay_examples", .int(data.replayExamples)),
                ("held_out_examples", .int(data.heldOut.count)), ("pairs", .int(data.pairs)),
            ]))
        logger.notice(
            "continual learning: job created",
            metadata: [
                "adapter": "\(name)", "job": "\(job.id)", "trigger": "\(reason)", "new": "\(data.newExamples)",
                "replay": "\(data.replayExamples)", "held_out": "\(data.heldOut.count)",
            ])
        return job
    }
}
