// Commands: `lorad` (root) with `serve` (default), `bench` and `train`.

import ArgumentParser
import Foundation
import NIOCore
import Logging

/// `lorad`: serve one GGUF model over a Unix socket.
public struct LoradCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "lorad",
        abstract: "Serve a quantized language model over a Unix socket with an OpenAI-style API.",
        subcommands: [ServeCommand.self, BenchCommand.self, TrainCommand.self],
        defaultSubcommand: ServeCommand.self)

    public init() {}

    /// Parses the process arguments and runs the chosen subcommand, awaiting async ones.
    ///
    /// `main.swift` calls this instead of `main()`: from top-level code the synchronous `ParsableCommand.main()`
    /// overload can be picked, which runs the synchronous `run()` (printing help) instead of the async one.
    public static func runAsMain() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            // `lorad train` documents exit status 2 for usage errors (ArgumentParser's default is 64).
            if CommandLine.arguments.dropFirst().first == TrainCommand.configuration.commandName,
               exitCode(for: error) == .validationFailure {
                FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
                Foundation.exit(2)
            }
            exit(withError: error)
        }
    }
}

/// `lorad serve`: the daemon.
public struct ServeCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Load the model and serve requests (the default command).",
        discussion: """
            Settings come from flags, then the YAML config file (--config, else /etc/lorad/lorad.yaml if it \
            exists; keys are the flag names with underscores, e.g. max_sequences: 8), then defaults.
            Default socket: $LORAD_SOCKET, else $RUNTIME_DIRECTORY/lorad.sock (systemd), else \
            $XDG_RUNTIME_DIR/lorad.sock, else ./lorad.sock. A socket-activated fd (LISTEN_FDS) is used instead \
            when present. SIGTERM drains in-flight requests; SIGHUP reloads the config file.
            """)

    @Option(help: "YAML config file (default: /etc/lorad/lorad.yaml if present).")
    var config: String?
    @Option(help: "GGUF model file (default: $LORAD_MODEL, then the installed default model).")
    var model: String?
    @Option(help: "Unix socket path to listen on.")
    var socket: String?
    @Option(name: .customLong("state-dir"), help: "Directory for persistent state (default: $STATE_DIRECTORY).")
    var stateDir: String?
    @Option(help: "Compute threads for the forward pass (default: number of CPUs).")
    var threads: Int?
    @Option(name: .customLong("max-sequences"), help: "Sequences decoded concurrently (default 16).")
    var maxSequences: Int?
    @Option(name: .customLong("kv-cache-mb"), help: "kv_cache budget over all sequences, MiB (default 1024).")
    var kvCacheMB: Int?
    @Option(name: .customLong("max-queue"), help: "Requests waiting for a slot before 503 (default 64).")
    var maxQueue: Int?
    @Option(name: .customLong("max-body-bytes"), help: "Largest request body in bytes (default 1048576).")
    var maxBodyBytes: Int?
    @Option(name: .customLong("context-size"), help: "Served context in tokens (default min(4096, n_ctx_train)).")
    var contextSize: Int?
    @Option(name: .customLong("step-tokens"), help: "Rows per batched forward step (default 512).")
    var stepTokens: Int?
    @Option(name: .customLong("drain-timeout"), help: "Seconds to finish in-flight requests on SIGTERM (default 30).")
    var drainTimeout: Double?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String?
    @Option(name: .customLong("adapter-import-dir"), help: "Directory whose adapters may be registered by path (repeatable).")
    var adapterImportDirs: [String] = []
    @Option(name: .customLong("adapter-dir"), help: "Directory of adapters registered at startup and rescanned on SIGHUP.")
    var adapterDir: String?
    @Option(name: .customLong("adapter-cache-mb"), help: "Resident adapter weights budget, MiB (default 512).")
    var adapterCacheMB: Int?
    @Option(name: .customLong("adapter-keep-versions"), help: "Versions kept per adapter name, besides pinned and in-use ones (default 10).")
    var adapterKeepVersions: Int?
    @Option(name: .customLong("admin-group"), help: "Group allowed to manage adapters, besides root and lorad's user.")
    var adminGroup: String?
    @Option(name: .customLong("max-upload-bytes"), help: "Largest adapter upload body in bytes (default 268435456).")
    var maxUploadBytes: Int?
    @Option(name: .customLong("read-timeout"), help: "Seconds a silent client may hold a half-sent request or idle connection (default 30).")
    var readTimeout: Double?
    @Option(name: .customLong("batch-copy-mb"), help: "Memory for batch copies of q4_0/q5_0 projections, MiB; 0: none (default 1024).")
    var batchCopyMB: Int?
    @Option(
        name: .customLong("max-prefill-tokens-per-step"),
        help: "Prompt tokens one forward step may prefill; longer prompts go in chunks (default 256).")
    var maxPrefillTokensPerStep: Int?
    @Option(
        name: .customLong("step-time-target"),
        help: "Seconds one forward step should take; prefill chunks are sized to fit (0: no bound; default 0.5).")
    var stepTimeTarget: Double?
    @Option(
        name: .customLong("default-max-tokens"),
        help: "max_tokens for requests without one (default: 16 for completions, the rest of the context for chat).")
    var defaultMaxTokens: Int?
    @Option(name: .customLong("store-max-mb"), help: "Budget of stored completions, MiB; the oldest without feedback are pruned (default: unbounded).")
    var storeMaxMB: Int?
    @Option(name: .customLong("max-upload-mb"), help: "Largest POST /v1/files upload, MiB (default 512).")
    var maxUploadMB: Int?
    @Option(
        name: .customLong("training-min-share"),
        help: "Share of wall time a fine-tuning job keeps while serving is busy, 0...1; 0: train only while idle (default 0.25).")
    var trainingMinShare: Double?

    public init() {}

    var flags: ConfigLayer {
        var l = ConfigLayer()
        l.model = model
        l.socket = socket
        l.stateDir = stateDir
        l.threads = threads
        l.maxSequences = maxSequences
        l.kvCacheMB = kvCacheMB
        l.maxQueue = maxQueue
        l.maxBodyBytes = maxBodyBytes
        l.contextSize = contextSize
        l.stepTokens = stepTokens
        l.drainTimeout = drainTimeout
        l.logLevel = logLevel
        l.adapterImportDirs = adapterImportDirs.isEmpty ? nil : adapterImportDirs
        l.adapterDir = adapterDir
        l.adapterCacheMB = adapterCacheMB
        l.adapterKeepVersions = adapterKeepVersions
        l.adminGroup = adminGroup
        l.maxUploadBytes = maxUploadBytes
        l.readTimeout = readTimeout
        l.batchCopyMB = batchCopyMB
        l.maxPrefillTokensPerStep = maxPrefillTokensPerStep
        l.stepTimeTarget = stepTimeTarget
        l.defaultMaxTokens = defaultMaxTokens
        l.storeMaxMB = storeMaxMB
        l.maxUploadMB = maxUploadMB
        l.training = trainingMinShare.map { ConfigLayer.TrainingLayer(minShare: $0) }
        return l
    }

    public func run() async throws {
        let resolved: DaemonConfig
        do {
            resolved = try DaemonConfig.resolve(
                flags: flags, configPath: config, environment: ProcessInfo.processInfo.environment)
        } catch {
            throw ValidationError("\(error)")
        }
        do {
            try await LoradServer.run(config: resolved, flags: flags)
        } catch let e as SocketPathError {
            FileHandle.standardError.write(Data("lorad: \(e)\n".utf8))
            throw ExitCode(1)
        } catch let e as IOError {
            // A socket call failed (bind, listen, adopting a passed fd): strerror text rather than NIO's signature.
            let reason = String(cString: strerror(e.errnoCode))
            FileHandle.standardError.write(
                Data("lorad: cannot serve on \(resolved.socket): \(reason) (errno \(e.errnoCode))\n".utf8))
            throw ExitCode(1)
        }
    }
}
