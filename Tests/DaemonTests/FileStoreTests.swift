// Stored files in-process: content and row agree (bytes, SHA-256 from sha256sum), list order, filters and pages,
// delete removes the row and the content, a private link outlives a delete, and start-up removes what a crash
// between writing the content and inserting its row leaves behind.

import Daemon
import Foundation
import Testing

@Suite struct FileStoreTests {
    static func sha256sum(_ path: String) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
        p.arguments = [path]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return String(text.prefix(64))
    }

    @Test func createListDeleteAndLink() async throws {
        let dir = try StoreTests.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try LoradStore(stateDir: dir)
        let csv = Array("step,train_loss\n1,2.5\n2,2.25\n\n".utf8)
        let a = try await store.createFile(purpose: "fine-tune-results", filename: "step_metrics.csv", data: csv, uid: nil)
        let b = try await store.createFile(purpose: "fine-tune", filename: "t.jsonl", data: Array("{}\n{}\n".utf8), uid: 1000)
        let c = try await store.createFile(purpose: "fine-tune", filename: "u.jsonl", data: Array("{}".utf8), uid: 0)
        #expect(a.id.hasPrefix("file-") && a.id.count == 29 && a.id != b.id)
        #expect(a.bytes == csv.count && a.lineCount == 3 && a.status == "processed" && a.object == "file")
        #expect(a.contentPath == dir + "/files/\(a.id).csv" && b.contentPath == dir + "/files/\(b.id).jsonl")
        #expect(Array(try Data(contentsOf: URL(fileURLWithPath: a.contentPath))) == csv)
        #expect(a.sha256 == (try Self.sha256sum(a.contentPath)))
        #expect(try await store.file(id: a.id) == a)
        #expect(try await store.file(id: "file-nope") == nil)

        let all = try await store.listFiles(purpose: nil, after: nil, limit: 10)
        #expect(all.items.map(\.id) == [c.id, b.id, a.id] && !all.hasMore)
        let asc = try await store.listFiles(purpose: nil, after: nil, limit: 2, order: .asc)
        #expect(asc.items.map(\.id) == [a.id, b.id] && asc.hasMore)
        let next = try await store.listFiles(purpose: nil, after: b.id, limit: 2, order: .asc)
        #expect(next.items.map(\.id) == [c.id] && !next.hasMore)
        #expect(try await store.listFiles(purpose: "fine-tune", after: nil, limit: 10).items.map(\.id) == [c.id, b.id])
        #expect(try await store.listFiles(purpose: nil, after: nil, limit: 10, uid: 1000).items.map(\.id) == [b.id])

        // A private link keeps the content readable after the file is deleted.
        let link = dir + "/job-copy.jsonl"
        #expect(try await store.linkFileContent(id: b.id, to: link) == b)
        #expect(try await store.deleteFile(id: b.id))
        #expect(!FileManager.default.fileExists(atPath: b.contentPath))
        #expect(try await store.file(id: b.id) == nil)
        #expect(try await store.deleteFile(id: b.id) == false)
        #expect(String(decoding: try Data(contentsOf: URL(fileURLWithPath: link)), as: UTF8.self) == "{}\n{}\n")
        #expect(try await store.linkFileContent(id: b.id, to: dir + "/x") == nil)
    }

    /// What a crash leaves between the content's rename and the row's insert (or in the middle of an upload) is
    /// removed when the store opens; committed files stay.
    @Test func startupRemovesOrphans() async throws {
        let dir = try StoreTests.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let kept: StoredFile
        do {
            let store = try LoradStore(stateDir: dir)
            kept = try await store.createFile(purpose: "fine-tune", filename: "k.jsonl", data: Array("{}\n".utf8), uid: nil)
            let half = try store.beginUpload()
            try half.write(Array("partial".utf8))
            // Simulate the crash: the temp file stays (no abort), and a renamed content file never got its row.
            try "orphan\n".write(toFile: dir + "/files/file-000000000000000000000000.jsonl", atomically: false, encoding: .utf8)
            try "unrelated\n".write(toFile: dir + "/files/README", atomically: false, encoding: .utf8)
            // The upload aborts (removing its temp file) when it goes out of scope; keep a copy as a crash would.
            try FileManager.default.copyItem(atPath: half.tempPath, toPath: half.tempPath + ".crash")
            try FileManager.default.moveItem(atPath: half.tempPath + ".crash", toPath: dir + "/files/.upload-crashed.tmp")
        }
        let names = Set(try FileManager.default.contentsOfDirectory(atPath: dir + "/files"))
        #expect(names.contains(".upload-crashed.tmp") && names.contains("file-000000000000000000000000.jsonl"))
        let reopened = try LoradStore(stateDir: dir)
        let after = Set(try FileManager.default.contentsOfDirectory(atPath: dir + "/files"))
        #expect(after == ["\(kept.id).jsonl", "README"])
        #expect(try await reopened.file(id: kept.id) == kept)
    }
}

@Suite struct UploadLimitConfigTests {
    @Test func maxUploadMBFromFlagAndFile() throws {
        let env = ["HOME": "/h"]
        #expect(try DaemonConfig.resolve(layer: ConfigLayer(), environment: env, fileExists: { _ in false }).maxUploadMB == 512)
        let file = try ConfigFile.parse("max_upload_mb: 3\n", path: "t.yaml")
        #expect(try DaemonConfig.resolve(layer: file, environment: env, fileExists: { _ in false }).maxUploadMB == 3)
        var flags = ConfigLayer()
        flags.maxUploadMB = 7
        #expect(try DaemonConfig.resolve(layer: flags.over(file), environment: env, fileExists: { _ in false }).maxUploadMB == 7)
        flags.maxUploadMB = 0
        #expect(throws: ConfigError.self) { try DaemonConfig.resolve(layer: flags, environment: env, fileExists: { _ in false }) }
    }
}
