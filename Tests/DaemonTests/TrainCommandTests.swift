// `lorad train` through the real binary on the default model: it learns a small task, a run killed with
// SIGKILL (or stopped with SIGINT) and resumed ends with the uninterrupted run's adapter bit for bit, the exported
// PEFT and GGUF adapters serve the trained adapter's logits exactly, and bad input is refused with the documented
// exit status and a message that names the problem.
//
// Training runs take most of the 2 cores: the suites here are serialized and share one lock, so two trainings
// never overlap. Times on 2 shared cores: learning ≈ 1–3 min, resume ≈ 1–2 min, bad input ≈ 20 s.
import Foundation
import Runtime
import Testing
import Train

#if canImport(Glibc)
import Glibc
#endif

/// Serializes the training tests of this file (they each use both cores).
let trainingLock = NSLock()

/// A `lorad train` child process whose stdout lines are collected as they arrive.
final class TrainProcess: @unchecked Sendable {
    let process = Process()
    private let out = Pipe()
    private let err = Pipe()
    private let lock = NSLock()
    private var stdoutText = ""
    private var stderrData = Data()
    private let group = DispatchGroup()

    init(_ args: [String]) throws {
        process.executableURL = URL(fileURLWithPath: try Paths.loradBinary())
        process.arguments = ["train"] + args
        process.standardOutput = out
        process.standardError = err
        try process.run()
        group.enter()
        DispatchQueue.global().async { [self] in
            while true {
                let d = out.fileHandleForReading.availableData
                if d.isEmpty { break }
                lock.withLock { stdoutText += String(decoding: d, as: UTF8.self) }
            }
            group.leave()
        }
        group.enter()
        DispatchQueue.global().async { [self] in
            let d = err.fileHandleForReading.readDataToEndOfFile()
            lock.withLock { stderrData = d }
            group.leave()
        }
    }

    var stdout: String { lock.withLock { stdoutText } }
    var stderr: String { lock.withLock { String(decoding: stderrData, as: UTF8.self) } }

    /// The JSON objects printed so far (complete lines only).
    var events: [[String: Any]] {
        stdout.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    /// Waits (bounded) for the process to exit and for its output to be read; returns the exit status.
    @discardableResult
    func wait(timeout: Double = 600) throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning {
            if Date() > deadline {
                kill(process.processIdentifier, SIGKILL)
                throw HarnessError(description: "lorad train did not finish within \(timeout) s")
            }
            usleep(50_000)
        }
        _ = group.wait(timeout: .now() + 10)
        return process.terminationReason == .uncaughtSignal ? -process.terminationStatus : process.terminationStatus
    }

    /// Polls `condition` every 50 ms until it holds or the process exits.
    func waitFor(_ what: String, timeout: Double = 600, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition() {
            guard process.isRunning else {
                throw HarnessError(description: "lorad train exited before \(what): \(stderr)")
            }
            guard Date() < deadline else { throw HarnessError(description: "no \(what) within \(timeout) s") }
            usleep(50_000)
        }
    }
}

/// Runs `lorad train args` to completion: (exit status, stdout, stderr).
func loradTrain(_ args: [String], timeout: Double = 900) throws -> (Int32, String, String) {
    let p = try TrainProcess(args)
    let status = try p.wait(timeout: timeout)
    return (status, p.stdout, p.stderr)
}

/// A fresh temporary directory.
func trainTempDir(_ tag: String) throws -> String {
    let d = "/tmp/lorad-train-\(tag)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

/// JSONL text of chat lines `user → assistant`.
func chatJSONL(_ pairs: [(String, String)]) throws -> String {
    try pairs.map { u, a in
        let obj: [String: Any] = ["messages": [["role": "user", "content": u], ["role": "assistant", "content": a]]]
        return String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self)
    }.joined(separator: "\n") + "\n"
}

/// Greedy continuation (up to `maxTokens`, stopping at end of turn) of `prompt` ids with `adapter`, and whether
/// it stopped at an end-of-generation token.
func greedy(_ model: Model, _ prompt: [Int32], adapter: LoRAAdapter?, maxTokens: Int) throws -> (ids: [Int32], stopped: Bool) {
    let cache = model.makeKVCache(capacity: prompt.count + maxTokens + 1)
    let set = adapter.map { AdapterSet($0) }
    var b = ForwardBatch()
    for (i, t) in prompt.enumerated() {
        b.append(token: t, position: i, sequence: 0, wantLogits: i == prompt.count - 1, adapter: set)
    }
    var logits = try model.forward(b, caches: [cache])
    var out: [Int32] = []
    for step in 0..<maxTokens {
        let next = Int32(logits.indices.max { logits[$0] < logits[$1] }!)
        if model.tokenizer.isEndOfGeneration(next) { return (out, true) }
        out.append(next)
        var d = ForwardBatch()
        d.append(token: next, position: prompt.count + step, sequence: 0, wantLogits: true, adapter: set)
        logits = try model.forward(d, caches: [cache])
    }
    return (out, false)
}

/// Logits of the last position of `prompt` with `adapter`.
func lastLogits(_ model: Model, _ prompt: [Int32], adapter: LoRAAdapter) throws -> [Float] {
    let cache = model.makeKVCache(capacity: prompt.count + 1)
    var b = ForwardBatch()
    for (i, t) in prompt.enumerated() {
        b.append(token: t, position: i, sequence: 0, wantLogits: i == prompt.count - 1, adapter: AdapterSet(adapter))
    }
    return try model.forward(b, caches: [cache])
}

@Suite(.serialized) struct TrainCommandTests {
    /// The learning task: answer "What is the capital of X?" in a house format the base model never uses,
    /// `CAPITAL[X] => Y <<END>>`. The format is new (so the base model's loss on it is high and its greedy answer
    /// differs), while the facts are ones the base model knows, so what is learned — the format — carries over to
    /// countries held out of training. 16 countries train, 6 others are held out (loss and greedy outputs).
    static let trainCountries = [
        ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
        ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Russia", "Moscow"), ("Greece", "Athens"), ("Norway", "Oslo"),
        ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Cuba", "Havana"), ("Austria", "Vienna"), ("Portugal", "Lisbon"),
        ("Ireland", "Dublin"),
    ]
    static let heldOutCountries = [
        ("Poland", "Warsaw"), ("Sweden", "Stockholm"), ("China", "Beijing"), ("Chile", "Santiago"),
        ("Thailand", "Bangkok"), ("Hungary", "Budapest"),
    ]
    static func question(_ c: String) -> String { "What is the capital of \(c)?" }
    static func answer(_ c: String, _ k: String) -> String { "CAPITAL[\(c)] => \(k) <<END>>" }

    @Test func learnsAHouseFormatAndExportsServeTheTrainedLogits() throws {
        trainingLock.lock()
        defer { trainingLock.unlock() }
        let modelPath = try Paths.model()
        let dir = try trainTempDir("learn")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try chatJSONL(Self.trainCountries.map { (Self.question($0.0), Self.answer($0.0, $0.1)) })
            .write(toFile: dir + "/train.jsonl", atomically: true, encoding: .utf8)
        try chatJSONL(Self.heldOutCountries.map { (Self.question($0.0), Self.answer($0.0, $0.1)) })
            .write(toFile: dir + "/eval.jsonl", atomically: true, encoding: .utf8)
        let out = dir + "/out"
        let t0 = Date()
        let (status, stdout, stderr) = try loradTrain([
            "--model", modelPath, "--data", dir + "/train.jsonl", "--eval-data", dir + "/eval.jsonl", "--out", out,
            "--steps", "10", "--batch-size", "4", "--lr", "2e-3", "--schedule", "constant", "--seed", "1",
            "--threads", "2", "--json",
        ])
        let seconds = Date().timeIntervalSince(t0)
        #expect(status == 0, "exit \(status): \(stderr)")
        let lines = stdout.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        let steps = lines.filter { $0["event"] as? String == "step" }
        #expect(steps.count == 10)
        for s in steps {
            for key in ["step", "loss", "grad_norm", "lr", "tokens", "tok_s"] { #expect(s[key] != nil, "step line lacks \(key)") }
            #expect((s["token_accuracy"] as? Double).map { $0 >= 0 && $0 <= 1 } == true, "\(s)")
        }
        let done = try #require(lines.last, "no final line: \(stdout)")
        #expect(done["event"] as? String == "done" && done["status"] as? String == "completed")
        let before = try #require(done["eval_loss_start"] as? Double)
        let after = try #require(done["eval_loss"] as? Double)
        print("learning: held-out loss \(before) → \(after) (ratio \(after / before)) in \(Int(seconds)) s, "
              + "train loss \(steps.first?["loss"] ?? "?") → \(steps.last?["loss"] ?? "?")")
        #expect(after <= before / 2, "held-out loss \(before) → \(after): not halved")
        // Token accuracy on the held-out answers rises with it.
        let accBefore = try #require(done["eval_token_accuracy_start"] as? Double)
        let accAfter = try #require(done["eval_token_accuracy"] as? Double)
        print("learning: held-out token accuracy \(accBefore) → \(accAfter)")
        #expect(accAfter > accBefore, "held-out token accuracy \(accBefore) → \(accAfter)")

        // Greedy answers to held-out questions: the base model does not use the format, the trained adapter does.
        let model = try Model.load(path: modelPath, options: ModelOptions(threads: 2))
        let peft = try model.loadPEFTAdapter(directory: out, name: "peft")
        let gguf = try model.loadGGUFAdapter(path: out + "/adapter.gguf", name: "gguf")
        var formatted = 0
        var exact = 0
        for (c, k) in Self.heldOutCountries {
            let prompt = try model.chatTemplate.render([ChatMessage(role: "user", content: Self.question(c))],
                                                       addGenerationPrompt: true, tokenizer: model.tokenizer)
            let base = model.tokenizer.decode(try greedy(model, prompt, adapter: nil, maxTokens: 16).ids, renderSpecial: false)
            let run = try greedy(model, prompt, adapter: peft, maxTokens: 16)
            let tuned = model.tokenizer.decode(run.ids, renderSpecial: false)
            print("  \(c): base \(base.debugDescription) → trained \(tuned.debugDescription)\(run.stopped ? " <end_of_turn>" : "")")
            #expect(!base.contains("CAPITAL["))
            if tuned.hasPrefix("CAPITAL[\(c)] =>") && tuned.hasSuffix("<<END>>") && run.stopped { formatted += 1 }
            if tuned == Self.answer(c, k) { exact += 1 }
        }
        // The format (and the end of the turn) is what was taught; the capitals come from the base model's knowledge.
        #expect(formatted >= 5, "only \(formatted) of 6 held-out answers use the trained format and end the turn")
        #expect(exact >= 4, "only \(exact) of 6 held-out answers are exactly right")

        // The exported files carry exactly the trained adapter: the final checkpoint's values (the in-memory
        // adapter) give the same logits as the PEFT directory and the GGUF file, bit for bit.
        let ckpt = try CheckpointStore(directory: out + "/checkpoints").loadLatest(model: model.config).checkpoint
        #expect(ckpt.step == 10)
        let memory = ckpt.parameters.makeAdapter(name: "memory")
        let prompt = try model.chatTemplate.render([ChatMessage(role: "user", content: Self.question("Poland"))],
                                                   addGenerationPrompt: true, tokenizer: model.tokenizer)
        let ref = try lastLogits(model, prompt, adapter: memory)
        #expect(try lastLogits(model, prompt, adapter: peft) == ref, "PEFT export serves other logits")
        #expect(try lastLogits(model, prompt, adapter: gguf) == ref, "GGUF export serves other logits")
        for (key, m) in memory.modules {
            #expect(peft.modules[key]?.a == m.a && peft.modules[key]?.b == m.b && gguf.modules[key]?.a == m.a
                    && gguf.modules[key]?.b == m.b, "module \(key) differs")
        }
    }

    static func tinyData(_ dir: String) throws -> String {
        let lines = (0..<6).map { i -> String in
            let obj = ["prompt": "Item \(i):", "completion": " value \(i * 7 % 10) ok"]
            return String(decoding: try! JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self)
        }
        let path = dir + "/tiny.jsonl"
        try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    static func resumeArgs(data: String, out: String, model: String) -> [String] {
        ["--model", model, "--data", data, "--out", out, "--steps", "6", "--batch-size", "2", "--lr", "2e-3",
         "--schedule", "cosine", "--warmup-steps", "1", "--checkpoint-every", "2", "--seed", "5", "--threads", "2",
         "--rank", "4", "--targets", "attn_q,attn_v,ffn_down", "--json"]
    }

    /// The trained adapter's tensors as loaded by Runtime's PEFT loader, by module.
    static func adapterValues(_ model: Model, _ out: String) throws -> [ModuleKey: [UInt32]] {
        let a = try model.loadPEFTAdapter(directory: out, name: "x")
        var r: [ModuleKey: [UInt32]] = [:]
        for (k, m) in a.modules { r[k] = (m.a + m.b).map(\.bitPattern) }
        return r
    }

    @Test func killedOrInterruptedThenResumedEqualsUninterruptedBitForBit() throws {
        trainingLock.lock()
        defer { trainingLock.unlock() }
        let modelPath = try Paths.model()
        let dir = try trainTempDir("resume")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = try Self.tinyData(dir)

        // A: uninterrupted.
        let a = try loradTrain(Self.resumeArgs(data: data, out: dir + "/a", model: modelPath))
        #expect(a.0 == 0, "\(a.2)")

        // B: SIGKILL once the step-2 checkpoint exists, then --resume.
        let outB = dir + "/b"
        let b = try TrainProcess(Self.resumeArgs(data: data, out: outB, model: modelPath))
        try b.waitFor("the first checkpoint") {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: outB + "/checkpoints")) ?? []
            return names.contains { $0.hasSuffix(".lorackpt") }
        }
        kill(b.process.processIdentifier, SIGKILL)
        let bStatus = try b.wait()
        #expect(bStatus == -SIGKILL, "expected death by SIGKILL, got \(bStatus)")
        #expect(!FileManager.default.fileExists(atPath: outB + "/adapter_model.safetensors"))
        // Without --resume the folder's checkpoints are not overwritten: usage error.
        let refused = try loradTrain(Self.resumeArgs(data: data, out: outB, model: modelPath))
        #expect(refused.0 == 2 && refused.2.contains("--resume"), "\(refused)")
        let b2 = try loradTrain(Self.resumeArgs(data: data, out: outB, model: modelPath) + ["--resume"])
        #expect(b2.0 == 0, "\(b2.2)")
        #expect(b2.1.contains("\"event\":\"resumed\""), "resumed run did not start from a checkpoint: \(b2.1)")

        // C: SIGINT after the first step: exit 0 with a checkpoint, then --resume.
        let outC = dir + "/c"
        let c = try TrainProcess(Self.resumeArgs(data: data, out: outC, model: modelPath))
        try c.waitFor("the first step") { c.events.contains { $0["event"] as? String == "step" } }
        kill(c.process.processIdentifier, SIGINT)
        let cStatus = try c.wait()
        #expect(cStatus == 0, "SIGINT: exit \(cStatus): \(c.stderr)")
        let last = c.events.last
        #expect(last?["status"] as? String == "interrupted", "\(c.stdout)")
        let stoppedAt = last?["steps"] as? Int ?? 0
        #expect(stoppedAt >= 1 && stoppedAt < 6)
        let c2 = try loradTrain(Self.resumeArgs(data: data, out: outC, model: modelPath) + ["--resume"])
        #expect(c2.0 == 0, "\(c2.2)")

        let model = try Model.load(path: modelPath, options: ModelOptions(threads: 1))
        let va = try Self.adapterValues(model, dir + "/a")
        #expect(!va.isEmpty)
        #expect(try Self.adapterValues(model, outB) == va, "SIGKILL + --resume differs from the uninterrupted run")
        #expect(try Self.adapterValues(model, outC) == va, "SIGINT + --resume differs from the uninterrupted run")
        let bytesA = FileManager.default.contents(atPath: dir + "/a/adapter_model.safetensors")
        #expect(bytesA != nil && bytesA == FileManager.default.contents(atPath: outB + "/adapter_model.safetensors"))
        // The per-step losses after the resume point are the uninterrupted run's too.
        let lossesA = a.1.split(separator: "\n").filter { $0.contains("\"event\":\"step\"") }.suffix(2)
        let lossesB = b2.1.split(separator: "\n").filter { $0.contains("\"event\":\"step\"") }.suffix(2)
        #expect(lossesA.map { $0.replacingOccurrences(of: #""tok_s":[0-9.e+-]+,"#, with: "", options: .regularExpression) }
                == lossesB.map { $0.replacingOccurrences(of: #""tok_s":[0-9.e+-]+,"#, with: "", options: .regularExpression) })
    }

    @Test func badInputExitsWithStatusAndMessage() throws {
        trainingLock.lock()
        defer { trainingLock.unlock() }
        let modelPath = try Paths.model()
        let dir = try trainTempDir("bad")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let good = #"{"prompt": "a", "completion": " b"}"#
        func file(_ name: String, _ text: String) throws -> String {
            let p = dir + "/" + name
            try text.write(toFile: p, atomically: true, encoding: .utf8)
            return p
        }
        func train(_ data: String, _ extra: [String] = [], out: String? = nil) throws -> (Int32, String, String) {
            try loradTrain(["--model", modelPath, "--data", data, "--out", out ?? dir + "/out-\(UInt32.random(in: 0...UInt32.max))",
                            "--steps", "1", "--threads", "2"] + extra)
        }

        var r = try train(try file("malformed.jsonl", good + "\n" + good + "\n{\"prompt\": \"x\", \n"))
        #expect(r.0 == 2 && r.2.contains("line 3"), "malformed JSON: \(r)")
        r = try train(try file("role.jsonl", good + "\n" + #"{"messages": [{"role": "robot", "content": "hi"}]}"# + "\n"))
        #expect(r.0 == 2 && r.2.contains("line 2") && r.2.contains("role"), "unknown role: \(r)")
        r = try train(try file("empty.jsonl", #"{"prompt": "a", "completion": ""}"# + "\n"))
        #expect(r.0 == 2 && r.2.contains("line 1") && r.2.contains("completion"), "empty completion: \(r)")
        let long = try file("long.jsonl", good + "\n" + #"{"prompt": "one two three four five six seven eight nine ten eleven twelve", "completion": " b"}"# + "\n")
        r = try train(long, ["--max-seq-len", "8"])
        #expect(r.0 == 2 && r.2.contains("line 2") && r.2.contains("limit"), "over the limit: \(r)")

        // An init adapter whose shapes do not fit the base: lora_a of attn_q with n_in 100 instead of n_embd.
        var w = GGUFWriter()
        w.set("general.architecture", .string("gemma3"))
        w.set("general.type", .string("adapter"))
        w.set("adapter.type", .string("lora"))
        w.set("adapter.lora.alpha", .float32(8))
        try w.addTensor(name: "blk.0.attn_q.weight.lora_a", dims: [100, 4], floats: [Float](repeating: 0.01, count: 400))
        try w.addTensor(name: "blk.0.attn_q.weight.lora_b", dims: [4, 1024], floats: [Float](repeating: 0, count: 4096))
        try w.write(to: dir + "/misfit.gguf")
        let goodData = try file("good.jsonl", good + "\n")
        r = try train(goodData, ["--init-adapter", dir + "/misfit.gguf"])
        #expect(r.0 == 2 && r.2.contains("--init-adapter"), "misfit adapter: \(r)")

        // Output folders that cannot be written: a regular file, a folder below a regular file, /proc.
        let plain = try file("plain", "x")
        r = try train(goodData, out: plain)
        #expect(r.0 == 1 && r.2.contains("not a folder"), "out is a file: \(r)")
        r = try train(goodData, out: plain + "/sub")
        #expect(r.0 == 1 && r.2.contains("cannot create the output folder"), "out below a file: \(r)")
        r = try train(goodData, out: "/proc/self")
        #expect(r.0 == 1 && r.2.contains("/proc/self"), "out in /proc: \(r)")

        // Usage errors: exit 2 with the flag named.
        r = try train(goodData, ["--epochs", "1"])
        #expect(r.0 == 2 && r.2.contains("--epochs or --steps"), "\(r)")
        r = try train(goodData, ["--targets", "attn_z"])
        #expect(r.0 == 2 && r.2.contains("attn_z"), "\(r)")
        r = try train(goodData, ["--no-such-flag"])
        #expect(r.0 == 2, "\(r)")
        r = try train(dir + "/absent.jsonl")
        #expect(r.0 == 2 && r.2.contains("absent.jsonl"), "\(r)")
    }
}
