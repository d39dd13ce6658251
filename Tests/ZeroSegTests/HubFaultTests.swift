import Foundation
import Testing
@testable import ZeroSegCore
@testable import ZeroSegHub

/// Downloads against a server that misbehaves (LoopbackHubServer's faults, 127.0.0.1 only):
/// errors that pass are tried again with exponential backoff (`RetrySchedule`), a broken body is
/// resumed with Range, every file is verified, and a file whose hash is wrong is never installed
/// (docs/reliability.md, "Faults"). Waits are small (tens of milliseconds) and only their lower
/// bounds are checked, so that a loaded machine cannot fail them.
@Suite("Hub faults")
struct HubFaultTests {
    static let commit = HubTests.commit
    static let repo = "org/clip"

    static func hub(_ env: [String: String], attempts: Int = 5, delay: TimeInterval = 0.02, timeout: TimeInterval = 10) -> Hub {
        var s = HubSettings(environment: env)
        s.retryDelay = delay
        s.maxAttempts = attempts
        s.timeout = timeout
        return Hub(settings: s, showProgress: false)
    }

    static func server() throws -> (LoopbackHubServer, [String: Data]) {
        let server = try LoopbackHubServer()
        let files = HubTests.files()
        server.addRepo(repo, files: files, lfs: ["model.safetensors"], commit: commit)
        return (server, files)
    }

    static var weightsSHA: String { HubHash.sha256(HubTests.files()["model.safetensors"]!) }

    /// The schedule itself: doubling from the base delay, capped, scaled by the jitter factor;
    /// Retry-After (seconds or an HTTP date) replaces it, capped too.
    @Test func retrySchedule() {
        let s = RetrySchedule(attempts: 5, baseDelay: 1, maxDelay: 30, jitter: 0.5...1)
        #expect((1...6).map { s.delay(afterFailure: $0, random: 1) } == [1, 2, 4, 8, 16, 30])
        #expect((1...4).map { s.delay(afterFailure: $0, random: 0) } == [0.5, 1, 2, 4])
        #expect(s.delay(afterFailure: 100, random: 1) == 30)  // no overflow
        for n in 1...8 {
            let d = s.delay(afterFailure: n)
            #expect(d >= min(pow(2, Double(n - 1)), 30) * 0.5 && d <= min(pow(2, Double(n - 1)), 30), "\(n): \(d)")
        }
        #expect(s.delay(afterFailure: 1, retryAfter: 7) == 7 && s.delay(afterFailure: 3, retryAfter: 120) == 30)
        #expect(HubSettings(environment: ["HOME": "/h"]).retrySchedule == RetrySchedule())
        let now = Date(timeIntervalSince1970: 1_700_000_000)  // Tue, 14 Nov 2023 22:13:20 GMT
        #expect(RetrySchedule.retryAfterSeconds("3") == 3 && RetrySchedule.retryAfterSeconds(" 0 ") == 0)
        #expect(RetrySchedule.retryAfterSeconds("Tue, 14 Nov 2023 22:13:50 GMT", now: now) == 30)
        #expect(RetrySchedule.retryAfterSeconds("Tue, 14 Nov 2023 22:00:00 GMT", now: now) == 0)
        for bad in [nil, "", "-1", "soon", "1.5"] { #expect(RetrySchedule.retryAfterSeconds(bad) == nil, "\(bad ?? "nil")") }
        #expect(RetrySchedule.retryableStatuses == [408, 429, 500, 502, 503, 504])
    }

    /// 500s, then a 503 with Retry-After, on the hub's HEAD; 500, 502 and a 429 with Retry-After 0
    /// on the download, then a cut body: everything recovers, waits follow the schedule (at least
    /// its lower bounds), the download resumes where the cut left it, nothing is fetched twice.
    @Test func serverErrorsThenRecovery() throws {
        let (server, files) = try Self.server()
        defer { server.stop() }
        server.inject(.status(500), file: "config.json", method: "HEAD")
        server.inject(.status(500), file: "config.json", method: "HEAD")
        server.inject(.status(503, retryAfter: "1"), file: "config.json", method: "HEAD")
        for f in [LoopbackHubServer.Fault.status(500), .status(502), .status(429, retryAfter: "0"), .cutAfter(70_000)] {
            server.inject(f, file: "model.safetensors")
        }
        let (env, _) = HubTests.env(server)
        let r = try Self.hub(env, delay: 0.05).fetch(HubRepo(parsing: Self.repo))
        #expect(try Data(contentsOf: r.snapshot.appendingPathComponent("model.safetensors")) == files["model.safetensors"])
        #expect(r.downloadedBytes == Int64(files.values.reduce(0) { $0 + $1.count }))
        let reqs = server.requests
        let heads = reqs.filter { $0.method == "HEAD" && $0.path.hasSuffix("/config.json") }
        #expect(heads.count == 4, "\(heads)")
        if heads.count == 4 {
            let gaps = zip(heads.dropFirst(), heads).map { $0.time.timeIntervalSince($1.time) }
            // failures 1 and 2: 0.05·[0.5, 1] and 0.1·[0.5, 1]; failure 3: Retry-After 1 s
            #expect(gaps[0] >= 0.024 && gaps[1] >= 0.049 && gaps[2] >= 0.99, "\(gaps)")
        }
        let gets = reqs.filter { $0.method == "GET" && $0.path.hasPrefix("/cdn/") }
        #expect(gets.map { $0.header("range") } == [nil, nil, nil, nil, "bytes=70000-"], "\(gets)")
        if gets.count == 5 {
            let gaps = zip(gets.dropFirst(), gets).map { $0.time.timeIntervalSince($1.time) }
            // after 500 (1st failure), 502 (2nd), 429 + Retry-After 0, the cut (it brought bytes: 1st again)
            #expect(gaps[0] >= 0.024 && gaps[1] >= 0.049 && gaps[3] >= 0.024, "\(gaps)")
        }
    }

    /// A body cut at random points, over and over, within one fetch: each try asks for the rest
    /// (the Range is where the file ends), and no byte is fetched twice.
    @Test func cutAtRandomPointsResumes() throws {
        let (server, files) = try Self.server()
        defer { server.stop() }
        var rng = SplitMix(seed: 17)
        let size = files["model.safetensors"]!.count
        var offsets: [Int] = [0]
        for _ in 0..<6 {
            let left = size - offsets.last!
            let cut = 1 + Int(rng.next() % UInt64(left / 3))
            server.inject(.cutAfter(cut), file: "model.safetensors")
            offsets.append(offsets.last! + cut)
        }
        let (env, _) = HubTests.env(server)
        let r = try Self.hub(env, attempts: 2, delay: 0.001).fetch(HubRepo(parsing: Self.repo))
        #expect(try Data(contentsOf: r.snapshot.appendingPathComponent("model.safetensors")) == files["model.safetensors"])
        let ranges = server.requests.filter { $0.method == "GET" && $0.path.hasPrefix("/cdn/") }.map { $0.header("range") }
        #expect(ranges == [nil] + offsets.dropFirst().map { "bytes=\($0)-" }, "\(ranges) \(offsets)")
        #expect(r.downloadedBytes == Int64(files.values.reduce(0) { $0 + $1.count }))
    }

    /// Interrupted at random points across runs (each run gives up after one try): the partial
    /// file keeps what came, the next run resumes it, the last one installs the verified file.
    @Test func interruptedRunsResume() throws {
        let (server, files) = try Self.server()
        defer { server.stop() }
        var rng = SplitMix(seed: 5)
        let (env, cache) = HubTests.env(server)
        let partial = cache.appendingPathComponent("models--org--clip/blobs/\(Self.weightsSHA).incomplete")
        var have = 0
        for _ in 0..<3 {
            let cut = 1 + Int(rng.next() % 90_000)
            server.inject(.cutAfter(cut), file: "model.safetensors")
            #expect(throws: ZeroSegError.self) { try Self.hub(env, attempts: 1).fetch(HubRepo(parsing: Self.repo)) }
            have += cut
            #expect((try FileManager.default.attributesOfItem(atPath: partial.path)[.size] as? NSNumber)?.intValue == have)
            #expect(HubCache(root: cache).usableSnapshot(try HubRepo(parsing: Self.repo)) == nil)  // nothing installed yet
        }
        server.resetLog()
        let r = try Self.hub(env, attempts: 1).fetch(HubRepo(parsing: Self.repo))
        #expect(try Data(contentsOf: r.snapshot.appendingPathComponent("model.safetensors")) == files["model.safetensors"])
        #expect(server.requests.filter { $0.method == "GET" }.map { $0.header("range") } == ["bytes=\(have)-"])
        #expect(!FileManager.default.fileExists(atPath: partial.path))
    }

    /// A slow answer (small pieces with pauses, each shorter than the timeout) completes; a
    /// stalled one (silent longer than the timeout) is given up and resumed.
    @Test func slowAndStalledAnswers() throws {
        let (server, files) = try Self.server()
        defer { server.stop() }
        server.inject(.slow(chunk: 32_768, pause: 0.02), file: "model.safetensors")
        let (env, _) = HubTests.env(server)
        let r = try Self.hub(env, timeout: 5).fetch(HubRepo(parsing: Self.repo))
        #expect(try Data(contentsOf: r.snapshot.appendingPathComponent("model.safetensors")) == files["model.safetensors"])
        #expect(server.requests.filter { $0.method == "GET" && $0.path.hasPrefix("/cdn/") }.count == 1)

        server.inject(.stall(after: 50_000, seconds: 8), file: "model.safetensors")
        let (env2, _) = HubTests.env(server)
        server.resetLog()
        let start = Date()
        let r2 = try Self.hub(env2, timeout: 2).fetch(HubRepo(parsing: Self.repo))
        #expect(try Data(contentsOf: r2.snapshot.appendingPathComponent("model.safetensors")) == files["model.safetensors"])
        let gets = server.requests.filter { $0.method == "GET" && $0.path.hasPrefix("/cdn/") }
        #expect(gets.map { $0.header("range") } == [nil, "bytes=50000-"], "\(gets)")
        #expect(Date().timeIntervalSince(start) >= 1.9)  // it did wait for the timeout
    }

    /// A server that keeps failing: bounded tries, a one-line error, nothing installed (the
    /// partial file is kept for the next run).
    @Test func givesUpAfterBoundedTries() throws {
        let (server, _) = try Self.server()
        defer { server.stop() }
        for _ in 0..<3 { server.inject(.status(503), file: "model.safetensors") }  // as many as the tries
        let (env, cache) = HubTests.env(server)
        let e = #expect(throws: ZeroSegError.self) { try Self.hub(env, attempts: 3, delay: 0.001).fetch(HubRepo(parsing: Self.repo)) }
        let partial = cache.appendingPathComponent("models--org--clip/blobs/\(Self.weightsSHA).incomplete")
        #expect(e?.message == "downloading model.safetensors of org/clip from 127.0.0.1 failed (answered 503); 0 B kept in \(partial.path): run again to resume")
        #expect(server.requests.filter { $0.method == "GET" && $0.path.hasPrefix("/cdn/") }.count == 3)
        let repoDir = cache.appendingPathComponent("models--org--clip")
        for p in ["blobs/\(Self.weightsSHA)", "snapshots/\(Self.commit)/model.safetensors", "refs/main"] {
            #expect(!FileManager.default.fileExists(atPath: repoDir.appendingPathComponent(p).path), "\(p)")
        }
        // the hub's HEAD failing on and on
        for _ in 0..<3 { server.inject(.status(500), file: "config.json", method: "HEAD") }
        let (env2, _) = HubTests.env(server)
        server.resetLog()
        let e2 = #expect(throws: ZeroSegError.self) { try Self.hub(env2, attempts: 3, delay: 0.001).fetch(HubRepo(parsing: Self.repo)) }
        #expect(e2?.message == "config.json of org/clip: \(server.endpoint) answered 500 (3 tries)")
        #expect(server.requests.count == 3)
        // 4xx other than 408 / 429 are not tried again
        server.inject(.status(400), file: "vocab.json")
        let (env3, _) = HubTests.env(server)
        server.resetLog()
        #expect(throws: ZeroSegError.self) { try Self.hub(env3, attempts: 3, delay: 0.001).fetch(HubRepo(parsing: Self.repo)) }
        #expect(server.requests.filter { $0.method == "GET" && $0.path.hasSuffix("/vocab.json") }.count == 1)
    }

    /// Bytes corrupted in the part that comes after a resume: the whole file fails its sha256,
    /// is deleted, and is never installed; the next run starts from zero and succeeds.
    @Test func wrongHashAfterResumeIsNeverInstalled() throws {
        let (server, files) = try Self.server()
        defer { server.stop() }
        server.inject(.cutAfter(100_000), file: "model.safetensors")
        server.inject(.corrupt, file: "model.safetensors")
        let (env, cache) = HubTests.env(server)
        let repoDir = cache.appendingPathComponent("models--org--clip")
        let e = #expect(throws: ZeroSegError.self) { try Self.hub(env).fetch(HubRepo(parsing: Self.repo)) }
        #expect(e?.message.hasPrefix("model.safetensors of org/clip failed verification (sha256 ") == true, "\(e?.message ?? "")")
        let gets = server.requests.filter { $0.method == "GET" && $0.path.hasPrefix("/cdn/") }
        #expect(gets.map { $0.header("range") } == [nil, "bytes=100000-"])
        for p in ["blobs/\(Self.weightsSHA)", "blobs/\(Self.weightsSHA).incomplete", "snapshots/\(Self.commit)/model.safetensors", "refs/main"] {
            #expect(!FileManager.default.fileExists(atPath: repoDir.appendingPathComponent(p).path), "\(p)")
        }
        #expect(HubCache(root: cache).usableSnapshot(try HubRepo(parsing: Self.repo)) == nil)
        server.resetLog()
        let r = try Self.hub(env).fetch(HubRepo(parsing: Self.repo))
        #expect(try Data(contentsOf: r.snapshot.appendingPathComponent("model.safetensors")) == files["model.safetensors"])
        #expect(server.requests.filter { $0.method == "GET" && $0.path.hasPrefix("/cdn/") }.map { $0.header("range") } == [nil])
    }
}

/// A small seeded generator (SplitMix64) for reproducible "random" cut points.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
