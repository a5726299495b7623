// Stored completions and feedback through the real lorad binary: store:true then list/get/messages/update/delete,
// feedback 201/404/400/403, the export formats, no acknowledged feedback lost to a kill -9 under 8 concurrent
// clients, and 507 from a store on a full tmpfs while the daemon keeps serving.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite(.serialized) struct StoreIntegrationTests {
    /// A short greedy chat completion with `store: true`; returns its response.
    static func storedChat(
        _ d: LoradProcess, _ text: String, metadata: [String: String] = [:], maxTokens: Int = 3
    ) throws -> [String: Any] {
        let r = try d.post(
            "/v1/chat/completions",
            json: [
                "messages": [["role": "user", "content": text]], "max_tokens": maxTokens, "temperature": 0, "store": true,
                "metadata": metadata,
            ] as [String: Any])
        #expect(r.status == 200, "\(r.text)")
        return try r.json()
    }

    /// curl as uid 65534 (not an admin); returns (status, body).
    static func curlAsNobody(_ d: LoradProcess, _ args: [String]) throws -> (Int, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        p.arguments =
            ["--reuid=65534", "--regid=65534", "--clear-groups", "curl", "-s", "-w", "\n%{http_code}", "--unix-socket", d.socket]
            + args
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        return (Int(lines.last ?? "") ?? -1, lines.dropLast().joined(separator: "\n"))
    }

    @Test func storedCompletionsLifecycle() throws {
        let d = try LoradProcess()
        defer { d.stop() }
        let a = try Self.storedChat(d, "Say hi.", metadata: ["topic": "greeting", "user": "ann"])
        let b = try Self.storedChat(d, "Count to three.", metadata: ["topic": "numbers"])
        let aID = try #require(a["id"] as? String)
        let bID = try #require(b["id"] as? String)
        // Not stored without store: true.
        let plain = try d.post("/v1/chat/completions", json: ["messages": [["role": "user", "content": "x"]], "max_tokens": 1])
        let plainID = try #require(try plain.json()["id"] as? String)
        #expect(try d.get("/v1/chat/completions/\(plainID)").status == 404)

        // A stream is recorded before [DONE].
        let s = try d.post(
            "/v1/completions", json: ["prompt": "The sky is", "max_tokens": 3, "temperature": 0, "stream": true, "store": true])
        #expect(s.status == 200)
        let events = sseEvents(s.text)
        #expect(events.last == "[DONE]")
        let first = try #require(try JSONSerialization.jsonObject(with: Data(events[0].utf8)) as? [String: Any])
        let sID = try #require(first["id"] as? String)
        let sGot = try d.get("/v1/chat/completions/\(sID)")
        #expect(sGot.status == 200, "\(sGot.text)")
        let streamed = events.dropLast().compactMap { e -> String? in
            let o = try? JSONSerialization.jsonObject(with: Data(e.utf8)) as? [String: Any]
            return ((o?["choices"] as? [[String: Any]])?.first?["text"] as? String)
        }.joined()
        let sObj = try sGot.json()
        #expect(((sObj["choices"] as? [[String: Any]])?.first?["text"] as? String) == streamed)
        #expect((sObj["input"] as? [String: Any])?["prompt"] as? String == "The sky is")

        // get: the response as served, with token ids (decision #4) and metadata.
        let got = try d.get("/v1/chat/completions/\(aID)")
        #expect(got.status == 200)
        let g = try got.json()
        #expect(g["object"] as? String == "chat.completion")
        #expect((g["metadata"] as? [String: String]) == ["topic": "greeting", "user": "ann"])
        let served = ((a["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any])?["content"] as? String
        let stored = ((g["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any])?["content"] as? String
        #expect(served != nil && served == stored)
        let out = try #require((g["output_token_ids"] as? [[Int]])?.first)
        let usage = try #require(a["usage"] as? [String: Any])
        #expect(out.count == usage["completion_tokens"] as? Int)
        let promptIDs = try #require((g["prompt_token_ids"] as? [[Int]])?.first)
        #expect(promptIDs.count == usage["prompt_tokens"] as? Int)
        #expect((g["sampling"] as? [String: Any])?["max_tokens"] as? Int == 3)

        // messages
        let m = try d.get("/v1/chat/completions/\(aID)/messages").json()
        let msgs = try #require(m["data"] as? [[String: Any]])
        #expect(msgs.count == 1 && msgs[0]["role"] as? String == "user" && msgs[0]["content"] as? String == "Say hi.")

        // list: order, filters, pagination
        let all = try d.get("/v1/chat/completions").json()
        #expect((all["data"] as? [[String: Any]])?.map { $0["id"] as? String } == [aID, bID, sID])
        #expect(all["has_more"] as? Bool == false && all["first_id"] as? String == aID && all["last_id"] as? String == sID)
        let desc = try d.get("/v1/chat/completions?order=desc&limit=1").json()
        #expect(desc["first_id"] as? String == sID && desc["has_more"] as? Bool == true)
        let next = try d.get("/v1/chat/completions?limit=1&after=\(aID)").json()
        #expect(next["first_id"] as? String == bID && next["has_more"] as? Bool == true)
        let topic = try d.get("/v1/chat/completions?metadata%5Btopic%5D=numbers").json()
        #expect((topic["data"] as? [[String: Any]])?.map { $0["id"] as? String } == [bID])
        let model = try #require(a["model"] as? String)
        #expect((try d.get("/v1/chat/completions?model=\(model)").json()["data"] as? [Any])?.count == 3)
        #expect((try d.get("/v1/chat/completions?model=nope").json()["data"] as? [Any])?.count == 0)
        #expect(try d.get("/v1/chat/completions?limit=101").status == 400)
        #expect(try d.get("/v1/chat/completions?order=up").status == 400)

        // update metadata
        let up = try d.post("/v1/chat/completions/\(aID)", json: ["metadata": ["topic": "edited"]])
        #expect(up.status == 200)
        #expect((try up.json()["metadata"] as? [String: String]) == ["topic": "edited"])
        var tooMany: [String: String] = [:]
        for i in 0..<17 { tooMany["k\(i)"] = "v" }
        let bad = try d.post("/v1/chat/completions/\(aID)", json: ["metadata": tooMany])
        #expect(bad.status == 400 && bad.text.contains("\"param\":\"metadata\""))
        let longValue = try d.post(
            "/v1/chat/completions",
            json: ["messages": [["role": "user", "content": "x"]], "max_tokens": 1, "store": true,
                   "metadata": ["k": String(repeating: "v", count: 513)]] as [String: Any])
        #expect(longValue.status == 400 && longValue.text.contains("metadata.k"))

        // delete
        let del = try d.delete("/v1/chat/completions/\(bID)")
        #expect(del.status == 200)
        let delBody = try del.json()
        #expect(delBody["object"] as? String == "chat.completion.deleted" && delBody["deleted"] as? Bool == true)
        #expect(try d.get("/v1/chat/completions/\(bID)").status == 404)
        #expect(try d.delete("/v1/chat/completions/\(bID)").status == 404)

        let metrics = try d.get("/metrics").text
        #expect(metrics.contains("\nlorad_stored_completions 2\n") || metrics.contains("\nlorad_stored_completions 2.0\n"), "\(metrics)")
    }

    @Test func feedbackStatusesAndAccess() throws {
        let d = try LoradProcess()
        defer { d.stop() }
        chmod(d.socket, 0o666)
        chmod(d.dir.path, 0o755)
        let c = try Self.storedChat(d, "Name a colour.")
        let cID = try #require(c["id"] as? String)

        let up = try d.post("/v1/feedback", json: ["completion_id": cID, "rating": 1, "comment": "good", "metadata": ["a": "b"]])
        #expect(up.status == 201, "\(up.text)")
        let f = try up.json()
        let fID = try #require(f["id"] as? String)
        #expect(fID.hasPrefix("fb-") && f["object"] as? String == "feedback" && f["created_at"] is Int)
        #expect(f["rating"] as? Int == 1 && f["comment"] as? String == "good" && f["completion_id"] as? String == cID)
        let corr = try d.post("/v1/feedback", json: ["completion_id": cID, "correction": "Blue."])
        #expect(corr.status == 201)
        let msgs = try d.post(
            "/v1/feedback",
            json: ["completion_id": cID, "rating": -1, "correction": [["role": "assistant", "content": "Red."]]] as [String: Any])
        #expect(msgs.status == 201, "\(msgs.text)")

        #expect(try d.post("/v1/feedback", json: ["completion_id": "chatcmpl-nope", "rating": 1]).status == 404)
        func param(_ body: [String: Any]) throws -> (Int, String?) {
            let r = try d.post("/v1/feedback", json: body)
            let e = (try? r.json())?["error"] as? [String: Any]
            return (r.status, e?["param"] as? String)
        }
        #expect(try param(["completion_id": cID, "rating": 2]) == (400, "rating"))
        #expect(try param(["completion_id": cID, "rating": "up"]) == (400, "rating"))
        #expect(try param(["completion_id": cID]) == (400, "rating"))
        #expect(try param(["rating": 1]) == (400, "completion_id"))
        #expect(try param(["completion_id": cID, "correction": 5]) == (400, "correction"))
        #expect(try param(["completion_id": cID, "correction": [["role": "robot", "content": "x"]]]) == (400, "correction[0]"))
        #expect(try param(["completion_id": cID, "rating": 1, "comment": 3]) == (400, "comment"))
        #expect(try d.post("/v1/feedback", rawBody: "{not json").status == 400)

        let got = try d.get("/v1/feedback/\(fID)")
        let gotMeta = try got.json()["metadata"] as? [String: String]
        #expect(got.status == 200 && gotMeta == ["a": "b"])
        #expect(try d.get("/v1/feedback/fb-nope").status == 404)
        let list = try d.get("/v1/feedback?completion_id=\(cID)").json()
        #expect((list["data"] as? [Any])?.count == 3)
        #expect((try d.get("/v1/feedback?limit=2").json()["has_more"] as? Bool) == true)

        // A non-admin: generates and stores its own, posts feedback on it, sees only its own rows.
        let (st, body) = try Self.curlAsNobody(
            d,
            ["-H", "Content-Type: application/json", "-d",
             #"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":2,"store":true}"#, "http://l/v1/chat/completions"])
        #expect(st == 200, "\(body)")
        let own = try #require(
            (try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any])?["id"] as? String)
        let fbOwn = try Self.curlAsNobody(d, ["-d", "{\"completion_id\":\"\(own)\",\"rating\":-1}", "http://l/v1/feedback"])
        #expect(fbOwn.0 == 201, "\(fbOwn.1)")
        #expect(try Self.curlAsNobody(d, ["-d", "{\"completion_id\":\"\(cID)\",\"rating\":1}", "http://l/v1/feedback"]).0 == 403)
        #expect(try Self.curlAsNobody(d, ["http://l/v1/chat/completions/\(cID)"]).0 == 404)
        #expect(try Self.curlAsNobody(d, ["http://l/v1/chat/completions/\(own)"]).0 == 200)
        #expect(try Self.curlAsNobody(d, ["http://l/v1/feedback/\(fID)"]).0 == 404)
        #expect(try Self.curlAsNobody(d, ["-X", "DELETE", "http://l/v1/chat/completions/\(own)"]).0 == 403)
        let theirs = try Self.curlAsNobody(d, ["http://l/v1/feedback"])
        let theirList = try #require(try JSONSerialization.jsonObject(with: Data(theirs.1.utf8)) as? [String: Any])
        #expect((theirList["data"] as? [Any])?.count == 1)
        let theirCompletions = try Self.curlAsNobody(d, ["http://l/v1/chat/completions"])
        let tc = try #require(try JSONSerialization.jsonObject(with: Data(theirCompletions.1.utf8)) as? [String: Any])
        #expect((tc["data"] as? [[String: Any]])?.map { $0["id"] as? String } == [own])
        #expect(try Self.curlAsNobody(d, ["http://l/v1/feedback/export"]).0 == 403)

        let metrics = try d.get("/metrics").text
        #expect(metrics.contains("\nlorad_feedback_items 4\n") || metrics.contains("\nlorad_feedback_items 4.0\n"), "\(metrics)")
    }

    @Test func exportFormats() throws {
        let d = try LoradProcess()
        defer { d.stop() }
        let a = try #require(try Self.storedChat(d, "Capital of France?")["id"] as? String)
        // Same prompt, a longer (so different) answer: the thumbs-up/thumbs-down pair for dpo.
        let b = try #require(try Self.storedChat(d, "Capital of France?", maxTokens: 6)["id"] as? String)
        let c = try #require(try Self.storedChat(d, "Two plus two?")["id"] as? String)
        #expect(try d.post("/v1/feedback", json: ["completion_id": a, "rating": 1]).status == 201)
        #expect(try d.post("/v1/feedback", json: ["completion_id": b, "rating": -1]).status == 201)
        #expect(try d.post("/v1/feedback", json: ["completion_id": c, "rating": -1, "correction": "Four."]).status == 201)
        func lines(_ format: String) throws -> [[String: Any]] {
            let r = try d.get("/v1/feedback/export?format=\(format)")
            #expect(r.status == 200)
            return try r.text.split(separator: "\n").map {
                try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
            }
        }
        // sft: the thumbs-up answer and the correction, as chat lines.
        let sft = try lines("sft")
        #expect(sft.count == 2)
        for l in sft {
            let m = try #require(l["messages"] as? [[String: String]])
            #expect(m.count == 2 && m[0]["role"] == "user" && m[1]["role"] == "assistant")
        }
        #expect((sft[1]["messages"] as? [[String: String]])?.last?["content"] == "Four.")
        // dpo: the correction against the served answer, and the up/down pair on the same prompt.
        let dpo = try lines("dpo")
        #expect(dpo.count == 2)
        for l in dpo {
            let input = try #require((l["input"] as? [String: Any])?["messages"] as? [[String: String]])
            #expect(input.first?["role"] == "user")
            let good = try #require(l["preferred_output"] as? [[String: String]])
            let bad = try #require(l["non_preferred_output"] as? [[String: String]])
            #expect(good.count == 1 && bad.count == 1 && good[0]["role"] == "assistant" && bad[0]["role"] == "assistant")
        }
        #expect((dpo[0]["preferred_output"] as? [[String: String]])?.first?["content"] == "Four.")
        #expect(try d.get("/v1/feedback/export?format=csv").status == 400)
        #expect(try lines("sft&model=nope").isEmpty)

        // loractl: the same export, and feedback from the command line.
        let model = try #require(try d.get("/v1/chat/completions/\(a)").json()["model"] as? String)
        var r = try loractl(d, ["feedback", "export", "--model", model, "--format", "dpo"])
        let apiDPO = try d.get("/v1/feedback/export?format=dpo&model=\(model)").text
        #expect(r.0 == 0 && r.1 == apiDPO, "\(r)")
        r = try loractl(d, ["feedback", c, "--correction", "4"])
        #expect(r.0 == 0 && r.1.hasPrefix("fb-"), "\(r)")
        r = try loractl(d, ["feedback", a, "--up"])
        #expect(r.0 == 0 && r.1.hasPrefix("fb-"), "\(r)")
        r = try loractl(d, ["feedback", "chatcmpl-nope", "--down"])
        #expect(r.0 != 0 && r.2.contains("No stored completion"), "\(r)")
        r = try loractl(d, ["feedback", a])
        #expect(r.0 != 0)
        #expect(try lines("sft").count == 4)
    }

    /// Feedback posts from 8 concurrent clients; kill -9 at a random moment; every 201 survives the restart.
    @Test func acknowledgedFeedbackSurvivesKill9() throws {
        let d = try LoradProcess()
        d.removeDirOnExit = false
        let cID = try #require(try Self.storedChat(d, "Hello")["id"] as? String)
        final class Tally: @unchecked Sendable {
            let lock = NSLock()
            var acked: [String] = []
            var attempted = 0
        }
        let tally = Tally()
        // Kill at a random point of the run: after a random number of acknowledgements (plus up to 5 ms).
        let killAt = Int.random(in: 50...900)
        let group = DispatchGroup()
        for client in 0..<8 {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                // Each client posts until the daemon is gone (or 1,000 posts), so the kill always comes mid-run
                // however slowly the watching thread gets scheduled.
                for i in 0..<1000 {
                    tally.lock.withLock { tally.attempted += 1 }
                    guard
                        let r = try? d.post(
                            "/v1/feedback", json: ["completion_id": cID, "rating": 1, "comment": "c\(client)-\(i)"]),
                        r.status == 201, let id = (try? r.json())?["id"] as? String
                    else { break }
                    tally.lock.withLock { tally.acked.append(id) }
                }
            }
        }
        while tally.lock.withLock({ tally.acked.count }) < killAt, group.wait(timeout: .now()) == .timedOut { usleep(200) }
        usleep(useconds_t.random(in: 0...5000))
        kill(d.process.processIdentifier, SIGKILL)
        d.process.waitUntilExit()
        group.wait()
        let acked = tally.lock.withLock { tally.acked }
        let attempted = tally.lock.withLock { tally.attempted }
        print("feedback durability: killed after \(killAt)+ acknowledgements; \(acked.count) of \(attempted) posts got 201")
        #expect(acked.count >= killAt && acked.count < 8000, "the kill came after the last post")

        let d2 = try LoradProcess(reuse: d.dir)
        defer { d2.stop() }
        var stored = Set<String>()
        var after: String?
        while true {
            let page = try d2.get("/v1/feedback?limit=100" + (after.map { "&after=\($0)" } ?? "")).json()
            let ids = (page["data"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }
            stored.formUnion(ids)
            guard page["has_more"] as? Bool == true, let last = ids.last else { break }
            after = last
        }
        let lost = acked.filter { !stored.contains($0) }
        print("feedback durability: \(stored.count) stored after restart, \(lost.count) acknowledged lost")
        #expect(lost.isEmpty)
        #expect(stored.count >= acked.count)
        #expect(try d2.get("/v1/chat/completions/\(cID)").status == 200)
    }

    /// A store on a 1 MiB tmpfs: writes beyond it answer 507, nothing acknowledged is lost, the daemon keeps serving.
    @Test func fullDiskAnswers507() throws {
        let disk = try SmallTmpfs(size: "1m", tag: "full")
        defer { disk.unmount() }
        let mnt = disk.path
        let d = try LoradProcess(extra: ["--state-dir", mnt])
        defer { d.stop() }
        let cID = try #require(try Self.storedChat(d, "Hello")["id"] as? String)
        let comment = String(repeating: "x", count: 50_000)
        var acked: [String] = []
        var sawFull = false
        for _ in 0..<200 {
            let r = try d.post("/v1/feedback", json: ["completion_id": cID, "rating": 1, "comment": comment])
            if r.status == 201 {
                acked.append(try #require(try r.json()["id"] as? String))
            } else {
                #expect(r.status == 507, "\(r.text)")
                #expect(r.text.contains("insufficient_storage"))
                sawFull = true
                break
            }
        }
        #expect(sawFull)
        #expect(!acked.isEmpty)
        // Still serving: health, generation, reads of everything acknowledged, and another 507 rather than a crash.
        #expect(try d.get("/health").status == 200)
        let gen = try d.post("/v1/completions", json: ["prompt": "Hi", "max_tokens": 2])
        #expect(gen.status == 200)
        for id in acked { #expect(try d.get("/v1/feedback/\(id)").status == 200) }
        #expect(try d.post("/v1/feedback", json: ["completion_id": cID, "rating": 1, "comment": comment]).status == 507)
        #expect(try d.get("/metrics").text.contains("lorad_store_disk_full_errors"))
        print("full disk: \(acked.count) feedback items of 50 kB stored on a 1 MiB tmpfs before 507")
    }
}
