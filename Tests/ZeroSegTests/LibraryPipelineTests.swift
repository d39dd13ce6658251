import Foundation
import Testing
import ZeroSeg

/// The library's pipelines give the CLI's exact outputs: the built `zeroseg` binary and the
/// library types with the same settings write byte-identical files (timings and dates off on
/// both sides: `--no-timings` / `timings = false`).
///
/// Both sides must compute with the same OpenBLAS kernels and thread count: the CLI is run with
/// `ZEROSEG_BLAS_REEXEC` set (it then keeps this process's kernels instead of re-executing
/// itself with other ones) and `--threads 2`, the library with `threads: 2`.
@Suite struct LibraryPipelineTests {
    var tiny: String { GoldenModelTests.tinyDir.path }
    static let sameKernels = ["ZEROSEG_BLAS_REEXEC": "same kernels as the test process"]
    var small: [String] { ["--model", tiny, "--short-side", "40", "--window", "32", "--stride", "16", "--templates", "single",
                           "--threads", "2", "--quiet", "--no-timings"] }

    /// The settings `small` gives.
    static var settings: SegmentationSettings {
        var s = SegmentationSettings()
        s.options.shortSide = 40; s.options.window = 32; s.options.stride = 16
        s.templates = "single"
        return s
    }

    /// The files under `dir` (not folders), as relative paths, sorted.
    static func files(_ dir: URL) throws -> [String] {
        let e = FileManager.default.enumerator(atPath: dir.path)!
        return (e.allObjects as! [String]).filter { rel in
            var isDir: ObjCBool = false
            return FileManager.default.fileExists(atPath: dir.appendingPathComponent(rel).path, isDirectory: &isDir) && !isDir.boolValue
        }.sorted()
    }

    @Test func oneImageGivesTheCLIsBytes() throws {
        let dir = temporaryDirectory("zeroseg-lib-seg")
        let img = dir.appendingPathComponent("cat.png")
        try writeRGBPNG(SegmentTests.image, to: img)
        let cliOut = dir.appendingPathComponent("cli"), libOut = dir.appendingPathComponent("lib")
        let r = try runCLI([img.path, "--classes", "cat,grass|lawn,wall", "--background", "sky", "--scores", "--out", cliOut.path] + small,
                           environment: Self.sameKernels)
        #expect(r.status == 0, "\(r.stderr)")

        // The same run through the library.
        let model = try CLIPModel(directory: GoldenModelTests.tinyDir)
        let files = try SegmentationPipeline.collectImages([img.path])
        try SegmentationPipeline.prepareOutputDirectory(libOut)
        let pipeline = try SegmentationPipeline(model: model, classes: ClassSet.parse("cat,grass|lawn,wall", background: "sky"),
                                                settings: Self.settings, threads: 2,
                                                cache: TextEmbeddingCache(model: model, root: dir.appendingPathComponent("cache")))
        var outputs = SegmentationOutputs()
        outputs.scores = true
        outputs.timings = false
        let summary = pipeline.run(files, into: libOut, outputs: outputs)
        #expect(summary.failed.isEmpty && summary.succeeded == files)

        let names = try Self.files(cliOut)
        #expect(names == ["cat.json", "cat.labels.png", "cat.overlay.png", "cat.scores.npy"])
        #expect(try Self.files(libOut) == names)
        for n in names {
            #expect(try Data(contentsOf: cliOut.appendingPathComponent(n)) == Data(contentsOf: libOut.appendingPathComponent(n)), "\(n) differs")
        }
        // The record reads back and writes the same bytes; no date, timings all zero.
        let bytes = try Data(contentsOf: cliOut.appendingPathComponent("cat.json"))
        let record = try JSONOutput.decode(SegmentRecord.self, from: bytes)
        #expect(try JSONOutput.data(record) == bytes)
        #expect(record.header.date == nil && !record.header.timings.isEmpty && record.header.timings.values.allSatisfy { $0 == 0 })
        #expect(record.header.command == "segment" && record.header.model == ModelRecord(model))
        #expect(record.settings.segmentation.background == ["sky"] && record.settings.dataset == nil)
    }

    @Test func twoStageWithProposalsGivesTheCLIsBytes() throws {
        let dir = temporaryDirectory("zeroseg-lib-two")
        let img = dir.appendingPathComponent("cat.png")
        try writeRGBPNG(SegmentTests.image, to: img)
        let cliOut = dir.appendingPathComponent("cli"), libOut = dir.appendingPathComponent("lib")
        let r = try runCLI([img.path, "--classes", "cat,grass", "--mode", "two-stage", "--max-proposals", "6", "--region-features", "pooled",
                            "--save-proposals", "--out", cliOut.path] + small, environment: Self.sameKernels)
        #expect(r.status == 0, "\(r.stderr)")
        var settings = Self.settings
        settings.mode = .twoStage
        settings.twoStage.proposalSettings.maxProposals = 6
        settings.twoStage.regionFeatures = .pooled
        let model = try CLIPModel(directory: GoldenModelTests.tinyDir)
        try SegmentationPipeline.prepareOutputDirectory(libOut)
        let pipeline = try SegmentationPipeline(model: model, classes: ClassSet.parse("cat,grass"), settings: settings, threads: 2,
                                                cache: TextEmbeddingCache(model: model, root: dir.appendingPathComponent("cache")))
        var outputs = SegmentationOutputs()
        outputs.proposals = true
        outputs.timings = false
        #expect(pipeline.run([img], into: libOut, outputs: outputs).failed.isEmpty)
        let names = try Self.files(cliOut)
        #expect(names.contains("cat.proposals.json") && names.contains("cat/000.png"))
        #expect(try Self.files(libOut) == names)
        for n in names {
            #expect(try Data(contentsOf: cliOut.appendingPathComponent(n)) == Data(contentsOf: libOut.appendingPathComponent(n)), "\(n) differs")
        }
    }

    @Test func oneEvalGivesTheCLIsReport() throws {
        let (images, labels) = try makeDataset()
        let dir = temporaryDirectory("zeroseg-lib-eval")
        let cliOut = dir.appendingPathComponent("cli"), libOut = dir.appendingPathComponent("lib")
        let r = try runCLI(["eval", "--images", images.path, "--labels", labels.path, "--classes", "cat,grass|lawn,wall",
                            "--seen", "cat,wall", "--out", cliOut.path] + small, environment: Self.sameKernels)
        #expect(r.status == 0, "\(r.stderr)")

        let classes = try ClassSet.parse("cat,grass|lawn,wall")
        var s = EvaluationSettings(images: images, labels: labels)
        s.seen = try classes.indices(of: ["cat", "wall"], parameter: "seen")
        s.outputDirectory = libOut
        s.timings = false
        let model = try CLIPModel(directory: GoldenModelTests.tinyDir)
        let run = try EvaluationRun(classes: classes, segmentation: Self.settings, settings: s)
        #expect(run.pairs.map(\.stem) == ["img0", "img1", "img2"])
        let report = try run.run(model: model, threads: 2, cache: TextEmbeddingCache(model: model, root: dir.appendingPathComponent("cache")))
        try run.write(report)

        let cliJSON = try Data(contentsOf: cliOut.appendingPathComponent("eval.json"))
        #expect(try Data(contentsOf: libOut.appendingPathComponent("eval.json")) == cliJSON)
        #expect(try String(contentsOf: libOut.appendingPathComponent("eval.txt"), encoding: .utf8) == r.stdout)
        #expect(report.table == r.stdout)
        let back = try JSONOutput.decode(EvalReport.self, from: cliJSON)
        #expect(back == report)
        #expect(back.header.command == "eval" && back.header.date == nil && back.images == 3)
        #expect(back.seenUnseen?.seen == ["cat", "wall"])
        #expect(back.settings.dataset?.threads == 2 && back.settings.dataset?.ignore == 255)
    }

    @Test func oneTuneGivesTheCLIsPromptFile() throws {
        let (images, labels) = try makeDataset()
        let dir = temporaryDirectory("zeroseg-lib-tune")
        let cliFile = dir.appendingPathComponent("cli.safetensors"), libFile = dir.appendingPathComponent("lib.safetensors")
        let r = try runCLI(["tune", "--images", images.path, "--labels", labels.path, "--classes", "cat,grass|lawn,wall", "--seen", "cat,wall",
                            "--out", cliFile.path, "--head", "linear", "--ctx", "3", "--epochs", "2", "--batch", "2", "--lr", "0.01", "--no-feature-cache"] + small,
                           environment: Self.sameKernels)
        #expect(r.status == 0, "\(r.stderr)")

        let classes = try ClassSet.parse("cat,grass|lawn,wall")
        let dataset = try TuneDataset(images: images, labels: labels, classes: classes,
                                      seen: classes.indices(of: ["cat", "wall"], parameter: "seen"))
        var o = TuneOptions()
        o.training.epochs = 2; o.training.batch = 2; o.training.lr = 0.01
        o.contextLength = 3; o.featureCache = false; o.timings = false
        o.head.head = .linear; o.head.visualPrompts = 0
        let training = try PromptTraining(dataset: dataset, segmentation: Self.settings, options: o, output: libFile)
        let model = try CLIPModel(directory: GoldenModelTests.tinyDir)
        guard case .finished(let result) = try training.run(model: model, threads: 2) else {
            Issue.record("stopped early")
            return
        }
        // Same tensors, same metadata (the report), same bytes.
        let cli = try PromptFile(url: cliFile, model: model), lib = try PromptFile(url: libFile, model: model)
        #expect(cli.prompts == lib.prompts && lib.prompts == result.prompts)
        #expect(cli.infoJSON == lib.infoJSON && lib.report == result.report)
        #expect(try Data(contentsOf: cliFile) == Data(contentsOf: libFile))
        #expect(result.report.header.command == "tune" && result.report.seen == ["cat", "wall"] && result.report.unseen == ["grass"])
    }

    /// The library reports each failed input through the callback and goes on with the others.
    @Test func failuresAreReportedPerInput() throws {
        let dir = temporaryDirectory("zeroseg-lib-fail")
        let good = dir.appendingPathComponent("a.png"), bad = dir.appendingPathComponent("b.jpg")
        try writeRGBPNG(SegmentTests.image, to: good)
        try Data("not a picture".utf8).write(to: bad)
        let model = try CLIPModel(directory: GoldenModelTests.tinyDir)
        let pipeline = try SegmentationPipeline(model: model, classes: ClassSet.parse("cat,dog"), settings: Self.settings, threads: 2,
                                                cache: TextEmbeddingCache(model: model, root: dir.appendingPathComponent("cache")))
        let out = dir.appendingPathComponent("out")
        try SegmentationPipeline.prepareOutputDirectory(out)
        let seen = Locked<[String]>([])
        var steps: [Int] = []
        let summary = pipeline.run([bad, good], into: out, progress: { done, _, _ in steps.append(done) },
                                   failure: { url, _ in seen.update { $0.append(url.lastPathComponent) } })
        #expect(seen.value == ["b.jpg"])
        #expect(steps == [0, 1, 2])
        #expect(summary.succeeded == [good] && summary.failed.map(\.input) == [bad])
        #expect((summary.failed.first?.error as? ZeroSegError)?.kind == .badInput(file: bad.path))
        #expect(try Self.files(out) == ["a.json", "a.labels.png", "a.overlay.png"])
    }

    // MARK: Errors

    /// Every error kind has its exit code (README "Exit codes"), and one `error:` line.
    @Test func exitCodesSayTheKind() throws {
        let dir = temporaryDirectory("zeroseg-exit")
        let img = dir.appendingPathComponent("cat.png")
        try writeRGBPNG(SegmentTests.image, to: img)
        let truncated = repoRoot.appendingPathComponent("Tests/ZeroSegTests/Fixtures/images/inputs/jpeg_truncated.jpg").path
        let gif = dir.appendingPathComponent("x.gif")
        try Data("GIF89a\u{1}\u{0}\u{1}\u{0}".utf8).write(to: gif)
        // a model whose weights file is garbage
        let corrupt = dir.appendingPathComponent("corrupt")
        try FileManager.default.createDirectory(at: corrupt, withIntermediateDirectories: true)
        for f in ["config.json", "vocab.json", "merges.txt"] {
            try FileManager.default.copyItem(at: GoldenModelTests.tinyDir.appendingPathComponent(f), to: corrupt.appendingPathComponent(f))
        }
        try Data(repeating: 7, count: 100).write(to: corrupt.appendingPathComponent("model.safetensors"))
        // a model whose config names an activation zeroseg does not implement
        let unsupported = dir.appendingPathComponent("unsupported")
        try FileManager.default.copyItem(at: GoldenModelTests.tinyDir, to: unsupported)
        let config = unsupported.appendingPathComponent("config.json")
        try Data(String(decoding: Data(contentsOf: config), as: UTF8.self).replacingOccurrences(of: "\"quick_gelu\"", with: "\"swish\"").utf8)
            .write(to: config)
        let blocker = dir.appendingPathComponent("file")
        try Data().write(to: blocker)
        let seg = ["--classes", "cat", "--model", tiny, "--short-side", "40", "--window", "32", "--stride", "16", "--templates", "single", "--quiet"]

        let cases: [([String], Int32, String)] = [
            (["classify", "--model", tiny, truncated, "--classes", "a,b"], 3, "corrupt or truncated JPEG"),
            ([truncated, "--out", dir.appendingPathComponent("o1").path] + seg, 3, "corrupt or truncated JPEG"),
            ([dir.appendingPathComponent("nope.png").path, "--out", dir.appendingPathComponent("o2").path] + seg, 3, "no such file or folder"),
            (["classify", "--model", corrupt.path, img.path, "--classes", "a,b"], 4, "invalid safetensors file"),
            (["classify", "--model", "/nonexistent/model", img.path, "--classes", "a,b"], 4, "not found"),
            ([img.path, "--out", blocker.appendingPathComponent("out").path] + seg, 5, "cannot create output folder"),
            (["classify", "--model", tiny, gif.path, "--classes", "a,b"], 6, "GIF is not supported"),
            (["classify", "--model", unsupported.path, img.path, "--classes", "a,b"], 6, "unsupported hidden_act"),
            ([img.path, "--out", dir.appendingPathComponent("o3").path] + seg + ["--stride", "300"], 2, "--stride: the window stride 300 is larger"),
            (["classify", "--model", tiny, img.path], 2, "--classes"),
        ]
        for (args, code, needle) in cases {
            let r = try runCLI(args)
            #expect(r.status == code, "\(args): exit \(r.status), stderr \(r.stderr)")
            let errors = r.stderr.split(separator: "\n").filter { $0.hasPrefix("error: ") }
            #expect(errors.count >= 1 && errors.allSatisfy { !$0.contains("\n") } && r.stderr.contains(needle), "\(args): \(r.stderr)")
        }
        // a folder where one image of several fails: 1
        let folder = dir.appendingPathComponent("folder")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: img, to: folder.appendingPathComponent("a.png"))
        try FileManager.default.copyItem(at: URL(fileURLWithPath: truncated), to: folder.appendingPathComponent("b.jpg"))
        let some = try runCLI([folder.path, "--out", dir.appendingPathComponent("o4").path] + seg)
        #expect(some.status == 1 && some.stderr.contains("error: 1 of 2 image(s) failed"), "\(some.stderr)")
    }

    /// Library error messages speak of parameters, never of command-line flags; the CLI adds the
    /// flag.
    @Test func libraryErrorsNameNoFlags() throws {
        var o = SegmentationOptions()
        o.stride = 300
        #expect(throws: ZeroSegError.invalidArgument("the window stride 300 is larger than the window 224: pixels would be left out",
                                                     parameter: "stride")) { try o.validate() }
        var t = TuneSettings()
        t.epochs = 0
        #expect(throws: ZeroSegError.invalidArgument("the number of epochs must be between 1 and 10000", parameter: "epochs")) { try t.validate() }
        let m = try CLIPModel(directory: GoldenModelTests.tinyDir)
        #expect(throws: ZeroSegError.invalidArgument("the number of context vectors must be between 1 and 60", parameter: "contextLength")) {
            try m.initialContext(count: 61, phrase: nil)
        }
        #expect(throws: ZeroSegError.invalidArgument("the list of unseen names no class", parameter: "unseen")) {
            try ClassSet.parse("a,b").indices(of: [" "], parameter: "unseen")
        }
        // No string literal of the library's sources holds a flag ("--name").
        let fm = FileManager.default
        let sources = repoRoot.appendingPathComponent("Sources")
        var offenders: [String] = []
        for target in try fm.contentsOfDirectory(atPath: sources.path) where target.hasPrefix("ZeroSeg") {
            let dir = sources.appendingPathComponent(target)
            for f in try Self.files(dir) where f.hasSuffix(".swift") {
                let text = try String(contentsOf: dir.appendingPathComponent(f), encoding: .utf8)
                for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                    let code = line.trimmingCharacters(in: .whitespaces)
                    guard !code.hasPrefix("//"), code.contains("Error") || code.contains("warn(") else { continue }
                    if code.range(of: #""[^"]*--[a-z][^"]*""#, options: .regularExpression) != nil { offenders.append("\(target)/\(f):\(n + 1)") }
                }
            }
        }
        #expect(offenders.isEmpty, "\(offenders)")
    }

    // MARK: Vocabulary

    /// A model folder with its own vocabulary says so; without one the bundled vocabulary is used
    /// (and the CLI says so on stderr); another vocabulary size or tokenizer is refused.
    @Test func vocabularySource() throws {
        let own = try CLIPModel(directory: GoldenModelTests.tinyDir)
        #expect(own.vocabularySource == .modelFolder(GoldenModelTests.tinyDir))
        let quiet = try runCLI(["embed", "--model", tiny, "--text", "a"])
        #expect(quiet.status == 0 && quiet.stderr.isEmpty, "\(quiet.stderr)")

        let d = temporaryDirectory("zeroseg-vocab")
        for f in ["config.json", "model.safetensors"] {
            try FileManager.default.copyItem(at: GoldenModelTests.tinyDir.appendingPathComponent(f), to: d.appendingPathComponent(f))
        }
        let bundled = try CLIPModel(directory: d)
        #expect(bundled.vocabularySource == .bundled(try Tokenizer.defaultVocabURL()))
        #expect(bundled.tokenize(["a photo of a cat."]) == own.tokenize(["a photo of a cat."]))
        let noted = try runCLI(["embed", "--model", d.path, "--text", "a"])
        #expect(noted.status == 0)
        #expect(noted.stderr == "note: \(d.path) has no vocab.json / merges.txt: tokenizing with the bundled CLIP vocabulary (bpe_simple_vocab_16e6.txt.gz, 49408 tokens)\n",
                "\(noted.stderr)")

        // the tokenizer config names another tokenizer
        try Data(#"{"tokenizer_class": "BertTokenizer"}"#.utf8).write(to: d.appendingPathComponent("tokenizer_config.json"))
        #expect(throws: ZeroSegError.badModel("\(d.path)/tokenizer_config.json names the tokenizer BertTokenizer: zeroseg tokenizes as CLIPTokenizer only")) {
            try CLIPModel(directory: d)
        }
        let refused = try runCLI(["embed", "--model", d.path, "--text", "a"])
        #expect(refused.status == 4 && refused.stderr.hasPrefix("error: ") && refused.stderr.split(separator: "\n").count == 1, "\(refused.stderr)")

        // the config names another vocabulary size (weights to match), no vocabulary files
        let other = temporaryDirectory("zeroseg-vocab-size")
        var cfg = SyntheticArch.tiny.config
        cfg.text.vocabSize = 49500
        try JSONSerialization.data(withJSONObject: cfg.json()).write(to: other.appendingPathComponent("config.json"))
        try SafetensorsFile.write(Synth.tensors(config: cfg, seed: 0), metadata: ["format": "pt"], to: other.appendingPathComponent("model.safetensors"))
        do {
            _ = try CLIPModel(directory: other)
            Issue.record("a 49500-token model was loaded with the bundled 49408-token vocabulary")
        } catch let e as ZeroSegError {
            #expect(e.kind == .badModel && e.message.contains("names a vocabulary of 49500 tokens, not the 49408"), "\(e.message)")
        }
    }
}

/// A value shared with @Sendable callbacks.
final class Locked<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var v: T
    init(_ v: T) { self.v = v }
    var value: T { lock.withLock { v } }
    func update(_ f: (inout T) -> Void) { lock.withLock { f(&v) } }
}
