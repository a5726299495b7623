// StepPlan: which rows of which sequences go into the next forward pass. Decoding sequences each contribute
// their one next token (they are latency-bound, so they always go first); prefilling sequences then share the
// rest of the step's token budget in admission order, so a long prompt is split into chunks across steps
// instead of stalling every stream behind it. A separate cap on the prefill rows of one step keeps every step
// short (the engine derives it from a time target, so the watchdog is fed between chunks of a long prompt).

/// A sequence as the planner sees it.
public struct PlannerEntry: Sendable, Equatable {
    public var id: UInt64
    /// `true` while decoding (1 row per step), `false` while prefilling.
    public var decoding: Bool
    /// Prompt tokens not yet in the cache (ignored while decoding).
    public var remainingPrompt: Int

    public init(id: UInt64, decoding: Bool, remainingPrompt: Int) {
        self.id = id
        self.decoding = decoding
        self.remainingPrompt = remainingPrompt
    }
}

/// Rows assigned to one sequence in a step.
public struct PlannedRows: Sendable, Equatable {
    public var id: UInt64
    public var rows: Int
    public init(id: UInt64, rows: Int) {
        self.id = id
        self.rows = rows
    }
}

/// Plans one step of continuous batching.
public enum StepPlanner {
    /// Smallest prefill chunk granted even when decoding rows use up the budget, so prefill always progresses.
    public static let minimumPrefillChunk = 16

    /// - Parameters:
    ///   - entries: active sequences in admission order.
    ///   - tokenBudget: target rows per step (prefill chunks are cut to fit).
    ///   - maxPrefillTokens: prompt rows this step may prefill over all sequences (values below 1 count as 1);
    ///     it also bounds the ``minimumPrefillChunk`` guarantee. The default leaves `tokenBudget` alone in charge.
    /// - Returns: rows per sequence (sequences with 0 rows are omitted), decoding sequences first, then prefill
    ///   in admission order.
    public static func plan(_ entries: [PlannerEntry], tokenBudget: Int, maxPrefillTokens: Int = .max) -> [PlannedRows] {
        var out: [PlannedRows] = []
        var used = 0
        for e in entries where e.decoding {
            out.append(PlannedRows(id: e.id, rows: 1))
            used += 1
        }
        var left = max(tokenBudget - used, 0)
        var prefillLeft = max(maxPrefillTokens, 1)
        var grantedAny = false
        for e in entries where !e.decoding && e.remainingPrompt > 0 {
            var grant = min(e.remainingPrompt, left, prefillLeft)
            if grant == 0 && !grantedAny {
                grant = min(e.remainingPrompt, minimumPrefillChunk, prefillLeft)
            }
            guard grant > 0 else { break }
            out.append(PlannedRows(id: e.id, rows: grant))
            grantedAny = true
            left = max(left - grant, 0)
            prefillLeft -= grant
        }
        return out
    }
}
