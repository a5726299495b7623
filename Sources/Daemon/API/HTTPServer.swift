// HTTPServer: HTTP/1.1 over a Unix socket with SwiftNIO (NIOHTTP1 server pipeline + NIOAsyncChannel).
//
// Per connection: read one request head, then its body with the size limit enforced while reading (413 and
// close as soon as the limit is passed, or at once when Content-Length announces more), hand it to APIHandler,
// repeat while keep-alive. Connections are tracked so a drain can close idle ones and, after the timeout, all.
// The listener either binds a path (stale-file check first; NIO unlinks the file when it closes) or adopts a
// socket-activated fd (left alone on close: the socket unit owns it).

import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One accepted connection: the raw channel (for close notifications) and its async wrapper.
struct AcceptedConnection: Sendable {
    let channel: any Channel
    let async: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>
}

/// Writes one HTTP response (whole or streamed) on a connection.
///
/// The last bytes of a response and its `.end` go out in one write. Each write is flushed on its own, and a
/// client that has read a complete response (all of a Content-Length body, or a stream's `[DONE]`) may hang up at
/// once; a separate, later write of `.end` would then fail, and a response the client received in full would be
/// counted as a disconnect (499). Under CPU load the handler's task easily falls that far behind the event loop.
struct ResponseWriter {
    let outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>
    let version: HTTPVersion
    let keepAlive: Bool
    let allocator: ByteBufferAllocator
    /// A HEAD request: headers (with the Content-Length a GET would get) but no body bytes.
    var headOnly = false

    func head(_ status: Int, _ headers: [(String, String)]) -> HTTPResponseHead {
        var h = HTTPHeaders(headers)
        h.add(name: "Server", value: "lorad")
        if !keepAlive {
            h.replaceOrAdd(name: "Connection", value: "close")
        } else if version.minor == 0 {
            h.replaceOrAdd(name: "Connection", value: "keep-alive")
        }
        return HTTPResponseHead(version: version, status: HTTPResponseStatus(statusCode: status), headers: h)
    }

    /// A complete response with Content-Length, written (and flushed) at once.
    /// - Throws: when the connection is already closed; then no part of the response was written.
    func send(status: Int, contentType: String, body: [UInt8], headers: [(String, String)] = []) async throws {
        var all = headers
        all.append(("Content-Type", contentType))
        all.append(("Content-Length", String(body.count)))
        var parts: [HTTPServerResponsePart] = [.head(head(status, all))]
        if !body.isEmpty && !headOnly { parts.append(.body(.byteBuffer(allocator.buffer(bytes: body)))) }
        parts.append(.end(nil))
        try await outbound.write(contentsOf: parts)
    }

    func send(json: JSONValue, status: Int = 200, headers: [(String, String)] = []) async throws {
        try await send(
            status: status, contentType: "application/json", body: Array(json.serialized.utf8), headers: headers)
    }

    func send(error: APIError) async throws {
        try await send(json: error.body, status: error.status, headers: error.headers)
    }

    /// Starts a chunked response (no Content-Length; NIO applies chunked transfer-encoding).
    func startStream(status: Int, contentType: String, headers: [(String, String)] = []) async throws {
        try await outbound.write(
            .head(head(status, [("Content-Type", contentType), ("Cache-Control", "no-cache")] + headers)))
    }

    func write(_ text: String) async throws {
        guard !headOnly else { return }
        try await outbound.write(.body(.byteBuffer(allocator.buffer(string: text))))
    }

    /// Writes the last pieces of a streamed response together with its end, in one write.
    func end(after texts: [String] = []) async throws {
        var parts: [HTTPServerResponsePart] = []
        if !headOnly {
            for t in texts { parts.append(.body(.byteBuffer(allocator.buffer(string: t)))) }
        }
        parts.append(.end(nil))
        try await outbound.write(contentsOf: parts)
    }
}

/// Live connections; lets a drain close idle keep-alive connections and, past the timeout, every connection.
final class ConnectionRegistry: @unchecked Sendable {
    private let lock = NSLock()
    private var entries: [ObjectIdentifier: (channel: any Channel, busy: Bool)] = [:]
    private var draining = false

    func add(_ c: any Channel) -> Bool {
        lock.withLock {
            if draining { return false }
            entries[ObjectIdentifier(c)] = (c, false)
            return true
        }
    }
    func remove(_ c: any Channel) { lock.withLock { _ = entries.removeValue(forKey: ObjectIdentifier(c)) } }
    /// Marks a connection busy (a request is being served) or idle. Returns false if it must close (draining).
    func setBusy(_ c: any Channel, _ busy: Bool) -> Bool {
        lock.withLock {
            entries[ObjectIdentifier(c)]?.busy = busy
            return !(draining && !busy)
        }
    }
    var count: Int { lock.withLock { entries.count } }
    /// Starts draining: idle connections are closed now, busy ones after their response.
    func beginDrain() {
        let idle: [any Channel] = lock.withLock {
            draining = true
            return entries.values.filter { !$0.busy }.map(\.channel)
        }
        for c in idle { c.close(promise: nil) }
    }
    func closeAll() {
        let all = lock.withLock { entries.values.map(\.channel) }
        for c in all { c.close(promise: nil) }
    }
}

/// The listening side of lorad.
final class HTTPServer: @unchecked Sendable {
    typealias ServerChannel = NIOAsyncChannel<AcceptedConnection, Never>

    let handler: APIHandler
    let logger: Logger
    let group: MultiThreadedEventLoopGroup
    let connections = ConnectionRegistry()

    /// Seconds a connection may sit without sending while lorad waits for a request or for the rest of one.
    let readTimeout: Double

    init(handler: APIHandler, logger: Logger, eventLoopThreads: Int = 1, readTimeout: Double = 30) {
        self.handler = handler
        self.logger = logger
        self.readTimeout = readTimeout
        group = MultiThreadedEventLoopGroup(numberOfThreads: eventLoopThreads)
    }

    private var bootstrap: ServerBootstrap {
        ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .childChannelOption(.allowRemoteHalfClosure, value: false)
    }

    private var initChild: @Sendable (any Channel) -> EventLoopFuture<AcceptedConnection> {
        let timeout = TimeAmount.milliseconds(Int64(readTimeout * 1000))
        return { ch in Self.initChild(ch, readTimeout: timeout) }
    }

    private static func initChild(_ ch: any Channel, readTimeout: TimeAmount) -> EventLoopFuture<AcceptedConnection> {
        ch.eventLoop.makeCompletedFuture {
            try ch.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: false)
            try ch.pipeline.syncOperations.addHandlers([
                ProtocolErrorHandler(), IdleStateHandler(readTimeout: readTimeout), RequestReadTimeoutHandler(),
            ])
            let a = try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(wrappingChannelSynchronously: ch)
            return AcceptedConnection(channel: ch, async: a)
        }
    }

    /// Binds `path` after removing a stale socket file; refuses a live one. Sets mode 0660.
    func bind(path: String) async throws -> ServerChannel {
        if try UnixSocketPath.prepareForBinding(path) {
            logger.notice("removed stale socket file", metadata: ["socket": "\(path)"])
        }
        let server = try await bootstrap.bind(
            unixDomainSocketPath: path, cleanupExistingSocketFile: false, childChannelInitializer: initChild)
        _ = chmod(path, 0o660)
        return server
    }

    /// Adopts an already bound and listening socket (systemd socket activation).
    func adopt(fd: Int32) async throws -> ServerChannel {
        try await bootstrap.bind(fd, childChannelInitializer: initChild)
    }

    /// Accepts connections until the server channel is closed, then waits for open connections to finish.
    func serve(_ server: ServerChannel) async throws {
        try await withThrowingDiscardingTaskGroup { group in
            try await server.executeThenClose { inbound in
                for try await conn in inbound {
                    group.addTask { await self.serveConnection(conn) }
                }
            }
        }
    }

    func shutdownEventLoops() async {
        try? await group.shutdownGracefully()
    }

    // MARK: - One connection

    private func serveConnection(_ conn: AcceptedConnection) async {
        guard connections.add(conn.channel) else {
            try? await conn.channel.close()
            return
        }
        defer { connections.remove(conn.channel) }
        let peer = await PeerCredentials.of(conn.channel)
        do {
            try await conn.async.executeThenClose { inbound, outbound in
                var parts = inbound.makeAsyncIterator()
                while let part = try await parts.next() {
                    guard case .head(let head) = part else { continue }
                    guard connections.setBusy(conn.channel, true) else { return }
                    let fileUpload = Self.isFileUpload(head)
                    let limit =
                        fileUpload
                        ? handler.state.maxFileUploadBytes
                        : Self.isUpload(head) ? handler.state.maxUploadBytes : handler.state.maxBodyBytes
                    var body: [UInt8] = []
                    var tooLarge = false
                    if let cl = head.headers.first(name: "content-length"), let n = Int(cl), n > limit {
                        tooLarge = true
                    } else if fileUpload {
                        // POST /v1/files: the body is streamed to the store, never held in memory.
                        let keepAlive = head.isKeepAlive && !handler.state.isDraining
                        let writer = ResponseWriter(
                            outbound: outbound, version: head.version, keepAlive: keepAlive,
                            allocator: conn.channel.allocator)
                        var ended = false
                        var continued = false
                        let keep = await handler.handleUpload(head: head, writer: writer, peer: peer, limit: limit) {
                            if ended { return nil }
                            if !continued, head.headers.first(name: "expect")?.lowercased() == "100-continue" {
                                continued = true
                                try await outbound.write(.head(HTTPResponseHead(version: head.version, status: .continue)))
                            }
                            while let p = try await parts.next() {
                                switch p {
                                case .body(let buf): return buf
                                case .end:
                                    ended = true
                                    return nil
                                case .head: throw ChannelError.inappropriateOperationForState
                                }
                            }
                            throw ChannelError.eof
                        }
                        guard keepAlive && keep && ended else { return }
                        guard connections.setBusy(conn.channel, false) else { return }
                        continue
                    } else {
                        if head.headers.first(name: "expect")?.lowercased() == "100-continue" {
                            // RFC 9110 §10.1.1: tell the client to send the body it is holding back.
                            try await outbound.write(.head(HTTPResponseHead(version: head.version, status: .continue)))
                        }
                        reading: while let p = try await parts.next() {
                            switch p {
                            case .body(let buf):
                                if body.count + buf.readableBytes > limit {
                                    tooLarge = true
                                    break reading
                                }
                                body.append(contentsOf: buf.readableBytesView)
                            case .end:
                                break reading
                            case .head:
                                return  // protocol violation: drop the connection
                            }
                        }
                    }
                    let allocator = conn.channel.allocator
                    if tooLarge {
                        // Stop reading: answer and close without consuming the rest of the body.
                        let w = ResponseWriter(outbound: outbound, version: head.version, keepAlive: false, allocator: allocator)
                        let err = APIError.bodyTooLarge(limit: limit)
                        try? await w.send(error: err)
                        handler.state.metrics.recordRequest(route: Self.routeLabel(head), status: 413)
                        return
                    }
                    let keepAlive = head.isKeepAlive && !handler.state.isDraining
                    let writer = ResponseWriter(
                        outbound: outbound, version: head.version, keepAlive: keepAlive, allocator: allocator,
                        headOnly: head.method == .HEAD)
                    let keep = await handler.handle(head: head, body: body, writer: writer, channel: conn.channel, peer: peer)
                    guard keepAlive && keep else { return }
                    guard connections.setBusy(conn.channel, false) else { return }
                }
            }
        } catch {
            logger.debug("connection ended with error", metadata: ["error": "\(error)"])
        }
    }

    /// `POST /v1/files`: streamed to the store under `--max-upload-mb`.
    static func isFileUpload(_ head: HTTPRequestHead) -> Bool {
        head.method == .POST && (try? Route.resolve(method: "POST", uri: head.uri)) == .files
    }

    /// Adapter registrations may carry uploaded files: they get the larger upload limit.
    static func isUpload(_ head: HTTPRequestHead) -> Bool {
        guard head.method == .POST else { return false }
        let r = try? Route.resolve(method: "POST", uri: head.uri)
        return r == .adapters || r == .loadLoRAAdapter
    }

    static func routeLabel(_ head: HTTPRequestHead) -> String {
        (try? Route.resolve(method: head.method.rawValue, uri: head.uri).template) ?? "other"
    }
}

/// Answers a request NIO's HTTP parser rejects (bad Content-Length, oversized headers, garbage request line) with
/// the API's JSON error body: 431 for header fields too large (RFC 6585 §5), 400 otherwise, then the connection
/// closes (the parser's state is lost). In the place and with the bookkeeping of NIO's
/// `HTTPServerProtocolErrorHandler`, whose bare 400 it replaces: nothing is written while a response is unfinished.
final class ProtocolErrorHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private var responding = false

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let parserError = error as? HTTPParserError else {
            context.fireErrorCaught(error)
            return
        }
        if !responding {
            let tooLarge = parserError == .headerOverflow
            let err = APIError(
                status: tooLarge ? 431 : 400,
                message: tooLarge
                    ? "The request's header fields are too large."
                    : "The request is not valid HTTP/1.1 (\(parserError)).",
                type: "invalid_request_error", code: tooLarge ? "headers_too_large" : "invalid_http")
            let body = context.channel.allocator.buffer(string: err.body.serialized)
            let head = HTTPResponseHead(
                version: .http1_1, status: HTTPResponseStatus(statusCode: err.status),
                headers: HTTPHeaders([
                    ("Connection", "close"), ("Content-Type", "application/json"),
                    ("Content-Length", String(body.readableBytes)), ("Server", "lorad"),
                ]))
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
        context.fireErrorCaught(error)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let h) where h.status.code >= 200: responding = true
        case .end: responding = false
        default: break
        }
        context.write(data, promise: promise)
    }
}

/// Closes a connection that stays silent too long while lorad waits for a request or the rest of one (a client
/// that sends half a body, or an idle keep-alive connection). While a response is being produced the client
/// owes nothing, so silence then is fine (long generations stream for minutes).
final class RequestReadTimeoutHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private var responding = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .end = unwrapInboundIn(data) { responding = true }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) { responding = false }
        context.write(data, promise: promise)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read, !responding {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}
