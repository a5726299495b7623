// The publication gate's pieces: the stable held-out split, the gate's decision rules, TRL's reward accuracy, and
// the evaluator on the real model (a no-op adapter scores exactly as the base; a damaging adapter raises the
// forgetting probe's loss and is refused).
import Foundation
import Runtime
import Testing
import Train

struct HoldoutSplitTests {
    /// Published FNV-1a 64 test vectors (Fowler–Noll–Vo reference page, fnv_test.c).
    @Test func fnvMatchesPublishedVectors() {
        #expect(HoldoutSplit.fnv1a64("") == 0xcbf2_9ce4_8422_2325)
        #expect(HoldoutSplit.fnv1a64("a") == 0xaf63_dc4c_8601_ec8c)
        #expect(HoldoutSplit.fnv1a64("foobar") == 0x8594_4171_f739_67e8)
    }

    @Test func splitIsStableAndHasTheAskedFraction() {
        let keys = (0..<20_000).map { "fb-\($0)" }
        for fraction in [0.1, 0.3, 0.5] {
            let held = keys.filter { HoldoutSplit.isHeldOut($0, fraction: fraction) }
            let share = Double(held.count) / Double(keys.count)
            #expect(abs(share - fraction) < 0.015, "fraction \(fraction): \(share)")
            // Same side every time, and independent of which other keys exist.
            #expect(held == keys.filter { HoldoutSplit.isHeldOut($0, fraction: fraction) })
            #expect(Array(keys.prefix(100)).filter { HoldoutSplit.isHeldOut($0, fraction: fraction) }
                        == held.filter { Int($0.dropFirst(3))! < 100 })
        }
        // Monotone in the fraction: an item held out at 0.1 stays held out at 0.3.
        for k in keys.prefix(2000) where HoldoutSplit.isHeldOut(k, fraction: 0.1) {
            #expect(HoldoutSplit.isHeldOut(k, fraction: 0.3))
        }
        #expect(!HoldoutSplit.isHeldOut("x", fraction: 0))
        #expect(HoldoutSplit.isHeldOut("x", fraction: 1))
    }
}

struct GateVerdictTests {
    func eval(_ loss: Double?, acc: Double? = nil, probe: Double? = 3.0) -> AdapterEvaluation {
        AdapterEvaluation(heldOutLoss: loss, heldOutTokens: loss == nil ? 0 : 100, preferenceAccuracy: acc,
                          pairs: acc == nil ? 0 : 10, probeLoss: probe)
    }

    @Test func passesOnlyWhenBothConditionsHold() {
        let s = GateSettings(minImprovement: 0.05, maxForgetting: 0.02)
        let ok = GateVerdict(current: eval(2.0), candidate: eval(1.8, probe: 3.05), settings: s)
        #expect(ok.passed && ok.reasons.isEmpty)
        #expect(abs(ok.improvement! - 0.1) < 1e-12 && abs(ok.forgetting! - 0.05 / 3) < 1e-12)

        let small = GateVerdict(current: eval(2.0), candidate: eval(1.95), settings: s)
        #expect(!small.passed && small.reasons.count == 1 && small.reasons[0].contains("held-out loss"))

        let forgot = GateVerdict(current: eval(2.0), candidate: eval(1.0, probe: 3.1), settings: s)
        #expect(!forgot.passed && forgot.reasons.count == 1 && forgot.reasons[0].contains("forgetting"))

        let accuracyFell = GateVerdict(current: eval(2.0, acc: 0.8), candidate: eval(1.5, acc: 0.7), settings: s)
        #expect(!accuracyFell.passed && accuracyFell.reasons[0].contains("preference accuracy"))

        // Default margin 0: equal is allowed, worse is not.
        #expect(GateVerdict(current: eval(2.0), candidate: eval(2.0), settings: GateSettings()).passed)
        #expect(!GateVerdict(current: eval(2.0), candidate: eval(2.0001), settings: GateSettings()).passed)
        // No held-out data at all: nothing shows an improvement, so it does not publish.
        let empty = GateVerdict(current: eval(nil), candidate: eval(nil), settings: GateSettings())
        #expect(!empty.passed && empty.reasons == ["no held-out feedback to evaluate on"])
        // NaN never passes.
        #expect(!GateVerdict(current: eval(2.0), candidate: eval(.nan), settings: GateSettings()).passed)
    }

    @Test func verdictRoundTripsAsJSONWithSnakeCaseKeys() throws {
        let v = GateVerdict(current: eval(2.0, acc: 0.5), candidate: eval(1.5, acc: 0.75), settings: GateSettings())
        let data = try JSONEncoder().encode(v)
        let text = String(decoding: data, as: UTF8.self)
        #expect(text.contains("\"held_out_loss\"") && text.contains("\"max_forgetting\""))
        #expect(try JSONDecoder().decode(GateVerdict.self, from: data) == v)
    }

    @Test func rewardAccuracyIsTRLs() {
        // Pair 0: policy raises chosen more than rejected relative to base → right; pair 1: equal margins → wrong
        // (strict); pair 2: lowers chosen → wrong.
        let base: [[Double]] = [[-10, -10], [-5, -6], [-3, -3]]
        let policy: [[Double]] = [[-8, -9], [-4, -5], [-4, -2]]
        #expect(AdapterEvaluator.preferenceAccuracy(policy: policy, base: base) == 1.0 / 3)
        #expect(AdapterEvaluator.preferenceAccuracy(policy: base, base: base) == 0)
        #expect(AdapterEvaluator.preferenceAccuracy(policy: [], base: []) == nil)
    }
}

@Suite(.enabled(if: TrainTestSupport.hasModel, "needs the default model (scripts/setup.sh)"))
struct EvaluatorOnTheModelTests {
    @Test func noOpAdapterScoresAsTheBaseAndADamagingOneIsRefused() throws {
        TrainTestSupport.forwardLock.lock()
        defer { TrainTestSupport.forwardLock.unlock() }
        let model = try TrainTestSupport.model()
        let tokenizer = try TrainTestSupport.tokenizer()
        let trainer = try LoRATrainer(model: model, threads: 2)
        let all = ForgettingProbe.sequences(tokenizer: tokenizer)
        #expect(all.count == ForgettingProbe.passages.count && all.allSatisfy { $0.inputIds.count > 10 })
        // A quarter of the passages keeps the test short (each scored token costs a 262144-wide head row).
        let probe = Array(all.prefix(8))

        let builder = try TrainTestSupport.builder(maxLength: 256)
        let heldOut = try [("What is the capital of France?", "CAPITAL: Paris"),
                           ("What is the capital of Japan?", "CAPITAL: Tokyo")].map {
            let e = try builder.chat([TrainingMessage(role: "user", content: $0.0),
                                      TrainingMessage(role: "assistant", content: $0.1)])
            return TrainingSequence(inputIds: e.inputIds, labelsMask: e.labelsMask)
        }
        let pair = try builder.preferencePair(
            input: [TrainingMessage(role: "user", content: "Capital of Peru?")], preferred: "CAPITAL: Lima",
            nonPreferred: "The capital of Peru is Lima.")
        let pairs = [PreferencePair(
            chosen: TrainingSequence(inputIds: pair.chosen.inputIds, labelsMask: pair.chosen.labelsMask),
            rejected: TrainingSequence(inputIds: pair.rejected.inputIds, labelsMask: pair.rejected.labelsMask))]

        let base = try AdapterEvaluator.evaluate(trainer: trainer, params: nil, heldOut: heldOut, pairs: pairs, probe: probe)
        let probeLoss = try #require(base.probeLoss)
        // Gemma 3 270M on plain English prose: a few nats per token, far below uniform (ln 262144 ≈ 12.5).
        #expect(probeLoss > 1 && probeLoss < 6, "base probe loss \(probeLoss)")
        #expect(base.preferenceAccuracy == 0)

        // A fresh adapter (lora_B = 0) changes nothing.
        var rng = TrainingRNG(seed: 3)
        let config = LoRAConfig(rank: 4, alpha: 8, targets: Projection.allCases, layers: Array(0..<model.config.nLayer))
        let fresh = try LoRAParameters.fresh(config: config, model: model.config, rng: &rng)
        let same = try AdapterEvaluator.evaluate(trainer: trainer, params: fresh, heldOut: heldOut, pairs: pairs, probe: probe)
        #expect(abs(same.heldOutLoss! - base.heldOutLoss!) <= 1e-9 * base.heldOutLoss!)
        #expect(abs(same.probeLoss! - probeLoss) <= 1e-9 * probeLoss)

        // Large random lora_B: the model is damaged; the probe loss rises and the gate refuses it.
        let damaged = try TrainTestSupport.trainedAdapter(config, model: model.config, seed: 5, bBound: 0.05)
        let bad = try AdapterEvaluator.evaluate(trainer: trainer, params: damaged, heldOut: heldOut, pairs: pairs, probe: probe)
        let verdict = GateVerdict(current: same, candidate: bad, settings: GateSettings())
        #expect(bad.probeLoss! > probeLoss * 1.02, "damaged probe loss \(bad.probeLoss!) vs \(probeLoss)")
        #expect(!verdict.passed && verdict.reasons.contains { $0.contains("forgetting") })
        print("probe loss: base \(probeLoss), damaged \(bad.probeLoss!); held-out loss: base \(base.heldOutLoss!), "
              + "damaged \(bad.heldOutLoss!); verdict: \(verdict.reasons)")
    }
}
