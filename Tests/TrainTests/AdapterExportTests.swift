// Adapter initialisation, continuation from an existing adapter, and export to PEFT and GGUF. Exports are read
// back by Runtime's own loaders (bit-for-bit equality) and compared with the reference adapter in both formats
// (reference/gemma-3-270m-q4_k_m/lora-r8: PEFT directory and its llama.cpp conversion).
import Foundation
import Runtime
import Testing
import Train

func expectSameAdapter(_ x: LoRAAdapter, _ y: LoRAAdapter, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(Set(x.modules.keys) == Set(y.modules.keys), sourceLocation: sourceLocation)
    for (k, a) in x.modules {
        guard let b = y.modules[k] else { continue }
        #expect(a.rank == b.rank && a.nIn == b.nIn && a.nOut == b.nOut && a.scale == b.scale, sourceLocation: sourceLocation)
        #expect(a.a.map(\.bitPattern) == b.a.map(\.bitPattern), "lora_A \(k)", sourceLocation: sourceLocation)
        #expect(a.b.map(\.bitPattern) == b.b.map(\.bitPattern), "lora_B \(k)", sourceLocation: sourceLocation)
    }
}

@Suite("Adapter init")
struct AdapterInitTests {
    /// The default model's shapes.
    static func config() throws -> ModelConfig { try TrainTestSupport.model().config }

    @Test("fresh adapter: lora_A ~ U(±1/√n_in) (kaiming_uniform a=√5), lora_B = 0, reproducible from the seed",
          .enabled(if: TrainTestSupport.hasModel, "needs LORAD_MODEL"))
    func fresh() throws {
        let model = try Self.config()
        let cfg = LoRAConfig(rank: 4, alpha: 8, targets: [.attnQ, .ffnDown], layers: [0, 5])
        var rng = TrainingRNG(seed: 3)
        let p = try LoRAParameters.fresh(config: cfg, model: model, rng: &rng)
        var rng2 = TrainingRNG(seed: 3)
        #expect(try LoRAParameters.fresh(config: cfg, model: model, rng: &rng2).values == p.values)
        #expect(p.slots.count == 4)
        for s in p.slots {
            let a = p.values[s.offsetA..<s.offsetA + s.countA]
            let bound = 1 / Double(s.nIn).squareRoot()
            #expect(a.allSatisfy { abs(Double($0)) <= bound })
            // Variance of U(−b, b) is b²/3; r·n_in ≥ 2560 samples put the estimate within a few percent.
            let variance = a.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(a.count)
            #expect(abs(variance / (bound * bound / 3) - 1) < 0.1, "variance \(variance)")
            #expect(p.values[s.offsetB..<s.offsetB + s.countB].allSatisfy { $0 == 0 })
        }
        #expect(throws: AdapterInitError.self) {
            var r = TrainingRNG(seed: 1)
            _ = try LoRAParameters.fresh(config: LoRAConfig(rank: 4, alpha: 8, targets: [.attnQ], layers: [99]), model: model, rng: &r)
        }
        #expect(throws: AdapterInitError.self) {
            var r = TrainingRNG(seed: 1)
            _ = try LoRAParameters.fresh(config: LoRAConfig(rank: 0, alpha: 8, targets: [.attnQ], layers: [0]), model: model, rng: &r)
        }
    }

    @Test("continuing from the reference PEFT adapter takes its rank, alpha, targets and layers",
          .enabled(if: TrainTestSupport.hasModel && TrainTestSupport.hasReference, "needs LORAD_MODEL and the reference"))
    func continueFromPEFT() throws {
        let model = try TrainTestSupport.model()
        let dir = TrainTestSupport.referenceDirectory.appendingPathComponent("lora-r8/peft").path
        let adapter = try model.loadPEFTAdapter(directory: dir, name: "ref")
        let p = try LoRAParameters(adapter: adapter, model: model.config)
        #expect(p.config == LoRAConfig(rank: 8, alpha: 16, targets: Projection.allCases, layers: Array(0..<18)))
        expectSameAdapter(p.makeAdapter(name: "x"), adapter)
        let gguf = try model.loadGGUFAdapter(
            path: TrainTestSupport.referenceDirectory.appendingPathComponent("lora-r8/gemma-3-270m-lora-r8.gguf").path, name: "g")
        #expect(try LoRAParameters(adapter: gguf, model: model.config).config == p.config)
    }

    @Test("adapters that do not fit are clear errors", .enabled(if: TrainTestSupport.hasModel, "needs LORAD_MODEL"))
    func misfits() throws {
        let config = try Self.config()
        func module(_ r: Int, _ nIn: Int, _ nOut: Int, scale: Float = 2) -> LoRAModule {
            LoRAModule(rank: r, nIn: nIn, nOut: nOut, a: .init(repeating: 0, count: r * nIn), b: .init(repeating: 0, count: r * nOut), scale: scale)
        }
        let q = ModuleKey(layer: 0, projection: .attnQ), k = ModuleKey(layer: 0, projection: .attnK)
        let good = module(4, config.nEmbd, config.qDim)
        #expect(throws: AdapterInitError.self) {
            try LoRAParameters(adapter: LoRAAdapter(name: "x", modules: [q: module(4, config.nEmbd + 1, config.qDim)]), model: config)
        }
        #expect(throws: AdapterInitError.mixedRanks([4, 8])) {
            try LoRAParameters(adapter: LoRAAdapter(name: "x", modules: [q: good, k: module(8, config.nEmbd, config.kvDim)]), model: config)
        }
        #expect(throws: AdapterInitError.mixedScales) {
            try LoRAParameters(adapter: LoRAAdapter(name: "x", modules: [q: good, k: module(4, config.nEmbd, config.kvDim, scale: 3)]), model: config)
        }
        #expect(throws: AdapterInitError.self) {
            try LoRAParameters(adapter: LoRAAdapter(name: "x", modules: [ModuleKey(layer: config.nLayer, projection: .attnQ): good]), model: config)
        }
        #expect(throws: AdapterInitError.self) {  // layer 1 lacks attn_k
            try LoRAParameters(adapter: LoRAAdapter(name: "x", modules: [q: good, k: module(4, config.nEmbd, config.kvDim),
                                                                      ModuleKey(layer: 1, projection: .attnQ): good]), model: config)
        }
        let p = try LoRAParameters(adapter: LoRAAdapter(name: "x", modules: [q: good]), model: config)
        #expect(p.config.alpha == 8)  // derived from scale 2 · rank 4
    }
}

@Suite("Adapter export", .enabled(if: TrainTestSupport.hasModel && TrainTestSupport.hasReference, "needs LORAD_MODEL and the reference"))
struct AdapterExportTests {
    static func trained(_ model: Model, rank: Int = 8, rs: Bool = false, targets: [Projection] = Projection.allCases,
                        layers: [Int]? = nil) throws -> LoRAParameters {
        try TrainTestSupport.trainedAdapter(
            LoRAConfig(rank: rank, alpha: 16, useRSLoRA: rs, targets: targets, layers: layers ?? Array(0..<model.config.nLayer)),
            model: model.config, seed: 11, bBound: 0.02)
    }

    @Test("PEFT and GGUF exports load back through Runtime's loaders bit for bit, and serve the same logits")
    func roundTrip() throws {
        let model = try TrainTestSupport.model()
        let p = try Self.trained(model)
        let dir = try TrainTestSupport.temporaryDirectory("export")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try AdapterExport.writeAll(p, model: model.config, baseModel: "google/gemma-3-270m", name: "t", directory: dir)
        let memory = p.makeAdapter(name: "m")
        let peft = try model.loadPEFTAdapter(directory: dir, name: "peft")
        let gguf = try model.loadGGUFAdapter(path: dir + "/adapter.gguf", name: "gguf")
        expectSameAdapter(peft, memory)
        expectSameAdapter(gguf, memory)
        #expect(peft.alpha == 16 && gguf.alpha == 16)

        TrainTestSupport.forwardLock.lock()
        defer { TrainTestSupport.forwardLock.unlock() }
        func logits(_ a: LoRAAdapter?) throws -> [Float] {
            let ids: [Int32] = [2, 105, 2364, 107, 9259, 106, 107, 105, 4368, 107]
            let cache = model.makeKVCache(capacity: ids.count)
            var batch = ForwardBatch()
            for (i, t) in ids.enumerated() {
                batch.append(token: t, position: i, sequence: 0, wantLogits: i == ids.count - 1, adapter: a.map { AdapterSet($0) })
            }
            return try model.forward(batch, caches: [cache])
        }
        let base = try logits(nil), lm = try logits(memory), lp = try logits(peft), lg = try logits(gguf)
        #expect(lm == lp && lm == lg)
        let shift = zip(base, lm).map { abs($0 - $1) }.max()!
        print("export round trip: served logits identical; adapter moves the logits by up to \(shift)")
        #expect(shift > 1e-3)  // the adapter is not a no-op, so the equality above means something
    }

    @Test("exports have the reference adapter's names, config fields and GGUF metadata; values equal the reference")
    func matchesReferenceLayout() throws {
        let model = try TrainTestSupport.model()
        let refDir = TrainTestSupport.referenceDirectory.appendingPathComponent("lora-r8")
        let refPEFT = try model.loadPEFTAdapter(directory: refDir.appendingPathComponent("peft").path, name: "r")
        let p = try LoRAParameters(adapter: refPEFT, model: model.config)
        let dir = try TrainTestSupport.temporaryDirectory("layout")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try AdapterExport.writeAll(p, model: model.config, baseModel: "google/gemma-3-270m", name: "r", directory: dir)

        // safetensors: the same tensor names and shapes as PEFT wrote, stored as F32.
        let ours = try SafetensorsFile(path: dir + "/adapter_model.safetensors")
        let theirs = try SafetensorsFile(path: refDir.appendingPathComponent("peft/adapter_model.safetensors").path)
        #expect(ours.tensors.map(\.name).sorted() == theirs.tensors.map(\.name).sorted())
        for t in theirs.tensors {
            let o = try #require(ours.tensor(named: t.name))
            #expect(o.shape == t.shape && o.dtype == .f32)
            #expect(ours.floats(of: o) == theirs.floats(of: t))  // f16 values are exact in f32
        }
        // adapter_config.json: every field of the reference, same values.
        func json(_ path: String) throws -> [String: Any] {
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        }
        let oc = try json(dir + "/adapter_config.json"), rc = try json(refDir.appendingPathComponent("peft/adapter_config.json").path)
        #expect(Set(oc.keys) == Set(rc.keys))
        for (k, v) in rc { #expect("\(oc[k]!)" == "\(v)", "\(k)") }

        // GGUF: the reference conversion's metadata and tensor names and dims; values equal after F16 → F32.
        let og = try GGUFFile(path: dir + "/adapter.gguf")
        let rg = try GGUFFile(path: refDir.appendingPathComponent("gemma-3-270m-lora-r8.gguf").path)
        for key in ["general.architecture", "general.type", "adapter.type"] { #expect(og.string(key) == rg.string(key)) }
        #expect(og.double("adapter.lora.alpha") == rg.double("adapter.lora.alpha"))
        #expect(og.tensors.map(\.name).sorted() == rg.tensors.map(\.name).sorted())
        let fromRef = try model.loadGGUFAdapter(rg, name: "rg"), fromOurs = try model.loadGGUFAdapter(og, name: "og")
        expectSameAdapter(fromOurs, fromRef)
        for t in rg.tensors {
            #expect(og.tensors.first { $0.name == t.name }?.dims == t.dims)
            #expect(og.tensors.first { $0.name == t.name }?.type == .f32)
        }
    }

    @Test("a subset of layers writes layers_to_transform; rsLoRA keeps its scale in both formats")
    func subsetAndRSLoRA() throws {
        let model = try TrainTestSupport.model()
        let p = try Self.trained(model, rank: 4, rs: true, targets: [.attnV, .ffnUp], layers: [2, 7])
        let dir = try TrainTestSupport.temporaryDirectory("subset")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try AdapterExport.writeAll(p, model: model.config, baseModel: "b", name: "s", directory: dir)
        let config = try String(contentsOfFile: dir + "/adapter_config.json", encoding: .utf8)
        #expect(config.contains("\"layers_to_transform\": [2, 7]") && config.contains("\"use_rslora\": true"))
        #expect(config.contains("\"target_modules\": [\"v_proj\", \"up_proj\"]"))
        let peft = try model.loadPEFTAdapter(directory: dir, name: "p")
        let gguf = try model.loadGGUFAdapter(path: dir + "/adapter.gguf", name: "g")
        expectSameAdapter(peft, p.makeAdapter(name: "m"))
        #expect(Set(gguf.modules.keys) == Set(peft.modules.keys))
        for (k, m) in gguf.modules {
            #expect(abs(m.scale - 8) < 1e-5)  // alpha/√r = 16/2
            #expect(m.a == peft.modules[k]!.a && m.b == peft.modules[k]!.b)
        }
        // Continuing from the export gives back the same configuration.
        #expect(try LoRAParameters(adapter: peft, model: model.config).config == p.config)
    }

    @Test("a failed write (ENOSPC) leaves the previous export intact")
    func exportENOSPC() throws {
        let model = try TrainTestSupport.model()
        let dir = try TrainTestSupport.temporaryDirectory("enospc-export")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let first = try Self.trained(model, rank: 2, targets: [.attnQ], layers: [0])
        try AdapterExport.writeGGUF(first, model: model.config, name: "a", path: dir + "/a.gguf")
        let before = try AtomicFile.read(dir + "/a.gguf")
        var second = first
        second.values = second.values.map { $0 + 1 }
        #expect(throws: FileIOError.self) {
            try AdapterExport.writeGGUF(second, model: model.config, name: "a", path: dir + "/a.gguf",
                                        fault: { _, _ in ENOSPC })
        }
        #expect(try AtomicFile.read(dir + "/a.gguf") == before)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["a.gguf"])
    }
}
