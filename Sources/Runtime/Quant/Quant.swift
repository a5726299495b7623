// Quant: Swift entry points over the CKernels block formats (ggml/src/ggml-common.h, ggml-quants.c).
import CKernels

/// Which implementation of the quantized kernels runs.
///
/// `.reference` is the plain scalar C code every fast path is tested against; `.avx2` needs AVX2 + FMA + F16C
/// and the OS-enabled YMM state; `.avx512` needs AVX-512 F/BW/VL/VNNI and the opmask/ZMM state (see `CPUState`).
/// The AVX2 and AVX-512 paths give bitwise identical results; the attention helpers (`ck_dot_f32*`,
/// `ck_axpy_*`) are bitwise identical on all three paths; the reference matmul sums in ggml's order.
public enum KernelPath: Int32, Sendable, CaseIterable, CustomStringConvertible {
    case reference = 0
    case avx2 = 1
    case avx512 = 2

    /// The fastest path this CPU supports (detected once: CPUID and XCR0, see `CPUState`), capped by the environment variable
    /// `LORAD_KERNELS` (`reference`, `avx2`, `avx512`) when it is set.
    public static var best: KernelPath { KernelPath(rawValue: ck_best_path()) ?? .reference }

    /// Paths that can run on this CPU, slowest first.
    public static var available: [KernelPath] { allCases.filter(\.isAvailable) }

    /// Whether this CPU can run the path.
    public var isAvailable: Bool { ck_path_available(rawValue) != 0 }

    /// "reference", "avx2" or "avx512".
    public var description: String {
        switch self {
        case .reference: return "reference"
        case .avx2: return "avx2"
        case .avx512: return "avx512"
        }
    }
}

/// The CPU facts the kernel path is chosen from: CPUID feature words and the register state the OS enabled
/// (XCR0 via XGETBV), plus the Linux permission for AMX tile data.
///
/// A feature listed by CPUID is only usable when the OS saves its registers: AVX2 needs XCR0 bits 1-2
/// (SSE, YMM), AVX-512 bits 5-7 (opmask, ZMM_Hi256, Hi16_ZMM), AMX bits 17-18 (XTILECFG, XTILEDATA) and on Linux
/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)` (Intel SDM vol. 1 ch. 13; Linux Documentation/arch/x86/xstate.rst).
public struct CPUState: Sendable, Equatable {
    /// CPUID.1:ECX.
    public var leaf1ECX: UInt32
    /// CPUID.(EAX=7, ECX=0):EBX.
    public var leaf7EBX: UInt32
    /// CPUID.(EAX=7, ECX=0):ECX.
    public var leaf7ECX: UInt32
    /// CPUID.(EAX=7, ECX=0):EDX.
    public var leaf7EDX: UInt32
    /// XCR0 (0 when OSXSAVE is clear).
    public var xcr0: UInt64
    /// Whether Linux granted this process AMX tile data.
    public var amxPermitted: Bool

    /// A synthetic state (tests of the path decision).
    public init(leaf1ECX: UInt32 = 0, leaf7EBX: UInt32 = 0, leaf7ECX: UInt32 = 0, leaf7EDX: UInt32 = 0,
                xcr0: UInt64 = 0, amxPermitted: Bool = false) {
        self.leaf1ECX = leaf1ECX
        self.leaf7EBX = leaf7EBX
        self.leaf7ECX = leaf7ECX
        self.leaf7EDX = leaf7EDX
        self.xcr0 = xcr0
        self.amxPermitted = amxPermitted
    }

    /// This CPU's state (`ck_cpu_detect`: CPUID, XGETBV when OSXSAVE is set, the AMX permission when offered).
    public static func detect() -> CPUState {
        var s = ck_cpu_state()
        ck_cpu_detect(&s)
        return CPUState(c: s)
    }

    init(c s: ck_cpu_state) {
        self.init(leaf1ECX: s.leaf1_ecx, leaf7EBX: s.leaf7_ebx, leaf7ECX: s.leaf7_ecx, leaf7EDX: s.leaf7_edx,
                  xcr0: s.xcr0, amxPermitted: s.amx_permitted != 0)
    }

    var c: ck_cpu_state {
        ck_cpu_state(leaf1_ecx: leaf1ECX, leaf7_ebx: leaf7EBX, leaf7_ecx: leaf7ECX, leaf7_edx: leaf7EDX, xcr0: xcr0,
                     amx_permitted: amxPermitted ? 1 : 0)
    }

    /// The fastest kernel path this state allows (`ck_path_for`; no `LORAD_KERNELS` cap).
    public var path: KernelPath {
        var s = c
        return KernelPath(rawValue: ck_path_for(&s)) ?? .reference
    }

    /// Whether AMX tiles could be used (lorad has no AMX kernel; reported for diagnosis).
    public var amxUsable: Bool {
        var s = c
        return ck_amx_usable(&s) != 0
    }

    /// One line for logs, e.g. "cpuid avx2 fma f16c avx512f avx512bw avx512vl avx512vnni; xcr0 0xe7 (ymm zmm);
    /// amx no; path avx512".
    public var summary: String {
        func bit(_ w: UInt32, _ b: UInt32) -> Bool { w & (1 << b) != 0 }
        var f: [String] = []
        if bit(leaf7EBX, 5) { f.append("avx2") }
        if bit(leaf1ECX, 12) { f.append("fma") }
        if bit(leaf1ECX, 29) { f.append("f16c") }
        if bit(leaf1ECX, 27) { f.append("osxsave") }
        if bit(leaf7EBX, 16) { f.append("avx512f") }
        if bit(leaf7EBX, 30) { f.append("avx512bw") }
        if bit(leaf7EBX, 31) { f.append("avx512vl") }
        if bit(leaf7ECX, 11) { f.append("avx512vnni") }
        if bit(leaf7EDX, 24) { f.append("amx-tile") }
        if bit(leaf7EDX, 25) { f.append("amx-int8") }
        var state: [String] = []
        if xcr0 & 0x6 == 0x6 { state.append("ymm") }
        if xcr0 & 0xe6 == 0xe6 { state.append("zmm") }
        if xcr0 & 0x60000 == 0x60000 { state.append("tile") }
        return "cpuid " + (f.isEmpty ? "-" : f.joined(separator: " ")) + "; xcr0 0x" + String(xcr0, radix: 16)
            + " (" + (state.isEmpty ? "-" : state.joined(separator: " ")) + "); amx "
            + (amxUsable ? "usable" : (amxPermitted ? "permitted, unusable" : "no")) + "; path \(path)"
    }
}

/// Dequantization, reference quantization and fused dot products for the GGML tensor types.
public enum Quant {
    /// Whether `type` has dequantize/quantize support here: f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0,
    /// q8_1, q2_K, q3_K, q4_K, q5_K, q6_K, q8_K.
    public static func isSupported(_ type: GGMLType) -> Bool {
        ck_block_size(Int32(type.rawValue)) != 0
    }

    /// Whether `type` can be a weight of `matmul` (every supported type except the activation-only q8_1/q8_K).
    public static func isWeightType(_ type: GGMLType) -> Bool {
        ck_vec_dot_type(Int32(type.rawValue)) >= 0
    }

    /// The type activations are quantized to for a fused dot product with weights of `type`, as in ggml's
    /// `type_traits_cpu[type].vec_dot_type`: q8_0 for q4_0/q5_0/q8_0, q8_1 for q4_1/q5_1, q8_K for the
    /// K-quants, f16 for f16, bf16 for bf16, f32 for f32. Nil when `type` is not a weight type.
    public static func vecDotType(_ type: GGMLType) -> GGMLType? {
        let t = ck_vec_dot_type(Int32(type.rawValue))
        return t >= 0 ? GGMLType(rawValue: UInt32(t)) : nil
    }

    /// Dequantize `count` elements of `type` from `src` into `dst[count]`.
    ///
    /// Equal, value for value, to ggml's `dequantize_row_*` and the `gguf` Python package (`gguf.quants`).
    /// Also converts the plain types i8, i16, i32, f64 to Float.
    /// - Precondition: `count` is a multiple of `type.blockSize`; `type` is supported or a plain integer type.
    public static func dequantize(_ type: GGMLType, _ src: UnsafeRawPointer, count: Int,
                                  into dst: UnsafeMutablePointer<Float>) {
        precondition(count >= 0 && count % type.blockSize == 0, "count must be a multiple of the block size")
        switch type {
        case .i8:
            let p = src.assumingMemoryBound(to: Int8.self)
            for i in 0..<count { dst[i] = Float(p[i]) }
        case .i16:
            for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self)) }
        case .i32:
            for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)) }
        case .i64:
            for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self)) }
        case .f64:
            for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 8 * i, as: Double.self)) }
        default:
            let rc = ck_dequantize(Int32(type.rawValue), src, dst, count)
            precondition(rc == 0, "dequantize: unsupported type \(type)")
        }
    }

    /// Quantize `count` floats into `dst` (`type.byteCount(elements: count)` bytes) with ggml's reference
    /// quantizers (`quantize_row_*_ref` in ggml-quants.c, including the RMSE scale searches of the K-quants,
    /// without an importance matrix). f16 and bf16 round to nearest even.
    /// - Precondition: `Quant.isSupported(type)`; `count` is a multiple of `type.blockSize`.
    public static func quantize(_ type: GGMLType, _ src: UnsafePointer<Float>, count: Int,
                                into dst: UnsafeMutableRawPointer) {
        precondition(count >= 0 && count % type.blockSize == 0, "count must be a multiple of the block size")
        let rc = ck_quantize(Int32(type.rawValue), src, dst, count)
        precondition(rc == 0, "quantize: unsupported type \(type)")
    }

    /// Quantize `rows` rows of `cols` floats (row stride `srcStride` floats) into `type`, row j at
    /// `dst + j * dstStride`. Same bytes as `quantize` row by row, with SIMD fast paths for the activation
    /// types (q8_0, q8_1, q8_K, f16, bf16).
    public static func quantizeRows(_ type: GGMLType, _ src: UnsafePointer<Float>, srcStride: Int,
                                    rows: Int, cols: Int, into dst: UnsafeMutableRawPointer, dstStride: Int) {
        precondition(cols % type.blockSize == 0, "cols must be a multiple of the block size")
        let rc = ck_quantize_rows(Int32(type.rawValue), src, srcStride, dst, dstStride, rows, cols)
        precondition(rc == 0, "quantizeRows: unsupported type \(type)")
    }

    /// Fused dot product of one weight row `w` (`type`, `count` elements) with one activation row `x` that is
    /// already quantized to `vecDotType(type)`. Integer products are exact; see ckernels.h for the float order.
    /// - Precondition: `type` is a weight type; `count` is a multiple of its block size.
    public static func dot(_ type: GGMLType, count: Int, _ w: UnsafeRawPointer, _ x: UnsafeRawPointer,
                           path: KernelPath = .best) -> Float {
        precondition(isWeightType(type) && count % type.blockSize == 0, "dot: bad type or count")
        return ck_vec_dot(path.rawValue, Int32(type.rawValue), count, w, x)
    }
}

/// A 2-D weight, row-major in ggml terms: `rows` = ne[1] (n_out), `cols` = ne[0] (n_in).
/// Row `r` occupies bytes `[r * rowBytes, (r + 1) * rowBytes)` of `data`; the memory is not owned.
public struct WeightMatrix: @unchecked Sendable {
    /// Element type of the stored rows.
    public let type: GGMLType
    /// Number of rows, ggml ne[1] (n_out).
    public let rows: Int
    /// Elements per row, ggml ne[0] (n_in); a multiple of `type.blockSize`.
    public let cols: Int
    /// Start of row 0 (e.g. inside a memory-mapped GGUF); `rows * rowBytes` bytes.
    public let data: UnsafeRawPointer
    /// Bytes per row: `cols / type.blockSize * type.typeSize`.
    public let rowBytes: Int
    /// The batch copy (`ck_repack` layout) read by batches of activation rows instead of decoding the blocks on
    /// every call, or nil. See `withBatchCopy()`.
    public var batchCopy: UnsafeRawPointer? { batchStorage.map { UnsafeRawPointer($0.pointer) } }
    /// Bytes held by the batch copy (0 without one).
    public var batchCopyByteCount: Int { batchStorage?.byteCount ?? 0 }
    /// Bytes `withBatchCopy()` would allocate (0 when the type has no batch copy).
    public var batchCopyByteCountIfMade: Int { ck_repack_bytes(Int32(type.rawValue), rows, cols) }
    private var batchStorage: AlignedBuffer?

    /// - Precondition: `cols % type.blockSize == 0`, `rows >= 0`, and `data` holds `rows * rowBytes` bytes
    ///   (validate untrusted shapes with `GGMLType.byteCount(elements:)` first).
    public init(type: GGMLType, rows: Int, cols: Int, data: UnsafeRawPointer) {
        precondition(rows >= 0 && cols >= 0 && cols % type.blockSize == 0, "cols must be a multiple of the block size")
        self.type = type
        self.rows = rows
        self.cols = cols
        self.data = data
        self.rowBytes = cols / type.blockSize * type.typeSize
    }

    /// Dequantizes row `row` into `dst[cols]` (values as `Quant.dequantize`).
    public func dequantizeRow(_ row: Int, into dst: UnsafeMutablePointer<Float>) {
        precondition(row >= 0 && row < rows, "row out of range")
        Quant.dequantize(type, data + row * rowBytes, count: cols, into: dst)
    }

    /// Raw bytes of row `row`.
    public func rowPointer(_ row: Int) -> UnsafeRawPointer { data + row * rowBytes }

    /// This matrix with a batch copy, when its type has one (q4_0, q5_0, q4_1, q5_1 on a CPU with a SIMD path):
    /// the quants as bytes with float scales, `ck_repack_bytes` bytes (about 1.9x a q5_0 matrix of 640 columns).
    /// Batched decode then skips decoding every weight block on every step (a quarter of its q5_0 time); results
    /// are bitwise the same. Other types are returned unchanged. The mat-vec path keeps reading `data`.
    public func withBatchCopy() -> WeightMatrix {
        let bytes = batchCopyByteCountIfMade
        guard bytes > 0 else { return self }
        let buffer = AlignedBuffer(byteCount: bytes)
        guard ck_repack(Int32(type.rawValue), cols, data, rowBytes, rows, buffer.pointer) == 0 else { return self }
        var copy = self
        copy.batchStorage = buffer
        return copy
    }
}

/// Owned 64-byte aligned memory, freed with the last reference.
final class AlignedBuffer: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer
    /// Size in bytes.
    let byteCount: Int

    init(byteCount: Int) {
        self.byteCount = byteCount
        pointer = UnsafeMutableRawPointer.allocate(byteCount: max(byteCount, 64), alignment: 64)
    }

    deinit { pointer.deallocate() }
}
