// `GET`/`PUT`/`PATCH`/`DELETE /v1/adapters/{name}/training`: an adapter's training policy (continual learning).
// Admin only. PUT replaces the whole policy (keys left out take their defaults); PATCH is a JSON merge patch
// (RFC 7396) onto the policy as it was set: keys in the body replace the current ones, nested objects merge, and
// `null` resets a key (a trigger condition is then off). Both set the policy again, which ends a rollback's pause.
// A policy may name an adapter that has no version yet: its first job then starts from a fresh adapter
// (LEARNING-DECISIONS #9). GET and DELETE of a name with neither a policy nor a registered adapter are 404.
// `origin` says who set the policy last: `api` (a PUT or PATCH here, which takes the name over from the config file) or
// `config` (`adapters.NAME.training` in the config file, applied at start-up and on SIGHUP).

import Foundation

extension APIHandler {
    /// Serves the training-policy route.
    /// - Throws: ``APIError``: 403 for a non-admin, 400 naming the bad field, 404 unknown, 503 without a store.
    func dispatchTrainingPolicy(
        _ name: String, method: String, body: [UInt8], peer: PeerCredentials?, writer: ResponseWriter
    ) async throws -> Int {
        guard state.adminPolicy.allows(peer) else { throw APIError.notAdmin(peer, policy: state.adminPolicy) }
        let store = try store()
        let registered = state.registry?.info(name) != nil
        do {
            switch method {
            case "PUT", "PATCH":
                guard AdapterRegistry.isValidName(name), name != state.modelID else {
                    throw APIError.invalidRequest(
                        "'\(name)' cannot name an adapter: use 1 to 128 ASCII letters, digits, '.', '_', '-' or ':', "
                            + "not the base model's id.", param: "name")
                }
                let policy: TrainingPolicy
                do {
                    if method == "PUT" {
                        policy = try TrainingPolicy(jsonText: String(decoding: body, as: UTF8.self))
                    } else {
                        guard let current = try await store.policy(name: name) else {
                            throw Self.noPolicy(name, registered: registered)
                        }
                        guard let patch = try? JSONDecoder().decode(JSONBox.self, from: Data(body)).value,
                              case .object = patch
                        else { throw PolicyError(field: "body", message: "must be a JSON object (a merge patch)") }
                        policy = try TrainingPolicy(json: Self.mergePatch(current.asSet.json, patch))
                    }
                } catch let e as PolicyError {
                    throw APIError.invalidRequest("Invalid training policy: \(e)", param: e.field, code: "invalid_policy")
                }
                let stored = try await store.setPolicy(name: name, policy: policy, uid: peer?.uid, origin: .api)
                if !stored.policy.enabled {
                    await state.jobs?.cancelContinualJobs(of: name, reason: "the adapter's training policy was paused (enabled: false)")
                }
                state.continual?.notify()
                try await writer.send(json: Self.policyJSON(stored, registered: registered))
                return 200
            case "DELETE":
                guard try await store.deletePolicy(name: name) else { throw Self.noPolicy(name, registered: registered) }
                await state.jobs?.cancelContinualJobs(of: name, reason: "the adapter's training policy was deleted")
                try await writer.send(
                    json: .object([("object", .string("adapter.training_policy")), ("name", .string(name)), ("deleted", .bool(true))]))
                return 200
            default:
                guard let stored = try await store.policy(name: name) else { throw Self.noPolicy(name, registered: registered) }
                var body = Self.policyJSON(stored, registered: registered)
                if case .object(var f) = body {
                    f.append(("loop", try await loopStatus(name, policy: stored.policy, store: store)))
                    body = .object(f)
                }
                try await writer.send(json: body)
                return 200
            }
        } catch let e as StoreError {
            throw APIError.from(e)
        }
    }

    /// Where the continual loop stands for `name`: feedback not yet covered by a job, how many more items the
    /// `min_new_feedback` trigger needs (null without that trigger), the last continual job, whether a job is active,
    /// and why a fired trigger made no job (e.g. no held-out feedback yet).
    /// - Throws: ``StoreError``.
    func loopStatus(_ name: String, policy: TrainingPolicy, store: LoradStore) async throws -> JSONValue {
        let h = try await store.continualHistory(name: name, currentJobID: state.registry?.info(name)?.record.lineage.jobID)
        let fresh = try await store.feedbackCount(model: name, after: h.lastThrough)
        return .object([
            ("new_feedback", .int(fresh.count)),
            ("feedback_to_trigger", policy.minNewFeedback.map { .int(max(0, $0 - fresh.count)) } ?? .null),
            ("last_job_id", .optional(h.lastJobID)),
            ("last_job_at", h.lastJobAt.map { .int(Int($0.timeIntervalSince1970)) } ?? .null),
            ("job_active", .bool(h.jobActive)), ("waiting", .optional(state.continual?.waitingReason(name))),
        ])
    }

    /// JSON merge patch (RFC 7396 §2): an object patch merges key by key into `target` (an object or not),
    /// `null` removes the key, anything else replaces it; a non-object patch replaces `target` whole.
    static func mergePatch(_ target: JSONValue, _ patch: JSONValue) -> JSONValue {
        guard case .object(let changes) = patch else { return patch }
        var out: [(String, JSONValue)] = []
        if case .object(let fields) = target { out = fields }
        for (key, value) in changes {
            let i = out.firstIndex { $0.0 == key }
            if value == .null {
                if let i { out.remove(at: i) }
            } else if let i {
                out[i].1 = mergePatch(out[i].1, value)
            } else {
                out.append((key, mergePatch(.null, value)))
            }
        }
        return .object(out)
    }

    static func policyJSON(_ s: StoredPolicy, registered: Bool) -> JSONValue {
        .object([
            ("object", .string("adapter.training_policy")), ("name", .string(s.name)),
            ("registered", .bool(registered)), ("set_at", .int(Int(s.setAt))),
            ("disabled_reason", .optional(s.disabledReason)), ("origin", .string(s.origin.rawValue)),
            ("policy", s.policy.json),
        ])
    }

    static func noPolicy(_ name: String, registered: Bool) -> APIError {
        registered
            ? APIError(status: 404, message: "The adapter '\(name)' has no training policy.", type: "invalid_request_error",
                       param: "name", code: "policy_not_found")
            : APIError.from(AdapterRegistryError.notFound(name))
    }
}
