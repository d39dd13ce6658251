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

    @Argument(help: "Images (JPEG or PNG) or folders of images.")
    var inputs: [String] = []

    func validate() throws {
        if inputs.isEmpty { throw ValidationError("give at least one IMAGE or folder") }
        if saveProposals && seg.mode != .twoStage { throw ValidationError("--save-proposals needs --mode two-stage") }
    }

    func run() throws {
        let files = try collectImages(inputs)
        let set = try seg.classSet()
        let templates = try seg.templateList()
        let outDir = URL(fileURLWithPath: out)
        try prepareOutputDirectory(outDir)
        let model = try options.load()
        let segmenter = try Segmenter(model: model, options: seg.options(), threads: options.threads, prompts: seg.loadPrompts(model: model))
        let t0 = Date()
        let cache = TextEmbeddingCache(model: model)
        let queries = try segmenter.queryEmbeddings(set, templates: templates, cache: cache)
        let textSeconds = Date().timeIntervalSince(t0)
        let progress = Progress(total: files.count, quiet: quiet)
        let failed = try segmentFiles(files, model: model, segmenter: segmenter, set: set, queries: queries,
                                  textSeconds: textSeconds, into: outDir, progress: progress)
        progress.update(files.count, "done")
        progress.finish()
        if model.isSynthetic { printErr("warning: made with SYNTHETIC random weights: the labels are meaningless") }
        if failed > 0 {
            printErr("error: \(failed) of \(files.count) image(s) failed")
            throw ExitCode(1)
        }
    }

    /// Segments `files` into `outDir` and returns how many failed (each reported on stderr).
    /// A folder runs as a pipeline that keeps both cores busy: while image i is segmented
    /// (the encoder uses every thread), image i+1 is decoded and image i-1's outputs are
    /// rendered and written (PNG compression, overlay) on other threads. Results and errors
    /// are those of the plain loop; at most one image waits to be written.
    func segmentFiles(_ files: [URL], model: CLIPModel, segmenter: Segmenter, set: ClassSet, queries: [[Float]],
                      textSeconds: Double, into outDir: URL, progress: Progress) throws -> Int {
        let palette = try classPalette(count: set.classes.count)
        let twoStage = seg.mode == .twoStage ? try TwoStageSegmenter(segmenter: segmenter, options: seg.twoStageOptions()) : nil
        let clearLine = progress.enabled  // an error line replaces the progress line, which is redrawn next
        let errors = ErrorLog { line in printErr((clearLine ? "\r\u{1B}[K" : "") + line) }
        let writer = DispatchQueue(label: "zeroseg.write"), decoder = DispatchQueue(label: "zeroseg.decode")
        let writeSlot = DispatchSemaphore(value: 1)
        nonisolated(unsafe) let me = self
        func decode(_ url: URL) -> DispatchWorkItem {
            let item = DispatchWorkItem { errors.setImage(url, Result { try RGBImage.load(url) }) }
            decoder.async(execute: item)
            return item
        }
        var pending = files.first.map(decode)
        for (i, file) in files.enumerated() {
            progress.update(i, file.lastPathComponent)
            pending?.wait()
            let decoded = errors.takeImage(file)
            pending = i + 1 < files.count ? decode(files[i + 1]) : nil
            do {
                let start = Date()
                let image = try decoded.get()
                let r: SegmentationResult, regions: [RegionScore]?
                if let twoStage {
                    let masks = try seg.externalMasks(for: file, singleInput: files.count == 1, width: image.width, height: image.height)
                    let t = try twoStage.segment(image, classes: set, queries: queries, masks: masks, wantScores: scores)
                    (r, regions) = (t.result, t.regions)
                } else {
                    (r, regions) = (try segmenter.segment(image, classes: set, queries: queries, wantScores: scores), nil)
                }
                let stem = file.deletingPathExtension().lastPathComponent
                var timings = r.timings
                timings["text"] = i == 0 ? textSeconds : 0
                timings["total"] = Date().timeIntervalSince(start) + (i == 0 ? textSeconds : 0)
                let finalTimings = timings
                writeSlot.wait()
                writer.async {
                    defer { writeSlot.signal() }
                    do {
                        try me.writeOutputs(r, image: image, input: file, stem: stem, set: set, palette: palette, model: model,
                                            timings: finalTimings, regions: regions, into: outDir)
                    } catch {
                        errors.add(file, error)
                    }
                }
            } catch {
                errors.add(file, error)
            }
        }
        writer.sync {}
        return errors.count
    }

    func writeOutputs(_ r: SegmentationResult, image: RGBImage, input: URL, stem: String, set: ClassSet,
                      palette: [(UInt8, UInt8, UInt8)], model: CLIPModel, timings: [String: Double],
                      regions: [RegionScore]? = nil, into dir: URL) throws {
        // Everything is rendered first, then written file by file (each atomically); if any write
        // fails, the files already written for this input are removed: nothing half-written.
        let names = set.displayNames
        let overlay = try renderOverlay(image: image, labels: r.labels, classNames: names, areaFractions: r.areaFraction,
                                        palette: palette, alpha: 0.5,
                                        title: "zeroseg \(seg.method.rawValue)\(regions != nil ? " two-stage" : "")",
                                        footer: model.isSynthetic ? "SYNTHETIC WEIGHTS: meaningless" : nil)
        var classes: [[String: Any]] = []
        for (i, syn) in set.classes.enumerated() {
            let c = palette[i]
            classes.append(["index": i, "name": syn[0], "names": syn, "color": [Int(c.0), Int(c.1), Int(c.2)],
                            "area": r.areaFraction[i], "mean_score": r.meanScore[i]])
        }
        let unlabelled = 1 - r.areaFraction.reduce(0, +)
        let maskFiles = regions.map { rs in rs.indices.map { "\(stem)/" + proposalMaskFileName($0, count: rs.count) } }
        var obj: [String: Any] = [
            "image": input.path, "width": r.width, "height": r.height,
            "classes": classes, "background_or_unlabelled_area": max(0, unlabelled),
            "settings": seg.settingsJSON(),
            "model": ["source": model.source, "fingerprint": model.fingerprint, "synthetic": model.isSynthetic],
            "zeroseg": ZeroSeg.version,
            "timings": timings,
        ]
        if let regions { obj["regions"] = regionsJSON(regions, set: set, files: saveProposals ? maskFiles : nil) }
        let json = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        var written: [URL] = []
        func out(_ suffix: String) -> URL { let u = dir.appendingPathComponent(stem + suffix); written.append(u); return u }
        do {
            try writeLabelPNG(labels: r.labels, width: r.width, height: r.height, palette: palette, to: out(".labels.png"))
            try writeRGBPNG(overlay, to: out(".overlay.png"))
            if let s = r.scores {
                try writeNpy(s, shape: [set.classes.count, r.height, r.width], to: out(".scores.npy"))
            }
            if saveProposals, let regions {
                let maskDir = dir.appendingPathComponent(stem)
                for f in maskFiles ?? [] { written.append(dir.appendingPathComponent(f)) }
                _ = try writeProposalMasks(regions.map(\.mask), to: maskDir, removingStale: true)
                let pj = try JSONSerialization.data(withJSONObject: ["image": input.path, "width": r.width, "height": r.height,
                                                                      "masks": regionsJSON(regions, set: set, files: maskFiles)],
                                                    options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
                try writeAtomically(pj, to: out(".proposals.json"))
            }
            try writeAtomically(json, to: out(".json"))
        } catch {
            for u in written { try? FileManager.default.removeItem(at: u) }
            throw error
        }
    }
}

/// Per region: index, source, area, box [x0, y0, x1, y1) end-exclusive, pixels it decided, and the
/// three most likely classes (the background row is "background").
func regionsJSON(_ regions: [RegionScore], set: ClassSet, files: [String]?) -> [[String: Any]] {
    let names = set.classes.map { $0[0] } + (set.background.isEmpty ? [] : ["background"])
    return zip(regions, proposalSummaries(regions.map(\.mask))).enumerated().map { i, pair in
        let (r, summary) = pair
        let top = r.probabilities.indices.sorted { r.probabilities[$0] > r.probabilities[$1] }.prefix(3)
        var j = summary.json
        j["file"] = files?[i]  // the path under OUT when the masks were saved, else no file
        j["owned_pixels"] = r.ownedPixels
        j["top"] = top.map { ["class": names[$0], "probability": Double(r.probabilities[$0])] }
        return j
    }
}

/// Image files from the arguments (folders: their JPEG/PNG files, sorted); two inputs with the same
/// stem are an error before any work.
func collectImages(_ inputs: [String]) throws -> [URL] {
    let fm = FileManager.default
    var files: [URL] = []
    for input in inputs {
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: input, isDirectory: &isDir) else { throw ZeroSegError("\(input): no such file or folder") }
        if isDir.boolValue {
            let items = try fm.contentsOfDirectory(atPath: input).sorted()
            let imgs = items.filter { ["jpg", "jpeg", "png"].contains(($0 as NSString).pathExtension.lowercased()) }
            if imgs.isEmpty { throw ZeroSegError("\(input): no .jpg, .jpeg or .png files") }
            files += imgs.map { URL(fileURLWithPath: input).appendingPathComponent($0) }
        } else {
            files.append(URL(fileURLWithPath: input))
        }
    }
    var seen: [String: String] = [:]
    for f in files {
        let stem = f.deletingPathExtension().lastPathComponent
        if let other = seen[stem] { throw ZeroSegError("inputs \(other) and \(f.path) have the same name \(stem): their outputs would collide") }
        seen[stem] = f.path
    }
    return files
}

/// Creates the output folder and checks it can be written, before any work.
func prepareOutputDirectory(_ dir: URL) throws {
    do { try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true) }
    catch { throw ZeroSegError("cannot create output folder \(dir.path)") }
    let probe = dir.appendingPathComponent(".zeroseg-write-test-\(getpid())")
    guard FileManager.default.createFile(atPath: probe.path, contents: Data()) else {
        throw ZeroSegError("output folder \(dir.path) is not writable")
    }
    try? FileManager.default.removeItem(at: probe)
}

/// Errors of a pipelined run, reported as they happen (one line each), and decoded images
/// handed between threads.
final class ErrorLog: @unchecked Sendable {
    private let lock = NSLock()
    private var errors = 0
    private var images: [URL: Result<RGBImage, any Error>] = [:]
    private let report: @Sendable (String) -> Void

    init(report: @escaping @Sendable (String) -> Void) { self.report = report }

    func add(_ file: URL, _ error: any Error) {
        lock.withLock {
            errors += 1
            let message = (error as? ZeroSegError)?.message ?? "\(error)"
            report("error: " + (message.contains(file.path) ? message : "\(file.path): \(message)"))
        }
    }
    var count: Int { lock.withLock { errors } }

    func setImage(_ url: URL, _ r: Result<RGBImage, any Error>) { lock.withLock { images[url] = r } }
    func takeImage(_ url: URL) -> Result<RGBImage, any Error> {
        lock.withLock { images.removeValue(forKey: url) ?? .failure(ZeroSegError("internal: \(url.path) was not decoded")) }
    }
}
