import ArgumentParser
import Foundation
import ZeroSeg

extension TuneOptimizer: ExpressibleByArgument {}

struct Tune: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Learn prompts on seen classes (CoOp context vectors + a light pixel-text head), CLIP frozen.",
        discussion: """
            Inductive: the unseen classes' names are never used and their pixels are left out of the loss \
            (so is the --ignore label). The frozen image encoder's dense patch embeddings of every training \
            image are computed once (the slow part, with the segmentation settings given); then each step \
            runs the text encoder on the seen classes' CoOp prompts, forward and backward. Writes a \
            safetensors prompt file for `zeroseg IMAGE --prompts P` and `zeroseg eval --prompts P`; \
            P.ckpt after every epoch (with --resume, training continues from it).
            """)

    @Option(help: "Directory of training images.")
    var images: String

    @Option(help: "Directory of label PNGs (same stems as the images; value i = class i of the class list).")
    var labels: String

    @Option(help: "Comma-separated seen classes (training uses only these).")
    var seen: String?

    @Option(help: "Comma-separated unseen classes (every other class is seen).")
    var unseen: String?

    @Option(help: "Label value left out of the loss (CamVid: 11).")
    var ignore: Int = 255

    @Option(name: .customLong("out"), help: "Prompt file to write (safetensors).")
    var outPath: String

    @Option(help: "Number of learned context vectors (ignored with --ctx-init).")
    var ctx: Int = 16

    @Option(help: "Initialise the context from the token embeddings of this phrase, e.g. \"a photo of a\" (its token count sets the context length).")
    var ctxInit: String?

    @Option(help: "Passes over the training images.")
    var epochs: Int = 5

    @Option(help: "Peak learning rate (cosine schedule to 0).")
    var lr: Float = 0.002

    @Option(help: "Images per step.")
    var batch: Int = 8

    @Option(help: "adamw or sgd (momentum 0.9).")
    var optimizer: TuneOptimizer = .adamw

    @Option(help: "Weight decay of the adapter matrix (pulls the head back to the identity).")
    var weightDecay: Float = 0.01

    @Option(help: "Seed of the shuffling and of a random context.")
    var seed: UInt64 = 0

    @Option(help: "Use only the first N image/label pairs.")
    var limit: Int?

    @Flag(help: "Continue from OUT.ckpt if it exists.")
    var resume = false

    @Option(help: "Stop after this many epochs (OUT.ckpt is kept; continue later with --resume).")
    var stopAfterEpochs: Int?

    @Flag(help: "Do not read or write the dense-feature cache ($XDG_CACHE_HOME/zeroseg/features).")
    var noFeatureCache = false

    @Flag(help: "No progress display.")
    var quiet = false

    @OptionGroup var seg: SegmentationArguments
    @OptionGroup var options: ModelOptions

    func validate() throws {
        if (seen == nil) == (unseen == nil) { throw ValidationError("give exactly one of --seen and --unseen") }
        if seg.mode != .oneStage || seg.prompts != nil { throw ValidationError("tune learns one-stage prompts: drop --mode and --prompts") }
        var s = TuneSettings()
        s.epochs = epochs; s.lr = lr; s.batch = batch; s.weightDecay = weightDecay
        do { try s.validate() } catch let e as ZeroSegError { throw ValidationError(e.message) }
        if ctxInit == nil && !(1...60).contains(ctx) { throw ValidationError("--ctx must be between 1 and 60") }
        if let limit, limit < 1 { throw ValidationError("--limit must be at least 1") }
        if let stopAfterEpochs, stopAfterEpochs < 1 || stopAfterEpochs >= epochs {
            throw ValidationError("--stop-after-epochs must be between 1 and --epochs - 1")
        }
    }

    struct Stopped: Error { let epoch: Int }

    func run() throws {
        let t0 = Date()
        let set = try seg.classSet()
        let nc = set.classes.count
        let seenIdx: Set<Int> = try seen.map { try classIndices($0, in: set, option: "--seen") }
            ?? Set(0..<nc).subtracting(try classIndices(unseen!, in: set, option: "--unseen"))
        guard !seenIdx.isEmpty else { throw ZeroSegError("every class is unseen: nothing to train on") }
        let seenOrder = seenIdx.sorted()
        let names = seenOrder.map { set.classes[$0][0] }
        var remap = [Int32](repeating: -1, count: 256)
        for (k, c) in seenOrder.enumerated() { remap[c] = Int32(k) }
        let out = URL(fileURLWithPath: outPath), ckpt = URL(fileURLWithPath: outPath + ".ckpt")
        try checkWritableFile(out, what: "prompt file")
        var pairs = try Evaluation.pairs(images: URL(fileURLWithPath: images), labels: URL(fileURLWithPath: labels)).pairs
        if let limit { pairs = Array(pairs.prefix(limit)) }
        guard !pairs.isEmpty else { throw ZeroSegError("\(images): no image/label pairs") }

        let model = try options.load()
        let segmenter = try Segmenter(model: model, options: seg.options(), threads: options.threads)
        // 1. Dense features of the frozen encoder, once (and cached on disk for later runs).
        let progress = Progress(total: pairs.count, quiet: quiet)
        let cache = noFeatureCache ? nil : FeatureCache(model: model, options: segmenter.options)
        var examples: [TuneExample] = [], cached = 0
        for (i, p) in pairs.enumerated() {
            progress.update(i, "features \(p.stem)")
            let label = try Evaluation.loadLabelMap(p.label)
            let image = try RGBImage.load(p.image)
            guard image.width == label.width && image.height == label.height else {
                throw ZeroSegError("\(p.label.path) is \(label.width)x\(label.height), \(p.image.path) is \(image.width)x\(image.height)")
            }
            try ConfusionMatrix.checkLabels(label.values, numClasses: nc, ignore: ignore, source: p.label.path)
            let target = label.values.map { Int(ignore) == Int($0) ? -1 : remap[Int($0)] }
            let features: FeatureGrid
            if let c = cache?.load(p.image) {
                features = c
                cached += 1
            } else {
                features = try segmenter.featureGrid(image)
                cache?.store(features, for: p.image)
            }
            examples.append(TuneExample(features: features, target: target, width: image.width, height: image.height))
        }
        progress.update(pairs.count, "features done")
        progress.finish()
        let tFeatures = Date().timeIntervalSince(t0)

        // 2. Training.
        let c0 = try model.initialContext(count: ctx, phrase: ctxInit, seed: seed)
        let prompts = LearnedPrompts(context: c0.values, contextLength: c0.count, textWidth: model.config.text.hiddenSize,
                                     dim: model.config.projectionDim, logScale: logf(seg.logitScale))
        var settings = TuneSettings()
        settings.epochs = epochs; settings.lr = lr; settings.batch = batch; settings.optimizer = optimizer
        settings.weightDecay = weightDecay; settings.seed = seed; settings.threads = options.threads
        var tuner = try PromptTuner(model: model, names: names, examples: examples, prompts: prompts, settings: settings)
        let first = try tuneLossAndGradients(model: model, prompts: prompts, seenNames: names, batch: examples, gradients: false,
                                             threads: options.threads).loss
        if resume, FileManager.default.fileExists(atPath: ckpt.path) {
            try restore(&tuner, from: ckpt, model: model)
            printErr("resumed from \(ckpt.path) after epoch \(tuner.epoch)")
        }
        let bar = Progress(total: max(1, settings.epochs * tuner.stepsPerEpoch), quiet: quiet)
        let t1 = Date()
        do {
            try tuner.train(progress: { e, s, n, loss in
                bar.update(e * n + s, String(format: "epoch %d/%d loss %.4f", e + 1, settings.epochs, loss))
            }, endOfEpoch: { t in
                try file(t, names: names, seenOrder: seenOrder, set: set, initialLoss: first, seconds: [:])
                    .write(to: ckpt, extra: checkpointTensors(t))
                if t.epoch == stopAfterEpochs { throw Stopped(epoch: t.epoch) }
            })
        } catch let s as Stopped {
            bar.finish()
            print("stopped after epoch \(s.epoch) of \(settings.epochs); continue with --resume (checkpoint \(ckpt.path))")
            return
        }
        bar.finish()
        let tTrain = Date().timeIntervalSince(t1)
        let final = try tuneLossAndGradients(model: model, prompts: tuner.prompts, seenNames: names, batch: examples, gradients: false,
                                             threads: options.threads).loss
        let f = try file(tuner, names: names, seenOrder: seenOrder, set: set, initialLoss: first, finalLoss: final,
                         seconds: ["features": tFeatures, "training": tTrain, "total": Date().timeIntervalSince(t0)])
        try f.write(to: out)
        try? FileManager.default.removeItem(at: ckpt)
        print(String(format: "tuned on %d images, %d seen classes (%@): loss %.4f -> %.4f over %d epochs; features %.1f s (%d cached), training %.1f s, peak RSS %.0f MB",
                     examples.count, names.count, names.joined(separator: ", "), first, final, settings.epochs, tFeatures, cached, tTrain,
                     Double(Bench.peakRSS()) / 1e6))
        print("wrote \(out.path)")
        if model.isSynthetic { printErr("warning: tuned on SYNTHETIC random weights: the prompts are meaningless") }
    }

    func file(_ t: PromptTuner, names: [String], seenOrder: [Int], set: ClassSet, initialLoss: Float, finalLoss: Float? = nil,
              seconds: [String: Double]) throws -> PromptFile {
        let model = t.model
        var info: [String: Any] = [
            "model": model.source, "model_fingerprint": model.fingerprint, "synthetic": model.isSynthetic,
            "seen": seenOrder.map { set.displayNames[$0] }, "prompt_names": names,
            "unseen": (0..<set.classes.count).filter { !seenOrder.contains($0) }.map { set.displayNames[$0] },
            "settings": seg.settingsJSON(),
            "training": ["epochs": t.settings.epochs, "epochs_done": t.epoch, "lr": Double(t.settings.lr), "batch": t.settings.batch,
                         "optimizer": t.settings.optimizer.rawValue, "weight_decay": Double(t.settings.weightDecay),
                         "seed": t.settings.seed, "ctx": t.prompts.contextLength, "ctx_init": ctxInit ?? NSNull(),
                         "images": images, "labels": labels, "ignore": ignore, "examples": t.examples.count],
            "loss": ["initial": Double(initialLoss), "epochs": t.epochLosses.map(Double.init), "final": finalLoss.map(Double.init) ?? NSNull()],
            "date": ISO8601DateFormatter().string(from: Date()), "zeroseg": ZeroSeg.version,
        ]
        if !seconds.isEmpty { info["seconds"] = seconds }
        return try PromptFile(prompts: t.prompts, info: info)
    }

    func checkpointTensors(_ t: PromptTuner) -> [(name: String, shape: [Int], data: [Float])] {
        let s = t.optimizer.state
        return [("optimizer.m", [s.m.count], s.m), ("optimizer.v", [s.v.count], s.v),
                ("optimizer.step", [], [Float(t.optimizer.step)]), ("epoch", [], [Float(t.epoch)])]
    }

    func restore(_ t: inout PromptTuner, from url: URL, model: CLIPModel) throws {
        let f = try PromptFile(url: url, model: model)
        let st = try SafetensorsFile(path: url.path)
        guard f.prompts.contextLength == t.prompts.contextLength else { throw ZeroSegError("\(url.path): another context length") }
        t.prompts = f.prompts
        try t.optimizer.restore(step: Int(try st.floats("optimizer.step")[0]), m: try st.floats("optimizer.m"), v: try st.floats("optimizer.v"))
        t.epoch = Int(try st.floats("epoch")[0])
        if let l = f.info["loss"] as? [String: Any], let e = l["epochs"] as? [Double] { t.epochLosses = e.map(Float.init) }
    }
}
