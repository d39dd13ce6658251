import Foundation
import ZeroSegCore
import ZeroSegImaging
import ZeroSegCLIP

/// The labelled set and the outputs of an evaluation.
public struct EvaluationSettings: Sendable, Equatable {
    /// Folder of images (.png, .jpg, .jpeg) and folder of label PNGs with the same stems.
    public var images: URL
    public var labels: URL
    /// The class file the classes came from (recorded only).
    public var classesFile: String?
    /// Label value left out of every metric (compared after `reduceZeroLabel`).
    public var ignore = 255
    /// mmseg's `reduce_zero_label` (ADE20K): 0 is ignored, every other value v is class v − 1.
    public var reduceZeroLabel = false
    /// Only the first N image/label pairs (in file name order).
    public var limit: Int?
    /// Seen classes (indices): also seen / unseen mIoU and hIoU.
    public var seen: Set<Int>?
    /// Folder for `eval.json` and `eval.txt` (and `predictions/NAME.png` with `savePredictions`).
    public var outputDirectory: URL?
    /// Another place for the JSON report.
    public var jsonFile: URL?
    public var savePredictions = false
    /// Timings and the date in the report; false: every timing 0 and no date (byte-comparable).
    public var timings = true

    public init(images: URL, labels: URL) {
        self.images = images
        self.labels = labels
    }

    /// Errors of kind `.invalidArgument(parameter:)`.
    public func validate() throws {
        guard (0...255).contains(ignore) else { throw ZeroSegError.invalidArgument("the ignore value must be between 0 and 255", parameter: "ignore") }
        if let limit, limit < 1 { throw ZeroSegError.invalidArgument("the limit must be at least 1", parameter: "limit") }
        if savePredictions && outputDirectory == nil {
            throw ZeroSegError.invalidArgument("saving predictions needs an output folder", parameter: "savePredictions")
        }
    }
}

/// An evaluation as `zeroseg eval` runs it: segment a labelled set and score it as
/// mmsegmentation's IoUMetric does (docs/eval.md). Creating the run checks everything that can
/// be wrong with the input before any model is needed (every label read and checked, every
/// image decoded, sizes compared, output places writable), so a bad data set fails in seconds;
/// `run` segments and counts; `write` writes the report.
///
/// ```swift
/// var s = EvaluationSettings(images: imagesURL, labels: labelsURL)
/// s.ignore = 11
/// let run = try EvaluationRun(classes: ClassSet.load(camvidURL), segmentation: SegmentationSettings(), settings: s)
/// let report = try run.run(model: model)
/// print(report.table)
/// ```
public final class EvaluationRun: @unchecked Sendable {
    public let classes: ClassSet
    public let segmentation: SegmentationSettings
    public let settings: EvaluationSettings
    /// The image/label pairs evaluated (after `limit`).
    public let pairs: [EvalPair]
    let started = Date()

    /// Checks the settings and the data set. `progress(done, total, stem)` while checking.
    public init(classes: ClassSet, segmentation: SegmentationSettings, settings: EvaluationSettings,
                progress: ((_ done: Int, _ total: Int, _ stem: String) -> Void)? = nil) throws {
        try settings.validate()
        try segmentation.validate()
        _ = try segmentation.templateList()
        if let seen = settings.seen, let bad = seen.first(where: { $0 < 0 || $0 >= classes.classes.count }) {
            throw ZeroSegError.invalidArgument("seen class index \(bad) is not a class", parameter: "seen")
        }
        self.classes = classes
        self.segmentation = segmentation
        self.settings = settings
        if let dir = settings.outputDirectory { try Self.prepareOutput(dir, predictions: settings.savePredictions) }
        if let json = settings.jsonFile { try checkWritableFile(json, what: "JSON report") }

        let pairing = try Evaluation.pairs(images: settings.images, labels: settings.labels)
        if !pairing.imagesWithoutLabel.isEmpty {
            let n = pairing.imagesWithoutLabel.count
            let shown = pairing.imagesWithoutLabel.prefix(5).map(\.lastPathComponent).joined(separator: ", ")
            throw ZeroSegError.badInput("\(n) image\(n == 1 ? "" : "s") in \(settings.images.path) \(n == 1 ? "has" : "have") no label in \(settings.labels.path): \(shown)\(n > 5 ? ", ..." : "")",
                                        file: settings.images.path)
        }
        pairs = settings.limit.map { Array(pairing.pairs.prefix($0)) } ?? pairing.pairs
        for (i, p) in pairs.enumerated() {
            progress?(i, pairs.count, p.stem)
            let label = try Evaluation.loadLabelMap(p.label)
            try ConfusionMatrix.checkLabels(label.values, numClasses: classes.classes.count, ignore: settings.ignore,
                                            reduceZeroLabel: settings.reduceZeroLabel, source: p.label.path)
            try Self.checkSameSize(try RGBImage.load(p.image), label, p)
        }
    }

    /// Segments every pair with `model` and returns the report (also counted: the seconds of
    /// the text encoder, segmentation, and `modelLoadSeconds` as given). `prompts`: learned
    /// prompts for the queries. `progress(done, total, stem)` before each image and at the end.
    public func run(model: CLIPModel, prompts: (any PromptHead)? = nil, threads: Int = defaultThreads,
                    cache: TextEmbeddingCache? = nil, modelLoadSeconds: Double = 0,
                    progress: ((_ done: Int, _ total: Int, _ stem: String) -> Void)? = nil) throws -> EvalReport {
        let pipeline = try SegmentationPipeline(model: model, classes: classes, settings: segmentation, prompts: prompts,
                                                threads: threads, cache: cache)
        var matrix = try ConfusionMatrix(numClasses: classes.classes.count)
        let palette = try classPalette(count: classes.classes.count)
        let t0 = Date()
        for (i, p) in pairs.enumerated() {
            progress?(i, pairs.count, p.stem)
            let label = try Evaluation.loadLabelMap(p.label)
            let image = try RGBImage.load(p.image)
            try Self.checkSameSize(image, label, p)
            let r = try pipeline.segment(image, input: p.image, singleInput: false).result
            try matrix.add(prediction: r.labels, label: label.values, ignore: settings.ignore, reduceZeroLabel: settings.reduceZeroLabel,
                           source: p.label.path)
            if settings.savePredictions, let dir = settings.outputDirectory {
                try writeLabelPNG(labels: r.labels, width: r.width, height: r.height, palette: palette,
                                  to: dir.appendingPathComponent("predictions/\(p.stem).png"))
            }
        }
        progress?(pairs.count, pairs.count, "done")
        let segmentation = Date().timeIntervalSince(t0)
        let timings = ["per_image": pairs.isEmpty ? 0 : segmentation / Double(pairs.count), "segmentation": segmentation,
                       "model_load": modelLoadSeconds, "text": pipeline.textSeconds, "total": Date().timeIntervalSince(started)]
        return EvalReport(header: RecordHeader(command: "eval", model: model, timings: timings, record: settings.timings),
                          settings: settingsRecord(threads: threads), classes: classes, matrix: matrix, images: pairs.count,
                          seen: settings.seen)
    }

    /// `settings` of the report.
    public func settingsRecord(threads: Int) -> SettingsRecord {
        let s = settings
        return SettingsRecord(segmentation: segmentation.record(background: classes.background),
                              dataset: DatasetRecord(images: s.images.path, labels: s.labels.path, classesFile: s.classesFile,
                                                     ignore: s.ignore, reduceZeroLabel: s.reduceZeroLabel, limit: s.limit, threads: threads))
    }

    /// Writes the report (each file atomically): `eval.json` and `eval.txt` (the table) into the
    /// output folder, and the JSON to `jsonFile`.
    public func write(_ report: EvalReport) throws {
        let json = try JSONOutput.data(report)
        if let dir = settings.outputDirectory {
            try writeDataAtomically(json, to: dir.appendingPathComponent("eval.json"), what: "JSON report")
            try writeDataAtomically(Data(report.table.utf8), to: dir.appendingPathComponent("eval.txt"), what: "report")
        }
        if let file = settings.jsonFile { try writeDataAtomically(json, to: file, what: "JSON report") }
    }

    static func checkSameSize(_ image: RGBImage, _ label: LabelMap, _ p: EvalPair) throws {
        guard image.width == label.width, image.height == label.height else {
            throw ZeroSegError.badInput("image \(p.image.path) is \(image.width)x\(image.height) but its label \(p.label.path) is \(label.width)x\(label.height)",
                                        file: p.label.path)
        }
    }

    /// Creates the output folder (and predictions/ in it) and checks it can be written.
    static func prepareOutput(_ dir: URL, predictions: Bool) throws {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: dir.path, isDirectory: &isDir), !isDir.boolValue {
            throw ZeroSegError.io("cannot use output folder \(dir.path): it is a file", file: dir.path)
        }
        let target = predictions ? dir.appendingPathComponent("predictions") : dir
        do { try fm.createDirectory(at: target, withIntermediateDirectories: true) } catch {
            throw ZeroSegError.io("cannot create output folder \(target.path): \(reason(error))", file: target.path)
        }
        try checkWritableFile(dir.appendingPathComponent("eval.json"), what: "JSON report")
        if predictions { try checkWritableFile(target.appendingPathComponent("x.png"), what: "prediction") }
    }
}

/// Checks that a file can be created at `url` (its folder exists and is writable, it is not a
/// folder); errors of kind `.io(file:)`.
public func checkWritableFile(_ url: URL, what: String) throws {
    let fm = FileManager.default
    let dir = url.deletingLastPathComponent()
    var isDir: ObjCBool = false
    guard fm.fileExists(atPath: dir.path, isDirectory: &isDir), isDir.boolValue else {
        throw ZeroSegError.io("cannot write \(what) \(url.path): folder \(dir.path) does not exist", file: url.path)
    }
    if fm.fileExists(atPath: url.path, isDirectory: &isDir), isDir.boolValue {
        throw ZeroSegError.io("cannot write \(what) \(url.path): it is a folder", file: url.path)
    }
    let probe = dir.appendingPathComponent(".zeroseg-probe-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
    guard fm.createFile(atPath: probe.path, contents: Data()) else {
        throw ZeroSegError.io("cannot write \(what) \(url.path): folder \(dir.path) is not writable", file: url.path)
    }
    try? fm.removeItem(at: probe)
}

private func reason(_ error: any Error) -> String {
    let ns = error as NSError
    if let u = ns.userInfo[NSUnderlyingErrorKey] as? NSError, u.domain == NSPOSIXErrorDomain, let code = POSIXErrorCode(rawValue: Int32(u.code)) {
        return String(cString: strerror(code.rawValue))
    }
    return ns.localizedDescription
}
