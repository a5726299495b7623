// JobControl: cancel, pause and resume of fine-tuning jobs, shared by the jobs API and by what ends a training
// policy's say over its adapter (a policy deleted or paused, a rollback, the adapter deleted), which cancels the
// continual jobs that policy started and that have not ended.
import Foundation
import GRDB
import Logging

extension FineTuningJobs {
    /// cancel / pause / resume of job `id`. A running job stops at its next step boundary; with `wait` this waits
    /// (bounded, 120 s) for it, else it returns the job as it is once the stop is requested.
    /// - Parameter message: the event that records the change (default: "Job cancelled.", "Job paused.", …).
    /// - Throws: ``APIError`` (404 unknown job, 409 a transition the job's status does not allow, 507 disk full).
    func control(_ id: String, action: String, wait: Bool = true, message custom: String? = nil) async throws
        -> FineTuningJob
    {
        guard let j = try await store.job(id: id) else { throw APIError.jobNotFound(id) }
        let now = Int(Date().timeIntervalSince1970)
        let until: Set<FineTuningJobStatus> =
            action == "cancel" ? [.cancelled, .succeeded, .failed] : [.paused, .cancelled, .succeeded, .failed]
        // A running job is stopped by the runner at its next step boundary; anything else changes here.
        let stoppable: Bool
        switch action {
        case "cancel": stoppable = j.status == .running && requestStop(id, reason: .cancel)
        case "pause": stoppable = j.status == .running && requestStop(id, reason: .pause)
        default: stoppable = false
        }
        if stoppable {
            if let custom { await event(id, custom, level: "warn") }
            return wait ? try await waitForStop(id, until: until) : j
        }
        let target: FineTuningJobStatus
        let from: Set<FineTuningJobStatus>
        let message: String
        switch action {
        case "cancel":
            (target, from, message) = (.cancelled, [.validatingFiles, .queued, .paused, .running], "Job cancelled.")
        case "pause":
            (target, from, message) = (.paused, [.validatingFiles, .queued, .running], "Job paused.")
        default:
            (target, from, message) = (.queued, [.paused], "Job resumed: queued to continue from its last checkpoint.")
        }
        guard from.contains(j.status) else { throw APIError.jobConflict(j, action: action) }
        let updated: FineTuningJob?
        do {
            // In the same transaction order as the runner's claim: a job the runner holds is left to it.
            updated = try await store.updateJob(id: id) { j in
                guard from.contains(j.status), !(j.status == .running && self.runningJobID == id) else { throw JobSkip() }
                j.status = target
                if target == .cancelled {
                    j.finishedAt = now
                    j.estimatedFinish = nil
                }
            }
        } catch let e as StoreError {
            if case .diskFull = e { throw APIError.from(e) }
            // It changed meanwhile: the runner took it (stop it at its step boundary), or it ended.
            let current = try await store.job(id: id) ?? j
            if action != "resume", current.status == .running,
                requestStop(id, reason: action == "cancel" ? .cancel : .pause)
            {
                if let custom { await event(id, custom, level: "warn") }
                return wait ? try await waitForStop(id, until: until) : current
            }
            throw APIError.jobConflict(current, action: action)
        }
        await event(id, custom ?? message, level: custom == nil ? "info" : "warn")
        await refreshCounts()
        if target == .queued { notify() }
        return updated ?? j
    }

    /// Polls the job until its status is one of `until` (at most 120 s), and returns it as it is then.
    private func waitForStop(_ id: String, until: Set<FineTuningJobStatus>) async throws -> FineTuningJob {
        let deadline = Date().addingTimeInterval(120)
        while true {
            guard let j = try await store.job(id: id) else { throw APIError.jobNotFound(id) }
            if until.contains(j.status) || Date() > deadline || runningJobID != id { return j }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    /// Cancels the continual jobs of adapter `name` (`metadata.continual`) that have not ended: queued or paused
    /// ones at once, a running one at its next step boundary (not waited for). Jobs created through the jobs API
    /// are left alone. Each gets an event giving `reason`. Errors are logged, not thrown: the caller's change
    /// (a deleted policy, a rollback) has already happened.
    /// - Returns: the ids of the jobs cancelled or asked to stop.
    @discardableResult
    func cancelContinualJobs(of name: String, reason: String) async -> [String] {
        let ids: [String]
        do { ids = try await store.activeContinualJobIDs(name: name) } catch {
            logger.error("continual jobs not cancelled", metadata: ["adapter": "\(name)", "error": "\(error)"])
            return []
        }
        var done: [String] = []
        for id in ids {
            do {
                _ = try await control(id, action: "cancel", wait: false, message: "Job cancelled: \(reason).")
                done.append(id)
                logger.notice("continual job cancelled", metadata: ["adapter": "\(name)", "job": "\(id)", "reason": "\(reason)"])
            } catch let e as APIError where e.status == 409 {
                continue  // it ended meanwhile
            } catch {
                logger.error("continual job not cancelled", metadata: ["job": "\(id)", "error": "\(error)"])
            }
        }
        return done
    }

    /// After the config file's policies were applied: cancels the continual jobs of the policies it removed and of
    /// those it set with `enabled: false`.
    func cancelContinualJobs(after changes: ConfigPolicyChanges, policies: [String: TrainingPolicy]) async {
        for name in changes.removed {
            await cancelContinualJobs(of: name, reason: "the adapter's training policy left the config file")
        }
        for name in changes.applied where policies[name]?.enabled == false {
            await cancelContinualJobs(of: name, reason: "the config file paused the adapter's training policy (enabled: false)")
        }
    }
}

extension LoradStore {
    /// Ids of adapter `name`'s continual jobs (`metadata.continual`) that have not ended (validating, queued,
    /// running or paused), oldest first.
    /// - Throws: ``StoreError``.
    func activeContinualJobIDs(name: String) async throws -> [String] {
        try await run(write: false) { db in
            try String.fetchAll(
                db,
                sql: """
                    SELECT id FROM fine_tuning_job
                    WHERE json_extract(metadata_json, '$.continual') = ?
                      AND status IN ('validating_files', 'queued', 'running', 'paused')
                    ORDER BY seq
                    """, arguments: [name])
        }
    }
}
