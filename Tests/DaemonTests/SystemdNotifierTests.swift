// SystemdNotifier, SocketActivation and JournalLogging, tested in-process against the kernel rather than systemd:
// the test binds its own AF_UNIX datagram socket with SO_PASSCRED, points NOTIFY_SOCKET at it, and checks the
// datagram text against sd_notify(3) and the sender pid the kernel attaches (SCM_CREDENTIALS).
//
// The suite is serialized because it changes process-wide environment variables. Suites running in parallel may
// spawn children that inherit NOTIFY_SOCKET for a moment; datagrams are therefore filtered by sender pid.

import Daemon
import Foundation
import Logging
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A failure in the test's own set-up (socket calls, child processes).
struct SystemdTestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// One notification datagram and the credentials and arrival time the kernel attached to it.
struct NotifyDatagram {
    var text: String
    var pid: pid_t
    var uid: uid_t
    /// When the kernel queued the datagram (SO_TIMESTAMP, CLOCK_REALTIME seconds): unaffected by how late the
    /// test gets to read it.
    var arrival: Double
    /// The `KEY=value` lines, in order.
    var assignments: [String] { text.split(separator: "\n").map(String.init) }
    func value(_ key: String) -> String? {
        for a in assignments where a.hasPrefix(key + "=") { return String(a.dropFirst(key.count + 1)) }
        return nil
    }
}

/// An AF_UNIX SOCK_DGRAM socket with SO_PASSCRED in a fresh temporary directory: a stand-in for systemd's
/// notification socket.
final class NotifyListener {
    let fd: Int32
    let directory: String
    let path: String

    init() throws {
        var template = Array("/tmp/lorad-notify-XXXXXX".utf8CString)
        guard let dir = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SystemdTestError("mkdtemp failed: errno \(errno)")
        }
        directory = String(cString: dir)
        path = directory + "/notify.sock"
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemdTestError("socket(AF_UNIX, SOCK_DGRAM) failed: errno \(errno)") }
        var on: Int32 = 1
        guard setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            throw SystemdTestError("SO_PASSCRED failed: errno \(errno)")
        }
        guard setsockopt(fd, SOL_SOCKET, Self.soTimestamp, &on, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            throw SystemdTestError("SO_TIMESTAMP failed: errno \(errno)")
        }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0 else { throw SystemdTestError("bind(\(path)) failed: errno \(errno)") }
    }

    deinit {
        close(fd)
        unlink(path)
        rmdir(directory)
    }

    /// SO_TIMESTAMP (= SCM_TIMESTAMP, a `struct timeval`) from <asm-generic/socket.h>; Glibc maps the macro to
    /// SO_TIMESTAMP_OLD through a conditional Swift does not import.
    static let soTimestamp: Int32 = 29

    /// The next datagram, or `nil` if none arrives within `seconds` (a safety bound, not a measured time).
    func receive(within seconds: Double) throws -> NotifyDatagram? {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let rc = poll(&pfd, 1, Int32(seconds * 1000))
        if rc == 0 { return nil }
        guard rc > 0 else { throw SystemdTestError("poll failed: errno \(errno)") }

        var data = [UInt8](repeating: 0, count: 4096)
        // Control buffer: cmsghdrs (16 bytes on LP64) each followed by its data, padded to 8 bytes: struct ucred
        // (pid, uid, gid: CMSG_SPACE = 32) and struct timeval (CMSG_SPACE = 32).
        var control = [UInt8](repeating: 0, count: 128)
        let n: Int = data.withUnsafeMutableBytes { dataRaw in
            control.withUnsafeMutableBytes { controlRaw in
                var iov = iovec(iov_base: dataRaw.baseAddress, iov_len: dataRaw.count)
                return withUnsafeMutablePointer(to: &iov) { iovPtr in
                    var msg = msghdr()
                    msg.msg_iov = iovPtr
                    msg.msg_iovlen = 1
                    msg.msg_control = controlRaw.baseAddress
                    msg.msg_controllen = controlRaw.count
                    return recvmsg(fd, &msg, 0)
                }
            }
        }
        guard n >= 0 else { throw SystemdTestError("recvmsg failed: errno \(errno)") }
        let text = String(decoding: data[0..<n], as: UTF8.self)

        // Walk the control messages by hand (CMSG_* are macros Swift does not import). SCM_CREDENTIALS is 0x02 in
        // <bits/socket.h>, declared only under _GNU_SOURCE, so Glibc does not export it.
        let scmCredentials: Int32 = 2
        var pid: pid_t = 0
        var uid: uid_t = 0
        var arrival = 0.0
        let headerSize = MemoryLayout<cmsghdr>.size
        let align = MemoryLayout<Int>.size
        var offset = 0
        control.withUnsafeBytes { raw in
            while offset + headerSize <= raw.count {
                let len = raw.loadUnaligned(fromByteOffset: offset, as: Int.self)
                let level = raw.loadUnaligned(fromByteOffset: offset + MemoryLayout<Int>.size, as: Int32.self)
                let type = raw.loadUnaligned(fromByteOffset: offset + MemoryLayout<Int>.size + 4, as: Int32.self)
                if len < headerSize { break }
                if level == SOL_SOCKET && type == scmCredentials && offset + headerSize + 12 <= raw.count {
                    pid = raw.loadUnaligned(fromByteOffset: offset + headerSize, as: pid_t.self)
                    uid = raw.loadUnaligned(fromByteOffset: offset + headerSize + 4, as: uid_t.self)
                }
                if level == SOL_SOCKET && type == Self.soTimestamp && offset + headerSize + 16 <= raw.count {
                    let sec = raw.loadUnaligned(fromByteOffset: offset + headerSize, as: Int.self)
                    let usec = raw.loadUnaligned(fromByteOffset: offset + headerSize + 8, as: Int.self)
                    arrival = Double(sec) + Double(usec) * 1e-6
                }
                offset += (len + align - 1) / align * align
            }
        }
        return NotifyDatagram(text: text, pid: pid, uid: uid, arrival: arrival)
    }

    /// The next datagram sent by `pid`, skipping others (bounded by `seconds` per datagram).
    func receive(from pid: pid_t, within seconds: Double) throws -> NotifyDatagram? {
        while let d = try receive(within: seconds) {
            if d.pid == pid { return d }
        }
        return nil
    }
}

/// CLOCK_MONOTONIC now in microseconds, read independently of the code under test.
func monotonicMicrosecondsNow() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1_000
}

/// Runs `body` with the given environment variables set (nil = unset), restoring the previous values after.
func withEnvironment<T>(_ vars: [String: String?], _ body: () throws -> T) rethrows -> T {
    var saved: [String: String?] = [:]
    for (k, v) in vars {
        saved[k] = getenv(k).map { String(cString: $0) }
        if let v { setenv(k, v, 1) } else { unsetenv(k) }
    }
    defer {
        for (k, v) in saved {
            if let v { setenv(k, v, 1) } else { unsetenv(k) }
        }
    }
    return try body()
}

/// Parent of the in-process suites: they share process-wide environment variables, so they run one at a time.
@Suite("systemd integration, in-process", .serialized)
enum SystemdInProcessTests {}

extension SystemdInProcessTests {
    @Suite("SystemdNotifier against a NOTIFY_SOCKET of the test's own")
    struct Notifier {
        @Test("ready(status:) sends READY=1 and STATUS= in one datagram from this process")
        func readySendsReadyAndStatus() throws {
            let listener = try NotifyListener()
            let outcome = withEnvironment(["NOTIFY_SOCKET": listener.path]) {
                SystemdNotifier.ready(status: "serving 0 sequences")
                return SystemdNotifier.send(["STATUS=probe"])
            }
            #expect(outcome == .sent)
            let d = try #require(try listener.receive(from: getpid(), within: 10))
            #expect(d.text == "READY=1\nSTATUS=serving 0 sequences")
            #expect(d.uid == getuid())
            let probe = try #require(try listener.receive(from: getpid(), within: 10))
            #expect(probe.text == "STATUS=probe")
        }

        @Test("status(_:) flattens line breaks so the text stays one assignment")
        func statusIsOneLine() throws {
            let listener = try NotifyListener()
            withEnvironment(["NOTIFY_SOCKET": listener.path]) {
                SystemdNotifier.status("loading\nmodel\r\nnow")
            }
            let d = try #require(try listener.receive(from: getpid(), within: 10))
            #expect(d.assignments == ["STATUS=loading model  now"])
        }

        @Test("stopping(), watchdog() and reloaded(status:) send their protocol variables")
        func stoppingWatchdogReloaded() throws {
            let listener = try NotifyListener()
            withEnvironment(["NOTIFY_SOCKET": listener.path]) {
                SystemdNotifier.stopping()
                SystemdNotifier.watchdog()
                SystemdNotifier.reloaded(status: "serving 2 sequences")
                SystemdNotifier.extendTimeout(by: .seconds(90))
            }
            var texts: [String] = []
            for _ in 0..<4 {
                texts.append(try #require(try listener.receive(from: getpid(), within: 10)).text)
            }
            #expect(
                texts == [
                    "STOPPING=1", "WATCHDOG=1", "READY=1\nSTATUS=serving 2 sequences", "EXTEND_TIMEOUT_USEC=90000000",
                ])
        }

        @Test("reloading() sends RELOADING=1 with MONOTONIC_USEC read from CLOCK_MONOTONIC at the call")
        func reloadingCarriesMonotonicTime() throws {
            let listener = try NotifyListener()
            let before = monotonicMicrosecondsNow()
            withEnvironment(["NOTIFY_SOCKET": listener.path]) { SystemdNotifier.reloading() }
            let after = monotonicMicrosecondsNow()
            let d = try #require(try listener.receive(from: getpid(), within: 10))
            #expect(d.assignments.count == 2)
            #expect(d.value("RELOADING") == "1")
            let usec = try #require(d.value("MONOTONIC_USEC").flatMap { UInt64($0) })
            #expect(usec >= before && usec <= after)
        }

        @Test("without NOTIFY_SOCKET every call is a no-op and send reports notSupported")
        func noSocketIsNoOp() throws {
            let outcome = withEnvironment(["NOTIFY_SOCKET": nil]) { () -> SystemdNotifier.Outcome in
                SystemdNotifier.ready(status: "x")
                SystemdNotifier.watchdog()
                SystemdNotifier.stopping()
                return SystemdNotifier.send(["READY=1"])
            }
            #expect(outcome == .notSupported)
        }

        @Test("a NOTIFY_SOCKET path with nothing bound fails with ENOENT")
        func missingSocketFails() throws {
            let listener = try NotifyListener()
            let outcome = withEnvironment(["NOTIFY_SOCKET": listener.directory + "/absent.sock"]) {
                SystemdNotifier.send(["READY=1"])
            }
            #expect(outcome == .failed(errno: ENOENT))
        }

        @Test("watchdogInterval follows WATCHDOG_USEC and WATCHDOG_PID (sd_watchdog_enabled)")
        func watchdogInterval() throws {
            let mine = withEnvironment(["WATCHDOG_USEC": "2500000", "WATCHDOG_PID": "\(getpid())"]) {
                SystemdNotifier.watchdogInterval
            }
            #expect(mine == .microseconds(2_500_000))
            let anyPid = withEnvironment(["WATCHDOG_USEC": "30000000", "WATCHDOG_PID": nil]) {
                SystemdNotifier.watchdogInterval
            }
            #expect(anyPid == .seconds(30))
            let other = withEnvironment(["WATCHDOG_USEC": "2500000", "WATCHDOG_PID": "\(getpid() + 1)"]) {
                SystemdNotifier.watchdogInterval
            }
            #expect(other == nil)
            let off = withEnvironment(["WATCHDOG_USEC": nil, "WATCHDOG_PID": nil]) { SystemdNotifier.watchdogInterval }
            #expect(off == nil)
        }

        @Test("concurrent notifications from many threads all arrive intact")
        func threadSafe() throws {
            let listener = try NotifyListener()
            let threads = 8
            let perThread = 8
            setenv("NOTIFY_SOCKET", listener.path, 1)
            defer { unsetenv("NOTIFY_SOCKET") }
            let done = DispatchGroup()
            for t in 0..<threads {
                done.enter()
                Thread.detachNewThread {
                    for j in 0..<perThread { SystemdNotifier.status("worker \(t * perThread + j)") }
                    done.leave()
                }
            }
            // Read while the threads send: a full datagram queue blocks senders until it is drained.
            var seen = Set<String>()
            while seen.count < threads * perThread, let d = try listener.receive(from: getpid(), within: 10) {
                seen.insert(d.text)
            }
            done.wait()
            #expect(seen == Set((0..<(threads * perThread)).map { "STATUS=worker \($0)" }))
        }
    }

    @Suite("SocketActivation and JournalLogging")
    struct Environment {
        @Test("stderrIsJournal compares JOURNAL_STREAM with fstat(2) of stderr")
        func journalStreamMatch() throws {
            var st = stat()
            #expect(fstat(2, &st) == 0)
            let matching = withEnvironment(["JOURNAL_STREAM": "\(st.st_dev):\(st.st_ino)"]) {
                JournalLogging.stderrIsJournal()
            }
            #expect(matching)
            let other = withEnvironment(["JOURNAL_STREAM": "\(st.st_dev):\(st.st_ino &+ 1)"]) {
                JournalLogging.stderrIsJournal()
            }
            #expect(!other)
            let garbage = withEnvironment(["JOURNAL_STREAM": "not-a-stream"]) { JournalLogging.stderrIsJournal() }
            #expect(!garbage)
            let unset = withEnvironment(["JOURNAL_STREAM": nil]) { JournalLogging.stderrIsJournal() }
            #expect(!unset)
        }

        @Test("journal fields: syslog priorities, code location, LORAD_ metadata (journal-fields(7))")
        func journalFields() throws {
            var handler = JournalLogHandler(label: "lorad.test", metadataProvider: nil)
            handler.metadata = ["request-id": "r1", "model": "base"]
            let event = LogEvent(
                level: .warning, message: "queue full", metadata: ["model": "override", "queue.depth": "64"],
                source: "Daemon", file: "Sources/Daemon/X.swift", function: "f()", line: 42)
            let fields = handler.journalFields(for: event)
            #expect(
                fields == [
                    "MESSAGE=queue full", "PRIORITY=\(LOG_WARNING)", "SYSLOG_IDENTIFIER=lorad",
                    "CODE_FILE=Sources/Daemon/X.swift", "CODE_LINE=42", "CODE_FUNC=f()", "LORAD_LOGGER=lorad.test",
                    "LORAD_SOURCE=Daemon", "LORAD_MODEL=override", "LORAD_QUEUE_DEPTH=64", "LORAD_REQUEST_ID=r1",
                ])
            // Priorities are syslog(3) levels from <syslog.h>.
            let expected: [(Logger.Level, Int32)] = [
                (.trace, LOG_DEBUG), (.debug, LOG_DEBUG), (.info, LOG_INFO), (.notice, LOG_NOTICE),
                (.warning, LOG_WARNING), (.error, LOG_ERR), (.critical, LOG_CRIT),
            ]
            for (level, priority) in expected {
                #expect(JournalLogHandler.priority(for: level) == Int(priority))
            }
            #expect(JournalLogHandler.fieldName(forMetadataKey: "kv-cache.bytes") == "LORAD_KV_CACHE_BYTES")
            #expect(JournalLogHandler.fieldName(forMetadataKey: String(repeating: "a", count: 100)).count == 64)
        }

        @Test("listenFDs is empty when the process was not socket-activated")
        func notActivated() {
            // LISTEN_PID names another process, so sd_listen_fds must not hand out fds 3... even with LISTEN_FDS set.
            let fds = withEnvironment(["LISTEN_FDS": "1", "LISTEN_PID": "\(getpid() + 1)"]) {
                SocketActivation.listenFDs()
            }
            #expect(fds == [])
        }
    }
}
