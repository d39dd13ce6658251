import Foundation
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegCLIP

/// Pixel-adaptive mask refinement (Araslanov & Roth 2020, `pamr.py` as NACLIP uses it).
/// The neighbour affinities depend only on the guide image, so they are computed once and applied
/// to every class map.
public struct PAMR: Sendable {
    public let height: Int, width: Int
    /// Neighbour offsets (dy, dx): for each dilation, the 8 neighbours in the kernel's order.
    package let offsets: [(Int, Int)]
    /// [P, H, W] softmax-normalised affinities (P = 8 · dilations).
    package let affinity: [Float]

    /// guide: [3, H, W] (the normalised image). Rows are split over `threads` workers. Throws for
    /// a guide of another size.
    public init(guide: [Float], height h: Int, width w: Int, dilations: [Int], threads: Int = 1) throws {
        guard h >= 0 && w >= 0 && guide.count == 3 * h * w else {
            throw ZeroSegError("PAMR: a guide of \(guide.count) values for \(h)x\(w) (3 x H x W expected)")
        }
        height = h; width = w
        let ring = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
        let offs = dilations.flatMap { d in ring.map { ($0.0 * d, $0.1 * d) } }
        offsets = offs
        let np = offs.count, hw = h * w
        // Local standard deviation per channel over the 9 positions (centre included) of every
        // dilation, unbiased as torch.std.
        let stdOffs = dilations.flatMap { d in [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1)].map { ($0.0 * d, $0.1 * d) } }
        var aff = [Float](repeating: 0, count: np * hw)
        let workers = max(1, min(threads, h / 8))
        guide.withUnsafeBufferPointer { g in
            aff.withUnsafeMutableBufferPointer { a in
                nonisolated(unsafe) let (gp, ap) = (g.baseAddress!, a.baseAddress!)
                DispatchQueue.concurrentPerform(iterations: workers) { wi in
                    Self.affinityRows((h * wi / workers)..<(h * (wi + 1) / workers), guide: gp, h, w, offs, stdOffs, ap)
                }
            }
        }
        affinity = aff
    }

    /// aff[p, y, x] for y in `rows`: softmax over p of −mean_c |g_c(y,x) − g_c(neighbour p)| / (1e-8 + 0.1·std_c).
    static func affinityRows(_ rows: Range<Int>, guide: UnsafePointer<Float>, _ h: Int, _ w: Int,
                             _ offs: [(Int, Int)], _ stdOffs: [(Int, Int)], _ aff: UnsafeMutablePointer<Float>) {
        let np = offs.count, hw = h * w, k = 3
        // hot loop: unchecked via unsafe buffer pointers; the clamped indices are in range, so their
        // arithmetic wraps (&+, &*) instead of checking for overflow
        let vals = UnsafeMutableBufferPointer<Float>.allocate(capacity: stdOffs.count)
        let diff = UnsafeMutableBufferPointer<Float>.allocate(capacity: np)
        defer { vals.deallocate(); diff.deallocate() }
        offs.withUnsafeBufferPointer { offs in stdOffs.withUnsafeBufferPointer { stdOffs in
            for y in rows {
                for x in 0..<w {
                    for p in 0..<np { diff[p] = 0 }
                    for c in 0..<k {
                        let plane = c * hw
                        for (i, (dy, dx)) in stdOffs.enumerated() {
                            vals[i] = guide[plane &+ min(max(y &+ dy, 0), h &- 1) &* w &+ min(max(x &+ dx, 0), w &- 1)]
                        }
                        var mean: Float = 0
                        for v in vals { mean += v }
                        mean /= Float(vals.count)
                        var ss: Float = 0
                        for v in vals { ss += (v - mean) * (v - mean) }
                        let std = (ss / Float(vals.count - 1)).squareRoot()
                        let centre = guide[plane + y * w + x]
                        let denom = 1e-8 + 0.1 * std
                        for (p, (dy, dx)) in offs.enumerated() {
                            let nb = guide[plane &+ min(max(y &+ dy, 0), h &- 1) &* w &+ min(max(x &+ dx, 0), w &- 1)]
                            diff[p] += -abs(centre - nb) / denom
                        }
                    }
                    var mx = -Float.infinity
                    for p in 0..<np { diff[p] /= Float(k); mx = max(mx, diff[p]) }
                    var s: Float = 0
                    for p in 0..<np { diff[p] = expf(diff[p] - mx); s += diff[p] }
                    for p in 0..<np { aff[p * hw + y * w + x] = diff[p] / s }
                }
            }
        } }
    }

    /// `iterations` rounds of mask ← Σ_p affinity_p · shift_p(mask) on masks [C, H, W]
    /// (borders replicated). Channels are independent: they are spread over `threads` workers;
    /// inside a row the interior (no clamping) runs as a contiguous, vectorisable loop. Values past
    /// the first `channels` maps are returned as they are; fewer values than that throw.
    public func refine(_ masks: [Float], channels: Int, iterations: Int, threads: Int = 1) throws -> [Float] {
        let h = height, w = width, hw = h * w
        guard channels >= 0 && iterations >= 0 && masks.count >= channels * hw else {
            throw ZeroSegError("PAMR.refine: \(masks.count) values for \(channels) maps of \(h)x\(w), \(iterations) iterations")
        }
        var result = masks
        let offs = offsets
        affinity.withUnsafeBufferPointer { affBuf in
            result.withUnsafeMutableBufferPointer { resBuf in
                nonisolated(unsafe) let aff = affBuf.baseAddress!, res = resBuf.baseAddress!
                let workers = max(1, min(threads, channels))
                DispatchQueue.concurrentPerform(iterations: workers) { wi in
                    let tmp = UnsafeMutablePointer<Float>.allocate(capacity: hw)
                    defer { tmp.deallocate() }
                    var c = wi
                    while c < channels {
                        var cur = res + c * hw, next = tmp
                        for _ in 0..<iterations {
                            Self.step(cur, next, aff, offs, h, w)
                            swap(&cur, &next)
                        }
                        if cur != res + c * hw { (res + c * hw).update(from: cur, count: hw) }
                        c += workers
                    }
                }
            }
        }
        return result
    }

    /// next[H, W] = Σ_p aff[p, H, W] · cur[clamp(y + dy), clamp(x + dx)].
    static func step(_ cur: UnsafePointer<Float>, _ next: UnsafeMutablePointer<Float>, _ aff: UnsafePointer<Float>,
                     _ offs: [(Int, Int)], _ h: Int, _ w: Int) {
        let hw = h * w
        for y in 0..<h {
            let o = next + y * w
            o.update(repeating: 0, count: w)
            for (p, (dy, dx)) in offs.enumerated() {
                let yy = min(max(y + dy, 0), h - 1)
                let a = aff + p * hw + y * w, src = cur + yy * w
                // x + dx inside [0, w): x in [lo, hi)
                let lo = min(max(-dx, 0), w), hi = max(min(w - dx, w), lo)
                for x in 0..<lo { o[x] += a[x] * src[min(max(x + dx, 0), w - 1)] }
                let s = src + dx
                for x in lo..<hi { o[x] += a[x] * s[x] }
                for x in hi..<w { o[x] += a[x] * src[min(max(x + dx, 0), w - 1)] }
            }
        }
    }
}
