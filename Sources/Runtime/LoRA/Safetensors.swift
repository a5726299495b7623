// Reading safetensors files (the tensor format of Hugging Face `safetensors`; PEFT saves LoRA adapters in it).
// Format (safetensors README, "Format"; reference checks in safetensors/src/tensor.rs `read_metadata`/`validate`):
//   u64 little-endian N | N bytes of UTF-8 JSON header, starting with '{', maybe padded with spaces | byte buffer
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [BEGIN, END]} with offsets relative to
// the first byte of the buffer; an optional "__metadata__" entry maps strings to strings. Tensors are row-major
// ("C" order) and little-endian. The reference implementation refuses headers over 100,000,000 bytes, duplicate
// keys, sizes that disagree with dtype × shape, and a buffer that the tensors do not cover exactly (no overlap, no
// hole, no trailing bytes); this reader refuses the same, with an error naming the tensor or field.
//
// The JSON header is parsed here by a strict RFC 8259 parser rather than JSONSerialization: that one keeps one of
// two duplicate keys silently, which would let two tensors share a name.

import CKernels

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Errors

/// Why a safetensors file was refused. Every case names the tensor or header field at fault.
public enum SafetensorsError: Error, CustomStringConvertible, Equatable {
    /// A system call failed (`operation` is `open`, `fstat` or `mmap`).
    case io(operation: String, path: String, errno: Int32)
    /// The file is shorter than the 8-byte header length field.
    case fileTooSmall(size: Int)
    /// The header length N is over `SafetensorsFile.maxHeaderLength`.
    case headerTooLarge(length: UInt64, limit: Int)
    /// The header length N is larger than the bytes after the length field.
    case headerExceedsFile(length: UInt64, available: Int)
    /// The header is not a JSON object of the expected form: bad UTF-8, bad JSON syntax, a first byte other than
    /// `{`, nesting too deep, or a top-level value that is not an object. `offset` is the absolute byte offset in
    /// the file where the problem was found.
    case invalidHeader(offset: Int, reason: String)
    /// Two header entries have the same tensor name (the JSON object has the key twice).
    case duplicateTensorName(name: String)
    /// A field of a tensor entry (or of `__metadata__`) is missing or has the wrong JSON type; `tensor` is the
    /// entry name, `field` the key.
    case invalidField(tensor: String, field: String, reason: String)
    /// A dtype other than F32, F16 and BF16 (known safetensors dtypes such as I64 or F8_E4M3 included).
    case unsupportedDType(tensor: String, dtype: String)
    /// A shape with more than `SafetensorsFile.maxRank` dims, or a dim that is negative or not an integer.
    case invalidShape(tensor: String, reason: String)
    /// The element count (product of the shape) or the byte count does not fit a 64-bit integer.
    case sizeOverflow(tensor: String)
    /// `data_offsets` are not two integers with `0 <= BEGIN <= END`.
    case invalidOffsets(tensor: String, reason: String)
    /// `END - BEGIN` differs from `product(shape) × dtype size`.
    case sizeMismatch(tensor: String, expected: Int, actual: Int)
    /// `END` lies past the end of the byte buffer (`bufferSize` bytes after the header).
    case tensorOutOfBounds(tensor: String, end: Int, bufferSize: Int)
    /// Two tensors' byte ranges overlap (or a tensor starts inside another one's range).
    case overlappingTensors(first: String, second: String)
    /// Bytes `[start, end)` of the buffer, before `tensor`, belong to no tensor (the format forbids holes).
    case unindexedBytes(before: String, start: Int, end: Int)
    /// The last `count` bytes of the buffer belong to no tensor (the format forbids them).
    case trailingBytes(count: Int, bufferSize: Int)
    /// No tensor has this name.
    case missingTensor(name: String)

    /// A one-line message naming the tensor or field, prefixed `safetensors:`.
    public var description: String {
        switch self {
        case .io(let operation, let path, let errno):
            return "safetensors: \(operation) failed for \(path) (errno \(errno))"
        case .fileTooSmall(let size):
            return "safetensors: the file has \(size) bytes, less than the 8-byte header length field"
        case .headerTooLarge(let length, let limit):
            return "safetensors: header length \(length) is over the limit of \(limit) bytes"
        case .headerExceedsFile(let length, let available):
            return "safetensors: header length \(length) is larger than the \(available) bytes after the length field"
        case .invalidHeader(let offset, let reason):
            return "safetensors: invalid header at byte \(offset): \(reason)"
        case .duplicateTensorName(let name):
            return "safetensors: tensor name \"\(name)\" appears twice in the header"
        case .invalidField(let tensor, let field, let reason):
            return "safetensors: \"\(tensor)\".\(field): \(reason)"
        case .unsupportedDType(let tensor, let dtype):
            return "safetensors: tensor \"\(tensor)\" has dtype \(dtype); only F32, F16 and BF16 are read"
        case .invalidShape(let tensor, let reason):
            return "safetensors: tensor \"\(tensor)\" shape: \(reason)"
        case .sizeOverflow(let tensor):
            return "safetensors: tensor \"\(tensor)\": the size of its shape overflows a 64-bit integer"
        case .invalidOffsets(let tensor, let reason):
            return "safetensors: tensor \"\(tensor)\" data_offsets: \(reason)"
        case .sizeMismatch(let tensor, let expected, let actual):
            return "safetensors: tensor \"\(tensor)\": data_offsets span \(actual) bytes, dtype × shape needs \(expected)"
        case .tensorOutOfBounds(let tensor, let end, let bufferSize):
            return "safetensors: tensor \"\(tensor)\" ends at buffer byte \(end), past the \(bufferSize)-byte buffer"
        case .overlappingTensors(let first, let second):
            return "safetensors: tensor \"\(second)\" overlaps tensor \"\(first)\""
        case .unindexedBytes(let before, let start, let end):
            return "safetensors: buffer bytes \(start)..<\(end) before tensor \"\(before)\" belong to no tensor"
        case .trailingBytes(let count, let bufferSize):
            return "safetensors: the last \(count) of the \(bufferSize) buffer bytes belong to no tensor"
        case .missingTensor(let name):
            return "safetensors: no tensor named \"\(name)\""
        }
    }
}

// MARK: - Tensor descriptions

/// Element types read from safetensors files (the format's dtype strings as raw values).
public enum SafetensorsDType: String, Sendable, CaseIterable {
    /// IEEE 754 binary32.
    case f32 = "F32"
    /// IEEE 754 binary16.
    case f16 = "F16"
    /// bfloat16: the upper 16 bits of a binary32.
    case bf16 = "BF16"

    /// Bytes per element: 4, 2, 2.
    public var byteSize: Int { self == .f32 ? 4 : 2 }
}

/// One tensor entry of a safetensors header, validated against the file.
public struct SafetensorsTensorInfo: Sendable, Equatable {
    /// The header key, e.g. `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.
    public let name: String
    /// Element type.
    public let dtype: SafetensorsDType
    /// Dimensions, outermost first (row-major: the last dim varies fastest); 0 to `SafetensorsFile.maxRank`
    /// entries, each ≥ 0. `[]` is a scalar.
    public let shape: [Int]
    /// `data_offsets`: the tensor's bytes `[BEGIN, END)` relative to the first byte after the header.
    public let dataOffsets: Range<Int>
    /// Product of `shape` (1 for a scalar, 0 when a dim is 0), computed without overflow when the file was read.
    public let elementCount: Int
}

// MARK: - File

/// A safetensors file, validated on open; tensor data stays in a read-only memory map (or an owned copy for
/// `init(bytes:)`) and is only read by `data(of:)` / `floats(of:)`. Immutable and safe to share between threads.
///
/// Refused with a `SafetensorsError`: a file shorter than 8 bytes, a header length over `maxHeaderLength` or past
/// the end of the file, a header that is not UTF-8 JSON starting with `{`, duplicate tensor names, a tensor entry
/// without `dtype`/`shape`/`data_offsets`, a dtype other than F32/F16/BF16, more than `maxRank` dims, negative or
/// non-integer dims, sizes that overflow 64 bits, `END - BEGIN` different from dtype size × element count, data
/// past the end of the file, overlapping tensors, and buffer bytes that belong to no tensor. `__metadata__` must map
/// strings to strings. Source: safetensors README ("Format") and its reference reader (safetensors/src/tensor.rs).
public final class SafetensorsFile: @unchecked Sendable {
    /// Largest header accepted, in bytes (the reference reader's `MAX_HEADER_SIZE`, 100 MB).
    public static let maxHeaderLength = 100_000_000
    /// Most dims accepted in a shape.
    public static let maxRank = 8

    /// File size in bytes.
    public let fileSize: Int
    /// The header length N (bytes of JSON after the 8-byte length field).
    public let headerLength: Int
    /// `__metadata__`: free-form string pairs (empty when absent).
    public let metadata: [String: String]
    /// Tensor entries in header order.
    public let tensors: [SafetensorsTensorInfo]

    private let storage: GGUFStorage
    private let index: [String: Int]

    /// Opens and validates the file at `path`, mapping it read-only (`mmap(PROT_READ, MAP_PRIVATE)`).
    /// - Throws: `SafetensorsError.io` if it cannot be opened or mapped, another `SafetensorsError` if it is not a
    ///   valid safetensors file of F32/F16/BF16 tensors.
    public convenience init(path: String) throws {
        try self.init(
            storage: GGUFStorage(
                mapping: path, ioError: { SafetensorsError.io(operation: $0, path: $1, errno: $2) }))
    }

    /// Validates a safetensors file held in memory (e.g. an upload); the bytes are copied.
    /// - Throws: a `SafetensorsError` as for `init(path:)`.
    public convenience init(bytes: [UInt8]) throws {
        try self.init(storage: GGUFStorage(copying: bytes))
    }

    private init(storage: GGUFStorage) throws {
        self.storage = storage
        let size = storage.count
        fileSize = size
        guard size >= 8 else { throw SafetensorsError.fileTooSmall(size: size) }
        let n = UInt64(littleEndian: storage.base.loadUnaligned(as: UInt64.self))
        guard n <= UInt64(Self.maxHeaderLength) else {
            throw SafetensorsError.headerTooLarge(length: n, limit: Self.maxHeaderLength)
        }
        guard n <= UInt64(size - 8) else { throw SafetensorsError.headerExceedsFile(length: n, available: size - 8) }
        let headerLength = Int(n)
        self.headerLength = headerLength
        let header = UnsafeBufferPointer(start: (storage.base + 8).assumingMemoryBound(to: UInt8.self), count: headerLength)
        guard headerLength > 0, header[0] == UInt8(ascii: "{") else {
            throw SafetensorsError.invalidHeader(offset: 8, reason: "the header must begin with '{'")
        }
        let root: JSONValue
        do {
            root = try StrictJSON.parse(header)
        } catch let e as StrictJSON.ParseError {
            switch e {
            case .syntax(let offset, let reason):
                throw SafetensorsError.invalidHeader(offset: 8 + offset, reason: reason)
            case .duplicateKey(let key, let depth, let offset):
                if depth == 1 { throw SafetensorsError.duplicateTensorName(name: key) }
                throw SafetensorsError.invalidHeader(offset: 8 + offset, reason: "key \"\(key)\" appears twice")
            }
        }
        guard case .object(let members) = root else {
            throw SafetensorsError.invalidHeader(offset: 8, reason: "the header is not a JSON object")
        }
        let bufferSize = size - 8 - headerLength
        var metadata: [String: String] = [:]
        var tensors: [SafetensorsTensorInfo] = []
        tensors.reserveCapacity(members.count)
        for (key, value) in members {
            if key == "__metadata__" {
                guard case .object(let pairs) = value else {
                    throw SafetensorsError.invalidField(tensor: key, field: "", reason: "must be an object of strings")
                }
                for (k, v) in pairs {
                    guard case .string(let s) = v else {
                        throw SafetensorsError.invalidField(tensor: key, field: k, reason: "metadata values must be strings")
                    }
                    metadata[k] = s
                }
                continue
            }
            tensors.append(try Self.tensorInfo(name: key, value, bufferSize: bufferSize))
        }
        try Self.checkCoverage(tensors, bufferSize: bufferSize)
        self.metadata = metadata
        self.tensors = tensors
        var index: [String: Int] = [:]
        for (i, t) in tensors.enumerated() { index[t.name] = i }
        self.index = index
    }

    /// The entry named `name`, or nil.
    public func tensor(named name: String) -> SafetensorsTensorInfo? {
        index[name].map { tensors[$0] }
    }

    /// The raw little-endian bytes of `tensor` (`tensor.dataOffsets.count` bytes, no alignment guaranteed); valid
    /// while this object lives. `tensor` must come from this file's `tensors`.
    public func data(of tensor: SafetensorsTensorInfo) -> UnsafeRawBufferPointer {
        let start = 8 + headerLength + tensor.dataOffsets.lowerBound
        precondition(start >= 0 && tensor.dataOffsets.count <= storage.count - start, "tensor is not from this file")
        return UnsafeRawBufferPointer(start: storage.base + start, count: tensor.dataOffsets.count)
    }

    /// The elements of `tensor` as f32, row-major `[elementCount]`. F16 and BF16 convert exactly (every binary16
    /// and bfloat16 value, NaN and infinities included, is a binary32 value). `tensor` must come from this file.
    public func floats(of tensor: SafetensorsTensorInfo) -> [Float] {
        let raw = data(of: tensor)
        let n = tensor.elementCount
        guard n > 0, let base = raw.baseAddress else { return [] }
        return [Float](unsafeUninitializedCapacity: n) { out, initialized in
            switch tensor.dtype {
            case .f32:
                for i in 0..<n {
                    out[i] = Float(bitPattern: UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
                }
            case .f16:
                if Int(bitPattern: base) % MemoryLayout<UInt16>.alignment == 0 {
                    // F16C-accelerated where the CPU has it; exact either way (every f16 is an f32).
                    ck_f16_to_f32(base.assumingMemoryBound(to: UInt16.self), out.baseAddress!, n)
                } else {
                    for i in 0..<n {
                        out[i] = Float(Float16(bitPattern: UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))))
                    }
                }
            case .bf16:
                for i in 0..<n {
                    let bits = UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                    out[i] = Float(bitPattern: UInt32(bits) << 16)
                }
            }
            initialized = n
        }
    }

    /// The elements of the tensor named `name` as f32 (see `floats(of:)`).
    /// - Throws: `SafetensorsError.missingTensor` when there is no such tensor.
    public func floats(named name: String) throws -> [Float] {
        guard let t = tensor(named: name) else { throw SafetensorsError.missingTensor(name: name) }
        return floats(of: t)
    }

    // MARK: Validation

    /// Validates one header entry (dtype, shape, data_offsets, size) against a buffer of `bufferSize` bytes.
    private static func tensorInfo(name: String, _ value: JSONValue, bufferSize: Int) throws -> SafetensorsTensorInfo {
        guard case .object(let fields) = value else {
            throw SafetensorsError.invalidField(tensor: name, field: "", reason: "a tensor entry must be an object")
        }
        func field(_ key: String) throws -> JSONValue {
            guard let v = fields.first(where: { $0.key == key })?.value else {
                throw SafetensorsError.invalidField(tensor: name, field: key, reason: "missing")
            }
            return v
        }
        guard case .string(let dtypeName) = try field("dtype") else {
            throw SafetensorsError.invalidField(tensor: name, field: "dtype", reason: "must be a string")
        }
        guard let dtype = SafetensorsDType(rawValue: dtypeName) else {
            throw SafetensorsError.unsupportedDType(tensor: name, dtype: dtypeName)
        }
        guard case .array(let dims) = try field("shape") else {
            throw SafetensorsError.invalidField(tensor: name, field: "shape", reason: "must be an array of integers")
        }
        guard dims.count <= maxRank else {
            throw SafetensorsError.invalidShape(tensor: name, reason: "\(dims.count) dims, more than \(maxRank)")
        }
        var shape: [Int] = []
        var elements = 1
        var overflow = false
        for (i, d) in dims.enumerated() {
            guard case .number(let num) = d, num.isIntegerLiteral else {
                throw SafetensorsError.invalidShape(tensor: name, reason: "dim \(i) is not an integer")
            }
            guard !num.isNegative else {
                throw SafetensorsError.invalidShape(tensor: name, reason: "dim \(i) is negative (\(num.text))")
            }
            guard let v = num.intValue else { throw SafetensorsError.sizeOverflow(tensor: name) }
            shape.append(v)
            let (p, o) = elements.multipliedReportingOverflow(by: v)
            elements = p
            overflow = overflow || o
        }
        // A zero dim makes the product 0 whatever came before; otherwise any overflow is fatal.
        if shape.contains(0) { elements = 0 } else if overflow { throw SafetensorsError.sizeOverflow(tensor: name) }
        let (bytes, o2) = elements.multipliedReportingOverflow(by: dtype.byteSize)
        guard !o2 else { throw SafetensorsError.sizeOverflow(tensor: name) }
        guard case .array(let offs) = try field("data_offsets"), offs.count == 2 else {
            throw SafetensorsError.invalidField(tensor: name, field: "data_offsets", reason: "must be an array [BEGIN, END]")
        }
        var bounds: [Int] = []
        for (i, o) in offs.enumerated() {
            guard case .number(let num) = o, num.isIntegerLiteral, !num.isNegative else {
                throw SafetensorsError.invalidOffsets(tensor: name, reason: "\(i == 0 ? "BEGIN" : "END") is not a non-negative integer")
            }
            guard let v = num.intValue else {
                throw SafetensorsError.tensorOutOfBounds(tensor: name, end: Int.max, bufferSize: bufferSize)
            }
            bounds.append(v)
        }
        let begin = bounds[0], end = bounds[1]
        guard begin <= end else {
            throw SafetensorsError.invalidOffsets(tensor: name, reason: "BEGIN \(begin) is after END \(end)")
        }
        guard end - begin == bytes else { throw SafetensorsError.sizeMismatch(tensor: name, expected: bytes, actual: end - begin) }
        guard end <= bufferSize else { throw SafetensorsError.tensorOutOfBounds(tensor: name, end: end, bufferSize: bufferSize) }
        return SafetensorsTensorInfo(name: name, dtype: dtype, shape: shape, dataOffsets: begin..<end, elementCount: elements)
    }

    /// The tensors, ordered by offset, must tile the buffer `[0, bufferSize)` exactly.
    private static func checkCoverage(_ tensors: [SafetensorsTensorInfo], bufferSize: Int) throws {
        let order = tensors.indices.sorted {
            let a = tensors[$0].dataOffsets, b = tensors[$1].dataOffsets
            if a.lowerBound != b.lowerBound { return a.lowerBound < b.lowerBound }
            return a.upperBound != b.upperBound ? a.upperBound < b.upperBound : $0 < $1
        }
        var covered = 0
        var last: String? = nil
        for i in order {
            let t = tensors[i]
            if t.dataOffsets.lowerBound < covered, let last {
                throw SafetensorsError.overlappingTensors(first: last, second: t.name)
            }
            if t.dataOffsets.lowerBound > covered {
                throw SafetensorsError.unindexedBytes(before: t.name, start: covered, end: t.dataOffsets.lowerBound)
            }
            covered = t.dataOffsets.upperBound
            last = t.name
        }
        guard covered == bufferSize else { throw SafetensorsError.trailingBytes(count: bufferSize - covered, bufferSize: bufferSize) }
    }
}

// MARK: - Strict JSON

/// A JSON number as written: the literal text plus its integer value when it is an integer literal that fits `Int`.
struct JSONNumber {
    /// The literal, e.g. `-12`, `0.5`, `1e3`.
    let text: String
    /// No fraction and no exponent.
    let isIntegerLiteral: Bool
    /// Starts with `-` (so `-0` counts as negative).
    let isNegative: Bool
    /// The value of an integer literal that fits `Int`, else nil.
    let intValue: Int?
    /// The value as a double (±infinity when out of range).
    var doubleValue: Double { Double(text) ?? .nan }
}

/// A parsed JSON value; objects keep their members in document order.
indirect enum JSONValue {
    case object([(key: String, value: JSONValue)])
    case array([JSONValue])
    case string(String)
    case number(JSONNumber)
    case bool(Bool)
    case null

    /// The member `key` of an object (first occurrence; parsed objects have no duplicates), else nil.
    subscript(key: String) -> JSONValue? {
        guard case .object(let m) = self else { return nil }
        return m.first { $0.key == key }?.value
    }
}

/// An RFC 8259 JSON parser that refuses duplicate object keys, lone surrogate escapes, control characters in
/// strings, invalid UTF-8 and nesting deeper than `maxDepth`; it never traps on malformed input.
enum StrictJSON {
    /// Deepest nesting of arrays and objects accepted.
    static let maxDepth = 64

    enum ParseError: Error, Equatable {
        /// Malformed text; `offset` is the byte offset in the parsed text.
        case syntax(offset: Int, reason: String)
        /// An object has `key` twice; `depth` is the object's nesting depth (1 for the top-level object).
        case duplicateKey(key: String, depth: Int, offset: Int)
    }

    /// Parses one JSON value surrounded by optional whitespace.
    static func parse(_ text: UnsafeBufferPointer<UInt8>) throws -> JSONValue {
        var p = Parser(text: text)
        p.skipWhitespace()
        let v = try p.value(depth: 0)
        p.skipWhitespace()
        guard p.pos == text.count else { throw ParseError.syntax(offset: p.pos, reason: "unexpected data after the JSON value") }
        return v
    }

    /// Parses `bytes` (see `parse(_:)` for an unsafe buffer).
    static func parse(_ bytes: [UInt8]) throws -> JSONValue {
        try bytes.withUnsafeBufferPointer { try parse($0) }
    }

    private struct Parser {
        let text: UnsafeBufferPointer<UInt8>
        var pos = 0

        init(text: UnsafeBufferPointer<UInt8>) { self.text = text }

        func fail(_ reason: String) -> ParseError { .syntax(offset: pos, reason: reason) }

        mutating func skipWhitespace() {
            while pos < text.count, [0x20, 0x09, 0x0A, 0x0D].contains(text[pos]) { pos += 1 }
        }

        mutating func expect(_ literal: StaticString) throws {
            let n = literal.utf8CodeUnitCount
            guard n <= text.count - pos else { throw fail("unexpected end of input") }
            for i in 0..<n where text[pos + i] != literal.utf8Start[i] { throw fail("invalid literal") }
            pos += n
        }

        mutating func value(depth: Int) throws -> JSONValue {
            guard pos < text.count else { throw fail("unexpected end of input") }
            switch text[pos] {
            case UInt8(ascii: "{"): return try object(depth: depth + 1)
            case UInt8(ascii: "["): return try array(depth: depth + 1)
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"): try expect("true"); return .bool(true)
            case UInt8(ascii: "f"): try expect("false"); return .bool(false)
            case UInt8(ascii: "n"): try expect("null"); return .null
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try number())
            default: throw fail("unexpected character")
            }
        }

        mutating func object(depth: Int) throws -> JSONValue {
            guard depth <= StrictJSON.maxDepth else { throw fail("nesting deeper than \(StrictJSON.maxDepth)") }
            pos += 1  // '{'
            var members: [(key: String, value: JSONValue)] = []
            var seen = Set<String>()
            skipWhitespace()
            if pos < text.count, text[pos] == UInt8(ascii: "}") { pos += 1; return .object(members) }
            while true {
                skipWhitespace()
                guard pos < text.count, text[pos] == UInt8(ascii: "\"") else { throw fail("expected a string key") }
                let keyOffset = pos
                let key = try string()
                guard seen.insert(key).inserted else { throw ParseError.duplicateKey(key: key, depth: depth, offset: keyOffset) }
                skipWhitespace()
                guard pos < text.count, text[pos] == UInt8(ascii: ":") else { throw fail("expected ':'") }
                pos += 1
                skipWhitespace()
                members.append((key, try value(depth: depth)))
                skipWhitespace()
                guard pos < text.count else { throw fail("unexpected end of input in an object") }
                if text[pos] == UInt8(ascii: ",") { pos += 1; continue }
                if text[pos] == UInt8(ascii: "}") { pos += 1; return .object(members) }
                throw fail("expected ',' or '}'")
            }
        }

        mutating func array(depth: Int) throws -> JSONValue {
            guard depth <= StrictJSON.maxDepth else { throw fail("nesting deeper than \(StrictJSON.maxDepth)") }
            pos += 1  // '['
            var items: [JSONValue] = []
            skipWhitespace()
            if pos < text.count, text[pos] == UInt8(ascii: "]") { pos += 1; return .array(items) }
            while true {
                skipWhitespace()
                items.append(try value(depth: depth))
                skipWhitespace()
                guard pos < text.count else { throw fail("unexpected end of input in an array") }
                if text[pos] == UInt8(ascii: ",") { pos += 1; continue }
                if text[pos] == UInt8(ascii: "]") { pos += 1; return .array(items) }
                throw fail("expected ',' or ']'")
            }
        }

        mutating func hex4() throws -> UInt32 {
            guard 4 <= text.count - pos else { throw fail("truncated \\u escape") }
            var v: UInt32 = 0
            for _ in 0..<4 {
                let c = text[pos]
                let d: UInt8
                switch c {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): d = c - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): d = c - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): d = c - UInt8(ascii: "A") + 10
                default: throw fail("invalid hex digit in \\u escape")
                }
                v = v << 4 | UInt32(d)
                pos += 1
            }
            return v
        }

        /// A string starting at the opening quote; raw bytes must be valid UTF-8.
        mutating func string() throws -> String {
            pos += 1  // '"'
            var out: [UInt8] = []
            var runStart = pos
            while true {
                guard pos < text.count else { throw fail("unterminated string") }
                let c = text[pos]
                if c == UInt8(ascii: "\"") {
                    out.append(contentsOf: text[runStart..<pos])
                    pos += 1
                    break
                }
                if c < 0x20 { throw fail("control character in a string") }
                if c != UInt8(ascii: "\\") { pos += 1; continue }
                out.append(contentsOf: text[runStart..<pos])
                pos += 1
                guard pos < text.count else { throw fail("unterminated escape") }
                let e = text[pos]
                pos += 1
                switch e {
                case UInt8(ascii: "\""): out.append(0x22)
                case UInt8(ascii: "\\"): out.append(0x5C)
                case UInt8(ascii: "/"): out.append(0x2F)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try hex4()
                    if (0xD800...0xDBFF).contains(scalar) {
                        guard 2 <= text.count - pos, text[pos] == UInt8(ascii: "\\"), text[pos + 1] == UInt8(ascii: "u") else {
                            throw fail("lone leading surrogate in \\u escape")
                        }
                        pos += 2
                        let low = try hex4()
                        guard (0xDC00...0xDFFF).contains(low) else { throw fail("invalid trailing surrogate in \\u escape") }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00...0xDFFF).contains(scalar) {
                        throw fail("lone trailing surrogate in \\u escape")
                    }
                    guard let u = Unicode.Scalar(scalar) else { throw fail("invalid \\u escape") }
                    out.append(contentsOf: Array(String(Character(u)).utf8))
                default: throw fail("invalid escape character")
                }
                runStart = pos
            }
            guard let s = String(validating: out, as: UTF8.self) else { throw fail("string is not valid UTF-8") }
            return s
        }

        mutating func number() throws -> JSONNumber {
            let start = pos
            let negative = text[pos] == UInt8(ascii: "-")
            if negative { pos += 1 }
            func digits() -> Int {
                let s = pos
                while pos < text.count, text[pos] >= UInt8(ascii: "0"), text[pos] <= UInt8(ascii: "9") { pos += 1 }
                return pos - s
            }
            guard pos < text.count else { throw fail("truncated number") }
            if text[pos] == UInt8(ascii: "0") {
                pos += 1
            } else if digits() == 0 {
                throw fail("invalid number")
            }
            var integer = true
            if pos < text.count, text[pos] == UInt8(ascii: ".") {
                pos += 1
                integer = false
                guard digits() > 0 else { throw fail("invalid number: no digits after '.'") }
            }
            if pos < text.count, text[pos] == UInt8(ascii: "e") || text[pos] == UInt8(ascii: "E") {
                pos += 1
                integer = false
                if pos < text.count, text[pos] == UInt8(ascii: "+") || text[pos] == UInt8(ascii: "-") { pos += 1 }
                guard digits() > 0 else { throw fail("invalid number: no digits in the exponent") }
            }
            let literal = String(decoding: text[start..<pos], as: UTF8.self)
            return JSONNumber(text: literal, isIntegerLiteral: integer, isNegative: negative,
                              intValue: integer ? Int(literal) : nil)
        }
    }
}
