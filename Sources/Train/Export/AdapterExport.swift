// Writing a trained adapter in the two formats people load LoRA adapters from:
//  - a PEFT directory: adapter_config.json + adapter_model.safetensors, tensor names
//    `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` (peft/utils/save_and_load.py with the
//    adapter name removed; config fields as PEFT 0.x writes them, compare
//    reference/gemma-3-270m-q4_k_m/lora-r8/peft/adapter_config.json);
//  - a llama.cpp GGUF LoRA adapter: `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`,
//    tensors `blk.N.attn_q.weight.lora_a` (ggml dims [n_in, r]) / `.lora_b` ([r, n_out]), as llama.cpp's
//    convert_lora_to_gguf.py writes them; F32 (`general.file_type` = 0, ALL_F32).
// Both are written atomically (AtomicFile). Safetensors layout: 8-byte little-endian header length, JSON header
// (keys sorted, `__metadata__` first, padded with spaces to a multiple of 8), then the tensors' bytes in header
// order (huggingface/safetensors docs "Format").
import Runtime

/// Hugging Face module path of a projection inside a decoder block.
public func huggingFaceModuleName(_ p: Projection) -> String {
    switch p {
    case .attnQ: return "self_attn.q_proj"
    case .attnK: return "self_attn.k_proj"
    case .attnV: return "self_attn.v_proj"
    case .attnOutput: return "self_attn.o_proj"
    case .ffnGate: return "mlp.gate_proj"
    case .ffnUp: return "mlp.up_proj"
    case .ffnDown: return "mlp.down_proj"
    }
}

/// Writes `LoRAParameters` as PEFT and GGUF adapters.
public enum AdapterExport {
    /// File names inside a PEFT directory.
    public static let peftConfigName = "adapter_config.json"
    /// File names inside a PEFT directory.
    public static let peftWeightsName = "adapter_model.safetensors"

    /// The PEFT tensor name of a module's `lora_A` or `lora_B`.
    public static func peftTensorName(_ key: ModuleKey, b: Bool) -> String {
        "base_model.model.model.layers.\(key.layer).\(huggingFaceModuleName(key.projection)).lora_\(b ? "B" : "A").weight"
    }

    /// `adapter_config.json` for `config`: peft_type LORA, task_type CAUSAL_LM, r, lora_alpha, use_rslora,
    /// target_modules (HF names), layers_to_transform (null when every layer of the model is patched), and
    /// base_model_name_or_path.
    public static func peftConfigJSON(_ config: LoRAConfig, model: ModelConfig, baseModel: String) -> String {
        func q(_ s: String) -> String {
            var out = "\""
            for u in s.unicodeScalars {
                switch u {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                case "\t": out += "\\t"
                default:
                    if u.value < 0x20 {
                        let h = String(u.value, radix: 16)
                        out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
                    } else {
                        out.unicodeScalars.append(u)
                    }
                }
            }
            return out + "\""
        }
        let a = Double(config.alpha)
        let alpha = a == a.rounded() && abs(a) < 1e15 ? String(Int64(a)) : "\(a)"
        let targets = config.targets.map { q(String(huggingFaceModuleName($0).split(separator: ".").last!)) }
        let allLayers = config.layers == Array(0..<model.nLayer)
        let layers = allLayers ? "null" : "[" + config.layers.map(String.init).joined(separator: ", ") + "]"
        return """
            {
              "peft_type": "LORA",
              "task_type": "CAUSAL_LM",
              "base_model_name_or_path": \(q(baseModel)),
              "r": \(config.rank),
              "lora_alpha": \(alpha),
              "lora_dropout": 0.0,
              "bias": "none",
              "fan_in_fan_out": false,
              "target_modules": [\(targets.joined(separator: ", "))],
              "use_rslora": \(config.useRSLoRA),
              "use_dora": false,
              "inference_mode": true,
              "init_lora_weights": true,
              "modules_to_save": null,
              "layers_to_transform": \(layers),
              "rank_pattern": {},
              "alpha_pattern": {}
            }

            """
    }

    /// `adapter_model.safetensors` bytes: every module's lora_A `[r, n_in]` and lora_B `[n_out, r]` in F32 under
    /// PEFT's names, sorted by name. For `llama` bases the Q/K lora_B rows are put back in Hugging Face order
    /// (`LlamaQKPermutation.ggufToHF`, n_head for Q and n_head_kv for K): llama.cpp's converter permuted the base's
    /// rows, and Runtime's PEFT loader permutes them again on load. Gemma 3 rows are written as they are.
    public static func peftSafetensors(_ p: LoRAParameters, model: ModelConfig) -> [UInt8] {
        var tensors: [(name: String, shape: [Int], values: ArraySlice<Float>)] = []
        for s in p.slots {
            tensors.append((peftTensorName(s.key, b: false), [s.rank, s.nIn], p.values[s.offsetA..<s.offsetA + s.countA]))
            var b = p.values[s.offsetB..<s.offsetB + s.countB]
            if model.architecture == "llama", s.key.projection == .attnQ || s.key.projection == .attnK {
                let heads = s.key.projection == .attnQ ? model.nHead : model.nHeadKV
                b = ArraySlice(LlamaQKPermutation.ggufToHF(Array(b), rows: s.nOut, cols: s.rank, nHead: heads))
            }
            tensors.append((peftTensorName(s.key, b: true), [s.nOut, s.rank], b))
        }
        tensors.sort { Array($0.name.utf8).lexicographicallyPrecedes(Array($1.name.utf8)) }
        var header = "{\"__metadata__\":{\"format\":\"pt\"}"
        var offset = 0
        for t in tensors {
            let n = t.values.count * 4
            header += ",\"\(t.name)\":{\"dtype\":\"F32\",\"shape\":[\(t.shape.map(String.init).joined(separator: ","))],"
                + "\"data_offsets\":[\(offset),\(offset + n)]}"
            offset += n
        }
        header += "}"
        while header.utf8.count % 8 != 0 { header += " " }
        var out: [UInt8] = []
        out.reserveCapacity(8 + header.utf8.count + offset)
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: header.utf8)
        for t in tensors {
            for v in t.values { withUnsafeBytes(of: v.bitPattern.littleEndian) { out.append(contentsOf: $0) } }
        }
        return out
    }

    /// Writes a PEFT directory (created if missing): the weights, then the config, each atomically.
    /// - Parameter baseModel: `base_model_name_or_path` (e.g. the HF id or the GGUF path).
    /// - Throws: `FileIOError`.
    public static func writePEFT(_ p: LoRAParameters, model: ModelConfig, baseModel: String, directory: String,
                                 fault: AtomicFile.WriteFault? = nil) throws {
        try AtomicFile.makeDirectory(directory)
        try AtomicFile.write(peftSafetensors(p, model: model), to: directory + "/" + peftWeightsName, fault: fault)
        try AtomicFile.write(Array(peftConfigJSON(p.config, model: model, baseModel: baseModel).utf8),
                             to: directory + "/" + peftConfigName, fault: fault)
    }

    /// The GGUF adapter as a `GGUFWriter`: F32 tensors `blk.N.<proj>.weight.lora_a` dims `[n_in, r]` and `.lora_b`
    /// dims `[r, n_out]`, per layer in `Projection.allCases` order. llama.cpp has no rsLoRA flag, so with rsLoRA
    /// `adapter.lora.alpha` is written as `alpha·√r` (its `alpha/r` is then the rsLoRA scale `alpha/√r`).
    /// - Throws: `GGUFError.invalidTensor` (not for valid parameters).
    public static func ggufWriter(_ p: LoRAParameters, model: ModelConfig, name: String) throws -> GGUFWriter {
        var w = GGUFWriter()
        let c = p.config
        let alpha = c.useRSLoRA ? c.alpha * Float(c.rank).squareRoot() : c.alpha
        w.set(GGUFKeys.architecture, .string(model.architecture))
        w.set("general.type", .string("adapter"))
        w.set("general.name", .string(name))
        w.set(GGUFKeys.fileType, .uint32(0))  // LLAMA_FTYPE_ALL_F32
        w.set(GGUFKeys.adapterType, .string("lora"))
        w.set(GGUFKeys.adapterLoRAAlpha, .float32(alpha))
        for s in p.slots {
            let base = "blk.\(s.key.layer).\(s.key.projection.rawValue).weight"
            try w.addTensor(name: base + ".lora_a", dims: [s.nIn, s.rank], floats: Array(p.values[s.offsetA..<s.offsetA + s.countA]))
            try w.addTensor(name: base + ".lora_b", dims: [s.rank, s.nOut], floats: Array(p.values[s.offsetB..<s.offsetB + s.countB]))
        }
        return w
    }

    /// Writes the GGUF adapter to `path` atomically.
    /// - Throws: `FileIOError`.
    public static func writeGGUF(_ p: LoRAParameters, model: ModelConfig, name: String, path: String,
                                 fault: AtomicFile.WriteFault? = nil) throws {
        try AtomicFile.write(try ggufWriter(p, model: model, name: name).serialized(), to: path, fault: fault)
    }

    /// Writes both formats into `directory`: the PEFT files at its top and `<ggufName>` beside them.
    /// - Throws: `FileIOError`.
    public static func writeAll(_ p: LoRAParameters, model: ModelConfig, baseModel: String, name: String,
                                directory: String, ggufName: String = "adapter.gguf") throws {
        try writePEFT(p, model: model, baseModel: baseModel, directory: directory)
        try writeGGUF(p, model: model, name: name, path: directory + "/" + ggufName)
    }
}
