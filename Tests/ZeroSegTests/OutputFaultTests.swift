import Foundation
import Testing
@testable import ZeroSegCore
import ZeroSeg
#if canImport(Glibc)
import Glibc
#endif

/// Faults of the output folder that must lose nothing (docs/reliability.md, "Faults"): a full
/// file system and a read-only one, made real with a small tmpfs (`SmallFileSystem`; the tests
/// are disabled where mount(8) is not allowed), through the atomic writer, the library's
/// pipeline and the `zeroseg` command.
@Suite(.enabled(if: SmallFileSystem.canMount, "needs mount -t tmpfs (root with CAP_SYS_ADMIN)"))
struct OutputFaultTests {
    var tiny: String { GoldenModelTests.tinyDir.path }
    var small: [String] { ["--model", tiny, "--short-side", "40", "--window", "32", "--stride", "16", "--templates", "single",
                           "--threads", "2", "--quiet", "--no-timings"] }

    /// Input images: `names` in a new folder, a few different pictures.
    static func images(_ names: [String], in dir: URL) throws -> URL {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        for (i, n) in names.enumerated() {
            var img = SegmentTests.image
            if i % 2 == 1 { img = try RGBImage(width: img.width, height: img.height, pixels: img.pixels.reversed()) }
            try writeRGBPNG(img, to: dir.appendingPathComponent(n))
        }
        return dir
    }

    /// The atomic writer on a full disk: ENOSPC, kind `.io`, a storage failure; the file it
    /// replaces keeps its bytes; no temporary file is left.
    @Test func atomicWriteOnFullDisk() throws {
        let fs = try SmallFileSystem(bytes: 256 * 1024)
        defer { fs.unmount() }
        let target = fs.root.appendingPathComponent("kept.json")
        try writeDataAtomically(Data("old".utf8), to: target)
        try fs.fill()
        let e = #expect(throws: ZeroSegError.self) { try writeDataAtomically(Data(count: 64 * 1024), to: target, what: "JSON") }
        #expect(e?.systemCode == ENOSPC && e?.isStorageFailure == true, "\(String(describing: e))")
        #expect(e?.kind == .io(file: target.path))
        #expect(e?.message == "cannot write JSON \(target.path): \(String(cString: strerror(ENOSPC)))")
        #expect(try Data(contentsOf: target) == Data("old".utf8))
        #expect(try leftoverTemporaryFiles(fs.root).isEmpty)
        #expect(AtomicWrites.pending.allSatisfy { !$0.hasPrefix(fs.root.path) })
        // a PNG (written by the C shim through write(2)) is known as ENOSPC too
        let png = #expect(throws: ZeroSegError.self) {
            try writeRGBPNG(SegmentTests.image, to: fs.root.appendingPathComponent("x.png"))
        }
        #expect(png?.systemCode == ENOSPC && png?.isStorageFailure == true, "\(String(describing: png))")
        #expect(try leftoverTemporaryFiles(fs.root).isEmpty)
    }

    /// `zeroseg FOLDER` into a folder on a file system with room for one page: the first image's
    /// label PNG fits, its overlay does not. One error line, exit 5 (`.io`), the image's files
    /// removed, no temporary file, the outputs of an earlier run kept byte for byte, later images
    /// not attempted.
    @Test func fullDiskStopsTheRunAndKeepsEarlierOutputs() throws {
        let dir = temporaryDirectory("zeroseg-full")
        let first = try Self.images(["a.png"], in: dir.appendingPathComponent("first"))
        let second = try Self.images(["b.png", "c.png", "d.png"], in: dir.appendingPathComponent("second"))
        let fs = try SmallFileSystem(bytes: 512 * 1024)
        defer { fs.unmount() }
        let out = fs.root.appendingPathComponent("out")
        let r1 = try runCLI([first.path, "--classes", "cat,dog", "--out", out.path] + small)
        #expect(r1.status == 0, "\(r1.stderr)")
        let before = try folderContents(out)
        #expect(before.keys.sorted() == ["a.json", "a.labels.png", "a.overlay.png"])
        // room for exactly one page: the labels PNG (< 4 kB) fits, the overlay does not
        let slack = fs.root.appendingPathComponent("slack")
        try Data(count: 4096).write(to: slack)
        try fs.fill()
        try FileManager.default.removeItem(at: slack)
        let r = try runCLI([second.path, "--classes", "cat,dog", "--out", out.path, "--json"] + small)
        #expect(r.status == 5, "\(r.stderr)")
        let errors = r.stderr.split(separator: "\n").filter { !$0.hasPrefix("warning: ") }
        #expect(errors.count == 1, "\(r.stderr)")
        let nospace = String(cString: strerror(ENOSPC))
        #expect(errors.first == "error: cannot write PNG \(out.path)/b.overlay.png: \(nospace); stopped: 0 of 3 image(s) done",
                "\(r.stderr)")
        #expect(try folderContents(out) == before)  // b's labels PNG removed, nothing else written, a's intact
        #expect(try leftoverTemporaryFiles(fs.root).isEmpty)
        let summary = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        #expect(summary["written"] as? Int == 0 && summary["not_started"] as? Int == 2 && (summary["failed"] as? [Any])?.count == 1)
        #expect((summary["storage_error"] as? String)?.hasSuffix(nospace) == true && summary["interrupted"] is NSNull)
    }

    /// A read-only output folder (a tmpfs remounted read-only: root cannot write it either): the
    /// command says so before loading the model, exit 5, the folder's files untouched.
    @Test func readOnlyOutputFolder() throws {
        let dir = temporaryDirectory("zeroseg-ro")
        let imgs = try Self.images(["a.png", "b.png"], in: dir.appendingPathComponent("imgs"))
        let fs = try SmallFileSystem(bytes: 512 * 1024)
        defer { fs.unmount() }
        let out = fs.root.appendingPathComponent("out")
        let r1 = try runCLI([imgs.appendingPathComponent("a.png").path, "--classes", "cat,dog", "--out", out.path] + small)
        #expect(r1.status == 0, "\(r1.stderr)")
        let before = try folderContents(out)
        try fs.remountReadOnly()
        let r = try runCLI([imgs.path, "--classes", "cat,dog", "--out", out.path] + small)
        #expect(r.status == 5)
        #expect(r.stderr == "error: output folder \(out.path) is not writable (\(String(cString: strerror(EROFS))))\n", "\(r.stderr)")
        #expect(try folderContents(out) == before)
        // a folder that does not exist yet on a read-only file system: it cannot be created
        let r2 = try runCLI([imgs.path, "--classes", "cat,dog", "--out", fs.root.appendingPathComponent("new").path] + small)
        #expect(r2.status == 5 && r2.stderr.hasPrefix("error: cannot create output folder ") && r2.stderr.split(separator: "\n").count == 1,
                "\(r2.stderr)")
    }

    /// The library's pipeline into a folder that turned read-only (after `prepareOutputDirectory`):
    /// the first write fails with EROFS, the run stops there, the failure is reported once, the
    /// other inputs are not attempted.
    @Test func pipelineStopsOnStorageFailure() throws {
        let dir = temporaryDirectory("zeroseg-ro-lib")
        let imgs = try Self.images(["a.png", "b.png", "c.png"], in: dir.appendingPathComponent("imgs"))
        let fs = try SmallFileSystem(bytes: 256 * 1024)
        defer { fs.unmount() }
        try SegmentationPipeline.prepareOutputDirectory(fs.root)
        try fs.remountReadOnly()
        let model = try CLIPModel(directory: GoldenModelTests.tinyDir)
        let pipeline = try SegmentationPipeline(model: model, classes: ClassSet.parse("cat,dog"), settings: LibraryPipelineTests.settings,
                                                threads: 2, cache: TextEmbeddingCache(model: model, root: dir.appendingPathComponent("cache")))
        let reported = HubLog()
        let files = try SegmentationPipeline.collectImages([imgs.path])
        let s = pipeline.run(files, into: fs.root, failure: { f, e in reported.add("\(f.lastPathComponent): \(e)") })
        #expect(s.storageFailure?.systemCode == EROFS, "\(String(describing: s.storageFailure))")
        #expect(s.succeeded.isEmpty && s.failed.map(\.input) == [files[0]] && s.interrupted == nil)
        // image b may have been segmented while a's outputs were being written: it is not written either
        #expect(s.notStarted == Array(files.dropFirst()))
        #expect(reported.lines.count == 1 && reported.lines[0].hasPrefix("a.png: cannot write label"), "\(reported.lines)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: fs.root.path).isEmpty)
    }
}

/// The pipeline's handling of a storage failure where no file system can be mounted: the
/// atomic writer's test-only fault (`AtomicWrites.injectFailure`, ENOSPC for every write under
/// one folder, after the temporary file exists) stands in for the full disk. Runs everywhere;
/// `OutputFaultTests` shows the same with a real full disk where mount(8) is allowed.
@Suite struct InjectedStorageFailureTests {
    @Test func pipelineStopsAndKeepsEarlierOutputs() throws {
        let dir = temporaryDirectory("zeroseg-enospc-injected")
        let imgs = try OutputFaultTests.images(["a.png", "b.png", "c.png", "d.png"], in: dir.appendingPathComponent("imgs"))
        let out = dir.appendingPathComponent("out")
        try SegmentationPipeline.prepareOutputDirectory(out)
        let model = try CLIPModel(directory: GoldenModelTests.tinyDir)
        let pipeline = try SegmentationPipeline(model: model, classes: ClassSet.parse("cat,dog"), settings: LibraryPipelineTests.settings,
                                                threads: 2, cache: TextEmbeddingCache(model: model, root: dir.appendingPathComponent("cache")))
        let files = try SegmentationPipeline.collectImages([imgs.path])
        #expect(pipeline.run([files[0]], into: out).failed.isEmpty)
        let before = try folderContents(out)
        AtomicWrites.injectFailure(ENOSPC, under: out.path)
        defer { AtomicWrites.injectFailure(nil, under: out.path) }
        let reported = HubLog()
        let s = pipeline.run(Array(files.dropFirst()), into: out, failure: { f, e in reported.add("\(f.lastPathComponent): \(e)") })
        #expect(s.storageFailure?.systemCode == ENOSPC && s.storageFailure?.isStorageFailure == true)
        #expect(s.failed.map(\.input) == [files[1]] && s.notStarted == Array(files.dropFirst(2)) && s.succeeded.isEmpty)
        #expect(reported.lines == ["b.png: cannot write label PNG \(out.path)/b.labels.png: \(String(cString: strerror(ENOSPC)))"])
        #expect(try folderContents(out) == before)
        #expect(try leftoverTemporaryFiles(out).isEmpty)
    }
}
