// TrainJob: what `lorad train` does once its flags are checked — load the model and the data, build or load the
// adapter, wire the objective, AdamW, clip, schedule and checkpoints into a TrainingRun, run it (stopping
// cleanly on SIGINT/SIGTERM), and export the adapter as PEFT and GGUF.
import Foundation
import Runtime
import Train

#if canImport(Glibc)
import Glibc
#endif

/// A run built and ready to start: what `lorad train` and a daemon fine-tuning job both execute, so the same
/// settings, data and thread count give the same adapter bit for bit.
struct PreparedTraining {
    /// The loop with its objective, optimizer, clip, schedule and checkpoint store.
    let run: TrainingRun<AdamW>
    /// Training examples (sequences for SFT, pairs for DPO).
    let count: Int
    /// Optimizer steps of the whole run.
    let totalSteps: Int
    /// The starting adapter (fresh, or loaded from the init adapter).
    let initial: LoRAParameters
    /// The base model's configuration (for the export).
    let modelConfig: ModelConfig
}

struct TrainJob {
    let settings: TrainSettings
    let reporter: TrainReporter

    var checkpointDir: String { settings.outDir + "/checkpoints" }

    func run() throws {
        let s = settings
        let store = CheckpointStore(directory: checkpointDir)
        if !s.resume, !store.list().isEmpty {
            throw TrainCLIError.usage(
                "\(checkpointDir) already holds checkpoints of a run: pass --resume to continue it, or choose another --out")
        }

        let model: Model
        do {
            model = try Model.load(path: s.modelPath, options: ModelOptions(threads: 1, batchCopyBytes: 0))
        } catch {
            throw TrainCLIError.io("cannot load the model \(s.modelPath): \(error)")
        }
        let prepared = try Self.prepare(s, model: model)
        let run = prepared.run
        let count = prepared.count
        let total = prepared.totalSteps
        let initial = prepared.initial
        let c = prepared.modelConfig

        let stop = StopRequest()
        let reporter = self.reporter
        stop.install { sig in
            let name = sig == SIGINT ? "SIGINT" : "SIGTERM"
            FileHandle.standardError.write(Data(
                "\nlorad train: \(name): finishing the current step, then writing a checkpoint (again to quit at once)\n".utf8))
        }
        if reporter.mode != .json {
            reporter.line("training \(count) \(s.method == .sft ? "sequences" : "pairs"), \(total) steps of "
                + "\(s.batchSize)×\(s.gradAccum), rank \(initial.config.rank), \(initial.count) parameters, "
                + "\(s.threads) threads")
        }
        var startEval: Double?
        var startAccuracy: Double?
        let outcome = try run.run(resume: s.resume, isCancelled: { stop.isRequested }, progress: { event in
            if case .eval(0, let loss, let accuracy) = event {
                startEval = loss
                startAccuracy = accuracy
            }
            reporter.report(event)
        })
        reporter.finish()

        var result: [String: Any] = [
            "event": "done", "steps": outcome.steps, "total_steps": total,
            "checkpoints": checkpointDir,
            "final_loss": outcome.lastLoss.map { $0 as Any } ?? NSNull(),
            "eval_loss": outcome.evalLoss.map { $0 as Any } ?? NSNull(),
            "eval_token_accuracy": outcome.evalTokenAccuracy.map { $0 as Any } ?? NSNull(),
        ]
        if let e = startEval { result["eval_loss_start"] = e }
        if let a = startAccuracy { result["eval_token_accuracy_start"] = a }
        if outcome.cancelled {
            result["status"] = "interrupted"
            if reporter.mode == .json { reporter.emitJSON(result) }
            reporter.line("stopped after step \(outcome.steps) of \(total); checkpoint in \(checkpointDir) "
                + "(rerun with --resume to continue)")
            return
        }
        let name = URL(fileURLWithPath: s.outDir).lastPathComponent
        try AdapterExport.writeAll(outcome.params, model: c, baseModel: s.modelPath, name: name, directory: s.outDir)
        result["status"] = "completed"
        result["out"] = s.outDir
        result["adapter_config"] = s.outDir + "/" + AdapterExport.peftConfigName
        result["adapter_model"] = s.outDir + "/" + AdapterExport.peftWeightsName
        result["adapter_gguf"] = s.outDir + "/adapter.gguf"
        if reporter.mode == .json {
            reporter.emitJSON(result)
        } else {
            var msg = "trained \(outcome.steps) steps"
            if let l = outcome.lastLoss { msg += String(format: ", last loss %.4f", l) }
            if let e = outcome.evalLoss { msg += String(format: ", eval loss %.4f", e) }
            if let a = outcome.evalTokenAccuracy { msg += String(format: ", eval token accuracy %.3f", a) }
            reporter.line(msg + "; wrote \(s.outDir)/{\(AdapterExport.peftConfigName), \(AdapterExport.peftWeightsName), adapter.gguf}")
        }
    }

    /// Builds the run of `s` on an already loaded `model`: the data (validated line by line), the adapter (fresh
    /// from the seed, or `s.initAdapter`), the trainer on `s.threads` threads (background priority with
    /// `s.nice`; paced by `pacer` when given), the objective, AdamW, clip, schedule and the checkpoint store in
    /// `s.outDir/checkpoints`.
    /// - Throws: ``TrainCLIError`` for unusable data or settings; the layers' errors otherwise.
    static func prepare(_ s: TrainSettings, model: Model, pacer: (any TrainingPacer)? = nil) throws -> PreparedTraining {
        let c = model.config
        let store = CheckpointStore(directory: s.outDir + "/checkpoints")
        // Data, validated line by line (errors name the file, line and field).
        let builder = SequenceBuilder(gguf: model.gguf, tokenizer: model.tokenizer, maxLength: s.maxSeqLen,
                                      overflow: s.truncate == .left ? .truncatePromptLeft : .reject)
        func load<T>(_ path: String, _ body: (String) throws -> [T]) throws -> [T] {
            do { return try body(path) } catch let e as DatasetError {
                throw TrainCLIError.data("\(path): \(e)")
            }
        }
        var sequences: [TrainingSequence] = []
        var evalSequences: [TrainingSequence] = []
        var pairs: [PreferencePair] = []
        var evalPairs: [PreferencePair] = []
        if s.tokenizedFeedback {
            (sequences, pairs) = try FeedbackTrainingData.load(
                s.dataPath, builder: builder, maxLength: s.maxSeqLen, dpo: s.method == .dpo)
        }
        switch s.method {
        case .sft where s.tokenizedFeedback:
            if let e = s.evalPath {
                evalSequences = try load(e) { try DatasetLoader.supervisedExamples(path: $0, builder: builder) }.map(Self.sequence)
            }
        case .dpo where s.tokenizedFeedback:
            if let e = s.evalPath {
                evalPairs = try load(e) { try DatasetLoader.preferencePairs(path: $0, builder: builder) }.map(Self.pair)
            }
        case .sft:
            sequences = try load(s.dataPath) { try DatasetLoader.supervisedExamples(path: $0, builder: builder) }.map(Self.sequence)
            if let e = s.evalPath {
                evalSequences = try load(e) { try DatasetLoader.supervisedExamples(path: $0, builder: builder) }.map(Self.sequence)
            }
        case .dpo:
            pairs = try load(s.dataPath) { try DatasetLoader.preferencePairs(path: $0, builder: builder) }.map(Self.pair)
            if let e = s.evalPath {
                evalPairs = try load(e) { try DatasetLoader.preferencePairs(path: $0, builder: builder) }.map(Self.pair)
            }
        }
        // A feedback DPO job may carry SFT examples too (continual learning's `method: auto`): both are trained.
        let count = s.method == .sft ? sequences.count : pairs.count + (s.tokenizedFeedback ? sequences.count : 0)
        guard count > 0 else { throw TrainCLIError.data("\(s.dataPath): no training examples") }
        if let e = s.evalPath, evalSequences.isEmpty, evalPairs.isEmpty {
            throw TrainCLIError.data("\(e): no eval examples")
        }

        // The adapter: continued from --init-adapter (its rank, alpha, targets and layers), or fresh.
        var rng = TrainingRNG(seed: s.seed)
        let initial: LoRAParameters
        var initParams: LoRAParameters?
        if let path = s.initAdapter {
            initial = try Self.loadAdapter(path, model: model)
            initParams = initial
        } else {
            let layers = s.layers ?? Array(0..<c.nLayer)
            if let bad = layers.first(where: { $0 >= c.nLayer }) {
                throw TrainCLIError.usage("--layers: layer \(bad) is outside the model's 0-\(c.nLayer - 1)")
            }
            let config = LoRAConfig(rank: s.rank, alpha: s.alpha, useRSLoRA: s.rslora, targets: s.targets, layers: layers)
            do { initial = try LoRAParameters.fresh(config: config, model: c, rng: &rng) } catch {
                throw TrainCLIError.usage("\(error)")
            }
        }

        let trainer: LoRATrainer
        // Dequantized f32 copies of the layer projections are kept for the run (+400 MB for Gemma 3 270M): forward
        // and backward then skip re-dequantizing them, ~7% per step; the values are identical either way.
        do { trainer = try LoRATrainer(model: model, threads: s.threads, background: s.nice, cacheWeights: true) } catch {
            throw TrainCLIError.usage("\(error)")
        }
        // A daemon's job is paced against serving (TrainingGovernor); the arithmetic is the same with or without.
        trainer.pacer = pacer
        let objective: TrainingObjective
        switch s.method {
        case .sft:
            objective = SFTObjective(trainer: trainer, examples: sequences, evalExamples: evalSequences,
                                     evalBatchSize: s.batchSize)
        case .dpo:
            let reference: DPOReference = s.dpoReference == .`init` ? .adapter(initParams!) : .base
            let dpo = DPOObjective(trainer: trainer, pairs: pairs, evalPairs: evalPairs, beta: s.beta,
                                   reference: reference, evalBatchSize: s.batchSize)
            if s.tokenizedFeedback && !sequences.isEmpty {
                objective = MixedObjective(
                    sft: SFTObjective(trainer: trainer, examples: sequences, evalBatchSize: s.batchSize), dpo: dpo)
            } else {
                objective = dpo
            }
        }

        let options = TrainingLoopOptions(length: s.length, batchSize: s.batchSize, gradAccum: s.gradAccum,
                                          checkpointEvery: s.checkpointEvery, evalEvery: s.evalEvery,
                                          evalAtStart: s.evalPath != nil)
        let total = options.totalSteps(count: count)
        let schedule = LRSchedule(kind: LRSchedule.Kind(rawValue: s.schedule.rawValue)!, baseLR: s.lr,
                                  warmupSteps: s.warmupSteps, totalSteps: total)
        let adamw = AdamWConfig(weightDecay: s.weightDecay)
        let runSettings = RunSettings(
            method: s.method.rawValue
                + (s.method == .dpo ? "/reference=\(s.dpoReference.rawValue)" : "")
                + (s.initAdapter.map { "/init=\(URL(fileURLWithPath: $0).standardizedFileURL.path)" } ?? "")
                + "/epochs-or-steps=\(String(describing: s.length))/truncate=\(s.truncate.rawValue)",
            lora: initial.config, adamw: adamw, schedule: schedule, batchSize: s.batchSize,
            gradientAccumulation: s.gradAccum, maxGradNorm: s.clip, seed: s.seed, shuffle: true,
            maxLength: s.maxSeqLen, beta: s.method == .dpo ? s.beta : 0,
            dataDigest: try Self.digest(s.dataPath), baseModel: URL(fileURLWithPath: s.modelPath).lastPathComponent)
        let checkpoints = RunCheckpointStore(store: store, settings: runSettings, model: c)
        let clip = s.clip
        let run = TrainingRun(
            params: initial, objective: objective, optimizer: AdamW(count: initial.count, config: adamw),
            options: options, schedule: { schedule.lr($0) },
            clip: clip > 0 ? { g in GradientClipping.clip(&g, maxNorm: clip) } : nil,
            checkpoints: checkpoints, fingerprint: RunCheckpointStore.fingerprint, rng: rng)
        return PreparedTraining(run: run, count: count, totalSteps: total, initial: initial, modelConfig: c)
    }

    static func sequence(_ e: TokenizedExample) -> TrainingSequence {
        TrainingSequence(inputIds: e.inputIds, labelsMask: e.labelsMask)
    }

    static func pair(_ p: TokenizedPair) -> PreferencePair {
        PreferencePair(chosen: sequence(p.chosen), rejected: sequence(p.rejected))
    }

    /// A PEFT directory or a GGUF adapter file, as trainable parameters for `model`.
    /// - Throws: `TrainCLIError.usage` naming the adapter and why it does not fit.
    static func loadAdapter(_ path: String, model: Model) throws -> LoRAParameters {
        var isDir: ObjCBool = false
        _ = FileManager.default.fileExists(atPath: path, isDirectory: &isDir)
        do {
            let adapter = isDir.boolValue
                ? try model.loadPEFTAdapter(directory: path, name: "init")
                : try model.loadGGUFAdapter(path: path, name: "init")
            return try LoRAParameters(adapter: adapter, model: model.config)
        } catch {
            throw TrainCLIError.usage("--init-adapter \(path): \(error)")
        }
    }

    /// SHA-256 of a file, lowercase hex: the run's `RunSettings.dataDigest` (the one digest of training data).
    /// - Throws: `TrainCLIError.usage` when it cannot be read.
    static func digest(_ path: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TrainCLIError.usage("cannot read \(path)")
        }
        let h = SHA256Hasher()
        h.update(data)
        return SHA256Hasher.hex(h.finish())
    }
}
