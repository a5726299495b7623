// loractl against a real lorad: output on stdout, API errors as a message on stderr with a non-zero exit code,
// and the adapter commands end to end (add by path and by upload, list, show, generate --model, rm).

import Foundation
import Testing

/// Runs loractl with `args` (socket given by LORAD_SOCKET); returns (exit status, stdout, stderr).
func loractl(_ d: LoradProcess?, _ args: [String], socket: String? = nil) throws -> (Int32, String, String) {
    let p = Process()
    let lorad = try Paths.loradBinary()
    let bin = ProcessInfo.processInfo.environment["LORACTL_BIN"].flatMap { $0.isEmpty ? nil : $0 }
        ?? (lorad as NSString).deletingLastPathComponent + "/loractl"
    p.executableURL = URL(fileURLWithPath: bin)
    p.arguments = args
    var env = ProcessInfo.processInfo.environment
    env["LORAD_SOCKET"] = socket ?? d?.socket
    p.environment = env
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}

@Suite(.serialized) struct LoractlTests {
    @Test func clientCommandsAndErrors() throws {
        let ref = try Paths.referenceDir() + "/lora-r8"
        let d = try LoradProcess(extra: ["--adapter-import-dir", ref])
        defer { d.stop() }
        var r = try loractl(d, ["models"])
        #expect(r.0 == 0 && r.1 == "gemma-3-270m-q4_k_m\n", "\(r)")
        r = try loractl(d, ["status"])
        #expect(r.0 == 0 && r.1.contains("status: ok") && r.1.contains("model: gemma-3-270m-q4_k_m"), "\(r)")
        // Greedy generation prints the same text as the API returns for the same request.
        let api = try d.post("/v1/completions", json: ["prompt": "The capital of France is", "max_tokens": 8, "temperature": 0])
        let text = try #require(((try api.json()["choices"] as? [[String: Any]])?.first?["text"]) as? String)
        r = try loractl(d, ["generate", "--max-tokens", "8", "--temperature", "0", "The capital of France is"])
        #expect(r.0 == 0 && r.1 == text + "\n", "\(r)")
        // API errors: message on stderr, exit 1.
        r = try loractl(d, ["generate", "--model", "nope", "hi"])
        #expect(r.0 == 1 && r.2.contains("nope") && r.2.contains("404"), "\(r)")
        r = try loractl(nil, ["models"], socket: d.dir.path + "/absent.sock")
        #expect(r.0 != 0 && r.2.contains("cannot connect"), "\(r)")

        // Adapters: by path (inside the import dir) and by upload.
        r = try loractl(d, ["adapters", "add", "r8", try AdapterFixtures.referenceGGUF()])
        #expect(r.0 == 0 && r.1.hasPrefix("r8: version "), "\(r.2)")
        r = try loractl(d, ["adapters", "add", "up", "--upload", try AdapterFixtures.referencePEFT()])
        #expect(r.0 == 0 && r.1.hasPrefix("up: version "), "\(r.2)")
        r = try loractl(d, ["adapters", "add", "up", "--no-replace", "--upload", try AdapterFixtures.referencePEFT()])
        #expect(r.0 == 1 && r.2.contains("409"), "\(r)")
        r = try loractl(d, ["adapters", "list"])
        let lines = r.1.split(separator: "\n")
        #expect(lines.count == 3 && lines[1].hasPrefix("r8 ") && lines[2].hasPrefix("up "))
        r = try loractl(d, ["adapters", "show", "up"])
        let shown = try #require(try JSONSerialization.jsonObject(with: Data(r.1.utf8)) as? [String: Any])
        #expect(shown["format"] as? String == "peft" && shown["rank"] as? Int == 8 && shown["source"] as? String == "upload")
        // generate --model uses the adapter: the same text as the API with model=r8.
        let viaAPI = try d.post("/v1/completions", json: ["model": "r8", "prompt": "Hello", "max_tokens": 6, "temperature": 0])
        let adapterText = try #require(((try viaAPI.json()["choices"] as? [[String: Any]])?.first?["text"]) as? String)
        r = try loractl(d, ["generate", "--model", "up", "--max-tokens", "6", "--temperature", "0", "Hello"])
        #expect(r.0 == 0 && r.1 == adapterText + "\n", "\(r)")
        r = try loractl(d, ["adapters", "rm", "r8"])
        #expect(r.0 == 0, "\(r)")
        r = try loractl(d, ["adapters", "rm", "r8"])
        #expect(r.0 == 1 && r.2.contains("404"), "\(r)")
    }
}
