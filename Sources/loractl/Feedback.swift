// loractl feedback: rate or correct a stored completion, and export feedback as fine-tuning data.
//
//   loractl feedback COMPLETION_ID --up | --down | --correction TEXT [--comment TEXT]
//   loractl feedback export --model NAME [--format sft|dpo]       JSONL on stdout (admin callers)

import ArgumentParser
import Foundation

struct Feedback: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Give feedback on a stored completion, or export feedback as JSONL.",
        subcommands: [Give.self, Export.self], defaultSubcommand: Give.self)

    struct Give: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "give",
            abstract: "Rate or correct a completion that was made with store: true.",
            discussion: "Prints the feedback id. At least one of --up, --down and --correction is needed.")
        @OptionGroup var socket: SocketOption
        @Argument(help: "The completion's id (chatcmpl-… or cmpl-…).")
        var completionID: String
        @Flag(help: "Thumbs up (rating 1).")
        var up = false
        @Flag(help: "Thumbs down (rating -1).")
        var down = false
        @Option(help: "A better answer.")
        var correction: String?
        @Option(help: "A free-text comment.")
        var comment: String?

        func validate() throws {
            if up && down { throw ValidationError("--up and --down exclude each other.") }
            if !up && !down && correction == nil { throw ValidationError("Give --up, --down or --correction.") }
        }

        func run() async throws {
            var body: [String: Any] = ["completion_id": completionID]
            if up { body["rating"] = 1 }
            if down { body["rating"] = -1 }
            if let correction { body["correction"] = correction }
            if let comment { body["comment"] = comment }
            do {
                let json = try JSONSerialization.data(withJSONObject: body)
                let (status, resp) = try await socket.client.fetch(method: .POST, path: "/v1/feedback", json: Array(json))
                guard (200..<300).contains(status) else { throw fail(errorMessage(resp, status: status)) }
                let obj = (try? JSONSerialization.jsonObject(with: Data(resp)) as? [String: Any]) ?? [:]
                writeOut("\(obj["id"] ?? "?")\n")
            } catch let e as ClientError {
                throw fail(e.description)
            }
        }
    }

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a model's feedback as fine-tuning JSONL (sft: chat lines; dpo: preference pairs).")
        @OptionGroup var socket: SocketOption
        @Option(help: "The served model (base model id or adapter name).")
        var model: String
        @Option(help: "sft or dpo.")
        var format = "sft"

        func validate() throws {
            guard format == "sft" || format == "dpo" else { throw ValidationError("--format must be sft or dpo.") }
        }

        func run() async throws {
            let path = "/v1/feedback/export?model=\(query(model))&format=\(format)"
            do {
                let (status, resp) = try await socket.client.fetch(method: .GET, path: path)
                guard (200..<300).contains(status) else { throw fail(errorMessage(resp, status: status)) }
                writeOut(String(decoding: resp, as: UTF8.self))
            } catch let e as ClientError {
                throw fail(e.description)
            }
        }

        func query(_ s: String) -> String {
            s.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? s
        }
    }
}
