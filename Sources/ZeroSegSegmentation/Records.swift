import Foundation
import ZeroSegCore
import ZeroSegImaging
import ZeroSegCLIP

// The JSON records of segmentation and evaluation (schema: docs/json.md). Each starts with the
// shared `RecordHeader` keys and has a `settings` object.

// MARK: - segment

/// `NAME.json`: one segmented image.
public struct SegmentRecord: Codable, Sendable, Equatable {
    /// One class: its index (the label value), names, overlay colour, area and mean score.
    public struct ClassArea: Codable, Sendable, Equatable {
        public var index: Int
        /// The first of `names` (the display name).
        public var name: String
        public var names: [String]
        /// [r, g, b] in the overlay and the label PNG's palette.
        public var color: [Int]
        /// Fraction of the image's pixels labelled with the class.
        public var area: Double
        /// Mean winning probability over those pixels.
        public var meanScore: Double

        public init(index: Int, name: String, names: [String], color: [Int], area: Double, meanScore: Double) {
            self.index = index; self.name = name; self.names = names; self.color = color; self.area = area; self.meanScore = meanScore
        }
        enum CodingKeys: String, CodingKey { case index, name, names, color, area, meanScore = "mean_score" }
    }

    public var header: RecordHeader
    public var settings: SettingsRecord
    /// The input file's path.
    public var image: String
    public var width: Int
    public var height: Int
    public var classes: [ClassArea]
    public var backgroundOrUnlabelledArea: Double
    /// Two-stage: the classified regions, in proposal order.
    public var regions: [RegionRecord]?

    public init(header: RecordHeader, settings: SettingsRecord, image: String, width: Int, height: Int, classes: [ClassArea],
                backgroundOrUnlabelledArea: Double, regions: [RegionRecord]?) {
        self.header = header; self.settings = settings; self.image = image; self.width = width; self.height = height
        self.classes = classes; self.backgroundOrUnlabelledArea = backgroundOrUnlabelledArea; self.regions = regions
    }

    enum CodingKeys: String, CodingKey {
        case settings, image, width, height, classes, backgroundOrUnlabelledArea = "background_or_unlabelled_area", regions
    }
    public init(from decoder: any Decoder) throws {
        header = try RecordHeader(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        settings = try c.decode(SettingsRecord.self, forKey: .settings)
        image = try c.decode(String.self, forKey: .image)
        width = try c.decode(Int.self, forKey: .width)
        height = try c.decode(Int.self, forKey: .height)
        classes = try c.decode([ClassArea].self, forKey: .classes)
        backgroundOrUnlabelledArea = try c.decode(Double.self, forKey: .backgroundOrUnlabelledArea)
        regions = try c.decodeIfPresent([RegionRecord].self, forKey: .regions)
    }
    public func encode(to encoder: any Encoder) throws {
        try header.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(settings, forKey: .settings)
        try c.encode(image, forKey: .image)
        try c.encode(width, forKey: .width)
        try c.encode(height, forKey: .height)
        try c.encode(classes, forKey: .classes)
        try c.encode(backgroundOrUnlabelledArea, forKey: .backgroundOrUnlabelledArea)
        try c.encodeIfPresent(regions, forKey: .regions)
    }
}

/// One two-stage region: the mask's summary (index, area, box [x0, y0, x1, y1) end-exclusive,
/// source), the pixels it decided, the three most likely classes, and its file when saved.
public struct RegionRecord: Codable, Sendable, Equatable {
    public struct Score: Codable, Sendable, Equatable {
        /// A class's display name, or "background".
        public var `class`: String
        public var probability: Double
        public init(class name: String, probability: Double) { self.class = name; self.probability = probability }
    }
    public var index: Int
    /// The mask file under the output folder (`NAME/NNN.png`) when the masks were saved.
    public var file: String?
    public var area: Int
    public var bbox: [Int]
    public var source: String
    public var ownedPixels: Int
    public var top: [Score]

    public init(index: Int, file: String?, area: Int, bbox: [Int], source: String, ownedPixels: Int, top: [Score]) {
        self.index = index; self.file = file; self.area = area; self.bbox = bbox; self.source = source
        self.ownedPixels = ownedPixels; self.top = top
    }

    enum CodingKeys: String, CodingKey { case index, file, area, bbox, source, ownedPixels = "owned_pixels", top }

    /// Records of classified regions; `files`: each region's mask file, when saved.
    public static func records(_ regions: [RegionScore], classes set: ClassSet, files: [String]?) -> [RegionRecord] {
        let names = set.displayNames + (set.background.isEmpty ? [] : ["background"])
        return zip(regions, proposalSummaries(regions.map(\.mask))).enumerated().map { i, pair in
            let (r, summary) = pair
            let top = r.probabilities.indices.sorted { r.probabilities[$0] > r.probabilities[$1] }.prefix(3)
            return RegionRecord(index: summary.index, file: files?[i], area: summary.area, bbox: summary.bbox, source: summary.source,
                                ownedPixels: r.ownedPixels,
                                top: top.map { Score(class: names[$0], probability: Double(r.probabilities[$0])) })
        }
    }
}

/// `NAME.proposals.json` (two-stage with saved proposals): the masks of one image.
public struct ProposalsRecord: Codable, Sendable, Equatable {
    public var image: String
    public var width: Int
    public var height: Int
    public var masks: [RegionRecord]
    public init(image: String, width: Int, height: Int, masks: [RegionRecord]) {
        self.image = image; self.width = width; self.height = height; self.masks = masks
    }
}

/// `zeroseg segment --json`: what a folder run did (stdout, one line).
public struct SegmentRunRecord: Codable, Sendable, Equatable {
    public struct Failure: Codable, Sendable, Equatable {
        public var path: String
        public var error: String
        public init(path: String, error: String) { self.path = path; self.error = error }
    }
    public var header: RecordHeader
    public var settings: SettingsRecord
    /// The output folder.
    public var out: String
    /// Inputs given.
    public var images: Int
    /// Inputs segmented and written by this run.
    public var written: Int
    /// Inputs whose complete outputs were there already (resuming): not segmented.
    public var skipped: Int
    /// Inputs whose outputs were stale (other settings, classes, model, an older record): made again.
    public var segmentedAgain: Int
    public var failed: [Failure]
    /// Inputs not attempted: the run stopped early.
    public var notStarted: Int
    /// The signal that stopped the run ("SIGINT", "SIGTERM"), else null.
    @Nullable public var interrupted: String?
    /// The write failure (no space, read-only folder) that stopped the run, else null.
    @Nullable public var storageError: String?

    public init(_ summary: SegmentationSummary, total: Int, out: String, pipeline: SegmentationPipeline,
                outputs: SegmentationOutputs, seconds: Double) {
        header = RecordHeader(command: "segment", model: pipeline.model, timings: ["total": seconds], record: outputs.timings)
        settings = SettingsRecord(segmentation: pipeline.settings.record(background: pipeline.classes.background))
        self.out = out
        images = total
        written = summary.succeeded.count
        skipped = summary.skipped.count
        segmentedAgain = summary.redone.count
        failed = summary.failed.map { Failure(path: $0.input.path, error: "\($0.error)") }
        notStarted = summary.notStarted.count
        interrupted = summary.interrupted
        storageError = summary.storageFailure?.message
    }

    enum CodingKeys: String, CodingKey {
        case settings, out, images, written, skipped, segmentedAgain = "segmented_again", failed, notStarted = "not_started",
             interrupted, storageError = "storage_error"
    }
    public init(from decoder: any Decoder) throws {
        header = try RecordHeader(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        settings = try c.decode(SettingsRecord.self, forKey: .settings)
        out = try c.decode(String.self, forKey: .out)
        images = try c.decode(Int.self, forKey: .images)
        written = try c.decode(Int.self, forKey: .written)
        skipped = try c.decode(Int.self, forKey: .skipped)
        segmentedAgain = try c.decode(Int.self, forKey: .segmentedAgain)
        failed = try c.decode([Failure].self, forKey: .failed)
        notStarted = try c.decode(Int.self, forKey: .notStarted)
        _interrupted = try c.decode(Nullable<String>.self, forKey: .interrupted)
        _storageError = try c.decode(Nullable<String>.self, forKey: .storageError)
    }
    public func encode(to encoder: any Encoder) throws {
        try header.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(settings, forKey: .settings)
        try c.encode(out, forKey: .out)
        try c.encode(images, forKey: .images)
        try c.encode(written, forKey: .written)
        try c.encode(skipped, forKey: .skipped)
        try c.encode(segmentedAgain, forKey: .segmentedAgain)
        try c.encode(failed, forKey: .failed)
        try c.encode(notStarted, forKey: .notStarted)
        try c.encode(_interrupted, forKey: .interrupted)
        try c.encode(_storageError, forKey: .storageError)
    }
}

// MARK: - eval

/// `eval.json`: the metrics of mmsegmentation's IoUMetric over a labelled set (docs/eval.md).
public struct EvalReport: Codable, Sendable, Equatable {
    public struct ClassResult: Codable, Sendable, Equatable {
        public var index: Int
        public var name: String
        public var names: [String]
        /// nil when 0/0.
        @Nullable public var iou: Double?
        @Nullable public var acc: Double?
        /// Evaluated pixels labelled with the class.
        public var pixels: Int
        public var predicted: Int
        public var intersection: Int
        public var union: Int

        public init(index: Int, name: String, names: [String], iou: Double?, acc: Double?, pixels: Int, predicted: Int,
                    intersection: Int, union: Int) {
            self.index = index; self.name = name; self.names = names; self.iou = iou; self.acc = acc
            self.pixels = pixels; self.predicted = predicted; self.intersection = intersection; self.union = union
        }
    }
    public struct Matrix: Codable, Sendable, Equatable {
        public var rows = "label class"
        public var columns = "predicted class; the last column is no class (background / below threshold)"
        /// [classes][classes + 1].
        public var counts: [[Int]]
        public init(counts: [[Int]]) { self.counts = counts }
    }
    public struct SeenUnseen: Codable, Sendable, Equatable {
        public var seen: [String]
        @Nullable public var seenMIoU: Double?
        @Nullable public var unseenMIoU: Double?
        @Nullable public var hIoU: Double?
        public init(seen: [String], seenMIoU: Double?, unseenMIoU: Double?, hIoU: Double?) {
            self.seen = seen; self.seenMIoU = seenMIoU; self.unseenMIoU = unseenMIoU; self.hIoU = hIoU
        }
        enum CodingKeys: String, CodingKey { case seen, seenMIoU = "seen_mIoU", unseenMIoU = "unseen_mIoU", hIoU }
    }

    public static let metricDescription = "mmsegmentation IoUMetric: one confusion matrix over the set; IoU = TP/(TP+FP+FN), "
        + "Acc = TP/(TP+FN), aAcc = sum TP / evaluated pixels; classes whose value is 0/0 are null and left out of mIoU / mAcc; "
        + "fractions, not percentages"

    /// The header; `timings`: per_image, segmentation, model_load, text, total.
    public var header: RecordHeader
    public var settings: SettingsRecord
    public var metric: String
    public var classes: [ClassResult]
    @Nullable public var mIoU: Double?
    @Nullable public var mAcc: Double?
    @Nullable public var aAcc: Double?
    public var evaluatedPixels: Int
    /// Images evaluated.
    public var images: Int
    public var confusionMatrix: Matrix
    public var seenUnseen: SeenUnseen?

    public init(header: RecordHeader, settings: SettingsRecord, classes set: ClassSet, matrix: ConfusionMatrix, images: Int,
                seen: Set<Int>?) {
        let m = matrix.metrics
        self.header = header
        self.settings = settings
        metric = Self.metricDescription
        classes = m.classes.enumerated().map { i, c in
            ClassResult(index: i, name: set.displayNames[i], names: set.classes[i], iou: c.iou, acc: c.accuracy, pixels: Int(c.labelled),
                        predicted: Int(c.predicted), intersection: Int(c.intersection), union: Int(c.union))
        }
        mIoU = m.mIoU; mAcc = m.mAcc; aAcc = m.aAcc
        evaluatedPixels = Int(m.evaluatedPixels)
        self.images = images
        let nc = set.classes.count, cols = nc + 1
        confusionMatrix = Matrix(counts: (0..<nc).map { l in (0..<cols).map { Int(matrix.counts[l * cols + $0]) } })
        seenUnseen = seen.map { s in
            let su = m.seenUnseen(seen: s)
            return SeenUnseen(seen: s.sorted().map { set.displayNames[$0] }, seenMIoU: su.seen, unseenMIoU: su.unseen, hIoU: su.hIoU)
        }
    }

    /// The table `zeroseg eval` prints (and writes to eval.txt): per class IoU %, Acc % and
    /// pixels, then mIoU, mAcc, aAcc, images, seconds per image; seen / unseen / hIoU with seen
    /// classes; a warning line for synthetic weights.
    public var table: String {
        func pct(_ v: Double?) -> String { v.map { String(format: "%.2f", $0 * 100) } ?? "n/a" }
        func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
        func lpad(_ s: String, _ n: Int) -> String { s.count >= n ? s : String(repeating: " ", count: n - s.count) + s }
        let w = max(5, classes.map(\.name.count).max() ?? 0)
        var out = pad("class", w) + lpad("IoU %", 9) + lpad("Acc %", 9) + lpad("pixels", 12) + "\n"
        for c in classes {
            out += pad(c.name, w) + lpad(pct(c.iou), 9) + lpad(pct(c.acc), 9) + lpad("\(c.pixels)", 12) + "\n"
        }
        out += "mIoU     \(pct(mIoU))\n"
        out += "mAcc     \(pct(mAcc))\n"
        out += "aAcc     \(pct(aAcc))\n"
        out += "images   \(images)\n"
        out += "s/image  \(String(format: "%.3f", header.timings["per_image"] ?? 0))\n"
        if let su = seenUnseen {
            out += "seen     \(pct(su.seenMIoU))  (\(su.seen.joined(separator: ", ")))\n"
            out += "unseen   \(pct(su.unseenMIoU))\n"
            out += "hIoU     \(pct(su.hIoU))\n"
        }
        if header.model.synthetic {
            out += "!!! SYNTHETIC RANDOM WEIGHTS (\(header.model.source)): these numbers are MEANINGLESS, a machinery check only !!!\n"
        }
        return out
    }

    enum CodingKeys: String, CodingKey {
        case settings, metric, classes, mIoU, mAcc, aAcc, evaluatedPixels = "evaluated_pixels", images,
             confusionMatrix = "confusion_matrix", seenUnseen = "seen_unseen"
    }
    public init(from decoder: any Decoder) throws {
        header = try RecordHeader(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        settings = try c.decode(SettingsRecord.self, forKey: .settings)
        metric = try c.decode(String.self, forKey: .metric)
        classes = try c.decode([ClassResult].self, forKey: .classes)
        _mIoU = try c.decode(Nullable<Double>.self, forKey: .mIoU)
        _mAcc = try c.decode(Nullable<Double>.self, forKey: .mAcc)
        _aAcc = try c.decode(Nullable<Double>.self, forKey: .aAcc)
        evaluatedPixels = try c.decode(Int.self, forKey: .evaluatedPixels)
        images = try c.decode(Int.self, forKey: .images)
        confusionMatrix = try c.decode(Matrix.self, forKey: .confusionMatrix)
        seenUnseen = try c.decodeIfPresent(SeenUnseen.self, forKey: .seenUnseen)
    }
    public func encode(to encoder: any Encoder) throws {
        try header.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(settings, forKey: .settings)
        try c.encode(metric, forKey: .metric)
        try c.encode(classes, forKey: .classes)
        try c.encode(_mIoU, forKey: .mIoU)
        try c.encode(_mAcc, forKey: .mAcc)
        try c.encode(_aAcc, forKey: .aAcc)
        try c.encode(evaluatedPixels, forKey: .evaluatedPixels)
        try c.encode(images, forKey: .images)
        try c.encode(confusionMatrix, forKey: .confusionMatrix)
        try c.encodeIfPresent(seenUnseen, forKey: .seenUnseen)
    }
}

extension SegmentationMetrics {
    /// mIoU over the seen classes, over the others, and their harmonic mean (hIoU); classes
    /// with no IoU (empty union) are left out as in mIoU.
    public func seenUnseen(seen: Set<Int>) -> (seen: Double?, unseen: Double?, hIoU: Double?) {
        func mean(_ idx: [Int]) -> Double? {
            let v = idx.compactMap { classes[$0].iou }
            return v.isEmpty ? nil : v.reduce(0, +) / Double(v.count)
        }
        let s = mean(classes.indices.filter { seen.contains($0) }), u = mean(classes.indices.filter { !seen.contains($0) })
        var h: Double? = nil
        if let s, let u { h = s + u > 0 ? 2 * s * u / (s + u) : 0 }
        return (s, u, h)
    }
}

extension ClassSet {
    /// Indices of the classes named in `names` (any of a class's names matches). An unknown or
    /// empty list is an error of kind `.invalidArgument(parameter: parameter)`.
    public func indices(of names: [String], parameter: String = "classes") throws -> Set<Int> {
        let names = names.map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !names.isEmpty else { throw ZeroSegError.invalidArgument("the list of \(parameter) names no class", parameter: parameter) }
        var out = Set<Int>()
        for n in names {
            guard let i = classes.firstIndex(where: { $0.contains(n) }) else {
                throw ZeroSegError.invalidArgument("\"\(n)\" is not one of the classes (\(displayNames.joined(separator: ", ")))",
                                                   parameter: parameter)
            }
            out.insert(i)
        }
        return out
    }
}
