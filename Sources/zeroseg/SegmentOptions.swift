import ArgumentParser
import Foundation
import ZeroSeg

extension DenseMethod: ExpressibleByArgument {}
extension Refinement: ExpressibleByArgument {}

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

    func validate() throws {
        if (classes == nil) == (classesFile == nil) { throw ValidationError("give exactly one of --classes and --classes-file") }
        do { try options().validate() } catch let e as ZeroSegError { throw ValidationError(e.message) }
        if classes != nil { do { _ = try classSet() } catch let e as ZeroSegError { throw ValidationError(e.message) } }
    }

    func options() -> SegmentationOptions {
        var o = SegmentationOptions()
        o.method = method; o.shortSide = shortSide; o.window = window; o.stride = stride
        o.useWindows = !noWindow; o.logitScale = logitScale; o.refine = refine; o.threshold = threshold
        return o
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
         "background": background.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } } ?? []]
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
