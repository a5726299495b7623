// A fine-tuning job with an evaluation gate (`lorad.gate`, LEARNING-DECISIONS #6, #9, #10): a job that learns the
// answer format publishes, and its version records the gate's numbers; a job with a learning rate far too high
// still succeeds but publishes nothing: the served version stays and its outputs are unchanged.
import Foundation
import Testing

@Suite(.serialized) struct GatedJobTests {
    static let heldOut = [
        ("What is the capital of Chile?", "CAPITAL[Chile] => Santiago <<END>>"),
        ("What is the capital of Spain?", "CAPITAL[Spain] => Madrid <<END>>"),
    ]

    func greedy(_ d: LoradProcess, _ model: String) throws -> String {
        let r = try d.post(
            "/v1/chat/completions",
            json: ["model": model, "messages": [["role": "user", "content": "What is the capital of Chile?"]],
                   "max_tokens": 12, "temperature": 0] as [String: Any])
        #expect(r.status == 200, "\(r.text)")
        let choices = try r.json()["choices"] as? [[String: Any]]
        return (choices?.first?["message"] as? [String: Any])?["content"] as? String ?? ""
    }

    @Test func aGoodJobPublishesWithItsNumbersAndADamagingOneIsKeptOut() throws {
        trainingLock.lock()
        defer { trainingLock.unlock() }
        let d = try LoradProcess()
        defer { d.stop() }
        let train = try FineTuningJobTests.putFile(d, try chatJSONL(FineTuningJobTests.examples)).id
        let valid = try FineTuningJobTests.putFile(d, try chatJSONL(Self.heldOut)).id

        // A gate needs held-out data.
        let noValid = try d.post(
            "/v1/fine_tuning/jobs",
            json: ["model": "gemma-3-270m-q4_k_m", "training_file": train, "lorad": ["gate": [String: Any]()]] as [String: Any])
        #expect(noValid.status == 400 && noValid.text.contains("validation_file"), "\(noValid.text)")
        let badGate = try d.post(
            "/v1/fine_tuning/jobs",
            json: ["model": "gemma-3-270m-q4_k_m", "training_file": train, "validation_file": valid,
                   "lorad": ["gate": ["max_forgetting": -1]]] as [String: Any])
        #expect(badGate.status == 400 && badGate.text.contains("lorad.gate.max_forgetting"), "\(badGate.text)")

        // 1. Learns the format: the held-out loss falls; published, with the gate's numbers on the version.
        var body: [String: Any] = [
            "model": "gemma-3-270m-q4_k_m", "training_file": train, "validation_file": valid, "suffix": "gated",
            "seed": 7, "hyperparameters": ["n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 10],
            "lora": ["rank": 4, "alpha": 8], "lorad": ["gate": ["min_improvement": 0.05, "max_forgetting": 0.5]],
        ]
        let good = try FineTuningJobTests.waitJob(d, try #require(FineTuningJobTests.createJob(d, body)["id"] as? String))
        #expect(good["status"] as? String == "succeeded" && good["published"] as? Bool == true, "\(good)")
        #expect(good["fine_tuned_model"] as? String == "gated")
        let versions = try d.get("/v1/adapters/gated/versions").json()["data"] as? [[String: Any]] ?? []
        #expect(versions.count == 1)
        let gate = versions.first?["gate"] as? [String: Any]
        #expect(gate?["passed"] as? Bool == true, "\(versions)")
        let improvement = gate?["improvement"] as? Double ?? -1
        #expect(improvement >= 0.05, "held-out improvement \(improvement)")
        let servedBefore = try greedy(d, "gated")

        // 2. Continue it with a learning rate 100× too high (0.1): the gate refuses; nothing is published.
        body["model"] = "gated"
        body["suffix"] = nil
        body["hyperparameters"] = ["n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 1000]
        body["lorad"] = ["gate": [String: Any]()]
        let badID = try #require(FineTuningJobTests.createJob(d, body)["id"] as? String)
        let bad = try FineTuningJobTests.waitJob(d, badID)
        #expect(bad["status"] as? String == "succeeded", "\(bad)")
        #expect(bad["published"] as? Bool == false && bad["fine_tuned_model"] is NSNull, "\(bad)")
        #expect((bad["metadata"] as? [String: Any])?["published"] as? String == "false")
        let events = try FineTuningJobTests.events(d, badID)
        let refusal = events.first { ($0["message"] as? String ?? "").contains("evaluation gate kept the current version") }
        #expect(refusal != nil, "\(events.map { $0["message"] ?? "" })")
        #expect((refusal?["data"] as? [String: Any])?["passed"] as? Bool == false)
        let after = try d.get("/v1/adapters/gated/versions").json()["data"] as? [[String: Any]] ?? []
        #expect(after.count == 1 && after.first?["version"] as? Int == versions.first?["version"] as? Int)
        #expect(try greedy(d, "gated") == servedBefore)

        // 3. A cancel after the last step, while the gate measures, ends the job cancelled: nothing is published.
        body["hyperparameters"] = ["n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 10]
        body["lorad"] = ["gate": ["min_improvement": 0.0, "max_forgetting": 0.5]]
        let lateID = try #require(FineTuningJobTests.createJob(d, body)["id"] as? String)
        let deadline = Date().addingTimeInterval(600)
        while true {
            let j = try d.get("/v1/fine_tuning/jobs/\(lateID)").json()
            let p = j["progress"] as? [String: Any] ?? [:]
            if let total = p["total_steps"] as? Int, total > 0, p["step"] as? Int == total { break }
            #expect(j["status"] as? String == "running" || j["status"] as? String == "queued", "\(j)")
            guard Date() < deadline, j["status"] as? String != "succeeded" else { break }
            usleep(50_000)
        }
        let cancel = try d.post("/v1/fine_tuning/jobs/\(lateID)/cancel", json: [String: Any]())
        #expect(cancel.status == 200, "\(cancel.text)")
        let late = try FineTuningJobTests.waitJob(d, lateID)
        #expect(late["status"] as? String == "cancelled" && late["published"] as? Bool == false, "\(late)")
        let lateEvents = try FineTuningJobTests.events(d, lateID).compactMap { $0["message"] as? String }
        #expect(lateEvents.contains { $0.hasPrefix("Job cancelled") && $0.hasSuffix("nothing was published.") }, "\(lateEvents)")
        let afterCancel = try d.get("/v1/adapters/gated/versions").json()["data"] as? [[String: Any]] ?? []
        #expect(afterCancel.count == 1 && afterCancel.first?["version"] as? Int == versions.first?["version"] as? Int)
        print("gated job: improvement \(improvement); refused: \(refusal?["message"] ?? ""); cancelled after training: \(lateEvents.last ?? "")")
    }
}
