import Foundation
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegCLIP

// Two-stage segmentation (zsseg style): class-agnostic mask proposals (Proposals.swift, or masks
// from outside), each region classified with CLIP, fused per pixel with the one-stage scores.
//
// Reference: scripts/reference/twostage_reference.py (the same steps in torch, given the masks);
// golden test: Tests/ZeroSegTests/TwoStageGoldenTests.swift.

/// How a region is turned into an embedding.
public enum RegionFeatures: String, CaseIterable, Sendable, Codable {
    /// zsseg: crop the mask's box (plus a margin), paint pixels outside the mask with CLIP's mean
    /// colour, resize to the encoder size, encode the crop with the CLIP image encoder.
    case crop
    /// Mean of the one-stage dense patch embeddings inside the mask (no extra encoder pass).
    case pooled
}

/// Settings of the two-stage mode (the one-stage part keeps its `SegmentationOptions`).
public struct TwoStageOptions: Sendable, Equatable {
    public var proposals: ProposalSource = .both
    public var proposalSettings = ProposalSettings()
    /// The crop box grows by this fraction of the mask box's width / height on each side.
    public var cropMargin: Double = 0.1
    /// p = normalise(p_region^λ · p_onestage^(1−λ)) inside masks.
    public var fusionLambda: Float = 0.5
    public var regionFeatures: RegionFeatures = .crop
    /// Crops encoded together.
    public var cropBatch = 8
    public init() {}

    public func validate() throws {
        func bad(_ parameter: String, _ message: String) -> ZeroSegError { .invalidArgument(message, parameter: parameter) }
        guard cropMargin >= 0 && cropMargin <= 2 else { throw bad("cropMargin", "the crop margin must be between 0 and 2") }
        guard fusionLambda >= 0 && fusionLambda <= 1 else { throw bad("fusionLambda", "the fusion λ must be between 0 and 1") }
        guard proposalSettings.maxProposals >= 1 else { throw bad("maxProposals", "the maximum number of proposals must be at least 1") }
        if let a = proposalSettings.minArea, a < 1 { throw bad("minArea", "the minimum proposal area must be at least 1 pixel") }
    }
}

/// One classified region.
public struct RegionScore: Sendable {
    public let mask: ProposalMask
    /// [R] class probabilities of the region (R = classes, + 1 background row last).
    public let probabilities: [Float]
    /// Pixels where this mask is the smallest covering one (it decides the fusion there).
    public let ownedPixels: Int
}

/// What `TwoStageSegmenter.segment` returns.
public struct TwoStageResult: Sendable {
    /// Labels, areas, scores (fused) and timings, as one-stage.
    public let result: SegmentationResult
    public let regions: [RegionScore]
}

/// Intermediates of one image (golden tests and the reference check).
public struct TwoStageInternals: Sendable {
    /// [R, H, W] one-stage class probabilities.
    public var oneStage: [Float]
    /// [M, 3, S, S] normalised crops (crop mode only).
    public var crops: [Float]
    /// [M][P] region embeddings (L2-normalised).
    public var embeddings: [[Float]]
    /// [M][R] region probabilities.
    public var regionProbabilities: [[Float]]
    /// [R, H, W] fused probabilities.
    public var fused: [Float]
    /// [H, W] index of the mask deciding each pixel, −1 = none.
    public var owner: [Int32]
    public var labels: [UInt8]
    /// The dense-feature grid of the one-stage pass.
    public var features: FeatureGrid
}

public final class TwoStageSegmenter: @unchecked Sendable {
    public let segmenter: Segmenter
    public let options: TwoStageOptions
    public var model: CLIPModel { segmenter.model }

    public init(segmenter: Segmenter, options: TwoStageOptions = TwoStageOptions()) throws {
        try options.validate()
        self.segmenter = segmenter
        self.options = options
    }

    /// Segments one image: one-stage scores and dense features, proposals (or `masks`, used as
    /// given apart from dropping empty ones), region classification, fusion.
    public func segment(_ image: RGBImage, classes set: ClassSet, queries: [[Float]], masks: [ProposalMask]? = nil,
                        wantScores: Bool = false) throws -> TwoStageResult {
        let (internals, regions, timings) = try run(image, classes: set, queries: queries, masks: masks)
        let (h, w) = (image.height, image.width), hw = h * w, nc = set.classes.count
        let (area, mean) = try labelAreas(internals.labels, probabilities: internals.fused, classes: nc, pixels: hw)
        let scores: [Float]? = wantScores ? Array(internals.fused[0..<(nc * hw)]) : nil
        let result = SegmentationResult(width: w, height: h, labels: internals.labels, scores: scores,
                                        areaFraction: area, meanScore: mean, timings: timings)
        return TwoStageResult(result: result, regions: regions)
    }

    /// Every intermediate of `segment`.
    public func internals(_ image: RGBImage, classes set: ClassSet, queries: [[Float]], masks: [ProposalMask]? = nil) throws -> TwoStageInternals {
        try run(image, classes: set, queries: queries, masks: masks).0
    }

    func run(_ image: RGBImage, classes set: ClassSet, queries: [[Float]], masks given: [ProposalMask]?) throws
        -> (TwoStageInternals, [RegionScore], [String: Double]) {
        let budget = enterThreads(segmenter.threads)
        defer { budget.leave() }
        guard queries.count == set.queries.count else {
            throw ZeroSegError("\(queries.count) query embeddings for \(set.queries.count) class names")
        }
        let (h, w) = (image.height, image.width), hw = h * w
        var timings: [String: Double] = [:]
        let (logits, features) = try segmenter.logitsAndFeatures(image, queries: queries, set: set, timings: &timings)
        var clock = Stopwatch()
        func lap(_ name: String) { clock.lap(name, into: &timings) }
        let nc = set.classes.count, rows = nc + (set.background.isEmpty ? 0 : 1)
        let owners = set.queries.map(\.owner)
        let p1 = try classProbabilities(logits: logits, pixels: hw, owners: owners, rows: rows, scale: segmenter.options.logitScale)
        lap("scores")
        var masks: [ProposalMask]
        if let given {
            for m in given where m.width != w || m.height != h {
                throw ZeroSegError("a \(m.width)x\(m.height) mask (\(m.source)) for a \(w)x\(h) image")
            }
            masks = given.filter { $0.area > 0 }
        } else {
            masks = try ZeroSegSegmentation.proposals(image: image, features: features, source: options.proposals, settings: options.proposalSettings)
        }
        lap("proposals")
        var crops: [Float] = []
        var embeddings: [[Float]] = []
        let pr: [[Float]]
        let head = segmenter.prompts
        switch options.regionFeatures {
        case .crop:
            crops = try regionCrops(image, masks: masks)
            let s = model.preprocessor.cropSize
            var regionLogits: [[Float]] = []
            var i = 0
            while i < masks.count {
                let nb = min(max(1, options.cropBatch), masks.count - i)
                // An image-conditioned head scores each crop as a window: the region's logits are its
                // score maps averaged over the crop's patches (the crop is the mask's box, outside
                // the mask CLIP's mean colour). Otherwise: the crop's CLIP image embedding.
                let scored = try crops.withUnsafeBufferPointer {
                    try head?.scoreWindows(pixels: $0.baseAddress! + i * 3 * s * s, batch: nb, height: s, width: s, queries: queries,
                                           set: set, model: model, threads: segmenter.threads)
                }
                if let scored {
                    let q = queries.count, g = scored.gridHeight * scored.gridWidth
                    for b in 0..<nb {
                        regionLogits.append((0..<q).map { k in
                            var sum: Float = 0
                            for j in 0..<g { sum += scored.scores[(b * q + k) * g + j] }
                            return sum / Float(g)
                        })
                    }
                } else {
                    embeddings += try crops.withUnsafeBufferPointer {
                        try model.encodePixels($0.baseAddress! + i * 3 * s * s, batch: nb, height: s, width: s, threads: segmenter.threads)
                    }
                }
                i += nb
            }
            if regionLogits.isEmpty {
                pr = embeddings.map { regionProbabilities($0, queries: queries, owners: owners, rows: rows, scale: model.scale) }
            } else {
                pr = regionLogits.map { regionProbabilities(logits: $0, owners: owners, rows: rows, scale: segmenter.options.logitScale) }
            }
            lap("region_encoder")
        case .pooled:
            if head?.scoresWindows == true {
                // An image-conditioned head's logits are not cosines of patch and query embeddings:
                // the region's logits are the one-stage logits averaged over the mask.
                let q = queries.count
                pr = masks.map { m in
                    var sums = [Double](repeating: 0, count: q)
                    for px in 0..<hw where m.bits[px] != 0 { for k in 0..<q { sums[k] += Double(logits[k * hw + px]) } }
                    return regionProbabilities(logits: sums.map { Float($0 / Double(max(1, m.area))) }, owners: owners, rows: rows,
                                               scale: segmenter.options.logitScale)
                }
            } else {
                embeddings = masks.map { pooledEmbedding($0, features: features) }
                pr = embeddings.map { regionProbabilities($0, queries: queries, owners: owners, rows: rows, scale: segmenter.options.logitScale) }
            }
            lap("region_pooling")
        }
        let (fused, owner) = Self.fuse(oneStage: p1, rows: rows, pixels: hw, masks: masks, regions: pr, lambda: options.fusionLambda)
        let labels = try labelPixels(fused, rows: rows, pixels: hw, classes: nc, hasBackground: !set.background.isEmpty,
                                 threshold: segmenter.options.threshold)
        var ownedCount = [Int](repeating: 0, count: masks.count)
        for o in owner where o >= 0 { ownedCount[Int(o)] += 1 }
        lap("fusion")
        let regions = masks.indices.map { RegionScore(mask: masks[$0], probabilities: pr[$0], ownedPixels: ownedCount[$0]) }
        let internals = TwoStageInternals(oneStage: p1, crops: crops, embeddings: embeddings, regionProbabilities: pr,
                                          fused: fused, owner: owner, labels: labels, features: features)
        return (internals, regions, timings)
    }

    // MARK: Steps

    /// Normalised crops [M, 3, S, S] (S = the encoder's crop size): the mask box grown by
    /// `cropMargin` of its width / height on each side (rounded, clipped to the image), pixels
    /// outside the mask set to CLIP's mean colour, resized bilinearly (torch `interpolate`,
    /// align_corners=False, no antialias) from the float image, then normalised. Throws for a mask
    /// of another size than the image.
    public func regionCrops(_ image: RGBImage, masks: [ProposalMask]) throws -> [Float] {
        let s = model.preprocessor.cropSize, mean = model.preprocessor.mean, std = model.preprocessor.std
        let (h, w) = (image.height, image.width)
        for m in masks where m.width != w || m.height != h {
            throw ZeroSegError("regionCrops: a \(m.width)x\(m.height) mask (\(m.source)) for a \(w)x\(h) image")
        }
        var out = [Float](repeating: 0, count: masks.count * 3 * s * s)
        for (mi, m) in masks.enumerated() {
            let b = m.bbox
            let mx = Int((Double(b.width) * options.cropMargin).rounded()), my = Int((Double(b.height) * options.cropMargin).rounded())
            let x0 = max(0, b.x0 - mx), x1 = min(w, b.x1 + mx), y0 = max(0, b.y0 - my), y1 = min(h, b.y1 + my)
            let cw = x1 - x0, ch = y1 - y0
            var crop = [Float](repeating: 0, count: 3 * ch * cw)  // [3, ch, cw], 0...255
            let fill = (0..<3).map { Float(mean[$0]) * 255 }
            // hot loop: unchecked via unsafe buffer pointers (masks are checked to be the image's size)
            crop.withUnsafeMutableBufferPointer { crop in m.bits.withUnsafeBufferPointer { bits in
                image.pixels.withUnsafeBufferPointer { pixels in fill.withUnsafeBufferPointer { fill in
                    for y in 0..<ch {
                        for x in 0..<cw {
                            let px = (y0 + y) * w + x0 + x
                            for c in 0..<3 {
                                crop[(c * ch + y) * cw + x] = bits[px] != 0 ? pixels[px * 3 + c] : fill[c]
                            }
                        }
                    }
                } }
            } }
            out.withUnsafeMutableBufferPointer { o in
                let dst = o.baseAddress! + mi * 3 * s * s
                crop.withUnsafeBufferPointer { resizeBilinearCHW($0.baseAddress!, channels: 3, height: ch, width: cw, dst, outHeight: s, outWidth: s) }
                for c in 0..<3 {
                    let (mc, sc) = (Float(mean[c]), Float(std[c]))
                    for i in 0..<(s * s) { dst[c * s * s + i] = (dst[c * s * s + i] / 255 - mc) / sc }
                }
            }
        }
        return out
    }

    /// The L2-normalised mean of the feature-grid cells under the mask's pixels (each pixel
    /// counts its cell once: an area-weighted mean).
    public func pooledEmbedding(_ m: ProposalMask, features g: FeatureGrid) -> [Float] {
        maskPooledEmbedding(m, features: g)
    }

    /// [R] = max over each class's names of softmax over all names of scale · cos(e, query).
    public func regionProbabilities(_ e: [Float], queries: [[Float]], owners: [Int], rows: Int, scale: Float) -> [Float] {
        regionProbabilities(logits: queries.map { q in zip(q, e).reduce(Float(0)) { $0 + $1.0 * $1.1 } }, owners: owners, rows: rows, scale: scale)
    }

    /// Softmax of logits [Q] × scale, max over each row's (class's) queries: [rows].
    public func regionProbabilities(logits raw: [Float], owners: [Int], rows: Int, scale: Float) -> [Float] {
        let logits = raw.map { $0 * scale }
        let mx = logits.max() ?? 0
        let ex = logits.map { expf($0 - mx) }
        let z = ex.reduce(0, +)
        var out = [Float](repeating: 0, count: rows)
        for (k, v) in ex.enumerated() { out[owners[k]] = max(out[owners[k]], v / z) }
        return out
    }

    /// Fusion: each pixel is decided by the smallest mask covering it (equal areas: the lower
    /// index); there p[r] = pr[r]^λ · p1[r]^(1−λ) / Σ_r (same); pixels in no mask keep p1.
    /// Returns the fused [R, HW] and the deciding mask per pixel (−1: none).
    public static func fuse(oneStage p1: [Float], rows: Int, pixels hw: Int, masks: [ProposalMask], regions pr: [[Float]],
                            lambda: Float) -> ([Float], [Int32]) {
        var owner = [Int32](repeating: -1, count: hw)
        let order = masks.indices.sorted { masks[$0].area != masks[$1].area ? masks[$0].area > masks[$1].area : $0 > $1 }
        for mi in order { for px in 0..<hw where masks[mi].bits[px] != 0 { owner[px] = Int32(mi) } }
        var fused = p1
        var v = [Float](repeating: 0, count: rows)
        for px in 0..<hw where owner[px] >= 0 {
            let r = pr[Int(owner[px])]
            var s: Float = 0
            for k in 0..<rows { v[k] = powf(r[k], lambda) * powf(p1[k * hw + px], 1 - lambda); s += v[k] }
            if s > 0 { for k in 0..<rows { fused[k * hw + px] = v[k] / s } }
        }
        return (fused, owner)
    }
}

/// The L2-normalised mean of the feature-grid cells under the mask's pixels (each pixel counts its
/// cell once: an area-weighted mean).
public func maskPooledEmbedding(_ m: ProposalMask, features g: FeatureGrid) -> [Float] {
    let rowsOf = g.cellRows(imageHeight: m.height), colsOf = g.cellColumns(imageWidth: m.width)
    var count = [Int](repeating: 0, count: g.height * g.width)
    for y in 0..<m.height { for x in 0..<m.width where m.bits[y * m.width + x] != 0 { count[rowsOf[y] * g.width + colsOf[x]] += 1 } }
    var v = [Float](repeating: 0, count: g.dim)
    for (cell, n) in count.enumerated() where n > 0 {
        for d in 0..<g.dim { v[d] += Float(n) * g.data[cell * g.dim + d] }
    }
    l2Normalize(&v)
    return v
}
