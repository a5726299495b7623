// The trainer against PyTorch + PEFT (transformers 5.25, peft 0.21.2, float64) on the default model:
// ../shared/reference/gemma-3-270m-q4_k_m/train/ (README there). SFT loss within 1e-4 relative, every lora_A /
// lora_B gradient with cosine ≥ 0.999 and norm within 1%; DPO log-probabilities within 1e-3, loss and gradients at
// the same bounds. Skipped with a message when the model or the references are not found (TrainTestSupport).
import Foundation
import Runtime
import Testing
import Train

struct ReferenceSequence: Decodable {
    let input_ids: [Int32]
    let labels_mask: [UInt8]
    var sequence: TrainingSequence { TrainingSequence(inputIds: input_ids, labelsMask: labels_mask) }
}

struct SFTBatchFile: Decodable {
    let examples: [ReferenceSequence]
}

struct DPOBatchFile: Decodable {
    struct Pair: Decodable {
        let chosen: ReferenceSequence
        let rejected: ReferenceSequence
    }
    let beta: Double
    let pairs: [Pair]
}

struct TrainReference: Decodable {
    struct SFT: Decodable { let loss: Double }
    struct DPOPair: Decodable {
        let name: String
        let policy_chosen_logp: Double
        let policy_rejected_logp: Double
        let reference_chosen_logp: Double
        let reference_rejected_logp: Double
    }
    struct DPO: Decodable {
        let loss: Double
        let pairs: [DPOPair]
    }
    let sft: SFT
    let dpo: DPO
}

@Suite(.serialized) struct PEFTParityTests {
    /// The start adapter `../lora-r8/peft` as trainable parameters (rank 8, alpha 16, all 7 projections, all layers).
    static func startParameters(_ model: Model, dir: URL) throws -> LoRAParameters {
        let adapter = try model.loadPEFTAdapter(directory: dir.appendingPathComponent("../lora-r8/peft").path,
                                                name: "start")
        let rank = adapter.rank
        let alpha = adapter.alpha ?? Float(rank)
        var p = LoRAParameters(config: LoRAConfig(rank: rank, alpha: alpha, useRSLoRA: adapter.usesRSLoRA,
                                                  targets: Projection.allCases, layers: Array(0..<model.config.nLayer)),
                               model: model.config)
        for s in p.slots {
            let m = try #require(adapter.modules[s.key])
            #expect(abs(m.scale - p.config.scale) < 1e-6)
            for i in 0..<s.countA { p.values[s.offsetA + i] = m.a[i] }
            for i in 0..<s.countB { p.values[s.offsetB + i] = m.b[i] }
        }
        return p
    }

    /// Compares every tensor's gradient with the reference file; returns the worst cosine and norm ratio.
    static func compareGradients(_ grad: [Float], _ p: LoRAParameters, file: URL) throws
        -> (cos: Double, ratio: Double, ratioTensor: String)
    {
        let ref = try SafetensorsFile(path: file.path)
        var worstCos = 1.0, worstRatio = 1.0, worstName = ""
        for s in p.slots {
            let base = "base_model.model.model.layers.\(s.key.layer).\(huggingFaceModuleName(s.key.projection))"
            for (suffix, off, n) in [("lora_A", s.offsetA, s.countA), ("lora_B", s.offsetB, s.countB)] {
                let r = try ref.floats(named: "\(base).\(suffix).weight")
                #expect(r.count == n)
                var dot = 0.0, na = 0.0, nb = 0.0
                for i in 0..<n {
                    let a = Double(grad[off + i]), b = Double(r[i])
                    dot += a * b; na += a * a; nb += b * b
                }
                let cos = dot / (na.squareRoot() * nb.squareRoot())
                let ratio = (na / nb).squareRoot()
                if cos < worstCos { worstCos = cos }
                if abs(ratio - 1) > abs(worstRatio - 1) {
                    worstRatio = ratio
                    worstName = "\(base).\(suffix) (norm \(nb.squareRoot()))"
                }
                #expect(cos >= 0.999, "\(base).\(suffix): cosine \(cos)")
                #expect(abs(ratio - 1) <= 0.01, "\(base).\(suffix): norm ratio \(ratio)")
            }
        }
        return (worstCos, worstRatio, worstName)
    }

    static func setup() throws -> (Model, URL)? {
        guard TrainTestSupport.hasModel, TrainTestSupport.hasReference else {
            print("PEFTParityTests skipped: set LORAD_MODEL to the default model and LORAD_REFERENCE_DIR to the reference directory")
            return nil
        }
        return (try Model.load(path: TrainTestSupport.modelPath, options: ModelOptions(threads: 1, batchCopyBytes: 0)),
                TrainTestSupport.referenceDirectory.appendingPathComponent("train"))
    }

    @Test func sftLossAndGradientsMatchPEFT() throws {
        guard let (model, dir) = try Self.setup() else { return }
        let trainer = try LoRATrainer(model: model, threads: 2)
        let params = try Self.startParameters(model, dir: dir)
        let batch = try JSONDecoder().decode(SFTBatchFile.self, from: Data(contentsOf: dir.appendingPathComponent("sft-batch.json")))
        let ref = try JSONDecoder().decode(TrainReference.self, from: Data(contentsOf: dir.appendingPathComponent("train-reference.json")))
        let t0 = Date()
        let r = try trainer.sftLossAndGradient(params: params, batch: batch.examples.map(\.sequence))
        let seconds = Date().timeIntervalSince(t0)
        let rel = abs(r.loss - ref.sft.loss) / ref.sft.loss
        let (cos, ratio, name) = try Self.compareGradients(r.grad, params, file: dir.appendingPathComponent("sft-grads.safetensors"))
        print(String(format: "SFT vs PEFT: loss %.9f (reference %.9f, rel %.2e), %d tokens, worst cosine %.7f, worst norm ratio %.5f, %.1f s",
                     r.loss, ref.sft.loss, rel, r.tokens, cos, ratio, seconds) + " (\(name))")
        #expect(rel <= 1e-4)
    }

    @Test func dpoLogProbsLossAndGradientsMatchPEFT() throws {
        guard let (model, dir) = try Self.setup() else { return }
        let trainer = try LoRATrainer(model: model, threads: 2)
        let params = try Self.startParameters(model, dir: dir)
        let batch = try JSONDecoder().decode(DPOBatchFile.self, from: Data(contentsOf: dir.appendingPathComponent("dpo-batch.json")))
        let ref = try JSONDecoder().decode(TrainReference.self, from: Data(contentsOf: dir.appendingPathComponent("train-reference.json")))
        let pairs = batch.pairs.map { PreferencePair(chosen: $0.chosen.sequence, rejected: $0.rejected.sequence) }
        let r = try trainer.dpoLossAndGradient(params: params, pairs: pairs, beta: batch.beta, reference: .base)
        var worst = 0.0
        for (mine, theirs) in zip(r.pairs, ref.dpo.pairs) {
            for (a, b) in [(mine.policyChosen, theirs.policy_chosen_logp), (mine.policyRejected, theirs.policy_rejected_logp),
                           (mine.referenceChosen, theirs.reference_chosen_logp),
                           (mine.referenceRejected, theirs.reference_rejected_logp)] {
                worst = max(worst, abs(a - b))
                #expect(abs(a - b) <= 1e-3, "\(theirs.name): log-probability \(a) vs \(b)")
            }
        }
        let rel = abs(r.loss - ref.dpo.loss) / ref.dpo.loss
        let (cos, ratio, name) = try Self.compareGradients(r.grad, params, file: dir.appendingPathComponent("dpo-grads.safetensors"))
        print(String(format: "DPO vs PEFT: loss %.9f (reference %.9f, rel %.2e), worst log-prob difference %.2e, worst cosine %.7f, worst norm ratio %.5f",
                     r.loss, ref.dpo.loss, rel, worst, cos, ratio) + " (\(name))")
        #expect(rel <= 1e-4)
    }

    /// `lorad bench --train` figures (run with LORAD_TRAIN_BENCH=1; not part of the default suite).
    @Test(.enabled(if: ProcessInfo.processInfo.environment["LORAD_TRAIN_BENCH"] == "1"))
    func trainBench() throws {
        guard TrainTestSupport.hasModel else { return }
        let model = try Model.load(path: TrainTestSupport.modelPath, options: ModelOptions(threads: 1, batchCopyBytes: 0))
        let r = try TrainBench.run(model: model, threads: 2, batch: 4, seqLen: 256, scoredLast: nil, rank: 8, steps: 1)
        let r64 = try TrainBench.run(model: model, threads: 2, batch: 4, seqLen: 256, scoredLast: 64, rank: 8, steps: 1)
        #expect(r.tokensPerSecond > 0 && r64.tokensPerSecond > 0)
    }
}
