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

    @Flag(help: "No timings and no date in the prompt file's metadata (every timing 0).")
    var noTimings = false

    @OptionGroup var seg: SegmentationArguments
    @OptionGroup var options: ModelOptions

    func validate() throws {
        if (seen == nil) == (unseen == nil) { throw ValidationError("give exactly one of --seen and --unseen") }
        if seg.mode != .oneStage || seg.prompts != nil { throw ValidationError("tune learns one-stage prompts: drop --mode and --prompts") }
        if let stopAfterEpochs, stopAfterEpochs < 1 || stopAfterEpochs >= epochs {
            throw ValidationError("--stop-after-epochs must be between 1 and --epochs - 1")
        }
        try validating { try tuneOptions().validate() }
        if let limit, limit < 1 { throw ValidationError("--limit must be at least 1") }
    }

    /// The library's options from the flags.
    func tuneOptions() -> TuneOptions {
        var o = TuneOptions()
        o.training.epochs = epochs; o.training.lr = lr; o.training.batch = batch; o.training.optimizer = optimizer
        o.training.weightDecay = weightDecay; o.training.seed = seed; o.training.threads = options.threads
        o.contextLength = ctx; o.contextPhrase = ctxInit
        o.stopAfterEpochs = stopAfterEpochs; o.resume = resume; o.featureCache = !noFeatureCache; o.timings = !noTimings
        return o
    }

    func run() throws {
        let classes = try seg.classSet()
        let seenSet = try seen.map { try classes.indices(of: $0.split(separator: ",").map(String.init), parameter: "seen") }
            ?? Set(classes.classes.indices).subtracting(try classes.indices(of: unseen!.split(separator: ",").map(String.init), parameter: "unseen"))
        let dataset = try TuneDataset(images: URL(fileURLWithPath: images), labels: URL(fileURLWithPath: labels), classes: classes,
                                      seen: seenSet, ignore: ignore, limit: limit)
        let training = try PromptTraining(dataset: dataset, segmentation: seg.settings(), options: tuneOptions(),
                                          output: URL(fileURLWithPath: outPath))
        training.classesFile = seg.classesFile
        let model = try options.load()
        let features = Progress(total: dataset.pairs.count, quiet: quiet)
        var bar: Progress?
        let outcome = try training.run(
            model: model, threads: options.threads,
            features: { i, _, stem in
                features.update(i, i == dataset.pairs.count ? "features done" : "features \(stem)")
                if i == dataset.pairs.count { features.finish() }
            },
            step: { e, s, n, loss in
                if bar == nil { bar = Progress(total: max(1, epochs * n), quiet: quiet) }
                bar?.update(e * n + s, String(format: "epoch %d/%d loss %.4f", e + 1, epochs, loss))
            },
            resumed: { url, epoch in printErr("resumed from \(url.path) after epoch \(epoch)") })
        bar?.finish()
        switch outcome {
        case .stopped(let epoch, let of, let checkpoint):
            print("stopped after epoch \(epoch) of \(of); continue with --resume (checkpoint \(checkpoint.path))")
        case .finished(let r):
            let t = r.report.header.timings, loss = r.report.loss
            print(String(format: "tuned on %d images, %d seen classes (%@): loss %.4f -> %.4f over %d epochs; features %.1f s (%d cached), training %.1f s, peak RSS %.0f MB",
                         r.examples, r.report.promptNames.count, r.report.promptNames.joined(separator: ", "), loss.initial, loss.final ?? .nan,
                         epochs, t["features"] ?? 0, r.cachedFeatures, t["training"] ?? 0, Double(Bench.peakRSS()) / 1e6))
            print("wrote \(training.output.path)")
            if model.isSynthetic { printErr("warning: tuned on SYNTHETIC random weights: the prompts are meaningless") }
        }
    }
}
