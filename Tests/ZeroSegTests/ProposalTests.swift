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
import ZeroSegTestSupport

// Class-agnostic mask proposals: Lab conversion, SLIC through VLFeat, the hierarchical merge
// (by colour and by features), spherical k-means, finalize, and masks on disk. Synthetic
// pictures and feature grids whose right answer is known.

/// A picture whose pixel (x, y) has colour `colour(region(x, y))` plus uniform noise in
/// [-noise, noise] (clamped to 0...255).
private func regionImage(width w: Int, height h: Int, noise: Float, seed: UInt64,
                         region: (Int, Int) -> Int, colour: (Int) -> (Float, Float, Float)) -> RGBImage {
    let n = randomFloats(w * h * 3, seed: seed)
    var px = [Float](repeating: 0, count: w * h * 3)
    for y in 0..<h {
        for x in 0..<w {
            let c = colour(region(x, y))
            let i = (y * w + x) * 3
            px[i] = max(0, min(255, c.0 + noise * n[i]))
            px[i + 1] = max(0, min(255, c.1 + noise * n[i + 1]))
            px[i + 2] = max(0, min(255, c.2 + noise * n[i + 2]))
        }
    }
    return try! RGBImage(width: w, height: h, pixels: px)
}

/// The mask of the pixels where `inside(x, y)`.
private func mask(width w: Int, height h: Int, source: String = "test", _ inside: (Int, Int) -> Bool) -> ProposalMask {
    var bits = [UInt8](repeating: 0, count: w * h)
    for y in 0..<h { for x in 0..<w where inside(x, y) { bits[y * w + x] = 1 } }
    return try! ProposalMask(width: w, height: h, bits: bits, source: source)
}

/// A gh x gw feature grid: cell (gy, gx) holds basis vector `cluster(gy, gx)` plus noise.
private func clusterGrid(height gh: Int, width gw: Int, dim: Int, noise: Float, seed: UInt64,
                         cluster: (Int, Int) -> Int) -> FeatureGrid {
    let n = randomFloats(gh * gw * dim, seed: seed)
    var data = [Float](repeating: 0, count: gh * gw * dim)
    for gy in 0..<gh {
        for gx in 0..<gw {
            let r = gy * gw + gx
            for j in 0..<dim { data[r * dim + j] = noise * n[r * dim + j] }
            data[r * dim + cluster(gy, gx)] += 1
        }
    }
    return try! FeatureGrid(height: gh, width: gw, dim: dim, data: data)
}

/// The best IoU of `target` with any of `masks`, and that mask's index.
private func bestMatch(_ target: ProposalMask, in masks: [ProposalMask]) -> (iou: Double, index: Int) {
    var best = (iou: 0.0, index: -1)
    for (i, m) in masks.enumerated() {
        let v = try! target.iou(with: m)
        if v > best.iou { best = (v, i) }
    }
    return best
}

@Suite struct ProposalTests {
    // MARK: Lab

    @Test func labKnownValues() throws {
        // Reference values: the standard sRGB (D65) -> CIE Lab formulas (e.g. colormine / Lindbloom).
        let cases: [((Float, Float, Float), (Float, Float, Float))] = [
            ((255, 255, 255), (100, 0, 0)),
            ((0, 0, 0), (0, 0, 0)),
            ((255, 0, 0), (53.2408, 80.0925, 67.2032)),
            ((0, 255, 0), (87.7347, -86.1827, 83.1793)),
            ((0, 0, 255), (32.2970, 79.1875, -107.8602)),
            ((128, 128, 128), (53.5850, 0, 0)),
        ]
        for (rgb, want) in cases {
            let got = srgbToLab(rgb.0, rgb.1, rgb.2)
            #expect(abs(got.l - want.0) < 0.01 && abs(got.a - want.1) < 0.01 && abs(got.b - want.2) < 0.01,
                    "\(rgb) -> \(got), want \(want)")
        }
        // Planar layout [3, H, W].
        let img = try RGBImage(width: 2, height: 1, pixels: [255, 255, 255, 255, 0, 0])
        let planes = labPlanes(img)
        #expect(abs(planes[0] - 100) < 0.01 && abs(planes[1] - 53.2408) < 0.01)
        #expect(abs(planes[2]) < 0.01 && abs(planes[3] - 80.0925) < 0.01 && abs(planes[5] - 67.2032) < 0.01)
    }

    // MARK: SLIC

    /// Four quadrants of very different colours, split off the superpixel grid (x = 30, y = 25).
    static func quadrant(_ x: Int, _ y: Int) -> Int { (y < 25 ? 0 : 2) + (x < 30 ? 0 : 1) }
    static let quadrants: RGBImage = {
        let colours: [(Float, Float, Float)] = [(220, 30, 30), (30, 200, 40), (40, 50, 220), (240, 230, 60)]
        return regionImage(width: 72, height: 56, noise: 6, seed: 11, region: quadrant) { colours[$0] }
    }()

    @Test func slicSuperpixelsRespectRegionsAndAreContiguous() throws {
        let (img, region) = (Self.quadrants, Self.quadrant)
        let sp = try slicSuperpixels(img)
        let w = img.width, h = img.height
        #expect(sp.count > 50 && sp.count < 600, "\(sp.count) superpixels")
        // Labels 0..<count, each one 4-connected region.
        #expect(sp.labels.allSatisfy { $0 >= 0 && Int($0) < sp.count })
        #expect(try connectedComponents(sp.labels, width: w, height: h).count == sp.count)
        #expect(sp.areas.reduce(0, +) == w * h && sp.areas.allSatisfy { $0 > 0 })
        // No superpixel straddles two quadrants.
        var counts = [[Int]](repeating: [0, 0, 0, 0], count: sp.count)
        for y in 0..<h { for x in 0..<w { counts[Int(sp.labels[y * w + x])][region(x, y)] += 1 } }
        for (r, c) in counts.enumerated() {
            let total = c.reduce(0, +)
            #expect(Double(c.max()!) >= 0.95 * Double(total), "superpixel \(r): \(c)")
        }
        // Deterministic.
        #expect(try slicSuperpixels(img) == sp)
    }

    @Test func slicVLFeatLayoutIsRowMajor() throws {
        // A picture much wider than tall, left third black, rest white: if width and height were
        // swapped for VLFeat, superpixels would cross the vertical edge.
        let img = regionImage(width: 60, height: 12, noise: 0, seed: 1, region: { x, _ in x < 20 ? 0 : 1 }) {
            $0 == 0 ? (0, 0, 0) : (255, 255, 255)
        }
        let sp = try slicSuperpixels(img, parameters: SLICParameters(regionSize: 6))
        var left = Set<Int32>(), right = Set<Int32>()
        for y in 0..<12 { for x in 0..<60 { if x < 20 { left.insert(sp.labels[y * 60 + x]) } else { right.insert(sp.labels[y * 60 + x]) } } }
        #expect(left.isDisjoint(with: right))
        // About one superpixel per 6x6 seed tile (10 x 2, a few more where the edge cuts a
        // tile), each compact: no longer than two tiles either way.
        #expect(sp.count >= 16 && sp.count <= 30, "\(sp.count) superpixels")
        var box = [PixelBox](repeating: PixelBox(x0: 60, y0: 12, x1: 0, y1: 0), count: sp.count)
        for y in 0..<12 {
            for x in 0..<60 {
                let r = Int(sp.labels[y * 60 + x])
                box[r] = PixelBox(x0: min(box[r].x0, x), y0: min(box[r].y0, y), x1: max(box[r].x1, x + 1), y1: max(box[r].y1, y + 1))
            }
        }
        #expect(box.allSatisfy { $0.width <= 12 && $0.height <= 12 }, "\(box.filter { $0.width > 12 || $0.height > 12 })")
    }

    @Test func slicProposalsRecoverColourRegions() throws {
        let (img, region) = (Self.quadrants, Self.quadrant)
        let w = img.width, h = img.height
        let targets = (0..<4).map { q in mask(width: w, height: h) { region($0, $1) == q } }
        for masks in [try SLICProposals().propose(img, features: nil),
                      try SLICProposals(linkage: .mean).propose(img, features: nil),
                      try proposals(image: img, features: nil, source: .slic)] {
            var matched: [Int] = []
            for (q, t) in targets.enumerated() {
                let best = bestMatch(t, in: masks)
                #expect(best.iou >= 0.9, "quadrant \(q): best IoU \(best.iou)")
                matched.append(best.index)
            }
            #expect(Set(matched).count == 4, "the quadrants are separate masks")
        }
    }

    // MARK: Features

    /// 8x8 grid, dim 6: left half cluster 0, right half cluster 1.
    static let halves = clusterGrid(height: 8, width: 8, dim: 6, noise: 0.15, seed: 21) { _, gx in gx < 4 ? 0 : 1 }

    @Test func kMeansRecoversTwoHalves() throws {
        let g = Self.halves
        let r = try sphericalKMeans(g.data, count: 64, dim: 6, k: 2, seed: 3)
        #expect(r.converged)
        let left = r.assignments[0]
        for gy in 0..<8 {
            for gx in 0..<8 { #expect(r.assignments[gy * 8 + gx] == (gx < 4 ? left : 1 - left), "cell \(gy),\(gx)") }
        }
        // Centroids are unit vectors near e0 and e1.
        for c in 0..<2 {
            let v = Array(r.centroids[c * 6..<(c + 1) * 6])
            let norm = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
            #expect(abs(norm - 1) < 1e-5)
            #expect(v[c == left ? 0 : 1] > 0.9)
        }
        #expect(try sphericalKMeans(g.data, count: 64, dim: 6, k: 2, seed: 3) == r)
    }

    @Test func kMeansProposalsMatchFeatureHalves() throws {
        let (w, h) = (64, 64)
        let img = regionImage(width: w, height: h, noise: 3, seed: 5, region: { _, _ in 0 }) { _ in (128, 128, 128) }
        let masks = try KMeansProposals().propose(img, features: Self.halves)
        #expect(!masks.isEmpty && masks.allSatisfy { $0.source.hasPrefix("kmeans:k=") })
        let left = mask(width: w, height: h) { x, _ in x < 32 }, right = mask(width: w, height: h) { x, _ in x >= 32 }
        let k2 = masks.filter { $0.source == "kmeans:k=2" }
        #expect(bestMatch(left, in: k2).iou >= 0.9)
        #expect(bestMatch(right, in: k2).iou >= 0.9)
        // Unsnapped, the grid mapping alone gives the halves exactly.
        let raw = try KMeansProposals(ks: [2], snapToSuperpixels: false).propose(img, features: Self.halves)
        #expect(raw.count == 2 && bestMatch(left, in: raw).iou == 1 && bestMatch(right, in: raw).iou == 1)
        #expect(throws: ZeroSegError.self) { try KMeansProposals().propose(img, features: nil) }
        #expect(throws: ZeroSegError.self) { try proposals(image: img, features: nil, source: .both) }
    }

    @Test func slicMergeFollowsFeaturesOverColour() throws {
        // Colour says top/bottom (mildly), the features say left/right.
        let (w, h) = (64, 64)
        let img = regionImage(width: w, height: h, noise: 3, seed: 6, region: { _, y in y < 32 ? 0 : 1 }) {
            $0 == 0 ? (110, 110, 110) : (150, 150, 150)
        }
        let left = mask(width: w, height: h) { x, _ in x < 32 }, right = mask(width: w, height: h) { x, _ in x >= 32 }
        let top = mask(width: w, height: h) { _, y in y < 32 }, bottom = mask(width: w, height: h) { _, y in y >= 32 }
        for linkage in MergeLinkage.allCases {
            let gen = SLICProposals(linkage: linkage)
            let withFeatures = try gen.propose(img, features: Self.halves).filter { $0.source == "slic-merge:2" }
            #expect(withFeatures.count == 2, "\(linkage)")
            #expect(bestMatch(left, in: withFeatures).iou >= 0.9 && bestMatch(right, in: withFeatures).iou >= 0.9, "\(linkage)")
            let byColour = try gen.propose(img, features: nil).filter { $0.source == "slic-merge:2" }
            #expect(byColour.count == 2, "\(linkage)")
            #expect(bestMatch(top, in: byColour).iou >= 0.9 && bestMatch(bottom, in: byColour).iou >= 0.9, "\(linkage)")
        }
    }

    @Test func proposalsAreDeterministic() throws {
        let img = Self.quadrants
        let grid = clusterGrid(height: 7, width: 9, dim: 5, noise: 0.3, seed: 8) { gy, gx in (gy * 3 + gx) % 4 }
        let a = try proposals(image: img, features: grid, source: .both)
        let b = try proposals(image: img, features: grid, source: .both)
        #expect(!a.isEmpty && a.count <= 50)
        #expect(a == b)
        #expect(Set(a.map { $0.source.prefix(5) }) == ["slic-", "kmean"])
        #expect(try SLICProposals().propose(img, features: grid) == SLICProposals().propose(img, features: grid))
    }

    // MARK: finalize

    @Test func finalizeFiltersDedupesAndCaps() throws {
        let (w, h) = (64, 64)  // 4096 pixels; default min area max(16, 9) = 16
        #expect(ProposalSettings.defaultMinArea(width: w, height: h) == 16)
        #expect(ProposalSettings.defaultMinArea(width: 480, height: 360) == 346)
        let big1 = mask(width: w, height: h, source: "big1") { x, _ in x < 32 }           // 2048: octave 1
        let big1b = mask(width: w, height: h, source: "big1b") { x, y in x < 32 && y > 2 }  // IoU 61/64 with big1
        let big2 = mask(width: w, height: h, source: "big2") { x, _ in x >= 32 }
        let med1 = mask(width: w, height: h, source: "med1") { x, y in x < 16 && y < 32 }   // 512: octave 3
        let med2 = mask(width: w, height: h, source: "med2") { x, y in x >= 48 && y >= 32 }
        let small1 = mask(width: w, height: h, source: "small1") { x, y in x < 8 && y < 16 }  // 128: octave 5
        let small2 = mask(width: w, height: h, source: "small2") { x, y in x >= 56 && y >= 48 }
        let tiny = mask(width: w, height: h, source: "tiny") { x, y in x < 3 && y < 3 }       // 9 < 16
        let empty = mask(width: w, height: h, source: "empty") { _, _ in false }
        #expect(try big1.iou(with: big1b) > 0.9)
        let input = [big1, big1b, big2, med1, med2, small1, small2, tiny, empty]

        let all = finalize(input, settings: ProposalSettings(maxProposals: 100))
        #expect(all.map(\.source) == ["big1", "med1", "small1", "big2", "med2", "small2"])
        let capped = finalize(input, settings: ProposalSettings(maxProposals: 4))
        #expect(capped.map(\.source) == ["big1", "med1", "small1", "big2"])
        #expect(finalize(input, settings: ProposalSettings(maxProposals: 0)).isEmpty)
        // minArea and the IoU threshold are settings.
        let strict = finalize(input, settings: ProposalSettings(maxProposals: 100, minArea: 200))
        #expect(Set(strict.map(\.source)) == ["big1", "big2", "med1", "med2"])
        let loose = finalize(input, settings: ProposalSettings(maxProposals: 100, minArea: 1, dedupeIoU: 0.99))
        #expect(loose.map(\.source).contains("big1b") && loose.map(\.source).contains("tiny"))
        #expect(!loose.map(\.source).contains("empty"))
    }

    @Test func maskBasics() throws {
        let m = mask(width: 10, height: 8) { x, y in (2..<5).contains(x) && (3..<7).contains(y) }
        #expect(m.area == 12 && m.bbox == PixelBox(x0: 2, y0: 3, x1: 5, y1: 7))
        let n = try ProposalMask(width: 10, height: 8, bits: m.bits.map { $0 * 200 }, source: "x")
        #expect(try n.bits == m.bits && n.iou(with: m) == 1)
        let o = mask(width: 10, height: 8) { x, y in (4..<8).contains(x) && (3..<7).contains(y) }
        #expect(try abs(m.iou(with: o) - 4.0 / 24.0) < 1e-12)
        let e = mask(width: 10, height: 8) { _, _ in false }
        #expect(try e.area == 0 && e.bbox.isEmpty && e.iou(with: e) == 0 && e.iou(with: m) == 0)
    }

    @Test func proposalSourceParses() throws {
        #expect(try ProposalSource.parse("slic") == .slic)
        #expect(try ProposalSource.parse("kmeans") == .kmeans)
        #expect(try ProposalSource.parse("both") == .both)
        #expect(throws: ZeroSegError.self) { try ProposalSource.parse("sam") }
    }

    // MARK: Mask I/O

    @Test func maskFilesRoundTrip() throws {
        let dir = temporaryDirectory().appendingPathComponent("masks")
        let (w, h) = (20, 15)
        let masks = [
            mask(width: w, height: h, source: "a") { x, _ in x < 7 },
            mask(width: w, height: h, source: "b") { x, y in x + y < 10 },
            mask(width: w, height: h, source: "c") { x, y in (x * y) % 3 == 1 },
        ]
        let names = try writeProposalMasks(masks, to: dir)
        #expect(names == ["000.png", "001.png", "002.png"])
        let raw = try readRawPNG(dir.appendingPathComponent("001.png"))
        #expect(raw.colorType == 0 && raw.bitDepth == 8 && raw.width == w && raw.height == h)
        #expect(raw.samples == masks[1].bits.map { $0 * 255 })
        let back = try readProposalMasks(from: dir, width: w, height: h)
        #expect(back.map(\.bits) == masks.map(\.bits))
        #expect(back.map(\.source) == ["file:000.png", "file:001.png", "file:002.png"])
        #expect(back.map(\.area) == masks.map(\.area) && back.map(\.bbox) == masks.map(\.bbox))

        let summary = proposalSummaries(masks)
        #expect(summary.map(\.file) == names && summary[1].area == masks[1].area && summary[2].source == "c")
        #expect(summary[0].bbox == [0, 0, 7, 15])
        let json = try JSONSerialization.data(withJSONObject: summary.map(\.json))
        #expect(String(decoding: json, as: UTF8.self).contains("\"file\":\"000.png\""))

        // Fewer masks later: stale 002.png stays unless asked to go.
        try writeProposalMasks(Array(masks.prefix(2)), to: dir)
        #expect(try readProposalMasks(from: dir, width: w, height: h).count == 3)
        try writeProposalMasks(Array(masks.prefix(2)), to: dir, removingStale: true)
        #expect(try readProposalMasks(from: dir, width: w, height: h).count == 2)
        #expect(proposalMaskFileName(7, count: 1001) == "0007.png")
    }

    @Test func maskFilesInOtherFormats() throws {
        let dir = temporaryDirectory()
        let (w, h) = (9, 5)
        // RGB: any non-zero channel is inside.
        var px = [Float](repeating: 0, count: w * h * 3)
        px[3 * 4 + 2] = 1; px[3 * 10] = 255
        try writeRGBPNG(RGBImage(width: w, height: h, pixels: px), to: dir.appendingPathComponent("a.png"))
        // Palette: index 0 black (outside), 1 coloured (inside).
        var labels = [UInt8](repeating: 0, count: w * h)
        labels[0] = 1; labels[44] = 1
        try writeLabelPNG(labels: labels, width: w, height: h, palette: [(0, 0, 0), (200, 10, 10)],
                          to: dir.appendingPathComponent("b.PNG"))
        try Data("not a mask".utf8).write(to: dir.appendingPathComponent("notes.txt"))
        let masks = try readProposalMasks(from: dir, width: w, height: h)
        #expect(masks.map(\.source) == ["file:a.png", "file:b.PNG"])
        #expect(masks[0].area == 2 && masks[0].bits[4] == 1 && masks[0].bits[10] == 1)
        #expect(masks[1].area == 2 && masks[1].bits[0] == 1 && masks[1].bits[44] == 1)
    }

    @Test func maskFolderErrors() throws {
        let dir = temporaryDirectory()
        // Empty folder.
        do {
            _ = try readProposalMasks(from: dir, width: 4, height: 4)
            Issue.record("an empty folder must be an error")
        } catch let e as ZeroSegError {
            #expect(e.message.contains(dir.path) && !e.message.contains("\n"))
        }
        // Size mismatch names the file.
        try writeProposalMasks([mask(width: 5, height: 4) { x, _ in x < 2 }], to: dir)
        do {
            _ = try readProposalMasks(from: dir, width: 4, height: 4)
            Issue.record("a size mismatch must be an error")
        } catch let e as ZeroSegError {
            #expect(e.message.contains("000.png") && e.message.contains("5x4") && !e.message.contains("\n"))
        }
        // An unreadable (corrupt) file names the file.
        try Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 1, 2, 3]).write(to: dir.appendingPathComponent("001.png"))
        do {
            _ = try readProposalMasks(from: dir, width: 5, height: 4)
            Issue.record("a corrupt file must be an error")
        } catch let e as ZeroSegError {
            #expect(e.message.contains("001.png") && !e.message.contains("\n"))
        }
        // A missing folder.
        #expect(throws: ZeroSegError.self) {
            try readProposalMasks(from: dir.appendingPathComponent("missing"), width: 5, height: 4)
        }
    }

    // MARK: Kernels

    @Test func pointCentroidSimilaritiesMatchReference() {
        let (n, k, dim) = (37, 5, 19)
        let p = randomFloats(n * dim, seed: 31), c = randomFloats(k * dim, seed: 32)
        var fast = [Float](repeating: 0, count: n * k), ref = fast
        pointCentroidSimilarities(p, c, &fast, n: n, k: k, dim: dim)
        pointCentroidSimilaritiesReference(p, c, &ref, n: n, k: k, dim: dim)
        #expect(maxAbsDiff(fast, ref) < 1e-5)
    }
}
