// UnixSocketPath: decide whether a socket path may be bound. A socket file that nobody answers on (connect(2)
// fails with ECONNREFUSED) is stale, left by a process that died, and is removed; one that accepts a connection
// belongs to a live server and is never touched; any other kind of file is refused rather than deleted.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Errors preparing the listening socket.
public enum SocketPathError: Error, CustomStringConvertible, Equatable {
    case live(path: String)
    case notASocket(path: String)
    case tooLong(path: String, limit: Int)
    case system(path: String, call: String, errno: Int32)

    public var description: String {
        switch self {
        case .live(let p):
            return "another server is already listening on \(p) (a connection succeeded); stop it or choose "
                + "another --socket"
        case .notASocket(let p): return "\(p) exists and is not a socket; refusing to replace it"
        case .tooLong(let p, let l): return "socket path \(p) is longer than \(l) bytes (sockaddr_un limit)"
        case .system(let p, let call, let e):
            return "\(call)(\(p)) failed: \(String(cString: strerror(e)))"
        }
    }
}

/// State of a path where a Unix socket should be bound.
public enum UnixSocketState: Sendable, Equatable {
    case absent
    /// A socket file nobody listens on.
    case stale
    /// A socket file with a listener.
    case live
    /// Some other file type.
    case notASocket
}

public enum UnixSocketPath {
    /// `sizeof(sun_path) - 1`.
    public static let maxPathBytes = 107

    /// Inspects `path` (lstat + a connect attempt).
    public static func probe(_ path: String) throws -> UnixSocketState {
        guard path.utf8.count <= maxPathBytes else { throw SocketPathError.tooLong(path: path, limit: maxPathBytes) }
        var st = stat()
        if lstat(path, &st) != 0 {
            if errno == ENOENT { return .absent }
            throw SocketPathError.system(path: path, call: "lstat", errno: errno)
        }
        guard (st.st_mode & S_IFMT) == S_IFSOCK else { return .notASocket }
        #if canImport(Glibc) || canImport(Musl)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        #else
        let fd = socket(AF_UNIX, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { throw SocketPathError.system(path: path, call: "socket", errno: errno) }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if rc == 0 { return .live }
        let e = errno
        if e == ECONNREFUSED || e == ENOENT { return .stale }
        if e == EAGAIN { return .live }  // listener with a full backlog
        throw SocketPathError.system(path: path, call: "connect", errno: e)
    }

    /// Makes `path` bindable: removes a stale socket, refuses a live one or a non-socket.
    /// - Returns: whether a stale socket file was removed.
    /// - Throws: ``SocketPathError``.
    @discardableResult
    public static func prepareForBinding(_ path: String) throws -> Bool {
        switch try probe(path) {
        case .absent: return false
        case .live: throw SocketPathError.live(path: path)
        case .notASocket: throw SocketPathError.notASocket(path: path)
        case .stale:
            if unlink(path) != 0 && errno != ENOENT {
                throw SocketPathError.system(path: path, call: "unlink", errno: errno)
            }
            return true
        }
    }
}
