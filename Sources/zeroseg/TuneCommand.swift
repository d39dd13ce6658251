import ArgumentParser
import Foundation
import ZeroSeg

extension TuneOptimizer: ExpressibleByArgument {}
extension HeadKind: ExpressibleByArgument {}
extension SegLossKind: ExpressibleByArgument {}

struct Tune: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Learn prompts on seen classes (CoOp context vectors + a pixel-text head), CLIP frozen.",
        discussion: """
            Inductive: the unseen classes' names are never used and their pixels are left out of the loss \
            (so is the --ignore label). --head zegclip (default) or denseclip: deep visual prompts in the \
            frozen image encoder and ZegCLIP's relationship descriptor + decoder or DenseCLIP's context \
            decoder, trained on seeded random --crop crops (+ flips) of the images rescaled to --short-side, \
            the encoder in the loop. --head linear: a residual adapter on the frozen encoder's dense patch \
            embeddings, computed once per image (the slow part); each step then runs the text encoder on the \
            seen classes' CoOp prompts, forward and backward. Writes a \
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

    @Option(help: "Pixel-text head: zegclip (deep visual prompts, relationship descriptor, ATM decoder), denseclip (deep visual prompts, context decoder) or linear (adapter on cached features).")
    var head: HeadKind = .zegclip

    @Option(help: "Deep visual prompt tokens per encoder layer (zegclip, denseclip; 0: none).")
    var visualPrompts: Int?

    @Option(help: "Decoder layers of the zegclip / denseclip head.")
    var decoderLayers: Int = 3

    @Option(help: "Loss: softmax (cross-entropy) or sigmoid (ZegCLIP's per-class focal + dice; zegclip / denseclip heads).")
    var loss: SegLossKind = .softmax

    @Option(help: "Side of the square random training crops (zegclip, denseclip).")
    var crop: Int = 224

    @Option(help: "Peak learning rate (cosine schedule to 0; default 0.002 for --head linear, 0.001 for the others).")
    var lr: Float?

    @Option(help: "Images per step.")
    var batch: Int = 8

    @Option(help: "adamw or sgd (momentum 0.9).")
    var optimizer: TuneOptimizer = .adamw

    @Option(help: "Weight decay of the adapter matrix (linear head: pulls it back to the identity) or of the decoder's linear weights.")
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
        if head == .linear {
            if let v = visualPrompts, v != 0 { throw ValidationError("--visual-prompts needs --head zegclip or denseclip (the linear head trains on cached features)") }
            if loss != .softmax { throw ValidationError("--loss sigmoid needs --head zegclip or denseclip") }
        } else if noFeatureCache {
            throw ValidationError("--no-feature-cache is for --head linear: the zegclip and denseclip heads run the encoder in the loop")
        }
        if head != .linear && crop > seg.shortSide { throw ValidationError("--crop \(crop) is larger than --short-side \(seg.shortSide): the crops are cut from the rescaled images") }
    }

    /// The library's options from the flags.
    func tuneOptions() -> TuneOptions {
        var o = TuneOptions()
        o.training.epochs = epochs; o.training.lr = lr ?? (head == .linear ? 0.002 : 0.001); o.training.batch = batch; o.training.optimizer = optimizer
        o.training.weightDecay = weightDecay; o.training.seed = seed; o.training.threads = options.threads
        o.contextLength = ctx; o.contextPhrase = ctxInit
        o.stopAfterEpochs = stopAfterEpochs; o.resume = resume; o.featureCache = !noFeatureCache; o.timings = !noTimings
        o.head.head = head
        o.head.visualPrompts = head == .linear ? 0 : (visualPrompts ?? 10)
        o.head.decoderLayers = decoderLayers; o.head.loss = loss; o.head.crop = crop
        if let b = seg.seenBias { o.head.seenBias = b }
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
                features.update(i, i == dataset.pairs.count ? (head == .linear ? "features done" : "images loaded")
                                                              : (head == .linear ? "features \(stem)" : "loading \(stem)"))
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
            if head == .linear {
                print(String(format: "tuned on %d images, %d seen classes (%@): loss %.4f -> %.4f over %d epochs; features %.1f s (%d cached), training %.1f s, peak RSS %.0f MB",
                             r.examples, r.report.promptNames.count, r.report.promptNames.joined(separator: ", "), loss.initial, loss.final ?? .nan,
                             epochs, t["features"] ?? 0, r.cachedFeatures, t["training"] ?? 0, Double(Bench.peakRSS()) / 1e6))
            } else {
                print(String(format: "tuned the %@ head on %d images, %d seen classes (%@): loss %.4f -> %.4f over %d epochs; images %.1f s, training %.1f s, peak RSS %.0f MB",
                             head.rawValue, r.examples, r.report.promptNames.count, r.report.promptNames.joined(separator: ", "), loss.initial,
                             loss.final ?? .nan, epochs, t["features"] ?? 0, t["training"] ?? 0, Double(Bench.peakRSS()) / 1e6))
            }
            print("wrote \(training.output.path)")
            if model.isSynthetic { printErr("warning: tuned on SYNTHETIC random weights: the prompts are meaningless") }
        }
    }
}
