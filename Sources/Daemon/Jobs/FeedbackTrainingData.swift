// FeedbackTrainingData: training examples of a `training_source: {"feedback": …}` job at the token level
// (decision #4): the prompt is the completion's prompt ids exactly as they were served, and the answer (a
// correction, or a thumbs-up answer as served) is tokenized by the one chat rule (#3): trimmed content, then the
// end-of-turn tokens, each piece on its own. A raw-prompt completion gets the answer's tokens and EOS.
//
// The items are frozen into `<job dir>/train.feedback.json` when the job is created (with `train.jsonl`, the same
// feedback as the export's text lines, beside it), and turned into sequences when the job starts.

import Foundation
import Train

/// One feedback example: served prompt ids and the answer(s) to score.
public struct FeedbackItem: Codable, Equatable, Sendable {
    /// The prompt ids as served (BOS and, for chat, the assistant header included), `[n_prompt_tokens]`.
    public var promptIDs: [Int32]
    /// A chat completion (the answer becomes an assistant turn) or a raw-prompt completion (answer + EOS).
    public var chat: Bool
    /// SFT: the answer; DPO: the preferred answer.
    public var answer: String
    /// DPO: the non-preferred answer (nil for SFT).
    public var rejected: String?

    /// - Parameters: see the properties.
    public init(promptIDs: [Int32], chat: Bool, answer: String, rejected: String?) {
        self.promptIDs = promptIDs
        self.chat = chat
        self.answer = answer
        self.rejected = rejected
    }

    enum CodingKeys: String, CodingKey {
        case promptIDs = "prompt_ids", chat, answer, rejected
    }
}

enum FeedbackTrainingData {
    /// The feedback of `model` (since `since`) as token-level items, in the order and with the pairing of
    /// ``FeedbackExport/lines(store:model:format:since:)``: SFT items from thumbs-up answers and corrections; DPO
    /// items from corrections (vs the served answer) and from a thumbs-up and a thumbs-down answer to the same
    /// served prompt.
    static func items(store: LoradStore, model: String, dpo: Bool, since: Int?) async throws -> [FeedbackItem] {
        let feedback = try await store.listFeedback(model: model, completionID: nil, uid: nil, after: nil, limit: nil).items
            .filter { since == nil || $0.createdAt >= since! }
        return try await items(feedback: feedback, store: store, dpo: dpo)
    }

    /// `feedback` (oldest first) as token-level items: SFT items (`dpo` false) or DPO pairs (`dpo` true), paired as
    /// described at ``items(store:model:dpo:since:)``.
    /// - Throws: ``StoreError``.
    static func items(feedback: [FeedbackRecord], store: LoradStore, dpo: Bool) async throws -> [FeedbackItem] {
        items(feedback: feedback, completions: try await completions(of: feedback, store: store), dpo: dpo)
    }

    /// The stored completions `feedback` refers to, by id (each read once).
    /// - Throws: ``StoreError``.
    static func completions(of feedback: [FeedbackRecord], store: LoradStore) async throws -> [String: StoredCompletion] {
        var completions: [String: StoredCompletion] = [:]
        for f in feedback where completions[f.completionID] == nil {
            completions[f.completionID] = try await store.completion(id: f.completionID)
        }
        return completions
    }

    /// `feedback` as items, with its completions already read (see ``items(feedback:store:dpo:)``).
    static func items(feedback: [FeedbackRecord], completions: [String: StoredCompletion], dpo: Bool) -> [FeedbackItem] {
        func correctionText(_ v: JSONValue) -> String? {
            switch v {
            case .string(let s): return s
            case .array(let items):
                // The assistant content of the corrected turn(s).
                let texts = items.compactMap { m -> String? in
                    guard case .object(let f) = m, case .string("assistant")? = f.last(where: { $0.0 == "role" })?.1,
                        case .string(let t)? = f.last(where: { $0.0 == "content" })?.1
                    else { return nil }
                    return t
                }
                return texts.isEmpty ? nil : texts.joined(separator: "\n")
            default: return nil
            }
        }
        var out: [FeedbackItem] = []
        var ups: [[Int32]: [String]] = [:]
        var downs: [[Int32]: [String]] = [:]
        var order: [[Int32]] = []
        var isChat: [[Int32]: Bool] = [:]
        for f in feedback {
            guard let c = completions[f.completionID], let prompt = c.promptTokenIDs.first else { continue }
            let chat = c.object == "chat.completion"
            let served = FeedbackExport.servedAnswer(c)
            if let corr = f.correction, let text = correctionText(corr) {
                if !dpo {
                    out.append(FeedbackItem(promptIDs: prompt, chat: chat, answer: text, rejected: nil))
                } else if let served {
                    out.append(FeedbackItem(promptIDs: prompt, chat: chat, answer: text, rejected: served))
                }
                continue
            }
            guard let served else { continue }
            if !dpo {
                if f.rating == 1 { out.append(FeedbackItem(promptIDs: prompt, chat: chat, answer: served, rejected: nil)) }
                continue
            }
            if ups[prompt] == nil && downs[prompt] == nil { order.append(prompt) }
            isChat[prompt] = chat
            if f.rating == 1 { ups[prompt, default: []].append(served) }
            if f.rating == -1 { downs[prompt, default: []].append(served) }
        }
        for p in order {
            for (u, d) in zip(ups[p] ?? [], downs[p] ?? []) where u != d {
                out.append(FeedbackItem(promptIDs: p, chat: isChat[p] ?? true, answer: u, rejected: d))
            }
        }
        return out
    }

    /// The scored answer after `prompt`: for chat, the answer as an assistant turn by rule #3 (its content and
    /// end-of-turn tokens, scored), for a raw prompt the answer's tokens and EOS.
    /// - Throws: ``TrainCLIError`` (data) when the example is empty or longer than `maxLength`.
    static func example(_ prompt: [Int32], chat: Bool, answer: String, builder: SequenceBuilder, maxLength: Int, index: Int)
        throws -> TokenizedExample
    {
        let e: TokenizedExample
        do {
            if chat {
                // Render a one-turn conversation and keep what follows the assistant header: the scored part.
                let r = try builder.chat([
                    TrainingMessage(role: "user", content: "."), TrainingMessage(role: "assistant", content: answer),
                ])
                guard let k = r.labelsMask.firstIndex(of: 1) else { throw SequenceError.nothingScored }
                e = TokenizedExample(
                    inputIds: prompt + r.inputIds[k...],
                    labelsMask: [UInt8](repeating: 0, count: prompt.count) + r.labelsMask[k...])
            } else {
                e = try builder.promptCompletion(promptIds: prompt, completion: answer)
            }
        } catch let err as SequenceError {
            throw TrainCLIError.data("feedback example \(index + 1): \(err)")
        }
        guard e.count <= maxLength else {
            throw TrainCLIError.data("feedback example \(index + 1) is \(e.count) tokens, over the limit of \(maxLength)")
        }
        return e
    }

    /// Reads `path` (a JSON array of ``FeedbackItem``) into SFT sequences or DPO pairs. With `dpo`, items that have
    /// a rejected answer become pairs and the others SFT sequences (continual learning's `method: auto` mixes both).
    /// - Throws: ``TrainCLIError`` (data) for an unreadable file or an unusable example.
    static func load(_ path: String, builder: SequenceBuilder, maxLength: Int, dpo: Bool) throws
        -> (sequences: [TrainingSequence], pairs: [PreferencePair])
    {
        guard let data = FileManager.default.contents(atPath: path),
            let items = try? JSONDecoder().decode([FeedbackItem].self, from: data)
        else { throw TrainCLIError.data("\(path): not a list of feedback examples") }
        var sequences: [TrainingSequence] = []
        var pairs: [PreferencePair] = []
        for (i, item) in items.enumerated() {
            let chosen = try example(item.promptIDs, chat: item.chat, answer: item.answer, builder: builder,
                                     maxLength: maxLength, index: i)
            if dpo, let r = item.rejected {
                let rejected = try example(item.promptIDs, chat: item.chat, answer: r, builder: builder,
                                           maxLength: maxLength, index: i)
                pairs.append(PreferencePair(chosen: TrainJob.sequence(chosen), rejected: TrainJob.sequence(rejected)))
            } else {
                sequences.append(TrainJob.sequence(chosen))
            }
        }
        return (sequences, pairs)
    }
}
