// LoradStore in-process: reopening keeps rows (migrations run once), the size budget prunes the oldest stored
// completions that no feedback refers to, and feedback on an unknown completion is refused.

import Daemon
import Foundation
import Testing

@Suite struct StoreTests {
    static func tempDir() throws -> String {
        let dir = NSTemporaryDirectory() + "lorad-store-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    static func completion(_ i: Int, text: String) -> StoredCompletion {
        StoredCompletion(
            id: "chatcmpl-\(i)", object: "chat.completion", model: "m", createdAt: 1_700_000_000 + i, uid: 0,
            input: .array([.object([("content", .string("q\(i)")), ("role", .string("user"))])]),
            promptTokenIDs: [[2, 100, Int32(i)]], outputTokenIDs: [[7, 8]],
            response: .object([("id", .string("chatcmpl-\(i)")), ("text", .string(text))]), adapters: ["a@1*1.0"],
            sampling: .object([("temperature", .int(0))]), promptTokens: 3, completionTokens: 2, metadata: ["i": "\(i)"])
    }

    @Test func budgetPrunesOldestWithoutFeedback() async throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let text = String(repeating: "y", count: 1000)
        let store = try LoradStore(stateDir: dir, maxBytes: 10_000)
        try await store.insert(Self.completion(0, text: text))
        try await store.insert(
            FeedbackRecord(
                id: "fb-0", completionID: "chatcmpl-0", model: "m", createdAt: 1, uid: 0, rating: 1, correction: nil,
                comment: nil, metadata: [:]))
        for i in 1..<30 { try await store.insert(Self.completion(i, text: text)) }
        let page = try await store.listCompletions(
            model: nil, metadata: [:], uid: nil, after: nil, limit: 100, ascending: true)
        let ids = page.items.map(\.id)
        // Each row is a little over 1,000 bytes: at most 9 fit in 10,000, and the one with feedback stays.
        #expect(ids.first == "chatcmpl-0")
        #expect(ids.last == "chatcmpl-29")
        #expect(ids.count >= 2 && ids.count <= 10, "\(ids)")
        #expect(!ids.contains("chatcmpl-1"))
        #expect(store.stats.storedCompletions == ids.count)
        #expect(store.stats.pruned == 30 - ids.count)

        // Reopen: the rows and their fields are as stored.
        let again = try LoradStore(stateDir: dir)
        let c = try #require(try await again.completion(id: "chatcmpl-29"))
        #expect(c == Self.completion(29, text: text))
        #expect(try await again.feedback(id: "fb-0")?.rating == 1)
        #expect(again.stats.feedback == 1)
    }

    @Test func feedbackNeedsAStoredCompletion() async throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try LoradStore(stateDir: dir)
        await #expect(throws: StoreError.completionNotFound("chatcmpl-x")) {
            try await store.insert(
                FeedbackRecord(
                    id: "fb-1", completionID: "chatcmpl-x", model: "m", createdAt: 1, uid: nil, rating: -1,
                    correction: .string("better"), comment: nil, metadata: [:]))
        }
        #expect(store.stats.feedback == 0)
    }
}
