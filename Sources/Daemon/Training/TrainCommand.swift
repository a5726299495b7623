// `lorad train`: fine-tune a LoRA adapter on the CPU from a JSONL file, on the frozen quantized base model.
// Parses and checks the flags, checks the output folder, then hands over to TrainJob (which builds the
// data, the adapter, the objective and the loop) and reports progress with TrainReporter.
import ArgumentParser
import Foundation
import Runtime
import Train

#if canImport(Glibc)
import Glibc
#endif

/// `lorad train --data FILE.jsonl --out DIR [...]`: trains a LoRA adapter (SFT or DPO) and writes it to `DIR`
/// as a PEFT directory (`adapter_config.json`, `adapter_model.safetensors`) and a GGUF adapter (`adapter.gguf`),
/// with resumable checkpoints in `DIR/checkpoints/`.
///
/// Exit status: 0 trained (also after SIGINT/SIGTERM, once the current step is checkpointed), 2 usage or data
/// errors (the message names the flag, or the line and field of the data file), 1 other errors (the output
/// folder is not writable, the disk is full, the model cannot be loaded).
public struct TrainCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a LoRA adapter on the CPU (SFT or DPO) from a JSONL file.",
        discussion: """
            Data (JSONL, one example per line; OpenAI's fine-tuning formats):
              chat        {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
                          (loss on assistant messages; "weight": 0 on an assistant message skips it)
              completion  {"prompt": "...", "completion": "..."}   (loss on the completion and EOS)
              dpo         {"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", "content": "..."}],
                           "non_preferred_output": [{"role": "assistant", "content": "..."}]}   (--method dpo)
            Output: DIR/adapter_config.json + DIR/adapter_model.safetensors (PEFT), DIR/adapter.gguf (llama.cpp
            LoRA, F32), DIR/checkpoints/ (resume with --resume). Progress: a bar on a terminal, one JSON line
            per step with --json. SIGINT/SIGTERM finish the current step, write a checkpoint and exit 0.
            Exit status: 0 ok, 2 usage or data error, 1 other error.
            """)

    /// Training objective.
    enum Method: String, ExpressibleByArgument, CaseIterable { case sft, dpo }
    /// Reference model of DPO.
    enum DPOReference: String, ExpressibleByArgument, CaseIterable { case base, `init` }
    /// Over-long sequences.
    enum Truncation: String, ExpressibleByArgument, CaseIterable { case left, reject }
    /// Learning-rate schedule after warm-up.
    enum Schedule: String, ExpressibleByArgument, CaseIterable { case constant, linear, cosine }

    @Option(help: "Training data (JSONL).")
    var data: String
    @Option(help: "GGUF base model (default: $LORAD_MODEL, then the installed default model).")
    var model: String?
    @Option(help: "Objective: sft or dpo.")
    var method: Method = .sft
    @Option(help: "DPO beta (temperature of the implicit reward).")
    var beta: Double = 0.1
    @Option(name: .customLong("dpo-reference"), help: "DPO reference: base (the model without adapter) or init (the --init-adapter, frozen).")
    var dpoReference: DPOReference = .base
    @Option(name: .customLong("init-adapter"), help: "Continue from this adapter (PEFT directory or GGUF file); rank, alpha and targets come from it.")
    var initAdapter: String?
    @Option(help: "LoRA rank of a fresh adapter.")
    var rank: Int = 8
    @Option(help: "LoRA alpha of a fresh adapter (scale alpha/rank).")
    var alpha: Double = 16
    @Flag(help: "Rank-stabilised LoRA: scale alpha/sqrt(rank).")
    var rslora = false
    @Option(help: "Patched projections, comma-separated: attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down (or q_proj,... or all).")
    var targets: String = "all"
    @Option(help: "Patched layers: all, or a list of indices and ranges such as 0-5,12.")
    var layers: String = "all"
    @Option(help: "Peak learning rate.")
    var lr: Double = 1e-4
    @Option(name: .customLong("weight-decay"), help: "AdamW decoupled weight decay.")
    var weightDecay: Double = 0.01
    @Option(help: "Learning-rate schedule after warm-up: constant, linear or cosine.")
    var schedule: Schedule = .linear
    @Option(name: .customLong("warmup-steps"), help: "Linear warm-up steps.")
    var warmupSteps: Int = 0
    @Option(help: "Passes over the data (default 1 unless --steps is given).")
    var epochs: Int?
    @Option(help: "Optimizer steps (instead of --epochs).")
    var steps: Int?
    @Option(name: .customLong("batch-size"), help: "Sequences (or DPO pairs) per forward/backward.")
    var batchSize: Int = 4
    @Option(name: .customLong("grad-accum"), help: "Micro-batches accumulated per optimizer step.")
    var gradAccum: Int = 1
    @Option(name: .customLong("max-seq-len"), help: "Longest sequence in tokens.")
    var maxSeqLen: Int = 1024
    @Option(help: "Sequences over --max-seq-len: reject (an error naming the line) or left (drop the oldest prompt tokens).")
    var truncate: Truncation = .reject
    @Option(help: "Clip the gradient to this global L2 norm (0: no clipping).")
    var clip: Double = 1.0
    @Option(help: "Seed of the adapter init and the data order.")
    var seed: UInt64 = 0
    @Option(help: "Compute threads (default: number of CPUs).")
    var threads: Int?
    @Option(name: .customLong("eval-data"), help: "Held-out data (same format) whose loss is reported at the end.")
    var evalData: String?
    @Option(name: .customLong("eval-every"), help: "Also evaluate every N steps (0: only at the end).")
    var evalEvery: Int = 0
    @Option(name: .customLong("checkpoint-every"), help: "Checkpoint every N steps (0: only at the end); always on SIGINT/SIGTERM.")
    var checkpointEvery: Int = 50
    @Option(help: "Output folder.")
    var out: String
    @Flag(help: "Continue from the latest checkpoint in DIR/checkpoints.")
    var resume = false
    @Flag(help: "One JSON object per step on stdout, and a final one with the output paths.")
    var json = false
    @Flag(help: "Run the training threads at background priority (nice 19).")
    var nice = false

    public init() {}

    public func run() throws {
        let reporter = TrainReporter(json: json)
        do {
            let settings = try validatedSettings()
            try Self.prepareOutputFolder(out)
            try TrainJob(settings: settings, reporter: reporter).run()
        } catch let e as TrainCLIError {
            reporter.finish()
            FileHandle.standardError.write(Data("lorad train: \(e.message)\n".utf8))
            throw ExitCode(e.exitCode)
        } catch let e as ExitCode {
            throw e
        } catch {
            reporter.finish()
            let (status, message) = TrainCLIError.classify(error)
            FileHandle.standardError.write(Data("lorad train: \(message)\n".utf8))
            throw ExitCode(status)
        }
    }

    /// The flags checked and resolved into one value.
    /// - Throws: `TrainCLIError.usage` naming the offending flag.
    func validatedSettings() throws -> TrainSettings {
        func usage(_ s: String) -> TrainCLIError { .usage(s) }
        guard rank >= 1, rank <= Model.maxLoRARank else { throw usage("--rank must be in 1...\(Model.maxLoRARank)") }
        guard alpha.isFinite, alpha > 0 else { throw usage("--alpha must be > 0") }
        guard lr.isFinite, lr > 0 else { throw usage("--lr must be > 0") }
        guard weightDecay.isFinite, weightDecay >= 0 else { throw usage("--weight-decay must be ≥ 0") }
        guard beta.isFinite, beta > 0 else { throw usage("--beta must be > 0") }
        guard warmupSteps >= 0 else { throw usage("--warmup-steps must be ≥ 0") }
        guard batchSize >= 1 else { throw usage("--batch-size must be ≥ 1") }
        guard gradAccum >= 1 else { throw usage("--grad-accum must be ≥ 1") }
        guard maxSeqLen >= 2 else { throw usage("--max-seq-len must be ≥ 2") }
        guard clip.isFinite, clip >= 0 else { throw usage("--clip must be ≥ 0") }
        guard evalEvery >= 0 else { throw usage("--eval-every must be ≥ 0") }
        guard checkpointEvery >= 0 else { throw usage("--checkpoint-every must be ≥ 0") }
        if let t = threads, t < 1 { throw usage("--threads must be ≥ 1") }
        let length: TrainingLoopOptions.Length
        switch (epochs, steps) {
        case (.some, .some): throw usage("give --epochs or --steps, not both")
        case (.some(let e), nil):
            guard e >= 1 else { throw usage("--epochs must be ≥ 1") }
            length = .epochs(e)
        case (nil, .some(let s)):
            guard s >= 1 else { throw usage("--steps must be ≥ 1") }
            length = .steps(s)
        case (nil, nil): length = .epochs(1)
        }
        if method == .dpo, dpoReference == .`init`, initAdapter == nil {
            throw usage("--dpo-reference init needs --init-adapter")
        }
        if method == .sft, dpoReference != .base { throw usage("--dpo-reference applies to --method dpo only") }
        let projections = try Self.parseTargets(targets)
        let layerSpec = try Self.parseLayers(layers)
        guard FileManager.default.isReadableFile(atPath: data) else { throw usage("--data \(data): no such readable file") }
        if let e = evalData, !FileManager.default.isReadableFile(atPath: e) {
            throw usage("--eval-data \(e): no such readable file")
        }
        if let a = initAdapter, !FileManager.default.fileExists(atPath: a) {
            throw usage("--init-adapter \(a): no such file or folder")
        }
        let modelPath: String
        if let m = model {
            guard FileManager.default.isReadableFile(atPath: m) else { throw usage("--model \(m): no such readable file") }
            modelPath = m
        } else {
            do { modelPath = try DefaultModel.resolve() } catch { throw usage("\(error)") }
        }
        return TrainSettings(
            modelPath: modelPath, dataPath: data, evalPath: evalData, outDir: out, method: method, beta: beta,
            dpoReference: dpoReference, initAdapter: initAdapter, rank: rank, alpha: Float(alpha), rslora: rslora,
            targets: projections, layers: layerSpec, lr: lr, weightDecay: weightDecay, schedule: schedule,
            warmupSteps: warmupSteps, length: length, batchSize: batchSize, gradAccum: gradAccum,
            maxSeqLen: maxSeqLen, truncate: truncate, clip: clip, seed: seed,
            threads: threads ?? max(1, ProcessInfo.processInfo.activeProcessorCount), evalEvery: evalEvery,
            checkpointEvery: checkpointEvery, resume: resume, json: json, nice: nice)
    }

    /// `all`, or llama.cpp names (`attn_q`, …) or Hugging Face names (`q_proj`, …), comma-separated.
    /// - Throws: `TrainCLIError.usage` naming an unknown projection.
    static func parseTargets(_ s: String) throws -> [Projection] {
        let hf: [String: Projection] = [
            "q_proj": .attnQ, "k_proj": .attnK, "v_proj": .attnV, "o_proj": .attnOutput,
            "gate_proj": .ffnGate, "up_proj": .ffnUp, "down_proj": .ffnDown,
        ]
        let names = s.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        if names == ["all"] { return Projection.allCases }
        guard !names.isEmpty else { throw TrainCLIError.usage("--targets is empty") }
        var out: [Projection] = []
        for n in names {
            guard let p = Projection(rawValue: n) ?? hf[n] else {
                throw TrainCLIError.usage("--targets: unknown projection '\(n)' (known: "
                    + Projection.allCases.map(\.rawValue).joined(separator: ", ") + ", or all)")
            }
            if !out.contains(p) { out.append(p) }
        }
        return out
    }

    /// `all` (nil), or indices and inclusive ranges: `0-5,12`.
    /// - Throws: `TrainCLIError.usage` for a malformed list.
    static func parseLayers(_ s: String) throws -> [Int]? {
        if s.trimmingCharacters(in: .whitespaces) == "all" { return nil }
        var out = Set<Int>()
        for part in s.split(separator: ",", omittingEmptySubsequences: false) {
            let p = part.trimmingCharacters(in: .whitespaces)
            let bounds = p.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(bounds.count), let lo = Int(bounds[0]), let hi = Int(bounds.last!), lo >= 0, hi >= lo
            else { throw TrainCLIError.usage("--layers: '\(p)' is not an index or a range like 0-5") }
            for l in lo...hi { out.insert(l) }
        }
        return out.sorted()
    }

    /// Creates `dir` and `dir/checkpoints` if needed and proves both writable by creating, syncing and removing
    /// a probe file, before any model or data is loaded.
    /// - Throws: `TrainCLIError.io` with the reason (permission, read-only file system, not a folder, full disk).
    static func prepareOutputFolder(_ dir: String) throws {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), !isDir.boolValue {
            throw TrainCLIError.io("output folder \(dir) exists and is not a folder")
        }
        for d in [dir, dir + "/checkpoints"] {
            if mkdir(d, 0o755) != 0, errno != EEXIST {
                let err = errno
                if err == ENOENT {
                    do { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) } catch {
                        throw TrainCLIError.io("cannot create the output folder \(d): \(error.localizedDescription)")
                    }
                } else {
                    throw TrainCLIError.io("cannot create the output folder \(d): \(String(cString: strerror(err)))")
                }
            }
            let probe = d + "/.lorad-write-test-\(getpid())"
            let fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            guard fd >= 0 else {
                throw TrainCLIError.io("output folder \(d) is not writable: \(String(cString: strerror(errno)))")
            }
            let byte: [UInt8] = [0x0A]
            let ok = write(fd, byte, 1) == 1 && fsync(fd) == 0
            let err = errno
            close(fd)
            unlink(probe)
            guard ok else {
                throw TrainCLIError.io("output folder \(d) is not writable: \(String(cString: strerror(err)))")
            }
        }
    }
}

/// The validated flags of `lorad train`.
struct TrainSettings {
    var modelPath: String
    var dataPath: String
    var evalPath: String?
    var outDir: String
    var method: TrainCommand.Method
    var beta: Double
    var dpoReference: TrainCommand.DPOReference
    var initAdapter: String?
    var rank: Int
    var alpha: Float
    var rslora: Bool
    var targets: [Projection]
    /// nil: all layers.
    var layers: [Int]?
    var lr: Double
    var weightDecay: Double
    var schedule: TrainCommand.Schedule
    var warmupSteps: Int
    var length: TrainingLoopOptions.Length
    var batchSize: Int
    var gradAccum: Int
    var maxSeqLen: Int
    var truncate: TrainCommand.Truncation
    var clip: Double
    var seed: UInt64
    var threads: Int
    var evalEvery: Int
    var checkpointEvery: Int
    var resume: Bool
    var json: Bool
    var nice: Bool
    /// `dataPath` holds token-level feedback examples (a fine-tuning job's `training_source`), not JSONL.
    var tokenizedFeedback = false
}

/// An error of `lorad train` with its exit status: 2 for usage and data, 1 for everything else.
struct TrainCLIError: Error {
    let exitCode: Int32
    let message: String

    static func usage(_ m: String) -> TrainCLIError { TrainCLIError(exitCode: 2, message: m) }
    static func data(_ m: String) -> TrainCLIError { TrainCLIError(exitCode: 2, message: m) }
    static func io(_ m: String) -> TrainCLIError { TrainCLIError(exitCode: 1, message: m) }

    /// Exit status and message for an error thrown by the layers below: data and adapter-fit errors are the
    /// user's input (2); I/O and everything else are 1, with ENOSPC spelled out.
    static func classify(_ error: Error) -> (Int32, String) {
        switch error {
        case let e as DatasetError: return (2, "bad data: \(e)")
        case let e as AdapterError: return (2, "--init-adapter: \(e)")
        case let e as SafetensorsError: return (2, "--init-adapter: \(e)")
        case let e as CheckpointError:
            if case .settingsMismatch = e { return (2, "--resume: \(e); use the run's original flags or another --out") }
            return (1, "\(e)")
        case let e as AdapterInitError: return (2, "\(e)")
        case let e as TrainError: return (1, "training failed: \(e)")
        case let e as TrainingRunError:
            if case .checkpointMismatch = e { return (2, "\(e); use another --out or drop --resume") }
            return (1, "\(e)")
        case let e as FileIOError:
            if e.errno == ENOSPC {
                return (1, "\(e): the disk is full; the previous checkpoint is intact, free space and rerun with --resume")
            }
            return (1, "\(e)")
        default: return (1, "\(error)")
        }
    }
}
