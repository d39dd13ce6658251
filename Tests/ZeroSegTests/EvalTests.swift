import Foundation
import Testing
@testable import ZeroSegCore
@testable import ZeroSegFormats
@testable import ZeroSegImaging
@testable import ZeroSegText
@testable import ZeroSegCLIP
@testable import ZeroSegHub
@testable import ZeroSegSegmentation
@testable import ZeroSegTuning

// Evaluation: the mmseg IoUMetric numbers against an independent computation
// (Fixtures/eval/metrics.json, made by scripts/reference/make_eval_fixture.py with mmseg's own
// torch.histc formula and a numpy confusion matrix), hand-checked tiny cases, label PNG reading
// against Pillow, file pairing, and the `zeroseg eval` command.

private let evalFixtures: URL = Bundle.module.resourceURL!.appendingPathComponent("Fixtures/eval")

private func jsonObject(_ url: URL) throws -> Any {
    try JSONSerialization.jsonObject(with: Data(contentsOf: url))
}

/// nil for JSON null, else the number.
private func optionalDouble(_ v: Any?) -> Double? { v is NSNull ? nil : (v as? NSNumber)?.doubleValue }

private func near(_ a: Double?, _ b: Double?, _ tol: Double = 1e-12) -> Bool {
    switch (a, b) {
    case (nil, nil): return true
    case let (x?, y?): return abs(x - y) <= tol
    default: return false
    }
}

@Suite struct EvalMetricTests {
    // MARK: Against the reference fixture

    @Test func matchesMMSegReference() throws {
        let root = try jsonObject(evalFixtures.appendingPathComponent("metrics.json")) as! [String: Any]
        let cases = root["cases"] as! [[String: Any]]
        #expect(cases.count >= 5)
        for c in cases {
            let name = c["name"] as! String
            let nc = c["num_classes"] as! Int, ignore = c["ignore_index"] as! Int, reduce = c["reduce_zero_label"] as! Bool
            var m = try ConfusionMatrix(numClasses: nc)
            for img in c["images"] as! [[String: Any]] {
                let pred = (img["prediction"] as! [Int]).map(UInt8.init), label = (img["label"] as! [Int]).map(UInt8.init)
                #expect(pred.count == (img["height"] as! Int) * (img["width"] as! Int))
                try m.add(prediction: pred, label: label, ignore: ignore, reduceZeroLabel: reduce)
            }
            let e = c["expected"] as! [String: Any]
            let r = m.metrics
            #expect(r.classes.map { Int($0.intersection) } == e["area_intersect"] as! [Int], "\(name)")
            #expect(r.classes.map { Int($0.union) } == e["area_union"] as! [Int], "\(name)")
            #expect(r.classes.map { Int($0.predicted) } == e["area_pred_label"] as! [Int], "\(name)")
            #expect(r.classes.map { Int($0.labelled) } == e["area_label"] as! [Int], "\(name)")
            let iou = (e["IoU"] as! [Any]).map(optionalDouble), acc = (e["Acc"] as! [Any]).map(optionalDouble)
            for i in 0..<nc {
                #expect(near(r.classes[i].iou, iou[i]), "\(name) IoU[\(i)]: \(String(describing: r.classes[i].iou)) vs \(String(describing: iou[i]))")
                #expect(near(r.classes[i].accuracy, acc[i]), "\(name) Acc[\(i)]")
            }
            #expect(near(r.mIoU, optionalDouble(e["mIoU"])), "\(name) mIoU")
            #expect(near(r.mAcc, optionalDouble(e["mAcc"])), "\(name) mAcc")
            #expect(near(r.aAcc, optionalDouble(e["aAcc"])), "\(name) aAcc")
            #expect(Int(r.evaluatedPixels) == (e["area_label"] as! [Int]).reduce(0, +))
        }
        // The fixture really covers the edge cases: a 0/0 class, a predicted-but-never-labelled class.
        let all = cases.map { $0["expected"] as! [String: Any] }
        #expect(all.contains { ($0["IoU"] as! [Any]).contains { $0 is NSNull } })
        #expect(all.contains { e in zip(e["area_label"] as! [Int], e["area_pred_label"] as! [Int]).contains { $0 == 0 && $1 > 0 } })
        #expect(cases.contains { $0["reduce_zero_label"] as! Bool } && cases.contains { $0["ignore_index"] as! Int != 255 })
    }

    // MARK: Hand-checked

    /// 2 classes, one ignored pixel, one prediction of "no class":
    /// label [0, 0, 1, 1, 255, 1], prediction [0, 1, 1, 255, 0, 1].
    @Test func tinyHandChecked() throws {
        var m = try ConfusionMatrix(numClasses: 2)
        try m.add(prediction: [0, 1, 1, 255, 0, 1], label: [0, 0, 1, 1, 255, 1])
        #expect(m.count(label: 0, prediction: 0) == 1 && m.count(label: 0, prediction: 1) == 1)
        #expect(m.count(label: 1, prediction: 1) == 2 && m.count(label: 1, prediction: nil) == 1)
        let r = m.metrics
        // class 0: TP 1, labelled 2, predicted 1 (the prediction 0 on the ignored pixel is not counted)
        #expect(r.classes[0] == .init(intersection: 1, union: 2, labelled: 2, predicted: 1, iou: 0.5, accuracy: 0.5))
        // class 1: TP 2, labelled 3, predicted 3 -> union 4
        #expect(r.classes[1] == .init(intersection: 2, union: 4, labelled: 3, predicted: 3, iou: 0.5, accuracy: 2.0 / 3))
        #expect(r.mIoU == 0.5)
        #expect(near(r.mAcc, (0.5 + 2.0 / 3) / 2))
        #expect(r.aAcc == 3.0 / 5)
        #expect(r.evaluatedPixels == 5)
    }

    /// A class neither labelled nor predicted (0/0) is left out of the means; a class predicted
    /// but never labelled has IoU 0 (counted) and no accuracy.
    @Test func emptyUnionSkippedPredictedOnlyCounted() throws {
        var m = try ConfusionMatrix(numClasses: 4)
        // class 0: labelled 3 predicted 3 all right; class 1: labelled 1, predicted as 2;
        // class 2: never labelled, predicted once; class 3: nothing at all.
        try m.add(prediction: [0, 0, 0, 2], label: [0, 0, 0, 1])
        let r = m.metrics
        #expect(r.classes[0].iou == 1 && r.classes[0].accuracy == 1)
        #expect(r.classes[1].iou == 0 && r.classes[1].accuracy == 0)
        #expect(r.classes[2].iou == 0 && r.classes[2].accuracy == nil && r.classes[2].union == 1)
        #expect(r.classes[3].iou == nil && r.classes[3].accuracy == nil && r.classes[3].union == 0)
        #expect(r.mIoU == 1.0 / 3)   // (1 + 0 + 0) / 3: class 3 skipped
        #expect(r.mAcc == 0.5)       // (1 + 0) / 2: classes 2 and 3 skipped
        #expect(r.aAcc == 0.75)
    }

    /// mmseg's reduce_zero_label: 0 -> ignored, v -> v - 1, 255 stays ignored.
    @Test func reduceZeroLabel() throws {
        var m = try ConfusionMatrix(numClasses: 3)
        // stored      [0, 1, 2, 255, 3, 3]  ->  [ign, 0, 1, ign, 2, 2]
        // prediction  [0, 0, 1, 2,   5, 2]      (5: no class)
        try m.add(prediction: [0, 0, 1, 2, 5, 2], label: [0, 1, 2, 255, 3, 3], reduceZeroLabel: true)
        let r = m.metrics
        #expect(r.evaluatedPixels == 4)
        #expect(r.classes.map(\.intersection) == [1, 1, 1])
        #expect(r.classes.map(\.predicted) == [1, 1, 1])  // predictions on the ignored pixels 0 and 3 do not count
        #expect(r.classes.map(\.labelled) == [1, 1, 2])
        #expect(r.classes.map(\.iou) == [1, 1, 0.5])
        #expect(r.aAcc == 0.75)
        // Without the flag the same values mean something else: 3 is out of range for 3 classes.
        var plain = try ConfusionMatrix(numClasses: 3)
        #expect(throws: ZeroSegError.self) {
            try plain.add(prediction: [0, 0, 1, 2, 5, 2], label: [0, 1, 2, 255, 3, 3])
        }
    }

    @Test func otherIgnoreValue() throws {
        var m = try ConfusionMatrix(numClasses: 11)
        try m.add(prediction: [3, 3, 4, 0], label: [3, 11, 11, 0], ignore: 11)
        #expect(m.metrics.evaluatedPixels == 2)
        #expect(m.metrics.aAcc == 1)
        #expect(m.metrics.classes[3].predicted == 1 && m.metrics.classes[4].predicted == 0)
        // 255 is then not special: a label value 255 is an error.
        var m2 = try ConfusionMatrix(numClasses: 11)
        #expect(throws: ZeroSegError.self) { try m2.add(prediction: [0], label: [255], ignore: 11) }
    }

    @Test func outOfRangeLabelThrowsAndCountsNothing() throws {
        var m = try ConfusionMatrix(numClasses: 3)
        try m.add(prediction: [0, 1], label: [0, 1])
        let before = m
        do {
            try m.add(prediction: [0, 1, 2], label: [0, 1, 7], source: "x.png")
            Issue.record("no error")
        } catch let e as ZeroSegError {
            #expect(e.message.hasPrefix("label value 7 in x.png is not a class (3 classes) and not the ignore value 255"))
            #expect(!e.message.contains("\n"))
            #expect(e.kind == .badInput(file: "x.png"))
        }
        #expect(m == before)
        do {
            try m.add(prediction: [0], label: [4], reduceZeroLabel: true, source: "y.png")
            Issue.record("no error")
        } catch let e as ZeroSegError {
            #expect(e.message.contains("4 (3 after reducing zero labels)"))
            #expect(!e.message.contains("--"), "library errors name no command-line flags: \(e.message)")
        }
        #expect(throws: ZeroSegError.self) { try ConfusionMatrix.checkLabels([0, 1, 3], numClasses: 3) }
        try ConfusionMatrix.checkLabels([0, 1, 2, 255], numClasses: 3)
        try ConfusionMatrix.checkLabels([0, 1, 2, 3, 255], numClasses: 3, reduceZeroLabel: true)
        #expect(throws: ZeroSegError.self) { try m.add(prediction: [0, 1], label: [0]) }
        #expect(m == before)
    }

    @Test func mergeAndEmpty() throws {
        var a = try ConfusionMatrix(numClasses: 3), b = try ConfusionMatrix(numClasses: 3), both = try ConfusionMatrix(numClasses: 3)
        try a.add(prediction: [0, 1, 2, 255], label: [0, 0, 2, 1])
        try b.add(prediction: [1, 1, 0], label: [1, 255, 0])
        try both.add(prediction: [0, 1, 2, 255], label: [0, 0, 2, 1])
        try both.add(prediction: [1, 1, 0], label: [1, 255, 0])
        try a.merge(b)
        #expect(a == both)
        let empty = try ConfusionMatrix(numClasses: 2).metrics
        #expect(empty.mIoU == nil && empty.mAcc == nil && empty.aAcc == nil && empty.evaluatedPixels == 0)
        #expect(empty.classes.allSatisfy { $0.iou == nil && $0.accuracy == nil })
    }

    // MARK: Label PNGs

    /// Label PNGs written by Pillow read as the values `np.array(Image.open(p))` gives (mmseg's reader).
    @Test func labelPNGsAsPillowReadsThem() throws {
        let entries = try jsonObject(evalFixtures.appendingPathComponent("labels.json")) as! [[String: Any]]
        #expect(entries.count == 7)
        for e in entries {
            let file = e["file"] as! String
            let url = evalFixtures.appendingPathComponent("labels").appendingPathComponent(file)
            if e["ok"] as! Bool {
                let map = try Evaluation.loadLabelMap(url)
                #expect(map.width == e["width"] as! Int && map.height == e["height"] as! Int, "\(file)")
                #expect(map.values.map(Int.init) == e["values"] as! [Int], "\(file)")
            } else {
                do {
                    _ = try Evaluation.loadLabelMap(url)
                    Issue.record("\(file) was accepted")
                } catch let err as ZeroSegError {
                    #expect(err.message.contains(url.path) && !err.message.contains("\n"), "\(err.message)")
                }
            }
        }
    }

    @Test func badLabelFiles() throws {
        let d = temporaryDirectory()
        let jpeg = repoRoot.appendingPathComponent("examples/chelsea.jpg")
        #expect(throws: ZeroSegError.badInput("label \(jpeg.path) is not a PNG file", file: jpeg.path)) { try Evaluation.loadLabelMap(jpeg) }
        let truncated = d.appendingPathComponent("t.png")
        let good = try Data(contentsOf: evalFixtures.appendingPathComponent("labels/gray8.png"))
        try good.prefix(good.count - 20).write(to: truncated)
        #expect(throws: ZeroSegError.self) { try Evaluation.loadLabelMap(truncated) }
        #expect(throws: ZeroSegError.self) { try Evaluation.loadLabelMap(d.appendingPathComponent("missing.png")) }
        // Our own paletted label PNG reads back as its indices.
        let labels: [UInt8] = [0, 1, 2, 255, 7, 3]
        try writeLabelPNG(labels: labels, width: 3, height: 2, palette: classPalette(count: 4), to: d.appendingPathComponent("p.png"))
        #expect(try Evaluation.loadLabelMap(d.appendingPathComponent("p.png")) == LabelMap(width: 3, height: 2, values: labels))
    }

    // MARK: Pairing

    @Test func pairing() throws {
        let d = temporaryDirectory()
        let imgs = d.appendingPathComponent("img"), labs = d.appendingPathComponent("lab")
        for u in [imgs, labs] { try FileManager.default.createDirectory(at: u, withIntermediateDirectories: true) }
        func touch(_ u: URL) throws { try Data([1]).write(to: u) }
        for n in ["b.JPG", "a.png", "c.jpeg", "notes.txt", ".hidden.png"] { try touch(imgs.appendingPathComponent(n)) }
        for n in ["a.png", "b.png", "README.md"] { try touch(labs.appendingPathComponent(n)) }
        try FileManager.default.createDirectory(at: labs.appendingPathComponent("sub.png"), withIntermediateDirectories: true)
        let p = try Evaluation.pairs(images: imgs, labels: labs)
        #expect(p.pairs.map(\.stem) == ["a", "b"])
        #expect(p.pairs.map { $0.image.lastPathComponent } == ["a.png", "b.JPG"])
        #expect(p.imagesWithoutLabel.map(\.lastPathComponent) == ["c.jpeg"])

        try touch(labs.appendingPathComponent("z.png"))
        #expect(throws: ZeroSegError.badInput("1 label in \(labs.path) has no image in \(imgs.path): z.png", file: labs.path)) {
            try Evaluation.pairs(images: imgs, labels: labs)
        }
        try FileManager.default.removeItem(at: labs.appendingPathComponent("z.png"))
        try touch(imgs.appendingPathComponent("a.jpg"))
        #expect(throws: ZeroSegError.self) { try Evaluation.pairs(images: imgs, labels: labs) }  // a.png and a.jpg
        try FileManager.default.removeItem(at: imgs.appendingPathComponent("a.jpg"))
        try touch(labs.appendingPathComponent("c.jpg"))
        #expect(throws: ZeroSegError.self) { try Evaluation.pairs(images: imgs, labels: labs) }  // JPEG label
        #expect(throws: ZeroSegError.self) { try Evaluation.pairs(images: d.appendingPathComponent("none"), labels: labs) }
        let empty = d.appendingPathComponent("empty")
        try FileManager.default.createDirectory(at: empty, withIntermediateDirectories: true)
        #expect(throws: ZeroSegError.badInput("no label PNGs in \(empty.path)", file: empty.path)) { try Evaluation.pairs(images: imgs, labels: empty) }
    }
}

// MARK: - zeroseg eval

/// A tiny labelled set in a temporary folder: 3 images (45x30, 40x40, 33x20) and paletted label
/// PNGs with classes 0...2, a few ignored pixels (255, or 0 with `reduceZero`: then classes are
/// stored + 1).
func makeDataset(reduceZero: Bool = false) throws -> (images: URL, labels: URL) {
    let d = temporaryDirectory("zeroseg-eval-set")
    let images = d.appendingPathComponent("images"), labels = d.appendingPathComponent("labels")
    for u in [images, labels] { try FileManager.default.createDirectory(at: u, withIntermediateDirectories: true) }
    let photo = try RGBImage.load(repoRoot.appendingPathComponent("examples/chelsea.jpg"))
    for (i, (w, h)) in [(45, 30), (40, 40), (33, 20)].enumerated() {
        let img = try resizeBilinear(photo, width: w, height: h)
        try writeRGBPNG(img, to: images.appendingPathComponent("img\(i).png"))
        var lab = [UInt8](repeating: 0, count: w * h)
        for y in 0..<h {
            for x in 0..<w {
                var v: UInt8 = y < h / 3 ? 2 : (x < w / 2 ? 0 : 1)
                if reduceZero { v += 1 }
                if (x + y * 7 + i) % 11 == 0 { v = reduceZero ? 0 : 255 }
                lab[y * w + x] = v
            }
        }
        try writeLabelPNG(labels: lab, width: w, height: h, palette: classPalette(count: 4), to: labels.appendingPathComponent("img\(i).png"))
    }
    return (images, labels)
}

@Suite struct EvalCLITests {
    var tiny: String { GoldenModelTests.tinyDir.path }
    var small: [String] { ["--model", tiny, "--short-side", "40", "--window", "32", "--stride", "16", "--templates", "single", "--threads", "2"] }

    /// Runs eval on the tiny set; the report is complete and consistent with its own confusion
    /// matrix and with the predictions it saved.
    @Test(arguments: [false, true])
    func reportIsConsistent(reduceZero: Bool) throws {
        let (images, labels) = try makeDataset(reduceZero: reduceZero)
        let out = temporaryDirectory("zeroseg-eval-out").appendingPathComponent("run")
        let extra = temporaryDirectory().appendingPathComponent("report.json")
        var args = ["eval", "--images", images.path, "--labels", labels.path, "--classes", "cat,grass|lawn,wall",
                    "--out", out.path, "--json", extra.path, "--save-predictions"] + small
        if reduceZero { args.append("--reduce-zero-label") }
        let r = try runCLI(args)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("synthetic"))

        // stdout is the table, also in eval.txt; --json has the same report as eval.json.
        #expect(r.stdout.hasPrefix("class "))
        #expect(r.stdout.contains("\nmIoU ") && r.stdout.contains("\naAcc ") && r.stdout.contains("\nimages   3\n"))
        #expect(r.stdout.contains("MEANINGLESS"))
        #expect(try String(contentsOf: out.appendingPathComponent("eval.txt"), encoding: .utf8) == r.stdout)
        let reportData = try Data(contentsOf: out.appendingPathComponent("eval.json"))
        #expect(try Data(contentsOf: extra) == reportData)
        let hidden = try FileManager.default.contentsOfDirectory(atPath: out.path).filter { $0.hasPrefix(".") }
        #expect(hidden.isEmpty, "left-over files: \(hidden)")

        let rep = try JSONSerialization.jsonObject(with: reportData) as! [String: Any]
        for key in ["zeroseg_version", "command", "date", "model", "settings", "metric", "classes", "mIoU", "mAcc", "aAcc",
                    "evaluated_pixels", "images", "timings", "confusion_matrix"] {
            #expect(rep[key] != nil, "missing \(key)")
        }
        #expect(rep["images"] as? Int == 3)
        #expect((rep["model"] as! [String: Any])["synthetic"] as? Bool == true)
        let settings = rep["settings"] as! [String: Any]
        #expect(settings["reduce_zero_label"] as? Bool == reduceZero && settings["ignore"] as? Int == 255)
        #expect(settings["short_side"] as? Int == 40 && settings["method"] as? String == "naclip")
        let seconds = rep["timings"] as! [String: Double]
        #expect(Set(seconds.keys) == ["per_image", "segmentation", "model_load", "text", "total"])

        let classes = rep["classes"] as! [[String: Any]]
        #expect(classes.map { $0["name"] as! String } == ["cat", "grass", "wall"])
        #expect(classes[1]["names"] as! [String] == ["grass", "lawn"])
        let counts = (rep["confusion_matrix"] as! [String: Any])["counts"] as! [[Int]]
        #expect(counts.count == 3 && counts.allSatisfy { $0.count == 4 })

        // Self-consistency: every per-class number and mean from the matrix.
        var ious: [Double] = [], accs: [Double] = []
        var tp = 0, total = 0
        for c in 0..<3 {
            let inter = counts[c][c], labelled = counts[c].reduce(0, +), predicted = (0..<3).map { counts[$0][c] }.reduce(0, +)
            let union = labelled + predicted - inter
            #expect(classes[c]["intersection"] as? Int == inter)
            #expect(classes[c]["pixels"] as? Int == labelled)
            #expect(classes[c]["predicted"] as? Int == predicted)
            #expect(classes[c]["union"] as? Int == union)
            if union > 0 { ious.append(Double(inter) / Double(union)) }
            if labelled > 0 { accs.append(Double(inter) / Double(labelled)) }
            #expect(near(optionalDouble(classes[c]["iou"]), union > 0 ? Double(inter) / Double(union) : nil))
            #expect(near(optionalDouble(classes[c]["acc"]), labelled > 0 ? Double(inter) / Double(labelled) : nil))
            tp += inter; total += labelled
        }
        #expect(near(optionalDouble(rep["mIoU"]), ious.isEmpty ? nil : ious.reduce(0, +) / Double(ious.count)))
        #expect(near(optionalDouble(rep["mAcc"]), accs.isEmpty ? nil : accs.reduce(0, +) / Double(accs.count)))
        #expect(near(optionalDouble(rep["aAcc"]), Double(tp) / Double(total)))

        // The evaluated pixels are exactly the non-ignored label pixels; the matrix equals one
        // recomputed from the saved predictions and the labels.
        var expectPixels = 0
        var again = try ConfusionMatrix(numClasses: 3)
        for i in 0..<3 {
            let label = try Evaluation.loadLabelMap(labels.appendingPathComponent("img\(i).png"))
            let pred = try Evaluation.loadLabelMap(out.appendingPathComponent("predictions/img\(i).png"))
            #expect(pred.width == label.width && pred.height == label.height)
            #expect(pred.values.allSatisfy { $0 < 3 || $0 == 255 })
            expectPixels += label.values.filter { $0 != (reduceZero ? 0 : 255) }.count
            try again.add(prediction: pred.values, label: label.values, reduceZeroLabel: reduceZero)
        }
        #expect(rep["evaluated_pixels"] as? Int == expectPixels)
        #expect(total == expectPixels)
        #expect((0..<3).allSatisfy { l in (0..<4).allSatisfy { p in Int(again.count(label: l, prediction: p < 3 ? p : nil)) == counts[l][p] } })
    }

    @Test func limitAndNoOutput() throws {
        let (images, labels) = try makeDataset()
        let r = try runCLI(["eval", "--images", images.path, "--labels", labels.path, "--classes", "cat,grass,wall", "--limit", "1", "--quiet"] + small)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("\nimages   1\n"))
    }

    /// Bad input: one line on stderr starting with "error:", a non-zero exit, nothing on stdout and
    /// no report written.
    @Test func badInput() throws {
        let (images, labels) = try makeDataset()
        let d = temporaryDirectory("zeroseg-eval-bad")
        let fm = FileManager.default
        func copySet(_ name: String) throws -> (URL, URL) {
            let i = d.appendingPathComponent("\(name)-images"), l = d.appendingPathComponent("\(name)-labels")
            try fm.copyItem(at: images, to: i)
            try fm.copyItem(at: labels, to: l)
            return (i, l)
        }
        let aFile = d.appendingPathComponent("file.txt")
        try Data("x".utf8).write(to: aFile)

        // A label without an image, an image without a label.
        let (i1, l1) = try copySet("extra-label")
        try fm.copyItem(at: l1.appendingPathComponent("img0.png"), to: l1.appendingPathComponent("zzz.png"))
        let (i2, l2) = try copySet("extra-image")
        try fm.copyItem(at: i2.appendingPathComponent("img0.png"), to: i2.appendingPathComponent("aaa.png"))
        // Sizes differ.
        let (i3, l3) = try copySet("size")
        try fm.removeItem(at: l3.appendingPathComponent("img1.png"))
        try fm.copyItem(at: l3.appendingPathComponent("img0.png"), to: l3.appendingPathComponent("img1.png"))
        // A label value out of range, an RGB label.
        let (i4, l4) = try copySet("range")
        try writeLabelPNG(labels: [UInt8](repeating: 5, count: 33 * 20), width: 33, height: 20, palette: [], to: l4.appendingPathComponent("img2.png"))
        let (i5, l5) = try copySet("rgb")
        try fm.removeItem(at: l5.appendingPathComponent("img2.png"))
        try fm.copyItem(at: i5.appendingPathComponent("img2.png"), to: l5.appendingPathComponent("img2.png"))

        let base = ["eval", "--classes", "cat,grass,wall"] + small
        let set = ["--images", images.path, "--labels", labels.path]
        let cases: [([String], String)] = [
            (["eval", "--classes-file", d.appendingPathComponent("none.txt").path, "--images", images.path, "--labels", labels.path] + small,
             "cannot read class file"),
            (["eval", "--classes-file", d.path, "--images", images.path, "--labels", labels.path] + small, "cannot read class file"),
            (base + ["--images", i1.path, "--labels", l1.path], "has no image"),
            (base + ["--images", i2.path, "--labels", l2.path], "has no label"),
            (base + ["--images", i3.path, "--labels", l3.path], "is 40x40 but its label"),
            (base + ["--images", i4.path, "--labels", l4.path], "label value 5"),
            (base + ["--images", i5.path, "--labels", l5.path], "RGB PNG"),
            (base + ["--images", d.appendingPathComponent("nowhere").path, "--labels", labels.path], "does not exist"),
            (base + set + ["--out", aFile.path], "it is a file"),
            (base + set + ["--out", aFile.appendingPathComponent("sub").path], "cannot create output folder"),
            (base + set + ["--json", d.appendingPathComponent("no/such/dir/r.json").path], "does not exist"),
            (base + set + ["--json", d.path], "it is a folder"),
            (base + set + ["--save-predictions"], "--save-predictions needs --out"),
            (base + set + ["--ignore", "256"], "--ignore"),
            (base + set + ["--limit", "0"], "--limit"),
            (["eval"] + set + small, "--classes"),
        ]
        for (args, needle) in cases {
            let out = temporaryDirectory("zeroseg-eval-bad-out")
            var a = args
            if !a.contains("--out") && !a.contains("--save-predictions") { a += ["--out", out.path] }
            let r = try runCLI(a)
            #expect(r.status != 0, "\(needle): exit 0")
            #expect(r.stdout.isEmpty, "\(needle): stdout \(r.stdout)")
            #expect(r.stderr.split(separator: "\n").count == 1, "\(needle): stderr: \(r.stderr)")
            #expect(r.stderr.hasPrefix("error: ") && r.stderr.contains(needle), "\(needle): stderr: \(r.stderr)")
            let written = try fm.contentsOfDirectory(atPath: out.path)
            #expect(written.isEmpty, "\(needle): wrote \(written)")
        }
    }
}

/// `zeroseg tune` end to end on the tiny set: the prompt file (tensors, metadata), its use in
/// segment and eval (--seen: seen / unseen / hIoU), refusal for another model, a warning for other
/// settings, resume, and bad arguments.
@Suite struct TuneCLITests {
    var tiny: String { GoldenModelTests.tinyDir.path }
    var small: [String] { ["--model", tiny, "--short-side", "40", "--window", "32", "--stride", "16", "--threads", "2"] }

    @Test func tuneSegmentEval() throws {
        let (images, labels) = try makeDataset()
        let dir = temporaryDirectory("zeroseg-tune-cli")
        let p = dir.appendingPathComponent("p.safetensors")
        let r = try runCLI(["tune", "--images", images.path, "--labels", labels.path, "--classes", "cat,grass|lawn,wall",
                            "--seen", "cat,wall", "--out", p.path, "--head", "linear", "--ctx", "3", "--epochs", "2", "--batch", "2", "--lr", "0.01", "--quiet"] + small)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.hasPrefix("tuned on 3 images, 2 seen classes (cat, wall): loss "), "\(r.stdout)")
        #expect(r.stdout.hasSuffix("wrote \(p.path)\n"))
        #expect(!FileManager.default.fileExists(atPath: p.path + ".ckpt"))
        let f = try SafetensorsFile(path: p.path)
        let m = try CLIPModel(directory: GoldenModelTests.tinyDir)
        #expect(f.tensors["ctx"]?.shape == [3, m.config.text.hiddenSize])
        #expect(f.tensors["adapter.weight"]?.shape == [m.config.projectionDim, m.config.projectionDim])
        let info = try JSONSerialization.jsonObject(with: Data(f.metadata["zeroseg"]!.utf8)) as! [String: Any]
        #expect(info["seen"] as? [String] == ["cat", "wall"] && info["unseen"] as? [String] == ["grass"])
        #expect((info["model"] as? [String: Any])?["fingerprint"] as? String == m.fingerprint)
        #expect(try PromptFile(url: p, model: m).report?.header.command == "tune")
        #expect(((info["loss"] as! [String: Any])["epochs"] as! [Double]).count == 2)

        // eval with the prompts and --seen
        let e = try runCLI(["eval", "--images", images.path, "--labels", labels.path, "--classes", "cat,grass|lawn,wall",
                            "--prompts", p.path, "--seen", "cat,wall", "--quiet"] + small)
        #expect(e.status == 0, "\(e.stderr)")
        #expect(e.stdout.contains("\nseen     ") && e.stdout.contains("(cat, wall)\nunseen   ") && e.stdout.contains("\nhIoU     "))
        // segment with the prompts; other settings: a warning
        let s = try runCLI([images.appendingPathComponent("img0.png").path, "--classes", "dog,tree", "--prompts", p.path,
                            "--out", dir.appendingPathComponent("seg").path, "--quiet"] + small.map { $0 == "16" ? "8" : $0 })
        #expect(s.status == 0, "\(s.stderr)")
        #expect(s.stderr.contains("warning: prompts \(p.path) were tuned with other settings (stride 16)"), "\(s.stderr)")
        // another model: refused
        let other = temporaryDirectory("zeroseg-tune-other")
        try Synth.write(arch: .tiny, seed: 1, to: other)
        let o = try runCLI([images.appendingPathComponent("img0.png").path, "--classes", "dog", "--prompts", p.path,
                            "--out", dir.appendingPathComponent("seg2").path, "--model", other.path, "--quiet"])
        #expect(o.status != 0 && o.stderr.hasPrefix("error: prompts \(p.path) were made for model ") && o.stderr.split(separator: "\n").count == 1, "\(o.stderr)")
        // not a prompt file
        let n = try runCLI([images.appendingPathComponent("img0.png").path, "--classes", "dog", "--prompts",
                            images.appendingPathComponent("img0.png").path, "--out", dir.appendingPathComponent("seg3").path, "--quiet"] + small)
        #expect(n.status != 0 && n.stderr.hasPrefix("error: ") && n.stderr.split(separator: "\n").count == 1, "\(n.stderr)")
    }

    @Test func resumeContinuesFromTheCheckpoint() throws {
        let (images, labels) = try makeDataset()
        let dir = temporaryDirectory("zeroseg-tune-resume")
        let a = dir.appendingPathComponent("a.safetensors"), b = dir.appendingPathComponent("b.safetensors")
        let base = ["tune", "--images", images.path, "--labels", labels.path, "--classes", "cat,grass|lawn,wall",
                    "--unseen", "grass", "--head", "linear", "--ctx", "2", "--batch", "2", "--lr", "0.01", "--quiet"] + small
        let env = ["XDG_CACHE_HOME": dir.appendingPathComponent("cache").path]  // one feature cache for these runs
        func runCLI(_ a: [String]) throws -> CLIResult { try ZeroSegTests.runCLI(a, environment: env) }
        #expect(try runCLI(base + ["--out", a.path, "--epochs", "3"]).status == 0)
        // b: stopped after epoch 1 (checkpoint kept, no prompt file), then resumed to epoch 3
        let stop = try runCLI(base + ["--out", b.path, "--epochs", "3", "--stop-after-epochs", "1"])
        #expect(stop.status == 0 && stop.stdout.hasPrefix("stopped after epoch 1 of 3; continue with --resume"), "\(stop.stdout)\(stop.stderr)")
        #expect(FileManager.default.fileExists(atPath: b.path + ".ckpt") && !FileManager.default.fileExists(atPath: b.path))
        let res = try runCLI(base + ["--out", b.path, "--epochs", "3", "--resume"])
        #expect(res.status == 0 && res.stderr.contains("resumed from \(b.path).ckpt after epoch 1"), "\(res.stderr)")
        #expect(!FileManager.default.fileExists(atPath: b.path + ".ckpt"))
        let fa = try SafetensorsFile(path: a.path), fb = try SafetensorsFile(path: b.path)
        #expect(res.stdout.contains("(3 cached)"), "features from the cache: \(res.stdout)")
        #expect(try fa.floats("ctx") == fb.floats("ctx"), "resumed run = uninterrupted run")
        #expect(try fa.floats("adapter.weight") == fb.floats("adapter.weight"))
    }

    /// The feature cache gives back what it stored; damaged files and other settings miss.
    @Test func featureCacheRoundTrip() throws {
        let root = temporaryDirectory("zeroseg-feature-cache")
        let img = root.appendingPathComponent("a.png")
        try Data("x".utf8).write(to: img)
        let m = try CLIPModel(directory: GoldenModelTests.tinyDir)
        let d = m.config.projectionDim
        let g = try FeatureGrid(height: 2, width: 3, dim: d, data: randomFloats(6 * d, seed: 5))
        let c = FeatureCache(model: m, options: SegmentationOptions(), root: root)
        #expect(c.load(img) == nil)
        c.store(g, for: img)
        #expect(c.load(img) == g)
        var o = SegmentationOptions()
        o.stride = 56
        #expect(FeatureCache(model: m, options: o, root: root).load(img) == nil)
        let files = try FileManager.default.contentsOfDirectory(at: c.directory, includingPropertiesForKeys: nil)
        try Data(repeating: 7, count: 40).write(to: files[0])
        #expect(c.load(img) == nil)
    }

    @Test(arguments: [["--seen", "cat", "--unseen", "wall"], [], ["--seen", "bird"], ["--seen", "cat", "--epochs", "0"],
                      ["--seen", "cat", "--mode", "two-stage"]])
    func badArguments(_ extra: [String]) throws {
        let (images, labels) = try makeDataset()
        let p = temporaryDirectory("zeroseg-tune-bad").appendingPathComponent("p.safetensors")
        let r = try runCLI(["tune", "--images", images.path, "--labels", labels.path, "--classes", "cat,grass,wall",
                            "--out", p.path, "--head", "linear", "--quiet"] + small + extra)
        #expect(r.status != 0 && r.stderr.hasPrefix("error: ") && r.stderr.split(separator: "\n").count == 1, "\(extra): \(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: p.path))
    }
}
