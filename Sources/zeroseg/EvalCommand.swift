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

    @OptionGroup var seg: SegmentationArguments
    @OptionGroup var options: ModelOptions

    /// Indices of the --seen classes (matched on any of a class's names).
    func seenIndices(_ set: ClassSet) throws -> Set<Int>? {
        guard let seen else { return nil }
        return try classIndices(seen, in: set, option: "--seen")
    }

    func validate() throws {
        guard (0...255).contains(ignore) else { throw ValidationError("--ignore must be between 0 and 255") }
        if let limit, limit < 1 { throw ValidationError("--limit must be at least 1") }
        if savePredictions && out == nil { throw ValidationError("--save-predictions needs --out") }
    }

    func run() throws {
        let tStart = Date()
        // 1. Everything that can be wrong with the input is found before the (slow) model runs.
        let set = try seg.classSet()
        _ = try seenIndices(set)  // a bad --seen fails before the model runs
        let templates = try seg.templateList()
        let nc = set.classes.count
        let outDir = try out.map { try prepareEvalOutput(URL(fileURLWithPath: $0), predictions: savePredictions) }
        if let json { try checkWritableFile(URL(fileURLWithPath: json), what: "JSON report") }

        let pairing = try Evaluation.pairs(images: URL(fileURLWithPath: images), labels: URL(fileURLWithPath: labels))
        if !pairing.imagesWithoutLabel.isEmpty {
            let n = pairing.imagesWithoutLabel.count
            let shown = pairing.imagesWithoutLabel.prefix(5).map(\.lastPathComponent).joined(separator: ", ")
            throw ZeroSegError("\(n) image\(n == 1 ? "" : "s") in \(images) \(n == 1 ? "has" : "have") no label in \(labels): \(shown)\(n > 5 ? ", ..." : "")")
        }
        var pairs = pairing.pairs
        if let limit { pairs = Array(pairs.prefix(limit)) }
        let check = Progress(total: pairs.count, quiet: quiet)
        for (i, p) in pairs.enumerated() {
            check.update(i, "checking \(p.stem)")
            let label = try Evaluation.loadLabelMap(p.label)
            try ConfusionMatrix.checkLabels(label.values, numClasses: nc, ignore: ignore, reduceZeroLabel: reduceZeroLabel,
                                            source: p.label.path)
            let image = try RGBImage.load(p.image)
            try checkSameSize(image, label, p)
        }
        clearLine(check)

        // 2. The model and the class embeddings.
        let t0 = Date()
        let model = try options.load()
        let tLoad = Date().timeIntervalSince(t0)
        if model.isSynthetic {
            printErr("WARNING: \(model.source) is a synthetic model with random weights: the scores will be meaningless")
        }
        let segmenter = try Segmenter(model: model, options: seg.options(), threads: options.threads, prompts: seg.loadPrompts(model: model))
        let twoStage = seg.mode == .twoStage ? try TwoStageSegmenter(segmenter: segmenter, options: seg.twoStageOptions()) : nil
        let t1 = Date()
        let queries = try segmenter.queryEmbeddings(set, templates: templates, cache: TextEmbeddingCache(model: model))
        let tText = Date().timeIntervalSince(t1)

        // 3. Segment and count.
        var matrix = try ConfusionMatrix(numClasses: nc)
        let palette = try classPalette(count: nc)
        let progress = Progress(total: pairs.count, quiet: quiet)
        let t2 = Date()
        for (i, p) in pairs.enumerated() {
            progress.update(i, p.stem)
            do {
                let label = try Evaluation.loadLabelMap(p.label)
                let image = try RGBImage.load(p.image)
                try checkSameSize(image, label, p)
                let r: SegmentationResult
                if let twoStage {
                    let masks = try seg.externalMasks(for: p.image, singleInput: false, width: image.width, height: image.height)
                    r = try twoStage.segment(image, classes: set, queries: queries, masks: masks).result
                } else {
                    r = try segmenter.segment(image, classes: set, queries: queries)
                }
                try matrix.add(prediction: r.labels, label: label.values, ignore: ignore, reduceZeroLabel: reduceZeroLabel,
                               source: p.label.path)
                if savePredictions, let outDir {
                    try writeLabelPNG(labels: r.labels, width: r.width, height: r.height, palette: palette,
                                      to: outDir.appendingPathComponent("predictions/\(p.stem).png"))
                }
            } catch {
                clearLine(progress)
                throw error
            }
        }
        progress.update(pairs.count, "done")
        progress.finish()
        let tSeg = Date().timeIntervalSince(t2)
        let perImage = pairs.isEmpty ? 0 : tSeg / Double(pairs.count)

        // 4. Report.
        let m = matrix.metrics
        var text = table(set: set, metrics: m, evaluated: pairs.count, perImage: perImage)
        let seenSet = try seenIndices(set)
        if let seenSet {
            let su = m.seenUnseen(seen: seenSet)
            func pct(_ v: Double?) -> String { v.map { String(format: "%.2f", $0 * 100) } ?? "n/a" }
            text += "seen     \(pct(su.seen))  (\(seenSet.sorted().map { set.displayNames[$0] }.joined(separator: ", ")))\n"
            text += "unseen   \(pct(su.unseen))\n"
            text += "hIoU     \(pct(su.hIoU))\n"
        }
        if model.isSynthetic {
            text += "!!! SYNTHETIC RANDOM WEIGHTS (\(model.source)): these numbers are MEANINGLESS, a machinery check only !!!\n"
        }
        let report = try reportJSON(set: set, matrix: matrix, metrics: m, seen: seenSet, model: model, images: pairs.count,
                                    seconds: ["per_image": perImage, "segmentation": tSeg, "model_load": tLoad, "text": tText,
                                              "total": Date().timeIntervalSince(tStart)])
        if let outDir {
            try writeDataAtomically(report, to: outDir.appendingPathComponent("eval.json"), what: "JSON report")
            try writeDataAtomically(Data(text.utf8), to: outDir.appendingPathComponent("eval.txt"), what: "report")
        }
        if let json { try writeDataAtomically(report, to: URL(fileURLWithPath: json), what: "JSON report") }
        print(text, terminator: "")
    }

    func checkSameSize(_ image: RGBImage, _ label: LabelMap, _ p: EvalPair) throws {
        guard image.width == label.width, image.height == label.height else {
            throw ZeroSegError("image \(p.image.path) is \(image.width)x\(image.height) but its label \(p.label.path) is \(label.width)x\(label.height)")
        }
    }

    func reportJSON(set: ClassSet, matrix: ConfusionMatrix, metrics m: SegmentationMetrics, seen: Set<Int>? = nil, model: CLIPModel,
                    images count: Int, seconds: [String: Double]) throws -> Data {
        let nc = set.classes.count
        var settings = seg.settingsJSON()
        settings["images"] = images
        settings["labels"] = labels
        settings["classes_file"] = seg.classesFile ?? NSNull()
        settings["ignore"] = ignore
        settings["reduce_zero_label"] = reduceZeroLabel
        settings["limit"] = limit ?? NSNull()
        settings["threads"] = options.threads
        let classes: [[String: Any]] = m.classes.enumerated().map { i, c in
            ["index": i, "name": set.displayNames[i], "names": set.classes[i],
             "iou": c.iou ?? NSNull(), "acc": c.accuracy ?? NSNull(), "pixels": Int(c.labelled),
             "predicted": Int(c.predicted), "intersection": Int(c.intersection), "union": Int(c.union)]
        }
        let cols = nc + 1
        let rows = (0..<nc).map { l in (0..<cols).map { Int(matrix.counts[l * cols + $0]) } }
        var obj: [String: Any] = [
            "zeroseg_version": ZeroSeg.version,
            "date": ISO8601DateFormatter().string(from: Date()),
            "model": ["source": model.source, "fingerprint": model.fingerprint, "synthetic": model.isSynthetic],
            "settings": settings,
            "metric": "mmsegmentation IoUMetric: one confusion matrix over the set; IoU = TP/(TP+FP+FN), Acc = TP/(TP+FN), "
                + "aAcc = sum TP / evaluated pixels; classes whose value is 0/0 are null and left out of mIoU / mAcc; "
                + "fractions, not percentages",
            "classes": classes,
            "mIoU": m.mIoU ?? NSNull(), "mAcc": m.mAcc ?? NSNull(), "aAcc": m.aAcc ?? NSNull(),
            "evaluated_pixels": Int(m.evaluatedPixels),
            "images": count,
            "seconds": seconds,
            "confusion_matrix": ["rows": "label class", "columns": "predicted class; the last column is no class (background / below threshold)",
                                 "counts": rows],
        ]
        if let seen {
            let su = m.seenUnseen(seen: seen)
            let v: [String: Any] = ["seen": seen.sorted().map { set.displayNames[$0] }, "seen_mIoU": su.seen as Any? ?? NSNull(),
                                    "unseen_mIoU": su.unseen as Any? ?? NSNull(), "hIoU": su.hIoU as Any? ?? NSNull()]
            obj["seen_unseen"] = v
        }
        let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])
        return data + Data("\n".utf8)
    }

    func table(set: ClassSet, metrics m: SegmentationMetrics, evaluated: Int, perImage: Double) -> String {
        func pct(_ v: Double?) -> String { v.map { String(format: "%.2f", $0 * 100) } ?? "n/a" }
        func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
        func lpad(_ s: String, _ n: Int) -> String { s.count >= n ? s : String(repeating: " ", count: n - s.count) + s }
        let w = max(5, set.displayNames.map(\.count).max() ?? 0)
        var out = pad("class", w) + lpad("IoU %", 9) + lpad("Acc %", 9) + lpad("pixels", 12) + "\n"
        for (name, c) in zip(set.displayNames, m.classes) {
            out += pad(name, w) + lpad(pct(c.iou), 9) + lpad(pct(c.accuracy), 9) + lpad("\(c.labelled)", 12) + "\n"
        }
        out += "mIoU     \(pct(m.mIoU))\n"
        out += "mAcc     \(pct(m.mAcc))\n"
        out += "aAcc     \(pct(m.aAcc))\n"
        out += "images   \(evaluated)\n"
        out += "s/image  \(String(format: "%.3f", perImage))\n"
        return out
    }
}

/// Indices of comma-separated class names in a class set (any of a class's names matches).
func classIndices(_ spec: String, in set: ClassSet, option: String) throws -> Set<Int> {
    let names = spec.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    guard !names.isEmpty else { throw ZeroSegError("\(option) lists no class") }
    var out = Set<Int>()
    for n in names {
        guard let i = set.classes.firstIndex(where: { $0.contains(n) }) else {
            throw ZeroSegError("\(option): \"\(n)\" is not one of the classes (\(set.displayNames.joined(separator: ", ")))")
        }
        out.insert(i)
    }
    return out
}

/// Creates the eval output folder (and predictions/ in it) and checks it can be written, before any work.
private func prepareEvalOutput(_ dir: URL, predictions: Bool) throws -> URL {
    let fm = FileManager.default
    var isDir: ObjCBool = false
    if fm.fileExists(atPath: dir.path, isDirectory: &isDir), !isDir.boolValue {
        throw ZeroSegError("cannot use output folder \(dir.path): it is a file")
    }
    let target = predictions ? dir.appendingPathComponent("predictions") : dir
    do { try fm.createDirectory(at: target, withIntermediateDirectories: true) } catch {
        throw ZeroSegError("cannot create output folder \(target.path): \(reason(error))")
    }
    try checkWritableFile(dir.appendingPathComponent("eval.json"), what: "JSON report")
    if predictions { try checkWritableFile(target.appendingPathComponent("x.png"), what: "prediction") }
    return dir
}

/// Checks that a file can be created at `url` (its folder exists and is writable, it is not a folder).
func checkWritableFile(_ url: URL, what: String) throws {
    let fm = FileManager.default
    let dir = url.deletingLastPathComponent()
    var isDir: ObjCBool = false
    guard fm.fileExists(atPath: dir.path, isDirectory: &isDir), isDir.boolValue else {
        throw ZeroSegError("cannot write \(what) \(url.path): folder \(dir.path) does not exist")
    }
    if fm.fileExists(atPath: url.path, isDirectory: &isDir), isDir.boolValue {
        throw ZeroSegError("cannot write \(what) \(url.path): it is a folder")
    }
    let probe = dir.appendingPathComponent(".zeroseg-eval-probe-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
    guard fm.createFile(atPath: probe.path, contents: Data()) else {
        throw ZeroSegError("cannot write \(what) \(url.path): folder \(dir.path) is not writable")
    }
    try? fm.removeItem(at: probe)
}

/// Erases a progress line (before an error message or the next stage).
private func clearLine(_ p: Progress) {
    if p.enabled { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
}

private func reason(_ error: Error) -> String {
    let ns = error as NSError
    if let u = ns.userInfo[NSUnderlyingErrorKey] as? NSError, u.domain == NSPOSIXErrorDomain, let code = POSIXErrorCode(rawValue: Int32(u.code)) {
        return String(cString: strerror(code.rawValue))
    }
    return ns.localizedDescription
}
