// PEFT adapters on a llama GGUF: llama.cpp's converter permutes the rows of q_proj / k_proj when it writes a llama
// GGUF (convert_hf_to_gguf.py LlamaModel.permute), so a PEFT lora_B for those projections must be permuted the same
// way. The test builds a tiny llama in the Hugging Face layout, writes its GGUF as the converter would (the numpy
// reshape / swapaxes ported here index by index), loads a PEFT adapter trained on the HF layout onto that GGUF, and
// compares the served logits with an independent float64 forward pass of the HF model (rotate_half RoPE, as
// transformers' LlamaAttention) over the merged, un-permuted weights W + (alpha/r)·B·A.
import Foundation
import Runtime
import Testing

@Suite struct LlamaQKPermutationTests {
    typealias T = TinyLlama

    /// numpy `w.reshape(n_head, 2, rows // n_head // 2, n_in).swapaxes(1, 2).reshape(rows, n_in)` on a row-major
    /// `[rows, n_in]` matrix: element [h][i][j][c] of the result is element [h][j][i][c] of the input viewed as
    /// `[n_head][2][head_dim/2][n_in]`.
    static func converterPermute(_ w: [Float], rows: Int, nIn: Int, nHead: Int) -> [Float] {
        let half = rows / nHead / 2
        var out = [Float](repeating: 0, count: w.count)
        for h in 0..<nHead {
            for i in 0..<half {
                for j in 0..<2 {
                    for c in 0..<nIn {
                        let dst = ((h * half + i) * 2 + j) * nIn + c  // result shape [n_head][half][2][n_in]
                        let src = ((h * 2 + j) * half + i) * nIn + c  // input shape [n_head][2][half][n_in]
                        out[dst] = w[src]
                    }
                }
            }
        }
        return out
    }

    /// Random weights of the tiny llama in the Hugging Face layout, keyed by GGUF tensor name.
    static func hfWeights(seed: UInt64) -> [String: [Float]] {
        var rng = SplitMix(seed)
        var w: [String: [Float]] = [:]
        func matrix(_ name: String, _ nIn: Int, _ nOut: Int, _ scale: Float) {
            w[name] = (0..<(nIn * nOut)).map { _ in rng.nextFloat() * scale }
        }
        func vector(_ name: String, _ n: Int) { w[name] = (0..<n).map { _ in 1 + 0.2 * rng.nextFloat() } }
        let q = T.nHead * T.headDim, kv = T.nHeadKV * T.headDim
        matrix("token_embd.weight", T.nEmbd, T.nVocab, 1)
        for l in 0..<T.nLayer {
            let p = "blk.\(l)."
            vector(p + "attn_norm.weight", T.nEmbd)
            matrix(p + "attn_q.weight", T.nEmbd, q, 0.3)
            matrix(p + "attn_k.weight", T.nEmbd, kv, 0.3)
            matrix(p + "attn_v.weight", T.nEmbd, kv, 0.3)
            matrix(p + "attn_output.weight", q, T.nEmbd, 0.2)
            vector(p + "ffn_norm.weight", T.nEmbd)
            matrix(p + "ffn_gate.weight", T.nEmbd, T.nFF, 0.3)
            matrix(p + "ffn_up.weight", T.nEmbd, T.nFF, 0.3)
            matrix(p + "ffn_down.weight", T.nFF, T.nEmbd, 0.2)
        }
        vector("output_norm.weight", T.nEmbd)
        matrix("output.weight", T.nEmbd, T.nVocab, 0.5)
        return w
    }

    /// Writes the GGUF the converter would write from `hf`: Q rows permuted with n_head, K rows with n_head_kv.
    static func writeConvertedGGUF(_ hf: [String: [Float]], seed: UInt64) throws -> String {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("llama.context_length", .uint32(UInt32(T.nCtx)))
        w.set("llama.embedding_length", .uint32(UInt32(T.nEmbd)))
        w.set("llama.block_count", .uint32(UInt32(T.nLayer)))
        w.set("llama.feed_forward_length", .uint32(UInt32(T.nFF)))
        w.set("llama.attention.head_count", .uint32(UInt32(T.nHead)))
        w.set("llama.attention.head_count_kv", .uint32(UInt32(T.nHeadKV)))
        w.set("llama.rope.freq_base", .float32(Float(T.ropeBase)))
        w.set("llama.attention.layer_norm_rms_epsilon", .float32(Float(T.eps)))
        TinyLlama.addVocabulary(&w)
        for name in hf.keys.sorted() {
            var v = hf[name]!
            let isVector = name.hasSuffix("norm.weight")
            let nIn = name.hasSuffix("attn_output.weight") ? T.nHead * T.headDim : (name.hasSuffix("ffn_down.weight") ? T.nFF : T.nEmbd)
            if name.hasSuffix("attn_q.weight") { v = converterPermute(v, rows: v.count / nIn, nIn: nIn, nHead: T.nHead) }
            if name.hasSuffix("attn_k.weight") { v = converterPermute(v, rows: v.count / nIn, nIn: nIn, nHead: T.nHeadKV) }
            try w.addTensor(name: name, dims: isVector ? [v.count] : [nIn, v.count / nIn], floats: v)
        }
        let path = NSTemporaryDirectory() + "tiny-llama-hf-\(seed)-\(getpid()).gguf"
        try w.write(to: path)
        return path
    }

    /// Logits `[n_vocab]` after each token, float64, Hugging Face Llama math: RoPE rotates (x_i, x_{i+head_dim/2})
    /// (transformers `rotate_half`), on weights in the HF row order.
    static func hfReferenceLogits(_ weights: [String: [Double]], _ tokens: [Int32]) -> [[Double]] {
        let D = T.nEmbd, hd = T.headDim, half = hd / 2
        func w(_ n: String) -> [Double] { weights[n]! }
        func rope(_ v: inout [Double], heads: Int, pos: Int) {
            for h in 0..<heads {
                for i in 0..<half {
                    let theta = Double(pos) * pow(T.ropeBase, -2 * Double(i) / Double(hd))
                    let a = v[h * hd + i], b = v[h * hd + i + half]
                    v[h * hd + i] = a * cos(theta) - b * sin(theta)
                    v[h * hd + i + half] = b * cos(theta) + a * sin(theta)
                }
            }
        }
        var keys = [[[Double]]](repeating: [], count: T.nLayer), values = keys
        var out: [[Double]] = []
        let embd = w("token_embd.weight")
        for (pos, t) in tokens.enumerated() {
            var x = Array(embd[(Int(t) * D)..<(Int(t) * D + D)])
            for l in 0..<T.nLayer {
                let p = "blk.\(l)."
                let h = T.rms(x, w(p + "attn_norm.weight"))
                var q = T.matvec(w(p + "attn_q.weight"), h, nOut: T.nHead * hd)
                var k = T.matvec(w(p + "attn_k.weight"), h, nOut: T.nHeadKV * hd)
                let v = T.matvec(w(p + "attn_v.weight"), h, nOut: T.nHeadKV * hd)
                rope(&q, heads: T.nHead, pos: pos)
                rope(&k, heads: T.nHeadKV, pos: pos)
                keys[l].append(k)
                values[l].append(v)
                var att = [Double](repeating: 0, count: T.nHead * hd)
                for head in 0..<T.nHead {
                    let kvh = head / (T.nHead / T.nHeadKV)
                    var s = (0...pos).map { j in
                        (0..<hd).reduce(0.0) { $0 + q[head * hd + $1] * keys[l][j][kvh * hd + $1] } / Double(hd).squareRoot()
                    }
                    let m = s.max()!
                    s = s.map { exp($0 - m) }
                    let z = s.reduce(0, +)
                    for j in 0...pos { for i in 0..<hd { att[head * hd + i] += s[j] / z * values[l][j][kvh * hd + i] } }
                }
                x = zip(x, T.matvec(w(p + "attn_output.weight"), att, nOut: D)).map(+)
                let h2 = T.rms(x, w(p + "ffn_norm.weight"))
                let g = T.matvec(w(p + "ffn_gate.weight"), h2, nOut: T.nFF)
                let u = T.matvec(w(p + "ffn_up.weight"), h2, nOut: T.nFF)
                x = zip(x, T.matvec(w(p + "ffn_down.weight"), zip(g, u).map { $0 / (1 + exp(-$0)) * $1 }, nOut: D)).map(+)
            }
            out.append(T.matvec(w("output.weight"), T.rms(x, w("output_norm.weight")), nOut: T.nVocab))
        }
        return out
    }

    static func maxDiff(_ served: [Float], _ reference: [[Double]]) -> Double {
        zip(served, reference.joined()).map { abs(Double($0) - $1) }.max() ?? .infinity
    }

    @Test("the public permutation is the converter's, and ggufToHF undoes it")
    func permutationMatchesConverter() {
        var rng = SplitMix(77)
        for (rows, heads) in [(T.nHead * T.headDim, T.nHead), (T.nHeadKV * T.headDim, T.nHeadKV), (12, 3)] {
            let cols = 5
            let m = (0..<(rows * cols)).map { _ in rng.nextFloat() }
            let permuted = LlamaQKPermutation.hfToGGUF(m, rows: rows, cols: cols, nHead: heads)
            #expect(permuted == Self.converterPermute(m, rows: rows, nIn: cols, nHead: heads), "rows \(rows), heads \(heads)")
            #expect(permuted != m)
            #expect(LlamaQKPermutation.ggufToHF(permuted, rows: rows, cols: cols, nHead: heads) == m)
        }
        // head_dim 4: HF rows (0 1 | 2 3) -> GGUF rows (0 2 1 3): pair i of half j lands at 2i + j.
        #expect((0..<8).map { LlamaQKPermutation.ggufRow(ofHFRow: $0, headDim: 4) } == [0, 2, 1, 3, 4, 6, 5, 7])
        #expect(LlamaQKPermutation.canPermute(rows: 64, nHead: 4) && !LlamaQKPermutation.canPermute(rows: 12, nHead: 4))
    }

    @Test("a PEFT q_proj/k_proj adapter on a converted llama GGUF serves the HF model's merged logits")
    func peftAdapterOnConvertedGGUF() throws {
        let hf = Self.hfWeights(seed: 60)
        let path = try Self.writeConvertedGGUF(hf, seed: 60)
        defer { unlink(path) }
        let model = try Model.load(path: path, options: ModelOptions(threads: 2, kvCacheType: .f32))
        let tokens: [Int32] = [1, 40, 41, 42, 290, 17, 3, 9]
        let hfDouble = hf.mapValues { $0.map(Double.init) }

        // The converted GGUF without an adapter is the HF model (checks the reference and the converter port).
        let base = try TinyLlamaLoRATests.logits(model, tokens, adapter: nil)
        let baseDiff = Self.maxDiff(base, Self.hfReferenceLogits(hfDouble, tokens))
        #expect(baseDiff < 1e-3, "converted GGUF vs HF reference: max |Δlogit| = \(baseDiff)")

        // A PEFT adapter on q_proj, k_proj and v_proj of both layers, in the HF layout: r 4, alpha 8 (scale 2).
        var rng = SplitMix(61)
        var mods: [String: (a: [Float], b: [Float], rank: Int, scale: Float)] = [:]
        var merged = hfDouble
        for l in 0..<T.nLayer {
            for (p, nOut) in [("attn_q", T.nHead * T.headDim), ("attn_k", T.nHeadKV * T.headDim), ("attn_v", T.nHeadKV * T.headDim)] {
                let name = "blk.\(l).\(p).weight"
                let a = (0..<(4 * T.nEmbd)).map { _ in rng.nextFloat() * 0.3 }
                let b = (0..<(nOut * 4)).map { _ in rng.nextFloat() * 0.3 }
                mods[name] = (a, b, 4, 2)
                for o in 0..<nOut {
                    for i in 0..<T.nEmbd {
                        var d = 0.0
                        for k in 0..<4 { d += Double(b[o * 4 + k]) * Double(a[k * T.nEmbd + i]) }
                        merged[name]![o * T.nEmbd + i] += 2 * d
                    }
                }
            }
        }
        let config = PEFTFixture.config(r: 4, alpha: 8, targets: "[\"q_proj\", \"k_proj\", \"v_proj\"]")
        let weights = PEFTFixture.weights(mods, toHFLayout: false)
        let adapter = try model.loadPEFTAdapter(config: config, weights: SafetensorsFile(bytes: weights.bytes()), name: "hf")
        #expect(adapter.modules.count == 3 * T.nLayer)
        let served = try TinyLlamaLoRATests.logits(model, tokens, adapter: AdapterSet(adapter, scale: 1))
        let reference = Self.hfReferenceLogits(merged, tokens)
        let diff = Self.maxDiff(served, reference)
        let effect = Self.maxDiff(base, reference)
        #expect(effect > 0.1, "the adapter should change the logits (max change \(effect))")
        #expect(diff < 1e-3, "PEFT adapter on the converted GGUF vs HF merged weights: max |Δlogit| = \(diff)")

        // lora_B applied in the HF row order (what the loader did before) misses the reference by far.
        var unpermuted: [ModuleKey: LoRAModule] = [:]
        for (name, m) in mods {
            let parts = name.split(separator: ".")
            let key = ModuleKey(layer: Int(parts[1])!, projection: Projection(rawValue: String(parts[2]))!)
            unpermuted[key] = LoRAModule(rank: 4, nIn: T.nEmbd, nOut: m.b.count / 4, a: m.a, b: m.b, scale: 2)
        }
        let wrong = try TinyLlamaLoRATests.logits(model, tokens, adapter: AdapterSet(LoRAAdapter(name: "raw", modules: unpermuted)))
        let wrongDiff = Self.maxDiff(wrong, reference)
        #expect(wrongDiff > 0.05, "unpermuted lora_B should not match (max |Δlogit| = \(wrongDiff))")
        print("[llama-qk] max |Δlogit| vs the HF float64 reference: base \(baseDiff), adapter \(diff), "
            + "adapter without the permutation \(wrongDiff); adapter effect \(effect)")
        // v_proj is never permuted.
        #expect(adapter.modules[ModuleKey(layer: 0, projection: .attnV)]?.b == mods["blk.0.attn_v.weight"]?.b)
    }
}
