// The real `lorad serve` with the real default model, as systemd would run it: the test is the service manager.
// It binds its own NOTIFY_SOCKET (AF_UNIX datagram, SO_PASSCRED), sets WATCHDOG_USEC, and reads what lorad
// sends (READY=1, STATUS=, WATCHDOG=1, RELOADING=1 + MONOTONIC_USEC, STOPPING=1), checking through the kernel's
// SCM_CREDENTIALS that lorad itself sent each datagram (NotifyAccess=main). Socket activation runs under
// systemd-socket-activate, systemd's own tool for it. Waits are bounded (a hang fails the test), never measured.

import Daemon
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A lorad process started with a NOTIFY_SOCKET of the test's own.
final class NotifiedLorad {
    let process = Process()
    let directory: URL
    let socket: String
    let notify: NotifyListener
    let logURL: URL
    /// The datagrams `next` has gone through so far, in order.
    private(set) var received: [NotifyDatagram] = []
    /// Everything read from the socket (by `reader`), consumed by `next` in order.
    private let queue = Box(NotifyQueue())
    private var reader: Thread?

    /// - Parameters:
    ///   - socketActivated: start lorad through `systemd-socket-activate -l <socket>` instead of `--socket`.
    ///   - watchdogUSec: WATCHDOG_USEC given to lorad (as systemd does for WatchdogSec=).
    ///   - threads: `--threads`.
    init(socketActivated: Bool = false, watchdogUSec: Int = 2_000_000, threads: Int = 2) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "lorad-sd-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        socket = directory.appendingPathComponent("lorad.sock").path
        logURL = directory.appendingPathComponent("stderr.log")
        notify = try NotifyListener()

        // The shipped default config, as installed to /etc/lorad/lorad.yaml.
        let config = directory.appendingPathComponent("lorad.yaml")
        try FileManager.default.copyItem(at: repositoryRoot.appendingPathComponent("systemd/lorad.yaml"), to: config)

        let lorad = try Paths.loradBinary()
        let serve = [
            "serve", "--model", try Paths.model(), "--config", config.path, "--threads", "\(threads)",
            "--state-dir", directory.appendingPathComponent("state").path,
        ]
        var env = ProcessInfo.processInfo.environment
        for k in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
            "JOURNAL_STREAM", "LORAD_SOCKET", "RUNTIME_DIRECTORY", "STATE_DIRECTORY"]
        {
            env[k] = nil
        }
        if socketActivated {
            // Only TERM, PATH, HOME, LISTEN_* and -E variables reach the activated process.
            process.executableURL = URL(fileURLWithPath: "/usr/bin/systemd-socket-activate")
            process.arguments =
                ["-l", socket, "-E", "NOTIFY_SOCKET=\(notify.path)", "-E", "WATCHDOG_USEC=\(watchdogUSec)", lorad]
                + serve
        } else {
            env["NOTIFY_SOCKET"] = notify.path
            env["WATCHDOG_USEC"] = "\(watchdogUSec)"
            process.executableURL = URL(fileURLWithPath: lorad)
            process.arguments = serve + ["--socket", socket]
        }
        process.environment = env
        process.currentDirectoryURL = directory
        guard FileManager.default.createFile(atPath: logURL.path, contents: nil) else {
            throw SystemdTestError("cannot create \(logURL.path)")
        }
        let log = try FileHandle(forWritingTo: logURL)
        process.standardError = log
        process.standardOutput = log
        try process.run()
        // Read the socket all the time, as systemd does: the kernel queues only a few datagrams
        // (net.unix.max_dgram_qlen, 10 by default) and a full queue blocks lorad's sd_notify calls.
        let (queue, notify, pid) = (queue, notify, process.processIdentifier)
        let t = Thread {
            while !queue.with({ $0.stopped }) {
                do {
                    if let d = try notify.receive(from: pid, within: 0.2) { queue.with { $0.items.append(d) } }
                } catch {
                    queue.with { $0.failure = "\(error)" }
                    return
                }
            }
        }
        t.start()
        reader = t
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        queue.with { $0.stopped = true }
        while reader?.isFinished == false { usleep(10_000) }
        try? FileManager.default.removeItem(at: directory)
    }

    var pid: pid_t { process.processIdentifier }

    func log() -> String { (try? String(contentsOf: logURL, encoding: .utf8)) ?? "" }

    /// Takes datagrams from lorad in order until one satisfies `match` (bounded by `seconds` of silence).
    @discardableResult
    func next(within seconds: Double = 120, where match: (NotifyDatagram) -> Bool) throws -> NotifyDatagram {
        var waited = 0.0
        while true {
            let (item, failure): (NotifyDatagram?, String?) = queue.with { q in
                guard q.consumed < q.items.count else { return (nil, q.failure) }
                q.consumed += 1
                return (q.items[q.consumed - 1], nil)
            }
            if let d = item {
                waited = 0
                received.append(d)
                if match(d) { return d }
                continue
            }
            guard failure == nil, waited < seconds else {
                throw SystemdTestError(
                    "no matching notification from lorad (pid \(pid)); received \(received.map(\.text)); "
                        + "reader: \(failure ?? "ok"); running: \(process.isRunning); log:\n\(log())")
            }
            usleep(10_000)
            waited += 0.01
        }
    }

    /// Waits (bounded) for exit and returns the exit status.
    func waitForExit(seconds: Double = 120) -> Int32? {
        for _ in 0..<Int(seconds * 10) where process.isRunning { usleep(100_000) }
        guard !process.isRunning else { return nil }
        return process.terminationStatus
    }
}

/// Datagrams read by ``NotifiedLorad``'s reader thread.
struct NotifyQueue {
    var items: [NotifyDatagram] = []
    /// How many of `items` `next` has taken.
    var consumed = 0
    var stopped = false
    var failure: String?
}

@Suite("lorad under a NOTIFY_SOCKET: readiness, watchdog, reload, stop, socket activation", .serialized)
struct SystemdServiceTests {
    @Test("READY=1 after loading with STATUS=, WATCHDOG=1 pings, SIGHUP reload, STOPPING=1 and exit 0 on SIGTERM")
    func notifyLifecycle() throws {
        let lorad = try NotifiedLorad()

        let ready = try lorad.next { $0.value("READY") == "1" }
        let status = try #require(ready.value("STATUS"), "READY=1 without STATUS=: \(ready.text)")
        #expect(!status.isEmpty)
        // Something was said while loading, before READY=1.
        #expect(lorad.received.dropLast().contains { $0.value("STATUS") != nil }, "\(lorad.received.map(\.text))")
        #expect(ready.uid == getuid())
        // Every loading step asked for more start-up time (EXTEND_TIMEOUT_USEC=), so a slow start that makes
        // progress outlives TimeoutStartSec=: opening, reading the weights (at least the final report), building,
        // warm-up.
        let extensions = lorad.received.dropLast().compactMap { $0.value("EXTEND_TIMEOUT_USEC").flatMap { UInt64($0) } }
        #expect(extensions.count >= 4, "\(lorad.received.map(\.text))")
        #expect(extensions.allSatisfy { $0 >= 1_000_000 }, "\(extensions)")
        #expect(
            lorad.received.contains { $0.value("STATUS")?.contains("reading weights 100%") == true },
            "\(lorad.received.map(\.text))")

        // READY=1 promises a listening socket and a loaded model: the first request right after it is served.
        let health = try HTTP.parse(try {
            let c = try RawConnection(path: lorad.socket)
            try c.send(HTTP.request(method: "GET", path: "/health"))
            return try c.readToEOF()
        }())
        #expect(health.status == 200, "\(health.text)")
        #expect(try health.json()["status"] as? String == "ok")

        // WATCHDOG_USEC=2 s: pings keep coming while idle.
        try lorad.next { $0.value("WATCHDOG") == "1" }
        try lorad.next { $0.value("WATCHDOG") == "1" }

        // SIGHUP: RELOADING=1 stamped with CLOCK_MONOTONIC between the signal and its receipt, then READY=1.
        let before = monotonicMicrosecondsNow()
        kill(lorad.pid, SIGHUP)
        let reloading = try lorad.next { $0.value("RELOADING") == "1" }
        let after = monotonicMicrosecondsNow()
        let stamp = try #require(reloading.value("MONOTONIC_USEC").flatMap { UInt64($0) }, "\(reloading.text)")
        #expect(stamp >= before && stamp <= after)
        let reloaded = try lorad.next { $0.value("READY") == "1" }
        #expect(reloaded.value("STATUS") != nil)
        #expect(lorad.process.isRunning)

        kill(lorad.pid, SIGTERM)
        try lorad.next { $0.value("STOPPING") == "1" }
        #expect(lorad.waitForExit() == 0, "log:\n\(lorad.log())")
        // lorad unlinks the socket it bound itself.
        #expect(!FileManager.default.fileExists(atPath: lorad.socket))
    }

    @Test("a long prompt on one thread: WATCHDOG=1 never pauses for more than WatchdogSec/2 (chunked prefill)")
    func watchdogDuringLongPrefill() throws {
        // WatchdogSec=3: pings must come at least every 1.5 s, also while a long prompt is prefilled on one thread
        // (a single 512-token step takes seconds there).
        let lorad = try NotifiedLorad(watchdogUSec: 3_000_000, threads: 1)
        try lorad.next { $0.value("READY") == "1" }
        let readyIndex = lorad.received.count

        let text = String(
            repeating: "In the valley the river turns twice before it reaches the mill, and the miller counts the sacks. ",
            count: 90)
        let body: [String: Any] = ["prompt": text, "max_tokens": 4, "temperature": 0]
        let json = Array(try JSONSerialization.data(withJSONObject: body))
        let result = Box<Result<HTTPResult, any Error>?>(nil)
        let socket = lorad.socket
        Thread.detachNewThread {
            let r = Result { () throws -> HTTPResult in
                let c = try RawConnection(path: socket)
                try c.send(HTTP.request(method: "POST", path: "/v1/completions", body: json))
                return try HTTP.parse(try c.readToEOF())
            }
            result.with { $0 = r }
        }
        // Collect notifications until the response is in, then one more ping (so a stall at the end shows too).
        while result.with({ $0 }) == nil {
            _ = try lorad.next(within: 60) { _ in true }
        }
        try lorad.next(within: 10) { $0.value("WATCHDOG") == "1" }

        let response = try #require(try result.with { $0 }?.get())
        #expect(response.status == 200, "\(response.text)")
        let usage = try #require(try response.json()["usage"] as? [String: Any])
        let promptTokens = try #require(usage["prompt_tokens"] as? Int)
        #expect(promptTokens > 1500, "the prompt must take many steps: \(promptTokens) tokens")

        let pings = lorad.received[readyIndex...].filter { $0.value("WATCHDOG") == "1" }.map(\.arrival)
        #expect(pings.count >= 4, "\(pings.count) pings")
        let gaps = zip(pings.dropFirst(), pings).map { $0 - $1 }
        let worst = gaps.max() ?? 0
        // WatchdogSec is 3 s here: a longer gap is what would make systemd kill the service. Steps are planned at
        // 0.5 s, so a quiet machine shows gaps well under 1 s; a loaded one may stretch a step, not past 3 s.
        #expect(worst < 3.0, "longest gap between WATCHDOG=1 pings \(worst) s; gaps \(gaps)")
        kill(lorad.pid, SIGTERM)
        #expect(lorad.waitForExit() == 0, "log:\n\(lorad.log())")
    }

    @Test("SIGTERM during a stream: STOPPING=1, the stream still ends with [DONE], exit 0")
    func sigtermDuringStream() throws {
        let lorad = try NotifiedLorad()
        try lorad.next { $0.value("READY") == "1" }

        let c = try RawConnection(path: lorad.socket)
        let body: [String: Any] = ["prompt": "Once upon a time", "max_tokens": 48, "temperature": 0, "stream": true]
        let json = Array(try JSONSerialization.data(withJSONObject: body))
        try c.send(HTTP.request(method: "POST", path: "/v1/completions", body: json))
        // Wait for the first event, so the request is in flight when the signal arrives.
        var raw: [UInt8] = []
        while HTTP.find(raw, Array("data: ".utf8)) == nil {
            let chunk = try c.receive()
            #expect(!chunk.isEmpty, "connection closed before the first event: \(String(decoding: raw, as: UTF8.self))")
            if chunk.isEmpty { return }
            raw += chunk
        }
        kill(lorad.pid, SIGTERM)
        try lorad.next { $0.value("STOPPING") == "1" }
        raw += try c.readToEOF()

        let text = String(decoding: raw, as: UTF8.self)
        #expect(text.hasSuffix("0\r\n\r\n"), "chunked stream not terminated: \(text.suffix(200))")
        let response = try HTTP.parse(raw)
        #expect(response.status == 200)
        let events = sseEvents(response.text)
        #expect(events.last == "[DONE]", "\(events.suffix(3))")
        let finish = events.dropLast().compactMap { e -> String? in
            guard let o = try? JSONSerialization.jsonObject(with: Data(e.utf8)) as? [String: Any],
                let choices = o["choices"] as? [[String: Any]]
            else { return nil }
            return choices.first?["finish_reason"] as? String
        }.last
        #expect(finish == "length" || finish == "stop", "finish_reason \(String(describing: finish))")
        #expect(lorad.waitForExit() == 0, "log:\n\(lorad.log())")
    }

    @Test("socket activation: systemd-socket-activate passes the socket; the first request is served; the file stays")
    func socketActivation() throws {
        let lorad = try NotifiedLorad(socketActivated: true)
        // systemd-socket-activate binds first and starts lorad only on the first connection.
        for _ in 0..<300 where !FileManager.default.fileExists(atPath: lorad.socket) { usleep(50_000) }
        #expect(FileManager.default.fileExists(atPath: lorad.socket), "no socket; log:\n\(lorad.log())")

        // Reference continuation computed by llama.cpp (../shared/reference/.../greedy.jsonl, "capital").
        let lines = try String(contentsOfFile: try Paths.referenceDir() + "/greedy.jsonl", encoding: .utf8)
            .split(separator: "\n")
        let capital = try #require(
            lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                .first { $0["name"] as? String == "capital" })
        let prompt = try #require(capital["prompt"] as? String)
        let reference = try #require(capital["generated_text"] as? String)

        let c = try RawConnection(path: lorad.socket)
        let body: [String: Any] = ["prompt": prompt, "max_tokens": 3, "temperature": 0]
        let json = Array(try JSONSerialization.data(withJSONObject: body))
        try c.send(HTTP.request(method: "POST", path: "/v1/completions", body: json))
        let response = try HTTP.parse(try c.readToEOF())
        #expect(response.status == 200, "\(response.text); log:\n\(lorad.log())")
        let choices = try response.json()["choices"] as? [[String: Any]]
        let text = try #require(choices?.first?["text"] as? String, "\(response.text)")
        // Three greedy tokens: the reference's first three words (" the capital of").
        #expect(!text.isEmpty && reference.hasPrefix(text), "'\(text)' vs reference '\(reference)'")
        #expect(text.split(separator: " ").count == 3, "'\(text)'")

        // systemd-socket-activate execs lorad in place, so the notifications come from the same pid.
        try lorad.next { $0.value("READY") == "1" }

        kill(lorad.pid, SIGTERM)
        try lorad.next { $0.value("STOPPING") == "1" }
        #expect(lorad.waitForExit() == 0, "log:\n\(lorad.log())")
        // The socket file belongs to the activator (the socket unit), not to lorad: it must survive lorad.
        #expect(FileManager.default.fileExists(atPath: lorad.socket))
    }
}

@Suite("systemctl for real (opt-in)")
struct SystemdEndToEndTests {
    @Test(
        "scripts/systemd-e2e.sh: systemd as PID 1 of its own namespace drives lorad (LORAD_SYSTEMD_E2E=1, root)",
        .enabled(if: ProcessInfo.processInfo.environment["LORAD_SYSTEMD_E2E"] == "1"))
    func systemctlEndToEnd() throws {
        let script = repositoryRoot.appendingPathComponent("scripts/systemd-e2e.sh").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = [script]
        var env = ProcessInfo.processInfo.environment
        env["LORAD_BUILD_DIR"] = URL(fileURLWithPath: try Paths.loradBinary()).deletingLastPathComponent().path
        env["LORAD_MODEL_SRC"] = try Paths.model()
        p.environment = env
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0, "\(output)")
        #expect(output.contains("systemd-e2e: PASS"), "\(output)")
    }
}
