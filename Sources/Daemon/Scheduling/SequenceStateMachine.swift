// SequenceStateMachine: the lifecycle of one generation as a pure value type. The engine feeds it events and
// performs the actions it returns (allocate a cache, sample, emit, release); it never does I/O itself.
//
//   waiting --admit--> prefill(0) --prefilled(n)...--> decode --sampled--> ... --> finished(stop|length)
//      \____________________\______________________________\--cancel--> cancelled
//
// Invalid events (e.g. `sampled` while waiting) leave the state unchanged and return `.invalid`; they are
// internal bugs, reported rather than trapped.

/// Why a sequence ended, with OpenAI's `finish_reason` spelling where one exists.
public enum FinishReason: String, Sendable, Equatable {
    /// End-of-generation token, a stop token id, or a stop string.
    case stop
    /// `max_tokens` reached.
    case length
    /// The client went away or the daemon shut down.
    case cancelled
    /// The forward pass failed.
    case error
}

/// How a freshly sampled token relates to stopping.
public enum SampleOutcome: Sendable, Equatable {
    /// An ordinary token.
    case normal
    /// The token completed a stop string: emit what precedes the stop, then finish.
    case stopString
    /// End-of-generation or a `stop_token_ids` member: finish without emitting its text.
    case stopToken
}

/// Pure state machine of one sequence: waiting → prefill → decode → finished / cancelled.
public struct SequenceStateMachine: Sendable, Equatable {
    public enum State: Sendable, Equatable {
        case waiting
        /// Prompt tokens already written to the kv_cache.
        case prefill(processed: Int)
        case decode
        case finished(FinishReason)
        case cancelled
    }

    /// What the engine must do after an event.
    public enum Action: Sendable, Equatable {
        /// Allocate the kv_cache and start prefill.
        case allocate
        /// More prompt remains; nothing to sample yet.
        case continuePrefill
        /// The prompt is in the cache: sample the first token from the last prompt row's logits.
        case sampleFirstToken
        /// Emit the token and keep decoding.
        case emit
        /// Emit the token (or the text before a stop string), then finish with the reason and release.
        case emitAndFinish(FinishReason)
        /// Finish without emitting the token, and release.
        case finish(FinishReason)
        /// Release resources; nothing to emit.
        case release
        /// Nothing to do (e.g. cancelling an already finished sequence).
        case none
        /// The event is not valid in the current state.
        case invalid
    }

    public let promptLength: Int
    public let maxTokens: Int
    public private(set) var state: State = .waiting
    /// Tokens sampled so far (including a final stop token).
    public private(set) var generated: Int = 0

    /// - Parameters:
    ///   - promptLength: prompt tokens to prefill (≥ 1).
    ///   - maxTokens: tokens to sample at most (≥ 1).
    public init(promptLength: Int, maxTokens: Int) {
        self.promptLength = promptLength
        self.maxTokens = maxTokens
    }

    public var isTerminal: Bool {
        switch state {
        case .finished, .cancelled: return true
        default: return false
        }
    }

    /// Prompt tokens still to prefill (0 outside prefill).
    public var remainingPrompt: Int {
        if case .prefill(let done) = state { return promptLength - done }
        return 0
    }

    /// The scheduler admitted the sequence.
    public mutating func admit() -> Action {
        guard state == .waiting else { return .invalid }
        state = .prefill(processed: 0)
        return .allocate
    }

    /// `count` prompt tokens were written to the cache in this step.
    public mutating func prefilled(_ count: Int) -> Action {
        guard case .prefill(let done) = state, count > 0, count <= promptLength - done else { return .invalid }
        if done + count == promptLength {
            state = .decode
            return .sampleFirstToken
        }
        state = .prefill(processed: done + count)
        return .continuePrefill
    }

    /// A token was sampled for this sequence.
    public mutating func sampled(_ outcome: SampleOutcome) -> Action {
        guard state == .decode else { return .invalid }
        generated += 1
        switch outcome {
        case .stopToken:
            state = .finished(.stop)
            return .finish(.stop)
        case .stopString:
            state = .finished(.stop)
            return .emitAndFinish(.stop)
        case .normal:
            if generated >= maxTokens {
                state = .finished(.length)
                return .emitAndFinish(.length)
            }
            return .emit
        }
    }

    /// The client disconnected or the daemon is shutting down.
    public mutating func cancel() -> Action {
        switch state {
        case .finished, .cancelled: return .none
        case .waiting:
            state = .cancelled
            return .none
        case .prefill, .decode:
            state = .cancelled
            return .release
        }
    }

    /// The forward pass failed for this sequence.
    public mutating func fail() -> Action {
        switch state {
        case .finished, .cancelled: return .none
        default:
            state = .finished(.error)
            return .finish(.error)
        }
    }
}
