// The training share governor (LEARNING-DECISIONS #8): the policy driven by a fake clock (share held over sliding
// windows, idle → no waits, share 0 → waits whenever busy), the governor's real sleeps and wake-ups, the engine's
// busy/idle reports, and `training.min_share` / `--training-min-share` validation.

import ArgumentParser
import Daemon
import Foundation
import Runtime
import Testing

/// Drives a `TrainingSharePolicy` the way a trainer would, on a fake clock: stretches of training of random length
/// between yield points, pauses as long as the policy says (cut short when serving goes idle).
struct PolicySimulation {
    var policy: TrainingSharePolicy
    var now: UInt64 = 1_000_000_000
    var rng = SplitMix64(seed: 7)
    /// Intervals (ns) during which the trainer ran.
    var runs: [(start: UInt64, end: UInt64)] = []
    var pauses: [UInt64] = []

    init(minShare: Double) { policy = TrainingSharePolicy(minShare: minShare) }

    /// Runs until `until` (ns) with serving `busy(t)`; stretches are uniform in `stretch` (ms).
    mutating func run(until: UInt64, stretch: ClosedRange<Double> = 3...30, busy: (UInt64) -> Bool) {
        var decision = policy.enter(now: now, busy: busy(now))
        while now < until {
            switch decision {
            case .run:
                let ms = stretch.lowerBound + (stretch.upperBound - stretch.lowerBound) * rng.unit()
                let end = now + UInt64(ms * 1e6)
                runs.append((now, end))
                now = end
                decision = policy.enter(now: now, busy: busy(now))
            case .sleep(let wake):
                // Woken early when serving goes idle (checked every millisecond of fake time).
                let start = now
                while now < wake && busy(now) { now = min(wake, now + 1_000_000) }
                pauses.append(now - start)
                decision = policy.resume(now: now, busy: busy(now))
            case .sleepUntilIdle:
                let start = now
                while busy(now) && now < until { now += 1_000_000 }
                pauses.append(now - start)
                decision = policy.resume(now: now, busy: busy(now))
            }
        }
    }

    /// The trainer's share of [a, b).
    func share(_ a: UInt64, _ b: UInt64) -> Double {
        var ran: UInt64 = 0
        for r in runs where r.end > a && r.start < b { ran += min(r.end, b) - max(r.start, a) }
        return Double(ran) / Double(b - a)
    }
}

/// SplitMix64 (Steele et al. 2014).
struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func unit() -> Double { Double(next() >> 11) / Double(1 << 53) }
}

@Suite("Training share policy (fake clock)")
struct TrainingSharePolicyTests {
    @Test("while serving is busy the trainer's share over every 1 s sliding window stays within 0.04 of min_share",
          arguments: [0.1, 0.25, 0.5, 0.75])
    func shareHeld(_ share: Double) {
        var sim = PolicySimulation(minShare: share)
        let start = sim.now, end = start + 30_000_000_000
        sim.run(until: end) { _ in true }
        var worst = 0.0
        var t = start
        while t + 1_000_000_000 <= end {
            worst = max(worst, abs(sim.share(t, t + 1_000_000_000) - share))
            t += 100_000_000
        }
        #expect(worst <= 0.04, "share \(share): worst 1 s window off by \(worst)")
        #expect(abs(sim.share(start, end) - share) <= 0.01)
        // Fine interleaving: no pause longer than (1 − s)/s times the longest stretch (30 ms), plus rounding.
        let longest = Double(sim.pauses.max() ?? 0) / 1e9
        #expect(longest <= (1 - share) / share * 0.030 + 0.001, "longest pause \(longest) s")
        #expect(abs((sim.policy.stats.busyShare ?? 0) - share) <= 0.01)
    }

    @Test("while serving is idle the trainer never waits")
    func idleNeverWaits() {
        var sim = PolicySimulation(minShare: 0.25)
        let start = sim.now
        sim.run(until: start + 10_000_000_000) { _ in false }
        #expect(sim.pauses.isEmpty)
        #expect(sim.policy.stats.pauses == 0)
        #expect(sim.share(start, start + 10_000_000_000) > 0.99)
        #expect(sim.policy.debt == 0)
    }

    @Test("min_share 0 waits at every yield point while serving is busy and resumes as soon as it is idle")
    func zeroWaitsWheneverBusy() {
        var p = TrainingSharePolicy(minShare: 0)
        #expect(p.enter(now: 0, busy: false) == .run)
        #expect(p.enter(now: 10_000_000, busy: true) == .sleepUntilIdle)
        #expect(p.resume(now: 20_000_000, busy: true) == .sleepUntilIdle)
        #expect(p.resume(now: 500_000_000, busy: false) == .run)
        // Busy from 1 s to 5 s, idle before and after: no training at all while busy.
        var sim = PolicySimulation(minShare: 0)
        let t0 = sim.now
        let busy: (UInt64) -> Bool = { $0 >= t0 + 1_000_000_000 && $0 < t0 + 5_000_000_000 }
        sim.run(until: t0 + 6_000_000_000, busy: busy)
        // The stretch that was running when serving became busy ends at the next yield point (≤ 30 ms).
        #expect(sim.share(t0 + 1_030_000_000, t0 + 5_000_000_000) == 0)
        #expect(sim.share(t0 + 5_001_000_000, t0 + 6_000_000_000) > 0.99)
        #expect(sim.share(t0, t0 + 1_000_000_000) > 0.99)
    }

    @Test("min_share 1 never waits; the stretch running when serving turns busy is charged, so the trainer steps aside")
    func oneNeverWaitsAndBusyOnsetPauses() {
        var sim = PolicySimulation(minShare: 1)
        let t0 = sim.now
        sim.run(until: t0 + 5_000_000_000) { _ in true }
        #expect(sim.pauses.isEmpty)

        var p = TrainingSharePolicy(minShare: 0.25)
        #expect(p.enter(now: 0, busy: false) == .run)
        // 20 ms of training, then serving is busy: debt 0.75·20 ms, so a pause of 60 ms.
        #expect(p.enter(now: 20_000_000, busy: true) == .sleep(until: 80_000_000))
        #expect(p.resume(now: 80_000_000, busy: true) == .run)
        #expect(p.debt < 1e-9)
        // Woken early by idle: the debt is forgiven.
        #expect(p.enter(now: 100_000_000, busy: true) == .sleep(until: 160_000_000))
        #expect(p.resume(now: 110_000_000, busy: false) == .run)
        #expect(p.debt == 0)
    }

    @Test("bursts of serving: share held while busy, free running while idle")
    func alternating() {
        var sim = PolicySimulation(minShare: 0.25)
        let t0 = sim.now
        // Busy 2 s, idle 1 s, repeated.
        let busy: (UInt64) -> Bool = { ($0 - t0) % 3_000_000_000 < 2_000_000_000 }
        sim.run(until: t0 + 30_000_000_000, busy: busy)
        for k in 0..<10 {
            let b = t0 + UInt64(k) * 3_000_000_000
            #expect(abs(sim.share(b + 100_000_000, b + 2_000_000_000) - 0.25) <= 0.04, "busy stretch \(k)")
            #expect(sim.share(b + 2_001_000_000, b + 3_000_000_000) > 0.99, "idle stretch \(k)")
        }
    }
}

@Suite("Training governor")
struct TrainingGovernorTests {
    final class Flag: @unchecked Sendable {
        let lock = NSLock()
        var value = false
        func set() { lock.withLock { value = true } }
        var isSet: Bool { lock.withLock { value } }
    }

    @Test("min_share 0: a yield point sleeps while serving is busy and returns once serving goes idle")
    func sleepsUntilIdle() async throws {
        let g = TrainingGovernor(minShare: 0, threadsWhileBusy: 1)
        g.yieldPoint()  // idle: returns at once
        #expect(g.threadLimit == nil)
        g.setServingBusy(true)
        #expect(g.threadLimit == 1)
        let returned = Flag()
        let thread = Thread {
            g.yieldPoint()
            returned.set()
        }
        thread.start()
        // Wait until the thread is inside its pause (a loaded machine may start it late), then hold it there 300 ms.
        let entered = Date().addingTimeInterval(30)
        while g.statistics.pauses == 0 && !returned.isSet && Date() < entered { try await Task.sleep(for: .milliseconds(5)) }
        try await Task.sleep(for: .milliseconds(300))
        #expect(!returned.isSet, "the trainer ran while serving was busy at share 0")
        g.setServingBusy(false)
        let done = Date().addingTimeInterval(30)
        while !returned.isSet && Date() < done { try await Task.sleep(for: .milliseconds(10)) }
        #expect(returned.isSet)
        #expect(g.statistics.pauses == 1)
        #expect(g.statistics.pausedSeconds >= 0.25)
    }

    @Test("idle: yield points never sleep")
    func idleDoesNotSleep() {
        let g = TrainingGovernor(minShare: 0.25)
        for _ in 0..<1000 { g.yieldPoint() }
        #expect(g.statistics.pauses == 0)
        #expect(g.statistics.yieldPoints == 1000)
        #expect(g.statistics.pausedSeconds == 0)
    }

    @Test("the engine reports busy on submission and idle once every sequence finished, to an attached governor")
    func engineReportsLoad() async throws {
        let backend = FakeBackend()
        let engine = Engine(
            backend: backend,
            limits: EngineLimits(maxSequences: 4, kvCacheBytes: 100_000 * FakeBackend.bytesPerToken, maxQueue: 8,
                                 stepTokenBudget: 64, contextSize: 4096))
        let g = TrainingGovernor(minShare: 0.5)
        g.attach(to: engine)
        #expect(!g.isServingBusy)
        var p = SamplingParams()
        p.temperature = 0
        let handle = try engine.submit(GenerationRequest(promptTokens: [FakeBackend.bos, 5, 6], maxTokens: 5, sampling: p))
        #expect(g.isServingBusy)  // queued before the engine even started
        engine.start()
        defer { engine.shutdown() }
        for await _ in handle.events {}
        let deadline = Date().addingTimeInterval(30)
        while g.isServingBusy && Date() < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(!g.isServingBusy)
    }
}

@Suite("Training share setting")
struct TrainingShareConfigTests {
    @Test("training.min_share in YAML, --training-min-share over it, default 0.25, 0 and 1 allowed")
    func values() throws {
        #expect(try DaemonConfig.resolve(layer: ConfigLayer(), environment: [:]).trainingMinShare == 0.25)
        let file = try ConfigFile.parse("training:\n  min_share: 0.5\n", path: "t.yaml")
        #expect(file.training?.minShare == 0.5)
        #expect(try DaemonConfig.resolve(layer: file, environment: [:]).trainingMinShare == 0.5)
        var flags = ConfigLayer()
        flags.training = ConfigLayer.TrainingLayer(minShare: 0)
        #expect(try DaemonConfig.resolve(layer: flags.over(file), environment: [:]).trainingMinShare == 0)
        #expect(try DaemonConfig.resolve(layer: ConfigLayer().over(file), environment: [:]).trainingMinShare == 0.5)
        flags.training = ConfigLayer.TrainingLayer(minShare: 1)
        #expect(try DaemonConfig.resolve(layer: flags, environment: [:]).trainingMinShare == 1)
    }

    @Test("out-of-range, non-numeric and unknown training keys are clear errors")
    func invalid() throws {
        for bad in [-0.1, 1.5, Double.nan] {
            var l = ConfigLayer()
            l.training = ConfigLayer.TrainingLayer(minShare: bad)
            #expect(throws: ConfigError.self) { try DaemonConfig.resolve(layer: l, environment: [:]) }
        }
        var l = ConfigLayer()
        l.training = ConfigLayer.TrainingLayer(minShare: 2)
        #expect(throws: ConfigError.invalidValue(key: "training.min_share", reason: "must be 0...1, got 2.0")) {
            try DaemonConfig.resolve(layer: l, environment: [:])
        }
        #expect(throws: ConfigError.unknownKeys(path: "t.yaml", keys: ["training.min_shares"])) {
            try ConfigFile.parse("training:\n  min_shares: 0.5\n", path: "t.yaml")
        }
        #expect(throws: ConfigError.self) { try ConfigFile.parse("training: 0.5\n", path: "t.yaml") }
        #expect(throws: ConfigError.self) { try ConfigFile.parse("training:\n  min_share: lots\n", path: "t.yaml") }
    }

    @Test("lorad serve --training-min-share 1.5 fails before loading anything, exit code 64, naming the key")
    func flagRejected() async throws {
        let command = try LoradCommand.parseAsRoot(["serve", "--config", "/dev/null", "--training-min-share", "1.5"])
        guard var serve = command as? AsyncParsableCommand else {
            Issue.record("serve is not async")
            return
        }
        do {
            try await serve.run()
            Issue.record("a share of 1.5 was accepted")
        } catch {
            #expect(LoradCommand.exitCode(for: error) == .validationFailure)
            #expect(LoradCommand.fullMessage(for: error).contains("training.min_share"))
        }
    }
}
