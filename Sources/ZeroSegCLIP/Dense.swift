import CKernels
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegText
import Foundation

/// How the last vision block is changed so that patch tokens line up with text (training-free
/// dense CLIP). Only the last block differs; the layers before it run unchanged.
///
/// With h = LN1(x), q, k, v per head, s = 1/√d and a = out_proj(A·v):
/// - `vanilla`:   A = softmax(q kᵀ s);               x = x + a; x = x + MLP(LN2 x)  (plain CLIP)
/// - `maskclip`:  A = I (a = out_proj(v));            x = x + a; x = x + MLP(LN2 x)  (MaskCLIP)
/// - `sclip`:     A = softmax(q qᵀ s) + softmax(k kᵀ s); x = x + a; x = x + MLP(LN2 x) (SCLIP)
/// - `clearclip`: A = softmax(q qᵀ s);                x = a                          (ClearCLIP)
/// - `naclip`:    A = softmax(k kᵀ s + Ω);            x = a                          (NACLIP)
///   with Ω[p, q] = exp(−‖pos_p − pos_q‖² / 2σ²) between patches (σ = 5) and 0 for the class token.
public enum DenseMethod: String, CaseIterable, Sendable, Codable {
    case naclip, sclip, clearclip, maskclip, vanilla

    var keepsResidualAndMLP: Bool { self == .vanilla || self == .maskclip || self == .sclip }
}

extension CLIPModel {
    /// L2-normalised patch embeddings (class token dropped) with a dense last block:
    /// out: [N, gh·gw, P] for pixels [N, 3, H, W].
    public func densePatchEmbeddings(pixels: ConstFloatPtr, batch n: Int, height: Int, width: Int,
                                     method: DenseMethod, gaussianStd: Float = 5,
                                     threads: Int = defaultThreads) throws -> (Buffer, gh: Int, gw: Int) {
        let budget = enterThreads(threads)
        defer { budget.leave() }
        let layers = visionModel.layers
        let (x, gh, gw) = try visionHidden(pixels: pixels, batch: n, height: height, width: width,
                                           layers: layers.count - 1, threads: threads)
        let w = config.vision.hiddenSize, t = gh * gw + 1, p = config.projectionDim
        denseLastLayer(layers[layers.count - 1], x.ptr, batch: n, tokens: t, width: w, gh: gh, gw: gw,
                       method: method, gaussianStd: gaussianStd)
        let emb = tokenEmbeddings(hidden: x, batch: n, tokens: t, threads: threads)  // [N, T, P]
        let out = normalizedPatchRows(emb, batch: n, tokens: t, dim: p)
        withExtendedLifetime((x, emb)) {}
        return (out, gh, gw)
    }

    /// The dense variant of the last block, in place on x: [B, T, W] (T = 1 + gh·gw).
    ///
    /// Why this is not `EncoderLayer.forward` (Block.swift), the one shared block: the methods
    /// replace the attention itself (q qᵀ, k kᵀ, two softmaxes summed, the Ω bias, or no attention
    /// at all), compute only the projections they read, and two of them drop the residual and the
    /// MLP. `vanilla` is the shared block; the others share its LN1, out_proj and MLP half (`mlp`).
    /// BlockAgreementTests checks each method against the formulas above, and
    /// SegmentationGoldenTests against the PyTorch reference.
    func denseLastLayer(_ l: EncoderLayer, _ x: FloatPtr, batch b: Int, tokens t: Int, width w: Int,
                        gh: Int, gw: Int, method: DenseMethod, gaussianStd: Float) {
        if method == .vanilla {
            l.forward(x, RaggedSequence.batch(b, tokens: t), causal: false)
            return
        }
        let rows = b * t, heads = l.selfAttn.heads, d = w / heads
        let h = Buffer(rows * w), qkv = Buffer(rows * 3 * w), a = Buffer(rows * w)
        let omega = method == .naclip ? neighbourhoodBias(gh: gh, gw: gw, std: gaussianStd) : nil
        defer { withExtendedLifetime((h, qkv, a, omega)) {} }
        l.layerNorm1(x, h.ptr, rows: rows)
        // Only the projections the method reads: qkv[rows, 3W] = q | k | v (unused parts not computed,
        // unless the weights are packed: then all three in one product).
        let wq = l.selfAttn.qkv.weight, bq = l.selfAttn.qkv.bias
        func project(_ part: Int, _ count: Int) {
            linear(h.ptr, wq + part * w * w, bq.map { $0 + part * w }, qkv.ptr + part * w, m: rows, n: count * w, k: w, ldo: 3 * w)
        }
        switch method {
        case _ where l.selfAttn.qkv.packing != nil: l.selfAttn.qkv(h.ptr, qkv.ptr, rows: rows)  // packed: one [3W, W] product
        case .maskclip: project(2, 1)
        case .naclip: project(1, 2)
        case .clearclip: project(0, 1); project(2, 1)
        case .sclip, .vanilla: project(0, 3)
        }
        let scale = 1 / Float(d).squareRoot()
        // One (image, head) pair per task; the pairs are spread over the thread budget, each running
        // its small products single-threaded.
        nonisolated(unsafe) let (qkvP, aP, omegaP) = (qkv.ptr, a.ptr, omega?.ptr)
        @Sendable func run(_ j0: Int, _ j1: Int) {
            let s1 = Buffer(t * t), s2 = method == .sclip ? Buffer(t * t) : s1
            defer { withExtendedLifetime((s1, s2)) {} }
            for j in j0..<j1 {
                let (bi, hd) = (j / heads, j % heads)
                let base = qkvP + bi * t * 3 * w, out = aP + bi * t * w
                let q = base + hd * d, k = base + w + hd * d, v = base + 2 * w + hd * d
                switch method {
                case .maskclip:
                    for i in 0..<t { (out + i * w + hd * d).update(from: v + i * 3 * w, count: d) }
                    continue
                case .sclip:
                    gemmNT(q, lda: 3 * w, q, ldb: 3 * w, s1.ptr, ldc: t, m: t, n: t, k: d, alpha: scale)
                    gemmNT(k, lda: 3 * w, k, ldb: 3 * w, s2.ptr, ldc: t, m: t, n: t, k: d, alpha: scale)
                    for r in 0..<t { zs_softmax_row(s1.ptr + r * t, Int32(t), Int32(t)); zs_softmax_row(s2.ptr + r * t, Int32(t), Int32(t)) }
                    for i in 0..<(t * t) { s1.ptr[i] += s2.ptr[i] }
                case .clearclip:
                    gemmNT(q, lda: 3 * w, q, ldb: 3 * w, s1.ptr, ldc: t, m: t, n: t, k: d, alpha: scale)
                    for r in 0..<t { zs_softmax_row(s1.ptr + r * t, Int32(t), Int32(t)) }
                case .naclip:
                    gemmNT(k, lda: 3 * w, k, ldb: 3 * w, s1.ptr, ldc: t, m: t, n: t, k: d, alpha: scale)
                    for i in 0..<(t * t) { s1.ptr[i] += omegaP![i] }
                    for r in 0..<t { zs_softmax_row(s1.ptr + r * t, Int32(t), Int32(t)) }
                case .vanilla:
                    fatalError("handled above")
                }
                gemmNN(s1.ptr, lda: t, v, ldb: 3 * w, out + hd * d, ldc: w, m: t, n: d, k: t)
            }
        }
        let tasks = b * heads, nt = min(threadBudget, tasks)
        if nt <= 1 {
            run(0, tasks)
        } else {
            parallelFor(nt) { i in run(tasks * i / nt, tasks * (i + 1) / nt) }
        }
        if method.keepsResidualAndMLP {
            l.selfAttn.outProj(a.ptr, x, rows: rows, accumulate: true)  // x += out_proj(A v)
            l.mlp(x, rows: rows, h: h.ptr)  // x += MLP(LN2 x)
        } else {
            l.selfAttn.outProj(a.ptr, x, rows: rows)  // x = out_proj(A v)
        }
    }
}

/// NACLIP's neighbourhood term Ω: [T, T] (T = 1 + gh·gw), zero in the class token's row and column.
func neighbourhoodBias(gh: Int, gw: Int, std: Float) -> Buffer {
    let n = gh * gw, t = n + 1
    let o = Buffer(zeros: t * t)
    let c = 1 / (std * Float(2).squareRoot())
    for p in 0..<n {
        let (pr, pc) = (p / gw, p % gw)
        for q in 0..<n {
            let dr = Float(pr - q / gw) * c, dc = Float(pc - q % gw) * c
            o.ptr[(p + 1) * t + q + 1] = expf(-(dr * dr + dc * dc))
        }
    }
    return o
}

extension CLIPModel {
    /// One encoder pass for both the image embedding and the dense patch embeddings of the same
    /// pixels [N, 3, H, W]: the first L−1 layers run once; the last layer runs twice on copies of
    /// their output, as `encodePixels` does (class token only) and as `densePatchEmbeddings` does
    /// (the `method`'s dense block). Returns global: [N][P] (L2-normalised, equal to
    /// `encodePixels`), patches: [N, gh·gw, P] (L2-normalised, equal to `densePatchEmbeddings`).
    public func imageAndPatchEmbeddings(pixels: ConstFloatPtr, batch n: Int, height: Int, width: Int,
                                        method: DenseMethod, gaussianStd: Float = 5,
                                        threads: Int = defaultThreads) throws -> (global: [[Float]], patches: Buffer, gh: Int, gw: Int) {
        let budget = enterThreads(threads)
        defer { budget.leave() }
        let layers = visionModel.layers, last = layers[layers.count - 1]
        let (x, gh, gw) = try visionHidden(pixels: pixels, batch: n, height: height, width: width,
                                           layers: layers.count - 1, threads: threads)
        let w = config.vision.hiddenSize, t = gh * gw + 1, p = config.projectionDim
        // x: [N, T, W] after L−1 layers. The pooled path uses its copy as scratch.
        let copy = Buffer(n * t * w), pooled = Buffer(n * w), emb = Buffer(n * p)
        copy.ptr.update(from: x.ptr, count: n * t * w)
        last.forward(copy.ptr, RaggedSequence.batch(n, tokens: t), causal: false, pooled: (.first, pooled.ptr))
        visionModel.postLayernorm(pooled.ptr, pooled.ptr, rows: n)
        ZeroSegCore.linear(pooled.ptr, visualProjection, nil, emb.ptr, m: n, n: p, k: w)
        let global = (0..<n).map { b in
            var v = Array(UnsafeBufferPointer(start: emb.ptr + b * p, count: p))
            l2Normalize(&v)
            return v
        }
        denseLastLayer(last, x.ptr, batch: n, tokens: t, width: w, gh: gh, gw: gw, method: method, gaussianStd: gaussianStd)
        let tok = tokenEmbeddings(hidden: x, batch: n, tokens: t, threads: threads)  // [N, T, P]
        let out = normalizedPatchRows(tok, batch: n, tokens: t, dim: p)
        withExtendedLifetime((x, copy, pooled, emb, tok)) {}
        return (global, out, gh, gw)
    }
}

/// The patch rows of token embeddings emb: [N, T, P] (class token first), each L2-normalised:
/// out: [N, T−1, P].
func normalizedPatchRows(_ emb: Buffer, batch n: Int, tokens t: Int, dim p: Int) -> Buffer {
    let out = Buffer(n * (t - 1) * p)
    for b in 0..<n {
        for j in 1..<t {
            let src = emb.ptr + (b * t + j) * p, dst = out.ptr + (b * (t - 1) + j - 1) * p
            var s: Float = 0
            for i in 0..<p { s += src[i] * src[i] }
            let inv = 1 / max(s.squareRoot(), 1e-12)
            for i in 0..<p { dst[i] = src[i] * inv }
        }
    }
    return out
}
