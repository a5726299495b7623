// WakeSignal: "work may be waiting" for a background loop (the job runner, the continual loop). `notify()` wakes the
// loop's current or next `wait(timeout:)`; several notifications before it waits count as one.

/// A coalescing wake-up with a timeout.
final class WakeSignal: Sendable {
    private let continuation: AsyncStream<Void>.Continuation
    private let stream: AsyncStream<Void>

    init() {
        (stream, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// Wakes the waiter (now, or the next one to wait).
    func notify() { continuation.yield() }

    /// Returns at the next ``notify()`` (or one that came since the last wait) or after `timeout`.
    func wait(timeout: Duration) async {
        let stream = self.stream
        await withTaskGroup(of: Void.self) { g in
            g.addTask {
                for await _ in stream { return }
            }
            g.addTask { try? await Task.sleep(for: timeout) }
            await g.next()
            g.cancelAll()
        }
    }
}
