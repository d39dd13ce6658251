import ArgumentParser
import Foundation
import ZeroSeg

extension DenseMethod: ExpressibleByArgument {}
extension Refinement: ExpressibleByArgument {}
extension ProposalSource: ExpressibleByArgument {}
extension RegionFeatures: ExpressibleByArgument {}

enum SegmentMode: String, CaseIterable, ExpressibleByArgument {
    case oneStage = "one-stage", twoStage = "two-stage"
}

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
    var mode: SegmentMode = .oneStage

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

    @Option(help: "Learned prompts from `zeroseg tune` (CoOp context, patch adapter, logit scale): used for every class name, seen or not; --templates and --logit-scale are then unused.")
    var prompts: String?

    /// The prompt file, checked against the model (another model: error; other settings: warning).
    func loadPrompts(model: CLIPModel) throws -> LearnedPrompts? {
        guard let prompts else { return nil }
        let f = try PromptFile(url: URL(fileURLWithPath: prompts), model: model)
        if let made = f.info["settings"] as? [String: Any] {
            // compared after a JSON round trip, as the file's settings went through one
            let now = (try? JSONSerialization.data(withJSONObject: settingsJSON()))
                .flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] } ?? [:]
            let keys = ["method", "short_side", "window", "stride", "windows"]
            let differ = keys.filter { k in "\(made[k] ?? "-")" != "\(now[k] ?? "-")" }
            if !differ.isEmpty {
                printErr("warning: prompts \(prompts) were tuned with other settings (\(differ.map { "\($0) \(made[$0] ?? "-")" }.joined(separator: ", ")))")
            }
        }
        return f.prompts
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
        if mode == .twoStage { do { try twoStageOptions().validate() } catch let e as ZeroSegError { throw ValidationError(e.message) } }
        do { try options().validate() } catch let e as ZeroSegError { throw ValidationError(e.message) }
        if classes != nil { do { _ = try classSet() } catch let e as ZeroSegError { throw ValidationError(e.message) } }
    }

    func options() -> SegmentationOptions {
        var o = SegmentationOptions()
        o.method = method; o.shortSide = shortSide; o.window = window; o.stride = stride
        o.useWindows = !noWindow; o.logitScale = logitScale; o.refine = refine; o.threshold = threshold
        return o
    }

    func twoStageOptions() -> TwoStageOptions {
        var t = TwoStageOptions()
        if let proposals { t.proposals = proposals }
        if let maxProposals { t.proposalSettings.maxProposals = maxProposals }
        t.proposalSettings.minArea = minArea
        if let cropMargin { t.cropMargin = cropMargin }
        if let fusionLambda { t.fusionLambda = fusionLambda }
        if let regionFeatures { t.regionFeatures = regionFeatures }
        return t
    }

    /// The outside masks for an input (nil: propose them): DIR/NAME/*.png, else, for a single
    /// input, DIR/*.png.
    func externalMasks(for input: URL, singleInput: Bool, width: Int, height: Int) throws -> [ProposalMask]? {
        guard let masks else { return nil }
        let stem = input.deletingPathExtension().lastPathComponent
        let sub = URL(fileURLWithPath: masks).appendingPathComponent(stem)
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: sub.path, isDirectory: &isDir), isDir.boolValue {
            return try readProposalMasks(from: sub, width: width, height: height)
        }
        if singleInput { return try readProposalMasks(from: URL(fileURLWithPath: masks), width: width, height: height) }
        throw ZeroSegError("--masks \(masks): no folder \(stem)/ for \(input.path)")
    }

    func classSet() throws -> ClassSet {
        if let classes { return try ClassSet.parse(classes, background: background) }
        return try ClassSet.load(URL(fileURLWithPath: classesFile!), background: background)
    }

    func templateList() throws -> [String] { try Templates.named(templates) }

    /// Settings as recorded in JSON outputs.
    func settingsJSON() -> [String: Any] {
        ["method": method.rawValue, "templates": templates, "short_side": shortSide, "window": window, "stride": stride,
         "windows": !noWindow, "logit_scale": Double(logitScale), "refine": refine.rawValue, "threshold": Double(threshold),
         "background": background.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } } ?? [],
         "mode": mode.rawValue, "prompts": prompts ?? NSNull()].merging(mode == .twoStage ? twoStageJSON() : [:]) { a, _ in a }
    }

    func twoStageJSON() -> [String: Any] {
        let t = twoStageOptions()
        var j: [String: Any] = ["crop_margin": t.cropMargin, "fusion_lambda": Double(t.fusionLambda), "region_features": t.regionFeatures.rawValue]
        if let masks { j["masks"] = masks } else {
            j["proposals"] = t.proposals.rawValue; j["max_proposals"] = t.proposalSettings.maxProposals
            j["min_area"] = t.proposalSettings.minArea ?? "0.2% of the image"
        }
        return j
    }
}

/// A one-line progress display on stderr, only when stderr is a terminal.
final class Progress {
    let total: Int
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
    func finish() { if enabled { FileHandle.standardError.write(Data("\n".utf8)) } }
}
