import Foundation
import Hummingbird
import ZeroSeg

/// An answer other than 2xx: a status and one line, sent as `{"error": "...", "status": N}`.
struct APIError: Error, Sendable {
    var status: HTTPResponse.Status
    var message: String
    /// Seconds for Retry-After (503).
    var retryAfter: Int?

    init(_ status: HTTPResponse.Status, _ message: String, retryAfter: Int? = nil) {
        self.status = status
        self.message = message
        self.retryAfter = retryAfter
    }

    /// Any error as the API answers it.
    static func from(_ error: any Error, retryAfter: Int) -> APIError {
        switch error {
        case let e as APIError:
            return e
        case let e as ZeroSegError:
            switch e.kind {
            case .invalidArgument, .badInput, .unsupported: return APIError(.badRequest, e.message)
            case .limitExceeded: return APIError(.contentTooLarge, e.message)
            case .badModel, .io, .other: return APIError(.internalServerError, e.message)
            }
        case let e as PoolRefusal:
            switch e {
            case .full: return APIError(.serviceUnavailable, "busy: every worker is computing and the queue is full", retryAfter: retryAfter)
            case .timedOut(let s): return APIError(.serviceUnavailable, "timed out: no answer within \(Int(s)) s", retryAfter: retryAfter)
            case .stopped: return APIError(.serviceUnavailable, "the server is shutting down", retryAfter: retryAfter)
            }
        case let e as HTTPError:
            let text = e.body ?? e.status.reasonPhrase
            if e.status == .contentTooLarge { return APIError(.contentTooLarge, "the request body is larger than the upload limit") }
            return APIError(e.status, text.split(separator: "\n").first.map(String.init) ?? text)
        default:
            let line = "\(error)".split(separator: "\n").first.map(String.init) ?? "internal error"
            return APIError(.internalServerError, line)
        }
    }

    var response: Response {
        var headers: HTTPFields = [.contentType: "application/json; charset=utf-8"]
        if let retryAfter { headers[.retryAfter] = String(retryAfter) }
        if status == .unauthorized { headers[.wwwAuthenticate] = "Bearer" }
        let body = (try? JSONSerialization.data(withJSONObject: ["error": message, "status": status.code], options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body + [0x0A])))
    }
}
