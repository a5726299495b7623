// StoreRoutes: stored completions (OpenAI's `store: true`) and feedback over HTTP.
//
//   GET    /v1/chat/completions                  list stored completions (model, metadata[k]=v, after, limit, order)
//   GET    /v1/chat/completions/{id}             one stored completion (the chat.completion / text_completion object)
//   GET    /v1/chat/completions/{id}/messages    its input messages (list)
//   POST   /v1/chat/completions/{id}             {"metadata": {...}}: replace its metadata
//   DELETE /v1/chat/completions/{id}             admin only
//   POST   /v1/feedback                          {"completion_id", "rating", "correction", "comment", "metadata"} -> 201
//   GET    /v1/feedback                          list (model, completion_id, after, limit)
//   GET    /v1/feedback/{id}                     one item
//   GET    /v1/feedback/export?model=&format=    JSONL in OpenAI's fine-tuning formats (sft chat lines, dpo pairs)
//
// Access (SO_PEERCRED): admins (AdminPolicy) read everything; another uid sees only the completions and feedback
// it created, and may post feedback only on its own completions. Unknown peers are treated as non-admins with no
// rows.

import Foundation

/// The `store` and `metadata` fields of a generation request (the rest is decoded by RequestValidator).
struct StoreFields {
    var store = false
    /// Whether the body gave `store` (true or false); when it did not, the served adapter's training policy
    /// (`store_completions`) decides.
    var storeGiven = false
    var metadata: [String: String] = [:]
    /// The raw body as a JSON object (for the input and sampling fields recorded with the completion).
    var object: [(String, JSONValue)] = []

    /// Reads `store` and `metadata` from a body that already decoded as a request.
    /// - Throws: ``APIError`` 400 naming `store` or `metadata` when they have the wrong shape.
    init(body: [UInt8]) throws {
        guard case .object(let fields) = JSONValue.parse(String(decoding: body, as: UTF8.self)) else { return }
        object = fields
        for (k, v) in fields {
            if k == "store" {
                storeGiven = v != .null
                switch v {
                case .bool(let b): store = b
                case .null: store = false
                default: throw APIError.invalidRequest("'store' must be a boolean.", param: "store")
                }
            } else if k == "metadata" {
                metadata = try Self.metadata(v, param: "metadata")
            }
        }
    }

    /// Applies the training policy of the served model `served`: with `store_completions` it is stored as with
    /// `store: true`, unless the request itself said `store`.
    mutating func applyPolicy(served: String, store: LoradStore?) {
        if !storeGiven, let p = store?.cachedPolicy(name: served), p.policy.storeCompletions { self.store = true }
    }

    /// Validates OpenAI's metadata map: at most 16 string keys of at most 64 characters, string values of at most
    /// 512 characters.
    /// - Throws: ``APIError`` 400 naming `param` (or `param.key`).
    static func metadata(_ v: JSONValue, param: String) throws -> [String: String] {
        switch v {
        case .null: return [:]
        case .object(let pairs):
            guard pairs.count <= 16 else {
                throw APIError.invalidRequest("'\(param)' has \(pairs.count) keys; at most 16 are allowed.", param: param)
            }
            var out: [String: String] = [:]
            for (k, value) in pairs {
                guard k.count <= 64, !k.isEmpty else {
                    throw APIError.invalidRequest(
                        "'\(param)' keys must have 1 to 64 characters; '\(k.prefix(80))' has \(k.count).", param: param)
                }
                guard case .string(let s) = value else {
                    throw APIError.invalidRequest("'\(param).\(k)' must be a string.", param: "\(param).\(k)")
                }
                guard s.count <= 512 else {
                    throw APIError.invalidRequest(
                        "'\(param).\(k)' has \(s.count) characters; at most 512 are allowed.", param: "\(param).\(k)")
                }
                out[k] = s
            }
            return out
        default:
            throw APIError.invalidRequest("'\(param)' must be an object of string values.", param: param)
        }
    }

    /// Sampling fields recorded with a stored completion, as sent.
    static let samplingKeys: Set<String> = [
        "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty",
        "seed", "stop", "stop_token_ids", "ignore_eos", "n", "max_tokens", "max_completion_tokens", "logit_bias",
        "logprobs", "top_logprobs", "stream",
    ]

    var sampling: JSONValue { .object(object.filter { Self.samplingKeys.contains($0.0) }) }
}

/// Query-string parameters (`a=b&c=d`, percent-decoded; `+` is a space).
struct QueryParams {
    var pairs: [(String, String)] = []

    init(uri: String) {
        guard let q = uri.firstIndex(of: "?") else { return }
        var query = uri[uri.index(after: q)...]
        if let h = query.firstIndex(of: "#") { query = query[..<h] }
        for part in query.split(separator: "&") where !part.isEmpty {
            let kv = part.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func dec(_ s: Substring) -> String { String(s).replacingOccurrences(of: "+", with: " ").removingPercentEncodingSafely() }
            pairs.append((dec(kv[0]), kv.count > 1 ? dec(kv[1]) : ""))
        }
    }

    subscript(_ key: String) -> String? { pairs.last { $0.0 == key }?.1 }

    /// `limit`: 1…100, default 20.
    /// - Throws: ``APIError`` 400 naming `limit`.
    func limit() throws -> Int {
        guard let s = self["limit"] else { return 20 }
        guard let n = Int(s), (1...100).contains(n) else {
            throw APIError.invalidRequest("'limit' must be an integer from 1 to 100; got '\(s)'.", param: "limit")
        }
        return n
    }

    /// `metadata[key]=value` filters.
    var metadataFilter: [String: String] {
        var out: [String: String] = [:]
        for (k, v) in pairs where k.hasPrefix("metadata[") && k.hasSuffix("]") {
            out[String(k.dropFirst(9).dropLast())] = v
        }
        return out
    }
}

extension APIError {
    /// 404: lorad runs without a state directory.
    static let storeDisabled = APIError(
        status: 404, message: "Stored completions and feedback are disabled: lorad runs without a state directory.",
        type: "not_found_error", code: "store_disabled")

    /// 404 for an unknown (or not visible) stored completion.
    static func completionNotFound(_ id: String, param: String? = nil) -> APIError {
        APIError(
            status: 404, message: "No stored completion with id '\(id)'.", type: "not_found_error", param: param,
            code: "completion_not_found")
    }

    /// Maps a store failure: a full disk is 507, the rest 500.
    static func from(_ e: StoreError) -> APIError {
        switch e {
        case .diskFull(let m):
            return APIError(
                status: 507, message: "The store is out of disk space; nothing was recorded (\(m)).",
                type: "storage_error", code: "insufficient_storage")
        case .completionNotFound(let id):
            return .completionNotFound(id, param: "completion_id")
        case .database(let m):
            return .internalError("The store failed: \(m)")
        }
    }

    /// 403: deleting stored completions or reading another uid's rows.
    static func storeAdminRequired(_ peer: PeerCredentials?, what: String) -> APIError {
        let who = peer.map { "uid \($0.uid)" } ?? "an unidentified peer"
        return APIError(
            status: 403, message: "\(what) is reserved to admins; the caller is \(who).", type: "permission_error",
            code: "admin_required")
    }
}

/// `POST /v1/feedback` body.
struct FeedbackBody {
    var completionID: String
    var rating: Int?
    var correction: JSONValue?
    var comment: String?
    var metadata: [String: String]

    /// - Throws: ``APIError`` 400 naming the field.
    init(body: [UInt8]) throws {
        if body.isEmpty { throw APIError.malformedJSON("the body is empty") }
        let v = JSONValue.parse(String(decoding: body, as: UTF8.self))
        guard case .object(let fields) = v else {
            throw APIError.malformedJSON("expected a JSON object")
        }
        func field(_ k: String) -> JSONValue? { fields.last { $0.0 == k }?.1 }
        guard case .string(let id)? = field("completion_id"), !id.isEmpty else {
            throw APIError.invalidRequest("'completion_id' is required (a stored completion id).", param: "completion_id")
        }
        completionID = id
        switch field("rating") {
        case nil, .null?: rating = nil
        case .int(let r)? where r == 1 || r == -1: rating = r
        default: throw APIError.invalidRequest("'rating' must be 1 or -1.", param: "rating")
        }
        switch field("correction") {
        case nil, .null?: correction = nil
        case .string(let s)? where !s.isEmpty: correction = .string(s)
        case .array(let items)? where !items.isEmpty:
            for (i, m) in items.enumerated() {
                guard case .object(let mf) = m,
                    case .string(let role)? = mf.last(where: { $0.0 == "role" })?.1,
                    ["system", "developer", "user", "assistant"].contains(role),
                    case .string? = mf.last(where: { $0.0 == "content" })?.1
                else {
                    throw APIError.invalidRequest(
                        "'correction[\(i)]' must be a message {\"role\", \"content\"} with a string content.",
                        param: "correction[\(i)]")
                }
            }
            correction = .array(items)
        default:
            throw APIError.invalidRequest(
                "'correction' must be a non-empty string or a non-empty list of messages.", param: "correction")
        }
        guard rating != nil || correction != nil else {
            throw APIError.invalidRequest("Give at least one of 'rating' and 'correction'.", param: "rating")
        }
        switch field("comment") {
        case nil, .null?: comment = nil
        case .string(let s)?: comment = s
        default: throw APIError.invalidRequest("'comment' must be a string.", param: "comment")
        }
        metadata = try StoreFields.metadata(field("metadata") ?? .null, param: "metadata")
    }
}

extension APIHandler {
    func store() throws -> LoradStore {
        guard let s = state.store else { throw APIError.storeDisabled }
        return s
    }

    /// Records a finished generation request with `store: true`.
    /// - Throws: ``APIError`` 507 on a full disk, 500 on other store failures.
    func record(
        _ fields: StoreFields, prepared: PreparedRequest, renderer: ResponseRenderer, results: [ChoiceResult],
        peer: PeerCredentials?
    ) async throws {
        guard fields.store else { return }
        let s = try store()
        let input: JSONValue
        if prepared.kind == .chat {
            input = fields.object.last { $0.0 == "messages" }.map { Self.normalizedMessages($0.1) } ?? .array([])
        } else {
            input = .object([("prompt", fields.object.last { $0.0 == "prompt" }?.1 ?? .null)])
        }
        let mix = prepared.generations.first?.adapters?.entries ?? []
        let c = StoredCompletion(
            id: renderer.id, object: renderer.object, model: renderer.model, createdAt: renderer.created,
            uid: peer?.uid, input: input,
            promptTokenIDs: results.indices.map { prepared.generations[min($0, prepared.generations.count - 1)].promptTokens },
            outputTokenIDs: results.map { $0.tokens.map(\.id) }, response: renderer.response(results),
            adapters: mix.map { "\($0.name)@\($0.version)*\($0.scale)" }, sampling: fields.sampling,
            promptTokens: results.reduce(0) { $0 + ($1.summary?.promptTokens ?? 0) },
            completionTokens: results.reduce(0) { $0 + ($1.summary?.completionTokens ?? 0) },
            metadata: fields.metadata)
        do { try await s.insert(c) } catch let e as StoreError { throw APIError.from(e) }
    }

    /// Messages reduced to `{"role", "content"}` with text content (content parts joined).
    static func normalizedMessages(_ v: JSONValue) -> JSONValue {
        guard case .array(let items) = v else { return .array([]) }
        return .array(
            items.map { m in
                guard case .object(let f) = m else { return m }
                let role = f.last { $0.0 == "role" }?.1 ?? .null
                var content = f.last { $0.0 == "content" }?.1 ?? .string("")
                if case .array(let parts) = content {
                    content = .string(
                        parts.compactMap { p -> String? in
                            guard case .object(let pf) = p, case .string(let t)? = pf.last(where: { $0.0 == "text" })?.1
                            else { return nil }
                            return t
                        }.joined())
                }
                return .object([("role", role), ("content", content)])
            })
    }

    /// The object served for a stored completion: the response as sent plus `metadata` and lorad's record.
    func completionJSON(_ c: StoredCompletion) -> JSONValue {
        var fields: [(String, JSONValue)] = []
        if case .object(let f) = c.response { fields = f.filter { $0.0 != "metadata" } }
        fields.append(("metadata", .object(c.metadata.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })))
        fields.append(("request_id", .string(c.id)))
        fields.append(("adapters", .array(c.adapters.map { .string($0) })))
        fields.append(("sampling", c.sampling))
        fields.append(("prompt_token_ids", .array(c.promptTokenIDs.map { .array($0.map { .int(Int($0)) }) })))
        fields.append(("output_token_ids", .array(c.outputTokenIDs.map { .array($0.map { .int(Int($0)) }) })))
        if c.object != "chat.completion" { fields.append(("input", c.input)) }
        return .object(fields)
    }

    func feedbackJSON(_ f: FeedbackRecord) -> JSONValue {
        .object([
            ("id", .string(f.id)), ("object", .string("feedback")), ("created_at", .int(f.createdAt)),
            ("completion_id", .string(f.completionID)), ("model", .string(f.model)),
            ("rating", f.rating.map { .int($0) } ?? .null), ("correction", f.correction ?? .null),
            ("comment", .optional(f.comment)),
            ("metadata", .object(f.metadata.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })),
        ])
    }

    /// A stored completion the caller may see (admins: any; others: their own), else 404.
    private func visibleCompletion(_ id: String, peer: PeerCredentials?, param: String? = nil) async throws
        -> StoredCompletion
    {
        let s = try store()
        let c: StoredCompletion?
        do { c = try await s.completion(id: id) } catch let e as StoreError { throw APIError.from(e) }
        guard let c, mayRead(ownedBy: c.uid, peer: peer) else {
            throw APIError.completionNotFound(id, param: param)
        }
        return c
    }

    /// OpenAI's cursor-page object `{"object": "list", "data", "first_id", "last_id", "has_more"}` (stored
    /// completions, feedback, files, fine-tuning jobs, their events and checkpoints).
    func listJSON(_ data: [JSONValue], ids: [String], hasMore: Bool) -> JSONValue {
        .object([
            ("object", .string("list")), ("data", .array(data)), ("first_id", .optional(ids.first)),
            ("last_id", .optional(ids.last)), ("has_more", .bool(hasMore)),
        ])
    }

    /// Serves the store routes.
    func dispatchStore(
        _ route: Route, method: String, uri: String, body: [UInt8], peer: PeerCredentials?, writer: ResponseWriter
    ) async throws -> Int {
        let s = try store()
        let admin = state.adminPolicy.allows(peer)
        // Non-admins see their own rows; an unidentified peer sees none.
        let ownUID: UInt32? = admin ? nil : (peer?.uid ?? UInt32.max)
        let q = QueryParams(uri: uri)
        do {
            switch (route, method) {
            case (.chatCompletions, "GET"):
                let order = q["order"] ?? "asc"
                guard order == "asc" || order == "desc" else {
                    throw APIError.invalidRequest("'order' must be asc or desc.", param: "order")
                }
                let page = try await s.listCompletions(
                    model: q["model"], metadata: q.metadataFilter, uid: ownUID, after: q["after"], limit: try q.limit(),
                    ascending: order == "asc")
                try await writer.send(
                    json: listJSON(page.items.map(completionJSON), ids: page.items.map(\.id), hasMore: page.hasMore))
                return 200
            case (.storedCompletion(let id), "GET"):
                try await writer.send(json: completionJSON(try await visibleCompletion(id, peer: peer)))
                return 200
            case (.storedCompletionMessages(let id), "GET"):
                let c = try await visibleCompletion(id, peer: peer)
                var messages: [JSONValue] = []
                if case .array(let items) = c.input {
                    for (i, m) in items.enumerated() {
                        guard case .object(let f) = m else { continue }
                        messages.append(.object([("id", .string("\(c.id)-\(i)"))] + f))
                    }
                } else if case .object(let f) = c.input, let p = f.first(where: { $0.0 == "prompt" })?.1 {
                    messages.append(.object([("id", .string("\(c.id)-0")), ("role", .string("user")), ("content", p)]))
                }
                var start = 0
                if let after = q["after"], let i = messages.firstIndex(where: {
                    if case .object(let f) = $0, case .string(let mid)? = f.first?.1 { return mid == after }
                    return false
                }) { start = i + 1 }
                let limit = try q.limit()
                let page = Array(messages.dropFirst(start).prefix(limit))
                let ids = page.compactMap { m -> String? in
                    if case .object(let f) = m, case .string(let mid)? = f.first?.1 { return mid }
                    return nil
                }
                try await writer.send(json: listJSON(page, ids: ids, hasMore: start + page.count < messages.count))
                return 200
            case (.storedCompletion(let id), "POST"):
                _ = try await visibleCompletion(id, peer: peer)
                guard case .object(let f) = JSONValue.parse(String(decoding: body, as: UTF8.self)),
                    let m = f.last(where: { $0.0 == "metadata" })?.1
                else {
                    throw APIError.invalidRequest("The body must be {\"metadata\": {...}}.", param: "metadata")
                }
                let meta = try StoreFields.metadata(m, param: "metadata")
                guard let c = try await s.updateMetadata(id: id, meta) else { throw APIError.completionNotFound(id) }
                try await writer.send(json: completionJSON(c))
                return 200
            case (.storedCompletion(let id), "DELETE"):
                guard admin else { throw APIError.storeAdminRequired(peer, what: "Deleting stored completions") }
                guard try await s.deleteCompletion(id: id) else { throw APIError.completionNotFound(id) }
                try await writer.send(
                    json: .object([
                        ("object", .string("chat.completion.deleted")), ("id", .string(id)), ("deleted", .bool(true)),
                    ]))
                return 200
            case (.feedback, "POST"):
                let b = try FeedbackBody(body: body)
                guard let c = try await s.completion(id: b.completionID) else {
                    throw APIError.completionNotFound(b.completionID, param: "completion_id")
                }
                if !admin && (peer == nil || c.uid != peer?.uid) {
                    throw APIError.storeAdminRequired(peer, what: "Feedback on another user's completion")
                }
                let f = FeedbackRecord(
                    id: "fb-" + ResponseRenderer.randomHex(24), completionID: c.id, model: c.model,
                    createdAt: Int(Date().timeIntervalSince1970), uid: peer?.uid, rating: b.rating,
                    correction: b.correction, comment: b.comment, metadata: b.metadata)
                try await s.insert(f)
                state.continual?.notify()
                try await writer.send(json: feedbackJSON(f), status: 201)
                return 201
            case (.feedback, "GET"):
                let page = try await s.listFeedback(
                    model: q["model"], completionID: q["completion_id"], uid: ownUID, after: q["after"],
                    limit: try q.limit())
                try await writer.send(
                    json: listJSON(page.items.map(feedbackJSON), ids: page.items.map(\.id), hasMore: page.hasMore))
                return 200
            case (.feedbackItem(let id), "GET"):
                guard let f = try await s.feedback(id: id), admin || (peer != nil && f.uid == peer?.uid) else {
                    throw APIError(
                        status: 404, message: "No feedback with id '\(id)'.", type: "not_found_error",
                        code: "feedback_not_found")
                }
                try await writer.send(json: feedbackJSON(f))
                return 200
            case (.feedbackExport, "GET"):
                guard admin else { throw APIError.storeAdminRequired(peer, what: "Exporting feedback") }
                let format = q["format"] ?? "sft"
                guard format == "sft" || format == "dpo" else {
                    throw APIError.invalidRequest("'format' must be sft or dpo.", param: "format")
                }
                let lines = try await FeedbackExport.lines(store: s, model: q["model"], format: format)
                try await writer.send(
                    status: 200, contentType: "application/jsonl",
                    body: Array(lines.map { $0.serialized + "\n" }.joined().utf8))
                return 200
            default:
                throw APIError.routeNotFound(method: method, path: route.template)
            }
        } catch let e as StoreError {
            throw APIError.from(e)
        }
    }
}

extension APIHandler {
    /// Decision #14's read rule for stored objects (completions, feedback, files, jobs): admins read any; another
    /// peer only what its own uid created (`ownedBy`); a peer without credentials nothing.
    func mayRead(ownedBy uid: UInt32?, peer: PeerCredentials?) -> Bool {
        state.adminPolicy.allows(peer) || (peer != nil && uid == peer?.uid)
    }
}

/// Feedback as fine-tuning data in OpenAI's JSONL formats.
///
/// - `sft`: one chat line `{"messages": [...]}` per thumbs-up (prompt + served answer) and per correction
///   (prompt + corrected answer; a correction given as messages is the assistant turn(s) that should have
///   followed the prompt).
/// - `dpo`: `{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}` per
///   correction (preferred: the correction, non-preferred: the served answer) and per pair of a thumbs-up and a
///   thumbs-down answer to the same prompt.
enum FeedbackExport {
    /// The prompt messages of a stored completion (a completions prompt becomes one user message).
    static func promptMessages(_ c: StoredCompletion) -> [JSONValue] {
        if case .array(let m) = c.input { return m }
        if case .object(let f) = c.input, case .string(let p)? = f.first(where: { $0.0 == "prompt" })?.1 {
            return [.object([("role", .string("user")), ("content", .string(p))])]
        }
        return []
    }

    /// The first choice's text as served.
    static func servedAnswer(_ c: StoredCompletion) -> String? {
        guard case .object(let f) = c.response, case .array(let choices)? = f.first(where: { $0.0 == "choices" })?.1,
            case .object(let ch)? = choices.first
        else { return nil }
        if case .object(let m)? = ch.first(where: { $0.0 == "message" })?.1,
            case .string(let t)? = m.first(where: { $0.0 == "content" })?.1
        {
            return t
        }
        if case .string(let t)? = ch.first(where: { $0.0 == "text" })?.1 { return t }
        return nil
    }

    static func assistant(_ text: String) -> JSONValue { .object([("role", .string("assistant")), ("content", .string(text))]) }

    static func correctionTurns(_ v: JSONValue) -> [JSONValue] {
        switch v {
        case .string(let s): return [assistant(s)]
        case .array(let items): return items
        default: return []
        }
    }

    /// All export lines for `model` (nil: every model), oldest feedback first; with `since` (Unix seconds), only
    /// feedback given at or after it.
    static func lines(store: LoradStore, model: String?, format: String, since: Int? = nil) async throws -> [JSONValue] {
        let feedback = try await store.listFeedback(model: model, completionID: nil, uid: nil, after: nil, limit: nil).items
            .filter { since == nil || $0.createdAt >= since! }
        var completions: [String: StoredCompletion] = [:]
        for f in feedback where completions[f.completionID] == nil {
            completions[f.completionID] = try await store.completion(id: f.completionID)
        }
        var out: [JSONValue] = []
        if format == "sft" {
            for f in feedback {
                guard let c = completions[f.completionID] else { continue }
                let prompt = promptMessages(c)
                if let corr = f.correction {
                    out.append(.object([("messages", .array(prompt + correctionTurns(corr)))]))
                } else if f.rating == 1, let a = servedAnswer(c) {
                    out.append(.object([("messages", .array(prompt + [assistant(a)]))]))
                }
            }
            return out
        }
        func dpo(_ prompt: [JSONValue], _ good: [JSONValue], _ bad: [JSONValue]) -> JSONValue {
            .object([
                ("input", .object([("messages", .array(prompt))])), ("preferred_output", .array(good)),
                ("non_preferred_output", .array(bad)),
            ])
        }
        var ups: [String: [String]] = [:]
        var downs: [String: [String]] = [:]
        var prompts: [String: [JSONValue]] = [:]
        var keys: [String] = []
        for f in feedback {
            guard let c = completions[f.completionID], let served = servedAnswer(c) else { continue }
            let prompt = promptMessages(c)
            if let corr = f.correction {
                out.append(dpo(prompt, correctionTurns(corr), [assistant(served)]))
                continue
            }
            let key = JSONValue.array(prompt).serialized
            if prompts[key] == nil {
                prompts[key] = prompt
                keys.append(key)
            }
            if f.rating == 1 { ups[key, default: []].append(served) }
            if f.rating == -1 { downs[key, default: []].append(served) }
        }
        for key in keys {
            for (u, d) in zip(ups[key] ?? [], downs[key] ?? []) where u != d {
                out.append(dpo(prompts[key]!, [assistant(u)], [assistant(d)]))
            }
        }
        return out
    }
}
