// Dequantization and reference quantization against the gguf Python package (gguf==0.19.0). The fixtures in
// Fixtures/quant/ were written by scripts/make_quant_fixtures.py (see Fixtures/FIXTURES.md); every comparison here is
// bit for bit, including the sign of zero and infinities.

import Foundation
import Runtime
import Testing

/// Reads `Fixtures/quant/<name>` from the test bundle.
fileprivate func quantFixture(_ name: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> [UInt8] {
    let base = (name as NSString).deletingPathExtension
    let ext = (name as NSString).pathExtension
    let url = try #require(
        Bundle.module.url(forResource: base, withExtension: ext, subdirectory: "Fixtures/quant"),
        "missing fixture Fixtures/quant/\(name); regenerate with scripts/make_quant_fixtures.py",
        sourceLocation: sourceLocation)
    return try [UInt8](Data(contentsOf: url))
}

/// Little-endian float32 file → bit patterns.
fileprivate func float32Bits(_ bytes: [UInt8]) -> [UInt32] {
    stride(from: 0, to: bytes.count - 3, by: 4).map {
        UInt32(bytes[$0]) | UInt32(bytes[$0 + 1]) << 8 | UInt32(bytes[$0 + 2]) << 16 | UInt32(bytes[$0 + 3]) << 24
    }
}

/// Compares bit patterns and records the count plus the first few mismatches (index, block, values).
fileprivate func expectSameBits(_ got: [UInt32], _ expected: [UInt32], blockSize: Int, _ what: String,
                    sourceLocation: SourceLocation = #_sourceLocation)
{
    #expect(got.count == expected.count, "\(what): \(got.count) values, expected \(expected.count)",
            sourceLocation: sourceLocation)
    let bad = zip(got, expected).enumerated().filter { $0.element.0 != $0.element.1 }
    let shown = bad.prefix(5).map { i, pair in
        "[\(i)] block \(i / blockSize): got \(Float(bitPattern: pair.0)) (0x\(String(pair.0, radix: 16))), "
            + "expected \(Float(bitPattern: pair.1)) (0x\(String(pair.1, radix: 16)))"
    }
    #expect(bad.isEmpty, "\(what): \(bad.count) of \(expected.count) values differ\n\(shown.joined(separator: "\n"))",
            sourceLocation: sourceLocation)
}

/// Compares bytes and records the count plus the first few mismatching offsets.
fileprivate func expectSameBytes(_ got: [UInt8], _ expected: [UInt8], blockBytes: Int, _ what: String,
                     sourceLocation: SourceLocation = #_sourceLocation)
{
    #expect(got.count == expected.count, "\(what): \(got.count) bytes, expected \(expected.count)",
            sourceLocation: sourceLocation)
    let bad = zip(got, expected).enumerated().filter { $0.element.0 != $0.element.1 }
    let shown = bad.prefix(8).map { i, pair in
        "byte \(i) (block \(i / blockBytes), offset \(i % blockBytes)): got 0x\(String(pair.0, radix: 16)), "
            + "expected 0x\(String(pair.1, radix: 16))"
    }
    #expect(bad.isEmpty, "\(what): \(bad.count) of \(expected.count) bytes differ\n\(shown.joined(separator: "\n"))",
            sourceLocation: sourceLocation)
}

@Suite("QuantFixture")
struct QuantFixtureTests {
    static let dequantTypes: [GGMLType] = [
        .f32, .f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K,
    ]

    @Test(arguments: dequantTypes)
    func dequantizeMatchesGGUF(type: GGMLType) throws {
        #expect(Quant.isSupported(type))
        let raw = try quantFixture("\(type).bin")
        let expected = float32Bits(try quantFixture("\(type).f32"))
        let count = expected.count
        #expect(type.byteCount(elements: count) == raw.count, "fixture size does not match \(count) \(type) values")
        guard type.byteCount(elements: count) == raw.count else { return }

        var out = [Float](repeating: .nan, count: count)
        raw.withUnsafeBytes { src in
            out.withUnsafeMutableBufferPointer { Quant.dequantize(type, src.baseAddress!, count: count, into: $0.baseAddress!) }
        }
        expectSameBits(out.map(\.bitPattern), expected, blockSize: type.blockSize, "\(type) dequantize")

        // Same values from a source that is not even 2-byte aligned.
        var shifted = [UInt8](repeating: 0, count: raw.count + 1)
        shifted.replaceSubrange(1..., with: raw)
        var out2 = [Float](repeating: .nan, count: count)
        shifted.withUnsafeBytes { src in
            out2.withUnsafeMutableBufferPointer {
                Quant.dequantize(type, src.baseAddress! + 1, count: count, into: $0.baseAddress!)
            }
        }
        expectSameBits(out2.map(\.bitPattern), expected, blockSize: type.blockSize, "\(type) dequantize, unaligned")

        // Row by row through WeightMatrix (rows of 256 or 1024 elements).
        let cols = type.blockSize == 256 ? 1024 : 256
        let rows = count / cols
        var out3 = [Float](repeating: .nan, count: count)
        raw.withUnsafeBytes { src in
            let w = WeightMatrix(type: type, rows: rows, cols: cols, data: src.baseAddress!)
            out3.withUnsafeMutableBufferPointer { dst in
                for r in 0..<rows { w.dequantizeRow(r, into: dst.baseAddress! + r * cols) }
            }
        }
        expectSameBits(out3.map(\.bitPattern), expected, blockSize: type.blockSize, "\(type) WeightMatrix rows")
    }

    /// Reference quantizers: gguf.quants.quantize bytes (f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1) and the
    /// ggml-quants.c transcriptions for the activation-only q8_1 and q8_K.
    static let quantTypes: [GGMLType] = [.f16, .bf16, .q8_0, .q8_1, .q8_K, .q4_0, .q4_1, .q5_0, .q5_1]

    @Test(arguments: quantTypes)
    func quantizeMatchesReference(type: GGMLType) throws {
        let input = float32Bits(try quantFixture("quantize_input.f32")).map(Float.init(bitPattern:))
        let expected = try quantFixture("quantize_\(type).bin")
        let bytes = try #require(type.byteCount(elements: input.count))
        #expect(bytes == expected.count)
        var out = [UInt8](repeating: 0xAA, count: bytes)
        input.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBytes { Quant.quantize(type, src.baseAddress!, count: input.count, into: $0.baseAddress!) }
        }
        expectSameBytes(out, expected, blockBytes: type.typeSize, "\(type) quantize")
    }

    /// The SIMD activation quantizers (`quantizeRows`) give the same bytes, rows of 256 laid out with padding.
    @Test(arguments: [GGMLType.f16, .bf16, .q8_0, .q8_1, .q8_K])
    func quantizeRowsMatchesReference(type: GGMLType) throws {
        let input = float32Bits(try quantFixture("quantize_input.f32")).map(Float.init(bitPattern:))
        let expected = try quantFixture("quantize_\(type).bin")
        let cols = 256
        let rows = input.count / cols
        let rowBytes = try #require(type.byteCount(elements: cols))
        let dstStride = rowBytes + 8
        var out = [UInt8](repeating: 0xAA, count: rows * dstStride)
        input.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBytes {
                Quant.quantizeRows(type, src.baseAddress!, srcStride: cols, rows: rows, cols: cols,
                                   into: $0.baseAddress!, dstStride: dstStride)
            }
        }
        let packed = (0..<rows).flatMap { r in out[(r * dstStride)..<(r * dstStride + rowBytes)] }
        expectSameBytes(packed, expected, blockBytes: type.typeSize, "\(type) quantizeRows")
        for r in 0..<rows { #expect(out[(r * dstStride + rowBytes)..<((r + 1) * dstStride)].allSatisfy { $0 == 0xAA }) }
    }

    /// quantize → dequantize for the activation types with a dequantizer: q8_0 against gguf.quants.dequantize,
    /// q8_K against `d * qs` (ggml dequantize_row_q8_K).
    @Test(arguments: [GGMLType.q8_0, .q8_K])
    func quantizeDequantizeRoundTrip(type: GGMLType) throws {
        let input = float32Bits(try quantFixture("quantize_input.f32")).map(Float.init(bitPattern:))
        let expected = float32Bits(try quantFixture("quantize_\(type).f32"))
        let bytes = try #require(type.byteCount(elements: input.count))
        var q = [UInt8](repeating: 0, count: bytes)
        input.withUnsafeBufferPointer { src in
            q.withUnsafeMutableBytes { Quant.quantize(type, src.baseAddress!, count: input.count, into: $0.baseAddress!) }
        }
        var out = [Float](repeating: .nan, count: input.count)
        q.withUnsafeBytes { src in
            out.withUnsafeMutableBufferPointer {
                Quant.dequantize(type, src.baseAddress!, count: input.count, into: $0.baseAddress!)
            }
        }
        expectSameBits(out.map(\.bitPattern), expected, blockSize: type.blockSize, "\(type) round trip")
    }
}
