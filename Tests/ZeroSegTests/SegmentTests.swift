import Foundation
import Testing
import ZeroSeg
import ZeroSegTestSupport

/// `Segmenter.segment` (streamed over query chunks, bounded memory) against `finish(logits:)` on
/// the full [Q, H, W] logits, and the `zeroseg IMAGE --classes ...` command's outputs and errors.
@Suite struct SegmentTests {
    static let image: RGBImage = {
        let img = try! RGBImage.load(repoRoot.appendingPathComponent("examples/chelsea.jpg"))
        return try! resizeBilinear(img, width: 75, height: 50)
    }()

    func segmenter(_ refine: Refinement, threshold: Float = 0) throws -> Segmenter {
        var o = SegmentationOptions()
        o.shortSide = 40; o.window = 32; o.stride = 16; o.refine = refine; o.threshold = threshold
        o.pamrDilations = [2, 4]
        return try Segmenter(model: try CLIPModel(directory: GoldenModelTests.tinyDir), options: o, threads: 2)
    }

    @Test(arguments: [(Refinement.pamr, Float(0)), (.none, 0.3), (.pamr, 0.26)])
    func streamedSegmentEqualsFullLogits(_ refine: Refinement, _ threshold: Float) throws {
        let seg = try segmenter(refine, threshold: threshold)
        let set = try ClassSet.parse("cat,grass|lawn|meadow,wall,dog", background: "sky,floor")
        let q = try seg.queryEmbeddings(set, templates: ["a photo of a {}.", "a {}."])
        let internals = try seg.logits(Self.image, queries: q)
        let full = try seg.finish(logits: internals.refinedLogits ?? internals.rawLogits, width: Self.image.width,
                              height: Self.image.height, set: set, wantScores: true)
        for chunk in [1, 3, 100] {
            let r = try seg.segment(Self.image, classes: set, queries: q, wantScores: true, queryChunk: chunk)
            let same = zip(r.labels, full.labels).filter { $0 == $1 }.count
            // Only float rounding of the running log-sum-exp can differ: labels exact but for
            // pixels at the threshold within 1e-6.
            #expect(same >= r.labels.count - 1, "chunk \(chunk): \(r.labels.count - same) labels differ")
            #expect(maxAbsDiff(r.scores!, full.scores!) <= 1e-6, "chunk \(chunk)")
            for c in 0..<set.classes.count {
                #expect(abs(r.areaFraction[c] - full.area[c]) <= 1.0 / Double(r.labels.count))
            }
            let plain = try seg.segment(Self.image, classes: set, queries: q, wantScores: false, queryChunk: chunk)
            #expect(plain.scores == nil)
            #expect(plain.labels == r.labels)
        }
        // The background and the threshold really label some pixels 255 in these cases.
        if threshold > 0 { #expect(full.labels.contains(255)) }
    }

    /// The fast PAMR (channels over threads, contiguous interior, affinity rows over threads) equals the
    /// naive formula exactly; planes past `channels` are left as they are; the affinities do not
    /// depend on the thread count.
    @Test func pamrEqualsReference() throws {
        let (h, w) = (23, 37)
        let guide = randomFloats(3 * h * w, seed: 7)
        let masks = randomFloats(5 * h * w, seed: 8)
        let pamr = try PAMR(guide: guide, height: h, width: w, dilations: [1, 3, 40], threads: 3)  // 40 > w: all clamped
        let want = pamr.refineReference(masks, channels: 5, iterations: 3)
        for threads in [1, 2, 3] {
            #expect(try pamr.refine(masks, channels: 5, iterations: 3, threads: threads) == want)
        }
        #expect(try pamr.refine(masks, channels: 5, iterations: 0, threads: 2) == masks)
        let part = try pamr.refine(masks, channels: 3, iterations: 2, threads: 2)
        #expect(Array(part[0..<(3 * h * w)]) == Array(pamr.refineReference(masks, channels: 3, iterations: 2)[0..<(3 * h * w)]))
        #expect(Array(part[(3 * h * w)...]) == Array(masks[(3 * h * w)...]))
        let one = try PAMR(guide: guide, height: h, width: w, dilations: [1, 3, 40], threads: 1)
        #expect(try one.refine(masks, channels: 5, iterations: 3, threads: 2) == want)
        // input that does not fit throws
        #expect(throws: ZeroSegError.self) { try PAMR(guide: Array(guide.dropLast()), height: h, width: w, dilations: [1]) }
        #expect(throws: ZeroSegError.self) { try pamr.refine(Array(masks.dropLast()), channels: 5, iterations: 1) }
        #expect(throws: ZeroSegError.self) { try pamr.refine(masks, channels: 5, iterations: -1) }
    }

    @Test func queryCountMustMatch() throws {
        let seg = try segmenter(.none)
        let set = try ClassSet.parse("cat,dog")
        let q = try seg.queryEmbeddings(try ClassSet.parse("cat"), templates: ["a {}."])
        #expect(throws: ZeroSegError.self) { try seg.segment(Self.image, classes: set, queries: q) }
    }
}

@Suite struct SegmentCLITests {
    var tiny: String { GoldenModelTests.tinyDir.path }
    var small: [String] { ["--model", tiny, "--short-side", "40", "--window", "32", "--stride", "16", "--templates", "single", "--quiet"] }

    func smallImage(_ dir: URL, _ name: String = "cat.png") throws -> URL {
        let u = dir.appendingPathComponent(name)
        try writeRGBPNG(SegmentTests.image, to: u)
        return u
    }

    /// `zeroseg IMAGE --classes ...` (no subcommand name) writes the four outputs, consistent with
    /// the library's result.
    @Test func defaultCommandWritesOutputs() throws {
        let dir = temporaryDirectory("zeroseg-seg-cli")
        let img = try smallImage(dir)
        let out = dir.appendingPathComponent("out")
        let r = try runCLI([img.path, "--classes", "cat,grass|lawn,wall", "--background", "sky", "--scores", "--out", out.path] + small)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == "")
        let files = try FileManager.default.contentsOfDirectory(atPath: out.path).sorted()
        #expect(files == ["cat.json", "cat.labels.png", "cat.overlay.png", "cat.scores.npy"])
        // Labels as the library computes them.
        var o = SegmentationOptions()
        o.shortSide = 40; o.window = 32; o.stride = 16
        let seg = try Segmenter(model: try CLIPModel(directory: GoldenModelTests.tinyDir), options: o, threads: 2)
        let set = try ClassSet.parse("cat,grass|lawn,wall", background: "sky")
        let lib = try seg.segment(try RGBImage.load(img), classes: set,
                                  queries: try seg.queryEmbeddings(set, templates: ["a photo of a {}."]), wantScores: true)
        let labels = try Evaluation.loadLabelMap(out.appendingPathComponent("cat.labels.png"))
        #expect(labels.width == 75 && labels.height == 50)
        // The CLI may run with other OpenBLAS kernels than this test process (it re-executes
        // itself with OPENBLAS_CORETYPE on CPUs OpenBLAS does not know): float rounding only.
        let agree = zip(labels.values, lib.labels).filter { $0 == $1 }.count
        #expect(agree >= labels.values.count * 999 / 1000, "\(labels.values.count - agree) labels differ")
        let overlay = try RGBImage.load(out.appendingPathComponent("cat.overlay.png"))
        #expect(overlay.height >= 50 && overlay.width > 75)
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("cat.json"))) as! [String: Any]
        let classes = json["classes"] as! [[String: Any]]
        #expect(classes.map { $0["name"] as! String } == ["cat", "grass", "wall"])
        #expect(classes[1]["names"] as! [String] == ["grass", "lawn"])
        for (i, c) in classes.enumerated() { #expect(abs((c["area"] as! Double) - lib.areaFraction[i]) < 1e-12) }
        #expect((json["model"] as! [String: Any])["synthetic"] as! Bool == true)
        #expect((json["settings"] as! [String: Any])["method"] as! String == "naclip")
        #expect(json["zeroseg_version"] as! String == ZeroSeg.version)
        // scores.npy: numpy header, float32 [3, 50, 75], values as the library's.
        let npy = try Data(contentsOf: out.appendingPathComponent("cat.scores.npy"))
        #expect(npy.count == 128 + 3 * 50 * 75 * 4)
        let header = String(decoding: npy[10..<128], as: UTF8.self)
        #expect(header.hasPrefix("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 50, 75), }"))
        let values = npy[128...].withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        #expect(maxAbsDiff(values, lib.scores!) <= 1e-5)
        #expect(r.stderr.contains("SYNTHETIC"))
    }

    @Test func foldersUnreadableImagesAndStems() throws {
        let dir = temporaryDirectory("zeroseg-seg-cli")
        let imgs = dir.appendingPathComponent("imgs")
        try FileManager.default.createDirectory(at: imgs, withIntermediateDirectories: true)
        _ = try smallImage(imgs, "a.png")
        _ = try smallImage(imgs, "b.png")
        try Data("not a picture".utf8).write(to: imgs.appendingPathComponent("c.jpg"))
        let out = dir.appendingPathComponent("out")
        let r = try runCLI(["segment", imgs.path, "--classes", "cat,dog", "--out", out.path] + small)
        #expect(r.status == 1)
        let errors = r.stderr.split(separator: "\n").filter { $0.hasPrefix("error: ") }
        #expect(errors.count == 2, "\(r.stderr)")
        #expect(errors.first?.contains("c.jpg") == true)
        #expect(errors.last == "error: 1 of 3 image(s) failed")
        let files = try FileManager.default.contentsOfDirectory(atPath: out.path).sorted()
        #expect(files == ["a.json", "a.labels.png", "a.overlay.png", "b.json", "b.labels.png", "b.overlay.png"])

        // Two inputs with the same stem: an error before any work.
        _ = try smallImage(dir, "a.png")
        let clash = try runCLI([imgs.appendingPathComponent("a.png").path, dir.appendingPathComponent("a.png").path,
                                "--classes", "cat", "--out", dir.appendingPathComponent("out2").path] + small)
        #expect(clash.status != 0)
        #expect(clash.stderr.hasPrefix("error: inputs ") && clash.stderr.contains("same name a"))
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("out2").path))
    }

    /// Bad input: one line `error: ...`, non-zero exit, nothing written.
    static let manyClasses: String = (0..<255).map { "c\($0)" }.joined(separator: ",")
    static let badArgs: [[String]] = [
        ["--classes", ""],
        ["--classes", "cat,,dog"],
        ["--classes", "cat,cat"],
        ["--classes", manyClasses],
        ["--classes", "cat", "--method", "bogus"],
        ["--classes-file", "/nonexistent/classes.txt"],
        ["--classes", "cat", "--classes-file", "x.txt"],
        ["--classes", "cat", "--stride", "300"],
        ["--classes", "cat", "--templates", "/nonexistent/templates.txt"],
        ["--classes", "cat", "--model", "/nonexistent/model"],
    ]

    @Test(arguments: badArgs)
    func badInput(_ args: [String]) throws {
        let prefix = "error: "
        let dir = temporaryDirectory("zeroseg-seg-cli")
        let img = try smallImage(dir)
        let out = dir.appendingPathComponent("out")
        var a = [img.path, "--out", out.path, "--quiet"] + args
        if !args.contains("--model") { a += ["--model", tiny] }
        let r = try runCLI(a)
        #expect(r.status != 0)
        #expect(r.stderr.hasPrefix(prefix) && r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
        let written = (try? FileManager.default.contentsOfDirectory(atPath: out.path)) ?? []
        #expect(written.isEmpty, "\(written)")
    }

    @Test func unwritableOutputAndMissingImage() throws {
        let dir = temporaryDirectory("zeroseg-seg-cli")
        let img = try smallImage(dir)
        let blocker = dir.appendingPathComponent("file")
        try Data().write(to: blocker)
        let r = try runCLI([img.path, "--classes", "cat", "--out", blocker.appendingPathComponent("out").path] + small)
        #expect(r.status != 0 && r.stderr.hasPrefix("error: cannot create output folder"), "\(r.stderr)")
        let m = try runCLI([dir.appendingPathComponent("nope.jpg").path, "--classes", "cat", "--out", dir.appendingPathComponent("o").path] + small)
        #expect(m.status != 0 && m.stderr == "error: \(dir.appendingPathComponent("nope.jpg").path): no such file or folder\n")
    }
}
