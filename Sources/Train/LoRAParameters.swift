// The trainable state of a LoRA adapter as one flat f32 buffer, so the optimizer, gradient clipping and
// checkpoints treat all tensors alike, while the forward/backward address each module's lora_A / lora_B.
// Layout: modules in (layer, Projection.allCases order) order; per module lora_A [r, n_in] then lora_B [n_out, r].
import Runtime

/// How an adapter is shaped: which weights it patches, its rank and alpha. Dimensionless.
/// Math: Hu et al. 2021 (arXiv:2106.09685) `ΔW = (alpha/r)·B·A`; rsLoRA (Kalajdzievski 2023, arXiv:2312.03732)
/// uses `alpha/√r`.
public struct LoRAConfig: Sendable, Equatable, Codable {
    /// Rank `r` of every module (≥ 1).
    public var rank: Int
    /// `alpha`; the module scale is `alpha / rank` (or `alpha / √rank` with rsLoRA).
    public var alpha: Float
    /// Rank-stabilised scaling.
    public var useRSLoRA: Bool
    /// Patched projections (llama.cpp names, `attn_q` …).
    public var targets: [Projection]
    /// Patched block indices, ascending.
    public var layers: [Int]

    /// - Parameters: see the properties.
    public init(rank: Int, alpha: Float, useRSLoRA: Bool = false, targets: [Projection], layers: [Int]) {
        self.rank = rank
        self.alpha = alpha
        self.useRSLoRA = useRSLoRA
        self.targets = Projection.allCases.filter { targets.contains($0) }
        self.layers = layers.sorted()
    }

    /// The scale multiplying `B·A`: `alpha / rank`, or `alpha / √rank` with rsLoRA.
    public var scale: Float { useRSLoRA ? alpha / Float(rank).squareRoot() : alpha / Float(rank) }

    enum CodingKeys: String, CodingKey { case rank, alpha, useRSLoRA = "use_rslora", targets, layers }

    /// Decodes `{"rank", "alpha", "use_rslora", "targets": ["attn_q", …], "layers": [0, …]}`.
    /// - Throws: `DecodingError` for a missing key or an unknown projection name.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let names = try c.decode([String].self, forKey: .targets)
        var targets: [Projection] = []
        for n in names {
            guard let p = Projection(rawValue: n) else {
                throw DecodingError.dataCorruptedError(forKey: .targets, in: c, debugDescription: "unknown projection \(n)")
            }
            targets.append(p)
        }
        self.init(rank: try c.decode(Int.self, forKey: .rank), alpha: try c.decode(Float.self, forKey: .alpha),
                  useRSLoRA: try c.decodeIfPresent(Bool.self, forKey: .useRSLoRA) ?? false,
                  targets: targets, layers: try c.decode([Int].self, forKey: .layers))
    }

    /// Encodes the keys `init(from:)` reads.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(rank, forKey: .rank)
        try c.encode(alpha, forKey: .alpha)
        try c.encode(useRSLoRA, forKey: .useRSLoRA)
        try c.encode(targets.map(\.rawValue), forKey: .targets)
        try c.encode(layers, forKey: .layers)
    }
}

/// Where one module's tensors live in the flat buffer.
public struct LoRASlot: Sendable, Equatable {
    /// The patched weight.
    public let key: ModuleKey
    /// Input width `n_in` (columns of W and of lora_A).
    public let nIn: Int
    /// Output width `n_out` (rows of W and of lora_B).
    public let nOut: Int
    /// Rank `r`.
    public let rank: Int
    /// Offset of lora_A `[r, n_in]` in the flat buffer (floats).
    public let offsetA: Int
    /// Offset of lora_B `[n_out, r]` in the flat buffer (floats).
    public let offsetB: Int
    /// `r·n_in`.
    public var countA: Int { rank * nIn }
    /// `n_out·r`.
    public var countB: Int { nOut * rank }
}

/// Shapes `(n_in, n_out)` of a projection for a model configuration (W is `[n_out, n_in]`).
public func projectionShape(_ p: Projection, _ c: ModelConfig) -> (nIn: Int, nOut: Int) {
    switch p {
    case .attnQ: return (c.nEmbd, c.qDim)
    case .attnK, .attnV: return (c.nEmbd, c.kvDim)
    case .attnOutput: return (c.qDim, c.nEmbd)
    case .ffnGate, .ffnUp: return (c.nEmbd, c.nFF)
    case .ffnDown: return (c.nFF, c.nEmbd)
    }
}

/// A trainable adapter: the configuration, the slot table and all lora_A / lora_B values in one `[Float]`.
/// A gradient or an optimizer moment is a `[Float]` of the same `count` and layout.
public struct LoRAParameters: Sendable {
    /// Shape of the adapter.
    public let config: LoRAConfig
    /// Module slots in layout order (layer-major, then `Projection.allCases` order).
    public let slots: [LoRASlot]
    /// All values, `count` floats.
    public var values: [Float]

    /// Zero-filled parameters laid out for `config` on a model of shape `model`.
    /// - Precondition: every layer index is `< model.nLayer`, `rank ≥ 1`.
    public init(config: LoRAConfig, model: ModelConfig) {
        precondition(config.rank >= 1 && config.layers.allSatisfy { $0 >= 0 && $0 < model.nLayer })
        var slots: [LoRASlot] = []
        var off = 0
        for l in config.layers {
            for p in config.targets {
                let (nIn, nOut) = projectionShape(p, model)
                let s = LoRASlot(key: ModuleKey(layer: l, projection: p), nIn: nIn, nOut: nOut, rank: config.rank,
                                 offsetA: off, offsetB: off + config.rank * nIn)
                off += s.countA + s.countB
                slots.append(s)
            }
        }
        self.config = config
        self.slots = slots
        self.values = [Float](repeating: 0, count: off)
    }

    /// Number of floats in `values`.
    public var count: Int { values.count }

    /// The slot of a module, or nil when the adapter does not patch it.
    public func slot(_ key: ModuleKey) -> LoRASlot? { slots.first { $0.key == key } }

    /// The adapter as the runtime applies it (copies the values; scale = `config.scale`).
    public func makeAdapter(name: String) -> LoRAAdapter {
        var modules: [ModuleKey: LoRAModule] = [:]
        for s in slots {
            modules[s.key] = LoRAModule(rank: s.rank, nIn: s.nIn, nOut: s.nOut,
                                        a: Array(values[s.offsetA..<s.offsetA + s.countA]),
                                        b: Array(values[s.offsetB..<s.offsetB + s.countB]), scale: config.scale)
        }
        return LoRAAdapter(name: name, modules: modules, alpha: config.alpha, usesRSLoRA: config.useRSLoRA)
    }
}
