// Whole-network LoRA gradients of tiny random Gemma-3- and Llama-shaped models (Q8_0 weights) against central
// differences of the loss: two sequences packed in one batch, a sliding window (3) shorter than the sequences,
// grouped-query attention (n_head 4, n_head_kv 2), a patched layer above an unpatched one (the backward stops
// there), SFT and DPO.
//
// The loss is the trainer's own float32 forward (summed in double), so the differences carry float32 rounding:
// step h = 1e-2 on parameters of size ~0.1, tolerance 5e-3 on the relative L2 error of the sampled coordinates
// (largest seen: 7e-4, gemma3 DPO).
import Foundation
import Runtime
import Testing
import Train

@Suite struct NetworkGradientTests {
    static func patchedLayers(_ arch: String) -> [Int] { arch == "gemma3" ? [1, 5] : [1] }

    /// Samples `count` coordinates spread over every slot's lora_A and lora_B.
    static func sample(_ p: LoRAParameters, count: Int, seed: UInt64) -> [Int] {
        var rng = SplitMix(seed)
        var idx: [Int] = []
        for s in p.slots {
            idx.append(s.offsetA + rng.int(s.countA))
            idx.append(s.offsetB + rng.int(s.countB))
        }
        while idx.count < count { idx.append(rng.int(p.count)) }
        return idx
    }

    static func finiteDifferences(_ p: LoRAParameters, _ idx: [Int], h: Float,
                                  loss: (LoRAParameters) throws -> Double) rethrows -> [Double] {
        try idx.map { i in
            var plus = p, minus = p
            plus.values[i] += h
            minus.values[i] -= h
            let hh = Double(plus.values[i]) - Double(minus.values[i])
            return (try loss(plus) - loss(minus)) / hh
        }
    }

    @Test(arguments: ["gemma3", "llama"])
    func sftGradientMatchesCentralDifferences(arch: String) throws {
        let model = try TinyModel.make(arch: arch, type: .q8_0, seed: 11, layers: arch == "gemma3" ? 6 : 2)
        let trainer = try LoRATrainer(model: model, threads: 2)
        let params = TinyModel.params(model, layers: Self.patchedLayers(arch), seed: 5)
        let batch = [TinyModel.sequence(9, seed: 1), TinyModel.sequence(6, seed: 2)]
        let r = try trainer.sftLossAndGradient(params: params, batch: batch)
        #expect(r.tokens == batch.reduce(0) { $0 + $1.scoredCount })
        let eval = try trainer.evalLoss(params: params, batch: batch)
        #expect(abs(eval.loss - r.loss) <= 1e-6 * abs(r.loss), "evalLoss \(eval.loss) vs \(r.loss)")
        let idx = Self.sample(params, count: 64, seed: 3)
        let fd = try Self.finiteDifferences(params, idx, h: 1e-2) { try trainer.evalLoss(params: $0, batch: batch).loss }
        let an = idx.map { Double(r.grad[$0]) }
        let (rel, maxAbs) = compare(an, fd)
        print("\(arch) SFT: loss \(r.loss), FD rel error \(rel), max abs \(maxAbs)")
        #expect(rel < 5e-3, "relative error \(rel)")
        #expect(an.contains { $0 != 0 })
    }

    @Test(arguments: ["gemma3", "llama"])
    func dpoGradientMatchesCentralDifferences(arch: String) throws {
        let model = try TinyModel.make(arch: arch, type: .q8_0, seed: 12, layers: arch == "gemma3" ? 6 : 2)
        let trainer = try LoRATrainer(model: model, threads: 2)
        let params = TinyModel.params(model, layers: Self.patchedLayers(arch), seed: 6)
        let start = TinyModel.params(model, layers: Self.patchedLayers(arch), seed: 7)
        let pairs = [PreferencePair(chosen: TinyModel.sequence(8, seed: 21), rejected: TinyModel.sequence(7, seed: 22)),
                     PreferencePair(chosen: TinyModel.sequence(6, seed: 23), rejected: TinyModel.sequence(9, seed: 24))]
        for reference in [DPOReference.base, .adapter(start)] {
            let r = try trainer.dpoLossAndGradient(params: params, pairs: pairs, beta: 0.5, reference: reference)
            // The log-probabilities agree with logProbs, and the loss with its definition.
            let pol = try trainer.logProbs(params: params, batch: pairs.flatMap { [$0.chosen, $0.rejected] })
            let refParams: LoRAParameters? = { if case .adapter(let p) = reference { return p } else { return nil } }()
            let ref = try trainer.logProbs(params: refParams, batch: pairs.flatMap { [$0.chosen, $0.rejected] })
            var loss = 0.0
            for (i, p) in r.pairs.enumerated() {
                #expect(abs(p.policyChosen - pol[2 * i].sum) < 1e-9 && abs(p.referenceRejected - ref[2 * i + 1].sum) < 1e-9)
                let z = 0.5 * ((p.policyChosen - p.referenceChosen) - (p.policyRejected - p.referenceRejected))
                loss += log(1 + exp(-z)) / Double(pairs.count)
            }
            #expect(abs(loss - r.loss) < 1e-9)
            let idx = Self.sample(params, count: 48, seed: 4)
            let fd = try Self.finiteDifferences(params, idx, h: 1e-2) {
                try trainer.dpoLossAndGradient(params: $0, pairs: pairs, beta: 0.5, reference: reference).loss
            }
            let an = idx.map { Double(r.grad[$0]) }
            let (rel, maxAbs) = compare(an, fd)
            print("\(arch) DPO (\(refParams == nil ? "base" : "adapter") reference): loss \(r.loss), FD rel error \(rel), max abs \(maxAbs)")
            #expect(rel < 5e-3, "relative error \(rel)")
        }
    }

    /// SFT + DPO in one batch (`MixedObjective`): the loss is the example-weighted mean of the two parts', and its
    /// gradient matches central differences of that loss.
    @Test func mixedObjectiveGradientMatchesCentralDifferences() throws {
        let model = try TinyModel.make(arch: "gemma3", type: .q8_0, seed: 15, layers: 6)
        let trainer = try LoRATrainer(model: model, threads: 2)
        let params = TinyModel.params(model, layers: Self.patchedLayers("gemma3"), seed: 9)
        let sequences = [TinyModel.sequence(9, seed: 41), TinyModel.sequence(6, seed: 42)]
        let pairs = [PreferencePair(chosen: TinyModel.sequence(8, seed: 43), rejected: TinyModel.sequence(7, seed: 44))]
        let mixed = MixedObjective(
            sft: SFTObjective(trainer: trainer, examples: sequences),
            dpo: DPOObjective(trainer: trainer, pairs: pairs, beta: 0.5, reference: .base))
        #expect(mixed.trainingCount == 3)
        let r = try mixed.lossAndGradient(params: params, indices: [0, 2, 1])
        let sft = try trainer.sftLossAndGradient(params: params, batch: sequences)
        let dpo = try trainer.dpoLossAndGradient(params: params, pairs: pairs, beta: 0.5, reference: .base)
        #expect(abs(r.loss - (2 * sft.loss + dpo.loss) / 3) < 1e-9 && r.weight == 3)
        let idx = Self.sample(params, count: 48, seed: 5)
        let fd = try Self.finiteDifferences(params, idx, h: 1e-2) {
            try mixed.lossAndGradient(params: $0, indices: [0, 1, 2]).loss
        }
        let (rel, maxAbs) = compare(idx.map { Double(r.grad[$0]) }, fd)
        print("gemma3 SFT+DPO: loss \(r.loss), FD rel error \(rel), max abs \(maxAbs)")
        #expect(rel < 5e-3, "relative error \(rel)")
        // Only one kind in the batch: exactly that objective.
        let onlySFT = try mixed.lossAndGradient(params: params, indices: [0, 1])
        #expect(abs(onlySFT.loss - sft.loss) < 1e-12 && onlySFT.grad == sft.grad)
    }

    /// A batch of two sequences gives the loss and gradient of the token-weighted sum of each alone (packing keeps
    /// sequences apart), and f32 weights give the same as the tiny model in one thread.
    @Test func packingMatchesSeparateSequences() throws {
        let model = try TinyModel.make(arch: "gemma3", type: .f32, seed: 13, layers: 6)
        let trainer = try LoRATrainer(model: model, threads: 2)
        let params = TinyModel.params(model, layers: [0, 3, 5], rank: 2, alpha: 4, rs: true, seed: 8)
        let a = TinyModel.sequence(10, seed: 31), b = TinyModel.sequence(7, seed: 32)
        let both = try trainer.sftLossAndGradient(params: params, batch: [a, b])
        let ra = try trainer.sftLossAndGradient(params: params, batch: [a])
        let rb = try trainer.sftLossAndGradient(params: params, batch: [b])
        let na = Double(ra.tokens), nb = Double(rb.tokens)
        let loss = (ra.loss * na + rb.loss * nb) / (na + nb)
        #expect(abs(both.loss - loss) < 1e-5 * loss)
        let combined = (0..<params.count).map { (Double(ra.grad[$0]) * na + Double(rb.grad[$0]) * nb) / (na + nb) }
        let (rel, _) = compare(both.grad.map(Double.init), combined)
        #expect(rel < 1e-4, "packed vs separate gradient relative error \(rel)")
        let single = try LoRATrainer(model: model, threads: 1).sftLossAndGradient(params: params, batch: [a, b])
        #expect(abs(single.loss - both.loss) < 1e-5 * both.loss)
        #expect(compare(single.grad.map(Double.init), both.grad.map(Double.init)).rel < 1e-4)
    }

    /// Bad input is a typed error, never a crash.
    @Test func badInputIsRefused() throws {
        let model = try TinyModel.make(arch: "llama", type: .f32, seed: 14, layers: 2)
        let trainer = try LoRATrainer(model: model, threads: 1)
        let p = TinyModel.params(model, layers: [0], seed: 1)
        #expect(throws: TrainError.emptyBatch) { try trainer.sftLossAndGradient(params: p, batch: []) }
        #expect(throws: TrainError.noScoredTokens) {
            try trainer.sftLossAndGradient(params: p, batch: [TrainingSequence(inputIds: [5, 6], labelsMask: [0, 0])])
        }
        #expect(throws: TrainError.self) {
            try trainer.sftLossAndGradient(params: p, batch: [TrainingSequence(inputIds: [5, 6], labelsMask: [0])])
        }
        #expect(throws: TrainError.self) {
            try trainer.sftLossAndGradient(params: p, batch: [TrainingSequence(inputIds: [5, 900], labelsMask: [0, 1])])
        }
        #expect(throws: TrainError.self) {
            try trainer.sftLossAndGradient(params: p, batch: [TrainingSequence(inputIds: [5, 6], labelsMask: [1, 1])])
        }
        let other = try TinyModel.make(arch: "gemma3", type: .f32, seed: 15, layers: 6)
        let wrong = TinyModel.params(other, layers: [5], seed: 1)
        #expect(throws: TrainError.self) {
            try trainer.sftLossAndGradient(params: wrong, batch: [TinyModel.sequence(4, seed: 1, scoreAll: true)])
        }
        #expect(throws: TrainError.self) {
            try trainer.dpoLossAndGradient(params: p, pairs: [], beta: 0.1, reference: .base)
        }
        #expect(throws: TrainError.self) { try LoRATrainer(model: model, threads: 0) }
    }
}
