import Foundation
import ZeroSeg

/// The limits of the HTTP service, each with a stated default (docs/serve.md). A request over a
/// limit gets a one-line JSON error: 413 for bytes and pixels, 400 for counts, 503 (with
/// Retry-After) for a full queue or a request that waited past the timeout.
public struct ServiceLimits: Sendable, Equatable {
    /// Largest request body, in bytes (413 above).
    public var maxUploadBytes = 20 * 1024 * 1024
    /// Largest image, in pixels (width x height from the file's header, 413 above; refused
    /// before the pixels are decoded).
    public var maxPixels = 16_000_000
    /// Most classes (names separated by commas) in one segmentation request (400 above).
    public var maxClasses = 64
    /// Most texts and most images in one embedding request (400 above).
    public var maxTexts = 256
    public var maxImages = 16
    /// Longest text field (class list, query, one text), in bytes (400 above).
    public var maxTextBytes = 16 * 1024
    /// Requests computed at once (each with all `threads`), and requests that may wait for
    /// them; more at once get 503.
    public var workers = 1
    public var queueDepth = 8
    /// Seconds a request may take from its arrival to its answer (503 after). A request that
    /// is still waiting is dropped; one that is computing finishes, but its answer is dropped.
    public var requestTimeout: Double = 120
    /// The Retry-After of a 503, in seconds.
    public var retryAfter = 2
    /// Idle seconds before a keep-alive connection is closed.
    public var idleTimeout: Double = 60
    /// Seconds a shutdown waits for requests in flight before it stops anyway.
    public var shutdownTimeout: Double = 30

    public init() {}

    public func validate() throws {
        func check(_ ok: Bool, _ what: String, _ parameter: String) throws {
            if !ok { throw ZeroSegError.invalidArgument("\(what)", parameter: parameter) }
        }
        try check(maxUploadBytes >= 1024 && maxUploadBytes <= 1 << 30, "the upload limit must be between 1 KiB and 1 GiB", "maxUploadBytes")
        try check(maxPixels >= 1 && maxPixels <= RGBImage.defaultMaxPixels, "the pixel limit must be between 1 and \(RGBImage.defaultMaxPixels)", "maxPixels")
        try check(maxClasses >= 1 && maxClasses <= maxPaletteClasses, "the class limit must be between 1 and \(maxPaletteClasses)", "maxClasses")
        try check(maxTexts >= 1 && maxTexts <= 10_000, "the text limit must be between 1 and 10000", "maxTexts")
        try check(maxImages >= 1 && maxImages <= 1_000, "the image limit must be between 1 and 1000", "maxImages")
        try check(maxTextBytes >= 64 && maxTextBytes <= 1 << 20, "the text-field limit must be between 64 bytes and 1 MiB", "maxTextBytes")
        try check(workers >= 1 && workers <= 64, "workers must be between 1 and 64", "workers")
        try check(queueDepth >= 0 && queueDepth <= 10_000, "the queue depth must be between 0 and 10000", "queueDepth")
        try check(requestTimeout > 0 && requestTimeout <= 86_400, "the request timeout must be between 0 and 86400 seconds", "requestTimeout")
        try check(retryAfter >= 1 && retryAfter <= 3600, "Retry-After must be between 1 and 3600 seconds", "retryAfter")
        try check(idleTimeout > 0 && idleTimeout <= 86_400, "the idle timeout must be between 0 and 86400 seconds", "idleTimeout")
        try check(shutdownTimeout >= 0 && shutdownTimeout <= 86_400, "the shutdown timeout must be between 0 and 86400 seconds", "shutdownTimeout")
    }
}

/// How `ZeroSegService` listens and computes.
public struct ServiceOptions: Sendable {
    /// Address to bind; 127.0.0.1 (loopback) unless the caller chooses otherwise.
    public var host = "127.0.0.1"
    /// TCP port; 0 picks a free one (`ZeroSegService.run` reports it).
    public var port = 8080
    /// When set, every /v1 route and /metrics need `Authorization: Bearer <token>`.
    public var token: String?
    /// Threads each request computes with.
    public var threads = defaultThreads
    public var limits = ServiceLimits()
    /// Embeddings of class names kept in memory (besides the cache on disk).
    public var textCacheEntries = 4096

    public init() {}

    /// Whether `host` is reachable from other machines (anything but loopback).
    public var bindsBeyondLoopback: Bool {
        !(host == "127.0.0.1" || host == "::1" || host == "localhost" || host.hasPrefix("127."))
    }

    public func validate() throws {
        try limits.validate()
        guard (0...65_535).contains(port) else { throw ZeroSegError.invalidArgument("the port must be between 0 and 65535", parameter: "port") }
        guard threads >= 1 && threads <= 256 else { throw ZeroSegError.invalidArgument("threads must be between 1 and 256", parameter: "threads") }
        if let token, token.isEmpty || token.contains(where: { $0.isWhitespace }) {
            throw ZeroSegError.invalidArgument("the token must be non-empty, without spaces", parameter: "token")
        }
    }
}
