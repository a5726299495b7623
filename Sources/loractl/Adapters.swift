// loractl adapters: manage lorad's LoRA adapter registry (admin callers: root, lorad's user, the admin group).
//
//   loractl adapters list                        name, version, rank, resident, source
//   loractl adapters add NAME PATH [--upload]    register (PATH inside an import dir, or uploaded from here)
//   loractl adapters show NAME                   every field as JSON
//   loractl adapters rm NAME                     unregister (every version)
//   loractl adapters versions NAME               kept versions, newest first, with lineage
//   loractl adapters rollback NAME VERSION       make an earlier version current again

import ArgumentParser
import NIOHTTP1
import Foundation

struct Adapters: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage LoRA adapters (list, add, show, rm, versions, rollback).",
        subcommands: [List.self, Add.self, Show.self, Remove.self, Versions.self, Rollback.self, Training.self],
        defaultSubcommand: List.self)

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List registered adapters.")
        @OptionGroup var socket: SocketOption

        func run() async throws {
            do {
                let obj = try await getJSON(socket.client, "/v1/adapters")
                let rows = (obj["data"] as? [[String: Any]]) ?? []
                writeOut(pad(["NAME", "VERSION", "FORMAT", "RANK", "ALPHA", "MB", "RESIDENT", "KEPT", "SOURCE"]) + "\n")
                for a in rows {
                    let mb = Double((a["bytes"] as? Int) ?? 0) / 1_048_576
                    writeOut(
                        pad([
                            "\(a["name"] ?? "?")", "\(a["version"] ?? "?")", "\(a["format"] ?? "?")", "\(a["rank"] ?? "?")",
                            a["alpha"].map { "\($0)" } ?? "-", String(format: "%.1f", mb),
                            ((a["resident"] as? Bool) ?? false) ? "yes" : "no", "\(a["versions"] ?? "?")", "\(a["source"] ?? "")",
                        ]) + "\n")
                }
            } catch let e as ClientError {
                throw fail(e.description)
            }
        }

        func pad(_ cols: [String]) -> String {
            let widths = [24, 8, 7, 5, 7, 7, 9, 5, 0]
            return zip(cols, widths).map { c, w in w == 0 ? c : c.padding(toLength: max(w, c.count + 1), withPad: " ", startingAt: 0) }
                .joined()
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Register PATH under NAME (a new version if NAME exists).",
            discussion: """
                PATH is a llama.cpp .gguf adapter or a PEFT directory (adapter_config.json + \
                adapter_model.safetensors). Without --upload, lorad reads PATH itself and it must lie inside one of \
                its --adapter-import-dir directories; with --upload, loractl reads the files and sends them.
                """)
        @OptionGroup var socket: SocketOption
        @Argument(help: "Adapter name (what requests put in `model`).")
        var name: String
        @Argument(help: "A .gguf file or a PEFT adapter directory.")
        var path: String
        @Flag(help: "Send the files in the request instead of a path.")
        var upload = false
        @Flag(name: .customLong("no-replace"), help: "Fail if NAME is already registered.")
        var noReplace = false

        func run() async throws {
            var body: [String: Any] = ["name": name, "replace": !noReplace]
            if upload {
                body["files"] = try files(at: path)
            } else {
                body["path"] = URL(fileURLWithPath: path).standardizedFileURL.path
            }
            do {
                let json = try JSONSerialization.data(withJSONObject: body)
                let (status, resp) = try await socket.client.fetch(method: .POST, path: "/v1/adapters", json: Array(json))
                guard (200..<300).contains(status) else { throw fail(errorMessage(resp, status: status)) }
                let obj = (try? JSONSerialization.jsonObject(with: Data(resp)) as? [String: Any]) ?? [:]
                let replaced = (obj["replaced_version"] as? Int).map { " (replaces version \($0))" } ?? ""
                writeOut("\(name): version \(obj["version"] ?? "?")\(replaced), sha256 \(obj["sha256"] ?? "?")\n")
            } catch let e as ClientError {
                throw fail(e.description)
            }
        }

        /// The adapter's files, base64, by name.
        func files(at path: String) throws -> [String: String] {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { throw fail("\(path) does not exist") }
            func read(_ p: String) throws -> String {
                guard let d = FileManager.default.contents(atPath: p) else { throw fail("cannot read \(p)") }
                return d.base64EncodedString()
            }
            if !isDir.boolValue { return [(path as NSString).lastPathComponent: try read(path)] }
            let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
            if names.contains("adapter_config.json") {
                return [
                    "adapter_config.json": try read(path + "/adapter_config.json"),
                    "adapter_model.safetensors": try read(path + "/adapter_model.safetensors"),
                ]
            }
            let ggufs = names.filter { $0.hasSuffix(".gguf") }
            guard ggufs.count == 1 else { throw fail("\(path) holds no PEFT adapter and not exactly one .gguf file") }
            return [ggufs[0]: try read(path + "/" + ggufs[0])]
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one adapter as JSON.")
        @OptionGroup var socket: SocketOption
        @Argument var name: String

        func run() async throws {
            do {
                let obj = try await getJSON(socket.client, "/v1/adapters/" + escape(name))
                let d = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])
                writeOut(String(decoding: d, as: UTF8.self) + "\n")
            } catch let e as ClientError {
                throw fail(e.description)
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rm", abstract: "Unregister an adapter (running requests finish on it).")
        @OptionGroup var socket: SocketOption
        @Argument var name: String

        func run() async throws {
            do {
                let (status, resp) = try await socket.client.fetch(method: .DELETE, path: "/v1/adapters/" + escape(name))
                guard (200..<300).contains(status) else { throw fail(errorMessage(resp, status: status)) }
                writeOut("\(name): removed\n")
            } catch let e as ClientError {
                throw fail(e.description)
            }
        }
    }

    struct Versions: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the kept versions of an adapter, newest first (* = current), with their lineage.")
        @OptionGroup var socket: SocketOption
        @Argument var name: String
        @Flag(help: "Print the API's JSON instead of a table.")
        var json = false

        func run() async throws {
            do {
                let obj = try await getJSON(socket.client, "/v1/adapters/" + escape(name) + "/versions")
                if json {
                    let d = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])
                    writeOut(String(decoding: d, as: UTF8.self) + "\n")
                    return
                }
                let rows = (obj["data"] as? [[String: Any]]) ?? []
                writeOut(pad(["", "VERSION", "CREATED", "PARENT", "JOB", "FORMAT", "RANK", "SHA256", "GATE"]) + "\n")
                let time = DateFormatter()
                time.dateFormat = "yyyy-MM-dd HH:mm:ss"
                for v in rows {
                    let created = (v["created_at"] as? Int).map { time.string(from: Date(timeIntervalSince1970: Double($0))) } ?? "?"
                    let gate = v["gate"].flatMap { g -> String? in
                        guard !(g is NSNull), let d = try? JSONSerialization.data(withJSONObject: g, options: [.sortedKeys, .fragmentsAllowed])
                        else { return nil }
                        return String(decoding: d, as: UTF8.self)
                    } ?? "-"
                    writeOut(
                        pad([
                            ((v["current"] as? Bool) ?? false) ? "*" : "", "\(v["version"] ?? "?")", created,
                            (v["parent_version"] as? Int).map(String.init) ?? "-", (v["job_id"] as? String) ?? "-",
                            "\(v["format"] ?? "?")", "\(v["rank"] ?? "?")", String(((v["sha256"] as? String) ?? "?").prefix(12)), gate,
                        ]) + "\n")
                }
            } catch let e as ClientError {
                throw fail(e.description)
            }
        }

        func pad(_ cols: [String]) -> String {
            let widths = [2, 8, 20, 7, 30, 7, 5, 13, 0]
            return zip(cols, widths).map { c, w in w == 0 ? c : c.padding(toLength: max(w, c.count + 1), withPad: " ", startingAt: 0) }
                .joined()
        }
    }

    struct Rollback: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make an earlier version of an adapter current again (running requests finish on theirs).")
        @OptionGroup var socket: SocketOption
        @Argument var name: String
        @Argument(help: "A version listed by `loractl adapters versions NAME`.")
        var version: Int

        func run() async throws {
            do {
                let json = try JSONSerialization.data(withJSONObject: ["version": version])
                let (status, resp) = try await socket.client.fetch(
                    method: .POST, path: "/v1/adapters/" + escape(name) + "/rollback", json: Array(json))
                guard (200..<300).contains(status) else { throw fail(errorMessage(resp, status: status)) }
                let obj = (try? JSONSerialization.jsonObject(with: Data(resp)) as? [String: Any]) ?? [:]
                writeOut("\(name): version \(obj["version"] ?? version) is current (was \(obj["rolled_back_from"] ?? "?"))\n")
            } catch let e as ClientError {
                throw fail(e.description)
            }
        }
    }
}

extension Adapters {
    /// `loractl adapters training set|update|show|off NAME`: an adapter's training policy (continual learning).
    struct Training: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set, change, show or remove an adapter's training policy (admin).",
            subcommands: [Set.self, Update.self, Show.self, Off.self])

        struct Set: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Set the policy from JSON (PUT /v1/adapters/NAME/training); keys the body omits keep their defaults.")
            @OptionGroup var socket: SocketOption
            @Argument var name: String
            @Option(help: "The policy as JSON, e.g. '{\"trigger\": {\"min_new_feedback\": 20}}'; '-' reads stdin.")
            var json: String = "{}"

            func run() async throws {
                try await policyRequest(socket, method: .PUT, name: name, body: jsonArgument(json))
            }
        }

        struct Update: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Change some keys of the policy (PATCH /v1/adapters/NAME/training, a JSON merge patch); the others stay.")
            @OptionGroup var socket: SocketOption
            @Argument var name: String
            @Option(help: "The keys to change as JSON, e.g. '{\"gate\": {\"max_forgetting\": 0.05}}'; null resets a key; '-' reads stdin.")
            var json: String

            func run() async throws {
                try await policyRequest(socket, method: .PATCH, name: name, body: jsonArgument(json))
            }
        }

        struct Show: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Print the policy as JSON.")
            @OptionGroup var socket: SocketOption
            @Argument var name: String
            func run() async throws { try await policyRequest(socket, method: .GET, name: name, body: nil) }
        }

        struct Off: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Remove the policy: no more automatic jobs.")
            @OptionGroup var socket: SocketOption
            @Argument var name: String
            func run() async throws { try await policyRequest(socket, method: .DELETE, name: name, body: nil) }
        }
    }
}

/// The bytes of a `--json` argument: the text itself, or standard input for `-`.
func jsonArgument(_ json: String) -> [UInt8] {
    json == "-" ? Array(FileHandle.standardInput.readDataToEndOfFile()) : Array(json.utf8)
}

/// Sends one training-policy request and prints the JSON answer (exit code 1 with the error message otherwise).
func policyRequest(_ socket: SocketOption, method: HTTPMethod, name: String, body: [UInt8]?) async throws {
    do {
        let (status, resp) = try await socket.client.fetch(
            method: method, path: "/v1/adapters/" + escape(name) + "/training", json: body)
        guard (200..<300).contains(status) else { throw fail(errorMessage(resp, status: status)) }
        writeOut(String(decoding: resp, as: UTF8.self) + "\n")
    } catch let e as ClientError {
        throw fail(e.description)
    }
}

func escape(_ s: String) -> String { s.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? s }
