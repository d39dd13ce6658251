import Foundation
import ZeroSegCore
import ZeroSegSegmentation

// The two training losses on a head's score maps. scores [B, C, gh, gw] are bilinearly upsampled
// (resizeBilinearCHW: F.interpolate, align_corners=False) to the label size H x W (one size per
// batch: training crops); targets [B][H·W] hold a seen-class index 0..<C or −1 (ignored: the
// ignore label and unseen classes). Counted pixels are those with a target in 0..<C.
//
// softmax: mean over the counted pixels of the batch of the cross-entropy over the C classes
//   (DenseCLIP's and today's CoOp loss, `tuneLossAndGradients`).
// sigmoid: ZegCLIP's SegLossPlus / SegPlusCriterion (models/losses/criterion.py) with x the
//   upsampled logits, y the one-hot target, p = σ(x), N = the number of (image, present class)
//   pairs (at least 1):
//     focal = Σ_(b,c) mean_px[α_t (1 − p_t)^γ BCEWithLogits(x, y)] / N      (α = 0.25, γ = 2,
//             p_t = p y + (1 − p)(1 − y), α_t = α y + (1 − α)(1 − y); every class of every image)
//     dice  = Σ_(b,c present in b) [1 − (2 Σ_px p y + 1) / (Σ_px p + Σ_px y + 1)] / N
//     loss  = 20 · focal + 1 · dice
//   Departure from ZegCLIP: it sets ignored pixels to 255 and, its one-hot being zero there,
//   counts them as negatives in the focal mean and in dice's Σ p; here they are left out (means
//   and sums over counted pixels only), as the softmax loss leaves them out. An image without
//   counted pixels adds nothing.

/// The loss on the score maps.
public enum SegLossKind: String, Sendable, CaseIterable, Codable {
    case softmax, sigmoid
}

/// ZegCLIP's weights and focal parameters of the sigmoid loss.
public enum SigmoidLossConstants {
    public static let focalWeight: Double = 20, diceWeight: Double = 1, alpha: Double = 0.25, gamma: Double = 2
}

/// A loss value, its gradient with respect to the score maps [B, C, gh, gw], and the counted pixels.
public struct SegLossResult: Sendable {
    public var loss: Float
    /// dL/dscores, [B, C, gh, gw] (empty when gradients were not asked for).
    public var dScores: [Float]
    public var pixels: Int
}

/// The `kind` loss of score maps `scores` [B, C, gh, gw] against `targets` [B][height·width]
/// (values in 0..<C count, anything else is ignored); with `gradients`, dL/dscores through the
/// upsampling. No counted pixel in the batch: loss 0, zero gradients. Throws for sizes that do not
/// fit.
public func segLoss(_ kind: SegLossKind, scores: [Float], batch b: Int, classes c: Int, gridHeight gh: Int, gridWidth gw: Int,
                    targets: [[Int32]], height h: Int, width w: Int, gradients: Bool = true) throws -> SegLossResult {
    guard b >= 1, c >= 1, gh >= 1, gw >= 1, h >= 1, w >= 1 else {
        throw ZeroSegError.invalidArgument("segLoss: sizes must be at least 1 (batch \(b), classes \(c), grid \(gh)x\(gw), labels \(h)x\(w))")
    }
    guard scores.count == b * c * gh * gw else {
        throw ZeroSegError.invalidArgument("segLoss: \(scores.count) scores, expected [\(b), \(c), \(gh), \(gw)]")
    }
    guard targets.count == b, targets.allSatisfy({ $0.count == h * w }) else {
        throw ZeroSegError.invalidArgument("segLoss: targets must be \(b) label maps of \(h)x\(w)")
    }
    let g = gh * gw, hw = h * w
    let counted = targets.map { $0.reduce(0) { $0 + ($1 >= 0 && Int($1) < c ? 1 : 0) } }
    let total = counted.reduce(0, +)
    var dScores = [Float](repeating: 0, count: gradients ? b * c * g : 0)
    guard total > 0 else { return SegLossResult(loss: 0, dScores: dScores, pixels: 0) }
    // number of (image, present class) pairs (sigmoid)
    var present = [[Bool]](repeating: [Bool](repeating: false, count: c), count: b)
    for bi in 0..<b { for y in targets[bi] where y >= 0 && Int(y) < c { present[bi][Int(y)] = true } }
    let numMasks = Double(max(1, present.reduce(0) { $0 + $1.filter { $0 }.count }))
    var loss = 0.0
    for bi in 0..<b where counted[bi] > 0 {
        let t = targets[bi]
        var up = [Float](repeating: 0, count: c * hw)
        scores.withUnsafeBufferPointer { sp in up.withUnsafeMutableBufferPointer { upp in
            resizeBilinearCHW(sp.baseAddress! + bi * c * g, channels: c, height: gh, width: gw, upp.baseAddress!, outHeight: h, outWidth: w)
        } }
        var dUp = [Float](repeating: 0, count: gradients ? c * hw : 0)
        switch kind {
        case .softmax:
            // CE = logsumexp(x) − x_y; d/dx = softmax − onehot, divided by the batch's counted pixels
            for px in 0..<hw {
                let y = Int(t[px])
                guard y >= 0 && y < c else { continue }
                var mx = -Double.infinity
                for ci in 0..<c { mx = max(mx, Double(up[ci * hw + px])) }
                var sum = 0.0
                for ci in 0..<c { sum += exp(Double(up[ci * hw + px]) - mx) }
                loss += log(sum) + mx - Double(up[y * hw + px])
                if gradients {
                    for ci in 0..<c {
                        dUp[ci * hw + px] = Float((exp(Double(up[ci * hw + px]) - mx) / sum - (ci == y ? 1 : 0)) / Double(total))
                    }
                }
            }
        case .sigmoid:
            let (alpha, gamma) = (SigmoidLossConstants.alpha, SigmoidLossConstants.gamma)
            let fw = SigmoidLossConstants.focalWeight, dw = SigmoidLossConstants.diceWeight
            let n = Double(counted[bi])
            for ci in 0..<c {
                var inter = 0.0, sumP = 0.0, sumY = 0.0
                for px in 0..<hw {
                    let yv = t[px]
                    guard yv >= 0 && Int(yv) < c else { continue }
                    let x = Double(up[ci * hw + px]), y: Double = Int(yv) == ci ? 1 : 0
                    let p = 1 / (1 + exp(-x))
                    // BCE with logits: max(x, 0) − x y + log(1 + e^−|x|)
                    let ce = max(x, 0) - x * y + log1p(exp(-abs(x)))
                    let pt = p * y + (1 - p) * (1 - y), at = alpha * y + (1 - alpha) * (1 - y)
                    let mod = pow(1 - pt, gamma)
                    loss += fw * at * mod * ce / n / numMasks
                    inter += p * y; sumP += p; sumY += y
                    if gradients {
                        // d(1 − p_t)/dx = (1 − 2y) p (1 − p); dce/dx = p − y
                        let dmod = gamma * pow(1 - pt, gamma - 1) * (1 - 2 * y) * p * (1 - p)
                        dUp[ci * hw + px] = Float(fw * at * (dmod * ce + mod * (p - y)) / n / numMasks)
                    }
                }
                guard present[bi][ci] else { continue }
                // dice = 1 − (2I + 1) / (S + Y + 1)
                let num = 2 * inter + 1, den = sumP + sumY + 1
                loss += dw * (1 - num / den) / numMasks
                guard gradients else { continue }
                for px in 0..<hw {
                    let yv = t[px]
                    guard yv >= 0 && Int(yv) < c else { continue }
                    let x = Double(up[ci * hw + px]), y: Double = Int(yv) == ci ? 1 : 0
                    let p = 1 / (1 + exp(-x))
                    // d/dp [−num/den] = −(2y · den − num) / den²
                    let dp = -(2 * y * den - num) / (den * den)
                    dUp[ci * hw + px] += Float(dw * dp * p * (1 - p) / numMasks)
                }
            }
        }
        guard gradients else { continue }
        var dz = [Float](repeating: 0, count: c * g)
        resizeBilinearCHWBackward(dUp, channels: c, height: gh, width: gw, &dz, outHeight: h, outWidth: w)
        for i in 0..<(c * g) { dScores[bi * c * g + i] = dz[i] }
    }
    return SegLossResult(loss: Float(kind == .softmax ? loss / Double(total) : loss), dScores: dScores, pixels: total)
}
