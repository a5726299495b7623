// Loading Hugging Face PEFT LoRA adapters (a directory with adapter_config.json and adapter_model.safetensors) and
// validating them against a loaded base model.
//
// Sources: PEFT `LoraConfig` (peft/tuners/lora/config.py) for the configuration keys; peft/tuners/lora/layer.py
// (`LoraLayer.update_layer`: lora_A = nn.Linear(in_features, r), lora_B = nn.Linear(r, out_features), scaling
// alpha/r or alpha/sqrt(r) with use_rslora; `dispatch_default`: fan_in_fan_out is reset to False for nn.Linear);
// peft/tuners/tuners_utils.py `check_target_module_exists` (target_modules, exclude_modules, layers_to_transform,
// layers_pattern); peft/utils/other.py `get_pattern_key` (rank_pattern / alpha_pattern) and
// `match_target_against_key` (re.fullmatch); peft/utils/save_and_load.py (tensor names: the module path under
// `base_model.model.`, then `lora_A.weight` / `lora_B.weight`, the adapter name removed on save).
//
// nn.Linear stores weight [out_features, in_features], so lora_A.weight is [r, n_in] and lora_B.weight [n_out, r]:
// already LoRAModule's row-major layout. Hugging Face module names map to llama.cpp's GGUF names for gemma3 and
// llama: self_attn.{q,k,v,o}_proj → attn_q/attn_k/attn_v/attn_output, mlp.{gate,up,down}_proj → ffn_gate/ffn_up/
// ffn_down (llama.cpp convert_hf_to_gguf.py / gguf-py tensor_mapping.py).

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Configuration

/// The parts of a PEFT `LoraConfig` (`adapter_config.json`) that decide which modules an adapter patches and with
/// which rank and scale. Keys and defaults follow PEFT's `LoraConfig` (peft/tuners/lora/config.py); a missing key
/// takes PEFT's default (`r` 8, `lora_alpha` 8, `bias` "none", booleans false).
///
/// Regular expressions (`target_modules` as a string, `exclude_modules` as a string, `rank_pattern` and
/// `alpha_pattern` keys, `layers_pattern`) are Python `re` patterns in PEFT. They are compiled here by a matcher for
/// the regular subset of that syntax (literals, `.`, classes, `\d \w \s` and their negations, groups `(...)`,
/// `(?:...)`, `(?P<name>...)`, alternation, `* + ? {m,n}` greedy or lazy, `^ $ \A \Z`) that runs in time linear in
/// the module name, so a hostile pattern cannot stall the loader; backreferences, lookaround, inline flags, word
/// boundaries and possessive quantifiers are refused with `AdapterError.invalidConfig`.
public struct PEFTLoRAConfig: Sendable {
    /// How `target_modules` selects modules.
    public enum TargetModules: Sendable, Equatable {
        /// A list: a module is selected when its name equals an entry or ends with `"." + entry`.
        case names([String])
        /// A string: a module is selected when the regular expression matches its whole name (`re.fullmatch`).
        case regex(String)
        /// `"all-linear"`: every linear layer except the output head (here: the seven block projections).
        case allLinear
    }

    /// `r`: the default rank.
    public let rank: Int
    /// `lora_alpha`: the default alpha (dimensionless).
    public let alpha: Double
    /// `target_modules`.
    public let targetModules: TargetModules
    /// `exclude_modules` (same forms as `target_modules`, without `allLinear`), nil when absent.
    public let excludeModules: TargetModules?
    /// `use_rslora`: scale `alpha / sqrt(r)` instead of `alpha / r`.
    public let useRSLoRA: Bool
    /// `rank_pattern` in file order: module-name patterns and the rank they select.
    public let rankPattern: [(pattern: String, rank: Int)]
    /// `alpha_pattern` in file order: module-name patterns and the alpha they select.
    public let alphaPattern: [(pattern: String, alpha: Double)]
    /// `layers_to_transform` (a single int is stored as one element), nil when absent or empty.
    public let layersToTransform: [Int]?
    /// `layers_pattern`, nil when absent or empty.
    public let layersPattern: [String]?
    /// `fan_in_fan_out`. Accepted either way: PEFT resets it to false for `nn.Linear` layers (all Gemma 3 and Llama
    /// projections are), and lora_A / lora_B have their nn.Linear shapes whatever its value.
    public let fanInFanOut: Bool

    private let targetRegex: PythonRegex?
    private let excludeRegex: PythonRegex?
    private let rankRegexes: [PythonRegex]
    private let alphaRegexes: [PythonRegex]
    private let layerRegexes: [PythonRegex]

    /// Module names of the token embeddings and output head under the prefixes PEFT uses for Gemma 3 and Llama.
    static let embeddingAndHeadModules = ["model.embed_tokens", "lm_head", "model.language_model.embed_tokens",
                                          "language_model.model.embed_tokens", "language_model.lm_head"]

    /// Parses and checks `adapter_config.json`.
    /// - Parameter json: the file's bytes (UTF-8 JSON object).
    /// - Throws: `AdapterError.invalidConfig` for malformed JSON, a key of the wrong type, `r` or a `rank_pattern`
    ///   value below 1, a non-finite alpha, an invalid or unsupported regular expression, or a combination PEFT
    ///   itself refuses (`layers_to_transform` or `layers_pattern` with a string `target_modules`, `layers_pattern`
    ///   without `layers_to_transform`, no `target_modules`). `AdapterError.unsupported` for `peft_type` other than
    ///   LORA, `bias` other than "none", `use_dora`, `modules_to_save`, `lora_bias`, `trainable_token_indices`,
    ///   `target_parameters`, `layer_replication`, the LoRA variants whose forward pass is not `W·x + s·B·A·x`
    ///   (`use_qalora`, `alora_invocation_tokens`, `velora_config`, `monteclora_config`, `use_bdlora`,
    ///   `arrow_config`, `kasa_config`), and targets that select the token embeddings or the output head.
    public init(json: [UInt8]) throws {
        let root: JSONValue
        do {
            root = try StrictJSON.parse(json)
        } catch let e as StrictJSON.ParseError {
            switch e {
            case .syntax(let offset, let reason):
                throw AdapterError.invalidConfig("adapter_config.json is not valid JSON (byte \(offset)): \(reason)")
            case .duplicateKey(let key, _, let offset):
                throw AdapterError.invalidConfig("adapter_config.json has key '\(key)' twice (byte \(offset))")
            }
        }
        guard case .object = root else { throw AdapterError.invalidConfig("adapter_config.json is not a JSON object") }
        func value(_ key: String) -> JSONValue? {
            if case .null? = root[key] { return nil }
            return root[key]
        }
        func invalid(_ key: String, _ what: String) -> AdapterError { .invalidConfig("'\(key)' must be \(what)") }
        func bool(_ key: String) throws -> Bool {
            guard let v = value(key) else { return false }
            guard case .bool(let b) = v else { throw invalid(key, "true or false") }
            return b
        }
        func positiveInt(_ v: JSONValue, _ key: String) throws -> Int {
            guard case .number(let n) = v, n.isIntegerLiteral, let i = n.intValue, i >= 1 else {
                throw invalid(key, "a positive integer")
            }
            return i
        }
        func finite(_ v: JSONValue, _ key: String) throws -> Double {
            guard case .number(let n) = v, n.doubleValue.isFinite else { throw invalid(key, "a finite number") }
            return n.doubleValue
        }
        func strings(_ key: String) throws -> [String]? {
            guard let v = value(key) else { return nil }
            if case .string(let s) = v { return [s] }
            guard case .array(let items) = v else { throw invalid(key, "a string or a list of strings") }
            return try items.map {
                guard case .string(let s) = $0 else { throw invalid(key, "a string or a list of strings") }
                return s
            }
        }
        func isSet(_ key: String) -> Bool {
            switch value(key) {
            case nil, .bool(false)?: return false
            case .array(let a)?: return !a.isEmpty
            case .object(let o)?: return !o.isEmpty
            case .string(let s)?: return !s.isEmpty
            case .number(let n)?: return n.doubleValue != 0
            default: return true
            }
        }

        // What the adapter is.
        guard let peftType = value("peft_type") else { throw AdapterError.invalidConfig("'peft_type' is missing") }
        guard case .string(let type) = peftType else { throw invalid("peft_type", "a string") }
        guard type == "LORA" else { throw AdapterError.unsupported("peft_type is '\(type)'; only LORA adapters are supported") }
        if let b = value("bias") {
            guard case .string(let bias) = b else { throw invalid("bias", "\"none\", \"all\" or \"lora_only\"") }
            guard bias == "none" else {
                throw AdapterError.unsupported("bias is '\(bias)'; only \"none\" is supported (trained biases are not applied)")
            }
        }
        if try bool("use_dora") { throw AdapterError.unsupported("use_dora is true; DoRA adapters are not supported") }
        if try bool("lora_bias") { throw AdapterError.unsupported("lora_bias is true; a bias on lora_B is not supported") }
        if try bool("use_qalora") { throw AdapterError.unsupported("use_qalora is true; QA-LoRA is not supported") }
        if isSet("modules_to_save") {
            throw AdapterError.unsupported("modules_to_save is set; fully trained modules saved with the adapter are not supported")
        }
        for (key, what) in [("alora_invocation_tokens", "activated LoRA"), ("velora_config", "VeLoRA"),
                            ("monteclora_config", "MonteCLoRA"), ("use_bdlora", "BD-LoRA"), ("arrow_config", "Arrow routing"),
                            ("kasa_config", "KaSA"), ("trainable_token_indices", "trainable token embeddings"),
                            ("target_parameters", "LoRA on bare parameters"), ("layer_replication", "layer replication")]
        where isSet(key) {
            throw AdapterError.unsupported("\(key) is set; \(what) is not supported")
        }

        // Rank and scale.
        rank = try value("r").map { try positiveInt($0, "r") } ?? 8
        alpha = try value("lora_alpha").map { try finite($0, "lora_alpha") } ?? 8
        useRSLoRA = try bool("use_rslora")
        fanInFanOut = try bool("fan_in_fan_out")
        func patterns<T>(_ key: String, _ convert: (JSONValue, String) throws -> T) throws -> [(String, T)] {
            guard let v = value(key) else { return [] }
            guard case .object(let members) = v else { throw invalid(key, "an object") }
            return try members.map { ($0.key, try convert($0.value, "\(key)[\"\($0.key)\"]")) }
        }
        rankPattern = try patterns("rank_pattern", positiveInt).map { (pattern: $0.0, rank: $0.1) }
        alphaPattern = try patterns("alpha_pattern", finite).map { (pattern: $0.0, alpha: $0.1) }
        func compile(_ pattern: String, _ key: String) throws -> PythonRegex {
            do { return try PythonRegex(pattern) } catch let e as PythonRegex.SyntaxError {
                throw AdapterError.invalidConfig("'\(key)' pattern '\(pattern)': \(e.reason)")
            }
        }
        // PEFT get_pattern_key: re.match(rf"(.*\.)?({key})$", module name).
        rankRegexes = try rankPattern.map { try compile("(.*\\.)?(\($0.pattern))$", "rank_pattern") }
        alphaRegexes = try alphaPattern.map { try compile("(.*\\.)?(\($0.pattern))$", "alpha_pattern") }

        // Which modules.
        switch value("target_modules") {
        case nil:
            throw AdapterError.invalidConfig("'target_modules' is missing")
        case .string(let s)?:
            if s == "all-linear" {
                targetModules = .allLinear
                targetRegex = nil
            } else {
                targetModules = .regex(s)
                targetRegex = try compile(s, "target_modules")
            }
        case .array?:
            targetModules = .names(try strings("target_modules") ?? [])
            targetRegex = nil
        default:
            throw invalid("target_modules", "a string or a list of strings")
        }
        switch value("exclude_modules") {
        case nil:
            excludeModules = nil
            excludeRegex = nil
        case .string(let s)?:
            excludeModules = .regex(s)
            excludeRegex = try compile(s, "exclude_modules")
        case .array?:
            excludeModules = .names(try strings("exclude_modules") ?? [])
            excludeRegex = nil
        default:
            throw invalid("exclude_modules", "a string or a list of strings")
        }
        switch value("layers_to_transform") {
        case nil:
            layersToTransform = nil
        case .number(let n)? where n.isIntegerLiteral:
            guard let layer = n.intValue else { throw invalid("layers_to_transform", "an integer or a list of integers") }
            layersToTransform = [layer]
        case .array(let items)?:
            let layers = try items.map { item -> Int in
                guard case .number(let n) = item, n.isIntegerLiteral, let i = n.intValue else {
                    throw invalid("layers_to_transform", "an integer or a list of integers")
                }
                return i
            }
            layersToTransform = layers.isEmpty ? nil : layers
        default:
            throw invalid("layers_to_transform", "an integer or a list of integers")
        }
        let layersPatternList = try strings("layers_pattern")
        layersPattern = (layersPatternList?.isEmpty ?? true) ? nil : layersPatternList
        if case .names = targetModules {} else {
            if value("layers_to_transform") != nil {
                throw AdapterError.invalidConfig("'layers_to_transform' cannot be used when 'target_modules' is a string")
            }
            if value("layers_pattern") != nil {
                throw AdapterError.invalidConfig("'layers_pattern' cannot be used when 'target_modules' is a string")
            }
        }
        if layersPattern != nil, value("layers_to_transform") == nil {
            throw AdapterError.invalidConfig("'layers_pattern' is set without 'layers_to_transform'")
        }
        // PEFT: rf".*?\.{pattern}\.(\d+)\." matched at the start; here the text before the layer index must match
        // rf".*?\.{pattern}" (default: rf".*?\.[^.]*").
        layerRegexes = try (layersPattern ?? ["[^.]*"]).map { try compile(".*?\\.\($0)", "layers_pattern") }

        for module in Self.embeddingAndHeadModules where isTargeted(module: module) {
            throw AdapterError.unsupported("target_modules selects '\(module)'; LoRA on the token embeddings or the output head is not supported")
        }
    }

    /// Whether PEFT would attach a LoRA layer to the module named `module` (a path such as
    /// `model.layers.3.self_attn.q_proj`), following `check_target_module_exists`: excluded modules never; a
    /// regex `target_modules` must match the whole name; a list entry must equal the name (then
    /// `layers_to_transform` is not consulted, as in PEFT) or be a `.`-separated suffix of it, and then, with
    /// `layers_to_transform`, the first numbered path component preceded by `layers_pattern` (default: any
    /// component) must be one of those layers.
    public func isTargeted(module: String) -> Bool {
        if let ex = excludeModules {
            switch ex {
            case .regex: if excludeRegex?.fullMatch(module) == true { return false }
            case .names(let names): if names.contains(where: { module == $0 || module.hasSuffix("." + $0) }) { return false }
            case .allLinear: break
            }
        }
        switch targetModules {
        case .allLinear:
            let last = module.split(separator: ".").last.map(String.init) ?? module
            return last != "lm_head" && last != "embed_tokens"
        case .regex:
            return targetRegex?.fullMatch(module) == true
        case .names(let names):
            if names.contains(module) { return true }
            guard names.contains(where: { module.hasSuffix("." + $0) }) else { return false }
            guard let layers = layersToTransform else { return true }
            guard let layer = layerIndex(module) else { return false }
            return layers.contains(layer)
        }
    }

    /// The layer index PEFT reads from a module name for `layers_to_transform`: the first all-digit path component
    /// (not the first or last one) whose preceding text matches `.*?\.<layers_pattern>`.
    func layerIndex(_ module: String) -> Int? {
        let parts = module.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard parts.count >= 3 else { return nil }
        for j in 1..<(parts.count - 1) {
            let p = parts[j]
            guard !p.isEmpty, p.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let index = Int(p) else { continue }
            let before = parts[0..<j].joined(separator: ".")
            if layerRegexes.contains(where: { $0.fullMatch(before) }) { return index }
        }
        return nil
    }

    /// The rank for `module`: the value of the first `rank_pattern` key `k` (in file order) such that the name
    /// matches `(.*\.)?(k)$` from its start (PEFT `get_pattern_key`), else `rank`.
    public func rank(forModule module: String) -> Int {
        for (i, re) in rankRegexes.enumerated() where re.prefixMatch(module) { return rankPattern[i].rank }
        return rank
    }

    /// The alpha for `module`: as `rank(forModule:)`, with `alpha_pattern` and `lora_alpha`.
    public func alpha(forModule module: String) -> Double {
        for (i, re) in alphaRegexes.enumerated() where re.prefixMatch(module) { return alphaPattern[i].alpha }
        return alpha
    }

    /// PEFT's `scaling` for `module`: `alpha / r`, or `alpha / sqrt(r)` with `use_rslora`, using the module's rank
    /// and alpha after `rank_pattern` / `alpha_pattern`. Dimensionless.
    public func scale(forModule module: String) -> Double {
        let r = Double(rank(forModule: module))
        return alpha(forModule: module) / (useRSLoRA ? r.squareRoot() : r)
    }
}

// MARK: - Loader

extension Model {
    /// Largest `adapter_config.json` read, in bytes.
    public static let maxPEFTConfigBytes = 16 << 20

    /// Loads a Hugging Face PEFT LoRA adapter saved with `save_pretrained` (`<directory>/adapter_config.json` and
    /// `<directory>/adapter_model.safetensors`) and checks it against this base model; see
    /// `loadPEFTAdapter(config:weights:name:)` for what is accepted.
    /// - Throws: `AdapterError.unreadable` when the config cannot be read (or only a pickled `adapter_model.bin`
    ///   exists: `AdapterError.unsupported`), `SafetensorsError` for a malformed weights file, `AdapterError`
    ///   naming the offending key or tensor otherwise.
    public func loadPEFTAdapter(directory: String, name: String) throws -> LoRAAdapter {
        let dir = directory.hasSuffix("/") ? directory : directory + "/"
        let config = try Self.readSmallFile(dir + "adapter_config.json", limit: Self.maxPEFTConfigBytes)
        let weightsPath = dir + "adapter_model.safetensors"
        if access(weightsPath, F_OK) != 0, access(dir + "adapter_model.bin", F_OK) == 0 {
            throw AdapterError.unsupported("\(dir)adapter_model.bin is a PyTorch pickle, which is not read; save the adapter with safe_serialization=True")
        }
        return try loadPEFTAdapter(config: config, weights: SafetensorsFile(path: weightsPath), name: name)
    }

    /// Builds an adapter from the bytes of a PEFT `adapter_config.json` and an opened `adapter_model.safetensors`
    /// (e.g. both uploaded).
    ///
    /// Tensors are named `base_model.model.<module>.lora_A.weight` / `.lora_B.weight` (also with an adapter name
    /// before `weight`, e.g. `lora_A.default.weight`, as long as all tensors use the same one), where `<module>` is
    /// `model.layers.<l>.self_attn.{q,k,v,o}_proj` or `model.layers.<l>.mlp.{gate,up,down}_proj`, or the same under
    /// `model.language_model.layers.` or `language_model.model.layers.` (Gemma 3 multimodal checkpoints).
    /// lora_A is `[r, n_in]` and lora_B `[n_out, r]` (F32, F16 or BF16), row-major like `LoRAModule`. Every tensor
    /// must belong to a module the configuration targets (`PEFTLoRAConfig.isTargeted`): PEFT attaches no layer to
    /// the others, so a file holding them does not match its configuration and is refused rather than loaded with
    /// them dropped. Each module's rank must equal its configured rank (`r` or `rank_pattern`), within
    /// `1...Model.maxLoRARank`, and its `scale` is `PEFTLoRAConfig.scale(forModule:)`. On a llama-architecture base,
    /// the rows of `q_proj` / `k_proj` lora_B are reordered as llama.cpp's converter reordered the base weights
    /// (`LlamaQKPermutation.hfToGGUF`, with n_head / n_head_kv); Gemma 3 bases are used as they are.
    /// - Parameters: config: the JSON bytes; weights: the safetensors file; name: the adapter's display name.
    /// - Throws: `AdapterError`: `.invalidConfig` / `.unsupported` from `PEFTLoRAConfig(json:)`; `.unsupported` for
    ///   DoRA magnitude vectors, LoRA on the embeddings or the output head, `modules_to_save` copies, lora_B biases
    ///   and tensors of several adapters; `.untargetedTensors` naming every tensor of a module the configuration
    ///   does not target (outside `layers_to_transform`, not in `target_modules`, or excluded);
    ///   `.unknownTarget` for a tensor that names no projection of the base
    ///   (including a layer the base does not have); `.missingPair`; `.duplicateTarget`; `.shapeMismatch` (2-D
    ///   shapes `[r, n_in]` / `[n_out, r]` against the base weight and the configured rank); `.rankOutOfRange`;
    ///   `.nonFinite`; `.empty` when nothing is patched. Each names the tensor.
    public func loadPEFTAdapter(config: [UInt8], weights: SafetensorsFile, name: String) throws -> LoRAAdapter {
        let cfg = try PEFTLoRAConfig(json: config)
        // Parse every name first, so that tensors of several adapters are refused whatever their order.
        var parsed: [(info: SafetensorsTensorInfo, name: PEFTTensorName)] = []
        var adapterNames = Set<String>()
        for t in weights.tensors {
            let n = try PEFTTensorName(t.name)
            adapterNames.insert(n.adapter ?? "")
            parsed.append((t, n))
        }
        guard adapterNames.count <= 1 else {
            let shown = adapterNames.sorted().map { $0.isEmpty ? "(none)" : $0 }.joined(separator: ", ")
            throw AdapterError.unsupported("the tensors belong to several adapters (\(shown)); save one adapter per directory")
        }
        var pairs: [ModuleKey: (module: String, a: SafetensorsTensorInfo?, b: SafetensorsTensorInfo?)] = [:]
        var untargeted: [String] = []
        for (info, n) in parsed {
            guard cfg.isTargeted(module: n.module) else {
                untargeted.append(info.name)
                continue
            }
            guard let key = Self.moduleKey(hfModule: n.module) else { throw AdapterError.unknownTarget(tensor: info.name) }
            var p = pairs[key] ?? (n.module, nil, nil)
            if p.module != n.module {
                throw AdapterError.duplicateTarget(tensor: info.name, other: p.a?.name ?? p.b?.name ?? p.module)
            }
            if n.isA { p.a = info } else { p.b = info }
            pairs[key] = p
        }
        // PEFT attaches no layer to these modules, so their weights could only be dropped: the file and its
        // configuration disagree (a wrong adapter_config.json, or tensors from another training run).
        guard untargeted.isEmpty else { throw AdapterError.untargetedTensors(untargeted.sorted()) }
        var modules: [ModuleKey: LoRAModule] = [:]
        let projectionOrder = Dictionary(uniqueKeysWithValues: Projection.allCases.enumerated().map { ($1, $0) })
        let order = pairs.sorted {
            $0.key.layer != $1.key.layer ? $0.key.layer < $1.key.layer
                : projectionOrder[$0.key.projection, default: 0] < projectionOrder[$1.key.projection, default: 0]
        }
        for (key, p) in order {
            guard let a = p.a, let b = p.b else {
                throw AdapterError.missingPair(tensor: p.a?.name ?? p.b?.name ?? p.module)
            }
            guard let shape = projectionShape(key) else { throw AdapterError.unknownTarget(tensor: a.name) }
            let rank = cfg.rank(forModule: p.module)
            guard rank >= 1, rank <= Self.maxLoRARank else {
                throw AdapterError.rankOutOfRange(tensor: a.name, rank: rank, limit: Self.maxLoRARank)
            }
            let source = cfg.rankPattern.isEmpty ? "r = \(rank)" : "rank \(rank) from r / rank_pattern"
            guard a.shape == [rank, shape.nIn] else {
                throw AdapterError.shapeMismatch(tensor: a.name, detail: "lora_A has shape \(a.shape), expected [\(rank), \(shape.nIn)] (\(source), the base weight's n_in is \(shape.nIn))")
            }
            guard b.shape == [shape.nOut, rank] else {
                throw AdapterError.shapeMismatch(tensor: b.name, detail: "lora_B has shape \(b.shape), expected [\(shape.nOut), \(rank)] (\(source), the base weight's n_out is \(shape.nOut))")
            }
            let av = weights.floats(of: a)
            guard av.allSatisfy({ $0.isFinite }) else { throw AdapterError.nonFinite(tensor: a.name) }
            var bv = weights.floats(of: b)
            guard bv.allSatisfy({ $0.isFinite }) else { throw AdapterError.nonFinite(tensor: b.name) }
            if self.config.architecture == Llama.architecture, key.projection == .attnQ || key.projection == .attnK {
                // llama.cpp's converter permuted the base's Q/K rows; lora_B's rows must follow (LlamaQKPermutation).
                let heads = key.projection == .attnQ ? self.config.nHead : self.config.nHeadKV
                guard LlamaQKPermutation.canPermute(rows: shape.nOut, nHead: heads) else {
                    throw AdapterError.shapeMismatch(tensor: b.name, detail: "lora_B has \(shape.nOut) rows, which do not split into \(heads) heads of an even head_dim")
                }
                bv = LlamaQKPermutation.hfToGGUF(bv, rows: shape.nOut, cols: rank, nHead: heads)
            }
            let scale = Float(cfg.scale(forModule: p.module))
            modules[key] = LoRAModule(rank: rank, nIn: shape.nIn, nOut: shape.nOut, a: av, b: bv, scale: scale)
        }
        guard !modules.isEmpty else { throw AdapterError.empty }
        return LoRAAdapter(name: name, modules: modules, alpha: Float(cfg.alpha), usesRSLoRA: cfg.useRSLoRA)
    }

    /// Path prefixes of the decoder blocks in Hugging Face module names (Gemma3ForCausalLM / LlamaForCausalLM, and
    /// the language model inside Gemma3ForConditionalGeneration in newer and older transformers).
    static let hfLayerPrefixes = ["model.layers.", "model.language_model.layers.", "language_model.model.layers."]
    /// Hugging Face projection paths inside a block → llama.cpp projections.
    static let hfProjections: [String: Projection] = [
        "self_attn.q_proj": .attnQ, "self_attn.k_proj": .attnK, "self_attn.v_proj": .attnV, "self_attn.o_proj": .attnOutput,
        "mlp.gate_proj": .ffnGate, "mlp.up_proj": .ffnUp, "mlp.down_proj": .ffnDown,
    ]

    /// `model.layers.<l>.self_attn.q_proj` (and the other prefixes / projections) → key; nil for anything else.
    static func moduleKey(hfModule: String) -> ModuleKey? {
        for prefix in hfLayerPrefixes where hfModule.hasPrefix(prefix) {
            let rest = hfModule.dropFirst(prefix.count)
            guard let dot = rest.firstIndex(of: ".") else { return nil }
            let digits = rest[..<dot]
            guard !digits.isEmpty, digits.count <= 9, digits.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                  let layer = Int(digits), let projection = hfProjections[String(rest[rest.index(after: dot)...])]
            else { return nil }
            return ModuleKey(layer: layer, projection: projection)
        }
        return nil
    }

    /// Reads a regular file of at most `limit` bytes.
    static func readSmallFile(_ path: String, limit: Int) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw AdapterError.unreadable(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw AdapterError.unreadable(path: path, reason: String(cString: strerror(errno))) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw AdapterError.unreadable(path: path, reason: "not a regular file") }
        guard st.st_size <= limit else { throw AdapterError.unreadable(path: path, reason: "larger than \(limit) bytes") }
        var out = [UInt8](repeating: 0, count: Int(st.st_size))
        var done = 0
        while done < out.count {
            let n = out.withUnsafeMutableBytes { read(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 {
                if errno == EINTR { continue }
                throw AdapterError.unreadable(path: path, reason: String(cString: strerror(errno)))
            }
            if n == 0 { break }
            done += n
        }
        return Array(out.prefix(done))
    }
}

/// A PEFT tensor name taken apart: `base_model.model.<module>.lora_{A,B}[.<adapter>].weight`.
struct PEFTTensorName {
    /// The module path, e.g. `model.layers.0.self_attn.q_proj`.
    let module: String
    /// lora_A (else lora_B).
    let isA: Bool
    /// The adapter name when the tensor name keeps it (e.g. `default`).
    let adapter: String?

    /// - Throws: `AdapterError.unsupported` for DoRA, embedding, modules_to_save, trainable-token and bias tensors
    ///   and for LoRA on the embeddings or the output head; `AdapterError.unknownTarget` for any other name that is
    ///   not a LoRA factor of a `base_model.model.` module.
    init(_ name: String) throws {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        if parts.contains("lora_magnitude_vector") {
            throw AdapterError.unsupported("tensor '\(name)' is a DoRA magnitude vector; DoRA adapters are not supported")
        }
        if parts.contains(where: { $0.hasPrefix("lora_embedding_") }) {
            throw AdapterError.unsupported("tensor '\(name)' patches an embedding; LoRA on the token embeddings is not supported")
        }
        if parts.contains("modules_to_save") || parts.contains("original_module") {
            throw AdapterError.unsupported("tensor '\(name)' is a modules_to_save copy; fully trained modules are not supported")
        }
        if parts.contains(where: { $0.hasPrefix("trainable_tokens") || $0 == "token_adapter" }) {
            throw AdapterError.unsupported("tensor '\(name)' holds trainable token embeddings, which are not supported")
        }
        guard let k = parts.lastIndex(where: { $0 == "lora_A" || $0 == "lora_B" }) else {
            throw AdapterError.unknownTarget(tensor: name)
        }
        let tail = parts[(k + 1)...]
        if tail.last == "bias" {
            throw AdapterError.unsupported("tensor '\(name)' is a LoRA bias (lora_bias); it is not supported")
        }
        guard tail.last == "weight", tail.count == 1 || tail.count == 2 else { throw AdapterError.unknownTarget(tensor: name) }
        let head = parts[..<k]
        guard head.count > 2, head[0] == "base_model", head[1] == "model" else { throw AdapterError.unknownTarget(tensor: name) }
        let last = head.last!
        if last == "lm_head" || last == "embed_tokens" {
            throw AdapterError.unsupported("tensor '\(name)' patches \(last); LoRA on the token embeddings or the output head is not supported")
        }
        module = head.dropFirst(2).joined(separator: ".")
        isA = parts[k] == "lora_A"
        adapter = tail.count == 2 ? tail.first : nil
    }
}

// MARK: - Regular expressions

/// A Python `re` pattern of the regular subset (see `PEFTLoRAConfig`), compiled to a Thompson NFA and matched by
/// simulating all states at once: time O(name length × program size), no backtracking.
struct PythonRegex: Sendable {
    /// Longest pattern accepted, in Unicode scalars.
    static let maxPatternLength = 4096
    /// Most NFA instructions (counted repetitions are expanded).
    static let maxProgramSize = 20_000
    /// Deepest group nesting.
    static let maxGroupDepth = 100

    struct SyntaxError: Error { let reason: String }

    /// One character class: a scalar matches when it is in one of the items (xor `negated`).
    struct CharSet: Sendable {
        enum Item: Sendable {
            case range(UInt32, UInt32)
            case digit(Bool), word(Bool), space(Bool)  // the Bool negates the item (\D, \W, \S)
            case notNewline
        }
        var items: [Item]
        var negated: Bool

        func matches(_ u: Unicode.Scalar) -> Bool {
            var hit = false
            for item in items {
                switch item {
                case .range(let lo, let hi): hit = lo <= u.value && u.value <= hi
                case .digit(let neg): hit = (u.properties.numericType == .decimal) != neg
                case .word(let neg): hit = (u == "_" || u.properties.isAlphabetic || u.properties.numericType != nil) != neg
                case .space(let neg): hit = u.properties.isWhitespace != neg
                case .notNewline: hit = u != "\n"
                }
                if hit { break }
            }
            return hit != negated
        }
    }

    private indirect enum Node {
        case empty
        case set(CharSet)
        case start, end
        case concat([Node])
        case alt([Node])
        case rep(Node, min: Int, max: Int?)
    }

    private enum Inst: Sendable {
        case set(CharSet)
        case split(Int, Int)
        case jump(Int)
        case start, end
        case match
    }

    /// The source pattern.
    let pattern: String
    private let program: [Inst]

    /// Compiles `pattern`.
    /// - Throws: `SyntaxError` for invalid syntax (as Python would refuse it) or syntax outside the supported
    ///   subset, and for patterns over the size limits.
    init(_ pattern: String) throws {
        self.pattern = pattern
        let scalars = Array(pattern.unicodeScalars)
        guard scalars.count <= Self.maxPatternLength else { throw SyntaxError(reason: "longer than \(Self.maxPatternLength) characters") }
        var parser = Parser(s: scalars)
        let node = try parser.alternation()
        guard parser.i == scalars.count else { throw SyntaxError(reason: "unbalanced parenthesis at position \(parser.i)") }
        var program: [Inst] = []
        try Self.emit(node, into: &program)
        program.append(.match)
        self.program = program
    }

    /// `re.fullmatch(pattern, s)`: the whole of `s` matches.
    func fullMatch(_ s: String) -> Bool { run(Array(s.unicodeScalars), full: true) }

    /// `re.match(pattern, s)`: some prefix of `s` (possibly all of it) matches.
    func prefixMatch(_ s: String) -> Bool { run(Array(s.unicodeScalars), full: false) }

    private func run(_ input: [Unicode.Scalar], full: Bool) -> Bool {
        var mark = [Int](repeating: -1, count: program.count)
        var current: [Int] = [], next: [Int] = []
        var stack: [Int] = []
        func close(_ pc: Int, at pos: Int, generation: Int, into list: inout [Int]) {
            stack.append(pc)
            while let pc = stack.popLast() {
                if mark[pc] == generation { continue }
                mark[pc] = generation
                switch program[pc] {
                case .jump(let t): stack.append(t)
                case .split(let a, let b): stack.append(b); stack.append(a)
                case .start: if pos == 0 { stack.append(pc + 1) }
                case .end: if pos == input.count { stack.append(pc + 1) }
                case .set, .match: list.append(pc)
                }
            }
        }
        close(0, at: 0, generation: 0, into: &current)
        var pos = 0
        while true {
            let matched = current.contains { if case .match = program[$0] { return true } else { return false } }
            if matched && (!full || pos == input.count) { return true }
            if pos == input.count || current.isEmpty { return false }
            next.removeAll(keepingCapacity: true)
            for pc in current {
                if case .set(let cs) = program[pc], cs.matches(input[pos]) {
                    close(pc + 1, at: pos + 1, generation: pos + 1, into: &next)
                }
            }
            swap(&current, &next)
            pos += 1
        }
    }

    private static func emit(_ node: Node, into p: inout [Inst]) throws {
        func append(_ i: Inst) throws {
            guard p.count < maxProgramSize else { throw SyntaxError(reason: "too complex (over \(maxProgramSize) states)") }
            p.append(i)
        }
        switch node {
        case .empty: break
        case .set(let cs): try append(.set(cs))
        case .start: try append(.start)
        case .end: try append(.end)
        case .concat(let items): for n in items { try emit(n, into: &p) }
        case .alt(let branches):
            // split L1, next; L1: b0; jump end; next: split L2, ... ; last branch
            var jumps: [Int] = []
            for (k, b) in branches.enumerated() {
                if k < branches.count - 1 {
                    let split = p.count
                    try append(.split(split + 1, -1))
                    try emit(b, into: &p)
                    jumps.append(p.count)
                    try append(.jump(-1))
                    p[split] = .split(split + 1, p.count)
                } else {
                    try emit(b, into: &p)
                }
            }
            for j in jumps { p[j] = .jump(p.count) }
        case .rep(let n, let min, let max):
            for _ in 0..<min { try emit(n, into: &p) }
            if let max {
                var splits: [Int] = []
                for _ in min..<max {
                    splits.append(p.count)
                    try append(.split(p.count + 1, -1))
                    try emit(n, into: &p)
                }
                for s in splits { p[s] = .split(s + 1, p.count) }
            } else {
                let loop = p.count
                try append(.split(loop + 1, -1))
                try emit(n, into: &p)
                try append(.jump(loop))
                p[loop] = .split(loop + 1, p.count)
            }
        }
    }

    /// Recursive-descent parser over the pattern's scalars (Python sre_parse rules for the supported subset).
    private struct Parser {
        let s: [Unicode.Scalar]
        var i = 0
        var depth = 0

        func error(_ reason: String) -> SyntaxError { SyntaxError(reason: "\(reason) at position \(i)") }

        mutating func alternation() throws -> Node {
            var branches = [try concatenation()]
            while i < s.count, s[i] == "|" {
                i += 1
                branches.append(try concatenation())
            }
            return branches.count == 1 ? branches[0] : .alt(branches)
        }

        mutating func concatenation() throws -> Node {
            var items: [Node] = []
            while i < s.count, s[i] != "|", s[i] != ")" {
                var atom = try self.atom()
                if let (lo, hi) = try quantifier() {
                    switch atom {
                    case .start, .end: throw error("nothing to repeat")
                    default: break
                    }
                    atom = .rep(atom, min: lo, max: hi)
                    if i < s.count, s[i] == "?" { i += 1 }  // lazy: same language
                    else if i < s.count, s[i] == "+" { throw error("possessive quantifiers are not supported") }
                    let save = i
                    if try quantifier() != nil { throw SyntaxError(reason: "multiple repeat at position \(save)") }
                }
                items.append(atom)
            }
            return items.isEmpty ? .empty : (items.count == 1 ? items[0] : .concat(items))
        }

        /// `*`, `+`, `?` or a well-formed `{m}`, `{m,}`, `{,n}`, `{m,n}`; nil (nothing consumed) otherwise.
        mutating func quantifier() throws -> (Int, Int?)? {
            guard i < s.count else { return nil }
            switch s[i] {
            case "*": i += 1; return (0, nil)
            case "+": i += 1; return (1, nil)
            case "?": i += 1; return (0, 1)
            case "{":
                var j = i + 1
                func number() -> (value: Int?, digits: Int) {
                    var v = 0, n = 0
                    while j < s.count, let d = s[j].properties.numericType == .decimal && s[j].isASCII ? Int(s[j].value) - 48 : nil {
                        if n < 9 { v = v * 10 + d }
                        n += 1
                        j += 1
                    }
                    return (n == 0 ? nil : (n > 9 ? Int.max : v), n)
                }
                let lo = number()
                var hi: (value: Int?, digits: Int) = lo
                var comma = false
                if j < s.count, s[j] == "," {
                    comma = true
                    j += 1
                    hi = number()
                }
                guard j < s.count, s[j] == "}" else { return nil }
                if !comma && lo.value == nil { return nil }
                let minV = lo.value ?? 0
                let maxV: Int? = comma ? hi.value : lo.value
                if let maxV, maxV < minV { throw error("min repeat greater than max repeat") }
                guard minV <= 1000, (maxV ?? 0) <= 1000 else { throw error("repeat counts over 1000 are not supported") }
                i = j + 1
                return (minV, maxV)
            default: return nil
            }
        }

        mutating func atom() throws -> Node {
            let c = s[i]
            switch c {
            case "(":
                i += 1
                depth += 1
                guard depth <= PythonRegex.maxGroupDepth else { throw error("groups nested too deeply") }
                if i < s.count, s[i] == "?" {
                    if i + 1 < s.count, s[i + 1] == ":" {
                        i += 2
                    } else if i + 2 < s.count, s[i + 1] == "P", s[i + 2] == "<" {
                        i += 3
                        let nameStart = i
                        while i < s.count, s[i] != ">" {
                            guard s[i] == "_" || s[i].properties.isAlphabetic || (i > nameStart && s[i].properties.numericType == .decimal) else {
                                throw error("bad character in group name")
                            }
                            i += 1
                        }
                        guard i < s.count, i > nameStart else { throw error("missing group name") }
                        i += 1
                    } else {
                        throw error("'(?' extensions other than (?:...) and (?P<name>...) are not supported")
                    }
                }
                let inner = try alternation()
                guard i < s.count, s[i] == ")" else { throw error("missing ), unterminated subpattern") }
                i += 1
                depth -= 1
                return inner
            case "[":
                return .set(try charClass())
            case ".":
                i += 1
                return .set(CharSet(items: [.notNewline], negated: false))
            case "^": i += 1; return .start
            case "$": i += 1; return .end
            case "\\":
                i += 1
                return try escape()
            case "*", "+", "?":
                throw error("nothing to repeat")
            case "{":
                let save = i
                if try quantifier() != nil { i = save; throw error("nothing to repeat") }
                i += 1
                return .set(CharSet(items: [.range(c.value, c.value)], negated: false))
            default:
                i += 1
                return .set(CharSet(items: [.range(c.value, c.value)], negated: false))
            }
        }

        /// After a backslash, outside a class: an anchor or a one-scalar class.
        mutating func escape() throws -> Node {
            guard i < s.count else { throw error("bad escape (end of pattern)") }
            let c = s[i]
            switch c {
            case "A": i += 1; return .start
            case "Z": i += 1; return .end
            case "b", "B": throw error("word boundaries (\\b, \\B) are not supported")
            default:
                let item = try classEscape()
                return .set(CharSet(items: [item], negated: false))
            }
        }

        /// An escape that stands for one class item (after the backslash).
        mutating func classEscape(inClass: Bool = false) throws -> CharSet.Item {
            guard i < s.count else { throw error("bad escape (end of pattern)") }
            let c = s[i]
            i += 1
            func scalar(_ v: UInt32) -> CharSet.Item { .range(v, v) }
            func hex(_ count: Int) throws -> CharSet.Item {
                guard count <= s.count - i else { throw error("incomplete escape \\\(c)") }
                var v: UInt32 = 0
                for _ in 0..<count {
                    guard let d = s[i].isASCII ? Int(String(s[i]), radix: 16) : nil else { throw error("incomplete escape \\\(c)") }
                    v = v * 16 + UInt32(d)
                    i += 1
                }
                guard Unicode.Scalar(v) != nil else { throw error("bad escape \\\(c)") }
                return scalar(v)
            }
            switch c {
            case "d": return .digit(false)
            case "D": return .digit(true)
            case "w": return .word(false)
            case "W": return .word(true)
            case "s": return .space(false)
            case "S": return .space(true)
            case "n": return scalar(0x0A)
            case "t": return scalar(0x09)
            case "r": return scalar(0x0D)
            case "f": return scalar(0x0C)
            case "v": return scalar(0x0B)
            case "a": return scalar(0x07)
            case "b" where inClass: return scalar(0x08)
            case "x": return try hex(2)
            case "u": return try hex(4)
            case "U": return try hex(8)
            default:
                if c.isASCII, c.properties.isAlphabetic || c.properties.numericType != nil {
                    i -= 1
                    throw error("unsupported escape \\\(c)")
                }
                return scalar(c.value)
            }
        }

        mutating func charClass() throws -> CharSet {
            i += 1  // '['
            var set = CharSet(items: [], negated: false)
            if i < s.count, s[i] == "^" { set.negated = true; i += 1 }
            var first = true
            while true {
                guard i < s.count else { throw error("unterminated character set") }
                let c = s[i]
                if c == "]" && !first { i += 1; return set }
                first = false
                let lo: CharSet.Item
                if c == "\\" {
                    i += 1
                    lo = try classEscape(inClass: true)
                } else {
                    i += 1
                    lo = .range(c.value, c.value)
                }
                if i + 1 < s.count, s[i] == "-", s[i + 1] != "]" {
                    i += 1
                    let hiItem: CharSet.Item
                    if s[i] == "\\" {
                        i += 1
                        hiItem = try classEscape(inClass: true)
                    } else {
                        hiItem = .range(s[i].value, s[i].value)
                        i += 1
                    }
                    guard case .range(let a, _) = lo, case .range(let b, _) = hiItem, a <= b else {
                        throw error("bad character range")
                    }
                    set.items.append(.range(a, b))
                } else {
                    set.items.append(lo)
                }
            }
        }
    }
}
