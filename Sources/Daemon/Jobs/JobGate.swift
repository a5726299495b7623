// JobGate: the evaluation gate of a fine-tuning job (`lorad.gate`; every continual-learning job has one). Before a
// gated job publishes, its candidate adapter and the version it started from (the base model for a fresh adapter)
// are measured on the job's held-out data (its validation file) and on the forgetting probe; the candidate
// publishes only if the verdict passes (LEARNING-DECISIONS #6, #9, #10; the math is Train's AdapterEvaluator and
// GateVerdict).

import Foundation
import Runtime
import Train

enum JobGate {
    /// Parses `lorad.gate`: `{"min_improvement": -1…1, "max_forgetting": 0…10}`, both optional.
    /// - Throws: ``APIError`` 400 naming the field.
    static func settings(_ v: JSONValue) throws -> GateSettings {
        guard case .object(let fields) = v else {
            throw APIError.invalidRequest("'lorad.gate' must be an object.", param: "lorad.gate")
        }
        var g = GateSettings()
        for (k, value) in fields {
            let range: ClosedRange<Double>
            switch k {
            case "min_improvement": range = -1...1
            case "max_forgetting": range = 0...10
            default:
                throw APIError.invalidRequest(
                    "Unknown key 'lorad.gate.\(k)' (allowed: min_improvement, max_forgetting).", param: "lorad.gate.\(k)")
            }
            let d: Double
            switch value {
            case .int(let i): d = Double(i)
            case .double(let x): d = x
            default: d = .nan
            }
            guard d.isFinite, range.contains(d) else {
                throw APIError.invalidRequest(
                    "'lorad.gate.\(k)' must be a number in \(range.lowerBound)…\(range.upperBound).", param: "lorad.gate.\(k)")
            }
            if k == "min_improvement" { g.minImprovement = d } else { g.maxForgetting = d }
        }
        return g
    }

    /// Measures `candidate` against `current` (nil: the base model) on the held-out file `validPath` (SFT lines,
    /// or DPO lines for a DPO job: their preferred answers and pairs) or, for a continual-learning job, the held-out
    /// feedback `validFeedbackPath` (token-level items: those without a rejected answer are the preferred answers
    /// whose loss is measured, those with one the pairs whose preference accuracy is measured), and on the
    /// forgetting probe.
    /// - Throws: `DatasetError` / `SequenceError` / ``TrainCLIError`` for unusable held-out data, `TrainError`
    ///   otherwise.
    static func evaluate(
        model: Model, threads: Int, pacer: (any TrainingPacer)?, current: LoRAParameters?, candidate: LoRAParameters,
        validPath: String?, validFeedbackPath: String? = nil, dpo: Bool, settings: GateSettings
    ) throws -> GateVerdict {
        let trainer = try LoRATrainer(model: model, threads: threads, cacheWeights: false)
        trainer.pacer = pacer
        let builder = SequenceBuilder(gguf: model.gguf, tokenizer: model.tokenizer, maxLength: 1024, overflow: .reject)
        func seq(_ e: TokenizedExample) -> TrainingSequence { TrainingSequence(inputIds: e.inputIds, labelsMask: e.labelsMask) }
        var heldOut: [TrainingSequence] = []
        var pairs: [PreferencePair] = []
        if let path = validFeedbackPath {
            (heldOut, pairs) = try FeedbackTrainingData.load(path, builder: builder, maxLength: 1024, dpo: true)
        } else if let validPath {
            if dpo {
                for p in try DatasetLoader.preferencePairs(path: validPath, builder: builder) {
                    pairs.append(PreferencePair(chosen: seq(p.chosen), rejected: seq(p.rejected)))
                    heldOut.append(seq(p.chosen))
                }
            } else {
                heldOut = try DatasetLoader.supervisedExamples(path: validPath, builder: builder).map(seq)
            }
        }
        let probe = ForgettingProbe.sequences(tokenizer: model.tokenizer)
        let base = pairs.isEmpty ? nil : try AdapterEvaluator.pairLogProbs(trainer: trainer, params: nil, pairs: pairs)
        let before = try AdapterEvaluator.evaluate(
            trainer: trainer, params: current, heldOut: heldOut, pairs: pairs, probe: probe, baseLogProbs: base)
        let after = try AdapterEvaluator.evaluate(
            trainer: trainer, params: candidate, heldOut: heldOut, pairs: pairs, probe: probe, baseLogProbs: base)
        return GateVerdict(current: before, candidate: after, settings: settings)
    }

    /// The verdict as JSON (snake_case keys), for the job's event and the published version's lineage.
    static func json(_ v: GateVerdict) -> JSONValue {
        guard let data = try? JSONEncoder().encode(v) else { return .null }
        var value = JSONValue.parse(String(decoding: data, as: UTF8.self))
        if case .object(var f) = value {
            f.append(("probe_set", .string(ForgettingProbe.setID)))
            value = .object(f)
        }
        return value
    }

    /// One line with the numbers, for the event's message.
    static func summary(_ v: GateVerdict) -> String {
        func f(_ x: Double?) -> String { x.map { String(format: "%.4f", $0) } ?? "n/a" }
        var s = "held-out loss \(f(v.current.heldOutLoss)) → \(f(v.candidate.heldOutLoss)), "
            + "forgetting probe \(f(v.current.probeLoss)) → \(f(v.candidate.probeLoss))"
        if v.current.preferenceAccuracy != nil || v.candidate.preferenceAccuracy != nil {
            s += ", preference accuracy \(f(v.current.preferenceAccuracy)) → \(f(v.candidate.preferenceAccuracy))"
        }
        return s
    }
}
