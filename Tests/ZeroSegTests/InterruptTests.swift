import Foundation
import Testing
import ZeroSeg
#if canImport(Glibc)
import Glibc
#endif

/// SIGINT / SIGTERM in the middle of a folder run, and `--skip-existing` (docs/reliability.md,
/// "Faults"): the images finished are complete, no temporary file is left, the run exits with
/// 128 + the signal and one error line, and the resumed run ends with the bytes of an
/// uninterrupted one.
@Suite struct InterruptTests {
    var tiny: String { GoldenModelTests.tinyDir.path }
    // the same OpenBLAS kernels in every run (no re-execution), so that runs compare byte for byte
    var small: [String] { ["--model", tiny, "--short-side", "64", "--window", "32", "--stride", "16", "--templates", "single",
                           "--threads", "2", "--quiet", "--no-timings", "--classes", "cat,grass|lawn,wall", "--background", "sky"] }
    static let sameKernels = ["ZEROSEG_BLAS_REEXEC": "same kernels in every run"]

    static func jsonCount(_ dir: URL) -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []).filter { $0.hasSuffix(".json") && !$0.hasPrefix(".") }.count
    }

    @Test(arguments: [SIGINT, SIGTERM])
    func signalMidFolderThenResume(_ sig: Int32) throws {
        let dir = temporaryDirectory("zeroseg-interrupt")
        let names = (0..<40).map { String(format: "img%02d.png", $0) }
        let imgs = try OutputFaultTests.images(names, in: dir.appendingPathComponent("imgs"))
        let ref = dir.appendingPathComponent("ref"), out = dir.appendingPathComponent("out")
        let r0 = try runCLI([imgs.path, "--out", ref.path] + small, environment: Self.sameKernels)
        #expect(r0.status == 0, "\(r0.stderr)")
        let want = try folderContents(ref)
        #expect(want.count == 3 * names.count)

        // interrupted once a few images are done (SpawnedCLI: SIGINT and SIGTERM at their default actions, unmasked)
        let stderrFile = dir.appendingPathComponent("stderr.txt")
        let child = try SpawnedCLI([imgs.path, "--out", out.path] + small, stderr: stderrFile.path, environment: Self.sameKernels)
        let deadline = Date().addingTimeInterval(120)
        while Self.jsonCount(out) < 3 && Date() < deadline { usleep(5_000) }
        #expect(child.signal(sig), "the run ended before the signal")
        let status = child.wait()
        let stderr = (try? String(contentsOf: stderrFile, encoding: .utf8)) ?? ""
        #expect(status == .exited(128 + sig), "\(status): \(stderr)")
        let done = Self.jsonCount(out)
        #expect(done >= 3 && done < names.count, "\(done) done")
        let errors = stderr.split(separator: "\n").filter { !$0.hasPrefix("warning: ") }
        let signame = sig == SIGINT ? "SIGINT" : "SIGTERM"
        #expect(errors == ["error: interrupted by \(signame) after \(done) of \(names.count) image(s) done: run again with --skip-existing to resume"],
                "\(stderr)")
        // what is there is complete and final: for each image, all three files with the uninterrupted run's bytes, or nothing
        let got = try folderContents(out)
        #expect(try leftoverTemporaryFiles(out).isEmpty)
        for (name, bytes) in got { #expect(want[name] == bytes, "\(name)") }
        let stems = Set(got.keys.map { String($0.prefix(5)) })
        #expect(got.count == 3 * stems.count && stems.count == done, "\(got.keys.sorted())")

        // resumed: the rest is made, what was done is skipped; the folder equals the uninterrupted one
        let r2 = try runCLI([imgs.path, "--out", out.path, "--skip-existing", "--json"] + small, environment: Self.sameKernels)
        #expect(r2.status == 0, "\(r2.stderr)")
        #expect(try folderContents(out) == want)
        let summary = try JSONSerialization.jsonObject(with: Data(r2.stdout.utf8)) as! [String: Any]
        #expect(summary["skipped"] as? Int == done && summary["written"] as? Int == names.count - done, "\(r2.stdout)")
        #expect(summary["images"] as? Int == names.count && summary["segmented_again"] as? Int == 0)
        #expect(summary["interrupted"] is NSNull && summary["command"] as? String == "segment")
    }

    /// A second SIGINT while the first is being honoured stops at once: exit 130, one error line
    /// (the second signal's, or the first's when the image in flight finished before the second
    /// came), no temporary file, every file there complete with the uninterrupted run's bytes, a
    /// NAME.json only with its other two files (the image in flight may have some files, never its
    /// JSON, written last), and `--skip-existing` then ends with the uninterrupted run's folder.
    @Test func secondSignalStopsAtOnce() throws {
        let dir = temporaryDirectory("zeroseg-interrupt-twice")
        let names = (0..<40).map { String(format: "img%02d.png", $0) }
        let imgs = try OutputFaultTests.images(names, in: dir.appendingPathComponent("imgs"))
        let ref = dir.appendingPathComponent("ref"), out = dir.appendingPathComponent("out")
        let r0 = try runCLI([imgs.path, "--out", ref.path] + small, environment: Self.sameKernels)
        #expect(r0.status == 0, "\(r0.stderr)")
        let want = try folderContents(ref)
        let stderrFile = dir.appendingPathComponent("stderr.txt")
        let child = try SpawnedCLI([imgs.path, "--out", out.path] + small, stderr: stderrFile.path, environment: Self.sameKernels)
        let deadline = Date().addingTimeInterval(120)
        while Self.jsonCount(out) < 2 && Date() < deadline { usleep(5_000) }
        #expect(child.signal(SIGINT), "the run ended before the signal")
        usleep(2_000)
        _ = child.signal(SIGINT)  // false when the first already ended the run
        let status = child.wait()
        let stderr = (try? String(contentsOf: stderrFile, encoding: .utf8)) ?? ""
        #expect(status == .exited(128 + SIGINT), "\(status): \(stderr)")
        let errors = stderr.split(separator: "\n").filter { !$0.hasPrefix("warning: ") }
        #expect(errors.count == 1 && (errors[0].contains("error: stopped by a second SIGINT: the image in flight was not finished: run again with --skip-existing to resume")
                                      || errors[0].contains("error: interrupted by SIGINT after")), "\(stderr)")
        let got = try folderContents(out)
        #expect(try leftoverTemporaryFiles(out).isEmpty)
        for (name, bytes) in got { #expect(want[name] == bytes, "\(name)") }
        let finished = got.keys.filter { $0.hasSuffix(".json") }.map { String($0.prefix(5)) }
        #expect(finished.count >= 2, "\(got.keys.sorted())")
        for stem in finished { #expect(got["\(stem).labels.png"] != nil && got["\(stem).overlay.png"] != nil, "\(stem)") }
        let r2 = try runCLI([imgs.path, "--out", out.path, "--skip-existing"] + small, environment: Self.sameKernels)
        #expect(r2.status == 0, "\(r2.stderr)")
        #expect(try folderContents(out) == want)
    }

    /// `zeroseg eval` on SIGTERM: stops at once with 143 and one line, writes no report, and
    /// leaves no temporary file (the predictions written before are complete files).
    @Test func evalStopsOnSignalWithoutReport() throws {
        let (images, labels) = try makeDataset()
        let fm = FileManager.default
        for i in 0..<3 {  // 3 x 13 pairs, so that the run is still going when the signal comes
            for k in 1...12 {
                try fm.copyItem(at: images.appendingPathComponent("img\(i).png"), to: images.appendingPathComponent("img\(i)-\(k).png"))
                try fm.copyItem(at: labels.appendingPathComponent("img\(i).png"), to: labels.appendingPathComponent("img\(i)-\(k).png"))
            }
        }
        let dir = temporaryDirectory("zeroseg-eval-signal")
        let out = dir.appendingPathComponent("run"), stderrFile = dir.appendingPathComponent("stderr.txt")
        let child = try SpawnedCLI(["eval", "--images", images.path, "--labels", labels.path, "--classes", "cat,grass|lawn,wall",
                                    "--out", out.path, "--save-predictions", "--model", tiny, "--short-side", "40", "--window", "32",
                                    "--stride", "16", "--templates", "single", "--threads", "2"],
                                   stderr: stderrFile.path)
        let predictions = out.appendingPathComponent("predictions")
        let deadline = Date().addingTimeInterval(120)
        while ((try? fm.contentsOfDirectory(atPath: predictions.path))?.filter { $0.hasSuffix(".png") }.count ?? 0) < 2 && Date() < deadline {
            usleep(5_000)
        }
        #expect(child.signal(SIGTERM), "the run ended before the signal")
        let status = child.wait()
        let stderr = (try? String(contentsOf: stderrFile, encoding: .utf8)) ?? ""
        #expect(status == .exited(128 + SIGTERM), "\(status): \(stderr)")
        let errors = stderr.split(separator: "\n").filter { $0.contains("error:") }
        #expect(errors.count == 1 && errors[0].contains("error: interrupted by SIGTERM: no report written"), "\(stderr)")
        #expect(!fm.fileExists(atPath: out.appendingPathComponent("eval.json").path))
        #expect(!fm.fileExists(atPath: out.appendingPathComponent("eval.txt").path))
        #expect(try leftoverTemporaryFiles(out).isEmpty)
        for name in try fm.contentsOfDirectory(atPath: predictions.path) {
            #expect(try RGBImage.load(predictions.appendingPathComponent(name)).width > 0, "\(name) is not a whole PNG")
        }
    }

    /// Outputs made otherwise are not skipped: other classes, a missing file, an image edited
    /// after its outputs; a note says why. Complete ones are skipped and left as they are.
    @Test func staleOutputsAreMadeAgain() throws {
        let dir = temporaryDirectory("zeroseg-stale")
        let imgs = try OutputFaultTests.images(["a.png", "b.png", "c.png"], in: dir.appendingPathComponent("imgs"))
        let out = dir.appendingPathComponent("out")
        let r0 = try runCLI([imgs.path, "--out", out.path] + small, environment: Self.sameKernels)
        #expect(r0.status == 0, "\(r0.stderr)")
        let first = try folderContents(out)

        // everything complete: all skipped, nothing rewritten
        let again = try runCLI([imgs.path, "--out", out.path, "--skip-existing", "--json"] + small, environment: Self.sameKernels)
        #expect(again.status == 0, "\(again.stderr)")
        let s0 = try JSONSerialization.jsonObject(with: Data(again.stdout.utf8)) as! [String: Any]
        #expect(s0["skipped"] as? Int == 3 && s0["written"] as? Int == 0)
        #expect(!again.stderr.contains("note:"))

        // other classes: every output is stale
        var other = small
        other[other.firstIndex(of: "cat,grass|lawn,wall")! ] = "cat,grass|lawn,road"
        let r1 = try runCLI([imgs.path, "--out", out.path, "--skip-existing", "--json"] + other, environment: Self.sameKernels)
        #expect(r1.status == 0, "\(r1.stderr)")
        let s1 = try JSONSerialization.jsonObject(with: Data(r1.stdout.utf8)) as! [String: Any]
        #expect(s1["skipped"] as? Int == 0 && s1["segmented_again"] as? Int == 3 && s1["written"] as? Int == 3)
        #expect(r1.stderr.contains("note: 3 image(s) had stale outputs in \(out.path), segmented again (a.png: a.json was made with other classes)"),
                "\(r1.stderr)")
        #expect(try String(contentsOf: out.appendingPathComponent("a.json"), encoding: .utf8).contains("\"road\""))

        // back to the first classes: a missing overlay and an edited image are made again, the third is skipped
        _ = try runCLI([imgs.path, "--out", out.path] + small, environment: Self.sameKernels)
        try FileManager.default.removeItem(at: out.appendingPathComponent("a.overlay.png"))
        let later = Date().addingTimeInterval(5)
        try FileManager.default.setAttributes([.modificationDate: later], ofItemAtPath: imgs.appendingPathComponent("b.png").path)
        let r2 = try runCLI([imgs.path, "--out", out.path, "--skip-existing", "--json"] + small, environment: Self.sameKernels)
        #expect(r2.status == 0, "\(r2.stderr)")
        let s2 = try JSONSerialization.jsonObject(with: Data(r2.stdout.utf8)) as! [String: Any]
        #expect(s2["skipped"] as? Int == 1 && s2["segmented_again"] as? Int == 2, "\(r2.stdout)")
        #expect(r2.stderr.contains("(a.png: a.overlay.png is missing)"), "\(r2.stderr)")
        #expect(try folderContents(out) == first)
    }

    /// The library: a stop request made while image 2 is segmented lets it finish and be written,
    /// and starts no other; `skipExisting` then does the rest.
    @Test func libraryStopRequestAndResume() throws {
        let dir = temporaryDirectory("zeroseg-stop-lib")
        let imgs = try OutputFaultTests.images((0..<6).map { "i\($0).png" }, in: dir.appendingPathComponent("imgs"))
        let out = dir.appendingPathComponent("out")
        try SegmentationPipeline.prepareOutputDirectory(out)
        let model = try CLIPModel(directory: GoldenModelTests.tinyDir)
        let pipeline = try SegmentationPipeline(model: model, classes: ClassSet.parse("cat,dog"), settings: LibraryPipelineTests.settings,
                                                threads: 2, cache: TextEmbeddingCache(model: model, root: dir.appendingPathComponent("cache")))
        var outputs = SegmentationOutputs()
        outputs.timings = false
        let files = try SegmentationPipeline.collectImages([imgs.path])
        let stop = StopRequest()
        let s = pipeline.run(files, into: out, outputs: outputs, stop: stop, progress: { done, _, next in
            if done == 2 && next != nil { stop.stop(reason: "test") }
        })
        #expect(s.interrupted == "test" && s.succeeded == Array(files.prefix(3)) && s.notStarted == Array(files.dropFirst(3)))
        #expect(s.failed.isEmpty && s.done == 3)
        for f in files.prefix(3) { #expect(pipeline.existingOutputs(for: f, in: out, outputs: outputs) == .complete) }
        for f in files.dropFirst(3) { #expect(pipeline.existingOutputs(for: f, in: out, outputs: outputs) == .absent) }
        let s2 = pipeline.run(files, into: out, outputs: outputs, skipExisting: true)
        #expect(s2.skipped == Array(files.prefix(3)) && s2.succeeded == Array(files.dropFirst(3)) && s2.interrupted == nil)
        // a stop requested before the run: nothing is done
        let before = StopRequest()
        before.stop(reason: "early")
        let s3 = pipeline.run(files, into: dir.appendingPathComponent("none"), outputs: outputs, stop: before)
        #expect(s3.succeeded.isEmpty && s3.notStarted == files && s3.interrupted == "early")
    }
}
