// `lorad bench --serving-while-training`: what a fine-tuning job costs serving, and what serving costs the job,
// in one process on one loaded model (LEARNING-DECISIONS #8; the fine-tuning issue's "serving while training").
//
// An Engine serves `streams` concurrent greedy streams (prompt of `promptTokens` ids, `genTokens` generated, EOS
// ignored), each client re-submitting as soon as its stream ends, so serving stays busy. A TrainingRun on the same
// model (its own LoRATrainer and threads; rank 8 on all 7 projections, batches of `trainBatch` × `trainSeq` random
// tokens, AdamW) runs on a background thread through a TrainingGovernor. The phases:
//   phase 1    serving alone: aggregate decode tokens/s, p50 / p99 inter-token latency. The trainer is parked
//              at a yield point (governor share 0 while serving is busy: it runs no instruction);
//   phase 2    serving and training together at each `training_min_share` asked for;
//   phase 3    training alone through the governor (serving idle), against
//   reference  training alone without a pacer: the figure of `lorad bench --train` for the same shape.
// Phases 1 and 2 alternate in windows of `window` seconds (half a second of settling after each switch), and so
// do phase 3 and the reference step by step, so a machine whose background load drifts (other processes) weighs
// on both sides of each ratio alike. The trainer's tokens/s over a window counts whole steps plus the fraction
// of the current step reached, from the yield points passed and the unpaced steps' time profile of them.
// Prints figures; it is a measurement tool, not a test.
import Foundation
import Runtime
import Train

enum ServingTrainingBenchmark {
    /// What to run.
    struct Options {
        var streams = 4
        var promptTokens = 32
        var genTokens = 128
        /// Seconds each serving phase is measured in all, per share (in windows of `window`).
        var seconds = 20.0
        /// Seconds of one measuring window.
        var window = 2.5
        var shares: [Double] = [0.25]
        var servingThreads = 2
        var trainerThreads = 2
        /// Trainer threads while serving is busy (nil: all).
        var busyThreads: Int?
        var trainBatch = 4
        var trainSeq = 256
        /// Score only the last N positions of each sequence (nil: every position, as `bench --train`'s "all").
        var trainLast: Int?
        /// Measured training steps of the reference and of phase 3 each (after one warm-up step and one profiled step).
        var trainSteps = 2
    }

    /// Serving figures of one phase.
    struct ServingFigures {
        var tokS: Double
        var p50: Double
        var p99: Double
        var mean: Double
        var max: Double
        var samples: Int

        var json: [String: Any] {
            ["decode_tok_s": r1(tokS), "itl_p50_ms": r2(p50 * 1000), "itl_p99_ms": r2(p99 * 1000),
             "itl_mean_ms": r2(mean * 1000), "itl_max_ms": r2(max * 1000), "itl_samples": samples]
        }
    }

    /// Phase 2 at one share.
    struct SharedPhase {
        var share: Double
        /// Phase 1 windows interleaved with this share's.
        var alone: ServingFigures
        /// Seconds the trainer ran during the phase 1 windows (0 but for a stretch in progress at a switch).
        var aloneTrainerRun: Double
        var serving: ServingFigures
        var trainTokS: Double
        var governor: TrainingGovernorStatistics
    }

    /// Everything measured.
    struct Report {
        var options: Options
        var shared: [SharedPhase]
        var trainAloneTokS: Double
        var referenceTokS: Double
        var yieldPointsPerStep: Int
        /// Longest time between two yield points of an unpaced step (step start and end count as yield points),
        /// seconds, and the index of the yield point that ends it (`yieldPointsPerStep` + 1 = the step's end).
        var longestGap: (seconds: Double, endsAt: Int)
        var loadAverage: String

        var json: [String: Any] {
            let o = options
            return [
                "streams": o.streams, "prompt_tokens": o.promptTokens, "gen_tokens": o.genTokens,
                "seconds": o.seconds, "window_s": o.window, "serving_threads": o.servingThreads,
                "trainer_threads": o.trainerThreads, "busy_threads": o.busyThreads.map { $0 as Any } ?? NSNull(),
                "train_batch": o.trainBatch, "train_seq": o.trainSeq, "train_loss": o.trainLast.map { "last\($0)" } ?? "all",
                "load_average_at_start": loadAverage,
                "shares": shared.map { p -> [String: Any] in
                    [
                        "min_share": p.share, "phase1_serving_alone": p.alone.json, "phase2_serving": p.serving.json,
                        "phase1_trainer_run_s": r3(p.aloneTrainerRun), "phase2_train_tok_s": r1(p.trainTokS),
                        "throughput_ratio": r3(p.serving.tokS / p.alone.tokS), "p99_itl_ratio": r3(p.serving.p99 / p.alone.p99),
                        "measured_share": p.governor.busyShare.map { r3($0) as Any } ?? NSNull(),
                        "pauses": p.governor.pauses, "longest_stretch_ms": r2(p.governor.longestStretch * 1000),
                        "meets_throughput_target": p.serving.tokS >= 0.8 * p.alone.tokS,
                        "meets_p99_target": p.serving.p99 <= 1.5 * p.alone.p99,
                    ]
                },
                "phase3_train_tok_s": r1(trainAloneTokS), "reference_train_tok_s": r1(referenceTokS),
                "phase3_vs_reference": r3(trainAloneTokS / referenceTokS), "yield_points_per_step": yieldPointsPerStep,
                "longest_unpaced_gap_ms": r2(longestGap.seconds * 1000), "longest_gap_ends_at_yield_point": longestGap.endsAt,
            ]
        }

        var text: String {
            var lines: [String] = []
            let o = options
            lines.append(String(format: "serving while training: %d greedy streams of %d+%d tokens on %d threads; trainer %d threads (%@ while busy), batch %d x %d, loss %@; %.0f s per phase in %.1f s windows; load average at start %@",
                                o.streams, o.promptTokens, o.genTokens, o.servingThreads, o.trainerThreads,
                                o.busyThreads.map { "\($0)" } ?? "all", o.trainBatch, o.trainSeq,
                                o.trainLast.map { "last\($0)" } ?? "all", o.seconds, o.window, loadAverage))
            for p in shared {
                lines.append(String(format: "share %.2f  phase 1 serving alone:       %7.1f tok/s  ITL p50 %6.1f ms  p99 %6.1f ms",
                                    p.share, p.alone.tokS, p.alone.p50 * 1000, p.alone.p99 * 1000))
                lines.append(String(format: "            phase 2 serving + training: %7.1f tok/s  ITL p50 %6.1f ms  p99 %6.1f ms  trainer %6.1f tok/s (share %.3f, longest stretch %.1f ms)",
                                    p.serving.tokS, p.serving.p50 * 1000, p.serving.p99 * 1000, p.trainTokS,
                                    p.governor.busyShare ?? 0, p.governor.longestStretch * 1000))
                lines.append(String(format: "            vs targets: throughput %.3f x alone (>= 0.8: %@), p99 ITL %.3f x alone (<= 1.5: %@)",
                                    p.serving.tokS / p.alone.tokS, p.serving.tokS >= 0.8 * p.alone.tokS ? "met" : "MISSED",
                                    p.serving.p99 / p.alone.p99, p.serving.p99 <= 1.5 * p.alone.p99 ? "met" : "MISSED"))
            }
            lines.append(String(format: "phase 3  training alone (governed): %6.1f tok/s = %.3f x unpaced training (%.1f tok/s, as bench --train)",
                                trainAloneTokS, trainAloneTokS / referenceTokS, referenceTokS))
            lines.append(String(format: "         %d yield points per step; longest unpaced stretch between two: %.1f ms (ending at yield point %d)",
                                yieldPointsPerStep, longestGap.seconds * 1000, longestGap.endsAt))
            return lines.joined(separator: "\n")
        }
    }

    // MARK: - Run

    /// Loads the model once and runs every phase.
    /// - Throws: model loading errors, `TrainError` / `TrainingRunError` from the trainer, `EngineError`.
    static func run(path: String, options o: Options, log: @escaping @Sendable (String) -> Void) async throws -> Report {
        let loadAverage = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))
            .map { $0.split(separator: " ").prefix(3).joined(separator: " ") } ?? "?"
        let model = try Model.load(path: path, options: ModelOptions(threads: o.servingThreads))
        let backend = RuntimeBackend(model: model)
        let engine = Engine(
            backend: backend,
            limits: EngineLimits(maxSequences: max(16, o.streams), kvCacheBytes: 1 << 30, maxQueue: 64,
                                 stepTokenBudget: 512, contextSize: min(4096, model.config.nCtxTrain),
                                 maxPrefillTokensPerStep: 256, stepTimeTarget: 0.5))
        engine.start()
        defer { engine.shutdown() }
        let governor = TrainingGovernor(minShare: 0, threadsWhileBusy: o.busyThreads)
        governor.attach(to: engine)
        let clients = StreamClients(engine: engine, options: o)
        let vocab = model.config.nVocab

        // The training run, on its own thread from here on.
        let trainer = try LoRATrainer(model: model, threads: o.trainerThreads, cacheWeights: true)
        let pacer = BenchPacer()
        trainer.pacer = pacer
        let training = try TrainingThread(trainer: trainer, options: o)
        training.start(pacer: pacer)
        defer { training.stop() }
        log("training: warm-up step (builds the f32 weight cache), then one profiled unpaced step")
        try await training.waitForSteps(pacer, 1)
        pacer.recording = true
        try await training.waitForSteps(pacer, 2)
        pacer.recording = false
        // Phase 3 and the reference, step by step in turn (serving idle).
        pacer.alternate(with: governor)
        try await training.waitForSteps(pacer, 2 + 2 * o.trainSteps)
        let (governedSeconds, unpacedSeconds) = pacer.stopAlternating()
        pacer.inner = governor
        let aloneTokS = Double(training.tokensPerStep) / governedSeconds
        let referenceTokS = Double(training.tokensPerStep) / unpacedSeconds
        log(String(format: "phase 3 (governed, serving idle): %.1f tok/s; reference (unpaced): %.1f tok/s", aloneTokS,
                   referenceTokS))

        // Phases 1 and 2 in alternating windows, serving kept busy throughout.
        var shared: [SharedPhase] = []
        let streams = clients.start(vocab: vocab)
        try await Task.sleep(for: .seconds(1))
        let rounds = max(1, Int((o.seconds / o.window).rounded()))
        for share in o.shares {
            var aloneWindows: [(Double, Double)] = [], sharedWindows: [(Double, Double)] = []
            var aloneRun = 0.0, trainProgress = 0.0, trainSeconds = 0.0
            var g = TrainingGovernorStatistics()
            governor.resetStatistics()
            for _ in 0..<rounds {
                governor.minShare = 0
                try await Task.sleep(for: .milliseconds(500))
                let a0 = governor.statistics
                aloneWindows.append(try await clients.window(seconds: o.window))
                aloneRun += governor.statistics.since(a0).runSeconds
                governor.minShare = share
                try await Task.sleep(for: .milliseconds(500))
                let g0 = governor.statistics
                let prog0 = pacer.progress()
                let w = try await clients.window(seconds: o.window)
                trainProgress += pacer.progress() - prog0
                trainSeconds += w.1 - w.0
                sharedWindows.append(w)
                let d = governor.statistics.since(g0)
                g.yieldPoints += d.yieldPoints
                g.pauses += d.pauses
                g.runSeconds += d.runSeconds
                g.busyRunSeconds += d.busyRunSeconds
                g.pausedSeconds += d.pausedSeconds
                g.longestStretch = d.longestStretch
                try training.rethrow()
            }
            let alone = clients.figures(aloneWindows), together = clients.figures(sharedWindows)
            let tokS = trainProgress * Double(training.tokensPerStep) / trainSeconds
            shared.append(SharedPhase(share: share, alone: alone, aloneTrainerRun: aloneRun, serving: together,
                                      trainTokS: tokS, governor: g))
            log(String(format: "share %.2f: alone %.1f tok/s p99 %.1f ms; with training %.1f tok/s p99 %.1f ms, trainer %.1f tok/s",
                       share, alone.tokS, alone.p99 * 1000, together.tokS, together.p99 * 1000, tokS))
        }
        await clients.stop(streams)
        return Report(options: o, shared: shared, trainAloneTokS: aloneTokS, referenceTokS: referenceTokS,
                      yieldPointsPerStep: pacer.yieldPointsPerStep, longestGap: pacer.longestGap, loadAverage: loadAverage)
    }

    // MARK: - Serving clients

    /// `streams` clients, each submitting greedy requests back to back; records every token's arrival.
    final class StreamClients: @unchecked Sendable {
        let engine: Engine
        let options: Options
        private let lock = NSLock()
        /// Arrival (s, monotonic) of every token, and for every token but a stream's first, the gap since the
        /// previous one of the same stream.
        private var arrivals: [Double] = []
        private var gaps: [(at: Double, gap: Double)] = []

        init(engine: Engine, options: Options) {
            self.engine = engine
            self.options = options
        }

        func start(vocab: Int) -> Task<Void, Never> {
            let o = options
            return Task.detached { [self] in
                await withTaskGroup(of: Void.self) { group in
                    for i in 0..<o.streams {
                        group.addTask { await self.client(i, vocab: vocab) }
                    }
                }
            }
        }

        private func client(_ index: Int, vocab: Int) async {
            var round = 0
            while !Task.isCancelled {
                // The first requests are cut short in steps of genTokens/streams, so the streams end (and re-submit)
                // at different times, as independent clients would.
                let tokens = round == 0 ? max(1, options.genTokens * (index + 1) / options.streams) : options.genTokens
                // Distinct prompts per stream and round (ids 1000+), BOS first.
                var ids: [Int32] = [2]
                for k in 1..<options.promptTokens {
                    ids.append(Int32(1000 + ((k * 7919 + (index + 4 * round) * 104_729) % min(20_000, vocab - 1000))))
                }
                round += 1
                var sampling = SamplingParams()
                sampling.temperature = 0
                sampling.logprobs = false
                let request = GenerationRequest(promptTokens: ids, maxTokens: tokens, sampling: sampling,
                                                ignoreEOS: true)
                guard let handle = try? engine.submit(request) else { return }
                var last: Double?
                for await event in handle.events {
                    guard case .token = event else { continue }
                    let now = monotonicSeconds()
                    lock.withLock {
                        arrivals.append(now)
                        if let last { gaps.append((now, now - last)) }
                    }
                    last = now
                }
            }
        }

        /// Waits `seconds` and returns that window (monotonic seconds).
        func window(seconds: Double) async throws -> (Double, Double) {
            let t0 = monotonicSeconds()
            try await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
            return (t0, monotonicSeconds())
        }

        /// Figures of the tokens that arrived within `windows`.
        func figures(_ windows: [(Double, Double)]) -> ServingFigures {
            func inside(_ t: Double) -> Bool { windows.contains { t >= $0.0 && t < $0.1 } }
            let (n, g): (Int, [Double]) = lock.withLock {
                (arrivals.lazy.filter(inside).count, gaps.filter { inside($0.at) }.map(\.gap))
            }
            let span = windows.reduce(0) { $0 + ($1.1 - $1.0) }
            let sorted = g.sorted()
            func pct(_ p: Double) -> Double {
                sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int((p * Double(sorted.count)).rounded(.up)) - 1)]
            }
            return ServingFigures(tokS: span > 0 ? Double(n) / span : 0, p50: pct(0.5), p99: pct(0.99),
                                  mean: sorted.isEmpty ? 0 : sorted.reduce(0, +) / Double(sorted.count),
                                  max: sorted.last ?? 0, samples: sorted.count)
        }

        func stop(_ task: Task<Void, Never>) async {
            task.cancel()
            await task.value
        }
    }

    // MARK: - Training thread

    /// A TrainingRun over random token sequences, on a thread of its own, until stopped.
    final class TrainingThread: @unchecked Sendable {
        let run: TrainingRun<AdamW>
        let tokensPerStep: Int
        private let lock = NSLock()
        private var stopRequested = false
        private var error: Error?
        private(set) var finished = false
        private let done = DispatchSemaphore(value: 0)

        init(trainer: LoRATrainer, options o: Options) throws {
            let c = trainer.model.config
            var rng = TrainingRNG(seed: 0)
            let config = LoRAConfig(rank: 8, alpha: 16, targets: Projection.allCases, layers: Array(0..<c.nLayer))
            let params = try LoRAParameters.fresh(config: config, model: c, rng: &rng)
            let vocab = UInt64(min(c.nVocab, 256_000) - 3)
            let sequences = (0..<(2 * o.trainBatch)).map { _ -> TrainingSequence in
                let ids = (0..<o.trainSeq).map { i -> Int32 in i == 0 ? 2 : Int32(3 + rng.nextInt(below: vocab)) }
                let first = o.trainLast.map { max(1, o.trainSeq - $0) } ?? 1
                return TrainingSequence(inputIds: ids, labelsMask: (0..<o.trainSeq).map { UInt8($0 >= first ? 1 : 0) })
            }
            tokensPerStep = o.trainBatch * o.trainSeq
            let objective = SFTObjective(trainer: trainer, examples: sequences)
            run = TrainingRun(
                params: params, objective: objective,
                optimizer: AdamW(count: params.count, config: AdamWConfig(weightDecay: 0.01)),
                options: TrainingLoopOptions(length: .steps(1 << 30), batchSize: o.trainBatch),
                schedule: { _ in 1e-4 }, clip: { g in GradientClipping.clip(&g, maxNorm: 1.0) }, checkpoints: nil,
                fingerprint: "bench", rng: rng)
        }

        func start(pacer: BenchPacer) {
            let t = Thread { [self] in
                do {
                    _ = try run.run(resume: false, isCancelled: { self.lock.withLock { self.stopRequested } },
                                    progress: { if case .step = $0 { pacer.markStep() } })
                } catch {
                    lock.withLock { self.error = error }
                }
                lock.withLock { finished = true }
                done.signal()
            }
            t.name = "lorad-bench-train"
            t.stackSize = 16 << 20
            t.start()
        }

        /// Waits until `steps` steps are done (or the run failed).
        func waitForSteps(_ pacer: BenchPacer, _ steps: Int) async throws {
            while pacer.stepsDone < steps {
                if lock.withLock({ finished }) { try rethrow(); return }
                try await Task.sleep(for: .milliseconds(20))
            }
        }

        func rethrow() throws {
            if let e = lock.withLock({ error }) { throw e }
        }

        /// Stops after the current step and waits for the thread.
        func stop() {
            let running: Bool = lock.withLock {
                stopRequested = true
                return !finished
            }
            if running { done.wait() }
        }
    }

    // MARK: - Pacer with progress

    /// The trainer's pacer during the benchmark: counts yield points per step, times them in the reference steps,
    /// and hands each yield point to the governor once one is set.
    final class BenchPacer: TrainingPacer, @unchecked Sendable {
        private let lock = NSLock()
        private var innerValue: TrainingGovernor?
        private var recordingValue = false
        private var stepStart = monotonicSeconds()
        private var inStep = 0
        private var times: [Double] = []
        /// Mean time of the k-th yield point of a step as a fraction of the step, from the recorded steps.
        private var profile: [Double] = []
        private var profileSteps = 0
        private var profileSeconds = 0.0
        private var steps = 0

        var inner: TrainingGovernor? {
            get { lock.withLock { innerValue } }
            set { lock.withLock { innerValue = newValue } }
        }
        var recording: Bool {
            get { lock.withLock { recordingValue } }
            set { lock.withLock { recordingValue = newValue } }
        }
        var stepsDone: Int { lock.withLock { steps } }
        /// While alternating: the governor the odd steps go through, and the step times of each kind.
        private var alternateWith: TrainingGovernor?
        private var governedTimes: [Double] = []
        private var unpacedTimes: [Double] = []

        /// From the next step on, steps alternate between `governor` and no pacer (starting unpaced).
        func alternate(with governor: TrainingGovernor) {
            lock.withLock {
                alternateWith = governor
                innerValue = nil
                governedTimes = []
                unpacedTimes = []
            }
        }

        /// Ends alternating; returns the median step seconds (governed, unpaced).
        func stopAlternating() -> (Double, Double) {
            lock.withLock {
                alternateWith = nil
                func median(_ x: [Double]) -> Double {
                    let s = x.sorted()
                    guard !s.isEmpty else { return .nan }
                    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
                }
                return (median(governedTimes), median(unpacedTimes))
            }
        }
        var yieldPointsPerStep: Int { lock.withLock { profile.count } }

        func yieldPoint() {
            let g: TrainingGovernor? = lock.withLock {
                inStep += 1
                if recordingValue { times.append(monotonicSeconds() - stepStart) }
                return innerValue
            }
            g?.yieldPoint()
        }

        var threadLimit: Int? { inner?.threadLimit }

        /// A step ended (called from the run's progress callback).
        func markStep() {
            lock.withLock {
                let now = monotonicSeconds()
                if recordingValue, !times.isEmpty {
                    let total = now - stepStart
                    let fractions = times.map { $0 / total }
                    if profile.count != fractions.count {
                        profile = fractions
                        profileSteps = 1
                        profileSeconds = total
                    } else {
                        profileSteps += 1
                        for i in 0..<profile.count {
                            profile[i] += (fractions[i] - profile[i]) / Double(profileSteps)
                        }
                        profileSeconds += (total - profileSeconds) / Double(profileSteps)
                    }
                }
                if let g = alternateWith {
                    if innerValue == nil { unpacedTimes.append(now - stepStart) } else { governedTimes.append(now - stepStart) }
                    innerValue = innerValue == nil ? g : nil
                }
                times.removeAll(keepingCapacity: true)
                steps += 1
                inStep = 0
                stepStart = now
            }
        }

        /// The longest gap between consecutive yield points of the mean recorded step (seconds) and the 1-based
        /// index of the yield point that ends it (count + 1: the step's end).
        var longestGap: (seconds: Double, endsAt: Int) {
            lock.withLock {
                let marks = [0] + profile + [1]
                var best = (seconds: 0.0, endsAt: 0)
                for i in 1..<marks.count where (marks[i] - marks[i - 1]) * profileSeconds > best.seconds {
                    best = ((marks[i] - marks[i - 1]) * profileSeconds, i)
                }
                return best
            }
        }

        /// Steps done, plus the fraction of the current one its yield points reached.
        func progress() -> Double {
            lock.withLock {
                guard !profile.isEmpty, inStep > 0 else { return Double(steps) }
                return Double(steps) + profile[min(inStep, profile.count) - 1]
            }
        }
    }
}

/// CLOCK_MONOTONIC in seconds.
private func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

private func r1(_ x: Double) -> Double { (x * 10).rounded() / 10 }
private func r2(_ x: Double) -> Double { (x * 100).rounded() / 100 }
private func r3(_ x: Double) -> Double { (x * 1000).rounded() / 1000 }
