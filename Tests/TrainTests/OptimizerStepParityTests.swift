// Optimizer steps against PyTorch + PEFT (torch.optim.AdamW, clip_grad_norm_, float64) on the default model:
// ../shared/reference/gemma-3-270m-q4_k_m/train/ (README there), `sft_steps` / `dpo_steps` of train-reference.json
// and the adapters `sft-after-8-steps/`, `dpo-after-4-steps/`.
// From the start adapter `../lora-r8/peft`: the whole batch at every step, gradients clipped to a global L2 norm of
// 1.0, AdamW (β1 0.9, β2 0.999, eps 1e-8, decoupled weight decay 0.01), constant lr; the loss of step k is measured
// before step k's update. Every step's loss within 2% of the reference's, every tensor of the final adapter with
// cosine ≥ 0.999 to the reference's. Skipped with a message when LORAD_MODEL or LORAD_REFERENCE_DIR is not set.
import Foundation
import Runtime
import Testing
import Train

/// `sft_steps` / `dpo_steps` of train-reference.json.
struct ReferenceSteps: Decodable {
    struct Step: Decodable {
        let step: Int
        let loss: Double
        let grad_norm: Double
        let lr: Double
    }
    let lr: Double
    let betas: [Double]
    let eps: Double
    let weight_decay: Double
    let clip_grad_norm: Double
    let beta: Double?
    let steps: [Step]
}

struct ReferenceStepsFile: Decodable {
    let sft_steps: ReferenceSteps
    let dpo_steps: ReferenceSteps
}

@Suite(.serialized) struct OptimizerStepParityTests {
    static func referenceSteps(_ dir: URL) throws -> ReferenceStepsFile {
        try JSONDecoder().decode(ReferenceStepsFile.self, from: Data(contentsOf: dir.appendingPathComponent("train-reference.json")))
    }

    /// Runs `steps.steps.count` clipped AdamW steps with `lossAndGradient`, checking each step's loss against the
    /// reference, then compares the final adapter with the PEFT adapter in `after`. Returns the worst tensor cosine.
    static func run(label: String, params start: LoRAParameters, steps ref: ReferenceSteps, after: URL,
                    lossAndGradient: (LoRAParameters) throws -> (loss: Double, grad: [Float])) throws {
        #expect(ref.betas.count == 2)
        var params = start
        var optimizer = AdamW(count: params.count,
                              config: AdamWConfig(beta1: ref.betas[0], beta2: ref.betas[1], eps: ref.eps,
                                                  weightDecay: ref.weight_decay))
        print("\(label): step  loss (reference, rel)  pre-clip grad norm (reference)")
        for s in ref.steps {
            let t0 = Date()
            let r = try lossAndGradient(params)
            var grad = r.grad
            let norm = GradientClipping.clip(&grad, maxNorm: ref.clip_grad_norm)
            optimizer.step(params: &params.values, grad: grad, lr: s.lr)
            let rel = abs(r.loss - s.loss) / s.loss
            print(String(format: "%@: step %d  loss %.6f (%.6f, %.2e)  grad norm %.4f (%.4f)  %.1f s", label, s.step,
                         r.loss, s.loss, rel, norm, s.grad_norm, Date().timeIntervalSince(t0)))
            #expect(rel <= 0.02, "\(label) step \(s.step): loss \(r.loss) vs reference \(s.loss)")
            #expect(norm.isFinite && norm > 0)
        }
        // The final adapter, tensor by tensor, against the PEFT file (f32, PEFT names).
        let file = try SafetensorsFile(path: after.appendingPathComponent("adapter_model.safetensors").path)
        var worst = 1.0, worstName = ""
        for s in params.slots {
            let base = "base_model.model.model.layers.\(s.key.layer).\(huggingFaceModuleName(s.key.projection))"
            for (suffix, off, n) in [("lora_A", s.offsetA, s.countA), ("lora_B", s.offsetB, s.countB)] {
                let r = try file.floats(named: "\(base).\(suffix).weight")
                try #require(r.count == n, "\(base).\(suffix): \(r.count) elements, expected \(n)")
                var dot = 0.0, na = 0.0, nb = 0.0
                for i in 0..<n {
                    let a = Double(params.values[off + i]), b = Double(r[i])
                    dot += a * b; na += a * a; nb += b * b
                }
                let cos = dot / (na.squareRoot() * nb.squareRoot())
                if !(cos >= worst) { worst = cos; worstName = "\(base).\(suffix)" }
                #expect(cos >= 0.999, "\(label): \(base).\(suffix) cosine \(cos)")
            }
        }
        print(String(format: "%@: final adapter vs reference: worst tensor cosine %.7f", label, worst) + " (\(worstName))")
    }

    @Test func sftEightAdamWStepsMatchPyTorch() throws {
        guard let (model, dir) = try PEFTParityTests.setup() else { return }
        let trainer = try LoRATrainer(model: model, threads: 2, cacheWeights: true)
        let params = try PEFTParityTests.startParameters(model, dir: dir)
        let batch = try JSONDecoder().decode(SFTBatchFile.self, from: Data(contentsOf: dir.appendingPathComponent("sft-batch.json")))
        let ref = try Self.referenceSteps(dir).sft_steps
        #expect(ref.steps.count == 8 && ref.lr == 1e-3 && ref.clip_grad_norm == 1.0)
        let sequences = batch.examples.map(\.sequence)
        try Self.run(label: "SFT", params: params, steps: ref, after: dir.appendingPathComponent("sft-after-8-steps")) { p in
            let r = try trainer.sftLossAndGradient(params: p, batch: sequences)
            return (r.loss, r.grad)
        }
    }

    @Test func dpoFourAdamWStepsMatchPyTorch() throws {
        guard let (model, dir) = try PEFTParityTests.setup() else { return }
        let trainer = try LoRATrainer(model: model, threads: 2, cacheWeights: true)
        let params = try PEFTParityTests.startParameters(model, dir: dir)
        let batch = try JSONDecoder().decode(DPOBatchFile.self, from: Data(contentsOf: dir.appendingPathComponent("dpo-batch.json")))
        let ref = try Self.referenceSteps(dir).dpo_steps
        let beta = try #require(ref.beta)
        #expect(ref.steps.count == 4 && ref.lr == 5e-4 && beta == batch.beta)
        let pairs = batch.pairs.map { PreferencePair(chosen: $0.chosen.sequence, rejected: $0.rejected.sequence) }
        try Self.run(label: "DPO", params: params, steps: ref, after: dir.appendingPathComponent("dpo-after-4-steps")) { p in
            let r = try trainer.dpoLossAndGradient(params: p, pairs: pairs, beta: beta, reference: .base)
            return (r.loss, r.grad)
        }
    }
}
