// loractl: command-line client for lorad over its Unix socket.
//
//   loractl generate "Once upon a time"    stream a completion to stdout
//   loractl chat                            interactive chat (keeps the conversation)
//   loractl models | status                 what is served, and how busy it is
//   loractl adapters list|add|show|rm       manage LoRA adapters (see Adapters.swift)
//   loractl files upload|list|show|content|rm   training files (see Files.swift)
//   loractl jobs create|list|show|events|cancel|pause|resume   fine-tuning jobs (see Jobs.swift)
//
// Socket: --socket, else $LORAD_SOCKET, else /run/lorad/lorad.sock, $XDG_RUNTIME_DIR/lorad.sock or
// ./lorad.sock, whichever exists first. API errors print the server's message on stderr and exit non-zero.

import ArgumentParser
import Foundation
import NIOHTTP1

struct SocketOption: ParsableArguments {
    @Option(name: .long, help: "lorad's Unix socket (default: $LORAD_SOCKET or the standard locations).")
    var socket: String?

    var path: String {
        if let socket { return socket }
        let env = ProcessInfo.processInfo.environment
        if let s = env["LORAD_SOCKET"], !s.isEmpty { return s }
        var candidates = ["/run/lorad/lorad.sock"]
        if let x = env["XDG_RUNTIME_DIR"], !x.isEmpty { candidates.append(x + "/lorad.sock") }
        candidates.append("./lorad.sock")
        return candidates.first { FileManager.default.fileExists(atPath: $0) } ?? "./lorad.sock"
    }

    var client: UnixHTTPClient { UnixHTTPClient(socketPath: path) }
}

struct SamplingOptions: ParsableArguments {
    @Option(name: .customLong("max-tokens"), help: "Tokens to generate at most.")
    var maxTokens: Int?
    @Option(help: "Sampling temperature (0 = greedy).")
    var temperature: Double?
    @Option(name: .customLong("top-p"))
    var topP: Double?
    @Option(name: .customLong("top-k"))
    var topK: Int?
    @Option(help: "Seed for reproducible sampling.")
    var seed: Int?
    @Option(help: "Stop string (repeatable).")
    var stop: [String] = []
    @Option(help: "Model id or registered adapter name (default: the base model).")
    var model: String?

    func apply(to body: inout [String: Any]) {
        if let model { body["model"] = model }
        if let maxTokens { body["max_tokens"] = maxTokens }
        if let temperature { body["temperature"] = temperature }
        if let topP { body["top_p"] = topP }
        if let topK { body["top_k"] = topK }
        if let seed { body["seed"] = seed }
        if !stop.isEmpty { body["stop"] = stop }
    }
}

func writeOut(_ s: String) {
    FileHandle.standardOutput.write(Data(s.utf8))
}

func fail(_ message: String) -> ExitCode {
    FileHandle.standardError.write(Data("loractl: \(message)\n".utf8))
    return ExitCode(1)
}

/// The `error.message` of an OpenAI-style error body, or the body itself.
func errorMessage(_ body: [UInt8], status: Int) -> String {
    if let obj = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
        let err = obj["error"] as? [String: Any], let m = err["message"] as? String
    {
        return "\(m) (HTTP \(status))"
    }
    let text = String(decoding: body, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    return text.isEmpty ? "HTTP \(status)" : "\(text) (HTTP \(status))"
}

func getJSON(_ client: UnixHTTPClient, _ path: String) async throws -> [String: Any] {
    let (status, body) = try await client.fetch(method: .GET, path: path)
    guard (200..<300).contains(status) || (path == "/health" && status == 503) else {
        throw fail(errorMessage(body, status: status))
    }
    guard let obj = try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] else {
        throw fail("unexpected response from \(path)")
    }
    return obj
}

/// Streams a completion or chat request; prints text deltas as they arrive and returns the whole text.
func stream(_ client: UnixHTTPClient, path: String, body: [String: Any], chat: Bool) async throws -> String {
    var request = body
    request["stream"] = true
    let json = try JSONSerialization.data(withJSONObject: request)
    var status = 0
    var errorBody: [UInt8] = []
    var pending: [UInt8] = []
    var full = ""
    var streamError: String?
    try await client.send(
        method: .POST, path: path, json: Array(json),
        onHead: { status = $0 },
        onBody: { bytes in
            guard (200..<300).contains(status) else {
                errorBody += bytes
                return
            }
            pending += bytes
            // Events end with a blank line; handle every complete one.
            while let end = findEventEnd(pending) {
                let event = String(decoding: pending[..<end], as: UTF8.self)
                pending.removeFirst(end + 2)
                for line in event.split(separator: "\n") where line.hasPrefix("data:") {
                    let payload = line.dropFirst(5).trimmingCharacters(in: .whitespaces)
                    if payload == "[DONE]" { continue }
                    guard let obj = try? JSONSerialization.jsonObject(with: Data(payload.utf8)) as? [String: Any] else {
                        continue
                    }
                    if let err = obj["error"] as? [String: Any] {
                        streamError = (err["message"] as? String) ?? "generation failed"
                        continue
                    }
                    for choice in (obj["choices"] as? [[String: Any]]) ?? [] {
                        let text: String?
                        if chat {
                            text = (choice["delta"] as? [String: Any])?["content"] as? String
                        } else {
                            text = choice["text"] as? String
                        }
                        if let text, !text.isEmpty {
                            writeOut(text)
                            full += text
                        }
                    }
                }
            }
        })
    guard (200..<300).contains(status) else { throw fail(errorMessage(errorBody, status: status)) }
    if let streamError { throw fail(streamError) }
    return full
}

func findEventEnd(_ bytes: [UInt8]) -> Int? {
    guard bytes.count >= 2 else { return nil }
    for i in 0..<(bytes.count - 1) where bytes[i] == 10 && bytes[i + 1] == 10 { return i }
    return nil
}

@main
struct Loractl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loractl", abstract: "Talk to lorad over its Unix socket.",
        subcommands: [
            Generate.self, Chat.self, Models.self, Status.self, Adapters.self, Feedback.self, Files.self, Jobs.self,
            Bench.self,
        ])
}

struct Generate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stream a completion of PROMPT to stdout.")
    @OptionGroup var socket: SocketOption
    @OptionGroup var sampling: SamplingOptions
    @Argument(help: "The prompt text.")
    var prompt: String

    func run() async throws {
        var body: [String: Any] = ["prompt": prompt]
        sampling.apply(to: &body)
        if sampling.maxTokens == nil { body["max_tokens"] = 128 }
        do {
            _ = try await stream(socket.client, path: "/v1/completions", body: body, chat: false)
        } catch let e as ClientError {
            throw fail(e.description)
        }
        writeOut("\n")
    }
}

struct Chat: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Chat interactively; the conversation is kept until /reset. Type /exit or Ctrl-D to quit.")
    @OptionGroup var socket: SocketOption
    @OptionGroup var sampling: SamplingOptions
    @Option(help: "A system message to start the conversation with.")
    var system: String?

    func run() async throws {
        var history: [[String: String]] = []
        if let system { history.append(["role": "system", "content": system]) }
        let interactive = isatty(0) != 0
        while true {
            if interactive { writeOut("> ") }
            guard let line = readLine(strippingNewline: true) else { break }
            let text = line.trimmingCharacters(in: .whitespaces)
            if text.isEmpty { continue }
            if text == "/exit" || text == "/quit" { break }
            if text == "/reset" {
                history.removeAll()
                if let system { history.append(["role": "system", "content": system]) }
                continue
            }
            history.append(["role": "user", "content": text])
            var body: [String: Any] = ["messages": history]
            sampling.apply(to: &body)
            if sampling.maxTokens == nil { body["max_tokens"] = 256 }
            do {
                let reply = try await stream(socket.client, path: "/v1/chat/completions", body: body, chat: true)
                writeOut("\n")
                history.append(["role": "assistant", "content": reply])
            } catch let e as ClientError {
                throw fail(e.description)
            }
        }
    }
}

struct Models: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the served models.")
    @OptionGroup var socket: SocketOption

    func run() async throws {
        do {
            let obj = try await getJSON(socket.client, "/v1/models")
            for m in (obj["data"] as? [[String: Any]]) ?? [] {
                writeOut("\(m["id"] as? String ?? "?")\n")
            }
        } catch let e as ClientError {
            throw fail(e.description)
        }
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show health, model, load and uptime.")
    @OptionGroup var socket: SocketOption

    func run() async throws {
        do {
            let obj = try await getJSON(socket.client, "/v1/status")
            let order = [
                "status", "model", "model_path", "uptime_seconds", "running_sequences", "waiting_requests",
                "max_sequences", "context_size", "kv_cache_bytes_used", "kv_cache_bytes_limit", "steps", "pid",
            ]
            for key in order {
                guard let v = obj[key] else { continue }
                var text = "\(v)"
                var label = key.replacingOccurrences(of: "_", with: " ")
                if key == "uptime_seconds", let d = v as? Double { (label, text) = ("uptime", formatUptime(d)) }
                writeOut("\(label): \(text)\n")
            }
            if (obj["status"] as? String) != "ok" { throw ExitCode(2) }
        } catch let e as ClientError {
            throw fail(e.description)
        }
    }

    func formatUptime(_ s: Double) -> String {
        let t = Int(s)
        return String(format: "%dd %02dh %02dm %02ds", t / 86400, (t / 3600) % 24, (t / 60) % 60, t % 60)
    }
}
