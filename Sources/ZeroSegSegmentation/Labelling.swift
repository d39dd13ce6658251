import Foundation

// From class scores to labels, shared by one-stage and two-stage segmentation.

/// Per class: the fraction of pixels labelled with it, and the mean of its probability over them
/// (labels [HW], 255 = none; probabilities [R, HW]).
public func labelAreas(_ labels: [UInt8], probabilities p: [Float], classes nc: Int, pixels hw: Int) -> (area: [Double], mean: [Double]) {
    var area = [Double](repeating: 0, count: nc), sum = [Double](repeating: 0, count: nc)
    for px in 0..<hw where Int(labels[px]) < nc {
        let c = Int(labels[px])
        area[c] += 1
        sum[c] += Double(p[c * hw + px])
    }
    return (area.map { $0 / Double(hw) }, zip(sum, area).map { $1 > 0 ? $0 / $1 : 0 })
}

/// [R, HW] class probabilities from logits [Q, HW]: softmax over queries of scale · logits, max over
/// each row's names (`owners[q]` = row of query q).
public func classProbabilities(logits: [Float], pixels hw: Int, owners: [Int], rows: Int, scale: Float) -> [Float] {
    let q = owners.count
    var out = [Float](repeating: 0, count: rows * hw)
    var e = [Float](repeating: 0, count: q)
    logits.withUnsafeBufferPointer { lp in
        for px in 0..<hw {
            var mx = -Float.infinity
            for k in 0..<q { e[k] = lp[k * hw + px] * scale; mx = max(mx, e[k]) }
            var s: Float = 0
            for k in 0..<q { e[k] = expf(e[k] - mx); s += e[k] }
            for k in 0..<q { let v = e[k] / s; if v > out[owners[k] * hw + px] { out[owners[k] * hw + px] = v } }
        }
    }
    return out
}

/// argmax over rows (first maximum); 255 where the background row wins or the value is below
/// the threshold (as one-stage).
public func labelPixels(_ p: [Float], rows: Int, pixels hw: Int, classes nc: Int, hasBackground: Bool, threshold: Float) -> [UInt8] {
    var labels = [UInt8](repeating: 255, count: hw)
    for px in 0..<hw {
        var best = 0
        for k in 1..<rows where p[k * hw + px] > p[best * hw + px] { best = k }
        if best < nc && p[best * hw + px] >= threshold { labels[px] = UInt8(best) }
    }
    return labels
}
