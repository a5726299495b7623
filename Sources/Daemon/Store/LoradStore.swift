// LoradStore: the daemon's one durable database, `<state_dir>/lorad.sqlite` (SQLite through GRDB).
//
// - WAL journal (DatabasePool), `synchronous = FULL` on every connection: a transaction that returned has been
//   fsynced, so nothing is acknowledged to a client before it is on disk (SQLite docs, "PRAGMA synchronous").
// - Schema by `DatabaseMigrator`; `v1` creates `stored_completion` and `feedback`, `v2_files` the `file` table
//   (FileStore.swift), `v3_adapters` the adapter registry (AdapterVersionStore.swift). Later migrations add tables
//   (fine-tuning jobs) without touching these.
// - A full disk (SQLITE_FULL, which SQLite's unix VFS also reports for ENOSPC) is ``StoreError/diskFull``; the
//   failed transaction is rolled back and earlier rows stay as they were.
// - All database work runs on GRDB's own dispatch queues through its async APIs, never on a NIO event loop.

import Foundation
import GRDB

/// A store failure.
public enum StoreError: Error, CustomStringConvertible, Equatable {
    /// SQLITE_FULL / ENOSPC: nothing of the failed write was kept.
    case diskFull(String)
    /// The referenced completion does not exist.
    case completionNotFound(String)
    /// Any other SQLite failure.
    case database(String)

    public var description: String {
        switch self {
        case .diskFull(let m): return "disk full: \(m)"
        case .completionNotFound(let id): return "no stored completion '\(id)'"
        case .database(let m): return m
        }
    }
}

/// One stored completion (`store: true`), as recorded when its response was complete.
public struct StoredCompletion: Sendable, Equatable {
    /// The response `id` (`chatcmpl-…` or `cmpl-…`).
    public var id: String
    /// `chat.completion` or `text_completion`.
    public var object: String
    /// The served model name (base model id or adapter name).
    public var model: String
    /// Unix seconds.
    public var createdAt: Int
    /// SO_PEERCRED uid of the client that made the request (nil when unknown).
    public var uid: UInt32?
    /// Chat: the rendered messages `[{"role","content"}]`; completions: `{"prompt": …}` as sent.
    public var input: JSONValue
    /// Prompt token ids as served, one array per choice (decision #4).
    public var promptTokenIDs: [[Int32]]
    /// Generated token ids, one array per choice.
    public var outputTokenIDs: [[Int32]]
    /// The full response object as sent (choices, usage).
    public var response: JSONValue
    /// `name@version*scale` per adapter of the mix (empty: the base model).
    public var adapters: [String]
    /// The sampling fields of the request (temperature, top_p, seed, max_tokens, …) as sent.
    public var sampling: JSONValue
    public var promptTokens: Int
    public var completionTokens: Int
    /// OpenAI `metadata`: ≤ 16 keys of ≤ 64 chars, values ≤ 512 chars.
    public var metadata: [String: String]

    public init(
        id: String, object: String, model: String, createdAt: Int, uid: UInt32?, input: JSONValue,
        promptTokenIDs: [[Int32]], outputTokenIDs: [[Int32]], response: JSONValue, adapters: [String],
        sampling: JSONValue, promptTokens: Int, completionTokens: Int, metadata: [String: String]
    ) {
        self.id = id
        self.object = object
        self.model = model
        self.createdAt = createdAt
        self.uid = uid
        self.input = input
        self.promptTokenIDs = promptTokenIDs
        self.outputTokenIDs = outputTokenIDs
        self.response = response
        self.adapters = adapters
        self.sampling = sampling
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.metadata = metadata
    }
}

/// One feedback item on a stored completion.
public struct FeedbackRecord: Sendable, Equatable {
    /// `fb-…`.
    public var id: String
    public var completionID: String
    /// The completion's served model.
    public var model: String
    /// Unix seconds.
    public var createdAt: Int
    public var uid: UInt32?
    /// 1 (thumbs up), -1 (thumbs down) or nil.
    public var rating: Int?
    /// A better answer: a string or a list of messages, as sent.
    public var correction: JSONValue?
    public var comment: String?
    public var metadata: [String: String]

    public init(
        id: String, completionID: String, model: String, createdAt: Int, uid: UInt32?, rating: Int?,
        correction: JSONValue?, comment: String?, metadata: [String: String]
    ) {
        self.id = id
        self.completionID = completionID
        self.model = model
        self.createdAt = createdAt
        self.uid = uid
        self.rating = rating
        self.correction = correction
        self.comment = comment
        self.metadata = metadata
    }
}

/// A page of a list.
public struct StorePage<T: Sendable>: Sendable {
    public var items: [T]
    public var hasMore: Bool
}

/// Row counts, for `/metrics` and `/v1/status`.
public struct StoreStats: Sendable, Equatable {
    public var storedCompletions = 0
    public var feedback = 0
    public var pruned = 0
    public var diskFullErrors = 0
}

/// The durable store. Thread-safe; every method runs its SQL on GRDB's queues.
public final class LoradStore: @unchecked Sendable {
    public let path: String
    /// `<state_dir>/files/`: the content of stored files (see FileStore.swift).
    public let filesDir: String
    let pool: DatabasePool
    /// Size budget for stored completions (bytes of their JSON columns); nil = unbounded.
    public let maxBytes: Int?
    private let lock = NSLock()
    private var statsValue = StoreStats()
    /// The training policies as stored, kept current by the store's own policy writes (read on every request).
    let policyCache = PolicyCache()

    /// Opens (creating and migrating) `<stateDir>/lorad.sqlite`.
    /// - Parameters:
    ///   - stateDir: the daemon's state directory (created if missing).
    ///   - maxBytes: budget for stored completions; the oldest rows no feedback refers to are pruned past it.
    /// - Throws: ``StoreError`` when the file cannot be opened or migrated.
    public init(stateDir: String, maxBytes: Int? = nil) throws {
        try? FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true)
        path = stateDir + "/lorad.sqlite"
        filesDir = stateDir + "/files"
        self.maxBytes = maxBytes
        var config = Configuration()
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
        }
        config.busyMode = .timeout(10)
        do {
            pool = try DatabasePool(path: path, configuration: config)
            try Self.migrator.migrate(pool)
            if mkdir(filesDir, 0o750) != 0 && errno != EEXIST { throw Self.ioError(errno, "mkdir \(filesDir)") }
            try Self.removeOrphanFiles(pool: pool, dir: filesDir)
            let counts = try pool.read { db in
                (
                    try Int.fetchOne(db, sql: "SELECT count(*) FROM stored_completion") ?? 0,
                    try Int.fetchOne(db, sql: "SELECT count(*) FROM feedback") ?? 0
                )
            }
            statsValue.storedCompletions = counts.0
            statsValue.feedback = counts.1
            let policies = try pool.read { db in
                try Row.fetchAll(db, sql: "SELECT * FROM adapter_training_policy").compactMap(LoradStore.storedPolicy)
            }
            policyCache.replaceAll(policies)
        } catch {
            throw Self.map(error)
        }
    }

    /// The schema history. Never edit a registered migration; add a new one.
    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE stored_completion (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT,
                        id TEXT NOT NULL UNIQUE,
                        object TEXT NOT NULL,
                        model TEXT NOT NULL,
                        created_at INTEGER NOT NULL,
                        uid INTEGER,
                        input_json TEXT NOT NULL,
                        prompt_token_ids TEXT NOT NULL,
                        output_token_ids TEXT NOT NULL,
                        response_json TEXT NOT NULL,
                        adapters TEXT NOT NULL,
                        sampling_json TEXT NOT NULL,
                        prompt_tokens INTEGER NOT NULL,
                        completion_tokens INTEGER NOT NULL,
                        metadata_json TEXT NOT NULL,
                        bytes INTEGER NOT NULL
                    );
                    CREATE INDEX stored_completion_model ON stored_completion(model, seq);
                    CREATE TABLE feedback (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT,
                        id TEXT NOT NULL UNIQUE,
                        completion_id TEXT NOT NULL REFERENCES stored_completion(id) ON DELETE CASCADE,
                        model TEXT NOT NULL,
                        created_at INTEGER NOT NULL,
                        uid INTEGER,
                        rating INTEGER CHECK (rating IN (1, -1)),
                        correction_json TEXT,
                        comment TEXT,
                        metadata_json TEXT NOT NULL
                    );
                    CREATE INDEX feedback_completion ON feedback(completion_id);
                    CREATE INDEX feedback_model ON feedback(model, seq);
                    """)
        }
        registerFilesMigration(&m)
        m.registerMigration("v3_adapters") { db in try createAdapterTables(db) }
        m.registerMigration("v4_jobs") { db in try migrateV4Jobs(db) }
        m.registerMigration("v5_policies") { db in try migrateV5Policies(db) }
        m.registerMigration("v6_policy_origin") { db in try migrateV6PolicyOrigin(db) }
        return m
    }

    /// Current counts.
    public var stats: StoreStats { lock.withLock { statsValue } }

    static func map(_ error: Error) -> StoreError {
        if let e = error as? StoreError { return e }
        if let e = error as? DatabaseError {
            if e.resultCode == .SQLITE_FULL { return .diskFull(e.message ?? "SQLITE_FULL") }
            return .database("\(e)")
        }
        return .database("\(error)")
    }

    func run<T: Sendable>(write: Bool, _ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do {
            return write ? try await pool.write(body) : try await pool.read(body)
        } catch {
            let e = Self.map(error)
            if case .diskFull = e { lock.withLock { statsValue.diskFullErrors += 1 } }
            throw e
        }
    }

    // MARK: - Stored completions

    /// Records a completion (durable when this returns), then prunes past the size budget.
    /// - Throws: ``StoreError/diskFull(_:)`` on SQLITE_FULL.
    public func insert(_ c: StoredCompletion) async throws {
        let cols: [String] = [
            c.input.serialized, Self.idsJSON(c.promptTokenIDs), Self.idsJSON(c.outputTokenIDs), c.response.serialized,
            JSONValue.array(c.adapters.map { .string($0) }).serialized, c.sampling.serialized,
            Self.metadataJSON(c.metadata),
        ]
        let bytes = cols.reduce(0) { $0 + $1.utf8.count }
        let budget = maxBytes
        let pruned = try await run(write: true) { db -> Int in
            try db.execute(
                sql: """
                    INSERT INTO stored_completion (id, object, model, created_at, uid, input_json, prompt_token_ids,
                      output_token_ids, response_json, adapters, sampling_json, prompt_tokens, completion_tokens,
                      metadata_json, bytes) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
                    """,
                arguments: [
                    c.id, c.object, c.model, c.createdAt, c.uid.map { Int64($0) }, cols[0], cols[1], cols[2], cols[3],
                    cols[4], cols[5], c.promptTokens, c.completionTokens, cols[6], bytes,
                ])
            guard let budget else { return 0 }
            var total = try Int.fetchOne(db, sql: "SELECT coalesce(sum(bytes), 0) FROM stored_completion") ?? 0
            var removed = 0
            while total > budget {
                // The oldest row that no feedback refers to (never the one just stored).
                guard
                    let row = try Row.fetchOne(
                        db,
                        sql: """
                            SELECT seq, bytes FROM stored_completion s WHERE s.id != ?
                              AND NOT EXISTS (SELECT 1 FROM feedback f WHERE f.completion_id = s.id)
                            ORDER BY seq LIMIT 1
                            """, arguments: [c.id])
                else { break }
                let seq: Int64 = row["seq"]
                let b: Int = row["bytes"]
                try db.execute(sql: "DELETE FROM stored_completion WHERE seq = ?", arguments: [seq])
                total -= b
                removed += 1
            }
            return removed
        }
        lock.withLock {
            statsValue.storedCompletions += 1 - pruned
            statsValue.pruned += pruned
        }
    }

    /// One stored completion, or nil.
    public func completion(id: String) async throws -> StoredCompletion? {
        try await run(write: false) { db in
            try Row.fetchOne(db, sql: "SELECT * FROM stored_completion WHERE id = ?", arguments: [id]).map(Self.completion)
        }
    }

    /// A page of stored completions.
    /// - Parameters:
    ///   - model: only this served model.
    ///   - metadata: only rows whose metadata has all these pairs.
    ///   - uid: only rows created by this uid (non-admin callers).
    ///   - after: an id; the page starts after it in `order`.
    ///   - limit: 1…100.
    ///   - ascending: `order=asc`.
    public func listCompletions(
        model: String?, metadata: [String: String], uid: UInt32?, after: String?, limit: Int, ascending: Bool
    ) async throws -> StorePage<StoredCompletion> {
        try await run(write: false) { db in
            var conds: [String] = []
            var args: [(any DatabaseValueConvertible)?] = []
            if let model {
                conds.append("model = ?")
                args.append(model)
            }
            if let uid {
                conds.append("uid = ?")
                args.append(Int64(uid))
            }
            for (k, v) in metadata.sorted(by: { $0.key < $1.key }) {
                conds.append("json_extract(metadata_json, ?) = ?")
                args.append("$.\"\(k.replacingOccurrences(of: "\"", with: ""))\"")
                args.append(v)
            }
            if let after {
                conds.append("seq \(ascending ? ">" : "<") coalesce((SELECT seq FROM stored_completion WHERE id = ?), \(ascending ? "-1" : "9223372036854775807"))")
                args.append(after)
            }
            let whereSQL = conds.isEmpty ? "" : "WHERE " + conds.joined(separator: " AND ")
            args.append(limit + 1)
            let rows = try Row.fetchAll(
                db, sql: "SELECT * FROM stored_completion \(whereSQL) ORDER BY seq \(ascending ? "ASC" : "DESC") LIMIT ?",
                arguments: StatementArguments(args))
            let items = rows.prefix(limit).map(Self.completion)
            return StorePage(items: Array(items), hasMore: rows.count > limit)
        }
    }

    /// Replaces a stored completion's metadata; returns the updated row or nil when unknown.
    public func updateMetadata(id: String, _ metadata: [String: String]) async throws -> StoredCompletion? {
        let json = Self.metadataJSON(metadata)
        return try await run(write: true) { db in
            try db.execute(sql: "UPDATE stored_completion SET metadata_json = ? WHERE id = ?", arguments: [json, id])
            return try Row.fetchOne(db, sql: "SELECT * FROM stored_completion WHERE id = ?", arguments: [id])
                .map(Self.completion)
        }
    }

    /// Deletes a stored completion and the feedback on it; false when unknown.
    public func deleteCompletion(id: String) async throws -> Bool {
        let (deleted, fb) = try await run(write: true) { db -> (Bool, Int) in
            let fb = try Int.fetchOne(db, sql: "SELECT count(*) FROM feedback WHERE completion_id = ?", arguments: [id]) ?? 0
            try db.execute(sql: "DELETE FROM feedback WHERE completion_id = ?", arguments: [id])
            try db.execute(sql: "DELETE FROM stored_completion WHERE id = ?", arguments: [id])
            return (db.changesCount > 0, fb)
        }
        if deleted {
            lock.withLock {
                statsValue.storedCompletions -= 1
                statsValue.feedback -= fb
            }
        }
        return deleted
    }

    // MARK: - Feedback

    /// Records feedback (durable when this returns). The completion must exist.
    /// - Throws: ``StoreError/completionNotFound(_:)``, ``StoreError/diskFull(_:)``.
    public func insert(_ f: FeedbackRecord) async throws {
        let correction = f.correction?.serialized
        let meta = Self.metadataJSON(f.metadata)
        try await run(write: true) { db in
            guard try Int.fetchOne(db, sql: "SELECT 1 FROM stored_completion WHERE id = ?", arguments: [f.completionID]) != nil
            else { throw StoreError.completionNotFound(f.completionID) }
            try db.execute(
                sql: """
                    INSERT INTO feedback (id, completion_id, model, created_at, uid, rating, correction_json, comment,
                      metadata_json) VALUES (?,?,?,?,?,?,?,?,?)
                    """,
                arguments: [
                    f.id, f.completionID, f.model, f.createdAt, f.uid.map { Int64($0) }, f.rating, correction, f.comment,
                    meta,
                ])
        }
        lock.withLock { statsValue.feedback += 1 }
    }

    /// One feedback item, or nil.
    public func feedback(id: String) async throws -> FeedbackRecord? {
        try await run(write: false) { db in
            try Row.fetchOne(db, sql: "SELECT * FROM feedback WHERE id = ?", arguments: [id]).map(Self.feedback)
        }
    }

    /// A page of feedback, oldest first (`after` an id), or everything when `limit` is nil.
    public func listFeedback(
        model: String?, completionID: String?, uid: UInt32?, after: String?, limit: Int?
    ) async throws -> StorePage<FeedbackRecord> {
        try await run(write: false) { db in
            var conds: [String] = []
            var args: [(any DatabaseValueConvertible)?] = []
            if let model {
                conds.append("model = ?")
                args.append(model)
            }
            if let completionID {
                conds.append("completion_id = ?")
                args.append(completionID)
            }
            if let uid {
                conds.append("uid = ?")
                args.append(Int64(uid))
            }
            if let after {
                conds.append("seq > coalesce((SELECT seq FROM feedback WHERE id = ?), -1)")
                args.append(after)
            }
            let whereSQL = conds.isEmpty ? "" : "WHERE " + conds.joined(separator: " AND ")
            var sql = "SELECT * FROM feedback \(whereSQL) ORDER BY seq"
            if let limit {
                sql += " LIMIT ?"
                args.append(limit + 1)
            }
            let rows = try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args))
            let n = limit ?? rows.count
            return StorePage(items: rows.prefix(n).map(Self.feedback), hasMore: rows.count > n)
        }
    }

    // MARK: - Row mapping

    static func idsJSON(_ ids: [[Int32]]) -> String {
        JSONValue.array(ids.map { .array($0.map { .int(Int($0)) }) }).serialized
    }

    static func metadataJSON(_ m: [String: String]) -> String {
        JSONValue.object(m.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) }).serialized
    }

    static func completion(_ row: Row) -> StoredCompletion {
        let uid: Int64? = row["uid"]
        return StoredCompletion(
            id: row["id"], object: row["object"], model: row["model"], createdAt: row["created_at"],
            uid: uid.map { UInt32(truncatingIfNeeded: $0) }, input: JSONValue.parse(row["input_json"]),
            promptTokenIDs: ids(row["prompt_token_ids"]), outputTokenIDs: ids(row["output_token_ids"]),
            response: JSONValue.parse(row["response_json"]),
            adapters: (try? JSONDecoder().decode([String].self, from: Data((row["adapters"] as String).utf8))) ?? [],
            sampling: JSONValue.parse(row["sampling_json"]), promptTokens: row["prompt_tokens"],
            completionTokens: row["completion_tokens"], metadata: metadata(row["metadata_json"]))
    }

    static func feedback(_ row: Row) -> FeedbackRecord {
        let uid: Int64? = row["uid"]
        let correction: String? = row["correction_json"]
        return FeedbackRecord(
            id: row["id"], completionID: row["completion_id"], model: row["model"], createdAt: row["created_at"],
            uid: uid.map { UInt32(truncatingIfNeeded: $0) }, rating: row["rating"],
            correction: correction.map(JSONValue.parse), comment: row["comment"], metadata: metadata(row["metadata_json"]))
    }

    static func ids(_ text: String) -> [[Int32]] {
        (try? JSONDecoder().decode([[Int32]].self, from: Data(text.utf8))) ?? []
    }

    static func metadata(_ text: String) -> [String: String] {
        (try? JSONDecoder().decode([String: String].self, from: Data(text.utf8))) ?? [:]
    }
}

extension JSONValue {
    /// Parses JSON text (object keys sorted, since a decoded dictionary does not keep their order); invalid text
    /// is `null`.
    static func parse(_ text: String) -> JSONValue {
        (try? JSONDecoder().decode(JSONBox.self, from: Data(text.utf8)).value) ?? .null
    }
}

/// Decodes any JSON into a ``JSONValue``.
struct JSONBox: Decodable {
    var value: JSONValue

    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            value = .null
        } else if let b = try? c.decode(Bool.self) {
            value = .bool(b)
        } else if let i = try? c.decode(Int.self) {
            value = .int(i)
        } else if let d = try? c.decode(Double.self) {
            value = .double(d)
        } else if let s = try? c.decode(String.self) {
            value = .string(s)
        } else if let a = try? c.decode([JSONBox].self) {
            value = .array(a.map(\.value))
        } else {
            let d = try c.decode([String: JSONBox].self)
            value = .object(d.keys.sorted().map { ($0, d[$0]!.value) })
        }
    }
}
