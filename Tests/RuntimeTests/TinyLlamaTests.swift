// A tiny random `llama` model written with GGUFWriter:
//  - its logits equal an independent float64 forward pass written here from the Llama equations
//    (Touvron et al. 2023; RMSNorm, RoPE with adjacent pairs, grouped-query attention, SwiGLU);
//  - incremental decode gives the same logits as one full prefill;
//  - a batch of mixed sequences gives the same logits as each sequence alone.
import Foundation
import Runtime
import Testing

struct TinyLlama {
    static let nEmbd = 64, nLayer = 2, nHead = 4, nHeadKV = 2, nFF = 128, nVocab = 300, nCtx = 256
    static let headDim = nEmbd / nHead
    static let ropeBase: Double = 10_000
    static let eps: Double = 1e-5

    /// Row-major weights `[n_out][n_in]` as written to the file (after quantization round-trip when quantized).
    let tensors: [String: [Float]]
    let path: String

    /// Writes the model. `type` is the storage type of the 2-D weights (norms stay f32).
    /// - Parameter merge: optional LoRA modules `(A [r, n_in], B [n_out, r], scale)` by tensor name, merged into
    ///   the written weights as `W + scale·B·A` (f32 models only).
    init(seed: UInt64, type: GGMLType, merge: [String: (a: [Float], b: [Float], rank: Int, scale: Float)] = [:]) throws {
        var rng = SplitMix(seed)
        var tensors: [String: [Float]] = [:]
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("general.name", .string("tiny-llama-test"))
        w.set("llama.context_length", .uint32(UInt32(Self.nCtx)))
        w.set("llama.embedding_length", .uint32(UInt32(Self.nEmbd)))
        w.set("llama.block_count", .uint32(UInt32(Self.nLayer)))
        w.set("llama.feed_forward_length", .uint32(UInt32(Self.nFF)))
        w.set("llama.attention.head_count", .uint32(UInt32(Self.nHead)))
        w.set("llama.attention.head_count_kv", .uint32(UInt32(Self.nHeadKV)))
        w.set("llama.rope.freq_base", .float32(Float(Self.ropeBase)))
        w.set("llama.attention.layer_norm_rms_epsilon", .float32(Float(Self.eps)))
        Self.addVocabulary(&w)

        func matrix(_ name: String, nIn: Int, nOut: Int, scale: Float) throws {
            var v = (0..<(nIn * nOut)).map { _ in rng.nextFloat() * scale }
            if let m = merge[name] {
                for o in 0..<nOut {
                    for i in 0..<nIn {
                        var d: Float = 0
                        for k in 0..<m.rank { d += m.b[o * m.rank + k] * m.a[k * nIn + i] }
                        v[o * nIn + i] += m.scale * d
                    }
                }
            }
            if type == .f32 {
                try w.addTensor(name: name, dims: [nIn, nOut], floats: v)
            } else {
                let bytes = type.byteCount(elements: v.count)!
                var data = [UInt8](repeating: 0, count: bytes)
                v.withUnsafeBufferPointer { src in
                    data.withUnsafeMutableBytes { Quant.quantize(type, src.baseAddress!, count: v.count, into: $0.baseAddress!) }
                }
                var back = [Float](repeating: 0, count: v.count)
                data.withUnsafeBytes { raw in
                    back.withUnsafeMutableBufferPointer { Quant.dequantize(type, raw.baseAddress!, count: v.count, into: $0.baseAddress!) }
                }
                v = back
                try w.addTensor(name: name, type: type, dims: [nIn, nOut], data: data)
            }
            tensors[name] = v
        }
        func vector(_ name: String, count: Int) throws {
            let v = (0..<count).map { _ in 1 + 0.2 * rng.nextFloat() }
            try w.addTensor(name: name, dims: [count], floats: v)
            tensors[name] = v
        }
        let qDim = Self.nHead * Self.headDim, kvDim = Self.nHeadKV * Self.headDim
        try matrix("token_embd.weight", nIn: Self.nEmbd, nOut: Self.nVocab, scale: 1)
        for l in 0..<Self.nLayer {
            let p = "blk.\(l)."
            try vector(p + "attn_norm.weight", count: Self.nEmbd)
            try matrix(p + "attn_q.weight", nIn: Self.nEmbd, nOut: qDim, scale: 0.3)
            try matrix(p + "attn_k.weight", nIn: Self.nEmbd, nOut: kvDim, scale: 0.3)
            try matrix(p + "attn_v.weight", nIn: Self.nEmbd, nOut: kvDim, scale: 0.3)
            try matrix(p + "attn_output.weight", nIn: qDim, nOut: Self.nEmbd, scale: 0.2)
            try vector(p + "ffn_norm.weight", count: Self.nEmbd)
            try matrix(p + "ffn_gate.weight", nIn: Self.nEmbd, nOut: Self.nFF, scale: 0.3)
            try matrix(p + "ffn_up.weight", nIn: Self.nEmbd, nOut: Self.nFF, scale: 0.3)
            try matrix(p + "ffn_down.weight", nIn: Self.nFF, nOut: Self.nEmbd, scale: 0.2)
        }
        try vector("output_norm.weight", count: Self.nEmbd)
        try matrix("output.weight", nIn: Self.nEmbd, nOut: Self.nVocab, scale: 0.5)
        let path = NSTemporaryDirectory() + "tiny-llama-\(seed)-\(type)-\(merge.isEmpty ? "base" : "merged")-\(getpid()).gguf"
        try w.write(to: path)
        self.path = path
        self.tensors = tensors
    }

    /// A SentencePiece-style vocabulary: <unk>, <s>, </s>, 256 byte tokens, then plain pieces.
    static func addVocabulary(_ w: inout GGUFWriter) {
        var tokens = ["<unk>", "<s>", "</s>"]
        var types: [Int32] = [2, 3, 3]
        for b in 0..<256 {
            tokens.append(String(format: "<0x%02X>", b))
            types.append(6)
        }
        let letters = Array("abcdefghijklmnopqrstuvwxyz")
        var i = 0
        while tokens.count < nVocab {
            let piece = i == 0 ? "\u{2581}" : (i <= 26 ? String(letters[i - 1]) : "\u{2581}" + String(letters[(i - 27) % 26]))
            tokens.append(piece)
            types.append(1)
            i += 1
        }
        let scores = tokens.indices.map { GGUFValue.float32(-Float($0)) }
        w.set("tokenizer.ggml.model", .string("llama"))
        w.set("tokenizer.ggml.tokens", .array(tokens.map { .string($0) }))
        w.set("tokenizer.ggml.scores", .array(scores))
        w.set("tokenizer.ggml.token_type", .array(types.map { .int32($0) }))
        w.set("tokenizer.ggml.bos_token_id", .uint32(1))
        w.set("tokenizer.ggml.eos_token_id", .uint32(2))
        w.set("tokenizer.ggml.unknown_token_id", .uint32(0))
        w.set("tokenizer.ggml.add_bos_token", .bool(true))
        w.set("tokenizer.ggml.add_space_prefix", .bool(true))
    }

    // MARK: - Independent float64 forward pass

    func w(_ name: String) -> [Double] { tensors[name]!.map(Double.init) }

    static func matvec(_ m: [Double], _ x: [Double], nOut: Int) -> [Double] {
        let nIn = x.count
        return (0..<nOut).map { o in (0..<nIn).reduce(0.0) { $0 + m[o * nIn + $1] * x[$1] } }
    }

    static func rms(_ x: [Double], _ g: [Double]) -> [Double] {
        let s = 1 / (x.reduce(0) { $0 + $1 * $1 } / Double(x.count) + eps).squareRoot()
        return zip(x, g).map { $0 * s * $1 }
    }

    static func rope(_ v: inout [Double], heads: Int, pos: Int) {
        for h in 0..<heads {
            for i in 0..<(headDim / 2) {
                let theta = Double(pos) * pow(ropeBase, -2 * Double(i) / Double(headDim))
                let a = v[h * headDim + 2 * i], b = v[h * headDim + 2 * i + 1]
                v[h * headDim + 2 * i] = a * cos(theta) - b * sin(theta)
                v[h * headDim + 2 * i + 1] = a * sin(theta) + b * cos(theta)
            }
        }
    }

    /// Logits `[n_vocab]` after each token of `tokens`.
    func referenceLogits(_ tokens: [Int32]) -> [[Double]] {
        let D = Self.nEmbd, hd = Self.headDim
        var keys = [[[Double]]](repeating: [], count: Self.nLayer)
        var values = [[[Double]]](repeating: [], count: Self.nLayer)
        var out: [[Double]] = []
        let embd = w("token_embd.weight")
        for (pos, t) in tokens.enumerated() {
            var x = Array(embd[(Int(t) * D)..<(Int(t) * D + D)])
            for l in 0..<Self.nLayer {
                let p = "blk.\(l)."
                let h = Self.rms(x, w(p + "attn_norm.weight"))
                var q = Self.matvec(w(p + "attn_q.weight"), h, nOut: Self.nHead * hd)
                var k = Self.matvec(w(p + "attn_k.weight"), h, nOut: Self.nHeadKV * hd)
                let v = Self.matvec(w(p + "attn_v.weight"), h, nOut: Self.nHeadKV * hd)
                Self.rope(&q, heads: Self.nHead, pos: pos)
                Self.rope(&k, heads: Self.nHeadKV, pos: pos)
                keys[l].append(k)
                values[l].append(v)
                var att = [Double](repeating: 0, count: Self.nHead * hd)
                for head in 0..<Self.nHead {
                    let kvh = head / (Self.nHead / Self.nHeadKV)
                    var s = (0...pos).map { j in
                        (0..<hd).reduce(0.0) { $0 + q[head * hd + $1] * keys[l][j][kvh * hd + $1] } / Double(hd).squareRoot()
                    }
                    let m = s.max()!
                    s = s.map { exp($0 - m) }
                    let z = s.reduce(0, +)
                    for j in 0...pos {
                        for i in 0..<hd { att[head * hd + i] += s[j] / z * values[l][j][kvh * hd + i] }
                    }
                }
                let o = Self.matvec(w(p + "attn_output.weight"), att, nOut: D)
                x = zip(x, o).map(+)
                let h2 = Self.rms(x, w(p + "ffn_norm.weight"))
                let g = Self.matvec(w(p + "ffn_gate.weight"), h2, nOut: Self.nFF)
                let u = Self.matvec(w(p + "ffn_up.weight"), h2, nOut: Self.nFF)
                let act = zip(g, u).map { $0 / (1 + exp(-$0)) * $1 }
                let d = Self.matvec(w(p + "ffn_down.weight"), act, nOut: D)
                x = zip(x, d).map(+)
            }
            out.append(Self.matvec(w("output.weight"), Self.rms(x, w("output_norm.weight")), nOut: Self.nVocab))
        }
        return out
    }
}

/// SplitMix64 (Steele et al. 2014), for reproducible test weights.
struct SplitMix {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    mutating func nextFloat() -> Float { Float(next() >> 40) / Float(1 << 23) - 1 }
}

@Suite struct TinyLlamaTests {
    static func prefill(_ model: Model, _ tokens: [Int32], cache: KVCache) throws -> [Float] {
        var b = ForwardBatch()
        for (i, t) in tokens.enumerated() { b.append(token: t, position: i, sequence: 0, wantLogits: true) }
        return try model.forward(b, caches: [cache])
    }

    @Test func logitsMatchIndependentFloat64Forward() throws {
        let tiny = try TinyLlama(seed: 1, type: .f32)
        defer { unlink(tiny.path) }
        let model = try Model.load(path: tiny.path, options: ModelOptions(threads: 2, kvCacheType: .f32))
        #expect(model.config.architecture == "llama")
        #expect(model.config.nVocab == TinyLlama.nVocab)
        let tokens: [Int32] = [1, 270, 281, 290, 5, 77, 299, 3, 100, 200]
        let ours = try Self.prefill(model, tokens, cache: model.makeKVCache(capacity: 64))
        let ref = tiny.referenceLogits(tokens)
        var maxDiff = 0.0
        for (r, row) in ref.enumerated() {
            for (i, v) in row.enumerated() { maxDiff = max(maxDiff, abs(Double(ours[r * TinyLlama.nVocab + i]) - v)) }
        }
        #expect(maxDiff < 2e-3, "max |Δlogit| vs float64 reference = \(maxDiff)")
    }

    @Test(arguments: [GGMLType.q8_0, GGMLType.f16, GGMLType.f32])
    func incrementalDecodeEqualsPrefill(type: GGMLType) throws {
        let tiny = try TinyLlama(seed: 2, type: type)
        defer { unlink(tiny.path) }
        let model = try Model.load(path: tiny.path, options: ModelOptions(threads: 2))
        let tokens: [Int32] = (0..<40).map { Int32(3 + ($0 * 37) % 297) }
        let full = try Self.prefill(model, tokens, cache: model.makeKVCache(capacity: 64))
        let cache = model.makeKVCache(capacity: 64)
        var inc: [Float] = []
        for (i, t) in tokens.enumerated() {
            var b = ForwardBatch()
            b.append(token: t, position: i, sequence: 0, wantLogits: true)
            inc += try model.forward(b, caches: [cache])
        }
        #expect(cache.count == tokens.count)
        #expect(full == inc, "incremental decode differs from prefill (max diff \(zip(full, inc).map { abs($0 - $1) }.max() ?? 0))")
    }

    /// Batch copies of q5_0 / q4_0 projections change where batches read weights, not the logits; the budget
    /// bounds them (0 = none, a small budget = the first layers only).
    @Test(arguments: [GGMLType.q5_0, GGMLType.q4_0])
    func batchCopiesKeepLogitsAndBudget(type: GGMLType) throws {
        let tiny = try TinyLlama(seed: 4, type: type)
        defer { unlink(tiny.path) }
        let tokens: [Int32] = (0..<24).map { Int32(3 + ($0 * 53) % 297) }
        var results: [[Float]] = []
        var sizes: [Int] = []
        for budget in [0, 1 << 30, 40_000] {
            let model = try Model.load(path: tiny.path, options: ModelOptions(threads: 2, batchCopyBytes: budget))
            sizes.append(model.batchCopyBytes)
            results.append(try Self.prefill(model, tokens, cache: model.makeKVCache(capacity: 32)))
        }
        #expect(sizes[0] == 0)
        #expect(sizes[1] > 0)
        #expect(sizes[2] > 0 && sizes[2] <= 40_000 && sizes[2] < sizes[1], "budgeted copies: \(sizes)")
        #expect(results[1].map(\.bitPattern) == results[0].map(\.bitPattern))
        #expect(results[2].map(\.bitPattern) == results[0].map(\.bitPattern))
    }

    @Test func mixedBatchEqualsEachSequenceAlone() throws {
        let tiny = try TinyLlama(seed: 3, type: .q8_0)
        defer { unlink(tiny.path) }
        let model = try Model.load(path: tiny.path, options: ModelOptions(threads: 2))
        let prompts: [[Int32]] = [[1, 10, 20, 30, 40], [1, 200], [1, 150, 151, 152], [1, 7, 8, 9, 10, 11, 12, 13]]
        // Alone: prefill the prompt, then 3 decode steps feeding fixed tokens.
        let follow: [Int32] = [33, 44, 55]
        var alone: [[Float]] = []
        for p in prompts {
            let c = model.makeKVCache(capacity: 32)
            var rows = try Self.prefill(model, p, cache: c)
            for (j, t) in follow.enumerated() {
                var b = ForwardBatch()
                b.append(token: t, position: p.count + j, sequence: 0, wantLogits: true)
                rows += try model.forward(b, caches: [c])
            }
            alone.append(rows)
        }
        // Together: sequences 0 and 1 prefill in the first batch; 2 and 3 join in the second while 0 and 1 decode.
        let caches = prompts.map { _ in model.makeKVCache(capacity: 32) }
        var got = [[Float]](repeating: [], count: prompts.count)
        var fed = [Int](repeating: 0, count: prompts.count)  // tokens of `follow` already fed
        var started = [false, false, false, false]
        for step in 0..<5 {
            var b = ForwardBatch()
            var order: [Int] = []
            for s in 0..<prompts.count {
                if !started[s] {
                    if step >= (s < 2 ? 0 : 1) {
                        for (i, t) in prompts[s].enumerated() { b.append(token: t, position: i, sequence: s, wantLogits: true) }
                        started[s] = true
                        order.append(s)
                    }
                } else if fed[s] < follow.count {
                    b.append(token: follow[fed[s]], position: prompts[s].count + fed[s], sequence: s, wantLogits: true)
                    fed[s] += 1
                    order.append(s)
                }
            }
            if b.count == 0 { break }
            let logits = try model.forward(b, caches: caches)
            var row = 0
            for s in order {
                let rows = (0..<b.count).filter { b.sequences[$0] == s }.count
                got[s] += Array(logits[(row * TinyLlama.nVocab)..<((row + rows) * TinyLlama.nVocab)])
                row += rows
            }
        }
        for s in 0..<prompts.count {
            #expect(got[s] == alone[s], "sequence \(s) differs inside a mixed batch")
        }
    }

    @Test func malformedBatchesAreRejected() throws {
        let tiny = try TinyLlama(seed: 4, type: .q8_0)
        defer { unlink(tiny.path) }
        let model = try Model.load(path: tiny.path)
        let cache = model.makeKVCache(capacity: 4)
        var gap = ForwardBatch()
        gap.append(token: 1, position: 1, sequence: 0, wantLogits: true)
        #expect(throws: ModelError.self) { try model.forward(gap, caches: [cache]) }
        var badToken = ForwardBatch()
        badToken.append(token: 300, position: 0, sequence: 0, wantLogits: true)
        #expect(throws: ModelError.self) { try model.forward(badToken, caches: [cache]) }
        var overflow = ForwardBatch()
        for i in 0..<5 { overflow.append(token: 5, position: i, sequence: 0, wantLogits: false) }
        #expect(throws: ModelError.self) { try model.forward(overflow, caches: [cache]) }
        #expect(cache.count == 0)
    }
}


/// A LoRA adapter applied at run time gives the logits of the weights merged as W + scale·B·A (computed here,
/// independently of the runtime), a fresh adapter (B = 0) and scale 0 give the base logits bit for bit.
@Suite struct TinyLlamaLoRATests {
    static let rank = 4
    static let alpha: Float = 8

    /// Random A/B for every projection of every layer; `zeroB` makes a freshly initialised adapter.
    static func modules(seed: UInt64, zeroB: Bool = false) -> [String: (a: [Float], b: [Float], rank: Int, scale: Float)] {
        var rng = SplitMix(seed)
        let D = TinyLlama.nEmbd, q = TinyLlama.nHead * TinyLlama.headDim, kv = TinyLlama.nHeadKV * TinyLlama.headDim
        let shapes: [(String, Int, Int)] = [("attn_q", D, q), ("attn_k", D, kv), ("attn_v", D, kv), ("attn_output", q, D),
                                            ("ffn_gate", D, TinyLlama.nFF), ("ffn_up", D, TinyLlama.nFF), ("ffn_down", TinyLlama.nFF, D)]
        var out: [String: (a: [Float], b: [Float], rank: Int, scale: Float)] = [:]
        for l in 0..<TinyLlama.nLayer {
            for (p, nIn, nOut) in shapes {
                let a = (0..<(rank * nIn)).map { _ in rng.nextFloat() * 0.3 }
                let b = (0..<(nOut * rank)).map { _ in zeroB ? 0 : rng.nextFloat() * 0.3 }
                out["blk.\(l).\(p).weight"] = (a, b, rank, alpha / Float(rank))
            }
        }
        return out
    }

    /// Writes the modules as a llama.cpp GGUF LoRA adapter (lora_a ne [n_in, r], lora_b ne [r, n_out]).
    static func writeAdapter(_ mods: [String: (a: [Float], b: [Float], rank: Int, scale: Float)]) throws -> String {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("general.type", .string("adapter"))
        w.set("adapter.type", .string("lora"))
        w.set("adapter.lora.alpha", .float32(alpha))
        for (name, m) in mods.sorted(by: { $0.key < $1.key }) {
            let nIn = m.a.count / m.rank, nOut = m.b.count / m.rank
            try w.addTensor(name: name + ".lora_a", dims: [nIn, m.rank], floats: m.a)
            try w.addTensor(name: name + ".lora_b", dims: [m.rank, nOut], floats: m.b)
        }
        let path = NSTemporaryDirectory() + "tiny-lora-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).gguf"
        try w.write(to: path)
        return path
    }

    static func logits(_ model: Model, _ tokens: [Int32], adapter: AdapterSet?) throws -> [Float] {
        var b = ForwardBatch()
        for (i, t) in tokens.enumerated() { b.append(token: t, position: i, sequence: 0, wantLogits: true, adapter: adapter) }
        return try model.forward(b, caches: [model.makeKVCache(capacity: 64)])
    }

    static let tokens: [Int32] = [1, 40, 41, 42, 290, 17, 3, 9]

    @Test func adapterEqualsMergedWeights() throws {
        let mods = Self.modules(seed: 11)
        let base = try TinyLlama(seed: 10, type: .f32)
        let merged = try TinyLlama(seed: 10, type: .f32, merge: mods)
        let adapterPath = try Self.writeAdapter(mods)
        defer { unlink(base.path); unlink(merged.path); unlink(adapterPath) }
        let opts = ModelOptions(threads: 2, kvCacheType: .f32)
        let baseModel = try Model.load(path: base.path, options: opts)
        let mergedModel = try Model.load(path: merged.path, options: opts)
        let adapter = try baseModel.loadGGUFAdapter(path: adapterPath, name: "t")
        #expect(adapter.modules.count == 7 * TinyLlama.nLayer)
        let withAdapter = try Self.logits(baseModel, Self.tokens, adapter: AdapterSet(adapter, scale: 1))
        let withMerged = try Self.logits(mergedModel, Self.tokens, adapter: nil)
        let plain = try Self.logits(baseModel, Self.tokens, adapter: nil)
        let diff = zip(withAdapter, withMerged).map { abs($0 - $1) }.max() ?? 0
        let effect = zip(plain, withMerged).map { abs($0 - $1) }.max() ?? 0
        #expect(effect > 0.1, "the adapter should change the logits (max change \(effect))")
        #expect(diff < 1e-3, "adapter vs merged weights: max |Δlogit| = \(diff)")
    }

    /// llama.cpp looks each adapter tensor up by its exact base name ("LoRA tensor ... does not exist in base
    /// model"): a layer number spelled differently ("blk.00"), a layer the base lacks, or a weight that is no block
    /// projection is refused, never folded onto another module.
    @Test func refusesTensorsThatMatchNoBaseWeight() throws {
        let base = try TinyLlama(seed: 15, type: .f32)
        defer { unlink(base.path) }
        let model = try Model.load(path: base.path, options: ModelOptions(threads: 1, kvCacheType: .f32))
        let layer0 = Self.modules(seed: 16).filter { $0.key.hasPrefix("blk.0.") }
        for (extra, offending) in [("blk.00.attn_q.weight", "blk.00.attn_q.weight.lora_a"),
                                   ("blk.+1.attn_q.weight", "blk.+1.attn_q.weight.lora_a"),
                                   ("blk.2.attn_q.weight", "blk.2.attn_q.weight.lora_a"),
                                   ("output.weight", "output.weight.lora_a")] {
            var mods = layer0
            let q = layer0["blk.0.attn_q.weight"]!
            mods[extra] = extra == "output.weight"
                ? ((0..<(Self.rank * TinyLlama.nEmbd)).map { _ in 0.1 }, (0..<(TinyLlama.nVocab * Self.rank)).map { _ in 0.1 }, Self.rank, 2)
                : q
            let path = try Self.writeAdapter(mods)
            defer { unlink(path) }
            do {
                _ = try model.loadGGUFAdapter(path: path, name: "t")
                Issue.record("accepted an adapter with \(extra)")
            } catch let e as AdapterError {
                #expect(e == .unknownTarget(tensor: offending), "\(extra)")
            }
        }
    }

    @Test func freshAdapterAndScaleZeroEqualBase() throws {
        let base = try TinyLlama(seed: 12, type: .q8_0)
        let fresh = try Self.writeAdapter(Self.modules(seed: 13, zeroB: true))
        let random = try Self.writeAdapter(Self.modules(seed: 14))
        defer { unlink(base.path); unlink(fresh); unlink(random) }
        let model = try Model.load(path: base.path, options: ModelOptions(threads: 2))
        let plain = try Self.logits(model, Self.tokens, adapter: nil)
        let zeroB = try Self.logits(model, Self.tokens, adapter: AdapterSet(model.loadGGUFAdapter(path: fresh, name: "f"), scale: 1))
        let zeroScale = try Self.logits(model, Self.tokens, adapter: AdapterSet(model.loadGGUFAdapter(path: random, name: "r"), scale: 0))
        #expect(plain == zeroB)
        #expect(plain == zeroScale)
    }
}
