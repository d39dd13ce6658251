import Foundation

/// Pixel-adaptive mask refinement (Araslanov & Roth 2020, `pamr.py` as NACLIP uses it).
/// The neighbour affinities depend only on the guide image, so they are computed once and applied
/// to every class map.
public struct PAMR: Sendable {
    public let height: Int, width: Int
    /// Neighbour offsets (dy, dx): for each dilation, the 8 neighbours in the kernel's order.
    let offsets: [(Int, Int)]
    /// [P, H, W] softmax-normalised affinities (P = 8 · dilations).
    let affinity: [Float]

    /// guide: [3, H, W] (the normalised image).
    public init(guide: [Float], height h: Int, width w: Int, dilations: [Int]) {
        height = h; width = w
        let ring = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
        let offs = dilations.flatMap { d in ring.map { ($0.0 * d, $0.1 * d) } }
        offsets = offs
        let np = offs.count, hw = h * w, k = 3
        // Local standard deviation per channel over the 9 positions (centre included) of every
        // dilation, unbiased as torch.std.
        let stdOffs = dilations.flatMap { d in [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1)].map { ($0.0 * d, $0.1 * d) } }
        var aff = [Float](repeating: 0, count: np * hw)
        var vals = [Float](repeating: 0, count: stdOffs.count)
        var diff = [Float](repeating: 0, count: np)
        for y in 0..<h {
            for x in 0..<w {
                for p in 0..<np { diff[p] = 0 }
                for c in 0..<k {
                    let plane = c * hw
                    for (i, (dy, dx)) in stdOffs.enumerated() {
                        vals[i] = guide[plane + min(max(y + dy, 0), h - 1) * w + min(max(x + dx, 0), w - 1)]
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
                        let nb = guide[plane + min(max(y + dy, 0), h - 1) * w + min(max(x + dx, 0), w - 1)]
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
        affinity = aff
    }

    /// `iterations` rounds of mask ← Σ_p affinity_p · shift_p(mask) on masks [C, H, W]
    /// (borders replicated).
    public func refine(_ masks: [Float], channels: Int, iterations: Int) -> [Float] {
        let h = height, w = width, hw = h * w
        var cur = masks, next = [Float](repeating: 0, count: masks.count)
        for _ in 0..<iterations {
            for c in 0..<channels {
                let base = c * hw
                for y in 0..<h {
                    for x in 0..<w { next[base + y * w + x] = 0 }
                    for (p, (dy, dx)) in offsets.enumerated() {
                        let yy = min(max(y + dy, 0), h - 1)
                        let a = p * hw + y * w
                        for x in 0..<w {
                            let xx = min(max(x + dx, 0), w - 1)
                            next[base + y * w + x] += affinity[a + x] * cur[base + yy * w + xx]
                        }
                    }
                }
            }
            swap(&cur, &next)
        }
        return cur
    }
}
