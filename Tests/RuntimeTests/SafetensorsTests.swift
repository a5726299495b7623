// SafetensorsFile against files written byte by byte here from the format description (safetensors README,
// "Format": u64 little-endian header length, JSON header, byte buffer), with expected values written as literals.
import Foundation
import Runtime
import Testing

/// Writes safetensors files for tests, independently of the reader: the header JSON is assembled as text.
struct SafetensorsFixture {
    struct Entry {
        var name: String
        var dtype: String
        var shape: [Int]
        var data: [UInt8]
    }

    var entries: [Entry] = []
    var metadata: [String: String] = [:]

    mutating func add(_ name: String, dtype: String = "F32", shape: [Int], data: [UInt8]) {
        entries.append(Entry(name: name, dtype: dtype, shape: shape, data: data))
    }

    mutating func add(_ name: String, shape: [Int], floats: [Float]) {
        add(name, dtype: "F32", shape: shape, data: Self.f32Bytes(floats))
    }

    /// Little-endian binary32 bytes.
    static func f32Bytes(_ v: [Float]) -> [UInt8] {
        v.flatMap { f -> [UInt8] in let b = f.bitPattern; return [UInt8(b & 0xFF), UInt8(b >> 8 & 0xFF), UInt8(b >> 16 & 0xFF), UInt8(b >> 24)] }
    }

    /// Little-endian 16-bit words.
    static func u16Bytes(_ v: [UInt16]) -> [UInt8] { v.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] } }

    /// bfloat16 by truncation of the binary32 bits, and the values those words stand for.
    static func bf16(_ v: [Float]) -> (bytes: [UInt8], values: [Float]) {
        let words = v.map { UInt16($0.bitPattern >> 16) }
        return (u16Bytes(words), words.map { Float(bitPattern: UInt32($0) << 16) })
    }

    static func jsonString(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            default:
                if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
            }
        }
        return out + "\""
    }

    /// The header text with contiguous data offsets in entry order.
    func headerJSON() -> String {
        var parts: [String] = []
        if !metadata.isEmpty {
            let m = metadata.sorted { $0.key < $1.key }.map { "\(Self.jsonString($0.key)):\(Self.jsonString($0.value))" }
            parts.append("\"__metadata__\":{\(m.joined(separator: ","))}")
        }
        var offset = 0
        for e in entries {
            let shape = e.shape.map(String.init).joined(separator: ",")
            parts.append("\(Self.jsonString(e.name)):{\"dtype\":\"\(e.dtype)\",\"shape\":[\(shape)],\"data_offsets\":[\(offset),\(offset + e.data.count)]}")
            offset += e.data.count
        }
        return "{" + parts.joined(separator: ",") + "}"
    }

    func bytes(padding: Int = 0) -> [UInt8] {
        Self.file(header: headerJSON() + String(repeating: " ", count: padding), buffer: entries.flatMap(\.data))
    }

    /// A file from a header text (any content) and a buffer.
    static func file(header: String, buffer: [UInt8]) -> [UInt8] {
        let h = Array(header.utf8)
        return file(headerLength: UInt64(h.count), rest: h + buffer)
    }

    static func file(headerLength: UInt64, rest: [UInt8]) -> [UInt8] {
        (0..<8).map { UInt8(headerLength >> (8 * UInt64($0)) & 0xFF) } + rest
    }
}

@Suite struct SafetensorsTests {
    /// Float16 words and the values they encode (IEEE 754 binary16), written out by hand.
    static let f16Words: [UInt16] = [0x3C00, 0xC000, 0x3555, 0x0001, 0x7BFF, 0x7C00, 0x8000, 0x0400]
    static let f16Values: [Float] = [1, -2, 0.333251953125, 5.9604644775390625e-08, 65504, .infinity, -0.0, 6.103515625e-05]
    /// bfloat16 words and their values.
    static let bf16Words: [UInt16] = [0x3F80, 0xC0A0, 0x3EAB, 0x0001, 0xFF80, 0x4049]
    static let bf16Values: [Float] = [1, -5, 0.333984375, Float(sign: .plus, exponent: -133, significand: 1), -.infinity, 3.140625]

    static func sample() -> SafetensorsFixture {
        var f = SafetensorsFixture()
        f.metadata = ["format": "pt", "note": "quote \" and \\ and é"]
        f.add("weights.f32", shape: [2, 3], floats: [1.5, -2.25, 0, 1e-30, 3.4e38, -7])
        f.add("weights.f16", dtype: "F16", shape: [2, 4], data: SafetensorsFixture.u16Bytes(f16Words))
        f.add("weights.bf16", dtype: "BF16", shape: [6], data: SafetensorsFixture.u16Bytes(bf16Words))
        f.add("scalar", shape: [], floats: [42])
        f.add("empty", shape: [0, 3], floats: [])
        return f
    }

    static func expectError(_ bytes: [UInt8], _ expected: SafetensorsError, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try SafetensorsFile(bytes: bytes)
            Issue.record("accepted a file that should fail with \(expected)", sourceLocation: sourceLocation)
        } catch let e as SafetensorsError {
            #expect(e == expected, sourceLocation: sourceLocation)
        } catch {
            Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func validFileRoundTrips() throws {
        let bytes = Self.sample().bytes(padding: 5)
        let file = try SafetensorsFile(bytes: bytes)
        #expect(file.fileSize == bytes.count)
        #expect(file.metadata == ["format": "pt", "note": "quote \" and \\ and é"])
        #expect(file.tensors.map(\.name) == ["weights.f32", "weights.f16", "weights.bf16", "scalar", "empty"])
        let f32 = try #require(file.tensor(named: "weights.f32"))
        #expect(f32.dtype == .f32 && f32.shape == [2, 3] && f32.dataOffsets == 0..<24 && f32.elementCount == 6)
        #expect(file.floats(of: f32) == [1.5, -2.25, 0, 1e-30, 3.4e38, -7])
        let f16 = try file.floats(named: "weights.f16")
        #expect(f16.count == 8)
        for (got, want) in zip(f16, Self.f16Values) {
            #expect(got == want && got.sign == want.sign, "f16 \(got) != \(want)")
        }
        #expect(try file.floats(named: "weights.bf16") == Self.bf16Values)
        #expect(try file.floats(named: "scalar") == [42])
        #expect(file.tensor(named: "scalar")?.shape == [])
        #expect(try file.floats(named: "empty") == [])
        #expect(file.tensor(named: "empty")?.dataOffsets == 56..<56)
        #expect(file.tensor(named: "scalar")?.dataOffsets == 52..<56)
        let raw = file.data(of: try #require(file.tensor(named: "weights.bf16")))
        #expect(Array(raw) == SafetensorsFixture.u16Bytes(Self.bf16Words))
        #expect(throws: SafetensorsError.missingTensor(name: "nope")) { try file.floats(named: "nope") }
    }

    @Test func f16NaNStaysNaN() throws {
        var f = SafetensorsFixture()
        f.add("n", dtype: "F16", shape: [2], data: SafetensorsFixture.u16Bytes([0x7E00, 0xFE01]))
        let v = try SafetensorsFile(bytes: f.bytes()).floats(named: "n")
        #expect(v.count == 2 && v.allSatisfy(\.isNaN))
    }

    @Test func opensFromPath() throws {
        let path = NSTemporaryDirectory() + "st-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).safetensors"
        try Data(Self.sample().bytes()).write(to: URL(fileURLWithPath: path))
        defer { unlink(path) }
        let file = try SafetensorsFile(path: path)
        #expect(try file.floats(named: "weights.f32") == [1.5, -2.25, 0, 1e-30, 3.4e38, -7])
        #expect(throws: SafetensorsError.io(operation: "open", path: path + ".missing", errno: ENOENT)) {
            try SafetensorsFile(path: path + ".missing")
        }
    }

    @Test func headerLengthPastTheFile() {
        let rest = Array("{}".utf8) + [UInt8](repeating: 0, count: 90)
        Self.expectError(SafetensorsFixture.file(headerLength: 1000, rest: rest),
                         .headerExceedsFile(length: 1000, available: 92))
        Self.expectError(SafetensorsFixture.file(headerLength: UInt64.max, rest: rest),
                         .headerTooLarge(length: UInt64.max, limit: 100_000_000))
    }

    @Test func headerLengthOverTheLimit() {
        Self.expectError(SafetensorsFixture.file(headerLength: 100_000_001, rest: Array("{}".utf8)),
                         .headerTooLarge(length: 100_000_001, limit: 100_000_000))
        #expect(SafetensorsFile.maxHeaderLength == 100_000_000)
    }

    @Test func truncatedFile() {
        let full = Self.sample().bytes()
        // Cut inside the data: the last non-empty tensor ("scalar", buffer bytes 52..<56) now ends past the buffer.
        let cut = Array(full.dropLast(3))
        Self.expectError(cut, .tensorOutOfBounds(tensor: "scalar", end: 56, bufferSize: 53))
        // Shorter than the length field.
        Self.expectError(Array(full.prefix(5)), .fileTooSmall(size: 5))
        Self.expectError([], .fileTooSmall(size: 0))
        // Cut inside the header.
        let headerLength = Self.sample().headerJSON().utf8.count
        Self.expectError(Array(full.prefix(8 + headerLength - 1)),
                         .headerExceedsFile(length: UInt64(headerLength), available: headerLength - 1))
    }

    @Test func badJSON() throws {
        for header in ["{\"a\": [1, 2,}", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", "{} x",
                       "{\"a\": tru}", "{\"a\": \"\\ud800\"}", "{\"a\": 01}", "{\"a\u{01}\": 1}"] {
            do {
                _ = try SafetensorsFile(bytes: SafetensorsFixture.file(header: header, buffer: [0, 0, 0, 0]))
                Issue.record("accepted header \(header)")
            } catch SafetensorsError.invalidHeader(let offset, _) {
                #expect(offset >= 8 && offset <= 8 + header.utf8.count, "offset \(offset) for \(header)")
            }
        }
        // The header must start with '{' (no leading whitespace), and must be an object.
        Self.expectError(SafetensorsFixture.file(header: " {}", buffer: []),
                         .invalidHeader(offset: 8, reason: "the header must begin with '{'"))
        // Invalid UTF-8 inside a string.
        let bad = SafetensorsFixture.file(headerLength: 8, rest: Array("{\"".utf8) + [0xC3, 0x28] + Array("\":1}".utf8))
        #expect(throws: SafetensorsError.invalidHeader(offset: 8 + 5, reason: "string is not valid UTF-8")) {
            try SafetensorsFile(bytes: bad)
        }
        // Nesting deeper than the parser's limit is refused, not a stack overflow.
        let deep = "{\"__metadata__\":" + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000) + "}"
        #expect(throws: SafetensorsError.self) { try SafetensorsFile(bytes: SafetensorsFixture.file(header: deep, buffer: [])) }
    }

    @Test func unknownDType() {
        var f = SafetensorsFixture()
        f.add("ids", dtype: "I64", shape: [1], data: [UInt8](repeating: 0, count: 8))
        Self.expectError(f.bytes(), .unsupportedDType(tensor: "ids", dtype: "I64"))
        var g = SafetensorsFixture()
        g.add("w", dtype: "F33", shape: [1], data: [0, 0, 0, 0])
        Self.expectError(g.bytes(), .unsupportedDType(tensor: "w", dtype: "F33"))
        #expect(SafetensorsError.unsupportedDType(tensor: "ids", dtype: "I64").description.contains("ids"))
    }

    @Test func shapeAndOffsetSizeMismatch() {
        let header = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}"
        Self.expectError(SafetensorsFixture.file(header: header, buffer: [UInt8](repeating: 0, count: 20)),
                         .sizeMismatch(tensor: "w", expected: 24, actual: 20))
        let backwards = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}"
        Self.expectError(SafetensorsFixture.file(header: backwards, buffer: [UInt8](repeating: 0, count: 8)),
                         .invalidOffsets(tensor: "w", reason: "BEGIN 8 is after END 4"))
        let missing = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}"
        Self.expectError(SafetensorsFixture.file(header: missing, buffer: []),
                         .invalidField(tensor: "w", field: "data_offsets", reason: "missing"))
    }

    @Test func offsetsPastTheEnd() {
        let header = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[8,24]}}"
        Self.expectError(SafetensorsFixture.file(header: header, buffer: [UInt8](repeating: 0, count: 16)),
                         .tensorOutOfBounds(tensor: "w", end: 24, bufferSize: 16))
    }

    @Test func overlappingTensors() {
        let header = "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}"
        Self.expectError(SafetensorsFixture.file(header: header, buffer: [UInt8](repeating: 0, count: 24)),
                         .overlappingTensors(first: "a", second: "b"))
        // The same range twice.
        let same = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}"
        Self.expectError(SafetensorsFixture.file(header: same, buffer: [UInt8](repeating: 0, count: 8)),
                         .overlappingTensors(first: "a", second: "b"))
    }

    @Test func holesAndTrailingBytes() {
        let hole = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}"
        Self.expectError(SafetensorsFixture.file(header: hole, buffer: [UInt8](repeating: 0, count: 12)),
                         .unindexedBytes(before: "b", start: 4, end: 8))
        var f = SafetensorsFixture()
        f.add("a", shape: [1], floats: [1])
        Self.expectError(f.bytes() + [0, 0], .trailingBytes(count: 2, bufferSize: 6))
    }

    @Test func duplicateTensorNames() {
        let header = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}"
        Self.expectError(SafetensorsFixture.file(header: header, buffer: [UInt8](repeating: 0, count: 8)),
                         .duplicateTensorName(name: "a"))
        // Escapes that spell the same name are the same name.
        let escaped = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"\\u0061\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}"
        Self.expectError(SafetensorsFixture.file(header: escaped, buffer: [UInt8](repeating: 0, count: 8)),
                         .duplicateTensorName(name: "a"))
        // A duplicate field inside an entry is a header error.
        let field = "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,4]}}"
        #expect(throws: SafetensorsError.self) {
            try SafetensorsFile(bytes: SafetensorsFixture.file(header: field, buffer: [0, 0, 0, 0]))
        }
    }

    @Test func negativeAndHugeDims() {
        func entry(_ shape: String, _ offsets: String = "[0,4]") -> [UInt8] {
            SafetensorsFixture.file(header: "{\"w\":{\"dtype\":\"F32\",\"shape\":\(shape),\"data_offsets\":\(offsets)}}",
                                    buffer: [0, 0, 0, 0])
        }
        Self.expectError(entry("[-1]"), .invalidShape(tensor: "w", reason: "dim 0 is negative (-1)"))
        Self.expectError(entry("[1.0]"), .invalidShape(tensor: "w", reason: "dim 0 is not an integer"))
        Self.expectError(entry("[1,1,1,1,1,1,1,1,1]"), .invalidShape(tensor: "w", reason: "9 dims, more than 8"))
        // 2^62 × 8 elements overflow; × 4 bytes overflows even when the count does not.
        Self.expectError(entry("[4611686018427387904, 8]"), .sizeOverflow(tensor: "w"))
        Self.expectError(entry("[4611686018427387904]"), .sizeOverflow(tensor: "w"))
        Self.expectError(entry("[18446744073709551615]"), .sizeOverflow(tensor: "w"))
        Self.expectError(entry("[99999999999999999999999999]"), .sizeOverflow(tensor: "w"))
        // An overflowing product with a zero dim is an empty tensor.
        let zero = SafetensorsFixture.file(header: "{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,8,0],\"data_offsets\":[0,0]}}", buffer: [])
        #expect((try? SafetensorsFile(bytes: zero))?.tensors.first?.elementCount == 0)
        // Offsets that do not fit a signed 64-bit integer.
        Self.expectError(entry("[1]", "[0,18446744073709551615]"),
                         .tensorOutOfBounds(tensor: "w", end: Int.max, bufferSize: 4))
        Self.expectError(entry("[1]", "[-4,0]"), .invalidOffsets(tensor: "w", reason: "BEGIN is not a non-negative integer"))
    }

    @Test func metadataMustBeStrings() {
        let header = "{\"__metadata__\":{\"epoch\":3}}"
        Self.expectError(SafetensorsFixture.file(header: header, buffer: []),
                         .invalidField(tensor: "__metadata__", field: "epoch", reason: "metadata values must be strings"))
    }

    /// 5,000 seeded mutations (byte changes, insertions, deletions, truncations, header length changes) of a small
    /// valid file: each is either refused with a SafetensorsError or accepted with every tensor inside the file.
    @Test func randomMutationsNeverTrap() {
        let base = Self.sample().bytes()
        var rng = SplitMix(0x5AFE_7E45)
        var accepted = 0, refused = 0
        for _ in 0..<5000 {
            var b = base
            for _ in 0..<(1 + Int(rng.next() % 4)) {
                let pos = Int(rng.next() % UInt64(max(b.count, 1)))
                switch rng.next() % 6 {
                case 0: if !b.isEmpty { b[pos] = UInt8(truncatingIfNeeded: rng.next()) }
                case 1: b.insert(UInt8(truncatingIfNeeded: rng.next()), at: min(pos, b.count))
                case 2: if !b.isEmpty { b.remove(at: pos) }
                case 3: b = Array(b.prefix(pos))
                case 4: if b.count >= 8 { b[Int(rng.next() % 8)] = UInt8(truncatingIfNeeded: rng.next()) }
                default:
                    // Replace a header byte with a JSON-significant character.
                    let chars = Array("{}[]\",:-0123456789eE.\\u ".utf8)
                    if b.count > 8 { b[8 + Int(rng.next() % UInt64(b.count - 8))] = chars[Int(rng.next() % UInt64(chars.count))] }
                }
            }
            do {
                let f = try SafetensorsFile(bytes: b)
                for t in f.tensors {
                    #expect(8 + f.headerLength + t.dataOffsets.upperBound <= b.count)
                    #expect(f.floats(of: t).count == t.elementCount)
                }
                accepted += 1
            } catch is SafetensorsError {
                refused += 1
            } catch {
                Issue.record("unexpected error type \(error)")
            }
        }
        #expect(accepted + refused == 5000)
        #expect(refused > 1000, "mutations should mostly be refused (refused \(refused))")
        print("[safetensors] random mutations: \(accepted) accepted, \(refused) refused")
    }
}
