import Foundation
import Testing
@testable import ZeroSegCore
@testable import ZeroSegFormats
@testable import ZeroSegImaging
@testable import ZeroSegCLIP
@testable import ZeroSegSegmentation
@testable import ZeroSegTuning

/// A data set whose labels depend on the image's context: 64x64 pictures, left half red, right half
/// blue, and a 16x16 marker in the top-left corner, white in half the images and black in the
/// others. With a white marker red is class 0 ("cat") and blue class 1 ("wall"); with a black
/// marker the other way round; the marker itself is ignored (255). Every red or blue patch looks
/// the same in both kinds of image: only the marker, elsewhere in the picture, tells the class.
func makeContextDataset(count: Int = 8) throws -> (images: URL, labels: URL) {
    let d = temporaryDirectory("zeroseg-context-set")
    let images = d.appendingPathComponent("images"), labels = d.appendingPathComponent("labels")
    for u in [images, labels] { try FileManager.default.createDirectory(at: u, withIntermediateDirectories: true) }
    let (w, h) = (64, 64)
    for i in 0..<count {
        let white = i % 2 == 0
        var px = [Float](repeating: 0, count: w * h * 3), lab = [UInt8](repeating: 0, count: w * h)
        for y in 0..<h {
            for x in 0..<w {
                let marker = x < 16 && y < 16
                let left = x < w / 2
                // a little per-image jitter so the images differ
                let j = Float((i * 7 + x + 3 * y) % 5) * 2
                let rgb: (Float, Float, Float) = marker ? (white ? (250, 250, 250) : (5, 5, 5)) : (left ? (200 + j, 30, 30) : (30, 40, 200 + j))
                px[(y * w + x) * 3] = rgb.0; px[(y * w + x) * 3 + 1] = rgb.1; px[(y * w + x) * 3 + 2] = rgb.2
                lab[y * w + x] = marker ? 255 : ((left == white) ? 0 : 1)
            }
        }
        try writeRGBPNG(try RGBImage(width: w, height: h, pixels: px), to: images.appendingPathComponent(String(format: "img%02d.png", i)))
        try writeLabelPNG(labels: lab, width: w, height: h, palette: classPalette(count: 2), to: labels.appendingPathComponent(String(format: "img%02d.png", i)))
    }
    return (images, labels)
}

@Suite struct HeadTuneTests {
    static var settings: SegmentationSettings {
        var s = SegmentationSettings()
        s.options.shortSide = 64; s.options.window = 64; s.options.stride = 64; s.options.refine = .none
        s.templates = "single"
        return s
    }

    /// Trains a head on the context data set; returns its seen mIoU on the training images in
    /// one-stage mode and in two-stage mode with the region crops and with pooled regions (masks:
    /// the two halves and the marker, as a user's masks).
    static func trainAndScore(_ head: HeadKind, epochs: Int, lr: Float, model: CLIPModel, images: URL, labels: URL) throws
        -> (oneStage: Double, crop: Double, pooled: Double) {
        let classes = try ClassSet.parse("cat,wall")
        let dataset = try TuneDataset(images: images, labels: labels, classes: classes, seen: [0, 1])
        var o = TuneOptions()
        o.training.epochs = epochs; o.training.batch = 4; o.training.lr = lr; o.training.seed = 3
        o.contextLength = 2; o.featureCache = false; o.timings = false
        o.head.head = head; o.head.crop = 64
        o.head.visualPrompts = head == .linear ? 0 : 2
        o.head.decoderLayers = 2; o.head.width = 32; o.head.heads = 4
        let out = temporaryDirectory("zeroseg-context-\(head.rawValue)").appendingPathComponent("p.safetensors")
        let training = try PromptTraining(dataset: dataset, segmentation: settings, options: o, output: out)
        guard case .finished(let r) = try training.run(model: model, threads: 2) else { throw ZeroSegError("stopped early") }
        let prompts: any PromptHead = r.headPrompts ?? r.prompts!
        let seg = try Segmenter(model: model, options: settings.options, threads: 2, prompts: prompts)
        let q = try seg.queryEmbeddings(classes, templates: ["{}"])
        var masks: [ProposalMask] = []
        for part in 0..<3 {
            let bits = (0..<(64 * 64)).map { i -> UInt8 in
                let (x, y) = (i % 64, i / 64), marker = x < 16 && y < 16
                return (part == 2 ? marker : (!marker && (x < 32) == (part == 0))) ? 1 : 0
            }
            masks.append(try ProposalMask(width: 64, height: 64, bits: bits, source: "test:\(part)"))
        }
        var scores: [Double] = []
        for mode in 0..<3 {
            var inter = [Double](repeating: 0, count: 2), union = [Double](repeating: 0, count: 2)
            for p in dataset.pairs {
                let image = try RGBImage.load(p.image)
                let labels: [UInt8]
                if mode == 0 {
                    labels = try seg.segment(image, classes: classes, queries: q).labels
                } else {
                    var t = TwoStageOptions()
                    t.regionFeatures = mode == 1 ? .crop : .pooled
                    labels = try TwoStageSegmenter(segmenter: seg, options: t).segment(image, classes: classes, queries: q, masks: masks).result.labels
                }
                let gt = try Evaluation.loadLabelMap(p.label).values
                for (a, b) in zip(labels, gt) where b != 255 {
                    for c in 0..<2 {
                        let pa = Int(a) == c, pb = Int(b) == c
                        if pa && pb { inter[c] += 1 }
                        if pa || pb { union[c] += 1 }
                    }
                }
            }
            scores.append(zip(inter, union).map { $1 > 0 ? $0 / $1 : 0 }.reduce(0, +) / 2)
        }
        return (scores[0], scores[1], scores[2])
    }

    /// The class of a colour depends on a marker elsewhere in the image: the linear head (a
    /// per-patch map of frozen features) cannot learn it; the image-conditioned heads (visual
    /// prompts, the image's class token in the query, attention over all patches) can. Seen mIoU
    /// on the training images after 30 epochs (8 images, batch 4), tiny model.
    @Test func imageConditionedHeadsLearnWhatTheLinearHeadCannot() throws {
        let (images, labels) = try makeContextDataset()
        let model = try CLIPModel(directory: GoldenModelTests.tinyDir)
        let linear = try Self.trainAndScore(.linear, epochs: 30, lr: 0.05, model: model, images: images, labels: labels)
        let zeg = try Self.trainAndScore(.zegclip, epochs: 30, lr: 0.01, model: model, images: images, labels: labels)
        let dense = try Self.trainAndScore(.denseclip, epochs: 30, lr: 0.01, model: model, images: images, labels: labels)
        print("context task seen mIoU (one-stage, two-stage crop, two-stage pooled): linear \(linear), zegclip \(zeg), denseclip \(dense)")
        // measured (2 threads; debug, release and portable-kernel builds): one-stage linear 0.33
        // (one class everywhere, loss stays at ln 2), zegclip 0.91-1.00, denseclip 0.95-1.00; with one decoder layer neither image-conditioned head learns
        // it (the class token alone carries too little of the marker): the cross-attention does.
        #expect(linear.oneStage < 0.5, "linear \(linear)")
        #expect(zeg.oneStage > linear.oneStage + 0.35, "zegclip \(zeg) vs linear \(linear)")
        #expect(dense.oneStage > linear.oneStage + 0.35, "denseclip \(dense) vs linear \(linear)")
        // Two-stage (measured over builds: pooled 0.94-1.00; crops 0.33-0.87, linear 0.35): pooled
        // regions average the head's own one-stage logits, so they keep what it learned; a crop of
        // one half (plus the 10% margin) mostly loses the marker, the context, so what the crops
        // give depends on the run (the kernels' rounding changes the training path): measured and
        // printed, not asserted.
        #expect(zeg.pooled > linear.oneStage + 0.35 && dense.pooled > linear.oneStage + 0.35, "pooled: zegclip \(zeg), denseclip \(dense)")
        for v in [linear.crop, zeg.crop, dense.crop] { #expect(v >= 0 && v <= 1) }
    }
}

/// `zeroseg tune --head zegclip|denseclip` end to end on the tiny set: the prompt file (tensors,
/// metadata), its use in segment (one- and two-stage) and eval, resume, bad arguments.
@Suite struct HeadTuneCLITests {
    var tiny: String { GoldenModelTests.tinyDir.path }
    var small: [String] { ["--model", tiny, "--short-side", "40", "--window", "32", "--stride", "16", "--threads", "2"] }
    var headFlags: [String] { ["--crop", "32", "--visual-prompts", "2", "--decoder-layers", "1", "--ctx", "2", "--batch", "2", "--quiet"] }

    @Test(arguments: [("zegclip", "softmax"), ("denseclip", "sigmoid")])
    func tuneSegmentEval(_ head: String, _ loss: String) throws {
        let (images, labels) = try makeDataset()
        let dir = temporaryDirectory("zeroseg-headtune-cli")
        let p = dir.appendingPathComponent("p.safetensors")
        let r = try runCLI(["tune", "--images", images.path, "--labels", labels.path, "--classes", "cat,grass|lawn,wall",
                            "--seen", "cat,wall", "--out", p.path, "--head", head, "--loss", loss, "--epochs", "2"] + headFlags + small)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.hasPrefix("tuned the \(head) head on 3 images, 2 seen classes (cat, wall): loss "), "\(r.stdout)")
        #expect(!FileManager.default.fileExists(atPath: p.path + ".ckpt"))
        let f = try SafetensorsFile(path: p.path)
        let m = try CLIPModel(directory: GoldenModelTests.tinyDir)
        #expect(f.metadata["format"] == "zeroseg-prompts-2")
        #expect(f.tensors["ctx"]?.shape == [2, m.config.text.hiddenSize])
        let l = m.visionModel.layers.count, w = m.config.vision.hiddenSize
        #expect(f.tensors["visual_prompts.embeddings"]?.shape == [l, 2, w])
        let info = try JSONSerialization.jsonObject(with: Data(f.metadata["zeroseg"]!.utf8)) as! [String: Any]
        #expect(info["head"] as? String == head)
        #expect((info["head_settings"] as? [String: Any])?["loss"] as? String == loss)
        #expect(info["initial_loss"] is Double && info["final_loss"] is Double)
        #expect(info["seen_names"] as? [String] == ["cat", "wall"])
        let hp = try HeadPromptFile(url: p, model: m)
        #expect(hp.prompts.settings.head.rawValue == head && hp.prompts.settings.visualPrompts == 2)

        // segment, one- and two-stage (crops and pooled), with the prompts
        for extra in [[], ["--mode", "two-stage"], ["--mode", "two-stage", "--region-features", "pooled"]] {
            let s = try runCLI([images.appendingPathComponent("img0.png").path, "--classes", "dog,tree|bush", "--prompts", p.path,
                                "--out", dir.appendingPathComponent("seg\(extra.count)").path, "--quiet"] + small + extra)
            #expect(s.status == 0, "\(extra): \(s.stderr)")
            let json = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("seg\(extra.count)/img0.json"))) as! [String: Any]
            #expect((json["classes"] as? [Any])?.count == 2, "\(extra)")
        }
        // eval with the prompts and --seen
        let e = try runCLI(["eval", "--images", images.path, "--labels", labels.path, "--classes", "cat,grass|lawn,wall",
                            "--prompts", p.path, "--seen", "cat,wall", "--quiet"] + small)
        #expect(e.status == 0, "\(e.stderr)")
        #expect(e.stdout.contains("\nseen     ") && e.stdout.contains("\nhIoU     "), "\(e.stdout)")
        // another model: refused in one line
        let other = temporaryDirectory("zeroseg-headtune-other")
        try Synth.write(arch: .tiny, seed: 1, to: other)
        let o = try runCLI([images.appendingPathComponent("img0.png").path, "--classes", "dog", "--prompts", p.path,
                            "--out", dir.appendingPathComponent("segx").path, "--model", other.path, "--quiet"])
        #expect(o.status != 0 && o.stderr.hasPrefix("error: prompts \(p.path) were made for model ") && o.stderr.split(separator: "\n").count == 1, "\(o.stderr)")
        // --seen-bias: overrides the file's at test time; without --prompts, refused
        let b = try runCLI([images.appendingPathComponent("img0.png").path, "--classes", "cat,wall", "--prompts", p.path, "--seen-bias", "0.3",
                            "--out", dir.appendingPathComponent("segb").path, "--quiet"] + small)
        #expect(b.status == 0, "\(b.stderr)")
        let nb = try runCLI([images.appendingPathComponent("img0.png").path, "--classes", "cat", "--seen-bias", "0.3",
                             "--out", dir.appendingPathComponent("segc").path, "--quiet"] + small)
        #expect(nb.status == 2 && nb.stderr.contains("--seen-bias needs --prompts"), "\(nb.stderr)")
    }

    /// No visual prompts: the encoder runs as is (no vision backward), the head still learns.
    @Test func zeroVisualPrompts() throws {
        let (images, labels) = try makeDataset()
        let p = temporaryDirectory("zeroseg-headtune-novpt").appendingPathComponent("p.safetensors")
        let r = try runCLI(["tune", "--images", images.path, "--labels", labels.path, "--classes", "cat,grass,wall", "--seen", "cat,wall",
                            "--out", p.path, "--epochs", "1", "--crop", "32", "--visual-prompts", "0", "--decoder-layers", "1", "--quiet"] + small)
        #expect(r.status == 0, "\(r.stderr)")
        let f = try SafetensorsFile(path: p.path)
        #expect(f.tensors["visual_prompts.embeddings"] == nil && f.tensors["decode_head.q_proj.weight"] != nil)
    }

    @Test func resumeContinuesFromTheCheckpoint() throws {
        let (images, labels) = try makeDataset()
        let dir = temporaryDirectory("zeroseg-headtune-resume")
        let a = dir.appendingPathComponent("a.safetensors"), b = dir.appendingPathComponent("b.safetensors")
        let base = ["tune", "--images", images.path, "--labels", labels.path, "--classes", "cat,grass|lawn,wall",
                    "--unseen", "grass", "--no-timings"] + headFlags + small
        #expect(try runCLI(base + ["--out", a.path, "--epochs", "3"]).status == 0)
        let stop = try runCLI(base + ["--out", b.path, "--epochs", "3", "--stop-after-epochs", "1"])
        #expect(stop.status == 0 && stop.stdout.hasPrefix("stopped after epoch 1 of 3; continue with --resume"), "\(stop.stdout)\(stop.stderr)")
        let res = try runCLI(base + ["--out", b.path, "--epochs", "3", "--resume"])
        #expect(res.status == 0 && res.stderr.contains("resumed from \(b.path).ckpt after epoch 1"), "\(res.stderr)")
        #expect(try Data(contentsOf: a) == Data(contentsOf: b), "resumed run = uninterrupted run, byte for byte")
    }

    @Test(arguments: [["--head", "linear", "--visual-prompts", "3"], ["--head", "linear", "--loss", "sigmoid"],
                      ["--crop", "64"], ["--visual-prompts", "-1"], ["--decoder-layers", "0"], ["--no-feature-cache"],
                      ["--loss", "focal"], ["--head", "mlp"]])
    func badArguments(_ extra: [String]) throws {
        let (images, labels) = try makeDataset()
        let p = temporaryDirectory("zeroseg-headtune-bad").appendingPathComponent("p.safetensors")
        let r = try runCLI(["tune", "--images", images.path, "--labels", labels.path, "--classes", "cat,grass,wall", "--seen", "cat",
                            "--out", p.path, "--quiet"] + small + extra)
        #expect(r.status != 0 && r.stderr.hasPrefix("error: ") && r.stderr.split(separator: "\n").count == 1, "\(extra): \(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: p.path))
    }
}
