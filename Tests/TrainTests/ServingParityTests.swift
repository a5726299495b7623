// The trainer computes the function serving computes: log-probabilities from `LoRATrainer.logProbs` against
// log-softmax of `Model.forward` logits, with and without the adapter (served through `LoRAParameters.makeAdapter`),
// on a tiny f32 Llama-shaped model (f32 weights and an f32 KV cache keep serving's activations in f32, and SiLU is
// exact in both).
import Foundation
import Runtime
import Testing
import Train

@Suite struct ServingParityTests {
    static func servedLogProbs(_ model: Model, _ seq: TrainingSequence, adapter: AdapterSet?) throws -> [Double] {
        let cache = model.makeKVCache(capacity: seq.inputIds.count)
        var batch = ForwardBatch()
        for (i, t) in seq.inputIds.enumerated() {
            batch.append(token: t, position: i, sequence: 0, wantLogits: i + 1 < seq.inputIds.count && seq.labelsMask[i + 1] == 1,
                         adapter: adapter)
        }
        let logits = try model.forward(batch, caches: [cache])
        let V = model.config.nVocab
        var out: [Double] = []
        var row = 0
        for i in 1..<seq.inputIds.count where seq.labelsMask[i] == 1 {
            let l = logits[(row * V)..<((row + 1) * V)].map(Double.init)
            let m = l.max()!
            let lse = m + log(l.reduce(0) { $0 + exp($1 - m) })
            out.append(l[Int(seq.inputIds[i])] - lse)
            row += 1
        }
        return out
    }

    @Test func logProbsMatchServing() throws {
        let model = try TinyModel.make(arch: "llama", type: .f32, seed: 41, layers: 2, kvCacheType: .f32)
        let trainer = try LoRATrainer(model: model, threads: 2)
        let params = TinyModel.params(model, layers: [0, 1], seed: 42)
        let seq = TinyModel.sequence(12, seed: 43, scoreAll: true)
        let adapter = AdapterSet(params.makeAdapter(name: "t"))
        for (p, set) in [(nil, nil), (params, adapter)] as [(LoRAParameters?, AdapterSet?)] {
            let mine = try trainer.logProbs(params: p, batch: [seq])[0].tokenLogProbs
            let served = try Self.servedLogProbs(model, seq, adapter: set)
            #expect(mine.count == served.count)
            let worst = zip(mine, served).map { abs($0 - $1) }.max()!
            print("trainer vs serving log-probabilities (\(p == nil ? "base" : "adapter")): worst difference \(worst)")
            #expect(worst < 5e-5)
        }
    }

    /// The token accuracy the trainer counts (`correct`: scored tokens whose largest logit is the target) equals the
    /// argmax of serving's logits, on a sequence whose second half serving generated greedily (all right) after a
    /// random first half (mostly wrong), with and without the adapter.
    @Test func tokenAccuracyMatchesServingArgmax() throws {
        let model = try TinyModel.make(arch: "llama", type: .f32, seed: 41, layers: 2, kvCacheType: .f32)
        let trainer = try LoRATrainer(model: model, threads: 2)
        let params = TinyModel.params(model, layers: [0, 1], seed: 42)
        let V = model.config.nVocab
        func servedArgmax(_ ids: [Int32], _ adapter: AdapterSet?) throws -> [Int32] {
            let cache = model.makeKVCache(capacity: ids.count)
            var batch = ForwardBatch()
            for (i, t) in ids.enumerated() { batch.append(token: t, position: i, sequence: 0, wantLogits: true, adapter: adapter) }
            let logits = try model.forward(batch, caches: [cache])
            return (0..<ids.count).map { r in
                let l = logits[(r * V)..<((r + 1) * V)]
                return Int32(l.indices.max { l[$0] < l[$1] }! - r * V)
            }
        }
        for (p, set) in [(nil, nil), (params, AdapterSet(params.makeAdapter(name: "t")))] as [(LoRAParameters?, AdapterSet?)] {
            var ids = TinyModel.sequence(8, seed: 44).inputIds
            for _ in 0..<8 { ids.append(try servedArgmax(ids, set).last!) }
            let seq = TrainingSequence(inputIds: ids, labelsMask: [0] + [UInt8](repeating: 1, count: ids.count - 1))
            let predicted = try servedArgmax(ids, set)
            let servedHits = (1..<ids.count).filter { predicted[$0 - 1] == ids[$0] }.count
            let r = try trainer.evalLoss(params: p, batch: [seq])
            print("token accuracy (\(p == nil ? "base" : "adapter")): trainer \(r.correct)/\(r.tokens), serving argmax \(servedHits)")
            #expect(servedHits >= 8 && servedHits < r.tokens)
            #expect(r.correct == servedHits)
            if let p {
                let g = try trainer.sftLossAndGradient(params: p, batch: [seq])
                #expect(g.correct == servedHits && g.tokens == r.tokens)
            }
        }
    }
}
