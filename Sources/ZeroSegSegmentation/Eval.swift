import CImageShim
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegCLIP
import CPNG
import Foundation

// Evaluation against label maps, with the metric of mmsegmentation's `IoUMetric` (the one
// SCLIP / NACLIP report): one confusion matrix over the whole set, per-class IoU and accuracy,
// mIoU, mAcc, aAcc. Also: pairing image and label files by name, and reading label PNGs as
// class indices.

// MARK: - Confusion matrix

/// Pixel counts of (label class, predicted class) over a whole evaluation set.
///
/// `counts` is row-major [numClasses, numClasses + 1]: `counts[l * (numClasses + 1) + p]` is the
/// number of evaluated pixels labelled `l` and predicted `p`; the last column (`p == numClasses`)
/// counts pixels predicted as no class (255: background or below threshold, or any other value
/// ≥ numClasses). Such a pixel is a miss: it counts in its label class's false negatives (and
/// union) but in no class's false positives, as in mmseg, whose `torch.histc` over 0...C-1
/// drops predictions outside that range.
public struct ConfusionMatrix: Sendable, Equatable {
    public let numClasses: Int
    public private(set) var counts: [UInt64]

    /// Throws unless numClasses is 1...255.
    public init(numClasses: Int) throws {
        guard numClasses >= 1 && numClasses <= 255 else { throw ZeroSegError("ConfusionMatrix: \(numClasses) classes (must be 1...255)") }
        self.numClasses = numClasses
        counts = [UInt64](repeating: 0, count: numClasses * (numClasses + 1))
    }

    /// The count of pixels labelled `label` and predicted `prediction` (nil: no class).
    public func count(label: Int, prediction: Int?) -> UInt64 {
        counts[label * (numClasses + 1) + (prediction ?? numClasses)]
    }

    /// The class a stored label value stands for, as mmseg sees it: nil when the pixel is not
    /// evaluated. With `reduceZeroLabel` (mmseg's `LoadAnnotations(reduce_zero_label=True)`)
    /// 0 becomes 255 and every other value v becomes v - 1 (255 stays 255) BEFORE the
    /// comparison with `ignore`; a reduced 0 is never evaluated, whatever `ignore` is.
    /// Throws for a value that is neither a class nor the ignore value.
    @inline(__always)
    static func labelClass(_ raw: UInt8, numClasses: Int, ignore: Int, reduceZeroLabel: Bool, source: String) throws -> Int? {
        var l = Int(raw)
        if reduceZeroLabel {
            if l == 0 { return nil }
            l = l == 255 ? 255 : l - 1
        }
        if l == ignore { return nil }
        if l < numClasses { return l }
        let shown = reduceZeroLabel ? "\(raw) (\(l) after reducing zero labels)" : "\(raw)"
        throw ZeroSegError.badInput("label value \(shown) in \(source) is not a class (\(numClasses) classes) and not the ignore value \(ignore): wrong class list, ignore value or zero-label reduction?", file: source == "the label map" ? nil : source)
    }

    /// Checks every value of a label map (see `add`) without counting anything.
    public static func checkLabels(_ label: [UInt8], numClasses: Int, ignore: Int = 255, reduceZeroLabel: Bool = false,
                                   source: String = "the label map") throws {
        var seen = [Bool](repeating: false, count: 256)
        for v in label { seen[Int(v)] = true }
        for v in 0..<256 where seen[v] {
            _ = try labelClass(UInt8(v), numClasses: numClasses, ignore: ignore, reduceZeroLabel: reduceZeroLabel, source: source)
        }
    }

    /// Adds one image: `prediction` and `label` are [H, W] row-major of the same length.
    /// Pixels whose (reduced) label is `ignore` are left out; a label value that is neither a
    /// class nor `ignore` throws, and then nothing of this image is counted.
    public mutating func add(prediction: [UInt8], label: [UInt8], ignore: Int = 255, reduceZeroLabel: Bool = false,
                             source: String = "the label map") throws {
        guard prediction.count == label.count else {
            throw ZeroSegError("\(source): the prediction has \(prediction.count) pixels, the label map \(label.count)")
        }
        let nc = numClasses, cols = nc + 1
        // Value -> row (-1: not evaluated), checked before anything is counted.
        var row = [Int](repeating: -1, count: 256)
        var seen = [Bool](repeating: false, count: 256)
        for v in label { seen[Int(v)] = true }
        for v in 0..<256 where seen[v] {
            row[v] = try Self.labelClass(UInt8(v), numClasses: nc, ignore: ignore, reduceZeroLabel: reduceZeroLabel, source: source) ?? -1
        }
        var col = [Int](repeating: nc, count: 256)
        for v in 0..<nc { col[v] = v }
        counts.withUnsafeMutableBufferPointer { c in
            for i in 0..<label.count {
                let r = row[Int(label[i])]
                if r >= 0 { c[r * cols + col[Int(prediction[i])]] += 1 }
            }
        }
    }

    /// Adds another matrix's counts (same number of classes, else it throws).
    public mutating func merge(_ other: ConfusionMatrix) throws {
        guard other.numClasses == numClasses else {
            throw ZeroSegError("ConfusionMatrix.merge: \(other.numClasses) classes into \(numClasses)")
        }
        for i in counts.indices { counts[i] += other.counts[i] }
    }

    /// mmseg's `IoUMetric.total_area_to_metrics` on these counts.
    public var metrics: SegmentationMetrics {
        let nc = numClasses, cols = nc + 1
        var perClass: [SegmentationMetrics.ClassMetrics] = []
        var totalTP: UInt64 = 0, totalLabelled: UInt64 = 0
        for c in 0..<nc {
            let tp = counts[c * cols + c]
            var labelled: UInt64 = 0
            for p in 0..<cols { labelled += counts[c * cols + p] }
            var predicted: UInt64 = 0
            for l in 0..<nc { predicted += counts[l * cols + c] }
            let union = labelled + predicted - tp
            perClass.append(.init(intersection: tp, union: union, labelled: labelled, predicted: predicted,
                                  iou: union > 0 ? Double(tp) / Double(union) : nil,
                                  accuracy: labelled > 0 ? Double(tp) / Double(labelled) : nil))
            totalTP += tp
            totalLabelled += labelled
        }
        func mean(_ xs: [Double?]) -> Double? {
            let v = xs.compactMap { $0 }
            return v.isEmpty ? nil : v.reduce(0, +) / Double(v.count)
        }
        return SegmentationMetrics(classes: perClass, mIoU: mean(perClass.map(\.iou)), mAcc: mean(perClass.map(\.accuracy)),
                                   aAcc: totalLabelled > 0 ? Double(totalTP) / Double(totalLabelled) : nil,
                                   evaluatedPixels: totalLabelled)
    }
}

/// The numbers of mmseg's `IoUMetric` (as fractions, not mmseg's rounded percentages). A
/// value mmseg would give as NaN (0/0) is nil here and left out of the means, as `np.nanmean`
/// leaves it out.
public struct SegmentationMetrics: Sendable, Equatable {
    public struct ClassMetrics: Sendable, Equatable {
        /// True positives: pixels labelled and predicted as the class.
        public let intersection: UInt64
        /// TP + FP + FN.
        public let union: UInt64
        /// Evaluated pixels labelled as the class (TP + FN).
        public let labelled: UInt64
        /// Evaluated pixels predicted as the class (TP + FP).
        public let predicted: UInt64
        /// TP / union; nil when the union is empty (the class neither occurs nor is predicted).
        public let iou: Double?
        /// TP / labelled; nil when no pixel is labelled with the class.
        public let accuracy: Double?
    }
    public let classes: [ClassMetrics]
    /// Mean of the per-class IoUs that are not nil (a class predicted but never labelled has IoU 0 and counts).
    public let mIoU: Double?
    /// Mean of the per-class accuracies that are not nil.
    public let mAcc: Double?
    /// Total TP / total evaluated pixels.
    public let aAcc: Double?
    /// Pixels that took part (labelled with a class, not ignored).
    public let evaluatedPixels: UInt64
}

// MARK: - Files

/// An image and its label map.
public struct EvalPair: Sendable, Equatable {
    public let stem: String
    public let image: URL
    public let label: URL
}

/// What `Evaluation.pairs` found.
public struct EvalPairing: Sendable {
    /// Sorted by stem.
    public let pairs: [EvalPair]
    /// Images with no label file (sorted): not evaluated.
    public let imagesWithoutLabel: [URL]
}

/// A label map: one class index per pixel, row-major.
public struct LabelMap: Sendable, Equatable {
    public let width: Int, height: Int
    public let values: [UInt8]
    /// Throws unless width, height >= 0 and values.count == width * height.
    public init(width: Int, height: Int, values: [UInt8]) throws {
        guard width >= 0 && height >= 0 && values.count == width * height else {
            throw ZeroSegError("LabelMap: \(values.count) values for \(width)x\(height)")
        }
        self.width = width; self.height = height; self.values = values
    }
}

public enum Evaluation {
    /// File name extensions of images (compared case-insensitively).
    public static let imageExtensions: Set<String> = ["png", "jpg", "jpeg"]

    /// Pairs the images in `images` with the label PNGs in `labels` by file name without its
    /// extension (`a.jpg` with `a.png`; extensions .png .jpg .jpeg in any case; hidden files and
    /// subdirectories ignored). A label without an image is an error (the first few are
    /// named); images without a label are returned apart. Two files with the same stem in one
    /// directory, a JPEG label or a directory without labels are errors.
    public static func pairs(images: URL, labels: URL) throws -> EvalPairing {
        try classifyingErrors(as: .badInput(file: labels.path)) { try pairing(images: images, labels: labels) }
    }

    static func pairing(images: URL, labels: URL) throws -> EvalPairing {
        let imgs = try listing(images, what: "images")
        let labs = try listing(labels, what: "labels")
        guard !labs.isEmpty else { throw ZeroSegError("no label PNGs in \(labels.path)") }
        if let jpeg = labs.values.first(where: { $0.pathExtension.lowercased() != "png" }) {
            throw ZeroSegError("label \(jpeg.path) is a JPEG: label maps must be PNG (JPEG is lossy)")
        }
        let orphans = labs.keys.filter { imgs[$0] == nil }.sorted()
        if !orphans.isEmpty {
            let shown = orphans.prefix(5).map { labs[$0]!.lastPathComponent }.joined(separator: ", ")
            throw ZeroSegError("\(orphans.count) label\(orphans.count == 1 ? "" : "s") in \(labels.path) \(orphans.count == 1 ? "has" : "have") no image in \(images.path): \(shown)\(orphans.count > 5 ? ", ..." : "")")
        }
        let pairs = labs.keys.sorted().map { EvalPair(stem: $0, image: imgs[$0]!, label: labs[$0]!) }
        let unlabelled = imgs.keys.filter { labs[$0] == nil }.sorted().map { imgs[$0]! }
        return EvalPairing(pairs: pairs, imagesWithoutLabel: unlabelled)
    }

    /// stem -> file, for the image-like files of a directory.
    static func listing(_ dir: URL, what: String) throws -> [String: URL] {
        try classifyingErrors(as: .badInput(file: dir.path)) { try listingFiles(dir, what: what) }
    }

    static func listingFiles(_ dir: URL, what: String) throws -> [String: URL] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir.path, isDirectory: &isDir) else {
            throw ZeroSegError("\(what) directory \(dir.path) does not exist")
        }
        guard isDir.boolValue else { throw ZeroSegError("\(what) directory \(dir.path) is not a directory") }
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: dir.path) } catch {
            throw ZeroSegError("cannot list \(what) directory \(dir.path): \(error.localizedDescription)")
        }
        var out: [String: URL] = [:]
        for name in names.sorted() where !name.hasPrefix(".") {
            let url = dir.appendingPathComponent(name)
            guard imageExtensions.contains(url.pathExtension.lowercased()) else { continue }
            var sub: ObjCBool = false
            guard FileManager.default.fileExists(atPath: url.path, isDirectory: &sub), !sub.boolValue else { continue }
            let stem = url.deletingPathExtension().lastPathComponent
            if let other = out[stem] {
                throw ZeroSegError("two \(what) files with the name \(stem) in \(dir.path): \(other.lastPathComponent) and \(name)")
            }
            out[stem] = url
        }
        return out
    }

    /// Reads a label PNG as class indices, the way mmseg reads labels (Pillow, `flag='unchanged'`):
    /// 8-bit grey values as stored, or palette indices (1, 2, 4 or 8 bits; not the palette's
    /// colours); 1-bit grey as 0/1. Colour, grey+alpha, 2/4/16-bit grey PNGs are errors.
    public static func loadLabelMap(_ url: URL, maxPixels: Int = RGBImage.defaultMaxPixels) throws -> LabelMap {
        try classifyingErrors(as: .badInput(file: url.path)) {
            let data: Data
            do { data = try Data(contentsOf: url) } catch {
                throw ZeroSegError("cannot read label \(url.path): \(error.localizedDescription)")
            }
            return try decodeLabelPNG([UInt8](data), source: url.path, maxPixels: maxPixels)
        }
    }

    static func decodeLabelPNG(_ bytes: [UInt8], source: String, maxPixels: Int) throws -> LabelMap {
        guard ImageFormat.sniff(bytes) == .png else { throw ZeroSegError("label \(source) is not a PNG file") }
        try checkPNGHeaderLimit(bytes, maxPixels: maxPixels, source: source)
        return try bytes.withUnsafeBufferPointer { buf -> LabelMap in
            guard let p = zs_png_create(buf.baseAddress, buf.count) else {
                throw ZeroSegError("cannot decode label \(source): out of memory starting libpng")
            }
            defer { zs_png_destroy(p) }
            let png = OpaquePointer(zs_png_ptr(p)), info = OpaquePointer(zs_png_info(p))
            func failure() -> ZeroSegError {
                ZeroSegError("cannot decode label \(source): corrupt or truncated PNG (libpng: \(String(cString: zs_png_message(p))))")
            }
            guard zs_png_read_info(p) == 0 else { throw failure() }
            var w: png_uint_32 = 0, h: png_uint_32 = 0
            var depth: Int32 = 0, colorType: Int32 = 0, interlace: Int32 = 0
            png_get_IHDR(png, info, &w, &h, &depth, &colorType, &interlace, nil, nil)
            let width = Int(w), height = Int(h)
            try checkPixelLimit(width: width, height: height, maxPixels: maxPixels, source: source)
            switch colorType {
            case PNG_COLOR_TYPE_PALETTE: break
            case PNG_COLOR_TYPE_GRAY where depth == 8 || depth == 1: break
            case PNG_COLOR_TYPE_GRAY:
                throw ZeroSegError("label \(source) is a \(depth)-bit greyscale PNG: label maps must be 8-bit greyscale or palette indices")
            default:
                let kind = colorType == PNG_COLOR_TYPE_GRAY_ALPHA ? "greyscale+alpha" : colorType == PNG_COLOR_TYPE_RGB ? "RGB" : "RGBA"
                throw ZeroSegError("label \(source) is an \(kind) PNG: label maps must be single-channel class indices (8-bit greyscale or palette)")
            }
            // Only unpacking of sub-byte samples and de-interlacing: no palette expansion, no
            // gamma, no tRNS -> alpha.
            if depth < 8 { png_set_packing(png) }
            _ = png_set_interlace_handling(png)
            guard zs_png_update_info(p) == 0 else { throw failure() }
            guard Int(png_get_rowbytes(png, info)) == width, png_get_channels(png, info) == 1 else {
                throw ZeroSegError("cannot decode label \(source): unexpected libpng row layout")
            }
            var values = [UInt8](repeating: 0, count: width * height)
            try values.withUnsafeMutableBufferPointer { vb in
                var rows: [UnsafeMutablePointer<UInt8>?] = (0..<height).map { vb.baseAddress! + $0 * width }
                guard zs_png_read_image(p, &rows) == 0 else { throw failure() }
            }
            _ = zs_png_read_end(p)
            return try LabelMap(width: width, height: height, values: values)
        }
    }
}
