// The bytes of a GGUF file (a read-only memory map or an owned aligned copy) and the bounds-checked cursor
// that is the only code reading raw offsets in them. Every read checks `count <= remaining` first, so a
// hostile length or count becomes a GGUFError naming the field, never an out-of-bounds read.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Owns the bytes of one GGUF (or safetensors) file: either a `PROT_READ` memory map of the file or an aligned heap copy.
final class GGUFStorage: @unchecked Sendable {
    /// First byte; never nil, even for an empty file (then it points at a private 1-byte allocation).
    let base: UnsafeRawPointer
    /// Bytes in the file.
    let count: Int
    private let isMapped: Bool

    /// Maps `path` read-only and shared-clean (`MAP_PRIVATE`, `PROT_READ`): pages are loaded on demand and
    /// shared with the page cache; nothing is copied. The descriptor is closed once the map exists.
    /// Also holds safetensors files (`SafetensorsFile`), which pass their own error type.
    /// - Parameter ioError: builds the error thrown for a failed call `(operation, path, errno)`.
    /// - Throws: `ioError(...)` (by default `GGUFError.io`) when open, fstat or mmap fails.
    init(
        mapping path: String,
        ioError: (String, String, Int32) -> any Error = { GGUFError.io(operation: $0, path: $1, errno: $2) }
    ) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ioError("open", path, errno) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw ioError("fstat", path, errno) }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw ioError("open (not a regular file)", path, EINVAL)
        }
        let size = Int(st.st_size)
        if size == 0 {
            // mmap of length 0 fails; an empty file is parsed (and rejected) like any other truncated file.
            let p = UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 64)
            base = UnsafeRawPointer(p)
            count = 0
            isMapped = false
            return
        }
        let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != MAP_FAILED else { throw ioError("mmap", path, errno) }
        base = UnsafeRawPointer(p)
        count = size
        isMapped = true
    }

    /// Copies `bytes` into a 64-byte aligned allocation, so tensor data is as aligned as in a mapped file.
    init(copying bytes: [UInt8]) {
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(bytes.count, 1), alignment: 64)
        bytes.withUnsafeBytes { src in
            if let s = src.baseAddress { p.copyMemory(from: s, byteCount: src.count) }
        }
        base = UnsafeRawPointer(p)
        count = bytes.count
        isMapped = false
    }

    deinit {
        if isMapped {
            munmap(UnsafeMutableRawPointer(mutating: base), count)
        } else {
            UnsafeMutableRawPointer(mutating: base).deallocate()
        }
    }

    /// The bytes `[offset, offset + length)`, or nil when that range is not inside the file.
    func slice(offset: Int, length: Int) -> UnsafeRawBufferPointer? {
        guard offset >= 0, length >= 0, offset <= count, length <= count - offset else { return nil }
        return UnsafeRawBufferPointer(start: base + offset, count: length)
    }
}

/// A forward-only reader over `GGUFStorage` that checks every read against the end of the file.
///
/// `field` arguments are autoclosures, so the field path string is only built when an error is thrown.
struct GGUFCursor {
    private let base: UnsafeRawPointer
    /// One past the last readable byte.
    let end: Int
    /// Absolute offset of the next byte to read.
    private(set) var position: Int

    init(_ storage: GGUFStorage) {
        base = storage.base
        end = storage.count
        position = 0
    }

    /// Bytes left after `position`.
    var remaining: Int { end - position }

    /// Throws `truncated` unless `needed` bytes remain.
    @inline(__always)
    func require(_ needed: Int, _ field: @autoclosure () -> String) throws {
        guard needed <= remaining else {
            throw GGUFError.truncated(field: field(), offset: position, needed: needed, available: remaining)
        }
    }

    /// Reads a little-endian integer.
    @inline(__always)
    mutating func read<T: FixedWidthInteger>(_: T.Type, _ field: @autoclosure () -> String) throws -> T {
        let size = MemoryLayout<T>.size
        try require(size, field())
        let raw = base.loadUnaligned(fromByteOffset: position, as: T.self)
        position += size
        return T(littleEndian: raw)
    }

    /// Reads `length` raw bytes; the buffer points into the file.
    mutating func bytes(_ length: Int, _ field: @autoclosure () -> String) throws -> UnsafeRawBufferPointer {
        precondition(length >= 0)
        try require(length, field())
        let buffer = UnsafeRawBufferPointer(start: base + position, count: length)
        position += length
        return buffer
    }

    /// Reads a GGUF string: u64 byte length, then that many bytes of UTF-8 (no terminator).
    /// - Throws: `truncated` for the length field, `stringExceedsFile` when the length is larger than the
    ///   bytes that remain (checked before anything is allocated), `invalidUTF8`.
    mutating func string(_ field: @autoclosure () -> String) throws -> String {
        let lengthOffset = position
        let length = try read(UInt64.self, field())
        guard length <= UInt64(remaining) else {
            throw GGUFError.stringExceedsFile(field: field(), offset: lengthOffset, length: length, available: remaining)
        }
        let raw = try bytes(Int(length), field())
        guard let s = Self.validatedString(raw) else {
            throw GGUFError.invalidUTF8(field: field(), offset: lengthOffset)
        }
        return s
    }

    /// `raw` as a String if it is valid UTF-8, else nil.
    ///
    /// `String(decoding:as:)` validates on its non-generic fast path and replaces invalid sequences with
    /// U+FFFD; the result equals the input bytes exactly when nothing was replaced. (This is several times
    /// faster than `String(validating:as:)`, which looks up generic metadata on every call: it matters for the
    /// 262144-string vocabularies of real models.)
    @inline(__always)
    static func validatedString(_ raw: UnsafeRawBufferPointer) -> String? {
        let units = UnsafeBufferPointer(start: raw.baseAddress?.assumingMemoryBound(to: UInt8.self), count: raw.count)
        var s = String(decoding: units, as: UTF8.self)
        let same = s.withUTF8 { out in
            out.count == units.count && (units.isEmpty || memcmp(out.baseAddress!, units.baseAddress!, units.count) == 0)
        }
        return same ? s : nil
    }

    /// Moves to the next multiple of `alignment` (a power of two), clamped to the end of the file.
    /// Returns the aligned offset, which may lie past the end when the file ends in the padding.
    mutating func alignedOffset(_ alignment: Int) -> Int {
        let (padded, overflow) = position.addingReportingOverflow(alignment - 1)
        let aligned = overflow ? Int.max : padded & ~(alignment - 1)
        position = min(aligned, end)
        return aligned
    }
}
