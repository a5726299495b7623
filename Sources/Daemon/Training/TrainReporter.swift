// TrainReporter: how `lorad train` shows progress. On a terminal (isatty(stderr)) a one-line bar redrawn in
// place; with --json one JSON object per line on stdout; otherwise (a pipe, a log) one plain line per step on
// stderr. Stop handling (SIGINT/SIGTERM → finish the step, checkpoint, exit 0) lives here too.
import Dispatch
import Foundation
import Train

#if canImport(Glibc)
import Glibc
#endif

/// Where and how training progress is printed.
final class TrainReporter {
    enum Mode { case bar, json, plain }
    let mode: Mode
    private var barVisible = false

    /// - Parameters:
    ///   - json: one JSON line per event on stdout.
    ///   - isTerminal: stderr is a terminal (a redrawn bar instead of plain lines).
    init(json: Bool, isTerminal: Bool = isatty(STDERR_FILENO) == 1) {
        mode = json ? .json : (isTerminal ? .bar : .plain)
    }

    /// Prints one loop event.
    func report(_ event: TrainingEvent) {
        switch (mode, event) {
        case (.json, .step(let r)):
            emitJSON([
                "event": "step", "step": r.step, "total_steps": r.totalSteps, "epoch": r.epoch, "loss": r.loss,
                "grad_norm": r.gradNorm, "lr": Double(r.lr), "tokens": r.tokens, "tok_s": rounded(r.tokS, 1),
                "token_accuracy": r.tokenAccuracy.map { $0 as Any } ?? NSNull(),
            ])
        case (.json, .eval(let step, let loss, let accuracy)):
            emitJSON([
                "event": "eval", "step": step, "eval_loss": loss,
                "eval_token_accuracy": accuracy.map { $0 as Any } ?? NSNull(),
            ])
        case (.json, .checkpoint(let step)):
            emitJSON(["event": "checkpoint", "step": step])
        case (.json, .resumed(let step)):
            emitJSON(["event": "resumed", "step": step])
        case (.bar, .step(let r)):
            let width = 24
            let filled = r.totalSteps > 0 ? min(width, width * r.step / r.totalSteps) : 0
            let bar = String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
            let line = String(format: "step %d/%d %@ loss %.4f  %.0f tok/s  ETA %@", r.step, r.totalSteps, bar,
                              r.loss, r.tokS, Self.duration(r.eta))
            writeErr("\r\u{1B}[2K" + line)
            barVisible = true
        case (.plain, .step(let r)):
            let accuracy = r.tokenAccuracy.map { String(format: "  token_acc %.3f", $0) } ?? ""
            writeErr(String(format: "step %d/%d  loss %.4f%@  grad_norm %.4f  lr %.3g  tokens %d  %.1f tok/s  ETA %@\n",
                            r.step, r.totalSteps, r.loss, accuracy, r.gradNorm, Double(r.lr), r.tokens, r.tokS,
                            Self.duration(r.eta)))
        case (_, .eval(let step, let loss, let accuracy)):
            let acc = accuracy.map { String(format: ", token accuracy %.3f", $0) } ?? ""
            line(String(format: "eval after step %d: loss %.4f%@", step, loss, acc))
        case (_, .checkpoint(let step)):
            if mode == .plain { line("checkpoint written after step \(step)") }
        case (_, .resumed(let step)):
            line("resuming from the checkpoint after step \(step)")
        }
    }

    /// A message on stderr that does not garble the bar (the bar is redrawn by the next step).
    func line(_ text: String) {
        if mode == .json { return writeErr(text + "\n") }
        if barVisible {
            writeErr("\r\u{1B}[2K")
            barVisible = false
        }
        writeErr(text + "\n")
    }

    /// Ends the bar's line.
    func finish() {
        if barVisible { writeErr("\n") }
        barVisible = false
    }

    /// One JSON object (sorted keys) on its own line on stdout, flushed.
    func emitJSON(_ object: [String: Any]) {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
        FileHandle.standardOutput.write(data + Data("\n".utf8))
    }

    private func writeErr(_ s: String) { FileHandle.standardError.write(Data(s.utf8)) }

    private func rounded(_ x: Double, _ digits: Int) -> Double {
        let p = pow(10.0, Double(digits))
        return (x * p).rounded() / p
    }

    /// `1h02m`, `3m05s`, `12s`.
    static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0 else { return "?" }
        let s = Int(seconds.rounded())
        if s >= 3600 { return String(format: "%dh%02dm", s / 3600, (s % 3600) / 60) }
        if s >= 60 { return String(format: "%dm%02ds", s / 60, s % 60) }
        return "\(s)s"
    }
}

/// Set by SIGINT or SIGTERM; the training loop polls it between steps. A second signal exits at once
/// (status 130), leaving the last checkpoint as it was.
final class StopRequest: @unchecked Sendable {
    private let lock = NSLock()
    private var requested = false
    private var sources: [DispatchSourceSignal] = []
    private let queue = DispatchQueue(label: "lorad.train.signals")

    /// True once a stop signal arrived.
    var isRequested: Bool { lock.withLock { requested } }

    /// Installs the handlers; `onFirst` runs (on a private queue) when the first signal arrives.
    func install(onFirst: @escaping @Sendable (Int32) -> Void) {
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let src = DispatchSource.makeSignalSource(signal: sig, queue: queue)
            src.setEventHandler { [weak self] in
                guard let self else { return }
                let first = self.lock.withLock { () -> Bool in
                    defer { self.requested = true }
                    return !self.requested
                }
                if first { onFirst(sig) } else { _exit(130) }
            }
            src.resume()
            sources.append(src)
        }
    }
}
