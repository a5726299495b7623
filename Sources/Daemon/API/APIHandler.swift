// APIHandler: one request in, one response out. Runs on Swift concurrency tasks (never blocks an event loop):
// tokenization happens here, generation on the engine's compute thread, tokens flow back through AsyncStreams.
// A client that disconnects cancels its sequences: the channel's close future and every failed write both
// reach Engine.cancel, which frees the sequence at the next step.

import Foundation
import Logging
import NIOCore
import NIOHTTP1

/// Shared, thread-safe view of the daemon for request handlers.
public final class ServerState: @unchecked Sendable {
    /// The loaded model with its engine.
    public struct Ready: Sendable {
        public let engine: Engine
        public let validator: RequestValidator
        public var backend: any InferenceBackend { engine.backend }
    }

    public enum Phase: Sendable {
        case loading
        case ready(Ready)
        case failed(String)
    }

    private let lock = NSLock()
    private var phaseValue: Phase = .loading
    private var drainingValue = false
    private var maxBodyBytesValue: Int
    private var maxUploadBytesValue: Int = 256 << 20
    private var maxFileUploadBytesValue: Int = 512 << 20
    private var registryValue: AdapterRegistry?
    private var adminPolicyValue = AdminPolicy()
    private var defaultMaxTokensValue: Int?
    private var storeValue: LoradStore?
    private var jobsValue: FineTuningJobs?
    private var continualValue: ContinualLoop?
    public let metrics: DaemonMetrics
    public let modelPath: String
    /// Paces fine-tuning jobs against serving (`training.min_share`); attached to the engine once it runs. A job
    /// sets it as its trainer's `pacer`.
    public let trainingGovernor = TrainingGovernor(minShare: 0.25)
    public let started = Date()

    public init(modelPath: String, maxBodyBytes: Int, metrics: DaemonMetrics) {
        self.modelPath = modelPath
        self.maxBodyBytesValue = maxBodyBytes
        self.metrics = metrics
    }

    public var phase: Phase {
        get { lock.withLock { phaseValue } }
        set { lock.withLock { phaseValue = newValue } }
    }
    public var isDraining: Bool {
        get { lock.withLock { drainingValue } }
        set { lock.withLock { drainingValue = newValue } }
    }
    public var maxBodyBytes: Int {
        get { lock.withLock { maxBodyBytesValue } }
        set { lock.withLock { maxBodyBytesValue = newValue } }
    }
    /// Largest `POST /v1/adapters` body (uploads), bytes.
    public var maxUploadBytes: Int {
        get { lock.withLock { maxUploadBytesValue } }
        set { lock.withLock { maxUploadBytesValue = newValue } }
    }
    /// Largest `POST /v1/files` body, bytes (`--max-upload-mb`).
    public var maxFileUploadBytes: Int {
        get { lock.withLock { maxFileUploadBytesValue } }
        set { lock.withLock { maxFileUploadBytesValue = newValue } }
    }
    /// The adapter registry (nil when there is no state directory).
    public var registry: AdapterRegistry? {
        get { lock.withLock { registryValue } }
        set { lock.withLock { registryValue = newValue } }
    }
    /// The durable store of completions and feedback (nil when there is no state directory).
    public var store: LoradStore? {
        get { lock.withLock { storeValue } }
        set { lock.withLock { storeValue = newValue } }
    }
    /// Fine-tuning jobs (nil when there is no state directory).
    public var jobs: FineTuningJobs? {
        get { lock.withLock { jobsValue } }
        set { lock.withLock { jobsValue = newValue } }
    }
    /// The continual-learning loop (nil when there is no state directory).
    public var continual: ContinualLoop? {
        get { lock.withLock { continualValue } }
        set { lock.withLock { continualValue = newValue } }
    }
    /// Who may manage adapters.
    public var adminPolicy: AdminPolicy {
        get { lock.withLock { adminPolicyValue } }
        set { lock.withLock { adminPolicyValue = newValue } }
    }
    /// `max_tokens` for generation requests that give none (`--default-max-tokens`; nil = the API's defaults).
    public var defaultMaxTokens: Int? {
        get { lock.withLock { defaultMaxTokensValue } }
        set { lock.withLock { defaultMaxTokensValue = newValue } }
    }

    /// The model id: the file stem (known before the model is loaded).
    public var modelID: String {
        if case .ready(let r) = phase { return r.backend.modelID }
        let file = (modelPath as NSString).lastPathComponent
        return file.hasSuffix(".gguf") ? String(file.dropLast(5)) : file
    }
}

final class APIHandler: @unchecked Sendable {
    let state: ServerState
    let logger: Logger

    init(state: ServerState, logger: Logger) {
        self.state = state
        self.logger = logger
    }

    /// Serves one request. Returns `false` when the connection must close afterwards.
    func handle(
        head: HTTPRequestHead, body: [UInt8], writer: ResponseWriter, channel: any Channel, peer: PeerCredentials?
    ) async -> Bool {
        var label = "other"
        var status = 500
        var keep = true
        do {
            try Route.checkNotBrowser(headerNames: head.headers.map(\.name))
            // HEAD is GET without the body (RFC 9110 §9.3.2); the writer drops the body bytes.
            let method = head.method == .HEAD ? "GET" : head.method.rawValue
            let route = try Route.resolve(method: method, uri: head.uri)
            label = route.template
            switch route {
            case .adapterTraining(let name):
                status = try await dispatchTrainingPolicy(name, method: method, body: body, peer: peer, writer: writer)
            case .adapters, .adapter, .adapterVersions, .adapterRollback, .loadLoRAAdapter, .unloadLoRAAdapter:
                status = try await dispatchAdapters(route, method: method, body: body, peer: peer, writer: writer)
            case .storedCompletion, .storedCompletionMessages, .feedback, .feedbackItem, .feedbackExport:
                status = try await dispatchStore(route, method: method, uri: head.uri, body: body, peer: peer, writer: writer)
            case .files, .file, .fileContent:
                status = try await dispatchFiles(route, method: method, uri: head.uri, body: body, peer: peer, writer: writer)
            case .fineTuningJobs, .fineTuningJob, .fineTuningJobAction, .fineTuningJobEvents, .fineTuningJobCheckpoints:
                status = try await dispatchJobs(route, method: method, uri: head.uri, body: body, peer: peer, writer: writer)
            case .chatCompletions where method == "GET":
                status = try await dispatchStore(route, method: method, uri: head.uri, body: body, peer: peer, writer: writer)
            default:
                status = try await dispatch(route, body: body, writer: writer, channel: channel, peer: peer)
            }
        } catch let e as APIError {
            status = e.status
            do { try await writer.send(error: e) } catch { keep = false }
        } catch {
            // A write failed: the client is gone.
            status = 499
            keep = false
        }
        state.metrics.recordRequest(route: label, status: status)
        logger.debug(
            "request", metadata: ["method": "\(head.method.rawValue)", "uri": "\(head.uri)", "status": "\(status)"])
        return keep
    }

    /// How long a generation request that arrives while the model loads waits for it (socket activation
    /// starts lorad on the first connection, and that request should be answered, not refused).
    static let loadWaitSeconds = 120.0

    func ready() async throws -> ServerState.Ready {
        var waited = 0.0
        while case .loading = state.phase, waited < Self.loadWaitSeconds, !state.isDraining {
            try await Task.sleep(for: .milliseconds(50))
            waited += 0.05
        }
        switch state.phase {
        case .ready(let r):
            if state.isDraining {
                throw APIError.unavailable("The server is shutting down.", retryAfter: 5, code: "shutting_down")
            }
            return r
        case .loading:
            throw APIError.unavailable("The model is still loading.", retryAfter: 2, code: "model_loading")
        case .failed(let m):
            throw APIError.unavailable("The model failed to load: \(m)", retryAfter: 60, code: "model_failed")
        }
    }

    private func dispatch(
        _ route: Route, body: [UInt8], writer: ResponseWriter, channel: any Channel, peer: PeerCredentials?
    ) async throws -> Int {
        switch route {
        case .health:
            switch state.phase {
            case .ready:
                try await writer.send(json: .object([("status", .string("ok"))]))
                return 200
            case .loading:
                try await writer.send(json: .object([("status", .string("loading"))]), status: 503)
                return 503
            case .failed(let m):
                try await writer.send(json: .object([("status", .string("error")), ("message", .string(m))]), status: 503)
                return 503
            }
        case .status:
            try await writer.send(json: statusBody())
            return 200
        case .metrics:
            try await writer.send(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: state.metrics.render())
            return 200
        case .models:
            let adapters = (state.registry?.list() ?? []).map(adapterModelObject)
            try await writer.send(json: .object([("object", .string("list")), ("data", .array([modelObject()] + adapters))]))
            return 200
        case .model(let id):
            if id == state.modelID {
                try await writer.send(json: modelObject())
            } else if let info = state.registry?.info(id) {
                try await writer.send(json: adapterModelObject(info))
            } else {
                throw APIError.modelNotFound(id, available: availableModels())
            }
            return 200
        case .completions:
            let raw = body
            var body = try RequestValidator.decode(CompletionRequestBody.self, from: body)
            var fields = try StoreFields(body: raw)
            if fields.store { _ = try store() }
            let r = try await ready()
            let (mix, served) = try await resolveAdapters(model: body.model, adapters: body.adapters)
            fields.applyPolicy(served: served, store: state.store)
            body.model = nil
            var prepared = try validator(r).prepare(body)
            prepared.attach(mix)
            for i in prepared.promptsWithOwnBOS { logOwnBOS(prompt: i, route: route) }
            return try await generate(
                prepared, served: served, ready: r, writer: writer, channel: channel, fields: fields, peer: peer)
        case .chatCompletions:
            let raw = body
            var body = try RequestValidator.decode(ChatRequestBody.self, from: body)
            var fields = try StoreFields(body: raw)
            if fields.store { _ = try store() }
            let r = try await ready()
            let (mix, served) = try await resolveAdapters(model: body.model, adapters: body.adapters)
            fields.applyPolicy(served: served, store: state.store)
            body.model = nil
            var prepared = try validator(r).prepare(body)
            prepared.attach(mix)
            return try await generate(
                prepared, served: served, ready: r, writer: writer, channel: channel, fields: fields, peer: peer)
        case .tokenize:
            var body = try RequestValidator.decode(TokenizeRequestBody.self, from: body)
            let r = try await ready()
            body.model = try tokenizerModel(body.model, ready: r)
            let result = try validator(r).tokenize(body)
            if result.bosFromText { logOwnBOS(prompt: 0, route: route) }
            try await writer.send(json: result.body)
            return 200
        case .detokenize:
            var body = try RequestValidator.decode(DetokenizeRequestBody.self, from: body)
            let r = try await ready()
            body.model = try tokenizerModel(body.model, ready: r)
            try await writer.send(json: try validator(r).detokenize(body))
            return 200
        default:
            throw APIError.routeNotFound(method: "GET", path: route.template)
        }
    }

    /// The model id a tokenize request names, mapped to the base model's when it names a registered adapter (they
    /// share its tokenizer). Absent stays absent: it decides the answer's shape.
    /// - Throws: ``APIError`` 404 for any other name.
    private func tokenizerModel(_ model: String?, ready r: ServerState.Ready) throws -> String? {
        guard let m = model, !m.isEmpty, m != r.backend.modelID else { return model }
        guard state.registry?.info(m) != nil else { throw APIError.modelNotFound(m, available: availableModels()) }
        return r.backend.modelID
    }

    /// A text prompt began with the BOS token's text: lorad did not add a second BOS (llama.cpp would, and warns).
    private func logOwnBOS(prompt: Int, route: Route) {
        logger.warning(
            "prompt starts with BOS; no second BOS added",
            metadata: ["route": "\(route.template)", "prompt_index": "\(prompt)"])
    }

    /// The ready model's validator with the current `default_max_tokens` (a reload may change it).
    private func validator(_ r: ServerState.Ready) -> RequestValidator {
        var v = r.validator
        v.defaultMaxTokens = state.defaultMaxTokens
        return v
    }

    /// A registered adapter as an OpenAI model object with vLLM's `parent` (the base model's id).
    private func adapterModelObject(_ info: AdapterInfo) -> JSONValue {
        .object([
            ("id", .string(info.record.name)), ("object", .string("model")),
            ("created", .int(Int(info.record.createdAt))), ("owned_by", .string("lorad")),
            ("root", .string(info.record.source)), ("parent", .string(state.modelID)),
            ("version", .int(info.record.version)),
        ])
    }

    private func modelObject() -> JSONValue {
        .object([
            ("id", .string(state.modelID)), ("object", .string("model")),
            ("created", .int(Int(state.started.timeIntervalSince1970))), ("owned_by", .string("lorad")),
            ("root", .string(state.modelPath)), ("parent", .null),
        ])
    }

    private func statusBody() -> JSONValue {
        var fields: [(String, JSONValue)] = []
        let phase = state.phase
        switch phase {
        case .loading: fields.append(("status", .string("loading")))
        case .ready: fields.append(("status", .string(state.isDraining ? "draining" : "ok")))
        case .failed: fields.append(("status", .string("error")))
        }
        fields.append(("model", .string(state.modelID)))
        fields.append(("model_path", .string(state.modelPath)))
        fields.append(("uptime_seconds", .double(Date().timeIntervalSince(state.started))))
        fields.append(("pid", .int(Int(ProcessInfo.processInfo.processIdentifier))))
        if case .ready(let r) = phase {
            let s = r.engine.snapshot
            let l = r.engine.currentLimits
            fields += [
                ("running_sequences", .int(s.running)), ("waiting_requests", .int(s.waiting)),
                ("max_sequences", .int(l.maxSequences)), ("max_queue", .int(l.maxQueue)),
                ("context_size", .int(l.contextSize)), ("kv_cache_bytes_used", .int(s.kvBytesUsed)),
                ("kv_cache_bytes_limit", .int(s.kvBytesLimit)), ("steps", .int(s.steps)),
            ]
        }
        if let a = state.registry?.stats {
            fields += [
                ("adapters_registered", .int(a.registered)), ("adapters_cached", .int(a.cached)),
                ("adapter_cache_bytes", .int(a.cachedBytes)), ("adapter_cache_limit_bytes", .int(a.cacheLimitBytes)),
                ("adapter_live_bytes", .int(a.liveBytes)), ("adapter_loads", .int(a.loads)),
                ("adapter_evictions", .int(a.evictions)),
            ]
        }
        return .object(fields)
    }

    // MARK: - Generation

    static func map(_ e: EngineError, param: String) -> APIError {
        switch e {
        case .queueFull(let l):
            return .unavailable(
                "The server is at capacity (\(l) requests waiting); retry later.", retryAfter: 1, code: "server_busy")
        case .shuttingDown:
            return .unavailable("The server is shutting down.", retryAfter: 5, code: "shutting_down")
        case .exceedsKVBudget(let n, let l):
            return .invalidRequest(
                "The request needs \(n) bytes of kv_cache but the server's whole budget is \(l) bytes; reduce "
                    + "the prompt or \(param).", param: param, code: "kv_cache_budget_exceeded")
        case .exceedsContext(let p, let m, let c):
            return .contextLengthExceeded(context: c, promptTokens: p, maxTokens: m, param: param)
        case .invalidRequest(let m):
            return .invalidRequest(m)
        }
    }

    private func generate(
        _ prepared: PreparedRequest, served: String, ready r: ServerState.Ready, writer: ResponseWriter,
        channel: any Channel, fields: StoreFields, peer: PeerCredentials?
    ) async throws -> Int {
        let engine = r.engine
        let l = engine.currentLimits
        if prepared.generations.count > l.maxSequences + l.maxQueue {
            // Even an idle server could never hold them all: a 503 would invite retrying forever.
            throw APIError.invalidRequest(
                "The request has \(prepared.generations.count) prompts but the server holds at most "
                    + "\(l.maxSequences) running and \(l.maxQueue) waiting sequences (max_sequences, max_queue); "
                    + "send fewer prompts per request.", param: "prompt", code: "too_many_prompts")
        }
        var handles: [GenerationHandle] = []
        do {
            for g in prepared.generations { handles.append(try engine.submit(g)) }
        } catch let e as EngineError {
            for h in handles { engine.cancel(h.id) }
            throw Self.map(e, param: "max_tokens")
        }
        let ids = handles.map(\.id)
        // Client gone (EOF, reset) -> free the sequences at the next step, even while nothing is being written.
        channel.closeFuture.whenComplete { _ in for id in ids { engine.cancel(id) } }
        defer { for id in ids { engine.cancel(id) } }  // no-op for finished sequences

        let backend = r.backend
        let renderer = ResponseRenderer(
            kind: prepared.kind, model: served, logprobs: prepared.logprobs,
            tokensAsIDs: prepared.tokensAsIDs, tokenBytes: { backend.tokenBytes($0) })
        if !prepared.stream {
            var results: [ChoiceResult] = []
            for h in handles {
                var c = ChoiceResult()
                for await event in h.events { c.add(event) }
                results.append(c)
            }
            if let failed = results.compactMap(\.summary).first(where: { $0.reason == .error }) {
                throw APIError.internalError(failed.errorMessage ?? "generation failed")
            }
            if results.contains(where: { $0.summary == nil || $0.summary?.reason == .cancelled }) {
                if !channel.isActive { throw CancellationError() }
                throw APIError.unavailable("The request was cancelled (shutdown).", retryAfter: 5, code: "cancelled")
            }
            // store: true -> on disk before the response is sent (a full disk answers 507 instead).
            try await record(fields, prepared: prepared, renderer: renderer, results: results, peer: peer)
            try await writer.send(json: renderer.response(results), headers: Self.adapterHeaders(prepared))
            return 200
        }
        try await streamEvents(
            handles, prepared: prepared, renderer: renderer, writer: writer, fields: fields, peer: peer)
        return 200
    }

    /// `X-Lorad-Adapters: name@version*scale, ...`: the exact adapter versions that served the request.
    static func adapterHeaders(_ prepared: PreparedRequest) -> [(String, String)] {
        guard let mix = prepared.generations.first?.adapters, !mix.entries.isEmpty else { return [] }
        let value = mix.entries.map { "\($0.name)@\($0.version)*\($0.scale)" }.joined(separator: ", ")
        return [("X-Lorad-Adapters", value)]
    }

    private func streamEvents(
        _ handles: [GenerationHandle], prepared: PreparedRequest, renderer: ResponseRenderer, writer: ResponseWriter,
        fields: StoreFields, peer: PeerCredentials?
    ) async throws {
        try await writer.startStream(status: 200, contentType: "text/event-stream", headers: Self.adapterHeaders(prepared))
        let usageField = prepared.includeUsage
        if prepared.kind == .chat {
            for i in handles.indices {
                try await writer.write(
                    SSE.event(
                        renderer.chunk(
                            index: i, text: "", tokens: [], offsetStart: 0, finishReason: nil, role: true,
                            includeUsageField: usageField)))
            }
        }
        // Merge the per-choice streams into one ordered sequence of writes.
        let (merged, mergedContinuation) = AsyncStream<(Int, GenerationEvent)>.makeStream()
        let feeders = Task {
            await withTaskGroup(of: Void.self) { group in
                for (i, h) in handles.enumerated() {
                    group.addTask { for await e in h.events { mergedContinuation.yield((i, e)) } }
                }
            }
            mergedContinuation.finish()
        }
        defer { feeders.cancel() }
        var offsets = [Int](repeating: 0, count: handles.count)
        var prompt = 0
        var completion = 0
        var failure: String?
        var results = [ChoiceResult](repeating: ChoiceResult(), count: handles.count)
        for await (i, event) in merged {
            if fields.store { results[i].add(event) }
            switch event {
            case .token(let t):
                if t.text.isEmpty && prepared.logprobs == nil { continue }
                try await writer.write(
                    SSE.event(
                        renderer.chunk(
                            index: i, text: t.text, tokens: [t], offsetStart: offsets[i], finishReason: nil,
                            includeUsageField: usageField)))
                offsets[i] += t.text.unicodeScalars.count
            case .finished(let s):
                prompt += s.promptTokens
                completion += s.completionTokens
                if s.reason == .error { failure = s.errorMessage ?? "generation failed" }
                if !s.trailingText.isEmpty {
                    try await writer.write(
                        SSE.event(
                            renderer.chunk(
                                index: i, text: s.trailingText, tokens: [], offsetStart: offsets[i],
                                finishReason: nil, includeUsageField: usageField)))
                    offsets[i] += s.trailingText.unicodeScalars.count
                }
                if let reason = ResponseRenderer.finishReason(s.reason), s.reason != .error {
                    try await writer.write(
                        SSE.event(
                            renderer.chunk(
                                index: i, text: "", tokens: [], offsetStart: offsets[i], finishReason: reason,
                                includeUsageField: usageField)))
                }
            }
        }
        // The closing events and the end of the chunked body in one write (see ResponseWriter).
        var tail: [String] = []
        if let failure {
            tail.append(SSE.event(APIError.internalError(failure).body))
        }
        if prepared.includeUsage {
            tail.append(SSE.event(renderer.usageChunk(prompt: prompt, completion: completion)))
        }
        // store: true -> recorded before [DONE], so a client that saw [DONE] can read it back at once; a store
        // failure (e.g. 507 on a full disk) is sent as an error event instead of being lost silently.
        if fields.store && failure == nil && results.allSatisfy({ $0.summary != nil && $0.summary?.reason != .cancelled }) {
            do {
                try await record(fields, prepared: prepared, renderer: renderer, results: results, peer: peer)
            } catch let e as APIError {
                tail.append(SSE.event(e.body))
            }
        }
        tail.append(SSE.done)
        try await writer.end(after: tail)
    }
}
