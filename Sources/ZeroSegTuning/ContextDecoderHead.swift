import Foundation
import ZeroSegCore

// DenseCLIP's context-aware prompting (Rao et al. 2022, "DenseCLIP: Language-Guided Dense
// Prediction with Context-Aware Prompting"; raoyongming/DenseCLIP segmentation/denseclip/models.py
// `ContextDecoder`, `TransformerDecoderLayer`, `Attention`, and denseclip.py `after_extract_feat`):
// the text embeddings attend to the image's tokens and move by a learned, gated residual.
//
//   vc[b] = cat(g_b, f_b) [1+G, P] (raw, not normalised)
//   mem = LN_Dc(Linear_{P→Dc}(LN_P(vc)))                    memory_proj.{0,1,2}
//   x = Linear_{P→Dc}(LN_P(t)) [C, Dc], the same for every image    text_proj.{0,1}
//   per layer (pre-norm; dropouts off; attention q/k/v without bias, proj with bias, H heads):
//     x = x + self_attn(norm1(x));  x = x + cross_attn(norm2(x), mem);  x = x + mlp(norm3(x))
//     mlp = Linear(Dc→4Dc), GELU (erf), Linear(4Dc→Dc)      mlp.0, mlp.3
//   diff = Linear_{Dc→P}(LN_Dc(x)) [B, C, P]                out_proj.{0,1}
//   t'[b, c] = t_c + γ ⊙ diff[b, c]                         γ [P], 1e-4 at start
//   scores[b, c, g] = exp(σ) · cos(f[b, g], t'[b, c])       σ: the learnable log logit scale

/// DenseCLIP's context decoder as an `ImageConditionedHead`.
public struct ContextDecoderHead: ImageConditionedHead {
    public var kind: String { "denseclip" }
    public var parameters: NamedTensors
    /// P (the CLIP embedding), Dc (the decoder width), heads, decoder layers.
    public let dim: Int, width: Int, heads: Int, layers: Int

    let memoryNorm: LayerNormLayer, memoryLinear: LinearLayer, memoryOutNorm: LayerNormLayer
    let textNorm: LayerNormLayer, textLinear: LinearLayer
    let blocks: [Block]
    let outNorm: LayerNormLayer, outLinear: LinearLayer
    let linearWeights: Set<String>
    static let gammaName = "gamma", logitScaleName = "logit_scale"

    struct Block: Sendable {
        let selfAttn: AttentionLayer, crossAttn: AttentionLayer
        let norm1: LayerNormLayer, norm2: LayerNormLayer, norm3: LayerNormLayer
        let fc1: LinearLayer, fc2: LinearLayer
    }

    /// A head for embeddings of `dim` values, decoder width `width` (DenseCLIP: 256), `heads`
    /// attention heads (4) and `layers` decoder layers (DenseCLIP's default config: 3); σ starts at
    /// `logScale` (default log(1/0.07), DenseCLIP's τ = 0.07). Initial parameters as DenseCLIP's
    /// `_init_weights`, seeded: Linear weights uniform with std 0.02 (for its truncated normal),
    /// biases 0, layer norms 1 and 0; γ = 1e-4. Throws for sizes below 1 or a width that the heads
    /// do not divide.
    public init(dim: Int, width: Int = 256, heads: Int = 4, layers: Int = 3, logScale: Float = logf(1 / 0.07), seed: UInt64 = 0) throws {
        guard dim >= 1 else { throw ZeroSegError.invalidArgument("the embedding size must be at least 1", parameter: "dim") }
        guard width >= 1 else { throw ZeroSegError.invalidArgument("the decoder width must be at least 1", parameter: "width") }
        guard heads >= 1 && width % heads == 0 else {
            throw ZeroSegError.invalidArgument("the number of heads (\(heads)) must divide the decoder width (\(width))", parameter: "heads")
        }
        guard layers >= 1 else { throw ZeroSegError.invalidArgument("the number of decoder layers must be at least 1", parameter: "layers") }
        guard logScale.isFinite else { throw ZeroSegError.invalidArgument("the log logit scale must be finite", parameter: "logScale") }
        self.dim = dim; self.width = width; self.heads = heads; self.layers = layers
        let pre = "context_decoder."
        memoryNorm = LayerNormLayer(name: pre + "memory_proj.0", dim: dim)
        memoryLinear = LinearLayer(name: pre + "memory_proj.1", input: dim, output: width, bias: true)
        memoryOutNorm = LayerNormLayer(name: pre + "memory_proj.2", dim: width)
        textNorm = LayerNormLayer(name: pre + "text_proj.0", dim: dim)
        textLinear = LinearLayer(name: pre + "text_proj.1", input: dim, output: width, bias: true)
        blocks = (0..<layers).map { i in
            let l = pre + "decoder.\(i)."
            func attn(_ n: String) -> AttentionLayer {
                AttentionLayer(qName: l + n + ".q_proj", kName: l + n + ".k_proj", vName: l + n + ".v_proj", projName: l + n + ".proj",
                               dim: width, heads: heads, qkvBias: false)
            }
            return Block(selfAttn: attn("self_attn"), crossAttn: attn("cross_attn"),
                         norm1: LayerNormLayer(name: l + "norm1", dim: width), norm2: LayerNormLayer(name: l + "norm2", dim: width),
                         norm3: LayerNormLayer(name: l + "norm3", dim: width),
                         fc1: LinearLayer(name: l + "mlp.0", input: width, output: 4 * width, bias: true),
                         fc2: LinearLayer(name: l + "mlp.3", input: 4 * width, output: width, bias: true))
        }
        outNorm = LayerNormLayer(name: pre + "out_proj.0", dim: width)
        outLinear = LinearLayer(name: pre + "out_proj.1", input: width, output: dim, bias: true)
        var p = NamedTensors()
        var lw = Set<String>()
        func add(_ l: LinearLayer) { for t in l.initial(seed: seed) { p.append(t) }; lw.insert(l.weightName) }
        func add(_ n: LayerNormLayer) { for t in n.initial() { p.append(t) } }
        add(memoryNorm); add(memoryLinear); add(memoryOutNorm); add(textNorm); add(textLinear)
        for b in blocks {
            for l in b.selfAttn.linears + b.crossAttn.linears { add(l) }
            add(b.norm1); add(b.norm2); add(b.norm3); add(b.fc1); add(b.fc2)
        }
        add(outNorm); add(outLinear)
        p.append(NamedTensor(Self.gammaName, [dim], [Float](repeating: 1e-4, count: dim)))
        p.append(NamedTensor(Self.logitScaleName, [], [logScale]))
        parameters = p
        linearWeights = lw
    }

    /// Weight decay on the Linear weights only (not biases, layer norms, γ or σ).
    public func decays(_ name: String) -> Bool { linearWeights.contains(name) }

    struct BlockTape: Sendable {
        let norm1: LayerNormTape, selfAttn: AttentionTape, norm2: LayerNormTape, crossAttn: AttentionTape
        let norm3: LayerNormTape, mlpIn: [Float], hidden: [Float]
    }

    final class Tape: HeadTape {
        let batch: Int, classes: Int, cells: Int
        let text: [Float], memNorm: LayerNormTape, memNormed: [Float], memOut: LayerNormTape, mem: [Float]
        let textNorm: LayerNormTape, textNormed: [Float]
        let blocks: [BlockTape]
        let outNorm: LayerNormTape, outNormed: [Float], diff: [Float]
        let u: [Float], uNorms: [Float], v: [Float], vNorms: [Float], scores: [Float]
        init(batch: Int, classes: Int, cells: Int, text: [Float], memNorm: LayerNormTape, memNormed: [Float], memOut: LayerNormTape, mem: [Float],
             textNorm: LayerNormTape, textNormed: [Float], blocks: [BlockTape], outNorm: LayerNormTape, outNormed: [Float], diff: [Float],
             u: [Float], uNorms: [Float], v: [Float], vNorms: [Float], scores: [Float]) {
            self.batch = batch; self.classes = classes; self.cells = cells
            self.text = text; self.memNorm = memNorm; self.memNormed = memNormed; self.memOut = memOut; self.mem = mem
            self.textNorm = textNorm; self.textNormed = textNormed; self.blocks = blocks
            self.outNorm = outNorm; self.outNormed = outNormed; self.diff = diff
            self.u = u; self.uNorms = uNorms; self.v = v; self.vNorms = vNorms; self.scores = scores
        }
    }

    func check(text: [Float], classes c: Int, global: [Float], patches: [Float], batch b: Int, cells g: Int) throws {
        guard c >= 1, b >= 1, g >= 1 else {
            throw ZeroSegError.invalidArgument("denseclip head: \(c) classes, \(b) images, \(g) grid cells (each must be at least 1)")
        }
        guard text.count == c * dim, global.count == b * dim, patches.count == b * g * dim else {
            throw ZeroSegError.invalidArgument("denseclip head: inputs of \(text.count), \(global.count), \(patches.count) values, "
                                               + "expected [\(c), \(dim)], [\(b), \(dim)], [\(b), \(g), \(dim)]")
        }
    }

    public func forward(text: [Float], classes c: Int, global: [Float], patches: [Float], batch b: Int,
                        gridHeight: Int, gridWidth: Int, threads: Int, record: Bool) throws -> (scores: [Float], tape: (any HeadTape)?) {
        let g = gridHeight * gridWidth, p = dim, w = width, n = 1 + g
        try check(text: text, classes: c, global: global, patches: patches, batch: b, cells: g)
        let budget = enterThreads(threads)
        defer { budget.leave() }
        let ps = parameters
        // vc[B, 1+G, P] = cat(g_b, f_b); mem[B, 1+G, Dc]
        var vc = [Float](repeating: 0, count: b * n * p)
        for bi in 0..<b {
            for j in 0..<p { vc[bi * n * p + j] = global[bi * p + j] }
            for r in 0..<(g * p) { vc[bi * n * p + p + r] = patches[bi * g * p + r] }
        }
        let (m0, mt0) = memoryNorm.forward(ps, vc, rows: b * n)
        let m1 = memoryLinear.forward(ps, m0, rows: b * n)
        let (mem, mt2) = memoryOutNorm.forward(ps, m1, rows: b * n)
        // x[B, C, Dc] = text_proj(t), the same for every image
        let (t0, tt0) = textNorm.forward(ps, text, rows: c)
        let x0 = textLinear.forward(ps, t0, rows: c)
        var x = [Float](repeating: 0, count: b * c * w)
        for bi in 0..<b { for r in 0..<(c * w) { x[bi * c * w + r] = x0[r] } }
        var tapes: [BlockTape] = []
        for bl in blocks {
            let (h1, n1) = bl.norm1.forward(ps, x, rows: b * c)
            let (a1, _, st) = bl.selfAttn.forward(ps, query: h1, keyValue: h1, batch: b, nq: c, nk: c, logits: false)
            addInPlace(&x, a1)
            let (h2, n2) = bl.norm2.forward(ps, x, rows: b * c)
            let (a2, _, ct) = bl.crossAttn.forward(ps, query: h2, keyValue: mem, batch: b, nq: c, nk: n, logits: false)
            addInPlace(&x, a2)
            let (h3, n3) = bl.norm3.forward(ps, x, rows: b * c)
            let hid = bl.fc1.forward(ps, h3, rows: b * c)
            addInPlace(&x, bl.fc2.forward(ps, geluForward(hid), rows: b * c))
            if record { tapes.append(BlockTape(norm1: n1, selfAttn: st, norm2: n2, crossAttn: ct, norm3: n3, mlpIn: h3, hidden: hid)) }
        }
        let (o0, ot) = outNorm.forward(ps, x, rows: b * c)
        let diff = outLinear.forward(ps, o0, rows: b * c)          // [B, C, P]
        // t'[b, c] = t_c + γ ⊙ diff[b, c]
        let gamma = ps[Self.gammaName]
        var tp = [Float](repeating: 0, count: b * c * p)
        for bi in 0..<b { for ci in 0..<c { for j in 0..<p {
            tp[(bi * c + ci) * p + j] = text[ci * p + j] + gamma[j] * diff[(bi * c + ci) * p + j]
        } } }
        let (v, vn) = l2NormalizeRows(tp, rows: b * c, dim: p)
        let (u, un) = l2NormalizeRows(patches, rows: b * g, dim: p)
        // scores[b][C, G] = exp(σ) · v_b[C, P] · u_b[G, P]ᵀ
        let s = expf(ps[Self.logitScaleName][0])
        var scores = [Float](repeating: 0, count: b * c * g)
        v.withUnsafeBufferPointer { vp in u.withUnsafeBufferPointer { up in scores.withUnsafeMutableBufferPointer { sp in
            for bi in 0..<b {
                gemmNT(vp.baseAddress! + bi * c * p, lda: p, up.baseAddress! + bi * g * p, ldb: p, sp.baseAddress! + bi * c * g, ldc: g,
                       m: c, n: g, k: p, alpha: s)
            }
        } } }
        guard record else { return (scores, nil) }
        return (scores, Tape(batch: b, classes: c, cells: g, text: text, memNorm: mt0, memNormed: m0, memOut: mt2, mem: mem,
                             textNorm: tt0, textNormed: t0, blocks: tapes, outNorm: ot, outNormed: o0, diff: diff,
                             u: u, uNorms: un, v: v, vNorms: vn, scores: scores))
    }

    public func backward(_ tape: any HeadTape, dScores: [Float], threads: Int) throws
        -> (parameters: NamedTensors, text: [Float], global: [Float], patches: [Float]) {
        guard let tp = tape as? Tape, tp.blocks.count == blocks.count else {
            throw ZeroSegError.invalidArgument("denseclip head: the tape was not recorded by a denseclip head of this shape")
        }
        let (b, c, g, p, w) = (tp.batch, tp.classes, tp.cells, dim, width), n = 1 + g
        guard dScores.count == b * c * g else {
            throw ZeroSegError.invalidArgument("denseclip head: score gradient of \(dScores.count) values, expected [\(b), \(c), \(g)]")
        }
        let budget = enterThreads(threads)
        defer { budget.leave() }
        let ps = parameters
        var gr = ps.zeros
        let s = expf(ps[Self.logitScaleName][0])
        // scores = s · cos: dσ = Σ dscores ⊙ scores; dcos = s · dscores
        var dSigma = 0.0
        for i in dScores.indices { dSigma += Double(dScores[i]) * Double(tp.scores[i]) }
        gr[Self.logitScaleName] = [Float(dSigma)]
        let dcos = dScores.map { $0 * s }
        // per image: dv_b[C, P] = dcos_b[C, G] · u_b[G, P]; du_b[G, P] = dcos_bᵀ · v_b[C, P]
        var dv = [Float](repeating: 0, count: b * c * p), du = [Float](repeating: 0, count: b * g * p)
        dcos.withUnsafeBufferPointer { dp in tp.u.withUnsafeBufferPointer { up in tp.v.withUnsafeBufferPointer { vp in
        dv.withUnsafeMutableBufferPointer { dvp in du.withUnsafeMutableBufferPointer { dup in
            for bi in 0..<b {
                gemmNN(dp.baseAddress! + bi * c * g, lda: g, up.baseAddress! + bi * g * p, ldb: p, dvp.baseAddress! + bi * c * p, ldc: p,
                       m: c, n: p, k: g)
                gemmTN(dp.baseAddress! + bi * c * g, lda: g, vp.baseAddress! + bi * c * p, ldb: p, dup.baseAddress! + bi * g * p, ldc: p,
                       m: g, n: p, k: c)
            }
        } } } } }
        let dTp = l2NormalizeRowsBackward(y: tp.v, norms: tp.vNorms, dy: dv, rows: b * c, dim: p)
        var dPatches = l2NormalizeRowsBackward(y: tp.u, norms: tp.uNorms, dy: du, rows: b * g, dim: p)
        // t' = t + γ ⊙ diff
        let gamma = ps[Self.gammaName]
        var dText = [Float](repeating: 0, count: c * p), dGamma = [Float](repeating: 0, count: p)
        var dDiff = [Float](repeating: 0, count: b * c * p)
        for bi in 0..<b { for ci in 0..<c { for j in 0..<p {
            let i = (bi * c + ci) * p + j
            dText[ci * p + j] += dTp[i]
            dGamma[j] += dTp[i] * tp.diff[i]
            dDiff[i] = dTp[i] * gamma[j]
        } } }
        gr[Self.gammaName] = dGamma
        // diff = out_proj(x)
        let dO0 = outLinear.backward(ps, x: tp.outNormed, dy: dDiff, rows: b * c, grads: &gr)
        var dx = outNorm.backward(ps, tp.outNorm, dy: dO0, rows: b * c, grads: &gr)
        var dMem = [Float](repeating: 0, count: b * n * w)
        for (bl, bt) in zip(blocks, tp.blocks).reversed() {
            // x += fc2(gelu(fc1(norm3(x))))
            let dAct = bl.fc2.backward(ps, x: geluForward(bt.hidden), dy: dx, rows: b * c, grads: &gr)
            let dH3 = bl.fc1.backward(ps, x: bt.mlpIn, dy: geluBackward(bt.hidden, dAct), rows: b * c, grads: &gr)
            addInPlace(&dx, bl.norm3.backward(ps, bt.norm3, dy: dH3, rows: b * c, grads: &gr))
            // x += cross_attn(norm2(x), mem)
            let (dH2, dm) = bl.crossAttn.backward(ps, bt.crossAttn, dOut: dx, dLogits: nil, grads: &gr)
            addInPlace(&dMem, dm)
            addInPlace(&dx, bl.norm2.backward(ps, bt.norm2, dy: dH2, rows: b * c, grads: &gr))
            // x += self_attn(norm1(x))
            var (dH1, dKV) = bl.selfAttn.backward(ps, bt.selfAttn, dOut: dx, dLogits: nil, grads: &gr)
            addInPlace(&dH1, dKV)
            addInPlace(&dx, bl.norm1.backward(ps, bt.norm1, dy: dH1, rows: b * c, grads: &gr))
        }
        // x was text_proj(t) expanded over the images: sum the images' gradients
        var dX0 = [Float](repeating: 0, count: c * w)
        for bi in 0..<b { for r in 0..<(c * w) { dX0[r] += dx[bi * c * w + r] } }
        let dT0 = textLinear.backward(ps, x: tp.textNormed, dy: dX0, rows: c, grads: &gr)
        addInPlace(&dText, textNorm.backward(ps, tp.textNorm, dy: dT0, rows: c, grads: &gr))
        // mem = memory_proj(vc)
        let dM1 = memoryOutNorm.backward(ps, tp.memOut, dy: dMem, rows: b * n, grads: &gr)
        let dM0 = memoryLinear.backward(ps, x: tp.memNormed, dy: dM1, rows: b * n, grads: &gr)
        let dVc = memoryNorm.backward(ps, tp.memNorm, dy: dM0, rows: b * n, grads: &gr)
        var dGlobal = [Float](repeating: 0, count: b * p)
        for bi in 0..<b {
            for j in 0..<p { dGlobal[bi * p + j] = dVc[bi * n * p + j] }
            for r in 0..<(g * p) { dPatches[bi * g * p + r] += dVc[bi * n * p + p + r] }
        }
        return (gr, dText, dGlobal, dPatches)
    }
}
