// PolicyStore: adapters' training policies in the daemon's store (migration `v5_policies`), as the API sets them
// (`PUT /v1/adapters/{name}/training`) or as the config file applies them (`adapters.NAME.training`,
// ConfigPolicies.swift). A policy is kept as its JSON text, parsed by `TrainingPolicy`; `set_at` is when it was last
// set (triggers count from there), `enabled` is false after a rollback until it is set again, `origin` (migration
// `v6_policy_origin`) says who set it last.

import Foundation
import GRDB

/// Who set a stored policy last: an admin through the API, or the config file.
public enum PolicyOrigin: String, Sendable, Equatable {
    case api
    case config
}

/// A stored training policy.
public struct StoredPolicy: Sendable, Equatable {
    /// The adapter name.
    public var name: String
    /// The policy (its `enabled` reflects the stored flag).
    public var policy: TrainingPolicy
    /// When it was last set, Unix seconds.
    public var setAt: Double
    /// Why it is disabled (e.g. "rolled back to version 3"), nil while enabled or when disabled by its own body.
    public var disabledReason: String?
    /// Who set it last.
    public var origin: PolicyOrigin = .api
    /// The policy's own `enabled` as it was set (``policy``'s is also false while a rollback pauses it).
    public var enabledAsSet = true

    /// The policy exactly as it was set, before any pause.
    public var asSet: TrainingPolicy {
        var p = policy
        p.enabled = enabledAsSet
        return p
    }
}

extension LoradStore {
    static func migrateV5Policies(_ db: Database) throws {
        try db.execute(
            sql: """
                CREATE TABLE adapter_training_policy (
                    name TEXT PRIMARY KEY,
                    policy_json TEXT NOT NULL,
                    enabled INTEGER NOT NULL,
                    disabled_reason TEXT,
                    set_at REAL NOT NULL,
                    uid INTEGER
                );
                """)
    }

    static func migrateV6PolicyOrigin(_ db: Database) throws {
        try db.execute(sql: "ALTER TABLE adapter_training_policy ADD COLUMN origin TEXT NOT NULL DEFAULT 'api'")
    }

    /// Sets (creates or replaces) the policy of `name`; durable before it returns.
    /// - Parameter origin: who sets it; the config file's policies are applied by
    ///   ``applyConfigPolicies(_:logger:)``, which passes `.config`.
    /// - Throws: ``StoreError/diskFull(_:)``, ``StoreError/database(_:)``.
    public func setPolicy(
        name: String, policy: TrainingPolicy, uid: UInt32?, origin: PolicyOrigin = .api
    ) async throws -> StoredPolicy {
        let now = Date().timeIntervalSince1970
        try await run(write: true) { db in
            try Self.upsertPolicy(db, name: name, policy: policy, uid: uid, origin: origin, at: now)
        }
        let stored = StoredPolicy(
            name: name, policy: policy, setAt: now, disabledReason: nil, origin: origin, enabledAsSet: policy.enabled)
        policyCache.set(stored)
        return stored
    }

    static func upsertPolicy(
        _ db: Database, name: String, policy: TrainingPolicy, uid: UInt32?, origin: PolicyOrigin, at now: Double
    ) throws {
        try db.execute(
            sql: """
                INSERT INTO adapter_training_policy (name, policy_json, enabled, disabled_reason, set_at, uid, origin)
                VALUES (?, ?, ?, NULL, ?, ?, ?)
                ON CONFLICT(name) DO UPDATE SET policy_json = excluded.policy_json, enabled = excluded.enabled,
                    disabled_reason = NULL, set_at = excluded.set_at, uid = excluded.uid, origin = excluded.origin
                """,
            arguments: [name, policy.json.serialized, policy.enabled, now, uid.map { Int64($0) }, origin.rawValue])
    }

    /// The stored policy of `name` from memory (no disk read; kept current by this store's writes), or nil.
    public func cachedPolicy(name: String) -> StoredPolicy? { policyCache.get(name) }

    /// The policy of `name`, or nil.
    /// - Throws: ``StoreError``.
    public func policy(name: String) async throws -> StoredPolicy? {
        try await run(write: false) { db in
            try Row.fetchOne(db, sql: "SELECT * FROM adapter_training_policy WHERE name = ?", arguments: [name])
                .flatMap(LoradStore.storedPolicy)
        }
    }

    /// Every stored policy, by name.
    /// - Throws: ``StoreError``.
    public func policies() async throws -> [StoredPolicy] {
        try await run(write: false) { db in
            try Row.fetchAll(db, sql: "SELECT * FROM adapter_training_policy ORDER BY name").compactMap(LoradStore.storedPolicy)
        }
    }

    /// Deletes the policy of `name`; false when there was none.
    /// - Throws: ``StoreError``.
    public func deletePolicy(name: String) async throws -> Bool {
        let deleted = try await run(write: true) { db in
            try db.execute(sql: "DELETE FROM adapter_training_policy WHERE name = ?", arguments: [name])
            return db.changesCount > 0
        }
        policyCache.remove(name)
        return deleted
    }

    /// Pauses the policy of `name` (no-op without one) until it is set again, recording why.
    /// - Throws: ``StoreError``.
    public func disablePolicy(name: String, reason: String) async throws {
        try await run(write: true) { db in
            try db.execute(
                sql: "UPDATE adapter_training_policy SET enabled = 0, disabled_reason = ? WHERE name = ?",
                arguments: [reason, name])
        }
        if let p = try await policy(name: name) { policyCache.set(p) }
    }

    static func storedPolicy(_ row: Row) -> StoredPolicy? {
        guard var p = try? TrainingPolicy(jsonText: row["policy_json"]) else { return nil }
        let enabled: Bool = row["enabled"]
        let enabledAsSet = p.enabled
        p.enabled = p.enabled && enabled
        return StoredPolicy(
            name: row["name"], policy: p, setAt: row["set_at"], disabledReason: row["disabled_reason"],
            origin: PolicyOrigin(rawValue: row["origin"] ?? "") ?? .api, enabledAsSet: enabledAsSet)
    }
}

/// The stored policies in memory, by name (thread-safe); ``LoradStore`` updates it with every policy write.
final class PolicyCache: @unchecked Sendable {
    private let lock = NSLock()
    private var byName: [String: StoredPolicy] = [:]

    func get(_ name: String) -> StoredPolicy? { lock.withLock { byName[name] } }
    func set(_ p: StoredPolicy) { lock.withLock { byName[p.name] = p } }
    func remove(_ name: String) { lock.withLock { _ = byName.removeValue(forKey: name) } }
    func replaceAll(_ ps: [StoredPolicy]) { lock.withLock { byName = Dictionary(ps.map { ($0.name, $0) }, uniquingKeysWith: { _, b in b }) } }
    var all: [StoredPolicy] { lock.withLock { byName.values.sorted { $0.name < $1.name } } }
}
