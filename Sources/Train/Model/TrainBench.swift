// TrainBench: training throughput of the model side (forward + backward + SFT loss) on synthetic batches.
import Foundation
import Runtime
#if canImport(Glibc)
import Glibc
#endif

/// A small benchmark of `LoRATrainer.sftLossAndGradient` (what `lorad bench --train` runs).
public enum TrainBench {
    /// Figures of one benchmark run.
    public struct Result: Sendable {
        /// Tokens in the batch (`batch × seqLen`).
        public let tokensPerStep: Int
        /// Scored tokens per step.
        public let scoredPerStep: Int
        /// Best step time, seconds.
        public let bestSeconds: Double
        /// Mean step time, seconds.
        public let meanSeconds: Double
        /// Training tokens per second at the best step (`tokensPerStep / bestSeconds`).
        public var tokensPerSecond: Double { Double(tokensPerStep) / bestSeconds }
        /// Peak resident set of the process, bytes (`VmHWM`).
        public let peakRSSBytes: Int
        /// CPU time (user + system, all threads) of the best step, seconds: on a busy machine wall time
        /// overstates the cost, `tokensPerStep / cpuSeconds × threads` is what the threads would do alone.
        public let cpuSeconds: Double
    }

    /// Runs `steps` SFT steps (plus one warm-up) on random token ids with an adapter of `rank` on all 7 projections
    /// of every layer (random lora_A, lora_B), and prints tokens/s and peak RSS.
    /// - Parameters:
    ///   - model: the base model.
    ///   - threads: trainer threads.
    ///   - batch, seqLen: sequences per step and tokens per sequence.
    ///   - scoredLast: score only the last `scoredLast` positions of each sequence (nil = every position but the
    ///     first).
    ///   - rank: LoRA rank (alpha = 2·rank).
    ///   - steps: timed steps (≥ 1).
    ///   - print: write the figures to stdout.
    /// - Throws: `TrainError` as `sftLossAndGradient` (e.g. `seqLen` beyond the context).
    @discardableResult
    public static func run(model: Model, threads: Int, batch: Int = 4, seqLen: Int = 256, scoredLast: Int? = nil,
                           rank: Int = 8, steps: Int = 2, print doPrint: Bool = true) throws -> Result {
        guard batch >= 1, seqLen >= 2, steps >= 1, rank >= 1 else {
            throw TrainError.invalidArgument("batch, steps, rank ≥ 1 and seqLen ≥ 2 are required")
        }
        let trainer = try LoRATrainer(model: model, threads: threads)
        let c = model.config
        var params = LoRAParameters(
            config: LoRAConfig(rank: rank, alpha: Float(2 * rank), targets: Projection.allCases,
                               layers: Array(0..<c.nLayer)), model: c)
        var rng: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> Float {
            rng = rng &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Float(Int64(bitPattern: rng >> 11) % 2_000_001 - 1_000_000) / 1_000_000
        }
        for i in 0..<params.count { params.values[i] = 0.02 * next() }
        let seqs = (0..<batch).map { _ -> TrainingSequence in
            let ids = (0..<seqLen).map { i -> Int32 in i == 0 ? 2 : Int32(3 + Int(abs(next()) * Float(min(c.nVocab, 32000) - 4))) }
            let first = scoredLast.map { max(1, seqLen - $0) } ?? 1
            let mask = (0..<seqLen).map { UInt8($0 >= first ? 1 : 0) }
            return TrainingSequence(inputIds: ids, labelsMask: mask)
        }
        _ = try trainer.sftLossAndGradient(params: params, batch: seqs)
        var times: [Double] = []
        var cpu: [Double] = []
        var scored = 0
        for _ in 0..<steps {
            let t0 = DispatchTime.now().uptimeNanoseconds
            let c0 = cpuSeconds()
            let r = try trainer.sftLossAndGradient(params: params, batch: seqs)
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
            cpu.append(cpuSeconds() - c0)
            scored = r.tokens
        }
        let best = times.indices.min { times[$0] < times[$1] }!
        let result = Result(tokensPerStep: batch * seqLen, scoredPerStep: scored, bestSeconds: times[best],
                            meanSeconds: times.reduce(0, +) / Double(times.count), peakRSSBytes: peakRSS(),
                            cpuSeconds: cpu[best])
        if doPrint {
            Swift.print("train bench: \(model.name), " + String(format: "%d threads, rank %d, batch %d x %d tokens, %d scored/step: "
                                   + "best %.2f s/step, mean %.2f s, %.1f tokens/s, CPU %.1f s/step (%.1f tokens/s if the threads had "
                                   + "their cores), peak RSS %.0f MiB, OpenBLAS ",
                               threads, rank, batch, seqLen, scored, result.bestSeconds,
                               result.meanSeconds, result.tokensPerSecond, result.cpuSeconds,
                               Double(result.tokensPerStep) * Double(threads) / max(result.cpuSeconds, 1e-9),
                               Double(result.peakRSSBytes) / 1048576)
                            + LoRATrainer.blasCoreName)
        }
        return result
    }

    /// User + system CPU time of this process so far, seconds (`getrusage(RUSAGE_SELF)`).
    public static func cpuSeconds() -> Double {
        var u = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &u)
        return Double(u.ru_utime.tv_sec) + Double(u.ru_utime.tv_usec) / 1e6 + Double(u.ru_stime.tv_sec)
            + Double(u.ru_stime.tv_usec) / 1e6
    }

    /// Peak resident set size of this process, bytes (`VmHWM` of /proc/self/status; 0 when unreadable).
    public static func peakRSS() -> Int {
        guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in s.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            let kb = line.split(separator: " ").compactMap { Int($0) }.first ?? 0
            return kb * 1024
        }
        return 0
    }
}
