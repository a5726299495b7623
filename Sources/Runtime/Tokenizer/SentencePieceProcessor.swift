// SentencePieceProcessor: owns one libsentencepiece processor through the SentencePieceShim C API.
// Loading mutates the processor; afterwards every call is const in C++, so concurrent encodes are safe.

import SentencePieceShim

/// A loaded SentencePiece model (libsentencepiece `SentencePieceProcessor`), freed on deinit.
final class SentencePieceProcessor: @unchecked Sendable {
    private let handle: OpaquePointer

    /// Loads a serialized `ModelProto` (the bytes of a `tokenizer.model` file, or one built by
    /// `SentencePieceModelProto`).
    /// - Throws: `TokenizerError.sentencePieceLoadFailed` with libsentencepiece's status text.
    init(serializedModel bytes: [UInt8]) throws {
        guard let h = spm_new() else {
            throw TokenizerError.sentencePieceLoadFailed("out of memory allocating the processor")
        }
        var message = [CChar](repeating: 0, count: 1024)
        let status = bytes.withUnsafeBytes { raw in
            spm_load_serialized(h, raw.baseAddress, raw.count, &message, message.count)
        }
        guard status == 0 else {
            spm_free(h)
            let text = String(decoding: message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw TokenizerError.sentencePieceLoadFailed(text.isEmpty ? "status \(status)" : text)
        }
        handle = h
    }

    deinit { spm_free(handle) }

    /// Number of pieces in the model.
    var pieceCount: Int { Int(spm_piece_size(handle)) }

    /// Appends the piece ids of `text` (UTF-8 bytes) to `output`. Returns false if libsentencepiece failed.
    func encode(_ text: UnsafeBufferPointer<UInt8>, appendingTo output: inout [Int32]) -> Bool {
        if text.isEmpty { return true }
        // A SentencePiece id sequence is never longer than the byte count (+1 for a dummy prefix).
        let capacity = text.count + 8
        let start = output.count
        output.append(contentsOf: repeatElement(0, count: capacity))
        let n = output.withUnsafeMutableBufferPointer { out -> Int in
            guard let base = out.baseAddress else { return -1 }
            return text.withMemoryRebound(to: CChar.self) { chars in
                spm_encode(handle, chars.baseAddress, chars.count, base + start, capacity)
            }
        }
        guard n >= 0, n <= capacity else {
            output.removeSubrange(start...)
            return false
        }
        output.removeSubrange((start + n)...)
        return true
    }

    /// The piece text of `id` as stored in the model (whitespace as U+2581), or nil when out of range.
    func piece(_ id: Int) -> [UInt8]? {
        guard id >= 0, id <= Int(Int32.max) else { return nil }
        let n = spm_id_to_piece(handle, Int32(id), nil, 0)
        guard n >= 0 else { return nil }
        var out = [UInt8](repeating: 0, count: n)
        _ = out.withUnsafeMutableBufferPointer { b in
            b.withMemoryRebound(to: CChar.self) { spm_id_to_piece(handle, Int32(id), $0.baseAddress, $0.count) }
        }
        return out
    }

    /// The piece type of `id` (SPM_PIECE_* values; USER_DEFINED reads as NORMAL), 0 when out of range.
    func pieceType(_ id: Int) -> Int32 {
        guard id >= 0, id <= Int(Int32.max) else { return 0 }
        return spm_piece_type(handle, Int32(id))
    }
}
