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

            SIGINT (Ctrl-C) or SIGTERM: the image in flight is finished and written, no other is \
            started, and the run exits with 130 (SIGINT) or 143 (SIGTERM), saying how many images are \
            done; a second signal exits at once (writes in progress are abandoned, no temporary file \
            is left). --skip-existing then resumes: images whose outputs are complete are skipped. \
            A write that fails for lack of space or a read-only folder stops the run (exit 5): the \
            image's files are removed, earlier images' outputs are kept.
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

    @Flag(help: "Skip inputs whose outputs in --out are complete: NAME.json (written last) made from the same image (not newer) with the same classes, settings, model and zeroseg version, and every other output there. Stale outputs are made again (a note says so). Resumes an interrupted run.")
    var skipExisting = false

    @Flag(help: "Print a summary of the run as one line of JSON on stdout (images, written, skipped, failed, ...).")
    var json = false

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
        // SIGINT / SIGTERM: finish the image in flight, then stop; a second one: stop now
        let stop = StopRequest()
        let signals = SignalWatcher { sig, again in
            if again { exitAtOnce(on: sig, "stopped by a second \(SignalWatcher.name(sig)): the image in flight was not finished: run again with --skip-existing to resume") }
            stop.stop(reason: SignalWatcher.name(sig), signal: sig)
        }
        defer { signals.cancel() }
        let t0 = Date()
        let model = try options.load()
        let pipeline = try SegmentationPipeline(model: model, classes: classes, settings: settings,
                                                prompts: seg.loadPrompts(model: model), threads: options.threads)
        let progress = Progress(total: files.count, quiet: quiet)
        let clearLine = progress.enabled  // an error line replaces the progress line, which is redrawn next
        let summary = pipeline.run(files, into: outDir, outputs: outputs, skipExisting: skipExisting, stop: stop,
                                   progress: { done, total, next in progress.update(done, total, next?.lastPathComponent ?? "done") },
                                   failure: { file, error in
                                       // a full disk or read-only folder: said once, at the end
                                       if (error as? ZeroSegError)?.isStorageFailure == true { return }
                                       printErr((clearLine ? "\r\u{1B}[K" : "") + "error: " + failureMessage(file, error))
                                   })
        progress.finish()
        if json {
            let record = SegmentRunRecord(summary, total: files.count, out: out, pipeline: pipeline, outputs: outputs,
                                          seconds: Date().timeIntervalSince(t0))
            print(try JSONOutput.line(record))
        }
        if model.isSynthetic { printErr("warning: made with SYNTHETIC random weights: the labels are meaningless") }
        if !summary.redone.isEmpty {
            let first = summary.redone[0]
            printErr("note: \(summary.redone.count) image(s) had stale outputs in \(out), segmented again (\(first.input.lastPathComponent): \(first.reason))")
        }
        let done = "\(summary.done) of \(files.count) image(s) done"
        if let e = summary.storageFailure {
            printErr("error: \(cliMessage(e)); stopped: \(done)")
            throw ExitCode(ExitCodes.io)
        }
        if let why = summary.interrupted {
            printErr("error: interrupted by \(why) after \(done)\(summary.failed.isEmpty ? "" : ", \(summary.failed.count) failed"): run again with --skip-existing to resume")
            throw ExitCode(128 + (stop.signal ?? SIGINT))
        }
        if let first = summary.failed.first {
            printErr("error: \(summary.failed.count) of \(files.count) image(s) failed")
            // every image failed: the exit code of the first failure's kind
            let kind = (first.error as? ZeroSegError)?.kind ?? .other
            throw ExitCode(summary.succeeded.isEmpty && summary.skipped.isEmpty ? ExitCodes.code(for: kind) : ExitCodes.failed)
        }
    }
}

/// One failed input as a line: the message, with the input's path when it does not name it.
func failureMessage(_ file: URL, _ error: any Error) -> String {
    let message = (error as? ZeroSegError).map(cliMessage) ?? "\(error)"
    return message.contains(file.path) ? message : "\(file.path): \(message)"
}
