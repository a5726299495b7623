// Adapters through the real lorad binary and the real default model: registration by path and by upload, both
// reference formats against llama.cpp's lora-greedy.jsonl, mixed-adapter batches, hot swap under load, deletion,
// persistence across kill -9, the admin check, and rejected adapters. Adapter variants are written here from the
// reference adapter's tensors with the project's GGUF writer.

import Foundation
import Runtime
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The reference rank-8 adapter and variants of it.
enum AdapterFixtures {
    static func referenceGGUF() throws -> String { try Paths.referenceDir() + "/lora-r8/gemma-3-270m-lora-r8.gguf" }
    static func referencePEFT() throws -> String { try Paths.referenceDir() + "/lora-r8/peft" }

    struct Tensor {
        var name: String
        var dims: [Int]
        var values: [Float]
    }

    /// The reference GGUF adapter's tensors as f32, in file order.
    static func referenceTensors() throws -> [Tensor] {
        let f = try GGUFFile(path: try referenceGGUF())
        return f.tensors.map { t in
            var out = [Float](repeating: 0, count: t.elementCount)
            let raw = f.data(of: t)
            out.withUnsafeMutableBufferPointer { Quant.dequantize(t.type, raw.baseAddress!, count: t.elementCount, into: $0.baseAddress!) }
            return Tensor(name: t.name, dims: t.dims, values: out)
        }
    }

    /// Writes a GGUF adapter: the reference tensors with every lora_b multiplied by `bScale`, then `edit` applied.
    static func writeVariant(
        to path: String, bScale: Float, alpha: Float = 16, edit: ((inout [Tensor]) -> Void)? = nil
    ) throws {
        var ts = try referenceTensors()
        for i in ts.indices where ts[i].name.hasSuffix(".lora_b") { ts[i].values = ts[i].values.map { $0 * bScale } }
        edit?(&ts)
        var w = GGUFWriter()
        w.set("general.architecture", .string("gemma3"))
        w.set("general.type", .string("adapter"))
        w.set("adapter.type", .string("lora"))
        w.set("adapter.lora.alpha", .float32(alpha))
        for t in ts { try w.addTensor(name: t.name, dims: t.dims, floats: t.values) }
        try w.write(to: path)
    }

    static func copyDirectory(_ src: String, to dst: String) throws {
        try? FileManager.default.removeItem(atPath: dst)
        try FileManager.default.copyItem(atPath: src, toPath: dst)
        // The reference files are read-only; the copies must be writable for the tests that damage them.
        for f in try FileManager.default.contentsOfDirectory(atPath: dst) { chmod(dst + "/" + f, 0o644) }
        chmod(dst, 0o755)
    }
}

func loadGreedy(_ file: String) throws -> [GreedyRecord] {
    let text = try String(contentsOfFile: try Paths.referenceDir() + "/" + file, encoding: .utf8)
    return try text.split(separator: "\n").map { line in
        let o = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        let f = try #require(o["f64"] as? [String: Any])
        return GreedyRecord(
            name: o["name"] as! String, prompt: o["prompt"] as! String, promptIDs: o["prompt_ids"] as! [Int],
            generated: o["generated_ids"] as! [Int], margins: o["step_margins"] as! [Double],
            f64Generated: f["generated_ids"] as! [Int], f64Margins: f["step_margins"] as! [Double])
    }
}

extension LoradProcess {
    /// Greedy token ids and the adapter header of a (streamed or not) completion on `model`.
    func greedy(model: String?, prompt: Any, maxTokens: Int, stream: Bool = false, adapters: [[String: Any]]? = nil)
        throws -> (ids: [Int], versions: String?)
    {
        var body: [String: Any] = [
            "prompt": prompt, "max_tokens": maxTokens, "temperature": 0, "logprobs": 0,
            "return_tokens_as_token_ids": true, "stream": stream,
        ]
        if let model { body["model"] = model }
        if let adapters { body["adapters"] = adapters }
        let r = try post("/v1/completions", json: body)
        guard r.status == 200 else { throw HarnessError(description: "status \(r.status): \(r.text)") }
        let header = r.headers.first { $0.0.lowercased() == "x-lorad-adapters" }?.1
        var ids: [Int] = []
        let objects: [[String: Any]]
        if stream {
            let events = sseEvents(r.text)
            guard events.last == "[DONE]" else { throw HarnessError(description: "stream did not end with [DONE]") }
            objects = try events.dropLast().map { try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
            if objects.contains(where: { $0["error"] != nil }) { throw HarnessError(description: "stream error: \(r.text)") }
        } else {
            objects = [try r.json()]
        }
        for o in objects {
            for c in (o["choices"] as? [[String: Any]]) ?? [] {
                let tokens = ((c["logprobs"] as? [String: Any])?["tokens"] as? [String]) ?? []
                ids += tokens.map { Int($0.dropFirst("token_id:".count)) ?? -1 }
            }
        }
        return (ids, header)
    }

    func register(_ name: String, path: String) throws -> [String: Any] {
        let r = try post("/v1/adapters", json: ["name": name, "path": path])
        guard r.status == 200 || r.status == 201 else { throw HarnessError(description: "register \(name): \(r.status) \(r.text)") }
        return try r.json()
    }
}

/// Runs `body(i)` for i in 0..<n on n threads at once and waits for all.
func onThreads(_ n: Int, _ body: @escaping @Sendable (Int) throws -> Void) -> [String] {
    let failures = Box([String]())
    let group = DispatchGroup()
    for i in 0..<n {
        group.enter()
        Thread {
            defer { group.leave() }
            do { try body(i) } catch { failures.with { $0.append("\(i): \(error)") } }
        }.start()
    }
    group.wait()
    return failures.with { $0 }
}

final class Box<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: T
    init(_ v: T) { value = v }
    func with<R>(_ f: (inout T) -> R) -> R { lock.lock(); defer { lock.unlock() }; return f(&value) }
}

@Suite(.serialized) struct AdapterIntegrationTests {
    /// Both reference formats, registered by path, meet the Runtime criterion against lora-greedy.jsonl.
    @Test func referenceAdapterBothFormatsMatchLlamaCpp() throws {
        let ref = try Paths.referenceDir() + "/lora-r8"
        let d = try LoradProcess(extra: ["--adapter-import-dir", ref])
        defer { d.stop() }
        let g = try d.register("r8-gguf", path: try AdapterFixtures.referenceGGUF())
        #expect(g["format"] as? String == "gguf")
        #expect(g["rank"] as? Int == 8)
        let p = try d.register("r8-peft", path: try AdapterFixtures.referencePEFT())
        #expect(p["format"] as? String == "peft")
        #expect(p["rank"] as? Int == 8)
        #expect(Set((p["targets"] as? [String]) ?? []) == Set(["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]))
        let records = try loadGreedy("lora-greedy.jsonl").filter { $0.promptIDs.count < 300 }
        #expect(records.count >= 8)
        for r in records {
            for name in ["r8-gguf", "r8-peft"] {
                let out = try d.greedy(model: name, prompt: r.promptIDs, maxTokens: r.generated.count)
                #expect(matchesReference(out.ids, r), "\(name) \(r.name): \(out.ids) vs \(r.generated)")
            }
        }
        // The base model is still the base: the adapter changes at least one continuation.
        var differs = 0
        for r in records.prefix(4) {
            let b = try d.greedy(model: nil, prompt: r.promptIDs, maxTokens: 16).ids
            if b != (try d.greedy(model: "r8-gguf", prompt: r.promptIDs, maxTokens: 16).ids) { differs += 1 }
        }
        #expect(differs > 0)
        // /v1/models lists both with the base as parent.
        let models = try #require(try d.get("/v1/models").json()["data"] as? [[String: Any]])
        let ids = models.compactMap { $0["id"] as? String }
        #expect(ids.contains("r8-gguf") && ids.contains("r8-peft"))
        #expect(models.first { $0["id"] as? String == "r8-peft" }?["parent"] as? String == "gemma-3-270m-q4_k_m")
    }

    /// 8 streams on 8 different adapters share steps and each gives what it gives alone.
    @Test func eightAdaptersInOneBatchMatchSolo() throws {
        let dir = NSTemporaryDirectory() + "lorad-adapters-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let scales: [Float] = [1, 2, 3, -1, -2, 0.5, 4, -3]
        for (i, s) in scales.enumerated() { try AdapterFixtures.writeVariant(to: "\(dir)/v\(i).gguf", bScale: s) }
        let d = try LoradProcess(extra: ["--adapter-import-dir", dir, "--max-sequences", "8"])
        defer { d.stop() }
        for i in scales.indices { _ = try d.register("v\(i)", path: "\(dir)/v\(i).gguf") }
        let prompt = try loadGreedy("lora-greedy.jsonl")[0].promptIDs
        var solo: [[Int]] = []
        for i in scales.indices { solo.append(try d.greedy(model: "v\(i)", prompt: prompt, maxTokens: 20).ids) }
        #expect(Set(solo).count >= 3, "the variants should not all agree: \(solo)")
        let together = Box([[Int]](repeating: [], count: scales.count))
        let failures = onThreads(scales.count) { i in
            let ids = try d.greedy(model: "v\(i)", prompt: prompt, maxTokens: 20, stream: true).ids
            together.with { $0[i] = ids }
        }
        #expect(failures.isEmpty, "\(failures)")
        #expect(together.with { $0 } == solo)
        let status = try d.get("/v1/status").json()
        #expect((status["adapters_registered"] as? Int) == scales.count)
    }

    /// Replace and delete an adapter in a loop while streams on it run: no request fails, each output is the one
    /// of the version reported in its X-Lorad-Adapters header, and deleted names give 404 to new requests.
    @Test func hotSwapRaceKeepsEveryStreamOnItsVersion() throws {
        let dir = NSTemporaryDirectory() + "lorad-swap-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try AdapterFixtures.writeVariant(to: "\(dir)/a.gguf", bScale: 2)
        try AdapterFixtures.writeVariant(to: "\(dir)/b.gguf", bScale: -2)
        let d = try LoradProcess(extra: ["--adapter-import-dir", dir, "--max-sequences", "8"])
        defer { d.stop() }
        let prompt = try loadGreedy("lora-greedy.jsonl")[1].promptIDs
        // Expected outputs of each content, measured alone.
        _ = try d.register("ref-a", path: "\(dir)/a.gguf")
        _ = try d.register("ref-b", path: "\(dir)/b.gguf")
        let expectA = try d.greedy(model: "ref-a", prompt: prompt, maxTokens: 12).ids
        let expectB = try d.greedy(model: "ref-b", prompt: prompt, maxTokens: 12).ids
        #expect(expectA != expectB)

        let versions = Box([Int: String]())  // version -> "a" | "b"
        @Sendable func put(_ which: String) throws {
            let o = try d.register("hot", path: "\(dir)/\(which).gguf")
            let v = try #require(o["version"] as? Int)
            versions.with { $0[v] = which }
        }
        try put("a")
        let stop = Box(false)
        let served = Box(0)
        let clients = onThreads(5) { i in
            if i == 0 {
                // The swapper: replace at least 12 times, alternating contents, with a delete and re-create in
                // between, and on until 8 requests were served (a loaded machine serves fewer per swap; 120 s cap).
                let start = Date()
                var k = 0
                while k < 12 || (served.with { $0 } < 8 && Date().timeIntervalSince(start) < 120) {
                    if k == 6 {
                        let r = try d.delete("/v1/adapters/hot")
                        guard r.status == 200 else { throw HarnessError(description: "delete: \(r.status) \(r.text)") }
                    }
                    try put(k % 2 == 0 ? "b" : "a")
                    usleep(150_000)
                    k += 1
                }
                stop.with { $0 = true }
                return
            }
            while !stop.with({ $0 }) {
                let out: (ids: [Int], versions: String?)
                do {
                    out = try d.greedy(model: "hot", prompt: prompt, maxTokens: 12, stream: i % 2 == 0)
                } catch let e as HarnessError where e.description.hasPrefix("status 404") {
                    continue  // the moment between delete and re-register
                }
                let header = try #require(out.versions)
                let v = try #require(Int(header.split(separator: "@")[1].split(separator: "*")[0]))
                let which = try #require(versions.with { $0[v] })
                guard out.ids == (which == "a" ? expectA : expectB) else {
                    throw HarnessError(description: "version \(v) (\(which)) produced \(out.ids)")
                }
                served.with { $0 += 1 }
            }
        }
        #expect(clients.isEmpty, "\(clients)")
        #expect(served.with { $0 } >= 8)
        // Deleting while a stream runs: that stream finishes, new requests get 404. First let the daemon retire
        // the first phase's sequences (bounded), so the delete below waits for this phase's stream, not for one of
        // those.
        for _ in 0..<300 {
            if (try d.get("/v1/status").json()["running_sequences"] as? Int ?? 0) == 0 { break }
            usleep(20_000)
        }
        let finished = onThreads(2) { i in
            if i == 0 {
                let out = try d.greedy(model: "hot", prompt: prompt, maxTokens: 40, stream: true)
                guard out.ids.count == 40 else { throw HarnessError(description: "stream cut short: \(out.ids.count)") }
            } else {
                // Delete once the stream is running (bounded wait), not after a fixed pause a loaded machine
                // might outlast before the stream is admitted.
                for _ in 0..<300 {
                    if (try d.get("/v1/status").json()["running_sequences"] as? Int ?? 0) >= 1 { break }
                    usleep(20_000)
                }
                let r = try d.delete("/v1/adapters/hot")
                guard r.status == 200 else { throw HarnessError(description: "delete: \(r.status)") }
            }
        }
        #expect(finished.isEmpty, "\(finished)")
        let gone = try d.post("/v1/completions", json: ["model": "hot", "prompt": "x", "max_tokens": 1])
        #expect(gone.status == 404)
        #expect((try gone.json()["error"] as? [String: Any])?["code"] as? String == "model_not_found")
        // The deleted versions' memory is released once their last stream ended (the handler lets go of its
        // request just after the client has read the end of the stream, so allow it a moment).
        let perAdapter = try #require((try d.get("/v1/adapters/ref-a").json())["bytes"] as? Int)
        var live = Int.max
        for _ in 0..<300 where live > 2 * perAdapter {
            live = try #require(try d.get("/v1/status").json()["adapter_live_bytes"] as? Int)
            if live > 2 * perAdapter { usleep(100_000) }
        }
        #expect(live == 2 * perAdapter, "live \(live) bytes, one adapter is \(perAdapter)")
    }

    /// Registrations are durable: after kill -9 and a restart the registry, versions and outputs are the same.
    @Test func registryAndUploadsSurviveKill9() throws {
        let ref = try Paths.referenceDir() + "/lora-r8"
        let d = try LoradProcess(extra: ["--adapter-import-dir", ref])
        d.removeDirOnExit = false
        let byPath = try d.register("kept", path: try AdapterFixtures.referenceGGUF())
        // Upload: the PEFT files in the request body.
        let peft = try AdapterFixtures.referencePEFT()
        let files = [
            "adapter_config.json": try Data(contentsOf: URL(fileURLWithPath: peft + "/adapter_config.json")).base64EncodedString(),
            "adapter_model.safetensors": try Data(contentsOf: URL(fileURLWithPath: peft + "/adapter_model.safetensors")).base64EncodedString(),
        ]
        let up = try d.post("/v1/adapters", json: ["name": "uploaded", "files": files])
        #expect(up.status == 201, "\(up.text)")
        let prompt = try loadGreedy("lora-greedy.jsonl")[2].promptIDs
        let before = try d.greedy(model: "uploaded", prompt: prompt, maxTokens: 10).ids
        #expect(before == (try d.greedy(model: "kept", prompt: prompt, maxTokens: 10).ids))
        d.stop(signal: SIGKILL)

        let again = try LoradProcess(extra: ["--adapter-import-dir", ref], reuse: d.dir)
        defer { again.stop() }
        let listed = try #require(try again.get("/v1/adapters").json()["data"] as? [[String: Any]])
        #expect(Set(listed.compactMap { $0["name"] as? String }) == ["kept", "uploaded"])
        let kept = try #require(listed.first { $0["name"] as? String == "kept" })
        #expect(kept["version"] as? Int == byPath["version"] as? Int)
        #expect(kept["sha256"] as? String == byPath["sha256"] as? String)
        #expect(kept["resident"] as? Bool == false)  // loaded lazily on first use
        #expect(try again.greedy(model: "uploaded", prompt: prompt, maxTokens: 10).ids == before)
        // The sha256 is the file's (computed independently here with sha256sum).
        let sum = Process()
        sum.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
        sum.arguments = [try AdapterFixtures.referenceGGUF()]
        let pipe = Pipe()
        sum.standardOutput = pipe
        try sum.run()
        sum.waitUntilExit()
        let digest = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).split(separator: " ")[0]
        #expect(kept["sha256"] as? String == String(digest))
    }

    /// Bad adapters are refused with 400 naming the problem; the daemon keeps serving.
    @Test func malformedAdaptersAreRejected() throws {
        let dir = NSTemporaryDirectory() + "lorad-bad-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a0 = "blk.0.attn_q.weight.lora_a"
        try AdapterFixtures.writeVariant(to: "\(dir)/shape.gguf", bScale: 1) { ts in
            let i = ts.firstIndex { $0.name == a0 }!
            ts[i].dims = [ts[i].dims[0] / 2, ts[i].dims[1] * 2]  // same element count, wrong n_in
        }
        try AdapterFixtures.writeVariant(to: "\(dir)/missing.gguf", bScale: 1) { ts in
            ts.removeAll { $0.name == "blk.3.ffn_up.weight.lora_b" }
        }
        try AdapterFixtures.writeVariant(to: "\(dir)/nan.gguf", bScale: 1) { ts in
            let i = ts.firstIndex { $0.name == "blk.5.attn_v.weight.lora_b" }!
            ts[i].values[7] = .nan
        }
        try AdapterFixtures.writeVariant(to: "\(dir)/absent.gguf", bScale: 1) { ts in
            let a = ts.first { $0.name == a0 }!, b = ts.first { $0.name == "blk.0.attn_q.weight.lora_b" }!
            ts.append(.init(name: "blk.99.attn_q.weight.lora_a", dims: a.dims, values: a.values))
            ts.append(.init(name: "blk.99.attn_q.weight.lora_b", dims: b.dims, values: b.values))
        }
        // PEFT: truncated safetensors, and a header length past the end of the file.
        try AdapterFixtures.copyDirectory(try AdapterFixtures.referencePEFT(), to: "\(dir)/truncated")
        let st = "\(dir)/truncated/adapter_model.safetensors"
        let full = try Data(contentsOf: URL(fileURLWithPath: st))
        try full.prefix(full.count / 2).write(to: URL(fileURLWithPath: st))
        try AdapterFixtures.copyDirectory(try AdapterFixtures.referencePEFT(), to: "\(dir)/header")
        var h = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/header/adapter_model.safetensors"))
        let past = UInt64(h.count) * 2
        for k in 0..<8 { h[k] = UInt8(truncatingIfNeeded: past >> (8 * UInt64(k))) }
        try h.write(to: URL(fileURLWithPath: "\(dir)/header/adapter_model.safetensors"))
        try "{}".write(toFile: "\(dir)/notadapter.gguf", atomically: true, encoding: .utf8)

        let d = try LoradProcess(extra: ["--adapter-import-dir", dir])
        defer { d.stop() }
        let cases: [(file: String, mention: String)] = [
            ("shape.gguf", a0), ("missing.gguf", "blk.3.ffn_up"), ("nan.gguf", "blk.5.attn_v.weight.lora_b"),
            ("absent.gguf", "blk.99"), ("truncated", "safetensors"), ("header", "header"), ("notadapter.gguf", "GGUF"),
        ]
        for c in cases {
            let r = try d.post("/v1/adapters", json: ["name": "bad", "path": "\(dir)/\(c.file)"])
            let message = (try? r.json()["error"] as? [String: Any])?["message"] as? String ?? r.text
            #expect(r.status == 400, "\(c.file): \(r.status) \(message)")
            #expect(message.contains(c.mention), "\(c.file): \(message)")
        }
        // Other refusals: outside the import dirs (403), bad name, bad base64, unknown adapter (404), bad scale.
        #expect(try d.post("/v1/adapters", json: ["name": "x", "path": try AdapterFixtures.referenceGGUF()]).status == 403)
        #expect(try d.post("/v1/adapters", json: ["name": "../x", "path": "\(dir)/shape.gguf"]).status == 400)
        #expect(try d.post("/v1/adapters", json: ["name": "x", "files": ["a.gguf": "***"]]).status == 400)
        #expect(try d.post("/v1/adapters", rawBody: "{\"name\": ").status == 400)
        let unknown = try d.post("/v1/completions", json: ["model": "nope", "prompt": "hi", "max_tokens": 1])
        #expect(unknown.status == 404)
        let unknownMix = try d.post("/v1/completions", json: ["prompt": "hi", "max_tokens": 1, "adapters": [["name": "nope"]]])
        #expect(unknownMix.status == 404)
        #expect(try d.delete("/v1/adapters/nope").status == 404)
        #expect(try d.get("/v1/adapters").json()["data"] as? [Any] != nil)
        #expect((try d.get("/v1/adapters").json()["data"] as? [Any])?.isEmpty == true)
        // Still serving.
        #expect(try d.greedy(model: nil, prompt: [2, 9259], maxTokens: 2).ids.count == 2)
    }

    /// Only root, lorad's user and the admin group may manage adapters; others may still generate.
    @Test func managementNeedsAnAdminPeer() throws {
        let ref = try Paths.referenceDir() + "/lora-r8"
        let d = try LoradProcess(extra: ["--adapter-import-dir", ref, "--admin-group", "65533"])
        defer { d.stop() }
        chmod(d.socket, 0o666)
        chmod(d.dir.path, 0o755)
        _ = try d.register("r8", path: try AdapterFixtures.referenceGGUF())
        /// curl as another user (uid 65534), with extra groups; returns the HTTP status.
        func curlAs(groups: String, _ args: [String]) throws -> Int {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            p.arguments =
                ["--reuid=65534", "--regid=65534", groups.isEmpty ? "--clear-groups" : "--groups=\(groups)", "curl", "-s", "-o",
                 "/dev/null", "-w", "%{http_code}", "--unix-socket", d.socket] + args
            let out = Pipe()
            p.standardOutput = out
            try p.run()
            p.waitUntilExit()
            return Int(String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)) ?? -1
        }
        let gen = ["-H", "Content-Type: application/json", "-d", #"{"model":"r8","prompt":"Hi","max_tokens":2}"#, "http://l/v1/completions"]
        #expect(try curlAs(groups: "", gen) == 200)
        #expect(try curlAs(groups: "", ["http://l/v1/adapters"]) == 200)
        #expect(try curlAs(groups: "", ["-X", "DELETE", "http://l/v1/adapters/r8"]) == 403)
        let add = ["-H", "Content-Type: application/json", "-d", #"{"name":"y","path":"/etc/passwd"}"#]
        #expect(try curlAs(groups: "", add + ["http://l/v1/adapters"]) == 403)
        #expect(try curlAs(groups: "", ["-d", #"{"lora_name":"r8"}"#, "http://l/v1/unload_lora_adapter"]) == 403)
        // A member of the admin group may.
        #expect(try curlAs(groups: "65533", ["-d", #"{"lora_name":"r8"}"#, "http://l/v1/unload_lora_adapter"]) == 200)
        #expect(try d.get("/v1/adapters/r8").status == 404)
    }

    /// vLLM's load/unload aliases, adapter mixes with scales, and the SIGHUP rescan of --adapter-dir.
    @Test func vllmAliasesMixesAndRescan() throws {
        let scan = NSTemporaryDirectory() + "lorad-scan-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: scan, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scan) }
        let ref = try Paths.referenceDir() + "/lora-r8"
        let d = try LoradProcess(extra: ["--adapter-import-dir", ref, "--adapter-dir", scan])
        defer { d.stop() }
        let load = try d.post("/v1/load_lora_adapter", json: ["lora_name": "sql", "lora_path": try AdapterFixtures.referenceGGUF()])
        #expect(load.status == 200, "\(load.text)")
        let again = try d.post("/v1/load_lora_adapter", json: ["lora_name": "sql", "lora_path": try AdapterFixtures.referenceGGUF()])
        #expect(again.status == 409)
        let inplace = try d.post(
            "/v1/load_lora_adapter", json: ["lora_name": "sql", "lora_path": try AdapterFixtures.referenceGGUF(), "load_inplace": true])
        #expect(inplace.status == 200)
        let prompt = try loadGreedy("lora-greedy.jsonl")[3].promptIDs
        let base = try d.greedy(model: nil, prompt: prompt, maxTokens: 10).ids
        let viaModel = try d.greedy(model: "sql", prompt: prompt, maxTokens: 10).ids
        // `adapters` with scale 1 equals naming it in `model`; scale 0 equals the base.
        #expect(try d.greedy(model: nil, prompt: prompt, maxTokens: 10, adapters: [["name": "sql", "scale": 1]]).ids == viaModel)
        #expect(try d.greedy(model: nil, prompt: prompt, maxTokens: 10, adapters: [["name": "sql", "scale": 0]]).ids == base)
        let badScale = try d.post("/v1/completions", json: ["prompt": "x", "max_tokens": 1, "adapters": [["name": "sql", "scale": 1e9]]])
        #expect(badScale.status == 400)
        let unload = try d.post("/v1/unload_lora_adapter", json: ["lora_name": "sql"])
        #expect(unload.status == 200)
        #expect(try d.post("/v1/unload_lora_adapter", json: ["lora_name": "sql"]).status == 404)
        // Drop an adapter into --adapter-dir and send SIGHUP: it is registered under the file's stem.
        try AdapterFixtures.writeVariant(to: "\(scan)/scanned.gguf", bScale: 1)
        kill(d.process.processIdentifier, SIGHUP)
        var found = false
        for _ in 0..<600 where !found {  // registering copies, hashes and loads the file: allow a loaded machine 60 s
            usleep(100_000)
            found = try d.get("/v1/adapters/scanned").status == 200
        }
        #expect(found)
        #expect(try d.greedy(model: "scanned", prompt: prompt, maxTokens: 10).ids == viaModel)
    }
}
