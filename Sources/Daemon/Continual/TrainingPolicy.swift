// TrainingPolicy: how one adapter learns from its feedback (`PUT /v1/adapters/{name}/training`, YAML
// `adapters.NAME.training`): whether its requests are stored, what starts a job, how the data is made, and the gate.
// Parsing validates every field and names the first bad one (`trigger.min_interval`); `TriggerState.reason` is the
// pure decision "does a job start now, and why" (LEARNING-DECISIONS #9: conditions combine with OR, at most one
// queued or running job per adapter, and nothing starts without new feedback to learn from).
import Foundation
import Runtime
import Train

/// A policy field that failed validation: `field` is its dotted path (`gate.max_forgetting`).
public struct PolicyError: Error, CustomStringConvertible, Equatable {
    /// Dotted path of the bad field.
    public var field: String
    /// What is wrong and what is expected.
    public var message: String

    public var description: String { "\(field): \(message)" }
}

/// The training policy of one adapter (see the file comment). Field names are the API's.
public struct TrainingPolicy: Sendable, Equatable {
    /// How training data is made from feedback.
    public enum Method: String, Sendable, Equatable, CaseIterable {
        /// SFT on thumbs-up answers and corrections, plus DPO on pairs when there are at least 8 (decision #9).
        case auto
        case supervised
        case dpo
    }

    /// A daily or hourly schedule, in the daemon's local time zone.
    public enum Schedule: Sendable, Equatable, CustomStringConvertible {
        /// `daily HH:MM`.
        case daily(hour: Int, minute: Int)
        /// `hourly :MM` (or `hourly`, minute 0).
        case hourly(minute: Int)

        public var description: String {
            switch self {
            case .daily(let h, let m): return String(format: "daily %02d:%02d", h, m)
            case .hourly(let m): return String(format: "hourly :%02d", m)
            }
        }

        /// The latest scheduled instant at or before `now`.
        public func latestFire(atOrBefore now: Date, calendar: Calendar) -> Date {
            var c = calendar.dateComponents([.year, .month, .day, .hour], from: now)
            switch self {
            case .daily(let h, let m):
                c.hour = h
                c.minute = m
                let today = calendar.date(from: c)!
                return today <= now ? today : calendar.date(byAdding: .day, value: -1, to: today)!
            case .hourly(let m):
                c.minute = m
                let thisHour = calendar.date(from: c)!
                return thisHour <= now ? thisHour : thisHour.addingTimeInterval(-3600)
            }
        }
    }

    /// Whether the loop may start jobs (a rollback sets it false until the policy is set again).
    public var enabled = true
    /// Store every request on the adapter as with `store: true`.
    public var storeCompletions = true
    /// Start a job when this many new feedback items arrived since the last job (nil: not a trigger).
    public var minNewFeedback: Int? = 50
    /// Start a job when this long passed since the last one and there is new feedback, seconds (nil: not a trigger).
    public var minInterval: Double? = nil
    /// Start a job at these times when there is new feedback (nil: not a trigger).
    public var schedule: Schedule? = nil
    public var method: Method = .auto
    /// Share of a job's examples drawn from older feedback (against forgetting), 0…0.9.
    public var replayFraction = 0.3
    /// Share of feedback held out for the gate (stable split by feedback id), 0.01…0.5.
    public var holdoutFraction = 0.1
    /// `n_epochs`, `batch_size`, `learning_rate_multiplier` (nil: "auto").
    public var nEpochs: Int? = nil
    public var batchSize: Int? = nil
    public var learningRateMultiplier: Double? = nil
    /// Base of the jobs' seeds (shuffle order, a fresh adapter's `lora_A` init); nil: derived from the adapter name.
    /// A job's seed is ``jobSeed(name:through:)``, so the same feedback makes the same job.
    public var seed: Int? = nil
    /// The publication gate.
    public var gate = GateSettings()
    /// Shape of a fresh adapter when the name has no version yet (decision #9: rank 8, alpha 16, all 7 projections).
    public var rank = 8
    public var alpha = 16.0

    /// The defaults above.
    public init() {}

    /// Parses and validates a policy body; absent keys keep their defaults.
    /// - Throws: ``PolicyError`` naming the first bad field (an unknown key is an error too).
    public init(json: JSONValue) throws {
        self.init()
        let top = try Self.object(json, "")
        try Self.onlyKeys(top, [
            "enabled", "store_completions", "trigger", "method", "replay_fraction", "holdout_fraction",
            "hyperparameters", "seed", "gate", "lora",
        ], "")
        if let v = top["enabled"] { enabled = try Self.bool(v, "enabled") }
        if let v = top["store_completions"] { storeCompletions = try Self.bool(v, "store_completions") }
        if let t = top["trigger"] {
            let o = try Self.object(t, "trigger")
            try Self.onlyKeys(o, ["min_new_feedback", "min_interval", "schedule"], "trigger.")
            minNewFeedback = nil
            if let v = o["min_new_feedback"], v != .null {
                minNewFeedback = try Self.int(v, "trigger.min_new_feedback", 1...1_000_000)
            }
            if let v = o["min_interval"], v != .null { minInterval = try Self.duration(v, "trigger.min_interval") }
            if let v = o["schedule"], v != .null { schedule = try Self.schedule(v, "trigger.schedule") }
            if minNewFeedback == nil, minInterval == nil, schedule == nil {
                throw PolicyError(field: "trigger", message: "needs at least one of min_new_feedback, min_interval, schedule")
            }
        }
        if let v = top["method"] {
            guard case .string(let s) = v, let m = Method(rawValue: s) else {
                throw PolicyError(field: "method", message: "must be one of auto, supervised, dpo")
            }
            method = m
        }
        if let v = top["replay_fraction"] { replayFraction = try Self.number(v, "replay_fraction", 0...0.9) }
        if let v = top["holdout_fraction"] { holdoutFraction = try Self.number(v, "holdout_fraction", 0.01...0.5) }
        if let h = top["hyperparameters"] {
            let o = try Self.object(h, "hyperparameters")
            try Self.onlyKeys(o, ["n_epochs", "batch_size", "learning_rate_multiplier"], "hyperparameters.")
            if let v = o["n_epochs"], !Self.isAuto(v) { nEpochs = try Self.int(v, "hyperparameters.n_epochs", 1...100) }
            if let v = o["batch_size"], !Self.isAuto(v) { batchSize = try Self.int(v, "hyperparameters.batch_size", 1...256) }
            if let v = o["learning_rate_multiplier"], !Self.isAuto(v) {
                learningRateMultiplier = try Self.number(v, "hyperparameters.learning_rate_multiplier", 1e-4...100)
            }
        }
        if let v = top["seed"], !Self.isAuto(v) { seed = try Self.int(v, "seed", 0...Int(Int32.max)) }
        if let g = top["gate"] {
            let o = try Self.object(g, "gate")
            try Self.onlyKeys(o, ["min_improvement", "max_forgetting"], "gate.")
            if let v = o["min_improvement"] { gate.minImprovement = try Self.number(v, "gate.min_improvement", -1...1) }
            if let v = o["max_forgetting"] { gate.maxForgetting = try Self.number(v, "gate.max_forgetting", 0...10) }
        }
        if let l = top["lora"] {
            let o = try Self.object(l, "lora")
            try Self.onlyKeys(o, ["rank", "alpha"], "lora.")
            if let v = o["rank"] { rank = try Self.int(v, "lora.rank", 1...256) }
            if let v = o["alpha"] { alpha = try Self.number(v, "lora.alpha", 1e-3...1e4) }
        }
    }

    /// Parses a JSON body (see ``init(json:)``).
    /// - Throws: ``PolicyError`` (field `body` when the text is not a JSON object).
    public init(jsonText: String) throws {
        guard let box = try? JSONDecoder().decode(JSONBox.self, from: Data(jsonText.utf8)) else {
            throw PolicyError(field: "body", message: "is not valid JSON")
        }
        try self.init(json: box.value)
    }

    /// The policy as the API shows it (every key, defaults included).
    public var json: JSONValue {
        func opt(_ v: Int?) -> JSONValue { v.map { .int($0) } ?? .string("auto") }
        return .object([
            ("enabled", .bool(enabled)),
            ("store_completions", .bool(storeCompletions)),
            ("trigger", .object([
                ("min_new_feedback", minNewFeedback.map { .int($0) } ?? .null),
                ("min_interval", minInterval.map { .string(Self.formatDuration($0)) } ?? .null),
                ("schedule", schedule.map { .string($0.description) } ?? .null),
            ])),
            ("method", .string(method.rawValue)),
            ("replay_fraction", .double(replayFraction)),
            ("holdout_fraction", .double(holdoutFraction)),
            ("hyperparameters", .object([
                ("n_epochs", opt(nEpochs)), ("batch_size", opt(batchSize)),
                ("learning_rate_multiplier", learningRateMultiplier.map { .double($0) } ?? .string("auto")),
            ])),
            ("seed", opt(seed)),
            ("gate", .object([("min_improvement", .double(gate.minImprovement)),
                              ("max_forgetting", .double(gate.maxForgetting))])),
            ("lora", .object([("rank", .int(rank)), ("alpha", .double(alpha))])),
        ])
    }

    /// The seed of the job that learns `name`'s feedback through store sequence `through`: SplitMix64 of the policy's
    /// `seed` (or the FNV-1a 64 hash of `name`) mixed with `through`, in `0...Int32.max` (the jobs API's range).
    /// Deterministic, so a job re-created from the same state trains the same adapter on the same CPU.
    public func jobSeed(name: String, through: Int) -> Int {
        let base = seed.map { UInt64($0) } ?? HoldoutSplit.fnv1a64(name)
        var rng = SplitMix64(seed: base ^ UInt64(bitPattern: Int64(through)))
        return Int(rng.next() & UInt64(Int32.max))
    }

    // MARK: - Field parsing

    static func object(_ v: JSONValue, _ field: String) throws -> [String: JSONValue] {
        guard case .object(let pairs) = v else {
            throw PolicyError(field: field.isEmpty ? "body" : field, message: "must be a JSON object")
        }
        return Dictionary(pairs, uniquingKeysWith: { _, b in b })
    }

    static func onlyKeys(_ o: [String: JSONValue], _ allowed: Set<String>, _ prefix: String) throws {
        if let k = o.keys.sorted().first(where: { !allowed.contains($0) }) {
            throw PolicyError(field: prefix + k, message: "unknown key (allowed: \(allowed.sorted().joined(separator: ", ")))")
        }
    }

    static func isAuto(_ v: JSONValue) -> Bool { v == .string("auto") || v == .null }

    static func bool(_ v: JSONValue, _ field: String) throws -> Bool {
        guard case .bool(let b) = v else { throw PolicyError(field: field, message: "must be true or false") }
        return b
    }

    static func int(_ v: JSONValue, _ field: String, _ range: ClosedRange<Int>) throws -> Int {
        let i: Int
        switch v {
        case .int(let x): i = x
        case .double(let d) where d == d.rounded() && abs(d) < 1e15: i = Int(d)
        default: throw PolicyError(field: field, message: "must be an integer in \(range.lowerBound)…\(range.upperBound)")
        }
        guard range.contains(i) else {
            throw PolicyError(field: field, message: "must be an integer in \(range.lowerBound)…\(range.upperBound), got \(i)")
        }
        return i
    }

    static func number(_ v: JSONValue, _ field: String, _ range: ClosedRange<Double>) throws -> Double {
        let d: Double
        switch v {
        case .int(let x): d = Double(x)
        case .double(let x): d = x
        default: throw PolicyError(field: field, message: "must be a number in \(range.lowerBound)…\(range.upperBound)")
        }
        guard d.isFinite, range.contains(d) else {
            throw PolicyError(field: field, message: "must be a number in \(range.lowerBound)…\(range.upperBound), got \(d)")
        }
        return d
    }

    /// `"90s"`, `"30m"`, `"1h"`, `"2d"`, `"1h30m"`, or a number of seconds; 60 s … 365 d.
    static func duration(_ v: JSONValue, _ field: String) throws -> Double {
        let bad = PolicyError(field: field, message: "must be a duration such as \"30m\", \"1h\", \"1h30m\", \"2d\", or a number of seconds (60 s to 365 d)")
        var seconds = 0.0
        switch v {
        case .int(let i): seconds = Double(i)
        case .double(let d): seconds = d
        case .string(let s):
            var digits = ""
            var any = false
            for ch in s.trimmingCharacters(in: .whitespaces) {
                if ch.isNumber { digits.append(ch); continue }
                guard let n = Double(digits) else { throw bad }
                switch ch {
                case "s": seconds += n
                case "m": seconds += n * 60
                case "h": seconds += n * 3600
                case "d": seconds += n * 86400
                default: throw bad
                }
                digits = ""
                any = true
            }
            guard any, digits.isEmpty else { throw bad }
        default: throw bad
        }
        guard seconds.isFinite, seconds >= 60, seconds <= 365 * 86400 else { throw bad }
        return seconds
    }

    static func formatDuration(_ s: Double) -> String {
        var rest = Int(s.rounded())
        var out = ""
        for (unit, size) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] where rest >= size {
            out += "\(rest / size)\(unit)"
            rest %= size
        }
        return out.isEmpty ? "0s" : out
    }

    /// `daily HH:MM`, `hourly`, `hourly :MM`.
    static func schedule(_ v: JSONValue, _ field: String) throws -> Schedule {
        let bad = PolicyError(field: field, message: "must be \"daily HH:MM\", \"hourly\" or \"hourly :MM\"")
        guard case .string(let raw) = v else { throw bad }
        let parts = raw.split(separator: " ", omittingEmptySubsequences: true)
        guard let kind = parts.first else { throw bad }
        switch kind {
        case "daily":
            guard parts.count == 2 else { throw bad }
            let hm = parts[1].split(separator: ":")
            guard hm.count == 2, hm[1].count == 2, let h = Int(hm[0]), let m = Int(hm[1]), (0..<24).contains(h),
                (0..<60).contains(m)
            else { throw bad }
            return .daily(hour: h, minute: m)
        case "hourly":
            if parts.count == 1 { return .hourly(minute: 0) }
            guard parts.count == 2, parts[1].hasPrefix(":"), parts[1].count == 3, let m = Int(parts[1].dropFirst()),
                (0..<60).contains(m)
            else { throw bad }
            return .hourly(minute: m)
        default: throw bad
        }
    }
}

/// What the loop knows about one adapter when it asks whether to start a job.
public struct TriggerState: Sendable, Equatable {
    /// Feedback items on the adapter newer than its last job's data range.
    public var newFeedback: Int
    /// When the last job was created (nil: never), or when the policy was set if that is later.
    public var lastJobAt: Date?
    /// When the policy was set (schedules count from there when no job ran since).
    public var policySetAt: Date
    /// Whether a job of this adapter is queued, running or paused.
    public var jobActive: Bool

    /// - Parameters: see the properties.
    public init(newFeedback: Int, lastJobAt: Date?, policySetAt: Date, jobActive: Bool) {
        self.newFeedback = newFeedback
        self.lastJobAt = lastJobAt
        self.policySetAt = policySetAt
        self.jobActive = jobActive
    }

    /// Why a job starts now (the text goes into the job's `metadata.trigger`), or nil. Never while a job is active,
    /// never without new feedback, never when the policy is disabled; otherwise the first condition that holds:
    /// `min_new_feedback`, then `min_interval` since the last job, then a scheduled time passed since the last job.
    public func reason(policy: TrainingPolicy, now: Date, calendar: Calendar = .current) -> String? {
        guard policy.enabled, !jobActive, newFeedback > 0 else { return nil }
        if let n = policy.minNewFeedback, newFeedback >= n {
            return "min_new_feedback: \(newFeedback) new feedback items (threshold \(n))"
        }
        let since = max(lastJobAt ?? policySetAt, policySetAt)
        if let interval = policy.minInterval, now.timeIntervalSince(since) >= interval {
            return "min_interval: \(TrainingPolicy.formatDuration(now.timeIntervalSince(since))) since the last job, "
                + "\(newFeedback) new feedback items"
        }
        if let s = policy.schedule {
            let fire = s.latestFire(atOrBefore: now, calendar: calendar)
            if fire > since { return "schedule: \(s) (\(newFeedback) new feedback items)" }
        }
        return nil
    }
}
