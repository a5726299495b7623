// TrainingPacer: how a LoRA training step shares the CPU with other work of the process (serving).
//
// A full step of batch 4 × 256 takes seconds; a decode step of the served model takes milliseconds. So the
// trainer offers the CPU back at fine-grained points inside the step — before each layer projection of the forward
// and of the backward, before each layer, between rounds of output-head tiles, between the projections it
// dequantizes into its weight cache — and the pacer decides there whether to let it go on, to sleep a while, or
// to go on with fewer threads. Between two yield points the trainer runs one linear layer's products or one round
// of head tiles: ~5–30 ms on 2 cores for 4 × 256 tokens of Gemma 3 270M.
//
// Pacing never changes the arithmetic: the same tasks run in the same order and each task's result does not
// depend on which thread runs it (ComputePool claims tasks dynamically), so a paced run ends with the same adapter,
// bit for bit, as an unpaced one (Tests/TrainTests/TrainingPacerTests.swift).

/// Decides, at the trainer's yield points, whether training goes on now, sleeps, or uses fewer threads.
///
/// `yieldPoint()` is called on the trainer's calling thread, between pool jobs (never inside one), a few hundred
/// times per step. It may block (sleep) for as long as it likes; it must not call back into the trainer.
/// `nil` as a trainer's pacer means no yield point costs anything beyond an optional check.
public protocol TrainingPacer: AnyObject, Sendable {
    /// Called between units of training work; returns when training may go on.
    func yieldPoint()
    /// Threads of its pool the trainer uses until the next yield point (1…pool threads; nil = all), read right
    /// after each `yieldPoint()`.
    var threadLimit: Int? { get }
}

extension TrainingPacer {
    /// No limit: the trainer uses all of its pool's threads.
    public var threadLimit: Int? { nil }
}
