import Foundation
import ZeroSegCore

// From class scores to labels, shared by one-stage and two-stage segmentation.

/// Per class: the fraction of pixels labelled with it, and the mean of its probability over them
/// (labels [HW], 255 = none; probabilities [R, HW], R >= classes). Throws for other sizes.
public func labelAreas(_ labels: [UInt8], probabilities p: [Float], classes nc: Int, pixels hw: Int) throws -> (area: [Double], mean: [Double]) {
    guard nc >= 0, hw >= 0, labels.count == hw, p.count >= nc * hw else {
        throw ZeroSegError("labelAreas: \(labels.count) labels and \(p.count) probabilities for \(nc) classes of \(hw) pixels")
    }
    var area = [Double](repeating: 0, count: nc), sum = [Double](repeating: 0, count: nc)
    // hot loop: unchecked via unsafe buffer pointers
    labels.withUnsafeBufferPointer { labels in p.withUnsafeBufferPointer { p in
        area.withUnsafeMutableBufferPointer { area in sum.withUnsafeMutableBufferPointer { sum in
            for px in 0..<hw where Int(labels[px]) < nc {
                let c = Int(labels[px])
                area[c] += 1
                sum[c] += Double(p[c * hw + px])
            }
        } }
    } }
    return (area.map { $0 / Double(hw) }, zip(sum, area).map { $1 > 0 ? $0 / $1 : 0 })
}

/// [R, HW] class probabilities from logits [Q, HW]: softmax over queries of scale · logits, max over
/// each row's names (`owners[q]` = row of query q, 0..<rows). Throws for other sizes.
public func classProbabilities(logits: [Float], pixels hw: Int, owners: [Int], rows: Int, scale: Float) throws -> [Float] {
    let q = owners.count
    guard hw >= 0, rows >= 0, logits.count == q * hw, owners.allSatisfy({ (0..<rows).contains($0) }) else {
        throw ZeroSegError("classProbabilities: \(logits.count) logits for \(q) queries of \(hw) pixels, owners \(owners) for \(rows) rows")
    }
    var out = [Float](repeating: 0, count: rows * hw)
    var e = [Float](repeating: 0, count: q)
    // hot loop: unchecked via unsafe buffer pointers
    logits.withUnsafeBufferPointer { lp in owners.withUnsafeBufferPointer { owners in
        e.withUnsafeMutableBufferPointer { e in out.withUnsafeMutableBufferPointer { out in
            for px in 0..<hw {
                var mx = -Float.infinity
                for k in 0..<q { e[k] = lp[k * hw + px] * scale; mx = max(mx, e[k]) }
                var s: Float = 0
                for k in 0..<q { e[k] = expf(e[k] - mx); s += e[k] }
                for k in 0..<q { let v = e[k] / s; if v > out[owners[k] * hw + px] { out[owners[k] * hw + px] = v } }
            }
        } }
    } }
    return out
}

/// argmax over rows (first maximum); 255 where the background row wins or the value is below
/// the threshold (as one-stage). p: [rows, HW] (rows >= 1); throws for other sizes.
public func labelPixels(_ p: [Float], rows: Int, pixels hw: Int, classes nc: Int, hasBackground: Bool, threshold: Float) throws -> [UInt8] {
    guard rows >= 1, hw >= 0, p.count == rows * hw else {
        throw ZeroSegError("labelPixels: \(p.count) probabilities for \(rows) rows of \(hw) pixels")
    }
    var labels = [UInt8](repeating: 255, count: hw)
    // hot loop: unchecked via unsafe buffer pointers
    p.withUnsafeBufferPointer { p in labels.withUnsafeMutableBufferPointer { labels in
        for px in 0..<hw {
            var best = 0
            for k in 1..<rows where p[k * hw + px] > p[best * hw + px] { best = k }
            if best < nc && p[best * hw + px] >= threshold { labels[px] = UInt8(best) }
        }
    } }
    return labels
}
