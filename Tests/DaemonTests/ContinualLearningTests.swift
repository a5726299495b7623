// Continual learning through the API only, on the real model: an adapter learns a house answer format from the
// feedback on what it served (the policy's trigger starts the job, the gate publishes it), while another client
// streams from the base model and a second adapter with outputs unchanged; a damaging job is kept out by the
// gate; kill -9 at moments of the loop loses no acknowledged feedback, leaves no half-published version, and the
// loop carries on. The task and its phrases are in Fixtures/continual_tags.json (scripts/continual_demo.py runs
// the same task and prints the figures).
import Daemon
import Foundation
import Testing
import Train

#if canImport(Glibc)
import Glibc
#endif

/// The house-format task: "Tag: <phrase>" → "#" + the phrase with "_" for spaces.
struct TagTask: Decodable {
    var task: String
    var prompt: String
    var train: [String]
    var eval: [String]

    static func load() throws -> TagTask {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Fixtures/continual_tags.json")
        return try JSONDecoder().decode(TagTask.self, from: Data(contentsOf: url))
    }

    static func expected(_ phrase: String) -> String { "#" + phrase.replacingOccurrences(of: " ", with: "_") }

    /// A greedy chat answer of `model` to the phrase; `store` nil leaves it to the adapter's policy.
    func ask(_ d: LoradProcess, _ model: String, _ phrase: String, store: Bool?) throws -> (id: String, text: String) {
        var body: [String: Any] = [
            "model": model, "messages": [["role": "user", "content": prompt.replacingOccurrences(of: "{phrase}", with: phrase)]],
            "max_tokens": 16, "temperature": 0,
        ]
        if let store { body["store"] = store }
        let r = try d.post("/v1/chat/completions", json: body)
        guard r.status == 200 else { throw HarnessError(description: "chat: \(r.status) \(r.text)") }
        let j = try r.json()
        let text = ((j["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any])?["content"] as? String ?? ""
        return (j["id"] as? String ?? "", text)
    }

    /// Exact-match accuracy of `model` on the held-out phrases (not stored).
    func accuracy(_ d: LoradProcess, _ model: String) throws -> Double {
        var hits = 0
        for p in eval where try ask(d, model, p, store: false).text.trimmingCharacters(in: .whitespacesAndNewlines) == Self.expected(p) {
            hits += 1
        }
        return Double(hits) / Double(eval.count)
    }

    /// Asks about `phrase` (stored by the policy) and posts a correction when the answer is wrong, a thumbs-up when
    /// it is right. Returns the feedback id (nil when the post was not acknowledged).
    func teach(_ d: LoradProcess, _ model: String, _ phrase: String, correction: String? = nil) throws -> String? {
        let (id, text) = try ask(d, model, phrase, store: nil)
        let want = correction ?? Self.expected(phrase)
        var fb: [String: Any] = ["completion_id": id]
        if text.trimmingCharacters(in: .whitespacesAndNewlines) == want { fb["rating"] = 1 } else { fb["correction"] = want }
        let r = try d.post("/v1/feedback", json: fb)
        guard r.status == 201 else { throw HarnessError(description: "feedback: \(r.status) \(r.text)") }
        return try r.json()["id"] as? String
    }
}

/// Jobs the loop made for `name`, newest first.
func continualJobs(_ d: LoradProcess, _ name: String) throws -> [[String: Any]] {
    let all = try d.get("/v1/fine_tuning/jobs?limit=100").json()["data"] as? [[String: Any]] ?? []
    return all.filter { ($0["metadata"] as? [String: Any])?["continual"] as? String == name }
}

/// Waits (bounded) until `name` has `count` continual jobs and the newest has ended; returns it.
func waitContinualJob(_ d: LoradProcess, _ name: String, count: Int, timeout: Double = 900) throws -> [String: Any] {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        let jobs = try continualJobs(d, name)
        if jobs.count >= count, let j = jobs.first, ["succeeded", "failed", "cancelled"].contains(j["status"] as? String ?? "") {
            return j
        }
        guard Date() < deadline else { throw HarnessError(description: "no finished continual job #\(count) of \(name): \(jobs)") }
        usleep(500_000)
    }
}

/// A client that streams greedy completions from the base model and an adapter, paced, until stopped, and
/// compares every output with the first one it got for that (model, prompt).
final class BackgroundStreams: @unchecked Sendable {
    let stop = Box(false)
    let errors = Box([String]())
    let mismatches = Box([String]())
    let count = Box(0)
    private let done = DispatchSemaphore(value: 0)

    init(_ d: LoradProcess, models: [String?], prompts: [String], baseline: [String: [Int]]) {
        Thread { [self] in
            defer { done.signal() }
            var i = 0
            while !stop.with({ $0 }) {
                let model = models[i % models.count]
                let prompt = prompts[(i / models.count) % prompts.count]
                let key = "\(model ?? "base")|\(prompt)"
                do {
                    let ids = try d.greedy(model: model, prompt: prompt, maxTokens: 12, stream: true).ids
                    if ids != baseline[key] { mismatches.with { $0.append("\(key): \(ids) vs \(baseline[key] ?? [])") } }
                    count.with { $0 += 1 }
                } catch {
                    errors.with { $0.append("\(key): \(error)") }
                }
                i += 1
                usleep(300_000)  // paced, as a real client (LEARNING-DECISIONS #8)
            }
        }.start()
    }

    /// Stops the client and waits for it (once; later calls return at once).
    func finish() {
        let first = stop.with { s -> Bool in
            defer { s = true }
            return !s
        }
        if first { done.wait() }
    }
}

@Suite(.serialized) struct ContinualLearningTests {
    static let base = "gemma-3-270m-q4_k_m"

    static func policy(minNew: Int, lrMultiplier: Double, epochs: Int = 2, holdout: Double = 0.15) -> [String: Any] {
        [
            "store_completions": true, "trigger": ["min_new_feedback": minNew], "method": "auto",
            "replay_fraction": 0.3, "holdout_fraction": holdout,
            "hyperparameters": ["n_epochs": epochs, "batch_size": 4, "learning_rate_multiplier": lrMultiplier],
            "gate": ["min_improvement": 0.05, "max_forgetting": 0.02],
        ]
    }

    @Test func anAdapterLearnsTheHouseFormatFromItsFeedbackWhileServingAndTheGateKeepsADamagingJobOut() throws {
        trainingLock.lock()
        defer { trainingLock.unlock() }
        let task = try TagTask.load()
        let ref = try AdapterFixtures.referenceGGUF()
        let d = try LoradProcess(extra: ["--adapter-import-dir", (ref as NSString).deletingLastPathComponent])
        defer { d.stop() }
        _ = try d.register("other", path: ref)

        // Another client streams from the base model and from a second adapter all along.
        let prompts = ["The capital of France is", "def fibonacci(n):"]
        var baseline: [String: [Int]] = [:]
        for m in [nil, "other"] as [String?] {
            for p in prompts { baseline["\(m ?? "base")|\(p)"] = try d.greedy(model: m, prompt: p, maxTokens: 12, stream: true).ids }
        }
        let background = BackgroundStreams(d, models: [nil, "other"], prompts: prompts, baseline: baseline)
        defer { background.finish() }

        // Bad input: a policy with an invalid value names the field; an unknown adapter's policy is 404.
        let bad = try d.raw(HTTP.request(
            method: "PUT", path: "/v1/adapters/tagger/training",
            body: Array(#"{"trigger": {"min_interval": "soon"}}"#.utf8)))
        #expect(bad.status == 400 && bad.text.contains("trigger.min_interval"), "\(bad.text)")
        #expect(try d.get("/v1/adapters/nosuch/training").status == 404)

        // 1. A policy on a name with no version yet: it serves the base model and stores what it serves.
        let put = try d.raw(HTTP.request(
            method: "PUT", path: "/v1/adapters/tagger/training",
            body: Array(try JSONSerialization.data(withJSONObject: Self.policy(minNew: task.train.count, lrMultiplier: 1)))))
        #expect(put.status == 200, "\(put.text)")
        let t0 = Date()
        let before = try task.accuracy(d, "tagger")
        #expect(before <= 0.2, "the base model already answers in the house format: \(before)")

        // 2. Clients use it and give feedback; the policy's trigger starts a job by itself; the gate publishes.
        var corrections = 0
        for p in task.train {
            _ = try task.teach(d, "tagger", p)
            corrections += 1
        }
        let stored = try d.get("/v1/chat/completions?model=tagger&limit=100").json()["data"] as? [[String: Any]] ?? []
        #expect(stored.count == task.train.count, "store_completions stores every request the policy covers")
        let job = try waitContinualJob(d, "tagger", count: 1)
        let meta = job["metadata"] as? [String: Any] ?? [:]
        #expect(job["status"] as? String == "succeeded" && job["published"] as? Bool == true, "\(job)")
        #expect((meta["trigger"] as? String ?? "").hasPrefix("min_new_feedback"), "\(meta)")
        #expect(job["fine_tuned_model"] as? String == "tagger")
        let versions = try d.get("/v1/adapters/tagger/versions").json()["data"] as? [[String: Any]] ?? []
        #expect(versions.count == 1, "\(versions)")
        let v1 = versions.first ?? [:]
        #expect(v1["job_id"] as? String == job["id"] as? String && v1["parent_version"] is NSNull, "\(v1)")
        let range = (v1["data_range"] as? [String: Any])?["training_source"] as? [String: Any]
        #expect((range?["feedback"] as? [String: Any])?["through_seq"] as? Int != nil, "\(v1)")
        let gate = v1["gate"] as? [String: Any] ?? [:]
        let forgetting = gate["forgetting"] as? Double ?? 1
        let improvement = gate["improvement"] as? Double ?? 0
        #expect(gate["passed"] as? Bool == true && forgetting <= 0.02 && improvement >= 0.05, "\(gate)")
        let after = try task.accuracy(d, "tagger")
        #expect(after >= 0.8, "held-out accuracy after learning: \(after)")
        let learnSeconds = Date().timeIntervalSince(t0)

        // 3. A damaging job: feedback that contradicts itself and a learning rate 100× too high. The gate keeps it
        // out; the served version and its outputs stay.
        let served = try task.eval.prefix(3).map { try task.ask(d, "tagger", $0, store: false).text }
        let put2 = try d.raw(HTTP.request(
            method: "PUT", path: "/v1/adapters/tagger/training",
            body: Array(try JSONSerialization.data(withJSONObject: Self.policy(minNew: 8, lrMultiplier: 100, epochs: 1, holdout: 0.15)))))
        #expect(put2.status == 200, "\(put2.text)")
        for p in task.train.prefix(4) {
            _ = try task.teach(d, "tagger", p, correction: "#" + p.replacingOccurrences(of: " ", with: "-").uppercased())
            _ = try task.teach(d, "tagger", p, correction: "tag is " + p.split(separator: " ").reversed().joined(separator: "/"))
        }
        let job2 = try waitContinualJob(d, "tagger", count: 2)
        #expect(job2["status"] as? String == "succeeded" && job2["published"] as? Bool == false, "\(job2)")
        let events = try FineTuningJobTests.events(d, job2["id"] as? String ?? "")
        let refusal = events.first { ($0["message"] as? String ?? "").contains("evaluation gate kept the current version") }
        #expect(refusal != nil, "\(events.map { $0["message"] ?? "" })")
        let versions2 = try d.get("/v1/adapters/tagger/versions").json()["data"] as? [[String: Any]] ?? []
        #expect(versions2.count == 1 && versions2.first?["version"] as? Int == v1["version"] as? Int)
        #expect(try task.eval.prefix(3).map { try task.ask(d, "tagger", $0, store: false).text } == served)

        // /metrics counts the jobs the policy started and the gate's decisions.
        let metrics = try d.get("/metrics").text
        #expect(metrics.contains("lorad_continual_jobs_started_total 2"), "\(metrics)")
        #expect(metrics.contains(#"lorad_gate_decisions_total{decision="published"} 1"#))
        #expect(metrics.contains(#"lorad_gate_decisions_total{decision="kept"} 1"#))

        background.finish()
        // Deleting the adapter pauses its policy: the name is 404 again, not served by the base model.
        #expect(try d.delete("/v1/adapters/tagger").status == 200)
        let paused = try d.get("/v1/adapters/tagger/training").json()
        #expect(paused["disabled_reason"] as? String == "the adapter was deleted", "\(paused)")
        #expect((try? task.ask(d, "tagger", task.eval[0], store: false)) == nil)
        #expect(background.errors.with { $0 }.isEmpty, "\(background.errors.with { $0 })")
        #expect(background.mismatches.with { $0 }.isEmpty, "\(background.mismatches.with { $0 })")
        #expect(background.count.with { $0 } > 10)
        print(String(
            format: "continual learning: held-out exact match %.0f%% -> %.0f%% (%d corrections), gate: held-out loss improvement %.1f%%, forgetting probe %+.2f%% (max 2%%), %.0f s; damaging job refused: %@; background streams: %d, 0 errors, 0 changed",
            before * 100, after * 100, corrections, improvement * 100, forgetting * 100, learnSeconds,
            (refusal?["message"] as? String ?? "").prefix(160).description, background.count.with { $0 }))
    }

    @Test func killNineDuringTheLoopLosesNoFeedbackAndNoVersionAndTheLoopCarriesOn() throws {
        trainingLock.lock()
        defer { trainingLock.unlock() }
        let task = try TagTask.load()
        var d = try LoradProcess()
        let dir = d.dir
        d.removeDirOnExit = false
        defer { try? FileManager.default.removeItem(at: dir) }
        func restart() throws {
            d.removeDirOnExit = false
            d.stop(signal: SIGKILL)
            d = try LoradProcess(reuse: dir)
            d.removeDirOnExit = false
        }
        let put = try d.raw(HTTP.request(
            method: "PUT", path: "/v1/adapters/tagger/training",
            body: Array(try JSONSerialization.data(withJSONObject: Self.policy(minNew: 16, lrMultiplier: 2, epochs: 1, holdout: 0.25)))))
        #expect(put.status == 200, "\(put.text)")
        let acknowledged = Box([String]())
        func checkFeedback() throws {
            let lost = try acknowledged.with { $0 }.filter { try d.get("/v1/feedback/\($0)").status != 200 }
            #expect(lost.isEmpty, "acknowledged feedback lost: \(lost)")
        }

        // 1. kill -9 while completions are stored and feedback is posted.
        let phrases = task.train
        let posting = Box(0)
        let first = d
        let poster = Thread {
            var i = 0
            while i < phrases.count {
                guard let id = try? task.teach(first, "tagger", phrases[i]) else { return }
                acknowledged.with { $0.append(id) }
                posting.with { $0 = i + 1 }
                i += 1
            }
        }
        poster.start()
        while posting.with({ $0 }) < 5 { usleep(50_000) }
        usleep(UInt32.random(in: 0...400_000))
        try restart()
        while poster.isExecuting { usleep(50_000) }
        try checkFeedback()
        var next = posting.with { $0 }
        // Enough feedback for the trigger.
        while acknowledged.with({ $0.count }) < 16 {
            if let id = try task.teach(d, "tagger", phrases[next]) { acknowledged.with { $0.append(id) } }
            next += 1
        }

        // 2. kill -9 while the job trains.
        let deadline = Date().addingTimeInterval(600)
        while true {
            let j = try continualJobs(d, "tagger").first
            if j?["status"] as? String == "running", ((j?["progress"] as? [String: Any])?["step"] as? Int ?? 0) >= 1 { break }
            guard Date() < deadline else { throw HarnessError(description: "the job did not start training") }
            usleep(200_000)
        }
        try restart()
        try checkFeedback()

        // 3. kill -9 after training, while the gate measures and the version is published.
        while true {
            let j = try continualJobs(d, "tagger").first ?? [:]
            let p = j["progress"] as? [String: Any] ?? [:]
            let total = p["total_steps"] as? Int ?? 0
            if ["succeeded", "failed"].contains(j["status"] as? String ?? "") || (total > 0 && p["step"] as? Int == total) { break }
            guard Date() < deadline else { throw HarnessError(description: "the job did not finish training: \(j)") }
            usleep(100_000)
        }
        usleep(UInt32.random(in: 0...3_000_000))
        try restart()
        try checkFeedback()

        // The job ends once, with one version or none, never a half-published one.
        let job = try waitContinualJob(d, "tagger", count: 1)
        let jobs = try continualJobs(d, "tagger")
        #expect(jobs.count == 1, "one trigger, one job: \(jobs.map { $0["id"] ?? "" })")
        #expect(job["status"] as? String == "succeeded", "\(job)")
        let versions = try d.get("/v1/adapters/tagger/versions").json()["data"] as? [[String: Any]] ?? []
        if job["published"] as? Bool == true {
            #expect(versions.count == 1 && versions.first?["job_id"] as? String == job["id"] as? String, "\(versions)")
            #expect(!(try task.ask(d, "tagger", task.eval[0], store: false).text.isEmpty))
        } else {
            #expect(versions.isEmpty, "\(versions)")
        }

        // The loop carries on after the restarts: new feedback starts the next job.
        while acknowledged.with({ $0.count }) < 32, next < phrases.count {
            if let id = try task.teach(d, "tagger", phrases[next]) { acknowledged.with { $0.append(id) } }
            next += 1
        }
        let second = Date().addingTimeInterval(60)
        while try continualJobs(d, "tagger").count < 2 {
            guard Date() < second else { throw HarnessError(description: "no second job after the restarts") }
            usleep(200_000)
        }
        try checkFeedback()

        // Deleting the policy cancels the continual job it started that has not ended (queued: at once; running: at
        // its next step), with an event that says why; jobs are otherwise left to the jobs API.
        let pending = try #require(try continualJobs(d, "tagger").first?["id"] as? String)
        #expect(try d.delete("/v1/adapters/tagger/training").status == 200)
        let stopBy = Date().addingTimeInterval(120)
        var ended = try d.get("/v1/fine_tuning/jobs/\(pending)").json()
        while ended["status"] as? String != "cancelled" && Date() < stopBy {
            usleep(200_000)
            ended = try d.get("/v1/fine_tuning/jobs/\(pending)").json()
        }
        #expect(ended["status"] as? String == "cancelled", "\(ended)")
        let why = try FineTuningJobTests.events(d, pending).compactMap { $0["message"] as? String }
        #expect(why.contains("Job cancelled: the adapter's training policy was deleted."), "\(why)")
        print("continual kill -9: \(acknowledged.with { $0.count }) acknowledged feedback kept over 3 kills; job \(job["id"] ?? "") \(job["status"] ?? ""), published \(job["published"] ?? ""); the next job \(pending) cancelled with its policy")
        d.stop()
    }
}

/// The continual job's data (`ContinualData.build`): a stable held-out split, new feedback vs the replay pool,
/// the replay share, `method: auto`'s 8-pair threshold, and the reasons it waits.
struct ContinualDataTests {
    static func feedback(_ n: Int, from: Int = 1) -> [SequencedFeedback] {
        (from..<(from + n)).map {
            SequencedFeedback(seq: $0, record: FeedbackRecord(
                id: "fb-\($0)", completionID: "c-\($0)", model: "m", createdAt: $0, uid: nil, rating: 1,
                correction: nil, comment: nil, metadata: [:]))
        }
    }

    /// One SFT item per record, or (`dpo`) one pair per record whose seq is divisible by `pairEvery`.
    static func items(pairEvery: Int) -> ([FeedbackRecord], Bool) async throws -> [FeedbackItem] {
        { records, dpo in
            records.compactMap { r in
                let seq = Int(r.id.dropFirst(3))!
                if dpo { return seq % pairEvery == 0 ? FeedbackItem(promptIDs: [2, Int32(seq)], chat: true, answer: "a", rejected: "b") : nil }
                return FeedbackItem(promptIDs: [2, Int32(seq)], chat: true, answer: "a\(seq)", rejected: nil)
            }
        }
    }

    /// The split key of the records `feedback(_:)` makes: record `fb-N` answered the prompt `[2, N]`.
    static func key(_ r: FeedbackRecord) -> String { ContinualData.splitKey(r, prompt: [2, Int32(r.id.dropFirst(3))!]) }

    /// All feedback on one served prompt falls on one side of the split (no prompt is both trained on and measured;
    /// a pair's thumbs stay together), whatever the feedback ids; feedback without a known completion splits by id.
    @Test func feedbackOnOnePromptStaysOnOneSide() async throws {
        var policy = TrainingPolicy()
        policy.method = .supervised
        policy.holdoutFraction = 0.3
        // 400 items on 40 prompts: item N answered prompt N % 40.
        let all = Self.feedback(400)
        let prompt = { (r: FeedbackRecord) -> [Int32] in [2, Int32(Int(r.id.dropFirst(3))! % 40)] }
        let d = try await ContinualData.build(
            feedback: all, publishedThrough: 0, policy: policy, seed: 1,
            splitKey: { ContinualData.splitKey($0, prompt: prompt($0)) }
        ) { records, _ in records.map { FeedbackItem(promptIDs: prompt($0), chat: true, answer: $0.id, rejected: nil) } }
        let held = Set(d.heldOut.map(\.promptIDs))
        let trained = Set(d.train.map(\.promptIDs))
        #expect(!held.isEmpty && !trained.isEmpty && held.isDisjoint(with: trained))
        #expect(held.count + trained.count == 40)
        #expect(d.heldOut.count == held.count * 10)
        // The key: the prompt's ids when the completion is known, else the feedback id.
        let r = all[0].record
        #expect(ContinualData.splitKey(r, prompt: [2, 7, 9]) == "prompt:2,7,9")
        #expect(ContinualData.splitKey(r, prompt: nil) == "feedback:fb-1")
        #expect(ContinualData.splitKey(r, prompt: []) == "feedback:fb-1")
    }

    @Test func splitReplayAndMethod() async throws {
        var policy = TrainingPolicy()
        policy.method = .supervised
        policy.holdoutFraction = 0.2
        policy.replayFraction = 0.25
        let all = Self.feedback(200)
        let d = try await ContinualData.build(
            feedback: all, publishedThrough: 150, policy: policy, seed: 1, splitKey: Self.key, toItems: Self.items(pairEvery: 1000))
        let heldOut = Set(d.heldOut.map { Int($0.promptIDs[1]) })
        // The split is the stable hash of the served prompt: the same items, whatever the window.
        #expect(heldOut == Set(all.filter { HoldoutSplit.isHeldOut(Self.key($0.record), fraction: 0.2) }.map(\.seq)))
        #expect(heldOut.count > 20 && heldOut.count < 60)
        let trained = d.train.map { Int($0.promptIDs[1]) }
        #expect(Set(trained).isDisjoint(with: heldOut))
        // New = every training-side item after seq 150; replay = older ones, a quarter of the whole.
        let newOnes = all.filter { $0.seq > 150 && !heldOut.contains($0.seq) }.count
        #expect(d.newExamples == newOnes && trained.prefix(newOnes).allSatisfy { $0 > 150 })
        #expect(trained.dropFirst(newOnes).allSatisfy { $0 <= 150 })
        #expect(d.replayExamples == Int((Double(newOnes) * 0.25 / 0.75).rounded()))
        #expect(d.methodType == "supervised" && d.pairs == 0 && d.waiting == nil)
        // The same state draws the same replay sample.
        let again = try await ContinualData.build(
            feedback: all, publishedThrough: 150, policy: policy, seed: 1, splitKey: Self.key, toItems: Self.items(pairEvery: 1000))
        #expect(again.train == d.train)

        // auto: pairs join at 8, not at 7.
        policy.method = .auto
        policy.replayFraction = 0
        let few = Self.feedback(70)
        let seven = try await ContinualData.build(
            feedback: few, publishedThrough: 0, policy: policy, seed: 1, splitKey: Self.key, toItems: Self.items(pairEvery: 10))
        let trainSide = few.filter { !HoldoutSplit.isHeldOut(Self.key($0.record), fraction: 0.2) && $0.seq % 10 == 0 }.count
        let many = Self.feedback(200)
        let more = try await ContinualData.build(
            feedback: many, publishedThrough: 0, policy: policy, seed: 1, splitKey: Self.key, toItems: Self.items(pairEvery: 10))
        if trainSide < 8 { #expect(seven.pairs == 0 && seven.methodType == "supervised") }
        #expect(more.pairs >= 8 && more.methodType == "dpo" && more.train.count == more.newExamples)

        // The gate measures at most the newest 200 held-out answers.
        var wide = policy
        wide.holdoutFraction = 0.5
        wide.method = .supervised
        let lots = Self.feedback(1000)
        let capped = try await ContinualData.build(
            feedback: lots, publishedThrough: 0, policy: wide, seed: 1, splitKey: Self.key, toItems: Self.items(pairEvery: 1000))
        let heldSeqs = lots.filter { HoldoutSplit.isHeldOut(Self.key($0.record), fraction: 0.5) }.map(\.seq)
        #expect(heldSeqs.count > 400)
        #expect(capped.heldOut.map { Int($0.promptIDs[1]) } == Array(heldSeqs.suffix(ContinualData.maxHeldOut)))

        // Waiting: nothing new to train on; no held-out feedback yet.
        let none = try await ContinualData.build(
            feedback: all, publishedThrough: 200, policy: policy, seed: 1, splitKey: Self.key, toItems: Self.items(pairEvery: 1000))
        #expect(none.waiting?.contains("no training example") == true)
        policy.holdoutFraction = 0.01
        let one = Self.feedback(1, from: 7)
        let noHoldout = try await ContinualData.build(
            feedback: one.filter { !HoldoutSplit.isHeldOut(Self.key($0.record), fraction: 0.01) }, publishedThrough: 0,
            policy: policy, seed: 1, splitKey: Self.key, toItems: Self.items(pairEvery: 1000))
        #expect(noHoldout.waiting?.contains("held-out") == true)
        #expect(noHoldout.waiting?.contains("1 prompt on the training side, 0 held out") == true, "\(noHoldout.waiting ?? "")")
        // Everything new on held-out prompts: the reason says so.
        policy.holdoutFraction = 0.5
        let heldNew = Self.feedback(40).filter { HoldoutSplit.isHeldOut(Self.key($0.record), fraction: 0.5) }
        let allHeld = try await ContinualData.build(
            feedback: heldNew, publishedThrough: 0, policy: policy, seed: 1, splitKey: Self.key,
            toItems: Self.items(pairEvery: 1000))
        #expect(allHeld.waiting?.contains("\(heldNew.count) new items are on held-out prompts") == true, "\(allHeld.waiting ?? "")")
    }
}
