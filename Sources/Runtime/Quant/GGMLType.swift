// GGMLType: the tensor element types of the GGUF format, with ggml's numeric ids and block geometry.
// Source: ggml/include/ggml.h (enum ggml_type) and ggml/src/ggml-common.h (block structs, static_asserts).

/// A GGUF tensor element type. Raw values are ggml's `enum ggml_type` ids as stored in GGUF tensor infos.
///
/// Quantized types pack `blockSize` elements into `typeSize` bytes. A row of `n` elements takes
/// `n / blockSize * typeSize` bytes, and `n` must be a multiple of `blockSize`.
public enum GGMLType: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case f32 = 0
    case f16 = 1
    case q4_0 = 2
    case q4_1 = 3
    case q5_0 = 6
    case q5_1 = 7
    case q8_0 = 8
    case q8_1 = 9
    case q2_K = 10
    case q3_K = 11
    case q4_K = 12
    case q5_K = 13
    case q6_K = 14
    case q8_K = 15
    case i8 = 24
    case i16 = 25
    case i32 = 26
    case i64 = 27
    case f64 = 28
    case bf16 = 30

    /// Elements per block (1 for plain types, 32 for the legacy quants, 256 for the K-quants).
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16, .i8, .i16, .i32, .i64, .f64: return 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1: return 32
        case .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .q8_K: return 256
        }
    }

    /// Bytes per block (ggml `type_size`), per ggml-common.h.
    public var typeSize: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        case .i8: return 1
        case .i16: return 2
        case .i32: return 4
        case .i64, .f64: return 8
        case .q4_0: return 18  // f16 d + 16 nibble bytes
        case .q4_1: return 20  // f16 d, f16 m + 16
        case .q5_0: return 22  // f16 d + u32 qh + 16
        case .q5_1: return 24  // f16 d, f16 m + u32 qh + 16
        case .q8_0: return 34  // f16 d + 32 int8
        case .q8_1: return 36  // f16 d, f16 s + 32 int8
        case .q2_K: return 84  // 16 scales + 64 qs + f16 d + f16 dmin
        case .q3_K: return 110  // 32 hmask + 64 qs + 12 scales + f16 d
        case .q4_K: return 144  // f16 d + f16 dmin + 12 scales + 128 qs
        case .q5_K: return 176  // f16 d + f16 dmin + 12 scales + 32 qh + 128 qs
        case .q6_K: return 210  // 128 ql + 64 qh + 16 scales + f16 d
        case .q8_K: return 292  // f32 d + 256 int8 + 16 int16 bsums
        }
    }

    /// ggml's lower-case name (`q4_K`, `f16`), as printed by llama.cpp tools.
    public var description: String {
        switch self {
        case .f32: return "f32"
        case .f16: return "f16"
        case .q4_0: return "q4_0"
        case .q4_1: return "q4_1"
        case .q5_0: return "q5_0"
        case .q5_1: return "q5_1"
        case .q8_0: return "q8_0"
        case .q8_1: return "q8_1"
        case .q2_K: return "q2_K"
        case .q3_K: return "q3_K"
        case .q4_K: return "q4_K"
        case .q5_K: return "q5_K"
        case .q6_K: return "q6_K"
        case .q8_K: return "q8_K"
        case .i8: return "i8"
        case .i16: return "i16"
        case .i32: return "i32"
        case .i64: return "i64"
        case .f64: return "f64"
        case .bf16: return "bf16"
        }
    }

    /// Bytes taken by `count` elements, or nil when `count` is not a multiple of `blockSize` or the
    /// product overflows `Int`. Callers validating untrusted sizes must use this, never `*`.
    public func byteCount(elements count: Int) -> Int? {
        guard count >= 0, count % blockSize == 0 else { return nil }
        let (bytes, overflow) = (count / blockSize).multipliedReportingOverflow(by: typeSize)
        return overflow ? nil : bytes
    }
}
