import Foundation
import Testing
@testable import ZeroSegIndex
import ZeroSeg

/// Indexing folders of pictures with the tiny model: one encoder pass for both embeddings,
/// incremental updates, kill and resume, the commands.
@Suite(.serialized) struct IndexDirectoryTests {
    static var model: CLIPModel { SegmentationGoldenTests.tinyModel }

    /// `count` small distinct PNG pictures (blocks of colour from a seed) in a new folder.
    static func pictures(_ count: Int, seed: UInt64 = 1, size: (Int, Int) = (48, 36)) throws -> URL {
        let dir = temporaryDirectory("index-pictures")
        for i in 0..<count { try writePicture(dir.appendingPathComponent(String(format: "p%03d.png", i)), seed: seed * 1000 + UInt64(i), size: size) }
        return dir
    }

    static func writePicture(_ url: URL, seed: UInt64, size: (Int, Int) = (48, 36)) throws {
        var rng = SplitMix64(seed: seed)
        let (w, h) = size
        var px = [Float](repeating: 0, count: w * h * 3)
        for _ in 0..<6 {
            let x0 = Int(rng.next() % UInt64(w)), y0 = Int(rng.next() % UInt64(h))
            let x1 = min(w, x0 + 4 + Int(rng.next() % UInt64(w / 2))), y1 = min(h, y0 + 4 + Int(rng.next() % UInt64(h / 2)))
            let c = (0..<3).map { _ in Float(rng.next() % 256) }
            for y in y0..<y1 { for x in x0..<x1 { for k in 0..<3 { px[(y * w + x) * 3 + k] = c[k] } } }
        }
        try writeRGBPNG(try RGBImage(width: w, height: h, pixels: px), to: url)
    }

    /// Everything an index holds, keyed by path: content hash and each vector's kind, region and float16 bits.
    static func contents(_ dir: URL) throws -> [String: String] {
        let ix = try EmbeddingIndex.open(at: dir)
        var out: [String: String] = [:]
        for im in try ix.images() {
            let vs = try ix.vectors(ofImage: im.id)
            out[im.path] = im.sha256 + "|" + vs.map { v in
                "\(v.kind.rawValue):\(v.region.map { "\($0.box)\($0.source)\($0.mask?.counts ?? [])" } ?? "-"):" + v.vector.map { String(Float16($0).bitPattern) }.joined(separator: ",")
            }.joined(separator: ";")
        }
        return out
    }

    @Test func onePassEqualsTheSeparateEncoders() throws {
        let m = Self.model, s = m.preprocessor.cropSize
        let px = randomFloats(2 * 3 * s * s, seed: 21)
        let (global, patches, gh, gw) = try px.withUnsafeBufferPointer {
            try m.imageAndPatchEmbeddings(pixels: $0.baseAddress!, batch: 2, height: s, width: s, method: .naclip, threads: 2)
        }
        let want = try px.withUnsafeBufferPointer { try m.encodePixels($0.baseAddress!, batch: 2, height: s, width: s, threads: 2) }
        #expect(global == want)
        let (dense, dh, dw) = try px.withUnsafeBufferPointer {
            try m.densePatchEmbeddings(pixels: $0.baseAddress!, batch: 2, height: s, width: s, method: .naclip, threads: 2)
        }
        #expect(gh == dh && gw == dw)
        let n = 2 * gh * gw * m.config.projectionDim
        #expect(Array(UnsafeBufferPointer(start: patches.ptr, count: n)) == Array(UnsafeBufferPointer(start: dense.ptr, count: n)))
    }

    @Test func embedderGlobalIsTheImageEmbeddingAndRegionsLieInThePicture() throws {
        let img = try RGBImage.load(repoRoot.appendingPathComponent("examples/rocket.jpg"))
        for mode in [RegionMode.grid, .proposals] {
            var o = IndexingOptions()
            o.regions = mode
            let e = try RegionEmbedder(model: Self.model, options: o, threads: 2)
            let v = try e.embed([img, img])
            #expect(v[0].global == (try Self.model.encodeImages([img, img], batch: 2, threads: 2))[0])
            #expect(maxAbsDiff(v[0].global, try Self.model.encodeImages([img])[0]) < 1e-6)
            #expect(v[0].regions.count == v[1].regions.count)
            if mode == .grid { #expect(v[0].regions.count == 13) }
            #expect(!v[0].regions.isEmpty)
            for (r, vec) in v[0].regions {
                #expect(r.box.x0 >= 0 && r.box.y0 >= 0 && r.box.x1 <= img.width && r.box.y1 <= img.height && !r.box.isEmpty)
                #expect(abs(vec.reduce(0) { $0 + $1 * $1 } - 1) < 1e-4)
                if let mask = r.mask {
                    #expect(mask.width == img.width && mask.height == img.height && mask.counts.reduce(0, +) == img.width * img.height)
                    #expect(RLEMask(bits: mask.bits(), width: mask.width, height: mask.height) == mask)
                }
            }
        }
    }

    @Test func incrementalAddChangeDelete() throws {
        let pics = try Self.pictures(5)
        let dir = temporaryDirectory("index-incr")
        defer { try? FileManager.default.removeItem(at: dir); try? FileManager.default.removeItem(at: pics) }
        var o = IndexingOptions()
        o.regions = .grid
        o.batch = 2
        let indexer = DirectoryIndexer(embedder: try RegionEmbedder(model: Self.model, options: o, threads: 2))
        let index = try EmbeddingIndex.create(at: dir, identity: EmbeddingIndex.identity(of: Self.model), regions: .grid)
        var r = try indexer.update(index, roots: [pics])
        #expect(r.added == 5 && r.updated == 0 && r.removed == 0 && r.unchanged == 0 && r.failed.isEmpty)
        #expect(r.images == 5 && r.imageVectors == 5 && r.regionVectors == 5 * 13)
        let before = try index.images()
        let beforeVectors = try before.map { try index.vectors(ofImage: $0.id).map(\.id) }
        r = try indexer.update(index, roots: [pics])
        #expect(r.added == 0 && r.updated == 0 && r.removed == 0 && r.unchanged == 5)
        #expect(try index.generation() == (try index.generation()))
        // Change p001, delete p003, add p009 and a file that is not a picture.
        try Self.writePicture(pics.appendingPathComponent("p001.png"), seed: 99)
        try FileManager.default.removeItem(at: pics.appendingPathComponent("p003.png"))
        try Self.writePicture(pics.appendingPathComponent("p009.png"), seed: 98)
        try Data("not a png".utf8).write(to: pics.appendingPathComponent("broken.png"))
        r = try indexer.update(index, roots: [pics])
        #expect(r.added == 1 && r.updated == 1 && r.removed == 1 && r.unchanged == 3)
        #expect(r.failed.map { URL(fileURLWithPath: $0.path).lastPathComponent } == ["broken.png"])
        let after = try index.images()
        #expect(after.map { URL(fileURLWithPath: $0.path).lastPathComponent } == ["p000.png", "p001.png", "p002.png", "p004.png", "p009.png"])
        // Untouched images keep their rows and vectors.
        for (im, vecs) in zip(before, beforeVectors) where ["p000.png", "p002.png", "p004.png"].contains(URL(fileURLWithPath: im.path).lastPathComponent) {
            let now = after.first { $0.path == im.path }!
            #expect(now == im)
            #expect(try index.vectors(ofImage: now.id).map(\.id) == vecs)
        }
        // A search finds a picture by itself.
        let p9 = try RGBImage.load(pics.appendingPathComponent("p009.png"))
        let hits = try index.search(SearchQuery(image: p9), model: Self.model, options: SearchOptions(k: 3))
        #expect(hits.first?.image?.path.hasSuffix("p009.png") == true)
        #expect(abs((hits.first?.score ?? 0) - 1) < 2e-3)
        // Regions: one hit per image unless asked.
        let regionHits = try index.search(SearchQuery(text: "a red square"), model: Self.model, options: SearchOptions(k: 50, kind: .region))
        #expect(regionHits.count == 5 && Set(regionHits.map { $0.image!.id }).count == 5 && regionHits.allSatisfy { $0.region != nil })
        let all = try index.search(SearchQuery(text: "a red square"), model: Self.model, options: SearchOptions(k: 50, kind: .region, onePerImage: false))
        #expect(all.count == 50)
        #expect(zip(all, all.dropFirst()).allSatisfy { $0.score >= $1.score })
    }

    @Test func negativeTermsSubtract() throws {
        let pics = try Self.pictures(4, seed: 3)
        let dir = temporaryDirectory("index-neg")
        defer { try? FileManager.default.removeItem(at: dir); try? FileManager.default.removeItem(at: pics) }
        var o = IndexingOptions()
        o.regions = .none
        let index = try EmbeddingIndex.create(at: dir, identity: EmbeddingIndex.identity(of: Self.model), regions: .none)
        _ = try DirectoryIndexer(embedder: try RegionEmbedder(model: Self.model, options: o)).update(index, roots: [pics])
        let t = [Templates.single[0]]
        let plain = try index.search(SearchQuery(text: "cat", templates: t), model: Self.model, options: SearchOptions(k: 4))
        let neg = try index.search(SearchQuery(text: "cat", negatives: ["dog"], templates: t), model: Self.model, options: SearchOptions(k: 4))
        let cat = try Self.model.encodeText(["a photo of a cat."])[0], dog = try Self.model.encodeText(["a photo of a dog."])[0]
        for h in neg {
            let v = try index.vector(id: h.id).vector
            let want = zip(v, cat).reduce(0) { $0 + $1.0 * $1.1 } - zip(v, dog).reduce(0) { $0 + $1.0 * $1.1 }
            #expect(abs(h.score - want) < 1e-4)
        }
        #expect(plain.count == 4 && neg.count == 4)
    }

    // MARK: The commands

    @Test func indexAndSearchCommands() throws {
        let pics = try Self.pictures(3, seed: 5)
        let dir = temporaryDirectory("index-cli").appendingPathComponent("ix")
        defer { try? FileManager.default.removeItem(at: dir.deletingLastPathComponent()); try? FileManager.default.removeItem(at: pics) }
        let tiny = GoldenModelTests.tinyDir.path
        var r = try runCLI(["index", pics.path, "--out", dir.path, "--model", tiny, "--regions", "grid", "--quiet"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.hasPrefix("\(dir.path): 3 images, 3 image vectors, 39 region vectors (3 added, 0 updated, 0 removed, 0 unchanged, 0 failed) in "))
        r = try runCLI(["search", dir.path, "a cat", "--regions", "--top", "2", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let obj = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        let hits = obj["hits"] as! [[String: Any]]
        #expect(hits.count == 2)
        for h in hits {
            #expect((h["path"] as! String).hasPrefix(pics.standardizedFileURL.path))
            #expect(h["score"] is Double)
            let box = (h["region"] as! [String: Any])["box"] as! [String: Int]
            #expect(Set(box.keys) == ["x0", "y0", "x1", "y1"])
        }
        #expect((obj["command"] as! String) == "search")
        // The library gives the same hits.
        let lib = try EmbeddingIndex.open(at: dir).search(SearchQuery(text: "a cat"), model: Self.model, options: SearchOptions(k: 2, kind: .region))
        #expect(lib.map { $0.image!.path } == hits.map { $0["path"] as! String })
        // Plain output: one line per hit; the contact sheet, one tile per hit.
        let sheet = dir.deletingLastPathComponent().appendingPathComponent("sheet.png")
        r = try runCLI(["search", dir.path, "a cat", "--top", "3", "--regions", "--sheet", sheet.path])
        #expect(r.status == 0 && r.stdout.split(separator: "\n").count == 3, "\(r.stderr)")
        let png = try RGBImage.load(sheet)
        let lib3 = try EmbeddingIndex.open(at: dir).search(SearchQuery(text: "a cat"), model: Self.model, options: SearchOptions(k: 3, kind: .region))
        let again = dir.deletingLastPathComponent().appendingPathComponent("again.png")
        try writeRGBPNG(try SearchSheet.render(lib3, title: "a cat: 3 hits"), to: again)
        #expect(png == (try RGBImage.load(again)) && png.width > 0)
        // Errors: one line, an exit code.
        r = try runCLI(["search", dir.path])
        #expect(r.status == 2 && r.stderr == "error: give a TEXT to search for, or --image\n")
        r = try runCLI(["search", dir.path, "a cat", "--model", GoldenModelTests.tinyDir.path + "/../tiny-does-not-exist"])
        #expect(r.status == 4)
        r = try runCLI(["index", pics.path, "--out", dir.path, "--model", tiny, "--regions", "none"])
        #expect(r.status == 2 && r.stderr.contains("was made with --regions grid"))
        r = try runCLI(["search", pics.path, "a cat", "--model", tiny])
        #expect(r.status == 3 && r.stderr.hasPrefix("error: ") && r.stderr.contains("is not a zeroseg index"))
    }

    @Test func wrongModelIsRefusedByTheCommands() throws {
        let pics = try Self.pictures(1, seed: 6)
        let root = temporaryDirectory("index-wrong")
        defer { try? FileManager.default.removeItem(at: root); try? FileManager.default.removeItem(at: pics) }
        let dir = root.appendingPathComponent("ix")
        // An index recorded as made by another model.
        _ = try EmbeddingIndex.create(at: dir, identity: IndexIdentity(fingerprint: "0123456789abcdef", source: "other-model", dim: Self.model.config.projectionDim), regions: .none)
        let tiny = GoldenModelTests.tinyDir.path
        var r = try runCLI(["search", dir.path, "a cat", "--model", tiny])
        #expect(r.status == 2 && r.stderr.hasPrefix("error: index \(dir.path) was made with model other-model"), "\(r.stderr)")
        r = try runCLI(["index", pics.path, "--out", dir.path, "--model", tiny])
        #expect(r.status == 2 && r.stderr.contains("was made with model other-model"), "\(r.stderr)")
        // An index of the tiny model without regions: --regions is refused, an empty one has no hits.
        let own = root.appendingPathComponent("own")
        _ = try EmbeddingIndex.create(at: own, identity: EmbeddingIndex.identity(of: Self.model), regions: .none)
        r = try runCLI(["search", own.path, "a cat", "--regions", "--model", tiny])
        #expect(r.status == 2 && r.stderr == "error: --regions: the index at \(own.path) has no regions (it was made with --regions none)\n", "\(r.stderr)")
        r = try runCLI(["search", own.path, "a cat", "--model", tiny])
        #expect(r.status == 0 && r.stdout == "no hits (the index holds no pictures)\n", "\(r.stdout)")
    }

    /// A child `zeroseg index` killed at random points (SIGKILL and SIGINT, 20 times), then run to
    /// the end: the index is valid and holds what an index built in one go holds.
    @Test func killedIndexingResumes() throws {
        let pics = try Self.pictures(30, seed: 7)
        let root = temporaryDirectory("index-kill")
        defer { try? FileManager.default.removeItem(at: root); try? FileManager.default.removeItem(at: pics) }
        let tiny = GoldenModelTests.tinyDir.path
        let oneGo = root.appendingPathComponent("one-go"), resumed = root.appendingPathComponent("resumed")
        func args(_ out: URL) -> [String] { ["index", pics.path, "--out", out.path, "--model", tiny, "--regions", "proposals", "--batch", "3", "--threads", "2", "--quiet"] }
        let t0 = Date()
        let full = try runCLI(args(oneGo))
        #expect(full.status == 0, "\(full.stderr)")
        let fullSeconds = Date().timeIntervalSince(t0)
        // 20 kills that land while the child runs (bounded attempts): a run that finished before
        // its kill had nothing left to do, so the index starts again from nothing.
        var rng = SplitMix64(seed: 2026)
        var kills = 0, attempts = 0, restarts = 0
        var outcomes: [String] = []
        while kills < 20 && attempts < 80 {
            attempts += 1
            let child = try SpawnedCLI(args(resumed))
            Thread.sleep(forTimeInterval: Double(rng.next() % 1000) / 1000 * fullSeconds * 0.9)
            let sent = child.signal(kills % 2 == 0 ? SIGKILL : SIGINT)
            let status = child.wait()
            outcomes.append("\(sent ? "L" : "-")\(status)")
            if sent && status.signal != nil {
                kills += 1
            } else if status == .exited(0) {
                try FileManager.default.removeItem(at: resumed)  // it finished first: start again
                restarts += 1
                continue
            } else {
                Issue.record("child ended with \(status)")
            }
            if EmbeddingIndex.exists(at: resumed) {
                // Usable after every kill: it opens, verifies and answers.
                let ix = try EmbeddingIndex.open(at: resumed)
                try ix.verify()
                _ = try ix.search(vectors: [[Float](repeating: 0.1, count: Self.model.config.projectionDim)], options: SearchOptions(k: 3))
            }
        }
        #expect(kills == 20, "\(kills) kills landed in \(attempts) attempts (\(restarts) restarts; \(outcomes.prefix(12)); full run \(fullSeconds) s)")
        let last = try runCLI(args(resumed))
        #expect(last.status == 0, "\(last.stderr)")
        try EmbeddingIndex.open(at: resumed).verify()
        let a = try Self.contents(oneGo), b = try Self.contents(resumed)
        #expect(a.count == 30)
        #expect(a == b)
    }
}

/// The built `zeroseg` binary started with posix_spawn, SIGINT and SIGTERM at their default
/// actions (a test runner may ignore SIGINT, and ignored signals are inherited across exec), output
/// discarded; `signal` and `wait` on its pid.
final class SpawnedCLI {
    enum Status: Equatable, CustomStringConvertible {
        case exited(Int32), signalled(Int32)
        var signal: Int32? { if case .signalled(let s) = self { return s } else { return nil } }
        var description: String { switch self { case .exited(let c): return "exit \(c)"; case .signalled(let s): return "signal \(s)" } }
    }
    let pid: pid_t
    private var status: Status?

    /// `stderr`: a file that gets the child's standard error (else /dev/null); `directory`: its
    /// working directory; `environment`: added to (or, with "", removed from) this process's.
    init(_ args: [String], stderr: String? = nil, directory: String? = nil, environment: [String: String] = [:]) throws {
        let exe = zerosegExecutable()
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var defaults = sigset_t(), empty = sigset_t()
        sigemptyset(&defaults); sigaddset(&defaults, SIGINT); sigaddset(&defaults, SIGTERM)
        sigemptyset(&empty)
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, stderr ?? "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        // In another working directory: through sh's `cd`, then exec (the same process id).
        let command = directory.map { ["/bin/sh", "-c", "cd \"$0\" && exec \"$@\"", $0, exe.path] } ?? [exe.path]
        let argv = (command + args).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var env = ProcessInfo.processInfo.environment
        env["XDG_CACHE_HOME"] = temporaryDirectory("zeroseg-cli-cache").path
        for (k, v) in environment { env[k] = v.isEmpty ? nil : v }
        let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { envp.forEach { free($0) } }
        var p: pid_t = 0
        let rc = posix_spawn(&p, command[0], &actions, &attr, argv, envp)
        guard rc == 0 else { throw ZeroSegError("posix_spawn: \(String(cString: strerror(rc)))") }
        pid = p
    }

    /// Sends `sig` if the child has not ended yet (checked without reaping it); true when sent.
    func signal(_ sig: Int32) -> Bool {
        var info = siginfo_t()
        guard waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0, info._sifields._sigchld.si_pid == 0 else { return false }
        return kill(pid, sig) == 0
    }

    func wait() -> Status {
        if let status { return status }
        var st: Int32 = 0
        while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
        let s: Status = (st & 0x7f) == 0 ? .exited((st >> 8) & 0xff) : .signalled(st & 0x7f)
        status = s
        return s
    }

    deinit { if status == nil { kill(pid, SIGKILL); _ = wait() } }
}
