import Foundation
import ZeroSegCore
import ZeroSegImaging
import ZeroSegCLIP

/// One-stage (dense CLIP scores per pixel) or two-stage (mask proposals, each classified with
/// CLIP, fused with the one-stage scores).
public enum SegmentationMode: String, CaseIterable, Sendable, Codable {
    case oneStage = "one-stage", twoStage = "two-stage"
}

/// Everything that decides a segmentation besides the model and the classes: the one-stage
/// options, the prompt templates, the mode with its two-stage options and outside masks, and the
/// learned prompt file (recorded here; loaded with `loadPrompts` of ZeroSegTuning). What the
/// `zeroseg` command's segmentation flags set; recorded as `settings` in every JSON output.
public struct SegmentationSettings: Sendable, Equatable {
    public var options = SegmentationOptions()
    /// `imagenet80`, `single`, or a file with one template per line (`Templates.named`).
    public var templates = "imagenet80"
    public var mode: SegmentationMode = .oneStage
    /// Used in the two-stage mode only.
    public var twoStage = TwoStageOptions()
    /// Two-stage: read the masks instead of proposing them: `masks/NAME/*.png` for input NAME
    /// (for a single input `masks/*.png` also works).
    public var masks: String?
    /// The learned prompt file (`zeroseg tune`) the queries come from, as given; nil: templates.
    public var prompts: String?

    public init() {}

    /// Checks the options (errors of kind `.invalidArgument(parameter:)` naming the option, e.g.
    /// "shortSide", "cropMargin", "masks") and that the mask folder exists.
    public func validate() throws {
        try options.validate()
        if mode == .twoStage { try twoStage.validate() }
        if let masks {
            guard mode == .twoStage else {
                throw ZeroSegError.invalidArgument("outside masks need the two-stage mode", parameter: "masks")
            }
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: masks, isDirectory: &isDir), isDir.boolValue else {
                throw ZeroSegError.badInput("mask folder \(masks) does not exist", file: masks)
            }
        }
    }

    /// The prompt templates (`Templates.named(templates)`).
    public func templateList() throws -> [String] { try Templates.named(templates) }

    /// The outside masks for an input (nil: propose them): `masks/NAME/*.png`, else, for a
    /// single input, `masks/*.png`.
    public func externalMasks(for input: URL, singleInput: Bool, width: Int, height: Int) throws -> [ProposalMask]? {
        guard let masks else { return nil }
        let stem = input.deletingPathExtension().lastPathComponent
        let sub = URL(fileURLWithPath: masks).appendingPathComponent(stem)
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: sub.path, isDirectory: &isDir), isDir.boolValue {
            return try readProposalMasks(from: sub, width: width, height: height)
        }
        if singleInput { return try readProposalMasks(from: URL(fileURLWithPath: masks), width: width, height: height) }
        throw ZeroSegError.badInput("mask folder \(masks) has no folder \(stem)/ for \(input.path)", file: masks)
    }

    /// As recorded in the JSON outputs (`background`: the class set's background names).
    public func record(background: [String]) -> SegmentationSettingsRecord {
        let o = options
        var r = SegmentationSettingsRecord(
            method: o.method.rawValue, templates: templates, shortSide: o.shortSide, window: o.window, stride: o.stride,
            windows: o.useWindows, logitScale: Double(o.logitScale), refine: o.refine.rawValue, threshold: Double(o.threshold),
            background: background, mode: mode, prompts: prompts)
        if mode == .twoStage {
            let t = twoStage
            r.cropMargin = t.cropMargin
            r.fusionLambda = Double(t.fusionLambda)
            r.regionFeatures = t.regionFeatures.rawValue
            if let masks {
                r.masks = masks
            } else {
                r.proposals = t.proposals.rawValue
                r.maxProposals = t.proposalSettings.maxProposals
                r.minArea = t.proposalSettings.minArea.map(MinAreaRecord.pixels) ?? .defaultArea
            }
        }
        return r
    }
}

/// The segmentation settings in the JSON outputs (`settings`). The two-stage keys are present in
/// the two-stage mode only: `masks` when masks were given, else `proposals`, `max_proposals`,
/// `min_area`.
public struct SegmentationSettingsRecord: Codable, Sendable, Equatable {
    public var method: String
    public var templates: String
    public var shortSide: Int
    public var window: Int
    public var stride: Int
    /// Sliding windows (false: one pass over the whole rescaled image).
    public var windows: Bool
    public var logitScale: Double
    public var refine: String
    public var threshold: Double
    public var background: [String]
    public var mode: SegmentationMode
    @Nullable public var prompts: String?
    public var cropMargin: Double?
    public var fusionLambda: Double?
    public var regionFeatures: String?
    public var masks: String?
    public var proposals: String?
    public var maxProposals: Int?
    public var minArea: MinAreaRecord?

    public init(method: String, templates: String, shortSide: Int, window: Int, stride: Int, windows: Bool, logitScale: Double,
                refine: String, threshold: Double, background: [String], mode: SegmentationMode, prompts: String?) {
        self.method = method; self.templates = templates; self.shortSide = shortSide; self.window = window
        self.stride = stride; self.windows = windows; self.logitScale = logitScale; self.refine = refine
        self.threshold = threshold; self.background = background; self.mode = mode; self.prompts = prompts
    }

    enum CodingKeys: String, CodingKey {
        case method, templates, shortSide = "short_side", window, stride, windows, logitScale = "logit_scale", refine,
             threshold, background, mode, prompts, cropMargin = "crop_margin", fusionLambda = "fusion_lambda",
             regionFeatures = "region_features", masks, proposals, maxProposals = "max_proposals", minArea = "min_area"
    }
}

/// `min_area`: a number of pixels, or the default "0.2% of the image".
public enum MinAreaRecord: Codable, Sendable, Equatable {
    case pixels(Int)
    case defaultArea

    public static let defaultText = "0.2% of the image"

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let n = try? c.decode(Int.self) { self = .pixels(n); return }
        _ = try c.decode(String.self)
        self = .defaultArea
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .pixels(let n): try c.encode(n)
        case .defaultArea: try c.encode(Self.defaultText)
        }
    }
}

/// The labelled data set of `eval` and `tune` in their `settings` (next to the segmentation
/// settings, in the same object).
public struct DatasetRecord: Codable, Sendable, Equatable {
    public var images: String
    public var labels: String
    @Nullable public var classesFile: String?
    public var ignore: Int
    /// eval only.
    public var reduceZeroLabel: Bool?
    @Nullable public var limit: Int?
    public var threads: Int

    public init(images: String, labels: String, classesFile: String?, ignore: Int, reduceZeroLabel: Bool?, limit: Int?, threads: Int) {
        self.images = images; self.labels = labels; self.classesFile = classesFile; self.ignore = ignore
        self.reduceZeroLabel = reduceZeroLabel; self.limit = limit; self.threads = threads
    }

    enum CodingKeys: String, CodingKey {
        case images, labels, classesFile = "classes_file", ignore, reduceZeroLabel = "reduce_zero_label", limit, threads
    }
}

/// `settings` of a record: the segmentation settings, and for eval and tune the data set, in one
/// JSON object.
public struct SettingsRecord: Codable, Sendable, Equatable {
    public var segmentation: SegmentationSettingsRecord
    public var dataset: DatasetRecord?

    public init(segmentation: SegmentationSettingsRecord, dataset: DatasetRecord? = nil) {
        self.segmentation = segmentation; self.dataset = dataset
    }

    enum Keys: String, CodingKey { case images }
    public init(from decoder: any Decoder) throws {
        segmentation = try SegmentationSettingsRecord(from: decoder)
        let hasDataset = try decoder.container(keyedBy: Keys.self).contains(.images)
        dataset = hasDataset ? try DatasetRecord(from: decoder) : nil
    }
    public func encode(to encoder: any Encoder) throws {
        try segmentation.encode(to: encoder)
        try dataset?.encode(to: encoder)
    }
}
