// Export round trip on a tiny random `llama` model written with GGUFWriter (TinyModel; no model file needed): the adapter
// exported as GGUF, and as PEFT for every projection (q/k lora_B rows are un-permuted on export and permuted again by
// Runtime's PEFT loader), serves exactly the logits of the in-memory adapter through Runtime's forward pass.
import Foundation
import Runtime
import Testing
import Train

/// The tiny `llama` of the export tests (TinyModel: n_head 4, n_head_kv 2, head_dim 16, f32 weights) and its
/// served logits.
enum TinyExportModel {
    /// Writes the model to a temporary file and loads it. Each test passes its own seed: the file's path is made
    /// from it, and tests run in parallel.
    static func make(seed: UInt64) throws -> Model {
        try TinyModel.make(arch: "llama", type: .f32, seed: seed, layers: 2)
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
        try TrainTestSupport.trainedAdapter(LoRAConfig(rank: 3, alpha: 6, targets: targets, layers: [0, 1]),
                                            model: model.config, seed: 4, bBound: 0.3)
    }

    @Test("GGUF and PEFT exports (all projections, q/k included) load back as the in-memory adapter and serve its logits exactly")
    func servedLogits() throws {
        let model = try TinyExportModel.make(seed: 99)
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
        let model = try TinyExportModel.make(seed: 98)
        let p = try Self.trained(model, targets: [.attnQ, .attnK])
        let st = try SafetensorsFile(bytes: AdapterExport.peftSafetensors(p, model: model.config))
        for s in p.slots {
            let heads = s.key.projection == .attnQ ? TinyModel.nHead : TinyModel.nHeadKV
            let written = try st.floats(named: AdapterExport.peftTensorName(s.key, b: true))
            let gguf = Array(p.values[s.offsetB..<s.offsetB + s.countB])
            let headDim = TinyModel.headDim
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
