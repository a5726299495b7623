// loractl bench: serving benchmarks against a running lorad (prints figures; nothing here is a test).
//
//   loractl bench streams [--streams 1,4,8,16] [--prompt-tokens 128] [--gen-tokens 64]
//       aggregate generated tokens/s and time to first token for N concurrent greedy streams, the figures
//       llama.cpp's `llama-batched-bench -npp 128 -ntg 64 -npl 1,4,8,16` reports for the same shapes.
//   loractl bench adapters --template PEFT_DIR [--many 1000]
//       8 streams on 8 distinct rank-8 adapters vs 8 on the base (decode tokens/s and the ratio), time from
//       POST /v1/adapters to the first generated token, resident bytes per adapter, and (with --many) requests
//       spread over that many registered adapters through the daemon's LRU cache.
//
// Variant adapters are the template's PEFT files with every lora_B tensor multiplied by a per-variant factor,
// uploaded in the request body (so no import directory is needed).

import ArgumentParser
import Foundation

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure serving throughput and adapter latencies of a running lorad.",
        subcommands: [Streams.self, AdapterBench.self])

    /// One finished stream.
    struct StreamStats {
        var firstToken: Double?  // seconds since the common start
        var end = 0.0
        var tokens = 0
        /// `usage.completion_tokens` of the final event.
        var reported: Int?
        /// Arrival time of each token, seconds since the common start.
        var arrivals: [Double] = []
        var error: String?
    }

    /// Runs `models.count` concurrent greedy streams (prompt of `promptTokens` ids, `genTokens` generated).
    /// Tokens are counted from the events (one per token; the daemon merges a token whose text is still an
    /// incomplete UTF-8 sequence into the next event, so a count can fall short by those) and the final `usage`.
    /// With `logprobs`, every token also carries its logprob (`token_id:N`), which costs the daemon a
    /// log-sum-exp over the vocabulary per token, and the counts are exact.
    static func run(
        _ client: UnixHTTPClient, models: [String?], promptTokens: Int, genTokens: Int, start: Date = Date(), seed: Int = 0,
        logprobs: Bool = false
    ) async -> [StreamStats] {
        await withTaskGroup(of: (Int, StreamStats).self) { group in
            for (i, model) in models.enumerated() {
                group.addTask {
                    // Distinct prompts (ids 1000+...) so no two streams are identical.
                    var ids = [2]
                    for k in 1..<promptTokens { ids.append(1000 + ((k * 7919 + (i + seed) * 104_729) % 20_000)) }
                    var body: [String: Any] = [
                        "prompt": ids, "max_tokens": genTokens, "temperature": 0, "ignore_eos": true, "stream": true,
                        "stream_options": ["include_usage": true],
                    ]
                    if logprobs {
                        body["logprobs"] = 0
                        body["return_tokens_as_token_ids"] = true
                    }
                    if let model { body["model"] = model }
                    return (i, await stream(client, body: body, start: start))
                }
            }
            var out = [StreamStats](repeating: StreamStats(), count: models.count)
            for await (i, s) in group { out[i] = s }
            return out
        }
    }

    static func stream(_ client: UnixHTTPClient, body: [String: Any], start: Date) async -> StreamStats {
        var s = StreamStats()
        var status = 0
        var pending: [UInt8] = []
        var errorBody: [UInt8] = []
        do {
            let json = try JSONSerialization.data(withJSONObject: body)
            try await client.send(
                method: .POST, path: "/v1/completions", json: Array(json), onHead: { status = $0 },
                onBody: { bytes in
                    guard status == 200 else {
                        errorBody += bytes
                        return
                    }
                    pending += bytes
                    while let end = findEventEnd(pending) {
                        let event = String(decoding: pending[..<end], as: UTF8.self)
                        pending.removeFirst(end + 2)
                        guard event.hasPrefix("data: "), !event.hasPrefix("data: [DONE]") else { continue }
                        guard let o = try? JSONSerialization.jsonObject(with: Data(event.dropFirst(6).utf8)) as? [String: Any]
                        else { continue }
                        if let e = o["error"] as? [String: Any] { s.error = e["message"] as? String ?? "error" }
                        if let usage = o["usage"] as? [String: Any], let n = usage["completion_tokens"] as? Int {
                            s.reported = n
                        }
                        for c in (o["choices"] as? [[String: Any]]) ?? [] {
                            let listed = ((c["logprobs"] as? [String: Any])?["tokens"] as? [Any])?.count
                            let n = listed ?? (c["text"] != nil && !(c["finish_reason"] is String) ? 1 : 0)
                            let now = Date().timeIntervalSince(start)
                            if n > 0, s.firstToken == nil { s.firstToken = now }
                            s.tokens += n
                            s.arrivals += Array(repeating: now, count: n)
                        }
                    }
                })
            if status != 200 { s.error = errorMessage(errorBody, status: status) }
        } catch {
            s.error = "\(error)"
        }
        s.end = Date().timeIntervalSince(start)
        return s
    }

    /// (aggregate generated tokens/s over the wall time, decode tokens/s, mean TTFT, wall time).
    ///
    /// Decode tokens/s counts the tokens that arrive after the last stream's first token (every prompt is
    /// prefilled by then) over the time from that moment to the last token: the phase llama-batched-bench
    /// reports as S_TG.
    static func summarize(_ runs: [StreamStats]) -> (total: Double, decode: Double, ttft: Double, wall: Double) {
        let wall = runs.map(\.end).max() ?? 0
        let tokens = runs.reduce(0) { $0 + max($1.tokens, $1.reported ?? 0) }
        let firsts = runs.compactMap(\.firstToken)
        let lastFirst = firsts.max() ?? 0
        let after = runs.flatMap(\.arrivals).filter { $0 > lastFirst }
        let lastToken = after.max() ?? lastFirst
        let decode = lastToken > lastFirst ? Double(after.count) / (lastToken - lastFirst) : 0
        let ttft = firsts.isEmpty ? 0 : firsts.reduce(0, +) / Double(firsts.count)
        return (wall > 0 ? Double(tokens) / wall : 0, decode, ttft, wall)
    }

    struct Streams: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Aggregate tokens/s and time to first token for 1, 4, 8, 16 concurrent greedy streams.")
        @OptionGroup var socket: SocketOption
        @Option(help: "Comma-separated stream counts.") var streams = "1,4,8,16"
        @Option(name: .customLong("prompt-tokens")) var promptTokens = 128
        @Option(name: .customLong("gen-tokens")) var genTokens = 64
        @Option(help: "Model or adapter name (default: the base).") var model: String?
        @Flag(help: "Ask for each token's logprob (the daemon then computes a log-sum-exp over the vocabulary).")
        var logprobs = false

        func run() async throws {
            let client = socket.client
            let counts = streams.split(separator: ",").compactMap { Int($0) }
            // Warm-up (page in the weights).
            _ = await Bench.run(client, models: [model], promptTokens: 16, genTokens: 4)
            writeOut("streams  prompt  gen  wall_s  gen_tok_s  decode_tok_s  ttft_ms  errors\n")
            for n in counts {
                let runs = await Bench.run(
                    client, models: Array(repeating: model, count: n), promptTokens: promptTokens, genTokens: genTokens,
                    logprobs: logprobs)
                let s = Bench.summarize(runs)
                let errors = runs.compactMap(\.error)
                writeOut(
                    String(
                        format: "%7d  %6d  %3d  %6.2f  %9.1f  %12.1f  %7.0f  %d\n", n, promptTokens, genTokens, s.wall,
                        s.total, s.decode, s.ttft * 1000, errors.count))
                if let e = errors.first { writeOut("  first error: \(e)\n") }
            }
        }
    }

    struct AdapterBench: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "adapters",
            abstract: "8 streams on 8 distinct adapters vs the base, registration-to-first-token, and a many-adapter run.")
        @OptionGroup var socket: SocketOption
        @Option(help: "A PEFT adapter directory to derive variants from (e.g. the reference lora-r8/peft).")
        var template: String
        @Option(help: "Also register this many variants and spread requests over all of them (0 = skip).")
        var many = 0
        @Option(name: .customLong("many-requests"), help: "Requests in the many-adapter run.")
        var manyRequests = 256
        @Option(name: .customLong("gen-tokens")) var genTokens = 64
        @Option(name: .customLong("prompt-tokens")) var promptTokens = 128
        @Option(
            name: .customLong("import-dir"),
            help: "Write the variants into this --adapter-import-dir of the daemon and register them by path (else upload).")
        var importDir: String?

        func run() async throws {
            let client = socket.client
            let config = try Data(contentsOf: URL(fileURLWithPath: template + "/adapter_config.json"))
            let tensors = try Data(contentsOf: URL(fileURLWithPath: template + "/adapter_model.safetensors"))
            let layout = try SafetensorsLayout(tensors)
            /// The registration body for a variant (files written first when registering by path).
            func prepare(_ name: String, factor: Float) throws -> Data {
                let scaled = layout.scalingLoRAB(tensors, by: factor)
                let body: Data
                if let dir = importDir {
                    let path = dir + "/" + name
                    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
                    try config.write(to: URL(fileURLWithPath: path + "/adapter_config.json"))
                    try scaled.write(to: URL(fileURLWithPath: path + "/adapter_model.safetensors"))
                    body = try JSONSerialization.data(withJSONObject: ["name": name, "path": path])
                } else {
                    let files = [
                        "adapter_config.json": config.base64EncodedString(),
                        "adapter_model.safetensors": scaled.base64EncodedString(),
                    ]
                    body = try JSONSerialization.data(withJSONObject: ["name": name, "files": files])
                }
                return body
            }
            func post(_ name: String, _ body: Data) async throws -> (Int, [String: Any]) {
                let (status, resp) = try await client.fetch(method: .POST, path: "/v1/adapters", json: Array(body))
                guard (200..<300).contains(status) else { throw fail("registering \(name): " + errorMessage(resp, status: status)) }
                return (status, (try? JSONSerialization.jsonObject(with: Data(resp)) as? [String: Any]) ?? [:])
            }

            // 1. Registration to first token, 8 times.
            var latencies: [Double] = []
            var residentBytes = 0
            for i in 0..<8 {
                let name = "bench-\(i)"
                // The variant's bytes are prepared before the clock starts: what is timed is the POST and the request.
                let body = try prepare(name, factor: 1 + 0.25 * Float(i))
                let t0 = Date()
                let (_, rec) = try await post(name, body)
                let registered = Date().timeIntervalSince(t0)
                let s = await Bench.stream(
                    client,
                    body: [
                        "model": name, "prompt": [2, 9259], "max_tokens": 1, "temperature": 0, "stream": true,
                        "logprobs": 0, "return_tokens_as_token_ids": true,
                    ], start: t0)
                if let e = s.error { throw fail(e) }
                latencies.append(s.firstToken ?? s.end)
                residentBytes = rec["bytes"] as? Int ?? 0
                writeOut(String(format: "register %@: POST %.1f ms, first token at %.1f ms\n", name, registered * 1000, (s.firstToken ?? s.end) * 1000))
            }
            let sorted = latencies.sorted()
            writeOut(
                String(
                    format: "registration -> first token: median %.1f ms, max %.1f ms (rank %@, %d resident bytes per adapter)\n",
                    sorted[sorted.count / 2] * 1000, sorted.last! * 1000, "\(layout.rank)", residentBytes))

            // 2. 8 streams on the base vs 8 streams on 8 adapters (alternating, three rounds each, best kept).
            _ = await Bench.run(client, models: [nil], promptTokens: 16, genTokens: 4)
            var best: [String: (Double, Double)] = [:]
            var decodes: [String: [Double]] = [:]
            for round in 0..<3 {
                for (label, models) in [("base", [String?](repeating: nil, count: 8)), ("adapters", (0..<8).map { "bench-\($0)" })] {
                    let runs = await Bench.run(client, models: models, promptTokens: promptTokens, genTokens: genTokens, seed: round)
                    if let e = runs.compactMap(\.error).first { throw fail(e) }
                    let s = Bench.summarize(runs)
                    writeOut(String(format: "8 streams %-8@ round %d: gen %.1f tok/s, decode %.1f tok/s, ttft %.0f ms\n", label, round, s.total, s.decode, s.ttft * 1000))
                    if s.decode > (best[label]?.1 ?? 0) { best[label] = (s.total, s.decode) }
                    decodes[label, default: []].append(s.decode)
                }
            }
            if let b = best["base"], let a = best["adapters"] {
                writeOut(String(format: "decode tok/s, 8 streams, best: base %.1f, 8 distinct adapters %.1f, ratio %.3f\n", b.1, a.1, a.1 / b.1))
            }
            func median(_ v: [Double]) -> Double { let s = v.sorted(); return s.isEmpty ? 0 : s[s.count / 2] }
            let mb = median(decodes["base"] ?? []), ma = median(decodes["adapters"] ?? [])
            if mb > 0 {
                writeOut(String(format: "decode tok/s, 8 streams, median: base %.1f, 8 distinct adapters %.1f, ratio %.3f\n", mb, ma, ma / mb))
            }

            // 3. Many adapters through the cache.
            guard many > 0 else { return }
            let t0 = Date()
            for i in 0..<many {
                _ = try await post("many-\(i)", try prepare("many-\(i)", factor: 0.5 + Float(i % 97) / 50))
                if (i + 1) % 100 == 0 { writeOut("registered \(i + 1)/\(many) (\(Int(Date().timeIntervalSince(t0))) s)\n") }
            }
            let status0 = try await getJSON(client, "/v1/status")
            let start = Date()
            var served = 0
            var errors: [String] = []
            var done = 0
            var waits: [Double] = []
            while done < manyRequests {
                let batch = (0..<min(8, manyRequests - done)).map { k -> String? in "many-\(((done + k) * 7919) % many)" }
                let runs = await Bench.run(client, models: batch, promptTokens: 16, genTokens: 4, start: Date(), seed: done)
                for r in runs {
                    if let e = r.error { errors.append(e) } else { served += 1 }
                    if let f = r.firstToken { waits.append(f) }
                }
                done += batch.count
            }
            let status1 = try await getJSON(client, "/v1/status")
            waits.sort()
            writeOut(
                String(
                    format: "%d adapters registered; %d/%d requests served, %d errors in %.1f s; first token p50 %.0f ms, p95 %.0f ms\n",
                    many, served, manyRequests, errors.count, Date().timeIntervalSince(start),
                    (waits.isEmpty ? 0 : waits[waits.count / 2]) * 1000, (waits.isEmpty ? 0 : waits[waits.count * 95 / 100]) * 1000))
            writeOut(
                "cache: \(status1["adapters_cached"] ?? "?") resident of \(status1["adapters_registered"] ?? "?"), "
                    + "loads \((status1["adapter_loads"] as? Int ?? 0) - (status0["adapter_loads"] as? Int ?? 0)), "
                    + "evictions \((status1["adapter_evictions"] as? Int ?? 0) - (status0["adapter_evictions"] as? Int ?? 0)), "
                    + "cache bytes \(status1["adapter_cache_bytes"] ?? "?") / \(status1["adapter_cache_limit_bytes"] ?? "?")\n")
            if let e = errors.first { writeOut("first error: \(e)\n") }
        }
    }
}

/// Where each tensor of a safetensors file lives (format: 8-byte little-endian header length, JSON header, data).
struct SafetensorsLayout {
    struct Entry {
        var name: String
        var dtype: String
        var begin: Int
        var end: Int
        var shape: [Int]
    }
    let dataStart: Int
    let entries: [Entry]

    init(_ data: Data) throws {
        guard data.count >= 8 else { throw fail("safetensors file too short") }
        var n = 0
        for k in 0..<8 { n |= Int(data[data.startIndex + k]) << (8 * k) }
        guard n > 0, 8 + n <= data.count,
            let header = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + n))) as? [String: Any]
        else { throw fail("bad safetensors header") }
        dataStart = 8 + n
        entries = header.compactMap { name, v in
            guard let d = v as? [String: Any], let dtype = d["dtype"] as? String, let off = d["data_offsets"] as? [Int],
                off.count == 2, let shape = d["shape"] as? [Int]
            else { return nil }
            return Entry(name: name, dtype: dtype, begin: off[0], end: off[1], shape: shape)
        }
    }

    /// Rank from the first lora_A tensor ([r, n_in]).
    var rank: Int { entries.first { $0.name.contains("lora_A") }?.shape.first ?? 0 }

    /// A copy of `data` with every lora_B tensor (F16, BF16 or F32) multiplied by `factor`.
    func scalingLoRAB(_ data: Data, by factor: Float) -> Data {
        var out = data
        out.withUnsafeMutableBytes { raw in
            for e in entries where e.name.contains("lora_B") {
                let p = raw.baseAddress! + dataStart + e.begin
                let count = e.end - e.begin
                switch e.dtype {
                case "F16":
                    let h = p.bindMemory(to: UInt16.self, capacity: count / 2)
                    for i in 0..<(count / 2) { h[i] = (Float16(Float(Float16(bitPattern: h[i])) * factor)).bitPattern }
                case "BF16":
                    let h = p.bindMemory(to: UInt16.self, capacity: count / 2)
                    for i in 0..<(count / 2) {
                        let f = Float(bitPattern: UInt32(h[i]) << 16) * factor
                        h[i] = UInt16(f.bitPattern >> 16)
                    }
                case "F32":
                    let f = p.bindMemory(to: Float.self, capacity: count / 4)
                    for i in 0..<(count / 4) { f[i] *= factor }
                default:
                    break
                }
            }
        }
        return out
    }
}
