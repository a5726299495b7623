// Export round trip on a tiny random `llama` model written with GGUFWriter (no model file needed): the adapter
// exported as GGUF, and as PEFT for every projection (q/k lora_B rows are un-permuted on export and permuted again by
// Runtime's PEFT loader), serves exactly the logits of the in-memory adapter through Runtime's forward pass.
import Foundation
import Runtime
import Testing
import Train

enum TinyExportModel {
    static let nEmbd = 32, nLayer = 2, nHead = 4, nHeadKV = 2, nFF = 48, nVocab = 300

    /// Writes the model to a temporary file and loads it.
    static func make() throws -> Model {
        var rng = TrainingRNG(seed: 99)
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("llama.context_length", .uint32(64))
        w.set("llama.embedding_length", .uint32(UInt32(nEmbd)))
        w.set("llama.block_count", .uint32(UInt32(nLayer)))
        w.set("llama.feed_forward_length", .uint32(UInt32(nFF)))
        w.set("llama.attention.head_count", .uint32(UInt32(nHead)))
        w.set("llama.attention.head_count_kv", .uint32(UInt32(nHeadKV)))
        w.set("llama.rope.freq_base", .float32(10_000))
        w.set("llama.attention.layer_norm_rms_epsilon", .float32(1e-5))
        var tokens = ["<unk>", "<s>", "</s>"]
        var types: [Int32] = [2, 3, 3]
        for b in 0..<256 {
            tokens.append(String(format: "<0x%02X>", b))
            types.append(6)
        }
        while tokens.count < nVocab {
            tokens.append("\u{2581}" + String(UnicodeScalar(UInt8(97 + tokens.count % 26))) + "\(tokens.count)")
            types.append(1)
        }
        w.set("tokenizer.ggml.model", .string("llama"))
        w.set("tokenizer.ggml.tokens", .array(tokens.map { .string($0) }))
        w.set("tokenizer.ggml.scores", .array(tokens.indices.map { .float32(-Float($0)) }))
        w.set("tokenizer.ggml.token_type", .array(types.map { .int32($0) }))
        w.set("tokenizer.ggml.bos_token_id", .uint32(1))
        w.set("tokenizer.ggml.eos_token_id", .uint32(2))
        func matrix(_ name: String, _ nIn: Int, _ nOut: Int, _ scale: Float) throws {
            try w.addTensor(name: name, dims: [nIn, nOut], floats: (0..<(nIn * nOut)).map { _ in rng.uniform(bound: scale) })
        }
        func vector(_ name: String, _ n: Int) throws {
            try w.addTensor(name: name, dims: [n], floats: (0..<n).map { _ in 1 + rng.uniform(bound: 0.1) })
        }
        let headDim = nEmbd / nHead
        try matrix("token_embd.weight", nEmbd, nVocab, 1)
        for l in 0..<nLayer {
            let p = "blk.\(l)."
            try vector(p + "attn_norm.weight", nEmbd)
            try matrix(p + "attn_q.weight", nEmbd, nHead * headDim, 0.3)
            try matrix(p + "attn_k.weight", nEmbd, nHeadKV * headDim, 0.3)
            try matrix(p + "attn_v.weight", nEmbd, nHeadKV * headDim, 0.3)
            try matrix(p + "attn_output.weight", nHead * headDim, nEmbd, 0.2)
            try vector(p + "ffn_norm.weight", nEmbd)
            try matrix(p + "ffn_gate.weight", nEmbd, nFF, 0.3)
            try matrix(p + "ffn_up.weight", nEmbd, nFF, 0.3)
            try matrix(p + "ffn_down.weight", nFF, nEmbd, 0.2)
        }
        try vector("output_norm.weight", nEmbd)
        try matrix("output.weight", nEmbd, nVocab, 0.5)
        let path = NSTemporaryDirectory() + "lorad-train-tiny-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).gguf"
        try w.write(to: path)
        defer { unlink(path) }
        return try Model.load(path: path)
    }

    static func logits(_ model: Model, _ adapter: LoRAAdapter?) throws -> [Float] {
        let ids: [Int32] = [1, 40, 41, 57, 99, 120, 7, 250]
        let cache = model.makeKVCache(capacity: ids.count)
        var batch = ForwardBatch()
        for (i, t) in ids.enumerated() {
            batch.append(token: t, position: i, sequence: 0, wantLogits: true, adapter: adapter.map { AdapterSet($0) })
        }
        return try model.forward(batch, caches: [cache])
    }
}

@Suite("Export on a tiny model")
struct TinyModelExportTests {
    static func trained(_ model: Model, targets: [Projection]) throws -> LoRAParameters {
        var rng = TrainingRNG(seed: 4)
        var p = try LoRAParameters.fresh(config: LoRAConfig(rank: 3, alpha: 6, targets: targets, layers: [0, 1]),
                                         model: model.config, rng: &rng)
        for s in p.slots { for i in 0..<s.countB { p.values[s.offsetB + i] = rng.uniform(bound: 0.3) } }
        return p
    }

    @Test("GGUF and PEFT exports (all projections, q/k included) load back as the in-memory adapter and serve its logits exactly")
    func servedLogits() throws {
        let model = try TinyExportModel.make()
        let dir = try TrainTestSupport.temporaryDirectory("tiny")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let all = try Self.trained(model, targets: Projection.allCases)
        try AdapterExport.writeGGUF(all, model: model.config, name: "t", path: dir + "/t.gguf")
        let gguf = try model.loadGGUFAdapter(path: dir + "/t.gguf", name: "g")
        expectSameAdapter(gguf, all.makeAdapter(name: "m"))
        let base = try TinyExportModel.logits(model, nil), memory = try TinyExportModel.logits(model, all.makeAdapter(name: "m"))
        #expect(try TinyExportModel.logits(model, gguf) == memory)
        #expect(zip(base, memory).map { abs($0 - $1) }.max()! > 1e-3)

        try AdapterExport.writePEFT(all, model: model.config, baseModel: "tiny", directory: dir + "/peft")
        let peft = try model.loadPEFTAdapter(directory: dir + "/peft", name: "p")
        expectSameAdapter(peft, all.makeAdapter(name: "m"))
        #expect(try TinyExportModel.logits(model, peft) == memory)

        // Q and K alone, so a wrong row order there could not hide behind the other projections' shift.
        let qk = try Self.trained(model, targets: [.attnQ, .attnK])
        try AdapterExport.writePEFT(qk, model: model.config, baseModel: "tiny", directory: dir + "/peft-qk")
        let peftQK = try model.loadPEFTAdapter(directory: dir + "/peft-qk", name: "qk")
        expectSameAdapter(peftQK, qk.makeAdapter(name: "m"))
        let memoryQK = try TinyExportModel.logits(model, qk.makeAdapter(name: "m"))
        #expect(try TinyExportModel.logits(model, peftQK) == memoryQK)
        #expect(zip(base, memoryQK).map { abs($0 - $1) }.max()! > 1e-4)
    }

    @Test("llama q/k lora_B rows are written to PEFT in Hugging Face order (llama.cpp's permutation undone)")
    func llamaPEFTRows() throws {
        let model = try TinyExportModel.make()
        let p = try Self.trained(model, targets: [.attnQ, .attnK])
        let st = try SafetensorsFile(bytes: AdapterExport.peftSafetensors(p, model: model.config))
        for s in p.slots {
            let heads = s.key.projection == .attnQ ? TinyExportModel.nHead : TinyExportModel.nHeadKV
            let written = try st.floats(named: AdapterExport.peftTensorName(s.key, b: true))
            let gguf = Array(p.values[s.offsetB..<s.offsetB + s.countB])
            let headDim = TinyExportModel.nEmbd / TinyExportModel.nHead
            // Row h·Dh + 2i + s of the GGUF order is row h·Dh + s·Dh/2 + i of the HF order.
            for h in 0..<heads {
                for i in 0..<(headDim / 2) {
                    for half in 0..<2 {
                        let g = h * headDim + 2 * i + half, f = h * headDim + half * headDim / 2 + i
                        #expect(Array(written[f * s.rank..<(f + 1) * s.rank]) == Array(gguf[g * s.rank..<(g + 1) * s.rank]))
                    }
                }
            }
            #expect(try st.floats(named: AdapterExport.peftTensorName(s.key, b: false)) == Array(p.values[s.offsetA..<s.offsetA + s.countA]))
        }
    }
}
