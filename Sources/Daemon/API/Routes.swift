// Routes: the one route table. Paths are matched exactly (query strings ignored); each route accepts its
// methods, and any other method gets 405 with `Allow`. Adapter management routes are admin-only.

/// A resolved route.
public enum Route: Sendable, Equatable {
    case health
    case status
    case metrics
    case models
    case model(id: String)
    case completions
    case chatCompletions
    /// `GET` lists, `POST` registers.
    case adapters
    /// `GET` shows, `DELETE` unregisters.
    case adapter(name: String)
    /// `GET` the kept versions of an adapter, newest first.
    case adapterVersions(name: String)
    /// `POST {"version": N}` makes an earlier version current.
    case adapterRollback(name: String)
    /// `GET`/`PUT`/`DELETE` an adapter's training policy (admin).
    case adapterTraining(name: String)
    /// vLLM's `POST /v1/load_lora_adapter`.
    case loadLoRAAdapter
    /// vLLM's `POST /v1/unload_lora_adapter`.
    case unloadLoRAAdapter
    /// `POST /tokenize` (llama.cpp's and vLLM's body shapes).
    case tokenize
    /// `POST /detokenize` (llama.cpp's and vLLM's body shapes).
    case detokenize
    /// A stored completion: `GET` shows, `POST` updates metadata, `DELETE` deletes.
    case storedCompletion(id: String)
    /// `GET` the input messages of a stored completion.
    case storedCompletionMessages(id: String)
    /// `GET` lists, `POST` records feedback.
    case feedback
    /// `GET` one feedback item.
    case feedbackItem(id: String)
    /// `GET` feedback as fine-tuning JSONL.
    case feedbackExport
    /// `GET` lists files, `POST` uploads one (multipart/form-data).
    case files
    /// `GET` shows a file, `DELETE` deletes it.
    case file(id: String)
    /// `GET` a file's content.
    case fileContent(id: String)
    /// `GET` lists fine-tuning jobs, `POST` creates one.
    case fineTuningJobs
    /// `GET` one fine-tuning job.
    case fineTuningJob(id: String)
    /// `POST` `cancel`, `pause` or `resume` of a fine-tuning job.
    case fineTuningJobAction(id: String, action: String)
    /// `GET` a fine-tuning job's events.
    case fineTuningJobEvents(id: String)
    /// `GET` a fine-tuning job's checkpoints.
    case fineTuningJobCheckpoints(id: String)

    /// Route template used as the `route` label in metrics.
    public var template: String {
        switch self {
        case .health: return "/health"
        case .status: return "/v1/status"
        case .metrics: return "/metrics"
        case .models: return "/v1/models"
        case .model: return "/v1/models/{id}"
        case .completions: return "/v1/completions"
        case .chatCompletions: return "/v1/chat/completions"
        case .adapters: return "/v1/adapters"
        case .adapter: return "/v1/adapters/{name}"
        case .adapterVersions: return "/v1/adapters/{name}/versions"
        case .adapterRollback: return "/v1/adapters/{name}/rollback"
        case .adapterTraining: return "/v1/adapters/{name}/training"
        case .loadLoRAAdapter: return "/v1/load_lora_adapter"
        case .unloadLoRAAdapter: return "/v1/unload_lora_adapter"
        case .tokenize: return "/tokenize"
        case .detokenize: return "/detokenize"
        case .storedCompletion: return "/v1/chat/completions/{id}"
        case .storedCompletionMessages: return "/v1/chat/completions/{id}/messages"
        case .feedback: return "/v1/feedback"
        case .feedbackItem: return "/v1/feedback/{id}"
        case .feedbackExport: return "/v1/feedback/export"
        case .files: return "/v1/files"
        case .file: return "/v1/files/{id}"
        case .fileContent: return "/v1/files/{id}/content"
        case .fineTuningJobs: return "/v1/fine_tuning/jobs"
        case .fineTuningJob: return "/v1/fine_tuning/jobs/{id}"
        case .fineTuningJobAction(_, let action): return "/v1/fine_tuning/jobs/{id}/\(action)"
        case .fineTuningJobEvents: return "/v1/fine_tuning/jobs/{id}/events"
        case .fineTuningJobCheckpoints: return "/v1/fine_tuning/jobs/{id}/checkpoints"
        }
    }

    /// The accepted methods.
    public var methods: [String] {
        switch self {
        case .completions, .loadLoRAAdapter, .unloadLoRAAdapter, .tokenize, .detokenize, .adapterRollback,
            .fineTuningJobAction:
            return ["POST"]
        case .adapters, .chatCompletions, .feedback, .files, .fineTuningJobs: return ["GET", "POST"]
        case .file: return ["GET", "DELETE"]
        case .adapterTraining: return ["GET", "PUT", "PATCH", "DELETE"]
        case .storedCompletion: return ["GET", "POST", "DELETE"]
        case .adapter: return ["GET", "DELETE"]
        default: return ["GET"]
        }
    }

    /// Whether `method` on this route changes the adapter registry (admin callers only).
    public func isManagement(method: String) -> Bool {
        switch self {
        case .adapters: return method == "POST"
        case .adapter: return method == "DELETE"
        case .loadLoRAAdapter, .unloadLoRAAdapter, .adapterRollback, .adapterTraining: return true
        default: return false
        }
    }

    /// Resolves `method` + request target.
    /// - Throws: ``APIError`` 404 for an unknown path, 405 (with `Allow`) for a wrong method.
    public static func resolve(method: String, uri: String) throws -> Route {
        var path = Substring(uri)
        if let q = path.firstIndex(where: { $0 == "?" || $0 == "#" }) { path = path[..<q] }
        while path.count > 1 && path.hasSuffix("/") { path = path.dropLast() }
        let route: Route
        switch path {
        case "/health": route = .health
        case "/v1/status": route = .status
        case "/metrics": route = .metrics
        case "/v1/models": route = .models
        case "/v1/completions": route = .completions
        case "/v1/chat/completions": route = .chatCompletions
        case "/v1/adapters": route = .adapters
        case "/v1/load_lora_adapter": route = .loadLoRAAdapter
        case "/v1/unload_lora_adapter": route = .unloadLoRAAdapter
        case "/tokenize": route = .tokenize
        case "/detokenize": route = .detokenize
        case "/v1/feedback": route = .feedback
        case "/v1/feedback/export": route = .feedbackExport
        case "/v1/files": route = .files
        case "/v1/fine_tuning/jobs": route = .fineTuningJobs
        default:
            let prefix = "/v1/models/"
            if path.hasPrefix(prefix), path.count > prefix.count {
                let id = String(path.dropFirst(prefix.count))
                route = .model(id: id.removingPercentEncodingSafely())
            } else if path.hasPrefix("/v1/adapters/"), path.count > "/v1/adapters/".count {
                let parts = path.dropFirst("/v1/adapters/".count).split(separator: "/", omittingEmptySubsequences: false)
                let name = String(parts[0]).removingPercentEncodingSafely()
                switch (parts.count, parts.count > 1 ? parts[1] : "") {
                case (1, _): route = .adapter(name: name)
                case (2, "versions") where !name.isEmpty: route = .adapterVersions(name: name)
                case (2, "rollback") where !name.isEmpty: route = .adapterRollback(name: name)
                case (2, "training") where !name.isEmpty: route = .adapterTraining(name: name)
                default: throw APIError.routeNotFound(method: method, path: String(path))
                }
            } else if path.hasPrefix("/v1/chat/completions/"), path.count > "/v1/chat/completions/".count {
                let rest = path.dropFirst("/v1/chat/completions/".count)
                let parts = rest.split(separator: "/", omittingEmptySubsequences: false)
                if parts.count == 1 {
                    route = .storedCompletion(id: String(parts[0]).removingPercentEncodingSafely())
                } else if parts.count == 2, parts[1] == "messages", !parts[0].isEmpty {
                    route = .storedCompletionMessages(id: String(parts[0]).removingPercentEncodingSafely())
                } else {
                    throw APIError.routeNotFound(method: method, path: String(path))
                }
            } else if path.hasPrefix("/v1/files/"), path.count > "/v1/files/".count {
                let parts = path.dropFirst("/v1/files/".count).split(separator: "/", omittingEmptySubsequences: false)
                if parts.count == 1 {
                    route = .file(id: String(parts[0]).removingPercentEncodingSafely())
                } else if parts.count == 2, parts[1] == "content", !parts[0].isEmpty {
                    route = .fileContent(id: String(parts[0]).removingPercentEncodingSafely())
                } else {
                    throw APIError.routeNotFound(method: method, path: String(path))
                }
            } else if path.hasPrefix("/v1/fine_tuning/jobs/"), path.count > "/v1/fine_tuning/jobs/".count {
                let parts = path.dropFirst("/v1/fine_tuning/jobs/".count).split(separator: "/", omittingEmptySubsequences: false)
                let id = String(parts[0]).removingPercentEncodingSafely()
                switch (parts.count, parts.count > 1 ? String(parts[1]) : "") {
                case (1, _) where !id.isEmpty: route = .fineTuningJob(id: id)
                case (2, "cancel"), (2, "pause"), (2, "resume"):
                    route = .fineTuningJobAction(id: id, action: String(parts[1]))
                case (2, "events"): route = .fineTuningJobEvents(id: id)
                case (2, "checkpoints"): route = .fineTuningJobCheckpoints(id: id)
                default: throw APIError.routeNotFound(method: method, path: String(path))
                }
            } else if path.hasPrefix("/v1/feedback/"), path.count > "/v1/feedback/".count,
                !path.dropFirst("/v1/feedback/".count).contains("/")
            {
                route = .feedbackItem(id: String(path.dropFirst("/v1/feedback/".count)).removingPercentEncodingSafely())
            } else {
                throw APIError.routeNotFound(method: method, path: String(path))
            }
        }
        guard route.methods.contains(method) else {
            throw APIError.methodNotAllowed(method: method, path: String(path), allowed: route.methods)
        }
        return route
    }

    /// 403 when the request comes from a web page: browsers always send `Origin` on cross-origin POSTs and
    /// usually `Referer`; lorad's clients (curl, SDKs, loractl) send neither.
    public static func checkNotBrowser(headerNames: [String]) throws {
        for name in headerNames {
            let lower = name.lowercased()
            if lower == "origin" { throw APIError.forbiddenBrowser(header: "Origin") }
            if lower == "referer" { throw APIError.forbiddenBrowser(header: "Referer") }
        }
    }
}

extension String {
    /// Percent-decodes `%XX` escapes; malformed escapes are kept as they are.
    func removingPercentEncodingSafely() -> String {
        var bytes: [UInt8] = []
        let u = Array(utf8)
        var i = 0
        func hex(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: return c - 48
            case 65...70: return c - 55
            case 97...102: return c - 87
            default: return nil
            }
        }
        while i < u.count {
            if u[i] == 37, i + 2 < u.count, let h = hex(u[i + 1]), let l = hex(u[i + 2]) {
                bytes.append(h << 4 | l)
                i += 3
            } else {
                bytes.append(u[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
