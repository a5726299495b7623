// ContinualStore: what the continual-learning loop reads from the store. Its own state lives in the jobs it
// creates (their `metadata`: `continual` = the adapter, `feedback_through` = the last feedback `seq` the job's
// data covers, `trigger` = why it started), so creating a job is the one durable step of a trigger: after a
// kill -9 the loop reads where it was from the jobs table and never starts the same job twice.

import Foundation
import GRDB

/// A feedback item with its position in the store's feedback order (`seq`, increasing).
public struct SequencedFeedback: Sendable {
    /// The store's feedback order (increasing with arrival).
    public var seq: Int
    /// The feedback item.
    public var record: FeedbackRecord

    /// - Parameters: see the properties.
    public init(seq: Int, record: FeedbackRecord) {
        self.seq = seq
        self.record = record
    }
}

/// The loop's view of one adapter's earlier continual jobs.
struct ContinualHistory: Sendable, Equatable {
    /// The newest continual job of the adapter (any outcome): its id, creation time and the feedback it covered.
    var lastJobID: String?
    var lastJobAt: Date?
    var lastThrough: Int
    /// The feedback covered by the continual job that made the adapter's current version (0: none, or the current
    /// version came from elsewhere): newer feedback is what the next job learns from; older feedback is its replay
    /// pool. After a rollback this is the restored version's job, so feedback only a discarded version learned from
    /// is new again.
    var publishedThrough: Int
    /// A job that publishes under this adapter's name is validating, queued, running or paused.
    var jobActive: Bool
}

extension LoradStore {
    /// Every feedback item on `model` with `seq ≤ through` (nil: all), oldest first.
    /// - Throws: ``StoreError``.
    func sequencedFeedback(model: String, through: Int? = nil) async throws -> [SequencedFeedback] {
        try await run(write: false) { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM feedback WHERE model = ? AND seq <= ? ORDER BY seq",
                arguments: [model, through ?? Int.max]
            ).map { SequencedFeedback(seq: $0["seq"], record: LoradStore.feedback($0)) }
        }
    }

    /// Number of feedback items on `model` after `seq`, and the newest `seq` among them (nil when none).
    /// - Throws: ``StoreError``.
    func feedbackCount(model: String, after seq: Int) async throws -> (count: Int, newest: Int?) {
        try await run(write: false) { db in
            let row = try Row.fetchOne(
                db, sql: "SELECT count(*) AS n, max(seq) AS top FROM feedback WHERE model = ? AND seq > ?",
                arguments: [model, seq])
            return (row?["n"] ?? 0, row?["top"])
        }
    }

    /// The continual-learning history of adapter `name` (see ``ContinualHistory``).
    /// - Throws: ``StoreError``.
    /// - Parameter currentJobID: the job that made the adapter's current version (its lineage), nil when none.
    func continualHistory(name: String, currentJobID: String?) async throws -> ContinualHistory {
        try await run(write: false) { db in
            let last = try Row.fetchOne(
                db,
                sql: """
                    SELECT id, created_at, json_extract(metadata_json, '$.feedback_through') AS through
                    FROM fine_tuning_job WHERE json_extract(metadata_json, '$.continual') = ?
                    ORDER BY seq DESC LIMIT 1
                    """, arguments: [name])
            let published = try currentJobID.flatMap { id in
                try String.fetchOne(
                    db,
                    sql: """
                        SELECT json_extract(metadata_json, '$.feedback_through') FROM fine_tuning_job
                        WHERE id = ? AND json_extract(metadata_json, '$.continual') = ?
                        """, arguments: [id, name])
            }
            let active = try Int.fetchOne(
                db,
                sql: """
                    SELECT count(*) FROM fine_tuning_job
                    WHERE status IN ('validating_files', 'queued', 'running', 'paused')
                      AND (suffix = ? OR (suffix IS NULL AND base_adapter = ?))
                    """, arguments: [name, name]) ?? 0
            let through: String? = last?["through"]
            let createdAt: Int? = last?["created_at"]
            return ContinualHistory(
                lastJobID: last?["id"],
                lastJobAt: createdAt.map { Date(timeIntervalSince1970: Double($0)) },
                lastThrough: through.flatMap { Int($0) } ?? 0,
                publishedThrough: published.flatMap { Int($0) } ?? 0,
                jobActive: active > 0)
        }
    }
}
