import Dispatch
import Foundation
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegCLIP

/// Which files `SegmentationPipeline.run` writes for each input NAME, besides `NAME.labels.png`,
/// `NAME.overlay.png` and `NAME.json`.
public struct SegmentationOutputs: Sendable, Equatable {
    /// `NAME.scores.npy`: float32 [classes, H, W] per-class probabilities.
    public var scores = false
    /// Two-stage: the masks used, `NAME/NNN.png` (255 inside), and `NAME.proposals.json`.
    public var proposals = false
    /// Timings and the date in `NAME.json`; false: every timing 0 and no date, so that the
    /// outputs depend on the inputs only (byte-comparable between runs).
    public var timings = true
    public init() {}
}

/// One segmented image's outputs in memory (`SegmentationPipeline.encodedOutputs`).
public struct EncodedSegmentation: Sendable {
    public let record: SegmentRecord
    /// `NAME.labels.png`'s bytes: 8-bit paletted, value = class index, 255 = background.
    public let labelsPNG: Data
    /// `NAME.overlay.png`'s bytes.
    public let overlayPNG: Data
    /// 8-bit greyscale PNG: round(255 x the labelled class's probability), 0 on background
    /// (only when the result has scores).
    public let scorePNG: Data?
}

/// What `SegmentationPipeline.run` did.
public struct SegmentationSummary: Sendable {
    /// Inputs segmented and written.
    public let succeeded: [URL]
    /// Inputs that failed (in input order), with their error.
    public let failed: [(input: URL, error: any Error)]
    /// Inputs whose complete outputs were already in the folder (`skipExisting`): not segmented.
    public var skipped: [URL] = []
    /// Inputs whose outputs in the folder were stale (`ExistingOutputs.stale`, with the reason):
    /// segmented again (they are in `succeeded` or `failed` too).
    public var redone: [(input: URL, reason: String)] = []
    /// Inputs not attempted because the run stopped early (`stop`, or a storage failure).
    public var notStarted: [URL] = []
    /// Why the run stopped before the end: the stop request's reason ("SIGINT"), nil when it ran
    /// to the end or stopped on a storage failure.
    public var interrupted: String?
    /// The write failure that stopped the run (`ZeroSegError.isStorageFailure`: no space, a
    /// read-only folder, ...): later inputs were not attempted.
    public var storageFailure: ZeroSegError?

    public init(succeeded: [URL], failed: [(input: URL, error: any Error)]) {
        self.succeeded = succeeded; self.failed = failed
    }

    /// Inputs whose outputs are complete in the folder after the run: written now, or skipped.
    public var done: Int { succeeded.count + skipped.count }
}

/// Zero-shot segmentation of image files into an output folder, as `zeroseg IMAGE|FOLDER...`
/// does it: for each input NAME, `NAME.labels.png` (8-bit paletted, index = class, 255 =
/// background), `NAME.overlay.png` (image blended with class colours, legend), `NAME.json`
/// (`SegmentRecord`), and as asked (`SegmentationOutputs`) `NAME.scores.npy` and the two-stage
/// proposals. One input that fails does not stop the others; each failure is reported to the
/// caller as it happens.
///
/// ```swift
/// let files = try SegmentationPipeline.collectImages(["photos/"])
/// let pipeline = try SegmentationPipeline(model: model, classes: ClassSet.parse("road,car,sky"), settings: SegmentationSettings())
/// let summary = try pipeline.run(files, into: URL(fileURLWithPath: "out"))
/// ```
public final class SegmentationPipeline: @unchecked Sendable {
    public let model: CLIPModel
    public let classes: ClassSet
    public let settings: SegmentationSettings
    public let segmenter: Segmenter
    /// The two-stage segmenter (two-stage mode only).
    public let twoStage: TwoStageSegmenter?
    /// The class queries [Q][P] (from the templates, or the learned prompts).
    public let queries: [[Float]]
    /// Seconds spent computing `queries` (recorded as the first image's `text` timing).
    public let textSeconds: Double
    let palette: [(UInt8, UInt8, UInt8)]

    /// Builds the segmenter and computes the class queries: the text encoder runs here (names
    /// already in `cache` are read from it). `prompts`: learned prompts (`PromptFile` of
    /// ZeroSegTuning, as `settings.prompts` names), else the templates are used.
    public init(model: CLIPModel, classes: ClassSet, settings: SegmentationSettings, prompts: (any PromptHead)? = nil,
                threads: Int = defaultThreads, cache: TextEmbeddingCache? = nil) throws {
        try settings.validate()
        let templates = try settings.templateList()
        self.model = model
        self.classes = classes
        self.settings = settings
        segmenter = try Segmenter(model: model, options: settings.options, threads: threads, prompts: prompts)
        twoStage = settings.mode == .twoStage ? try TwoStageSegmenter(segmenter: segmenter, options: settings.twoStage) : nil
        let t0 = Date()
        queries = try segmenter.queryEmbeddings(classes, templates: templates, cache: cache ?? TextEmbeddingCache(model: model))
        textSeconds = Date().timeIntervalSince(t0)
        palette = try classPalette(count: classes.classes.count)
    }

    // MARK: Before any work

    /// Image files from paths of files and folders (a folder gives its .jpg, .jpeg and .png
    /// files, sorted by name). A missing input, a folder without images, or two inputs with the
    /// same name (their outputs would collide) are errors of kind `.badInput(file:)`.
    public static func collectImages(_ inputs: [String]) throws -> [URL] {
        let fm = FileManager.default
        var files: [URL] = []
        for input in inputs {
            var isDir: ObjCBool = false
            guard fm.fileExists(atPath: input, isDirectory: &isDir) else {
                throw ZeroSegError.badInput("\(input): no such file or folder", file: input)
            }
            if isDir.boolValue {
                let items: [String]
                do { items = try fm.contentsOfDirectory(atPath: input).sorted() } catch {
                    throw ZeroSegError.badInput("cannot list \(input): \(error.localizedDescription)", file: input)
                }
                let imgs = items.filter { ["jpg", "jpeg", "png"].contains(($0 as NSString).pathExtension.lowercased()) }
                if imgs.isEmpty { throw ZeroSegError.badInput("\(input): no .jpg, .jpeg or .png files", file: input) }
                files += imgs.map { URL(fileURLWithPath: input).appendingPathComponent($0) }
            } else {
                files.append(URL(fileURLWithPath: input))
            }
        }
        var seen: [String: String] = [:]
        for f in files {
            let stem = f.deletingPathExtension().lastPathComponent
            if let other = seen[stem] {
                throw ZeroSegError.badInput("inputs \(other) and \(f.path) have the same name \(stem): their outputs would collide", file: f.path)
            }
            seen[stem] = f.path
        }
        return files
    }

    /// Creates the output folder and checks that it can be written (errors of kind `.io`).
    public static func prepareOutputDirectory(_ dir: URL) throws {
        do { try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true) } catch {
            // the system's reason, when Foundation has one (EROFS, EACCES, ENOSPC, ENOTDIR, ...)
            let code = ((error as NSError).userInfo[NSUnderlyingErrorKey] as? NSError).flatMap {
                $0.domain == NSPOSIXErrorDomain ? Int32($0.code) : nil
            }
            throw ZeroSegError.io("cannot create output folder \(dir.path)" + (code.map { " (\(String(cString: strerror($0))))" } ?? ""),
                                  file: dir.path, systemCode: code)
        }
        let probe = dir.appendingPathComponent(".zeroseg-write-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        let fd = open(probe.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            let code = errno
            throw ZeroSegError.io("output folder \(dir.path) is not writable (\(String(cString: strerror(code))))", file: dir.path,
                                  systemCode: code)
        }
        close(fd)
        unlink(probe.path)
    }

    // MARK: One image

    /// Segments one image (`input` names it, for outside masks); `singleInput`: the run has only
    /// this input (outside masks may then be `masks/*.png`).
    public func segment(_ image: RGBImage, input: URL, singleInput: Bool = true, wantScores: Bool = false) throws
        -> (result: SegmentationResult, regions: [RegionScore]?) {
        if let twoStage {
            let masks = try settings.externalMasks(for: input, singleInput: singleInput, width: image.width, height: image.height)
            let t = try twoStage.segment(image, classes: classes, queries: queries, masks: masks, wantScores: wantScores)
            return (t.result, t.regions)
        }
        return (try segmenter.segment(image, classes: classes, queries: queries, wantScores: wantScores), nil)
    }

    /// The `NAME.json` record of a segmented image. `timings`: seconds per stage as recorded
    /// (`recordTimings` false: all 0, no date); `maskFiles`: the saved mask files of the regions.
    public func record(_ r: SegmentationResult, input: URL, regions: [RegionScore]?, timings: [String: Double],
                       recordTimings: Bool = true, maskFiles: [String]? = nil) -> SegmentRecord {
        record(r, image: input.path, regions: regions, timings: timings, recordTimings: recordTimings, maskFiles: maskFiles)
    }

    /// The record with `image` as the picture's name (an upload has no path).
    public func record(_ r: SegmentationResult, image: String, regions: [RegionScore]?, timings: [String: Double],
                       recordTimings: Bool = true, maskFiles: [String]? = nil) -> SegmentRecord {
        let classAreas = classes.classes.enumerated().map { i, names in
            let c = palette[i]
            return SegmentRecord.ClassArea(index: i, name: names[0], names: names, color: [Int(c.0), Int(c.1), Int(c.2)],
                                           area: r.areaFraction[i], meanScore: r.meanScore[i])
        }
        return SegmentRecord(header: RecordHeader(command: "segment", model: model, timings: timings, record: recordTimings),
                             settings: SettingsRecord(segmentation: settings.record(background: classes.background)),
                             image: image, width: r.width, height: r.height, classes: classAreas,
                             backgroundOrUnlabelledArea: max(0, 1 - r.areaFraction.reduce(0, +)),
                             regions: regions.map { RegionRecord.records($0, classes: classes, files: maskFiles) })
    }

    /// Writes the outputs of one image into `dir`: everything is rendered first, then written
    /// file by file (each atomically); if any write fails, the files already written for this
    /// input are removed: nothing half-written.
    public func write(_ r: SegmentationResult, image: RGBImage, input: URL, regions: [RegionScore]?, timings: [String: Double],
                      outputs: SegmentationOutputs = SegmentationOutputs(), into dir: URL) throws {
        let stem = input.deletingPathExtension().lastPathComponent
        let overlay = try overlay(r, image: image, twoStage: regions != nil)
        let maskFiles = regions.map { rs in rs.indices.map { "\(stem)/" + proposalMaskFileName($0, count: rs.count) } }
        let json = try JSONOutput.data(record(r, input: input, regions: regions, timings: timings, recordTimings: outputs.timings,
                                              maskFiles: outputs.proposals ? maskFiles : nil))
        var written: [URL] = []
        func out(_ suffix: String) -> URL { let u = dir.appendingPathComponent(stem + suffix); written.append(u); return u }
        do {
            try writeLabelPNG(labels: r.labels, width: r.width, height: r.height, palette: palette, to: out(".labels.png"))
            try writeRGBPNG(overlay, to: out(".overlay.png"))
            if outputs.scores, let s = r.scores {
                try writeNpy(s, shape: [classes.classes.count, r.height, r.width], to: out(".scores.npy"))
            }
            if outputs.proposals, let regions, let maskFiles {
                for f in maskFiles { written.append(dir.appendingPathComponent(f)) }
                _ = try writeProposalMasks(regions.map(\.mask), to: dir.appendingPathComponent(stem), removingStale: true)
                let pj = ProposalsRecord(image: input.path, width: r.width, height: r.height,
                                         masks: RegionRecord.records(regions, classes: classes, files: maskFiles))
                try writeDataAtomically(JSONOutput.data(pj), to: out(".proposals.json"), what: "proposals JSON")
            }
            try writeDataAtomically(json, to: out(".json"), what: "JSON")
        } catch {
            for u in written { try? FileManager.default.removeItem(at: u) }
            if outputs.proposals { rmdir(dir.appendingPathComponent(stem).path) }  // the mask folder, when left empty
            throw error
        }
    }

    /// `NAME.overlay.png`'s picture: the image blended with the class colours, the legend on the right.
    func overlay(_ r: SegmentationResult, image: RGBImage, twoStage: Bool) throws -> RGBImage {
        try renderOverlay(image: image, labels: r.labels, classNames: classes.displayNames, areaFractions: r.areaFraction,
                          palette: palette, alpha: 0.5,
                          title: "zeroseg \(settings.options.method.rawValue)\(twoStage ? " two-stage" : "")",
                          footer: model.isSynthetic ? "SYNTHETIC WEIGHTS: meaningless" : nil)
    }

    /// The outputs of one image in memory, for a caller that does not write files (the HTTP
    /// service): the record (as `NAME.json` holds it, `image` naming the picture), `NAME.labels.png`
    /// and `NAME.overlay.png` as their bytes, and with `r.scores` a greyscale PNG of the winning
    /// class's probability per pixel (round(255 p); 0 on background).
    public func encodedOutputs(_ r: SegmentationResult, image: RGBImage, name: String, regions: [RegionScore]?,
                               timings: [String: Double], recordTimings: Bool = true) throws -> EncodedSegmentation {
        let labels = try labelPNGData(labels: r.labels, width: r.width, height: r.height, palette: palette)
        let overlayPNG = try rgbPNGData(overlay(r, image: image, twoStage: regions != nil))
        var scorePNG: Data?
        if let s = r.scores {
            let hw = r.width * r.height
            var winning = [UInt8](repeating: 0, count: hw)
            for p in 0..<hw {
                let c = Int(r.labels[p])
                guard c < classes.classes.count else { continue }
                winning[p] = UInt8(max(0, min(255, (255 * s[c * hw + p]).rounded())))
            }
            scorePNG = try greyPNGData(winning, width: r.width, height: r.height, what: "score PNG")
        }
        return EncodedSegmentation(record: record(r, image: name, regions: regions, timings: timings, recordTimings: recordTimings),
                                   labelsPNG: labels, overlayPNG: overlayPNG, scorePNG: scorePNG)
    }

    // MARK: Many images

    /// Segments `files` into `dir` (which must exist: `prepareOutputDirectory`). A folder runs
    /// as a pipeline that keeps the cores busy: while image i is segmented (the encoder uses
    /// every thread), image i+1 is decoded and image i-1's outputs are rendered and written on
    /// other threads; at most one image waits to be written. Results and errors are those of a
    /// plain loop.
    ///
    /// - `skipExisting`: inputs whose complete outputs are in `dir` already
    ///   (`existingOutputs(for:in:outputs:)` is `.complete`) are skipped; stale ones are made again.
    /// - `stop`: checked before each image; once set, the image in flight is finished and written,
    ///   no other is started, and the summary says `interrupted`.
    /// - A write that fails for a reason later writes share (`ZeroSegError.isStorageFailure`: no
    ///   space, read-only) stops the run the same way (`storageFailure`): the input's files are
    ///   removed, those of earlier inputs are kept, later inputs are not attempted.
    /// - `progress(done, total, next)`: before each image (`next` is it) and at the end (nil),
    ///   over the inputs to segment (skipped ones are not counted).
    /// - `failure(input, error)`: each failed input as it happens, one call at a time (from any
    ///   thread); the failures are also in the summary. A storage failure is reported once.
    public func run(_ files: [URL], into dir: URL, outputs: SegmentationOutputs = SegmentationOutputs(),
                    skipExisting: Bool = false, stop: StopRequest? = nil,
                    progress: ((_ done: Int, _ total: Int, _ next: URL?) -> Void)? = nil,
                    failure: (@Sendable (_ input: URL, _ error: any Error) -> Void)? = nil) -> SegmentationSummary {
        if outputs.proposals && twoStage == nil {
            let e = ZeroSegError.invalidArgument("saving proposals needs the two-stage mode", parameter: "proposals")
            for f in files { failure?(f, e) }
            return SegmentationSummary(succeeded: [], failed: files.map { ($0, e) })
        }
        var skipped: [URL] = [], redone: [(input: URL, reason: String)] = []
        var todo = files
        if skipExisting {
            todo = []
            for f in files {
                switch existingOutputs(for: f, in: dir, outputs: outputs) {
                case .complete: skipped.append(f)
                case .stale(let why): redone.append((f, why)); todo.append(f)
                case .absent: todo.append(f)
                }
            }
        }
        let log = FailureLog(report: failure)
        let writer = DispatchQueue(label: "zeroseg.write"), decoder = DispatchQueue(label: "zeroseg.decode")
        let writeSlot = DispatchSemaphore(value: 1)
        func decode(_ url: URL) -> DispatchWorkItem {
            let item = DispatchWorkItem { log.setImage(url, Result { try RGBImage.load(url) }) }
            decoder.async(execute: item)
            return item
        }
        var started = 0
        var pending = stop?.isStopped == true ? nil : todo.first.map(decode)
        for (i, file) in todo.enumerated() {
            if stop?.isStopped == true || log.storageFailure != nil { break }
            progress?(i, todo.count, file)
            pending?.wait()
            let decoded = log.takeImage(file)
            pending = i + 1 < todo.count ? decode(todo[i + 1]) : nil
            started += 1
            do {
                let start = Date()
                let image = try decoded.get()
                let (r, regions) = try segment(image, input: file, singleInput: files.count == 1, wantScores: outputs.scores)
                var timings = r.timings
                timings["text"] = i == 0 ? textSeconds : 0
                timings["total"] = Date().timeIntervalSince(start) + (i == 0 ? textSeconds : 0)
                let finalTimings = timings
                writeSlot.wait()
                writer.async {
                    defer { writeSlot.signal() }
                    // after a storage failure, nothing more is written (the input counts as not started)
                    guard log.storageFailure == nil else { log.unwritten(file); return }
                    do {
                        try self.write(r, image: image, input: file, regions: regions, timings: finalTimings, outputs: outputs, into: dir)
                    } catch {
                        log.add(file, error)
                    }
                }
            } catch {
                log.add(file, error)
            }
        }
        pending?.wait()  // a decode started for an image that will not be segmented
        writer.sync {}
        let failed = log.failures
        let failedSet = Set(failed.map(\.input))
        let attempted = Set(todo.prefix(started)).subtracting(log.unwrittenFiles)
        progress?(attempted.count, todo.count, nil)
        var summary = SegmentationSummary(succeeded: todo.filter { attempted.contains($0) && !failedSet.contains($0) },
                                          failed: todo.compactMap { f in failed.first { $0.input == f } })
        summary.skipped = skipped
        summary.redone = redone
        summary.notStarted = todo.filter { !attempted.contains($0) }
        summary.storageFailure = log.storageFailure
        if summary.storageFailure == nil, !summary.notStarted.isEmpty { summary.interrupted = stop?.reason }
        return summary
    }
}

/// Failures of a pipelined run, reported as they happen (one call at a time), and decoded
/// images handed between threads.
final class FailureLog: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [(input: URL, error: any Error)] = []
    private var images: [URL: Result<RGBImage, any Error>] = [:]
    private let report: (@Sendable (URL, any Error) -> Void)?

    init(report: (@Sendable (URL, any Error) -> Void)?) { self.report = report }

    private var firstStorageFailure: ZeroSegError?
    private var notWritten: [URL] = []

    func add(_ file: URL, _ error: any Error) {
        lock.withLock {
            list.append((file, error))
            if let e = error as? ZeroSegError, e.isStorageFailure, firstStorageFailure == nil { firstStorageFailure = e }
            report?(file, error)
        }
    }
    var failures: [(input: URL, error: any Error)] { lock.withLock { list } }
    /// The first write failure that later writes would share (no space, read-only).
    var storageFailure: ZeroSegError? { lock.withLock { firstStorageFailure } }
    /// An input segmented but not written because of an earlier storage failure.
    func unwritten(_ file: URL) { lock.withLock { notWritten.append(file) } }
    var unwrittenFiles: [URL] { lock.withLock { notWritten } }

    func setImage(_ url: URL, _ r: Result<RGBImage, any Error>) { lock.withLock { images[url] = r } }
    func takeImage(_ url: URL) -> Result<RGBImage, any Error> {
        lock.withLock { images.removeValue(forKey: url) ?? .failure(ZeroSegError("internal: \(url.path) was not decoded")) }
    }
}
