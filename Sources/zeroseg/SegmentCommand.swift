import ArgumentParser
import Foundation
import ZeroSeg

struct Segment: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Segment images into the given classes (the default command: `zeroseg IMAGE --classes ...`).",
        discussion: """
            For each input NAME writes into --out: NAME.labels.png (8-bit paletted, index = class in the \
            order given, 255 = background), NAME.overlay.png (image blended with class colours, legend on \
            the right), NAME.json (classes with area and mean score, settings, model, timings) and, with \
            --scores, NAME.scores.npy (float32 [classes, H, W]).
            """)

    @OptionGroup var options: ModelOptions
    @OptionGroup var seg: SegmentationArguments

    @Option(help: "Output folder (created).")
    var out: String = "zeroseg-out"

    @Flag(help: "Also write NAME.scores.npy: float32 [classes, H, W] per-class probabilities.")
    var scores = false

    @Flag(help: "Two-stage: also write the masks used, OUT/NAME/NNN.png (255 inside), and OUT/NAME.proposals.json.")
    var saveProposals = false

    @Flag(help: "No progress display.")
    var quiet = false

    @Flag(help: "No timings and no date in NAME.json (every timing 0): the outputs then depend on the inputs only.")
    var noTimings = false

    @Argument(help: "Images (JPEG or PNG) or folders of images.")
    var inputs: [String] = []

    func validate() throws {
        if inputs.isEmpty { throw ValidationError("give at least one IMAGE or folder") }
        if saveProposals && seg.mode != .twoStage { throw ValidationError("--save-proposals needs --mode two-stage") }
        if seg.seenBias != nil && seg.prompts == nil { throw ValidationError("--seen-bias needs --prompts (a head tuned with --loss sigmoid)") }
    }

    var outputs: SegmentationOutputs {
        var o = SegmentationOutputs()
        o.scores = scores; o.proposals = saveProposals; o.timings = !noTimings
        return o
    }

    func run() throws {
        let files = try SegmentationPipeline.collectImages(inputs)
        let classes = try seg.classSet()
        let settings = seg.settings()
        _ = try settings.templateList()
        let outDir = URL(fileURLWithPath: out)
        try SegmentationPipeline.prepareOutputDirectory(outDir)
        let model = try options.load()
        let pipeline = try SegmentationPipeline(model: model, classes: classes, settings: settings,
                                                prompts: seg.loadPrompts(model: model), threads: options.threads)
        let progress = Progress(total: files.count, quiet: quiet)
        let clearLine = progress.enabled  // an error line replaces the progress line, which is redrawn next
        let summary = pipeline.run(files, into: outDir, outputs: outputs,
                                   progress: { done, _, next in progress.update(done, next?.lastPathComponent ?? "done") },
                                   failure: { file, error in printErr((clearLine ? "\r\u{1B}[K" : "") + "error: " + failureMessage(file, error)) })
        progress.finish()
        if model.isSynthetic { printErr("warning: made with SYNTHETIC random weights: the labels are meaningless") }
        if let first = summary.failed.first {
            printErr("error: \(summary.failed.count) of \(files.count) image(s) failed")
            // every image failed: the exit code of the first failure's kind
            let kind = (first.error as? ZeroSegError)?.kind ?? .other
            throw ExitCode(summary.succeeded.isEmpty ? ExitCodes.code(for: kind) : ExitCodes.failed)
        }
    }
}

/// One failed input as a line: the message, with the input's path when it does not name it.
func failureMessage(_ file: URL, _ error: any Error) -> String {
    let message = (error as? ZeroSegError).map(cliMessage) ?? "\(error)"
    return message.contains(file.path) ? message : "\(file.path): \(message)"
}
