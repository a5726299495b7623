// FineTuningRoutes: OpenAI's fine-tuning jobs API over HTTP.
//
//   POST /v1/fine_tuning/jobs                      create (admin): validated up front, then queued -> 200 job
//   GET  /v1/fine_tuning/jobs                      list, newest first (after, limit)
//   GET  /v1/fine_tuning/jobs/{id}                 one job
//   POST /v1/fine_tuning/jobs/{id}/cancel          (admin) queued/paused: at once; running: at the next step
//   POST /v1/fine_tuning/jobs/{id}/pause           (admin) queued: at once; running: at the next step
//   POST /v1/fine_tuning/jobs/{id}/resume          (admin) paused -> queued (continues from its checkpoint)
//   GET  /v1/fine_tuning/jobs/{id}/events          newest first (after, limit); a `metrics` event per step
//   GET  /v1/fine_tuning/jobs/{id}/checkpoints     newest first (after, limit)
//
// An impossible transition (pausing a finished job, resuming a running one) is 409. Reads follow decision #14:
// admins see every job, another uid only the jobs it created (others are 404).

import Foundation
import Runtime
import Train

/// The validated body of `POST /v1/fine_tuning/jobs`.
struct CreateJobBody {
    var model: String
    var trainingFile: String?
    var validationFile: String?
    /// `{"feedback": {"model": NAME, "since": unix seconds}}`.
    var feedbackModel: String?
    var feedbackSince: Int?
    var trainingSource: JSONValue?
    var methodType = "supervised"
    /// nil = "auto".
    var nEpochs: Int?
    var batchSize: Int?
    var learningRateMultiplier: Double?
    var beta: Double?
    var rank = 8
    var alpha = 16.0
    var targets: [String] = Projection.allCases.map(\.rawValue)
    var suffix: String?
    var seed: Int?
    var metadata: [String: String] = [:]
    var checkpointEvery = 10
    var gate: JSONValue?
    /// Token-level training and held-out data made by the daemon itself (continual learning), instead of a file.
    var prepared: PreparedJobData?

    /// A body with every default, for jobs the daemon creates itself.
    init(model: String) {
        self.model = model
    }

    /// Parses and checks every field.
    /// - Throws: ``APIError`` 400 naming the field (`hyperparameters.n_epochs`, `lora.rank`, …).
    init(body: [UInt8]) throws {
        if body.isEmpty { throw APIError.malformedJSON("the body is empty") }
        guard case .object(let fields) = JSONValue.parse(String(decoding: body, as: UTF8.self)) else {
            throw APIError.malformedJSON("expected a JSON object")
        }
        func field(_ f: [(String, JSONValue)], _ k: String) -> JSONValue? {
            f.last { $0.0 == k }.flatMap { if case .null = $0.1 { return nil } else { return $0.1 } }
        }
        func object(_ v: JSONValue?, _ param: String) throws -> [(String, JSONValue)] {
            switch v {
            case nil: return []
            case .object(let o)?: return o
            default: throw APIError.invalidRequest("'\(param)' must be an object.", param: param)
            }
        }
        func string(_ v: JSONValue?, _ param: String) throws -> String? {
            switch v {
            case nil: return nil
            case .string(let s)? where !s.isEmpty: return s
            default: throw APIError.invalidRequest("'\(param)' must be a non-empty string.", param: param)
            }
        }
        func int(_ v: JSONValue?, _ param: String, _ range: ClosedRange<Int>, auto: Bool) throws -> Int? {
            switch v {
            case nil: return nil
            case .string("auto")? where auto: return nil
            case .int(let i)? where range.contains(i): return i
            case .double(let d)? where d == d.rounded() && range.contains(Int(exactly: d) ?? Int.min): return Int(d)
            default:
                throw APIError.invalidRequest(
                    "'\(param)' must be \(auto ? "\"auto\" or " : "")an integer from \(range.lowerBound) to \(range.upperBound).",
                    param: param)
            }
        }
        func number(_ v: JSONValue?, _ param: String, max: Double) throws -> Double? {
            switch v {
            case nil: return nil
            case .string("auto")?: return nil
            case .int(let i)? where i > 0 && Double(i) <= max: return Double(i)
            case .double(let d)? where d.isFinite && d > 0 && d <= max: return d
            default:
                throw APIError.invalidRequest("'\(param)' must be \"auto\" or a number > 0 and ≤ \(max).", param: param)
            }
        }

        guard let m = try string(field(fields, "model"), "model") else {
            throw APIError.invalidRequest("'model' is required: the base model's id or an adapter name.", param: "model")
        }
        model = m
        trainingFile = try string(field(fields, "training_file"), "training_file")
        validationFile = try string(field(fields, "validation_file"), "validation_file")
        if let src = field(fields, "training_source") {
            let s = try object(src, "training_source")
            guard let fb = field(s, "feedback") else {
                throw APIError.invalidRequest(
                    "'training_source' must be {\"feedback\": {\"model\": NAME, \"since\": TIME}}.", param: "training_source")
            }
            let f = try object(fb, "training_source.feedback")
            guard let fm = try string(field(f, "model"), "training_source.feedback.model") else {
                throw APIError.invalidRequest(
                    "'training_source.feedback.model' is required (whose feedback to train on).",
                    param: "training_source.feedback.model")
            }
            feedbackModel = fm
            switch field(f, "since") {
            case nil: feedbackSince = nil
            case .int(let t)? where t >= 0: feedbackSince = t
            case .string(let t)?:
                guard let d = ISO8601DateFormatter().date(from: t) else { fallthrough }
                feedbackSince = Int(d.timeIntervalSince1970)
            default:
                throw APIError.invalidRequest(
                    "'training_source.feedback.since' must be Unix seconds or an ISO 8601 time.",
                    param: "training_source.feedback.since")
            }
            trainingSource = src
        }
        switch (trainingFile, feedbackModel) {
        case (nil, nil):
            throw APIError.invalidRequest(
                "Give 'training_file' (a file id) or 'training_source' ({\"feedback\": {...}}).", param: "training_file")
        case (.some, .some):
            throw APIError.invalidRequest("Give 'training_file' or 'training_source', not both.", param: "training_source")
        default: break
        }

        // Hyperparameters: the top-level (older) object, then the method's, which wins.
        let method = try object(field(fields, "method"), "method")
        if let t = field(method, "type") {
            guard case .string(let type) = t, type == "supervised" || type == "dpo" else {
                throw APIError.invalidRequest("'method.type' must be \"supervised\" or \"dpo\".", param: "method.type")
            }
            methodType = type
        }
        var sources: [(String, [(String, JSONValue)])] = [
            ("hyperparameters", try object(field(fields, "hyperparameters"), "hyperparameters"))
        ]
        let m2 = try object(field(method, methodType), "method.\(methodType)")
        sources.append(
            ("method.\(methodType).hyperparameters",
             try object(field(m2, "hyperparameters"), "method.\(methodType).hyperparameters")))
        for (prefix, h) in sources {
            for (k, _) in h where !["n_epochs", "batch_size", "learning_rate_multiplier", "beta"].contains(k) {
                throw APIError.invalidRequest("Unknown hyperparameter '\(prefix).\(k)'.", param: "\(prefix).\(k)")
            }
            if let v = try int(field(h, "n_epochs"), "\(prefix).n_epochs", 1...50, auto: true) { nEpochs = v }
            if let v = try int(field(h, "batch_size"), "\(prefix).batch_size", 1...256, auto: true) { batchSize = v }
            if let v = try number(field(h, "learning_rate_multiplier"), "\(prefix).learning_rate_multiplier", max: 1000) {
                learningRateMultiplier = v
            }
            if field(h, "beta") != nil {
                guard methodType == "dpo" else {
                    throw APIError.invalidRequest("'beta' applies to the dpo method only.", param: "\(prefix).beta")
                }
                if let v = try number(field(h, "beta"), "\(prefix).beta", max: 100) { beta = v }
            }
        }

        let lora = try object(field(fields, "lora"), "lora")
        if let r = try int(field(lora, "rank"), "lora.rank", 1...Model.maxLoRARank, auto: false) { rank = r }
        if let a = try number(field(lora, "alpha"), "lora.alpha", max: 1e6) { alpha = a }
        if let t = field(lora, "targets") {
            let names: [String]
            switch t {
            case .string(let s): names = s.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }
            case .array(let items):
                names = try items.map {
                    guard case .string(let s) = $0 else {
                        throw APIError.invalidRequest("'lora.targets' must be a list of projection names.", param: "lora.targets")
                    }
                    return s
                }
            default:
                throw APIError.invalidRequest("'lora.targets' must be a list of projection names or \"all\".", param: "lora.targets")
            }
            do {
                targets = try TrainCommand.parseTargets(names.joined(separator: ",")).map(\.rawValue)
            } catch let e as TrainCLIError {
                throw APIError.invalidRequest(
                    e.message.replacingOccurrences(of: "--targets", with: "'lora.targets'"), param: "lora.targets")
            }
        }

        if let s = try string(field(fields, "suffix"), "suffix") {
            let ok = s.utf8.count <= 64 && s != "." && s != ".."
                && s.unicodeScalars.allSatisfy {
                    $0.value < 128 && (CharacterSet.alphanumerics.contains($0) || "._-:".unicodeScalars.contains($0))
                }
            guard ok else {
                throw APIError.invalidRequest(
                    "'suffix' names the new adapter: 1 to 64 ASCII letters, digits, '.', '_', '-' or ':'.", param: "suffix")
            }
            suffix = s
        }
        seed = try int(field(fields, "seed"), "seed", 0...Int(Int32.max), auto: false)
        metadata = try StoreFields.metadata(field(fields, "metadata") ?? .null, param: "metadata")
        let lorad = try object(field(fields, "lorad"), "lorad")
        if let c = try int(field(lorad, "checkpoint_every"), "lorad.checkpoint_every", 1...1_000_000, auto: false) {
            checkpointEvery = c
        }
        if let g = field(lorad, "gate"), g != .null {
            _ = try JobGate.settings(g)
            gate = g
            guard validationFile != nil else {
                throw APIError.invalidRequest(
                    "A gated job ('lorad.gate') needs 'validation_file': the held-out data the gate measures it on.",
                    param: "validation_file")
            }
        }
    }
}

/// Training and held-out data a job gets from the daemon (continual learning) rather than from a file: written to
/// the job's `train.feedback.json` (and `train.jsonl`, one item per line, for reading) and `valid.feedback.json`.
struct PreparedJobData: Sendable {
    var train: [FeedbackItem]
    var heldOut: [FeedbackItem]
}

extension APIError {
    /// 404 for an unknown (or not visible) job.
    static func jobNotFound(_ id: String) -> APIError {
        APIError(
            status: 404, message: "No fine-tuning job with id '\(id)'.", type: "not_found_error", param: "fine_tuning_job_id",
            code: "fine_tuning_job_not_found")
    }

    /// 404 for an unknown file id.
    static func fileNotFound(_ id: String, param: String) -> APIError {
        APIError(status: 404, message: "No file with id '\(id)'.", type: "not_found_error", param: param, code: "file_not_found")
    }

    /// 409: the job's status does not allow the action.
    static func jobConflict(_ j: FineTuningJob, action: String) -> APIError {
        APIError(
            status: 409, message: "Cannot \(action) the job '\(j.id)': it is \(j.status.rawValue).", type: "conflict_error",
            code: "invalid_job_status")
    }

    /// 403: job management by a non-admin.
    static func jobAdminRequired(_ peer: PeerCredentials?, what: String) -> APIError {
        storeAdminRequired(peer, what: what)
    }

    /// 404: the daemon runs without a state directory.
    static let jobsDisabled = APIError(
        status: 404, message: "Fine-tuning jobs are disabled: lorad runs without a state directory.",
        type: "not_found_error", code: "jobs_disabled")
}

extension APIHandler {
    func jobs() throws -> FineTuningJobs {
        guard let j = state.jobs else { throw APIError.jobsDisabled }
        return j
    }

    /// The OpenAI `fine_tuning.job` object, with lorad's fields (`lora`, `training_source`, `published`, `gate`,
    /// `parent_version`, `progress`).
    func jobJSON(_ j: FineTuningJob) -> JSONValue {
        let hp: [(String, JSONValue)] = [
            ("n_epochs", .int(j.nEpochs)), ("batch_size", .int(j.batchSize)),
            ("learning_rate_multiplier", .double(j.learningRateMultiplier)),
        ]
        var methodHP = hp
        if let b = j.beta { methodHP.append(("beta", .double(b))) }
        var error: JSONValue = .null
        if j.errorCode != nil || j.errorMessage != nil {
            let e: [(String, JSONValue)] = [
                ("code", .optional(j.errorCode)), ("message", .optional(j.errorMessage)), ("param", .optional(j.errorParam)),
            ]
            error = .object(e)
        }
        var metadata: JSONValue = .null
        if !j.metadata.isEmpty {
            metadata = .object(j.metadata.sorted { $0.key < $1.key }.map { ($0.key, JSONValue.string($0.value)) })
        }
        let method: JSONValue = .object([
            ("type", .string(j.methodType)), (j.methodType, .object([("hyperparameters", .object(methodHP))])),
        ])
        let lora: JSONValue = .object([
            ("rank", .int(j.rank)), ("alpha", .double(j.alpha)), ("targets", .array(j.targets.map { .string($0) })),
        ])
        let progress: JSONValue = .object([
            ("step", .int(j.step)), ("total_steps", .int(j.totalSteps)),
            ("train_loss", j.lastLoss.map { .double($0) } ?? .null),
        ])
        var f: [(String, JSONValue)] = []
        f.append(("id", .string(j.id)))
        f.append(("object", .string("fine_tuning.job")))
        f.append(("created_at", .int(j.createdAt)))
        f.append(("finished_at", j.finishedAt.map { .int($0) } ?? .null))
        f.append(("model", .string(j.model)))
        f.append(("fine_tuned_model", .optional(j.fineTunedModel)))
        f.append(("organization_id", .string("lorad")))
        f.append(("status", .string(j.status.rawValue)))
        f.append(("hyperparameters", .object(hp)))
        f.append(("method", method))
        f.append(("training_file", .optional(j.trainingFile)))
        f.append(("validation_file", .optional(j.validationFile)))
        f.append(("result_files", .array(j.resultFiles.map { .string($0) })))
        f.append(("trained_tokens", j.trainedTokens.map { .int($0) } ?? .null))
        f.append(("seed", .int(j.seed)))
        f.append(("estimated_finish", j.estimatedFinish.map { .int($0) } ?? .null))
        f.append(("error", error))
        f.append(("metadata", metadata))
        f.append(("integrations", .array([])))
        f.append(("user_provided_suffix", .optional(j.suffix)))
        f.append(("training_source", j.trainingSource ?? .null))
        f.append(("lora", lora))
        f.append(("parent_version", j.parentVersion.map { .int($0) } ?? .null))
        f.append(("published", j.published.map { .bool($0) } ?? .null))
        f.append(("gate", j.gate ?? .null))
        f.append(("progress", progress))
        return .object(f)
    }

    func jobEventJSON(_ e: FineTuningJobEvent) -> JSONValue {
        .object([
            ("id", .string(e.id)), ("object", .string("fine_tuning.job.event")), ("created_at", .int(e.createdAt)),
            ("level", .string(e.level)), ("message", .string(e.message)), ("type", .string(e.type)),
            ("data", e.data ?? .object([])),
        ])
    }

    func jobCheckpointJSON(_ c: FineTuningJobCheckpoint) -> JSONValue {
        .object([
            ("id", .string(c.id)), ("object", .string("fine_tuning.job.checkpoint")), ("created_at", .int(c.createdAt)),
            ("fine_tuned_model_checkpoint", .string(c.fineTunedModelCheckpoint)), ("fine_tuning_job_id", .string(c.jobID)),
            ("step_number", .int(c.stepNumber)), ("metrics", c.metrics),
        ])
    }

    /// A job the caller may see (admins: any; others: their own), else 404.
    private func visibleJob(_ id: String, peer: PeerCredentials?, jobs: FineTuningJobs) async throws -> FineTuningJob {
        guard let j = try await jobs.store.job(id: id),
            mayRead(ownedBy: j.uid, peer: peer)
        else { throw APIError.jobNotFound(id) }
        return j
    }

    /// Serves the fine-tuning routes.
    func dispatchJobs(
        _ route: Route, method: String, uri: String, body: [UInt8], peer: PeerCredentials?, writer: ResponseWriter
    ) async throws -> Int {
        let jobs = try jobs()
        let admin = state.adminPolicy.allows(peer)
        let q = QueryParams(uri: uri)
        do {
            switch (route, method) {
            case (.fineTuningJobs, "POST"):
                guard admin else { throw APIError.jobAdminRequired(peer, what: "Creating fine-tuning jobs") }
                let j = try await createJob(try CreateJobBody(body: body), jobs: jobs, peer: peer)
                try await writer.send(json: jobJSON(j))
                return 200
            case (.fineTuningJobs, "GET"):
                var page = try await jobs.store.listJobs(after: q["after"], limit: try q.limit())
                if !admin { page.items = page.items.filter { peer != nil && $0.uid == peer?.uid } }
                try await writer.send(
                    json: listJSON(page.items.map(jobJSON), ids: page.items.map(\.id), hasMore: page.hasMore))
                return 200
            case (.fineTuningJob(let id), "GET"):
                try await writer.send(json: jobJSON(try await visibleJob(id, peer: peer, jobs: jobs)))
                return 200
            case (.fineTuningJobAction(let id, let action), "POST"):
                guard admin else {
                    throw APIError.jobAdminRequired(peer, what: "\(action.prefix(1).uppercased() + action.dropFirst())ing fine-tuning jobs")
                }
                let j = try await jobs.control(id, action: action)
                try await writer.send(json: jobJSON(j))
                return 200
            case (.fineTuningJobEvents(let id), "GET"):
                _ = try await visibleJob(id, peer: peer, jobs: jobs)
                let page = try await jobs.store.listJobEvents(jobID: id, after: q["after"], limit: try q.limit())
                try await writer.send(
                    json: listJSON(page.items.map(jobEventJSON), ids: page.items.map(\.id), hasMore: page.hasMore))
                return 200
            case (.fineTuningJobCheckpoints(let id), "GET"):
                _ = try await visibleJob(id, peer: peer, jobs: jobs)
                let limit = q["limit"] == nil ? 10 : try q.limit()
                let page = try await jobs.store.listJobCheckpoints(jobID: id, after: q["after"], limit: limit)
                try await writer.send(
                    json: listJSON(page.items.map(jobCheckpointJSON), ids: page.items.map(\.id), hasMore: page.hasMore))
                return 200
            default:
                throw APIError.routeNotFound(method: method, path: route.template)
            }
        } catch let e as StoreError {
            throw APIError.from(e)
        }
    }

    /// Validates everything, copies the data into the job's work directory, records the job (`validating_files`),
    /// checks the lines, and queues it.
    func createJob(_ b: CreateJobBody, jobs: FineTuningJobs, peer: PeerCredentials?) async throws -> FineTuningJob {
        // The model: the base model (a fresh adapter) or a registered adapter (its current version, fixed now).
        var baseAdapter: String?
        var parentVersion: Int?
        if b.model != state.modelID {
            guard let info = state.registry?.info(b.model) else {
                throw APIError.modelNotFound(b.model, available: availableModels())
            }
            baseAdapter = b.model
            parentVersion = info.record.version
        }
        if let s = b.suffix, s == state.modelID {
            throw APIError.invalidRequest("'suffix' must not be the base model's id.", param: "suffix")
        }
        // Files exist (404 before anything is written).
        var trainingPath: String?
        var validationPath: String?
        if let f = b.trainingFile {
            guard let p = try await jobs.files.contentPath(fileID: f) else { throw APIError.fileNotFound(f, param: "training_file") }
            trainingPath = p
        }
        if let f = b.validationFile {
            guard let p = try await jobs.files.contentPath(fileID: f) else {
                throw APIError.fileNotFound(f, param: "validation_file")
            }
            validationPath = p
        }
        if let fm = b.feedbackModel, fm != state.modelID, state.registry?.info(fm) == nil,
            (try await store().listFeedback(model: fm, completionID: nil, uid: nil, after: nil, limit: 1)).items.isEmpty
        {
            throw APIError.modelNotFound(fm, available: availableModels())
        }

        let id = "ftjob-" + ResponseRenderer.randomHex(24)
        let dir = jobs.workDir(id)
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            if let prepared = b.prepared {
                // Frozen now: the job trains and is gated on exactly this data, whatever feedback arrives later.
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                let lines = try prepared.train.map { String(decoding: try encoder.encode($0), as: UTF8.self) + "\n" }
                try AdapterStore.writeDurably(Data(lines.joined().utf8), to: dir + "/train.jsonl")
                try AdapterStore.writeDurably(try encoder.encode(prepared.train), to: dir + "/train.feedback.json")
                try AdapterStore.writeDurably(try encoder.encode(prepared.heldOut), to: dir + "/valid.feedback.json")
            } else if let p = trainingPath {
                try AdapterStore.writeDurably(try Data(contentsOf: URL(fileURLWithPath: p)), to: dir + "/train.jsonl")
            } else if let fm = b.feedbackModel {
                let lines = try await FeedbackExport.lines(
                    store: try store(), model: fm, format: b.methodType == "dpo" ? "dpo" : "sft", since: b.feedbackSince)
                guard !lines.isEmpty else {
                    throw APIError.invalidRequest(
                        "The feedback of '\(fm)'\(b.feedbackSince.map { " since \($0)" } ?? "") gives no "
                            + "\(b.methodType == "dpo" ? "DPO pairs" : "training lines").",
                        param: "training_source", code: "no_training_data")
                }
                try AdapterStore.writeDurably(
                    Data(lines.map { $0.serialized + "\n" }.joined().utf8), to: dir + "/train.jsonl")
                // What the job trains on: the same feedback with the prompt ids as served (decision #4).
                let items = try await FeedbackTrainingData.items(
                    store: try store(), model: fm, dpo: b.methodType == "dpo", since: b.feedbackSince)
                try AdapterStore.writeDurably(try JSONEncoder().encode(items), to: dir + "/train.feedback.json")
            }
            if let p = validationPath {
                try AdapterStore.writeDurably(try Data(contentsOf: URL(fileURLWithPath: p)), to: dir + "/valid.jsonl")
            }
            // The continued adapter's current version, frozen as the job's starting point.
            if let name = baseAdapter {
                let r = try await ready()
                guard let backend = r.backend as? RuntimeBackend, let reg = state.registry else {
                    throw APIError.unavailable("The model is still loading.", retryAfter: 2, code: "model_loading")
                }
                let resolved = try await reg.resolve(name)
                guard let adapter = resolved.weights as? LoRAAdapter else {
                    throw APIError.internalError("The adapter '\(name)' is not a LoRA adapter of this runtime.")
                }
                parentVersion = resolved.record.version
                let params: LoRAParameters
                do { params = try LoRAParameters(adapter: adapter, model: backend.model.config) } catch {
                    throw APIError.invalidRequest(
                        "The adapter '\(name)' cannot be trained further: \(error)", param: "model", code: "adapter_not_trainable")
                }
                try AdapterExport.writeGGUF(
                    params, model: backend.model.config, name: "\(name)@\(resolved.record.version)", path: dir + "/init.gguf")
            }
        } catch let e as APIError {
            try? FileManager.default.removeItem(atPath: dir)
            throw e
        } catch let e as AdapterRegistryError {
            try? FileManager.default.removeItem(atPath: dir)
            throw APIError.from(e, param: "model")
        } catch let e as StoreError {
            try? FileManager.default.removeItem(atPath: dir)
            throw APIError.from(e)
        } catch {
            try? FileManager.default.removeItem(atPath: dir)
            if let e = error as? AdapterStoreError, case .diskFull = e {
                throw APIError(status: 507, message: "Not enough disk space for the job's data: \(e)", type: "storage_error", code: "disk_full")
            }
            throw APIError.internalError("Cannot prepare the job's data: \(error)")
        }

        // "auto" resolved from the number of examples.
        let count = Self.lineCount(dir + "/train.jsonl")
        let job = FineTuningJob(
            id: id, model: b.model, baseAdapter: baseAdapter, parentVersion: parentVersion, trainingFile: b.trainingFile,
            validationFile: b.validationFile, trainingSource: b.trainingSource, methodType: b.methodType,
            beta: b.methodType == "dpo" ? (b.beta ?? 0.1) : nil, nEpochs: b.nEpochs ?? 3,
            batchSize: b.batchSize ?? max(1, min(4, count)), learningRateMultiplier: b.learningRateMultiplier ?? 1,
            rank: b.rank, alpha: b.alpha, targets: b.targets, suffix: b.suffix,
            seed: b.seed ?? Int.random(in: 0...Int(Int32.max)), checkpointEvery: b.checkpointEvery, metadata: b.metadata,
            status: .validatingFiles, createdAt: Int(Date().timeIntervalSince1970), startedAt: nil, finishedAt: nil,
            trainedTokens: nil, estimatedFinish: nil, errorCode: nil, errorMessage: nil, errorParam: nil, resultFiles: [],
            fineTunedModel: nil, published: nil, gate: b.gate, uid: peer?.uid, step: 0, totalSteps: 0, lastLoss: nil)
        try await jobs.store.insertJob(job)
        await jobs.event(
            id, "Validating training file: \(b.trainingFile ?? "feedback of \(b.feedbackModel ?? b.suffix ?? b.model)")")
        // Every line must be a JSON object; the full check (fields, roles, lengths) runs when the job starts and
        // fails the job with the line number and field. A job cancelled meanwhile stays cancelled.
        @Sendable func stillValidating(_ j: FineTuningJob) throws { guard j.status == .validatingFiles else { throw JobSkip() } }
        func current() async throws -> FineTuningJob { try await jobs.store.job(id: id) ?? job }
        if let bad = Self.firstNonObjectLine(dir + "/train.jsonl") {
            let updated: FineTuningJob?
            do {
                updated = try await jobs.store.updateJob(id: id) { j in
                    try stillValidating(j)
                    j.status = .failed
                    j.finishedAt = Int(Date().timeIntervalSince1970)
                    j.errorCode = "invalid_training_file"
                    j.errorMessage = "line \(bad) of the training file is not a JSON object"
                    j.errorParam = "training_file"
                    j.published = false
                }
            } catch let e as StoreError {
                if case .diskFull = e { throw e }
                return try await current()
            }
            await jobs.event(id, "The training file is invalid: line \(bad) is not a JSON object.", level: "error")
            await jobs.refreshCounts()
            return updated ?? job
        }
        let queued: FineTuningJob?
        do {
            queued = try await jobs.store.updateJob(id: id) { j in
                try stillValidating(j)
                j.status = .queued
            }
        } catch let e as StoreError {
            if case .diskFull = e { throw e }
            return try await current()
        }
        await jobs.event(
            id, "Files validated (\(count) examples); the job is queued.",
            data: .object([
                ("examples", .int(count)), ("n_epochs", .int(job.nEpochs)), ("batch_size", .int(job.batchSize)),
                ("learning_rate_multiplier", .double(job.learningRateMultiplier)),
            ]))
        await jobs.refreshCounts()
        jobs.notify()
        return queued ?? job
    }

    /// Non-empty lines of a JSONL file.
    static func lineCount(_ path: String) -> Int {
        guard let d = FileManager.default.contents(atPath: path) else { return 0 }
        return String(decoding: d, as: UTF8.self).split(separator: "\n").filter {
            !$0.trimmingCharacters(in: .whitespaces).isEmpty
        }.count
    }

    /// The 1-based number of the first non-empty line that is not a JSON object (nil: all are).
    static func firstNonObjectLine(_ path: String) -> Int? {
        guard let d = FileManager.default.contents(atPath: path) else { return 1 }
        for (i, line) in String(decoding: d, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated()
        where !line.trimmingCharacters(in: .whitespaces).isEmpty {
            guard case .object = JSONValue.parse(String(line)) else { return i + 1 }
        }
        return nil
    }
}
