import Dispatch
import Foundation
import CKernels
import ZeroSegCore

// The full-resolution stage of one-stage segmentation, in column tiles swept top to bottom, so that
// nothing of size [queries, H, W] (upsampled logits, PAMR affinities, refined logits) exists at once.
//
// Today's computation (`Segmenter.originalSizeLogits` + `finish`, or `segment` before tiling):
//   raw[q] = bilinear(window logits[q]) at H x W; guide = bilinear(normalised rescaled image);
//   aff = PAMR affinities of the guide; K times: m <- sum_p aff_p * shift_p(m) (borders replicated);
//   per pixel, queries in order: best logit, owner, running log-sum-exp; label = owner where the
//   winning probability reaches the threshold.
// Every value at a pixel is a function of the inputs within a bounded reach: the bilinear taps
// (global, per output row and column), the affinity (guide within D = the largest dilation), each
// PAMR iteration (the previous one within D). After K iterations the reach is K·D: the halo.
//
// Exactness. A tile computes on its columns widened by the halo (clipped to the image), clamping
// at its own edges. Clamping at an edge that is the image's edge is the full computation's; at an
// inner edge it is wrong, and the wrong values spread D columns per iteration (and D for the
// affinity, which only feeds iteration 1 onwards): after K iterations the columns at least K·D
// from an inner edge, the tile's interior, hold the full-image values. Every value is computed by
// the same operations in the same order as the full-image code (the bilinear blend split as
// ly0·(horizontal of row y0) + ly1·(horizontal of row y1), which is how the full blend groups
// them; the PAMR sum over neighbours in order from 0; the affinity per pixel as `PAMR`), so the
// interior is equal bit for bit, not merely close (tests: `TiledRefinementTests`).
//
// Rows are not tiled: the sweep keeps, for each iteration level, a ring of the 2D+1 rows the next
// level reads, and the affinities of the (K-1)·D+1 rows still to be used; level t of row y is
// computed at step y + t·D, once. The tiles advance together in phases of `phaseRows` finished
// rows; after each phase the winning values of its rows (kept in a ring of that many rows, not for
// the whole picture) are summed into the areas and mean scores in raster order. Queries are taken in passes of as many as the memory budget
// allows (one pass for usual class counts); with several passes the per-pixel running state
// (best, owner, log-sum-exp: 13 bytes a pixel) is kept for the whole image.

/// The settings of the full-resolution stage.
struct FullResolutionSettings {
    var scale: Float
    var threshold: Float
    /// PAMR iterations (0: no refinement) and dilations.
    var iterations: Int
    var dilations: [Int]
    var wantScores: Bool
    var threads: Int
    /// At most this many queries per pass (nil: as the budget allows).
    var maxQueriesPerPass: Int? = nil
    /// Bytes the iteration rings of all tiles may take together in one pass (at least one query is
    /// taken per pass whatever this says).
    var ringBudget: Int = 160 << 20
    /// Column tiles (nil: chosen from the threads and the halo).
    var tiles: Int? = nil
    /// Finished rows per phase: the tiles meet after each, and the winning values of that many
    /// rows are kept (4 bytes x width each) for the raster-order sums.
    var phaseRows: Int = 64

    /// K·D: how far (in pixels) a refined value depends on the upsampled logits and the guide.
    var halo: Int { iterations * maxDilation }
    var maxDilation: Int { dilations.map { abs($0) }.max() ?? 0 }
}

/// What the full-resolution stage returns.
struct FullResolutionOutput {
    /// [H, W] class index, 255 = background or below the threshold.
    var labels: [UInt8]
    /// [C, H, W] class probabilities when asked.
    var scores: [Float]?
    var area: [Double], mean: [Double]
    /// The stage's own accounting: the bytes of its buffers alive at once at the most (labels,
    /// winning values, scores, per-pixel state, the tiles' rings and scratch).
    var bufferBytes: Int
    var tiles: Int, passes: Int
}

/// Column tiles: interior [c0, c1), computed on [x0, x1) = interior widened by the halo.
struct ColumnTile { let c0: Int, c1: Int, x0: Int, x1: Int }

func columnTiles(width w: Int, halo: Int, count: Int) -> [ColumnTile] {
    let n = max(1, min(count, w))
    return (0..<n).map { i in
        let c0 = w * i / n, c1 = w * (i + 1) / n
        return ColumnTile(c0: c0, c1: c1, x0: max(0, c0 - halo), x1: min(w, c1 + halo))
    }
}

/// How the full-resolution stage of an H x W picture with `queries` queries is worked: column
/// tiles, queries per pass and passes, and the bytes of its buffers alive at once at the most
/// (`FullResolutionOutput.bufferBytes`): labels (1 byte a pixel), the winning values of one phase's
/// rows (4 bytes x width x `phaseRows`), scores when
/// asked (4 x classes a pixel), the per-pixel state with several passes (13 a pixel), and per tile
/// the guide's and affinities' rows (fixed) and each query's rows (within the ring budget).
func fullResolutionPlan(width w: Int, height h: Int, queries q: Int, classes nc: Int, settings s: FullResolutionSettings)
    -> (tiles: [ColumnTile], queriesPerPass: Int, passes: Int, bytes: Int) {
    let halo = s.halo, d = s.maxDilation, k = s.iterations, hw = h * w, np = 8 * s.dilations.count
    let tiles = columnTiles(width: w, halo: halo, count: s.tiles ?? max(1, min(s.threads, w / max(64, 2 * halo))))
    // Per query of one tile: the levels 0..<K (2D+1 padded rows each), the last level's row, the
    // horizontal cache (2 rows).
    func perQuery(_ t: ColumnTile) -> Int {
        let tw = t.x1 - t.x0, pw = tw + 2 * d
        return 4 * (max(k, 1) * (k >= 1 ? 2 * d + 1 : 1) * pw + tw + 2 * tw)
    }
    // Per tile: guide ring, affinity ring, the guide's horizontal cache, scratch, one row of state.
    func fixed(_ t: ColumnTile) -> Int {
        let tw = t.x1 - t.x0, pw = tw + 2 * d
        let aff = k >= 1 ? ((k - 1) * d + 1) * np * tw : 0
        return 4 * ((k >= 1 ? 2 * d + 1 : 1) * 3 * pw + aff + 2 * 3 * tw + 6 * tw + 4 * (t.c1 - t.c0))
    }
    let perQueryAll = tiles.map(perQuery).reduce(0, +)
    var chunk = max(1, min(q, s.ringBudget / max(1, perQueryAll)))
    if let m = s.maxQueriesPerPass { chunk = max(1, min(chunk, m)) }
    let passes = (q + chunk - 1) / chunk
    let bytes = hw + 4 * w * min(h, max(1, s.phaseRows)) + (s.wantScores ? 4 * nc * hw : 0) + (passes > 1 ? 13 * hw : 0)
        + tiles.map(fixed).reduce(0, +) + chunk * perQueryAll
    return (tiles, chunk, passes, bytes)
}

/// Labels (and scores) at the original size from window logits [Q, Hs, Ws] and the normalised
/// rescaled image [3, Hs, Ws], equal bit for bit to the untiled computation (see the top of the file).
/// owners[q]: the class of query q (nc = background). Throws for inconsistent sizes.
func labelFullResolution(logits: ConstFloatPtr, guide: ConstFloatPtr, rescaledHeight hs: Int, rescaledWidth ws: Int,
                         height h: Int, width w: Int, owners: [Int], classes nc: Int,
                         settings s: FullResolutionSettings) throws -> FullResolutionOutput {
    let q = owners.count, hw = h * w
    guard h >= 1, w >= 1, hs >= 1, ws >= 1, q >= 1, nc >= 0, nc <= 255, owners.allSatisfy({ (0...nc).contains($0) }),
          s.iterations >= 0 else {
        throw ZeroSegError("full-resolution stage: \(q) queries (owners \(owners)) for \(nc) classes, \(hs)x\(ws) -> \(h)x\(w), \(s.iterations) iterations")
    }
    let d = s.maxDilation, k = s.iterations
    let plan = fullResolutionPlan(width: w, height: h, queries: q, classes: nc, settings: s)
    let (tiles, chunk, passes) = (plan.tiles, plan.queriesPerPass, plan.passes)

    var labels = [UInt8](repeating: 255, count: hw)
    let phase = min(h, max(1, s.phaseRows))
    var values = [Float](repeating: 0, count: phase * w)  // winning probability of labelled pixels, rows y % phase
    var area = [Double](repeating: 0, count: nc), sum = [Double](repeating: 0, count: nc)
    var scores: [Float]? = s.wantScores ? [Float](repeating: -.infinity, count: nc * hw) : nil  // running class max, then probabilities
    // Per-pixel state over passes (several passes only).
    var best = [Float](), lseMax = [Float](), lseSum = [Float](), owner = [UInt8]()
    if passes > 1 {
        best = [Float](repeating: -.infinity, count: hw); lseMax = best
        lseSum = [Float](repeating: 0, count: hw); owner = [UInt8](repeating: 0, count: hw)
    }
    let tx = bilinearTaps(input: ws, output: w), ty = bilinearTaps(input: hs, output: h)
    let geometry = SweepGeometry(hs: hs, ws: ws, h: h, w: w, d: d, iterations: k, dilations: s.dilations, tx: tx, ty: ty)
    labels.withUnsafeMutableBufferPointer { lb in
        values.withUnsafeMutableBufferPointer { vb in
            withOptionalPointer(&scores) { sp in
                best.withUnsafeMutableBufferPointer { bb in lseMax.withUnsafeMutableBufferPointer { mb in
                lseSum.withUnsafeMutableBufferPointer { sb in owner.withUnsafeMutableBufferPointer { ob in
                    let several = passes > 1  // (an empty array may still have a base address)
                    let out = SweepOutputs(labels: lb.baseAddress!, values: vb.baseAddress!, valueRows: phase, scores: sp,
                                           best: several ? bb.baseAddress : nil, lseMax: several ? mb.baseAddress : nil,
                                           lseSum: several ? sb.baseAddress : nil, owner: several ? ob.baseAddress : nil)
                    for pass in 0..<passes {
                        let q0 = pass * chunk, q1 = min(q, q0 + chunk)
                        let job = SweepJob(logits: logits, guide: guide, owners: Array(owners[q0..<q1]), q0: q0, first: pass == 0,
                                           last: pass == passes - 1, classes: nc, scale: s.scale, threshold: s.threshold)
                        let sweeps = tiles.map { TileSweep($0, geometry, job) }
                        for y0 in stride(from: 0, to: h, by: phase) {
                            let y1 = min(h, y0 + phase)
                            nonisolated(unsafe) let (sw, o) = (sweeps, out)
                            DispatchQueue.concurrentPerform(iterations: sw.count) { ti in sw[ti].run(finishing: y1, out: o) }
                            // Areas and mean winning probabilities in raster order (as the untiled code sums them).
                            if job.last { sumPhase(rows: y0..<y1, width: w, classes: nc, labels: lb, values: vb, area: &area, sum: &sum) }
                        }
                    }
                } }
                } }
            }
        }
    }
    return FullResolutionOutput(labels: labels, scores: scores, area: area.map { $0 / Double(hw) },
                                mean: zip(sum, area).map { $1 > 0 ? $0 / $1 : 0 }, bufferBytes: plan.bytes,
                                tiles: tiles.count, passes: passes)
}

/// Adds rows [y0, y1) to the areas and sums of winning values, pixels in raster order; values: the
/// ring of phase rows (row y at y % (its rows)).
private func sumPhase(rows: Range<Int>, width w: Int, classes nc: Int, labels: UnsafeMutableBufferPointer<UInt8>,
                      values: UnsafeMutableBufferPointer<Float>, area: inout [Double], sum: inout [Double]) {
    let ringRows = values.count / w
    // hot loop: unchecked via unsafe buffer pointers
    area.withUnsafeMutableBufferPointer { area in sum.withUnsafeMutableBufferPointer { sum in
        for y in rows {
            let lr = labels.baseAddress! + y * w, vr = values.baseAddress! + (y % ringRows) * w
            for x in 0..<w where Int(lr[x]) < nc {
                let o = Int(lr[x])
                area[o] += 1
                sum[o] += Double(vr[x])
            }
        }
    } }
}

private func withOptionalPointer<R>(_ a: inout [Float]?, _ body: (FloatPtr?) throws -> R) rethrows -> R {
    if a == nil { return try body(nil) }
    return try a!.withUnsafeMutableBufferPointer { try body($0.baseAddress!) }
}

/// Sizes, taps and offsets shared by every tile.
struct SweepGeometry {
    let hs: Int, ws: Int, h: Int, w: Int
    /// Largest dilation (the padding of stored rows) and PAMR iterations.
    let d: Int, iterations: Int
    /// Neighbours (dy, dx) in `PAMR`'s order, and the 9 positions per dilation of the local std.
    let offsets: [(Int, Int)], stdOffsets: [(Int, Int)]
    let tx: (i0: [Int], i1: [Int], l0: [Float], l1: [Float]), ty: (i0: [Int], i1: [Int], l0: [Float], l1: [Float])

    init(hs: Int, ws: Int, h: Int, w: Int, d: Int, iterations: Int, dilations: [Int],
         tx: (i0: [Int], i1: [Int], l0: [Float], l1: [Float]), ty: (i0: [Int], i1: [Int], l0: [Float], l1: [Float])) {
        (self.hs, self.ws, self.h, self.w, self.d, self.iterations) = (hs, ws, h, w, d, iterations)
        let ring = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
        offsets = dilations.flatMap { dd in ring.map { ($0.0 * dd, $0.1 * dd) } }
        stdOffsets = dilations.flatMap { dd in [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1)].map { ($0.0 * dd, $0.1 * dd) } }
        (self.tx, self.ty) = (tx, ty)
    }
}

/// One pass: queries [q0, q0 + owners.count).
struct SweepJob {
    let logits: ConstFloatPtr, guide: ConstFloatPtr
    let owners: [Int]
    let q0: Int
    /// First pass: the per-pixel state starts here; last pass: rows are finished (labels, scores).
    let first: Bool, last: Bool
    let classes: Int
    let scale: Float, threshold: Float
}

/// Where tiles write (each its interior columns only). best...owner: the whole image's state with
/// several passes, nil with one (each tile keeps a row of it).
struct SweepOutputs {
    /// values: a ring of `valueRows` rows (row y at y % valueRows), each the image's width.
    let labels: UnsafeMutablePointer<UInt8>, values: FloatPtr, valueRows: Int, scores: FloatPtr?
    let best: FloatPtr?, lseMax: FloatPtr?, lseSum: FloatPtr?, owner: UnsafeMutablePointer<UInt8>?
}

/// Rows of `channels` maps of padded width `pw`, `slots` of them, row y in slot y % slots.
struct RowRing {
    let slots: Int, channels: Int, pw: Int
    let data: FloatPtr
    init(slots: Int, channels: Int, pw: Int) {
        (self.slots, self.channels, self.pw) = (slots, channels, pw)
        data = FloatPtr.allocate(capacity: max(1, slots * channels * pw))
    }
    func free() { data.deallocate() }
    /// Channel c of row y, at its first padded column.
    @inline(__always) func row(_ y: Int, _ c: Int) -> FloatPtr { data + ((y % slots) * channels + c) * pw }
    /// Replicates the first and last of the `pw - 2 pad` values into the `pad` columns each side.
    @inline(__always) func pad(_ y: Int, _ c: Int, _ p: Int) {
        guard p > 0 else { return }
        let r = row(y, c), n = pw - 2 * p
        r.update(repeating: r[p], count: p)
        (r + p + n).update(repeating: r[p + n - 1], count: p)
    }
}

/// The horizontal half of the bilinear resize for the tile's columns, for the last two source rows
/// asked: hrow[ch][x] = lx0[x]·src[ch][r][x0[x]] + lx1[x]·src[ch][r][x1[x]] (x: tile columns).
struct HorizontalCache {
    let channels: Int, tw: Int, x0: Int
    let data: FloatPtr          // [2, channels, tw]
    var rowOf = [-1, -1]
    init(channels: Int, tw: Int, x0: Int) {
        (self.channels, self.tw, self.x0) = (channels, tw, x0)
        data = FloatPtr.allocate(capacity: max(1, 2 * channels * tw))
    }
    func free() { data.deallocate() }

    /// The slot holding source row r of src [channels, hs, ws] (computed when not cached; `keep`:
    /// the slot not to overwrite).
    mutating func slot(_ r: Int, keep: Int, src: ConstFloatPtr, g: SweepGeometry) -> Int {
        if rowOf[0] == r { return 0 }
        if rowOf[1] == r { return 1 }
        let s = keep == 0 ? 1 : 0
        rowOf[s] = r
        // hot loop: unchecked via unsafe buffer pointers
        g.tx.i0.withUnsafeBufferPointer { i0 in g.tx.i1.withUnsafeBufferPointer { i1 in
        g.tx.l0.withUnsafeBufferPointer { l0 in g.tx.l1.withUnsafeBufferPointer { l1 in
            for c in 0..<channels {
                let sr = src + (c * g.hs + r) * g.ws, o = data + (s * channels + c) * tw
                for x in 0..<tw {
                    let gx = x0 + x
                    o[x] = l0[gx] * sr[i0[gx]] + l1[gx] * sr[i1[gx]]
                }
            }
        } }
        } }
        return s
    }

    /// out[c][x] = ly0 · h(y0)[c][x] + ly1 · h(y1)[c][x] for output row y (torch's bilinear grouping).
    mutating func resizedRow(_ y: Int, src: ConstFloatPtr, g: SweepGeometry, out: (Int) -> FloatPtr) {
        let r0 = g.ty.i0[y], r1 = g.ty.i1[y], ly0 = g.ty.l0[y], ly1 = g.ty.l1[y]
        let s0 = slot(r0, keep: rowOf[1] == r1 ? 1 : (rowOf[0] == r1 ? 0 : -1), src: src, g: g)
        let s1 = slot(r1, keep: s0, src: src, g: g)
        for c in 0..<channels {
            let h0 = data + (s0 * channels + c) * tw, h1 = data + (s1 * channels + c) * tw, o = out(c)
            // hot loop: unchecked pointers
            for x in 0..<tw { o[x] = ly0 * h0[x] + ly1 * h1[x] }
        }
    }
}

/// One tile, one pass: the sweep described at the top of the file, advanced phase by phase
/// (`run(finishing:out:)`); its rings live as long as the pass.
final class TileSweep: @unchecked Sendable {  // each used by one thread at a time (one phase, one tile)
    let t: ColumnTile, g: SweepGeometry, j: SweepJob
    let tw: Int, iw: Int, ix: Int, qc: Int, np: Int, ns: Int, refine: Bool
    // Rings: guide (3 channels), levels 0..<K, affinities; the last level's row.
    let guideRing: RowRing, levels: [RowRing], affRing: RowRing
    let final: FloatPtr
    var hLogits: HorizontalCache, hGuide: HorizontalCache
    let scratch: FloatPtr       // mean, ss, denom, max, sum: [tw] each
    let rowState: FloatPtr      // best, lseMax, lseSum of one row (one pass)
    let rowOwner: UnsafeMutablePointer<UInt8>
    var srcRows: [UnsafePointer<Float>?], outRows: [FloatPtr?]
    let logits: ConstFloatPtr
    /// The next step of the sweep.
    private(set) var step = 0

    init(_ t: ColumnTile, _ g: SweepGeometry, _ j: SweepJob) {
        (self.t, self.g, self.j) = (t, g, j)
        let d = g.d, k = g.iterations
        tw = t.x1 - t.x0; iw = t.c1 - t.c0; ix = t.c0 - t.x0
        let pw = tw + 2 * d
        qc = j.owners.count; np = g.offsets.count; ns = g.stdOffsets.count
        refine = k >= 1
        guideRing = RowRing(slots: refine ? 2 * d + 1 : 1, channels: 3, pw: pw)
        let (qc, refine) = (qc, refine)
        levels = (0..<max(k, 1)).map { _ in RowRing(slots: refine ? 2 * d + 1 : 1, channels: qc, pw: pw) }
        affRing = RowRing(slots: refine ? (k - 1) * d + 1 : 1, channels: max(np, 1), pw: tw)
        final = FloatPtr.allocate(capacity: qc * tw)
        hLogits = HorizontalCache(channels: qc, tw: tw, x0: t.x0); hGuide = HorizontalCache(channels: 3, tw: tw, x0: t.x0)
        scratch = FloatPtr.allocate(capacity: 6 * tw)
        rowState = FloatPtr.allocate(capacity: 3 * iw)
        rowOwner = UnsafeMutablePointer<UInt8>.allocate(capacity: iw)
        srcRows = [UnsafePointer<Float>?](repeating: nil, count: max(1, qc * np))
        outRows = [FloatPtr?](repeating: nil, count: qc)
        logits = j.logits + j.q0 * g.hs * g.ws
    }

    deinit {
        guideRing.free(); levels.forEach { $0.free() }; affRing.free(); final.deallocate()
        hLogits.free(); hGuide.free(); scratch.deallocate(); rowState.deallocate(); rowOwner.deallocate()
    }

    /// Runs the steps that finish rows up to (not including) `yEnd`.
    func run(finishing yEnd: Int, out: SweepOutputs) {
        let lastStep = min(g.h + g.iterations * g.d, refine ? yEnd + g.iterations * g.d : yEnd)
        while step < lastStep {
            advance(step, out)
            step += 1
        }
    }

    private func advance(_ s: Int, _ out: SweepOutputs) {
        let (h, d, k) = (g.h, g.d, g.iterations)
        if s < h {
            if refine { hGuide.resizedRow(s, src: j.guide, g: g) { self.guideRing.row(s, $0) + d }; for c in 0..<3 { guideRing.pad(s, c, d) } }
            hLogits.resizedRow(s, src: logits, g: g) { self.levels[0].row(s, $0) + d }
            for c in 0..<qc { levels[0].pad(s, c, d) }
        }
        guard refine else {
            // No refinement: the resized logits are the final ones.
            if s < h { finishRow(s, t, g, j, out, rows: { self.levels[0].row(s, $0) + d + self.ix }, iw: iw, state: rowState, owner: rowOwner) }
            return
        }
        let ya = s - d
        if ya >= 0 && ya < h {
            affinityRow(ya, guide: guideRing, g: g, d: d, tw: tw, ns: ns, out: affRing.row(ya, 0), scratch: scratch)
        }
        for lv in 1...k {
            let y = s - lv * d
            guard y >= 0 && y < h else { continue }
            let src = levels[lv - 1]
            for c in 0..<qc {
                for (p, (dy, dx)) in g.offsets.enumerated() {
                    srcRows[c * np + p] = UnsafePointer(src.row(min(max(y + dy, 0), h - 1), c) + d + dx)
                }
                outRows[c] = lv < k ? levels[lv].row(y, c) + d : final + c * tw
            }
            let (qc, np, tw, a) = (qc, np, tw, affRing.row(y, 0))
            srcRows.withUnsafeBufferPointer { sr in outRows.withUnsafeBufferPointer { orows in
                zs_pamr_row(sr.baseAddress!, a, tw, orows.baseAddress!, Int32(qc), Int32(np), tw)
            } }
            if lv < k { for c in 0..<qc { levels[lv].pad(y, c, d) } }
        }
        let yl = s - k * d
        if yl >= 0 && yl < h {
            finishRow(yl, t, g, j, out, rows: { self.final + $0 * self.tw + self.ix }, iw: iw, state: rowState, owner: rowOwner)
        }
    }
}

/// PAMR's affinities of image row y over the tile's columns, as `PAMR.affinityRows` computes each
/// pixel (same operations, same order): out[p][x] for p < 8·dilations, x < tw. guide: the ring of
/// padded guide rows (rows y - D...y + D present).
func affinityRow(_ y: Int, guide: RowRing, g: SweepGeometry, d: Int, tw: Int, ns: Int, out: FloatPtr, scratch: FloatPtr) {
    let h = g.h, np = g.offsets.count
    let mean = scratch, ss = scratch + tw, den = scratch + 2 * tw, mx = scratch + 3 * tw, sum = scratch + 4 * tw
    func at(_ c: Int, _ dy: Int, _ dx: Int) -> UnsafePointer<Float> { UnsafePointer(guide.row(min(max(y + dy, 0), h - 1), c) + d + dx) }
    out.update(repeating: 0, count: np * tw)
    // hot loops: unchecked via unsafe pointers; per pixel the operations of PAMR.affinityRows
    for c in 0..<3 {
        mean.update(repeating: 0, count: tw)
        for (dy, dx) in g.stdOffsets { let v = at(c, dy, dx); for x in 0..<tw { mean[x] += v[x] } }
        let n = Float(ns)
        for x in 0..<tw { mean[x] /= n }
        ss.update(repeating: 0, count: tw)
        for (dy, dx) in g.stdOffsets { let v = at(c, dy, dx); for x in 0..<tw { ss[x] += (v[x] - mean[x]) * (v[x] - mean[x]) } }
        let n1 = Float(ns - 1)
        for x in 0..<tw { let std = (ss[x] / n1).squareRoot(); den[x] = 1e-8 + 0.1 * std }
        let centre = at(c, 0, 0)
        for (p, (dy, dx)) in g.offsets.enumerated() {
            let nb = at(c, dy, dx), o = out + p * tw
            for x in 0..<tw { o[x] += -abs(centre[x] - nb[x]) / den[x] }
        }
    }
    let kf = Float(3)
    mx.update(repeating: -.infinity, count: tw)
    for p in 0..<np { let o = out + p * tw; for x in 0..<tw { o[x] /= kf; mx[x] = max(mx[x], o[x]) } }
    sum.update(repeating: 0, count: tw)
    for p in 0..<np { let o = out + p * tw; for x in 0..<tw { o[x] = expf(o[x] - mx[x]); sum[x] += o[x] } }
    for p in 0..<np { let o = out + p * tw; for x in 0..<tw { o[x] /= sum[x] } }
}

/// Row y's final logits of this pass's queries (rows(k) + x for the tile's interior columns x < iw)
/// into the per-pixel state, queries in order (as `Segmenter.segment` before tiling); on the last
/// pass, the row's labels, winning values and scores.
func finishRow(_ y: Int, _ t: ColumnTile, _ g: SweepGeometry, _ j: SweepJob, _ out: SweepOutputs,
               rows: (Int) -> FloatPtr, iw: Int, state: FloatPtr, owner rowOwner: UnsafeMutablePointer<UInt8>) {
    let w = g.w, hw = g.h * g.w, px0 = y * w + t.c0, nc = j.classes, scale = j.scale
    let best: FloatPtr, lseMax: FloatPtr, lseSum: FloatPtr, owner: UnsafeMutablePointer<UInt8>
    if let b = out.best, let m = out.lseMax, let s = out.lseSum, let o = out.owner {
        (best, lseMax, lseSum, owner) = (b + px0, m + px0, s + px0, o + px0)
    } else {
        (best, lseMax, lseSum, owner) = (state, state + iw, state + 2 * iw, rowOwner)
    }
    if j.first || out.best == nil {
        best.update(repeating: -.infinity, count: iw); lseMax.update(repeating: -.infinity, count: iw)
        lseSum.update(repeating: 0, count: iw); owner.update(repeating: 0, count: iw)
    }
    // hot loop: unchecked via unsafe pointers
    for (kq, o) in j.owners.enumerated() {
        let src = rows(kq), ob = UInt8(o)
        for x in 0..<iw {
            let v = src[x] * scale
            if v > best[x] { best[x] = v; owner[x] = ob }
            if v > lseMax[x] { lseSum[x] = lseSum[x] * expf(lseMax[x] - v) + 1; lseMax[x] = v }
            else { lseSum[x] += expf(v - lseMax[x]) }
        }
        if o < nc, let sc = out.scores {
            let cm = sc + o * hw + px0
            for x in 0..<iw { let v = src[x] * scale; if v > cm[x] { cm[x] = v } }
        }
    }
    guard j.last else { return }
    let labels = out.labels + px0, values = out.values + (y % out.valueRows) * w + t.c0, thr = j.threshold
    for x in 0..<iw {
        let o = Int(owner[x])
        let value = expf(best[x] - lseMax[x]) / lseSum[x]
        if o < nc && value >= thr { labels[x] = UInt8(o); values[x] = value }
    }
    if let sc = out.scores {
        for c in 0..<nc {
            let cm = sc + c * hw + px0
            for x in 0..<iw { cm[x] = expf(cm[x] - lseMax[x]) / lseSum[x] }
        }
    }
}
