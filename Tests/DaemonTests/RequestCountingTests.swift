// What /metrics counts must be what clients received. Clients that send `Connection: close` and hang up as soon
// as they hold a complete response are normal (most HTTP clients do), and under CPU load lorad's request task
// runs behind its event loop: a response the client had in full must still count as 200, never as 499
// (client gone).

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Threads that keep the CPUs busy until stopped.
final class CPUHog: @unchecked Sendable {
    private let lock = NSLock()
    private var running = true
    private let group = DispatchGroup()

    init(threads: Int) {
        for _ in 0..<threads {
            group.enter()
            Thread.detachNewThread { [self] in
                var x: UInt64 = 1
                while lock.withLock({ running }) {
                    for _ in 0..<100_000 { x = x &* 6_364_136_223_846_793_005 &+ 1 }
                }
                if x == 42 { print("") }  // keeps the loop's work observable
                group.leave()
            }
        }
    }

    func stop() {
        lock.withLock { running = false }
        group.wait()
    }
}

/// Sends one request, reads until the response is complete for the client (all of a Content-Length body, or a
/// stream's `data: [DONE]` event, where SSE clients stop reading), then hangs up at once without waiting for the
/// server to close. Returns the status, or nil if the connection ended before that.
func requestAndHangUp(_ socket: String, _ request: [UInt8]) throws -> Int? {
    let c = try RawConnection(path: socket)
    try c.send(request)
    var raw: [UInt8] = []
    while true {
        if let sep = HTTP.find(raw, [13, 10, 13, 10]) {
            let head = String(decoding: raw[..<sep], as: UTF8.self)
            let status = head.split(separator: " ").dropFirst().first.flatMap { Int($0) }
            let length = head.split(separator: "\r\n").compactMap { line -> Int? in
                let parts = line.split(separator: ":", maxSplits: 1)
                guard parts.count == 2, parts[0].lowercased() == "content-length" else { return nil }
                return Int(parts[1].trimmingCharacters(in: .whitespaces))
            }.first
            if let length, raw.count >= sep + 4 + length { return status }
            if length == nil, HTTP.find(Array(raw[(sep + 4)...]), Array("data: [DONE]".utf8)) != nil { return status }
        }
        let chunk = try c.receive()
        if chunk.isEmpty { return nil }
        raw += chunk
    }
}

/// The value of the `lorad_http_requests_total` sample with these labels (0 when absent).
func requestCount(_ metrics: String, route: String, status: Int) -> Int {
    for line in metrics.split(separator: "\n") where line.hasPrefix("lorad_http_requests_total{") {
        guard line.contains("route=\"\(route)\""), line.contains("status=\"\(status)\"") else { continue }
        return Int(Double(line.split(separator: " ").last ?? "") ?? -1)
    }
    return 0
}

@Suite(.serialized) struct RequestCountingTests {
    @Test("under CPU load, responses that clients received in full are counted as 200, none as 499")
    func completedResponsesAreNotCountedAsDisconnects() throws {
        let d = try LoradProcess()
        defer { d.stop() }
        let clients = 8
        let perClient = 80
        let received = Box([Int: Int]())
        let failures = Box([String]())
        let hog = CPUHog(threads: 1)
        let group = DispatchGroup()
        for client in 0..<clients {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                for i in 0..<perClient {
                    do {
                        // Short completions, streamed (the client stops at [DONE]) and whole (it stops at the
                        // last byte of the body), every one with Connection: close.
                        let body: [String: Any] = [
                            "prompt": "Hello", "max_tokens": 1, "temperature": 0, "stream": (client + i) % 2 == 0,
                        ]
                        let json = Array(try JSONSerialization.data(withJSONObject: body))
                        let request = HTTP.request(method: "POST", path: "/v1/completions", body: json)
                        if let status = try requestAndHangUp(d.socket, request) {
                            received.with { $0[status, default: 0] += 1 }
                        } else {
                            failures.with { $0.append("incomplete response") }
                        }
                    } catch {
                        failures.with { $0.append("\(error)") }
                    }
                }
            }
        }
        group.wait()
        hog.stop()
        #expect(failures.with { $0 }.isEmpty, "\(failures.with { $0 }.prefix(5))")
        let got = received.with { $0 }
        #expect(got == [200: clients * perClient], "\(got)")

        // A request is counted just after its last bytes are sent, so the client may see the end a moment before the
        // count does: read /metrics until every request is counted (bounded).
        var ok = 0
        var gone = 0
        let deadline = Date().addingTimeInterval(30)
        repeat {
            let metrics = try d.get("/metrics").text
            ok = requestCount(metrics, route: "/v1/completions", status: 200)
            gone = requestCount(metrics, route: "/v1/completions", status: 499)
            if ok + gone >= clients * perClient { break }
            usleep(50_000)
        } while Date() < deadline
        #expect(gone == 0, "\(gone) responses the clients received in full were counted as 499")
        #expect(ok == got[200], "/metrics counts \(ok) responses 200; clients received \(got[200] ?? 0)")
    }
}
