// Where a training run's adapter comes from: a fresh adapter with PEFT's default initialisation, or an existing
// adapter (PEFT directory or GGUF LoRA file, loaded by Runtime's loaders) to continue from.
// PEFT default init (peft/tuners/lora/layer.py reset_lora_parameters, init_lora_weights=True):
//   lora_A: nn.init.kaiming_uniform_(a=√5) on [r, n_in]  →  U(−b, b) with b = gain·√(3/fan_in),
//           gain = √(2/(1+a²)) = √(1/3), so b = 1/√n_in
//   lora_B: zeros (so the fresh adapter leaves the base model unchanged)
import Runtime

/// Why an adapter cannot become a training run's starting point.
public enum AdapterInitError: Error, CustomStringConvertible, Equatable {
    /// A configuration field is out of range (rank < 1, no target, a layer outside the model, alpha not finite).
    case invalidConfig(String)
    /// The adapter's modules do not all have the same rank (PEFT `rank_pattern`).
    case mixedRanks([Int])
    /// The adapter's modules do not all have the same scale (PEFT `alpha_pattern`).
    case mixedScales
    /// The adapter patches a set of modules that is not every target in every patched layer.
    case irregularModules(String)
    /// A module's shape or layer does not fit the base model.
    case doesNotFitBase(String)

    public var description: String {
        switch self {
        case .invalidConfig(let d): return "invalid adapter configuration: \(d)"
        case .mixedRanks(let r): return "the adapter's modules have different ranks \(r); training needs one rank"
        case .mixedScales: return "the adapter's modules have different scales (alpha_pattern); training needs one alpha"
        case .irregularModules(let d): return "the adapter cannot be trained as one grid of layers × targets: \(d)"
        case .doesNotFitBase(let d): return "the adapter does not fit the base model: \(d)"
        }
    }
}

extension LoRAParameters {
    /// Checks a configuration against a model: rank ≥ 1, alpha finite and > 0, at least one target, layers within
    /// `0..<n_layer` and without duplicates.
    /// - Throws: `AdapterInitError.invalidConfig`.
    public static func validate(_ config: LoRAConfig, model: ModelConfig) throws {
        guard config.rank >= 1, config.rank <= Model.maxLoRARank else {
            throw AdapterInitError.invalidConfig("rank \(config.rank) is outside 1...\(Model.maxLoRARank)")
        }
        guard config.alpha.isFinite, config.alpha > 0 else {
            throw AdapterInitError.invalidConfig("alpha must be a finite number > 0")
        }
        guard !config.targets.isEmpty else { throw AdapterInitError.invalidConfig("no target projection") }
        guard !config.layers.isEmpty, Set(config.layers).count == config.layers.count else {
            throw AdapterInitError.invalidConfig("layers must be a non-empty list without duplicates")
        }
        if let bad = config.layers.first(where: { $0 < 0 || $0 >= model.nLayer }) {
            throw AdapterInitError.invalidConfig("layer \(bad) is outside 0..<\(model.nLayer)")
        }
    }

    /// A fresh adapter with PEFT's default initialisation: every `lora_A [r, n_in]` drawn from U(−1/√n_in, 1/√n_in)
    /// (row-major, modules in layout order) with `rng`, every `lora_B` zero.
    /// - Throws: `AdapterInitError.invalidConfig`.
    public static func fresh(config: LoRAConfig, model: ModelConfig, rng: inout TrainingRNG) throws -> LoRAParameters {
        try validate(config, model: model)
        var p = LoRAParameters(config: config, model: model)
        for s in p.slots {
            let bound = Float(1 / Double(s.nIn).squareRoot())
            for i in 0..<s.countA { p.values[s.offsetA + i] = rng.uniform(bound: bound) }
        }
        return p
    }

    /// The trainable form of an existing adapter (from `Model.loadPEFTAdapter` or `Model.loadGGUFAdapter`): rank,
    /// alpha, rsLoRA, targets and layers come from the adapter; values are copied unchanged.
    /// Alpha is the adapter's own when it states one, else derived from the module scale (`scale·r`).
    /// - Throws: `AdapterInitError` when ranks or scales differ between modules, the modules are not a full grid
    ///   of layers × targets, or a module does not fit `model` (layer out of range, other shapes).
    public init(adapter: LoRAAdapter, model: ModelConfig) throws {
        guard !adapter.modules.isEmpty else { throw AdapterInitError.irregularModules("it patches nothing") }
        let ranks = Set(adapter.modules.values.map(\.rank))
        guard ranks.count == 1, let rank = ranks.first else { throw AdapterInitError.mixedRanks(ranks.sorted()) }
        let scales = Set(adapter.modules.values.map(\.scale))
        guard scales.count == 1, let scale = scales.first else { throw AdapterInitError.mixedScales }
        let layers = Set(adapter.modules.keys.map(\.layer)).sorted()
        let targets = Projection.allCases.filter { p in adapter.modules.keys.contains { $0.projection == p } }
        for l in layers {
            for t in targets where adapter.modules[ModuleKey(layer: l, projection: t)] == nil {
                throw AdapterInitError.irregularModules("layer \(l) has no \(t.rawValue) while other layers do")
            }
        }
        if let bad = layers.first(where: { $0 >= model.nLayer }) {
            throw AdapterInitError.doesNotFitBase("layer \(bad), but the base has \(model.nLayer) layers")
        }
        let rs = adapter.usesRSLoRA
        let alpha = adapter.alpha.flatMap { $0 > 0 ? $0 : nil } ?? (rs ? scale * Float(rank).squareRoot() : scale * Float(rank))
        let config = LoRAConfig(rank: rank, alpha: alpha, useRSLoRA: rs, targets: targets, layers: layers)
        var p = LoRAParameters(config: config, model: model)
        // A GGUF adapter with alpha 0 or without alpha has scale 1 (llama.cpp); keep the adapter's effective scale.
        guard abs(config.scale - scale) <= 1e-6 * max(1, abs(scale)) else {
            throw AdapterInitError.invalidConfig("the stated alpha \(alpha) does not give the modules' scale \(scale)")
        }
        for s in p.slots {
            let m = adapter.modules[s.key]!
            guard m.nIn == s.nIn, m.nOut == s.nOut else {
                throw AdapterInitError.doesNotFitBase(
                    "blk.\(s.key.layer).\(s.key.projection.rawValue) is [\(m.nOut), \(m.nIn)], the base weight is [\(s.nOut), \(s.nIn)]")
            }
            p.values.replaceSubrange(s.offsetA..<s.offsetA + s.countA, with: m.a)
            p.values.replaceSubrange(s.offsetB..<s.offsetB + s.countB, with: m.b)
        }
        self = p
    }
}
