// ModelLoading: loads the served model in steps that report their progress: open and parse the GGUF file, read
// every page of tensor data once (a cold disk is paid for here, not by the first request), build the model and
// its tokenizer, then one short warm-up forward pass. The daemon turns each report into `STATUS=` and
// `EXTEND_TIMEOUT_USEC=` (sd_notify(3)), so a slow start-up (a large model, a cold disk) keeps asking systemd for
// more time instead of running into `TimeoutStartSec=`. The reports come from the work itself, never from a
// clock: a load that hangs stops reporting, and systemd's start timeout still catches it.

import Foundation
import Runtime

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One progress report of ``ModelLoading/load(path:options:progress:)``.
public struct LoadProgress: Sendable, Equatable, CustomStringConvertible {
    /// The loading steps, in order.
    public enum Phase: String, Sendable, Equatable {
        /// Mapping the file and parsing its header and metadata.
        case opening
        /// Reading the tensor data into memory, one page at a time.
        case paging
        /// Building the weights, the batch copies and the tokenizer.
        case building
        /// Running one short forward pass.
        case warmingUp
    }

    public var phase: Phase
    /// Tensor data read so far, bytes (all of it once `.paging` is over).
    public var bytesDone: Int
    /// Tensor data in the file, bytes (0 while `.opening`).
    public var totalBytes: Int

    public init(phase: Phase, bytesDone: Int, totalBytes: Int) {
        self.phase = phase
        self.bytesDone = bytesDone
        self.totalBytes = totalBytes
    }

    /// One line for `STATUS=`, e.g. `reading weights 40% (100 of 250 MB)`.
    public var description: String {
        switch phase {
        case .opening: return "opening the file"
        case .paging:
            let percent = totalBytes > 0 ? bytesDone * 100 / totalBytes : 100
            return "reading weights \(percent)% (\(bytesDone >> 20) of \(totalBytes >> 20) MiB)"
        case .building: return "building weights and tokenizer"
        case .warmingUp: return "warm-up forward pass"
        }
    }
}

/// Why the warm-up forward pass refused the model.
public struct ModelWarmUpError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String
    public var description: String { "warm-up forward pass failed: \(message)" }
}

/// Loads the served model step by step, reporting progress between steps (see the file comment).
public enum ModelLoading {
    /// Tensor bytes read between two `.paging` reports.
    public static let pagingChunk = 64 << 20

    /// Loads the GGUF model at `path` and checks that it runs.
    ///
    /// Calls `progress` on the calling thread: once with `.opening`; with `.paging` before reading, after every
    /// ``pagingChunk`` bytes of tensor data and after the last byte; once with `.building` and once with
    /// `.warmingUp`, in that order. The warm-up prefills the tokens of "Hello" (BOS first) into a fresh kv_cache and requires
    /// `n_vocab` finite logits.
    /// - Parameters:
    ///   - path: the GGUF file.
    ///   - options: threads and batch-copy budget for `Runtime.Model`.
    ///   - progress: the report of each step (called before the step's work).
    /// - Returns: the backend, ready to serve.
    /// - Throws: `GGUFError` or `ModelError` from `Runtime`, tokenizer errors, or ``ModelWarmUpError``.
    public static func load(
        path: String, options: ModelOptions, progress: (LoadProgress) -> Void
    ) throws -> RuntimeBackend {
        progress(LoadProgress(phase: .opening, bytesDone: 0, totalBytes: 0))
        let gguf = try GGUFFile(path: path)
        let total = gguf.tensors.reduce(0) { $0 + $1.byteCount }
        progress(LoadProgress(phase: .paging, bytesDone: 0, totalBytes: total))
        readEveryPage(of: gguf) { done in progress(LoadProgress(phase: .paging, bytesDone: done, totalBytes: total)) }
        progress(LoadProgress(phase: .building, bytesDone: total, totalBytes: total))
        let backend = RuntimeBackend(model: try Model(gguf: gguf, path: path, options: options))
        progress(LoadProgress(phase: .warmingUp, bytesDone: total, totalBytes: total))
        try warmUp(backend)
        return backend
    }

    /// Reads one byte of every page of tensor data, in file order, calling `report` with the bytes covered so far
    /// after every ``pagingChunk`` bytes and once at the end.
    static func readEveryPage(of gguf: GGUFFile, report: (Int) -> Void) {
        let page = max(Int(sysconf(Int32(_SC_PAGESIZE))), 512)
        var done = 0
        var lastReport = 0
        var sum: UInt64 = 0
        for tensor in gguf.tensors.sorted(by: { $0.dataOffset < $1.dataOffset }) {
            let bytes = gguf.data(of: tensor)
            var offset = 0
            while offset < bytes.count {
                let end = min(offset + pagingChunk - (done - lastReport), bytes.count)
                var i = offset
                while i < end {
                    sum &+= UInt64(bytes[i])
                    i += page
                }
                sum &+= UInt64(bytes[end - 1])  // the page the stride stepped over at the end, if any
                done += end - offset
                offset = end
                if done - lastReport >= pagingChunk {
                    report(done)
                    lastReport = done
                }
            }
        }
        if done > lastReport || done == 0 { report(done) }
        PageSink.shared.add(sum)
    }

    /// Prefills a few tokens and checks the logits, so a model that cannot run fails at start-up, not on the
    /// first request.
    static func warmUp(_ backend: RuntimeBackend) throws {
        let tokens = backend.encode("Hello", addBOS: true, parseSpecial: false)
        guard !tokens.isEmpty else { throw ModelWarmUpError(message: "the tokenizer produced no tokens for \"Hello\"") }
        let cache = try backend.makeCache(capacity: tokens.count)
        var batch = StepBatch()
        for (i, t) in tokens.enumerated() {
            batch.append(token: t, position: i, slot: 0, wantLogits: i == tokens.count - 1)
        }
        let logits = try backend.forward(batch, caches: [cache])
        guard logits.count == backend.vocabSize else {
            throw ModelWarmUpError(message: "\(logits.count) logits for one row, expected n_vocab = \(backend.vocabSize)")
        }
        guard logits.allSatisfy(\.isFinite) else {
            throw ModelWarmUpError(message: "the logits are not finite (NaN or infinity)")
        }
    }
}

/// Keeps the sum of the bytes read while paging in observable, so the reads cannot be optimized away.
final class PageSink: @unchecked Sendable {
    static let shared = PageSink()
    private let lock = NSLock()
    private var total: UInt64 = 0
    func add(_ v: UInt64) { lock.withLock { total &+= v } }
    var value: UInt64 { lock.withLock { total } }
}
