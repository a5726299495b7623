// loractl jobs: OpenAI-style fine-tuning jobs.
//
//   loractl jobs create --model NAME --training-file FILE_ID [--validation-file ID] [--method sft|dpo] [--beta X]
//                       [--epochs N] [--batch-size N] [--lr-multiplier X] [--rank R] [--alpha A] [--targets LIST]
//                       [--suffix NAME] [--seed N] [--checkpoint-every N] [--feedback-model NAME [--since T]]
//   loractl jobs list [--limit N] [--after ID]
//   loractl jobs show ID [--follow]        --follow: a live progress line (step, loss, ETA) until the job ends
//   loractl jobs events ID [--limit N]
//   loractl jobs cancel|pause|resume ID

import ArgumentParser
import Foundation

struct Jobs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create, list, follow and control fine-tuning jobs.",
        subcommands: [Create.self, List.self, Show.self, Events.self, Cancel.self, Pause.self, Resume.self])

    /// POSTs `body` (or nothing) and returns the JSON object, or exits with the server's message.
    static func post(_ client: UnixHTTPClient, _ path: String, _ body: [String: Any]) async throws -> [String: Any] {
        do {
            let json = try JSONSerialization.data(withJSONObject: body)
            let (status, resp) = try await client.fetch(method: .POST, path: path, json: Array(json))
            guard (200..<300).contains(status) else { throw fail(errorMessage(resp, status: status)) }
            guard let obj = try JSONSerialization.jsonObject(with: Data(resp)) as? [String: Any] else {
                throw fail("unexpected response from \(path)")
            }
            return obj
        } catch let e as ClientError {
            throw fail(e.description)
        }
    }

    static func get(_ client: UnixHTTPClient, _ path: String) async throws -> [String: Any] {
        do { return try await getJSON(client, path) } catch let e as ClientError { throw fail(e.description) }
    }

    /// One line per job: id, status, model → fine-tuned model, progress.
    static func summary(_ j: [String: Any]) -> String {
        let p = j["progress"] as? [String: Any] ?? [:]
        let step = p["step"] as? Int ?? 0
        let total = p["total_steps"] as? Int ?? 0
        var line = "\(j["id"] ?? "?")  \(j["status"] ?? "?")  \(j["model"] ?? "?")"
        if let f = j["fine_tuned_model"] as? String { line += " → \(f)" }
        if total > 0 { line += "  step \(step)/\(total)" }
        if let l = p["train_loss"] as? Double { line += String(format: "  loss %.4f", l) }
        if let e = j["error"] as? [String: Any], let m = e["message"] as? String { line += "  error: \(m)" }
        return line
    }

    static func pretty(_ obj: Any) -> String {
        guard let d = try? JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys]) else {
            return "\(obj)"
        }
        return String(decoding: d, as: UTF8.self) + "\n"
    }

    static func path(_ id: String, _ tail: String = "") -> String {
        let safe = id.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? id
        return "/v1/fine_tuning/jobs/\(safe)\(tail)"
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a fine-tuning job (admin callers); prints its id.",
            discussion: """
                --model is the base model's id (a new adapter) or an adapter's name (continue from its current \
                version). Data: --training-file (an uploaded file id) or --feedback-model (the feedback given on \
                that model's stored completions, optionally --since a Unix time). Unset hyperparameters are "auto".
                """)
        @OptionGroup var socket: SocketOption
        @Option(help: "Base model id or adapter name.")
        var model: String
        @Option(name: .customLong("training-file"), help: "Training file id.")
        var trainingFile: String?
        @Option(name: .customLong("validation-file"), help: "Validation file id.")
        var validationFile: String?
        @Option(name: .customLong("feedback-model"), help: "Train on the feedback of this model instead of a file.")
        var feedbackModel: String?
        @Option(help: "With --feedback-model: only feedback since this Unix time.")
        var since: Int?
        @Option(help: "sft or dpo.")
        var method = "sft"
        @Option(help: "DPO beta.")
        var beta: Double?
        @Option(help: "Epochs.")
        var epochs: Int?
        @Option(name: .customLong("batch-size"), help: "Batch size.")
        var batchSize: Int?
        @Option(name: .customLong("lr-multiplier"), help: "Learning-rate multiplier (1 = 1e-4).")
        var lrMultiplier: Double?
        @Option(help: "LoRA rank of a new adapter.")
        var rank: Int?
        @Option(help: "LoRA alpha of a new adapter.")
        var alpha: Double?
        @Option(help: "Patched projections, comma-separated (attn_q,…,ffn_down or q_proj,… or all).")
        var targets: String?
        @Option(help: "Name of the published adapter.")
        var suffix: String?
        @Option(help: "Seed.")
        var seed: Int?
        @Option(name: .customLong("checkpoint-every"), help: "Checkpoint every N steps.")
        var checkpointEvery: Int?

        func validate() throws {
            guard method == "sft" || method == "dpo" else { throw ValidationError("--method must be sft or dpo.") }
            if (trainingFile == nil) == (feedbackModel == nil) {
                throw ValidationError("Give --training-file or --feedback-model (one of them).")
            }
        }

        func run() async throws {
            var body: [String: Any] = ["model": model]
            if let trainingFile { body["training_file"] = trainingFile }
            if let validationFile { body["validation_file"] = validationFile }
            if let feedbackModel {
                var fb: [String: Any] = ["model": feedbackModel]
                if let since { fb["since"] = since }
                body["training_source"] = ["feedback": fb]
            }
            var hp: [String: Any] = [:]
            if let epochs { hp["n_epochs"] = epochs }
            if let batchSize { hp["batch_size"] = batchSize }
            if let lrMultiplier { hp["learning_rate_multiplier"] = lrMultiplier }
            let type = method == "dpo" ? "dpo" : "supervised"
            if let beta { hp["beta"] = beta }
            body["method"] = ["type": type, type: ["hyperparameters": hp]]
            var lora: [String: Any] = [:]
            if let rank { lora["rank"] = rank }
            if let alpha { lora["alpha"] = alpha }
            if let targets { lora["targets"] = targets }
            if !lora.isEmpty { body["lora"] = lora }
            if let suffix { body["suffix"] = suffix }
            if let seed { body["seed"] = seed }
            if let checkpointEvery { body["lorad"] = ["checkpoint_every": checkpointEvery] }
            let j = try await Jobs.post(socket.client, "/v1/fine_tuning/jobs", body)
            writeOut("\(j["id"] ?? "?")  \(j["status"] ?? "?")\n")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List fine-tuning jobs, newest first.")
        @OptionGroup var socket: SocketOption
        @Option(help: "At most this many (1-100).")
        var limit = 20
        @Option(help: "Start after this job id.")
        var after: String?

        func run() async throws {
            var path = "/v1/fine_tuning/jobs?limit=\(limit)"
            if let after { path += "&after=\(after)" }
            let list = try await Jobs.get(socket.client, path)
            for j in (list["data"] as? [[String: Any]]) ?? [] { writeOut(Jobs.summary(j) + "\n") }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a job (JSON), or follow it with a live progress line until it ends.")
        @OptionGroup var socket: SocketOption
        @Argument(help: "Job id (ftjob-…).")
        var id: String
        @Flag(help: "Draw a progress line (step, loss, ETA) until the job ends.")
        var follow = false

        func run() async throws {
            let client = socket.client
            guard follow else {
                writeOut(Jobs.pretty(try await Jobs.get(client, Jobs.path(id))))
                return
            }
            let tty = isatty(STDOUT_FILENO) == 1
            var last = ""
            while true {
                let j = try await Jobs.get(client, Jobs.path(id))
                let status = j["status"] as? String ?? "?"
                let line = Self.progressLine(j)
                if line != last {
                    writeOut(tty ? "\r\u{1B}[2K" + line : line + "\n")
                    last = line
                }
                if ["succeeded", "failed", "cancelled", "paused"].contains(status) {
                    if tty { writeOut("\n") }
                    writeOut(Jobs.summary(j) + "\n")
                    if status == "failed" || status == "cancelled" { throw ExitCode(1) }
                    return
                }
                try await Task.sleep(for: .milliseconds(500))
            }
        }

        /// `ftjob-… running [███████░░░] step 4/10 loss 1.2345 ETA 1m05s`.
        static func progressLine(_ j: [String: Any]) -> String {
            let p = j["progress"] as? [String: Any] ?? [:]
            let step = p["step"] as? Int ?? 0
            let total = p["total_steps"] as? Int ?? 0
            let width = 24
            let filled = total > 0 ? min(width, width * step / total) : 0
            var line = "\(j["id"] ?? "?") \(j["status"] ?? "?") "
            line += String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
            line += " step \(step)/\(total > 0 ? String(total) : "?")"
            if let l = p["train_loss"] as? Double { line += String(format: " loss %.4f", l) }
            if let eta = j["estimated_finish"] as? Int {
                let s = max(0, eta - Int(Date().timeIntervalSince1970))
                line += " ETA " + (s >= 60 ? String(format: "%dm%02ds", s / 60, s % 60) : "\(s)s")
            }
            return line
        }
    }

    struct Events: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a job's events, oldest first.")
        @OptionGroup var socket: SocketOption
        @Argument(help: "Job id.")
        var id: String
        @Option(help: "The newest N events (1-100).")
        var limit = 100

        func run() async throws {
            let list = try await Jobs.get(socket.client, Jobs.path(id, "/events?limit=\(limit)"))
            for e in ((list["data"] as? [[String: Any]]) ?? []).reversed() {
                let t = (e["created_at"] as? Int).map { Date(timeIntervalSince1970: Double($0)) }
                let time = t.map { ISO8601DateFormatter().string(from: $0) } ?? "?"
                writeOut("\(time)  \(e["level"] ?? "info")  \(e["message"] ?? "")\n")
            }
        }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cancel a job (a running one stops after its step).")
        @OptionGroup var socket: SocketOption
        @Argument(help: "Job id.")
        var id: String
        func run() async throws { writeOut(Jobs.summary(try await Jobs.post(socket.client, Jobs.path(id, "/cancel"), [:])) + "\n") }
    }

    struct Pause: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Pause a job at its next step (checkpointed).")
        @OptionGroup var socket: SocketOption
        @Argument(help: "Job id.")
        var id: String
        func run() async throws { writeOut(Jobs.summary(try await Jobs.post(socket.client, Jobs.path(id, "/pause"), [:])) + "\n") }
    }

    struct Resume: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Queue a paused job to continue from its checkpoint.")
        @OptionGroup var socket: SocketOption
        @Argument(help: "Job id.")
        var id: String
        func run() async throws { writeOut(Jobs.summary(try await Jobs.post(socket.client, Jobs.path(id, "/resume"), [:])) + "\n") }
    }
}
