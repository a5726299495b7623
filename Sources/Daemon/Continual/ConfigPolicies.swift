// ConfigPolicies: the config file's training policies (`adapters.NAME.training`) applied to the store, at start-up
// and on every SIGHUP. The API is the source of truth (LEARNING-DECISIONS #9); the file is applied to it:
//   - a name without a stored policy, or whose config-set policy differs from the file's, gets the file's policy
//     (origin `config`);
//   - a config-set policy identical to the file's is left alone, so one paused by a rollback stays paused across
//     restarts and reloads until its text in the file changes or an admin sets it through the API;
//   - a config-set policy whose name left the file is deleted;
//   - a policy set through the API (origin `api`) is never changed or deleted by the file; a file entry for such a
//     name is skipped with a warning until an admin deletes the API's policy (the next reload then applies the file's).
// The whole comparison and its writes are one store transaction, so an API write never interleaves with it.

import Foundation
import GRDB
import Logging

/// What applying the config file's policies did, each list sorted by adapter name.
public struct ConfigPolicyChanges: Sendable, Equatable {
    /// Set from the file (no policy was stored, or the stored config-set one differed).
    public var applied: [String] = []
    /// Identical to the file's: left as stored (a paused policy stays paused).
    public var unchanged: [String] = []
    /// Set from an earlier config file, no longer in it: deleted.
    public var removed: [String] = []
    /// In the file, but set through the API: kept as the API set it.
    public var heldByAPI: [String] = []

    /// Empty lists.
    public init() {}
}

extension LoradStore {
    /// Applies the config file's training policies (see the file comment for the rules) in one transaction.
    /// - Parameters:
    ///   - policies: `adapters.NAME.training` of the config file, by adapter name (``DaemonConfig/trainingPolicies``).
    ///   - logger: each applied, removed or skipped policy is logged (notice; skipped: warning).
    /// - Returns: what was done, by name.
    /// - Throws: ``StoreError`` (nothing is changed then).
    @discardableResult
    public func applyConfigPolicies(_ policies: [String: TrainingPolicy], logger: Logger? = nil) async throws
        -> ConfigPolicyChanges
    {
        let now = Date().timeIntervalSince1970
        let changes = try await run(write: true) { db -> ConfigPolicyChanges in
            var c = ConfigPolicyChanges()
            var stored: [String: (origin: PolicyOrigin, asSet: TrainingPolicy?)] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT * FROM adapter_training_policy") {
                let origin = PolicyOrigin(rawValue: row["origin"] ?? "") ?? .api
                stored[row["name"]] = (origin, LoradStore.storedPolicy(row)?.asSet)
            }
            for (name, policy) in policies.sorted(by: { $0.key < $1.key }) {
                if let s = stored[name] {
                    if s.origin == .api {
                        c.heldByAPI.append(name)
                        continue
                    }
                    if s.asSet == policy {
                        c.unchanged.append(name)
                        continue
                    }
                }
                try LoradStore.upsertPolicy(db, name: name, policy: policy, uid: nil, origin: .config, at: now)
                c.applied.append(name)
            }
            for (name, s) in stored.sorted(by: { $0.key < $1.key }) where s.origin == .config && policies[name] == nil {
                try db.execute(sql: "DELETE FROM adapter_training_policy WHERE name = ?", arguments: [name])
                c.removed.append(name)
            }
            return c
        }
        for name in changes.applied {
            guard let p = policies[name] else { continue }
            policyCache.set(
                StoredPolicy(
                    name: name, policy: p, setAt: now, disabledReason: nil, origin: .config, enabledAsSet: p.enabled))
            logger?.notice("training policy applied from the config file", metadata: ["adapter": "\(name)"])
        }
        for name in changes.removed {
            policyCache.remove(name)
            logger?.notice("training policy removed: no longer in the config file", metadata: ["adapter": "\(name)"])
        }
        for name in changes.heldByAPI {
            logger?.warning(
                """
                training policy in the config file not applied: the adapter's policy was set through the API \
                (DELETE /v1/adapters/\(name)/training, then reload, to hand it to the file)
                """,
                metadata: ["adapter": "\(name)"])
        }
        return changes
    }
}
