import Foundation
import Testing
import ZeroSeg
import ZeroSegTestSupport

/// Each fast kernel against its naive reference (Double accumulation), on odd sizes.
@Suite struct KernelTests {
    @Test func linearMatchesReference() {
        let (m, n, k) = (7, 13, 37)
        let x = randomFloats(m * k, seed: 1), w = randomFloats(n * k, seed: 2), b = randomFloats(n, seed: 3)
        var fast = [Float](repeating: 0, count: m * n), ref = fast
        linear(x, w, b, &fast, m: m, n: n, k: k)
        linearReference(x, w, b, &ref, m: m, n: n, k: k)
        #expect(maxAbsDiff(fast, ref) < 1e-5)
        // accumulate: out += x·wᵀ + b
        var acc = [Float](repeating: 1, count: m * n)
        linear(x, w, b, &acc, m: m, n: n, k: k, accumulate: true)
        #expect(maxAbsDiff(acc, ref.map { $0 + 1 }) < 1e-5)
    }

    /// Enough work for the split paths (single-threaded sgemm per thread on blocks of rows when
    /// M >= N, of columns when M < N), with sizes that are not multiples of 16; the caller's thread
    /// budget is restored.
    @Test(arguments: [(203, 150, 140), (97, 301, 150)])
    func linearSplitMatchesReference(_ shape: (Int, Int, Int)) {
        let (m, n, k) = shape
        let x = randomFloats(m * k, seed: 11), w = randomFloats(n * k, seed: 12), b = randomFloats(n, seed: 13)
        for threads in [2, 3] { withThreads(threads) {
            var fast = [Float](repeating: 0, count: m * n), ref = fast
            linear(x, w, b, &fast, m: m, n: n, k: k)
            #expect(threadBudget == threads)
            linearReference(x, w, b, &ref, m: m, n: n, k: k)
            #expect(maxAbsDiff(fast, ref) < 1e-4)
            var acc = [Float](repeating: 1, count: m * n)
            linear(x, w, nil, &acc, m: m, n: n, k: k, accumulate: true)
            var refNoBias = ref
            linearReference(x, w, nil, &refNoBias, m: m, n: n, k: k)
            #expect(maxAbsDiff(acc, refNoBias.map { $0 + 1 }) < 1e-4)
        } }
    }

    @Test func layerNormMatchesReference() {
        let (r, c) = (5, 67)
        let x = randomFloats(r * c, seed: 4).map { $0 * 3 + 2 }, w = randomFloats(c, seed: 5), b = randomFloats(c, seed: 6)
        var fast = [Float](repeating: 0, count: r * c), ref = fast
        layerNorm(x, w, b, &fast, rows: r, cols: c, eps: 1e-5)
        layerNormReference(x, w, b, &ref, rows: r, cols: c, eps: 1e-5)
        #expect(maxAbsDiff(fast, ref) < 1e-5)
        // enough rows for the threaded path: identical to one thread
        let (rb, cb) = (301, 67)
        let xb = randomFloats(rb * cb, seed: 14).map { $0 * 3 + 2 }, wb = randomFloats(cb, seed: 15), bb = randomFloats(cb, seed: 16)
        var two = [Float](repeating: 0, count: rb * cb), one = two, refb = two
        withThreads(2) { layerNorm(xb, wb, bb, &two, rows: rb, cols: cb, eps: 1e-5) }
        withThreads(1) { layerNorm(xb, wb, bb, &one, rows: rb, cols: cb, eps: 1e-5) }
        layerNormReference(xb, wb, bb, &refb, rows: rb, cols: cb, eps: 1e-5)
        #expect(two == one)
        #expect(maxAbsDiff(two, refb) < 1e-5)
    }

    @Test func softmaxMatchesReference() {
        var a = randomFloats(3 * 29, seed: 7).map { $0 * 20 }
        var b = a
        softmaxRows(&a, rows: 3, n: 29)
        softmaxReference(&b, rows: 3, n: 29)
        #expect(maxAbsDiff(a, b) < 1e-6)
    }

    /// Large inputs take the threaded path; `valid` masks a causal prefix (rest zero).
    @Test func softmaxLargeAndMaskedMatchesReference() {
        let (rows, n) = (301, 203)
        let x = randomFloats(rows * n, seed: 17).map { $0 * 30 }
        var fast = x
        withThreads(2) { softmaxRows(&fast, rows: rows, n: n, valid: { $0 % n + 1 }) }
        var worst: Float = 0
        for r in 0..<rows {
            let m = r % n + 1
            var ref = Array(x[(r * n)..<(r * n + m)])
            softmaxReference(&ref, rows: 1, n: m)
            for i in 0..<n { worst = max(worst, abs(fast[r * n + i] - (i < m ? ref[i] : 0))) }
        }
        #expect(worst < 1e-6)
    }

    @Test(arguments: [Activation.quickGELU, .gelu, .geluTanh])
    func activationsLargeMatchReference(_ act: Activation) {
        var x = randomFloats(100_003, seed: 18).map { $0 * 12 }
        let ref = x.map { activationReference($0, act) }
        withThreads(2) { activate(&x, count: x.count, act) }
        #expect(maxAbsDiff(x, ref) < 1e-5)
    }

    @Test(arguments: [Activation.quickGELU, .gelu, .geluTanh])
    func activationsMatchReference(_ act: Activation) {
        var x = randomFloats(101, seed: 8).map { $0 * 6 }
        let ref = x.map { activationReference($0, act) }
        activate(&x, count: x.count, act)
        #expect(maxAbsDiff(x, ref) < 1e-5)
    }

    @Test(arguments: [false, true])
    func attentionMatchesReference(_ causal: Bool) {
        let (t, w, h) = (9, 24, 3)
        let qkv = randomFloats(t * 3 * w, seed: 9)
        var fast = [Float](repeating: 0, count: t * w), ref = fast, scores = [Float](repeating: 0, count: t * t)
        attention(qkv: qkv, out: &fast, scores: &scores, tokens: t, width: w, heads: h, causal: causal)
        attentionReference(qkv: qkv, out: &ref, tokens: t, width: w, heads: h, causal: causal)
        #expect(maxAbsDiff(fast, ref) < 1e-5)
    }

    @Test func bicubicKeepsConstantsAndIdentity() {
        // Same size: identity. Constant planes stay constant (weights sum to 1).
        let x = randomFloats(2 * 5 * 5, seed: 10)
        var same = [Float](repeating: 0, count: x.count)
        resizeBicubicCHW(x, channels: 2, height: 5, width: 5, &same, outHeight: 5, outWidth: 5)
        #expect(maxAbsDiff(same, x) < 1e-6)
        let c = [Float](repeating: 0.25, count: 16)
        var up = [Float](repeating: 0, count: 7 * 9)
        resizeBicubicCHW(c, channels: 1, height: 4, width: 4, &up, outHeight: 7, outWidth: 9)
        #expect(up.allSatisfy { abs($0 - 0.25) < 1e-6 })
    }
}
