// SystemdNotifier: the service-manager notification protocol (sd_notify(3)) for a `Type=notify` service.
//
// Each call sends one datagram of newline-separated `KEY=value` assignments to the AF_UNIX socket named by
// `NOTIFY_SOCKET`, through libsystemd's `sd_notify`. Without `NOTIFY_SOCKET` (started by hand, in a test, under a
// supervisor that is not systemd) every call is a no-op, so callers never branch on "are we under systemd".
// libsystemd opens a fresh socket per call and keeps no state, so every function here is safe from any thread.
// The environment is left in place (`unset_environment = 0`) because the daemon notifies for its whole life.
//
// Limits: the notify socket is resolved from the environment at each call; changing `NOTIFY_SOCKET` while
// other threads notify is the caller's race (getenv/setenv are not synchronized by glibc).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CSystemd

/// Notifications from lorad to its service manager, following sd_notify(3) and the `Type=notify` /
/// `Type=notify-reload` protocol of systemd.service(5).
///
/// Every function is a no-op when `NOTIFY_SOCKET` is not set and is safe to call from any thread. The
/// `STATUS=` text is free-form; line breaks in it are replaced by spaces because the protocol is line-based.
///
/// Typical life of the daemon:
/// ```swift
/// SystemdNotifier.status("loading gemma-3-270m-q4_k_m")
/// // map the weights, bind or adopt the socket ...
/// SystemdNotifier.ready(status: "serving 0 sequences")
/// // engine loop, at least every `watchdogInterval / 2`:
/// SystemdNotifier.watchdog()
/// // SIGHUP:
/// SystemdNotifier.reloading(); /* re-read config */ SystemdNotifier.reloaded(status: "serving 0 sequences")
/// // SIGTERM:
/// SystemdNotifier.stopping()
/// ```
public enum SystemdNotifier {
    /// Outcome of one notification, mirroring the tri-state return value of `sd_notify`.
    public enum Outcome: Sendable, Equatable {
        /// The datagram was sent (`sd_notify` returned a positive value).
        case sent
        /// `NOTIFY_SOCKET` is not set: not running under a service manager that listens (`sd_notify` returned 0).
        case notSupported
        /// Sending failed; `errno` is the positive error number (`sd_notify` returned `-errno`), e.g. `ECONNREFUSED`
        /// when nothing is bound at `NOTIFY_SOCKET`, `EINVAL` for a malformed socket address.
        case failed(errno: Int32)
    }

    /// Sends `READY=1` and `STATUS=<status>`: start-up is complete (model mapped, socket listening).
    ///
    /// systemd marks a `Type=notify` unit active only after this; units ordered after lorad start then.
    /// - Parameter status: one-line human-readable state shown by `systemctl status`, e.g. `"serving 0 sequences"`.
    public static func ready(status: String) {
        send(["READY=1", statusAssignment(status)])
    }

    /// Sends `STATUS=<text>`: what the daemon is doing now (shown by `systemctl status` as `Status: "…"`).
    /// - Parameter text: one line, e.g. `"loading gemma-3-270m-q4_k_m"` or `"serving 3 sequences, 1 queued"`.
    public static func status(_ text: String) {
        send([statusAssignment(text)])
    }

    /// Sends `STOPPING=1`: shutdown has begun (SIGTERM); in-flight requests are being drained.
    public static func stopping() {
        send(["STOPPING=1"])
    }

    /// Sends `RELOADING=1` and `MONOTONIC_USEC=<now>`: the configuration is being re-read (SIGHUP).
    ///
    /// `MONOTONIC_USEC` is `CLOCK_MONOTONIC` in microseconds, taken at the moment of the call, as the
    /// `Type=notify-reload` protocol requires so the manager can match the reload to its request. Follow it with
    /// ``reloaded(status:)`` once the new configuration is in effect (or has been rejected).
    public static func reloading() {
        send(["RELOADING=1", "MONOTONIC_USEC=\(monotonicMicroseconds())"])
    }

    /// Sends `READY=1` and `STATUS=<status>` after a reload: the daemon is serving again.
    /// - Parameter status: one-line state, e.g. `"serving 0 sequences (configuration reloaded)"`.
    public static func reloaded(status: String) {
        send(["READY=1", statusAssignment(status)])
    }

    /// Sends `WATCHDOG=1`, the keep-alive ping.
    ///
    /// Call it from the compute loop's heartbeat (not from a timer on an I/O thread), at least every half of
    /// ``watchdogInterval``, so that a hung forward pass stops the pings and systemd restarts the service.
    public static func watchdog() {
        send(["WATCHDOG=1"])
    }

    /// The watchdog timeout systemd enforces for this process (`WatchdogSec=` of the unit), or `nil` when the
    /// watchdog is off or is meant for another process.
    ///
    /// Read with `sd_watchdog_enabled(0, &usec)`, which checks `WATCHDOG_USEC` and, when set, that `WATCHDOG_PID`
    /// is this process. Ping at least every half of this interval (sd_watchdog_enabled(3)).
    public static var watchdogInterval: Duration? {
        var usec: UInt64 = 0
        let r = sd_watchdog_enabled(0, &usec)
        guard r > 0, usec > 0, usec <= UInt64(Int64.max) else { return nil }
        return .microseconds(Int64(usec))
    }

    /// Sends `EXTEND_TIMEOUT_USEC=<duration>`: asks for more time to finish starting (or stopping) than
    /// `TimeoutStartSec=` (or `TimeoutStopSec=`) grants, e.g. while mapping a large model.
    ///
    /// The manager then expects another message within `duration`; the timeout only fires once the original one
    /// has also passed. Send it from each step of a long operation, so that progress keeps the service alive and
    /// a hang does not.
    /// - Parameter duration: additional time from now; negative durations are sent as 0.
    public static func extendTimeout(by duration: Duration) {
        send([extendTimeoutAssignment(duration)])
    }

    /// Sends `EXTEND_TIMEOUT_USEC=<duration>` and `STATUS=<status>` in one datagram: the progress report of one
    /// step of a long start-up (see ``extendTimeout(by:)``).
    /// - Parameters:
    ///   - duration: time the next step may take; negative durations are sent as 0.
    ///   - status: one line, e.g. `"loading model: reading weights 40% (100 of 250 MiB)"`.
    public static func extendTimeout(by duration: Duration, status: String) {
        send([extendTimeoutAssignment(duration), statusAssignment(status)])
    }

    /// Sends the given assignments (each `KEY=value`, no line breaks) as one datagram.
    ///
    /// The lower-level entry point behind the functions above; exposed so callers and tests can see the outcome.
    /// - Parameter assignments: protocol variables from sd_notify(3), e.g. `["READY=1", "STATUS=serving"]`.
    /// - Returns: ``Outcome/sent``, ``Outcome/notSupported`` without `NOTIFY_SOCKET`, or ``Outcome/failed(errno:)``.
    @discardableResult
    public static func send(_ assignments: [String]) -> Outcome {
        let state = assignments.joined(separator: "\n")
        let r = sd_notify(0, state)
        if r > 0 { return .sent }
        if r == 0 { return .notSupported }
        return .failed(errno: -r)
    }

    // MARK: - Helpers

    /// `EXTEND_TIMEOUT_USEC=` in whole microseconds (saturating; negative durations as 0).
    static func extendTimeoutAssignment(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        guard seconds >= 0 else { return "EXTEND_TIMEOUT_USEC=0" }
        let (usec, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1_000_000)
        let total = overflow ? UInt64.max : usec &+ UInt64(max(0, attoseconds) / 1_000_000_000_000)
        return "EXTEND_TIMEOUT_USEC=\(total)"
    }

    /// `STATUS=` with line breaks flattened: a newline would start a new assignment in the datagram.
    static func statusAssignment(_ text: String) -> String {
        var line = ""
        line.reserveCapacity(text.utf8.count)
        for ch in text.unicodeScalars {
            line.unicodeScalars.append(ch == "\n" || ch == "\r" ? " " : ch)
        }
        return "STATUS=" + line
    }

    /// `CLOCK_MONOTONIC` now, in microseconds (the clock systemd uses for `MONOTONIC_USEC`).
    static func monotonicMicroseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000 &+ UInt64(ts.tv_nsec) / 1_000
    }
}
