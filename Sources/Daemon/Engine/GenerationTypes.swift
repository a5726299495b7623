// GenerationTypes: the validated request the API hands to the engine, and the events the engine streams back.

import Runtime

/// A validated, tokenized generation request (one sequence).
public struct GenerationRequest: Sendable {
    /// Prompt token ids, exactly as fed to the model (BOS included when the API added one). Non-empty.
    public var promptTokens: [Int32]
    /// Tokens to sample at most (≥ 1).
    public var maxTokens: Int
    /// Sampling settings; `sampling.topLogprobs` alternatives are reported per token.
    public var sampling: SamplingParams
    /// Stop strings: generation ends before the first occurrence, which is not returned.
    public var stop: [String]
    /// Token ids that end generation (like end-of-generation tokens; not returned as text).
    public var stopTokenIDs: Set<Int32>
    /// When true, end-of-generation tokens do not stop generation.
    public var ignoreEOS: Bool
    /// LoRA adapters for every row of this sequence (nil = the base model), pinned at their versions.
    public var adapters: AdapterMix?

    public init(
        promptTokens: [Int32], maxTokens: Int, sampling: SamplingParams = SamplingParams(), stop: [String] = [],
        stopTokenIDs: Set<Int32> = [], ignoreEOS: Bool = false, adapters: AdapterMix? = nil
    ) {
        self.adapters = adapters
        self.promptTokens = promptTokens
        self.maxTokens = maxTokens
        self.sampling = sampling
        self.stop = stop
        self.stopTokenIDs = stopTokenIDs
        self.ignoreEOS = ignoreEOS
    }
}

/// One sampled token as streamed to the client.
public struct GeneratedToken: Sendable, Equatable {
    public var id: Int32
    /// Text this token releases (may be empty: incomplete UTF-8, or held back as a possible stop-string prefix).
    public var text: String
    /// log_softmax of the raw logits at the sampled id (natural log).
    public var logprob: Float
    /// The `sampling.topLogprobs` most likely ids with their logprobs, most likely first.
    public var topLogprobs: [TokenLogprob]

    public init(id: Int32, text: String, logprob: Float, topLogprobs: [TokenLogprob]) {
        self.id = id
        self.text = text
        self.logprob = logprob
        self.topLogprobs = topLogprobs
    }
}

/// The end of a sequence.
public struct GenerationSummary: Sendable, Equatable {
    public var reason: FinishReason
    /// Text released at the end (pending UTF-8 bytes, text held back for a stop string that never matched).
    public var trailingText: String
    public var promptTokens: Int
    /// Tokens sampled, including a final end-of-generation/stop token.
    public var completionTokens: Int
    /// For `.error`: what failed.
    public var errorMessage: String?

    public init(
        reason: FinishReason, trailingText: String, promptTokens: Int, completionTokens: Int,
        errorMessage: String? = nil
    ) {
        self.reason = reason
        self.trailingText = trailingText
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.errorMessage = errorMessage
    }
}

/// What the engine streams for one sequence: zero or more `.token`, then exactly one `.finished`.
public enum GenerationEvent: Sendable, Equatable {
    case token(GeneratedToken)
    case finished(GenerationSummary)
}

/// A submitted sequence: its id (for cancellation) and its event stream.
///
/// The stream supports one consumer. A consumer that stops iterating before `.finished` (its iterator is
/// released, or its task is cancelled) cancels the sequence at the next step. A handle whose events are never
/// iterated keeps generating until it finishes; call ``Engine/cancel(_:)`` to stop it.
public struct GenerationHandle: Sendable {
    public let id: UInt64
    public let events: GenerationEvents
}

/// The events of one sequence: zero or more `.token`, then one `.finished`.
public struct GenerationEvents: AsyncSequence, Sendable {
    public typealias Element = GenerationEvent

    let stream: AsyncStream<GenerationEvent>
    let onAbandon: @Sendable () -> Void

    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: AsyncStream<GenerationEvent>.AsyncIterator
        let token: CancelOnRelease
        public mutating func next() async -> GenerationEvent? { await base.next() }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: stream.makeAsyncIterator(), token: CancelOnRelease(onAbandon))
    }
}

/// Calls `onRelease` when deallocated.
final class CancelOnRelease: Sendable {
    let onRelease: @Sendable () -> Void
    init(_ onRelease: @escaping @Sendable () -> Void) { self.onRelease = onRelease }
    deinit { onRelease() }
}

/// Why the engine refused a request at submission.
public enum EngineError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The wait queue holds `limit` requests already.
    case queueFull(limit: Int)
    /// The engine is draining or stopped.
    case shuttingDown
    /// The sequence alone needs more kv_cache than the whole budget.
    case exceedsKVBudget(neededBytes: Int, limitBytes: Int)
    /// Prompt + max_tokens exceed the served context.
    case exceedsContext(promptTokens: Int, maxTokens: Int, context: Int)
    /// Empty prompt, max_tokens < 1, or a token id outside the vocabulary.
    case invalidRequest(String)

    public var description: String {
        switch self {
        case .queueFull(let l): return "the wait queue is full (\(l) requests)"
        case .shuttingDown: return "the server is shutting down"
        case .exceedsKVBudget(let n, let l):
            return "the request needs \(n) bytes of kv_cache but the whole budget is \(l) bytes"
        case .exceedsContext(let p, let m, let c):
            return "prompt (\(p) tokens) plus max_tokens (\(m)) exceed the context of \(c) tokens"
        case .invalidRequest(let m): return m
        }
    }
}

/// Engine limits; all but `contextSize` can change while running (SIGHUP reload).
public struct EngineLimits: Sendable, Equatable {
    /// Sequences in prefill or decode at once.
    public var maxSequences: Int
    /// kv_cache budget over all running sequences, bytes.
    public var kvCacheBytes: Int
    /// Requests waiting for admission; beyond this, submission fails with `.queueFull`.
    public var maxQueue: Int
    /// Target rows per forward step (decode rows + prefill chunks).
    public var stepTokenBudget: Int
    /// Served context: prompt + max_tokens must fit.
    public var contextSize: Int
    /// Prompt rows one step may prefill over all sequences (≥ 1); a longer prompt is prefilled in chunks of at
    /// most this many rows, one chunk per step. `Int.max`: only `stepTokenBudget` limits them.
    public var maxPrefillTokensPerStep: Int
    /// Wall time one forward step should take, seconds, or `nil` for no bound. The engine measures the time per
    /// row of its prefill steps and cuts the next prefill chunks so that a step takes about this long (at least
    /// ``StepPlanner/minimumPrefillChunk`` rows; the first prefill step, before anything was measured, takes at
    /// most ``Engine/probePrefillRows``). Decode rows are never split, so steps of decode rows alone can take
    /// longer. Bounding the step bounds the gap between heartbeats, which run between steps (LEARNING-DECISIONS
    /// #12: ping on progress, and make progress frequent).
    public var stepTimeTarget: Double?

    /// - Parameters: see the properties; the last two default to no cap and no time bound.
    public init(
        maxSequences: Int, kvCacheBytes: Int, maxQueue: Int, stepTokenBudget: Int, contextSize: Int,
        maxPrefillTokensPerStep: Int = .max, stepTimeTarget: Double? = nil
    ) {
        self.maxSequences = maxSequences
        self.kvCacheBytes = kvCacheBytes
        self.maxQueue = maxQueue
        self.stepTokenBudget = stepTokenBudget
        self.contextSize = contextSize
        self.maxPrefillTokensPerStep = maxPrefillTokensPerStep
        self.stepTimeTarget = stepTimeTarget
    }
}

/// A consistent view of the engine's load, updated after every step.
public struct EngineSnapshot: Sendable, Equatable {
    public var running: Int = 0
    public var waiting: Int = 0
    public var kvBytesUsed: Int = 0
    public var kvBytesLimit: Int = 0
    /// Forward steps run so far.
    public var steps: Int = 0
    /// Largest number of sequences seen in one step.
    public var maxStepSequences: Int = 0
    public init() {}
}
