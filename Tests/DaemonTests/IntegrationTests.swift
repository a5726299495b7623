// Integration: the real lorad binary with the real default model on a temporary socket. Expected texts and ids
// come from ../shared/reference/gemma-3-270m-q4_k_m (llama.cpp and an independent float64 forward pass).

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

struct GreedyRecord {
    let name: String
    let prompt: String
    let promptIDs: [Int]
    let generated: [Int]
    let margins: [Double]
    let f64Generated: [Int]
    let f64Margins: [Double]
}

func loadGreedy() throws -> [GreedyRecord] { try loadGreedy("greedy.jsonl") }

/// Reference criterion: ids equal llama.cpp's up to its first step with margin < 1.0, or equal the float64
/// reference's up to its first step with margin < 0.1 (near ties may legitimately go either way).
func matchesReference(_ ids: [Int], _ r: GreedyRecord) -> Bool {
    func agrees(_ ref: [Int], _ margins: [Double], _ tol: Double) -> Bool {
        // Steps before the first near tie must be identical; from the tie on, either choice is legitimate.
        let cut = min(margins.firstIndex { $0 < tol } ?? ref.count, ref.count)
        return ids.count >= cut && Array(ids.prefix(cut)) == Array(ref.prefix(cut))
    }
    return agrees(r.generated, r.margins, 1.0) || agrees(r.f64Generated, r.f64Margins, 0.1)
}

func completionIDs(_ d: LoradProcess, prompt: Any, maxTokens: Int, extra: [String: Any] = [:]) throws
    -> (ids: [Int], text: String, json: [String: Any])
{
    let body: [String: Any] = [
        "prompt": prompt, "max_tokens": maxTokens, "temperature": 0, "logprobs": 0, "return_tokens_as_token_ids": true,
    ].merging(extra) { $1 }
    let r = try d.post("/v1/completions", json: body)
    guard r.status == 200 else { throw HarnessError(description: "status \(r.status): \(r.text)") }
    let o = try r.json()
    let choice = try #require((o["choices"] as? [[String: Any]])?.first)
    let tokens = try #require((choice["logprobs"] as? [String: Any])?["tokens"] as? [String])
    let ids = tokens.map { Int($0.dropFirst("token_id:".count)) ?? -1 }
    return (ids, choice["text"] as? String ?? "", o)
}

/// Greedy ids of a streamed completion, read from each chunk's logprobs (`token_id:N`).
func streamedIDs(_ d: LoradProcess, prompt: Any, maxTokens: Int) throws -> [Int] {
    let r = try d.post(
        "/v1/completions",
        json: [
            "prompt": prompt, "max_tokens": maxTokens, "temperature": 0, "logprobs": 0, "stream": true,
            "return_tokens_as_token_ids": true,
        ])
    guard r.status == 200 else { throw HarnessError(description: "status \(r.status): \(r.text)") }
    let events = sseEvents(r.text)
    guard events.last == "[DONE]" else { throw HarnessError(description: "stream did not end with [DONE]") }
    var ids: [Int] = []
    for e in events.dropLast() {
        let o = try #require(try JSONSerialization.jsonObject(with: Data(e.utf8)) as? [String: Any])
        for c in (o["choices"] as? [[String: Any]]) ?? [] {
            let tokens = ((c["logprobs"] as? [String: Any])?["tokens"] as? [String]) ?? []
            ids += tokens.map { Int($0.dropFirst("token_id:".count)) ?? -1 }
        }
    }
    return ids
}

@Suite(.serialized) struct DaemonIntegrationTests {
    @Test func greedyCompletionsMatchReference() throws {
        let d = try LoradProcess()
        defer { d.stop() }
        for r in try loadGreedy() {
            // Token-id prompt: used exactly (it already carries BOS).
            let byIDs = try completionIDs(d, prompt: r.promptIDs, maxTokens: 32)
            #expect(matchesReference(byIDs.ids, r), "\(r.name): \(byIDs.ids) vs \(r.generated)")
            if r.name == "capital" {
                // String prompt: BOS added and special tokens parsed, so it equals the id prompt.
                let byText = try completionIDs(d, prompt: r.prompt, maxTokens: 32)
                #expect(byText.ids == byIDs.ids)
                let usage = try #require(byText.json["usage"] as? [String: Int])
                #expect(usage["prompt_tokens"] == r.promptIDs.count)
                #expect(usage["completion_tokens"] == 32)
                #expect(((byText.json["choices"] as? [[String: Any]])?.first?["finish_reason"]) as? String == "length")
                // logit_bias: -100 on the reference's first token makes greedy pick another; +100 on an unlikely
                // token forces it at every step, while the reported logprob stays that of the raw logits.
                let banned = try completionIDs(
                    d, prompt: r.promptIDs, maxTokens: 1, extra: ["logit_bias": ["\(r.generated[0])": -100]])
                #expect(banned.ids.count == 1 && banned.ids[0] != r.generated[0])
                let forced = try completionIDs(d, prompt: r.promptIDs, maxTokens: 3, extra: ["logit_bias": ["9259": 100]])
                #expect(forced.ids == [9259, 9259, 9259])
                let lp = (forced.json["choices"] as? [[String: Any]])?.first?["logprobs"] as? [String: Any]
                let first = try #require((lp?["token_logprobs"] as? [Double])?.first)
                #expect(first < -1, "raw logprob of a forced unlikely token: \(first)")
            }
        }
    }

    @Test func endpointsAndErrorStatuses() throws {
        let d = try LoradProcess(extra: ["--max-body-bytes", "4096", "--context-size", "256"])
        defer { d.stop() }
        let health = try d.get("/health")
        #expect(health.status == 200)
        #expect(try health.json()["status"] as? String == "ok")
        let models = try d.get("/v1/models").json()
        #expect(models["object"] as? String == "list")
        let data = try #require(models["data"] as? [[String: Any]])
        #expect(data.first?["id"] as? String == "gemma-3-270m-q4_k_m")
        let status = try d.get("/v1/status").json()
        #expect(status["model"] as? String == "gemma-3-270m-q4_k_m")
        #expect(status["running_sequences"] as? Int == 0)

        // Errors.
        func error(_ r: HTTPResult) throws -> [String: Any] { try #require(try r.json()["error"] as? [String: Any]) }
        let malformed = try d.post("/v1/completions", rawBody: "{\"prompt\": ")
        #expect(malformed.status == 400)
        #expect(try error(malformed)["code"] as? String == "invalid_json")
        let unknownModel = try d.post("/v1/completions", json: ["model": "nope", "prompt": "hi"])
        #expect(unknownModel.status == 404)
        let ctx = try d.post("/v1/completions", json: ["prompt": "The capital of France is", "max_tokens": 300])
        #expect(ctx.status == 400)
        let msg = try error(ctx)["message"] as? String ?? ""
        #expect(msg.contains("256") && msg.contains("300") && msg.contains("6 in the prompt"))
        let big = try d.post("/v1/completions", json: ["prompt": String(repeating: "x", count: 10_000)])
        #expect(big.status == 413)
        let method = try d.get("/v1/completions")
        #expect(method.status == 405)
        // HEAD: a GET's status and headers, no body.
        let hc = try RawConnection(path: d.socket)
        try hc.send(HTTP.request(method: "HEAD", path: "/health"))
        let headReply = String(decoding: try hc.readToEOF(), as: UTF8.self)
        #expect(headReply.hasPrefix("HTTP/1.1 200") && headReply.lowercased().contains("content-length: "))
        #expect(headReply.hasSuffix("\r\n\r\n"), "\(headReply)")
        // Requests the HTTP parser rejects get the same JSON error body: 400, or 431 for oversized header fields
        // (NIO's limit is 80 KiB; 100 KB fits the socket buffer, so the send completes before the server closes).
        let badLength = try d.raw(Array("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}".utf8))
        #expect(badLength.status == 400)
        #expect((try badLength.json()["error"] as? [String: Any])?["code"] as? String == "invalid_http")
        let hugeHeader = try d.raw(
            Array("GET /health HTTP/1.1\r\nHost: x\r\nX-A: \(String(repeating: "a", count: 100_000))\r\n\r\n".utf8))
        #expect(hugeHeader.status == 431)
        #expect((try hugeHeader.json()["error"] as? [String: Any])?["code"] as? String == "headers_too_large")
        #expect(method.header("Allow") == "POST")
        #expect(try d.get("/v2/whatever").status == 404)
        let browser = try d.post("/v1/completions", json: ["prompt": "hi"], headers: [("Origin", "http://evil.example")])
        #expect(browser.status == 403)
        let referer = try d.get("/v1/models", headers: [("Referer", "http://evil.example/")])
        #expect(referer.status == 403)
        #expect(try d.post("/v1/completions", json: ["prompt": "hi", "n": 2]).status == 400)

        // A body announced larger than the limit is refused before it is sent.
        let c = try RawConnection(path: d.socket)
        try c.send(Array("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n".utf8))
        #expect(try HTTP.parse(try c.readToEOF()).status == 413)

        // Garbage on the wire does not hurt the daemon.
        let g = try RawConnection(path: d.socket)
        try g.send(Array("\u{01}\u{02} NOT HTTP\r\n\r\n".utf8))
        _ = try? g.readToEOF()
        #expect(try d.get("/health").status == 200)

        // Metrics count what happened.
        let metrics = try d.get("/metrics")
        #expect(metrics.status == 200)
        #expect(metrics.text.contains("lorad_http_requests_total{route=\"/v1/completions\",status=\"400\"}"))
        #expect(metrics.text.contains("lorad_kv_cache_limit_bytes"))
    }

    @Test func chatAndStreaming() throws {
        let d = try LoradProcess()
        defer { d.stop() }
        // Chat: rendered with the Gemma turn template; greedy.
        let chat = try d.post(
            "/v1/chat/completions",
            json: [
                "messages": [["role": "user", "content": "What is the capital of France?"]], "max_tokens": 12,
                "temperature": 0, "logprobs": true, "top_logprobs": 2,
            ])
        #expect(chat.status == 200)
        let co = try chat.json()
        #expect(co["object"] as? String == "chat.completion")
        let choice = try #require((co["choices"] as? [[String: Any]])?.first)
        let message = try #require(choice["message"] as? [String: Any])
        #expect(message["role"] as? String == "assistant")
        let content = message["content"] as? String ?? ""
        let lp = try #require((choice["logprobs"] as? [String: Any])?["content"] as? [[String: Any]])
        #expect(lp.allSatisfy { ($0["top_logprobs"] as? [Any])?.count == 2 })
        let usage = try #require(co["usage"] as? [String: Int])
        // <bos><start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n: more than the 7 words.
        #expect((usage["prompt_tokens"] ?? 0) > 10)

        // Streamed chat equals the whole response.
        let s = try d.post(
            "/v1/chat/completions",
            json: [
                "messages": [["role": "user", "content": "What is the capital of France?"]], "max_tokens": 12,
                "temperature": 0, "stream": true, "stream_options": ["include_usage": true],
            ])
        #expect(s.status == 200)
        #expect(s.header("Content-Type")?.hasPrefix("text/event-stream") == true)
        #expect(s.text.hasSuffix("data: [DONE]\n\n"))
        let events = sseEvents(s.text)
        #expect(events.last == "[DONE]")
        var streamed = ""
        var finish: String?
        var usageSeen: [String: Int]?
        for e in events.dropLast() {
            let o = try #require(try JSONSerialization.jsonObject(with: Data(e.utf8)) as? [String: Any])
            #expect(o["object"] as? String == "chat.completion.chunk")
            if let u = o["usage"] as? [String: Int] { usageSeen = u }
            for c in (o["choices"] as? [[String: Any]]) ?? [] {
                streamed += ((c["delta"] as? [String: Any])?["content"] as? String) ?? ""
                if let f = c["finish_reason"] as? String { finish = f }
            }
        }
        #expect(streamed == content)
        #expect(finish == (choice["finish_reason"] as? String))
        #expect(usageSeen == usage)

        // Streamed completion with a token-id prompt: framing and the same text as non-streamed.
        let rec = try #require(try loadGreedy().first { $0.name == "capital" })
        let whole = try completionIDs(d, prompt: rec.promptIDs, maxTokens: 16)
        let st = try d.post(
            "/v1/completions", json: ["prompt": rec.promptIDs, "max_tokens": 16, "temperature": 0, "stream": true])
        let ev = sseEvents(st.text)
        #expect(ev.last == "[DONE]")
        #expect(st.text.components(separatedBy: "\n\n").dropLast().allSatisfy { $0.hasPrefix("data: ") })
        var text = ""
        for e in ev.dropLast() {
            let o = try #require(try JSONSerialization.jsonObject(with: Data(e.utf8)) as? [String: Any])
            text += ((o["choices"] as? [[String: Any]])?.first?["text"] as? String) ?? ""
        }
        #expect(text == whole.text)

        // Stop string cuts the text before its first occurrence.
        let stop = try d.post(
            "/v1/completions", json: ["prompt": rec.promptIDs, "max_tokens": 16, "temperature": 0, "stop": [" of"]])
        let sc = try #require((try stop.json()["choices"] as? [[String: Any]])?.first)
        let full = whole.text
        let cut = full.range(of: " of").map { String(full[..<$0.lowerBound]) } ?? full
        #expect(sc["text"] as? String == cut)
        #expect(sc["finish_reason"] as? String == "stop")
    }

    @Test func concurrentGreedyStreamsMatchSoloAndBatch() throws {
        let d = try LoradProcess(extra: ["--max-sequences", "8"])
        defer { d.stop() }
        let recs = Array(try loadGreedy().filter { $0.promptIDs.count < 200 }.prefix(8))
        var solo: [[Int]] = []
        for r in recs { solo.append(try completionIDs(d, prompt: r.promptIDs, maxTokens: 24).ids) }
        let together = Box([[Int]](repeating: [], count: recs.count))
        let failures = Box([String]())
        // One thread per client (a dispatch pool would cap concurrency at the core count).
        let group = DispatchGroup()
        for i in recs.indices {
            group.enter()
            let t = Thread {
                defer { group.leave() }
                do {
                    let ids = try streamedIDs(d, prompt: recs[i].promptIDs, maxTokens: 24)
                    together.with { $0[i] = ids }
                } catch {
                    failures.with { $0.append("\(error)") }
                }
            }
            t.start()
        }
        group.wait()
        #expect(failures.with { $0 }.isEmpty)
        #expect(together.with { $0 } == solo)
        // Steps with more than one sequence were observed.
        let metrics = try d.get("/metrics").text
        let line = metrics.split(separator: "\n").first { $0.hasPrefix("lorad_step_batch_sequences_bucket{le=\"1.0\"}") }
        let count = metrics.split(separator: "\n").first { $0.hasPrefix("lorad_step_batch_sequences_count") }
        let le1 = Int(Double(line?.split(separator: " ").last ?? "") ?? -1)
        let total = Int(Double(count?.split(separator: " ").last ?? "") ?? -1)
        #expect(total > le1 && le1 >= 0, "\(String(describing: line)) \(String(describing: count))")
    }

    /// A client that sends half a request and then nothing is disconnected after --read-timeout; a stream that
    /// takes longer than the timeout is not cut, and the daemon keeps serving others meanwhile.
    @Test func halfSentRequestsAreClosedAfterTheReadTimeout() throws {
        let d = try LoradProcess(extra: ["--read-timeout", "1"])
        defer { d.stop() }
        let slow = try RawConnection(path: d.socket)
        try slow.send(Array("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n{\"prompt\"".utf8))
        let idle = try RawConnection(path: d.socket)  // connects and never sends
        // Meanwhile another client is served, with a generation lasting longer than the timeout.
        let long = try d.post(
            "/v1/completions",
            json: ["prompt": "Once upon a time", "max_tokens": 48, "temperature": 0, "ignore_eos": true, "stream": true])
        #expect(long.status == 200)
        #expect(sseEvents(long.text).last == "[DONE]")
        // Both silent connections were closed by the server (EOF), not left open.
        let start = Date()
        #expect(try slow.readToEOF().isEmpty)
        #expect(try idle.readToEOF().isEmpty)
        #expect(Date().timeIntervalSince(start) < 10)
    }

    /// SIGHUP re-reads the config file: live settings change (max_sequences, max_body_bytes), a broken file keeps
    /// the running settings.
    @Test func sighupAppliesTheNewConfiguration() throws {
        let d = try LoradProcess()
        defer { d.stop() }
        let config = d.dir.appendingPathComponent("lorad.yaml").path
        func status() throws -> [String: Any] { try d.get("/v1/status").json() }
        #expect(try status()["max_sequences"] as? Int == 16)
        let big = String(repeating: "a", count: 3000)
        #expect(try d.post("/v1/completions", json: ["prompt": big, "max_tokens": 1]).status == 200)
        try "log_level: warning\nmax_sequences: 3\nmax_body_bytes: 2000\ndefault_max_tokens: 3\n".write(
            toFile: config, atomically: true, encoding: .utf8)
        kill(d.process.processIdentifier, SIGHUP)
        var applied = false
        for _ in 0..<600 where !applied {
            usleep(100_000)
            applied = try status()["max_sequences"] as? Int == 3
        }
        #expect(applied)
        #expect(try d.post("/v1/completions", json: ["prompt": big, "max_tokens": 1]).status == 413)
        // default_max_tokens: a request without max_tokens generates at most 3 tokens (ignore_eos: exactly 3).
        let chat = try d.post(
            "/v1/chat/completions",
            json: ["messages": [["role": "user", "content": "Tell me a long story."]], "ignore_eos": true] as [String: Any])
        #expect(chat.status == 200, "\(chat.text)")
        let usage = try chat.json()["usage"] as? [String: Any]
        #expect(usage?["completion_tokens"] as? Int == 3, "\(chat.text)")
        // A file that does not parse leaves everything as it was.
        try "max_sequences: [\n".write(toFile: config, atomically: true, encoding: .utf8)
        kill(d.process.processIdentifier, SIGHUP)
        usleep(500_000)
        #expect(try status()["max_sequences"] as? Int == 3)
        #expect(try d.get("/health").status == 200)
    }

    @Test func clientDisconnectMidStreamFreesTheSequence() throws {
        let d = try LoradProcess()
        defer { d.stop() }
        let c = try RawConnection(path: d.socket)
        let body = try JSONSerialization.data(withJSONObject: [
            "prompt": "Once upon a time", "max_tokens": 2000, "stream": true, "ignore_eos": true,
        ])
        try c.send(HTTP.request(method: "POST", path: "/v1/completions", body: Array(body)))
        // The body is chunked: count event payloads in the raw bytes (sseEvents expects a decoded body).
        var got = ""
        while got.components(separatedBy: "data: {").count - 1 < 4 {
            let chunk = try c.receive()
            if chunk.isEmpty { break }
            got += String(decoding: chunk, as: UTF8.self)
        }
        #expect(got.components(separatedBy: "data: {").count - 1 >= 4)
        c.hangUp()  // mid-stream, about 1996 tokens early
        var status: [String: Any] = [:]
        for _ in 0..<100 {
            status = try d.get("/v1/status").json()
            if status["running_sequences"] as? Int == 0 { break }
            usleep(100_000)
        }
        #expect(status["running_sequences"] as? Int == 0)
        // Freed by the hang-up, not by running to max_tokens: far fewer decode steps than 2000.
        #expect((status["steps"] as? Int ?? .max) < 500)
        // Still serving.
        let r = try d.post("/v1/completions", json: ["prompt": "Hello", "max_tokens": 4])
        #expect(r.status == 200)
    }

    @Test func saturationReturns503WithRetryAfter() throws {
        let d = try LoradProcess(extra: ["--max-sequences", "1", "--max-queue", "1"])
        defer { d.stop() }
        // More prompts than could ever run or wait at once: 400, not a 503 to retry forever.
        let tooMany = try d.post("/v1/completions", json: ["prompt": ["a", "b", "c"], "max_tokens": 1])
        #expect(tooMany.status == 400)
        #expect((try tooMany.json()["error"] as? [String: Any])?["code"] as? String == "too_many_prompts")
        #expect(try d.post("/v1/completions", json: ["prompt": ["a", "b"], "max_tokens": 1]).status == 200)
        // Occupy the one slot and the one queue place with long streams, then a third request must get 503.
        var holders: [RawConnection] = []
        for _ in 0..<2 {
            let c = try RawConnection(path: d.socket)
            let body = try JSONSerialization.data(withJSONObject: [
                "prompt": "Tell me a story", "max_tokens": 3000, "stream": true, "ignore_eos": true,
            ])
            try c.send(HTTP.request(method: "POST", path: "/v1/completions", body: Array(body)))
            holders.append(c)
        }
        // Wait (bounded) until one runs and one waits.
        for _ in 0..<300 {
            let s = try d.get("/v1/status").json()
            if s["running_sequences"] as? Int == 1 && s["waiting_requests"] as? Int == 1 { break }
            usleep(50_000)
        }
        let r = try d.post("/v1/completions", json: ["prompt": "hi", "max_tokens": 2])
        #expect(r.status == 503)
        #expect(r.header("Retry-After") != nil)
        #expect((try r.json()["error"] as? [String: Any])?["code"] as? String == "server_busy")
        holders.removeAll()
    }

    @Test func sigtermDrainsAStreamAndExitsZero() throws {
        let d = try LoradProcess()
        let c = try RawConnection(path: d.socket)
        let body = try JSONSerialization.data(withJSONObject: ["prompt": "Once upon a time", "max_tokens": 48, "stream": true])
        try c.send(HTTP.request(method: "POST", path: "/v1/completions", body: Array(body)))
        var got = try c.receive()
        kill(d.process.processIdentifier, SIGTERM)
        while true {
            let chunk = try c.receive()
            if chunk.isEmpty { break }
            got += chunk
        }
        let text = String(decoding: got, as: UTF8.self)
        #expect(text.contains("data: [DONE]\n\n"))
        #expect(d.stop() == 0)
    }

    @Test func staleSocketIsReplacedAndLiveOneRefused() throws {
        let first = try LoradProcess()
        defer { first.stop() }
        // A second daemon on the same live socket must refuse to start.
        let second = Process()
        second.executableURL = URL(fileURLWithPath: try Paths.loradBinary())
        second.arguments = [
            "serve", "--model", try Paths.model(), "--socket", first.socket, "--config", "/dev/null",
            "--state-dir", first.dir.appendingPathComponent("state-second").path,
        ]
        let err = Pipe()
        second.standardError = err
        try second.run()
        second.waitUntilExit()
        #expect(second.terminationStatus != 0)
        let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(message.contains("already listening"))
        #expect(try first.get("/health").status == 200)

        // A stale socket file (bound, never listened, closed) is replaced.
        let dir = URL(fileURLWithPath: "/tmp/lorad-stale-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("s.sock").path
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.utf8.enumerated() { raw[i] = b }
        }
        _ = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        close(fd)
        #expect(FileManager.default.fileExists(atPath: path))
        let third = Process()
        third.executableURL = URL(fileURLWithPath: try Paths.loradBinary())
        third.arguments = [
            "serve", "--model", try Paths.model(), "--socket", path, "--config", "/dev/null",
            "--state-dir", dir.appendingPathComponent("state").path,
        ]
        third.standardError = FileHandle.nullDevice
        try third.run()
        defer {
            kill(third.processIdentifier, SIGKILL)
            third.waitUntilExit()
        }
        var ok = false
        for _ in 0..<600 {
            if let c = try? RawConnection(path: path) {
                try c.send(HTTP.request(method: "GET", path: "/health"))
                if let r = try? HTTP.parse(try c.readToEOF()), r.status == 200 || r.status == 503 {
                    ok = true
                    break
                }
            }
            if !third.isRunning { break }
            usleep(100_000)
        }
        #expect(ok)
    }
}
