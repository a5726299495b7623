// Routes: the one route table. Paths are matched exactly (query strings ignored); each route accepts one
// method, and any other method gets 405 with `Allow`.

/// A resolved route.
public enum Route: Sendable, Equatable {
    case health
    case status
    case metrics
    case models
    case model(id: String)
    case completions
    case chatCompletions

    /// Route template used as the `route` label in metrics.
    public var template: String {
        switch self {
        case .health: return "/health"
        case .status: return "/v1/status"
        case .metrics: return "/metrics"
        case .models: return "/v1/models"
        case .model: return "/v1/models/{id}"
        case .completions: return "/v1/completions"
        case .chatCompletions: return "/v1/chat/completions"
        }
    }

    /// The accepted method.
    public var method: String {
        switch self {
        case .completions, .chatCompletions: return "POST"
        default: return "GET"
        }
    }

    /// Resolves `method` + request target.
    /// - Throws: ``APIError`` 404 for an unknown path, 405 (with `Allow`) for a wrong method.
    public static func resolve(method: String, uri: String) throws -> Route {
        var path = Substring(uri)
        if let q = path.firstIndex(where: { $0 == "?" || $0 == "#" }) { path = path[..<q] }
        while path.count > 1 && path.hasSuffix("/") { path = path.dropLast() }
        let route: Route
        switch path {
        case "/health": route = .health
        case "/v1/status": route = .status
        case "/metrics": route = .metrics
        case "/v1/models": route = .models
        case "/v1/completions": route = .completions
        case "/v1/chat/completions": route = .chatCompletions
        default:
            let prefix = "/v1/models/"
            if path.hasPrefix(prefix), path.count > prefix.count {
                let id = String(path.dropFirst(prefix.count))
                route = .model(id: id.removingPercentEncodingSafely())
            } else {
                throw APIError.routeNotFound(method: method, path: String(path))
            }
        }
        guard method == route.method else {
            throw APIError.methodNotAllowed(method: method, path: String(path), allowed: [route.method])
        }
        return route
    }

    /// 403 when the request comes from a web page: browsers always send `Origin` on cross-origin POSTs and
    /// usually `Referer`; lorad's clients (curl, SDKs, loractl) send neither.
    public static func checkNotBrowser(headerNames: [String]) throws {
        for name in headerNames {
            let lower = name.lowercased()
            if lower == "origin" { throw APIError.forbiddenBrowser(header: "Origin") }
            if lower == "referer" { throw APIError.forbiddenBrowser(header: "Referer") }
        }
    }
}

extension String {
    /// Percent-decodes `%XX` escapes; malformed escapes are kept as they are.
    func removingPercentEncodingSafely() -> String {
        var bytes: [UInt8] = []
        let u = Array(utf8)
        var i = 0
        func hex(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: return c - 48
            case 65...70: return c - 55
            case 97...102: return c - 87
            default: return nil
            }
        }
        while i < u.count {
            if u[i] == 37, i + 2 < u.count, let h = hex(u[i + 1]), let l = hex(u[i + 2]) {
                bytes.append(h << 4 | l)
                i += 3
            } else {
                bytes.append(u[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
