// `lorad bench`: prefill and decode throughput of the runtime on a model, llama-bench style (pp512 / tg128).
// Prints figures; it is a measurement tool, not a test.
import ArgumentParser
import Foundation
import Runtime

/// `lorad bench [--model PATH] [--threads N] [--json]`: loads the model and prints prefill tokens/s for a
/// 512-token prompt (one batch, logits for the last row only, as llama-bench's pp512) and decode tokens/s over
/// 128 tokens generated one at a time from an empty context (tg128), for 1 and 2 threads (or `--threads`),
/// plus peak resident memory in MB. With `--batch N` it also measures batched decode: N sequences, each prefilled
/// with `--batch-context` tokens, then `--batch-steps` decode steps of N rows (one new token per sequence, logits
/// for every row), printing the aggregate decode tokens/s (as llama-batched-bench's S_TG at npl = N).
/// With `--train` it measures LoRA training instead (rank 8, batch 4 × 256, AdamW; see TrainBenchmark).
/// With `--serving-while-training` it measures serving and a fine-tuning run sharing the cores through the
/// training governor (see ServingTrainingBenchmark).
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

    @Option(name: .long, help: "Sequences decoded together for the batched decode figure (0: skip it).")
    var batch: Int = 0

    @Option(name: .long, help: "Prompt tokens per sequence before the batched decode steps.")
    var batchContext: Int = 128

    @Option(name: .long, help: "Decode steps (of `--batch` rows each) for the batched decode figure.")
    var batchSteps: Int = 64

    @Flag(name: .long, help: "Only the batched decode figure (skip pp/tg).")
    var batchOnly = false

    @Flag(name: .long, help: "Print one JSON object per thread count.")
    var json = false

    @Flag(name: .long, help: "Only the kernel figures (random weights of the default model's shapes; no model file).")
    var kernels = false

    @Flag(name: .long, help: "Training figures instead: rank 8 on all 7 projections, batch 4 x 256 random tokens, AdamW; loss on every position and on the last 64 (threads: --threads, else all CPUs).")
    var train = false

    @Option(name: .customLong("train-steps"), help: "Measured training steps per case (after one warm-up step); the median is reported.")
    var trainSteps: Int = 4

    @Flag(name: .customLong("serving-while-training"), help: "Serving and training together: concurrent greedy streams alone, then with a training run paced by the training governor at each --training-min-share, then the training alone (governed and unpaced).")
    var servingWhileTraining = false

    @Option(name: .customLong("training-min-share"), help: "With --serving-while-training: the trainer's share of wall time while serving is busy, 0...1 (repeatable; default 0.25).")
    var trainingMinShares: [Double] = []

    @Option(help: "With --serving-while-training: concurrent greedy streams.")
    var streams: Int = 4

    @Option(name: .customLong("stream-tokens"), help: "With --serving-while-training: tokens generated per request (EOS ignored).")
    var streamTokens: Int = 128

    @Option(name: .customLong("stream-prompt-tokens"), help: "With --serving-while-training: prompt tokens per request.")
    var streamPromptTokens: Int = 32

    @Option(name: .customLong("phase-seconds"), help: "With --serving-while-training: seconds each serving phase is measured, per share.")
    var phaseSeconds: Double = 20

    @Option(name: .customLong("window-seconds"), help: "With --serving-while-training: serving alone and serving with training alternate in windows of this many seconds.")
    var windowSeconds: Double = 2.5

    @Option(name: .customLong("busy-threads"), help: "With --serving-while-training: trainer threads while serving is busy (default: half, at least 1, as the daemon).")
    var busyThreads: Int?

    @Option(name: .customLong("train-batch"), help: "With --serving-while-training: sequences per training step.")
    var trainBatch: Int = 4

    @Option(name: .customLong("train-seq"), help: "With --serving-while-training: tokens per training sequence.")
    var trainSeq: Int = 256

    @Option(name: .customLong("train-last"), help: "With --serving-while-training: score only the last N positions of each sequence (default: all).")
    var trainLast: Int?

    public init() {}

    public func run() async throws {
        let counts = threads.isEmpty ? [1, 2] : threads
        if kernels {
            print(KernelBench.run(threads: counts))
            return
        }
        let path = try model ?? DefaultModel.resolve()
        if servingWhileTraining {
            try await runServingWhileTraining(path: path)
            return
        }
        if train {
            let model = try Model.load(path: path, options: ModelOptions(threads: 1, batchCopyBytes: 0))
            for t in threads.isEmpty ? [max(1, ProcessInfo.processInfo.activeProcessorCount)] : threads {
                for last in [nil, 64] as [Int?] {
                    let r = try TrainBenchmark.run(model: model, threads: t, last: last, steps: max(1, trainSteps))
                    if json {
                        var obj = r.json
                        obj["model"] = path
                        let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
                        print(String(decoding: data, as: UTF8.self))
                    } else {
                        print(r.line)
                    }
                }
            }
            return
        }
        for t in counts where batch > 0 {
            let r = try Self.measureBatched(path: path, threads: t, sequences: batch, context: batchContext,
                                            steps: batchSteps, repetitions: max(1, repetitions))
            if json {
                let obj: [String: Any] = [
                    "threads": t, "batch": batch, "batch_context": batchContext, "batch_steps": batchSteps,
                    "batched_decode_tok_s": r.best, "batched_decode_tok_s_median": r.median, "model": path,
                ]
                let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                print(String(format: "threads %d  batched decode %d seq x %d steps at ctx %d: best %7.1f tok/s  median %7.1f tok/s",
                             t, batch, batchSteps, batchContext, r.best, r.median))
            }
        }
        for t in counts where !batchOnly {
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

    func runServingWhileTraining(path: String) async throws {
        let shares = trainingMinShares.isEmpty ? [0.25] : trainingMinShares
        if let bad = shares.first(where: { !$0.isFinite || $0 < 0 || $0 > 1 }) {
            throw ValidationError("--training-min-share must be 0...1, got \(bad)")
        }
        guard streams >= 1, streamTokens >= 2, streamPromptTokens >= 2 else {
            throw ValidationError("--streams must be >= 1, --stream-tokens and --stream-prompt-tokens >= 2")
        }
        guard phaseSeconds > 0, phaseSeconds <= 3600 else { throw ValidationError("--phase-seconds must be 0...3600") }
        guard windowSeconds >= 0.5, windowSeconds <= phaseSeconds else {
            throw ValidationError("--window-seconds must be 0.5...--phase-seconds")
        }
        guard trainBatch >= 1, trainSeq >= 2, trainSteps >= 1 else {
            throw ValidationError("--train-batch and --train-steps must be >= 1, --train-seq >= 2")
        }
        if let t = trainLast, t < 1 || t >= trainSeq { throw ValidationError("--train-last must be 1...\(trainSeq - 1)") }
        if let t = busyThreads, t < 1 { throw ValidationError("--busy-threads must be >= 1") }
        guard threads.count <= 1, threads.allSatisfy({ $0 >= 1 }) else {
            throw ValidationError("--serving-while-training takes one --threads N (serving and trainer threads)")
        }
        let t = threads.first ?? max(1, ProcessInfo.processInfo.activeProcessorCount)
        var o = ServingTrainingBenchmark.Options()
        o.streams = streams
        o.promptTokens = streamPromptTokens
        o.genTokens = streamTokens
        o.seconds = phaseSeconds
        o.window = windowSeconds
        o.shares = shares
        o.servingThreads = t
        o.trainerThreads = t
        o.busyThreads = busyThreads ?? TrainingGovernor.defaultBusyThreads(trainerThreads: t)
        o.trainBatch = trainBatch
        o.trainSeq = trainSeq
        o.trainLast = trainLast
        o.trainSteps = trainSteps
        let quiet = json
        let report = try await ServingTrainingBenchmark.run(path: path, options: o) { line in
            if !quiet { FileHandle.standardError.write(Data(("  " + line + "\n").utf8)) }
        }
        if json {
            var obj = report.json
            obj["model"] = path
            let data = try JSONSerialization.data(withJSONObject: Self.finiteJSON(obj), options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print(report.text)
        }
    }

    /// `value` with every non-finite number (a ratio over a phase that produced nothing) replaced by null, which
    /// JSON cannot otherwise carry.
    static func finiteJSON(_ value: Any) -> Any {
        switch value {
        case let d as Double: return d.isFinite ? d : NSNull()
        case let m as [String: Any]: return m.mapValues { finiteJSON($0) }
        case let a as [Any]: return a.map { finiteJSON($0) }
        default: return value
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
        argmax(x[...])
    }

    static func argmax(_ x: ArraySlice<Float>) -> Int32 {
        var best = x.startIndex
        for i in x.indices where x[i] > x[best] { best = i }
        return Int32(best - x.startIndex)
    }

    /// Aggregate decode tokens/s (best and median over `repetitions`) of `steps` forward calls with one row per
    /// sequence for `sequences` sequences, each first prefilled with `context` pseudo-random tokens.
    static func measureBatched(path: String, threads: Int, sequences: Int, context: Int, steps: Int,
                               repetitions: Int) throws -> (best: Double, median: Double) {
        let model = try Model.load(path: path, options: ModelOptions(threads: threads))
        let vocab = Int32(model.config.nVocab)
        var state: UInt64 = 0x2545_F491_4F6C_DD1D
        func nextToken() -> Int32 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int32(truncatingIfNeeded: (state >> 33) % UInt64(vocab - 1000)) + 1000
        }
        var rates: [Double] = []
        for _ in 0..<repetitions {
            let caches = (0..<sequences).map { _ in model.makeKVCache(capacity: context + steps + 1) }
            var tokens: [Int32] = []
            for s in 0..<sequences {
                var b = ForwardBatch()
                for p in 0..<context { b.append(token: nextToken(), position: p, sequence: s, wantLogits: p == context - 1) }
                let logits = try model.forward(b, caches: caches)
                tokens.append(argmax(logits))
            }
            let t0 = DispatchTime.now().uptimeNanoseconds
            for step in 0..<steps {
                var b = ForwardBatch()
                for s in 0..<sequences {
                    b.append(token: tokens[s], position: context + step, sequence: s, wantLogits: true)
                }
                let logits = try model.forward(b, caches: caches)
                let nv = model.config.nVocab
                for s in 0..<sequences { tokens[s] = argmax(logits[(s * nv)..<((s + 1) * nv)]) }
            }
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            rates.append(Double(sequences * steps) / dt)
        }
        rates.sort()
        return (rates.last ?? 0, rates[rates.count / 2])
    }

    /// Peak resident set size of this process in MB (getrusage ru_maxrss, which Linux reports in KiB).
    static func peakRSSMegabytes() -> Double {
        var usage = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        return Double(usage.ru_maxrss) / 1024
    }
}
