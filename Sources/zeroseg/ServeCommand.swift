import ArgumentParser
import Foundation
import ZeroSeg
import ZeroSegCore
import ZeroSegService

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve segmentation, embeddings and index search over HTTP, and a web page at / (docs/serve.md).",
        discussion: """
            The model is loaded once. API: POST /v1/segment, /v1/embed, /v1/search; GET /healthz, /metrics, \
            /openapi.json. SIGTERM or Ctrl-C: new requests get 503 while those in flight finish, then the server stops.
            """)

    @Option(help: "Address to bind (default loopback only; 0.0.0.0 opens the server to the network).")
    var host = "127.0.0.1"

    @Option(help: "TCP port (0: any free port; the one bound is printed).")
    var port = 8080

    @OptionGroup var options: ModelOptions

    @Option(help: "An index made by `zeroseg index`, for POST /v1/search and the page's search tab (the model defaults to the index's).")
    var index: String?

    @Option(help: "Require `Authorization: Bearer TOKEN` on /v1/* and /metrics.")
    var token: String?

    @Option(help: "Largest request body in bytes (413 above).")
    var maxUploadBytes = ServiceLimits().maxUploadBytes

    @Option(help: "Largest image in pixels, width x height (413 above).")
    var maxPixels = ServiceLimits().maxPixels

    @Option(help: "Most classes in one segmentation request (400 above).")
    var maxClasses = ServiceLimits().maxClasses

    @Option(help: "Most texts in one embedding request (400 above).")
    var maxTexts = ServiceLimits().maxTexts
    @Option(help: "Most images in one embedding request (400 above).")
    var maxImages = ServiceLimits().maxImages

    @Option(help: "Requests computed at once (each with --threads threads).")
    var workers = ServiceLimits().workers

    @Option(help: "Requests that may wait for a worker; more get 503 with Retry-After.")
    var queue = ServiceLimits().queueDepth

    @Option(help: "Seconds from a request's arrival to its answer before it gets 503.")
    var requestTimeout = ServiceLimits().requestTimeout

    @Option(help: "Seconds a shutdown waits for requests in flight.")
    var shutdownTimeout = ServiceLimits().shutdownTimeout

    func validate() throws {
        try validating { try serviceOptions().validate() }
    }

    func serviceOptions() -> ServiceOptions {
        var o = ServiceOptions()
        o.host = host; o.port = port; o.token = token; o.threads = options.threads
        o.limits.maxUploadBytes = maxUploadBytes; o.limits.maxPixels = maxPixels; o.limits.maxClasses = maxClasses
        o.limits.maxTexts = maxTexts; o.limits.maxImages = maxImages; o.limits.workers = workers; o.limits.queueDepth = queue
        o.limits.requestTimeout = requestTimeout; o.limits.shutdownTimeout = shutdownTimeout
        return o
    }

    func run() throws {
        let o = serviceOptions()
        if o.bindsBeyondLoopback {
            printErr("warning: binding \(o.host): the server is reachable from the network\(o.token == nil ? " with no --token" : "")")
        }
        let idx = try index.map { try EmbeddingIndex.open(at: URL(fileURLWithPath: $0)) }
        var modelOptions = options
        if modelOptions.model == nil, let idx { modelOptions.model = idx.identity.source }
        var clock = Stopwatch()
        let model = try modelOptions.load()
        let loadSeconds = clock.lap()
        let service = try ZeroSegService(model: model, index: idx, options: o, modelLoadSeconds: loadSeconds)
        if model.isSynthetic { printErr("warning: serving SYNTHETIC random weights: the labels are meaningless") }
        let host = o.host.contains(":") ? "[\(o.host)]" : o.host
        let outcome = Locked<Result<Void, any Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        Task {
            do {
                try await service.run { port in printErr("listening on http://\(host):\(port)") }
                outcome.withLock { $0 = .success(()) }
            } catch {
                outcome.withLock { $0 = .failure(error) }
            }
            done.signal()
        }
        done.wait()
        if case .failure(let e)? = outcome.withLock({ $0 }) {
            throw ZeroSegError.io("cannot serve on \(host):\(o.port): \(e)")
        }
        printErr("stopped")
    }
}
