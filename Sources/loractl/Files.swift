// loractl files: training files in lorad's store (OpenAI's Files API). Uploading and removing are admin operations.
//
//   loractl files upload PATH [--purpose fine-tune]   prints the new file id (the daemon validates every line)
//   loractl files list [--purpose P]                  id, bytes, lines, created, purpose, filename
//   loractl files show ID                             the file object as JSON
//   loractl files content ID                          the raw bytes on stdout
//   loractl files rm ID                               delete

import ArgumentParser
import Foundation

struct Files: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage training files (upload, list, show, content, rm).",
        subcommands: [Upload.self, List.self, Show.self, Content.self, Remove.self], defaultSubcommand: List.self)

    /// A `multipart/form-data` body as OpenAI's SDKs send it (RFC 7578): `purpose`, then the `file` part.
    static func multipart(purpose: String, filename: String, content: [UInt8]) -> (boundary: String, body: [UInt8]) {
        let boundary = (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        let name = filename.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
        var body = Array(
            ("--\(boundary)\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n\(purpose)\r\n"
                + "--\(boundary)\r\nContent-Disposition: form-data; name=\"file\"; filename=\"\(name)\"\r\n"
                + "Content-Type: application/octet-stream\r\n\r\n").utf8)
        body += content
        body += Array("\r\n--\(boundary)--\r\n".utf8)
        return (boundary, body)
    }

    struct Upload: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Upload a JSONL training file; prints its id.",
            discussion: "lorad checks every line (chat, prompt/completion or preference format) and names the first bad one.")
        @OptionGroup var socket: SocketOption
        @Argument(help: "The JSONL file.")
        var path: String
        @Option(help: "The file's purpose.")
        var purpose = "fine-tune"

        func run() async throws {
            guard let data = FileManager.default.contents(atPath: path) else { throw fail("cannot read \(path)") }
            let (boundary, body) = Files.multipart(
                purpose: purpose, filename: (path as NSString).lastPathComponent, content: Array(data))
            do {
                let (status, resp) = try await socket.client.fetch(
                    method: .POST, path: "/v1/files", json: body, contentType: "multipart/form-data; boundary=\(boundary)")
                guard (200..<300).contains(status) else { throw fail(errorMessage(resp, status: status)) }
                let obj = (try? JSONSerialization.jsonObject(with: Data(resp)) as? [String: Any]) ?? [:]
                writeOut("\(obj["id"] ?? "?")\n")
            } catch let e as ClientError {
                throw fail(e.description)
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List files, newest first.")
        @OptionGroup var socket: SocketOption
        @Option(help: "Only files with this purpose.")
        var purpose: String?

        func run() async throws {
            do {
                let path = "/v1/files" + (purpose.map { "?purpose=\(escape($0))" } ?? "")
                let obj = try await getJSON(socket.client, path)
                writeOut(pad(["ID", "BYTES", "LINES", "CREATED", "PURPOSE", "FILENAME"]) + "\n")
                let fmt = ISO8601DateFormatter()
                for f in (obj["data"] as? [[String: Any]]) ?? [] {
                    let created = (f["created_at"] as? Int).map { fmt.string(from: Date(timeIntervalSince1970: Double($0))) } ?? "?"
                    writeOut(
                        pad([
                            "\(f["id"] ?? "?")", "\(f["bytes"] ?? "?")", "\(f["line_count"] ?? "?")", created,
                            "\(f["purpose"] ?? "?")", "\(f["filename"] ?? "")",
                        ]) + "\n")
                }
            } catch let e as ClientError {
                throw fail(e.description)
            }
        }

        func pad(_ cols: [String]) -> String {
            let widths = [31, 11, 8, 22, 19, 0]
            return zip(cols, widths).map { c, w in w == 0 ? c : c.padding(toLength: max(w, c.count + 1), withPad: " ", startingAt: 0) }
                .joined()
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one file object as JSON.")
        @OptionGroup var socket: SocketOption
        @Argument var id: String

        func run() async throws {
            do {
                let obj = try await getJSON(socket.client, "/v1/files/" + escape(id))
                let d = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])
                writeOut(String(decoding: d, as: UTF8.self) + "\n")
            } catch let e as ClientError {
                throw fail(e.description)
            }
        }
    }

    struct Content: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write a file's content to stdout.")
        @OptionGroup var socket: SocketOption
        @Argument var id: String

        func run() async throws {
            do {
                var status = 0
                var errorBody: [UInt8] = []
                try await socket.client.send(
                    method: .GET, path: "/v1/files/" + escape(id) + "/content", onHead: { status = $0 },
                    onBody: { bytes in
                        if (200..<300).contains(status) {
                            FileHandle.standardOutput.write(Data(bytes))
                        } else {
                            errorBody += bytes
                        }
                    })
                guard (200..<300).contains(status) else { throw fail(errorMessage(errorBody, status: status)) }
            } catch let e as ClientError {
                throw fail(e.description)
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Delete a file.")
        @OptionGroup var socket: SocketOption
        @Argument var id: String

        func run() async throws {
            do {
                let (status, resp) = try await socket.client.fetch(method: .DELETE, path: "/v1/files/" + escape(id))
                guard (200..<300).contains(status) else { throw fail(errorMessage(resp, status: status)) }
                writeOut("\(id): deleted\n")
            } catch let e as ClientError {
                throw fail(e.description)
            }
        }
    }
}
