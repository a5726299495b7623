// Loading llama.cpp GGUF LoRA adapters (`general.type = adapter`, `adapter.type = lora`) and validating them
// against a loaded base model. Format facts: llama.cpp src/llama-adapter.cpp (llama_adapter_lora_init_impl):
// tensors `<base tensor>.lora_a` with ggml dims [n_in, r] and `.lora_b` with dims [r, n_out], i.e. row-major
// A [r, n_in] and B [n_out, r]; scale alpha/r from `adapter.lora.alpha` (alpha 0 means scale 1).

/// Why an adapter was refused. Every message names the offending tensor or key.
public enum AdapterError: Error, CustomStringConvertible, Equatable {
    /// The file is not a LoRA adapter (`general.type` / `adapter.type`).
    case notAnAdapter(String)
    /// The adapter was made for another architecture than the base.
    case architectureMismatch(adapter: String, base: String)
    /// A tensor name does not name a patchable projection of the base.
    case unknownTarget(tensor: String)
    /// `lora_a` without `lora_b` or the reverse.
    case missingPair(tensor: String)
    /// Shapes disagree with each other or with the base weight.
    case shapeMismatch(tensor: String, detail: String)
    /// Rank 0 or above the limit.
    case rankOutOfRange(tensor: String, rank: Int, limit: Int)
    /// An element type other than F32/F16/BF16.
    case unsupportedType(tensor: String, type: String)
    /// NaN or infinity in a tensor.
    case nonFinite(tensor: String)
    /// The adapter patches nothing.
    case empty
    /// The adapter's configuration (PEFT `adapter_config.json`) is malformed or self-contradictory; the message
    /// names the key.
    case invalidConfig(String)
    /// The adapter uses a feature this runtime does not apply (DoRA, `modules_to_save`, LoRA on the embeddings or
    /// the output head, trained biases, a `peft_type` other than LORA, ...); the message names the key or tensor.
    case unsupported(String)
    /// An adapter file could not be read (`reason` gives errno or the cause).
    case unreadable(path: String, reason: String)
    /// Two tensors patch the same projection of the same layer (e.g. under two module-name prefixes).
    case duplicateTarget(tensor: String, other: String)
    /// Tensors (all of them named, sorted) of modules the adapter's own configuration does not target: PEFT
    /// `target_modules` does not name them, `layers_to_transform` leaves their layer out, or `exclude_modules`
    /// excludes them.
    case untargetedTensors([String])

    public var description: String {
        switch self {
        case .notAnAdapter(let r): return "not a LoRA adapter: \(r)"
        case .architectureMismatch(let a, let b): return "adapter is for architecture '\(a)' but the base model is '\(b)'"
        case .unknownTarget(let t): return "tensor '\(t)' does not name a LoRA-patchable projection of the base model"
        case .missingPair(let t): return "tensor '\(t)' has no matching lora_a/lora_b partner"
        case .shapeMismatch(let t, let d): return "tensor '\(t)': \(d)"
        case .rankOutOfRange(let t, let r, let l): return "tensor '\(t)': rank \(r) is outside 1...\(l)"
        case .unsupportedType(let t, let ty): return "tensor '\(t)' has type \(ty); only f32, f16 and bf16 are supported"
        case .nonFinite(let t): return "tensor '\(t)' contains NaN or infinite values"
        case .empty: return "the adapter patches no module of the base model"
        case .invalidConfig(let d): return "invalid adapter configuration: \(d)"
        case .unsupported(let d): return "unsupported adapter: \(d)"
        case .unreadable(let p, let r): return "cannot read \(p): \(r)"
        case .duplicateTarget(let t, let o): return "tensor '\(t)' patches the same projection as '\(o)'"
        case .untargetedTensors(let names):
            let shown = names.prefix(8).map { "'\($0)'" }.joined(separator: ", ")
            let more = names.count > 8 ? " and \(names.count - 8) more" : ""
            return "\(names.count) tensor(s) belong to modules adapter_config.json does not target (target_modules, "
                + "layers_to_transform, exclude_modules): \(shown)\(more); the weights do not match the configuration"
        }
    }
}

extension Model {
    /// Maximum LoRA rank accepted.
    public static let maxLoRARank = 256

    /// Input/output widths of a patchable projection of this model: `(n_in, n_out)`.
    public func projectionShape(_ key: ModuleKey) -> (nIn: Int, nOut: Int)? {
        guard key.layer >= 0, key.layer < config.nLayer else { return nil }
        let w = transformer.weights.layers[key.layer].matrix(key.projection)
        return (w.cols, w.rows)
    }

    /// Loads a llama.cpp GGUF LoRA adapter and checks it against this base model.
    /// - Throws: `GGUFError` for a malformed file, `AdapterError` naming the offending tensor otherwise.
    public func loadGGUFAdapter(path: String, name: String) throws -> LoRAAdapter {
        try loadGGUFAdapter(GGUFFile(path: path), name: name)
    }

    /// Builds an adapter from an opened GGUF adapter file (see `loadGGUFAdapter(path:name:)`).
    public func loadGGUFAdapter(_ file: GGUFFile, name: String) throws -> LoRAAdapter {
        guard file.string("general.type") == "adapter", file.string("adapter.type") == "lora" else {
            throw AdapterError.notAnAdapter("general.type must be 'adapter' and adapter.type 'lora'")
        }
        if let arch = file.architecture, arch != config.architecture {
            throw AdapterError.architectureMismatch(adapter: arch, base: config.architecture)
        }
        let statedAlpha = file.double("adapter.lora.alpha").map { Float($0) }
        let alpha = statedAlpha ?? 0
        var pairs: [ModuleKey: (a: GGUFTensorInfo?, b: GGUFTensorInfo?)] = [:]
        for t in file.tensors {
            let isA = t.name.hasSuffix(".weight.lora_a"), isB = t.name.hasSuffix(".weight.lora_b")
            guard isA || isB else { throw AdapterError.unknownTarget(tensor: t.name) }
            guard let key = Self.moduleKey(ggufName: String(t.name.dropLast(".weight.lora_a".count))) else {
                throw AdapterError.unknownTarget(tensor: t.name)
            }
            var p = pairs[key] ?? (nil, nil)
            if isA { p.a = t } else { p.b = t }
            pairs[key] = p
        }
        var modules: [ModuleKey: LoRAModule] = [:]
        for (key, pair) in pairs {
            guard let a = pair.a, let b = pair.b else {
                throw AdapterError.missingPair(tensor: (pair.a ?? pair.b)!.name)
            }
            guard let shape = projectionShape(key) else { throw AdapterError.unknownTarget(tensor: a.name) }
            guard a.dims.count == 2, b.dims.count == 2 else {
                throw AdapterError.shapeMismatch(tensor: a.name, detail: "lora_a and lora_b must be 2-D")
            }
            let rank = a.dims[1]
            guard a.dims[0] == shape.nIn else {
                throw AdapterError.shapeMismatch(tensor: a.name, detail: "lora_a ne[0] is \(a.dims[0]), the base weight's n_in is \(shape.nIn)")
            }
            guard b.dims[1] == shape.nOut else {
                throw AdapterError.shapeMismatch(tensor: b.name, detail: "lora_b ne[1] is \(b.dims[1]), the base weight's n_out is \(shape.nOut)")
            }
            guard b.dims[0] == rank else {
                throw AdapterError.shapeMismatch(tensor: b.name, detail: "lora_b ne[0] is \(b.dims[0]) but lora_a's rank is \(rank)")
            }
            guard rank >= 1, rank <= Self.maxLoRARank else {
                throw AdapterError.rankOutOfRange(tensor: a.name, rank: rank, limit: Self.maxLoRARank)
            }
            let av = try Self.floats(file, a), bv = try Self.floats(file, b)
            let scale = alpha == 0 ? 1 : alpha / Float(rank)
            modules[key] = LoRAModule(rank: rank, nIn: shape.nIn, nOut: shape.nOut, a: av, b: bv, scale: scale)
        }
        guard !modules.isEmpty else { throw AdapterError.empty }
        return LoRAAdapter(name: name, modules: modules, alpha: statedAlpha, usesRSLoRA: false)
    }

    /// `blk.<l>.<projection>` → key.
    static func moduleKey(ggufName: String) -> ModuleKey? {
        let parts = ggufName.split(separator: ".")
        // The layer number must be spelled as the base's tensor names spell it ("blk.00" or "blk.+0" match no base
        // weight in llama.cpp, and here they would silently collide with "blk.0").
        guard parts.count == 3, parts[0] == "blk", let l = Int(parts[1]), l >= 0, String(l) == parts[1],
              let p = Projection(rawValue: String(parts[2]))
        else { return nil }
        return ModuleKey(layer: l, projection: p)
    }

    static func floats(_ file: GGUFFile, _ t: GGUFTensorInfo) throws -> [Float] {
        guard [.f32, .f16, .bf16].contains(t.type) else {
            throw AdapterError.unsupportedType(tensor: t.name, type: t.type.description)
        }
        let raw = file.data(of: t)
        var out = [Float](repeating: 0, count: t.elementCount)
        guard let base = raw.baseAddress, raw.count >= (t.type.byteCount(elements: t.elementCount) ?? .max) else {
            throw AdapterError.shapeMismatch(tensor: t.name, detail: "data shorter than its dims")
        }
        out.withUnsafeMutableBufferPointer { Quant.dequantize(t.type, base, count: t.elementCount, into: $0.baseAddress!) }
        guard out.allSatisfy({ $0.isFinite }) else { throw AdapterError.nonFinite(tensor: t.name) }
        return out
    }
}
