// `lorad bench --train`: LoRA training throughput, the same measurement as the PyTorch + PEFT anchor
// (../shared/bench/torch_lora_train.py): rank 8 (alpha 16) on all 7 projections of every layer, batch 4 × 256
// random token ids (BOS first), one full step = loss + gradient, clip to norm 1, AdamW; one warm-up step, then the
// median step time. Two cases: loss on every position ("all", as labels = input ids) and on the last 64 positions
// of each sequence ("last64"). Peak RSS is reset between cases (/proc/self/clear_refs), so each case reports its own.
import Foundation
import Runtime
import Train

enum TrainBenchmark {
    /// Figures of one case.
    struct Result {
        var loss: String
        var threads: Int
        var batch: Int
        var seq: Int
        var rank: Int
        var steps: Int
        var stepSeconds: Double
        var stepSecondsAll: [Double]
        var trainTokS: Double
        var scoredPerStep: Int
        var peakRSSMB: Double
        var losses: [Double]
        /// Mean seconds per measured step by kind of work (`TrainProfile`), the rest of the step as "other".
        var parts: [(String, Double)] = []

        var json: [String: Any] {
            [
                "impl": "lorad", "loss": loss, "threads": threads, "batch": batch, "seq": seq, "rank": rank,
                "steps": steps, "step_s": (stepSeconds * 1000).rounded() / 1000,
                "step_s_all": stepSecondsAll.map { ($0 * 1000).rounded() / 1000 },
                "train_tok_s": (trainTokS * 10).rounded() / 10, "scored_per_step": scoredPerStep,
                "peak_rss_mb": (peakRSSMB * 10).rounded() / 10, "losses": losses.map { ($0 * 10000).rounded() / 10000 },
                "step_parts_s": Dictionary(uniqueKeysWithValues: parts.map { ($0.0, ($0.1 * 1000).rounded() / 1000) }),
            ]
        }

        var line: String {
            String(format: "train %@  threads %d  batch %d x %d  rank %d: %.2f s/step (median of %d), %.1f tok/s, peak RSS %.0f MB",
                   loss, threads, batch, seq, rank, stepSeconds, steps, trainTokS, peakRSSMB)
                + "\n  per step: " + parts.map { String(format: "%@ %.3f s", $0.0, $0.1) }.joined(separator: ", ")
        }
    }

    /// Runs one case.
    /// - Parameters: last: score only the last `last` positions of each sequence (nil: every position but the
    ///   first, as labels = input ids).
    /// - Throws: `TrainError` from the trainer.
    static func run(model: Model, threads: Int, batch: Int = 4, seq: Int = 256, rank: Int = 8, last: Int?,
                    steps: Int = 4, warmup: Int = 1) throws -> Result {
        resetPeakRSS()
        let c = model.config
        let trainer = try LoRATrainer(model: model, threads: threads, cacheWeights: true)  // as `lorad train` runs
        var rng = TrainingRNG(seed: 0)
        let config = LoRAConfig(rank: rank, alpha: Float(2 * rank), targets: Projection.allCases,
                                layers: Array(0..<c.nLayer))
        var params = try LoRAParameters.fresh(config: config, model: c, rng: &rng)
        let vocab = UInt64(min(c.nVocab, 256_000) - 3)
        let sequences = (0..<batch).map { _ -> TrainingSequence in
            let ids = (0..<seq).map { i -> Int32 in i == 0 ? 2 : Int32(3 + rng.nextInt(below: vocab)) }
            let first = last.map { max(1, seq - $0) } ?? 1
            return TrainingSequence(inputIds: ids, labelsMask: (0..<seq).map { UInt8($0 >= first ? 1 : 0) })
        }
        var optimizer = AdamW(count: params.count, config: AdamWConfig(weightDecay: 0.01))
        var times: [Double] = []
        var losses: [Double] = []
        var scored = 0
        TrainProfile.enabled = true
        defer { TrainProfile.enabled = false }
        for step in 0..<(warmup + steps) {
            if step == warmup { TrainProfile.reset() }
            let t0 = DispatchTime.now().uptimeNanoseconds
            let r = try trainer.sftLossAndGradient(params: params, batch: sequences)
            var g = r.grad
            GradientClipping.clip(&g, maxNorm: 1.0)
            optimizer.step(params: &params.values, grad: g, lr: 1e-4)
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            losses.append(r.loss)
            scored = r.tokens
            if step >= warmup { times.append(dt) }
        }
        let sorted = times.sorted()
        let median = sorted.count % 2 == 1
            ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
        let n = Double(steps)
        var parts = TrainProfile.Part.allCases.map { ($0.name, (TrainProfile.seconds[$0] ?? 0) / n) }
        parts.append(("other", times.reduce(0, +) / n - parts.map(\.1).reduce(0, +)))
        return Result(loss: last == nil ? "all" : "last\(last!)", threads: threads, batch: batch, seq: seq, rank: rank,
                      steps: steps, stepSeconds: median, stepSecondsAll: times,
                      trainTokS: Double(batch * seq) / median, scoredPerStep: scored,
                      peakRSSMB: Double(TrainBench.peakRSS()) / 1_048_576, losses: losses, parts: parts)
    }

    /// Resets the kernel's peak-RSS counter (VmHWM) of this process (`echo 5 > /proc/self/clear_refs`).
    static func resetPeakRSS() {
        if let h = FileHandle(forWritingAtPath: "/proc/self/clear_refs") {
            h.write(Data("5".utf8))
            try? h.close()
        }
    }
}
