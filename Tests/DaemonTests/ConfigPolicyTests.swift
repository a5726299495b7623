// Training policies in the config file (`adapters.NAME.training`): parsed into the same policy the API's JSON gives,
// refused at load time with the dotted path of the bad key; applied to the store at start-up and on SIGHUP (set when
// absent or changed, left alone when identical so a paused policy stays paused, deleted when it leaves the file,
// never touching a policy set through the API); and the whole path on the real daemon.

import Daemon
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite struct ConfigPolicyParseTests {
    static func policies(_ yaml: String) throws -> [String: TrainingPolicy] {
        let layer = try ConfigFile.parse(yaml, path: "t.yaml")
        return try DaemonConfig.resolve(layer: layer, environment: [:], fileExists: { _ in false }).trainingPolicies
    }

    /// The key `ConfigError.invalidEntry` names, or a description of what else happened.
    static func badKey(_ yaml: String) -> String {
        do {
            _ = try policies(yaml)
            return "(accepted)"
        } catch ConfigError.invalidEntry(let path, let key, _) {
            return path == "t.yaml" ? key : "(path \(path))"
        } catch {
            return "(\(error))"
        }
    }

    @Test func theDocumentedExampleIsTheAPIsPolicy() throws {
        let yaml = """
            log_level: warning
            adapters:
              support-bot:
                training:
                  store_completions: true
                  trigger: {min_new_feedback: 50, min_interval: 1h, schedule: "daily 03:00"}
                  method: auto
                  replay_fraction: 0.3
                  holdout_fraction: 0.1
                  hyperparameters: {n_epochs: 3, learning_rate_multiplier: 2}
                  gate: {min_improvement: 0.0, max_forgetting: 0.02}
              other.one:
                training: {}
              no-policy:
              no-policy-either:
                training:
            """
        let p = try Self.policies(yaml)
        // The same keys as a PUT body parse to the same policy.
        let api = try TrainingPolicy(jsonText: """
            {"store_completions": true, "trigger": {"min_new_feedback": 50, "min_interval": "1h", "schedule": "daily 03:00"},
             "method": "auto", "replay_fraction": 0.3, "holdout_fraction": 0.1,
             "hyperparameters": {"n_epochs": 3, "learning_rate_multiplier": 2},
             "gate": {"min_improvement": 0.0, "max_forgetting": 0.02}}
            """)
        #expect(p["support-bot"] == api)
        #expect(api.minInterval == 3600 && api.schedule == .daily(hour: 3, minute: 0) && api.nEpochs == 3)
        #expect(p["other.one"] == TrainingPolicy())
        // A name with no settings, or a null `training:`, has no policy.
        #expect(Set(p.keys) == ["support-bot", "other.one"])
        // No `adapters:` key, or an empty one: no policies (config-set ones are then removed when applied).
        #expect(try Self.policies("log_level: info\n").isEmpty)
        #expect(try Self.policies("adapters:\n").isEmpty)
        #expect(try Self.policies("adapters: {}\n").isEmpty)
    }

    /// What Yams gives for each scalar: a plain `daily 03:00` is a string in block and in flow style, YAML 1.1
    /// booleans (`yes`) are booleans, a quoted number is a string (refused where a number is wanted), and a base-60
    /// `1:30` stays text instead of becoming 90.
    @Test func yamlScalars() throws {
        let block = try Self.policies("adapters:\n  a:\n    training:\n      trigger:\n        schedule: daily 03:00\n")
        #expect(block["a"]?.schedule == .daily(hour: 3, minute: 0))
        let flow = try Self.policies("adapters: {a: {training: {trigger: {schedule: daily 04:30, min_interval: 90m}}}}\n")
        #expect(flow["a"]?.schedule == .daily(hour: 4, minute: 30) && flow["a"]?.minInterval == 5400)
        let yes = try Self.policies("adapters: {a: {training: {store_completions: no, trigger: {min_interval: 3600}}}}\n")
        #expect(yes["a"]?.storeCompletions == false && yes["a"]?.minInterval == 3600)
        #expect(Self.badKey("adapters: {a: {training: {replay_fraction: \"0.3\"}}}\n") == "adapters.a.training.replay_fraction")
        #expect(Self.badKey("adapters: {a: {training: {trigger: {min_interval: 1:30}}}}\n") == "adapters.a.training.trigger.min_interval")
    }

    @Test func eachBadValueNamesItsDottedKey() {
        let cases: [(String, String)] = [
            ("trigger: {min_interval: soon}", "adapters.bot.training.trigger.min_interval"),
            ("trigger: {min_interval: 10s}", "adapters.bot.training.trigger.min_interval"),
            ("trigger: {schedule: weekly}", "adapters.bot.training.trigger.schedule"),
            ("trigger: {min_new_feedback: 0}", "adapters.bot.training.trigger.min_new_feedback"),
            ("trigger: {min_new_feedback: many}", "adapters.bot.training.trigger.min_new_feedback"),
            ("trigger: {every: 1h}", "adapters.bot.training.trigger.every"),
            ("trigger: {}", "adapters.bot.training.trigger"),
            ("trigger: [1, 2]", "adapters.bot.training.trigger"),
            ("store_completions: maybe", "adapters.bot.training.store_completions"),
            ("method: rl", "adapters.bot.training.method"),
            ("replay_fraction: 1.5", "adapters.bot.training.replay_fraction"),
            ("holdout_fraction: 0", "adapters.bot.training.holdout_fraction"),
            ("hyperparameters: {n_epochs: 2.5}", "adapters.bot.training.hyperparameters.n_epochs"),
            ("hyperparameters: {batch_size: 0}", "adapters.bot.training.hyperparameters.batch_size"),
            ("hyperparameters: {learning_rate_multiplier: .inf}", "adapters.bot.training.hyperparameters.learning_rate_multiplier"),
            ("gate: {max_forgetting: -0.1}", "adapters.bot.training.gate.max_forgetting"),
            ("gate: {min_improvement: 2}", "adapters.bot.training.gate.min_improvement"),
            ("lora: {rank: 0}", "adapters.bot.training.lora.rank"),
            ("colour: red", "adapters.bot.training.colour"),
        ]
        for (entry, key) in cases {
            let yaml = "adapters:\n  bot:\n    training:\n      \(entry)\n"
            #expect(Self.badKey(yaml) == key, "\(entry)")
        }
        // The shape around the policy, and the names.
        #expect(Self.badKey("adapters:\n  bot:\n    trainig: {}\n") == "adapters.bot.trainig")
        #expect(Self.badKey("adapters:\n  bot:\n    training: [a]\n") == "adapters.bot.training")
        #expect(Self.badKey("adapters:\n  bot:\n    training: daily\n") == "adapters.bot.training")
        #expect(Self.badKey("adapters:\n  bot: 5\n") == "adapters.bot")
        #expect(Self.badKey("adapters: [a, b]\n") == "adapters")
        #expect(Self.badKey("adapters:\n  \"a/b\":\n    training: {}\n") == "adapters.a/b")
        #expect(Self.badKey("adapters:\n  \"..\":\n    training: {}\n") == "adapters...")
        // The message says what is wrong and what is expected.
        let text = "\(ConfigError.invalidEntry(path: "/etc/lorad/lorad.yaml", key: "adapters.bot.training.method", reason: "must be one of auto, supervised, dpo"))"
        #expect(text == "config file /etc/lorad/lorad.yaml: adapters.bot.training.method: must be one of auto, supervised, dpo")
    }

    @Test func theBaseModelsIdIsNotAnAdapterName() throws {
        let layer = try ConfigFile.parse("adapters:\n  base-model:\n    training: {}\n", path: "t.yaml")
        #expect(throws: ConfigError.invalidValue(key: "adapters.base-model", reason: "'base-model' is the base model's id, not an adapter name")) {
            try DaemonConfig.resolve(layer: layer, environment: ["LORAD_MODEL": "/m/base-model.gguf"], fileExists: { _ in false })
        }
        // Read from a file through the full resolution (flags cannot set policies; the file's stay).
        let dir = try StoreTests.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/lorad.yaml"
        try "adapters:\n  bot:\n    training: {method: dpo}\n".write(toFile: file, atomically: true, encoding: .utf8)
        var flags = ConfigLayer()
        flags.maxQueue = 3
        let c = try DaemonConfig.resolve(flags: flags, configPath: file, environment: [:], fileExists: { _ in false })
        #expect(c.trainingPolicies["bot"]?.method == .dpo && c.maxQueue == 3)
    }
}

@Suite struct ConfigPolicyApplyTests {
    static func policy(_ json: String) throws -> TrainingPolicy { try TrainingPolicy(jsonText: json) }

    @Test func setUnchangedChangedRemovedAndAPIOwned() async throws {
        let dir = try StoreTests.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var store: LoradStore? = try LoradStore(stateDir: dir)
        let p1 = try Self.policy(#"{"trigger": {"min_new_feedback": 20}, "method": "supervised"}"#)
        let p2 = try Self.policy(#"{"trigger": {"min_new_feedback": 30}, "method": "supervised"}"#)

        // Absent: set, origin config.
        var c = try await store!.applyConfigPolicies(["bot": p1, "tmp": TrainingPolicy()])
        #expect(c.applied == ["bot", "tmp"] && c.unchanged.isEmpty && c.removed.isEmpty)
        var bot = try #require(try await store!.policy(name: "bot"))
        #expect(bot.policy == p1 && bot.origin == .config)
        #expect(store!.cachedPolicy(name: "bot") == bot)
        let setAt = bot.setAt

        // Identical: left alone (set_at unchanged), even when it was paused by a rollback, and across a reopen.
        try await store!.disablePolicy(name: "bot", reason: "rolled back to version 1")
        usleep(20_000)
        c = try await store!.applyConfigPolicies(["bot": p1, "tmp": TrainingPolicy()])
        #expect(c.applied.isEmpty && c.unchanged == ["bot", "tmp"])
        store = nil
        store = try LoradStore(stateDir: dir)
        c = try await store!.applyConfigPolicies(["bot": p1, "tmp": TrainingPolicy()])
        #expect(c.unchanged == ["bot", "tmp"])
        bot = try #require(try await store!.policy(name: "bot"))
        #expect(bot.policy.enabled == false && bot.disabledReason == "rolled back to version 1" && bot.setAt == setAt)
        #expect(store!.cachedPolicy(name: "bot")?.policy.enabled == false)

        // Changed in the file: set again (and so enabled again).
        c = try await store!.applyConfigPolicies(["bot": p2, "tmp": TrainingPolicy()])
        #expect(c.applied == ["bot"] && c.unchanged == ["tmp"])
        bot = try #require(try await store!.policy(name: "bot"))
        #expect(bot.policy == p2 && bot.policy.enabled && bot.disabledReason == nil && bot.setAt > setAt)
        #expect(store!.cachedPolicy(name: "bot")?.policy == p2)

        // The file's own `enabled` is part of the policy: turning it off and on again is a change each time.
        var off = p2
        off.enabled = false
        #expect(try await store!.applyConfigPolicies(["bot": off, "tmp": TrainingPolicy()]).applied == ["bot"])
        #expect(try await store!.policy(name: "bot")?.policy.enabled == false)
        #expect(try await store!.applyConfigPolicies(["bot": p2, "tmp": TrainingPolicy()]).applied == ["bot"])
        #expect(try await store!.policy(name: "bot")?.policy.enabled == true)

        // Set through the API: never deleted by the file, and not overwritten by a file entry of the same name.
        _ = try await store!.setPolicy(name: "manual", policy: p1, uid: 0)
        c = try await store!.applyConfigPolicies(["bot": p2, "tmp": TrainingPolicy()])
        #expect(c.removed.isEmpty && c.heldByAPI.isEmpty)
        c = try await store!.applyConfigPolicies(["bot": p2, "tmp": TrainingPolicy(), "manual": p2])
        #expect(c.heldByAPI == ["manual"] && c.applied.isEmpty)
        let manual = try #require(try await store!.policy(name: "manual"))
        #expect(manual.policy == p1 && manual.origin == .api)

        // An API PUT takes a config-set name over: it stays when the file drops it.
        _ = try await store!.setPolicy(name: "tmp", policy: p1, uid: 0)
        #expect(try await store!.policy(name: "tmp")?.origin == .api)

        // Removed from the file: the config-set one is deleted (store and memory), the API-set ones stay.
        c = try await store!.applyConfigPolicies([:])
        #expect(c.removed == ["bot"] && c.applied.isEmpty && c.unchanged.isEmpty)
        #expect(try await store!.policy(name: "bot") == nil && store!.cachedPolicy(name: "bot") == nil)
        #expect(try await store!.policies().map(\.name) == ["manual", "tmp"])
        // Once the API's policy is deleted, the file's entry applies again.
        #expect(try await store!.deletePolicy(name: "manual"))
        c = try await store!.applyConfigPolicies(["manual": p2])
        #expect(c.applied == ["manual"] && c.heldByAPI.isEmpty)
        #expect(try await store!.policy(name: "manual")?.origin == .config)
    }

    /// Rows stored before migration `v6_policy_origin` were all set through the API: they read as `api`.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/sqlite3")))
    func rowsFromBeforeTheOriginColumnAreAPIOwned() async throws {
        let dir = try StoreTests.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try await LoradStore(stateDir: dir).setPolicy(name: "old", policy: TrainingPolicy(), uid: 0, origin: .config)
        // Back to the v5 schema: no origin column, and v6 not yet applied.
        let sql = "ALTER TABLE adapter_training_policy DROP COLUMN origin; "
            + "DELETE FROM grdb_migrations WHERE identifier = 'v6_policy_origin';"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/sqlite3")
        p.arguments = [dir + "/lorad.sqlite", sql]
        try p.run()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        let store = try LoradStore(stateDir: dir)
        #expect(try await store.policy(name: "old")?.origin == .api)
        #expect(try await store.applyConfigPolicies([:]).removed.isEmpty)
    }
}

/// The real daemon: a policy in the config file is shown by the API with origin `config`, follows the file on
/// SIGHUP, and is gone when the file drops it; a bad file is refused at start-up and on reload.
@Suite(.serialized) struct ConfigPolicyDaemonTests {
    static func yaml(minNewFeedback: Int) -> String {
        """
        log_level: warning
        adapters:
          support-bot:
            training:
              trigger: {min_new_feedback: \(minNewFeedback), min_interval: 1h, schedule: "daily 03:00"}
              gate: {max_forgetting: 0.05}

        """
    }

    @Test func policyFromTheFileOnStartAndSighup() throws {
        let d = try LoradProcess(config: Self.yaml(minNewFeedback: 50))
        defer { d.stop() }
        let file = d.dir.appendingPathComponent("lorad.yaml").path
        func shown(_ name: String = "support-bot") throws -> (Int, [String: Any]) {
            let r = try d.get("/v1/adapters/\(name)/training")
            return (r.status, (try? r.json()) ?? [:])
        }
        func trigger(_ o: [String: Any]) -> [String: Any] { ((o["policy"] as? [String: Any])?["trigger"] as? [String: Any]) ?? [:] }
        /// Polls (bounded) until `done` holds for what GET shows: the reload applies policies after it returns.
        func waitFor(_ name: String = "support-bot", _ done: (Int, [String: Any]) -> Bool) throws -> Bool {
            for _ in 0..<600 {
                let (s, o) = try shown(name)
                if done(s, o) { return true }
                usleep(100_000)
            }
            return false
        }

        var (status, o) = try shown()
        #expect(status == 200 && o["origin"] as? String == "config", "\(o)")
        #expect(trigger(o)["min_new_feedback"] as? Int == 50 && trigger(o)["min_interval"] as? String == "1h")
        #expect(trigger(o)["schedule"] as? String == "daily 03:00")
        #expect(((o["policy"] as? [String: Any])?["gate"] as? [String: Any])?["max_forgetting"] as? Double == 0.05)
        // A policy set through the API beside it.
        let put = try d.raw(HTTP.request(method: "PUT", path: "/v1/adapters/manual/training", body: Array("{}".utf8)))
        let putShown = try put.json()
        #expect(put.status == 200 && putShown["origin"] as? String == "api", "\(put.text)")

        // Edit the file, SIGHUP: the new values.
        try Self.yaml(minNewFeedback: 7).write(toFile: file, atomically: true, encoding: .utf8)
        kill(d.process.processIdentifier, SIGHUP)
        #expect(try waitFor { s, o in s == 200 && trigger(o)["min_new_feedback"] as? Int == 7 })
        (status, o) = try shown()
        #expect(o["origin"] as? String == "config")

        // A file that does not validate: the reload fails, the policy stays as it was.
        try "adapters:\n  support-bot:\n    training: {method: rl}\n".write(toFile: file, atomically: true, encoding: .utf8)
        kill(d.process.processIdentifier, SIGHUP)
        usleep(500_000)
        (status, o) = try shown()
        #expect(status == 200 && trigger(o)["min_new_feedback"] as? Int == 7)

        // Drop it from the file, SIGHUP: 404; the API's policy stays.
        try "log_level: warning\n".write(toFile: file, atomically: true, encoding: .utf8)
        kill(d.process.processIdentifier, SIGHUP)
        #expect(try waitFor { s, _ in s == 404 })
        (status, o) = try shown("manual")
        #expect(status == 200 && o["origin"] as? String == "api")
        #expect(try d.get("/health").status == 200)
    }

    @Test func aBadPolicyStopsTheStartWithItsDottedKey() throws {
        let d = try LoradProcess(
            waitReady: false,
            config: "adapters:\n  support-bot:\n    training:\n      trigger: {min_interval: soon}\n")
        defer { d.stop() }
        d.process.waitUntilExit()
        #expect(d.process.terminationStatus != 0)
        let err = d.stderrText()
        #expect(err.contains("adapters.support-bot.training.trigger.min_interval: must be a duration"), "\(err)")
    }
}
