import Foundation
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegCLIP

public enum Refinement: String, CaseIterable, Sendable, Codable { case pamr, none }

/// Settings of one-stage segmentation (defaults: NACLIP's published setting).
public struct SegmentationOptions: Sendable, Equatable {
    public var method: DenseMethod = .naclip
    /// Rescale as mmcv's `imrescale` to (2048, shortSide).
    public var shortSide = 336
    public var window = 224
    public var stride = 112
    public var useWindows = true
    public var logitScale: Float = 40
    public var refine: Refinement = .pamr
    public var pamrIterations = 10
    public var pamrDilations = [8, 16]
    /// Pixels whose winning probability is below this are labelled 255.
    public var threshold: Float = 0
    public var gaussianStd: Float = 5
    /// Windows encoded together.
    public var windowBatch = 8
    public init() {}

    public func validate() throws {
        func bad(_ parameter: String, _ message: String) -> ZeroSegError { .invalidArgument(message, parameter: parameter) }
        guard shortSide >= 1 && shortSide <= 8192 else { throw bad("shortSide", "the short side must be between 1 and 8192") }
        guard window >= 1 else { throw bad("window", "the window size must be positive") }
        guard stride >= 1 else { throw bad("stride", "the window stride must be positive") }
        guard stride <= window else { throw bad("stride", "the window stride \(stride) is larger than the window \(window): pixels would be left out") }
        guard logitScale > 0, logitScale.isFinite else { throw bad("logitScale", "the logit scale must be positive") }
        guard threshold >= 0 && threshold <= 1 else { throw bad("threshold", "the threshold must be between 0 and 1") }
        guard gaussianStd > 0 else { throw bad("gaussianStd", "the Gaussian std must be positive") }
    }
}

/// What `Segmenter.segment` returns.
public struct SegmentationResult: Sendable {
    public let width: Int, height: Int
    /// [H, W]: class index, 255 = background or below threshold.
    public let labels: [UInt8]
    /// [C, H, W] per-class probabilities (max over synonyms; background excluded), only when asked.
    public let scores: [Float]?
    /// Per class: fraction of pixels labelled with it, and the mean winning probability over them.
    public let areaFraction: [Double]
    public let meanScore: [Double]
    /// Seconds per stage.
    public let timings: [String: Double]
    /// The full-resolution stage's own accounting (one-stage `Segmenter.segment`): the bytes of its
    /// buffers alive at once at the most (labels, winning values, scores when asked, the column
    /// tiles' rows); 0 when not reported.
    public var fullResolutionBytes = 0
}

/// Intermediate maps of one image (for tests and the reference check).
public struct SegmentationInternals: Sendable {
    /// [Q, H, W] averaged window logits at the original size, before refinement.
    public var rawLogits: [Float]
    /// [Q, H, W] after PAMR (nil without refinement).
    public var refinedLogits: [Float]?
    /// [3, Hs, Ws] the normalised rescaled image.
    public var rescaled: [Float]
    public var rescaledWidth: Int, rescaledHeight: Int
    public var windows: [(y1: Int, x1: Int, y2: Int, x2: Int)]
}

/// One-stage zero-shot segmentation: dense CLIP patch embeddings against class text embeddings,
/// sliding windows, PAMR refinement (SCLIP / NACLIP protocol). Immutable: one segmenter can be
/// used from several threads at once; every call computes with `threads` threads.
public final class Segmenter: @unchecked Sendable {
    public let model: CLIPModel
    public let options: SegmentationOptions
    public let threads: Int
    /// Learned prompts (`zeroseg tune`): CoOp class embeddings, the patch adapter and the learned
    /// logit scale (which replaces `options.logitScale`).
    public let prompts: (any PromptHead)?

    public init(model: CLIPModel, options: SegmentationOptions = SegmentationOptions(), threads: Int = defaultThreads,
                prompts: (any PromptHead)? = nil) throws {
        try options.validate()
        var o = options
        if let prompts {
            try prompts.checkFits(model)
            o.logitScale = prompts.logitScale
        }
        self.model = model
        self.options = o
        self.threads = threads
        self.prompts = prompts
    }

    // MARK: Text

    /// Query embeddings [Q, P]: for each name, the L2-normalised embeddings of every template,
    /// averaged and re-normalised. With a cache, names already encoded are read from disk.
    /// With learned prompts: one CoOp prompt per name instead (templates and cache unused).
    public func queryEmbeddings(_ set: ClassSet, templates: [String], cache: TextEmbeddingCache? = nil) throws -> [[Float]] {
        if let prompts { return try prompts.queries(set, model: model, threads: threads) }
        let names = set.queries.map(\.name)
        var out = [[Float]?](repeating: nil, count: names.count)
        if let cache { for (i, n) in names.enumerated() { out[i] = cache.load(name: n, templates: templates) } }
        let missing = names.indices.filter { out[$0] == nil }
        if !missing.isEmpty {
            let prompts = missing.flatMap { i in templates.map { Templates.fill($0, names[i]) } }
            let emb = try model.encodeText(prompts, normalize: true, threads: threads)
            for (j, i) in missing.enumerated() {
                var mean = [Float](repeating: 0, count: model.config.projectionDim)
                for t in 0..<templates.count { for (k, v) in emb[j * templates.count + t].enumerated() { mean[k] += v } }
                for k in mean.indices { mean[k] /= Float(templates.count) }
                l2Normalize(&mean)
                out[i] = mean
                cache?.store(mean, name: names[i], templates: templates)
            }
        }
        return out.map { $0! }
    }

    // MARK: Image

    /// mmcv `imrescale` to (2048, S): factor min(2048/long, S/short), size int(x·f + 0.5).
    public static func rescaledSize(width w: Int, height h: Int, shortSide s: Int) -> (width: Int, height: Int) {
        let f = min(2048.0 / Double(max(w, h)), Double(s) / Double(min(w, h)))
        return (max(1, Int(Double(w) * f + 0.5)), max(1, Int(Double(h) * f + 0.5)))
    }

    /// Window placement of SCLIP / NACLIP `forward_slide`.
    public static func windows(height h: Int, width w: Int, window c: Int, stride s: Int) -> [(y1: Int, x1: Int, y2: Int, x2: Int)] {
        let hg = max(h - c + s - 1, 0) / s + 1, wg = max(w - c + s - 1, 0) / s + 1
        var out: [(Int, Int, Int, Int)] = []
        for hi in 0..<hg {
            for wi in 0..<wg {
                var y1 = hi * s, x1 = wi * s
                let y2 = min(y1 + c, h), x2 = min(x1 + c, w)
                y1 = max(y2 - c, 0); x1 = max(x2 - c, 0)
                out.append((y1, x1, y2, x2))
            }
        }
        return out
    }

    /// Segments one image with the given query embeddings (from `queryEmbeddings`).
    ///
    /// Memory stays bounded for large images and many classes: the averaged window logits are kept
    /// at the rescaled size; the original size is worked in column tiles swept top to bottom
    /// (`labelFullResolution`, TiledRefinement.swift), each tile widened by PAMR's reach
    /// (iterations x largest dilation) so that its interior equals the whole-image computation bit
    /// for bit, and queries are taken as many at a time as the memory budget allows (at most
    /// `queryChunk` when given). Each pixel keeps only its best query and a running log-sum-exp:
    /// softmax then max over a class's names equals the softmax value of the class's best name, so
    /// labels and winning values are those of `finish(logits:...)` on the full [Q, H, W] logits (see
    /// the test `streamedSegmentEqualsFullLogits`). The full [C, H, W] scores are built only when
    /// `wantScores` is set (4 bytes x classes x pixels).
    public func segment(_ image: RGBImage, classes set: ClassSet, queries: [[Float]], wantScores: Bool = false,
                        queryChunk: Int? = nil) throws -> SegmentationResult {
        let budget = enterThreads(threads)
        defer { budget.leave() }
        guard queries.count == set.queries.count else {
            throw ZeroSegError("\(queries.count) query embeddings for \(set.queries.count) class names")
        }
        var timings: [String: Double] = [:]
        let win = try windowLogits(image, queries: queries, set: set, timings: &timings)
        var clock = Stopwatch()
        let (h, w) = (image.height, image.width)
        var settings = FullResolutionSettings(scale: options.logitScale, threshold: options.threshold,
                                              iterations: options.refine == .pamr ? options.pamrIterations : 0,
                                              dilations: options.pamrDilations, wantScores: wantScores, threads: threads)
        settings.maxQueriesPerPass = queryChunk
        let out = try win.normalised.withUnsafeBufferPointer { norm in
            try labelFullResolution(logits: UnsafePointer(win.logits.ptr), guide: norm.baseAddress!, rescaledHeight: win.height,
                                    rescaledWidth: win.width, height: h, width: w, owners: set.queries.map(\.owner),
                                    classes: set.classes.count, settings: settings)
        }
        withExtendedLifetime(win.logits) {}
        clock.lap("full_resolution", into: &timings)
        var result = SegmentationResult(width: w, height: h, labels: out.labels, scores: out.scores,
                                        areaFraction: out.area, meanScore: out.mean, timings: timings)
        result.fullResolutionBytes = out.bufferBytes
        return result
    }

    /// PAMR for an image: guide = the normalised rescaled image bilinearly resized to the original size.
    func makePAMR(_ norm: [Float], rescaledWidth ws: Int, rescaledHeight hs: Int, width w: Int, height h: Int) throws -> PAMR {
        var guide = [Float](repeating: 0, count: 3 * h * w)
        norm.withUnsafeBufferPointer { src in
            guide.withUnsafeMutableBufferPointer { resizeBilinearCHW(src.baseAddress!, channels: 3, height: hs, width: ws, $0.baseAddress!, outHeight: h, outWidth: w) }
        }
        return try PAMR(guide: guide, height: h, width: w, dilations: options.pamrDilations, threads: threads)
    }

    /// Logits at the original size (averaged windows, then refined): everything before the softmax.
    /// `set`: the class set of the queries (image-conditioned heads calibrate seen classes with it).
    public func logits(_ image: RGBImage, queries: [[Float]], set: ClassSet? = nil, keepRaw: Bool = true) throws -> SegmentationInternals {
        let budget = enterThreads(threads)
        defer { budget.leave() }
        var t: [String: Double] = [:]
        return try logits(image, queries: queries, set: set, keepRaw: keepRaw, timings: &t).0
    }

    /// Averaged window logits at the rescaled size: logits [Q, Hs, Ws], the normalised rescaled
    /// image [3, Hs, Ws] and the windows.
    struct WindowLogits {
        let logits: Buffer
        let normalised: [Float]
        let width: Int, height: Int
        let windows: [(y1: Int, x1: Int, y2: Int, x2: Int)]
        /// With `collectFeatures`: the windows' patch embeddings averaged on the rescaled image's
        /// patch grid (a patch counts for the cell holding its centre).
        var features: FeatureGrid? = nil
    }

    /// `applyPrompts`: pass the patch embeddings through the learned prompts' adapter (if any).
    func windowLogits(_ image: RGBImage, queries: [[Float]], set: ClassSet? = nil, collectFeatures: Bool = false, applyPrompts: Bool = true,
                      timings: inout [String: Double]) throws -> WindowLogits {
        guard !queries.isEmpty else { throw ZeroSegError("no queries") }
        let o = options, p = model.config.vision.patchSize
        var clock = Stopwatch()
        func lap(_ name: String) { clock.lap(name, into: &timings) }
        // Rescale (float bilinear) and normalise: [3, Hs, Ws].
        let (ws, hs) = Self.rescaledSize(width: image.width, height: image.height, shortSide: o.shortSide)
        let resized = (ws == image.width && hs == image.height) ? image : try resizeBilinear(image, width: ws, height: hs)
        let pre = try CLIPPreprocessor(size: model.preprocessor.shortestEdge, cropSize: model.preprocessor.cropSize,
                                   mean: model.preprocessor.mean, std: model.preprocessor.std)
        let norm = pre.normalizeOnly(resized)
        guard hs >= p, ws >= p else {
            throw ZeroSegError("image of \(image.width)x\(image.height) rescales to \(ws)x\(hs), smaller than one \(p)-pixel patch")
        }
        lap("preprocess")
        let q = queries.count, dim = model.config.projectionDim
        let qbuf = Buffer(queries.flatMap { $0 })  // [Q, P]
        let preds = Buffer(zeros: q * hs * ws)      // [Q, Hs, Ws]
        let wins: [(y1: Int, x1: Int, y2: Int, x2: Int)]
        if o.useWindows {
            wins = Self.windows(height: hs, width: ws, window: o.window, stride: o.stride)
        } else {
            wins = [(0, 0, hs, ws)]
        }
        let count = Buffer(zeros: hs * ws)
        let fgh = max(1, hs / p), fgw = max(1, ws / p)
        var featSum = collectFeatures ? [Float](repeating: 0, count: fgh * fgw * dim) : []
        var featCount = collectFeatures ? [Int](repeating: 0, count: fgh * fgw) : []
        // Windows of one size are encoded together, in batches.
        var i = 0
        while i < wins.count {
            let (ch, cw) = (wins[i].y2 - wins[i].y1, wins[i].x2 - wins[i].x1)
            var j = i
            while j < wins.count && j - i < max(1, o.windowBatch) && wins[j].y2 - wins[j].y1 == ch && wins[j].x2 - wins[j].x1 == cw { j += 1 }
            let nb = j - i
            let px = Buffer(nb * 3 * ch * cw)
            for (bi, win) in wins[i..<j].enumerated() {
                for c in 0..<3 {
                    for y in 0..<ch {
                        norm.withUnsafeBufferPointer { src in
                            (px.ptr + ((bi * 3 + c) * ch + y) * cw).update(from: src.baseAddress! + (c * hs + win.y1 + y) * ws + win.x1, count: cw)
                        }
                    }
                }
            }
            // An image-conditioned head scores the windows itself (its own prompted encoder);
            // otherwise: dense patch embeddings (through the linear head's adapter) against the queries.
            let scored = applyPrompts ? try prompts?.scoreWindows(pixels: px.ptr, batch: nb, height: ch, width: cw, queries: queries,
                                                                  set: set, model: model, threads: threads) : nil
            let emb: Buffer, gh: Int, gw: Int
            if let scored {
                (emb, gh, gw) = (scored.patches, scored.gridHeight, scored.gridWidth)
            } else {
                (emb, gh, gw) = try model.densePatchEmbeddings(pixels: px.ptr, batch: nb, height: ch, width: cw,
                                                               method: o.method, gaussianStd: o.gaussianStd, threads: threads)
                if applyPrompts, let prompts { prompts.adaptPatchEmbeddings(emb.ptr, rows: nb * gh * gw) }
            }
            lap("image_encoder")
            let g = gh * gw
            let lg = Buffer(q * g), up = Buffer(q * ch * cw)
            for (bi, win) in wins[i..<j].enumerated() {
                if let scored {
                    lg.ptr.update(from: scored.scores.ptr + bi * q * g, count: q * g)  // [Q, g] of this window
                } else {
                    // lg[Q, g] = queries · patchesᵀ
                    gemmNT(qbuf.ptr, lda: dim, emb.ptr + bi * g * dim, ldb: dim, lg.ptr, ldc: g, m: q, n: g, k: dim)
                }
                resizeBilinearCHW(lg.ptr, channels: q, height: gh, width: gw, up.ptr, outHeight: ch, outWidth: cw)
                for c in 0..<q {
                    for y in 0..<ch {
                        let dst = preds.ptr + (c * hs + win.y1 + y) * ws + win.x1, src = up.ptr + (c * ch + y) * cw
                        for x in 0..<cw { dst[x] += src[x] }
                    }
                }
                for y in win.y1..<win.y2 { for x in win.x1..<win.x2 { count.ptr[y * ws + x] += 1 } }
                if collectFeatures {
                    for py in 0..<gh {
                        for px in 0..<gw {
                            let cy = min(fgh - 1, (win.y1 + py * p + p / 2) / p), cx = min(fgw - 1, (win.x1 + px * p + p / 2) / p)
                            let cell = cy * fgw + cx, src = emb.ptr + (bi * g + py * gw + px) * dim
                            featCount[cell] += 1
                            for d in 0..<dim { featSum[cell * dim + d] += src[d] }
                        }
                    }
                }
            }
            withExtendedLifetime((px, emb, lg, up)) {}
            lap("head")
            i = j
        }
        for c in 0..<q { for k in 0..<(hs * ws) { preds.ptr[c * hs * ws + k] /= count.ptr[k] } }
        withExtendedLifetime((qbuf, count)) {}
        var result = WindowLogits(logits: preds, normalised: norm, width: ws, height: hs, windows: wins)
        if collectFeatures {
            for (cell, n) in featCount.enumerated() where n > 1 {
                for d in 0..<dim { featSum[cell * dim + d] /= Float(n) }
            }
            result.features = try FeatureGrid(height: fgh, width: fgw, dim: dim, data: featSum)
        }
        return result
    }

    func logits(_ image: RGBImage, queries: [[Float]], set: ClassSet?, keepRaw: Bool, timings: inout [String: Double]) throws -> (SegmentationInternals, [String: Double]) {
        let win = try windowLogits(image, queries: queries, set: set, timings: &timings)
        let (raw, refined) = try originalSizeLogits(win, image: image, keepRaw: keepRaw, timings: &timings)
        let internals = SegmentationInternals(rawLogits: raw, refinedLogits: refined, rescaled: win.normalised,
                                              rescaledWidth: win.width, rescaledHeight: win.height, windows: win.windows)
        return (internals, timings)
    }

    /// Window logits resized to the original size [Q, H, W] and, with PAMR, refined (`raw` is
    /// then emptied unless `keepRaw`).
    func originalSizeLogits(_ win: WindowLogits, image: RGBImage, keepRaw: Bool, timings: inout [String: Double]) throws -> (raw: [Float], refined: [Float]?) {
        var clock = Stopwatch()
        func lap(_ name: String) { clock.lap(name, into: &timings) }
        let q = win.logits.count / (win.height * win.width), (h, w) = (image.height, image.width)
        var raw = [Float](repeating: 0, count: q * h * w)
        raw.withUnsafeMutableBufferPointer { resizeBilinearCHW(win.logits.ptr, channels: q, height: win.height, width: win.width, $0.baseAddress!, outHeight: h, outWidth: w) }
        lap("head")
        var refined: [Float]? = nil
        if options.refine == .pamr {
            let pamr = try makePAMR(win.normalised, rescaledWidth: win.width, rescaledHeight: win.height, width: w, height: h)
            refined = try pamr.refine(raw, channels: q, iterations: options.pamrIterations, threads: threads)
            if !keepRaw { raw = [] }
            lap("refine")
        }
        withExtendedLifetime(win.logits) {}
        return (raw, refined)
    }

    /// The dense-feature grid of an image (the windows' patch embeddings, without learned prompts'
    /// adapter), for prompt tuning.
    public func featureGrid(_ image: RGBImage) throws -> FeatureGrid {
        let budget = enterThreads(threads)
        defer { budget.leave() }
        var t: [String: Double] = [:]
        let q = [[Float](repeating: 0, count: model.config.projectionDim)]
        return try windowLogits(image, queries: q, collectFeatures: true, applyPrompts: false, timings: &t).features!
    }

    /// Logits [Q, H, W] at the original size (refined when PAMR is on) and the dense-feature grid
    /// of the same pass (for two-stage proposals and mask pooling).
    public func logitsAndFeatures(_ image: RGBImage, queries: [[Float]], set: ClassSet? = nil, timings: inout [String: Double]) throws -> ([Float], FeatureGrid) {
        let budget = enterThreads(threads)
        defer { budget.leave() }
        let win = try windowLogits(image, queries: queries, set: set, collectFeatures: true, timings: &timings)
        let (raw, refined) = try originalSizeLogits(win, image: image, keepRaw: false, timings: &timings)
        return (refined ?? raw, win.features!)
    }

    /// Scores and labels from logits [Q, H, W]: ×logit scale, softmax over queries, max over each
    /// class's names, argmax; background or below-threshold pixels → 255. Throws unless
    /// logits.count == queries × w × h.
    public func finish(logits: [Float], width w: Int, height h: Int, set: ClassSet, wantScores: Bool) throws
        -> (labels: [UInt8], scores: [Float]?, area: [Double], mean: [Double]) {
        let nc = set.classes.count, hasBg = !set.background.isEmpty, rows = nc + (hasBg ? 1 : 0)
        let hw = h * w
        let p = try classProbabilities(logits: logits, pixels: hw, owners: set.queries.map(\.owner), rows: rows, scale: options.logitScale)
        let labels = try labelPixels(p, rows: rows, pixels: hw, classes: nc, hasBackground: hasBg, threshold: options.threshold)
        let (area, mean) = try labelAreas(labels, probabilities: p, classes: nc, pixels: hw)
        return (labels, wantScores ? Array(p[0..<(nc * hw)]) : nil, area, mean)
    }
}

/// Bilinear resize of x[C, H, W] to out[C, OH, OW] as torch's `interpolate(mode="bilinear",
/// align_corners=False)` with an output size.
public func resizeBilinearCHW(_ x: ConstFloatPtr, channels: Int, height h: Int, width w: Int,
                              _ out: FloatPtr, outHeight oh: Int, outWidth ow: Int) {
    let (x0, x1, lx0, lx1) = bilinearTaps(input: w, output: ow)
    let (y0s, y1s, ly0s, ly1s) = bilinearTaps(input: h, output: oh)
    // hot loop: unchecked via unsafe buffer pointers
    x0.withUnsafeBufferPointer { x0 in x1.withUnsafeBufferPointer { x1 in
    lx0.withUnsafeBufferPointer { lx0 in lx1.withUnsafeBufferPointer { lx1 in
        for oy in 0..<oh {
            let (y0, y1, ly0, ly1) = (y0s[oy], y1s[oy], ly0s[oy], ly1s[oy])
            for c in 0..<channels {
                let r0 = x + (c * h + y0) * w, r1 = x + (c * h + y1) * w, o = out + (c * oh + oy) * ow
                for ox in 0..<ow {
                    o[ox] = ly0 * (lx0[ox] * r0[x0[ox]] + lx1[ox] * r0[x1[ox]]) + ly1 * (lx0[ox] * r1[x0[ox]] + lx1[ox] * r1[x1[ox]])
                }
            }
        }
    } }
    } }
}

/// Source taps of torch's bilinear resampling (align_corners=False) along one axis: for each output
/// index, the two input indices (clamped) and their weights.
package func bilinearTaps(input n: Int, output on: Int) -> (i0: [Int], i1: [Int], l0: [Float], l1: [Float]) {
    let scale = Float(n) / Float(on)
    var i0 = [Int](repeating: 0, count: on), i1 = i0
    var l0 = [Float](repeating: 0, count: on), l1 = l0
    for o in 0..<on {
        let src = max(scale * (Float(o) + 0.5) - 0.5, 0)
        let a = min(Int(src), n - 1)
        i0[o] = a; i1[o] = a + (a < n - 1 ? 1 : 0)
        l1[o] = src - Float(a); l0[o] = 1 - l1[o]
    }
    return (i0, i1, l0, l1)
}
