// `lorad bench`: prefill and decode throughput of the runtime on a model, llama-bench style (pp512 / tg128).
// Prints figures; it is a measurement tool, not a test.
import ArgumentParser
import Foundation
import Runtime

/// `lorad bench [--model PATH] [--threads N] [--json]`: loads the model and prints prefill tokens/s for a
/// 512-token prompt (one batch, logits for the last row only, as llama-bench's pp512) and decode tokens/s over
/// 128 tokens generated one at a time from an empty context (tg128), for 1 and 2 threads (or `--threads`),
/// plus peak resident memory in MB.
public struct BenchCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "Measure prefill and decode throughput (tokens/s) of the runtime.")

    @Option(name: .long, help: "GGUF model path (default: the installed default model).")
    var model: String?

    @Option(name: .long, help: "Thread count to measure (default: 1 and 2).")
    var threads: [Int] = []

    @Option(name: .long, help: "Prompt tokens for the prefill figure.")
    var prefillTokens: Int = 512

    @Option(name: .long, help: "Tokens generated for the decode figure.")
    var decodeTokens: Int = 128

    @Option(name: .long, help: "Repetitions; the best is reported.")
    var repetitions: Int = 3

    @Flag(name: .long, help: "Print one JSON object per thread count.")
    var json = false

    public init() {}

    public func run() async throws {
        let path = try model ?? DefaultModel.resolve()
        let counts = threads.isEmpty ? [1, 2] : threads
        for t in counts {
            let result = try Self.measure(path: path, threads: t, prefill: prefillTokens, decode: decodeTokens,
                                          repetitions: max(1, repetitions))
            if json {
                let obj: [String: Any] = [
                    "threads": t, "prefill_tok_s": result.prefill, "decode_tok_s": result.decode,
                    "peak_rss_mb": result.peakRSSMB, "prefill_tokens": prefillTokens, "decode_tokens": decodeTokens,
                    "model": path,
                ]
                let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                print(String(format: "threads %d  prefill pp%d %8.1f tok/s  decode tg%d %7.1f tok/s  peak RSS %.0f MB",
                             t, prefillTokens, result.prefill, decodeTokens, result.decode, result.peakRSSMB))
            }
        }
    }

    struct Result {
        var prefill: Double
        var decode: Double
        var peakRSSMB: Double
    }

    static func measure(path: String, threads: Int, prefill: Int, decode: Int, repetitions: Int) throws -> Result {
        let model = try Model.load(path: path, options: ModelOptions(threads: threads))
        let vocab = Int32(model.config.nVocab)
        // Deterministic pseudo-random prompt tokens (ids of ordinary pieces), like llama-bench's random prompt.
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func nextToken() -> Int32 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int32(truncatingIfNeeded: (state >> 33) % UInt64(vocab - 1000)) + 1000
        }
        let prompt = (0..<prefill).map { _ in nextToken() }
        var bestPrefill = 0.0
        var bestDecode = 0.0
        // Warm-up: touch every weight page once.
        do {
            let cache = model.makeKVCache(capacity: 8)
            var b = ForwardBatch()
            b.append(token: prompt[0], position: 0, sequence: 0, wantLogits: true)
            _ = try model.forward(b, caches: [cache])
        }
        for _ in 0..<repetitions {
            let cache = model.makeKVCache(capacity: prefill + 1)
            var batch = ForwardBatch()
            for (i, t) in prompt.enumerated() {
                batch.append(token: t, position: i, sequence: 0, wantLogits: i == prompt.count - 1)
            }
            let t0 = DispatchTime.now().uptimeNanoseconds
            _ = try model.forward(batch, caches: [cache])
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            bestPrefill = max(bestPrefill, Double(prefill) / dt)

            let dcache = model.makeKVCache(capacity: decode + 1)
            var token = nextToken()
            let d0 = DispatchTime.now().uptimeNanoseconds
            for p in 0..<decode {
                var b = ForwardBatch()
                b.append(token: token, position: p, sequence: 0, wantLogits: true)
                let logits = try model.forward(b, caches: [dcache])
                token = argmax(logits)
            }
            let ddt = Double(DispatchTime.now().uptimeNanoseconds - d0) / 1e9
            bestDecode = max(bestDecode, Double(decode) / ddt)
        }
        return Result(prefill: bestPrefill, decode: bestDecode, peakRSSMB: peakRSSMegabytes())
    }

    static func argmax(_ x: [Float]) -> Int32 {
        var best = 0
        for i in 1..<x.count where x[i] > x[best] { best = i }
        return Int32(best)
    }

    /// Peak resident set size of this process in MB (getrusage ru_maxrss, which Linux reports in KiB).
    static func peakRSSMegabytes() -> Double {
        var usage = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        return Double(usage.ru_maxrss) / 1024
    }
}
