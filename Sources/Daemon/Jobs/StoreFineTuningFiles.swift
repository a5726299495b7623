// The daemon's files store as the file side of fine-tuning jobs: a job reads an uploaded file's content by id and
// stores its step-metrics CSV as a file of purpose `fine-tune-results` (OpenAI's `result_files`).

import Foundation

extension LoradStore: FineTuningFiles {
    /// The content path of file `fileID` (`<state_dir>/files/…`), or nil for an unknown id.
    /// - Throws: ``StoreError``.
    public func contentPath(fileID: String) async throws -> String? {
        try await file(id: fileID)?.contentPath
    }

    /// Stores a job's result file (purpose `fine-tune-results`, not uploadable through the API).
    /// - Returns: the new file's id.
    /// - Throws: ``StoreError/diskFull(_:)``, ``StoreError/database(_:)``.
    public func storeResult(jobID: String, filename: String, data: Data) async throws -> String {
        try await createFile(purpose: "fine-tune-results", filename: filename, data: Array(data), uid: nil).id
    }
}
