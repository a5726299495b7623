// SocketActivation: adopt listening sockets passed by systemd (lorad.socket) or systemd-socket-activate.
//
// Protocol (sd_listen_fds(3)): the manager passes the sockets as fds 3, 4, … and sets LISTEN_FDS=<count> and
// LISTEN_PID=<our pid>. `sd_listen_fds(1)` validates LISTEN_PID, marks the fds close-on-exec and unsets the
// variables so child processes do not believe the sockets are theirs. Because the variables are consumed, the
// result is computed once per process and cached; later calls return the same fds.
//
// The daemon must not unlink the socket file of an adopted socket: it belongs to the socket unit and has to
// survive restarts of the service (SwiftNIO only unlinks paths it bound itself).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CSystemd

/// Listening sockets handed to lorad by its service manager.
public enum SocketActivation {
    /// The passed file descriptors that are listening `AF_UNIX` `SOCK_STREAM` sockets, in the order passed.
    ///
    /// Uses `sd_listen_fds(1)` (which unsets `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`) and keeps each fd
    /// `SD_LISTEN_FDS_START + i` for which `sd_is_socket_unix(fd, SOCK_STREAM, 1, nil, 0)` is positive. Other passed
    /// fds (wrong family or type, not listening) are left open and ignored. Empty when the process was not
    /// socket-activated; then the daemon binds its own socket.
    ///
    /// The first call consumes the environment; every call returns that first result, from any thread.
    /// - Returns: file descriptors to adopt, e.g. `[3]`; the caller owns them (close on shutdown).
    public static func listenFDs() -> [Int32] {
        inherited
    }

    /// Computed once (Swift lazy static initialization is thread-safe), because sd_listen_fds(1) consumes
    /// the environment.
    private static let inherited: [Int32] = {
        let n = sd_listen_fds(1)
        guard n > 0 else { return [] }
        let start = Int32(SD_LISTEN_FDS_START)
        var fds: [Int32] = []
        for i in 0..<n {
            let fd = start + i
            if sd_is_socket_unix(fd, Int32(SOCK_STREAM.rawValue), 1, nil, 0) > 0 {
                fds.append(fd)
            }
        }
        return fds
    }()
}
