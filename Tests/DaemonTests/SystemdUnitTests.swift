// The shipped systemd units and default config, checked with systemd's own tools and against the daemon's
// resolved defaults: `systemd-analyze verify` (with ExecStart= pointed at the built lorad, since verify insists
// that the executable exists), `systemd-analyze security`, and the documented values in systemd/lorad.yaml.

import Daemon
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The repository root, found from this file's path (Tests/DaemonTests/<file>).
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

/// Runs a tool to completion; returns its exit status and combined stdout + stderr.
func runTool(_ executable: String, _ arguments: [String], in directory: URL? = nil) throws -> (
    status: Int32, output: String
) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = arguments
    if let directory { p.currentDirectoryURL = directory }
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    try p.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

@Suite("systemd unit files")
struct SystemdUnitTests {
    static let systemdAnalyze = "/usr/bin/systemd-analyze"

    /// Copies lorad.socket and lorad.service into a fresh directory with `ExecStart=` naming `executable`.
    func stageUnits(executable: String) throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lorad-units-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        for name in ["lorad.socket", "lorad.service"] {
            var text = try String(
                contentsOf: repositoryRoot.appendingPathComponent("systemd/\(name)"), encoding: .utf8)
            text = text.replacingOccurrences(of: "ExecStart=/usr/local/bin/lorad ", with: "ExecStart=\(executable) ")
            try text.write(to: dir.appendingPathComponent(name), atomically: true, encoding: .utf8)
        }
        return dir
    }

    @Test("systemd-analyze verify accepts lorad.socket and lorad.service")
    func verifyPasses() throws {
        let dir = try stageUnits(executable: try Paths.loradBinary())
        defer { try? FileManager.default.removeItem(at: dir) }
        let r = try runTool(Self.systemdAnalyze, ["verify", "./lorad.socket", "./lorad.service"], in: dir)
        #expect(r.status == 0, "systemd-analyze verify: \(r.output)")
        let complaints = r.output.split(separator: "\n").filter { $0.contains("lorad") }
        #expect(complaints.isEmpty, "\(complaints)")
    }

    @Test("systemd-analyze verify rejects the units when ExecStart= names no executable (the check has teeth)")
    func verifyRejectsMissingExecutable() throws {
        let dir = try stageUnits(executable: "/nonexistent/lorad")
        defer { try? FileManager.default.removeItem(at: dir) }
        let r = try runTool(Self.systemdAnalyze, ["verify", "./lorad.socket", "./lorad.service"], in: dir)
        #expect(r.status != 0)
        #expect(r.output.contains("/nonexistent/lorad"))
    }

    @Test("systemd-analyze security rates the sandbox at most 1.5 (\"SAFE\" is below 2.0)")
    func securityExposure() throws {
        let dir = try stageUnits(executable: try Paths.loradBinary())
        defer { try? FileManager.default.removeItem(at: dir) }
        let r = try runTool(
            Self.systemdAnalyze, ["security", "--offline=yes", "--no-pager", "./lorad.service"], in: dir)
        let line = try #require(
            r.output.split(separator: "\n").first { $0.contains("Overall exposure level for lorad.service:") },
            "no overall exposure line in: \(r.output)")
        let number = line.split(separator: ":").last?.split(separator: " ").first.flatMap { Double($0) }
        let exposure = try #require(number, "cannot read the exposure in '\(line)'")
        #expect(exposure <= 1.5, "\(line)")
    }

    @Test("lorad.yaml: the shipped file parses, and every commented default equals the daemon's real default")
    func defaultConfigMatchesDefaults() throws {
        let url = repositoryRoot.appendingPathComponent("systemd/lorad.yaml")
        let text = try String(contentsOf: url, encoding: .utf8)
        let shipped = try ConfigFile.parse(text, path: url.path)
        // "#key: value" lines are the documented defaults; "# prose" lines (hash, space) stay comments.
        let uncommented = text.split(separator: "\n", omittingEmptySubsequences: false).map { line -> Substring in
            if line.hasPrefix("#"), let c = line.dropFirst().first, c.isLetter, line.contains(": ") {
                return line.dropFirst()
            }
            return line
        }.joined(separator: "\n")
        let documented = try ConfigFile.parse(uncommented, path: url.path + " (uncommented)")
        #expect(documented != shipped, "the file documents no defaults")

        // The environment lorad.service gives the daemon, on a 2-CPU machine.
        let env = [
            "RUNTIME_DIRECTORY": "/run/lorad", "STATE_DIRECTORY": "/var/lib/lorad",
            "CONFIGURATION_DIRECTORY": "/etc/lorad",
            "LORAD_MODEL": "/usr/local/share/lorad/models/gemma-3-270m-q4_k_m.gguf",
        ]
        let a = try DaemonConfig.resolve(layer: shipped, environment: env, fileExists: { _ in false }, processors: 2)
        let b = try DaemonConfig.resolve(layer: documented, environment: env, fileExists: { _ in false }, processors: 2)
        #expect(a.model == b.model)
        #expect(a.socket == b.socket)
        #expect(a.stateDir == b.stateDir)
        #expect(a.threads == b.threads)
        #expect(a.maxSequences == b.maxSequences)
        #expect(a.kvCacheMB == b.kvCacheMB)
        #expect(a.maxQueue == b.maxQueue)
        #expect(a.maxBodyBytes == b.maxBodyBytes)
        #expect(a.stepTokens == b.stepTokens)
        #expect(a.drainTimeout == b.drainTimeout)
        #expect(a.logLevel == b.logLevel)
        // The model used here (n_ctx_train 32768) gets min(4096, n_ctx_train) either way.
        #expect(a.engineLimits(trainedContext: 32768) == b.engineLimits(trainedContext: 32768))

        // Drain must finish before systemd's stop timeout kills the process.
        let unit = try String(
            contentsOf: repositoryRoot.appendingPathComponent("systemd/lorad.service"), encoding: .utf8)
        let stopLine = try #require(unit.split(separator: "\n").first { $0.hasPrefix("TimeoutStopSec=") })
        let stopSeconds = try #require(Double(stopLine.dropFirst("TimeoutStopSec=".count)))
        #expect(a.drainTimeout < stopSeconds)
    }
}
