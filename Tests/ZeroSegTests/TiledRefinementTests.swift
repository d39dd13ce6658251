import Foundation
import Testing
import CKernels
import ZeroSeg
import ZeroSegTestSupport
@testable import ZeroSegSegmentation

/// The tiled full-resolution stage (TiledRefinement.swift) against the whole-image computation it
/// replaces: equal bit for bit (labels, scores, areas, mean scores), for any tiling, number of
/// passes over the queries and thread count; and its memory accounting on large images and many
/// classes.
@Suite struct TiledRefinementTests {
    /// The whole-image computation as `Segmenter.segment` did it before tiling: logits [Q, H, W]
    /// (resized, refined by `PAMR` on the resized guide), then per pixel, queries in order, the best
    /// query and a running log-sum-exp; labels, winning values and areas in raster order.
    static func wholeImage(logits: [Float], guide: [Float], hs: Int, ws: Int, h: Int, w: Int, owners: [Int], classes nc: Int,
                           settings s: FullResolutionSettings) throws -> (labels: [UInt8], scores: [Float]?, area: [Double], mean: [Double]) {
        let q = owners.count, hw = h * w
        var raw = [Float](repeating: 0, count: q * hw)
        logits.withUnsafeBufferPointer { l in
            raw.withUnsafeMutableBufferPointer { resizeBilinearCHW(l.baseAddress!, channels: q, height: hs, width: ws, $0.baseAddress!, outHeight: h, outWidth: w) }
        }
        if s.iterations > 0 {
            var g = [Float](repeating: 0, count: 3 * hw)
            guide.withUnsafeBufferPointer { src in
                g.withUnsafeMutableBufferPointer { resizeBilinearCHW(src.baseAddress!, channels: 3, height: hs, width: ws, $0.baseAddress!, outHeight: h, outWidth: w) }
            }
            let pamr = try PAMR(guide: g, height: h, width: w, dilations: s.dilations, threads: 2)
            raw = try pamr.refine(raw, channels: q, iterations: s.iterations, threads: 2)
        }
        var best = [Float](repeating: -.infinity, count: hw), owner = [UInt8](repeating: 0, count: hw)
        var lseMax = [Float](repeating: -.infinity, count: hw), lseSum = [Float](repeating: 0, count: hw)
        var classMax: [Float]? = s.wantScores ? [Float](repeating: -.infinity, count: nc * hw) : nil
        for k in 0..<q {
            let o = owners[k]
            for px in 0..<hw {
                let v = raw[k * hw + px] * s.scale
                if v > best[px] { best[px] = v; owner[px] = UInt8(o) }
                if v > lseMax[px] { lseSum[px] = lseSum[px] * expf(lseMax[px] - v) + 1; lseMax[px] = v }
                else { lseSum[px] += expf(v - lseMax[px]) }
            }
            if o < nc, classMax != nil {
                for px in 0..<hw { let v = raw[k * hw + px] * s.scale; if v > classMax![o * hw + px] { classMax![o * hw + px] = v } }
            }
        }
        var labels = [UInt8](repeating: 255, count: hw)
        var area = [Double](repeating: 0, count: nc), sum = [Double](repeating: 0, count: nc)
        for px in 0..<hw {
            let o = Int(owner[px])
            let value = expf(best[px] - lseMax[px]) / lseSum[px]
            if o < nc && value >= s.threshold { labels[px] = UInt8(o); area[o] += 1; sum[o] += Double(value) }
        }
        if var cm = classMax {
            for c in 0..<nc { for px in 0..<hw { cm[c * hw + px] = expf(cm[c * hw + px] - lseMax[px]) / lseSum[px] } }
            classMax = cm
        }
        return (labels, classMax, area.map { $0 / Double(hw) }, zip(sum, area).map { $1 > 0 ? $0 / $1 : 0 })
    }

    struct Case: CustomStringConvertible, Sendable {
        var h: Int, w: Int, hs: Int, ws: Int, iterations: Int, dilations: [Int], threshold: Float
        var description: String { "\(w)x\(h) from \(ws)x\(hs), \(iterations) x \(dilations), threshold \(threshold)" }
    }

    static let cases: [Case] = [
        Case(h: 97, w: 150, hs: 13, ws: 20, iterations: 3, dilations: [8, 16], threshold: 0),      // halo 48: inner edges in every tiling
        Case(h: 61, w: 203, hs: 17, ws: 29, iterations: 4, dilations: [1, 3, 5], threshold: 0.3),  // three dilations, threshold
        Case(h: 23, w: 37, hs: 9, ws: 11, iterations: 2, dilations: [40], threshold: 0),            // dilation past the image: all clamped
        Case(h: 40, w: 90, hs: 40, ws: 90, iterations: 0, dilations: [8, 16], threshold: 0.2),       // no refinement, same size
        Case(h: 30, w: 64, hs: 45, ws: 70, iterations: 1, dilations: [2], threshold: 0),             // downscaling
    ]

    /// Every tiling, pass size, phase length and thread count gives the whole-image result bit for bit.
    @Test(arguments: TiledRefinementTests.cases)
    func tiledEqualsWholeImage(_ c: Case) throws {
        let owners = [0, 1, 1, 2, 3, 0, 4, 2, 4]  // class 4 = background (nc = 4)
        let nc = 4, q = owners.count
        let logits = randomFloats(q * c.hs * c.ws, seed: 11).map { $0 * 0.3 }
        // A guide with edges (blocks) and noise, as an image would be.
        let noise = randomFloats(3 * c.hs * c.ws, seed: 12)
        let guide = (0..<(3 * c.hs * c.ws)).map { i -> Float in
            let x = (i % c.ws) / 4, y = (i / c.ws % c.hs) / 3
            return Float((x + y) % 3) - 1 + 0.2 * noise[i]
        }
        for wantScores in [false, true] {
            var s = FullResolutionSettings(scale: 40, threshold: c.threshold, iterations: c.iterations, dilations: c.dilations,
                                           wantScores: wantScores, threads: 2)
            let want = try Self.wholeImage(logits: logits, guide: guide, hs: c.hs, ws: c.ws, h: c.h, w: c.w, owners: owners,
                                           classes: nc, settings: s)
            #expect(Set(want.labels).count >= 3, "\(c): a case with several labels")
            for tiles in [1, 2, 3, 7] {
                for perPass in [nil, 1, 4] as [Int?] {
                    for (threads, phaseRows) in [(1, 64), (3, 1), (2, 7)] {
                        s.tiles = tiles; s.maxQueriesPerPass = perPass; s.threads = threads; s.phaseRows = phaseRows
                        let got = try logits.withUnsafeBufferPointer { l in
                            try guide.withUnsafeBufferPointer { g in
                                try labelFullResolution(logits: l.baseAddress!, guide: g.baseAddress!, rescaledHeight: c.hs, rescaledWidth: c.ws,
                                                        height: c.h, width: c.w, owners: owners, classes: nc, settings: s)
                            }
                        }
                        let what = "\(c), \(tiles) tiles, \(perPass.map(String.init) ?? "all") queries a pass, \(threads) threads, phases of \(phaseRows) rows, scores \(wantScores)"
                        #expect(got.labels == want.labels, "\(what): labels")
                        #expect(got.area == want.area && got.mean == want.mean, "\(what): areas \(got.area) \(want.area), means \(got.mean) \(want.mean)")
                        #expect(got.scores == want.scores, "\(what): scores")
                        #expect(got.tiles == min(tiles, c.w))
                        #expect(got.passes == (q + (perPass ?? q) - 1) / (perPass ?? q))
                    }
                }
            }
        }
    }

    /// `Segmenter.segment` on a picture with the tiny model: labels, areas, mean scores and scores
    /// equal to the whole-image computation on the logits `Segmenter.logits` gives (refined by
    /// `PAMR` over the whole picture), bit for bit, at 1 and 2 threads.
    @Test func segmentEqualsWholeImage() throws {
        var o = SegmentationOptions()
        o.shortSide = 48; o.window = 32; o.stride = 16; o.threshold = 0.2
        let model = try CLIPModel(directory: GoldenModelTests.tinyDir)
        let img = try resizeBilinear(try RGBImage.load(repoRoot.appendingPathComponent("examples/chelsea.jpg")), width: 400, height: 260)
        let set = try ClassSet.parse("cat,grass|lawn,wall,dog", background: "sky,floor")
        for threads in [1, 2] {
            let seg = try Segmenter(model: model, options: o, threads: threads)
            let q = try seg.queryEmbeddings(set, templates: ["a photo of a {}."])
            let internals = try seg.logits(img, queries: q, keepRaw: false)
            let refined = try #require(internals.refinedLogits)
            // The whole-image state loop on the refined logits (no further refinement).
            let s = FullResolutionSettings(scale: o.logitScale, threshold: o.threshold, iterations: 0, dilations: [], wantScores: true, threads: 1)
            let want = try Self.wholeImage(logits: refined, guide: [], hs: img.height, ws: img.width, h: img.height, w: img.width,
                                           owners: set.queries.map(\.owner), classes: set.classes.count, settings: s)
            let r = try seg.segment(img, classes: set, queries: q, wantScores: true)
            #expect(r.labels == want.labels, "\(threads) threads: \(zip(r.labels, want.labels).filter { $0 != $1 }.count) labels differ")
            #expect(r.areaFraction == want.area && r.meanScore == want.mean)
            #expect(r.scores == want.scores)
            #expect(r.fullResolutionBytes > 0)
        }
    }

    /// The AVX2 build of the PAMR row kernel equals the portable one bit for bit.
    @Test func pamrRowKernelBuildsAgree() throws {
        let n = 45, np = 16
        for nc in [1, 3, 4, 6] {
            let aff = randomFloats(np * n, seed: 3), src = randomFloats(nc * np * n, seed: 4)
            func run(_ level: KernelLevel) -> [Float] {
                var out = [Float](repeating: .nan, count: nc * n)
                aff.withUnsafeBufferPointer { a in src.withUnsafeBufferPointer { s in out.withUnsafeMutableBufferPointer { o in
                    let rows: [UnsafePointer<Float>?] = (0..<(nc * np)).map { s.baseAddress! + $0 * n }
                    let outs: [FloatPtr?] = (0..<nc).map { o.baseAddress! + $0 * n }
                    rows.withUnsafeBufferPointer { r in outs.withUnsafeBufferPointer { ob in
                        zs_pamr_row_at(level == .portable ? 0 : 1, r.baseAddress!, a.baseAddress!, n, ob.baseAddress!, Int32(nc), Int32(np), n)
                    } }
                } } }
                return out
            }
            var want = [Float](repeating: 0, count: nc * n)
            for c in 0..<nc { for x in 0..<n { var r: Float = 0; for p in 0..<np { r += aff[p * n + x] * src[(c * np + p) * n + x] }; want[c * n + x] = r } }
            #expect(run(.portable) == want)
            if KernelLevel.avx2.isSupported { #expect(run(.avx2) == want) }
        }
    }

    /// Memory of the full-resolution stage (its own accounting): linear in the pixels at a few bytes
    /// each, not in classes x pixels; 1,000 classes in passes within the ring budget.
    @Test func buffersDoNotGrowWithClassesTimesPixels() throws {
        let (hs, ws, h, w) = (12, 16, 180, 240)
        let hw = h * w
        let guide = randomFloats(3 * hs * ws, seed: 5)
        func run(_ q: Int, budget: Int) throws -> FullResolutionOutput {
            let owners = (0..<q).map { $0 % 200 }
            let logits = randomFloats(q * hs * ws, seed: 6)
            var s = FullResolutionSettings(scale: 40, threshold: 0, iterations: 10, dilations: [8, 16], wantScores: false, threads: 2)
            s.ringBudget = budget
            return try logits.withUnsafeBufferPointer { l in
                try guide.withUnsafeBufferPointer { g in
                    try labelFullResolution(logits: l.baseAddress!, guide: g.baseAddress!, rescaledHeight: hs, rescaledWidth: ws,
                                            height: h, width: w, owners: owners, classes: 200, settings: s)
                }
            }
        }
        let budget = 24 << 20
        let few = try run(11, budget: budget), many = try run(1000, budget: budget)
        #expect(few.passes == 1 && many.passes > 1)
        // Stated limit: at most 1 byte a pixel (labels) + 13 with several passes (per-pixel state)
        // + the ring budget + fixed rows per tile (affinities, guide, a phase's winning values): here 30 MB.
        let limit = 14 * hw + budget + (30 << 20)
        #expect(many.bufferBytes <= limit, "\(many.bufferBytes) bytes for 1000 classes")
        #expect(few.bufferBytes <= limit)
        #expect(many.bufferBytes < 1000 * hw * 4 / 4, "well below 1,000 names x pixels floats")
        #expect(many.labels.count == hw)
    }

    /// The accounting of a 50 MP photo (8700 x 5800) with 11 classes and of a 12 MP one at the
    /// default settings: the stated limits (the picture itself, 12 bytes a pixel as float RGB,
    /// comes on top; docs/reliability.md).
    @Test func largePhotoPlansStayWithinLimits() {
        let s = FullResolutionSettings(scale: 40, threshold: 0, iterations: 10, dilations: [8, 16], wantScores: false, threads: 2)
        let p50 = fullResolutionPlan(width: 8700, height: 5800, queries: 11, classes: 11, settings: s)
        #expect(p50.passes == 1)
        #expect(p50.bytes <= 300 << 20, "50 MP: \(p50.bytes) bytes")
        let p12 = fullResolutionPlan(width: 4000, height: 3000, queries: 11, classes: 11, settings: s)
        #expect(p12.bytes <= 130 << 20, "12 MP: \(p12.bytes) bytes")
        let many = fullResolutionPlan(width: 4000, height: 3000, queries: 1000, classes: 1000, settings: s)
        #expect(many.bytes <= 380 << 20, "12 MP, 1000 classes: \(many.bytes) bytes")
    }
}
