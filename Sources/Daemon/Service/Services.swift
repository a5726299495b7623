// Services: the daemon's long-running parts under swift-service-lifecycle. ServiceGroup starts them in order
// (engine, then API) and on SIGTERM/SIGINT shuts them down in reverse: the API stops accepting, drains
// in-flight requests within the drain timeout (then cancels what is left), and only then the engine stops.

import Foundation
import Logging
import NIOCore
import ServiceLifecycle

/// Loads the model, runs the engine's compute thread, keeps systemd's STATUS= and watchdog up to date.
final class EngineService: Service, @unchecked Sendable {
    let config: DaemonConfig
    let state: ServerState
    let logger: Logger
    private let lock = NSLock()
    private var engine: Engine?

    init(config: DaemonConfig, state: ServerState, logger: Logger) {
        self.config = config
        self.state = state
        self.logger = logger
    }

    var currentEngine: Engine? { lock.withLock { engine } }

    /// Time asked of systemd with every loading step (`EXTEND_TIMEOUT_USEC=`): how long the next step may take
    /// before a start-up that has run past `TimeoutStartSec=` counts as hung. Generous, because one step (building
    /// a large model's tokenizer, a chunk of weights from a slow disk) must fit in it.
    static let loadStepAllowance: Duration = .seconds(30)

    func run() async throws {
        let watchdog = SystemdNotifier.watchdogInterval
        let pinger = Watchdog(interval: watchdog)
        SystemdNotifier.status("loading model \(config.model)")
        logger.info("loading model", metadata: ["model": "\(config.model)", "threads": "\(config.threads)"])
        let loadStart = Date()
        // Load off the cooperative pool. Every loading step reports progress: STATUS= for `systemctl status`, and
        // EXTEND_TIMEOUT_USEC= so that a slow but progressing start-up is not killed at TimeoutStartSec=. (The
        // watchdog only runs once READY=1 is sent.)
        let loadTask = Task.detached { [config, logger] in
            try ModelLoading.load(
                path: config.model, options: .init(threads: config.threads, batchCopyBytes: config.batchCopyMB << 20)
            ) { step in
                SystemdNotifier.extendTimeout(by: Self.loadStepAllowance, status: "loading model \(config.model): \(step)")
                logger.debug("loading", metadata: ["step": "\(step)"])
            }
        }
        let backend: RuntimeBackend
        do {
            backend = try await loadTask.value
        } catch {
            let message = "\(error)"
            state.phase = .failed(message)
            logger.critical("model failed to load", metadata: ["model": "\(config.model)", "error": "\(message)"])
            SystemdNotifier.status("model failed to load: \(message)")
            throw error
        }
        for note in backend.model.tokenizer.loadNotes { logger.warning("tokenizer metadata", metadata: ["note": "\(note)"]) }
        if let registry = state.registry {
            registry.attach(backend: backend)
            if registry.scanDir != nil {
                let log = logger
                Task {
                    let added = await registry.rescan()
                    if !added.isEmpty { log.notice("adapters registered from the adapter directory", metadata: ["adapters": "\(added.joined(separator: ","))"]) }
                }
            }
        }
        let limits = config.engineLimits(trainedContext: backend.trainedContextLength, watchdog: watchdog)
        let engine = Engine(
            backend: backend, limits: limits, metrics: state.metrics, heartbeat: { pinger.ping() },
            idleWakeInterval: watchdog.map { min(1, Self.seconds($0) / 4) } ?? 1)
        state.trainingGovernor.minShare = config.trainingMinShare
        // While serving is busy a job trains on half the threads: on 2 cores, 1 trainer thread beside serving's 2
        // kept aggregate decode at 0.93x and p99 inter-token latency at 1.27x of serving alone, where 2 gave
        // 0.80x and 1.64x for the same trainer progress (lorad bench --serving-while-training, README).
        state.trainingGovernor.busyThreadLimit = TrainingGovernor.defaultBusyThreads(trainerThreads: config.threads)
        state.trainingGovernor.attach(to: engine)
        engine.start()
        lock.withLock { self.engine = engine }
        state.defaultMaxTokens = config.defaultMaxTokens
        state.phase = .ready(
            ServerState.Ready(engine: engine, validator: RequestValidator(backend: backend, contextSize: limits.contextSize)))
        logger.info(
            "model ready",
            metadata: [
                "model": "\(backend.modelID)", "load_seconds": "\(String(format: "%.2f", Date().timeIntervalSince(loadStart)))",
                "context_size": "\(limits.contextSize)", "kv_bytes_per_token": "\(backend.kvBytesPerToken)",
                "max_sequences": "\(limits.maxSequences)", "batch_copy_bytes": "\(backend.model.batchCopyBytes)",
                "max_prefill_tokens_per_step": "\(limits.maxPrefillTokensPerStep)",
                "step_time_target": "\(limits.stepTimeTarget.map { String($0) } ?? "none")",
            ])
        SystemdNotifier.ready(status: Self.statusLine(engine.snapshot))

        // Until shutdown: refresh STATUS= when the load changes.
        await cancelWhenGracefulShutdown {
            var last = ""
            while !Task.isCancelled {
                var line = Self.statusLine(engine.snapshot)
                if let job = self.state.jobs?.statusFragment { line += "; " + job }
                if line != last {
                    SystemdNotifier.status(line)
                    last = line
                }
                try? await Task.sleep(for: .seconds(1))
            }
        }
        // The API service (started after us) has already drained; stop the compute thread.
        engine.shutdown()
        logger.info("engine stopped")
    }

    static func statusLine(_ s: EngineSnapshot) -> String {
        "serving \(s.running) sequence\(s.running == 1 ? "" : "s"), \(s.waiting) waiting"
    }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
    }
}

/// Rate-limited WATCHDOG=1 pings (at most one per interval/8), a no-op when systemd set no watchdog.
///
/// Called from the engine's heartbeat, i.e. after every step: the gap between two pings is at most interval/8
/// plus one step, and steps are kept under interval/4 (``DaemonConfig/stepTimeTarget(watchdog:)``), so pings
/// come well within interval/2 (sd_watchdog_enabled(3)) while the engine makes progress, and stop when it hangs.
final class Watchdog: @unchecked Sendable {
    private let minGap: Double?
    private let lock = NSLock()
    private var last = Date.distantPast

    init(interval: Duration?) {
        minGap = interval.map { EngineService.seconds($0) / 8 }
    }

    func ping() {
        guard let gap = minGap else { return }
        let now = Date()
        let due: Bool = lock.withLock {
            if now.timeIntervalSince(last) >= gap {
                last = now
                return true
            }
            return false
        }
        if due { SystemdNotifier.watchdog() }
    }
}

/// Serves HTTP on the listening socket; on graceful shutdown stops accepting and drains.
final class APIService: Service, @unchecked Sendable {
    let server: HTTPServer
    let channel: HTTPServer.ServerChannel
    let state: ServerState
    let engineService: EngineService
    let drainTimeout: Double
    let logger: Logger

    init(
        server: HTTPServer, channel: HTTPServer.ServerChannel, state: ServerState, engineService: EngineService,
        drainTimeout: Double, logger: Logger
    ) {
        self.server = server
        self.channel = channel
        self.state = state
        self.engineService = engineService
        self.drainTimeout = drainTimeout
        self.logger = logger
    }

    func run() async throws {
        let serverChannel = channel.channel
        try await withGracefulShutdownHandler {
            try await server.serve(channel)
        } onGracefulShutdown: { [self] in
            SystemdNotifier.stopping()
            logger.notice("draining", metadata: ["timeout_seconds": "\(drainTimeout)"])
            state.isDraining = true
            engineService.currentEngine?.stopAccepting()
            serverChannel.close(promise: nil)
            server.connections.beginDrain()
            let engine = engineService.currentEngine
            let timeout = drainTimeout
            Task.detached { [server, logger] in
                let deadline = Date().addingTimeInterval(timeout)
                while Date() < deadline {
                    if server.connections.count == 0 { return }
                    try? await Task.sleep(for: .milliseconds(100))
                }
                logger.warning("drain timeout reached; cancelling remaining requests")
                engine?.cancelAll()
                try? await Task.sleep(for: .seconds(2))
                server.connections.closeAll()
            }
        }
        await server.shutdownEventLoops()
        logger.info("listener closed")
    }
}

/// Runs the fine-tuning jobs (one at a time) until shutdown. Started after the API and so stopped before it: on
/// SIGTERM the running job stops at its next step boundary, checkpointed, and stays `running` to continue after
/// the restart.
final class JobService: Service, @unchecked Sendable {
    let jobs: FineTuningJobs

    init(jobs: FineTuningJobs) {
        self.jobs = jobs
    }

    func run() async throws {
        let jobs = self.jobs
        await withGracefulShutdownHandler {
            await jobs.run()
        } onGracefulShutdown: {
            jobs.shutdown()
        }
    }
}

/// Runs the continual-learning loop (training policies → fine-tuning jobs) until shutdown.
final class ContinualService: Service, @unchecked Sendable {
    let loop: ContinualLoop

    init(loop: ContinualLoop) {
        self.loop = loop
    }

    func run() async throws {
        let loop = self.loop
        await withGracefulShutdownHandler {
            await loop.run()
        } onGracefulShutdown: {
            loop.shutdown()
        }
    }
}
