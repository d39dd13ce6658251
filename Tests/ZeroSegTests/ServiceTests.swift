import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing
@testable import ZeroSegService
import ZeroSeg
import ZeroSegTestSupport

/// `zeroseg serve` in process (HummingbirdTesting's router framework): every endpoint against
/// the library computing the same thing directly, and every error the API promises.
@Suite struct ServiceTests {
    static var model: CLIPModel { SegmentationGoldenTests.tinyModel }
    static let chelsea = repoRoot.appendingPathComponent("examples/chelsea.jpg")
    static let classes = "cat,grass|lawn,wall,floor"

    /// An index of examples/ (grid regions) made with the tiny model, shared by the search tests.
    static let index: EmbeddingIndex = {
        let dir = temporaryDirectory("service-index").appendingPathComponent("idx")
        let ix = try! EmbeddingIndex.create(at: dir, identity: EmbeddingIndex.identity(of: model), regions: .grid)
        var o = IndexingOptions(); o.regions = .grid
        _ = try! DirectoryIndexer(embedder: try! RegionEmbedder(model: model, options: o, threads: 2))
            .update(ix, roots: [repoRoot.appendingPathComponent("examples")])
        return ix
    }()

    static func service(index: EmbeddingIndex? = nil, _ configure: (inout ServiceOptions) -> Void = { _ in }) throws -> ZeroSegService {
        var o = ServiceOptions()
        o.threads = 2
        configure(&o)
        return try ZeroSegService(model: model, index: index, options: o, modelLoadSeconds: 0.25,
                                  textCacheRoot: temporaryDirectory("service-text-cache"))
    }

    /// Runs `body` against `service`'s routes in process.
    static func test(_ service: ZeroSegService, _ body: @escaping @Sendable (any TestClientProtocol) async throws -> Void) async throws {
        let app = Application(router: service.router())
        defer { service.close() }
        try await app.test(.router) { client in try await body(client) }
    }

    // MARK: Bodies

    struct Part { var name: String; var filename: String?; var bytes: [UInt8] }
    static func text(_ name: String, _ value: String) -> Part { Part(name: name, filename: nil, bytes: Array(value.utf8)) }
    static func file(_ name: String, _ url: URL) -> Part {
        Part(name: name, filename: url.lastPathComponent, bytes: [UInt8](try! Data(contentsOf: url)))
    }

    static let boundary = "zeroseg-test-boundary-7MA4YWxk"
    static func multipart(_ parts: [Part]) -> ByteBuffer {
        var b = ByteBuffer()
        for p in parts {
            b.writeString("--\(boundary)\r\nContent-Disposition: form-data; name=\"\(p.name)\"")
            if let f = p.filename { b.writeString("; filename=\"\(f)\"\r\nContent-Type: application/octet-stream") }
            b.writeString("\r\n\r\n")
            b.writeBytes(p.bytes)
            b.writeString("\r\n")
        }
        b.writeString("--\(boundary)--\r\n")
        return b
    }
    static var multipartHeaders: HTTPFields { [.contentType: "multipart/form-data; boundary=\(boundary)"] }
    static func jsonBody(_ object: [String: Any]) -> ByteBuffer { ByteBuffer(bytes: try! JSONSerialization.data(withJSONObject: object)) }
    static let jsonHeaders: HTTPFields = [.contentType: "application/json"]

    static func object(_ r: TestResponse) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: Data(r.body.readableBytesView)) as? [String: Any], "not a JSON object: \(String(buffer: r.body).prefix(200))")
    }

    /// A non-2xx answer: the status, one line of JSON {"error", "status"}.
    static func expectError(_ r: TestResponse, _ status: HTTPResponse.Status, containing: String,
                            sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(r.status == status, "\(String(buffer: r.body))", sourceLocation: sourceLocation)
        let o = try object(r)
        let message = o["error"] as? String ?? ""
        #expect(message.contains(containing), "\(message)", sourceLocation: sourceLocation)
        #expect(!message.contains("\n") && (o["status"] as? Int) == Int(status.code), sourceLocation: sourceLocation)
        #expect(r.headers[.contentType]?.hasPrefix("application/json") == true, sourceLocation: sourceLocation)
    }

    // MARK: The document and the routes

    /// openapi.json lists exactly the routes the router answers, with their methods; every
    /// operation documents 503 and every POST documents 400 and 413.
    @Test func openAPIMatchesRoutes() async throws {
        let doc = try #require(JSONSerialization.jsonObject(with: WebAssets.openAPIDocument()) as? [String: Any])
        #expect((doc["openapi"] as? String)?.hasPrefix("3.") == true)
        let paths = try #require(doc["paths"] as? [String: [String: Any]])
        var documented = Set<String>()
        for (path, ops) in paths {
            for (method, op) in ops {
                documented.insert("\(method) \(path)")
                let responses = try #require((op as? [String: Any])?["responses"] as? [String: Any])
                #expect(responses["503"] != nil, "\(method) \(path) documents no 503")
                if method == "post" { #expect(responses["400"] != nil && responses["413"] != nil, "\(method) \(path)") }
            }
        }
        let served = Set(ZeroSegService.routes.map { "\($0.method) \($0.path)" })
        #expect(documented == served, "only documented: \(documented.subtracting(served)); only served: \(served.subtracting(documented))")
        // and each served route is really there (not the router's 404)
        let service = try Self.service(index: Self.index)
        try await Self.test(service) { client in
            for r in ZeroSegService.routes {
                let uri = r.path.replacingOccurrences(of: "{id}", with: "1")
                try await client.execute(uri: uri, method: r.method == "get" ? .get : .post) { resp in
                    let body = String(buffer: resp.body)
                    #expect(!(resp.status == .notFound && body.contains("no route")), "\(r.method) \(uri): \(body)")
                }
            }
            try await client.execute(uri: "/nope", method: .get) { try Self.expectError($0, .notFound, containing: "no route GET /nope") }
        }
    }

    /// The page and its files are served, offline (nothing from another host), with the ids
    /// scripts rely on.
    @Test func pageServed() async throws {
        try await Self.test(try Self.service()) { client in
            let page = try await client.execute(uri: "/", method: .get)
            #expect(page.status == .ok && page.headers[.contentType]?.hasPrefix("text/html") == true)
            let html = String(buffer: page.body)
            for id in ["image", "classes", "run", "overlay", "legend"] { #expect(html.contains("id=\"\(id)\""), "no id \(id)") }
            for asset in ["/app.js", "/app.css"] {
                let r = try await client.execute(uri: asset, method: .get)
                #expect(r.status == .ok && r.body.readableBytes > 0, "\(asset)")
                let text = String(buffer: r.body)
                #expect(!text.contains("http://") && !text.contains("https://"), "\(asset) loads from another host")
            }
            #expect(!html.contains("https://") && !html.contains("http://"), "the page loads from another host")
        }
    }

    // MARK: Segment

    /// POST /v1/segment gives the record `zeroseg IMAGE` writes (same classes, areas, scores,
    /// settings) and the same label and overlay PNGs byte for byte, for a multipart upload and
    /// for JSON with base64.
    @Test func segmentEqualsThePipeline() async throws {
        // The library's run, as the CLI does it.
        let classes = try ClassSet.parse(Self.classes)
        var settings = SegmentationSettings()
        settings.options.refine = .none
        let pipeline = try SegmentationPipeline(model: Self.model, classes: classes, settings: settings, threads: 2,
                                                cache: TextEmbeddingCache(model: Self.model, root: temporaryDirectory("svc-cache")))
        let out = temporaryDirectory("svc-pipeline")
        var outputs = SegmentationOutputs(); outputs.timings = false
        let summary = pipeline.run([Self.chelsea], into: out, outputs: outputs)
        #expect(summary.failed.isEmpty)
        let labels = try Data(contentsOf: out.appendingPathComponent("chelsea.labels.png"))
        let overlay = try Data(contentsOf: out.appendingPathComponent("chelsea.overlay.png"))
        let written = try JSONOutput.decode(SegmentRecord.self, from: Data(contentsOf: out.appendingPathComponent("chelsea.json")))
        // The score map: round(255 x the labelled class's probability), 0 on background.
        let seg = try pipeline.segment(try RGBImage.load(Self.chelsea), input: Self.chelsea, wantScores: true).result
        let hw = seg.width * seg.height, scores = try #require(seg.scores)
        let wantScore: [UInt8] = (0..<hw).map { p in
            let c = Int(seg.labels[p])
            return c < classes.classes.count ? UInt8(max(0, min(255, (255 * scores[c * hw + p]).rounded()))) : 0
        }
        #expect(Set(wantScore).count > 10)

        try await Self.test(try Self.service()) { client in
            let bodies: [(ByteBuffer, HTTPFields)] = [
                (Self.multipart([Self.file("image", Self.chelsea), Self.text("classes", Self.classes), Self.text("refine", "none")]), Self.multipartHeaders),
                (Self.jsonBody(["image": try Data(contentsOf: Self.chelsea).base64EncodedString(), "classes": Self.classes, "refine": "none"]), Self.jsonHeaders),
            ]
            for (body, headers) in bodies {
                let r = try await client.execute(uri: "/v1/segment", method: .post, headers: headers, body: body)
                #expect(r.status == .ok, "\(String(buffer: r.body).prefix(300))")
                let o = try Self.object(r)
                let png = try #require(o["png"] as? [String: String])
                #expect(Data(base64Encoded: png["labels"] ?? "") == labels)
                #expect(Data(base64Encoded: png["overlay"] ?? "") == overlay)
                // The score PNG: greyscale, the labelled class's probability, 0 on background.
                let scoreFile = temporaryDirectory("svc-score").appendingPathComponent("score.png")
                try #require(Data(base64Encoded: png["score"] ?? "")).write(to: scoreFile)
                let grey = try readRawPNG(scoreFile)
                #expect(grey.width == written.width && grey.height == written.height && grey.colorType == 0)
                #expect(grey.samples == wantScore)
                var rec = try JSONOutput.decode(SegmentRecord.self, from: Data(r.body.readableBytesView))
                #expect(rec.header.command == "segment" && rec.header.timings["total"] ?? 0 > 0)
                #expect(rec.image == (headers == Self.jsonHeaders ? "upload" : "chelsea.jpg"))
                rec.header = written.header; rec.image = written.image
                #expect(rec == written)
            }
        }
    }

    /// Every way a segmentation request can be wrong: the status and a one-line error naming it.
    @Test func segmentErrors() async throws {
        let service = try Self.service { $0.limits.maxClasses = 3; $0.limits.maxPixels = 100_000; $0.limits.maxUploadBytes = 200_000 }
        let small = repoRoot.appendingPathComponent("examples/camera.jpg")  // 512x512 = 262,144 pixels, 57 KB
        try await Self.test(service) { client in
            func post(_ parts: [Part]) async throws -> TestResponse {
                try await client.execute(uri: "/v1/segment", method: .post, headers: Self.multipartHeaders, body: Self.multipart(parts))
            }
            let img = Self.file("image", Self.chelsea)
            try Self.expectError(try await post([Self.text("classes", "cat")]), .badRequest, containing: "image: give a JPEG or PNG")
            try Self.expectError(try await post([img]), .badRequest, containing: "classes: give comma-separated")
            try Self.expectError(try await post([img, Self.text("classes", "a,b,c,d")]), .badRequest, containing: "4 classes, above the limit of 3")
            try Self.expectError(try await post([img, Self.text("classes", "a,,b")]), .badRequest, containing: "empty")
            try Self.expectError(try await post([Self.file("image", repoRoot.appendingPathComponent("README.md")), Self.text("classes", "a")]),
                                 .badRequest, containing: "not a JPEG or PNG")
            var truncated = [UInt8](try Data(contentsOf: Self.chelsea)); truncated = Array(truncated.prefix(600))
            try Self.expectError(try await post([Part(name: "image", filename: "t.jpg", bytes: truncated), Self.text("classes", "a")]),
                                 .badRequest, containing: "t.jpg")
            try Self.expectError(try await post([Self.file("image", small), Self.text("classes", "a")]), .contentTooLarge, containing: "above the limit of 100000")
            try Self.expectError(try await post([img, Self.text("classes", "a"), Self.text("methd", "sclip")]), .badRequest, containing: "unknown field \"methd\"")
            try Self.expectError(try await post([img, Self.text("classes", "a"), Self.text("method", "foo")]), .badRequest, containing: "method: \"foo\" is not one of")
            try Self.expectError(try await post([img, Self.text("classes", "a"), Self.text("short-side", "-3")]), .badRequest, containing: "short-side")
            try Self.expectError(try await post([img, Self.text("classes", "a"), Self.text("short-side", "x")]), .badRequest, containing: "short-side: not an integer")
            try Self.expectError(try await post([img, Self.text("classes", "a"), Self.text("templates", "/etc/passwd")]), .badRequest, containing: "templates")
            try Self.expectError(try await post([img, Self.text("classes", "a"), Self.text("max-proposals", "5")]), .badRequest, containing: "max-proposals: needs mode two-stage")
            try Self.expectError(try await post([img, img, Self.text("classes", "a")]), .badRequest, containing: "give one file")
            // bodies
            let bigBody = Self.multipart([Part(name: "image", filename: "x.png", bytes: [UInt8](repeating: 7, count: 300_000))])
            try Self.expectError(try await client.execute(uri: "/v1/segment", method: .post, headers: Self.multipartHeaders, body: bigBody),
                                 .contentTooLarge, containing: "upload limit of 200000")
            var cut = Self.multipart([img, Self.text("classes", "a")]); cut.moveWriterIndex(to: cut.writerIndex - 40)
            try Self.expectError(try await client.execute(uri: "/v1/segment", method: .post, headers: Self.multipartHeaders, body: cut),
                                 .badRequest, containing: "malformed multipart body")
            try Self.expectError(try await client.execute(uri: "/v1/segment", method: .post, headers: [.contentType: "multipart/form-data"],
                                                          body: Self.multipart([img])), .badRequest, containing: "no boundary")
            try Self.expectError(try await client.execute(uri: "/v1/segment", method: .post, headers: [.contentType: "multipart/form-data; boundary="],
                                                          body: Self.multipart([img])), .badRequest, containing: "boundary")
            try Self.expectError(try await client.execute(uri: "/v1/segment", method: .post, headers: [.contentType: "text/plain"], body: ByteBuffer(string: "x")),
                                 .unsupportedMediaType, containing: "text/plain")
            try Self.expectError(try await client.execute(uri: "/v1/segment", method: .post, headers: Self.jsonHeaders, body: ByteBuffer(string: "{\"classes\": ")),
                                 .badRequest, containing: "malformed JSON")
            try Self.expectError(try await client.execute(uri: "/v1/segment", method: .post, headers: Self.jsonHeaders, body: ByteBuffer(string: "[1]")),
                                 .badRequest, containing: "malformed JSON")
            try Self.expectError(try await client.execute(uri: "/v1/segment", method: .post, headers: Self.jsonHeaders,
                                                          body: Self.jsonBody(["image": "!!!", "classes": "a"])), .badRequest, containing: "image: not base64")
            try Self.expectError(try await client.execute(uri: "/v1/segment", method: .post), .unsupportedMediaType, containing: "Content-Type")
        }
    }

    // MARK: The pool: full queue, timeout, drain

    /// Starts a segmentation that its worker holds before computing until `release()` (so it is
    /// in flight however loaded the machine is), and waits (bounded) until the worker has it.
    static func startSlow(_ client: any TestClientProtocol, _ service: ZeroSegService) async throws
        -> (task: Task<TestResponse, any Error>, release: @Sendable () -> Void) {
        let gate = DispatchSemaphore(value: 0)
        service.pool.holdNextJob { _ = gate.wait(timeout: .now() + 600) }
        let body = Self.multipart([Self.file("image", Self.chelsea), Self.text("classes", Self.classes)])
        let task = Task { try await client.execute(uri: "/v1/segment", method: .post, headers: Self.multipartHeaders, body: body) }
        let deadline = Date().addingTimeInterval(300)
        while service.pool.busy == 0 && Date() < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(service.pool.busy == 1, "the held request never started")
        return (task, { gate.signal() })
    }

    /// One worker, no queue: a second request while the first computes gets 503 with
    /// Retry-After at once; the first finishes; /metrics counted both.
    @Test func fullQueueIs503() async throws {
        let service = try Self.service { $0.limits.workers = 1; $0.limits.queueDepth = 0; $0.limits.retryAfter = 7 }
        try await Self.test(service) { client in
            let (slow, release) = try await Self.startSlow(client, service)
            let body = Self.multipart([Self.file("image", Self.chelsea), Self.text("classes", "cat")])
            let refused = try await client.execute(uri: "/v1/segment", method: .post, headers: Self.multipartHeaders, body: body)
            try Self.expectError(refused, .serviceUnavailable, containing: "busy")
            #expect(refused.headers[.retryAfter] == "7")
            release()
            #expect(try await slow.value.status == .ok)
            let metrics = String(buffer: try await client.execute(uri: "/metrics", method: .get).body)
            #expect(metrics.contains("zeroseg_http_requests_total{route=\"/v1/segment\",status=\"503\"} 1"), "\(metrics.prefix(2000))")
            #expect(metrics.contains("zeroseg_http_requests_total{route=\"/v1/segment\",status=\"200\"} 1"))
            for name in ["zeroseg_queue_length 0", "zeroseg_workers_busy", "zeroseg_model_load_seconds 0.25", "zeroseg_requests_in_flight 1",
                         "zeroseg_http_request_duration_seconds_bucket{route=\"/v1/segment\",le=\"+Inf\"} 2", "zeroseg_text_cache_entries"] {
                #expect(metrics.contains(name), "no \(name)")
            }
        }
    }

    /// A request that waits longer than the timeout gets 503 ("timed out"), and is dropped
    /// from the queue (it never computes).
    @Test func requestTimeout() async throws {
        let service = try Self.service { $0.limits.workers = 1; $0.limits.queueDepth = 4; $0.limits.requestTimeout = 0.2 }
        try await Self.test(service) { client in
            let (slow, release) = try await Self.startSlow(client, service)
            let body = Self.multipart([Self.file("image", Self.chelsea), Self.text("classes", "cat")])
            let late = try await client.execute(uri: "/v1/segment", method: .post, headers: Self.multipartHeaders, body: body)
            try Self.expectError(late, .serviceUnavailable, containing: "timed out")
            #expect(late.headers[.retryAfter] != nil)
            #expect(service.pool.waiting == 0)
            release()
            _ = try await slow.value  // the slow one itself may time out too: either answer is fine
        }
    }

    /// Shutting down: the request in flight finishes with 200; new requests and /healthz get
    /// 503 with Retry-After.
    @Test func drainFinishesInFlight() async throws {
        let service = try Self.service { $0.limits.workers = 1; $0.limits.queueDepth = 2 }
        try await Self.test(service) { client in
            let health = try await client.execute(uri: "/healthz", method: .get)
            #expect(health.status == .ok && String(buffer: health.body).contains("\"ok\""))
            let (slow, release) = try await Self.startSlow(client, service)
            let stopping = Task { await service.shutdown() }
            let deadline = Date().addingTimeInterval(120)
            while !service.state.draining && Date() < deadline { try await Task.sleep(for: .milliseconds(2)) }
            let refused = try await client.execute(uri: "/v1/info", method: .get)
            try Self.expectError(refused, .serviceUnavailable, containing: "shutting down")
            #expect(refused.headers[.retryAfter] != nil)
            let h = try await client.execute(uri: "/healthz", method: .get)
            #expect(h.status == .serviceUnavailable && String(buffer: h.body).contains("draining"))
            release()
            #expect(try await slow.value.status == .ok)
            await stopping.value
        }
    }

    // MARK: Token

    @Test func bearerToken() async throws {
        try await Self.test(try Self.service { $0.token = "s3cret" }) { client in
            try Self.expectError(try await client.execute(uri: "/v1/info", method: .get), .unauthorized, containing: "bearer token")
            let wrong = try await client.execute(uri: "/metrics", method: .get, headers: [.authorization: "Bearer s3cres"])
            try Self.expectError(wrong, .unauthorized, containing: "bearer token")
            #expect(wrong.headers[.wwwAuthenticate] == "Bearer")
            #expect(try await client.execute(uri: "/v1/info", method: .get, headers: [.authorization: "Bearer s3cret"]).status == .ok)
            #expect(try await client.execute(uri: "/metrics", method: .get, headers: [.authorization: "bearer s3cret"]).status == .ok)
            for open in ["/", "/healthz", "/openapi.json", "/app.js"] { #expect(try await client.execute(uri: open, method: .get).status == .ok, "\(open)") }
            let info = try Self.object(try await client.execute(uri: "/v1/info", method: .get, headers: [.authorization: "Bearer s3cret"]))
            #expect(info["auth"] as? Bool == true)
        }
        #expect(throws: ZeroSegError.self) { try Self.service { $0.token = "two words" } }
    }

    // MARK: Embed

    /// POST /v1/embed gives what `zeroseg embed` prints for the same texts and images.
    @Test func embedEqualsTheModel() async throws {
        let texts = ["a photo of a cat", "grass"]
        let image = try RGBImage.load(Self.chelsea)
        let want = try EmbeddingsOutput(text: Self.model.encodeText(texts, threads: 2), image: Self.model.encodeImages([image], threads: 2)).jsonLine()
        try await Self.test(try Self.service()) { client in
            let m = try await client.execute(uri: "/v1/embed", method: .post, headers: Self.multipartHeaders,
                                             body: Self.multipart(texts.map { Self.text("text", $0) } + [Self.file("image", Self.chelsea)]))
            #expect(m.status == .ok)
            #expect(Data(m.body.readableBytesView) == want + [0x0A])
            let j = try await client.execute(uri: "/v1/embed", method: .post, headers: Self.jsonHeaders,
                                             body: Self.jsonBody(["text": texts, "image": [try Data(contentsOf: Self.chelsea).base64EncodedString()]]))
            #expect(Data(j.body.readableBytesView) == want + [0x0A])
            try Self.expectError(try await client.execute(uri: "/v1/embed", method: .post, headers: Self.jsonHeaders, body: Self.jsonBody([:])),
                                 .badRequest, containing: "at least one text or image")
            try Self.expectError(try await client.execute(uri: "/v1/embed", method: .post, headers: Self.jsonHeaders,
                                                          body: Self.jsonBody(["text": Array(repeating: "x", count: 257)])), .badRequest, containing: "above the limit of 256")
            try Self.expectError(try await client.execute(uri: "/v1/embed", method: .post, headers: Self.jsonHeaders,
                                                          body: Self.jsonBody(["text": [["nested"]]])), .badRequest, containing: "text: must be")
        }
    }

    // MARK: Search and images

    /// POST /v1/search gives the hits of `EmbeddingIndex.search`, with each hit's image id;
    /// GET /v1/images/{id} gives the picture's file.
    @Test func searchEqualsTheIndex() async throws {
        var o = SearchOptions(); o.k = 5; o.kind = .region
        let want = try Self.index.search(SearchQuery(text: "cat", templates: try Templates.named("imagenet80")), model: Self.model, options: o,
                                         cache: TextEmbeddingCache(model: Self.model, root: temporaryDirectory("svc-cache2")), threads: 2)
        try await Self.test(try Self.service(index: Self.index)) { client in
            let r = try await client.execute(uri: "/v1/search", method: .post, headers: Self.multipartHeaders,
                                             body: Self.multipart([Self.text("text", "cat"), Self.text("regions", "true"), Self.text("top", "5")]))
            #expect(r.status == .ok, "\(String(buffer: r.body).prefix(300))")
            let rec = try JSONOutput.decode(SearchRecord.self, from: Data(r.body.readableBytesView))
            #expect(rec.hits == SearchRecord(header: rec.header, settings: rec.settings, index: "", query: rec.query, hits: want).hits)
            #expect(rec.hits.count == 5 && rec.hits.allSatisfy { $0.imageId != nil && $0.region != nil })
            let first = try #require(rec.hits.first)
            let img = try await client.execute(uri: "/v1/images/\(first.imageId!)", method: .get)
            #expect(img.status == .ok && img.headers[.contentType] == "image/jpeg")
            #expect(Data(img.body.readableBytesView) == (try Data(contentsOf: URL(fileURLWithPath: first.path!))))
            try Self.expectError(try await client.execute(uri: "/v1/images/999999", method: .get), .notFound, containing: "no image 999999")
            try Self.expectError(try await client.execute(uri: "/v1/images/abc", method: .get), .badRequest, containing: "id")
            // by image, JSON
            let byImage = try await client.execute(uri: "/v1/search", method: .post, headers: Self.jsonHeaders,
                                                   body: Self.jsonBody(["image": try Data(contentsOf: Self.chelsea).base64EncodedString(), "top": 2]))
            #expect(byImage.status == .ok)
            try Self.expectError(try await client.execute(uri: "/v1/search", method: .post, headers: Self.jsonHeaders, body: Self.jsonBody(["top": 3])),
                                 .badRequest, containing: "give a text")
            try Self.expectError(try await client.execute(uri: "/v1/search", method: .post, headers: Self.jsonHeaders,
                                                          body: Self.jsonBody(["text": "cat", "top": 0])), .badRequest, containing: "top")
            try Self.expectError(try await client.execute(uri: "/v1/search", method: .post, headers: Self.jsonHeaders,
                                                          body: Self.jsonBody(["text": "cat", "all-regions": true])), .badRequest, containing: "all-regions: needs regions")
        }
        try await Self.test(try Self.service()) { client in
            try Self.expectError(try await client.execute(uri: "/v1/search", method: .post, headers: Self.jsonHeaders, body: Self.jsonBody(["text": "cat"])),
                                 .notFound, containing: "no index")
            let info = try Self.object(try await client.execute(uri: "/v1/info", method: .get))
            #expect(info["index"] is NSNull)
        }
    }

    /// The service's class-embedding cache: what was stored is read from memory (the file may be
    /// gone), at most `memoryEntries` are kept, oldest out first.
    @Test func textCacheInMemory() throws {
        let root = temporaryDirectory("svc-mem-cache")
        let cache = TextEmbeddingCache(model: Self.model, root: root, memoryEntries: 2)
        let dim = Self.model.config.projectionDim
        for (i, name) in ["a", "b", "c"].enumerated() { cache.store([Float](repeating: Float(i + 1), count: dim), name: name, templates: ["{}"]) }
        #expect(cache.memoryCount == 2)
        try FileManager.default.removeItem(at: root)
        #expect(cache.load(name: "c", templates: ["{}"])?.first == 3)
        #expect(cache.load(name: "b", templates: ["{}"])?.first == 2)
        #expect(cache.load(name: "a", templates: ["{}"]) == nil)  // evicted from memory, gone from disk
        #expect(cache.load(name: "c", templates: ["other {}"]) == nil)
    }

    /// Limits are checked when the service is made (a library error naming the parameter).
    @Test func limitsValidated() throws {
        #expect(throws: ZeroSegError.invalidArgument("the upload limit must be between 1 KiB and 1 GiB", parameter: "maxUploadBytes")) {
            try Self.service { $0.limits.maxUploadBytes = 10 }
        }
        #expect(throws: ZeroSegError.self) { try Self.service { $0.limits.workers = 0 } }
        #expect(throws: ZeroSegError.self) { try Self.service { $0.limits.maxClasses = 300 } }
        var o = ServiceOptions(); #expect(!o.bindsBeyondLoopback)
        o.host = "0.0.0.0"; #expect(o.bindsBeyondLoopback)
    }
}

/// The request-body reader never traps, whatever the bytes (MultipartKit 4.7.1 traps on a
/// non-ASCII header name: refused before it gets there).
@Suite struct RequestFormTests {
    static let boundary = "b"
    static var ctype: String { "multipart/form-data; boundary=\(boundary)" }

    @Test func nonASCIIHeaderNameIs400() throws {
        // schemathesis' reproducer: a part header whose name starts with 0xFF
        let body = ByteBuffer(bytes: Array("--b\r\n".utf8) + [0xFF] + Array("X: y\r\n\r\nv\r\n--b--\r\n".utf8))
        #expect(throws: APIError.self) { try RequestForm.parse(body, contentType: Self.ctype, fileFields: []) }
        do { _ = try RequestForm.parse(body, contentType: Self.ctype, fileFields: []) } catch let e as APIError {
            #expect(e.status == .badRequest && e.message.contains("header name is not ASCII"))
        }
        // non-ASCII in a header value (a UTF-8 file name) is fine
        let ok = ByteBuffer(bytes: Array("--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"café.png\"\r\n\r\nv\r\n--b--\r\n".utf8))
        let form = try RequestForm.parse(ok, contentType: Self.ctype, fileFields: ["image"])
        #expect(form.fields.first?.filename == "café.png" && form.fields.first?.bytes == Array("v".utf8))
    }

    /// 30,000 mutations of a valid body (bytes replaced, inserted, deleted, cut), seeded: every
    /// one parses or is a 400 APIError, never a trap.
    @Test func mutatedBodiesNeverTrap() {
        let valid = Array("--b\r\nContent-Disposition: form-data; name=\"classes\"\r\n\r\ncat,dog\r\n--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n\u{1}\u{2}\u{3}\r\n--b--\r\n".utf8)
        var rng = SplitMix64(seed: 15)
        var parsed = 0, refused = 0
        for _ in 0..<30_000 {
            var b = valid
            for _ in 0..<(1 + Int(rng.next() % 4)) {
                let at = Int(rng.next() % UInt64(b.count))
                switch rng.next() % 4 {
                case 0: b[at] = UInt8(truncatingIfNeeded: rng.next())
                case 1: b.insert(UInt8(truncatingIfNeeded: rng.next()) | (rng.next() % 2 == 0 ? 0x80 : 0), at: at)
                case 2: b.remove(at: at)
                default: b = Array(b.prefix(at))
                }
                if b.isEmpty { b = [0] }
            }
            do { _ = try RequestForm.parse(ByteBuffer(bytes: b), contentType: Self.ctype, fileFields: ["image"]); parsed += 1 } catch let e as APIError {
                #expect(e.status == .badRequest); refused += 1
            } catch { Issue.record("not an APIError: \(error)") }
        }
        #expect(parsed > 100 && refused > 100, "parsed \(parsed), refused \(refused)")
    }

    @Test func wrongMethodIs405() async throws {
        try await ServiceTests.test(try ServiceTests.service()) { client in
            let r = try await client.execute(uri: "/v1/segment", method: .get)
            try ServiceTests.expectError(r, .methodNotAllowed, containing: "use POST")
            #expect(r.headers[.allow] == "POST")
            try ServiceTests.expectError(try await client.execute(uri: "/v1/images/3", method: .delete), .methodNotAllowed, containing: "use GET")
        }
    }
}

/// Answered requests do not keep their uploads: the pool holds a job only while it waits or
/// runs (not until its timeout).
@Suite struct WorkerPoolTests {
    final class Payload: Sendable { let bytes = [UInt8](repeating: 1, count: 1 << 20) }

    @Test func answeredJobsAreFreed() async throws {
        let pool = WorkerPool(workers: 1, queueDepth: 4)
        defer { pool.stop() }
        weak var watched: Payload?
        do {
            let p = Payload()
            watched = p
            let n = try await pool.run(timeout: 600) { p.bytes.count }
            #expect(n == 1 << 20)
        }
        // The worker may still be letting go of the ticket: bounded wait.
        let deadline = Date().addingTimeInterval(10)
        while watched != nil && Date() < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(watched == nil, "the answered job's data is still held")
    }

    @Test func fullAndStopped() async throws {
        let pool = WorkerPool(workers: 1, queueDepth: 0)
        let gate = DispatchSemaphore(value: 0)
        let first = Task { try await pool.run(timeout: 600) { gate.wait(); return 1 } }
        let deadline = Date().addingTimeInterval(10)
        while pool.busy == 0 && Date() < deadline { try await Task.sleep(for: .milliseconds(2)) }
        await #expect(throws: PoolRefusal.full) { try await pool.run(timeout: 600) { 2 } }
        gate.signal()
        #expect(try await first.value == 1)
        pool.stop()
        await #expect(throws: PoolRefusal.stopped) { try await pool.run(timeout: 600) { 3 } }
    }
}
