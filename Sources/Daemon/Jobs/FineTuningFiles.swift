// FineTuningFiles: what fine-tuning jobs need from the files API — the content of an uploaded file by id, and a
// place to store a job's result file. The daemon plugs its files store in; `DirectoryFineTuningFiles` serves
// files kept as plain files in one directory (`<state_dir>/files/<file id>`).

import Foundation

/// The file side of fine-tuning jobs.
public protocol FineTuningFiles: Sendable {
    /// Path of the content of file `fileID` on local disk, or nil when there is no such file.
    /// - Throws: when the file store cannot be read.
    func contentPath(fileID: String) async throws -> String?
    /// Stores a result file of job `jobID` (purpose `fine-tune-results`) and returns its new file id.
    /// - Throws: I/O errors (a full disk, an unwritable directory).
    func storeResult(jobID: String, filename: String, data: Data) async throws -> String
}

/// ``FineTuningFiles`` over a directory: file `file-…` is `<root>/file-…` (or `<root>/file-….jsonl`); a result is
/// written there (fsynced) under a new id.
public struct DirectoryFineTuningFiles: FineTuningFiles {
    /// The directory holding the files.
    public let root: String

    /// - Parameter root: the directory (created when a result is stored).
    public init(root: String) {
        self.root = root
    }

    public func contentPath(fileID: String) async throws -> String? {
        guard !fileID.isEmpty, !fileID.contains("/"), fileID != ".", fileID != ".." else { return nil }
        for candidate in [root + "/" + fileID, root + "/" + fileID + ".jsonl"] {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: candidate, isDirectory: &isDir), !isDir.boolValue {
                return candidate
            }
        }
        return nil
    }

    public func storeResult(jobID: String, filename: String, data: Data) async throws -> String {
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let id = "file-" + ResponseRenderer.randomHex(24)
        try AdapterStore.writeDurably(data, to: root + "/" + id)
        return id
    }
}
