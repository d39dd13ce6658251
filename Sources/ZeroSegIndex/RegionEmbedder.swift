import Foundation
import ZeroSegCLIP
import ZeroSegCore
import ZeroSegImaging
import ZeroSegSegmentation

/// How images become vectors for the index.
public struct IndexingOptions: Sendable, Equatable {
    public var regions: RegionMode = .proposals
    /// Images per encoder pass (1...64).
    public var batch = 8
    /// Proposals kept per image (1...64), for `RegionMode.proposals`.
    public var maxProposals = 12
    /// The side (pixels, 32...1024) of the square picture the proposals are made on: the model's
    /// crop resized (the features are a 14x14 grid either way; SLIC's cost grows with pixels).
    public var proposalSide = 112
    /// The dense method whose patch features make the region embeddings.
    public var method: DenseMethod = .naclip
    /// Largest picture decoded (pixels).
    public var maxPixels = RGBImage.defaultMaxPixels
    /// Largest file read (bytes).
    public var maxFileBytes = 256 << 20

    public init() {}

    /// The grid splits of `RegionMode.grid`: 2x2 and 3x3 cells of the patch grid.
    public static let gridSplits = [2, 3]

    public func validate() throws {
        guard batch >= 1 && batch <= 64 else { throw ZeroSegError.invalidArgument("the image batch must be between 1 and 64, not \(batch)", parameter: "batch") }
        guard maxProposals >= 1 && maxProposals <= 64 else {
            throw ZeroSegError.invalidArgument("the proposals per image must be between 1 and 64, not \(maxProposals)", parameter: "maxProposals")
        }
        guard proposalSide >= 32 && proposalSide <= 1024 else {
            throw ZeroSegError.invalidArgument("the proposal picture side must be between 32 and 1024, not \(proposalSide)", parameter: "proposalSide")
        }
        guard maxPixels >= 1, maxFileBytes >= 1 else { throw ZeroSegError.invalidArgument("the pixel and byte limits must be positive", parameter: "maxPixels") }
    }
}

/// The vectors of one image: its embedding and its regions'.
public struct ImageVectors: Sendable {
    public var global: [Float]
    public var regions: [(region: IndexRegion, vector: [Float])]
}

/// Embeds images for the index: one encoder pass per batch gives each image its CLIP embedding
/// (the standard preprocessing: short side 224, center crop; equal to `CLIPModel.encodeImages`)
/// and the dense patch features of the same crop, pooled over regions:
/// - `grid`: the 2x2 and 3x3 cells of the patch grid (13 regions);
/// - `proposals`: the two-stage mode's mask proposals (SLIC superpixels and k-means of the dense
///   features, `ProposalSource.both`) on the crop, each pooled over its mask (`maskPooledEmbedding`).
/// Regions are in the original picture's pixels. Only the center crop is seen: the strips of a
/// non-square picture outside it belong to no region.
public final class RegionEmbedder: @unchecked Sendable {
    public let model: CLIPModel
    public let options: IndexingOptions
    public let threads: Int
    private let preprocessor: CLIPPreprocessor

    public init(model: CLIPModel, options: IndexingOptions = IndexingOptions(), threads: Int = defaultThreads) throws {
        try options.validate()
        self.model = model
        self.options = options
        self.threads = max(1, threads)
        preprocessor = try CLIPPreprocessor(size: model.preprocessor.shortestEdge, cropSize: model.preprocessor.cropSize,
                                            mean: model.preprocessor.mean, std: model.preprocessor.std)
    }

    /// The vectors of each image, `options.batch` images per encoder pass.
    public func embed(_ images: [RGBImage]) throws -> [ImageVectors] {
        var out: [ImageVectors] = []
        var start = 0
        while start < images.count {
            let part = Array(images[start..<min(images.count, start + options.batch)])
            out += try embedBatch(part)
            start += options.batch
        }
        return out
    }

    private func embedBatch(_ images: [RGBImage]) throws -> [ImageVectors] {
        let s = preprocessor.cropSize, p = model.config.projectionDim
        // Per-picture work (resize and crop here, proposals below) runs on the thread budget, one
        // picture per task: each result depends on its picture alone.
        let prepared = try perPicture(images.count) { try preprocessor.preprocessWithCrop(images[$0]) }
        let px = prepared.flatMap(\.pixels)  // [B, 3, s, s]
        let (global, patches, gh, gw) = try px.withUnsafeBufferPointer {
            try model.imageAndPatchEmbeddings(pixels: $0.baseAddress!, batch: images.count, height: s, width: s,
                                              method: options.method, threads: threads)
        }
        defer { withExtendedLifetime(patches) {} }
        let cells = gh * gw
        nonisolated(unsafe) let patchesP = patches.ptr
        return try perPicture(images.count) { b in
            let patches = patchesP
            let data = Array(UnsafeBufferPointer(start: patches + b * cells * p, count: cells * p))
            let grid = try FeatureGrid(height: gh, width: gw, dim: p, data: data)
            var frame = CropFrame(box: prepared[b].box, crop: s, imageWidth: images[b].width, imageHeight: images[b].height)
            let regions: [(IndexRegion, [Float])]
            switch options.regions {
            case .none: regions = []
            case .grid: regions = gridRegions(grid, frame: frame)
            case .proposals:
                let side = min(options.proposalSide, s)
                let small = side == s ? prepared[b].crop : try resizeBicubicPIL(prepared[b].crop, width: side, height: side)
                frame.crop = side
                let masks = try proposals(image: small, features: grid, source: .both,
                                          settings: ProposalSettings(maxProposals: options.maxProposals))
                regions = masks.map { m in
                    (IndexRegion(box: frame.box(m.bbox), source: m.source, mask: frame.mask(m)), maskPooledEmbedding(m, features: grid))
                }
            }
            return ImageVectors(global: global[b], regions: regions)
        }
    }

    /// `body(i)` for i in 0..<n, spread over the thread budget (tasks of one picture, each with a
    /// budget of 1), results in order; the first error is thrown.
    func perPicture<T>(_ n: Int, _ body: (Int) throws -> T) throws -> [T] {
        var out = [Result<T, Error>?](repeating: nil, count: n)
        let parts = min(threads, n)
        out.withUnsafeMutableBufferPointer { o in
            nonisolated(unsafe) let op = o.baseAddress!
            withoutActuallyEscaping(body) { f in
                nonisolated(unsafe) let fn = f
                parallelFor(parts) { part in
                    for i in stride(from: part, to: n, by: parts) { op[i] = Result { try fn(i) } }
                }
            }
        }
        return try out.map { try $0!.get() }
    }

    /// The 2x2 and 3x3 cells of the patch grid: mean patch embedding per cell, L2-normalised.
    func gridRegions(_ g: FeatureGrid, frame: CropFrame) -> [(IndexRegion, [Float])] {
        let patch = frame.crop / max(g.height, g.width)
        var out: [(IndexRegion, [Float])] = []
        for n in IndexingOptions.gridSplits {
            for r in 0..<n {
                for c in 0..<n {
                    let r0 = r * g.height / n, r1 = (r + 1) * g.height / n, c0 = c * g.width / n, c1 = (c + 1) * g.width / n
                    var v = [Float](repeating: 0, count: g.dim)
                    for y in r0..<r1 { for x in c0..<c1 { for d in 0..<g.dim { v[d] += g.data[(y * g.width + x) * g.dim + d] } } }
                    l2Normalize(&v)
                    let box = frame.box(PixelBox(x0: c0 * patch, y0: r0 * patch, x1: c1 * patch, y1: r1 * patch))
                    out.append((IndexRegion(box: box, source: "grid \(n)x\(n)"), v))
                }
            }
        }
        return out
    }
}

/// Where the model's square crop lies in the original picture, to map crop pixels back.
struct CropFrame {
    var box: (x0: Double, y0: Double, x1: Double, y1: Double)
    var crop: Int
    var imageWidth: Int
    var imageHeight: Int

    private var scaleX: Double { (box.x1 - box.x0) / Double(crop) }
    private var scaleY: Double { (box.y1 - box.y0) / Double(crop) }

    /// A box of crop pixels in original pixels (rounded outwards, clipped to the picture).
    func box(_ b: PixelBox) -> PixelBox {
        func clip(_ v: Double, _ hi: Int) -> Int { min(hi, max(0, Int(v))) }
        return PixelBox(x0: clip((box.x0 + Double(b.x0) * scaleX).rounded(.down), imageWidth),
                        y0: clip((box.y0 + Double(b.y0) * scaleY).rounded(.down), imageHeight),
                        x1: clip((box.x0 + Double(b.x1) * scaleX).rounded(.up), imageWidth),
                        y1: clip((box.y0 + Double(b.y1) * scaleY).rounded(.up), imageHeight))
    }

    /// A mask of the crop at the original picture's size (each pixel takes the crop pixel its
    /// centre falls in; 0 outside the crop), as RLE built from the crop column's runs: a run of
    /// crop rows becomes a run of picture rows, so no picture-sized array is made.
    func mask(_ m: ProposalMask) -> RLEMask {
        let w = imageWidth, h = imageHeight
        // The crop row / column of each picture row / column (−1 outside the crop).
        let rowOf = (0..<h).map { y -> Int in
            let c = Int(((Double(y) + 0.5 - box.y0) / scaleY).rounded(.down))
            return c >= 0 && c < m.height ? c : -1
        }
        let colOf = (0..<w).map { x -> Int in
            let c = Int(((Double(x) + 0.5 - box.x0) / scaleX).rounded(.down))
            return c >= 0 && c < m.width ? c : -1
        }
        // Picture rows [first[c], last[c]] hold crop row c (contiguous: rowOf is non-decreasing).
        var first = [Int](repeating: -1, count: m.height), last = [Int](repeating: -1, count: m.height)
        for (y, c) in rowOf.enumerated() where c >= 0 {
            if first[c] < 0 { first[c] = y }
            last[c] = y
        }
        var counts: [Int] = []
        var current = 0, run = 0
        func emit(_ value: Int, _ n: Int) {
            guard n > 0 else { return }
            if value != current { counts.append(run); run = 0; current = value }
            run += n
        }
        var columnRuns: [Int: [(Int, Int)]] = [:]  // crop column → its runs of 1s as picture rows [a, b)
        for x in 0..<w {
            let cx = colOf[x]
            guard cx >= 0 else { emit(0, h); continue }
            let runs = columnRuns[cx] ?? {
                var r: [(Int, Int)] = []
                var cy = 0
                while cy < m.height {
                    guard m.bits[cy * m.width + cx] != 0, first[cy] >= 0 else { cy += 1; continue }
                    var end = cy
                    while end + 1 < m.height && m.bits[(end + 1) * m.width + cx] != 0 && first[end + 1] >= 0 { end += 1 }
                    r.append((first[cy], last[end] + 1))
                    cy = end + 1
                }
                columnRuns[cx] = r
                return r
            }()
            var y = 0
            for (a, b) in runs {
                emit(0, a - y)
                emit(1, b - a)
                y = b
            }
            emit(0, h - y)
        }
        counts.append(run)
        return RLEMask(width: w, height: h, counts: counts)
    }
}
