// Durable file replacement: write a temporary file in the target's directory, fsync it, rename it over the
// target, fsync the directory. A crash or a failed write (ENOSPC, EIO) leaves the previous file as it was.
// Source: POSIX rename(2) atomicity; the same sequence as GGUFWriter.write(to:).
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A failed file operation; `errno` is the C error number.
public struct FileIOError: Error, CustomStringConvertible, Equatable {
    /// The failing call (`open`, `write`, `fsync`, `rename`, `read`, …).
    public let operation: String
    /// The path it was called on.
    public let path: String
    /// `errno` after the call.
    public let errno: Int32

    /// - Parameters: see the properties.
    public init(operation: String, path: String, errno: Int32) {
        self.operation = operation
        self.path = path
        self.errno = errno
    }

    public var description: String { "\(operation) \(path): \(String(cString: strerror(errno)))" }
}

/// Atomic whole-file writes and plain reads.
public enum AtomicFile {
    /// Injects failures into `write`: called before each `write(2)` with the temporary file's path and the number
    /// of bytes already written (writes are at most `chunkSize` bytes); a non-nil result makes that write fail
    /// with this errno (tests use ENOSPC).
    public typealias WriteFault = @Sendable (_ path: String, _ offset: Int) -> Int32?

    /// Largest single `write(2)`, in bytes.
    public static let chunkSize = 1 << 16

    /// Replaces `path` with `bytes` atomically (temporary file, fsync, rename, fsync of the directory).
    /// - Parameter fault: failure injection for tests; nil in production.
    /// - Throws: `FileIOError`; on failure the temporary file is removed and `path` is untouched.
    public static func write(_ bytes: [UInt8], to path: String, fault: WriteFault? = nil) throws {
        let (directory, base) = split(path)
        let temp = "\(directory)/.\(base).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw FileIOError(operation: "open", path: temp, errno: errno) }
        var renamed = false
        defer { if !renamed { unlink(temp) } }
        do {
            defer { close(fd) }
            try bytes.withUnsafeBytes { buffer in
                var written = 0
                while written < buffer.count {
                    if let e = fault?(temp, written) { throw FileIOError(operation: "write", path: temp, errno: e) }
                    let n = Glibc.write(fd, buffer.baseAddress! + written, min(chunkSize, buffer.count - written))
                    if n < 0 {
                        if errno == EINTR { continue }
                        throw FileIOError(operation: "write", path: temp, errno: errno)
                    }
                    written += n
                }
            }
            guard fsync(fd) == 0 else { throw FileIOError(operation: "fsync", path: temp, errno: errno) }
        }
        guard rename(temp, path) == 0 else { throw FileIOError(operation: "rename", path: path, errno: errno) }
        renamed = true
        try syncDirectory(directory)
    }

    /// fsyncs a directory so that renames and removals in it are durable.
    /// - Throws: `FileIOError`.
    public static func syncDirectory(_ directory: String) throws {
        let dfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dfd >= 0 else { throw FileIOError(operation: "open", path: directory, errno: errno) }
        defer { close(dfd) }
        guard fsync(dfd) == 0 else { throw FileIOError(operation: "fsync", path: directory, errno: errno) }
    }

    /// The whole contents of a file.
    /// - Throws: `FileIOError`.
    public static func read(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw FileIOError(operation: "open", path: path, errno: errno) }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw FileIOError(operation: "read", path: path, errno: errno)
            }
            if n == 0 { break }
            out.append(contentsOf: chunk[..<n])
        }
        return out
    }

    /// Creates a directory (and its parents) if missing.
    /// - Throws: `FileIOError`.
    public static func makeDirectory(_ path: String) throws {
        var prefix = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            prefix += "/" + part
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST {
                throw FileIOError(operation: "mkdir", path: prefix, errno: errno)
            }
        }
    }

    static func split(_ path: String) -> (directory: String, base: String) {
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        let base = slash.map { String(path[path.index(after: $0)...]) } ?? path
        return (directory, base)
    }
}
