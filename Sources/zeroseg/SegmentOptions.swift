import ArgumentParser
import Foundation
import ZeroSeg

extension DenseMethod: ExpressibleByArgument {}
extension Refinement: ExpressibleByArgument {}
extension ProposalSource: ExpressibleByArgument {}
extension RegionFeatures: ExpressibleByArgument {}

extension SegmentationMode: ExpressibleByArgument {}

/// The class list and every option of one-stage segmentation (shared by `segment` and `eval`).
struct SegmentationArguments: ParsableArguments {
    @Option(help: "Comma-separated class names; '|' between synonyms, e.g. \"road,car,pavement|sidewalk\".")
    var classes: String?

    @Option(help: "File with one class per line ('|' between synonyms; # comments).")
    var classesFile: String?

    @Option(help: "Comma-separated stuff names that together form one background class (labelled 255).")
    var background: String?

    @Option(help: "Dense last-block method: \(DenseMethod.allCases.map(\.rawValue).joined(separator: ", ")).")
    var method: DenseMethod = .naclip

    @Option(help: "Prompt templates: imagenet80, single (\"a photo of a {}.\"), or a file with one template per line ({} = name).")
    var templates: String = "imagenet80"

    @Option(help: "Rescale so the short side is this (mmcv imrescale to (2048, S)).")
    var shortSide: Int = 336

    @Option(help: "Sliding-window size in pixels.")
    var window: Int = 224

    @Option(help: "Sliding-window stride in pixels.")
    var stride: Int = 112

    @Flag(help: "One pass over the whole rescaled image (interpolated position embeddings) instead of windows.")
    var noWindow = false

    @Option(help: "Factor applied to cosine similarities before the softmax.")
    var logitScale: Float = 40

    @Option(help: "Refinement: pamr (10 iterations, dilations 8 and 16) or none.")
    var refine: Refinement = .pamr

    @Option(help: "Pixels whose winning probability is below this are labelled 255.")
    var threshold: Float = 0

    @Option(help: "one-stage (dense CLIP scores per pixel) or two-stage (class-agnostic mask proposals, each classified with CLIP, fused with the one-stage scores).")
    var mode: SegmentationMode = .oneStage

    @Option(help: "Two-stage proposals: slic (superpixels merged by dense CLIP features), kmeans (dense-feature clusters for k = 2, 3, 4, 6, 8 snapped to superpixels) or both (default).")
    var proposals: ProposalSource?

    @Option(help: "Two-stage: at most this many proposals per image (default 50).")
    var maxProposals: Int?

    @Option(help: "Two-stage: drop proposals smaller than this many pixels (default 0.2% of the image, at least 16).")
    var minArea: Int?

    @Option(help: "Two-stage: each side of a mask's box grows by this fraction of its width / height before cropping (default 0.1).")
    var cropMargin: Double?

    @Option(help: "Two-stage: λ in p = normalise(p_region^λ · p_one-stage^(1-λ)) inside masks (default 0.5).")
    var fusionLambda: Float?

    @Option(help: "Two-stage region embedding: crop (the masked crop through the image encoder, default) or pooled (mean of the dense patch embeddings inside the mask, no extra encoder pass).")
    var regionFeatures: RegionFeatures?

    @Option(help: "Two-stage: read the masks instead of proposing them: DIR/NAME/*.png for input NAME (for a single input DIR/*.png also works); non-zero pixels are inside, e.g. from SAM.")
    var masks: String?

    @Option(help: "Learned prompts from `zeroseg tune` (any head): used for every class name, seen or not; --templates and --logit-scale are then unused (and --method with a zegclip or denseclip head, which runs its own prompted encoder).")
    var prompts: String?

    @Option(help: "With --prompts of a head tuned with --loss sigmoid (or in tune, with --loss sigmoid): subtracted from the seen classes' sigmoid scores (ZegCLIP's calibration; default: the value the head was tuned with, 0.1).")
    var seenBias: Float?

    /// The learned prompts of --prompts (nil without), checked against the model (another
    /// model: error; other settings: a warning).
    func loadPrompts(model: CLIPModel) throws -> (any PromptHead)? {
        let p = try settings().loadPrompts(model: model, warn: { printErr("warning: \($0)") })
        if let seenBias, var h = p as? HeadPrompts {
            try validating { h.settings.seenBias = seenBias; try h.settings.validate() }
            return h
        }
        return p
    }

    var twoStageFlagsGiven: [String] {
        [("--proposals", proposals != nil), ("--max-proposals", maxProposals != nil), ("--min-area", minArea != nil),
         ("--crop-margin", cropMargin != nil), ("--fusion-lambda", fusionLambda != nil),
         ("--region-features", regionFeatures != nil), ("--masks", masks != nil)].filter(\.1).map(\.0)
    }

    func validate() throws {
        if (classes == nil) == (classesFile == nil) { throw ValidationError("give exactly one of --classes and --classes-file") }
        if mode == .oneStage, let f = twoStageFlagsGiven.first { throw ValidationError("\(f) needs --mode two-stage") }
        if masks != nil && (proposals != nil || maxProposals != nil || minArea != nil) {
            throw ValidationError("--masks replaces the proposals: drop --proposals, --max-proposals and --min-area")
        }
        if let masks {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: masks, isDirectory: &isDir), isDir.boolValue else {
                throw ValidationError("--masks \(masks): no such folder")
            }
        }
        try validating { try settings().validate() }
        if classes != nil { try validating { _ = try classSet() } }
    }

    /// The library's settings from the flags.
    func settings() -> SegmentationSettings {
        var s = SegmentationSettings()
        s.options.method = method; s.options.shortSide = shortSide; s.options.window = window; s.options.stride = stride
        s.options.useWindows = !noWindow; s.options.logitScale = logitScale; s.options.refine = refine; s.options.threshold = threshold
        s.templates = templates
        s.mode = mode
        if let proposals { s.twoStage.proposals = proposals }
        if let maxProposals { s.twoStage.proposalSettings.maxProposals = maxProposals }
        s.twoStage.proposalSettings.minArea = minArea
        if let cropMargin { s.twoStage.cropMargin = cropMargin }
        if let fusionLambda { s.twoStage.fusionLambda = fusionLambda }
        if let regionFeatures { s.twoStage.regionFeatures = regionFeatures }
        s.masks = masks
        s.prompts = prompts
        return s
    }

    func classSet() throws -> ClassSet {
        if let classes { return try ClassSet.parse(classes, background: background) }
        return try ClassSet.load(URL(fileURLWithPath: classesFile!), background: background)
    }
}

/// A one-line progress display on stderr, only when stderr is a terminal.
final class Progress {
    var total: Int
    let enabled: Bool
    let start = Date()
    init(total: Int, quiet: Bool) {
        self.total = total
        enabled = !quiet && isatty(2) != 0
    }
    func update(_ done: Int, _ label: String) {
        guard enabled else { return }
        let width = 24, filled = total > 0 ? width * done / total : width
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        let el = Date().timeIntervalSince(start)
        FileHandle.standardError.write(Data("\r[\(bar)] \(done)/\(total) \(String(format: "%.1fs", el)) \(label.prefix(40))\u{1B}[K".utf8))
    }
    func update(_ done: Int, _ total: Int, _ label: String) {
        self.total = total
        update(done, label)
    }
    func finish() { if enabled { FileHandle.standardError.write(Data("\n".utf8)) } }
    /// Erases the line (before an error message or the next stage).
    func clear() { if enabled { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) } }
}
