// UnixHTTPClient: one HTTP/1.1 request per connection over a Unix socket (NIO client pipeline), with the
// response body delivered piece by piece so server-sent events print as they arrive.

import NIOCore
import NIOHTTP1
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

struct ClientError: Error, CustomStringConvertible {
    let description: String
}

/// A system call's failure as strerror(3) text with its errno (NIO's own description repeats the call signature).
func describe(_ error: any Error) -> String {
    if let io = error as? IOError { return "\(String(cString: strerror(io.errnoCode))) (errno \(io.errnoCode))" }
    return "\(error)"
}

struct UnixHTTPClient {
    let socketPath: String

    /// Sends the request; calls `onHead` with the status, then `onBody` for each body piece.
    /// - Throws: connection errors (as ``ClientError`` with the socket path), or whatever the callbacks throw.
    /// `contentType` names the body's type (default `application/json`).
    func send(
        method: HTTPMethod, path: String, json: [UInt8]? = nil, contentType: String = "application/json",
        onHead: (Int) throws -> Void, onBody: ([UInt8]) throws -> Void
    ) async throws {
        let channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(unixDomainSocketPath: socketPath) { ch in
                    ch.eventLoop.makeCompletedFuture {
                        try ch.pipeline.syncOperations.addHTTPClientHandlers()
                        return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                            wrappingChannelSynchronously: ch)
                    }
                }
        } catch {
            throw ClientError(description: "cannot connect to lorad at \(socketPath): \(describe(error))")
        }
        try await channel.executeThenClose { inbound, outbound in
            var headers = HTTPHeaders()
            headers.add(name: "Host", value: "localhost")
            headers.add(name: "Connection", value: "close")
            headers.add(name: "Accept", value: "application/json, text/event-stream")
            if let json {
                headers.add(name: "Content-Type", value: contentType)
                headers.add(name: "Content-Length", value: String(json.count))
            }
            var parts: [HTTPClientRequestPart] = [
                .head(HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: headers))
            ]
            if let json { parts.append(.body(.byteBuffer(ByteBuffer(bytes: json)))) }
            parts.append(.end(nil))
            // One write and one flush for the whole request. The server may answer and close (Connection: close)
            // as soon as it has the request, even before this write call returns; what it sent is still readable,
            // so a failed write only counts if no response follows.
            var writeError: (any Error)?
            do { try await outbound.write(contentsOf: parts) } catch { writeError = error }
            var gotHead = false
            for try await part in inbound {
                switch part {
                case .head(let h):
                    gotHead = true
                    try onHead(Int(h.status.code))
                case .body(let b): try onBody(Array(b.readableBytesView))
                case .end: return
                }
            }
            if !gotHead, let writeError {
                throw ClientError(description: "sending the request to lorad failed: \(writeError)")
            }
            throw ClientError(description: "lorad closed the connection before the response ended")
        }
    }

    /// A whole response: status and body.
    func fetch(
        method: HTTPMethod, path: String, json: [UInt8]? = nil, contentType: String = "application/json"
    ) async throws -> (Int, [UInt8]) {
        var status = 0
        var body: [UInt8] = []
        try await send(
            method: method, path: path, json: json, contentType: contentType, onHead: { status = $0 },
            onBody: { body += $0 })
        return (status, body)
    }
}
