// Training policies: validation names the bad field; the trigger decision follows LEARNING-DECISIONS #9 (OR of the
// conditions, one active job per adapter, nothing without new feedback).
import Daemon
import Foundation
import Testing
import Train

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
