// GGUFWriter: builds a GGUF v3 file (metadata, tensor infos, aligned tensor data) and writes it atomically.
// Source: ggml docs/gguf.md. The layout matches gguf-py's GGUFWriter (gguf 0.19.0): key/value pairs and
// tensors in insertion order, each tensor's data offset padded to the alignment, zero padding after the tensor
// infos and after every tensor's data, so the same content yields the same bytes from either writer.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Builds a little-endian GGUF version 3 file.
///
/// ```swift
/// var w = GGUFWriter()
/// w.set("general.architecture", .string("llama"))
/// try w.addTensor(name: "output_norm.weight", dims: [64], floats: norm)   // F32 [n_embd]
/// try w.write(to: "/path/model.gguf")
/// ```
///
/// `general.alignment` is managed by the writer: it is written as a u32 equal to `alignment` whenever the
/// alignment is not the default 32, or when the key was `set` (at the position it was first set; the value
/// given is replaced by `alignment`).
public struct GGUFWriter {
    /// Data alignment in bytes (a power of two).
    public let alignment: Int

    /// Metadata in insertion order, and each key's index in it.
    private var entries: [(key: String, value: GGUFValue)] = []
    private var entryIndex: [String: Int] = [:]
    private var tensorEntries: [TensorEntry] = []
    private var tensorNames = Set<String>()

    private struct TensorEntry {
        var name: String
        var type: GGMLType
        var dims: [Int]
        var data: [UInt8]
    }

    /// - Parameter alignment: data alignment in bytes; must be a power of two that fits the u32
    ///   `general.alignment` (a programming error otherwise).
    public init(alignment: Int = 32) {
        precondition(
            alignment > 0 && alignment & (alignment - 1) == 0 && alignment <= Int(UInt32.max),
            "GGUF alignment must be a power of two below 2^32")
        self.alignment = alignment
    }

    /// Sets metadata `key` to `value`. A key set again keeps its first position and takes the new value.
    ///
    /// Preconditions (programming errors, not input errors): arrays are homogeneous (all elements have the
    /// same case; nested arrays may differ from each other), nest at most `GGUFFile.maxArrayDepth` deep, and
    /// keys in `GGUFKeys.expectedTypes` get their expected type, so that every file written can be read back.
    public mutating func set(_ key: String, _ value: GGUFValue) {
        precondition(Self.isHomogeneous(value), "GGUF arrays must be homogeneous (\(key))")
        precondition(value.arrayDepth <= GGUFFile.maxArrayDepth, "GGUF arrays nest too deep (\(key))")
        if key != GGUFKeys.alignment, let expected = GGUFKeys.expectedTypes[key] {
            switch expected {
            case .scalar(let t):
                precondition(value.type == t, "\(key) must be \(expected)")
            case .array(let t):
                precondition(value.arrayValue?.allSatisfy { $0.type == t } ?? false, "\(key) must be \(expected)")
            }
        }
        if let i = entryIndex[key] {
            entries[i].value = value
        } else {
            entryIndex[key] = entries.count
            entries.append((key, value))
        }
    }

    /// Adds a tensor with raw data already in `type`'s block layout.
    /// - Parameters:
    ///   - dims: ggml `ne` order, `dims[0]` fastest-varying (a weight `[n_in, n_out]`); 1 to 4 dims, each ≥ 1,
    ///     `dims[0]` a multiple of `type.blockSize`.
    ///   - data: exactly `elements / type.blockSize * type.typeSize` bytes.
    /// - Throws: `GGUFError.invalidTensor` for a duplicate or empty name, bad dims, or a wrong data size.
    public mutating func addTensor(name: String, type: GGMLType, dims: [Int], data: [UInt8]) throws {
        func invalid(_ reason: String) -> GGUFError { .invalidTensor(name: name, reason: reason) }
        guard !name.isEmpty else { throw invalid("empty name") }
        guard !tensorNames.contains(name) else { throw invalid("duplicate name") }
        guard (1...4).contains(dims.count) else { throw invalid("\(dims.count) dims (must be 1...4)") }
        guard dims.allSatisfy({ $0 >= 1 }) else { throw invalid("dims \(dims) must all be >= 1") }
        guard dims[0] % type.blockSize == 0 else {
            throw invalid("dims[0] = \(dims[0]) is not a multiple of the \(type) block size \(type.blockSize)")
        }
        var elements = 1
        for d in dims {
            let (p, overflow) = elements.multipliedReportingOverflow(by: d)
            guard !overflow else { throw invalid("element count overflows") }
            elements = p
        }
        guard let bytes = type.byteCount(elements: elements) else { throw invalid("byte count overflows") }
        guard bytes == data.count else { throw invalid("data has \(data.count) bytes, \(type) \(dims) needs \(bytes)") }
        tensorNames.insert(name)
        tensorEntries.append(TensorEntry(name: name, type: type, dims: dims, data: data))
    }

    /// Adds an F32 tensor. `floats` holds the elements with `dims[0]` fastest-varying.
    /// - Throws: `GGUFError.invalidTensor` as `addTensor(name:type:dims:data:)`.
    public mutating func addTensor(name: String, dims: [Int], floats: [Float]) throws {
        var data = [UInt8](repeating: 0, count: floats.count * 4)
        data.withUnsafeMutableBytes { dst in
            for (i, f) in floats.enumerated() { dst.storeBytes(of: f.bitPattern.littleEndian, toByteOffset: i * 4, as: UInt32.self) }
        }
        try addTensor(name: name, type: .f32, dims: dims, data: data)
    }

    /// The complete file: header, metadata, tensor infos, padding, tensor data (each padded to `alignment`).
    public func serialized() -> [UInt8] {
        var kv = entries.map { ($0.key, $0.key == GGUFKeys.alignment ? GGUFValue.uint32(UInt32(alignment)) : $0.value) }
        if alignment != GGUFFile.defaultAlignment, entryIndex[GGUFKeys.alignment] == nil {
            kv.append((GGUFKeys.alignment, .uint32(UInt32(alignment))))
        }

        var out = ByteWriter()
        out.bytes.reserveCapacity(4096 + tensorEntries.reduce(0) { $0 + $1.data.count + alignment })
        out.u32(0x4655_4747)  // "GGUF"
        out.u32(3)
        out.u64(UInt64(tensorEntries.count))
        out.u64(UInt64(kv.count))
        for (key, value) in kv {
            out.string(key)
            out.u32(value.type.rawValue)
            out.value(value, key: key)
        }
        var offset = 0
        for t in tensorEntries {
            out.string(t.name)
            out.u32(UInt32(t.dims.count))
            for d in t.dims { out.u64(UInt64(d)) }
            out.u32(t.type.rawValue)
            out.u64(UInt64(offset))
            offset += padded(t.data.count)
        }
        out.pad(to: alignment)
        for t in tensorEntries {
            out.bytes.append(contentsOf: t.data)
            out.pad(to: alignment)
        }
        return out.bytes
    }

    /// Writes `serialized()` to `path` atomically: a temporary file in the same directory is written,
    /// fsync'ed, renamed over `path`, and the directory is fsync'ed, so a crash leaves either the old file or
    /// the complete new one.
    /// - Throws: `GGUFError.io` naming the failed call.
    public func write(to path: String) throws {
        let bytes = serialized()
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        let base = slash.map { String(path[path.index(after: $0)...]) } ?? path
        let temp = "\(directory)/.\(base).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"

        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw GGUFError.io(operation: "open", path: temp, errno: errno) }
        var ok = false
        defer {
            if !ok { unlink(temp) }
        }
        do {
            defer { close(fd) }
            try bytes.withUnsafeBytes { buffer in
                guard let base = buffer.baseAddress else { return }
                var written = 0
                while written < buffer.count {
                    let n = posixWrite(fd, base + written, buffer.count - written)
                    if n < 0 {
                        if errno == EINTR { continue }
                        throw GGUFError.io(operation: "write", path: temp, errno: errno)
                    }
                    written += n
                }
            }
            guard fsync(fd) == 0 else { throw GGUFError.io(operation: "fsync", path: temp, errno: errno) }
        }
        guard rename(temp, path) == 0 else { throw GGUFError.io(operation: "rename", path: path, errno: errno) }
        ok = true
        let dirFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dirFD >= 0 else { throw GGUFError.io(operation: "open", path: directory, errno: errno) }
        defer { close(dirFD) }
        guard fsync(dirFD) == 0 else { throw GGUFError.io(operation: "fsync", path: directory, errno: errno) }
    }

    // MARK: - Helpers

    private func padded(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }

    private static func isHomogeneous(_ value: GGUFValue) -> Bool {
        guard case .array(let elements) = value else { return true }
        guard let first = elements.first?.type else { return true }
        return elements.allSatisfy { $0.type == first && isHomogeneous($0) }
    }
}

/// `write(2)`, named apart from `GGUFWriter.write(to:)`.
@inline(__always)
private func posixWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int {
    write(fd, buffer, count)
}

/// Little-endian encoder for GGUF fields.
private struct ByteWriter {
    var bytes: [UInt8] = []

    mutating func integer<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
    }
    mutating func u32(_ v: UInt32) { integer(v) }
    mutating func u64(_ v: UInt64) { integer(v) }

    mutating func string(_ s: String) {
        var s = s
        s.withUTF8 { utf8 in
            u64(UInt64(utf8.count))
            bytes.append(contentsOf: utf8)
        }
    }

    mutating func pad(to alignment: Int) {
        let remainder = bytes.count % alignment
        if remainder != 0 { bytes.append(contentsOf: repeatElement(0, count: alignment - remainder)) }
    }

    /// The value's payload (its type tag is written by the caller). `key` picks the element type of an empty
    /// array for well-known keys.
    mutating func value(_ v: GGUFValue, key: String?) {
        switch v {
        case .uint8(let x): integer(x)
        case .int8(let x): integer(x)
        case .uint16(let x): integer(x)
        case .int16(let x): integer(x)
        case .uint32(let x): integer(x)
        case .int32(let x): integer(x)
        case .float32(let x): integer(x.bitPattern)
        case .bool(let x): integer(UInt8(x ? 1 : 0))
        case .string(let s): string(s)
        case .uint64(let x): integer(x)
        case .int64(let x): integer(x)
        case .float64(let x): integer(x.bitPattern)
        case .array(let elements):
            var elementType = elements.first?.type ?? .uint8
            if elements.isEmpty, let key, case .array(let t)? = GGUFKeys.expectedTypes[key] { elementType = t }
            u32(elementType.rawValue)
            u64(UInt64(elements.count))
            // A nested array element is encoded exactly like a top-level array value: its own element type,
            // count and elements.
            for e in elements { value(e, key: nil) }
        }
    }
}
