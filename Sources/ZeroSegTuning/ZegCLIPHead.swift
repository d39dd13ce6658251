import Foundation
import ZeroSegCore

// ZegCLIP's head (Zhou et al. 2023, "ZegCLIP: Towards Adapting CLIP for Zero-shot Semantic
// Segmentation"; ZiqinZhou66/ZegCLIP models/decode_heads/decode_seg.py, `ATMSingleHeadSeg` with
// one stage): the relationship descriptor and the ATM decoder.
//
//   t̂ = t / ‖t‖ [C, P], ĝ = g / ‖g‖ [B, P], f̂ = f / ‖f‖ [B, G, P]
//   q[b, c] = q_proj(cat(ĝ_b ⊙ t̂_c, t̂_c))                 Linear 2P → D
//   lat[b] = proj_norm_1(input_proj_1(f̂_b))                Linear P → D, LayerNorm(D)
//   per layer i (TPN_DecoderLayer, post-norm; dropouts off):
//     a, s_i = attn(q, lat)       q/k/v/proj Linear(D, D) with bias, H heads,
//                                 s_i = mean_h (q_h k_hᵀ · (D/H)^-0.5)  [B, C, G] (pre-softmax)
//     q = norm2(q + a);  q = norm3(q + linear2(relu(linear1(q))))        FFN 4D
//   scores = s_last [B, C, G]
// ZegCLIP computes a map for every layer but its loss reads only `pred_masks`, the last one; so
// the last layer's FFN, norm3, v and proj do not reach the scores (their gradients are zero).
// The normalisation clamps norms at 1e-12 (F.normalize's eps; ZegCLIP divides by the norm).

/// ZegCLIP's relationship descriptor + ATM decoder as an `ImageConditionedHead`.
public struct ZegCLIPHead: ImageConditionedHead {
    public var kind: String { "zegclip" }
    public var parameters: NamedTensors
    /// P (the CLIP embedding), D (the decoder width), heads, decoder layers.
    public let dim: Int, width: Int, heads: Int, layers: Int

    let qProj: LinearLayer, inputProj: LinearLayer, projNorm: LayerNormLayer
    let blocks: [Block]
    let linearWeights: Set<String>

    struct Block: Sendable {
        let attn: AttentionLayer, norm2: LayerNormLayer, norm3: LayerNormLayer, linear1: LinearLayer, linear2: LinearLayer
    }

    /// A head for embeddings of `dim` values, decoder width `width` (ZegCLIP ViT-B/16: 512),
    /// `heads` attention heads (8) and `layers` decoder layers (3). Initial parameters as
    /// ZegCLIP's `init_weights`, seeded: Linear weights uniform with std 0.02 (for its truncated
    /// normal), biases 0, layer norms 1 and 0. Throws for sizes below 1 or a width that the heads
    /// do not divide.
    public init(dim: Int, width: Int = 512, heads: Int = 8, layers: Int = 3, seed: UInt64 = 0) throws {
        guard dim >= 1 else { throw ZeroSegError.invalidArgument("the embedding size must be at least 1", parameter: "dim") }
        guard width >= 1 else { throw ZeroSegError.invalidArgument("the decoder width must be at least 1", parameter: "width") }
        guard heads >= 1 && width % heads == 0 else {
            throw ZeroSegError.invalidArgument("the number of heads (\(heads)) must divide the decoder width (\(width))", parameter: "heads")
        }
        guard layers >= 1 else { throw ZeroSegError.invalidArgument("the number of decoder layers must be at least 1", parameter: "layers") }
        self.dim = dim; self.width = width; self.heads = heads; self.layers = layers
        let pre = "decode_head."
        qProj = LinearLayer(name: pre + "q_proj", input: 2 * dim, output: width, bias: true)
        inputProj = LinearLayer(name: pre + "input_proj_1", input: dim, output: width, bias: true)
        projNorm = LayerNormLayer(name: pre + "proj_norm_1", dim: width)
        blocks = (0..<layers).map { i in
            let l = pre + "decoder_1.layers.\(i)."
            return Block(attn: AttentionLayer(qName: l + "multihead_attn.q", kName: l + "multihead_attn.k", vName: l + "multihead_attn.v",
                                              projName: l + "multihead_attn.proj", dim: width, heads: heads, qkvBias: true),
                         norm2: LayerNormLayer(name: l + "norm2", dim: width), norm3: LayerNormLayer(name: l + "norm3", dim: width),
                         linear1: LinearLayer(name: l + "linear1", input: width, output: 4 * width, bias: true),
                         linear2: LinearLayer(name: l + "linear2", input: 4 * width, output: width, bias: true))
        }
        var p = NamedTensors()
        var lw = Set<String>()
        func add(_ l: LinearLayer) { for t in l.initial(seed: seed) { p.append(t) }; lw.insert(l.weightName) }
        add(qProj); add(inputProj)
        for t in projNorm.initial() { p.append(t) }
        for b in blocks {
            for l in b.attn.linears { add(l) }
            for t in b.norm2.initial() + b.norm3.initial() { p.append(t) }
            add(b.linear1); add(b.linear2)
        }
        parameters = p
        linearWeights = lw
    }

    /// Weight decay on the Linear weights only (not biases, not layer norms).
    public func decays(_ name: String) -> Bool { linearWeights.contains(name) }

    final class Tape: HeadTape {
        let batch: Int, classes: Int, cells: Int
        let t: [Float], tNorms: [Float], g: [Float], gNorms: [Float], f: [Float], fNorms: [Float]
        let qIn: [Float], lateralIn: [Float], lateralNorm: LayerNormTape, lateral: [Float]
        let blocks: [BlockTape]
        init(batch: Int, classes: Int, cells: Int, t: [Float], tNorms: [Float], g: [Float], gNorms: [Float], f: [Float], fNorms: [Float],
             qIn: [Float], lateralIn: [Float], lateralNorm: LayerNormTape, lateral: [Float], blocks: [BlockTape]) {
            self.batch = batch; self.classes = classes; self.cells = cells
            self.t = t; self.tNorms = tNorms; self.g = g; self.gNorms = gNorms; self.f = f; self.fNorms = fNorms
            self.qIn = qIn; self.lateralIn = lateralIn; self.lateralNorm = lateralNorm; self.lateral = lateral; self.blocks = blocks
        }
    }

    struct BlockTape: Sendable {
        let attn: AttentionTape, norm2: LayerNormTape, ffIn: [Float], hidden: [Float], norm3: LayerNormTape
    }

    func check(text: [Float], classes c: Int, global: [Float], patches: [Float], batch b: Int, cells g: Int) throws {
        guard c >= 1, b >= 1, g >= 1 else {
            throw ZeroSegError.invalidArgument("zegclip head: \(c) classes, \(b) images, \(g) grid cells (each must be at least 1)")
        }
        guard text.count == c * dim, global.count == b * dim, patches.count == b * g * dim else {
            throw ZeroSegError.invalidArgument("zegclip head: inputs of \(text.count), \(global.count), \(patches.count) values, "
                                               + "expected [\(c), \(dim)], [\(b), \(dim)], [\(b), \(g), \(dim)]")
        }
    }

    public func forward(text: [Float], classes c: Int, global: [Float], patches: [Float], batch b: Int,
                        gridHeight: Int, gridWidth: Int, threads: Int, record: Bool) throws -> (scores: [Float], tape: (any HeadTape)?) {
        let g = gridHeight * gridWidth, p = dim
        try check(text: text, classes: c, global: global, patches: patches, batch: b, cells: g)
        let budget = enterThreads(threads)
        defer { budget.leave() }
        let ps = parameters
        let (t, tn) = l2NormalizeRows(text, rows: c, dim: p)
        let (gl, gn) = l2NormalizeRows(global, rows: b, dim: p)
        let (f, fn) = l2NormalizeRows(patches, rows: b * g, dim: p)
        // qIn[B, C, 2P] = cat(ĝ_b ⊙ t̂_c, t̂_c)
        var qIn = [Float](repeating: 0, count: b * c * 2 * p)
        for bi in 0..<b { for ci in 0..<c {
            let o = (bi * c + ci) * 2 * p
            for j in 0..<p { qIn[o + j] = gl[bi * p + j] * t[ci * p + j]; qIn[o + p + j] = t[ci * p + j] }
        } }
        var q = qProj.forward(ps, qIn, rows: b * c)                    // [B, C, D]
        let latIn = inputProj.forward(ps, f, rows: b * g)              // [B, G, D]
        let (lat, latTape) = projNorm.forward(ps, latIn, rows: b * g)
        var tapes: [BlockTape] = []
        var scores: [Float] = []
        for (i, bl) in blocks.enumerated() {
            let (a, s, at) = bl.attn.forward(ps, query: q, keyValue: lat, batch: b, nq: c, nk: g, logits: i == blocks.count - 1)
            if let s { scores = s }
            var x1 = q; addInPlace(&x1, a)
            let (q2, n2) = bl.norm2.forward(ps, x1, rows: b * c)
            let m = bl.linear1.forward(ps, q2, rows: b * c)
            let h = reluForward(m)
            var x2 = q2; addInPlace(&x2, bl.linear2.forward(ps, h, rows: b * c))
            let (q3, n3) = bl.norm3.forward(ps, x2, rows: b * c)
            q = q3
            if record { tapes.append(BlockTape(attn: at, norm2: n2, ffIn: q2, hidden: m, norm3: n3)) }
        }
        guard record else { return (scores, nil) }
        return (scores, Tape(batch: b, classes: c, cells: g, t: t, tNorms: tn, g: gl, gNorms: gn, f: f, fNorms: fn,
                             qIn: qIn, lateralIn: latIn, lateralNorm: latTape, lateral: lat, blocks: tapes))
    }

    public func backward(_ tape: any HeadTape, dScores: [Float], threads: Int) throws
        -> (parameters: NamedTensors, text: [Float], global: [Float], patches: [Float]) {
        guard let tp = tape as? Tape, tp.blocks.count == blocks.count else {
            throw ZeroSegError.invalidArgument("zegclip head: the tape was not recorded by a zegclip head of this shape")
        }
        let (b, c, g, p) = (tp.batch, tp.classes, tp.cells, dim)
        guard dScores.count == b * c * g else {
            throw ZeroSegError.invalidArgument("zegclip head: score gradient of \(dScores.count) values, expected [\(b), \(c), \(g)]")
        }
        let budget = enterThreads(threads)
        defer { budget.leave() }
        let ps = parameters
        var gr = ps.zeros
        var dLat = [Float](repeating: 0, count: b * g * width)
        // the last layer: only its logits reach the scores
        var dq: [Float] = []
        for i in stride(from: blocks.count - 1, through: 0, by: -1) {
            let bl = blocks[i], bt = tp.blocks[i]
            var dx1: [Float]? = nil
            if i < blocks.count - 1 {
                // q3 = norm3(x2), x2 = q2 + linear2(relu(linear1(q2))), q2 = norm2(x1)
                let dx2 = bl.norm3.backward(ps, bt.norm3, dy: dq, rows: b * c, grads: &gr)
                let dh = bl.linear2.backward(ps, x: reluForward(bt.hidden), dy: dx2, rows: b * c, grads: &gr)
                var dq2 = bl.linear1.backward(ps, x: bt.ffIn, dy: reluBackward(bt.hidden, dh), rows: b * c, grads: &gr)
                addInPlace(&dq2, dx2)
                dx1 = bl.norm2.backward(ps, bt.norm2, dy: dq2, rows: b * c, grads: &gr)
            }
            // x1 = q + attn(q, lat)
            let (dxq, dxkv) = bl.attn.backward(ps, bt.attn, dOut: dx1, dLogits: i == blocks.count - 1 ? dScores : nil, grads: &gr)
            addInPlace(&dLat, dxkv)
            dq = dxq
            if let dx1 { addInPlace(&dq, dx1) }
        }
        // q = q_proj(qIn); lat = LN(input_proj(f̂))
        let dQIn = qProj.backward(ps, x: tp.qIn, dy: dq, rows: b * c, grads: &gr)
        let dLatIn = projNorm.backward(ps, tp.lateralNorm, dy: dLat, rows: b * g, grads: &gr)
        let dF = inputProj.backward(ps, x: tp.f, dy: dLatIn, rows: b * g, grads: &gr)
        // qIn[b, c] = cat(ĝ_b ⊙ t̂_c, t̂_c)
        var dT = [Float](repeating: 0, count: c * p), dG = [Float](repeating: 0, count: b * p)
        for bi in 0..<b { for ci in 0..<c {
            let o = (bi * c + ci) * 2 * p
            for j in 0..<p {
                let d1 = dQIn[o + j]
                dG[bi * p + j] += d1 * tp.t[ci * p + j]
                dT[ci * p + j] += d1 * tp.g[bi * p + j] + dQIn[o + p + j]
            }
        } }
        return (gr,
                l2NormalizeRowsBackward(y: tp.t, norms: tp.tNorms, dy: dT, rows: c, dim: p),
                l2NormalizeRowsBackward(y: tp.g, norms: tp.gNorms, dy: dG, rows: b, dim: p),
                l2NormalizeRowsBackward(y: tp.f, norms: tp.fNorms, dy: dF, rows: b * g, dim: p))
    }
}
