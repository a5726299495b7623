// Hand-made hostile GGUF files, one named test each, asserting the exact GGUFError (case, field, byte offset).
// Every file is built byte by byte with RawGGUF from the spec (ggml docs/gguf.md), so the offsets the tests
// expect are where the test itself wrote each field. The last tests mutate valid files at random: the reader
// must either accept the result (and then hand out only in-bounds, aligned, non-overlapping tensor data) or
// throw a GGUFError; it must never trap.

import Foundation
import Testing

import Runtime

/// A one-tensor file, `header | tensor info "w" | padding to 32 | data`, with the offsets of its fields.
private struct OneTensorFile {
    var raw = RawGGUF()
    var nameOffset = 0, nDimsOffset = 0, dimsOffset = 0, typeOffset = 0, offsetField = 0, dataStart = 0

    init(name: String = "w", dims: [UInt64] = [4], type: UInt32 = GGMLTypeID.f32, offset: UInt64 = 0, dataBytes: Int = 16) {
        raw.header(tensors: 1, kvs: 0)
        nameOffset = raw.count
        raw.str(name)
        nDimsOffset = raw.count
        raw.u32(UInt32(dims.count))
        dimsOffset = raw.count
        for d in dims { raw.u64(d) }
        typeOffset = raw.count
        raw.u32(type)
        offsetField = raw.count
        raw.u64(offset)
        raw.pad(to: 32)
        dataStart = raw.count
        raw.zeros(dataBytes)
    }
}

@Suite("GGUF corruption corpus")
struct GGUFCorruptionTests {
    // MARK: - Header

    @Test func badMagic() {
        var r = RawGGUF()
        r.bytes += Array("GGUX".utf8)
        r.u32(3); r.u64(0); r.u64(0)
        // "GGUX" read as a little-endian u32: 0x47 | 0x47 << 8 | 0x55 << 16 | 0x58 << 24.
        #expect(ggufError(r.bytes) == .badMagic(found: 0x5855_4747, offset: 0))
    }

    @Test func futureVersion() {
        var r = RawGGUF()
        r.header(version: 4, tensors: 0, kvs: 0)
        #expect(ggufError(r.bytes) == .unsupportedVersion(version: 4, offset: 4))
    }

    @Test func versionOneRejected() {
        var r = RawGGUF()
        r.header(version: 1, tensors: 0, kvs: 0)
        #expect(ggufError(r.bytes) == .unsupportedVersion(version: 1, offset: 4))
    }

    @Test func bigEndianVersionRejected() {
        var r = RawGGUF()
        r.bytes += Array("GGUF".utf8) + [0, 0, 0, 3]
        r.u64(0); r.u64(0)
        #expect(ggufError(r.bytes) == .unsupportedVersion(version: 0x0300_0000, offset: 4))
    }

    @Test func emptyFile() {
        #expect(ggufError([]) == .truncated(field: "magic", offset: 0, needed: 4, available: 0))
    }

    @Test func tensorCountBeyondFile() {
        var r = RawGGUF()
        r.header(tensors: 1_000_000, kvs: 0)
        r.zeros(100)
        guard case .countExceedsFile(let field, let offset, let count, let limit) = ggufError(r.bytes) else {
            Issue.record("expected countExceedsFile"); return
        }
        #expect(field == "tensor_count" && offset == 8 && count == 1_000_000)
        #expect(limit < 100)  // 100 bytes cannot hold more than 100 tensor infos
    }

    @Test func tensorCountTwoToThe63() {
        var r = RawGGUF()
        r.header(tensors: 1 << 63, kvs: 0)
        guard case .countExceedsFile("tensor_count", 8, 1 << 63, _) = ggufError(r.bytes) else {
            Issue.record("expected countExceedsFile for tensor_count"); return
        }
    }

    @Test func kvCountBeyondFile() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1 << 40)
        r.key("a", type: GGUFTag.u8); r.u8(1)
        guard case .countExceedsFile("metadata_kv_count", 16, 1 << 40, let limit) = ggufError(r.bytes) else {
            Issue.record("expected countExceedsFile for metadata_kv_count"); return
        }
        #expect(limit <= r.count - 24)
    }

    @Test func truncatedInHeader() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 0)
        let cut = Array(r.bytes.prefix(12))  // 4 of tensor_count's 8 bytes
        #expect(ggufError(cut) == .truncated(field: "tensor_count", offset: 8, needed: 8, available: 4))
    }

    // MARK: - Metadata

    @Test func keyLengthTwoToThe63() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.u64(1 << 63)
        r.zeros(16)
        #expect(ggufError(r.bytes) == .stringExceedsFile(field: "metadata[0].key", offset: 24, length: 1 << 63, available: 16))
    }

    @Test func stringValueLengthTwoToThe63() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.key("general.name", type: GGUFTag.string)
        let at = r.count
        r.u64(1 << 63)
        r.bytes += Array("short".utf8)
        #expect(ggufError(r.bytes) == .stringExceedsFile(field: "metadata[\"general.name\"]", offset: at, length: 1 << 63, available: 5))
    }

    @Test func stringLengthOneBeyondFile() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.key("general.name", type: GGUFTag.string)
        let at = r.count
        r.u64(6)
        r.bytes += Array("short".utf8)
        #expect(ggufError(r.bytes) == .stringExceedsFile(field: "metadata[\"general.name\"]", offset: at, length: 6, available: 5))
    }

    @Test func arrayCountHuge() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.key("a", type: GGUFTag.array)
        r.u32(GGUFTag.u32)
        let countAt = r.count
        r.u64(1 << 61)
        r.zeros(64)
        guard case .countExceedsFile("metadata[\"a\"].count", countAt, 1 << 61, let limit) = ggufError(r.bytes) else {
            Issue.record("expected countExceedsFile for the array count"); return
        }
        #expect(limit == 64 / 4)  // 64 bytes hold at most 16 u32
    }

    @Test func metadataElementBudget() {
        // Two u8 arrays whose bytes are all present, but whose elements together pass GGUFFile.maxMetadataElements
        // (each would become a GGUFValue many times larger than its one byte).
        let limit = GGUFFile.maxMetadataElements
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 2)
        r.key("a", type: GGUFTag.array); r.u32(GGUFTag.u8); r.u64(UInt64(limit - 10)); r.zeros(limit - 10)
        r.key("b", type: GGUFTag.array); r.u32(GGUFTag.u8)
        let countAt = r.count
        r.u64(11); r.zeros(11)
        #expect(ggufError(r.bytes) == .tooManyMetadataElements(field: "metadata[\"b\"].count", offset: countAt, count: 11, limit: limit))
        // Exactly at the limit is accepted.
        r.bytes.removeLast(1)
        r.bytes[countAt] = 10
        #expect(ggufError(r.bytes) == nil)
    }

    @Test func stringArrayCountJustBeyondFile() {
        // 10 empty strings take 80 bytes; the file has 80 bytes after the count but claims 11 strings.
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.key("tokenizer.ggml.tokens", type: GGUFTag.array)
        r.u32(GGUFTag.string)
        let countAt = r.count
        r.u64(11)
        for _ in 0..<10 { r.str("") }
        guard case .countExceedsFile("metadata[\"tokenizer.ggml.tokens\"].count", countAt, 11, 10) = ggufError(r.bytes) else {
            Issue.record("expected countExceedsFile"); return
        }
    }

    @Test func duplicateKey() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 2)
        r.key("general.name", type: GGUFTag.string); r.str("a")
        let second = r.count
        r.key("general.name", type: GGUFTag.string); r.str("b")
        #expect(ggufError(r.bytes) == .duplicateKey(key: "general.name", offset: second))
    }

    @Test func unknownValueType() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        let at = r.key("k", type: 13)
        r.u32(0)
        #expect(ggufError(r.bytes) == .unknownValueType(field: "metadata[\"k\"].type", offset: at, type: 13))
    }

    @Test func unknownArrayElementType() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.key("k", type: GGUFTag.array)
        let at = r.count
        r.u32(0xFFFF_FFFF)
        r.u64(1)
        r.u8(0)
        #expect(ggufError(r.bytes) == .unknownValueType(field: "metadata[\"k\"].element_type", offset: at, type: 0xFFFF_FFFF))
    }

    @Test func wrongArrayElementTypeForTokens() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        let at = r.key("tokenizer.ggml.tokens", type: GGUFTag.array)
        r.u32(GGUFTag.u32); r.u64(2); r.u32(7); r.u32(8)
        #expect(ggufError(r.bytes) == .wrongValueType(key: "tokenizer.ggml.tokens", offset: at, expected: "array[string]", found: "array[uint32]"))
    }

    @Test func wrongArrayElementTypeForScores() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        let at = r.key("tokenizer.ggml.scores", type: GGUFTag.array)
        r.u32(GGUFTag.f64); r.u64(1); r.f64(0.5)
        #expect(ggufError(r.bytes) == .wrongValueType(key: "tokenizer.ggml.scores", offset: at, expected: "array[float32]", found: "array[float64]"))
    }

    @Test func alignmentNotUInt32() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        let at = r.key("general.alignment", type: GGUFTag.u64)
        r.u64(32)
        #expect(ggufError(r.bytes) == .wrongValueType(key: "general.alignment", offset: at, expected: "uint32", found: "uint64"))
    }

    @Test func architectureNotString() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        let at = r.key("general.architecture", type: GGUFTag.array)
        r.u32(GGUFTag.string); r.u64(1); r.str("llama")
        #expect(ggufError(r.bytes) == .wrongValueType(key: "general.architecture", offset: at, expected: "string", found: "array[string]"))
    }

    @Test func alignmentZero() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.key("general.alignment", type: GGUFTag.u32)
        let at = r.count
        r.u32(0)
        #expect(ggufError(r.bytes) == .invalidAlignment(value: 0, offset: at))
    }

    @Test func alignmentNotPowerOfTwo() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.key("general.alignment", type: GGUFTag.u32)
        let at = r.count
        r.u32(48)
        #expect(ggufError(r.bytes) == .invalidAlignment(value: 48, offset: at))
    }

    @Test func invalidUTF8Key() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.raw([0x61, 0xC3, 0x28])  // 0xC3 starts a 2-byte sequence; 0x28 is not a continuation byte
        r.u32(GGUFTag.u8); r.u8(0)
        #expect(ggufError(r.bytes) == .invalidUTF8(field: "metadata[0].key", offset: 24))
    }

    @Test func invalidUTF8InStringArray() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.key("tokenizer.ggml.tokens", type: GGUFTag.array)
        r.u32(GGUFTag.string); r.u64(3)
        r.str("ok")
        let at = r.count
        r.raw([0xED, 0xA0, 0x80])  // an encoded UTF-16 surrogate (U+D800): not valid UTF-8
        r.str("fine")
        #expect(ggufError(r.bytes) == .invalidUTF8(field: "metadata[\"tokenizer.ggml.tokens\"][1]", offset: at))
    }

    @Test func invalidBool() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.key("tokenizer.ggml.add_bos_token", type: GGUFTag.bool)
        let at = r.count
        r.u8(2)
        #expect(ggufError(r.bytes) == .invalidBool(field: "metadata[\"tokenizer.ggml.add_bos_token\"]", offset: at, value: 2))
    }

    @Test func nestingTooDeep() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.key("deep", type: GGUFTag.array)
        for _ in 0..<8 { r.u32(GGUFTag.array); r.u64(1) }  // depths 1...8, each holding one array
        let at = r.count  // the 9th array starts here
        r.u32(GGUFTag.u8); r.u64(1); r.u8(7)
        let field = "metadata[\"deep\"]" + String(repeating: "[0]", count: 8)
        #expect(ggufError(r.bytes) == .nestingTooDeep(field: field, offset: at, limit: 8))
    }

    @Test func nestingAtTheLimitAccepted() throws {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.key("deep", type: GGUFTag.array)
        for _ in 0..<7 { r.u32(GGUFTag.array); r.u64(1) }
        r.u32(GGUFTag.u8); r.u64(1); r.u8(7)
        var expected = GGUFValue.array([.uint8(7)])
        for _ in 0..<7 { expected = .array([expected]) }
        #expect(try GGUFFile(bytes: r.bytes).metadata["deep"] == expected)
    }

    @Test func truncatedInKey() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.u64(20)  // key length 20, only 5 bytes follow: the length check fires before reading
        r.bytes += Array("gener".utf8)
        #expect(ggufError(r.bytes) == .stringExceedsFile(field: "metadata[0].key", offset: 24, length: 20, available: 5))
    }

    @Test func truncatedInKeyLength() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 2)
        r.key("general.name", type: GGUFTag.string); r.str("a name long enough to pass the count check")
        r.bytes += [5, 0, 0]  // the second key's length, cut after 3 of 8 bytes
        #expect(ggufError(r.bytes) == .truncated(field: "metadata[1].key", offset: r.count - 3, needed: 8, available: 3))
    }

    @Test func kvCountOneWithTooFewBytesForAnyPair() {
        // 12 bytes cannot hold even one pair (the smallest is 13: empty key, type, one-byte value).
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.zeros(12)
        #expect(ggufError(r.bytes) == .countExceedsFile(field: "metadata_kv_count", offset: 16, count: 1, limit: 0))
    }

    @Test func truncatedInValue() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.key("x.f64", type: GGUFTag.f64)
        let at = r.count
        r.bytes += [0, 0, 0, 0, 0]
        #expect(ggufError(r.bytes) == .truncated(field: "metadata[\"x.f64\"]", offset: at, needed: 8, available: 5))
    }

    @Test func floatArrayCountBeyondFile() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.key("tokenizer.ggml.scores", type: GGUFTag.array)
        r.u32(GGUFTag.f32)
        let countAt = r.count
        r.u64(3)
        r.f32(1); r.f32(2)
        r.bytes += [0, 0]  // the third float would need 4 bytes: 10 bytes hold at most 2 floats
        #expect(ggufError(r.bytes) == .countExceedsFile(field: "metadata[\"tokenizer.ggml.scores\"].count", offset: countAt, count: 3, limit: 2))
    }

    @Test func truncatedInArray() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.key("tokenizer.ggml.tokens", type: GGUFTag.array)
        r.u32(GGUFTag.string); r.u64(2)
        r.str("first")
        let at = r.count
        r.bytes += [9, 0, 0]  // the second string's length field, cut after 3 of 8 bytes
        #expect(ggufError(r.bytes) == .truncated(field: "metadata[\"tokenizer.ggml.tokens\"][1]", offset: at, needed: 8, available: 3))
    }

    @Test func truncatedInsideStringArrayElement() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.key("tokenizer.ggml.tokens", type: GGUFTag.array)
        r.u32(GGUFTag.string); r.u64(2)
        r.str("first")
        let at = r.count
        r.u64(100)  // second element claims 100 bytes; 3 remain
        r.bytes += Array("abc".utf8)
        #expect(ggufError(r.bytes) == .stringExceedsFile(field: "metadata[\"tokenizer.ggml.tokens\"][1]", offset: at, length: 100, available: 3))
    }

    // MARK: - Tensor infos

    @Test func truncatedInTensorInfo() {
        // A long name keeps at least 32 bytes (the smallest tensor info) after the header, so the count passes
        // and the cut is found inside dims[1].
        let f = OneTensorFile(name: "blk.0.attn_q.weight", dims: [4, 2])
        let cut = Array(f.raw.bytes.prefix(f.dimsOffset + 8 + 3))
        #expect(ggufError(cut) == .truncated(field: "tensor_info[0].dims[1]", offset: f.dimsOffset + 8, needed: 8, available: 3))
    }

    @Test func truncatedInTensorData() {
        let f = OneTensorFile(dims: [4], dataBytes: 16)
        let cut = Array(f.raw.bytes.prefix(f.dataStart + 10))  // 10 of the tensor's 16 bytes
        #expect(ggufError(cut) == .tensorOutOfBounds(tensor: "w", offset: f.offsetField, start: UInt64(f.dataStart), byteCount: 16, fileSize: f.dataStart + 10))
    }

    @Test func duplicateTensorName() {
        var r = RawGGUF()
        r.header(tensors: 2, kvs: 0)
        r.tensorInfo("w", dims: [4], type: GGMLTypeID.f32, offset: 0)
        let second = r.count
        r.tensorInfo("w", dims: [4], type: GGMLTypeID.f32, offset: 32)
        r.pad(to: 32); r.zeros(64)
        #expect(ggufError(r.bytes) == .duplicateTensorName(name: "w", offset: second))
    }

    @Test func dimensionCountZero() {
        let f = OneTensorFile(dims: [])
        #expect(ggufError(f.raw.bytes) == .invalidDimensionCount(tensor: "w", offset: f.nDimsOffset, count: 0))
    }

    @Test func dimensionCountFive() {
        let f = OneTensorFile(dims: [1, 1, 1, 1, 4])
        #expect(ggufError(f.raw.bytes) == .invalidDimensionCount(tensor: "w", offset: f.nDimsOffset, count: 5))
    }

    @Test func dimensionZero() {
        let f = OneTensorFile(dims: [4, 0])
        #expect(ggufError(f.raw.bytes) == .invalidDimension(tensor: "w", offset: f.dimsOffset + 8, index: 1, value: 0))
    }

    @Test func dimensionAboveInt64Max() {
        let f = OneTensorFile(dims: [1 << 63])
        #expect(ggufError(f.raw.bytes) == .invalidDimension(tensor: "w", offset: f.dimsOffset, index: 0, value: 1 << 63))
    }

    @Test func unknownTensorType() {
        let f = OneTensorFile(type: 4)  // Q4_2: removed from ggml long ago
        #expect(ggufError(f.raw.bytes) == .unknownTensorType(tensor: "w", offset: f.typeOffset, type: 4))
        let g = OneTensorFile(type: 1000)
        #expect(ggufError(g.raw.bytes) == .unknownTensorType(tensor: "w", offset: g.typeOffset, type: 1000))
    }

    @Test func elementsTimesTypeSizeOverflow() {
        // 2^31 × 2^31 = 2^62 elements fit in Int64, but as F32 that is 2^64 bytes.
        let f = OneTensorFile(dims: [1 << 31, 1 << 31])
        #expect(ggufError(f.raw.bytes) == .tensorSizeOverflow(tensor: "w", field: "tensor_info[0].type", offset: f.typeOffset))
    }

    @Test func elementCountOverflow() {
        let f = OneTensorFile(dims: [1 << 32, 1 << 32])  // 2^64 elements
        #expect(ggufError(f.raw.bytes) == .tensorSizeOverflow(tensor: "w", field: "tensor_info[0].dims", offset: f.dimsOffset))
    }

    @Test func hugeTensorThatFitsInt64IsOutOfFile() {
        // 2^40 F32 elements: 2^42 bytes, a valid size, but not in this small file.
        let f = OneTensorFile(dims: [1 << 20, 1 << 20])
        #expect(ggufError(f.raw.bytes) == .tensorOutOfBounds(tensor: "w", offset: f.offsetField, start: UInt64(f.dataStart), byteCount: 1 << 42, fileSize: f.raw.count))
    }

    @Test func rowNotWholeBlocks() {
        // Q8_0 blocks hold 32 elements; a 48-element row is 1.5 blocks.
        let f = OneTensorFile(dims: [48, 2], type: GGMLTypeID.q8_0, dataBytes: 102)
        #expect(ggufError(f.raw.bytes) == .notBlockMultiple(tensor: "w", offset: f.dimsOffset, type: .q8_0, rowLength: 48))
        // 16 × 2 = 32 elements is one block in total, but rows of 16 are still not whole blocks (ggml checks ne[0]).
        let g = OneTensorFile(dims: [16, 2], type: GGMLTypeID.q8_0, dataBytes: 34)
        #expect(ggufError(g.raw.bytes) == .notBlockMultiple(tensor: "w", offset: g.dimsOffset, type: .q8_0, rowLength: 16))
    }

    @Test func misalignedTensorOffset() {
        let f = OneTensorFile(offset: 4, dataBytes: 32)
        #expect(ggufError(f.raw.bytes) == .misalignedTensorOffset(tensor: "w", offset: f.offsetField, dataOffset: 4, alignment: 32))
    }

    @Test func misalignedForCustomAlignment() {
        var r = RawGGUF()
        r.header(tensors: 1, kvs: 1)
        r.key("general.alignment", type: GGUFTag.u32); r.u32(64)
        let at = r.tensorInfo("w", dims: [4], type: GGMLTypeID.f32, offset: 32)  // aligned to 32, not to 64
        r.pad(to: 64); r.zeros(128)
        #expect(ggufError(r.bytes) == .misalignedTensorOffset(tensor: "w", offset: at, dataOffset: 32, alignment: 64))
    }

    @Test func outOfFileTensorOffset() {
        let f = OneTensorFile(offset: 1 << 40)
        #expect(ggufError(f.raw.bytes) == .tensorOutOfBounds(tensor: "w", offset: f.offsetField, start: UInt64(f.dataStart) + (1 << 40), byteCount: 16, fileSize: f.raw.count))
    }

    @Test func tensorOffsetNearUInt64Max() {
        // Aligned, but data start + offset wraps around 2^64: must be out of bounds, not a small wrapped offset.
        let offset: UInt64 = 0xFFFF_FFFF_FFFF_FFE0
        let f = OneTensorFile(offset: offset)
        // The reported start saturates at UInt64.max instead of wrapping.
        #expect(ggufError(f.raw.bytes) == .tensorOutOfBounds(tensor: "w", offset: f.offsetField, start: UInt64.max, byteCount: 16, fileSize: f.raw.count))
    }

    @Test func overlappingTensors() {
        var r = RawGGUF()
        r.header(tensors: 2, kvs: 0)
        r.tensorInfo("a", dims: [16], type: GGMLTypeID.f32, offset: 0)  // bytes 0..<64
        let at = r.tensorInfo("b", dims: [8], type: GGMLTypeID.f32, offset: 32)  // bytes 32..<64
        r.pad(to: 32); r.zeros(64)
        #expect(ggufError(r.bytes) == .overlappingTensors(first: "a", second: "b", offset: at))
    }

    @Test func overlappingTensorsListedOutOfOrder() {
        var r = RawGGUF()
        r.header(tensors: 3, kvs: 0)
        let cAt = r.tensorInfo("c", dims: [8], type: GGMLTypeID.f32, offset: 64)  // bytes 64..<96
        r.tensorInfo("a", dims: [8], type: GGMLTypeID.f32, offset: 0)  // bytes 0..<32
        r.tensorInfo("b", dims: [16], type: GGMLTypeID.f32, offset: 32)  // bytes 32..<96: overlaps c
        r.pad(to: 32); r.zeros(96)
        // In data order a, b, c: b is the first to run into its successor c.
        #expect(ggufError(r.bytes) == .overlappingTensors(first: "b", second: "c", offset: cAt))
    }

    // MARK: - Every prefix of a valid file

    @Test func everyPrefixShorterThanTheDataIsRejected() throws {
        var r = RawGGUF()
        r.header(tensors: 2, kvs: 3)
        r.key("general.architecture", type: GGUFTag.string); r.str("llama")
        r.key("tokenizer.ggml.tokens", type: GGUFTag.array); r.u32(GGUFTag.string); r.u64(3)
        r.str("<s>"); r.str("</s>"); r.str("\u{2581}hi")
        r.key("x.nested", type: GGUFTag.array); r.u32(GGUFTag.array); r.u64(2)
        r.u32(GGUFTag.i16); r.u64(2); r.i16(-1); r.i16(2)
        r.u32(GGUFTag.string); r.u64(1); r.str("z")
        r.tensorInfo("a", dims: [3], type: GGMLTypeID.f32, offset: 0)
        r.tensorInfo("b", dims: [2, 2], type: GGMLTypeID.f16, offset: 32)
        r.pad(to: 32)
        let dataStart = r.count
        r.zeros(32 + 8)  // a: 12 bytes + 20 padding, b: 8 bytes
        let dataEnd = dataStart + 32 + 8
        r.zeros(24)  // trailing padding: prefixes that only cut padding are still valid files

        let full = try GGUFFile(bytes: r.bytes)
        #expect(full.tensors.map(\.name) == ["a", "b"])
        for n in 0..<r.count {
            let prefix = Array(r.bytes.prefix(n))
            if n < dataEnd {
                #expect(ggufError(prefix) != nil, "prefix of \(n) bytes accepted")
            } else {
                #expect(ggufError(prefix) == nil, "prefix of \(n) bytes rejected")
            }
        }
    }

    // MARK: - Seeded random mutations

    /// A valid file from GGUFWriter with every value kind, nested arrays, and tensors of several types.
    static func fuzzSeed(alignment: Int) throws -> [UInt8] {
        var w = GGUFWriter(alignment: alignment)
        w.set("general.architecture", .string("llama"))
        w.set("general.name", .string("fuzz"))
        w.set("llama.block_count", .uint32(2))
        w.set("llama.rope.freq_base", .float32(10000))
        w.set("x.i64", .int64(-5))
        w.set("x.f64", .float64(0.25))
        w.set("x.bool", .bool(true))
        w.set("tokenizer.ggml.tokens", .array(["<unk>", "<s>", "</s>", "\u{2581}a", "b"].map { .string($0) }))
        w.set("tokenizer.ggml.scores", .array([0, 0, 0, -1, -2].map { .float32($0) }))
        w.set("tokenizer.ggml.token_type", .array([2, 3, 3, 1, 1].map { .int32($0) }))
        w.set("x.nested", .array([.array([.uint16(1), .uint16(2)]), .array([.string("q")])]))
        try w.addTensor(name: "token_embd.weight", dims: [8, 5], floats: (0..<40).map { Float($0) })
        try w.addTensor(name: "blk.0.attn_q.weight", type: .q8_0, dims: [32, 2], data: [UInt8](repeating: 1, count: 68))
        try w.addTensor(name: "blk.0.ffn_up.weight", type: .q4_K, dims: [256], data: [UInt8](repeating: 2, count: 144))
        try w.addTensor(name: "output_norm.weight", type: .f16, dims: [8], data: [UInt8](repeating: 0x3C, count: 16))
        return w.serialized()
    }

    /// Accepts or rejects `bytes`; when accepted, every tensor must lie inside the file, aligned and disjoint.
    /// Returns true when accepted.
    static func checkMutant(_ bytes: [UInt8]) -> Bool {
        let file: GGUFFile
        do {
            file = try GGUFFile(bytes: bytes)
        } catch is GGUFError {
            return false
        } catch {
            Issue.record("non-GGUF error \(error)")
            return false
        }
        var ranges: [Range<Int>] = []
        for t in file.tensors {
            let size = t.type.byteCount(elements: t.elementCount)
            #expect(size == t.byteCount)
            #expect(t.dataOffset >= 0 && t.dataOffset + t.byteCount <= bytes.count)
            #expect((t.dataOffset - file.dataSectionOffset) % file.alignment == 0)
            let data = file.data(of: t)
            #expect(data.count == t.byteCount)
            if let last = data.last {  // touch the last byte: must be the file's byte at that offset
                #expect(last == bytes[t.dataOffset + t.byteCount - 1])
            }
            ranges.append(t.dataOffset..<(t.dataOffset + t.byteCount))
        }
        ranges.sort { $0.lowerBound < $1.lowerBound }
        for (a, b) in zip(ranges, ranges.dropFirst()) { #expect(a.upperBound <= b.lowerBound) }
        #expect(Set(file.metadataKeys).count == file.metadata.count)
        return true
    }

    @Test func seededRandomMutationsNeverTrap() throws {
        var rng = GGUFTestRNG(state: 0x6767_7566_2024)
        let seeds = [try Self.fuzzSeed(alignment: 32), try Self.fuzzSeed(alignment: 64)]
        let interesting: [UInt64] = [0, 1, 2, 3, 4, 7, 8, 9, 31, 32, 33, 255, 256, 1 << 31, 1 << 32, 1 << 62, 1 << 63,
                                     UInt64.max, UInt64.max - 31, UInt64(Int64.max)]
        var accepted = 0, rejected = 0
        for iteration in 0..<20000 {
            var b = seeds[iteration % 2]
            let mutations = Int.random(in: 1...4, using: &rng)
            for _ in 0..<mutations {
                switch Int.random(in: 0..<6, using: &rng) {
                case 0:  // flip one bit
                    guard !b.isEmpty else { break }
                    let i = Int.random(in: 0..<b.count, using: &rng)
                    b[i] ^= 1 << UInt8.random(in: 0..<8, using: &rng)
                case 1:  // truncate
                    b.removeLast(Int.random(in: 0...b.count, using: &rng))
                case 2:  // overwrite a run of bytes with random values
                    guard !b.isEmpty else { break }
                    let i = Int.random(in: 0..<b.count, using: &rng)
                    for j in i..<min(b.count, i + Int.random(in: 1...8, using: &rng)) { b[j] = UInt8.random(in: 0...255, using: &rng) }
                case 3, 4:  // overwrite a u64 or u32 (where lengths, counts, dims and offsets live) with an edge value
                    let width = Bool.random(using: &rng) ? 8 : 4
                    guard b.count >= width else { break }
                    let i = Int.random(in: 0...(b.count - width), using: &rng)
                    var v = interesting.randomElement(using: &rng)!
                    if Bool.random(using: &rng) { v = v &+ UInt64(b.count) }
                    for k in 0..<width { b[i + k] = UInt8(truncatingIfNeeded: v >> (8 * k)) }
                default:  // insert or delete a few bytes
                    let i = Int.random(in: 0...b.count, using: &rng)
                    if Bool.random(using: &rng) {
                        b.insert(contentsOf: (0..<Int.random(in: 1...8, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }, at: i)
                    } else if i < b.count {
                        b.removeSubrange(i..<min(b.count, i + Int.random(in: 1...8, using: &rng)))
                    }
                }
            }
            if Self.checkMutant(b) { accepted += 1 } else { rejected += 1 }
        }
        // Both outcomes occur: mutations of padding and payload bytes keep files valid; the rest are rejected.
        #expect(accepted > 0)
        #expect(rejected > 0)
        #expect(accepted + rejected == 20000)
    }

    @Test func lengthFieldSweepNeverTraps() throws {
        // Every 8-byte window of the seed file overwritten with each edge value: reaches every length, count,
        // dim and offset field deterministically.
        let seed = try Self.fuzzSeed(alignment: 32)
        let values: [UInt64] = [0, 1, 0xFF, 1 << 32, 1 << 63, UInt64.max, UInt64(seed.count), UInt64(seed.count) - 1]
        var accepted = 0
        for i in stride(from: 0, to: seed.count - 8, by: 1) where i < 1200 {
            for v in values {
                var b = seed
                for k in 0..<8 { b[i + k] = UInt8(truncatingIfNeeded: v >> (8 * k)) }
                if Self.checkMutant(b) { accepted += 1 }
            }
        }
        #expect(accepted > 0)
    }
}
