// FineTuningRunner: runs the daemon's fine-tuning jobs, one at a time, oldest first, from the store.
//
// A job trains through exactly the code of `lorad train` (TrainJob.prepare → TrainingRun → AdapterExport), on the
// daemon's already loaded model (no second copy of the weights) and on the trainer's own threads at background
// priority, so its adapter equals the one `lorad train` makes from the same data, seed, settings and thread count.
//
// Work files live in `<state_dir>/jobs/<job id>/`: `train.jsonl` (and `valid.jsonl`) copied when the job was
// created, `init.gguf` (the continued adapter's parent version, frozen at creation), `out/checkpoints/` and, at
// the end, `out/adapter.gguf` + the PEFT files.
//
// Stops happen at step boundaries: cancel (→ `cancelled`), pause (→ `paused`; resume continues from the
// checkpoint written at the stop), and daemon shutdown (SIGTERM: the job stays `running` and continues from that
// checkpoint after the restart). After a kill -9 a `running` job continues from its last periodic checkpoint.
//
// Seams: `betweenSteps` (the one place the next training step is started from; the training-share governor
// plugs in there) and `publish(job:name:gguf:)` (the one place a job's adapter enters the registry).

import Foundation
import Logging
import Prometheus
import Runtime
import Train

/// Why the running job should stop at the next step boundary.
enum JobStopReason: Sendable {
    case cancel, pause, shutdown
}

/// The fine-tuning jobs of one daemon: creation helpers, the runner loop and its controls.
public final class FineTuningJobs: @unchecked Sendable {
    /// The durable store (jobs, events, checkpoints).
    public let store: LoradStore
    /// Where training and validation files come from and result files go.
    public let files: any FineTuningFiles
    /// `<state_dir>/jobs`: one work directory per job.
    public let workRoot: String
    /// Compute threads of the trainer (`lorad train --threads`).
    public let trainingThreads: Int
    let state: ServerState
    let logger: Logger

    private let lock = NSLock()
    private var currentID: String?
    private var stopReason: JobStopReason?
    /// The running job no longer takes stop requests: it stopped, or it is publishing.
    private var stopsClosed = false
    private var shuttingDown = false
    private var progressValue: (id: String, step: Int, total: Int)?
    private var betweenStepsValue: @Sendable () -> Void = {}
    private let wake = WakeSignal()

    /// Base learning rate: `learning_rate_multiplier` 1 trains at `lorad train`'s default `--lr`.
    public static let baseLearningRate = 1e-4

    /// - Parameters:
    ///   - store: the daemon's store (migrated to `v4_jobs`).
    ///   - files: the files API's content (the daemon's ``LoradStore``).
    ///   - stateDir: the daemon's state directory (work files go to `<stateDir>/jobs`).
    ///   - state: the shared daemon state (model, registry, metrics).
    ///   - trainingThreads: trainer compute threads (default: the number of CPUs, as `lorad train`).
    public init(
        store: LoradStore, files: any FineTuningFiles, stateDir: String, state: ServerState,
        trainingThreads: Int = max(1, ProcessInfo.processInfo.activeProcessorCount), logger: Logger
    ) {
        self.store = store
        self.files = files
        self.workRoot = stateDir + "/jobs"
        self.state = state
        self.trainingThreads = trainingThreads
        self.logger = logger
    }

    /// Called on the training thread before every optimizer step of a job (after the previous step's bookkeeping,
    /// and before the first step): the one place the next step is started from. The training-share governor
    /// (decision #8) sets it to wait while serving has work; the default returns at once.
    public var betweenSteps: @Sendable () -> Void {
        get { lock.withLock { betweenStepsValue } }
        set { lock.withLock { betweenStepsValue = newValue } }
    }

    /// The work directory of job `id`.
    func workDir(_ id: String) -> String { workRoot + "/" + id }

    /// `training job ftjob-… 40%` while a job runs, else nil (for systemd's STATUS=).
    public var statusFragment: String? {
        lock.withLock {
            guard let p = progressValue else { return nil }
            let pct = p.total > 0 ? 100 * p.step / p.total : 0
            return "training job \(p.id) \(pct)%"
        }
    }

    /// Id of the job being trained, if any.
    public var runningJobID: String? { lock.withLock { currentID } }

    /// Wakes the runner (a job was queued or resumed).
    public func notify() { wake.notify() }

    // MARK: - Controls

    /// Asks the running job `id` to stop at its next step boundary (after training: a cancel keeps it from
    /// publishing); false when it is not the running job, or no longer stoppable (it stopped, or is publishing).
    func requestStop(_ id: String, reason: JobStopReason) -> Bool {
        lock.withLock {
            guard currentID == id, !stopsClosed else { return false }
            if stopReason == nil || reason == .cancel { stopReason = reason }
            return true
        }
    }

    /// Stops taking jobs and stops the running one at its next step boundary (it stays `running` and continues
    /// from that checkpoint after a restart).
    public func shutdown() {
        lock.withLock {
            shuttingDown = true
            if currentID != nil, stopReason == nil { stopReason = .shutdown }
        }
        wake.notify()
    }

    private var isShuttingDown: Bool { lock.withLock { shuttingDown } }

    // MARK: - Events and metrics

    /// Appends an event to job `id`'s log.
    func event(_ id: String, _ message: String, level: String = "info", type: String = "message", data: JSONValue? = nil)
        async
    {
        let e = FineTuningJobEvent(
            id: "ftevent-" + ResponseRenderer.randomHex(24), jobID: id, createdAt: Int(Date().timeIntervalSince1970),
            level: level, message: message, type: type, data: data)
        do { try await store.insertJobEvent(e) } catch {
            logger.error("cannot record a job event", metadata: ["job": "\(id)", "error": "\(error)"])
        }
    }

    /// Refreshes the jobs-by-status gauges from the store.
    func refreshCounts() async {
        guard let counts = try? await store.jobCounts() else { return }
        for (status, n) in counts { state.metrics.setFineTuningJobs(status: status.rawValue, count: n) }
    }

    // MARK: - The loop

    /// Runs jobs until ``shutdown()``: the interrupted `running` job first, then `queued` ones oldest first.
    public func run() async {
        if let stuck = try? await store.requeueValidatingJobs() {
            for id in stuck { await event(id, "lorad restarted while the job's files were validated; the job is queued.") }
        }
        await removeOrphanWorkDirs()
        await refreshCounts()
        while !isShuttingDown {
            guard case .ready(let r) = state.phase, let backend = r.backend as? RuntimeBackend else {
                if case .failed = state.phase { return }
                try? await Task.sleep(for: .milliseconds(200))
                continue
            }
            let next: FineTuningJob?
            do { next = try await store.nextRunnableJob() } catch {
                logger.error("cannot read the job queue", metadata: ["error": "\(error)"])
                next = nil
            }
            guard let job = next else {
                await wake.wait(timeout: .seconds(2))
                continue
            }
            await execute(job, model: backend.model)
            await refreshCounts()
            // The adapter's policy may start its next job now.
            state.continual?.notify()
        }
    }

    /// Removes work directories of jobs that were never recorded (a stop while a job's data was being written,
    /// before its row was inserted). Only directories older than a minute: a job being created now is left alone.
    private func removeOrphanWorkDirs() async {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: workRoot) else { return }
        for name in names where name.hasPrefix("ftjob-") {
            let modified = (try? FileManager.default.attributesOfItem(atPath: workDir(name))[.modificationDate]) as? Date
            guard let modified, Date().timeIntervalSince(modified) > 60 else { continue }
            let known: FineTuningJob?
            do { known = try await store.job(id: name) } catch { continue }
            if known != nil { continue }
            try? FileManager.default.removeItem(atPath: workDir(name))
            logger.notice("removed the work directory of a job that was never recorded", metadata: ["job": "\(name)"])
        }
    }

    /// Claims `job` (queued or interrupted), trains it on a thread of its own, then records the outcome.
    private func execute(_ job: FineTuningJob, model: Model) async {
        let id = job.id
        let interrupted = job.status == .running
        let now = Int(Date().timeIntervalSince1970)
        // The job is current before it is claimed, so a cancel or pause that sees it `running` reaches the runner
        // (which checks for a stop before the first step).
        lock.withLock {
            currentID = id
            stopReason = shuttingDown ? .shutdown : nil
            stopsClosed = false
        }
        // Claim it, unless a cancel or pause changed it since it was read.
        let claimed: FineTuningJob?
        do {
            claimed = try await store.updateJob(id: id) { j in
                guard j.status == .queued || j.status == .running else { throw JobSkip() }
                j.status = .running
                if j.startedAt == nil { j.startedAt = now }
            }
        } catch {
            claimed = nil
        }
        guard let claimed else {
            lock.withLock {
                currentID = nil
                stopReason = nil
            }
            return
        }
        lock.withLock { progressValue = (id, claimed.step, claimed.totalSteps) }
        defer {
            lock.withLock {
                currentID = nil
                stopReason = nil
                progressValue = nil
            }
            state.metrics.setTraining(tokensPerSecond: 0, loss: nil)
        }
        await refreshCounts()
        if interrupted {
            let saved = (try? FileManager.default.contentsOfDirectory(atPath: workDir(id) + "/out/checkpoints"))?.isEmpty == false
            await event(
                id,
                "lorad restarted while the job was running; "
                    + (saved ? "continuing from its last checkpoint." : "no checkpoint was written yet, so it starts again from step 0."))
        } else if claimed.step > 0 {
            await event(id, "Fine-tuning job resumed.")
        } else {
            await event(id, "Fine-tuning job started.")
        }
        logger.notice("fine-tuning job running", metadata: ["job": "\(id)", "model": "\(job.model)"])

        let result: Result<TrainingOutcome?, Error> = await withCheckedContinuation { c in
            let t = Thread { [self] in c.resume(returning: Result { try self.train(claimed, model: model) }) }
            t.name = "lorad-train-\(id)"
            t.stackSize = 8 << 20
            t.start()
        }
        // A job that stopped takes no further stop request (a cancel after a pause would be acknowledged, then lost);
        // one that trained to the end takes a cancel until it publishes (`finish`).
        var trainedToTheEnd = false
        if case .success(let o?) = result, !o.cancelled { trainedToTheEnd = true }
        let reason = lock.withLock { () -> JobStopReason? in
            if !trainedToTheEnd { stopsClosed = true }
            return stopReason
        }
        switch result {
        case .failure(let error):
            await fail(id, error)
        case .success(let outcome) where outcome?.cancelled ?? true:
            let n = outcome?.steps ?? claimed.step
            switch reason ?? .shutdown {
            case .cancel:
                _ = try? await store.updateJob(id: id) { j in
                    j.status = .cancelled
                    j.finishedAt = Int(Date().timeIntervalSince1970)
                    j.estimatedFinish = nil
                }
                await event(id, "Job cancelled after step \(n).")
            case .pause:
                _ = try? await store.updateJob(id: id) { j in
                    j.status = .paused
                    j.estimatedFinish = nil
                }
                await event(id, "Job paused after step \(n); resume continues from the checkpoint at step \(n).")
            case .shutdown:
                await event(id, "lorad is stopping: the job stopped after step \(n) and continues from there after the restart.")
            }
        case .success(let outcome?):
            await finish(claimed, outcome: outcome, model: model)
        case .success(nil):
            break
        }
    }

    /// Builds `lorad train`'s settings for `job` and runs them to the end or to a stop (on the calling thread).
    /// - Returns: the loop's outcome, or nil when a stop came before the first step of this session.
    private func train(_ job: FineTuningJob, model: Model) throws -> TrainingOutcome? {
        let settings = trainSettings(job)
        let prepared = try TrainJob.prepare(settings, model: model, pacer: state.trainingGovernor)
        let id = job.id
        let total = prepared.totalSteps
        lock.withLock { progressValue = (id, job.step, total) }
        blocking { _ = try? await self.store.updateJob(id: id) { $0.totalSteps = total } }

        var lastStep: TrainingStepReport?
        var validLoss: [Int: (loss: Double, accuracy: Double?)] = [:]
        // The last checkpoint written: the final eval comes after the final checkpoint and is added to it.
        var lastCheckpoint: (id: String, step: Int, metrics: [(String, JSONValue)])?
        // A resumed job re-runs the steps after its last checkpoint: their metrics events, logged before the stop,
        // are not logged twice (the re-run computes the same numbers, bit for bit at the same thread count).
        let loggedBox = LoggedSteps()
        blocking { loggedBox.value = (try? await self.store.loggedMetricSteps(jobID: id)) ?? (-1, -1) }
        let logged = loggedBox.value
        let nextStep = { [self] () -> Bool in
            if lock.withLock({ stopReason != nil }) { return true }
            betweenSteps()
            return lock.withLock { stopReason != nil }
        }
        // Stopped before the first step of this session: nothing trained, the last checkpoint stands.
        if nextStep() { return nil }
        return try prepared.run.run(resume: true, isCancelled: nextStep) { [self] e in
            switch e {
            case .step(let r):
                lastStep = r
                lock.withLock { progressValue = (id, r.step, r.totalSteps) }
                state.metrics.setTraining(tokensPerSecond: r.tokS, loss: r.loss)
                let finish = Int(Date().timeIntervalSince1970 + r.eta)
                let data: JSONValue = .object([
                    ("step", .int(r.step)), ("total_steps", .int(r.totalSteps)), ("train_loss", .double(r.loss)),
                    ("train_mean_token_accuracy", r.tokenAccuracy.map { .double($0) } ?? .null),
                    ("grad_norm", .double(r.gradNorm)),
                    ("learning_rate", .double(r.lr)), ("tokens", .int(r.tokens)), ("tokens_per_second", .double(r.tokS)),
                    ("epoch", .int(r.epoch)),
                ])
                let seen = r.tokensSeen
                blocking {
                    if r.step > logged.train {
                        await self.event(
                            id, String(format: "Step %d/%d: training loss=%.4f", r.step, r.totalSteps, r.loss),
                            type: "metrics", data: data)
                    }
                    _ = try? await self.store.updateJob(id: id) { j in
                        j.step = r.step
                        j.totalSteps = r.totalSteps
                        j.lastLoss = r.loss
                        j.trainedTokens = seen
                        j.estimatedFinish = finish
                    }
                }
            case .eval(let step, let loss, let accuracy):
                validLoss[step] = (loss, accuracy)
                let acc: JSONValue = accuracy.map { .double($0) } ?? .null
                if let c = lastCheckpoint, c.step == step, !c.metrics.contains(where: { $0.0 == "valid_loss" }) {
                    let metrics: JSONValue = .object(
                        c.metrics + [("valid_loss", .double(loss)), ("valid_mean_token_accuracy", acc)])
                    blocking { try? await self.store.updateJobCheckpoint(id: c.id, metrics: metrics) }
                }
                if step > logged.valid {
                    blocking {
                        await self.event(
                            id, String(format: "Step %d: validation loss=%.4f", step, loss), type: "metrics",
                            data: .object([("step", .int(step)), ("valid_loss", .double(loss)), ("valid_mean_token_accuracy", acc)]))
                    }
                }
            case .checkpoint(let step):
                var metrics: [(String, JSONValue)] = [("step", .int(step))]
                if let r = lastStep, r.step == step {
                    metrics.append(("train_loss", .double(r.loss)))
                    metrics.append(("train_mean_token_accuracy", r.tokenAccuracy.map { .double($0) } ?? .null))
                }
                if let v = validLoss[step] {
                    metrics.append(("valid_loss", .double(v.loss)))
                    metrics.append(("valid_mean_token_accuracy", v.accuracy.map { .double($0) } ?? .null))
                }
                let name = Self.adapterName(job)
                let c = FineTuningJobCheckpoint(
                    id: "ftckpt-" + ResponseRenderer.randomHex(24), jobID: id,
                    createdAt: Int(Date().timeIntervalSince1970), stepNumber: step, metrics: .object(metrics),
                    fineTunedModelCheckpoint: "\(name)@ckpt-step-\(step)")
                lastCheckpoint = (c.id, step, metrics)
                blocking {
                    try? await self.store.insertJobCheckpoint(c)
                    await self.event(id, "Checkpoint written at step \(step).", data: .object([("step", .int(step))]))
                }
            case .resumed(let step):
                blocking {
                    await self.event(
                        id, "Resumed from the checkpoint at step \(step).", data: .object([("step", .int(step))]))
                }
            }
        }
    }

    /// `lorad train`'s settings for `job`: its resolved hyperparameters over `lorad train`'s defaults.
    func trainSettings(_ job: FineTuningJob) -> TrainSettings {
        let dir = workDir(job.id)
        let valid = dir + "/valid.jsonl"
        let hasValid = FileManager.default.fileExists(atPath: valid)
        let initPath = dir + "/init.gguf"
        let targets = job.targets.compactMap { Projection(rawValue: $0) }
        // A feedback job trains on the served prompt ids (decision #4), frozen at creation.
        let feedback = dir + "/train.feedback.json"
        let tokenized = job.trainingSource != nil && FileManager.default.fileExists(atPath: feedback)
        var settings = TrainSettings(
            modelPath: state.modelPath, dataPath: tokenized ? feedback : dir + "/train.jsonl", evalPath: hasValid ? valid : nil,
            outDir: dir + "/out", method: job.methodType == "dpo" ? .dpo : .sft, beta: job.beta ?? 0.1,
            // A continued adapter's DPO is measured against the version it starts from (TRL's frozen copy of the
            // initial policy); a fresh adapter's initial policy is the base model.
            dpoReference: job.baseAdapter != nil ? .`init` : .base, initAdapter: job.baseAdapter != nil ? initPath : nil, rank: job.rank,
            alpha: Float(job.alpha), rslora: false, targets: targets.isEmpty ? Projection.allCases : targets, layers: nil,
            lr: Self.baseLearningRate * job.learningRateMultiplier, weightDecay: 0.01, schedule: .linear, warmupSteps: 0,
            length: .epochs(job.nEpochs), batchSize: job.batchSize, gradAccum: 1, maxSeqLen: 1024, truncate: .reject,
            clip: 1.0, seed: UInt64(job.seed), threads: trainingThreads,
            evalEvery: hasValid ? job.checkpointEvery : 0, checkpointEvery: job.checkpointEvery, resume: true,
            json: false, nice: false)
        settings.tokenizedFeedback = tokenized
        return settings
    }

    /// The registry name a job publishes under: `suffix`, else the adapter it continues, else `ft-<short id>`.
    static func adapterName(_ job: FineTuningJob) -> String {
        if let s = job.suffix { return s }
        if let a = job.baseAdapter { return a }
        return "ft-" + job.id.dropFirst("ftjob-".count).prefix(8)
    }

    /// Whether a cancel of the running job was asked for; with `close`, stop requests are refused from now on.
    private func cancelRequested(close: Bool = false) -> Bool {
        lock.withLock {
            if close { stopsClosed = true }
            return stopReason == .cancel
        }
    }

    /// Ends job `id` `cancelled` after its training finished (`when` says where), nothing published.
    private func cancelFinished(_ id: String, _ when: String) async {
        _ = try? await store.updateJob(id: id) { j in
            j.status = .cancelled
            j.finishedAt = Int(Date().timeIntervalSince1970)
            j.estimatedFinish = nil
            j.published = false
        }
        await event(id, "Job cancelled \(when); nothing was published.")
        await refreshCounts()
    }

    /// Export, result file, gate, publish, `succeeded`. A cancel asked for until the publish begins ends the job
    /// `cancelled` instead.
    private func finish(_ job: FineTuningJob, outcome: TrainingOutcome, model: Model) async {
        let id = job.id
        if cancelRequested() { return await cancelFinished(id, "after its last step") }
        let dir = workDir(id) + "/out"
        let name = Self.adapterName(job)
        do {
            try AdapterExport.writeAll(
                outcome.params, model: model.config, baseModel: state.modelPath, name: name, directory: dir)
        } catch {
            return await fail(id, error, code: "export_failed")
        }
        var resultFiles: [String] = []
        do {
            let csv = try await metricsCSV(id)
            resultFiles.append(
                try await files.storeResult(jobID: id, filename: "step_metrics.csv", data: Data(csv.utf8)))
        } catch {
            await event(id, "The step-metrics file could not be stored: \(error)", level: "warn")
        }
        var gateNumbers: JSONValue? = nil
        if let g = job.gate {
            if cancelRequested() { return await cancelFinished(id, "before its evaluation gate") }
            let verdict: GateVerdict
            do {
                verdict = try await gate(job, settings: try JobGate.settings(g), candidate: outcome.params, model: model)
            } catch {
                return await fail(id, error, code: "gate_failed")
            }
            let numbers = JobGate.json(verdict)
            // A cancel asked for while the gate measured ends the job here; from now on it cannot be stopped.
            if cancelRequested(close: true) {
                await event(id, "The evaluation gate measured: \(JobGate.summary(verdict)).", data: numbers)
                return await cancelFinished(id, "after its evaluation gate")
            }
            state.metrics.recordGateDecision(passed: verdict.passed)
            guard verdict.passed else {
                await event(
                    id,
                    "The evaluation gate kept the current version: \(verdict.reasons.joined(separator: "; ")) "
                        + "(\(JobGate.summary(verdict))).", level: "warn", data: numbers)
                await markSucceeded(id, outcome: outcome, resultFiles: resultFiles, publishedAs: nil)
                await event(id, "The job has successfully completed; the gate did not publish its adapter.")
                logger.notice("fine-tuning job not published by its gate", metadata: ["job": "\(id)", "adapter": "\(name)"])
                return
            }
            await event(id, "The evaluation gate passed: \(JobGate.summary(verdict)).", data: numbers)
            gateNumbers = numbers
        }
        if cancelRequested(close: true) { return await cancelFinished(id, "before publishing") }
        let published: (version: Int, replaced: Int?)
        do {
            published = try await publish(job: job, name: name, gguf: dir + "/adapter.gguf", gate: gateNumbers)
        } catch AdapterRegistryError.parentChanged(let current) where job.gate != nil {
            return await fail(
                id,
                AdapterRegistryError.badSource(
                    "the adapter's current version is \(current.map(String.init) ?? "none"), not version "
                        + "\(job.parentVersion.map(String.init) ?? "none") this job started from; nothing was published"),
                code: "parent_changed")
        } catch {
            return await fail(id, error, code: "publish_failed")
        }
        if let parent = job.parentVersion, job.baseAdapter == name, published.replaced != parent {
            await event(
                id,
                "The adapter's current version changed while the job ran: the new version \(published.version) "
                    + "replaced version \(published.replaced.map(String.init) ?? "none"), not version \(parent) the job started from.",
                level: "warn",
                data: .object([
                    ("parent_version", .int(parent)), ("replaced_version", published.replaced.map { .int($0) } ?? .null),
                ]))
        }
        await event(
            id, "New fine-tuned model published: \(name)@\(published.version)",
            data: .object([("fine_tuned_model", .string(name)), ("version", .int(published.version))]))
        await markSucceeded(id, outcome: outcome, resultFiles: resultFiles, publishedAs: name)
        await event(id, "The job has successfully completed.")
        logger.notice(
            "fine-tuning job succeeded", metadata: ["job": "\(id)", "adapter": "\(name)@\(published.version)"])
    }

    /// Registers the exported adapter under `name` as a new version, hot-swapped atomically (requests that already
    /// hold the previous version finish on it), recording its lineage: the parent version fixed when the job was
    /// created, the job id and the data it trained on. The one place a job's adapter enters the registry. A job
    /// without a gate publishes even when the adapter's current version changed meanwhile (LEARNING-DECISIONS #7;
    /// the caller's event names the version it replaced).
    /// - Returns: the new version and the version it replaced (nil for a new name).
    /// - Throws: ``AdapterRegistryError`` (no registry, a rejected adapter, a full disk).
    func publish(job: FineTuningJob, name: String, gguf: String, gate: JSONValue? = nil) async throws
        -> (version: Int, replaced: Int?)
    {
        guard let registry = state.registry else { throw AdapterRegistryError.notReady }
        guard let data = FileManager.default.contents(atPath: gguf) else {
            throw AdapterRegistryError.badSource("cannot read \(gguf)")
        }
        var range: [(String, JSONValue)] = []
        if let f = job.trainingFile { range.append(("training_file", .string(f))) }
        if let f = job.validationFile { range.append(("validation_file", .string(f))) }
        if let src = job.trainingSource { range.append(("training_source", src)) }
        let lineage = AdapterLineage(
            parentVersion: job.baseAdapter == name ? job.parentVersion : nil, jobID: job.id,
            dataRange: range.isEmpty ? nil : .object(range), gate: gate)
        // A gated job publishes only over the version it was measured against (compare and swap, decision #7).
        let expected: Int?? = gate == nil ? nil : .some(job.baseAdapter == name ? job.parentVersion : nil)
        let result = try await registry.publish(
            name: name, source: .files(["adapter.gguf": data]), lineage: lineage, expectedParent: expected)
        state.metrics.recordAdapterRegistration()
        return (result.record.version, result.replaced)
    }

    /// Records a job's successful end: `succeeded`, its final token count and step, its result files, and whether
    /// it published (`publishedAs` nil: the gate kept it out, so `fine_tuned_model` stays null and
    /// `metadata.published` says "false", LEARNING-DECISIONS #6).
    private func markSucceeded(
        _ id: String, outcome: TrainingOutcome, resultFiles: [String], publishedAs name: String?
    ) async {
        _ = try? await store.updateJob(id: id) { j in
            j.status = .succeeded
            j.finishedAt = Int(Date().timeIntervalSince1970)
            j.estimatedFinish = nil
            j.trainedTokens = outcome.tokensSeen
            j.step = outcome.steps
            j.fineTunedModel = name
            j.published = name != nil
            if name == nil { j.metadata["published"] = "false" }
            j.resultFiles = resultFiles
        }
    }

    /// Runs the job's evaluation gate on a thread of its own (the evaluation is as heavy as a few training steps):
    /// the candidate against the version the job started from (`init.gguf`; the base model for a fresh adapter).
    /// - Throws: the layers' errors for unusable held-out data or a mismatched adapter.
    private func gate(_ job: FineTuningJob, settings: GateSettings, candidate: LoRAParameters, model: Model) async throws
        -> GateVerdict
    {
        let dir = workDir(job.id)
        let valid = dir + "/valid.jsonl"
        let validPath = FileManager.default.fileExists(atPath: valid) ? valid : nil
        let validFeedback = dir + "/valid.feedback.json"
        let validFeedbackPath = FileManager.default.fileExists(atPath: validFeedback) ? validFeedback : nil
        let threads = trainingThreads
        let pacer = state.trainingGovernor
        let dpo = job.methodType == "dpo"
        let result: Result<GateVerdict, Error> = await withCheckedContinuation { c in
            let t = Thread {
                c.resume(returning: Result {
                    var current: LoRAParameters? = nil
                    if job.baseAdapter != nil {
                        let a = try model.loadGGUFAdapter(path: dir + "/init.gguf", name: "gate-current")
                        current = try LoRAParameters(adapter: a, model: model.config)
                    }
                    return try JobGate.evaluate(
                        model: model, threads: threads, pacer: pacer, current: current, candidate: candidate,
                        validPath: validPath, validFeedbackPath: validFeedbackPath, dpo: dpo, settings: settings)
                })
            }
            t.name = "lorad-gate-\(job.id)"
            t.stackSize = 8 << 20
            t.start()
        }
        return try result.get()
    }

    func metricsCSV(_ id: String) async throws -> String {
        let events = try await store.listJobEvents(jobID: id, after: nil, limit: nil).items.reversed()
        var train: [Int: Double] = [:]
        var valid: [Int: Double] = [:]
        var trainAccuracy: [Int: Double] = [:]
        var validAccuracy: [Int: Double] = [:]
        for e in events where e.type == "metrics" {
            guard case .object(let f)? = e.data, case .int(let step)? = f.first(where: { $0.0 == "step" })?.1 else {
                continue
            }
            for (k, v) in f {
                let x: Double?
                switch v {
                case .double(let d): x = d
                case .int(let i): x = Double(i)
                default: x = nil
                }
                if k == "train_loss", let x { train[step] = x }
                if k == "valid_loss", let x { valid[step] = x }
                if k == "train_mean_token_accuracy", let x { trainAccuracy[step] = x }
                if k == "valid_mean_token_accuracy", let x { validAccuracy[step] = x }
            }
        }
        var csv = "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n"
        func cell(_ v: Double?) -> String { v.map { String($0) } ?? "" }
        for step in Set(train.keys).union(valid.keys).sorted() {
            csv += "\(step),\(cell(train[step])),\(cell(trainAccuracy[step])),\(cell(valid[step])),\(cell(validAccuracy[step]))\n"
        }
        return csv
    }

    /// Marks job `id` failed with an OpenAI-style error.
    private func fail(_ id: String, _ error: Error, code: String? = nil) async {
        let (c, message, param) = Self.describe(error, code: code)
        _ = try? await store.updateJob(id: id) { j in
            j.status = .failed
            j.finishedAt = Int(Date().timeIntervalSince1970)
            j.estimatedFinish = nil
            j.errorCode = c
            j.errorMessage = message
            j.errorParam = param
            j.published = false
        }
        await event(id, "The job failed: \(message)", level: "error")
        logger.error("fine-tuning job failed", metadata: ["job": "\(id)", "code": "\(c)", "error": "\(message)"])
    }

    /// `(code, message, param)` of a job failure.
    static func describe(_ error: Error, code: String?) -> (String, String, String?) {
        if let code { return (code, "\(error)", nil) }
        switch error {
        case let e as TrainCLIError where e.exitCode == 2:
            return ("invalid_training_file", e.message, "training_file")
        case let e as TrainCLIError:
            return ("training_failed", e.message, nil)
        case let e as DatasetError:
            return ("invalid_training_file", "\(e)", "training_file")
        default:
            let (_, message) = TrainCLIError.classify(error)
            return ("training_failed", message, nil)
        }
    }

    /// Runs `body` to completion from a thread outside Swift concurrency (the training thread).
    private func blocking(_ body: @escaping @Sendable () async -> Void) {
        let done = DispatchSemaphore(value: 0)
        Task {
            await body()
            done.signal()
        }
        done.wait()
    }
}

/// Thrown inside a claim when the job is no longer runnable.
struct JobSkip: Error {}

/// The steps a job's metrics events already cover, read once before training (handed across `blocking`).
private final class LoggedSteps: @unchecked Sendable {
    var value: (train: Int, valid: Int) = (-1, -1)
}

extension DaemonMetrics {
    /// `lorad_fine_tuning_jobs{status}`: jobs in the store by status.
    func setFineTuningJobs(status: String, count: Int) {
        registry.makeGauge(
            descriptor: MetricNameDescriptor(
                namespace: "lorad", metricName: "fine_tuning_jobs", unitName: "",
                helpText: "Fine-tuning jobs in the store by status."),
            labels: [("status", status)]
        ).set(Double(count))
    }

    /// `lorad_gate_decisions_total{decision}`: gated jobs whose gate published (`published`) or kept the current
    /// version (`kept`), since start.
    func recordGateDecision(passed: Bool) {
        registry.makeCounter(
            descriptor: MetricNameDescriptor(
                namespace: "lorad", metricName: "gate_decisions", unitName: "total",
                helpText: "Evaluation-gate decisions of gated fine-tuning jobs since start (published or kept)."),
            labels: [("decision", passed ? "published" : "kept")]
        ).increment()
    }

    /// `lorad_continual_jobs_started_total`: jobs the adapters' training policies started, since start.
    func recordContinualJobStarted() {
        registry.makeCounter(
            descriptor: MetricNameDescriptor(
                namespace: "lorad", metricName: "continual_jobs_started", unitName: "total",
                helpText: "Fine-tuning jobs started by adapters' training policies (continual learning) since start.")
        ).increment()
    }

    /// `lorad_training_tokens_per_second` and `lorad_training_loss` of the running job's last step (0 / absent
    /// when no job runs).
    func setTraining(tokensPerSecond: Double, loss: Double?) {
        registry.makeGauge(
            descriptor: MetricNameDescriptor(
                namespace: "lorad", metricName: "training_tokens_per_second", unitName: "",
                helpText: "Tokens per second of the running fine-tuning job's last step (0: no job running).")
        ).set(tokensPerSecond)
        registry.makeGauge(
            descriptor: MetricNameDescriptor(
                namespace: "lorad", metricName: "training_loss", unitName: "",
                helpText: "Training loss of the running fine-tuning job's last step (NaN: no job running).")
        ).set(loss ?? .nan)
    }
}
