// WeightLoader: turns GGUF tensors into the matrices and vectors the forward pass reads, checking shapes.
// Matrices stay in the memory-mapped file; small vectors (norm gains) are dequantized into owned arrays.

final class WeightLoader {
    let gguf: GGUFFile
    /// What the remaining batch copies may take, bytes.
    private var batchCopyBudget: Int

    init(gguf: GGUFFile, batchCopyBytes: Int) {
        self.gguf = gguf
        self.batchCopyBudget = batchCopyBytes
    }

    func info(_ name: String) throws -> GGUFTensorInfo {
        guard let t = gguf.tensor(named: name) else { throw ModelError.missingTensor(name) }
        return t
    }

    func has(_ name: String) -> Bool { gguf.tensor(named: name) != nil }

    /// A weight with ggml dims `[n_in, n_out]` (row-major `[n_out, n_in]`); layer projections get their batch copy
    /// while the budget lasts.
    func projection(_ name: String, nIn: Int, nOut: Int) throws -> WeightMatrix {
        let m = try matrix(name, nIn: nIn, nOut: nOut)
        let bytes = m.batchCopyByteCountIfMade
        guard bytes > 0, bytes <= batchCopyBudget else { return m }
        batchCopyBudget -= bytes
        return m.withBatchCopy()
    }

    /// A weight with ggml dims `[n_in, n_out]` (row-major `[n_out, n_in]`).
    func matrix(_ name: String, nIn: Int, nOut: Int) throws -> WeightMatrix {
        let t = try info(name)
        guard t.dims == [nIn, nOut] else { throw ModelError.tensorShape(name: name, expected: [nIn, nOut], found: t.dims) }
        guard Self.matmulTypes.contains(t.type) else { throw ModelError.unsupportedTensorType(name: name, type: t.type) }
        let data = gguf.data(of: t)
        guard let base = data.baseAddress, let bytes = t.type.byteCount(elements: nIn * nOut), data.count >= bytes else {
            throw ModelError.tensorShape(name: name, expected: [nIn, nOut], found: t.dims)
        }
        return WeightMatrix(type: t.type, rows: nOut, cols: nIn, data: base)
    }

    /// A vector of `count` values, dequantized to f32.
    func vector(_ name: String, count: Int) throws -> [Float] {
        let t = try info(name)
        guard t.elementCount == count, t.dims.count == 1 else {
            throw ModelError.tensorShape(name: name, expected: [count], found: t.dims)
        }
        guard Self.matmulTypes.contains(t.type) else { throw ModelError.unsupportedTensorType(name: name, type: t.type) }
        let data = gguf.data(of: t)
        guard let base = data.baseAddress else { throw ModelError.missingTensor(name) }
        var out = [Float](repeating: 0, count: count)
        out.withUnsafeMutableBufferPointer { Quant.dequantize(t.type, base, count: count, into: $0.baseAddress!) }
        return out
    }

    func optionalVector(_ name: String, count: Int) throws -> [Float]? {
        has(name) ? try vector(name, count: count) : nil
    }

    /// Types with dequantization and matmul kernels.
    static let matmulTypes: Set<GGMLType> = [
        .f32, .f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K,
    ]

    /// The tensors of block `l` under llama.cpp's names (`blk.<l>.attn_q.weight`, ...).
    func layer(_ l: Int, config c: ModelConfig, gemma: Bool) throws -> LayerWeights {
        let p = "blk.\(l)."
        return LayerWeights(
            attnNorm: try vector(p + "attn_norm.weight", count: c.nEmbd),
            wq: try projection(p + "attn_q.weight", nIn: c.nEmbd, nOut: c.qDim),
            wk: try projection(p + "attn_k.weight", nIn: c.nEmbd, nOut: c.kvDim),
            wv: try projection(p + "attn_v.weight", nIn: c.nEmbd, nOut: c.kvDim),
            wo: try projection(p + "attn_output.weight", nIn: c.qDim, nOut: c.nEmbd),
            qNorm: gemma ? try vector(p + "attn_q_norm.weight", count: c.headDim) : nil,
            kNorm: gemma ? try vector(p + "attn_k_norm.weight", count: c.headDim) : nil,
            postAttnNorm: gemma ? try vector(p + "post_attention_norm.weight", count: c.nEmbd) : nil,
            ffnNorm: try vector(p + "ffn_norm.weight", count: c.nEmbd),
            gate: try projection(p + "ffn_gate.weight", nIn: c.nEmbd, nOut: c.nFF),
            up: try projection(p + "ffn_up.weight", nIn: c.nEmbd, nOut: c.nFF),
            down: try projection(p + "ffn_down.weight", nIn: c.nFF, nOut: c.nEmbd),
            postFFNNorm: gemma ? try vector(p + "post_ffw_norm.weight", count: c.nEmbd) : nil)
    }

    /// Embedding, final norm and output head (tied to the embedding when `output.weight` is absent).
    func globals(config c: ModelConfig) throws -> (embd: WeightMatrix, norm: [Float], output: WeightMatrix) {
        let embd = try matrix("token_embd.weight", nIn: c.nEmbd, nOut: c.nVocab)
        let norm = try vector("output_norm.weight", count: c.nEmbd)
        let output = has("output.weight") ? try matrix("output.weight", nIn: c.nEmbd, nOut: c.nVocab) : embd
        return (embd, norm, output)
    }
}
