// AdapterRoutes: the adapter registry over HTTP, and the resolution of a generation request's adapters.
//
//   GET    /v1/adapters                 list (name, version, sha256, rank, alpha, targets, bytes, resident, ...)
//   POST   /v1/adapters                 {"name", "path"} or {"name", "files": {file name: base64}}  -> 201
//   GET    /v1/adapters/{name}          one adapter (its current version; `versions` = how many are kept)
//   DELETE /v1/adapters/{name}          unregister, every version (running sequences finish on what they hold)
//   GET    /v1/adapters/{name}/versions kept versions, newest first, with lineage; and the publish/rollback history
//   POST   /v1/adapters/{name}/rollback {"version": N}: make a kept version current again
//   POST   /v1/load_lora_adapter        vLLM alias: {"lora_name", "lora_path", "load_inplace"}
//   POST   /v1/unload_lora_adapter      vLLM alias: {"lora_name"}
//
// Management (POST, DELETE, rollback and the vLLM aliases) needs an admin peer (SO_PEERCRED, see AdminPolicy): 403 else.

import Foundation

/// `POST /v1/adapters` body.
struct RegisterAdapterBody: Decodable {
    var name: String
    var path: String?
    var files: [String: String]?
    /// Replace an existing adapter of that name with a new version (default true).
    var replace: Bool?
}

/// `POST /v1/adapters/{name}/rollback` body.
struct RollbackAdapterBody: Decodable {
    var version: Int
}

/// vLLM's `POST /v1/load_lora_adapter` body.
struct LoadLoRABody: Decodable {
    var loraName: String
    var loraPath: String
    var loadInplace: Bool?
    enum CodingKeys: String, CodingKey {
        case loraName = "lora_name"
        case loraPath = "lora_path"
        case loadInplace = "load_inplace"
    }
}

/// vLLM's `POST /v1/unload_lora_adapter` body.
struct UnloadLoRABody: Decodable {
    var loraName: String
    enum CodingKeys: String, CodingKey { case loraName = "lora_name" }
}

extension APIError {
    /// 403: a management route called by a peer that is not an admin.
    static func notAdmin(_ peer: PeerCredentials?, policy: AdminPolicy) -> APIError {
        let who = peer.map { "uid \($0.uid)" } ?? "an unidentified peer"
        let group = policy.adminGroupName.map { ", members of group '\($0)'" } ?? ""
        return APIError(
            status: 403,
            message: "Managing adapters is reserved to root, the daemon's user\(group); the caller is \(who).",
            type: "permission_error", code: "admin_required")
    }

    /// Maps a registry failure to its status.
    static func from(_ e: AdapterRegistryError, param: String? = nil) -> APIError {
        switch e {
        case .notFound(let n):
            return APIError(
                status: 404, message: "The adapter '\(n)' does not exist.", type: "not_found_error", param: param,
                code: "adapter_not_found")
        case .versionNotFound(let n, let v):
            return APIError(
                status: 404, message: "The adapter '\(n)' has no version \(v) (it never existed or was pruned).",
                type: "not_found_error", param: param ?? "version", code: "adapter_version_not_found")
        case .parentChanged(let c):
            return APIError(
                status: 409,
                message: "The adapter's current version is \(c.map { String($0) } ?? "none (not registered)"), not the expected parent.",
                type: "conflict_error", param: param, code: "parent_changed")
        case .invalidName(let m):
            return .invalidRequest(m, param: "name", code: "invalid_adapter_name")
        case .badSource(let m):
            return .invalidRequest(m, param: param, code: "invalid_adapter_source")
        case .outsideImportDirs:
            return APIError(status: 403, message: e.description, type: "permission_error", param: "path", code: "path_not_allowed")
        case .alreadyExists(let n):
            return APIError(
                status: 409, message: "The adapter '\(n)' already exists; set replace (or load_inplace) to true to register a new version.",
                type: "conflict_error", param: "name", code: "adapter_exists")
        case .invalidAdapter:
            return .invalidRequest(e.description, param: param, code: "invalid_adapter")
        case .store(.diskFull(let m)):
            return APIError(status: 507, message: "Not enough disk space to store the adapter: \(m)", type: "storage_error", code: "disk_full")
        case .store(let s):
            return .internalError("The adapter store failed: \(s)")
        case .notReady:
            return .unavailable("The model is still loading.", retryAfter: 2, code: "model_loading")
        }
    }
}

extension APIHandler {
    func registry() throws -> AdapterRegistry {
        guard let r = state.registry else {
            throw APIError(
                status: 404, message: "Adapters are disabled: lorad runs without a state directory.",
                type: "not_found_error", code: "adapters_disabled")
        }
        return r
    }

    func adapterJSON(_ info: AdapterInfo) -> JSONValue {
        let r = info.record
        return .object([
            ("id", .string(r.name)), ("object", .string("adapter")), ("name", .string(r.name)),
            ("version", .int(r.version)), ("parent", .string(state.modelID)), ("format", .string(r.format.rawValue)),
            ("sha256", .string(r.sha256)), ("rank", .int(r.rank)), ("alpha", r.alpha.map { .number($0) } ?? .null),
            ("targets", .array(r.targets.map { .string($0) })), ("bytes", .int(r.residentBytes)),
            ("file_bytes", .int(r.fileBytes)), ("resident", .bool(info.resident)),
            ("last_used", info.lastUsed.map { .int(Int($0)) } ?? .null), ("created", .int(Int(r.createdAt))),
            ("source", .string(r.source)), ("versions", .int(info.versionCount)),
        ])
    }

    /// One kept version with its lineage, for `GET /v1/adapters/{name}/versions`.
    func adapterVersionJSON(_ v: AdapterVersionInfo) -> JSONValue {
        let r = v.record
        let l = r.lineage
        return .object([
            ("object", .string("adapter.version")), ("name", .string(r.name)), ("version", .int(r.version)),
            ("created_at", .int(Int(r.createdAt))), ("current", .bool(v.current)),
            ("parent_version", l.parentVersion.map { .int($0) } ?? .null), ("job_id", .optional(l.jobID)),
            ("data_range", l.dataRange ?? .null), ("gate", l.gate ?? .null), ("sha256", .string(r.sha256)),
            ("format", .string(r.format.rawValue)), ("rank", .int(r.rank)), ("alpha", r.alpha.map { .number($0) } ?? .null),
            ("targets", .array(r.targets.map { .string($0) })), ("bytes", .int(r.residentBytes)),
            ("file_bytes", .int(r.fileBytes)), ("source", .string(r.source)),
            ("metadata", .object(l.metadata.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })),
            ("pinned", .bool(v.pinned)), ("resident", .bool(v.resident)),
        ])
    }

    /// Serves the adapter routes. Management needs an admin peer.
    func dispatchAdapters(
        _ route: Route, method: String, body: [UInt8], peer: PeerCredentials?, writer: ResponseWriter
    ) async throws -> Int {
        if route.isManagement(method: method), !state.adminPolicy.allows(peer) {
            throw APIError.notAdmin(peer, policy: state.adminPolicy)
        }
        let reg = try registry()
        switch (route, method) {
        case (.adapters, "GET"):
            try await writer.send(json: .object([("object", .string("list")), ("data", .array(reg.list().map(adapterJSON)))]))
            return 200
        case (.adapter(let name), "GET"):
            guard let info = reg.info(name) else { throw APIError.from(.notFound(name)) }
            try await writer.send(json: adapterJSON(info))
            return 200
        case (.adapter(let name), "DELETE"):
            let rec: AdapterRecord
            do { rec = try reg.remove(name: name) } catch let e as AdapterRegistryError { throw APIError.from(e) }
            // Its training policy pauses with it: the name is gone, so the loop must not recreate it from scratch.
            if let store = state.store, store.cachedPolicy(name: name) != nil {
                try? await store.disablePolicy(name: name, reason: "the adapter was deleted")
            }
            await state.jobs?.cancelContinualJobs(of: name, reason: "the adapter was deleted")
            try await writer.send(
                json: .object([
                    ("id", .string(rec.name)), ("object", .string("adapter")), ("deleted", .bool(true)),
                    ("version", .int(rec.version)),
                ]))
            return 200
        case (.adapterVersions(let name), "GET"):
            let (list, history): ([AdapterVersionInfo], [AdapterHistoryEvent])
            do {
                list = try reg.versions(of: name)
                history = try reg.history(of: name)
            } catch let e as AdapterRegistryError {
                throw APIError.from(e)
            }
            let historyJSON: [JSONValue] = history.map { h in
                .object([
                    ("kind", .string(h.kind)), ("version", .int(h.version)),
                    ("from_version", h.fromVersion.map { .int($0) } ?? .null), ("created_at", .int(Int(h.createdAt))),
                ])
            }
            try await writer.send(
                json: .object([
                    ("object", .string("list")), ("name", .string(name)),
                    ("current_version", list.first { $0.current }.map { .int($0.record.version) } ?? .null),
                    ("data", .array(list.map(adapterVersionJSON))), ("history", .array(historyJSON)),
                ]))
            return 200
        case (.adapterRollback(let name), "POST"):
            let b = try RequestValidator.decode(RollbackAdapterBody.self, from: body)
            let event: AdapterRollback
            do { event = try reg.rollback(name: name, to: b.version) } catch let e as AdapterRegistryError {
                throw APIError.from(e)
            }
            // The adapter's training policy pauses until it is set again, so the loop does not replace the version
            // that was just made current (issue: rollback).
            if let store = state.store {
                do {
                    try await store.disablePolicy(
                        name: name, reason: "rolled back from version \(event.fromVersion) to version \(event.toVersion)")
                } catch let e as StoreError {
                    throw APIError.from(e)
                }
            }
            // A continual job started from the version that was current would only fail at publishing (its gate
            // publishes over the version it measured): stop it now.
            await state.jobs?.cancelContinualJobs(
                of: name, reason: "the adapter was rolled back from version \(event.fromVersion) to version \(event.toVersion)")
            guard let info = reg.info(name) else { throw APIError.from(.notFound(name)) }
            var fields: [(String, JSONValue)] = []
            if case .object(let f) = adapterJSON(info) { fields = f }
            fields.append(("rolled_back_from", .int(event.fromVersion)))
            try await writer.send(json: .object(fields))
            return 200
        case (.adapters, "POST"):
            let b = try RequestValidator.decode(RegisterAdapterBody.self, from: body)
            let source = try Self.source(path: b.path, files: b.files)
            _ = try await ready()
            let r = try await register(reg, name: b.name, source: source, replace: b.replace ?? true)
            var fields: [(String, JSONValue)] = []
            let info = reg.info(b.name) ?? AdapterInfo(record: r.record, resident: true, lastUsed: nil)
            if case .object(let f) = adapterJSON(info) { fields = f }
            fields.append(("replaced_version", r.replaced.map { .int($0) } ?? .null))
            fields.append(("unchanged", .bool(r.unchanged)))
            let status = r.replaced == nil && !r.unchanged ? 201 : 200
            try await writer.send(json: .object(fields), status: status)
            return status
        case (.loadLoRAAdapter, _):
            let b = try RequestValidator.decode(LoadLoRABody.self, from: body)
            _ = try await ready()
            let rec = try await register(reg, name: b.loraName, source: .path(b.loraPath), replace: b.loadInplace ?? false).record
            try await writer.send(
                json: .object([
                    ("object", .string("adapter")), ("id", .string(rec.name)), ("version", .int(rec.version)),
                    ("message", .string("Success: LoRA adapter '\(rec.name)' added successfully.")),
                ]))
            return 200
        case (.unloadLoRAAdapter, _):
            let b = try RequestValidator.decode(UnloadLoRABody.self, from: body)
            do { _ = try reg.remove(name: b.loraName) } catch let e as AdapterRegistryError { throw APIError.from(e, param: "lora_name") }
            try await writer.send(
                json: .object([
                    ("object", .string("adapter")), ("id", .string(b.loraName)), ("deleted", .bool(true)),
                    ("message", .string("Success: LoRA adapter '\(b.loraName)' removed successfully.")),
                ]))
            return 200
        default:
            throw APIError.methodNotAllowed(method: method, path: route.template, allowed: route.methods)
        }
    }

    private func register(_ reg: AdapterRegistry, name: String, source: AdapterSource, replace: Bool) async throws
        -> AdapterPublishResult
    {
        do {
            let r = try await reg.publish(
                name: name, source: source, lineage: AdapterLineage(), expectedParent: nil, refuseExisting: !replace)
            if !r.unchanged { state.metrics.recordAdapterRegistration() }
            return r
        } catch let e as AdapterRegistryError {
            throw APIError.from(e, param: source.isUpload ? "files" : "path")
        }
    }

    static func source(path: String?, files: [String: String]?) throws -> AdapterSource {
        switch (path, files) {
        case (let p?, nil):
            return .path(p)
        case (nil, let f?):
            var decoded: [String: Data] = [:]
            for (name, b64) in f {
                guard !name.contains("/"), name != ".", name != ".." else {
                    throw APIError.invalidRequest("file name '\(name)' must not contain '/'", param: "files")
                }
                guard let d = Data(base64Encoded: b64, options: .ignoreUnknownCharacters) else {
                    throw APIError.invalidRequest("files.\(name) is not valid base64", param: "files.\(name)")
                }
                decoded[name] = d
            }
            return .files(decoded)
        default:
            throw APIError.invalidRequest("give exactly one of path and files", param: "path")
        }
    }

    /// Largest number of adapters one request may mix.
    static let maxAdaptersPerRequest = 8

    /// Resolves a request's `model` and `adapters` fields to pinned adapter versions.
    /// - Returns: the mix (nil = base model only) and the model name to echo in responses.
    /// - Throws: ``APIError`` 404 for an unknown model or adapter, 400 for bad scales or too many adapters.
    func resolveAdapters(model: String?, adapters: [AdapterRefBody]?) async throws -> (AdapterMix?, String) {
        let base = state.modelID
        var refs: [(name: String, scale: Float, param: String)] = []
        var served = base
        if let m = model, !m.isEmpty, m != base {
            if let reg = state.registry, reg.contains(m) {
                refs.append((m, 1, "model"))
            } else if state.store?.cachedPolicy(name: m)?.policy.enabled != true {
                throw APIError.modelNotFound(m, available: availableModels())
            }
            // A name with an enabled training policy but no version yet is served by the base model alone, which is what
            // its fresh adapter (lora_B = 0) computes; its requests and feedback are recorded under the name, so
            // its first continual job has data (LEARNING-DECISIONS #9).
            served = m
        }
        for (i, a) in (adapters ?? []).enumerated() {
            let s = a.scale ?? 1
            guard s.isFinite, abs(s) <= 100 else {
                throw APIError.invalidRequest("adapters[\(i)].scale must be a finite number in -100...100", param: "adapters[\(i)].scale")
            }
            refs.append((a.name, Float(s), "adapters[\(i)].name"))
        }
        guard !refs.isEmpty else { return (nil, served) }
        guard refs.count <= Self.maxAdaptersPerRequest else {
            throw APIError.invalidRequest("at most \(Self.maxAdaptersPerRequest) adapters per request", param: "adapters")
        }
        guard Set(refs.map(\.name)).count == refs.count else {
            throw APIError.invalidRequest("an adapter is named twice (in model and adapters)", param: "adapters")
        }
        let reg = try registry()
        var entries: [AdapterMix.Entry] = []
        for r in refs {
            do {
                let (rec, weights) = try await reg.resolve(r.name)
                entries.append(AdapterMix.Entry(name: rec.name, version: rec.version, weights: weights, scale: r.scale))
            } catch let e as AdapterRegistryError {
                if case .notFound = e, r.param == "model" { throw APIError.modelNotFound(r.name, available: availableModels()) }
                throw APIError.from(e, param: r.param)
            }
        }
        return (AdapterMix(entries), served)
    }

    /// "base, a, b, ..." for 404 messages (at most 20 names).
    func availableModels() -> String {
        let names = state.registry?.list().map(\.record.name) ?? []
        let shown = ([state.modelID] + names.prefix(19)).joined(separator: ", ")
        return names.count > 19 ? shown + ", ... (\(names.count + 1) in all; see /v1/models)" : shown
    }
}

extension AdapterSource {
    var isUpload: Bool { if case .files = self { return true } else { return false } }
}
