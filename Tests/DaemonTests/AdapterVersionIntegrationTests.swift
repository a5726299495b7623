// Adapter versions through the real lorad binary and the real default model: rollback restores the earlier
// version's served tokens and logprobs exactly (the reference rank-8 adapter's GGUF and PEFT files as versions 1 and
// 2, a scaled variant as version 3), a stream running across a rollback finishes on its version, the versions
// route and loractl, the bad-input answers (404 / 400 / 403), and kill -9 during a publish loop leaving every name
// on a complete version with no half-published files.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// SHA-256 of a file, by coreutils' sha256sum (independent of the daemon's hashing).
func sha256sum(_ path: String) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
    p.arguments = [path]
    let out = Pipe()
    p.standardOutput = out
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return String(String(decoding: data, as: UTF8.self).prefix(64))
}

@Suite(.serialized) struct AdapterVersionIntegrationTests {
    /// Greedy completions of `prompts` on `model`: for each, the logprobs object (token ids, their logprobs and the
    /// top-5 alternatives) as canonical JSON text, and the served adapter versions header.
    static func served(_ d: LoradProcess, model: String, prompts: [[Int]], maxTokens: Int = 8) throws -> (outputs: [String], header: String?) {
        var outputs: [String] = []
        var header: String?
        for p in prompts {
            let r = try d.post(
                "/v1/completions",
                json: [
                    "model": model, "prompt": p, "max_tokens": maxTokens, "temperature": 0, "logprobs": 5,
                    "return_tokens_as_token_ids": true,
                ])
            guard r.status == 200 else { throw HarnessError(description: "status \(r.status): \(r.text)") }
            header = r.header("X-Lorad-Adapters")
            let choice = try #require((try r.json()["choices"] as? [[String: Any]])?.first)
            let logprobs = try #require(choice["logprobs"] as? [String: Any])
            let data = try JSONSerialization.data(withJSONObject: logprobs, options: [.sortedKeys])
            outputs.append(String(decoding: data, as: UTF8.self))
        }
        return (outputs, header)
    }

    @Test func rollbackRestoresServedOutputsExactly() throws {
        let ref = try Paths.referenceDir() + "/lora-r8"
        let dir = NSTemporaryDirectory() + "lorad-rollback-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try AdapterFixtures.writeVariant(to: "\(dir)/scaled.gguf", bScale: -2)
        let d = try LoradProcess(extra: ["--adapter-import-dir", ref, "--adapter-import-dir", dir, "--admin-group", "65533"])
        defer { d.stop() }
        let prompts = try loadGreedy("lora-greedy.jsonl").filter { $0.promptIDs.count < 64 }.prefix(3).map(\.promptIDs)
        #expect(prompts.count == 3)

        // Versions 1 (GGUF), 2 (PEFT) and 3 (scaled variant) of one name.
        let v1 = try #require(try d.register("rb", path: try AdapterFixtures.referenceGGUF())["version"] as? Int)
        let out1 = try Self.served(d, model: "rb", prompts: prompts)
        #expect(out1.header == "rb@\(v1)*1.0")
        let r2 = try d.register("rb", path: try AdapterFixtures.referencePEFT())
        let v2 = try #require(r2["version"] as? Int)
        #expect(r2["replaced_version"] as? Int == v1 && r2["versions"] as? Int == 2)
        let out2 = try Self.served(d, model: "rb", prompts: prompts)
        let v3 = try #require(try d.register("rb", path: "\(dir)/scaled.gguf")["version"] as? Int)
        let out3 = try Self.served(d, model: "rb", prompts: prompts)
        #expect(out3.header == "rb@\(v3)*1.0")
        #expect(out3.outputs != out1.outputs, "the scaled variant must serve something else than version 1")
        let base = try Self.served(d, model: "gemma-3-270m-q4_k_m", prompts: prompts)
        #expect(base.outputs != out1.outputs)

        // The versions route: newest first, the current one marked, the lineage fields present.
        let listed = try d.get("/v1/adapters/rb/versions")
        #expect(listed.status == 200)
        let vs = try #require(try listed.json()["data"] as? [[String: Any]])
        #expect(vs.map { $0["version"] as? Int } == [v3, v2, v1])
        #expect(vs.map { $0["current"] as? Bool } == [true, false, false])
        #expect(vs.map { $0["format"] as? String } == ["gguf", "peft", "gguf"])
        #expect(vs.allSatisfy { $0["parent_version"] is NSNull && $0["job_id"] is NSNull && ($0["sha256"] as? String)?.count == 64 })
        #expect(vs[2]["sha256"] as? String == (try sha256sum(try AdapterFixtures.referenceGGUF())))
        #expect(try d.get("/v1/adapters/rb").json()["versions"] as? Int == 3)

        // A stream on version 3 that runs across the rollback finishes on version 3.
        let solo = try d.greedy(model: "rb", prompt: prompts[0], maxTokens: 40).ids
        let streamed = Box([Int]())
        let failures = onThreads(2) { i in
            if i == 0 {
                let ids = try d.greedy(model: "rb", prompt: prompts[0], maxTokens: 40, stream: true).ids
                streamed.with { $0 = ids }
            } else {
                for _ in 0..<300 {
                    if (try d.get("/v1/status").json()["running_sequences"] as? Int ?? 0) >= 1 { break }
                    usleep(20_000)
                }
                let r = try d.post("/v1/adapters/rb/rollback", json: ["version": v1])
                guard r.status == 200 else { throw HarnessError(description: "rollback: \(r.status) \(r.text)") }
                let o = try r.json()
                guard o["version"] as? Int == v1, o["rolled_back_from"] as? Int == v3 else {
                    throw HarnessError(description: "rollback answered \(r.text)")
                }
            }
        }
        #expect(failures.isEmpty, "\(failures)")
        #expect(streamed.with { $0 } == solo)

        // After the rollback: exactly version 1's tokens and logprobs.
        let after = try Self.served(d, model: "rb", prompts: prompts)
        #expect(after.header == "rb@\(v1)*1.0")
        #expect(after.outputs == out1.outputs)
        let history = try #require(try d.get("/v1/adapters/rb/versions").json()["history"] as? [[String: Any]])
        #expect(history.first?["kind"] as? String == "rollback" && history.first?["from_version"] as? Int == v3)

        // loractl: versions table and a rollback to version 2.
        var r = try loractl(d, ["adapters", "versions", "rb"])
        let lines = r.1.split(separator: "\n")
        #expect(r.0 == 0 && lines.count == 4, "\(r)")
        #expect(lines.count == 4 && lines[3].hasPrefix("* \(v1) "), "\(r.1)")
        r = try loractl(d, ["adapters", "rollback", "rb", "\(v2)"])
        #expect(r.0 == 0 && r.1 == "rb: version \(v2) is current (was \(v1))\n", "\(r)")
        #expect(try Self.served(d, model: "rb", prompts: prompts).outputs == out2.outputs)
        r = try loractl(d, ["adapters", "rollback", "rb", "9999"])
        #expect(r.0 == 1 && r.2.contains("404"), "\(r)")

        // Bad input; the daemon serves on.
        func errorCode(_ res: HTTPResult) -> String? { (try? res.json()["error"] as? [String: Any])?["code"] as? String }
        let unknownVersion = try d.post("/v1/adapters/rb/rollback", json: ["version": 9999])
        #expect(unknownVersion.status == 404 && errorCode(unknownVersion) == "adapter_version_not_found")
        let unknownName = try d.post("/v1/adapters/nope/rollback", json: ["version": v1])
        #expect(unknownName.status == 404 && errorCode(unknownName) == "adapter_not_found")
        #expect(try d.get("/v1/adapters/nope/versions").status == 404)
        #expect(try d.post("/v1/adapters/rb/rollback", json: ["version": "one"]).status == 400)
        #expect(try d.post("/v1/adapters/rb/rollback", json: [String: Any]()).status == 400)
        #expect(try d.post("/v1/adapters/rb/rollback", rawBody: "{\"version\": ").status == 400)
        #expect(try d.get("/v1/adapters/rb/rollback").status == 405)
        #expect(try d.get("/v1/adapters/rb/other").status == 404)
        // Non-admins may read versions but not roll back.
        chmod(d.socket, 0o666)
        chmod(d.dir.path, 0o755)
        let nobodyRollback = try StoreIntegrationTests.curlAsNobody(
            d, ["-H", "Content-Type: application/json", "-d", "{\"version\": \(v1)}", "http://l/v1/adapters/rb/rollback"])
        #expect(nobodyRollback.0 == 403, "\(nobodyRollback)")
        #expect(try StoreIntegrationTests.curlAsNobody(d, ["http://l/v1/adapters/rb/versions"]).0 == 200)
        #expect(try Self.served(d, model: "rb", prompts: prompts).outputs == out2.outputs)

        // Deleting the name removes every version.
        #expect(try d.delete("/v1/adapters/rb").status == 200)
        #expect(!FileManager.default.fileExists(atPath: d.dir.path + "/state/adapters/store/rb"))
        #expect(try d.get("/v1/adapters/rb/versions").status == 404)
    }

    /// kill -9 at a random moment of a publish loop over three names, twice: after each restart every name that
    /// had an acknowledged publish is registered on a complete version (its files hash to its record, which is
    /// one of the two contents, at least as new as the last acknowledged one), every listed version has its
    /// files, no unlisted directory is left, and each name serves its content's tokens.
    @Test func killDuringPublishLoopLeavesCompleteVersions() throws {
        let dir = NSTemporaryDirectory() + "lorad-killpub-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try AdapterFixtures.writeVariant(to: "\(dir)/a.gguf", bScale: 2)
        try AdapterFixtures.writeVariant(to: "\(dir)/b.gguf", bScale: -2)
        let sha = ["a": try sha256sum("\(dir)/a.gguf"), "b": try sha256sum("\(dir)/b.gguf")]
        let flags = ["--adapter-import-dir", dir, "--adapter-keep-versions", "3"]
        var d = try LoradProcess(extra: flags)
        d.removeDirOnExit = false
        let stateDir = d.dir
        defer { try? FileManager.default.removeItem(at: stateDir) }
        let prompt = try loadGreedy("lora-greedy.jsonl")[1].promptIDs
        _ = try d.register("ref-a", path: "\(dir)/a.gguf")
        _ = try d.register("ref-b", path: "\(dir)/b.gguf")
        let expect = [
            "a": try d.greedy(model: "ref-a", prompt: prompt, maxTokens: 6).ids,
            "b": try d.greedy(model: "ref-b", prompt: prompt, maxTokens: 6).ids,
        ]
        #expect(expect["a"] != expect["b"])
        let names = ["p0", "p1", "p2"]
        let acked = Box([String: Int]())  // name -> last acknowledged version

        for round in 0..<2 {
            let daemon = d
            let stop = Box(false)
            let publisher = Thread {
                var k = round
                while !stop.with({ $0 }) {
                    let name = names[k % names.count]
                    let which = (k / names.count) % 2 == 0 ? "a" : "b"
                    k += 1
                    guard let r = try? daemon.post("/v1/adapters", json: ["name": name, "path": "\(dir)/\(which).gguf"]),
                        r.status == 200 || r.status == 201, let v = (try? r.json())?["version"] as? Int
                    else { continue }
                    acked.with { $0[name] = max($0[name] ?? 0, v) }
                }
            }
            let before = acked.with { $0 }
            publisher.start()
            // Kill at a random moment after this round's first acknowledged publish (however long a loaded machine
            // takes to get there), so the kill lands inside the publish loop.
            let deadline = Date().addingTimeInterval(120)
            while acked.with({ $0 }) == before && Date() < deadline { usleep(20_000) }
            usleep(UInt32.random(in: 0...2_500_000))
            d.stop(signal: SIGKILL)
            stop.with { $0 = true }
            while !publisher.isFinished { usleep(10_000) }
            #expect(!acked.with { $0 }.isEmpty, "no publish was acknowledged before the kill (round \(round))")
            print("round \(round): killed after publishes acknowledged up to \(acked.with { $0 }.sorted { $0.key < $1.key })")

            d = try LoradProcess(extra: flags, reuse: stateDir)
            d.removeDirOnExit = false
            let store = stateDir.path + "/state/adapters/store"
            for name in names {
                guard let last = acked.with({ $0[name] }) else { continue }
                let info = try d.get("/v1/adapters/\(name)")
                #expect(info.status == 200, "\(name): \(info.text)")
                guard info.status == 200 else { continue }
                let o = try info.json()
                let v = try #require(o["version"] as? Int)
                #expect(v >= last, "\(name): current \(v) is older than the acknowledged \(last)")
                let fileSHA = try sha256sum("\(store)/\(name)/\(v)/adapter.gguf")
                #expect(fileSHA == o["sha256"] as? String)
                let content = try #require(sha.first { $0.value == fileSHA }?.key, "\(name)@\(v) holds neither content")
                #expect(try d.greedy(model: name, prompt: prompt, maxTokens: 6).ids == expect[content], "\(name)@\(v)")
                let listed = try #require(try d.get("/v1/adapters/\(name)/versions").json()["data"] as? [[String: Any]])
                let listedVersions = Set(listed.compactMap { $0["version"] as? Int })
                #expect(listed.count <= 3, "\(name): \(listedVersions)")  // --adapter-keep-versions 3
                for lv in listed {
                    let n = try #require(lv["version"] as? Int)
                    #expect(try sha256sum("\(store)/\(name)/\(n)/adapter.gguf") == lv["sha256"] as? String, "\(name)@\(n)")
                }
                let onDisk = Set(try FileManager.default.contentsOfDirectory(atPath: "\(store)/\(name)").compactMap(Int.init))
                #expect(onDisk == listedVersions, "\(name): files \(onDisk.sorted()) vs rows \(listedVersions.sorted())")
            }
            #expect((try FileManager.default.contentsOfDirectory(atPath: stateDir.path + "/state/adapters/staging")).isEmpty)
        }
        d.stop()
    }
}
