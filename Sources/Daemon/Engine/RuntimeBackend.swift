// RuntimeBackend: InferenceBackend over Runtime.Model (GGUF weights, SentencePiece tokenizer, chat template).

import Runtime

extension KVCache: SequenceCache {}

extension StreamingDetokenizer: IncrementalDetokenizer {}

/// The served model: `Runtime.Model` behind the engine's seam.
public final class RuntimeBackend: InferenceBackend, @unchecked Sendable {
    public let model: Model

    /// Loads the GGUF at `path` (mmap; tensor data is not copied).
    /// - Throws: `GGUFError`, `ModelError`, or tokenizer errors from `Model.load`.
    public init(path: String, options: ModelOptions) throws {
        model = try Model.load(path: path, options: options)
    }

    public init(model: Model) {
        self.model = model
    }

    public var modelID: String { model.name }
    public var vocabSize: Int { model.config.nVocab }
    public var trainedContextLength: Int { model.config.nCtxTrain }
    public var kvBytesPerToken: Int { model.kvBytesPerToken }

    public func makeCache(capacity: Int) throws -> any SequenceCache {
        model.makeKVCache(capacity: capacity)
    }

    public func forward(_ batch: StepBatch, caches: [any SequenceCache]) throws -> [Float] {
        var kv: [KVCache] = []
        kv.reserveCapacity(caches.count)
        for c in caches {
            guard let k = c as? KVCache else { throw ModelError.invalidBatch("cache is not a Runtime.KVCache") }
            kv.append(k)
        }
        var fb = ForwardBatch()
        let perRow = batch.adapters.count == batch.count
        for i in 0..<batch.count {
            fb.append(
                token: batch.tokens[i], position: batch.positions[i], sequence: batch.slots[i],
                wantLogits: batch.wantLogits[i], adapter: perRow ? try adapterSet(batch.adapters[i]) : nil)
        }
        return try model.forward(fb, caches: kv)
    }

    /// The Runtime `AdapterSet` for a mix, built once per mix (so all rows of a request form one segment).
    private func adapterSet(_ mix: AdapterMix?) throws -> AdapterSet? {
        guard let mix, !mix.entries.isEmpty else { return nil }
        if let set = mix.prepared as? AdapterSet { return set }
        var entries: [(adapter: LoRAAdapter, scale: Float)] = []
        for e in mix.entries {
            guard let a = e.weights as? LoRAAdapter else {
                throw ModelError.invalidBatch("adapter '\(e.name)' was not loaded by this backend")
            }
            entries.append((a, e.scale))
        }
        let set = AdapterSet(entries)
        mix.prepared = set
        return set
    }

    public func loadAdapter(at path: String, format: AdapterFormat, name: String) throws -> any AdapterWeights {
        switch format {
        case .gguf: return try model.loadGGUFAdapter(path: path, name: name)
        case .peft: return try model.loadPEFTAdapter(directory: path, name: name)
        }
    }

    public func encode(_ text: String, addBOS: Bool, parseSpecial: Bool) -> [Int32] {
        model.tokenizer.encode(text, addBOS: addBOS && model.tokenizer.addBOS, parseSpecial: parseSpecial)
    }

    public func renderChat(_ messages: [ChatTurn]) throws -> [Int32] {
        try renderChat(messages, addGenerationPrompt: true)
    }

    public func renderChat(_ messages: [ChatTurn], addGenerationPrompt: Bool) throws -> [Int32] {
        try model.chatTemplate.render(
            messages.map { ChatMessage(role: $0.role, content: $0.content) }, addGenerationPrompt: addGenerationPrompt,
            tokenizer: model.tokenizer)
    }

    public func encodePrompt(_ text: String, addBOS: Bool, parseSpecial: Bool) -> (tokens: [Int32], bosFromText: Bool) {
        let r = model.tokenizer.encodeNotingBOS(
            [.text(text, parseSpecial: parseSpecial)], addBOS: addBOS && model.tokenizer.addBOS)
        return (r.ids, r.bosFromInput)
    }

    public func decode(_ ids: [Int32]) -> String { model.tokenizer.decode(ids, renderSpecial: true) }

    public func isEndOfGeneration(_ id: Int32) -> Bool { model.tokenizer.isEndOfGeneration(id) }

    public func tokenBytes(_ id: Int32) -> [UInt8] { model.tokenizer.tokenBytes(id) }

    public func makeDetokenizer() -> any IncrementalDetokenizer {
        StreamingDetokenizer(tokenizer: model.tokenizer, renderSpecial: false)
    }
}

extension LoRAAdapter: AdapterWeights {
    public var residentBytes: Int { byteCount }
    public var adapterRank: Int { rank }
    public var adapterAlpha: Float? { alpha }
    public var adapterTargets: [String] { targets }
}

extension RuntimeBackend {
    /// The model's compute pool.
    public func parallelFor(_ tasks: Int, _ body: (Int) -> Void) {
        model.pool.parallelFor(tasks, body)
    }
}
