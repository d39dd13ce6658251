import Foundation
import ZeroSegCore

// Learned layers of the image-conditioned heads (ZegCLIPHead.swift, ContextDecoderHead.swift), each
// a forward/backward pair over row-major arrays, llm.c style. Parameters live in the head's
// `NamedTensors` under torch's state-dict names; a layer knows its names and shapes, reads its
// tensors from the parameters and adds its parameter gradients into a gradient set of the same
// layout. Batches are [B, N, D] row-major, i.e. B·N rows of D. Products go through Core's gemm
// kernels, which split by shape over the calling thread's budget (`enterThreads` in the heads).

// MARK: - Initialisation

/// Seeded uniform values with standard deviation `std` (amplitude std·√3): the stand-in for the
/// papers' trunc_normal_(std=0.02) (deterministic: Synth.values on the tensor's name).
func headUniform(_ name: String, seed: UInt64, count: Int, std: Double) -> [Float] {
    Synth.values(name: name, seed: seed, count: count, amplitude: std * 3.0.squareRoot())
}

// MARK: - Linear

/// y[N, out] = x[N, in] · Wᵀ + b with `name.weight` [out, in] (torch layout) and, with `bias`,
/// `name.bias` [out].
struct LinearLayer: Sendable {
    let name: String, input: Int, output: Int, bias: Bool
    var weightName: String { name + ".weight" }
    var biasName: String { name + ".bias" }

    /// Initial tensors: weights seeded uniform with std 0.02, bias 0.
    func initial(seed: UInt64) -> [NamedTensor] {
        var t = [NamedTensor(weightName, [output, input], headUniform(weightName, seed: seed, count: output * input, std: 0.02))]
        if bias { t.append(NamedTensor(biasName, [output], [Float](repeating: 0, count: output))) }
        return t
    }

    // x: [N, in] -> y: [N, out]
    func forward(_ p: NamedTensors, _ x: [Float], rows n: Int) -> [Float] {
        var y = [Float](repeating: 0, count: n * output)
        let w = p[weightName]
        if bias {
            let b = p[biasName]
            ZeroSegCore.linear(x, w, b, &y, m: n, n: output, k: input)
        } else {
            ZeroSegCore.linear(x, w, nil, &y, m: n, n: output, k: input)
        }
        return y
    }

    // dy: [N, out], x: [N, in] -> dx: [N, in] = dy · W (empty when `inputGradient` is false);
    // g[weight] += dyᵀ · x [out, in]; g[bias] += Σ_rows dy
    func backward(_ p: NamedTensors, x: [Float], dy: [Float], rows n: Int, grads g: inout NamedTensors,
                  inputGradient: Bool = true) -> [Float] {
        gemmTN(dy, lda: output, x, ldb: input, &g[weightName], ldc: input, m: output, n: input, k: n, beta: 1)
        if bias {
            var db = g[biasName]
            for r in 0..<n { for j in 0..<output { db[j] += dy[r * output + j] } }
            g[biasName] = db
        }
        guard inputGradient else { return [] }
        var dx = [Float](repeating: 0, count: n * input)
        gemmNN(dy, lda: output, p[weightName], ldb: input, &dx, ldc: input, m: n, n: input, k: output)
        return dx
    }
}

// MARK: - Layer norm

/// What a layer norm's backward needs: its input [N, D] and per row the mean and 1/√(var + eps).
struct LayerNormTape: Sendable {
    let x: [Float], mean: [Float], rstd: [Float]
}

/// y[N, D] = (x − mean) / √(var + eps) · `name.weight` + `name.bias` per row (biased variance, as torch).
struct LayerNormLayer: Sendable {
    let name: String, dim: Int
    var eps: Float = 1e-5
    var weightName: String { name + ".weight" }
    var biasName: String { name + ".bias" }

    /// Initial tensors: weight 1, bias 0.
    func initial() -> [NamedTensor] {
        [NamedTensor(weightName, [dim], [Float](repeating: 1, count: dim)), NamedTensor(biasName, [dim], [Float](repeating: 0, count: dim))]
    }

    // x: [N, D] -> y: [N, D]
    func forward(_ p: NamedTensors, _ x: [Float], rows n: Int) -> (y: [Float], tape: LayerNormTape) {
        var y = [Float](repeating: 0, count: n * dim), mean = [Float](repeating: 0, count: n), rstd = mean
        layerNormRows(x, p[weightName], p[biasName], &y, rows: 0..<n, cols: dim, eps: eps, mean: &mean, rstd: &rstd)
        return (y, LayerNormTape(x: x, mean: mean, rstd: rstd))
    }

    // dy: [N, D] -> dx: [N, D] = rstd · (gw − mean(gw) − x̂ · mean(gw ⊙ x̂)), gw = dy ⊙ weight,
    // x̂ = (x − mean) · rstd; g[weight] += Σ_rows dy ⊙ x̂; g[bias] += Σ_rows dy
    func backward(_ p: NamedTensors, _ t: LayerNormTape, dy: [Float], rows n: Int, grads g: inout NamedTensors) -> [Float] {
        let w = p[weightName], c = dim
        var dw = g[weightName], db = g[biasName]
        var dx = [Float](repeating: 0, count: n * c)
        for r in 0..<n {
            let mu = t.mean[r], inv = t.rstd[r], o = r * c
            var sg = 0.0, sgx = 0.0
            for i in 0..<c {
                let xh = (t.x[o + i] - mu) * inv, gi = dy[o + i] * w[i]
                dw[i] += dy[o + i] * xh
                db[i] += dy[o + i]
                sg += Double(gi); sgx += Double(gi) * Double(xh)
            }
            let mg = Float(sg / Double(c)), mgx = Float(sgx / Double(c))
            for i in 0..<c {
                let xh = (t.x[o + i] - mu) * inv
                dx[o + i] = inv * (dy[o + i] * w[i] - mg - xh * mgx)
            }
        }
        g[weightName] = dw; g[biasName] = db
        return dx
    }
}

// MARK: - Activations

// relu(x) = max(x, 0); x: [n]
func reluForward(_ x: [Float]) -> [Float] { x.map { max($0, 0) } }
// dx = dy where x > 0, else 0 (torch's threshold_backward); x: the pre-activation
func reluBackward(_ x: [Float], _ dy: [Float]) -> [Float] { zip(x, dy).map { $0 > 0 ? $1 : 0 } }

// gelu(x) = x · Φ(x) = 0.5 x (1 + erf(x / √2)) (torch's nn.GELU(), approximate="none"); x: [n]
func geluForward(_ x: [Float]) -> [Float] {
    x.map { v in let d = Double(v); return Float(0.5 * d * (1 + erf(d / 2.0.squareRoot()))) }
}
// dx = dy · (Φ(x) + x φ(x)); x: the pre-activation
func geluBackward(_ x: [Float], _ dy: [Float]) -> [Float] {
    zip(x, dy).map { v, g in
        let d = Double(v)
        return Float(Double(g) * (0.5 * (1 + erf(d / 2.0.squareRoot())) + d * exp(-0.5 * d * d) / (2 * Double.pi).squareRoot()))
    }
}

// MARK: - L2 normalisation of rows

// x: [N, D] -> y = x / max(‖x‖, 1e-12) per row (F.normalize), and the clamped norms [N]
func l2NormalizeRows(_ x: [Float], rows n: Int, dim d: Int) -> (y: [Float], norms: [Float]) {
    var y = x, norms = [Float](repeating: 0, count: n)
    for r in 0..<n {
        var s = 0.0
        for j in 0..<d { s += Double(x[r * d + j]) * Double(x[r * d + j]) }
        let nr = Float(max(s.squareRoot(), 1e-12))
        norms[r] = nr
        for j in 0..<d { y[r * d + j] = x[r * d + j] / nr }
    }
    return (y, norms)
}

// dy: [N, D] -> dx = (dy − y (y·dy)) / ‖x‖ per row (dy / 1e-12 where the norm was clamped: there
// y = x / 1e-12 is linear)
func l2NormalizeRowsBackward(y: [Float], norms: [Float], dy: [Float], rows n: Int, dim d: Int) -> [Float] {
    var dx = [Float](repeating: 0, count: n * d)
    for r in 0..<n {
        let o = r * d
        if norms[r] <= 1e-12 { for j in 0..<d { dx[o + j] = dy[o + j] / norms[r] }; continue }
        var dot = 0.0
        for j in 0..<d { dot += Double(y[o + j]) * Double(dy[o + j]) }
        for j in 0..<d { dx[o + j] = (dy[o + j] - y[o + j] * Float(dot)) / norms[r] }
    }
    return dx
}

// MARK: - Multi-head attention

/// What the attention's backward needs.
struct AttentionTape: Sendable {
    /// Query input [B, Nq, D], key/value input [B, Nk, D].
    let xq: [Float], xkv: [Float]
    /// Projections q [B, Nq, D], k, v [B, Nk, D]; softmax probabilities [B, H, Nq, Nk]; the heads'
    /// concatenated outputs before `proj` [B, Nq, D].
    let q: [Float], k: [Float], v: [Float], probs: [Float], context: [Float]
    let batch: Int, nq: Int, nk: Int
}

/// Multi-head attention with separate q/k/v projections (bias optional) and an output projection
/// (with bias): out = proj(concat_h softmax(q_h k_hᵀ · d^-0.5) v_h), d = D / heads. Queries and
/// keys/values come from different inputs (cross-attention) or the same one (self-attention: the
/// caller adds the two input gradients). Optionally returns the scaled pre-softmax logits averaged
/// over the heads [B, Nq, Nk] (ZegCLIP's `attn_save.sum(dim=1) / num_heads`).
struct AttentionLayer: Sendable {
    let q: LinearLayer, k: LinearLayer, v: LinearLayer, proj: LinearLayer
    let dim: Int, heads: Int

    /// `qName` etc. are the projections' names (ZegCLIP: prefix.q, .k, .v, .proj; DenseCLIP:
    /// prefix.q_proj, .k_proj, .v_proj, .proj).
    init(qName: String, kName: String, vName: String, projName: String, dim: Int, heads: Int, qkvBias: Bool) {
        q = LinearLayer(name: qName, input: dim, output: dim, bias: qkvBias)
        k = LinearLayer(name: kName, input: dim, output: dim, bias: qkvBias)
        v = LinearLayer(name: vName, input: dim, output: dim, bias: qkvBias)
        proj = LinearLayer(name: projName, input: dim, output: dim, bias: true)
        self.dim = dim; self.heads = heads
    }

    var linears: [LinearLayer] { [q, k, v, proj] }
    var scale: Float { 1 / Float(dim / heads).squareRoot() }

    // xq: [B, Nq, D], xkv: [B, Nk, D] -> out: [B, Nq, D], mean logits [B, Nq, Nk] (with `logits`)
    func forward(_ p: NamedTensors, query xq: [Float], keyValue xkv: [Float], batch b: Int, nq: Int, nk: Int,
                 logits wantLogits: Bool) -> (out: [Float], logits: [Float]?, tape: AttentionTape) {
        let d = dim / heads, w = dim, sc = scale, invH = 1 / Float(heads)
        let qs = q.forward(p, xq, rows: b * nq), ks = k.forward(p, xkv, rows: b * nk), vs = v.forward(p, xkv, rows: b * nk)
        let qb = Buffer(qs), kb = Buffer(ks), vb = Buffer(vs)
        let probs = Buffer(zeros: b * heads * nq * nk), ctx = Buffer(zeros: b * nq * w)
        let mean = Buffer(zeros: wantLogits ? b * nq * nk : 0)
        for bi in 0..<b {
            for h in 0..<heads {
                let s = probs.ptr + (bi * heads + h) * nq * nk
                let qo = bi * nq * w + h * d, ko = bi * nk * w + h * d
                // s[Nq, Nk] = q_h k_hᵀ · scale
                gemmNT(qb.ptr + qo, lda: w, kb.ptr + ko, ldb: w, s, ldc: nk, m: nq, n: nk, k: d, alpha: sc)
                if wantLogits { for i in 0..<(nq * nk) { mean.ptr[bi * nq * nk + i] += s[i] * invH } }
                softmaxRows(s, rows: nq, n: nk)
                // ctx[:, h] = s · v_h
                gemmNN(s, lda: nk, vb.ptr + ko, ldb: w, ctx.ptr + qo, ldc: w, m: nq, n: d, k: nk)
            }
        }
        let context = ctx.array
        let out = proj.forward(p, context, rows: b * nq)
        withExtendedLifetime((qb, kb, vb)) {}
        return (out, wantLogits ? mean.array : nil,
                AttentionTape(xq: xq, xkv: xkv, q: qs, k: ks, v: vs, probs: probs.array, context: context, batch: b, nq: nq, nk: nk))
    }

    // dOut: [B, Nq, D] (nil: zero), dLogits: [B, Nq, Nk] (nil: zero) -> dxq [B, Nq, D], dxkv [B, Nk, D];
    // parameter gradients into g.
    //   dctx = dOut · Wproj; dV_h = P_hᵀ dctx_h; dP_h = dctx_h V_hᵀ
    //   dS_h = P_h ⊙ (dP_h − rowsum(dP_h ⊙ P_h)) + dLogits / H   (S_h = scale · q_h k_hᵀ)
    //   dQ_h = scale · dS_h K_h; dK_h = scale · dS_hᵀ Q_h
    func backward(_ p: NamedTensors, _ t: AttentionTape, dOut: [Float]?, dLogits: [Float]?,
                  grads g: inout NamedTensors) -> (dxq: [Float], dxkv: [Float]) {
        let d = dim / heads, w = dim, sc = scale, invH = 1 / Float(heads), (b, nq, nk) = (t.batch, t.nq, t.nk)
        let dctx = dOut.map { Buffer(proj.backward(p, x: t.context, dy: $0, rows: b * nq, grads: &g)) }
        let qb = Buffer(t.q), kb = Buffer(t.k), vb = Buffer(t.v), pb = Buffer(t.probs)
        let dq = Buffer(zeros: b * nq * w), dk = Buffer(zeros: b * nk * w), dv = Buffer(zeros: dctx == nil ? 0 : b * nk * w)
        let dS = Buffer(zeros: nq * nk)
        for bi in 0..<b {
            for h in 0..<heads {
                let prob = pb.ptr + (bi * heads + h) * nq * nk, ds = dS.ptr
                let qo = bi * nq * w + h * d, ko = bi * nk * w + h * d
                if let dctx {
                    // dV_h[Nk, d] = P_hᵀ dctx_h;  dP[Nq, Nk] = dctx_h V_hᵀ
                    gemmTN(prob, lda: nk, dctx.ptr + qo, ldb: w, dv.ptr + ko, ldc: w, m: nk, n: d, k: nq)
                    gemmNT(dctx.ptr + qo, lda: w, vb.ptr + ko, ldb: w, ds, ldc: nk, m: nq, n: nk, k: d)
                    for r in 0..<nq {
                        var dot: Float = 0
                        for j in 0..<nk { dot += prob[r * nk + j] * ds[r * nk + j] }
                        for j in 0..<nk { ds[r * nk + j] = prob[r * nk + j] * (ds[r * nk + j] - dot) }
                    }
                } else {
                    ds.update(repeating: 0, count: nq * nk)
                }
                if let dLogits { for i in 0..<(nq * nk) { ds[i] += dLogits[bi * nq * nk + i] * invH } }
                // dQ_h[Nq, d] = scale · dS K_h;  dK_h[Nk, d] = scale · dSᵀ Q_h
                gemmNN(ds, lda: nk, kb.ptr + ko, ldb: w, dq.ptr + qo, ldc: w, m: nq, n: d, k: nk, alpha: sc)
                gemmTN(ds, lda: nk, qb.ptr + qo, ldb: w, dk.ptr + ko, ldc: w, m: nk, n: d, k: nq, alpha: sc)
            }
        }
        withExtendedLifetime((qb, kb, vb, pb, dS)) {}
        let dxq = q.backward(p, x: t.xq, dy: dq.array, rows: b * nq, grads: &g)
        var dxkv = k.backward(p, x: t.xkv, dy: dk.array, rows: b * nk, grads: &g)
        if dctx != nil { addInPlace(&dxkv, v.backward(p, x: t.xkv, dy: dv.array, rows: b * nk, grads: &g)) }
        return (dxq, dxkv)
    }
}

/// a[i] += b[i]
@inline(__always)
func addInPlace(_ a: inout [Float], _ b: [Float]) {
    precondition(a.count == b.count)
    for i in a.indices { a[i] += b[i] }
}
