// Training policies: validation names the bad field; the trigger decision follows LEARNING-DECISIONS #9 (OR of the
// conditions, one active job per adapter, nothing without new feedback).
import Daemon
import Foundation
import Testing
import Train

#if canImport(Glibc)
import Glibc
#endif

struct TrainingPolicyTests {
    @Test func defaultsAndAFullPolicyRoundTrip() throws {
        let d = try TrainingPolicy(jsonText: "{}")
        #expect(d == TrainingPolicy())
        #expect(d.minNewFeedback == 50 && d.method == .auto && d.replayFraction == 0.3 && d.holdoutFraction == 0.1)
        #expect(d.gate.minImprovement == 0 && d.gate.maxForgetting == 0.02 && d.rank == 8 && d.alpha == 16)

        let p = try TrainingPolicy(jsonText: """
            {"store_completions": true, "trigger": {"min_new_feedback": 20, "min_interval": "1h30m",
             "schedule": "daily 03:00"}, "method": "dpo", "replay_fraction": 0.25, "holdout_fraction": 0.2,
             "hyperparameters": {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 2},
             "gate": {"min_improvement": 0.01, "max_forgetting": 0.05}, "lora": {"rank": 4, "alpha": 8}}
            """)
        #expect(p.minNewFeedback == 20 && p.minInterval == 5400 && p.schedule == .daily(hour: 3, minute: 0))
        #expect(p.method == .dpo && p.nEpochs == 3 && p.batchSize == nil && p.learningRateMultiplier == 2)
        #expect(p.gate == GateSettings(minImprovement: 0.01, maxForgetting: 0.05) && p.rank == 4)
        // What the API shows parses back to the same policy.
        #expect(try TrainingPolicy(json: p.json) == p)
        #expect(p.json.serialized.contains("\"min_interval\":\"1h30m\""))
        #expect(p.json.serialized.contains("\"schedule\":\"daily 03:00\""))
    }

    @Test func aJobSeedIsAFunctionOfThePolicySeedTheNameAndTheFeedbackRange() throws {
        let auto = TrainingPolicy()
        let s = auto.jobSeed(name: "tagger", through: 60)
        #expect(s == auto.jobSeed(name: "tagger", through: 60), "the same feedback makes the same job")
        #expect(s != auto.jobSeed(name: "tagger", through: 61) && s != auto.jobSeed(name: "tagger2", through: 60))
        let fixed = try TrainingPolicy(jsonText: #"{"seed": 42}"#)
        #expect(fixed.seed == 42 && fixed.jobSeed(name: "a", through: 7) == fixed.jobSeed(name: "b", through: 7))
        #expect(fixed.jobSeed(name: "a", through: 7) != fixed.jobSeed(name: "a", through: 8))
        for through in [0, 1, 1 << 40] { #expect((0...Int(Int32.max)).contains(auto.jobSeed(name: "x", through: through))) }
        #expect(try TrainingPolicy(json: fixed.json) == fixed)
        // The values themselves, from published constants: splitmix64.c (Vigna), whose first output for state 0 is
        // 0xe220a8397b1dcdaf, and the FNV-1a 64 test vector fnv1a64("a") = 0xaf63dc4c8601ec8c.
        func splitmix64(_ state: UInt64) -> UInt64 {
            var z = state &+ 0x9e37_79b9_7f4a_7c15
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            return z ^ (z >> 31)
        }
        #expect(splitmix64(0) == 0xe220_a839_7b1d_cdaf)
        #expect(auto.jobSeed(name: "a", through: 0) == Int(splitmix64(0xaf63_dc4c_8601_ec8c) & 0x7fff_ffff))
        #expect(fixed.jobSeed(name: "a", through: 7) == Int(splitmix64(42 ^ 7) & 0x7fff_ffff))
        #expect(try TrainingPolicy(jsonText: #"{"seed": "auto"}"#).seed == nil)
        #expect(throws: PolicyError.self) { try TrainingPolicy(jsonText: #"{"seed": -1}"#) }
    }

    @Test func invalidValuesNameTheirField() {
        let cases: [(String, String)] = [
            ("[]", "body"),
            ("not json", "body"),
            (#"{"replay_fraction": 1.5}"#, "replay_fraction"),
            (#"{"holdout_fraction": "x"}"#, "holdout_fraction"),
            (#"{"method": "rl"}"#, "method"),
            (#"{"trigger": {"min_interval": "soon"}}"#, "trigger.min_interval"),
            (#"{"trigger": {"min_interval": "10s"}}"#, "trigger.min_interval"),
            (#"{"trigger": {"schedule": "daily 25:00"}}"#, "trigger.schedule"),
            (#"{"trigger": {"schedule": "weekly"}}"#, "trigger.schedule"),
            (#"{"trigger": {"min_new_feedback": 0}}"#, "trigger.min_new_feedback"),
            (#"{"trigger": {}}"#, "trigger"),
            (#"{"trigger": {"every": "1h"}}"#, "trigger.every"),
            (#"{"gate": {"max_forgetting": -0.1}}"#, "gate.max_forgetting"),
            (#"{"hyperparameters": {"n_epochs": 2.5}}"#, "hyperparameters.n_epochs"),
            (#"{"lora": {"rank": 0}}"#, "lora.rank"),
            (#"{"colour": "red"}"#, "colour"),
        ]
        for (body, field) in cases {
            do {
                _ = try TrainingPolicy(jsonText: body)
                Issue.record("accepted \(body)")
            } catch let e as PolicyError {
                #expect(e.field == field, "\(body): \(e)")
            } catch {
                Issue.record("\(body): unexpected \(error)")
            }
        }
    }

    @Test func triggersCombineWithOrAndNeedNewFeedback() throws {
        var cal = Calendar(identifier: .gregorian)
        cal.timeZone = TimeZone(identifier: "UTC")!
        func at(_ s: String) -> Date { ISO8601DateFormatter().date(from: s)! }
        let p = try TrainingPolicy(jsonText: #"{"trigger": {"min_new_feedback": 10, "min_interval": "2h", "schedule": "daily 03:00"}}"#)
        let set = at("2026-12-01T00:00:00Z")
        func reason(_ n: Int, last: Date?, now: Date, active: Bool = false, policy: TrainingPolicy? = nil) -> String? {
            TriggerState(newFeedback: n, lastJobAt: last, policySetAt: set, jobActive: active)
                .reason(policy: policy ?? p, now: now, calendar: cal)
        }
        // Count threshold.
        #expect(reason(10, last: nil, now: at("2026-12-01T00:10:00Z"))?.hasPrefix("min_new_feedback") == true)
        #expect(reason(9, last: nil, now: at("2026-12-01T00:10:00Z")) == nil)
        // Interval since the last job (or since the policy was set).
        #expect(reason(1, last: at("2026-12-01T01:00:00Z"), now: at("2026-12-01T02:59:00Z")) == nil)
        #expect(reason(1, last: at("2026-12-01T01:00:00Z"), now: at("2026-12-01T03:00:01Z"))?.hasPrefix("min_interval") == true)
        // Schedule: 03:00 passed since the last job at 02:30 → fires at 03:05 even though 2 h have not passed.
        #expect(reason(1, last: at("2026-12-01T02:30:00Z"), now: at("2026-12-01T03:05:00Z"))?.hasPrefix("schedule") == true)
        #expect(reason(1, last: at("2026-12-01T03:01:00Z"), now: at("2026-12-01T04:00:00Z")) == nil)
        // Nothing new, an active job, or a disabled policy: never.
        #expect(reason(0, last: nil, now: at("2026-12-05T00:00:00Z")) == nil)
        #expect(reason(100, last: nil, now: at("2026-12-01T00:10:00Z"), active: true) == nil)
        var off = p
        off.enabled = false
        #expect(reason(100, last: nil, now: at("2026-12-01T00:10:00Z"), policy: off) == nil)
    }

    @Test func hourlyScheduleAndLatestFire() throws {
        var cal = Calendar(identifier: .gregorian)
        cal.timeZone = TimeZone(identifier: "UTC")!
        let f = ISO8601DateFormatter()
        let s = TrainingPolicy.Schedule.hourly(minute: 15)
        #expect(s.latestFire(atOrBefore: f.date(from: "2026-12-01T10:14:00Z")!, calendar: cal) == f.date(from: "2026-12-01T09:15:00Z"))
        #expect(s.latestFire(atOrBefore: f.date(from: "2026-12-01T10:15:00Z")!, calendar: cal) == f.date(from: "2026-12-01T10:15:00Z"))
        let d = TrainingPolicy.Schedule.daily(hour: 3, minute: 30)
        #expect(d.latestFire(atOrBefore: f.date(from: "2026-12-01T03:00:00Z")!, calendar: cal) == f.date(from: "2026-11-30T03:30:00Z"))
        #expect(try TrainingPolicy(jsonText: #"{"trigger": {"schedule": "hourly :15"}}"#).schedule == s)
        #expect(try TrainingPolicy(jsonText: #"{"trigger": {"schedule": "hourly"}}"#).schedule == .hourly(minute: 0))
    }
}

/// The training-policy route on the real daemon: set, show, delete; 400 naming the field; 404; 403; a rollback
/// pauses the policy until it is set again.
@Suite(.serialized) struct TrainingPolicyRouteTests {
    @Test func policyRouteAndRollbackPause() throws {
        let ref = try Paths.referenceDir() + "/lora-r8"
        let d = try LoradProcess(extra: ["--adapter-import-dir", ref])
        defer { d.stop() }
        func put(_ name: String, _ body: String) throws -> HTTPResult {
            try d.raw(HTTP.request(method: "PUT", path: "/v1/adapters/\(name)/training", body: Array(body.utf8)))
        }
        func param(_ r: HTTPResult) -> String? { ((try? r.json())?["error"] as? [String: Any])?["param"] as? String }

        // Unknown names: 404 (no adapter, no policy); an invalid policy: 400 naming the field.
        #expect(try d.get("/v1/adapters/nobody/training").status == 404)
        #expect(try d.delete("/v1/adapters/nobody/training").status == 404)
        var r = try put("rb", #"{"trigger": {"min_interval": "soon"}}"#)
        #expect(r.status == 400 && param(r) == "trigger.min_interval", "\(r.text)")
        r = try put("rb", #"{"replay_fraction": 2}"#)
        #expect(r.status == 400 && param(r) == "replay_fraction", "\(r.text)")
        r = try put("a/b", "{}")
        #expect(r.status == 404 || r.status == 400)

        // Two versions, a policy, then a rollback: the policy is paused and says why.
        let v1 = try #require(try d.register("rb", path: try AdapterFixtures.referenceGGUF())["version"] as? Int)
        _ = try d.register("rb", path: try AdapterFixtures.referencePEFT())
        #expect(try d.get("/v1/adapters/rb/training").status == 404)
        r = try put("rb", #"{"trigger": {"min_new_feedback": 20, "schedule": "daily 03:00"}, "method": "supervised"}"#)
        #expect(r.status == 200, "\(r.text)")
        var shown = try d.get("/v1/adapters/rb/training").json()
        var policy = shown["policy"] as? [String: Any]
        #expect(policy?["enabled"] as? Bool == true && policy?["method"] as? String == "supervised")
        #expect((policy?["trigger"] as? [String: Any])?["schedule"] as? String == "daily 03:00")
        #expect(shown["registered"] as? Bool == true)
        let loop = shown["loop"] as? [String: Any]
        #expect(loop?["new_feedback"] as? Int == 0 && loop?["feedback_to_trigger"] as? Int == 20, "\(shown)")
        let rb = try d.post("/v1/adapters/rb/rollback", json: ["version": v1])
        #expect(rb.status == 200, "\(rb.text)")
        shown = try d.get("/v1/adapters/rb/training").json()
        policy = shown["policy"] as? [String: Any]
        #expect(policy?["enabled"] as? Bool == false)
        #expect((shown["disabled_reason"] as? String ?? "").contains("to version \(v1)"), "\(shown)")
        // Setting it again re-enables it; it survives a restart.
        #expect(try put("rb", #"{"trigger": {"min_new_feedback": 20}}"#).status == 200)
        #expect(try d.get("/v1/adapters/rb/training").json()["disabled_reason"] is NSNull)
        // PATCH (a JSON merge patch) changes only the keys it names; null resets one; a bad result is a 400 and
        // leaves the policy as it was; no policy yet is 404.
        func patch(_ name: String, _ body: String) throws -> HTTPResult {
            try d.raw(HTTP.request(method: "PATCH", path: "/v1/adapters/\(name)/training", body: Array(body.utf8)))
        }
        #expect(try patch("nobody", "{}").status == 404)
        r = try patch("rb", #"{"method": "dpo", "gate": {"max_forgetting": 0.05}}"#)
        #expect(r.status == 200, "\(r.text)")
        policy = try d.get("/v1/adapters/rb/training").json()["policy"] as? [String: Any]
        #expect(policy?["method"] as? String == "dpo")
        #expect((policy?["gate"] as? [String: Any])?["max_forgetting"] as? Double == 0.05)
        #expect((policy?["gate"] as? [String: Any])?["min_improvement"] as? Double == 0)
        #expect((policy?["trigger"] as? [String: Any])?["min_new_feedback"] as? Int == 20)
        r = try patch("rb", #"{"trigger": {"min_new_feedback": null, "min_interval": "2h"}}"#)
        #expect(r.status == 200, "\(r.text)")
        let trigger = (try d.get("/v1/adapters/rb/training").json()["policy"] as? [String: Any])?["trigger"] as? [String: Any]
        #expect(trigger?["min_new_feedback"] is NSNull && trigger?["min_interval"] as? String == "2h", "\(trigger ?? [:])")
        r = try patch("rb", #"{"trigger": {"min_interval": null}}"#)
        #expect(r.status == 400 && param(r) == "trigger", "\(r.text)")
        r = try patch("rb", #"{"replay_fraction": 3}"#)
        #expect(r.status == 400 && param(r) == "replay_fraction", "\(r.text)")
        r = try patch("rb", "[1]")
        #expect(r.status == 400 && param(r) == "body", "\(r.text)")
        policy = try d.get("/v1/adapters/rb/training").json()["policy"] as? [String: Any]
        #expect(policy?["method"] as? String == "dpo" && policy?["replay_fraction"] as? Double == 0.3)
        // A name without versions may have a policy (its first job starts from a fresh adapter).
        #expect(try put("fresh-one", "{}").status == 200)
        #expect(try d.get("/v1/adapters/fresh-one/training").json()["registered"] as? Bool == false)

        // Not an admin: 403 for reading and for changing.
        chmod(d.socket, 0o666)
        #expect(try StoreIntegrationTests.curlAsNobody(d, ["http://l/v1/adapters/rb/training"]).0 == 403)
        #expect(try StoreIntegrationTests.curlAsNobody(d, ["-X", "PUT", "-d", "{}", "http://l/v1/adapters/rb/training"]).0 == 403)

        // Delete: 200, then 404 (the adapter itself stays).
        #expect(try d.delete("/v1/adapters/rb/training").status == 200)
        let gone = try d.get("/v1/adapters/rb/training")
        #expect(gone.status == 404 && ((try? gone.json())?["error"] as? [String: Any])?["code"] as? String == "policy_not_found")
        #expect(try d.get("/v1/adapters/rb").status == 200)
    }
}
