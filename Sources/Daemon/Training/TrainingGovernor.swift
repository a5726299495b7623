// TrainingGovernor: paces a LoRA training run against serving on the same cores (LEARNING-DECISIONS #8).
//
// SCHED_IDLE or nice 19 would starve training on 2 busy cores, and an unpaced trainer halves serving's speed. So
// the trainer runs freely while serving is idle, and while serving has work (sequences running or waiting) it
// runs only as much as keeps its share of wall time at `minShare`, sleeping at its yield points (see
// `TrainingPacer`) otherwise. 0 = train only while serving is idle; 1 = never pause.
//
// The policy (`TrainingSharePolicy`) keeps a debt in seconds: while serving is busy, each stretch of training
// between two yield points adds (1 − minShare)·its length, each pause pays minShare·its length, and the trainer
// sleeps while the debt is positive. A pause therefore lasts (1 − s)/s times the stretch before it (45 ms after
// 15 ms at s = 0.25): run and sleep interleave finely, which keeps the latency a decode step sees small, and over
// any window of W seconds of busy serving the trainer runs s·W give or take one stretch. While serving is idle
// the debt is forgiven; the stretch that was running when serving became busy is charged in full, so the trainer
// steps aside at its next yield point.
//
// While serving is busy the trainer may also run on fewer threads (`busyThreadLimit`; the daemon uses half): on
// 2 cores, 2 trainer threads beside serving's 2 halve the speed of every decode step they overlap, 1 thread costs
// serving far less for about the same training progress (README, "Training while serving").
//
// Wiring: `attach(to: engine)` makes the engine report busy/idle; `LoRATrainer.pacer = governor` makes the
// trainer ask. The clock is CLOCK_MONOTONIC; sleeps are timed waits on a condition variable on that clock, cut
// short when serving goes idle.
import Foundation
import Train
#if canImport(Glibc)
import Glibc
#endif

/// The share policy as a pure state machine over a caller-supplied monotonic clock (nanoseconds), so it can be
/// driven by a fake clock in tests. One trainer calls it: `enter` at each yield point, `resume` after each pause.
public struct TrainingSharePolicy: Sendable, Equatable {
    /// What the trainer does at a yield point.
    public enum Decision: Sendable, Equatable {
        /// Go on training now.
        case run
        /// Sleep until the clock reads this (ns), or until serving becomes idle, then call `resume`.
        case sleep(until: UInt64)
        /// Sleep until serving becomes idle (`minShare` 0), then call `resume`.
        case sleepUntilIdle
    }

    /// Share of wall time the trainer keeps while serving is busy, 0…1.
    public var minShare: Double
    /// Seconds of training not yet paid for by pauses (≥ 0).
    public private(set) var debt: Double = 0
    /// When training last resumed (ns), nil before the first yield point.
    public private(set) var runningSince: UInt64?
    /// When the current pause began (ns).
    public private(set) var pausedSince: UInt64?
    /// Counters since creation (seconds and counts); see `TrainingGovernorStatistics`.
    public private(set) var stats = TrainingGovernorStatistics()

    /// - Parameter minShare: 0…1 (clamped).
    public init(minShare: Double) {
        self.minShare = min(max(minShare.isFinite ? minShare : 0, 0), 1)
    }

    /// A yield point at `now`: charges the stretch of training since the last one, then decides.
    /// - Parameters: busy: serving has sequences running or waiting.
    public mutating func enter(now: UInt64, busy: Bool) -> Decision {
        if let since = runningSince {
            let ran = seconds(now &- since, if: now >= since)
            stats.runSeconds += ran
            if busy {
                stats.longestStretch = max(stats.longestStretch, ran)
                stats.busyRunSeconds += ran
                debt += (1 - minShare) * ran
            }
        }
        stats.yieldPoints += 1
        runningSince = nil
        return decide(now: now, busy: busy)
    }

    /// After a pause, at `now`: pays the pause into the debt, then decides again (a pause cut short by more work
    /// for serving, or a spurious wake-up, may sleep again).
    public mutating func resume(now: UInt64, busy: Bool) -> Decision {
        if let since = pausedSince {
            let slept = seconds(now &- since, if: now >= since)
            stats.pausedSeconds += slept
            debt = max(0, debt - minShare * slept)
        }
        let continuing = pausedSince != nil
        pausedSince = nil
        return decide(now: now, busy: busy, continuing: continuing)
    }

    /// `continuing`: called from `resume`, so a further sleep continues the same pause (counted once).
    private mutating func decide(now: UInt64, busy: Bool, continuing: Bool = false) -> Decision {
        guard busy else {
            debt = 0
            runningSince = now
            return .run
        }
        if minShare <= 0 {
            pausedSince = now
            if !continuing { stats.pauses += 1 }
            return .sleepUntilIdle
        }
        // Pay the debt with a pause of debt/s; below a microsecond it is not worth a sleep.
        let pause = debt / minShare
        guard pause >= 1e-6, minShare < 1 else {
            runningSince = now
            return .run
        }
        pausedSince = now
        if !continuing { stats.pauses += 1 }
        return .sleep(until: now &+ UInt64(min(pause, 3600) * 1e9))
    }

    /// Starts the counters afresh (the policy's state is kept).
    public mutating func resetStatistics() { stats = TrainingGovernorStatistics() }

    private func seconds(_ ns: UInt64, if valid: Bool) -> Double { valid ? Double(ns) / 1e9 : 0 }
}

/// What the governor has seen since it was created (seconds are wall time on the monotonic clock).
public struct TrainingGovernorStatistics: Sendable, Equatable {
    /// Yield points the trainer passed.
    public var yieldPoints = 0
    /// Pauses at yield points (one per pause, however many wake-ups it takes).
    public var pauses = 0
    /// Seconds the trainer ran (between yield points, outside pauses).
    public var runSeconds = 0.0
    /// Of those, seconds charged while serving was busy.
    public var busyRunSeconds = 0.0
    /// Seconds paused at yield points.
    public var pausedSeconds = 0.0
    /// Longest stretch between two yield points that ended while serving was busy, seconds: how long serving may
    /// wait for the trainer to step aside.
    public var longestStretch = 0.0

    public init() {}

    /// The trainer's share of wall time while serving was busy: busy run time / (busy run time + pauses).
    public var busyShare: Double? {
        let total = busyRunSeconds + pausedSeconds
        return total > 0 ? busyRunSeconds / total : nil
    }

    /// `self − earlier`, for the figures of an interval (`longestStretch` is kept as is).
    public func since(_ earlier: TrainingGovernorStatistics) -> TrainingGovernorStatistics {
        var d = self
        d.yieldPoints -= earlier.yieldPoints
        d.pauses -= earlier.pauses
        d.runSeconds -= earlier.runSeconds
        d.busyRunSeconds -= earlier.busyRunSeconds
        d.pausedSeconds -= earlier.pausedSeconds
        return d
    }
}

/// Paces a training run against serving: give it to `LoRATrainer.pacer`, and `attach(to:)` the engine (or report
/// the load with `setServingBusy`). One governor serves one trainer at a time; it may be reused by the next run.
///
/// Usage (a fine-tuning job in the daemon):
/// ```swift
/// let governor = state.trainingGovernor   // the daemon's: min_share and busy threads from the config, attached
/// trainer.pacer = governor                // LoRATrainer on the served model
/// let outcome = try run.run(resume: true, isCancelled: { job.cancelled })
/// ```
public final class TrainingGovernor: TrainingPacer, @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var policy: TrainingSharePolicy
    private var busy = false
    private var threadsWhileBusy: Int?

    /// - Parameters:
    ///   - minShare: the trainer's share of wall time while serving is busy, 0…1 (`training_min_share`).
    ///   - threadsWhileBusy: threads the trainer uses while serving is busy (nil: all of its pool).
    public init(minShare: Double, threadsWhileBusy: Int? = nil) {
        policy = TrainingSharePolicy(minShare: minShare)
        self.threadsWhileBusy = threadsWhileBusy.map { max(1, $0) }
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    /// The share of wall time the trainer keeps while serving is busy, 0…1; changing it applies from the next
    /// yield point (a SIGHUP reload sets it).
    public var minShare: Double {
        get { locked { policy.minShare } }
        set { locked { policy.minShare = min(max(newValue.isFinite ? newValue : 0, 0), 1); pthread_cond_broadcast(cond) } }
    }

    /// Threads the trainer uses while serving is busy (nil: all).
    public var busyThreadLimit: Int? {
        get { locked { threadsWhileBusy } }
        set { locked { threadsWhileBusy = newValue.map { max(1, $0) } } }
    }

    /// Threads a trainer of `trainerThreads` uses while serving is busy by default: half, at least 1 (measured on
    /// 2 cores with `lorad bench --serving-while-training`: 1 of 2 keeps serving within its targets at share 0.25
    /// with the same training progress as 2).
    public static func defaultBusyThreads(trainerThreads: Int) -> Int { max(1, trainerThreads / 2) }

    /// Whether serving has work, as last reported.
    public var isServingBusy: Bool { locked { busy } }

    /// Counters since creation or the last `resetStatistics()`.
    public var statistics: TrainingGovernorStatistics { locked { policy.stats } }

    /// Starts the counters afresh.
    public func resetStatistics() { locked { policy.resetStatistics() } }

    /// Reports serving's load: busy = sequences running or waiting. Going idle wakes a paused trainer at once.
    /// Cheap and non-blocking beyond a short lock: safe to call from under the engine's lock.
    public func setServingBusy(_ isBusy: Bool) {
        locked {
            busy = isBusy
            if !isBusy { pthread_cond_broadcast(cond) }
        }
    }

    /// Makes `engine` report its load to this governor (replacing any earlier observer of that engine).
    public func attach(to engine: Engine) {
        engine.observeLoad { [weak self] busy in self?.setServingBusy(busy) }
    }

    // MARK: - TrainingPacer

    /// Charges the training since the last yield point and sleeps as long as the share policy says (cut short
    /// when serving goes idle).
    public func yieldPoint() {
        pthread_mutex_lock(mutex)
        var decision = policy.enter(now: Self.monotonicNow(), busy: busy)
        while decision != .run {
            switch decision {
            case .sleep(let until):
                var ts = Glibc.timespec(tv_sec: Int(until / 1_000_000_000), tv_nsec: Int(until % 1_000_000_000))
                _ = pthread_cond_timedwait(cond, mutex, &ts)
            case .sleepUntilIdle:
                // Woken by setServingBusy(false) or a new minShare; the timeout only bounds a lost wake-up.
                var ts = Self.deadline(after: 1_000_000_000)
                _ = pthread_cond_timedwait(cond, mutex, &ts)
            case .run:
                break
            }
            decision = policy.resume(now: Self.monotonicNow(), busy: busy)
        }
        pthread_mutex_unlock(mutex)
    }

    /// `threadsWhileBusy` while serving is busy, else nil (all threads).
    public var threadLimit: Int? { locked { busy ? threadsWhileBusy : nil } }

    // MARK: - Clock

    /// CLOCK_MONOTONIC in nanoseconds.
    static func monotonicNow() -> UInt64 {
        var ts = Glibc.timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    static func deadline(after ns: UInt64) -> Glibc.timespec {
        let t = monotonicNow() &+ ns
        return Glibc.timespec(tv_sec: Int(t / 1_000_000_000), tv_nsec: Int(t % 1_000_000_000))
    }

    private func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }
}
