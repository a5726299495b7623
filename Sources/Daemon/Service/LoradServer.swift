// LoradServer: process wiring for `lorad serve`: logging, the listening socket (socket-activated fd or a bound
// path), the ServiceGroup (engine, API), and SIGHUP reloads.
//
// Order of events: bind/adopt the socket (so /health answers "loading" at once) -> load the model -> READY=1.
// SIGHUP: RELOADING=1 -> re-read the config file (flags still win) -> apply limits, body size and log level live;
// settings that need a restart are logged, the config file's training policies are applied to the store -> READY=1.
// A config that fails to parse or validate keeps the old settings and policies.

import Dispatch
import Foundation
import Logging
import NIOCore
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A log level shared by every logger of the process, changeable at run time (SIGHUP reload).
public final class SharedLogLevel: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Logger.Level
    public init(_ level: Logger.Level) { value = level }
    public var level: Logger.Level {
        get { lock.withLock { value } }
        set { lock.withLock { value = newValue } }
    }
}

/// Wraps a handler so its level follows a ``SharedLogLevel``.
struct DynamicLevelHandler: LogHandler {
    var inner: any LogHandler
    let shared: SharedLogLevel
    var logLevel: Logger.Level {
        get { shared.level }
        set { shared.level = newValue }
    }
    var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = newValue }
    }
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue }
    }
    func log(event: LogEvent) { inner.log(event: event) }
}

/// Runs the daemon until SIGTERM/SIGINT.
public enum LoradServer {
    static let logLevel = SharedLogLevel(.info)
    private static let bootstrapOnce: Void = {
        let shared = logLevel
        if !JournalLogging.bootstrapIfJournal(level: .trace) {
            LoggingSystem.bootstrap { label in
                var h = StreamLogHandler.standardError(label: label)
                h.logLevel = .trace
                return DynamicLevelHandler(inner: h, shared: shared)
            }
        }
    }()

    /// Sets up logging once per process at `level`.
    public static func bootstrapLogging(level: Logger.Level) {
        logLevel.level = level
        _ = bootstrapOnce
    }

    /// Runs `lorad serve` with resolved settings.
    /// - Parameters:
    ///   - config: resolved settings.
    ///   - flags: the command-line layer, re-applied over the config file on reload.
    public static func run(config: DaemonConfig, flags: ConfigLayer) async throws {
        bootstrapLogging(level: config.logLevel)
        var logger = Logger(label: "lorad")
        logger.logLevel = config.logLevel
        if JournalLogging.stderrIsJournal() {
            // The journal handler has its own level; keep it in step with the config.
            logger.logLevel = config.logLevel
        }
        let metrics = DaemonMetrics()
        let state = ServerState(modelPath: config.model, maxBodyBytes: config.maxBodyBytes, metrics: metrics)
        state.maxUploadBytes = config.maxUploadBytes
        state.maxFileUploadBytes = config.maxUploadMB << 20
        state.adminPolicy = try AdminPolicy.resolve(adminGroup: config.adminGroup)
        if let dir = config.stateDir {
            let store = try LoradStore(stateDir: dir, maxBytes: config.storeMaxMB.map { $0 << 20 })
            let registry = try AdapterRegistry(
                stateDir: dir, baseModelID: state.modelID, importDirs: config.adapterImportDirs,
                scanDir: config.adapterDir, cacheBytes: config.adapterCacheMB << 20,
                keepVersions: config.adapterKeepVersions, store: store, logger: Logger(label: "lorad.adapters"))
            state.registry = registry
            metrics.setAdapterSource { registry.stats }
            logger.info(
                "adapter registry open",
                metadata: [
                    "state_dir": "\(dir)", "adapters": "\(registry.stats.registered)",
                    "import_dirs": "\(config.adapterImportDirs.joined(separator: ":"))",
                ])
            state.store = store
            metrics.setStoreSource { store.stats }
            let policyChanges = try await store.applyConfigPolicies(config.trainingPolicies, logger: logger)
            state.jobs = FineTuningJobs(
                store: store, files: store, stateDir: dir, state: state,
                logger: Logger(label: "lorad.jobs"))
            await state.jobs?.cancelContinualJobs(after: policyChanges, policies: config.trainingPolicies)
            state.continual = ContinualLoop(
                state: state, store: store, jobs: state.jobs!, logger: Logger(label: "lorad.continual"))
            logger.info(
                "store open",
                metadata: [
                    "path": "\(store.path)", "stored_completions": "\(store.stats.storedCompletions)",
                    "feedback": "\(store.stats.feedback)",
                ])
        } else {
            logger.warning("no state directory: adapter registration, stored completions and feedback are disabled")
        }
        let handler = APIHandler(state: state, logger: Logger(label: "lorad.api"))
        let server = HTTPServer(handler: handler, logger: Logger(label: "lorad.http"), readTimeout: config.readTimeout)

        let channel: HTTPServer.ServerChannel
        let activated = SocketActivation.listenFDs()
        if let fd = activated.first {
            channel = try await server.adopt(fd: fd)
            logger.info("adopted socket-activated listener", metadata: ["fd": "\(fd)", "count": "\(activated.count)"])
        } else {
            channel = try await server.bind(path: config.socket)
            logger.info("listening", metadata: ["socket": "\(config.socket)"])
        }

        let engineService = EngineService(config: config, state: state, logger: Logger(label: "lorad.engine"))
        let apiService = APIService(
            server: server, channel: channel, state: state, engineService: engineService,
            drainTimeout: config.drainTimeout, logger: Logger(label: "lorad.api"))

        let reloader = Reloader(
            config: config, flags: flags, state: state, engineService: engineService, logger: logger)
        let hup = reloader.installSignalHandler()
        defer { hup.cancel() }

        let group = ServiceGroup(
            configuration: .init(
                services: [
                    .init(service: engineService), .init(service: apiService),
                ] + (state.jobs.map { [.init(service: JobService(jobs: $0))] } ?? [])
                    + (state.continual.map { [.init(service: ContinualService(loop: $0))] } ?? []),
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: Logger(label: "lorad.lifecycle")))
        try await group.run()
        logger.info("stopped")
    }
}

/// Handles SIGHUP: re-read the config and apply what can change while running.
final class Reloader: @unchecked Sendable {
    private var config: DaemonConfig
    let flags: ConfigLayer
    let state: ServerState
    let engineService: EngineService
    let logger: Logger
    private let queue = DispatchQueue(label: "lorad.reload")
    /// The last reload's application of the config file's training policies; the next one waits for it.
    private var policyApply: Task<Void, Never>?

    init(config: DaemonConfig, flags: ConfigLayer, state: ServerState, engineService: EngineService, logger: Logger) {
        self.config = config
        self.flags = flags
        self.state = state
        self.engineService = engineService
        self.logger = logger
    }

    func installSignalHandler() -> any DispatchSourceSignal {
        signal(SIGHUP, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: queue)
        source.setEventHandler { [self] in reload() }
        source.resume()
        return source
    }

    /// Re-reads the config (the same file as at startup) and applies the live-changeable settings.
    func reload() {
        SystemdNotifier.reloading()
        logger.notice("reloading configuration", metadata: ["config": "\(config.configPath ?? "none")"])
        let new: DaemonConfig
        do {
            new = try DaemonConfig.resolve(
                flags: flags, configPath: config.configPath, environment: ProcessInfo.processInfo.environment)
        } catch {
            logger.error("reload failed; keeping the current configuration", metadata: ["error": "\(error)"])
            SystemdNotifier.reloaded(status: "reload failed: \(error)")
            return
        }
        let restartOnly = new.restartOnlyChanges(comparedTo: config)
        if !restartOnly.isEmpty {
            logger.warning(
                "changed settings take effect after a restart", metadata: ["settings": "\(restartOnly.joined(separator: ", "))"])
        }
        LoradServer.logLevel.level = new.logLevel
        state.maxBodyBytes = new.maxBodyBytes
        state.maxUploadBytes = new.maxUploadBytes
        state.maxFileUploadBytes = new.maxUploadMB << 20
        state.defaultMaxTokens = new.defaultMaxTokens
        state.trainingGovernor.minShare = new.trainingMinShare
        if let registry = state.registry {
            registry.setCacheLimit(bytes: new.adapterCacheMB << 20)
            registry.setKeepVersions(new.adapterKeepVersions)
            if registry.scanDir != nil {
                let log = logger
                Task {
                    let added = await registry.rescan()
                    log.notice("adapter directory rescanned", metadata: ["registered": "\(added.joined(separator: ","))"])
                }
            }
        }
        if let store = state.store {
            let (previous, policies, log, loop, jobs) = (policyApply, new.trainingPolicies, logger, state.continual, state.jobs)
            policyApply = Task {
                await previous?.value
                do {
                    let changes = try await store.applyConfigPolicies(policies, logger: log)
                    await jobs?.cancelContinualJobs(after: changes, policies: policies)
                    loop?.notify()
                } catch {
                    log.error("training policies from the config file not applied", metadata: ["error": "\(error)"])
                }
            }
        }
        var status = "reloaded"
        if let engine = engineService.currentEngine {
            var limits = engine.currentLimits
            limits.maxSequences = new.maxSequences
            limits.kvCacheBytes = new.kvCacheMB << 20
            limits.maxQueue = new.maxQueue
            limits.stepTokenBudget = new.stepTokens
            limits.maxPrefillTokensPerStep = new.maxPrefillTokensPerStep
            limits.stepTimeTarget = new.stepTimeTarget(watchdog: SystemdNotifier.watchdogInterval)
            engine.update(limits: limits)
            status = EngineService.statusLine(engine.snapshot)
        }
        var applied = new
        // Keep what did not change live, so the next diff is against what is running.
        applied.model = config.model
        applied.socket = config.socket
        applied.stateDir = config.stateDir
        applied.threads = config.threads
        applied.contextSize = config.contextSize
        config = applied
        logger.notice(
            "configuration reloaded",
            metadata: [
                "max_sequences": "\(new.maxSequences)", "kv_cache_mb": "\(new.kvCacheMB)", "max_queue": "\(new.maxQueue)",
                "max_body_bytes": "\(new.maxBodyBytes)", "log_level": "\(new.logLevel)",
                "adapter_cache_mb": "\(new.adapterCacheMB)", "adapter_keep_versions": "\(new.adapterKeepVersions)",
                "max_prefill_tokens_per_step": "\(new.maxPrefillTokensPerStep)",
                "step_time_target": "\(new.stepTimeTarget)",
                "default_max_tokens": "\(new.defaultMaxTokens.map { String($0) } ?? "none")",
                "training_min_share": "\(new.trainingMinShare)",
            ])
        SystemdNotifier.reloaded(status: status)
    }
}
