// The default model against llama.cpp's reference outputs (../shared/reference/gemma-3-270m-q4_k_m/greedy.jsonl).
//
// lorad quantizes activations to 8 bits before the integer dot products, as llama.cpp's CPU backend does, so it is
// compared with the llama.cpp fields at the reference README's tolerance for that arithmetic: top-20 logits within
// 1.0, at least 15 of the 20 ids shared, and greedy ids equal up to the first step where llama.cpp's own margin
// between the top two logits falls below 1.0 (a near tie another correct implementation may break differently).
import Foundation
import Runtime
import Testing

@Suite(.serialized) struct ReferenceGreedyTests {
    static let tolerance: Float = 1.0

    static func check(_ records: [GreedyRecord], model shared: Model? = nil,
                      adapter: (Model) throws -> AdapterSet?) throws {
        let model = try shared ?? SharedModel.get()
        let set = try adapter(model)
        var worst: Float = 0
        for rec in records {
            let run = try greedyRun(model, prompt: rec.prompt_ids, steps: rec.n_predict, adapter: set)
            // Top-20 logits at the first generated position.
            var maxDiff: Float = 0
            for pair in rec.first_top20 {
                let id = Int(pair[0])
                let diff = abs(run.firstLogits[id] - Float(pair[1]))
                maxDiff = max(maxDiff, diff)
            }
            worst = max(worst, maxDiff)
            #expect(maxDiff <= tolerance, "\(rec.name): top-20 logit difference \(maxDiff) exceeds \(tolerance)")
            let ours = Set(topK(run.firstLogits, 20))
            let theirs = Set(rec.first_top20.map { Int($0[0]) })
            let shared = ours.intersection(theirs).count
            #expect(shared >= 15, "\(rec.name): only \(shared) of the top-20 ids are shared")
            // Greedy ids up to the first near tie of the reference.
            let limit = rec.step_margins.firstIndex { Float($0) < tolerance } ?? rec.generated_ids.count
            let agreeing = zip(run.ids, rec.generated_ids).prefix { $0 == $1 }.count
            #expect(agreeing >= limit,
                    "\(rec.name): greedy ids diverge at step \(agreeing), reference margin stays ≥ \(tolerance) until step \(limit); ours \(run.ids.prefix(limit)), reference \(rec.generated_ids.prefix(limit))")
            print("[reference] \(model.options.kernels) \(rec.name): prompt \(rec.prompt_ids.count) tokens, max |Δlogit| \(maxDiff), top-20 shared \(shared), greedy agree \(agreeing)/\(rec.generated_ids.count) (required \(limit))")
        }
        print("[reference] \(model.options.kernels): largest top-20 logit difference over \(records.count) prompts: \(worst)")
    }

    @Test func greedyMatchesLlamaCpp() throws {
        let records = try GreedyRecord.load("greedy.jsonl")
        #expect(records.count == 12)
        #expect(records.contains { $0.name == "long_over_window" && $0.prompt_ids.count > 512 })
        try Self.check(records) { _ in nil }
    }

    /// The same comparison on every other kernel path this CPU has, selected per model (no environment variable):
    /// all prompts on the SIMD paths, three on the slow scalar reference. The SIMD paths share their arithmetic
    /// (matmul and attention), so their logits must also be bitwise those of the default path.
    @Test func greedyMatchesLlamaCppOnEveryPath() throws {
        let records = try GreedyRecord.load("greedy.jsonl")
        let best = try SharedModel.get()
        for path in KernelPath.available where path != best.options.kernels {
            let model = try Model.load(path: TestPaths.modelPath, options: ModelOptions(threads: 2, kernels: path))
            let subset = path == .reference
                ? records.filter { ["capital", "translate", "chat_template"].contains($0.name) } : records
            try Self.check(subset, model: model) { _ in nil }
            if path != .reference && best.options.kernels != .reference {
                let rec = records.first { $0.name == "chat_template" }!
                let a = try greedyRun(model, prompt: rec.prompt_ids, steps: 1).firstLogits
                let b = try greedyRun(best, prompt: rec.prompt_ids, steps: 1).firstLogits
                #expect(a.map(\.bitPattern) == b.map(\.bitPattern),
                        "\(path) and \(best.options.kernels) logits differ")
            }
        }
    }
}

/// The rank-8 adapter of ../shared/reference/gemma-3-270m-q4_k_m/lora-r8 (GGUF format) at scale 1, against
/// llama.cpp's lora-greedy.jsonl, with the same criterion as the base model.
@Suite(.serialized) struct ReferenceLoRATests {
    static func adapter(_ model: Model) throws -> LoRAAdapter {
        try model.loadGGUFAdapter(
            path: TestPaths.referenceDir.appendingPathComponent("lora-r8/gemma-3-270m-lora-r8.gguf").path, name: "r8")
    }

    @Test func ggufAdapterMatchesLlamaCpp() throws {
        let records = try GreedyRecord.load("lora-greedy.jsonl")
        #expect(records.count == 12)
        try ReferenceGreedyTests.check(records) { model in
            let a = try Self.adapter(model)
            #expect(a.modules.count == 126)
            return AdapterSet(a, scale: 1)
        }
    }

    /// Scale 0 reproduces the base logits bit for bit (llama.cpp's `--lora-scaled file:0` does too).
    @Test func scaleZeroEqualsBase() throws {
        let model = try SharedModel.get()
        let prompt = try GreedyRecord.load("greedy.jsonl")[0].prompt_ids
        let base = try greedyRun(model, prompt: prompt, steps: 1).firstLogits
        let zero = try greedyRun(model, prompt: prompt, steps: 1, adapter: AdapterSet(Self.adapter(model), scale: 0)).firstLogits
        #expect(base == zero)
    }
}
