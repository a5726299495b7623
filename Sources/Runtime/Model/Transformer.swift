// Transformer: the forward pass shared by every architecture (Gemma 3, Llama). Architecture files only decide
// the configuration and which tensors fill `LayerWeights`; this file holds the layer math.
//
// Data flow of one `forward` call over a ragged batch of `n` rows (dims in brackets):
//   token_embd rows [n, n_embd] (× sqrt(n_embd) for Gemma)
//   per block: attn_norm → project q [n, n_head·head_dim], k, v [n, n_head_kv·head_dim] → (Gemma: per-head q/k
//   RMSNorm) → RoPE → attention over each row's own sequence (KV cache + earlier rows of the batch, sliding
//   window where the layer has one) → project attn_output → (Gemma: post_attention_norm) → residual add →
//   ffn_norm → gate/up → act(gate)·up → ffn_down → (Gemma: post_ffw_norm) → residual add
//   output_norm on the rows that want logits → output head → logits [n_out, n_vocab]
//
// Every `y = W·x` goes through `project`, the single place where per-row LoRA terms are added.
import CKernels
import COpenBLAS

/// Weights of one transformer block. Quantized matrices point into the memory-mapped GGUF (never copied).
/// Package-visible so the trainer (Train target) reads the same weights as serving.
package struct LayerWeights {
    package var attnNorm: [Float]
    package var wq: WeightMatrix
    package var wk: WeightMatrix
    package var wv: WeightMatrix
    package var wo: WeightMatrix
    package var qNorm: [Float]?
    package var kNorm: [Float]?
    package var postAttnNorm: [Float]?
    package var ffnNorm: [Float]
    package var gate: WeightMatrix
    package var up: WeightMatrix
    package var down: WeightMatrix
    package var postFFNNorm: [Float]?

    /// The weight `[n_out, n_in]` of projection `p`.
    package func matrix(_ p: Projection) -> WeightMatrix {
        switch p {
        case .attnQ: return wq
        case .attnK: return wk
        case .attnV: return wv
        case .attnOutput: return wo
        case .ffnGate: return gate
        case .ffnUp: return up
        case .ffnDown: return down
        }
    }
}

/// All weights of a model.
package struct TransformerWeights {
    package var tokenEmbedding: WeightMatrix  // [n_vocab, n_embd]
    package var layers: [LayerWeights]
    package var outputNorm: [Float]
    package var output: WeightMatrix          // [n_vocab, n_embd]; the embedding itself when tied
    package var ropeFreqFactors: [Float]?     // Llama 3 `rope_freqs.weight`, [rope_dims / 2]
}

/// Per-call description of which rows belong to which sequence.
struct SequenceSpan {
    let cache: KVCache
    let firstRow: Int
    let rowCount: Int
    let startPosition: Int  // == cache.count before the call
}

/// The shared forward pass.
package final class Transformer: @unchecked Sendable {
    package let config: ModelConfig
    package let weights: TransformerWeights
    package let pool: ComputePool
    /// Kernel path of the matmuls and the attention dot products.
    let kernels: KernelPath

    init(config: ModelConfig, weights: TransformerWeights, pool: ComputePool, kernels: KernelPath = .best) {
        self.config = config
        self.weights = weights
        self.pool = pool
        self.kernels = kernels
    }

    // MARK: - Validation

    func spans(for batch: ForwardBatch, caches: [KVCache]) throws -> [SequenceSpan] {
        let n = batch.count
        guard batch.positions.count == n, batch.sequences.count == n, batch.wantLogits.count == n,
              batch.adapters.isEmpty || batch.adapters.count == n
        else { throw ModelError.invalidBatch("per-row arrays have different lengths") }
        var spans: [SequenceSpan] = []
        var seen = Set<Int>()
        var i = 0
        while i < n {
            let s = batch.sequences[i]
            guard s >= 0, s < caches.count else {
                throw ModelError.invalidBatch("row \(i) names sequence \(s), but \(caches.count) caches were given")
            }
            guard seen.insert(s).inserted else {
                throw ModelError.invalidBatch("rows of sequence \(s) are not contiguous")
            }
            let cache = caches[s]
            var j = i
            while j < n && batch.sequences[j] == s {
                guard batch.positions[j] == cache.count + (j - i) else {
                    throw ModelError.invalidBatch(
                        "row \(j) of sequence \(s) has position \(batch.positions[j]), expected \(cache.count + (j - i))")
                }
                let t = batch.tokens[j]
                guard t >= 0, Int(t) < config.nVocab else {
                    throw ModelError.invalidBatch("token id \(t) outside the vocabulary of \(config.nVocab)")
                }
                j += 1
            }
            guard cache.count + (j - i) <= cache.capacity else {
                throw ModelError.contextOverflow(sequence: s, needed: cache.count + (j - i), capacity: cache.capacity)
            }
            spans.append(SequenceSpan(cache: cache, firstRow: i, rowCount: j - i, startPosition: cache.count))
            i = j
        }
        return spans
    }

    // MARK: - Forward

    /// Runs the batch and returns logits `[n_out, n_vocab]` for the rows with `wantLogits`, in row order.
    func forward(_ batch: ForwardBatch, caches: [KVCache]) throws -> [Float] {
        let spans = try spans(for: batch, caches: caches)
        let n = batch.count
        if n == 0 { return [] }
        let c = config
        let D = c.nEmbd

        let x = FloatBuffer(n * D)       // residual stream [n, n_embd]
        let h = FloatBuffer(n * D)       // normed input [n, n_embd]
        let q = FloatBuffer(n * c.qDim)  // [n, n_head·head_dim]
        let k = FloatBuffer(n * c.kvDim) // [n, n_head_kv·head_dim]
        let v = FloatBuffer(n * c.kvDim)
        let att = FloatBuffer(n * c.qDim)
        let o = FloatBuffer(n * D)
        let g = FloatBuffer(n * c.nFF)   // [n, n_ff]
        let u = FloatBuffer(n * c.nFF)
        let kvType = spans.first?.cache.type ?? .f16
        let kRows = UnsafeMutableRawPointer.allocate(byteCount: max(1, n * c.kvDim * kvType.bytesPerValue), alignment: 64)
        let vRows = UnsafeMutableRawPointer.allocate(byteCount: max(1, n * c.kvDim * kvType.bytesPerValue), alignment: 64)
        defer { kRows.deallocate(); vRows.deallocate() }
        for span in spans where span.cache.type != kvType {
            throw ModelError.invalidBatch("all KV caches of one batch must have the same type")
        }

        // Embeddings.
        for i in 0..<n {
            weights.tokenEmbedding.dequantizeRow(Int(batch.tokens[i]), into: x.pointer + i * D)
        }
        if c.embeddingScale != 1 {
            let s = c.embeddingScale
            for i in 0..<(n * D) { x.pointer[i] *= s }
        }

        // RoPE angles per row, for each distinct base (global / sliding).
        let globalAngles = batch.positions.map {
            RopeAngles(position: $0, base: c.ropeFreqBase, dims: c.ropeDims, scale: c.ropeScale,
                       freqFactors: weights.ropeFreqFactors)
        }
        let swaAngles: [RopeAngles]? = c.layerUsesSlidingWindow.contains(true)
            ? batch.positions.map {
                RopeAngles(position: $0, base: c.ropeFreqBaseSWA, dims: c.ropeDims, scale: 1, freqFactors: nil)
            } : nil

        let segments = adapterSegments(batch)

        for l in 0..<c.nLayer {
            let lw = weights.layers[l]
            let sliding = c.layerUsesSlidingWindow[l]

            // Attention block.
            lw.attnNorm.withUnsafeBufferPointer { rmsNorm(x.pointer, $0.baseAddress, h.pointer, rows: n, width: D, eps: c.rmsEpsilon) }
            project(.attnQ, layer: l, lw.wq, h.pointer, n: n, q.pointer, segments: segments)
            project(.attnK, layer: l, lw.wk, h.pointer, n: n, k.pointer, segments: segments)
            project(.attnV, layer: l, lw.wv, h.pointer, n: n, v.pointer, segments: segments)
            if let qn = lw.qNorm, let kn = lw.kNorm {
                qn.withUnsafeBufferPointer { rmsNorm(q.pointer, $0.baseAddress, q.pointer, rows: n * c.nHead, width: c.headDim, eps: c.rmsEpsilon) }
                kn.withUnsafeBufferPointer { rmsNorm(k.pointer, $0.baseAddress, k.pointer, rows: n * c.nHeadKV, width: c.headDim, eps: c.rmsEpsilon) }
            }
            let angles = sliding ? (swaAngles ?? globalAngles) : globalAngles
            for i in 0..<n {
                applyRope(q.pointer + i * c.qDim, heads: c.nHead, headDim: c.headDim, angles: angles[i], style: c.ropeStyle)
                applyRope(k.pointer + i * c.kvDim, heads: c.nHeadKV, headDim: c.headDim, angles: angles[i], style: c.ropeStyle)
            }
            // Round the new keys/values to the cache type first, so a row attends to the same values whether they
            // come from this batch or from the cache later.
            storeRows(k.pointer, into: kRows, count: n * c.kvDim, type: kvType)
            storeRows(v.pointer, into: vRows, count: n * c.kvDim, type: kvType)
            attention(layer: l, sliding: sliding, spans: spans, q: q.pointer, kNew: kRows, vNew: vRows, out: att.pointer, n: n)
            for span in spans { writeCache(span, layer: l, kNew: kRows, vNew: vRows) }

            project(.attnOutput, layer: l, lw.wo, att.pointer, n: n, o.pointer, segments: segments)
            if let pn = lw.postAttnNorm {
                pn.withUnsafeBufferPointer { rmsNorm(o.pointer, $0.baseAddress, o.pointer, rows: n, width: D, eps: c.rmsEpsilon) }
            }
            addInPlace(x.pointer, o.pointer, count: n * D)

            // Feed-forward block.
            lw.ffnNorm.withUnsafeBufferPointer { rmsNorm(x.pointer, $0.baseAddress, h.pointer, rows: n, width: D, eps: c.rmsEpsilon) }
            project(.ffnGate, layer: l, lw.gate, h.pointer, n: n, g.pointer, segments: segments)
            project(.ffnUp, layer: l, lw.up, h.pointer, n: n, u.pointer, segments: segments)
            switch c.activation {
            case .geluTanh: ck_gelu_mul(g.pointer, u.pointer, g.pointer, n * c.nFF)
            case .silu: ck_silu_mul(g.pointer, u.pointer, g.pointer, n * c.nFF)
            }
            project(.ffnDown, layer: l, lw.down, g.pointer, n: n, o.pointer, segments: segments)
            if let pn = lw.postFFNNorm {
                pn.withUnsafeBufferPointer { rmsNorm(o.pointer, $0.baseAddress, o.pointer, rows: n, width: D, eps: c.rmsEpsilon) }
            }
            addInPlace(x.pointer, o.pointer, count: n * D)
        }
        for span in spans { span.cache.advance(by: span.rowCount) }

        // Output head on the rows that want logits.
        let outRows = (0..<n).filter { batch.wantLogits[$0] }
        if outRows.isEmpty { return [] }
        let xo = FloatBuffer(outRows.count * D)
        for (j, i) in outRows.enumerated() {
            (xo.pointer + j * D).update(from: x.pointer + i * D, count: D)
        }
        weights.outputNorm.withUnsafeBufferPointer {
            rmsNorm(xo.pointer, $0.baseAddress, xo.pointer, rows: outRows.count, width: D, eps: c.rmsEpsilon)
        }
        var logits = [Float](repeating: 0, count: outRows.count * c.nVocab)
        logits.withUnsafeMutableBufferPointer {
            matmul(weights.output, xo.pointer, n: outRows.count, $0.baseAddress!, pool: pool, path: kernels, logits: true)
        }
        return logits
    }

    // MARK: - Projections (the LoRA chokepoint)

    /// A run of consecutive rows that share one adapter set.
    struct AdapterSegment {
        let rows: Range<Int>
        let set: AdapterSet
    }

    func adapterSegments(_ batch: ForwardBatch) -> [AdapterSegment] {
        guard !batch.adapters.isEmpty else { return [] }
        var out: [AdapterSegment] = []
        var i = 0
        while i < batch.count {
            guard let set = batch.adapters[i] else { i += 1; continue }
            var j = i + 1
            while j < batch.count, let other = batch.adapters[j], other === set { j += 1 }
            out.append(AdapterSegment(rows: i..<j, set: set))
            i = j
        }
        return out
    }

    /// `y[n, n_out] = x[n, n_in] · Wᵀ`, then for each segment of rows that uses adapters,
    /// `y[rows] += scale · (x[rows]·Aᵀ)·Bᵀ` per adapter (segmented as Punica's SGMV / S-LoRA: the base product is
    /// computed once for the whole batch, never merged per request).
    @inline(__always)
    func project(_ p: Projection, layer: Int, _ w: WeightMatrix, _ x: UnsafePointer<Float>, n: Int,
                 _ y: UnsafeMutablePointer<Float>, segments: [AdapterSegment]) {
        matmul(w, x, n: n, y, pool: pool, path: kernels)
        guard !segments.isEmpty else { return }
        let key = ModuleKey(layer: layer, projection: p)
        // Segments own disjoint rows of y, so they run in parallel. Within a segment each row is its own
        // m = 1 product, so a row's result does not depend on how rows are grouped or on the thread.
        let apply: (Int) -> Void = { i in
            let seg = segments[i]
            for entry in seg.set.entries where entry.scale != 0 {
                guard let module = entry.adapter.modules[key] else { continue }
                for r in seg.rows {
                    applyLoRA(module, userScale: entry.scale, x: x + r * w.cols, ldx: w.cols, m: 1,
                              y: y + r * w.rows, ldy: w.rows)
                }
            }
        }
        if segments.count == 1 { apply(0) } else { pool.parallelFor(segments.count, apply) }
    }

    // MARK: - Attention

    func storeRows(_ src: UnsafePointer<Float>, into dst: UnsafeMutableRawPointer, count: Int, type: KVCacheType) {
        switch type {
        case .f16: ck_f32_to_f16(src, dst.assumingMemoryBound(to: UInt16.self), count)
        case .f32: dst.assumingMemoryBound(to: Float.self).update(from: src, count: count)
        }
    }

    func writeCache(_ span: SequenceSpan, layer: Int, kNew: UnsafeMutableRawPointer, vNew: UnsafeMutableRawPointer) {
        let store = span.cache.layers[layer]
        let rowBytes = store.rowBytes
        store.reserve(position: span.startPosition + span.rowCount - 1)
        // A ring keeps only the last `slots` positions; earlier rows of a long chunk would be overwritten anyway.
        let first = store.ring ? max(0, span.rowCount - store.slots) : 0
        for r in first..<span.rowCount {
            let pos = span.startPosition + r
            store.keyRow(pos).copyMemory(from: kNew + (span.firstRow + r) * rowBytes, byteCount: rowBytes)
            store.valueRow(pos).copyMemory(from: vNew + (span.firstRow + r) * rowBytes, byteCount: rowBytes)
        }
    }

    /// Scaled dot-product attention with a causal mask (and a sliding window on SWA layers), grouped-query:
    /// query head `h` reads key/value head `h / (n_head / n_head_kv)`. Keys before the batch come from the
    /// cache, keys of the batch from `kNew`/`vNew` (already rounded to the cache type). Each (row, head) is
    /// computed the same way whatever else is in the batch.
    func attention(layer: Int, sliding: Bool, spans: [SequenceSpan], q: UnsafeMutablePointer<Float>,
                   kNew: UnsafeMutableRawPointer, vNew: UnsafeMutableRawPointer, out: UnsafeMutablePointer<Float>, n: Int) {
        let c = config
        let headDim = c.headDim
        let group = c.nHead / c.nHeadKV
        let window = sliding ? c.slidingWindow : nil
        let scale = c.attentionScale
        // Map rows to spans.
        var spanOfRow = [Int](repeating: 0, count: n)
        for (si, s) in spans.enumerated() { for r in s.firstRow..<(s.firstRow + s.rowCount) { spanOfRow[r] = si } }
        let threads = pool.threads
        let maxKeys = spans.map { $0.startPosition + $0.rowCount }.max() ?? 1
        let rowBytes = c.kvDim * (spans.first?.cache.type.bytesPerValue ?? 2)
        let isF16 = (spans.first?.cache.type ?? .f16) == .f16
        let path = kernels.rawValue
        // Work items: one (row, KV head) with all `group` query heads of that KV head when there are enough of
        // them to keep every thread busy (each f16 key/value row is then converted once for the group), else one
        // (row, query head). The arithmetic per head is the same either way (bitwise).
        let headsPerItem = isF16 && group > 1 && n * c.nHeadKV >= 2 * threads ? group : 1
        let itemsPerRow = c.nHead / headsPerItem
        let total = n * itemsPerRow
        spanOfRow.withUnsafeBufferPointer { spanOfRowP in
            pool.run { t in
                let scores = UnsafeMutablePointer<Float>.allocate(capacity: maxKeys * headsPerItem)
                let tmp = UnsafeMutablePointer<Float>.allocate(capacity: headsPerItem)
                defer {
                    scores.deallocate()
                    tmp.deallocate()
                }
                var item = t
                while item < total {
                    let row = item / itemsPerRow
                    let head = (item % itemsPerRow) * headsPerItem
                    item += threads
                    let span = spans[spanOfRowP[row]]
                    let store = span.cache.layers[layer]
                    let pos = span.startPosition + (row - span.firstRow)
                    let lo = window.map { max(0, pos - $0 + 1) } ?? 0
                    let qv = q + row * c.qDim + head * headDim
                    let kvOff = (head / group) * headDim
                    let o = out + row * c.qDim + head * headDim
                    o.initialize(repeating: 0, count: headDim * headsPerItem)
                    let nKeys = pos - lo + 1
                    // Scores: head h of the item at scores[h * maxKeys + j].
                    for j in 0..<nKeys {
                        let p = lo + j
                        let kRow: UnsafeRawPointer = p < span.startPosition
                            ? UnsafeRawPointer(store.keyRow(p))
                            : UnsafeRawPointer(kNew + (span.firstRow + p - span.startPosition) * rowBytes)
                        if headsPerItem > 1 {
                            ck_dot_f32_f16_heads_p(path, qv, headDim, headsPerItem,
                                                 kRow.assumingMemoryBound(to: UInt16.self) + kvOff, headDim, tmp)
                            for h in 0..<headsPerItem { scores[h * maxKeys + j] = tmp[h] * scale }
                        } else {
                            let dot = isF16
                                ? ck_dot_f32_f16_p(path, qv, kRow.assumingMemoryBound(to: UInt16.self) + kvOff, headDim)
                                : ck_dot_f32_p(path, qv, kRow.assumingMemoryBound(to: Float.self) + kvOff, headDim)
                            scores[j] = dot * scale
                        }
                    }
                    for h in 0..<headsPerItem { _ = ck_softmax(scores + h * maxKeys, nKeys) }
                    if headsPerItem > 1 {
                        for j in 0..<nKeys {
                            let p = lo + j
                            let vRow: UnsafeRawPointer = p < span.startPosition
                                ? UnsafeRawPointer(store.valueRow(p))
                                : UnsafeRawPointer(vNew + (span.firstRow + p - span.startPosition) * rowBytes)
                            for h in 0..<headsPerItem { tmp[h] = scores[h * maxKeys + j] }
                            ck_axpy_f16_heads_p(path, tmp, headsPerItem, vRow.assumingMemoryBound(to: UInt16.self) + kvOff, o,
                                              headDim, headDim)
                        }
                        continue
                    }
                    for j in 0..<nKeys {
                        let p = lo + j
                        let vRow: UnsafeRawPointer = p < span.startPosition
                            ? UnsafeRawPointer(store.valueRow(p))
                            : UnsafeRawPointer(vNew + (span.firstRow + p - span.startPosition) * rowBytes)
                        if isF16 {
                            ck_axpy_f16_p(path, scores[j], vRow.assumingMemoryBound(to: UInt16.self) + kvOff, o, headDim)
                        } else {
                            ck_axpy_f32_p(path, scores[j], vRow.assumingMemoryBound(to: Float.self) + kvOff, o, headDim)
                        }
                    }
                }
            }
        }
    }
}
