// FineTuningJobStore: OpenAI-style fine-tuning jobs, their events and checkpoints in the daemon's SQLite store
// (migration `v4_jobs`). A job row holds everything the job was created with (hyperparameters resolved from
// "auto" to values, the parent adapter version fixed at creation) and everything the runner learns (status,
// times, trained tokens, error, result files, the published adapter). Events and checkpoints are append-only.
//
// Shapes: openai-python `types/fine_tuning/{fine_tuning_job,fine_tuning_job_event}.py` and
// `types/fine_tuning/jobs/fine_tuning_job_checkpoint.py` (API-CONVENTIONS.md §3.5).

import Foundation
import GRDB

/// A fine-tuning job's status. `validating_files → queued → running → succeeded | failed | cancelled`, and
/// `paused` (from `queued` or `running`; `resume` makes it `queued` again).
public enum FineTuningJobStatus: String, Sendable, CaseIterable {
    case validatingFiles = "validating_files"
    case queued, running, paused, succeeded, failed, cancelled

    /// No further transition is possible.
    public var isFinal: Bool { self == .succeeded || self == .failed || self == .cancelled }
}

/// One fine-tuning job as stored (`fine_tuning_job` table).
public struct FineTuningJob: Sendable, Equatable {
    /// `ftjob-…`.
    public var id: String
    /// `model` as sent: the base model's id or an adapter name.
    public var model: String
    /// The adapter the job continues (nil: a fresh adapter on the base model).
    public var baseAdapter: String?
    /// The continued adapter's version when the job was created (decision #7), nil for a fresh adapter.
    public var parentVersion: Int?
    /// File ids (nil when absent).
    public var trainingFile: String?
    /// The validation file id (nil: none).
    public var validationFile: String?
    /// lorad's `training_source` as sent (e.g. `{"feedback": {"model": NAME, "since": TIME}}`), or nil.
    public var trainingSource: JSONValue?
    /// `supervised` or `dpo`.
    public var methodType: String
    /// DPO `beta` (resolved; 0.1 for "auto"); nil for supervised.
    public var beta: Double?
    /// Resolved hyperparameters.
    public var nEpochs: Int
    /// Examples per step.
    public var batchSize: Int
    /// Multiplies the base learning rate (`FineTuningJobs.baseLearningRate`).
    public var learningRateMultiplier: Double
    /// LoRA shape of a fresh adapter (a continued adapter keeps its own).
    public var rank: Int
    /// LoRA alpha (scale alpha/rank).
    public var alpha: Double
    /// llama.cpp projection names (`attn_q`, …).
    public var targets: [String]
    /// Name of the published adapter (nil: the continued adapter's, else `ft-<short id>`).
    public var suffix: String?
    /// Seed of the adapter init and the data order (chosen at random when not sent, then stored).
    public var seed: Int
    /// Checkpoint every N optimizer steps (lorad's `lorad.checkpoint_every`).
    public var checkpointEvery: Int
    /// OpenAI `metadata` (string map).
    public var metadata: [String: String]
    /// Where the job is in its life.
    public var status: FineTuningJobStatus
    /// Unix seconds.
    public var createdAt: Int
    /// Unix seconds of the first start (nil: never started).
    public var startedAt: Int?
    /// Unix seconds of the end (succeeded, failed or cancelled).
    public var finishedAt: Int?
    /// Tokens run through the model (all positions of all sequences, over every epoch).
    public var trainedTokens: Int?
    /// Unix seconds, from the measured step time.
    public var estimatedFinish: Int?
    /// `{code, message, param}` of a failed job.
    public var errorCode: String?
    /// The failure's message.
    public var errorMessage: String?
    /// The request field the failure is about, if any.
    public var errorParam: String?
    /// File ids of the result files (the step-metrics CSV).
    public var resultFiles: [String]
    /// The published adapter's name.
    public var fineTunedModel: String?
    /// Whether the adapter was published (nil until the job ends).
    public var published: Bool?
    /// lorad's gate settings as sent (stored; evaluated by a later version), nil without one.
    public var gate: JSONValue?
    /// SO_PEERCRED uid of the creator.
    public var uid: UInt32?
    /// Progress: optimizer steps done and of the whole run (0 until known).
    public var step: Int
    /// Optimizer steps of the whole run (0 until the job first started).
    public var totalSteps: Int
    /// The last step's training loss.
    public var lastLoss: Double?
}

/// One `fine_tuning.job.event`.
public struct FineTuningJobEvent: Sendable, Equatable {
    /// `ftevent-…`.
    public var id: String
    /// The job it belongs to.
    public var jobID: String
    /// Unix seconds.
    public var createdAt: Int
    /// `info`, `warn` or `error`.
    public var level: String
    /// Human-readable text.
    public var message: String
    /// `message` or `metrics`.
    public var type: String
    /// Metrics of a step (`step`, `train_loss`, …) or other details; nil for none.
    public var data: JSONValue?
}

/// One `fine_tuning.job.checkpoint`.
public struct FineTuningJobCheckpoint: Sendable, Equatable {
    /// `ftckpt-…`.
    public var id: String
    /// The job it belongs to.
    public var jobID: String
    /// Unix seconds.
    public var createdAt: Int
    /// Optimizer steps done when it was written.
    public var stepNumber: Int
    /// `{step, train_loss, valid_loss, train_mean_token_accuracy, …}`.
    public var metrics: JSONValue
    /// What the checkpoint would be called as a model (`name@ckpt-step-N`).
    public var fineTunedModelCheckpoint: String
}

extension LoradStore {
    /// Migration `v4_jobs`: the job, event and checkpoint tables.
    static func migrateV4Jobs(_ db: Database) throws {
        try db.execute(
            sql: """
                CREATE TABLE fine_tuning_job (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    id TEXT NOT NULL UNIQUE,
                    model TEXT NOT NULL,
                    base_adapter TEXT,
                    parent_version INTEGER,
                    training_file TEXT,
                    validation_file TEXT,
                    training_source_json TEXT,
                    method_type TEXT NOT NULL,
                    beta REAL,
                    n_epochs INTEGER NOT NULL,
                    batch_size INTEGER NOT NULL,
                    learning_rate_multiplier REAL NOT NULL,
                    lora_rank INTEGER NOT NULL,
                    lora_alpha REAL NOT NULL,
                    lora_targets TEXT NOT NULL,
                    suffix TEXT,
                    seed INTEGER NOT NULL,
                    checkpoint_every INTEGER NOT NULL,
                    metadata_json TEXT NOT NULL,
                    status TEXT NOT NULL,
                    created_at INTEGER NOT NULL,
                    started_at INTEGER,
                    finished_at INTEGER,
                    trained_tokens INTEGER,
                    estimated_finish INTEGER,
                    error_code TEXT,
                    error_message TEXT,
                    error_param TEXT,
                    result_files TEXT NOT NULL,
                    fine_tuned_model TEXT,
                    published INTEGER,
                    gate_json TEXT,
                    uid INTEGER,
                    step INTEGER NOT NULL DEFAULT 0,
                    total_steps INTEGER NOT NULL DEFAULT 0,
                    last_loss REAL
                );
                CREATE INDEX fine_tuning_job_status ON fine_tuning_job(status, seq);
                CREATE TABLE fine_tuning_job_event (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    id TEXT NOT NULL UNIQUE,
                    job_id TEXT NOT NULL REFERENCES fine_tuning_job(id) ON DELETE CASCADE,
                    created_at INTEGER NOT NULL,
                    level TEXT NOT NULL,
                    message TEXT NOT NULL,
                    type TEXT NOT NULL,
                    data_json TEXT
                );
                CREATE INDEX fine_tuning_job_event_job ON fine_tuning_job_event(job_id, seq);
                CREATE TABLE fine_tuning_job_checkpoint (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    id TEXT NOT NULL UNIQUE,
                    job_id TEXT NOT NULL REFERENCES fine_tuning_job(id) ON DELETE CASCADE,
                    created_at INTEGER NOT NULL,
                    step_number INTEGER NOT NULL,
                    metrics_json TEXT NOT NULL,
                    fine_tuned_model_checkpoint TEXT NOT NULL
                );
                CREATE INDEX fine_tuning_job_checkpoint_job ON fine_tuning_job_checkpoint(job_id, seq);
                """)
    }

    // MARK: - Jobs

    /// Records a new job (durable when this returns).
    /// - Throws: ``StoreError/diskFull(_:)`` and other ``StoreError``s.
    public func insertJob(_ j: FineTuningJob) async throws {
        try await run(write: true) { db in
            try db.execute(
                sql: """
                    INSERT INTO fine_tuning_job (id, model, base_adapter, parent_version, training_file, validation_file,
                      training_source_json, method_type, beta, n_epochs, batch_size, learning_rate_multiplier, lora_rank,
                      lora_alpha, lora_targets, suffix, seed, checkpoint_every, metadata_json, status, created_at,
                      result_files, gate_json, uid)
                    VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
                    """,
                arguments: [
                    j.id, j.model, j.baseAdapter, j.parentVersion, j.trainingFile, j.validationFile,
                    j.trainingSource?.serialized, j.methodType, j.beta, j.nEpochs, j.batchSize, j.learningRateMultiplier,
                    j.rank, j.alpha, Self.stringsJSON(j.targets), j.suffix, j.seed, j.checkpointEvery,
                    Self.metadataJSON(j.metadata), j.status.rawValue, j.createdAt, Self.stringsJSON(j.resultFiles),
                    j.gate?.serialized, j.uid.map { Int64($0) },
                ])
        }
    }

    /// One job, or nil.
    public func job(id: String) async throws -> FineTuningJob? {
        try await run(write: false) { db in
            try Row.fetchOne(db, sql: "SELECT * FROM fine_tuning_job WHERE id = ?", arguments: [id]).map(Self.job)
        }
    }

    /// A page of jobs, newest first, starting after the job `after` (OpenAI's order and cursor).
    public func listJobs(after: String?, limit: Int) async throws -> StorePage<FineTuningJob> {
        try await run(write: false) { db in
            var sql = "SELECT * FROM fine_tuning_job"
            var args: [(any DatabaseValueConvertible)?] = []
            if let after {
                sql += " WHERE seq < coalesce((SELECT seq FROM fine_tuning_job WHERE id = ?), 9223372036854775807)"
                args.append(after)
            }
            sql += " ORDER BY seq DESC LIMIT ?"
            args.append(limit + 1)
            let rows = try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args))
            return StorePage(items: rows.prefix(limit).map(Self.job), hasMore: rows.count > limit)
        }
    }

    /// The job the runner should work on next: a `running` one (interrupted by a crash or a shutdown) first, then
    /// the oldest `queued` one; nil when there is none.
    public func nextRunnableJob() async throws -> FineTuningJob? {
        try await run(write: false) { db in
            try Row.fetchOne(
                db,
                sql: """
                    SELECT * FROM fine_tuning_job WHERE status IN ('running', 'queued')
                    ORDER BY CASE status WHEN 'running' THEN 0 ELSE 1 END, seq LIMIT 1
                    """
            ).map(Self.job)
        }
    }

    /// Queues the jobs left in `validating_files` by a stop during their creation (their data was already
    /// copied; the full check runs when they start). Returns their ids.
    public func requeueValidatingJobs() async throws -> [String] {
        try await run(write: true) { db in
            let ids = try String.fetchAll(db, sql: "SELECT id FROM fine_tuning_job WHERE status = 'validating_files'")
            try db.execute(sql: "UPDATE fine_tuning_job SET status = 'queued' WHERE status = 'validating_files'")
            return ids
        }
    }

    /// Number of jobs by status (every status present, zeros included).
    public func jobCounts() async throws -> [FineTuningJobStatus: Int] {
        try await run(write: false) { db in
            var out: [FineTuningJobStatus: Int] = [:]
            for s in FineTuningJobStatus.allCases { out[s] = 0 }
            for row in try Row.fetchAll(db, sql: "SELECT status, count(*) AS n FROM fine_tuning_job GROUP BY status") {
                if let s = FineTuningJobStatus(rawValue: row["status"]) { out[s] = row["n"] }
            }
            return out
        }
    }

    /// Applies `change` to the stored job `id` inside one transaction, writes it back, and returns it (nil when
    /// unknown). `change` may throw to abort (nothing is written).
    public func updateJob(
        id: String, _ change: @escaping @Sendable (inout FineTuningJob) throws -> Void
    ) async throws -> FineTuningJob? {
        try await run(write: true) { db in
            guard var j = try Row.fetchOne(db, sql: "SELECT * FROM fine_tuning_job WHERE id = ?", arguments: [id])
                .map(Self.job)
            else { return nil }
            try change(&j)
            try db.execute(
                sql: """
                    UPDATE fine_tuning_job SET status = ?, started_at = ?, finished_at = ?, trained_tokens = ?,
                      estimated_finish = ?, error_code = ?, error_message = ?, error_param = ?, result_files = ?,
                      fine_tuned_model = ?, published = ?, metadata_json = ?, step = ?, total_steps = ?, last_loss = ?
                    WHERE id = ?
                    """,
                arguments: [
                    j.status.rawValue, j.startedAt, j.finishedAt, j.trainedTokens, j.estimatedFinish, j.errorCode,
                    j.errorMessage, j.errorParam, Self.stringsJSON(j.resultFiles), j.fineTunedModel,
                    j.published.map { $0 ? 1 : 0 }, Self.metadataJSON(j.metadata), j.step, j.totalSteps, j.lastLoss, id,
                ])
            return j
        }
    }

    // MARK: - Events and checkpoints

    /// Appends an event (durable when this returns).
    public func insertJobEvent(_ e: FineTuningJobEvent) async throws {
        try await run(write: true) { db in
            try db.execute(
                sql: """
                    INSERT INTO fine_tuning_job_event (id, job_id, created_at, level, message, type, data_json)
                    VALUES (?,?,?,?,?,?,?)
                    """,
                arguments: [e.id, e.jobID, e.createdAt, e.level, e.message, e.type, e.data?.serialized])
        }
    }

    /// The highest `step` of job `jobID`'s training-step metrics events (`train_loss`) and of its validation ones
    /// (`valid_loss`); −1 when there are none (a validation event may be at step 0).
    /// - Throws: ``StoreError``.
    public func loggedMetricSteps(jobID: String) async throws -> (train: Int, valid: Int) {
        try await run(write: false) { db in
            let row = try Row.fetchOne(
                db,
                sql: """
                    SELECT
                      max(CASE WHEN json_extract(data_json, '$.train_loss') IS NOT NULL
                          THEN json_extract(data_json, '$.step') END) AS train,
                      max(CASE WHEN json_extract(data_json, '$.valid_loss') IS NOT NULL
                          THEN json_extract(data_json, '$.step') END) AS valid
                    FROM fine_tuning_job_event WHERE job_id = ? AND type = 'metrics'
                    """, arguments: [jobID])
            let train: Int? = row?["train"]
            let valid: Int? = row?["valid"]
            return (train ?? -1, valid ?? -1)
        }
    }

    /// A page of a job's events, newest first, after the event `after` (OpenAI's order and cursor); `limit` nil
    /// returns them all.
    public func listJobEvents(jobID: String, after: String?, limit: Int?) async throws -> StorePage<FineTuningJobEvent> {
        try await run(write: false) { db in
            var sql = "SELECT * FROM fine_tuning_job_event WHERE job_id = ?"
            var args: [(any DatabaseValueConvertible)?] = [jobID]
            if let after {
                sql += " AND seq < coalesce((SELECT seq FROM fine_tuning_job_event WHERE id = ?), 9223372036854775807)"
                args.append(after)
            }
            sql += " ORDER BY seq DESC"
            if let limit {
                sql += " LIMIT ?"
                args.append(limit + 1)
            }
            let rows = try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args))
            let n = limit ?? rows.count
            return StorePage(items: rows.prefix(n).map(Self.jobEvent), hasMore: rows.count > n)
        }
    }

    /// Records a checkpoint.
    public func insertJobCheckpoint(_ c: FineTuningJobCheckpoint) async throws {
        try await run(write: true) { db in
            try db.execute(
                sql: """
                    INSERT INTO fine_tuning_job_checkpoint (id, job_id, created_at, step_number, metrics_json,
                      fine_tuned_model_checkpoint) VALUES (?,?,?,?,?,?)
                    """,
                arguments: [c.id, c.jobID, c.createdAt, c.stepNumber, c.metrics.serialized, c.fineTunedModelCheckpoint])
        }
    }

    /// Replaces the metrics of checkpoint `id` (a validation loss computed after the checkpoint was written).
    public func updateJobCheckpoint(id: String, metrics: JSONValue) async throws {
        try await run(write: true) { db in
            try db.execute(
                sql: "UPDATE fine_tuning_job_checkpoint SET metrics_json = ? WHERE id = ?",
                arguments: [metrics.serialized, id])
        }
    }

    /// A page of a job's checkpoints, newest first, after the checkpoint `after`.
    public func listJobCheckpoints(jobID: String, after: String?, limit: Int) async throws
        -> StorePage<FineTuningJobCheckpoint>
    {
        try await run(write: false) { db in
            var sql = "SELECT * FROM fine_tuning_job_checkpoint WHERE job_id = ?"
            var args: [(any DatabaseValueConvertible)?] = [jobID]
            if let after {
                sql += " AND seq < coalesce((SELECT seq FROM fine_tuning_job_checkpoint WHERE id = ?), 9223372036854775807)"
                args.append(after)
            }
            sql += " ORDER BY seq DESC LIMIT ?"
            args.append(limit + 1)
            let rows = try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args))
            return StorePage(items: rows.prefix(limit).map(Self.jobCheckpoint), hasMore: rows.count > limit)
        }
    }

    // MARK: - Row mapping

    static func stringsJSON(_ s: [String]) -> String { JSONValue.array(s.map { .string($0) }).serialized }

    static func strings(_ text: String) -> [String] {
        (try? JSONDecoder().decode([String].self, from: Data(text.utf8))) ?? []
    }

    static func job(_ row: Row) -> FineTuningJob {
        let uid: Int64? = row["uid"]
        let source: String? = row["training_source_json"]
        let gate: String? = row["gate_json"]
        let published: Int? = row["published"]
        return FineTuningJob(
            id: row["id"], model: row["model"], baseAdapter: row["base_adapter"], parentVersion: row["parent_version"],
            trainingFile: row["training_file"], validationFile: row["validation_file"],
            trainingSource: source.map(JSONValue.parse), methodType: row["method_type"], beta: row["beta"],
            nEpochs: row["n_epochs"], batchSize: row["batch_size"], learningRateMultiplier: row["learning_rate_multiplier"],
            rank: row["lora_rank"], alpha: row["lora_alpha"], targets: strings(row["lora_targets"]), suffix: row["suffix"],
            seed: row["seed"], checkpointEvery: row["checkpoint_every"], metadata: metadata(row["metadata_json"]),
            status: FineTuningJobStatus(rawValue: row["status"]) ?? .failed, createdAt: row["created_at"],
            startedAt: row["started_at"], finishedAt: row["finished_at"], trainedTokens: row["trained_tokens"],
            estimatedFinish: row["estimated_finish"], errorCode: row["error_code"], errorMessage: row["error_message"],
            errorParam: row["error_param"], resultFiles: strings(row["result_files"]),
            fineTunedModel: row["fine_tuned_model"], published: published.map { $0 != 0 },
            gate: gate.map(JSONValue.parse), uid: uid.map { UInt32(truncatingIfNeeded: $0) }, step: row["step"],
            totalSteps: row["total_steps"], lastLoss: row["last_loss"])
    }

    static func jobEvent(_ row: Row) -> FineTuningJobEvent {
        let data: String? = row["data_json"]
        return FineTuningJobEvent(
            id: row["id"], jobID: row["job_id"], createdAt: row["created_at"], level: row["level"],
            message: row["message"], type: row["type"], data: data.map(JSONValue.parse))
    }

    static func jobCheckpoint(_ row: Row) -> FineTuningJobCheckpoint {
        FineTuningJobCheckpoint(
            id: row["id"], jobID: row["job_id"], createdAt: row["created_at"], stepNumber: row["step_number"],
            metrics: JSONValue.parse(row["metrics_json"]), fineTunedModelCheckpoint: row["fine_tuned_model_checkpoint"])
    }
}
