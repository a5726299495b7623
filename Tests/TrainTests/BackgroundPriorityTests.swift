// `LoRATrainer(background: true)`: every thread of the trainer's pool runs under SCHED_IDLE (sched(7)), read back
// on each thread with sched_getscheduler(0) (pid 0 = the calling thread), and the loss and gradient are the same
// bits as with normal priority — the policy changes when threads run, never what they compute.
import Foundation
import Runtime
import Testing
import Train
#if canImport(Glibc)
import Glibc
#endif

@Suite("Background priority")
struct BackgroundPriorityTests {
    /// Carries the body to another thread and its result back (read only after the semaphore is signalled).
    final class Box<T>: @unchecked Sendable {
        let body: () throws -> T
        var value: Result<T, Error>?
        init(_ body: @escaping () throws -> T) { self.body = body }
    }

    /// Runs `body` on a thread of its own and waits: the calling thread of a background pool takes part in its jobs
    /// and is switched to SCHED_IDLE too, which must not happen to the test runner's threads.
    static func onOwnThread<T>(_ body: @escaping () throws -> T) throws -> T {
        let box = Box<T>(body)
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            box.value = Result { try box.body() }
            done.signal()
        }
        thread.stackSize = 8 << 20
        thread.start()
        done.wait()
        return try box.value!.get()
    }

    /// The scheduling policy of every distinct thread of `pool`, keyed by `pthread_self()`.
    static func policies(_ pool: ComputePool) -> [UInt: Int32] {
        let lock = NSLock()
        var seen: [UInt: Int32] = [:]
        for _ in 0..<200 where seen.count < pool.threads {
            pool.run { _ in
                let policy = sched_getscheduler(0)
                lock.lock(); seen[UInt(pthread_self())] = policy; lock.unlock()
                usleep(1000)
            }
        }
        return seen
    }

    @Test("background: true puts every pool thread under SCHED_IDLE and leaves loss and gradient bit-identical")
    func schedIdle() throws {
        let model = try TinyModel.make(arch: "gemma3", type: .f32, seed: 31, layers: 2)
        let params = TinyModel.params(model, layers: [0, 1], seed: 3)
        let batch = [TinyModel.sequence(12, seed: 5), TinyModel.sequence(9, seed: 6)]
        let schedIdle: Int32 = 5  // SCHED_IDLE in linux/sched.h

        let normal = try Self.onOwnThread { () throws -> (SFTResult, [UInt: Int32]) in
            let trainer = try LoRATrainer(model: model, threads: 2)
            return (try trainer.sftLossAndGradient(params: params, batch: batch), Self.policies(trainer.pool))
        }
        let idle = try Self.onOwnThread { () throws -> (SFTResult, [UInt: Int32]) in
            let trainer = try LoRATrainer(model: model, threads: 2, background: true)
            return (try trainer.sftLossAndGradient(params: params, batch: batch), Self.policies(trainer.pool))
        }
        print("pool thread policies: normal \(normal.1.values.sorted()), background \(idle.1.values.sorted())")
        #expect(normal.1.count == 2 && normal.1.values.allSatisfy { $0 != schedIdle })
        #expect(idle.1.count == 2 && idle.1.values.allSatisfy { $0 == schedIdle })
        #expect(idle.0.loss.bitPattern == normal.0.loss.bitPattern && idle.0.tokens == normal.0.tokens)
        #expect(idle.0.grad.map(\.bitPattern) == normal.0.grad.map(\.bitPattern))
        #expect(sched_getscheduler(0) != schedIdle)  // the test runner's thread was not touched
    }
}
