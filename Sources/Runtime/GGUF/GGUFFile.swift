// GGUFFile: a validated, memory-mapped GGUF file (versions 2 and 3): metadata, tensor infos, tensor data.
// Source: ggml docs/gguf.md (file structure) and ggml/src/gguf.cpp (gguf_init_from_file_impl checks).
//
// Layout (all little-endian):
//   magic "GGUF" | u32 version | u64 tensor_count | u64 metadata_kv_count
//   metadata_kv_count × (string key | u32 value_type | value)
//   tensor_count × (string name | u32 n_dimensions | n_dimensions × u64 dims | u32 ggml_type | u64 offset)
//   padding to general.alignment (default 32) | tensor data (each tensor at data_start + offset)
// where string = u64 byte length + UTF-8 bytes, and an array value = u32 element type | u64 count | elements.
//
// Everything is validated in `init`; afterwards the accessors only read checked values. Tensor data stays in the
// map: `data(of:)` returns a pointer into it.

/// One tensor's description from the tensor info section, with its data range already checked.
public struct GGUFTensorInfo: Sendable, Equatable {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    public let name: String
    /// Dimensions in ggml `ne` order: `dims[0]` is the fastest-varying (the row length, n_in for a weight);
    /// a weight `[n_in, n_out]` here is a row-major `n_out × n_in` matrix. 1 to 4 entries, each ≥ 1.
    public let dims: [Int]
    /// Element type.
    public let type: GGMLType
    /// Absolute byte offset of the first byte of data in the file (data section start + stored offset).
    public let dataOffset: Int
    /// Bytes of data: `elementCount / type.blockSize * type.typeSize`.
    public let byteCount: Int

    /// Product of `dims` (checked not to overflow when the file was read).
    public var elementCount: Int { dims.reduce(1, *) }

    /// Rows of `dims[0]` elements: the product of `dims[1...]` (1 for a vector).
    public var rowCount: Int { dims.dropFirst().reduce(1, *) }
}

/// A GGUF file, validated on open and memory-mapped read-only.
///
/// The metadata is parsed into Swift values once; tensor data is never copied: `data(of:)` points into the
/// map, which lives as long as this object. An instance is immutable and may be shared between threads.
///
/// Rejected with a `GGUFError` (naming the field and byte offset): bad magic, a version other than 2 or 3,
/// any count or length that the remaining bytes cannot hold, duplicate keys or tensor names, unknown value or
/// tensor types, invalid UTF-8, bools other than 0/1, arrays nested deeper than `maxArrayDepth`, wrong types
/// for the keys in `GGUFKeys.expectedTypes`, an alignment that is not a nonzero power of two, 0 or more than
/// 4 dims, a dim of 0, sizes that overflow 64 bits, more than `maxMetadataElements` array elements, rows that are not whole blocks, data offsets that are not
/// aligned, tensor data outside the file, and overlapping tensor data.
public final class GGUFFile: @unchecked Sendable {
    /// Deepest array nesting accepted (an array of scalars is depth 1). Real files use 1.
    public static let maxArrayDepth = 8
    /// Most metadata array elements accepted in one file, counted over all arrays and nesting levels.
    ///
    /// Each element becomes a `GGUFValue` of up to ~24 bytes however few bytes it took in the file (a u8 takes
    /// one), so without a bound a small hostile file could make the reader allocate ~24× its size. Real
    /// vocabularies are far below this: Gemma 3's 262144 tokens, scores and types make 786432 elements.
    public static let maxMetadataElements = 1 << 22
    /// Alignment used when `general.alignment` is absent (`GGUF_DEFAULT_ALIGNMENT`).
    public static let defaultAlignment = 32

    /// Format version: 2 or 3 (both have 64-bit counts and the same layout; 3 allows big-endian files, which
    /// this reader rejects as an unsupported version because their version field reads byte-swapped).
    public let version: UInt32
    /// Data alignment in bytes: `general.alignment`, or 32.
    public let alignment: Int
    /// File size in bytes.
    public let fileSize: Int
    /// Every metadata key/value pair.
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    /// Tensor infos in file order.
    public let tensors: [GGUFTensorInfo]
    /// Absolute offset of the tensor data section (after the tensor infos, padded to `alignment`).
    public let dataSectionOffset: Int

    private let storage: GGUFStorage
    private let tensorIndex: [String: Int]

    /// Opens and validates the GGUF file at `path`, mapping it with `mmap(PROT_READ, MAP_PRIVATE)`.
    /// Tensor data is not read until used, and never copied.
    /// - Throws: `GGUFError.io` if the file cannot be opened or mapped; any other `GGUFError` if it is not a
    ///   valid GGUF v2/v3 file.
    /// - Note: like any memory map, truncating the file while it is mapped makes later accesses fault; model
    ///   files are expected to be replaced by rename, never rewritten in place.
    public convenience init(path: String) throws {
        try self.init(storage: GGUFStorage(mapping: path))
    }

    /// Validates a GGUF file held in memory (tests, fuzzing, files built by `GGUFWriter`). The bytes are copied
    /// once into a 64-byte aligned buffer owned by this object.
    /// - Throws: a `GGUFError` if `bytes` is not a valid GGUF v2/v3 file.
    public convenience init(bytes: [UInt8]) throws {
        try self.init(storage: GGUFStorage(copying: bytes))
    }

    private init(storage: GGUFStorage) throws {
        var parser = GGUFParser(cursor: GGUFCursor(storage))
        let parsed = try parser.parse()
        self.storage = storage
        version = parsed.version
        alignment = parsed.alignment
        fileSize = storage.count
        metadata = parsed.metadata
        metadataKeys = parsed.metadataKeys
        tensors = parsed.tensors
        dataSectionOffset = parsed.dataSectionOffset
        var index: [String: Int] = [:]
        index.reserveCapacity(parsed.tensors.count)
        for (i, t) in parsed.tensors.enumerated() { index[t.name] = i }
        tensorIndex = index
    }

    // MARK: - Tensors

    /// The tensor info named `name`, or nil.
    public func tensor(named name: String) -> GGUFTensorInfo? {
        tensorIndex[name].map { tensors[$0] }
    }

    /// The `byteCount` bytes of `tensor`'s data, pointing into the map (valid while this `GGUFFile` lives).
    /// - Precondition: `tensor` comes from this file's `tensors` (its range was validated on open).
    public func data(of tensor: GGUFTensorInfo) -> UnsafeRawBufferPointer {
        guard let buffer = storage.slice(offset: tensor.dataOffset, length: tensor.byteCount) else {
            preconditionFailure("GGUFFile.data(of:): tensor \(tensor.name) does not belong to this file")
        }
        return buffer
    }

    // MARK: - Metadata accessors

    /// The string stored under `key`, or nil if absent or not a string.
    public func string(_ key: String) -> String? { metadata[key]?.stringValue }

    /// The integer stored under `key` (any integer width that fits `Int`), or nil.
    public func int(_ key: String) -> Int? { metadata[key]?.intValue }

    /// The number stored under `key` (any integer or float type), or nil.
    public func double(_ key: String) -> Double? { metadata[key]?.doubleValue }

    /// The bool stored under `key`, or nil.
    public func bool(_ key: String) -> Bool? { metadata[key]?.boolValue }

    /// The array of strings stored under `key`, or nil if absent or any element is not a string.
    public func stringArray(_ key: String) -> [String]? {
        guard let elements = metadata[key]?.arrayValue else { return nil }
        var out: [String] = []
        out.reserveCapacity(elements.count)
        for e in elements {
            guard case .string(let s) = e else { return nil }
            out.append(s)
        }
        return out
    }

    /// The array of numbers stored under `key` converted to `Float` (exact for `float32` arrays), or nil if
    /// absent or any element is not numeric.
    public func floatArray(_ key: String) -> [Float]? {
        guard let elements = metadata[key]?.arrayValue else { return nil }
        var out: [Float] = []
        out.reserveCapacity(elements.count)
        for e in elements {
            if case .float32(let f) = e {
                out.append(f)
            } else if let d = e.doubleValue {
                out.append(Float(d))
            } else {
                return nil
            }
        }
        return out
    }

    /// The array of integers stored under `key` (any integer width, each fitting `Int`), or nil.
    public func intArray(_ key: String) -> [Int]? {
        guard let elements = metadata[key]?.arrayValue else { return nil }
        var out: [Int] = []
        out.reserveCapacity(elements.count)
        for e in elements {
            guard let i = e.intValue else { return nil }
            out.append(i)
        }
        return out
    }

    /// `general.architecture`, e.g. `gemma3` or `llama`.
    public var architecture: String? { string(GGUFKeys.architecture) }
}

// MARK: - Parser

/// Reads and validates the whole header, metadata and tensor info sections through a `GGUFCursor`.
private struct GGUFParser {
    struct Result {
        var version: UInt32
        var alignment: Int
        var metadata: [String: GGUFValue]
        var metadataKeys: [String]
        var tensors: [GGUFTensorInfo]
        var dataSectionOffset: Int
    }

    /// Smallest possible key/value pair: empty key (8) + type (4) + a 1-byte value.
    static let minimumKVSize = 13
    /// Smallest possible tensor info: empty name (8) + n_dimensions (4) + one dim (8) + type (4) + offset (8).
    static let minimumTensorInfoSize = 32

    var cursor: GGUFCursor
    /// Metadata array elements read so far (bounded by `GGUFFile.maxMetadataElements`).
    var metadataElements = 0

    mutating func parse() throws -> Result {
        // MARK: header
        let magic = try cursor.read(UInt32.self, "magic")
        guard magic == 0x4655_4747 else { throw GGUFError.badMagic(found: magic, offset: 0) }  // "GGUF"
        let versionOffset = cursor.position
        let version = try cursor.read(UInt32.self, "version")
        guard version == 2 || version == 3 else {
            throw GGUFError.unsupportedVersion(version: version, offset: versionOffset)
        }
        let tensorCountOffset = cursor.position
        let tensorCount = try cursor.read(UInt64.self, "tensor_count")
        let kvCountOffset = cursor.position
        let kvCount = try cursor.read(UInt64.self, "metadata_kv_count")
        // Early, loose bounds (tightened below once the metadata is read): nothing is reserved before them.
        try checkCount(tensorCount, itemSize: Self.minimumTensorInfoSize, field: "tensor_count", offset: tensorCountOffset)
        try checkCount(kvCount, itemSize: Self.minimumKVSize, field: "metadata_kv_count", offset: kvCountOffset)

        // MARK: metadata
        let nKV = Int(kvCount)
        var metadata: [String: GGUFValue] = [:]
        metadata.reserveCapacity(nKV)
        var keys: [String] = []
        keys.reserveCapacity(nKV)
        var alignment = GGUFFile.defaultAlignment
        for i in 0..<nKV {
            let keyOffset = cursor.position
            let key = try cursor.string("metadata[\(i)].key")
            guard metadata[key] == nil else { throw GGUFError.duplicateKey(key: key, offset: keyOffset) }
            let field = "metadata[\"\(key)\"]"
            let typeOffset = cursor.position
            let rawType = try cursor.read(UInt32.self, "\(field).type")
            guard let type = GGUFValueType(rawValue: rawType) else {
                throw GGUFError.unknownValueType(field: "\(field).type", offset: typeOffset, type: rawType)
            }
            let valueOffset = cursor.position
            let value: GGUFValue
            var elementType: GGUFValueType? = nil
            if type == .array {
                let (elements, declared) = try readArray(depth: 1, field)
                value = .array(elements)
                elementType = elements.isEmpty ? nil : declared
            } else {
                value = try readScalar(type, field)
            }
            if let expected = GGUFKeys.expectedTypes[key] {
                let ok: Bool
                switch expected {
                case .scalar(let t): ok = type == t
                case .array(let t): ok = type == .array && (elementType == nil || elementType == t)
                }
                guard ok else {
                    let found = type == .array ? "array[\(elementType.map { "\($0)" } ?? "empty")]" : "\(type)"
                    throw GGUFError.wrongValueType(key: key, offset: typeOffset, expected: "\(expected)", found: found)
                }
            }
            if key == GGUFKeys.alignment, case .uint32(let a) = value {
                guard a != 0, a & (a - 1) == 0 else { throw GGUFError.invalidAlignment(value: a, offset: valueOffset) }
                alignment = Int(a)
            }
            metadata[key] = value
            keys.append(key)
        }

        // MARK: tensor infos
        try checkCount(tensorCount, itemSize: Self.minimumTensorInfoSize, field: "tensor_count", offset: tensorCountOffset)
        let nTensors = Int(tensorCount)
        var infos: [PendingTensor] = []
        infos.reserveCapacity(nTensors)
        var names = Set<String>()
        names.reserveCapacity(nTensors)
        for i in 0..<nTensors {
            infos.append(try readTensorInfo(index: i, alignment: alignment, names: &names))
        }

        // MARK: data section
        let dataStart = cursor.alignedOffset(alignment)
        let fileSize = cursor.end
        var tensors: [GGUFTensorInfo] = []
        tensors.reserveCapacity(nTensors)
        for t in infos {
            // start = dataStart + relative offset, end = start + byteCount, both within the file.
            let outOfBounds = GGUFError.tensorOutOfBounds(
                tensor: t.name, offset: t.offsetFieldOffset,
                start: UInt64(dataStart).addingReportingOverflow(t.relativeOffset).overflow
                    ? UInt64.max : UInt64(dataStart) + t.relativeOffset,
                byteCount: t.byteCount, fileSize: fileSize)
            guard dataStart <= fileSize, t.relativeOffset <= UInt64(fileSize - dataStart) else { throw outOfBounds }
            let start = dataStart + Int(t.relativeOffset)
            guard t.byteCount <= fileSize - start else { throw outOfBounds }
            tensors.append(
                GGUFTensorInfo(name: t.name, dims: t.dims, type: t.type, dataOffset: start, byteCount: t.byteCount))
        }
        // Overlap: sorted by start, each tensor must end at or before the next one starts.
        let order = tensors.indices.sorted { tensors[$0].dataOffset < tensors[$1].dataOffset }
        for (a, b) in zip(order, order.dropFirst()) {
            let first = tensors[a], second = tensors[b]
            if first.dataOffset + first.byteCount > second.dataOffset {
                throw GGUFError.overlappingTensors(
                    first: first.name, second: second.name, offset: infos[b].offsetFieldOffset)
            }
        }

        return Result(
            version: version, alignment: alignment, metadata: metadata, metadataKeys: keys, tensors: tensors,
            dataSectionOffset: dataStart)
    }

    /// Throws `countExceedsFile` unless `count` items of at least `itemSize` bytes fit in the remaining bytes.
    private func checkCount(_ count: UInt64, itemSize: Int, field: @autoclosure () -> String, offset: Int) throws {
        let limit = cursor.remaining / itemSize
        guard count <= UInt64(limit) else {
            throw GGUFError.countExceedsFile(field: field(), offset: offset, count: count, limit: limit)
        }
    }

    // MARK: values

    private mutating func readScalar(_ type: GGUFValueType, _ field: @autoclosure () -> String) throws -> GGUFValue {
        switch type {
        case .uint8: return .uint8(try cursor.read(UInt8.self, field()))
        case .int8: return .int8(try cursor.read(Int8.self, field()))
        case .uint16: return .uint16(try cursor.read(UInt16.self, field()))
        case .int16: return .int16(try cursor.read(Int16.self, field()))
        case .uint32: return .uint32(try cursor.read(UInt32.self, field()))
        case .int32: return .int32(try cursor.read(Int32.self, field()))
        case .float32: return .float32(Float(bitPattern: try cursor.read(UInt32.self, field())))
        case .uint64: return .uint64(try cursor.read(UInt64.self, field()))
        case .int64: return .int64(try cursor.read(Int64.self, field()))
        case .float64: return .float64(Double(bitPattern: try cursor.read(UInt64.self, field())))
        case .bool:
            let offset = cursor.position
            let b = try cursor.read(UInt8.self, field())
            guard b <= 1 else { throw GGUFError.invalidBool(field: field(), offset: offset, value: b) }
            return .bool(b == 1)
        case .string:
            return .string(try cursor.string(field()))
        case .array:
            // Only reached for array elements of arrays; top-level arrays go through readArray directly.
            preconditionFailure("readScalar called for an array")
        }
    }

    /// Reads `u32 element type | u64 count | elements` at nesting `depth` (1 = a top-level array).
    /// Returns the elements and the declared element type.
    private mutating func readArray(depth: Int, _ field: @autoclosure () -> String) throws -> ([GGUFValue], GGUFValueType) {
        let start = cursor.position
        guard depth <= GGUFFile.maxArrayDepth else {
            throw GGUFError.nestingTooDeep(field: field(), offset: start, limit: GGUFFile.maxArrayDepth)
        }
        let rawType = try cursor.read(UInt32.self, "\(field()).element_type")
        guard let elementType = GGUFValueType(rawValue: rawType) else {
            throw GGUFError.unknownValueType(field: "\(field()).element_type", offset: start, type: rawType)
        }
        let countOffset = cursor.position
        let count = try cursor.read(UInt64.self, "\(field()).count")
        try checkCount(count, itemSize: elementType.minimumEncodedSize, field: "\(field()).count", offset: countOffset)
        let n = Int(count)
        guard n <= GGUFFile.maxMetadataElements - metadataElements else {
            throw GGUFError.tooManyMetadataElements(
                field: "\(field()).count", offset: countOffset, count: count, limit: GGUFFile.maxMetadataElements)
        }
        metadataElements += n
        var elements: [GGUFValue] = []
        elements.reserveCapacity(n)
        switch elementType {
        case .array:
            for i in 0..<n {
                let (inner, _) = try readArray(depth: depth + 1, "\(field())[\(i)]")
                elements.append(.array(inner))
            }
        case .string:
            // The vocabulary case (262144 strings in real models): a tight loop without the per-element switch.
            for i in 0..<n {
                elements.append(.string(try cursor.string("\(field())[\(i)]")))
            }
        case .float32:
            for i in 0..<n {
                elements.append(.float32(Float(bitPattern: try cursor.read(UInt32.self, "\(field())[\(i)]"))))
            }
        case .int32:
            for i in 0..<n { elements.append(.int32(try cursor.read(Int32.self, "\(field())[\(i)]"))) }
        default:
            for i in 0..<n {
                elements.append(try readScalar(elementType, "\(field())[\(i)]"))
            }
        }
        return (elements, elementType)
    }

    // MARK: tensor infos

    /// A tensor info whose data range is not yet resolved (the data section starts after the last info).
    struct PendingTensor {
        var name: String
        var dims: [Int]
        var type: GGMLType
        var byteCount: Int
        var relativeOffset: UInt64
        var offsetFieldOffset: Int
    }

    private mutating func readTensorInfo(index i: Int, alignment: Int, names: inout Set<String>) throws -> PendingTensor {
        let nameOffset = cursor.position
        let name = try cursor.string("tensor_info[\(i)].name")
        guard names.insert(name).inserted else { throw GGUFError.duplicateTensorName(name: name, offset: nameOffset) }
        let field = "tensor_info[\(i)]"

        let nDimsOffset = cursor.position
        let nDims = try cursor.read(UInt32.self, "\(field).n_dimensions")
        guard (1...4).contains(nDims) else {
            throw GGUFError.invalidDimensionCount(tensor: name, offset: nDimsOffset, count: nDims)
        }
        let dimsOffset = cursor.position
        var dims: [Int] = []
        dims.reserveCapacity(Int(nDims))
        var elements = 1
        for j in 0..<Int(nDims) {
            let dimOffset = cursor.position
            let d = try cursor.read(UInt64.self, "\(field).dims[\(j)]")
            guard d >= 1, d <= UInt64(Int64.max) else {
                throw GGUFError.invalidDimension(tensor: name, offset: dimOffset, index: j, value: d)
            }
            let (product, overflow) = elements.multipliedReportingOverflow(by: Int(d))
            guard !overflow else {
                throw GGUFError.tensorSizeOverflow(tensor: name, field: "\(field).dims", offset: dimsOffset)
            }
            elements = product
            dims.append(Int(d))
        }

        let typeOffset = cursor.position
        let rawType = try cursor.read(UInt32.self, "\(field).type")
        guard let type = GGMLType(rawValue: rawType) else {
            throw GGUFError.unknownTensorType(tensor: name, offset: typeOffset, type: rawType)
        }
        guard dims[0] % type.blockSize == 0 else {
            throw GGUFError.notBlockMultiple(tensor: name, offset: dimsOffset, type: type, rowLength: dims[0])
        }
        guard let byteCount = type.byteCount(elements: elements) else {
            throw GGUFError.tensorSizeOverflow(tensor: name, field: "\(field).type", offset: typeOffset)
        }

        let offsetFieldOffset = cursor.position
        let relativeOffset = try cursor.read(UInt64.self, "\(field).offset")
        guard relativeOffset % UInt64(alignment) == 0 else {
            throw GGUFError.misalignedTensorOffset(
                tensor: name, offset: offsetFieldOffset, dataOffset: relativeOffset, alignment: alignment)
        }
        return PendingTensor(
            name: name, dims: dims, type: type, byteCount: byteCount, relativeOffset: relativeOffset,
            offsetFieldOffset: offsetFieldOffset)
    }
}
