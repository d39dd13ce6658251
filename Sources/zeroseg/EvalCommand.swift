import ArgumentParser
import Foundation
import ZeroSeg

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Segment a labelled image set and score it as mmsegmentation's IoUMetric does: per-class IoU and accuracy, mIoU, mAcc, aAcc.",
        discussion: """
            Images and label PNGs are paired by file name stem (a.jpg with a.png); every image needs a label \
            and every label an image. Labels are 8-bit greyscale or palette indices: value i is class i of \
            --classes / --classes-file (in order); the --ignore value is left out (CamVid: --ignore 11; \
            ADE20K: --reduce-zero-label). One confusion matrix is kept over the whole set; a pixel predicted \
            as background (255) counts as a miss of its label class. IoU = TP/(TP+FP+FN), Acc = TP/(TP+FN), \
            mIoU and mAcc = means over the classes whose value is defined (not 0/0), aAcc = all TP / all \
            evaluated pixels. All labels and images are checked before the model runs. With --out DIR the \
            report is written to DIR/eval.json and DIR/eval.txt (atomically).
            """)

    @Option(help: "Directory of images (.png, .jpg, .jpeg).")
    var images: String

    @Option(help: "Directory of label PNGs with the same file name stems as the images.")
    var labels: String

    @Option(help: "Label value left out of every metric (compared after --reduce-zero-label). CamVid: 11.")
    var ignore: Int = 255

    @Flag(help: "Labels are 0 = unlabelled, 1...N = classes (ADE20K): 0 is ignored, every other value v is class v - 1.")
    var reduceZeroLabel = false

    @Option(help: "Output folder (created): eval.json (report: settings, model, per-class numbers, confusion matrix) and eval.txt (the table).")
    var out: String?

    @Option(help: "Also write the JSON report to this file.")
    var json: String?

    @Flag(help: "Also write each prediction as OUT/predictions/NAME.png (8-bit paletted class indices, 255 = none).")
    var savePredictions = false

    @Option(help: "Evaluate only the first N image/label pairs (in file name order).")
    var limit: Int?

    @Flag(help: "No progress bar.")
    var quiet = false

    @Option(help: "Comma-separated seen classes (names as in the class list): also report mIoU over seen classes, over the others (unseen), and their harmonic mean hIoU.")
    var seen: String?

    @Flag(help: "No timings and no date in the JSON report (every timing 0): the report then depends on the inputs only.")
    var noTimings = false

    @OptionGroup var seg: SegmentationArguments
    @OptionGroup var options: ModelOptions

    func validate() throws {
        guard (0...255).contains(ignore) else { throw ValidationError("--ignore must be between 0 and 255") }
        if let limit, limit < 1 { throw ValidationError("--limit must be at least 1") }
        if savePredictions && out == nil { throw ValidationError("--save-predictions needs --out") }
        if seg.seenBias != nil && seg.prompts == nil { throw ValidationError("--seen-bias needs --prompts (a head tuned with --loss sigmoid)") }
    }

    /// The library's settings from the flags (the class set resolves --seen).
    func settings(_ classes: ClassSet) throws -> EvaluationSettings {
        var s = EvaluationSettings(images: URL(fileURLWithPath: images), labels: URL(fileURLWithPath: labels))
        s.classesFile = seg.classesFile
        s.ignore = ignore; s.reduceZeroLabel = reduceZeroLabel; s.limit = limit
        s.seen = try seen.map { try classes.indices(of: $0.split(separator: ",").map(String.init), parameter: "seen") }
        s.outputDirectory = out.map { URL(fileURLWithPath: $0) }
        s.jsonFile = json.map { URL(fileURLWithPath: $0) }
        s.savePredictions = savePredictions
        s.timings = !noTimings
        return s
    }

    func run() throws {
        // 1. Everything that can be wrong with the input is found before the (slow) model runs.
        let classes = try seg.classSet()
        let check = Progress(total: 0, quiet: quiet)
        let evaluation: EvaluationRun
        do {
            evaluation = try EvaluationRun(classes: classes, segmentation: seg.settings(), settings: settings(classes),
                                           progress: { i, n, stem in check.update(i, n, "checking \(stem)") })
        } catch {
            check.clear()
            throw error
        }
        check.clear()
        // 2. The model.
        let t0 = Date()
        let model = try options.load()
        let loadSeconds = Date().timeIntervalSince(t0)
        if model.isSynthetic {
            printErr("WARNING: \(model.source) is a synthetic model with random weights: the scores will be meaningless")
        }
        // 3. Segment, count, report. SIGINT / SIGTERM: stop at once, no report (it is written at the end)
        let signals = SignalWatcher { sig, _ in
            exitAtOnce(on: sig, "interrupted by \(SignalWatcher.name(sig)): no report written")
        }
        defer { signals.cancel() }
        let progress = Progress(total: evaluation.pairs.count, quiet: quiet)
        let report: EvalReport
        do {
            report = try evaluation.run(model: model, prompts: seg.loadPrompts(model: model), threads: options.threads,
                                        modelLoadSeconds: loadSeconds, progress: { i, _, stem in progress.update(i, stem) })
        } catch {
            progress.clear()
            throw error
        }
        progress.finish()
        try evaluation.write(report)
        print(report.table, terminator: "")
    }
}
