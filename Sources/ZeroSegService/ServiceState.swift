import Foundation
import Hummingbird
import ZeroSeg

/// Requests in flight and the drain flag, shared by the middleware and the shutdown.
final class ServiceState: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    private var isDraining = false
    private var stopper: (@Sendable () async -> Void)?

    var inFlight: Int { lock.withLock { count } }
    var draining: Bool { lock.withLock { isDraining } }

    func enter() { lock.withLock { count += 1 } }
    func leave() { lock.withLock { count -= 1 } }

    /// Sets the drain flag; false when it was already set.
    func beginDraining() -> Bool {
        lock.withLock {
            if isDraining { return false }
            isDraining = true
            return true
        }
    }

    func setStopper(_ stop: @escaping @Sendable () async -> Void) { lock.withLock { stopper = stop } }
    func stop() async { await lock.withLock({ stopper })?() }
}

/// In front of every route: counts requests in flight, answers 503 while draining, checks the
/// bearer token, turns every error into the JSON error line, and records the metrics.
struct ServiceMiddleware<Context: RequestContext>: RouterMiddleware {
    let service: ZeroSegService

    /// Routes open without the token: the page and its files, the API document, liveness.
    static var open: Set<String> { ["/", "/app.js", "/app.css", "/openapi.json", "/healthz"] }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = ContinuousClock.now
        let state = service.state
        state.enter()
        defer { state.leave() }
        let route = ServiceMetrics.route(of: request.uri.path)
        let retry = service.options.limits.retryAfter
        var response: Response
        if state.draining && route != "/healthz" {
            response = APIError(.serviceUnavailable, "the server is shutting down", retryAfter: retry).response
            response.headers[.connection] = "close"
        } else if let token = service.options.token, !Self.open.contains(route), !Self.authorized(request, token: token) {
            response = APIError(.unauthorized, "missing or wrong bearer token (Authorization: Bearer TOKEN)").response
        } else {
            do { response = try await next(request, context) } catch let e as HTTPError where e.status == .notFound && e.body == nil {
                let allowed = ZeroSegService.methods(of: request.uri.path)
                if allowed.isEmpty {
                    response = APIError(.notFound, "no route \(request.method.rawValue) \(request.uri.path.prefix(200))").response
                } else {
                    let allow = allowed.map { $0.uppercased() }.joined(separator: ", ")
                    response = APIError(.methodNotAllowed, "\(request.method.rawValue.prefix(20)) \(request.uri.path): use \(allow)").response
                    response.headers[.allow] = allow
                }
            } catch {
                response = APIError.from(error, retryAfter: retry).response
            }
        }
        let elapsed = ContinuousClock.now - start
        service.metrics.record(route: route, status: Int(response.status.code),
                               seconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18)
        return response
    }

    /// `Authorization: Bearer <token>`, compared in constant time.
    static func authorized(_ request: Request, token: String) -> Bool {
        guard let header = request.headers[.authorization], header.lowercased().hasPrefix("bearer ") else { return false }
        let given = Array(header.dropFirst(7).trimmingCharacters(in: .whitespaces).utf8), want = Array(token.utf8)
        var diff = UInt8(given.count == want.count ? 0 : 1)
        for i in 0..<want.count { diff |= want[i] ^ (i < given.count ? given[i] : 0) }
        return diff == 0
    }
}

/// The web page's files and the OpenAPI document, read once from the module's resources.
struct WebAssets: Sendable {
    enum Asset { case page, script, style, openAPI }
    let page: ByteBuffer, script: ByteBuffer, style: ByteBuffer, openAPI: ByteBuffer

    static func load() throws -> WebAssets {
        func read(_ name: String, _ ext: String, in dir: String?) throws -> ByteBuffer {
            guard let url = Bundle.module.url(forResource: name, withExtension: ext, subdirectory: dir),
                  let d = FileManager.default.contents(atPath: url.path) else {
                throw ZeroSegError("the service's resource \(dir.map { $0 + "/" } ?? "")\(name).\(ext) is missing from the installation")
            }
            return ByteBuffer(bytes: d)
        }
        return WebAssets(page: try read("index", "html", in: "Web"), script: try read("app", "js", in: "Web"),
                         style: try read("app", "css", in: "Web"), openAPI: try read("openapi", "json", in: nil))
    }

    /// The OpenAPI document's bytes.
    static func openAPIDocument() throws -> Data { Data(try load().openAPI.readableBytesView) }

    func response(_ a: Asset) -> Response {
        let (buffer, type): (ByteBuffer, String) = switch a {
        case .page: (page, "text/html; charset=utf-8")
        case .script: (script, "text/javascript; charset=utf-8")
        case .style: (style, "text/css; charset=utf-8")
        case .openAPI: (openAPI, "application/json")
        }
        return Response(status: .ok, headers: [.contentType: type, .cacheControl: "no-cache"], body: .init(byteBuffer: buffer))
    }
}
