// APIError: every failure a client can cause or observe maps to exactly one HTTP status and an OpenAI-style
// body {"error": {"message", "type", "param", "code"}}. Handlers throw these; nothing else reaches the wire.

/// An error returned to an HTTP client.
///
/// The body shape follows OpenAI's API reference ("Error codes"): `type` is the OpenAI category
/// (`invalid_request_error`, `not_found_error`, ...), `code` a stable machine-readable string or `null`.
public struct APIError: Error, Sendable, Equatable, CustomStringConvertible {
    /// HTTP status code (400, 403, 404, 405, 413, 500, 503).
    public var status: Int
    public var message: String
    public var type: String
    public var param: String?
    public var code: String?
    /// Extra response headers, e.g. `Allow` for 405 and `Retry-After` for 503.
    public var headers: [(String, String)]

    public init(
        status: Int, message: String, type: String, param: String? = nil, code: String? = nil,
        headers: [(String, String)] = []
    ) {
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers
    }

    public static func == (lhs: APIError, rhs: APIError) -> Bool {
        lhs.status == rhs.status && lhs.message == rhs.message && lhs.type == rhs.type && lhs.param == rhs.param
            && lhs.code == rhs.code && lhs.headers.map { "\($0.0):\($0.1)" } == rhs.headers.map { "\($0.0):\($0.1)" }
    }

    public var description: String { "\(status) \(type): \(message)" }

    /// The JSON body `{"error": {...}}`.
    public var body: JSONValue {
        .object([
            (
                "error",
                .object([
                    ("message", .string(message)),
                    ("type", .string(type)),
                    ("param", .optional(param)),
                    ("code", .optional(code)),
                ])
            )
        ])
    }

    // MARK: - Constructors, one per situation

    /// 400: a field has a wrong type or value.
    public static func invalidRequest(_ message: String, param: String? = nil, code: String? = nil) -> APIError {
        APIError(status: 400, message: message, type: "invalid_request_error", param: param, code: code)
    }

    /// 400: the body is not valid JSON.
    public static func malformedJSON(_ detail: String) -> APIError {
        APIError(
            status: 400, message: "The request body is not valid JSON: \(detail)", type: "invalid_request_error",
            code: "invalid_json")
    }

    /// 400: prompt plus requested completion exceed the context (names both numbers, like vLLM/OpenAI).
    public static func contextLengthExceeded(context: Int, promptTokens: Int, maxTokens: Int, param: String)
        -> APIError
    {
        APIError(
            status: 400,
            message: "This model's maximum context length is \(context) tokens. However, you requested "
                + "\(promptTokens + maxTokens) tokens (\(promptTokens) in the prompt, \(maxTokens) for the "
                + "completion). Please reduce the prompt or max_tokens.",
            type: "invalid_request_error", param: param, code: "context_length_exceeded")
    }

    /// 403: browsers must never reach the socket (requests with Origin/Referer are refused).
    public static func forbiddenBrowser(header: String) -> APIError {
        APIError(
            status: 403,
            message: "Requests carrying a \(header) header are refused: lorad does not serve web browsers.",
            type: "permission_error", code: "browser_request_refused")
    }

    /// 404: unknown model id.
    public static func modelNotFound(_ model: String, available: String) -> APIError {
        APIError(
            status: 404, message: "The model '\(model)' does not exist. Available: \(available).",
            type: "not_found_error", param: "model", code: "model_not_found")
    }

    /// 404: unknown route.
    public static func routeNotFound(method: String, path: String) -> APIError {
        APIError(
            status: 404, message: "No route for \(method) \(path).", type: "not_found_error", code: "route_not_found")
    }

    /// 405 with an `Allow` header listing the accepted methods.
    public static func methodNotAllowed(method: String, path: String, allowed: [String]) -> APIError {
        APIError(
            status: 405, message: "Method \(method) is not allowed on \(path); use \(allowed.joined(separator: ", ")).",
            type: "invalid_request_error", code: "method_not_allowed",
            headers: [("Allow", allowed.joined(separator: ", "))])
    }

    /// 413: body larger than the configured limit (detected while reading).
    public static func bodyTooLarge(limit: Int) -> APIError {
        APIError(
            status: 413, message: "The request body exceeds the limit of \(limit) bytes.",
            type: "invalid_request_error", code: "request_too_large")
    }

    /// 503 with `Retry-After` (seconds): the wait queue is full, the model is loading, or the daemon is draining.
    public static func unavailable(_ message: String, retryAfter: Int, code: String) -> APIError {
        APIError(
            status: 503, message: message, type: "service_unavailable_error", code: code,
            headers: [("Retry-After", String(retryAfter))])
    }

    /// 500: a failure inside lorad (e.g. the forward pass threw).
    public static func internalError(_ message: String) -> APIError {
        APIError(status: 500, message: message, type: "internal_error", code: "internal_error")
    }
}
