// The official OpenAI Python SDK against the real daemon over its Unix socket (httpx's `uds` transport):
// stored chat completions, files, fine-tuning jobs (create / retrieve / list / events / checkpoints / cancel) and
// serving the fine-tuned adapter. The checks themselves are in scripts/openai_sdk_check.py, which anyone can run
// against their own daemon; scripts/setup.sh installs the pinned SDK into its venv.

import Foundation
import Testing

@Suite(.serialized)
struct OpenAISDKTests {
    static var repositoryRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    /// The venv of scripts/setup.sh ($LORAD_VENV, else ~/.local/share/lorad/venv).
    static var python: String {
        let env = ProcessInfo.processInfo.environment
        let venv = env["LORAD_VENV"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (env["HOME"] ?? NSHomeDirectory()) + "/.local/share/lorad/venv"
        return venv + "/bin/python3"
    }

    @Test func openAIPythonSDKOverTheUnixSocket() throws {
        guard FileManager.default.isExecutableFile(atPath: Self.python) else {
            Issue.record("no Python venv at \(Self.python): run scripts/setup.sh (it installs the OpenAI SDK)")
            return
        }
        // Trainings never share the 2 cores (LEARNING-DECISIONS #15): the job below takes the suite-wide lock.
        trainingLock.lock()
        defer { trainingLock.unlock() }
        do {
            let daemon = try LoradProcess()
            let model = try #require(try daemon.get("/v1/models").json()["data"] as? [[String: Any]]).first?["id"] as? String
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Self.python)
            p.arguments = [
                Self.repositoryRoot.appendingPathComponent("scripts/openai_sdk_check.py").path,
                "--socket", daemon.socket, "--model", try #require(model), "--timeout", "600",
            ]
            let out = Pipe()
            p.standardOutput = out
            p.standardError = out
            try p.run()
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            #expect(p.terminationStatus != 2, "the OpenAI SDK is missing from \(Self.python): run scripts/setup.sh")
            #expect(p.terminationStatus == 0, "openai_sdk_check.py failed:\n\(text)\n\(daemon.stderrText())")
            #expect(text.contains("\"checks\""), "no summary line:\n\(text)")
        }
    }
}
