// GGUFError: every way a GGUF file can be rejected, each naming the field and its byte offset in the file.

/// Why a GGUF file was rejected (or could not be written).
///
/// Reader cases carry `field`, a path such as `tensor_count`, `metadata[3].key`,
/// `metadata["tokenizer.ggml.tokens"][17]` or `tensor_info[5].dims[1]`, and `offset`, the absolute byte
/// offset in the file where that field starts. Counts and lengths are reported as stored (u64), before any
/// conversion.
public enum GGUFError: Error, CustomStringConvertible, Equatable {
    /// A system call failed: `operation` is the call (`open`, `fstat`, `mmap`, `write`, `fsync`, `rename`).
    case io(operation: String, path: String, errno: Int32)
    /// The file ends inside `field`: it needs `needed` bytes at `offset` but only `available` remain.
    case truncated(field: String, offset: Int, needed: Int, available: Int)
    /// The first four bytes are not `GGUF` (0x47 0x47 0x55 0x46); `found` is them read as a little-endian u32.
    case badMagic(found: UInt32, offset: Int)
    /// The version is not 2 or 3. Version 1 used 32-bit counts and is not read.
    case unsupportedVersion(version: UInt32, offset: Int)
    /// A count (tensors, key/value pairs, array elements) is larger than the remaining bytes could hold at the
    /// smallest encoding of one item (`limit` is that bound).
    case countExceedsFile(field: String, offset: Int, count: UInt64, limit: Int)
    /// Metadata arrays hold more than `limit` (`GGUFFile.maxMetadataElements`) elements in total; `count` is the
    /// array count that crossed it.
    case tooManyMetadataElements(field: String, offset: Int, count: UInt64, limit: Int)
    /// A string length is larger than the bytes that remain after it.
    case stringExceedsFile(field: String, offset: Int, length: UInt64, available: Int)
    /// A string is not valid UTF-8.
    case invalidUTF8(field: String, offset: Int)
    /// A metadata value type tag (or array element type tag) is not one of the 13 GGUF types.
    case unknownValueType(field: String, offset: Int, type: UInt32)
    /// A bool byte other than 0 or 1.
    case invalidBool(field: String, offset: Int, value: UInt8)
    /// Arrays nested deeper than `limit` levels.
    case nestingTooDeep(field: String, offset: Int, limit: Int)
    /// The same metadata key appears twice; `offset` is the second key's position.
    case duplicateKey(key: String, offset: Int)
    /// A well-known key (see `GGUFKeys`) holds the wrong type, e.g. `general.alignment` stored as u64 or
    /// `tokenizer.ggml.tokens` as an array of u32. `offset` is the value's type tag.
    case wrongValueType(key: String, offset: Int, expected: String, found: String)
    /// `general.alignment` is zero or not a power of two.
    case invalidAlignment(value: UInt32, offset: Int)
    /// The same tensor name appears twice; `offset` is the second name's position.
    case duplicateTensorName(name: String, offset: Int)
    /// A tensor's `n_dimensions` is 0 or larger than 4 (`GGML_MAX_DIMS`).
    case invalidDimensionCount(tensor: String, offset: Int, count: UInt32)
    /// A tensor dimension is 0 or does not fit a signed 64-bit integer.
    case invalidDimension(tensor: String, offset: Int, index: Int, value: UInt64)
    /// A tensor type id that is not a `GGMLType`.
    case unknownTensorType(tensor: String, offset: Int, type: UInt32)
    /// The element count (product of the dims) or the byte count (elements / block size × type size)
    /// overflows a 64-bit integer. `field` says which.
    case tensorSizeOverflow(tensor: String, field: String, offset: Int)
    /// `dims[0]` (the row length) is not a multiple of the type's block size, so rows are not whole blocks.
    case notBlockMultiple(tensor: String, offset: Int, type: GGMLType, rowLength: Int)
    /// A tensor's data offset (relative to the data section) is not a multiple of the alignment.
    case misalignedTensorOffset(tensor: String, offset: Int, dataOffset: UInt64, alignment: Int)
    /// A tensor's data `[start, start + byteCount)` (absolute offsets) does not lie inside the file.
    case tensorOutOfBounds(tensor: String, offset: Int, start: UInt64, byteCount: Int, fileSize: Int)
    /// Two tensors' data ranges overlap; `offset` is the second tensor's offset field.
    case overlappingTensors(first: String, second: String, offset: Int)
    /// `GGUFWriter.addTensor` was given an invalid tensor (`reason` says why).
    case invalidTensor(name: String, reason: String)

    public var description: String {
        switch self {
        case .io(let operation, let path, let errno):
            return "GGUF: \(operation) failed for \(path) (errno \(errno))"
        case .truncated(let field, let offset, let needed, let available):
            return "GGUF: file ends inside \(field) at byte \(offset): needs \(needed) bytes, \(available) remain"
        case .badMagic(let found, let offset):
            return "GGUF: bad magic 0x\(String(found, radix: 16)) at byte \(offset) (expected \"GGUF\")"
        case .unsupportedVersion(let version, let offset):
            return "GGUF: unsupported version \(version) at byte \(offset) (2 and 3 are supported)"
        case .countExceedsFile(let field, let offset, let count, let limit):
            return "GGUF: \(field) at byte \(offset) is \(count), but the rest of the file can hold at most \(limit)"
        case .tooManyMetadataElements(let field, let offset, let count, let limit):
            return "GGUF: \(field) at byte \(offset) is \(count), which takes the metadata past \(limit) array elements"
        case .stringExceedsFile(let field, let offset, let length, let available):
            return "GGUF: \(field) at byte \(offset) has length \(length), but only \(available) bytes remain"
        case .invalidUTF8(let field, let offset):
            return "GGUF: \(field) at byte \(offset) is not valid UTF-8"
        case .unknownValueType(let field, let offset, let type):
            return "GGUF: \(field) at byte \(offset) has unknown value type \(type)"
        case .invalidBool(let field, let offset, let value):
            return "GGUF: \(field) at byte \(offset) is a bool with value \(value) (must be 0 or 1)"
        case .nestingTooDeep(let field, let offset, let limit):
            return "GGUF: \(field) at byte \(offset) nests arrays deeper than \(limit) levels"
        case .duplicateKey(let key, let offset):
            return "GGUF: metadata key \"\(key)\" at byte \(offset) appears twice"
        case .wrongValueType(let key, let offset, let expected, let found):
            return "GGUF: metadata[\"\(key)\"] at byte \(offset) is \(found), expected \(expected)"
        case .invalidAlignment(let value, let offset):
            return "GGUF: general.alignment at byte \(offset) is \(value) (must be a nonzero power of two)"
        case .duplicateTensorName(let name, let offset):
            return "GGUF: tensor name \"\(name)\" at byte \(offset) appears twice"
        case .invalidDimensionCount(let tensor, let offset, let count):
            return "GGUF: tensor \"\(tensor)\" n_dimensions at byte \(offset) is \(count) (must be 1...4)"
        case .invalidDimension(let tensor, let offset, let index, let value):
            return "GGUF: tensor \"\(tensor)\" dims[\(index)] at byte \(offset) is \(value) (must be 1...Int64.max)"
        case .unknownTensorType(let tensor, let offset, let type):
            return "GGUF: tensor \"\(tensor)\" type at byte \(offset) is unknown ggml type \(type)"
        case .tensorSizeOverflow(let tensor, let field, let offset):
            return "GGUF: tensor \"\(tensor)\" \(field) at byte \(offset) overflows a 64-bit size"
        case .notBlockMultiple(let tensor, let offset, let type, let rowLength):
            return "GGUF: tensor \"\(tensor)\" dims[0] at byte \(offset) is \(rowLength), "
                + "not a multiple of the \(type) block size \(type.blockSize)"
        case .misalignedTensorOffset(let tensor, let offset, let dataOffset, let alignment):
            return "GGUF: tensor \"\(tensor)\" offset at byte \(offset) is \(dataOffset), "
                + "not a multiple of the alignment \(alignment)"
        case .tensorOutOfBounds(let tensor, let offset, let start, let byteCount, let fileSize):
            return "GGUF: tensor \"\(tensor)\" (offset field at byte \(offset)) spans bytes \(start)..+\(byteCount), "
                + "outside the \(fileSize)-byte file"
        case .overlappingTensors(let first, let second, let offset):
            return "GGUF: tensor \"\(second)\" (offset field at byte \(offset)) overlaps tensor \"\(first)\""
        case .invalidTensor(let name, let reason):
            return "GGUF: cannot write tensor \"\(name)\": \(reason)"
        }
    }
}
