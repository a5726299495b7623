// ComputePool: persistent worker threads with low-latency fork/join.
//
// Work is published as a numbered set of tasks; every participating thread (the caller included) claims task
// indices from one atomic word until none are left. A worker that is descheduled therefore never stalls a job:
// the threads that are running take its share. Idle workers spin briefly for the next job, then sleep on a
// condition variable, so an idle daemon uses no CPU.
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Persistent worker threads (not GCD) with low-latency fork/join. `threads: 1` runs everything inline on the
/// caller's thread with no synchronization.
///
/// A job's task bodies may run on any participating thread, and several tasks may run one after another on
/// the same thread, so a body must never wait for another body of the same job.
/// `run`/`parallelFor` must not be called concurrently on one pool, nor from inside a task body.
public final class ComputePool: @unchecked Sendable {
    /// Number of threads taking part in a job (the caller plus `threads - 1` workers).
    public let threads: Int
    private let shared: PoolState?

    /// Creates a pool of `threads` participants (at least 1). Starts `threads - 1` worker threads.
    /// - Parameter spinMicroseconds: how long an idle worker (and a waiting caller) spins before sleeping.
    public init(threads: Int, spinMicroseconds: Int = 200) {
        self.threads = max(1, threads)
        if self.threads == 1 {
            shared = nil
            return
        }
        let state = PoolState(spinNanoseconds: UInt64(max(0, spinMicroseconds)) * 1000, workers: self.threads - 1)
        shared = state
        for index in 1..<self.threads {
            let thread = Thread { state.workerLoop(index: index) }
            thread.name = "lorad-compute-\(index)"
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    deinit {
        shared?.shutdown()
    }

    /// Threads that take part in jobs from now on: the caller plus `participants - 1` workers (clamped to
    /// 1…`threads`; initially `threads`). The other workers sleep until it is raised again. Tasks are claimed
    /// dynamically, so a job runs the same tasks with the same results on fewer threads. Any thread may set it, also
    /// while a job runs (a worker already in that job finishes the tasks it claims).
    public var participants: Int {
        get { (shared?.activeWorkers ?? 0) + 1 }
        set { shared?.setActiveWorkers(min(max(newValue, 1), threads) - 1) }
    }

    /// Calls `body(threadIndex)` for every threadIndex in `0..<threads` concurrently and waits for all.
    public func run(_ body: (Int) -> Void) {
        parallelFor(threads, body)
    }

    /// Calls `body(task)` for every task in `0..<tasks`, spread over the pool's threads, and waits for all.
    /// Tasks are claimed dynamically, in increasing order, by whichever thread is free.
    public func parallelFor(_ tasks: Int, _ body: (Int) -> Void) {
        guard tasks > 0 else { return }
        guard let shared, tasks > 1 else {
            for t in 0..<tasks { body(t) }
            return
        }
        withoutActuallyEscaping(body) { escapable in
            shared.execute(tasks: tasks, escapable)
        }
    }
}

/// State shared between a pool and its workers (the workers keep it alive, not the pool).
///
/// The job word packs `generation (32 bits) | task count (16 bits) | next unclaimed task (16 bits)`, so a
/// claim and the job it belongs to are read in one atomic operation.
final class PoolState: @unchecked Sendable {
    static let maxTasks = 1 << 14
    private let state = Atomic<UInt64>(0)
    private let completed = Atomic<Int>(0)
    private let sleepingWorkers = Atomic<Int>(0)
    private let callerSleeping = Atomic<Int>(0)
    private let stopping = Atomic<Bool>(false)
    /// Workers (indices 1…) that take part in jobs; the ones above sleep on `unpark`.
    private let active: Atomic<Int>
    private var body: ((Int) -> Void)?
    private let spinNanoseconds: UInt64
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private let done = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private let unpark = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init(spinNanoseconds: UInt64, workers: Int) {
        self.spinNanoseconds = spinNanoseconds
        active = Atomic<Int>(workers)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(wake, nil)
        pthread_cond_init(done, nil)
        pthread_cond_init(unpark, nil)
    }

    func shutdown() {
        stopping.store(true, ordering: .sequentiallyConsistent)
        pthread_mutex_lock(mutex)
        pthread_cond_broadcast(wake)
        pthread_cond_broadcast(unpark)
        pthread_mutex_unlock(mutex)
    }

    var activeWorkers: Int { active.load(ordering: .relaxed) }

    func setActiveWorkers(_ n: Int) {
        let old = active.exchange(n, ordering: .sequentiallyConsistent)
        if n > old {
            pthread_mutex_lock(mutex)
            pthread_cond_broadcast(unpark)
            pthread_mutex_unlock(mutex)
        }
    }

    /// Runs one job on the calling thread plus the workers; returns when every task has completed.
    func execute(tasks: Int, _ job: @escaping (Int) -> Void) {
        if tasks > PoolState.maxTasks {
            // Group consecutive tasks so the count fits the job word.
            let per = (tasks + PoolState.maxTasks - 1) / PoolState.maxTasks
            let groups = (tasks + per - 1) / per
            execute(tasks: groups) { g in
                for t in (g * per)..<min(tasks, (g + 1) * per) { job(t) }
            }
            return
        }
        let generation = (state.load(ordering: .relaxed) >> 32) &+ 1
        body = job
        completed.store(0, ordering: .relaxed)
        // Publishes `body` (release) and wakes sleepers (Dekker pairing with `sleepingWorkers`).
        state.store((generation << 32) | (UInt64(tasks) << 16), ordering: .sequentiallyConsistent)
        if sleepingWorkers.load(ordering: .sequentiallyConsistent) > 0 {
            pthread_mutex_lock(mutex)
            pthread_cond_broadcast(wake)
            pthread_mutex_unlock(mutex)
        }
        work(generation: generation & 0xffff_ffff)
        waitForCompletion(tasks)
        body = nil
    }

    /// Claims and runs tasks of `generation` until none are left.
    private func work(generation: UInt64) {
        var current = state.load(ordering: .acquiring)
        while true {
            let count = Int((current >> 16) & 0xffff)
            let index = Int(current & 0xffff)
            guard current >> 32 == generation, index < count else { return }
            let (exchanged, original) = state.compareExchange(
                expected: current, desired: current &+ 1, ordering: .acquiringAndReleasing)
            if !exchanged {
                current = original
                continue
            }
            // The job cannot complete before this claimed task does, so `body` is still this job's.
            if let job = body { job(index) }
            let finished = completed.add(1, ordering: .sequentiallyConsistent).newValue
            if finished == count {
                if callerSleeping.load(ordering: .sequentiallyConsistent) != 0 {
                    pthread_mutex_lock(mutex)
                    pthread_cond_broadcast(done)
                    pthread_mutex_unlock(mutex)
                }
                return
            }
            current = state.load(ordering: .acquiring)
        }
    }

    private func waitForCompletion(_ tasks: Int) {
        if completed.load(ordering: .acquiring) == tasks { return }
        let deadline = monotonicNanoseconds() &+ spinNanoseconds
        var spins = 0
        while completed.load(ordering: .acquiring) != tasks {
            spins += 1
            if spins & 63 == 0 {
                if monotonicNanoseconds() > deadline { break }
                sched_yield()
            }
        }
        if completed.load(ordering: .acquiring) == tasks { return }
        pthread_mutex_lock(mutex)
        callerSleeping.store(1, ordering: .sequentiallyConsistent)
        while completed.load(ordering: .sequentiallyConsistent) != tasks {
            pthread_cond_wait(done, mutex)
        }
        callerSleeping.store(0, ordering: .sequentiallyConsistent)
        pthread_mutex_unlock(mutex)
    }

    func workerLoop(index: Int) {
        var seen: UInt64 = 0
        while !stopping.load(ordering: .relaxed) {
            if index > active.load(ordering: .relaxed) {
                // Parked: sleep until the pool takes this worker back; jobs published meanwhile are not ours.
                pthread_mutex_lock(mutex)
                while index > active.load(ordering: .sequentiallyConsistent)
                    && !stopping.load(ordering: .sequentiallyConsistent) {
                    pthread_cond_wait(unpark, mutex)
                }
                pthread_mutex_unlock(mutex)
                seen = state.load(ordering: .acquiring) >> 32
                continue
            }
            // Spin for a new generation, then sleep.
            var generation = state.load(ordering: .acquiring) >> 32
            if generation == seen {
                let deadline = monotonicNanoseconds() &+ spinNanoseconds
                var spins = 0
                while generation == seen {
                    spins += 1
                    if spins & 63 == 0 {
                        if monotonicNanoseconds() > deadline { break }
                        // Let a runnable thread (network I/O, the client) have this core before the next job.
                        sched_yield()
                    }
                    generation = state.load(ordering: .acquiring) >> 32
                }
            }
            if generation == seen {
                pthread_mutex_lock(mutex)
                sleepingWorkers.add(1, ordering: .sequentiallyConsistent)
                while (state.load(ordering: .sequentiallyConsistent) >> 32) == seen
                    && !stopping.load(ordering: .sequentiallyConsistent) {
                    pthread_cond_wait(wake, mutex)
                }
                sleepingWorkers.subtract(1, ordering: .sequentiallyConsistent)
                pthread_mutex_unlock(mutex)
                continue
            }
            seen = generation
            if index > active.load(ordering: .relaxed) { continue }  // parked while it waited
            work(generation: generation)
        }
    }
}

@inline(__always)
private func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}
