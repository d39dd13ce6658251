import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import ZeroSeg

/// `zeroseg serve`: segmentation, embeddings and index search over HTTP, and the web page
/// (docs/serve.md). The model is loaded once by the caller and shared; class embeddings are
/// cached in memory and on disk for every request; requests compute on a bounded pool of
/// workers (`ServiceLimits`). Nothing a request sends is written to disk (only the caches).
///
/// ```swift
/// let service = try ZeroSegService(model: model, index: nil, options: ServiceOptions())
/// try await service.run { port in print("listening on \(port)") }
/// ```
public final class ZeroSegService: Sendable {
    public let model: CLIPModel
    public let index: EmbeddingIndex?
    public let options: ServiceOptions
    let cache: TextEmbeddingCache
    let pool: WorkerPool
    let metrics: ServiceMetrics
    let state = ServiceState()
    let assets: WebAssets

    /// `index` must have been made with `model` (checked). `modelLoadSeconds` is reported in
    /// the metrics.
    public init(model: CLIPModel, index: EmbeddingIndex?, options: ServiceOptions, modelLoadSeconds: Double = 0,
                textCacheRoot: URL? = nil) throws {
        try options.validate()
        if let index { try index.check(model: model) }
        self.model = model
        self.index = index
        self.options = options
        cache = textCacheRoot.map { TextEmbeddingCache(model: model, root: $0, memoryEntries: options.textCacheEntries) }
            ?? TextEmbeddingCache(model: model, memoryEntries: options.textCacheEntries)
        pool = WorkerPool(workers: options.limits.workers, queueDepth: options.limits.queueDepth)
        metrics = ServiceMetrics(modelLoadSeconds: modelLoadSeconds)
        assets = try WebAssets.load()
    }

    /// Stops the workers (requests waiting get 503). For tests and embedders; `run` does it at
    /// its end.
    public func close() { pool.stop() }

    var limits: ServiceLimits { options.limits }

    // MARK: Routes

    /// Every route, behind the service's middleware (drain, token, errors as JSON, metrics).
    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.middlewares.add(ServiceMiddleware(service: self))
        router.get("/") { _, _ in self.assets.response(.page) }
        router.get("/app.js") { _, _ in self.assets.response(.script) }
        router.get("/app.css") { _, _ in self.assets.response(.style) }
        router.get("/openapi.json") { _, _ in self.assets.response(.openAPI) }
        router.get("/healthz") { _, _ in self.health() }
        router.get("/metrics") { _, _ in self.metricsResponse() }
        router.get("/v1/info") { _, _ in try self.info() }
        router.post("/v1/segment") { request, _ in try await self.segment(request) }
        router.post("/v1/embed") { request, _ in try await self.embed(request) }
        router.post("/v1/search") { request, _ in try await self.search(request) }
        router.get("/v1/images/{id}") { request, context in try await self.image(request, context: context) }
        return router
    }

    /// The methods and paths `router()` answers (checked against openapi.json by a test).
    public static let routes: [(method: String, path: String)] = [
        ("get", "/"), ("get", "/app.js"), ("get", "/app.css"), ("get", "/openapi.json"), ("get", "/healthz"), ("get", "/metrics"),
        ("get", "/v1/info"), ("post", "/v1/segment"), ("post", "/v1/embed"), ("post", "/v1/search"), ("get", "/v1/images/{id}"),
    ]

    /// The methods `routes` answers at `path` ("{id}" matches one segment); empty: no such path.
    static func methods(of path: String) -> [String] {
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        return routes.filter { r in
            let t = r.path.split(separator: "/", omittingEmptySubsequences: false)
            return t.count == parts.count && zip(t, parts).allSatisfy { $0 == "{id}" ? !$1.isEmpty : $0 == $1 }
        }.map(\.method)
    }

    // MARK: Running

    /// Binds `options.host:options.port` and serves until SIGTERM or SIGINT (or `shutdown()`):
    /// then new requests get 503 while those in flight finish (at most
    /// `limits.shutdownTimeout` seconds), and the server stops. A second signal stops at once.
    /// `onRunning` gets the bound port.
    public func run(onRunning: @escaping @Sendable (Int) -> Void = { _ in }) async throws {
        var logger = Logger(label: "zeroseg.serve")
        logger.logLevel = .error
        let app = Application(
            router: router(),
            server: .http1(configuration: .init(idleTimeout: .milliseconds(Int64(limits.idleTimeout * 1000)))),
            configuration: .init(address: .hostname(options.host, port: options.port), serverName: "zeroseg/\(ZeroSeg.version)"),
            onServerRunning: { channel in onRunning(channel.localAddress?.port ?? self.options.port) },
            logger: logger)
        let group = ServiceGroup(configuration: .init(services: [app], gracefulShutdownSignals: [], cancellationSignals: [], logger: logger))
        state.setStopper { await group.triggerGracefulShutdown() }
        let signals = SignalWatcher { [self] _, second in
            if second { Task { await group.triggerGracefulShutdown() } } else { Task { await self.shutdown() } }
        }
        defer { signals.cancel(); pool.stop() }
        try await group.run()
    }

    /// Stops taking requests (they get 503), waits for those in flight (at most
    /// `limits.shutdownTimeout` seconds), then stops the server.
    public func shutdown() async {
        guard state.beginDraining() else { return }
        let deadline = ContinuousClock.now + .milliseconds(Int64(limits.shutdownTimeout * 1000))
        // The request that asked for nothing: in flight counts requests being answered.
        while state.inFlight > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        pool.stop()
        await state.stop()
    }

    // MARK: Handlers

    func health() -> Response {
        if state.draining {
            var r = json(["status": "draining"], status: .serviceUnavailable)
            r.headers[.retryAfter] = String(limits.retryAfter)
            return r
        }
        return json(["status": "ok"])
    }

    func metricsResponse() -> Response {
        metrics.queueLength.set(Double(pool.waiting))
        metrics.workersBusy.set(Double(pool.busy))
        metrics.inFlight.set(Double(state.inFlight))
        metrics.textCache.set(Double(cache.memoryCount))
        return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                        body: .init(byteBuffer: ByteBuffer(string: metrics.text())))
    }

    func info() throws -> Response {
        var idx: Any = NSNull()
        if let index {
            idx = ["path": index.directory.path, "images": try index.imageCount(), "regions": index.regionMode.rawValue] as [String: Any]
        }
        let l = limits
        let body: [String: Any] = [
            "zeroseg_version": ZeroSeg.version,
            "model": ["source": model.source, "fingerprint": model.fingerprint, "synthetic": model.isSynthetic,
                      "precision": model.precision.rawValue],
            "index": idx,
            "auth": options.token != nil,
            "limits": ["max_upload_bytes": l.maxUploadBytes, "max_pixels": l.maxPixels, "max_classes": l.maxClasses,
                       "max_texts": l.maxTexts, "max_images": l.maxImages, "max_text_bytes": l.maxTextBytes, "workers": l.workers,
                       "queue_depth": l.queueDepth, "request_timeout": l.requestTimeout, "threads": options.threads],
        ]
        return json(body)
    }

    /// The body as fields, within the upload limit (413 above it, told by Content-Length before
    /// any byte is read when the client sends one).
    func form(_ request: Request, fileFields: Set<String>) async throws -> RequestForm {
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > limits.maxUploadBytes {
            throw APIError(.contentTooLarge, "the request body has \(length) bytes, above the upload limit of \(limits.maxUploadBytes)")
        }
        var request = request
        let body: ByteBuffer
        do { body = try await request.collectBody(upTo: limits.maxUploadBytes) } catch let e as HTTPError where e.status == .contentTooLarge {
            throw APIError(.contentTooLarge, "the request body is above the upload limit of \(limits.maxUploadBytes) bytes")
        }
        return try RequestForm.parse(body, contentType: request.headers[.contentType], fileFields: fileFields)
    }

    /// Runs `job` on a worker within the request timeout.
    func compute<T: Sendable>(_ job: @escaping @Sendable () throws -> T) async throws -> T {
        try await pool.run(timeout: limits.requestTimeout, job)
    }

    func decode(_ file: FormField, what: String) throws -> RGBImage {
        do { return try RGBImage.decode(data: Data(file.bytes), maxPixels: limits.maxPixels) } catch let e as ZeroSegError {
            let message = e.message.replacingOccurrences(of: "image data", with: what)
            throw e.with(message: message)
        }
    }

    // POST /v1/segment
    static let segmentFields: Set<String> = ["image", "classes", "background", "method", "templates", "short-side", "window", "stride",
                                             "no-window", "logit-scale", "refine", "threshold", "mode", "proposals", "max-proposals",
                                             "min-area", "crop-margin", "fusion-lambda", "region-features"]

    func segment(_ request: Request) async throws -> Response {
        let form = try await form(request, fileFields: ["image"])
        let (file, name, classes, settings) = try segmentRequest(form)
        let cache = self.cache, model = self.model, threads = options.threads
        let encoded = try await compute { [self] in
            let start = Date()
            let image = try decode(file, what: "image \(name)")
            let pipeline = try SegmentationPipeline(model: model, classes: classes, settings: settings, threads: threads, cache: cache)
            let (r, regions) = try pipeline.segment(image, input: URL(fileURLWithPath: "/upload/\(name)"), wantScores: true)
            var timings = r.timings
            timings["text"] = pipeline.textSeconds
            timings["total"] = Date().timeIntervalSince(start)
            return try pipeline.encodedOutputs(r, image: image, name: name, regions: regions, timings: timings)
        }
        return try jsonResponse(SegmentResponse(record: encoded.record, png: .init(encoded)))
    }

    /// The request's image, its name, classes and settings, checked before any work is queued.
    func segmentRequest(_ form: RequestForm) throws -> (FormField, String, ClassSet, SegmentationSettings) {
        try form.checkKnown(Self.segmentFields)
        let m = limits.maxTextBytes
        let files = try form.files("image")
        guard files.count == 1 else { throw APIError(.badRequest, files.isEmpty ? "image: give a JPEG or PNG file" : "image: give one file, not \(files.count)") }
        guard let text = try form.text("classes", maxBytes: m), !text.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw APIError(.badRequest, "classes: give comma-separated class names, e.g. \"cat,grass|lawn,wall\"")
        }
        let classes = try ClassSet.parse(text, background: try form.text("background", maxBytes: m))
        guard classes.classes.count <= limits.maxClasses else {
            throw APIError(.badRequest, "classes: \(classes.classes.count) classes, above the limit of \(limits.maxClasses)")
        }
        var s = SegmentationSettings()
        if let v = try form.choice("method", DenseMethod.self, maxBytes: m) { s.options.method = v }
        if let v = try form.text("templates", maxBytes: m) {
            guard v == "imagenet80" || v == "single" else { throw APIError(.badRequest, "templates: imagenet80 or single (files are not read from requests)") }
            s.templates = v
        }
        if let v = try form.int("short-side", maxBytes: m) { s.options.shortSide = v }
        if let v = try form.int("window", maxBytes: m) { s.options.window = v }
        if let v = try form.int("stride", maxBytes: m) { s.options.stride = v }
        if let v = try form.bool("no-window", maxBytes: m) { s.options.useWindows = !v }
        if let v = try form.float("logit-scale", maxBytes: m) { s.options.logitScale = Float(v) }
        if let v = try form.choice("refine", Refinement.self, maxBytes: m) { s.options.refine = v }
        if let v = try form.float("threshold", maxBytes: m) { s.options.threshold = Float(v) }
        if let v = try form.choice("mode", SegmentationMode.self, maxBytes: m) { s.mode = v }
        let twoStageFields = ["proposals", "max-proposals", "min-area", "crop-margin", "fusion-lambda", "region-features"]
        if s.mode == .oneStage, let f = twoStageFields.first(where: { !form.all($0).isEmpty }) {
            throw APIError(.badRequest, "\(f): needs mode two-stage")
        }
        if let v = try form.choice("proposals", ProposalSource.self, maxBytes: m) { s.twoStage.proposals = v }
        if let v = try form.int("max-proposals", maxBytes: m) { s.twoStage.proposalSettings.maxProposals = v }
        if let v = try form.int("min-area", maxBytes: m) { s.twoStage.proposalSettings.minArea = v }
        if let v = try form.float("crop-margin", maxBytes: m) { s.twoStage.cropMargin = v }
        if let v = try form.float("fusion-lambda", maxBytes: m) { s.twoStage.fusionLambda = Float(v) }
        if let v = try form.choice("region-features", RegionFeatures.self, maxBytes: m) { s.twoStage.regionFeatures = v }
        do { try s.validate() } catch let e as ZeroSegError {
            throw APIError(.badRequest, Self.fieldMessage(e))
        }
        return (files[0], Self.uploadName(files[0].filename), classes, s)
    }

    /// A library error about a parameter, named as the request's field.
    static func fieldMessage(_ e: ZeroSegError) -> String {
        let fields = ["shortSide": "short-side", "window": "window", "stride": "stride", "logitScale": "logit-scale", "threshold": "threshold",
                      "cropMargin": "crop-margin", "fusionLambda": "fusion-lambda", "maxProposals": "max-proposals", "minArea": "min-area",
                      "classes": "classes", "background": "background", "mode": "mode", "k": "top", "negatives": "not"]
        if case .invalidArgument(let p?) = e.kind, let f = fields[p] { return "\(f): \(e.message)" }
        return e.message
    }

    /// The upload's file name for the record: its last path component, printable, at most 128
    /// characters ("upload" without one).
    static func uploadName(_ filename: String?) -> String {
        let base = (filename ?? "").split(whereSeparator: { $0 == "/" || $0 == "\\" }).last.map(String.init) ?? ""
        let clean = String(base.unicodeScalars.filter { !CharacterSet.controlCharacters.contains($0) }.prefix(128).map(Character.init))
        return clean.isEmpty ? "upload" : clean
    }

    // POST /v1/embed
    func embed(_ request: Request) async throws -> Response {
        let form = try await form(request, fileFields: ["image"])
        try form.checkKnown(["text", "image"])
        let texts = try form.texts("text", maxBytes: limits.maxTextBytes)
        let files = try form.files("image")
        guard !texts.isEmpty || !files.isEmpty else { throw APIError(.badRequest, "give at least one text or image") }
        guard texts.count <= limits.maxTexts else { throw APIError(.badRequest, "text: \(texts.count) texts, above the limit of \(limits.maxTexts)") }
        guard files.count <= limits.maxImages else { throw APIError(.badRequest, "image: \(files.count) images, above the limit of \(limits.maxImages)") }
        let model = self.model, threads = options.threads
        let data = try await compute { [self] in
            let images = try files.enumerated().map { try decode($0.element, what: "image \($0.offset + 1)") }
            let t = try texts.isEmpty ? [] : model.encodeText(texts, threads: threads)
            let i = try images.isEmpty ? [] : model.encodeImages(images, threads: threads)
            return try EmbeddingsOutput(text: t, image: i).jsonLine()
        }
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data + [0x0A])))
    }

    // POST /v1/search
    static let searchFields: Set<String> = ["text", "image", "not", "top", "regions", "all-regions", "templates", "engine"]

    func search(_ request: Request) async throws -> Response {
        guard let index else { throw APIError(.notFound, "this server has no index (start it with one to search)") }
        let form = try await form(request, fileFields: ["image"])
        try form.checkKnown(Self.searchFields)
        let m = limits.maxTextBytes
        let text = try form.text("text", maxBytes: m).flatMap { $0.trimmingCharacters(in: .whitespaces).isEmpty ? nil : $0 }
        let files = try form.files("image")
        guard files.count <= 1 else { throw APIError(.badRequest, "image: give one file, not \(files.count)") }
        guard text != nil || !files.isEmpty else { throw APIError(.badRequest, "give a text to search for, or an image") }
        let negatives = try form.texts("not", maxBytes: m)
        guard negatives.count <= limits.maxTexts else { throw APIError(.badRequest, "not: above the limit of \(limits.maxTexts) texts") }
        if negatives.contains(where: { $0.trimmingCharacters(in: .whitespaces).isEmpty }) { throw APIError(.badRequest, "not: empty text") }
        let top = try form.int("top", maxBytes: m) ?? 20
        guard (1...SearchOptions.maxK).contains(top) else { throw APIError(.badRequest, "top: must be between 1 and \(SearchOptions.maxK)") }
        let regions = try form.bool("regions", maxBytes: m) ?? false
        let allRegions = try form.bool("all-regions", maxBytes: m) ?? false
        if allRegions && !regions { throw APIError(.badRequest, "all-regions: needs regions") }
        if regions && index.regionMode == .none { throw APIError(.badRequest, "regions: the index has no regions") }
        let templatesName = try form.text("templates", maxBytes: m) ?? "imagenet80"
        guard templatesName == "imagenet80" || templatesName == "single" else { throw APIError(.badRequest, "templates: imagenet80 or single") }
        let engine = try form.choice("engine", SearchEngine.self, maxBytes: m) ?? .auto
        let imageName = files.first.map { Self.uploadName($0.filename) }
        let options = SearchOptions(k: top, kind: regions ? .region : .image, onePerImage: !allRegions, engine: engine)
        let model = self.model, cache = self.cache, threads = self.options.threads
        let line = try await compute { [self] in
            let image = try files.first.map { try decode($0, what: "image \(imageName ?? "")") }
            let query = SearchQuery(text: text, image: image, negatives: negatives, templates: try Templates.named(templatesName))
            let start = Date()
            let hits = try index.search(query, model: model, options: options, cache: cache, threads: threads)
            let record = SearchRecord(
                header: RecordHeader(command: "search", model: model, timings: ["search": Date().timeIntervalSince(start)], record: true),
                settings: .init(top: top, regions: regions, onePerImage: !allRegions,
                                engine: try index.resolvedEngine(engine, kind: options.kind), templates: templatesName, threads: threads),
                index: index.directory.path, query: .init(text: text, image: imageName, not: negatives), hits: hits)
            return try JSONOutput.line(record)
        }
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: line + "\n")))
    }

    // GET /v1/images/{id}
    func image(_ request: Request, context: BasicRequestContext) async throws -> Response {
        guard let index else { throw APIError(.notFound, "this server has no index") }
        guard let raw = context.parameters.get("id"), let id = Int64(raw) else { throw APIError(.badRequest, "id: not an integer") }
        guard let picture = try index.image(id: id) else { throw APIError(.notFound, "no image \(id) in the index") }
        let type = ["jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png"][(picture.path as NSString).pathExtension.lowercased()]
            ?? "application/octet-stream"
        let body: ResponseBody
        do { body = try await FileIO().loadFile(path: picture.path, context: context) } catch {
            throw APIError(.notFound, "image \(id)'s file \(picture.path) cannot be read")
        }
        return Response(status: .ok, headers: [.contentType: type, .cacheControl: "no-cache"], body: body)
    }

    // MARK: JSON

    func json(_ object: [String: Any], status: HTTPResponse.Status = .ok) -> Response {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data + [0x0A])))
    }

    func jsonResponse<T: Encodable>(_ value: T) throws -> Response {
        let line = try JSONOutput.line(value)
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: line + "\n")))
    }
}

/// `POST /v1/segment`'s answer: the record as `NAME.json` holds it, plus `png` (base64 files).
struct SegmentResponse: Encodable {
    struct Files: Encodable {
        var labels: String, overlay: String, score: String
        init(_ e: EncodedSegmentation) {
            labels = e.labelsPNG.base64EncodedString()
            overlay = e.overlayPNG.base64EncodedString()
            score = e.scorePNG?.base64EncodedString() ?? ""
        }
    }
    var record: SegmentRecord
    var png: Files
    enum Keys: String, CodingKey { case png }
    func encode(to encoder: any Encoder) throws {
        try record.encode(to: encoder)
        var c = encoder.container(keyedBy: Keys.self)
        try c.encode(png, forKey: .png)
    }
}

extension ZeroSegError {
    func with(message: String) -> ZeroSegError { ZeroSegError(message, kind: kind) }
}
