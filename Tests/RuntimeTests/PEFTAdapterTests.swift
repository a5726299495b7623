// Hugging Face PEFT LoRA adapters:
//  - the reference adapter in PEFT form (../shared/reference/gemma-3-270m-q4_k_m/lora-r8/peft) equals the same
//    adapter in llama.cpp GGUF form (the reference README: bit-identical f16 values, alpha 16, r 8) and reproduces
//    llama.cpp's lora-greedy.jsonl;
//  - adapters written here for the tiny llama of TinyLlamaTests give the logits of the merged weights
//    W + (alpha/r)·B·A computed in the test, and PEFT's configuration rules (use_rslora, rank_pattern,
//    alpha_pattern, layers_to_transform, target_modules as a regex, exclude_modules) pick the modules, ranks and
//    scales that PEFT's documented rules give (peft/tuners/tuners_utils.py check_target_module_exists,
//    peft/utils/other.py get_pattern_key), worked out by hand below;
//  - everything the loader does not apply is refused with an error naming the key or tensor.
import Foundation
import Runtime
import Testing

/// A PEFT adapter directory written by the test: adapter_config.json (text given here) and
/// adapter_model.safetensors (SafetensorsFixture).
struct PEFTFixture {
    /// Hugging Face projection paths by llama.cpp name.
    static let hfName = ["attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                         "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                         "ffn_down": "mlp.down_proj"]

    /// `{"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": targets, "bias": "none" <extra>}`.
    static func config(r: Int = 4, alpha: Double = 8, targets: String = "[\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", \"down_proj\"]",
                       extra: String = "") -> [UInt8] {
        Array("{\"peft_type\": \"LORA\", \"task_type\": \"CAUSAL_LM\", \"r\": \(r), \"lora_alpha\": \(alpha), \"target_modules\": \(targets), \"bias\": \"none\", \"use_dora\": false, \"modules_to_save\": null\(extra.isEmpty ? "" : ", " + extra)}".utf8)
    }

    /// Safetensors bytes for modules keyed by GGUF tensor name (`blk.<l>.<proj>.weight`), as PEFT names them:
    /// `<prefix><l>.<hf path>.lora_A<suffix>` with A `[r, n_in]` and B `[n_out, r]` in F32 (or BF16).
    /// The modules are given in the tiny llama's GGUF row order; PEFT files hold the Hugging Face order, so with
    /// `toHFLayout` the lora_B rows of attn_q / attn_k are put back in that order (inverse of llama.cpp's converter
    /// permutation, n_head 4 / n_head_kv 2), and the loader must undo it. Pass false for modules already in HF order.
    static func weights(_ mods: [String: (a: [Float], b: [Float], rank: Int, scale: Float)],
                        prefix: String = "base_model.model.model.layers.", suffix: String = ".weight",
                        bf16: Bool = false, toHFLayout: Bool = true) -> SafetensorsFixture {
        var f = SafetensorsFixture()
        for (name, m) in mods.sorted(by: { $0.key < $1.key }) {
            let parts = name.split(separator: ".")
            let l = parts[1], proj = hfName[String(parts[2])]!
            let nIn = m.a.count / m.rank, nOut = m.b.count / m.rank
            let base = "\(prefix)\(l).\(proj)"
            var b = m.b
            if toHFLayout, parts[2] == "attn_q" || parts[2] == "attn_k" {
                let heads = parts[2] == "attn_q" ? TinyLlama.nHead : TinyLlama.nHeadKV
                b = LlamaQKPermutation.ggufToHF(b, rows: nOut, cols: m.rank, nHead: heads)
            }
            if bf16 {
                f.add(base + ".lora_A" + suffix, dtype: "BF16", shape: [m.rank, nIn], data: SafetensorsFixture.bf16(m.a).bytes)
                f.add(base + ".lora_B" + suffix, dtype: "BF16", shape: [nOut, m.rank], data: SafetensorsFixture.bf16(b).bytes)
            } else {
                f.add(base + ".lora_A" + suffix, shape: [m.rank, nIn], floats: m.a)
                f.add(base + ".lora_B" + suffix, shape: [nOut, m.rank], floats: b)
            }
        }
        return f
    }

    /// Writes a directory; returns its path.
    static func write(config: [UInt8], weights: [UInt8]) throws -> String {
        let dir = NSTemporaryDirectory() + "peft-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Data(config).write(to: URL(fileURLWithPath: dir + "/adapter_config.json"))
        try Data(weights).write(to: URL(fileURLWithPath: dir + "/adapter_model.safetensors"))
        return dir
    }
}

/// The reference adapter in both formats on the default model.
@Suite(.serialized) struct PEFTReferenceTests {
    static var peftDir: String { TestPaths.referenceDir.appendingPathComponent("lora-r8/peft").path }

    static func peftAdapter(_ model: Model) throws -> LoRAAdapter {
        try model.loadPEFTAdapter(directory: peftDir, name: "r8-peft")
    }

    @Test func peftEqualsGGUF() throws {
        let model = try SharedModel.get()
        let peft = try Self.peftAdapter(model)
        let gguf = try ReferenceLoRATests.adapter(model)
        // README: 18 layers × 7 projections, r = 8, lora_alpha = 16 (scale 2), the same f16 values in both files.
        #expect(peft.modules.count == 126)
        #expect(Set(peft.modules.keys) == Set(gguf.modules.keys))
        #expect(peft.rank == 8 && gguf.rank == 8)
        #expect(peft.alpha == 16 && gguf.alpha == 16)
        #expect(!peft.usesRSLoRA && !gguf.usesRSLoRA)
        #expect(peft.targets == ["attn_k", "attn_output", "attn_q", "attn_v", "ffn_down", "ffn_gate", "ffn_up"])
        #expect(peft.targets == gguf.targets)
        var mismatched: [ModuleKey] = []
        for (key, p) in peft.modules {
            guard let g = gguf.modules[key] else { continue }
            #expect(p.scale == 2 && g.scale == 2)
            if p.rank != g.rank || p.nIn != g.nIn || p.nOut != g.nOut || p.a != g.a || p.b != g.b { mismatched.append(key) }
        }
        #expect(mismatched.isEmpty, "modules differing between the PEFT and GGUF files: \(mismatched.prefix(5))")
        // Layer 0 attn_q: A [8, 640], B [1024, 8] (README example: lora_a ne=[640, 8], lora_b ne=[8, 1024]).
        let q0 = try #require(peft.modules[ModuleKey(layer: 0, projection: .attnQ)])
        #expect(q0.rank == 8 && q0.nIn == 640 && q0.nOut == 1024)
    }

    /// Prompts whose reference greedy run has steps to check (the full set runs for the GGUF adapter in
    /// ReferenceLoRATests; the modules are asserted equal above).
    @Test func peftMatchesLlamaCpp() throws {
        let wanted: Set = ["code_python", "list_fruits", "history", "code_numpy", "chat_template"]
        let records = try GreedyRecord.load("lora-greedy.jsonl").filter { wanted.contains($0.name) }
        #expect(records.count == wanted.count)
        try ReferenceGreedyTests.check(records) { model in AdapterSet(try Self.peftAdapter(model), scale: 1) }
    }

    @Test func useRSLoRAScalesByAlphaOverSqrtRank() throws {
        let model = try SharedModel.get()
        let text = try String(contentsOfFile: Self.peftDir + "/adapter_config.json", encoding: .utf8)
        let rs = text.replacingOccurrences(of: "\"use_rslora\": false", with: "\"use_rslora\": true")
        #expect(rs != text)
        let weights = try SafetensorsFile(path: Self.peftDir + "/adapter_model.safetensors")
        let adapter = try model.loadPEFTAdapter(config: Array(rs.utf8), weights: weights, name: "rs")
        #expect(adapter.usesRSLoRA)
        #expect(adapter.modules.count == 126)
        let expected = Float(16 / 8.0.squareRoot())
        #expect(adapter.modules.values.allSatisfy { $0.scale == expected })
        let plain = try model.loadPEFTAdapter(config: Array(text.utf8), weights: weights, name: "plain")
        #expect(plain.modules.values.allSatisfy { $0.scale == 2 })
    }
}

/// Synthetic adapters on the tiny llama.
@Suite struct PEFTAdapterTests {
    static let opts = ModelOptions(threads: 2, kvCacheType: .f32)

    /// Loads the tiny base and runs `body`; the file is removed afterwards.
    /// Tests run in parallel: each passes its own `seed`, which also names the model file.
    @discardableResult
    static func withBase<T>(seed: UInt64, _ body: (Model) throws -> T) throws -> T {
        let tiny = try TinyLlama(seed: seed, type: .f32)
        defer { unlink(tiny.path) }
        return try body(Model.load(path: tiny.path, options: opts))
    }

    static func load(_ model: Model, config: [UInt8], weights: SafetensorsFixture) throws -> LoRAAdapter {
        try model.loadPEFTAdapter(config: config, weights: SafetensorsFile(bytes: weights.bytes()), name: "t")
    }

    static func allKeys(layers: [Int]) -> Set<ModuleKey> {
        Set(layers.flatMap { l in Projection.allCases.map { ModuleKey(layer: l, projection: $0) } })
    }

    /// Expects `body` to throw `expected` exactly.
    static func expectRefusal(_ expected: AdapterError, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
        do {
            try body()
            Issue.record("accepted; expected \(expected)", sourceLocation: sourceLocation)
        } catch let e as AdapterError {
            #expect(e == expected, sourceLocation: sourceLocation)
        } catch {
            Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
        }
    }

    /// Expects `AdapterError.unsupported` / `.invalidConfig` whose message contains every string of `mentions`.
    static func expectMessage(_ kind: String, _ mentions: [String], sourceLocation: SourceLocation = #_sourceLocation,
                              _ body: () throws -> Void) {
        do {
            try body()
            Issue.record("accepted; expected \(kind) mentioning \(mentions)", sourceLocation: sourceLocation)
        } catch let e as AdapterError {
            let message: String
            switch e {
            case .unsupported(let m) where kind == "unsupported": message = m
            case .invalidConfig(let m) where kind == "invalidConfig": message = m
            default:
                Issue.record("expected \(kind), got \(e)", sourceLocation: sourceLocation)
                return
            }
            for m in mentions { #expect(message.contains(m), "'\(message)' does not mention '\(m)'", sourceLocation: sourceLocation) }
            #expect(e.description.contains(message), sourceLocation: sourceLocation)
        } catch {
            Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
        }
    }

    // MARK: Equivalence with merged weights

    @Test func adapterEqualsMergedWeights() throws {
        let mods = TinyLlamaLoRATests.modules(seed: 31)  // r 4, alpha 8: scale 2
        let base = try TinyLlama(seed: 30, type: .f32)
        let merged = try TinyLlama(seed: 30, type: .f32, merge: mods)
        let dir = try PEFTFixture.write(config: PEFTFixture.config(r: 4, alpha: 8), weights: PEFTFixture.weights(mods).bytes())
        defer { unlink(base.path); unlink(merged.path); try? FileManager.default.removeItem(atPath: dir) }
        let baseModel = try Model.load(path: base.path, options: Self.opts)
        let mergedModel = try Model.load(path: merged.path, options: Self.opts)
        let adapter = try baseModel.loadPEFTAdapter(directory: dir, name: "t")
        #expect(adapter.modules.count == 7 * TinyLlama.nLayer)
        #expect(adapter.modules.values.allSatisfy { $0.scale == 2 && $0.rank == 4 })
        #expect(adapter.alpha == 8 && adapter.rank == 4)
        let withAdapter = try TinyLlamaLoRATests.logits(baseModel, TinyLlamaLoRATests.tokens, adapter: AdapterSet(adapter, scale: 1))
        let withMerged = try TinyLlamaLoRATests.logits(mergedModel, TinyLlamaLoRATests.tokens, adapter: nil)
        let plain = try TinyLlamaLoRATests.logits(baseModel, TinyLlamaLoRATests.tokens, adapter: nil)
        let diff = zip(withAdapter, withMerged).map { abs($0 - $1) }.max() ?? 0
        let effect = zip(plain, withMerged).map { abs($0 - $1) }.max() ?? 0
        #expect(effect > 0.1, "the adapter should change the logits (max change \(effect))")
        #expect(diff < 1e-3, "PEFT adapter vs merged weights: max |Δlogit| = \(diff)")
    }

    /// BF16 factors: the reference merges the bfloat16 values the file holds.
    @Test func bf16AdapterEqualsMergedWeights() throws {
        var mods = TinyLlamaLoRATests.modules(seed: 33)
        for (k, m) in mods { mods[k] = (SafetensorsFixture.bf16(m.a).values, SafetensorsFixture.bf16(m.b).values, m.rank, m.scale) }
        let base = try TinyLlama(seed: 32, type: .f32)
        let merged = try TinyLlama(seed: 32, type: .f32, merge: mods)
        defer { unlink(base.path); unlink(merged.path) }
        let baseModel = try Model.load(path: base.path, options: Self.opts)
        let mergedModel = try Model.load(path: merged.path, options: Self.opts)
        let adapter = try Self.load(baseModel, config: PEFTFixture.config(), weights: PEFTFixture.weights(mods, bf16: true))
        for (name, m) in mods {
            let parts = name.split(separator: ".")
            let key = ModuleKey(layer: Int(parts[1])!, projection: Projection(rawValue: String(parts[2]))!)
            #expect(adapter.modules[key]?.a == m.a && adapter.modules[key]?.b == m.b)
        }
        let a = try TinyLlamaLoRATests.logits(baseModel, TinyLlamaLoRATests.tokens, adapter: AdapterSet(adapter, scale: 1))
        let b = try TinyLlamaLoRATests.logits(mergedModel, TinyLlamaLoRATests.tokens, adapter: nil)
        let diff = zip(a, b).map { abs($0 - $1) }.max() ?? 0
        #expect(diff < 1e-3, "bf16 PEFT adapter vs merged weights: max |Δlogit| = \(diff)")
    }

    /// Gemma 3 multimodal module prefixes and an adapter name kept in the tensor names load the same modules.
    @Test func alternativeTensorNames() throws {
        let mods = TinyLlamaLoRATests.modules(seed: 34)
        try Self.withBase(seed: 201) { model in
            let standard = try Self.load(model, config: PEFTFixture.config(), weights: PEFTFixture.weights(mods))
            for (prefix, suffix) in [("base_model.model.model.language_model.layers.", ".weight"),
                                     ("base_model.model.language_model.model.layers.", ".weight"),
                                     ("base_model.model.model.layers.", ".default.weight")] {
                let other = try Self.load(model, config: PEFTFixture.config(), weights: PEFTFixture.weights(mods, prefix: prefix, suffix: suffix))
                #expect(Set(other.modules.keys) == Set(standard.modules.keys), "\(prefix) \(suffix)")
                #expect(other.modules.allSatisfy { standard.modules[$0.key]?.a == $0.value.a && standard.modules[$0.key]?.b == $0.value.b })
            }
        }
    }

    // MARK: Configuration rules

    /// rank_pattern / alpha_pattern: the first key k (file order) with the module name matching `(.*\.)?(k)$`.
    @Test func rankAndAlphaPatterns() throws {
        var mods = TinyLlamaLoRATests.modules(seed: 35)
        // Layer 0 q_proj trained at rank 2, layer 1 v_proj at rank 6.
        var rng = SplitMix(36)
        let D = TinyLlama.nEmbd, q = TinyLlama.nHead * TinyLlama.headDim, kv = TinyLlama.nHeadKV * TinyLlama.headDim
        mods["blk.0.attn_q.weight"] = ((0..<(2 * D)).map { _ in rng.nextFloat() }, (0..<(q * 2)).map { _ in rng.nextFloat() }, 2, 0)
        mods["blk.1.attn_v.weight"] = ((0..<(6 * D)).map { _ in rng.nextFloat() }, (0..<(kv * 6)).map { _ in rng.nextFloat() }, 6, 0)
        let extra = """
            "rank_pattern": {"model.layers.0.self_attn.q_proj": 2, "^model\\\\.layers\\\\.1\\\\..*v_proj": 6},
            "alpha_pattern": {"layers\\\\.1\\\\.mlp\\\\.down_proj": 4, "down_proj": 16, "layers.0.self_attn.q_proj": 32}
            """
        let adapter = try Self.withBase(seed: 202) { try Self.load($0, config: PEFTFixture.config(r: 4, alpha: 8, extra: extra), weights: PEFTFixture.weights(mods)) }
        #expect(adapter.modules.count == 14)
        func module(_ l: Int, _ p: Projection) -> LoRAModule? { adapter.modules[ModuleKey(layer: l, projection: p)] }
        // By hand: layer 0 q_proj: rank 2 (first rank key), alpha 32 (third alpha key) → 16.
        #expect(module(0, .attnQ)?.rank == 2 && module(0, .attnQ)?.scale == 16)
        // Layer 1 v_proj: rank 6 (second rank key, anchored regex), alpha 8 → 8/6.
        #expect(module(1, .attnV)?.rank == 6 && module(1, .attnV)?.scale == Float(8.0 / 6.0))
        // down_proj: layer 1 takes the first alpha key (4 → 1), layer 0 the second (16 → 4).
        #expect(module(1, .ffnDown)?.scale == 1 && module(0, .ffnDown)?.scale == 4)
        // Others: r 4, alpha 8 → 2. "layers.0.self_attn.q_proj" must not match layer 1 (suffix after a dot only).
        #expect(module(1, .attnQ)?.rank == 4 && module(1, .attnQ)?.scale == 2)
        #expect(module(0, .attnV)?.rank == 4 && module(0, .attnK)?.scale == 2 && module(1, .ffnUp)?.scale == 2)
        #expect(adapter.rank == 6)
        #expect(module(0, .attnQ)?.a == mods["blk.0.attn_q.weight"]?.a)
    }

    @Test func rsLoRAWithRankPattern() throws {
        var mods = TinyLlamaLoRATests.modules(seed: 37)
        var rng = SplitMix(38)
        let D = TinyLlama.nEmbd
        mods["blk.1.ffn_gate.weight"] = ((0..<(9 * D)).map { _ in rng.nextFloat() }, (0..<(TinyLlama.nFF * 9)).map { _ in rng.nextFloat() }, 9, 0)
        let adapter = try Self.withBase(seed: 203) {
            try Self.load($0, config: PEFTFixture.config(r: 4, alpha: 8, extra: "\"use_rslora\": true, \"rank_pattern\": {\"gate_proj\": 9}"),
                          weights: PEFTFixture.weights(mods.filter { !$0.key.contains("ffn_gate") || $0.key.hasPrefix("blk.1.") }))
        }
        // rsLoRA: alpha / sqrt(r): 8/2 = 4 at rank 4, 8/3 at rank 9.
        #expect(adapter.usesRSLoRA)
        #expect(adapter.modules[ModuleKey(layer: 1, projection: .ffnGate)]?.scale == Float(8.0 / 3.0))
        #expect(adapter.modules[ModuleKey(layer: 0, projection: .attnQ)]?.scale == 4)
        #expect(adapter.modules[ModuleKey(layer: 0, projection: .ffnGate)] == nil)
        #expect(adapter.modules.count == 13)
    }

    /// Expects `.untargetedTensors` listing exactly the tensors of `modules` (`blk.<l>.<proj>.weight`), both factors.
    static func expectUntargeted(_ modules: [String], sourceLocation: SourceLocation = #_sourceLocation,
                                 _ body: () throws -> Void) {
        let names = modules.flatMap { m -> [String] in
            let parts = m.split(separator: ".")
            let base = "base_model.model.model.layers.\(parts[1]).\(PEFTFixture.hfName[String(parts[2])]!)"
            return [base + ".lora_A.weight", base + ".lora_B.weight"]
        }.sorted()
        expectRefusal(.untargetedTensors(names), sourceLocation: sourceLocation, body)
    }

    static func layer(_ l: Int) -> [String] { Projection.allCases.map { "blk.\(l).\($0.rawValue).weight" } }

    @Test func layersToTransform() throws {
        let mods = TinyLlamaLoRATests.modules(seed: 39)
        let w = PEFTFixture.weights(mods)
        let w0 = PEFTFixture.weights(mods.filter { $0.key.hasPrefix("blk.0.") })
        let w1 = PEFTFixture.weights(mods.filter { $0.key.hasPrefix("blk.1.") })
        try Self.withBase(seed: 204) { model in
            let one = try Self.load(model, config: PEFTFixture.config(extra: "\"layers_to_transform\": 1"), weights: w1)
            #expect(Set(one.modules.keys) == Self.allKeys(layers: [1]))
            let list = try Self.load(model, config: PEFTFixture.config(extra: "\"layers_to_transform\": [0], \"layers_pattern\": \"layers\""), weights: w0)
            #expect(Set(list.modules.keys) == Self.allKeys(layers: [0]))
            let both = try Self.load(model, config: PEFTFixture.config(extra: "\"layers_to_transform\": [0, 1, 5]"), weights: w)
            #expect(Set(both.modules.keys) == Self.allKeys(layers: [0, 1]))
            // Weights for a layer the configuration leaves out: refused, naming every such tensor (they used to be
            // dropped silently, serving an adapter that was not the one trained).
            Self.expectUntargeted(Self.layer(0)) {
                _ = try Self.load(model, config: PEFTFixture.config(extra: "\"layers_to_transform\": 1"), weights: w)
            }
            Self.expectUntargeted(Self.layer(1)) {
                _ = try Self.load(model, config: PEFTFixture.config(extra: "\"layers_to_transform\": [0], \"layers_pattern\": \"layers\""), weights: w)
            }
            // A layers_pattern the module names do not contain selects nothing (PEFT: no layer index found).
            Self.expectUntargeted(Self.layer(0)) {
                _ = try Self.load(model, config: PEFTFixture.config(extra: "\"layers_to_transform\": [0], \"layers_pattern\": \"h\""), weights: w0)
            }
            Self.expectRefusal(.empty) {
                _ = try Self.load(model, config: PEFTFixture.config(extra: "\"layers_to_transform\": [0], \"layers_pattern\": \"h\""), weights: SafetensorsFixture())
            }
            // The message names the tensors (the first 8) and how many there are.
            let names = (0..<10).map { "base_model.model.model.layers.\($0).mlp.up_proj.lora_A.weight" }
            let message = AdapterError.untargetedTensors(names).description
            #expect(message.contains("10 tensor(s)") && message.contains(names[0]) && message.contains(names[7]))
            #expect(!message.contains(names[8]) && message.contains("and 2 more") && message.contains("layers_to_transform"))
            // PEFT refuses layers_to_transform with a regex target_modules.
            Self.expectMessage("invalidConfig", ["layers_to_transform"]) {
                _ = try Self.load(model, config: PEFTFixture.config(targets: "\".*q_proj\"", extra: "\"layers_to_transform\": [0]"), weights: w)
            }
        }
    }

    @Test func targetModulesRegexAndExclusions() throws {
        let mods = TinyLlamaLoRATests.modules(seed: 40)
        let w = PEFTFixture.weights(mods)
        func only(_ names: Set<String>) -> SafetensorsFixture { PEFTFixture.weights(mods.filter { names.contains($0.key) }) }
        let allNames = mods.keys.sorted()
        try Self.withBase(seed: 205) { model in
            let qv0: Set = ["blk.0.attn_q.weight", "blk.0.attn_v.weight"]
            let reConfig = PEFTFixture.config(targets: "\".*\\\\.layers\\\\.0\\\\.self_attn\\\\.(q|v)_proj\"")
            let re = try Self.load(model, config: reConfig, weights: only(qv0))
            #expect(Set(re.modules.keys) == [ModuleKey(layer: 0, projection: .attnQ), ModuleKey(layer: 0, projection: .attnV)])
            #expect(re.targets == ["attn_q", "attn_v"])
            Self.expectUntargeted(allNames.filter { !qv0.contains($0) }) { _ = try Self.load(model, config: reConfig, weights: w) }
            // Full match: "q_proj" alone matches no full module name.
            Self.expectUntargeted(allNames) { _ = try Self.load(model, config: PEFTFixture.config(targets: "\"q_proj\""), weights: w) }
            let all = try Self.load(model, config: PEFTFixture.config(targets: "\"all-linear\""), weights: w)
            #expect(all.modules.count == 14)
            let qd: Set = ["blk.0.attn_q.weight", "blk.1.attn_q.weight", "blk.0.ffn_down.weight", "blk.1.ffn_down.weight"]
            let listConfig = PEFTFixture.config(targets: "[\"q_proj\", \"mlp.down_proj\"]")
            let list = try Self.load(model, config: listConfig, weights: only(qd))
            #expect(Set(list.modules.keys) == [ModuleKey(layer: 0, projection: .attnQ), ModuleKey(layer: 1, projection: .attnQ),
                                               ModuleKey(layer: 0, projection: .ffnDown), ModuleKey(layer: 1, projection: .ffnDown)])
            Self.expectUntargeted(allNames.filter { !qd.contains($0) }) { _ = try Self.load(model, config: listConfig, weights: w) }
            let gone: Set = ["blk.0.ffn_down.weight", "blk.1.ffn_down.weight", "blk.1.attn_k.weight"]
            let exConfig = PEFTFixture.config(extra: "\"exclude_modules\": [\"down_proj\", \"model.layers.1.self_attn.k_proj\"]")
            let excluded = try Self.load(model, config: exConfig, weights: only(Set(allNames).subtracting(gone)))
            #expect(Set(excluded.modules.keys) == Self.allKeys(layers: [0, 1])
                .subtracting([ModuleKey(layer: 0, projection: .ffnDown), ModuleKey(layer: 1, projection: .ffnDown), ModuleKey(layer: 1, projection: .attnK)]))
            Self.expectUntargeted(gone.sorted()) { _ = try Self.load(model, config: exConfig, weights: w) }
            // A pattern that takes exponential time in a backtracking matcher: matches nothing here.
            Self.expectUntargeted(allNames) {
                _ = try Self.load(model, config: PEFTFixture.config(targets: "\"(.*.*)*(.*.*)*Z\""), weights: w)
            }
            // Backreferences and lookaround are refused, not misread.
            Self.expectMessage("invalidConfig", ["target_modules"]) {
                _ = try Self.load(model, config: PEFTFixture.config(targets: "\"(q)\\\\1_proj\""), weights: w)
            }
            Self.expectMessage("invalidConfig", ["target_modules"]) {
                _ = try Self.load(model, config: PEFTFixture.config(targets: "\"(?=.*q).*\""), weights: w)
            }
            // fan_in_fan_out is reset to false by PEFT for nn.Linear: the same modules load.
            let fifo = try Self.load(model, config: PEFTFixture.config(extra: "\"fan_in_fan_out\": true"), weights: w)
            #expect(Set(fifo.modules.keys) == Self.allKeys(layers: [0, 1]))
        }
    }

    // MARK: Refusals

    @Test func refusesDoRA() throws {
        let w = PEFTFixture.weights(TinyLlamaLoRATests.modules(seed: 41))
        try Self.withBase(seed: 206) { model in
            Self.expectMessage("unsupported", ["use_dora"]) {
                _ = try Self.load(model, config: PEFTFixture.config(extra: "\"use_dora\": true").replacingDoRA(), weights: w)
            }
            var withMagnitude = w
            withMagnitude.add("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", shape: [64], floats: [Float](repeating: 1, count: 64))
            Self.expectMessage("unsupported", ["lora_magnitude_vector", "DoRA"]) {
                _ = try Self.load(model, config: PEFTFixture.config(), weights: withMagnitude)
            }
        }
    }

    @Test func refusesModulesToSave() throws {
        let w = PEFTFixture.weights(TinyLlamaLoRATests.modules(seed: 42))
        try Self.withBase(seed: 207) { model in
            let config = Array(String(decoding: PEFTFixture.config(), as: UTF8.self)
                .replacingOccurrences(of: "\"modules_to_save\": null", with: "\"modules_to_save\": [\"lm_head\"]").utf8)
            Self.expectMessage("unsupported", ["modules_to_save"]) { _ = try Self.load(model, config: config, weights: w) }
        }
    }

    @Test func refusesEmbeddingTarget() throws {
        let w = PEFTFixture.weights(TinyLlamaLoRATests.modules(seed: 43))
        try Self.withBase(seed: 208) { model in
            Self.expectMessage("unsupported", ["embed_tokens"]) {
                _ = try Self.load(model, config: PEFTFixture.config(targets: "[\"q_proj\", \"embed_tokens\"]"), weights: w)
            }
            Self.expectMessage("unsupported", ["lm_head"]) {
                _ = try Self.load(model, config: PEFTFixture.config(targets: "\".*(q_proj|lm_head)\""), weights: w)
            }
            var embedding = w
            embedding.add("base_model.model.model.embed_tokens.lora_embedding_A", shape: [4, 300], floats: [Float](repeating: 0, count: 1200))
            Self.expectMessage("unsupported", ["base_model.model.model.embed_tokens.lora_embedding_A"]) {
                _ = try Self.load(model, config: PEFTFixture.config(), weights: embedding)
            }
        }
    }

    @Test func refusesLMHeadTensor() throws {
        var w = PEFTFixture.weights(TinyLlamaLoRATests.modules(seed: 44))
        w.add("base_model.model.lm_head.lora_A.weight", shape: [4, 64], floats: [Float](repeating: 0, count: 256))
        w.add("base_model.model.lm_head.lora_B.weight", shape: [300, 4], floats: [Float](repeating: 0, count: 1200))
        try Self.withBase(seed: 209) { model in
            Self.expectMessage("unsupported", ["base_model.model.lm_head.lora_A.weight", "output head"]) {
                _ = try Self.load(model, config: PEFTFixture.config(), weights: w)
            }
        }
    }

    @Test func refusesBiasAll() throws {
        let w = PEFTFixture.weights(TinyLlamaLoRATests.modules(seed: 45))
        try Self.withBase(seed: 210) { model in
            let config = Array(String(decoding: PEFTFixture.config(), as: UTF8.self)
                .replacingOccurrences(of: "\"bias\": \"none\"", with: "\"bias\": \"all\"").utf8)
            Self.expectMessage("unsupported", ["bias", "all"]) { _ = try Self.load(model, config: config, weights: w) }
            var withBias = w
            withBias.add("base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias", shape: [64], floats: [Float](repeating: 0, count: 64))
            Self.expectMessage("unsupported", ["base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias"]) {
                _ = try Self.load(model, config: PEFTFixture.config(), weights: withBias)
            }
        }
    }

    @Test func refusesOtherPEFTTypesAndVariants() throws {
        let w = PEFTFixture.weights(TinyLlamaLoRATests.modules(seed: 46))
        try Self.withBase(seed: 211) { model in
            let ia3 = Array(String(decoding: PEFTFixture.config(), as: UTF8.self)
                .replacingOccurrences(of: "\"peft_type\": \"LORA\"", with: "\"peft_type\": \"IA3\"").utf8)
            Self.expectMessage("unsupported", ["IA3"]) { _ = try Self.load(model, config: ia3, weights: w) }
            Self.expectMessage("unsupported", ["lora_bias"]) {
                _ = try Self.load(model, config: PEFTFixture.config(extra: "\"lora_bias\": true"), weights: w)
            }
            Self.expectMessage("unsupported", ["alora_invocation_tokens"]) {
                _ = try Self.load(model, config: PEFTFixture.config(extra: "\"alora_invocation_tokens\": [5, 6]"), weights: w)
            }
            Self.expectMessage("invalidConfig", ["'r'"]) { _ = try Self.load(model, config: PEFTFixture.config(r: 0), weights: w) }
            Self.expectMessage("invalidConfig", ["JSON"]) { _ = try Self.load(model, config: Array("{\"r\": 4,}".utf8), weights: w) }
            Self.expectMessage("invalidConfig", ["peft_type"]) { _ = try Self.load(model, config: Array("{\"r\": 4}".utf8), weights: w) }
        }
    }

    @Test func refusesMissingLoRAB() throws {
        var mods = TinyLlamaLoRATests.modules(seed: 47)
        mods = mods.filter { $0.key.hasPrefix("blk.0.attn_q") }
        var w = SafetensorsFixture()
        let m = try #require(mods["blk.0.attn_q.weight"])
        w.add("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", shape: [4, 64], floats: m.a)
        try Self.withBase(seed: 212) { model in
            Self.expectRefusal(.missingPair(tensor: "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")) {
                _ = try Self.load(model, config: PEFTFixture.config(), weights: w)
            }
        }
    }

    @Test func refusesWrongShape() throws {
        let mods = TinyLlamaLoRATests.modules(seed: 48)
        try Self.withBase(seed: 213) { model in
            // lora_A of layer 1 k_proj stored [64, 4] (transposed).
            var w = PEFTFixture.weights(mods)
            let name = "base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight"
            let i = try #require(w.entries.firstIndex { $0.name == name })
            w.entries[i].shape = [64, 4]
            do {
                _ = try Self.load(model, config: PEFTFixture.config(), weights: w)
                Issue.record("accepted a transposed lora_A")
            } catch AdapterError.shapeMismatch(let tensor, let detail) {
                #expect(tensor == name)
                #expect(detail.contains("[64, 4]") && detail.contains("[4, 64]"), "\(detail)")
            }
            // Rank 4 in the file, r = 8 in the config.
            do {
                _ = try Self.load(model, config: PEFTFixture.config(r: 8, alpha: 16), weights: PEFTFixture.weights(mods))
                Issue.record("accepted rank 4 tensors under r = 8")
            } catch AdapterError.shapeMismatch(let tensor, let detail) {
                #expect(tensor == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
                #expect(detail.contains("r = 8"), "\(detail)")
            }
            // Rank over the limit.
            Self.expectRefusal(.rankOutOfRange(tensor: "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", rank: 300, limit: Model.maxLoRARank)) {
                _ = try Self.load(model, config: PEFTFixture.config(r: 300), weights: PEFTFixture.weights(mods))
            }
        }
    }

    @Test func refusesNaN() throws {
        var mods = TinyLlamaLoRATests.modules(seed: 49)
        mods["blk.1.ffn_up.weight"]?.b[17] = .nan
        try Self.withBase(seed: 214) { model in
            Self.expectRefusal(.nonFinite(tensor: "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight")) {
                _ = try Self.load(model, config: PEFTFixture.config(), weights: PEFTFixture.weights(mods))
            }
        }
    }

    @Test func refusesTargetAbsentFromBase() throws {
        var mods = TinyLlamaLoRATests.modules(seed: 50)
        mods["blk.99.attn_q.weight"] = mods["blk.0.attn_q.weight"]
        var w = PEFTFixture.weights(mods)
        try Self.withBase(seed: 215) { model in
            Self.expectRefusal(.unknownTarget(tensor: "base_model.model.model.layers.99.self_attn.q_proj.lora_A.weight")) {
                _ = try Self.load(model, config: PEFTFixture.config(), weights: w)
            }
            // A module that is no projection (targeted by name).
            w = PEFTFixture.weights(TinyLlamaLoRATests.modules(seed: 50))
            w.add("base_model.model.model.layers.0.self_attn.q_norm.lora_A.weight", shape: [4, 16], floats: [Float](repeating: 0, count: 64))
            Self.expectRefusal(.unknownTarget(tensor: "base_model.model.model.layers.0.self_attn.q_norm.lora_A.weight")) {
                _ = try Self.load(model, config: PEFTFixture.config(targets: "[\"q_proj\", \"q_norm\"]"), weights: w)
            }
            // Names outside base_model.model.
            var odd = SafetensorsFixture()
            odd.add("model.layers.0.self_attn.q_proj.lora_A.weight", shape: [1], floats: [0])
            Self.expectRefusal(.unknownTarget(tensor: "model.layers.0.self_attn.q_proj.lora_A.weight")) {
                _ = try Self.load(model, config: PEFTFixture.config(), weights: odd)
            }
        }
    }

    @Test func refusesEmptyAdapter() throws {
        try Self.withBase(seed: 216) { model in
            Self.expectRefusal(.empty) { _ = try Self.load(model, config: PEFTFixture.config(), weights: SafetensorsFixture()) }
        }
    }

    @Test func refusesSeveralAdapterNames() throws {
        let mods = TinyLlamaLoRATests.modules(seed: 51).filter { $0.key.hasPrefix("blk.0.") }
        var w = PEFTFixture.weights(mods, suffix: ".default.weight")
        for e in PEFTFixture.weights(mods.filter { $0.key.hasPrefix("blk.0.attn_q") }, suffix: ".other.weight").entries { w.entries.append(e) }
        try Self.withBase(seed: 217) { model in
            Self.expectMessage("unsupported", ["default", "other"]) { _ = try Self.load(model, config: PEFTFixture.config(), weights: w) }
        }
    }

    @Test func refusesTruncatedSafetensors() throws {
        let fixture = PEFTFixture.weights(TinyLlamaLoRATests.modules(seed: 52))
        let bytes = fixture.bytes()
        let dir = try PEFTFixture.write(config: PEFTFixture.config(), weights: Array(bytes.dropLast(10)))
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.withBase(seed: 218) { model in
            do {
                _ = try model.loadPEFTAdapter(directory: dir, name: "t")
                Issue.record("accepted a truncated file")
            } catch SafetensorsError.tensorOutOfBounds(let tensor, _, let bufferSize) {
                let expectedBufferSize = bytes.count - 10 - 8 - fixture.headerJSON().utf8.count
                // The fixture writes tensors sorted by GGUF name; the last one is blk.1.ffn_up's lora_B.
                #expect(tensor == "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight")
                #expect(bufferSize == expectedBufferSize)
            }
        }
    }

    @Test func refusesHeaderLengthPastFile() throws {
        let bytes = SafetensorsFixture.file(headerLength: 1 << 20, rest: Array("{}".utf8))
        let dir = try PEFTFixture.write(config: PEFTFixture.config(), weights: bytes)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.withBase(seed: 219) { model in
            #expect(throws: SafetensorsError.headerExceedsFile(length: 1 << 20, available: 2)) {
                _ = try model.loadPEFTAdapter(directory: dir, name: "t")
            }
        }
    }

    @Test func refusesMissingOrPickledFiles() throws {
        let dir = NSTemporaryDirectory() + "peft-missing-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.withBase(seed: 220) { model in
            Self.expectRefusal(.unreadable(path: dir + "/adapter_config.json", reason: String(cString: strerror(ENOENT)))) {
                _ = try model.loadPEFTAdapter(directory: dir, name: "t")
            }
            try Data(PEFTFixture.config()).write(to: URL(fileURLWithPath: dir + "/adapter_config.json"))
            try Data([0x80, 0x02]).write(to: URL(fileURLWithPath: dir + "/adapter_model.bin"))
            Self.expectMessage("unsupported", ["adapter_model.bin"]) { _ = try model.loadPEFTAdapter(directory: dir, name: "t") }
        }
    }
}

private extension Array where Element == UInt8 {
    /// The fixture config writes `"use_dora": false`; drop it so that an `extra` value is the only one.
    func replacingDoRA() -> [UInt8] {
        Array(String(decoding: self, as: UTF8.self).replacingOccurrences(of: "\"use_dora\": false, ", with: "").utf8)
    }
}
