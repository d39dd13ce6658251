import Foundation
import Testing
@testable import ZeroSegCore
@testable import ZeroSegFormats
@testable import ZeroSegImaging
@testable import ZeroSegText
@testable import ZeroSegCLIP
@testable import ZeroSegHub
@testable import ZeroSegSegmentation
@testable import ZeroSegTuning

/// The hub cache and downloads, against LoopbackHubServer on 127.0.0.1 (never the network).
@Suite("Hub")
struct HubTests {
    static let commit = "0123456789abcdef0123456789abcdef01234567"

    /// A small fake CLIP repository: config (small file), weights (LFS), tokenizer files.
    static func files(weightsSize: Int = 300_000) -> [String: Data] {
        var w = Data(count: weightsSize)
        for i in 0..<weightsSize { w[i] = UInt8(truncatingIfNeeded: i &* 7919 &+ i >> 8) }
        return [
            "config.json": Data(#"{"model_type": "clip"}"#.utf8),
            "model.safetensors": w,
            "vocab.json": Data(#"{"a": 0}"#.utf8),
            "merges.txt": Data("#version: 0.2\n".utf8),
        ]
    }

    /// A temporary HF cache and an environment that points at it and at the server; no HF_TOKEN, HOME inside.
    static func env(_ server: LoopbackHubServer?, _ extra: [String: String] = [:]) -> (env: [String: String], cache: URL) {
        let tmp = temporaryDirectory("zeroseg-hub")
        var e = ["HOME": tmp.path, "HF_HUB_CACHE": tmp.appendingPathComponent("hub").path,
                 "HF_ENDPOINT": server?.endpoint ?? "http://127.0.0.1:9"]
        e.merge(extra) { $1 }
        return (e, tmp.appendingPathComponent("hub"))
    }

    static func hub(_ env: [String: String], attempts: Int = 5) -> Hub {
        var s = HubSettings(environment: env)
        s.retryDelay = 0
        s.maxAttempts = attempts
        return Hub(settings: s, showProgress: false)
    }

    static func link(_ url: URL) -> String? { try? FileManager.default.destinationOfSymbolicLink(atPath: url.path) }

    @Test func settingsFromEnvironment() {
        var s = HubSettings(environment: ["HOME": "/h"])
        #expect(s.cacheDirectory.path == "/h/.cache/huggingface/hub")
        #expect(s.endpoint == "https://huggingface.co" && !s.offline && s.token == nil)
        s = HubSettings(environment: ["HOME": "/h", "XDG_CACHE_HOME": "/x"])
        #expect(s.cacheDirectory.path == "/x/huggingface/hub")
        s = HubSettings(environment: ["HOME": "/h", "HF_HOME": "/hf", "HF_ENDPOINT": "http://mirror/", "HF_HUB_OFFLINE": "1", "HF_TOKEN": " t\n"])
        #expect(s.cacheDirectory.path == "/hf/hub" && s.endpoint == "http://mirror" && s.offline && s.token == "t")
        s = HubSettings(environment: ["HOME": "/h", "HF_HOME": "/hf", "HF_HUB_CACHE": "/c", "HF_HUB_OFFLINE": "true"])
        #expect(s.cacheDirectory.path == "/c" && s.offline)
        #expect(!HubSettings(environment: ["HOME": "/h", "HF_HUB_OFFLINE": "0"]).offline)
    }

    @Test func repoIDs() throws {
        let r = try HubRepo(parsing: "openai/clip-vit-base-patch16@refs/pr/5")
        #expect(r.id == "openai/clip-vit-base-patch16" && r.revision == "refs/pr/5" && r.folderName == "models--openai--clip-vit-base-patch16")
        #expect(try HubRepo(parsing: "a/b").revision == "main")
        #expect(try HubRepo(parsing: "a/b", revision: "v1").revision == "v1")
        #expect(throws: ZeroSegError.self) { try HubRepo(parsing: "a/b@v2", revision: "v1") }
        for bad in ["a", "a/b/c", "/a/b", "./a", "a/", "a/b@", "a/..", "a--b/c", "-a/b", "a b/c", "a/b@../x"] {
            #expect(throws: ZeroSegError.self, "\(bad)") { try HubRepo(parsing: bad) }
        }
        #expect(HubRepo.looksLikeID("laion/CLIP-ViT-B-32-laion2B-s34B-b79K"))
        #expect(!HubRepo.looksLikeID("models/clip/b16") && !HubRepo.looksLikeID("/tmp/x"))
    }

    @Test func hashes() {
        #expect(HubHash.gitBlobSHA1(Data("Hello, World!".utf8)) == "b45ef6fec89518d314f546fd6c3025367b721684")  // git hash-object
        #expect(HubHash.sha256(Data("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        let f = temporaryDirectory().appendingPathComponent("x")
        try! Data("Hello, World!".utf8).write(to: f)
        #expect(try! HubHash.gitBlobSHA1(file: f) == "b45ef6fec89518d314f546fd6c3025367b721684")
        #expect(try! HubHash.sha256(file: f) == HubHash.sha256(Data("Hello, World!".utf8)))
    }

    /// Files, blobs, symlinks, refs and .no_exist laid out as huggingface_hub does.
    @Test func downloadLayout() throws {
        let server = try LoopbackHubServer()
        defer { server.stop() }
        let files = Self.files()
        server.addRepo("org/clip", files: files, lfs: ["model.safetensors"], commit: Self.commit)
        let (env, cache) = Self.env(server)
        let r = try Self.hub(env).fetch(HubRepo(parsing: "org/clip"))
        let repoDir = cache.appendingPathComponent("models--org--clip")
        let snap = repoDir.appendingPathComponent("snapshots/\(Self.commit)")
        #expect(r.snapshot.path == snap.path && r.commit == Self.commit)
        #expect(Set(r.downloaded) == Set(files.keys) && r.downloadedBytes == Int64(files.values.reduce(0) { $0 + $1.count }))
        #expect(try String(contentsOf: repoDir.appendingPathComponent("refs/main"), encoding: .utf8) == Self.commit)  // no newline
        for (name, data) in files {
            let etag = name == "model.safetensors" ? HubHash.sha256(data) : HubHash.gitBlobSHA1(data)
            #expect(Self.link(snap.appendingPathComponent(name)) == "../../blobs/\(etag)", "\(name)")
            #expect(try Data(contentsOf: snap.appendingPathComponent(name)) == data, "\(name)")
        }
        let blobs = try FileManager.default.contentsOfDirectory(atPath: repoDir.appendingPathComponent("blobs").path)
        #expect(blobs.count == 4 && !blobs.contains { $0.hasSuffix(".incomplete") })
        for missing in ["open_clip_config.json", "preprocessor_config.json", "open_clip_model.safetensors"] where missing != "open_clip_model.safetensors" {
            #expect(FileManager.default.fileExists(atPath: repoDir.appendingPathComponent(".no_exist/\(Self.commit)/\(missing)").path))
        }
        #expect(FileManager.default.fileExists(atPath: cache.appendingPathComponent("CACHEDIR.TAG").path))
        #expect(FileManager.default.fileExists(atPath: cache.appendingPathComponent(".locks/models--org--clip").path))
        // the first HEAD asks for the branch, the rest for the commit it named; LFS bytes come from /cdn/
        let reqs = server.requests
        #expect(reqs.first?.description == "HEAD /org/clip/resolve/main/config.json")
        #expect(reqs.dropFirst().filter { $0.method == "HEAD" }.allSatisfy { $0.path.contains("/resolve/\(Self.commit)/") })
        #expect(reqs.contains { $0.method == "GET" && $0.path == "/cdn/\(HubHash.sha256(files["model.safetensors"]!))" })
        #expect(reqs.allSatisfy { $0.header("authorization") == nil && $0.header("accept-encoding") == "identity" })
        #expect(!reqs.contains { $0.method == "HEAD" && $0.path.hasPrefix("/cdn/") })  // the LFS redirect is not followed on HEAD
        // weights preference: model.safetensors exists, so the others are never asked for
        #expect(!reqs.contains { $0.path.hasSuffix("pytorch_model.bin") || $0.path.hasSuffix("open_clip_model.safetensors") })
    }

    /// A cache already filled (by this code or by Python): no request at all.
    @Test func prefilledCacheMakesNoRequest() throws {
        let server = try LoopbackHubServer()
        defer { server.stop() }
        server.addRepo("org/clip", files: Self.files(), lfs: ["model.safetensors"], commit: Self.commit)
        let (env, _) = Self.env(server)
        let first = try Self.hub(env).snapshot(HubRepo(parsing: "org/clip"))
        server.resetLog()
        #expect(try Self.hub(env).snapshot(HubRepo(parsing: "org/clip")) == first)
        #expect(try ModelResolver.directory(named: "org/clip", environment: env, warn: { _ in }) == first)
        #expect(try ModelResolver.directory(named: "org/clip@\(Self.commit)", environment: env, warn: { _ in }) == first)
        // fetch with a commit hash whose files (and .no_exist markers) are all cached asks nothing either
        #expect(try Self.hub(env).fetch(HubRepo(parsing: "org/clip@\(Self.commit)")).downloaded.isEmpty)
        #expect(server.requests.isEmpty, "\(server.requests)")
    }

    /// A snapshot made by hand in huggingface_hub's layout, as `transformers` leaves it (pytorch_model.bin, no vocab).
    @Test func pythonMadeCacheIsUsed() throws {
        let server = try LoopbackHubServer()
        defer { server.stop() }
        let (env, cache) = Self.env(server)
        let repo = cache.appendingPathComponent("models--openai--clip-vit-base-patch16")
        let fm = FileManager.default
        try fm.createDirectory(at: repo.appendingPathComponent("blobs"), withIntermediateDirectories: true)
        try fm.createDirectory(at: repo.appendingPathComponent("snapshots/\(Self.commit)"), withIntermediateDirectories: true)
        try fm.createDirectory(at: repo.appendingPathComponent("refs"), withIntermediateDirectories: true)
        try Data(Self.commit.utf8).write(to: repo.appendingPathComponent("refs/main"))
        for (name, etag) in [("config.json", String(repeating: "a", count: 40)), ("pytorch_model.bin", String(repeating: "b", count: 64))] {
            try Data("x".utf8).write(to: repo.appendingPathComponent("blobs/\(etag)"))
            try fm.createSymbolicLink(atPath: repo.appendingPathComponent("snapshots/\(Self.commit)/\(name)").path,
                                      withDestinationPath: "../../blobs/\(etag)")
        }
        let dir = try ModelResolver.directory(named: "openai/clip-vit-base-patch16", environment: env, warn: { _ in })
        #expect(dir.path == repo.appendingPathComponent("snapshots/\(Self.commit)").path)
        let resolved = try ModelResolver.resolve(nil, environment: env, warn: { _ in })
        #expect(resolved.directory.path == dir.path && !resolved.isSyntheticFallback)
        #expect(server.requests.isEmpty)
        // pytorch_model.bin with only open_clip_config.json: its layout's config is missing, so not usable
        let snap = repo.appendingPathComponent("snapshots/\(Self.commit)")
        try fm.moveItem(at: snap.appendingPathComponent("config.json"), to: snap.appendingPathComponent("open_clip_config.json"))
        #expect(HubCache(root: cache).usableSnapshot(try HubRepo(parsing: "openai/clip-vit-base-patch16")) == nil)
        try fm.moveItem(at: snap.appendingPathComponent("open_clip_config.json"), to: snap.appendingPathComponent("config.json"))
        #expect(HubCache(root: cache).usableSnapshot(try HubRepo(parsing: "openai/clip-vit-base-patch16")) != nil)
        // a broken link (blob gone) is not a cached file
        try fm.removeItem(at: repo.appendingPathComponent("blobs/" + String(repeating: "b", count: 64)))
        #expect(HubCache(root: cache).usableSnapshot(try HubRepo(parsing: "openai/clip-vit-base-patch16")) == nil)
    }

    @Test func offlineMakesNoRequest() throws {
        let server = try LoopbackHubServer()
        defer { server.stop() }
        server.addRepo("org/clip", files: Self.files(), lfs: ["model.safetensors"], commit: Self.commit)
        let (env, cache) = Self.env(server, ["HF_HUB_OFFLINE": "1"])
        let e = #expect(throws: ZeroSegError.self) { try Self.hub(env).fetch(HubRepo(parsing: "org/clip")) }
        #expect(e?.message == "org/clip is not available offline: it is not in the Hugging Face cache (\(cache.path)), and HF_HUB_OFFLINE is set")
        let e2 = #expect(throws: ZeroSegError.self) { try ModelResolver.directory(named: "org/clip", environment: env, warn: { _ in }) }
        #expect(e2?.message.hasSuffix("and HF_HUB_OFFLINE is set (no directory org/clip either)") == true)
        #expect(server.requests.isEmpty)
        // once cached (online), offline works and still asks nothing
        var online = env
        online["HF_HUB_OFFLINE"] = nil
        let dir = try Self.hub(online).snapshot(HubRepo(parsing: "org/clip"))
        server.resetLog()
        #expect(try Self.hub(env).fetch(HubRepo(parsing: "org/clip")).snapshot == dir)
        #expect(server.requests.isEmpty)
    }

    /// The connection breaks mid-body: the retry asks only for the rest.
    @Test func resumeAfterCutConnection() throws {
        let server = try LoopbackHubServer()
        defer { server.stop() }
        let files = Self.files()
        server.addRepo("org/clip", files: files, lfs: ["model.safetensors"], commit: Self.commit)
        server.inject(.cutAfter(100_000), file: "model.safetensors")
        let (env, _) = Self.env(server)
        let r = try Self.hub(env).fetch(HubRepo(parsing: "org/clip"))
        #expect(try Data(contentsOf: r.snapshot.appendingPathComponent("model.safetensors")) == files["model.safetensors"])
        let gets = server.requests.filter { $0.method == "GET" && $0.path.hasPrefix("/cdn/") }
        #expect(gets.map { $0.header("range") } == [nil, "bytes=100000-"], "\(gets)")
        #expect(r.downloadedBytes == Int64(files.values.reduce(0) { $0 + $1.count }))  // no byte twice
    }

    /// A run that gives up leaves `blobs/<etag>.incomplete`; the next run resumes it.
    @Test func resumeAcrossRuns() throws {
        let server = try LoopbackHubServer()
        defer { server.stop() }
        let files = Self.files()
        server.addRepo("org/clip", files: files, lfs: ["model.safetensors"], commit: Self.commit)
        server.inject(.cutAfter(123_456), file: "model.safetensors")
        let (env, cache) = Self.env(server)
        let sha = HubHash.sha256(files["model.safetensors"]!)
        let partial = cache.appendingPathComponent("models--org--clip/blobs/\(sha).incomplete")
        let e = #expect(throws: ZeroSegError.self) { try Self.hub(env, attempts: 1).fetch(HubRepo(parsing: "org/clip")) }
        #expect(e?.message == "downloading model.safetensors of org/clip from 127.0.0.1 failed (connection lost); 123.5 kB kept in \(partial.path): run again to resume")
        #expect((try FileManager.default.attributesOfItem(atPath: partial.path)[.size] as? NSNumber)?.intValue == 123_456)
        #expect(!FileManager.default.fileExists(atPath: cache.appendingPathComponent("models--org--clip/refs/main").path))
        server.resetLog()
        let r = try Self.hub(env, attempts: 1).fetch(HubRepo(parsing: "org/clip"))
        #expect(try Data(contentsOf: r.snapshot.appendingPathComponent("model.safetensors")) == files["model.safetensors"])
        let gets = server.requests.filter { $0.method == "GET" }
        #expect(gets.map { $0.header("range") } == ["bytes=123456-"], "\(gets)")  // the small files were done the first time
        #expect(!FileManager.default.fileExists(atPath: partial.path))
    }

    @Test func corruptedFilesAreRejectedAndRemoved() throws {
        let server = try LoopbackHubServer()
        defer { server.stop() }
        let files = Self.files()
        server.addRepo("org/clip", files: files, lfs: ["model.safetensors"], commit: Self.commit)
        server.inject(.corrupt, file: "model.safetensors")
        let (env, cache) = Self.env(server)
        let repoDir = cache.appendingPathComponent("models--org--clip")
        let sha = HubHash.sha256(files["model.safetensors"]!)
        let e = #expect(throws: ZeroSegError.self) { try Self.hub(env).fetch(HubRepo(parsing: "org/clip")) }
        #expect(e?.message.hasPrefix("model.safetensors of org/clip failed verification (sha256 ") == true, "\(e?.message ?? "")")
        #expect(e?.message.hasSuffix(", the hub says \(sha.prefix(12))…): deleted it, run again to download it again") == true)
        for p in ["blobs/\(sha)", "blobs/\(sha).incomplete", "snapshots/\(Self.commit)/model.safetensors", "refs/main"] {
            #expect(!FileManager.default.fileExists(atPath: repoDir.appendingPathComponent(p).path), "\(p)")
        }
        #expect(HubCache(root: cache).usableSnapshot(try HubRepo(parsing: "org/clip")) == nil)
        // with the fault gone, the next run gets everything
        let r = try Self.hub(env).fetch(HubRepo(parsing: "org/clip"))
        #expect(try Data(contentsOf: r.snapshot.appendingPathComponent("model.safetensors")) == files["model.safetensors"])
        // a small file is checked by its git blob sha1
        server.inject(.corrupt, file: "vocab.json")
        let (env2, cache2) = Self.env(server)
        let e2 = #expect(throws: ZeroSegError.self) { try Self.hub(env2).fetch(HubRepo(parsing: "org/clip")) }
        let vocabSHA1 = HubHash.gitBlobSHA1(files["vocab.json"]!)
        #expect(e2?.message.hasPrefix("vocab.json of org/clip failed verification (git sha1 ") == true, "\(e2?.message ?? "")")
        #expect(e2?.message.hasSuffix(", the hub says \(vocabSHA1.prefix(12))…): deleted it, run again to download it again") == true)
        for p in ["blobs/\(vocabSHA1)", "blobs/\(vocabSHA1).incomplete"] {
            #expect(!FileManager.default.fileExists(atPath: cache2.appendingPathComponent("models--org--clip/\(p)").path))
        }
    }

    @Test func weightsPreference() throws {
        let server = try LoopbackHubServer()
        defer { server.stop() }
        var files = Self.files()
        let w = files.removeValue(forKey: "model.safetensors")!
        files["open_clip_model.safetensors"] = w
        files["pytorch_model.bin"] = Data("bin".utf8)
        files["open_clip_config.json"] = Data("{}".utf8)
        server.addRepo("org/oc", files: files, lfs: ["open_clip_model.safetensors", "pytorch_model.bin"])
        server.addRepo("org/noweights", files: ["config.json": Data("{}".utf8)])
        // OpenCLIP weights without open_clip_config.json cannot be loaded: not fetched
        server.addRepo("org/orphan", files: ["config.json": Data("{}".utf8), "open_clip_model.safetensors": w], lfs: ["open_clip_model.safetensors"])
        server.addRepo("org/notclip", files: ["README.md": Data("hi".utf8)])
        let (env, _) = Self.env(server)
        let r = try Self.hub(env).fetch(HubRepo(parsing: "org/oc"))
        #expect(Set(r.files) == ["config.json", "open_clip_config.json", "open_clip_model.safetensors", "vocab.json", "merges.txt"])
        #expect(!server.requests.contains { $0.path.hasSuffix("/pytorch_model.bin") })
        let e = #expect(throws: ZeroSegError.self) { try Self.hub(env).fetch(HubRepo(parsing: "org/noweights")) }
        #expect(e?.message == "org/noweights has no weights (none of model.safetensors, pytorch_model.bin)")
        let e3 = #expect(throws: ZeroSegError.self) { try Self.hub(env).fetch(HubRepo(parsing: "org/orphan")) }
        #expect(e3?.message == "org/orphan has no weights (none of model.safetensors, pytorch_model.bin)")
        #expect(!server.requests.contains { $0.path.hasPrefix("/org/orphan/") && $0.path.hasSuffix("/open_clip_model.safetensors") })
        let e2 = #expect(throws: ZeroSegError.self) { try Self.hub(env).fetch(HubRepo(parsing: "org/notclip")) }
        #expect(e2?.message == "org/notclip has neither config.json nor open_clip_config.json: not a CLIP model")
    }

    @Test func repositoryErrorsAreToldApart() throws {
        let server = try LoopbackHubServer()
        defer { server.stop() }
        server.addRepo("org/private", files: Self.files(), lfs: ["model.safetensors"], token: "hf_secret")
        server.addRepo("org/gated", files: Self.files(), token: "hf_ok", gated: true)
        server.addRepo("org/clip", files: Self.files())
        let (env, _) = Self.env(server)
        func message(_ id: String, _ extra: [String: String] = [:]) -> String? {
            var e = env
            e.merge(extra) { $1 }
            do { _ = try Self.hub(e).fetch(HubRepo(parsing: id)); return nil } catch { return (error as? ZeroSegError)?.message }
        }
        let ep = server.endpoint
        #expect(message("org/nothere") == "org/nothere: \(ep) refused access (401): the repository is private or gated, or does not exist; set HF_TOKEN to a token that can read it")
        #expect(message("org/private") == "org/private: \(ep) refused access (401): the repository is private or gated, or does not exist; set HF_TOKEN to a token that can read it")
        #expect(message("org/private", ["HF_TOKEN": "wrong"]) == "org/private: \(ep) refused HF_TOKEN (401): the repository does not exist, or the token cannot read it")
        #expect(message("org/gated") == "org/gated is gated: accept its conditions on \(ep)/org/gated, then set HF_TOKEN (401)")
        #expect(message("org/gated", ["HF_TOKEN": "hf_no"]) == "org/gated is gated and HF_TOKEN has no access: accept its conditions on \(ep)/org/gated (403)")
        #expect(message("org/clip@v9") == "org/clip has no revision v9 on \(ep) (404)")
        server.unknownRepoStatus = 404
        #expect(message("org/nothere") == "org/nothere was not found on \(ep) (404)")
        // with the token: downloaded, and the token went to the hub (here the CDN is the same origin, so there too)
        server.resetLog()
        #expect(message("org/private", ["HF_TOKEN": "hf_secret"]) == nil)
        #expect(server.requests.allSatisfy { $0.header("authorization") == "Bearer hf_secret" })
    }

    /// The token never goes to a CDN on another origin.
    @Test func tokenStaysOnTheHub() throws {
        let server = try LoopbackHubServer(), cdn = try LoopbackHubServer()
        defer { server.stop(); cdn.stop() }
        server.cdnServer = cdn
        let files = Self.files()
        server.addRepo("org/private", files: files, lfs: ["model.safetensors"], token: "hf_secret")
        let (env, _) = Self.env(server, ["HF_TOKEN": "hf_secret"])
        let r = try Self.hub(env).fetch(HubRepo(parsing: "org/private"))
        #expect(try Data(contentsOf: r.snapshot.appendingPathComponent("model.safetensors")) == files["model.safetensors"])
        #expect(server.requests.allSatisfy { $0.header("authorization") == "Bearer hf_secret" })
        #expect(cdn.requests.count == 1 && cdn.requests.allSatisfy { $0.header("authorization") == nil })
    }

    /// Transport errors become a short one-line reason, whatever FoundationNetworking puts in them.
    @Test func transportErrorsAreShort() {
        func err(_ code: Int, _ desc: String?, underlying: String? = nil) -> NSError {
            var info: [String: Any] = ["NSErrorFailingURLStringKey": "http://127.0.0.1:1/cdn/" + String(repeating: "a", count: 64)]
            if let desc { info[NSLocalizedDescriptionKey] = desc }
            if let underlying {
                info[NSUnderlyingErrorKey] = NSError(domain: NSURLErrorDomain, code: -1, userInfo: [NSLocalizedDescriptionKey: underlying])
            }
            return NSError(domain: NSURLErrorDomain, code: code, userInfo: info)
        }
        // libcurl errors that FoundationNetworking leaves as NSURLErrorUnknown (-1), with curl's message
        #expect(HTTP.describe(err(-1, "transfer closed with 176544 bytes remaining to read")) == "connection lost")
        #expect(HTTP.describe(err(-1, nil, underlying: "transfer closed with 1 bytes remaining to read")) == "connection lost")
        #expect(HTTP.describe(err(-1, "Recv failure: Connection reset by peer")) == "connection lost")
        #expect(HTTP.describe(err(-1, "Operation timed out after 10001 milliseconds with 0 bytes received")) == "no answer in time")
        #expect(HTTP.describe(err(-1, "SSL certificate problem: self-signed certificate")) == "TLS failed")
        #expect(HTTP.describe(err(NSURLErrorNetworkConnectionLost, nil)) == "connection lost")
        #expect(HTTP.describe(err(NSURLErrorCannotFindHost, "whatever")) == "host not found")
        // anything else: one short line, never the userInfo dictionary
        let odd = HTTP.describe(err(-1, "something\nodd happened " + String(repeating: "x", count: 300)))
        #expect(odd.hasPrefix("network error -1: something odd happened xxx") && odd.count <= 100 && !odd.contains("\n"), "\(odd)")
        #expect(HTTP.describe(err(-1, nil)) == "network error -1")
        #expect(HTTP.describe(err(-1, "(null)")) == "network error -1")
    }

    @Test func unreachableHost() throws {
        let (env, _) = Self.env(nil, ["HF_ENDPOINT": "http://127.0.0.1:9"])  // nothing listens on port 9
        let e = #expect(throws: ZeroSegError.self) { try Self.hub(env).fetch(HubRepo(parsing: "org/clip")) }
        #expect(e?.message == "cannot download org/clip: 127.0.0.1 is unreachable (connection refused)")
    }

    @Test func branchesAndCommits() throws {
        let server = try LoopbackHubServer()
        defer { server.stop() }
        let other = "fedcba9876543210fedcba9876543210fedcba98"
        server.addRepo("org/clip", files: Self.files(), lfs: ["model.safetensors"], commit: Self.commit,
                       branches: ["main": Self.commit, "refs/pr/5": Self.commit, "v1": Self.commit])
        let (env, cache) = Self.env(server)
        let r = try Self.hub(env).fetch(HubRepo(parsing: "org/clip@refs/pr/5"))
        let repoDir = cache.appendingPathComponent("models--org--clip")
        #expect(try String(contentsOf: repoDir.appendingPathComponent("refs/refs/pr/5"), encoding: .utf8) == Self.commit)
        #expect(server.requests.first?.path == "/org/clip/resolve/refs%2Fpr%2F5/config.json")
        // another branch at the same commit: HEADs, but no download
        let r2 = try Self.hub(env).fetch(HubRepo(parsing: "org/clip@v1"))
        #expect(r2.snapshot == r.snapshot && r2.downloaded.isEmpty)
        #expect(try String(contentsOf: repoDir.appendingPathComponent("refs/v1"), encoding: .utf8) == Self.commit)
        // a commit hash that is not cached: asked for directly, no refs written for it
        let e = #expect(throws: ZeroSegError.self) { try Self.hub(env).fetch(HubRepo(parsing: "org/clip@\(other)")) }
        #expect(e?.message == "org/clip has no revision \(other) on \(server.endpoint) (404)")
        #expect(!FileManager.default.fileExists(atPath: repoDir.appendingPathComponent("refs/\(other)").path))
    }

    /// End to end: a real (tiny, synthetic) checkpoint served by the hub, loaded through `--model ORG/NAME`.
    @Test func modelResolverDownloadsAndLoads() throws {
        let server = try LoopbackHubServer()
        defer { server.stop() }
        let src = temporaryDirectory()
        try Synth.write(arch: .tiny, seed: 1, to: src)
        var files: [String: Data] = [:]
        for f in try FileManager.default.contentsOfDirectory(atPath: src.path) {
            files[f] = try Data(contentsOf: src.appendingPathComponent(f))
        }
        server.addRepo("org/tiny", files: files, lfs: ["model.safetensors"], commit: Self.commit)
        let (env, _) = Self.env(server)
        // Synth.write also writes tokenizer_config.json, which zeroseg does not use: it is not fetched
        let taken = Set(HubFiles.configs + HubFiles.weights + HubFiles.optional)
        let wanted = files.keys.filter { taken.contains($0) }
        #expect(Set(wanted) == ["config.json", "model.safetensors", "vocab.json", "merges.txt", "preprocessor_config.json"])
        let bytes = wanted.reduce(Int64(0)) { $0 + Int64(files[$1]!.count) }
        let log = HubLog()
        let m = try ModelResolver.load("org/tiny", environment: env, warn: { log.add($0) })
        #expect(m.config.projectionDim == 24)
        #expect(m.source.hasSuffix("models--org--tiny/snapshots/\(Self.commit)"))
        #expect(log.lines.count == 1, "\(log.lines)")
        #expect(log.lines.first?.hasPrefix("downloading org/tiny (5 files, \(formatBytes(bytes))) from ") == true, "\(log.lines) \(files.keys)")
        #expect(!server.requests.contains { $0.path.hasSuffix("/tokenizer_config.json") })
        #expect(log.lines[0].hasSuffix(" from \(server.endpoint) into \(env["HF_HUB_CACHE"]!)"))
        // $ZEROSEG_MODEL names a hub id too
        server.resetLog()
        var e2 = env
        e2["ZEROSEG_MODEL"] = "org/tiny"
        #expect(try ModelResolver.load(nil, environment: e2, warn: { log.add($0) }).source == m.source)
        #expect(server.requests.isEmpty)
    }

    /// `zeroseg weights fetch ID`: the snapshot path on stdout, one line per message on stderr, one-line errors.
    @Test func weightsFetchCommand() throws {
        let server = try LoopbackHubServer()
        defer { server.stop() }
        server.addRepo("org/clip", files: Self.files(), lfs: ["model.safetensors"], commit: Self.commit)
        let (env, cache) = Self.env(server)
        var cli = env
        // the test run itself may be offline (HF_HUB_OFFLINE=1) and have a token: not the command under test
        cli["HF_HOME"] = env["HOME"]! + "/hf"
        for k in ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"] { cli[k] = "0" }
        for k in ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HUGGINGFACE_HUB_CACHE"] { cli[k] = "" }
        let snap = cache.appendingPathComponent("models--org--clip/snapshots/\(Self.commit)").path
        let files = "config.json, model.safetensors, vocab.json, merges.txt"
        let r = try runCLI(["weights", "fetch", "org/clip"], environment: cli)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == snap + "\n")
        #expect(r.stderr == """
            downloading org/clip (4 files, 300.0 kB) from \(server.endpoint) into \(cache.path)
            downloaded 4 files of org/clip (commit 0123456789ab): \(files)

            """, "\(r.stderr)")
        #expect(server.requests.contains { $0.method == "GET" })
        // again: nothing to download
        let again = try runCLI(["weights", "fetch", "org/clip", "--revision", "main"], environment: cli)
        #expect(again.status == 0 && again.stdout == snap + "\n")
        #expect(again.stderr == "org/clip (commit 0123456789ab) is in the cache: \(files)\n", "\(again.stderr)")
        // offline: from the cache, no request
        server.resetLog()
        var offline = cli
        offline["HF_HUB_OFFLINE"] = "1"
        let off = try runCLI(["weights", "fetch", "org/clip"], environment: offline)
        #expect(off.status == 0 && off.stdout == snap + "\n", "\(off.stderr)")
        #expect(server.requests.isEmpty)
        // errors: one line, non-zero exit, nothing on stdout
        let missing = try runCLI(["weights", "fetch", "org/missing"], environment: cli)
        #expect(missing.status != 0 && missing.stdout.isEmpty)
        #expect(missing.stderr == "error: org/missing: \(server.endpoint) refused access (401): the repository is private or gated, or does not exist; set HF_TOKEN to a token that can read it\n")
        let bad = try runCLI(["weights", "fetch", "not-an-id"], environment: cli)
        #expect(bad.status != 0 && bad.stderr == "error: not-an-id is not a Hugging Face model id (ORG/NAME, letters, digits, - _ .)\n", "\(bad.stderr)")
        let clash = try runCLI(["weights", "fetch", "org/clip@v2", "--revision", "v1"], environment: cli)
        #expect(clash.status != 0 && clash.stderr == "error: org/clip@v2 names revision v2 but --revision says v1\n", "\(clash.stderr)")
    }

    @Test func defaultModelFallsBackWithAReason() throws {
        let (env, cache) = Self.env(nil, ["HF_HUB_OFFLINE": "1"])
        // a stand-in synthetic model, so that the fallback need not write the 600 MB one
        let synth = URL(fileURLWithPath: env["HOME"]!).appendingPathComponent(".cache/zeroseg/synthetic/vit-b-16-seed0")
        try FileManager.default.createDirectory(at: synth, withIntermediateDirectories: true)
        try Data().write(to: synth.appendingPathComponent("model.safetensors"))
        let log = HubLog()
        let r = try ModelResolver.resolve(nil, environment: env, warn: { log.add($0) })
        #expect(r.isSyntheticFallback && r.directory.path == synth.path)
        #expect(log.lines == ["warning: no model given (--model or $ZEROSEG_MODEL) and openai/clip-vit-base-patch16 is not available (openai/clip-vit-base-patch16 is not available offline: it is not in the Hugging Face cache (\(cache.path)), and HF_HUB_OFFLINE is set): using a SYNTHETIC random ViT-B/16 (seed 0). Its outputs are meaningless; see weights/README.md to get real weights."])
        // a named model is never replaced by the fallback
        #expect(throws: ZeroSegError.self) { try ModelResolver.resolve("org/missing", environment: env, warn: { _ in }) }
        var e2 = env
        e2["ZEROSEG_MODEL"] = "/nonexistent/dir"
        let e = #expect(throws: ZeroSegError.self) { try ModelResolver.resolve(nil, environment: e2, warn: { _ in }) }
        #expect(e?.message.hasPrefix("model /nonexistent/dir not found") == true)
    }
}

final class HubLog: @unchecked Sendable {
    private let lock = NSLock()
    private var _lines: [String] = []
    func add(_ s: String) { lock.withLock { _lines.append(s) } }
    var lines: [String] { lock.withLock { _lines } }
}
