// The sequence lifecycle state machine and the step planner, checked transition by transition.

import Daemon
import Testing

@Suite struct SequenceStateMachineTests {
    @Test func happyPathToLength() {
        var m = SequenceStateMachine(promptLength: 5, maxTokens: 2)
        #expect(m.state == .waiting)
        #expect(m.sampled(.normal) == .invalid)
        #expect(m.admit() == .allocate)
        #expect(m.remainingPrompt == 5)
        #expect(m.prefilled(3) == .continuePrefill)
        #expect(m.state == .prefill(processed: 3))
        #expect(m.prefilled(3) == .invalid)  // more than remains
        #expect(m.prefilled(2) == .sampleFirstToken)
        #expect(m.state == .decode)
        #expect(m.sampled(.normal) == .emit)
        #expect(m.sampled(.normal) == .emitAndFinish(.length))
        #expect(m.state == .finished(.length))
        #expect(m.generated == 2)
        #expect(m.isTerminal)
        #expect(m.cancel() == .none)
    }

    @Test func stops() {
        var a = SequenceStateMachine(promptLength: 1, maxTokens: 9)
        _ = a.admit()
        _ = a.prefilled(1)
        #expect(a.sampled(.stopToken) == .finish(.stop))
        #expect(a.generated == 1)
        var b = SequenceStateMachine(promptLength: 1, maxTokens: 9)
        _ = b.admit()
        _ = b.prefilled(1)
        #expect(b.sampled(.stopString) == .emitAndFinish(.stop))
        #expect(b.state == .finished(.stop))
    }

    @Test func cancellationAndFailure() {
        var w = SequenceStateMachine(promptLength: 4, maxTokens: 4)
        #expect(w.cancel() == .none)
        #expect(w.state == .cancelled)
        #expect(w.admit() == .invalid)
        var p = SequenceStateMachine(promptLength: 4, maxTokens: 4)
        _ = p.admit()
        #expect(p.cancel() == .release)
        var f = SequenceStateMachine(promptLength: 4, maxTokens: 4)
        _ = f.admit()
        #expect(f.fail() == .finish(.error))
        #expect(f.state == .finished(.error))
    }
}

@Suite struct StepPlannerTests {
    @Test func decodeFirstThenPrefillChunksInOrder() {
        let plan = StepPlanner.plan(
            [
                PlannerEntry(id: 1, decoding: false, remainingPrompt: 300),
                PlannerEntry(id: 2, decoding: true, remainingPrompt: 0),
                PlannerEntry(id: 3, decoding: false, remainingPrompt: 50),
                PlannerEntry(id: 4, decoding: true, remainingPrompt: 0),
            ], tokenBudget: 256)
        // 2 decode rows, then 254 rows: 254 to seq 1, nothing left for seq 3.
        #expect(plan == [PlannedRows(id: 2, rows: 1), PlannedRows(id: 4, rows: 1), PlannedRows(id: 1, rows: 254)])
        let small = StepPlanner.plan(
            [PlannerEntry(id: 1, decoding: false, remainingPrompt: 10), PlannerEntry(id: 3, decoding: false, remainingPrompt: 50)],
            tokenBudget: 32)
        #expect(small == [PlannedRows(id: 1, rows: 10), PlannedRows(id: 3, rows: 22)])
    }

    @Test func prefillCapLimitsPrefillRowsOverAllSequences() {
        let entries = [
            PlannerEntry(id: 1, decoding: true, remainingPrompt: 0),
            PlannerEntry(id: 2, decoding: false, remainingPrompt: 30),
            PlannerEntry(id: 3, decoding: false, remainingPrompt: 500),
            PlannerEntry(id: 4, decoding: true, remainingPrompt: 0),
        ]
        // Decode rows are not counted against the prefill cap; prefill rows are, over all prefilling sequences.
        let plan = StepPlanner.plan(entries, tokenBudget: 512, maxPrefillTokens: 64)
        #expect(plan == [
            PlannedRows(id: 1, rows: 1), PlannedRows(id: 4, rows: 1), PlannedRows(id: 2, rows: 30),
            PlannedRows(id: 3, rows: 34),
        ])
        // The cap also bounds the minimum chunk that prefill gets when decode rows fill the budget.
        let decoders = (0..<8).map { PlannerEntry(id: UInt64($0), decoding: true, remainingPrompt: 0) }
        let tight = StepPlanner.plan(
            decoders + [PlannerEntry(id: 99, decoding: false, remainingPrompt: 100)], tokenBudget: 8, maxPrefillTokens: 5)
        #expect(tight.last == PlannedRows(id: 99, rows: 5))
        // A cap below 1 still lets prefill progress.
        let zero = StepPlanner.plan([PlannerEntry(id: 7, decoding: false, remainingPrompt: 9)], tokenBudget: 64, maxPrefillTokens: 0)
        #expect(zero == [PlannedRows(id: 7, rows: 1)])
    }

    @Test func prefillAlwaysProgresses() {
        let decoders = (0..<8).map { PlannerEntry(id: UInt64($0), decoding: true, remainingPrompt: 0) }
        let plan = StepPlanner.plan(decoders + [PlannerEntry(id: 99, decoding: false, remainingPrompt: 100)], tokenBudget: 8)
        #expect(plan.last == PlannedRows(id: 99, rows: StepPlanner.minimumPrefillChunk))
        #expect(plan.count == 9)
    }
}
