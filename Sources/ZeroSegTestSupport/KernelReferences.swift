import Foundation
import ZeroSegCore

// Naive reference kernels, kept out of the shipped library (llm.c: "reference kernels kept out of
// the product"): the tests compare each fast kernel in ZeroSegCore/Kernels.swift with its
// reference here. Written for clarity, accumulating in Double.

// MARK: - Matrix products

/// Naive reference of `linear` (accumulating in Double).
public func linearReference(_ x: ConstFloatPtr, _ w: ConstFloatPtr, _ bias: ConstFloatPtr?, _ out: FloatPtr,
                            m: Int, n: Int, k: Int) {
    for i in 0..<m {
        for j in 0..<n {
            var s = Double(bias?[j] ?? 0)
            for p in 0..<k { s += Double(x[i * k + p]) * Double(w[j * k + p]) }
            out[i * n + j] = Float(s)
        }
    }
}

// MARK: - Layer norm

/// Naive reference of `layerNorm`.
public func layerNormReference(_ x: ConstFloatPtr, _ w: ConstFloatPtr, _ b: ConstFloatPtr, _ out: FloatPtr,
                               rows: Int, cols c: Int, eps: Float) {
    for r in 0..<rows {
        var mean = 0.0, v = 0.0
        for i in 0..<c { mean += Double(x[r * c + i]) }
        mean /= Double(c)
        for i in 0..<c { let d = Double(x[r * c + i]) - mean; v += d * d }
        v /= Double(c)
        let inv = 1 / (v + Double(eps)).squareRoot()
        for i in 0..<c { out[r * c + i] = Float((Double(x[r * c + i]) - mean) * inv * Double(w[i]) + Double(b[i])) }
    }
}

// MARK: - Softmax

/// Naive reference of `softmaxRows` (no mask).
public func softmaxReference(_ x: FloatPtr, rows: Int, n: Int) {
    for r in 0..<rows {
        let mx = (0..<n).map { Double(x[r * n + $0]) }.max()!
        let e = (0..<n).map { exp(Double(x[r * n + $0]) - mx) }
        let s = e.reduce(0, +)
        for i in 0..<n { x[r * n + i] = Float(e[i] / s) }
    }
}

// MARK: - Activations

/// Naive reference of `activate`, one value.
public func activationReference(_ v: Float, _ act: Activation) -> Float {
    let x = Double(v)
    switch act {
    case .quickGELU: return Float(x / (1 + exp(-1.702 * x)))
    case .gelu: return Float(0.5 * x * (1 + erf(x / 2.0.squareRoot())))
    case .geluTanh, .geluNew: return Float(0.5 * x * (1 + tanh((2 / Double.pi).squareRoot() * (x + 0.044715 * x * x * x))))
    }
}

// MARK: - Attention

/// Naive reference of `attention`: qkv: [T, 3W] (q | k | v), out: [T, W].
public func attentionReference(qkv: ConstFloatPtr, out: FloatPtr, tokens t: Int, width w: Int, heads: Int, causal: Bool) {
    let d = w / heads
    for h in 0..<heads {
        for i in 0..<t {
            let n = causal ? i + 1 : t
            var s = [Double](repeating: 0, count: n)
            for j in 0..<n {
                var acc = 0.0
                for c in 0..<d { acc += Double(qkv[i * 3 * w + h * d + c]) * Double(qkv[j * 3 * w + w + h * d + c]) }
                s[j] = acc / Double(d).squareRoot()
            }
            let mx = s.max()!
            let e = s.map { exp($0 - mx) }
            let z = e.reduce(0, +)
            for c in 0..<d {
                var acc = 0.0
                for j in 0..<n { acc += e[j] / z * Double(qkv[j * 3 * w + 2 * w + h * d + c]) }
                out[i * w + h * d + c] = Float(acc)
            }
        }
    }
}
