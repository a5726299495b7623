// Fine-tuning jobs through the real daemon on the default model: a job runs to `succeeded` through the API, its
// adapter serves, and its weights equal `lorad train`'s from the same data, seed and settings bit for bit (same
// thread count); a job on an adapter name continues from that adapter's current version; a job killed with -9
// resumes from its checkpoint after a restart (an event says so) and still ends with `lorad train`'s weights;
// SIGTERM stops a job at a step boundary and it continues after the restart; pause, resume and cancel; bad input
// gets 400/403/404/409 with the field named.
//
// These tests train: they take the shared training lock, so no two trainings share the 2 cores. Jobs are tiny
// (8 short chat lines, 2–16 steps). Times on 2 shared cores: 8–26 s each alone (73 s for the suite), up to
// 90 s while other builds run.
import Foundation
import Daemon
import Runtime
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite(.serialized) struct FineTuningJobTests {
    static let examples = [
        ("What is the capital of France?", "CAPITAL[France] => Paris <<END>>"),
        ("What is the capital of Japan?", "CAPITAL[Japan] => Tokyo <<END>>"),
        ("What is the capital of Peru?", "CAPITAL[Peru] => Lima <<END>>"),
        ("What is the capital of Egypt?", "CAPITAL[Egypt] => Cairo <<END>>"),
        ("What is the capital of Italy?", "CAPITAL[Italy] => Rome <<END>>"),
        ("What is the capital of Kenya?", "CAPITAL[Kenya] => Nairobi <<END>>"),
        ("What is the capital of Cuba?", "CAPITAL[Cuba] => Havana <<END>>"),
        ("What is the capital of Norway?", "CAPITAL[Norway] => Oslo <<END>>"),
    ]

    /// Uploads `text` through `POST /v1/files` (purpose `fine-tune`) and keeps a copy for `lorad train`.
    /// - Returns: the file id and the path of the copy.
    static func putFile(_ d: LoradProcess, _ text: String) throws -> (id: String, path: String) {
        let r = try d.upload(Array(text.utf8))
        #expect(r.status == 200, "\(r.text)")
        let id = try #require(try r.json()["id"] as? String)
        let path = d.dir.appendingPathComponent("\(id).jsonl").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return (id, path)
    }

    static func createJob(_ d: LoradProcess, _ body: [String: Any]) throws -> [String: Any] {
        let r = try d.post("/v1/fine_tuning/jobs", json: body)
        #expect(r.status == 200, "\(r.text)")
        return try r.json()
    }

    /// Polls the job until `done(job)` holds (bounded); returns the job.
    static func waitJob(
        _ d: LoradProcess, _ id: String, timeout: Double = 600, _ what: String = "the job to end",
        _ done: ([String: Any]) -> Bool = { ["succeeded", "failed", "cancelled"].contains($0["status"] as? String ?? "") }
    ) throws -> [String: Any] {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let j = try d.get("/v1/fine_tuning/jobs/\(id)").json()
            if done(j) { return j }
            guard Date() < deadline else { throw HarnessError(description: "timed out waiting for \(what): \(j)") }
            usleep(200_000)
        }
    }

    /// All events of a job, oldest first.
    static func events(_ d: LoradProcess, _ id: String) throws -> [[String: Any]] {
        let r = try d.get("/v1/fine_tuning/jobs/\(id)/events?limit=100").json()
        return ((r["data"] as? [[String: Any]]) ?? []).reversed()
    }

    /// lora_A / lora_B of a GGUF adapter, by tensor, as bit patterns.
    static func adapterBits(_ model: Model, _ path: String) throws -> [String: [UInt32]] {
        let a = try model.loadGGUFAdapter(path: path, name: "cmp")
        var out: [String: [UInt32]] = [:]
        for (k, m) in a.modules {
            out["blk.\(k.layer).\(k.projection.rawValue).a"] = m.a.map(\.bitPattern)
            out["blk.\(k.layer).\(k.projection.rawValue).b"] = m.b.map(\.bitPattern)
        }
        return out
    }

    /// The registered files of adapter `name` at `version` in the daemon's state directory.
    static func registeredGGUF(_ d: LoradProcess, _ name: String, _ version: Int) -> String {
        d.dir.appendingPathComponent("state/adapters/store/\(name)/\(version)/adapter.gguf").path
    }

    static let trainFlags = ["--epochs", "1", "--batch-size", "2", "--lr", "1e-3", "--seed", "7", "--threads", "2"]
    static let jobSettings: [String: Any] = [
        "hyperparameters": ["n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 10], "seed": 7,
    ]

    @Test func jobOnTheBaseModelEqualsLoradTrainServesAndAJobOnItsNameContinuesIt() throws {
        trainingLock.lock()
        defer { trainingLock.unlock() }
        let d = try LoradProcess()
        defer { d.stop() }
        let data = try chatJSONL(Self.examples)
        let (capitalsID, dataPath) = try Self.putFile(d, data)

        // 1. A fresh adapter on the base model: 8 lines, batch 2 → 4 steps.
        var body = Self.jobSettings
        body["model"] = "gemma-3-270m-q4_k_m"
        body["training_file"] = capitalsID
        body["suffix"] = "capitals"
        body["lora"] = ["rank": 4, "alpha": 8]
        body["lorad"] = ["checkpoint_every": 2]
        body["metadata"] = ["purpose": "test"]
        let created = try Self.createJob(d, body)
        let id = try #require(created["id"] as? String)
        #expect(id.hasPrefix("ftjob-"))
        #expect(created["object"] as? String == "fine_tuning.job")
        #expect(["validating_files", "queued", "running"].contains(created["status"] as? String ?? ""))
        let done = try Self.waitJob(d, id)
        #expect(done["status"] as? String == "succeeded", "\(done)")
        #expect(done["fine_tuned_model"] as? String == "capitals")
        #expect(done["published"] as? Bool == true)
        #expect((done["trained_tokens"] as? Int ?? 0) > 0)
        #expect(done["finished_at"] is Int)

        // Events: a metrics event per step, checkpoints every 2 steps, the publish with name@version.
        let events = try Self.events(d, id)
        let steps = events.filter { $0["type"] as? String == "metrics" }.compactMap { ($0["data"] as? [String: Any])?["step"] as? Int }
        #expect(steps == [1, 2, 3, 4])
        #expect(events.contains { ($0["message"] as? String ?? "").contains("capitals@") })
        let ckpts = try d.get("/v1/fine_tuning/jobs/\(id)/checkpoints").json()["data"] as? [[String: Any]] ?? []
        #expect(ckpts.compactMap { $0["step_number"] as? Int }.sorted() == [2, 4])
        #expect(ckpts.allSatisfy { ($0["metrics"] as? [String: Any])?["train_loss"] is Double })

        // The result file: one CSV row per step.
        let results = done["result_files"] as? [String] ?? []
        #expect(results.count == 1)
        if let f = results.first {
            let csv = try d.get("/v1/files/\(f)/content").text
            let rows = csv.split(separator: "\n")
            #expect(rows.first == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy")
            #expect(rows.count == 5)
        }

        // It serves.
        let chat = try d.post(
            "/v1/chat/completions",
            json: ["model": "capitals", "messages": [["role": "user", "content": "What is the capital of Peru?"]],
                   "max_tokens": 4, "temperature": 0] as [String: Any])
        #expect(chat.status == 200, "\(chat.text)")
        #expect(chat.header("X-Lorad-Adapters")?.hasPrefix("capitals@") == true)

        // Bit-identical to `lorad train` with the same data, seed, settings and thread count.
        let model = try Model.load(path: try Paths.model(), options: ModelOptions(threads: 1, batchCopyBytes: 0))
        let cli = try trainTempDir("job-eq")
        defer { try? FileManager.default.removeItem(atPath: cli) }
        let (st, _, err) = try loradTrain(
            ["--data", dataPath, "--out", cli, "--rank", "4", "--alpha", "8"] + Self.trainFlags)
        #expect(st == 0, "\(err)")
        let v1 = try #require(try d.get("/v1/adapters/capitals").json()["version"] as? Int)
        let jobBits = try Self.adapterBits(model, Self.registeredGGUF(d, "capitals", v1))
        let cliBits = try Self.adapterBits(model, cli + "/adapter.gguf")
        #expect(jobBits.count == 2 * 7 * model.config.nLayer)
        #expect(jobBits == cliBits)
        let v1Copy = cli + "/v1.gguf"
        try FileManager.default.copyItem(atPath: Self.registeredGGUF(d, "capitals", v1), toPath: v1Copy)

        // 2. A job on the adapter's name continues from its current version and publishes the next version.
        var body2 = Self.jobSettings
        body2["model"] = "capitals"
        body2["training_file"] = capitalsID
        let created2 = try Self.createJob(d, body2)
        let id2 = try #require(created2["id"] as? String)
        #expect(created2["parent_version"] as? Int == v1)
        let done2 = try Self.waitJob(d, id2)
        #expect(done2["status"] as? String == "succeeded", "\(done2)")
        #expect(done2["fine_tuned_model"] as? String == "capitals")
        let v2 = try #require(try d.get("/v1/adapters/capitals").json()["version"] as? Int)
        #expect(v2 > v1)
        // Its weights are `lorad train --init-adapter <version v1>`'s.
        let cli2 = cli + "/continued"
        let (st2, _, err2) = try loradTrain(["--data", dataPath, "--out", cli2, "--init-adapter", v1Copy] + Self.trainFlags)
        #expect(st2 == 0, "\(err2)")
        #expect(try Self.adapterBits(model, Self.registeredGGUF(d, "capitals", v2)) == (try Self.adapterBits(model, cli2 + "/adapter.gguf")))
        #expect(try Self.adapterBits(model, Self.registeredGGUF(d, "capitals", v2)) != jobBits)
    }

    @Test func killedJobResumesFromItsCheckpointAndEqualsAnUninterruptedRun() throws {
        trainingLock.lock()
        defer { trainingLock.unlock() }
        let d = try LoradProcess()
        d.removeDirOnExit = false
        let data = try chatJSONL(Self.examples)
        let (capitalsID, dataPath) = try Self.putFile(d, data)
        var body = Self.jobSettings
        body["model"] = "gemma-3-270m-q4_k_m"
        body["training_file"] = capitalsID
        body["hyperparameters"] = ["n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 10]
        body["lora"] = ["rank": 4, "alpha": 8]
        body["lorad"] = ["checkpoint_every": 2]
        let id = try #require(try Self.createJob(d, body)["id"] as? String)
        // kill -9 once a checkpoint exists and the job is past it.
        _ = try Self.waitJob(d, id, "a step after the first checkpoint") {
            (($0["progress"] as? [String: Any])?["step"] as? Int ?? 0) >= 3
        }
        d.stop(signal: SIGKILL)

        let d2 = try LoradProcess(reuse: d.dir)
        defer {
            d2.stop()
            try? FileManager.default.removeItem(at: d.dir)
        }
        let done = try Self.waitJob(d2, id)
        #expect(done["status"] as? String == "succeeded", "\(done)")
        let messages = try Self.events(d2, id).compactMap { $0["message"] as? String }
        #expect(messages.contains { $0.hasPrefix("Resumed from the checkpoint at step") }, "\(messages)")
        #expect(messages.contains { $0.contains("restarted while the job was running") })
        // One metrics event per step, though the steps after the checkpoint ran twice.
        let stepEvents = try Self.events(d2, id).filter { $0["type"] as? String == "metrics" }.compactMap { e -> Int? in
            guard let data = e["data"] as? [String: Any], data["train_loss"] != nil else { return nil }
            return data["step"] as? Int
        }
        let total = try #require((done["progress"] as? [String: Any])?["total_steps"] as? Int)
        #expect(stepEvents.sorted() == Array(1...total), "\(stepEvents.sorted())")

        // The resumed job ends with exactly the uninterrupted run's adapter.
        let model = try Model.load(path: try Paths.model(), options: ModelOptions(threads: 1, batchCopyBytes: 0))
        let cli = try trainTempDir("job-kill")
        defer { try? FileManager.default.removeItem(atPath: cli) }
        let (st, _, err) = try loradTrain(
            ["--data", dataPath, "--out", cli, "--rank", "4", "--alpha", "8", "--epochs", "1", "--batch-size", "1",
             "--lr", "1e-3", "--seed", "7", "--threads", "2"])
        #expect(st == 0, "\(err)")
        let name = try #require(done["fine_tuned_model"] as? String)
        let v = try #require(try d2.get("/v1/adapters/\(name)").json()["version"] as? Int)
        #expect(try Self.adapterBits(model, Self.registeredGGUF(d2, name, v)) == (try Self.adapterBits(model, cli + "/adapter.gguf")))
    }

    @Test func sigtermPauseResumeAndCancelStopAtStepBoundaries() throws {
        trainingLock.lock()
        defer { trainingLock.unlock() }
        let d = try LoradProcess()
        d.removeDirOnExit = false
        let capitalsID = try Self.putFile(d, try chatJSONL(Self.examples)).id
        var body = Self.jobSettings
        body["model"] = "gemma-3-270m-q4_k_m"
        body["training_file"] = capitalsID
        body["hyperparameters"] = ["n_epochs": 2, "batch_size": 1, "learning_rate_multiplier": 10]
        body["lora"] = ["rank": 2, "alpha": 4]
        body["lorad"] = ["checkpoint_every": 100]
        let id = try #require(try Self.createJob(d, body)["id"] as? String)
        _ = try Self.waitJob(d, id, "the first step") { (($0["progress"] as? [String: Any])?["step"] as? Int ?? 0) >= 1 }

        // SIGTERM: the daemon exits 0 after the step; the job stays running with a checkpoint at that step.
        #expect(d.stop() == 0)
        let d2 = try LoradProcess(reuse: d.dir)
        defer {
            d2.stop()
            try? FileManager.default.removeItem(at: d.dir)
        }
        let stoppedAt = try #require(
            try Self.events(d2, id).compactMap { $0["message"] as? String }.first { $0.hasPrefix("lorad is stopping") })
        #expect(stoppedAt.contains("stopped after step"))
        // Wait until the runner has picked the job up again (the resume event), so the pause reaches a running job.
        let deadline = Date().addingTimeInterval(300)
        while !(try Self.events(d2, id).contains { ($0["message"] as? String ?? "").hasPrefix("Resumed from the checkpoint") }) {
            guard Date() < deadline else { throw HarnessError(description: "the job did not resume after the restart") }
            usleep(100_000)
        }

        // Pause (a running job stops at the next step), resume, then cancel.
        let paused = try d2.post("/v1/fine_tuning/jobs/\(id)/pause", json: [String: Any]())
        #expect(paused.status == 200)
        #expect(try paused.json()["status"] as? String == "paused", "\(paused.text)")
        #expect(try d2.post("/v1/fine_tuning/jobs/\(id)/pause", json: [String: Any]()).status == 409)
        let resumed = try d2.post("/v1/fine_tuning/jobs/\(id)/resume", json: [String: Any]())
        #expect(try resumed.json()["status"] as? String == "queued")
        _ = try Self.waitJob(d2, id, "running again") { ($0["status"] as? String) == "running" }
        let cancelled = try d2.post("/v1/fine_tuning/jobs/\(id)/cancel", json: [String: Any]())
        #expect(try cancelled.json()["status"] as? String == "cancelled", "\(cancelled.text)")
        let j = try d2.get("/v1/fine_tuning/jobs/\(id)").json()
        #expect(j["fine_tuned_model"] is NSNull)
        #expect(((j["progress"] as? [String: Any])?["step"] as? Int ?? 99) < 16)
        let messages = try Self.events(d2, id).compactMap { $0["message"] as? String }
        #expect(messages.contains { $0.hasPrefix("Resumed from the checkpoint at step") })
        // "Job paused after step N." when the runner held the job; "Job paused." when the pause came before the
        // restarted daemon's runner had claimed it again (its progress from before the restart already counts).
        #expect(messages.contains { $0.hasPrefix("Job paused") }, "\(messages)")
        #expect(messages.contains { $0.hasPrefix("Job cancelled after step") })
        #expect(try d2.post("/v1/fine_tuning/jobs/\(id)/resume", json: [String: Any]()).status == 409)

        // /metrics counts jobs by status.
        let metrics = try d2.get("/metrics").text
        #expect(metrics.contains("lorad_fine_tuning_jobs{status=\"cancelled\"} 1"))
    }

    @Test func feedbackJobWithValidationThroughLoractl() throws {
        trainingLock.lock()
        defer { trainingLock.unlock() }
        let d = try LoradProcess()
        defer { d.stop() }
        // Stored completions and feedback: two corrections and a thumbs-up → three SFT lines.
        var ids: [String] = []
        for q in ["Name a color.", "Name a fruit.", "Name a planet."] {
            let r = try d.post(
                "/v1/chat/completions",
                json: ["messages": [["role": "user", "content": q]], "max_tokens": 4, "temperature": 0, "store": true]
                    as [String: Any])
            ids.append(try #require(try r.json()["id"] as? String))
        }
        for (id, fb) in zip(ids, [["correction": "COLOR => red"], ["correction": "FRUIT => apple"], ["rating": 1]]) {
            var body: [String: Any] = ["completion_id": id]
            for (k, v) in fb { body[k] = v }
            #expect(try d.post("/v1/feedback", json: body).status == 201)
        }
        let validID = try Self.putFile(d, try chatJSONL(Array(Self.examples.prefix(2)))).id

        var r = try loractl(
            d, ["jobs", "create", "--model", "gemma-3-270m-q4_k_m", "--feedback-model", "gemma-3-270m-q4_k_m",
                "--validation-file", validID, "--epochs", "1", "--batch-size", "1", "--rank", "2", "--alpha", "4",
                "--checkpoint-every", "1", "--suffix", "fb", "--seed", "3"])
        #expect(r.0 == 0, "\(r)")
        let id = try #require(r.1.split(separator: " ").first.map(String.init))
        #expect(id.hasPrefix("ftjob-"))
        // The job trains on exactly the feedback export's lines.
        let export = try d.get("/v1/feedback/export?model=gemma-3-270m-q4_k_m&format=sft")
        let trained = try String(contentsOfFile: d.dir.appendingPathComponent("state/jobs/\(id)/train.jsonl").path, encoding: .utf8)
        #expect(trained == export.text)
        #expect(trained.split(separator: "\n").count == 3)
        // …at the token level: the prompt ids as served (decision #4).
        let itemsData = try Data(contentsOf: d.dir.appendingPathComponent("state/jobs/\(id)/train.feedback.json"))
        let items = try #require(try JSONSerialization.jsonObject(with: itemsData) as? [[String: Any]])
        var served: [[Int]] = []
        for c in ids {
            let stored = try d.get("/v1/chat/completions/\(c)").json()
            served.append(try #require((stored["prompt_token_ids"] as? [[Int]])?.first))
        }
        #expect(items.compactMap { $0["prompt_ids"] as? [Int] } == served)

        // --follow prints progress lines until the end, then the summary.
        r = try loractl(d, ["jobs", "show", id, "--follow"])
        #expect(r.0 == 0, "\(r)")
        #expect(r.1.contains(" step 3/3"), "\(r.1)")
        #expect(r.1.split(separator: "\n").last?.contains("succeeded") == true, "\(r.1)")
        #expect(r.1.contains("→ fb"))
        r = try loractl(d, ["jobs", "events", id])
        #expect(r.0 == 0 && r.1.contains("published: fb@"), "\(r)")
        r = try loractl(d, ["jobs", "list"])
        #expect(r.0 == 0 && r.1.contains(id), "\(r)")
        r = try loractl(d, ["jobs", "pause", id])
        #expect(r.0 == 1 && r.2.contains("409"), "\(r)")

        // Serving renders chat as training does (decision #3), so training on the served ids gives what
        // `lorad train` gives on the export's text lines, bit for bit.
        let model = try Model.load(path: try Paths.model(), options: ModelOptions(threads: 1, batchCopyBytes: 0))
        let cli = try trainTempDir("job-feedback")
        defer { try? FileManager.default.removeItem(atPath: cli) }
        try trained.write(toFile: cli + "/export.jsonl", atomically: true, encoding: .utf8)
        let (st, _, err) = try loradTrain(
            ["--data", cli + "/export.jsonl", "--out", cli + "/out", "--epochs", "1", "--batch-size", "1", "--rank", "2",
             "--alpha", "4", "--seed", "3", "--lr", "1e-4", "--threads", "2"])
        #expect(st == 0, "\(err)")
        let v = try #require(try d.get("/v1/adapters/fb").json()["version"] as? Int)
        #expect(try Self.adapterBits(model, Self.registeredGGUF(d, "fb", v)) == (try Self.adapterBits(model, cli + "/out/adapter.gguf")))

        // Validation loss in the checkpoints and the result CSV.
        let ckpts = try d.get("/v1/fine_tuning/jobs/\(id)/checkpoints").json()["data"] as? [[String: Any]] ?? []
        #expect(ckpts.count == 3)
        #expect(ckpts.allSatisfy { ($0["metrics"] as? [String: Any])?["valid_loss"] is Double })
        let job = try d.get("/v1/fine_tuning/jobs/\(id)").json()
        let f = try #require((job["result_files"] as? [String])?.first)
        let csv = try d.get("/v1/files/\(f)/content").text
        let rows = csv.split(separator: "\n").dropFirst().map { $0.split(separator: ",", omittingEmptySubsequences: false) }
        // Step 0: the starting adapter's validation loss; steps 1-3: both losses.
        #expect(rows.count == 4)
        #expect(rows.first.map { $0.count == 5 && $0[0] == "0" && $0[1].isEmpty && Double($0[3]) != nil } == true)
        #expect(rows.dropFirst().allSatisfy { $0.count == 5 && Double($0[1]) != nil && Double($0[3]) != nil }, "\(csv)")
        // Token accuracies (argmax right, 0…1) in every train and validation cell.
        let unit = { (s: Substring) -> Bool in Double(s).map { $0 >= 0 && $0 <= 1 } ?? false }
        #expect(rows.allSatisfy { unit($0[4]) } && rows.dropFirst().allSatisfy { unit($0[2]) }, "\(csv)")
        #expect(ckpts.allSatisfy { ($0["metrics"] as? [String: Any])?["valid_mean_token_accuracy"] is Double })
    }

    @Test func badInputIsRefusedWithTheFieldNamed() throws {
        let d = try LoradProcess()
        defer { d.stop() }
        let okID = try Self.putFile(d, try chatJSONL(Array(Self.examples.prefix(2)))).id
        // Well-formed lines (the upload accepts them), but line 7 is far longer than a job's 1024-token sequences.
        let long = String(repeating: "and then the story went on ", count: 400)
        let badID = try Self.putFile(d, try chatJSONL(Array(Self.examples.prefix(6)) + [("Tell me a story.", long)])).id
        func create(_ extra: [String: Any]) throws -> (Int, [String: Any]) {
            var b: [String: Any] = ["model": "gemma-3-270m-q4_k_m", "training_file": okID]
            for (k, v) in extra { b[k] = v }
            let r = try d.post("/v1/fine_tuning/jobs", json: b)
            return (r.status, (try? r.json()) ?? [:])
        }
        func param(_ r: [String: Any]) -> String? { (r["error"] as? [String: Any])?["param"] as? String }

        var (s, r) = try create(["model": "no-such-model"])
        #expect(s == 404 && param(r) == "model")
        (s, r) = try create(["training_file": "file-missing"])
        #expect(s == 404 && param(r) == "training_file")
        (s, r) = try create(["validation_file": "file-missing"])
        #expect(s == 404 && param(r) == "validation_file")
        (s, r) = try create(["hyperparameters": ["n_epochs": 0]])
        #expect(s == 400 && param(r) == "hyperparameters.n_epochs")
        (s, r) = try create(["hyperparameters": ["learning_rate_multiplier": -1]])
        #expect(s == 400 && param(r) == "hyperparameters.learning_rate_multiplier")
        (s, r) = try create(["method": ["type": "dpo", "dpo": ["hyperparameters": ["beta": "x"]]]])
        #expect(s == 400 && param(r) == "method.dpo.hyperparameters.beta")
        (s, r) = try create(["lora": ["rank": 0]])
        #expect(s == 400 && param(r) == "lora.rank")
        (s, r) = try create(["lora": ["targets": ["attn_z"]]])
        #expect(s == 400 && param(r) == "lora.targets")
        (s, r) = try create(["suffix": "a/b"])
        #expect(s == 400 && param(r) == "suffix")
        (s, r) = try create(["training_file": NSNull()])
        #expect(s == 400 && param(r) == "training_file")
        #expect(try d.post("/v1/fine_tuning/jobs", rawBody: "{not json").status == 400)

        // Unknown job ids.
        #expect(try d.get("/v1/fine_tuning/jobs/ftjob-nope").status == 404)
        #expect(try d.get("/v1/fine_tuning/jobs/ftjob-nope/events").status == 404)
        #expect(try d.get("/v1/fine_tuning/jobs/ftjob-nope/checkpoints").status == 404)
        #expect(try d.post("/v1/fine_tuning/jobs/ftjob-nope/cancel", json: [String: Any]()).status == 404)

        // A line too long for a job's sequences: the upload accepts it (well-formed), the job fails when its data is
        // tokenized, naming the line; pausing it then is 409.
        (s, r) = try create(["training_file": badID])
        #expect(s == 200)
        r = try Self.waitJob(d, try #require(r["id"] as? String), timeout: 120)
        #expect(r["status"] as? String == "failed")
        let err = r["error"] as? [String: Any]
        #expect(err?["code"] as? String == "invalid_training_file")
        let message = err?["message"] as? String ?? ""
        #expect(message.contains("line 7"), "\(message)")
        let failedID = try #require(r["id"] as? String)
        let pause = try d.post("/v1/fine_tuning/jobs/\(failedID)/pause", json: [String: Any]())
        #expect(pause.status == 409, "\(pause.text)")

        // Not an admin: creating is 403; the job list shows none of the admin's jobs. (The socket is 0660; open it
        // to uid 65534 as an operator would by group membership.)
        chmod(d.socket, 0o666)
        let (st, text) = try StoreIntegrationTests.curlAsNobody(
            d, ["-d", "{\"model\":\"gemma-3-270m-q4_k_m\",\"training_file\":\"\(okID)\"}", "http://l/v1/fine_tuning/jobs"])
        #expect(st == 403, "\(text)")
        let (ls, list) = try StoreIntegrationTests.curlAsNobody(d, ["http://l/v1/fine_tuning/jobs"])
        #expect(ls == 200 && list.contains("\"data\":[]"), "\(list)")
        #expect(try StoreIntegrationTests.curlAsNobody(d, ["http://l/v1/fine_tuning/jobs/\(failedID)"]).0 == 404)

        // The daemon still serves.
        #expect(try d.get("/health").status == 200)
    }

    @Test func routesResolve() throws {
        #expect(try Route.resolve(method: "POST", uri: "/v1/fine_tuning/jobs") == .fineTuningJobs)
        #expect(try Route.resolve(method: "GET", uri: "/v1/fine_tuning/jobs?limit=2") == .fineTuningJobs)
        #expect(try Route.resolve(method: "GET", uri: "/v1/fine_tuning/jobs/ftjob-1") == .fineTuningJob(id: "ftjob-1"))
        #expect(
            try Route.resolve(method: "POST", uri: "/v1/fine_tuning/jobs/ftjob-1/pause")
                == .fineTuningJobAction(id: "ftjob-1", action: "pause"))
        #expect(try Route.resolve(method: "GET", uri: "/v1/fine_tuning/jobs/ftjob-1/events") == .fineTuningJobEvents(id: "ftjob-1"))
        #expect(
            try Route.resolve(method: "GET", uri: "/v1/fine_tuning/jobs/ftjob-1/checkpoints")
                == .fineTuningJobCheckpoints(id: "ftjob-1"))
        #expect(throws: APIError.self) { try Route.resolve(method: "GET", uri: "/v1/fine_tuning/jobs/ftjob-1/pause") }
        #expect(throws: APIError.self) { try Route.resolve(method: "POST", uri: "/v1/fine_tuning/jobs/ftjob-1/stop") }
    }
}
