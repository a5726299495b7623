// FineTuningFiles: what fine-tuning jobs need from the files API — the content of an uploaded file by id, and a
// place to store a job's result file. The daemon's `LoradStore` implements it (StoreFineTuningFiles.swift).

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
