// AdapterVersionStore: the adapter registry's index in the daemon's SQLite store (migration "v3_adapters").
//
//   adapter_version   one row per kept version: files' sha256, rank, alpha, targets, sizes, source, time, and the
//                     lineage (parent version, job id, data range JSON, gate JSON, metadata JSON). `version` is
//                     unique over the whole registry and never reused (`adapter_meta.next_version` only grows).
//   adapter_current   the current version of each registered name.
//   adapter_pin       versions a caller (a fine-tuning job's lineage) needs kept, counted per holder.
//   adapter_event     publish and rollback history per name.
//
// The registry calls these synchronously (under its commit lock, off the event loops); each call is one
// transaction with `synchronous = FULL`, so it is on disk when it returns.

import Foundation
import GRDB

/// The registry's persisted state, read once at start-up.
struct AdapterIndexState {
    /// Every kept version, by version number.
    var versions: [AdapterRecord] = []
    /// name -> current version.
    var current: [String: Int] = [:]
    /// version -> pin count over all holders.
    var pins: [Int: Int] = [:]
    /// The next version number to hand out.
    var nextVersion = 1
}

/// One entry of an adapter's history (`adapter_event`).
public struct AdapterHistoryEvent: Sendable, Equatable {
    /// `publish` or `rollback`.
    public var kind: String
    /// The version made current.
    public var version: Int
    /// The version that was current before (nil: the name was new).
    public var fromVersion: Int?
    /// Seconds since 1970.
    public var createdAt: Double
}

extension LoradStore {
    /// Migration "v3_adapters": the adapter registry's tables.
    static func createAdapterTables(_ db: Database) throws {
        try db.execute(
            sql: """
                CREATE TABLE adapter_version (
                    version INTEGER PRIMARY KEY,
                    name TEXT NOT NULL,
                    format TEXT NOT NULL,
                    sha256 TEXT NOT NULL,
                    rank INTEGER NOT NULL,
                    alpha REAL,
                    targets TEXT NOT NULL,
                    resident_bytes INTEGER NOT NULL,
                    file_bytes INTEGER NOT NULL,
                    source TEXT NOT NULL,
                    created_at REAL NOT NULL,
                    parent_version INTEGER,
                    job_id TEXT,
                    data_range_json TEXT,
                    gate_json TEXT,
                    metadata_json TEXT NOT NULL DEFAULT '{}'
                );
                CREATE INDEX adapter_version_name ON adapter_version(name, version);
                CREATE INDEX adapter_version_job ON adapter_version(job_id) WHERE job_id IS NOT NULL;
                CREATE TABLE adapter_current (
                    name TEXT PRIMARY KEY,
                    version INTEGER NOT NULL REFERENCES adapter_version(version),
                    updated_at REAL NOT NULL
                );
                CREATE TABLE adapter_pin (
                    version INTEGER NOT NULL REFERENCES adapter_version(version) ON DELETE CASCADE,
                    holder TEXT NOT NULL,
                    count INTEGER NOT NULL CHECK (count > 0),
                    PRIMARY KEY (version, holder)
                );
                CREATE TABLE adapter_event (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    name TEXT NOT NULL,
                    kind TEXT NOT NULL,
                    version INTEGER NOT NULL,
                    from_version INTEGER,
                    created_at REAL NOT NULL
                );
                CREATE INDEX adapter_event_name ON adapter_event(name, seq);
                CREATE TABLE adapter_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                INSERT INTO adapter_meta (key, value) VALUES ('next_version', 1);
                """)
    }

    private func adapterWrite<T>(_ body: (Database) throws -> T) throws -> T {
        do { return try pool.write(body) } catch { throw Self.map(error) }
    }

    /// Everything the registry keeps in memory.
    /// - Throws: ``StoreError``.
    func adapterIndexState() throws -> AdapterIndexState {
        do {
            return try pool.read { db in
                var s = AdapterIndexState()
                s.versions = try Row.fetchAll(db, sql: "SELECT * FROM adapter_version ORDER BY version").map(Self.adapterRecord)
                for row in try Row.fetchAll(db, sql: "SELECT name, version FROM adapter_current") {
                    s.current[row["name"]] = row["version"]
                }
                for row in try Row.fetchAll(db, sql: "SELECT version, sum(count) AS n FROM adapter_pin GROUP BY version") {
                    s.pins[row["version"]] = row["n"]
                }
                s.nextVersion = try Int.fetchOne(db, sql: "SELECT value FROM adapter_meta WHERE key = 'next_version'") ?? 1
                return s
            }
        } catch {
            throw Self.map(error)
        }
    }

    /// Copies the rows of a legacy JSON index in one transaction. Idempotent: versions already present are left
    /// as they are, and a name that already has a current version keeps it.
    func importAdapterIndex(_ records: [AdapterRecord], nextVersion: Int) throws {
        try adapterWrite { db in
            for r in records {
                try Self.insertVersion(db, r, orIgnore: true)
                try db.execute(
                    sql: "INSERT OR IGNORE INTO adapter_current (name, version, updated_at) VALUES (?, ?, ?)",
                    arguments: [r.name, r.version, r.createdAt])
            }
            let next = max(nextVersion, (records.map(\.version).max() ?? 0) + 1)
            try db.execute(sql: "UPDATE adapter_meta SET value = max(value, ?) WHERE key = 'next_version'", arguments: [next])
        }
    }

    /// The publish transaction: inserts `record`, makes it current, advances `next_version` past it and records
    /// the event.
    func commitAdapterVersion(_ record: AdapterRecord, previous: Int?) throws {
        try adapterWrite { db in
            try Self.insertVersion(db, record, orIgnore: false)
            try db.execute(
                sql: """
                    INSERT INTO adapter_current (name, version, updated_at) VALUES (?, ?, ?)
                    ON CONFLICT(name) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at
                    """, arguments: [record.name, record.version, record.createdAt])
            try db.execute(
                sql: "UPDATE adapter_meta SET value = max(value, ?) WHERE key = 'next_version'",
                arguments: [record.version + 1])
            try db.execute(
                sql: "INSERT INTO adapter_event (name, kind, version, from_version, created_at) VALUES (?, 'publish', ?, ?, ?)",
                arguments: [record.name, record.version, previous, record.createdAt])
        }
    }

    /// The rollback transaction: makes `version` (a kept version of `name`) current and records the event.
    func setCurrentAdapterVersion(name: String, version: Int, from: Int?, kind: String, at time: Double) throws {
        try adapterWrite { db in
            try db.execute(
                sql: """
                    INSERT INTO adapter_current (name, version, updated_at) VALUES (?, ?, ?)
                    ON CONFLICT(name) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at
                    """, arguments: [name, version, time])
            try db.execute(
                sql: "INSERT INTO adapter_event (name, kind, version, from_version, created_at) VALUES (?, ?, ?, ?, ?)",
                arguments: [name, kind, version, from, time])
        }
    }

    /// Deletes version rows (and their pins). A name whose current version is among them moves to its newest
    /// remaining version, or loses its current row when none remains. Returns name -> new current (nil: none).
    @discardableResult
    func deleteAdapterVersions(_ versions: [Int]) throws -> [String: Int?] {
        guard !versions.isEmpty else { return [:] }
        return try adapterWrite { db in
            let list = versions.map(String.init).joined(separator: ",")
            let affected = try String.fetchAll(db, sql: "SELECT name FROM adapter_current WHERE version IN (\(list))")
            try db.execute(sql: "DELETE FROM adapter_current WHERE version IN (\(list))")
            try db.execute(sql: "DELETE FROM adapter_version WHERE version IN (\(list))")
            var moved: [String: Int?] = [:]
            let now = Date().timeIntervalSince1970
            for name in affected {
                let newest = try Int.fetchOne(db, sql: "SELECT max(version) FROM adapter_version WHERE name = ?", arguments: [name])
                if let newest {
                    try db.execute(
                        sql: "INSERT INTO adapter_current (name, version, updated_at) VALUES (?, ?, ?)",
                        arguments: [name, newest, now])
                }
                moved[name] = newest
            }
            return moved
        }
    }

    /// Deletes a name: its current row, every version, their pins and its history.
    func deleteAdapter(name: String) throws {
        try adapterWrite { db in
            try db.execute(sql: "DELETE FROM adapter_current WHERE name = ?", arguments: [name])
            try db.execute(sql: "DELETE FROM adapter_version WHERE name = ?", arguments: [name])
            try db.execute(sql: "DELETE FROM adapter_event WHERE name = ?", arguments: [name])
        }
    }

    /// Adds one pin of `version` for `holder`.
    func pinAdapterVersion(_ version: Int, holder: String) throws {
        try adapterWrite { db in
            try db.execute(
                sql: """
                    INSERT INTO adapter_pin (version, holder, count) VALUES (?, ?, 1)
                    ON CONFLICT(version, holder) DO UPDATE SET count = count + 1
                    """, arguments: [version, holder])
        }
    }

    /// Removes one pin of `version` for `holder`; returns whether there was one.
    func unpinAdapterVersion(_ version: Int, holder: String) throws -> Bool {
        try adapterWrite { db in
            try db.execute(
                sql: "UPDATE adapter_pin SET count = count - 1 WHERE version = ? AND holder = ? AND count > 1",
                arguments: [version, holder])
            if db.changesCount > 0 { return true }
            try db.execute(sql: "DELETE FROM adapter_pin WHERE version = ? AND holder = ?", arguments: [version, holder])
            return db.changesCount > 0
        }
    }

    /// The newest `limit` history events of `name`, newest first.
    func adapterHistory(name: String, limit: Int) throws -> [AdapterHistoryEvent] {
        do {
            return try pool.read { db in
                try Row.fetchAll(
                    db, sql: "SELECT * FROM adapter_event WHERE name = ? ORDER BY seq DESC LIMIT ?", arguments: [name, limit]
                ).map { row in
                    AdapterHistoryEvent(
                        kind: row["kind"], version: row["version"], fromVersion: row["from_version"],
                        createdAt: row["created_at"])
                }
            }
        } catch {
            throw Self.map(error)
        }
    }

    // MARK: - Row mapping

    private static func insertVersion(_ db: Database, _ r: AdapterRecord, orIgnore: Bool) throws {
        let l = r.lineage
        try db.execute(
            sql: """
                INSERT \(orIgnore ? "OR IGNORE " : "")INTO adapter_version (version, name, format, sha256, rank, alpha,
                  targets, resident_bytes, file_bytes, source, created_at, parent_version, job_id, data_range_json,
                  gate_json, metadata_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
                """,
            arguments: [
                r.version, r.name, r.format.rawValue, r.sha256, r.rank, r.alpha.map { Double($0) },
                JSONValue.array(r.targets.map { .string($0) }).serialized, r.residentBytes, r.fileBytes, r.source,
                r.createdAt, l.parentVersion, l.jobID, l.dataRange?.serialized, l.gate?.serialized,
                metadataJSON(l.metadata),
            ])
    }

    static func adapterRecord(_ row: Row) -> AdapterRecord {
        let alpha: Double? = row["alpha"]
        let targets = (try? JSONDecoder().decode([String].self, from: Data((row["targets"] as String).utf8))) ?? []
        let dataRange: String? = row["data_range_json"]
        let gate: String? = row["gate_json"]
        return AdapterRecord(
            name: row["name"], version: row["version"], format: AdapterFormat(rawValue: row["format"]) ?? .gguf,
            sha256: row["sha256"], rank: row["rank"], alpha: alpha.map { Float($0) }, targets: targets,
            residentBytes: row["resident_bytes"], fileBytes: row["file_bytes"], source: row["source"],
            createdAt: row["created_at"],
            lineage: AdapterLineage(
                parentVersion: row["parent_version"], jobID: row["job_id"], dataRange: dataRange.map(JSONValue.parse),
                gate: gate.map(JSONValue.parse), metadata: metadata(row["metadata_json"])))
    }
}
