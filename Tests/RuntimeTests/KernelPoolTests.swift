// ComputePool: every index runs exactly once per job, on the calling thread when threads == 1, under repetition.
import Foundation
import Runtime
import Testing

@Suite("Kernel compute pool")
struct KernelPoolTests {
    final class Counts: @unchecked Sendable {
        let lock = NSLock()
        var counts: [Int]
        init(_ n: Int) { counts = [Int](repeating: 0, count: n) }
        func hit(_ i: Int) { lock.lock(); counts[i] += 1; lock.unlock() }
    }

    @Test("run calls body(threadIndex) once for each index", arguments: [1, 2, 3, 4])
    func runOncePerIndex(_ threads: Int) {
        let pool = ComputePool(threads: threads)
        #expect(pool.threads == threads)
        for _ in 0..<200 {
            let c = Counts(threads)
            pool.run { c.hit($0) }
            #expect(c.counts == [Int](repeating: 1, count: threads))
        }
    }

    @Test("parallelFor runs every task once, including more tasks than fit one job word", arguments: [1, 2, 3])
    func parallelForOncePerTask(_ threads: Int) {
        let pool = ComputePool(threads: threads)
        for tasks in [0, 1, 2, 7, 1000, 40_000] {
            let c = Counts(tasks)
            pool.parallelFor(tasks) { c.hit($0) }
            #expect(c.counts.allSatisfy { $0 == 1 }, "\(tasks) tasks")
        }
    }

    @Test("threads: 1 runs inline on the calling thread")
    func inline() {
        let pool = ComputePool(threads: 1)
        let caller = pthread_self()
        var same = true
        pool.run { _ in same = same && pthread_equal(pthread_self(), caller) != 0 }
        pool.parallelFor(5) { _ in same = same && pthread_equal(pthread_self(), caller) != 0 }
        #expect(same)
    }

    @Test("workers that went to sleep wake up for the next job")
    func wakesAfterSleep() throws {
        let pool = ComputePool(threads: 2, spinMicroseconds: 1)
        for round in 0..<5 {
            usleep(2000)  // longer than the spin: the worker sleeps on its condition variable
            let c = Counts(64)
            pool.parallelFor(64) { i in
                c.hit(i)
                usleep(50)
            }
            #expect(c.counts.allSatisfy { $0 == 1 }, "round \(round)")
        }
    }

    @Test("participants 1 runs every task on the calling thread; raising it brings the workers back")
    func participants() {
        let pool = ComputePool(threads: 3, spinMicroseconds: 1)
        #expect(pool.participants == 3)
        pool.participants = 1
        #expect(pool.participants == 1)
        let caller = pthread_self()
        let lock = NSLock()
        for round in 0..<20 {
            let c = Counts(32)
            var others = 0
            pool.parallelFor(32) { i in
                c.hit(i)
                if pthread_equal(pthread_self(), caller) == 0 { lock.withLock { others += 1 } }
                usleep(20)
            }
            #expect(c.counts.allSatisfy { $0 == 1 } && others == 0, "round \(round): \(others) tasks on workers")
        }
        pool.participants = 0  // clamped
        #expect(pool.participants == 1)
        pool.participants = 99
        #expect(pool.participants == 3)
        // Woken workers take part again: some task of some job runs off the calling thread.
        var threads = Set<UInt>()
        for _ in 0..<200 where threads.count < 3 {
            pool.parallelFor(16) { _ in
                lock.withLock { _ = threads.insert(UInt(pthread_self())) }
                usleep(100)
            }
        }
        #expect(threads.count == 3)
    }

    @Test("results written by tasks are visible after the job returns")
    func visibility() {
        let pool = ComputePool(threads: 2)
        let n = 10_000
        let buffer = UnsafeMutablePointer<Int>.allocate(capacity: n)
        defer { buffer.deallocate() }
        for round in 1...50 {
            pool.parallelFor(100) { t in
                for i in (t * 100)..<((t + 1) * 100) { buffer[i] = i &* round }
            }
            var ok = true
            for i in 0..<n where buffer[i] != i &* round { ok = false }
            #expect(ok, "round \(round)")
        }
    }
}
