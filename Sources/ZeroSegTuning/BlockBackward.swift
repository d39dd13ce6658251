import CKernels
import ZeroSegCore
import ZeroSegCLIP

// Backward of the transformer block (Block.swift) with respect to its input, CLIP's weights
// frozen (no weight gradients): what the CoOp text backward and the VPT vision backward both run,
// layer by layer from the top down. With the block
//
//   h1 = LN1(x); q | k | v = h1 · Wqkvᵀ + b; a = softmax(q kᵀ / √d) v per head; mid = x + a · Woᵀ + bo
//   h2 = LN2(mid); m = h2 · W1ᵀ + b1; out = mid + act(m) · W2ᵀ + b2
//
// and g = dL/dout:
//   dm = (g · W2) ⊙ act'(m);  dmid = g + LN2ᵀ(dm · W1);  da = dmid · Wo
//   per (sequence, head): dV = Pᵀ da_h; dP = da_h V_hᵀ; dS = P ⊙ (dP − rowsum(dP ⊙ P)) / √d;
//                          dQ = dS K_h; dK = dSᵀ Q_h
//   dx = dmid + LN1ᵀ(dqkv · Wqkv)
// A sequence that continues a prefix of the batch (keys [K_pre; K], values [V_pre; V]) also
// gives dK_pre = dS[:, :np]ᵀ Q_h and dV_pre = P[:, :np]ᵀ dO_h, added to the prefix's own after
// all (sequence, head) pairs, in sequence order.
// The products with the weights run once over all rows of all sequences (one big M, split over
// the thread budget by `gemm`); attention per (sequence, head), the pairs split over the thread
// budget. Every output element is computed the same way whatever the split, so a given input
// gives the same bits for any thread count.

/// Work buffers of `EncoderLayer.backward`, reused across the layers of one pass. Not for
/// concurrent use.
package final class BackwardScratch {
    private var buffers: [Buffer] = []
    package init() {}
    /// Buffer `i`, at least `count` floats (contents undefined).
    func callAsFunction(_ i: Int, _ count: Int) -> Buffer {
        while buffers.count <= i { buffers.append(Buffer(0)) }
        if buffers[i].count < count { buffers[i] = Buffer(count) }
        return buffers[i]
    }
}

extension EncoderLayer {
    /// The block's backward pass over ragged sequences (`seqs`, as recorded in `tape` by
    /// `forwardRecording`; attention full or `causal`). dx: [R, W]: on entry dL/d(layer output),
    /// on exit dL/d(layer input) (with `inputRows`, only those rows: the others hold dL/d(mid), and
    /// the last product and LN1's backward run over those rows alone). `keysOnly` as the forward pass
    /// had it (`forwardRecording`): those rows' output was their input, so their gradient passes
    /// through, plus what their keys and values get. Runs with a budget of `threads`.
    package func backward(_ tape: LayerTape, _ seqs: [RaggedSequence], causal: Bool, dx: FloatPtr, threads: Int,
                          scratch: BackwardScratch? = nil, keysOnly k0: Int = 0, inputRows: Range<Int>? = nil) {
        let budget = enterThreads(threads)
        defer { budget.leave() }
        let scratch = scratch ?? BackwardScratch()
        let w = layerNorm1.dim, heads = selfAttn.heads, d = w / heads, inter = fc1.outFeatures
        let rows = seqs.reduce(0) { $0 + $1.count }
        precondition(tape.input.count == rows * w, "EncoderLayer.backward: the tape has \(tape.input.count / w) rows, the sequences \(rows)")
        let dM = scratch(0, rows * inter), dH = scratch(1, rows * w), dQKV = scratch(2, rows * 3 * w)
        defer { withExtendedLifetime((dM, dH, dQKV, tape)) {} }
        // MLP, over the rows after the keys-only ones (ra = R − k0 rows from row k0).
        // dm[Ra, I] = dx[Ra, W] · W2[W, I], times act'(m); dh2[Ra, W] = dm · W1[I, W]
        let ra = rows - k0, dxa = dx + k0 * w
        gemmNN(dxa, lda: w, fc2.weight, ldb: inter, dM.ptr, ldc: inter, m: ra, n: inter, k: w)
        activationBackward(tape.preActivation.ptr + k0 * inter, dM.ptr, count: ra * inter, act)
        gemmNN(dM.ptr, lda: inter, fc1.weight, ldb: w, dH.ptr + k0 * w, ldc: w, m: ra, n: w, k: inter)
        layerNormBackward(layerNorm2, x: tape.mid.ptr + k0 * w, mean: tape.ln2Mean.ptr + k0, rstd: tape.ln2Rstd.ptr + k0,
                          dy: dH.ptr + k0 * w, dx: dxa, rows: ra)  // dx is now dL/dmid
        // Attention. da[Ra, W] = dmid · Wo (into dH: dh2 is consumed)
        let dA = dH
        gemmNN(dxa, lda: w, selfAttn.outProj.weight, ldb: w, dA.ptr + k0 * w, ldc: w, m: ra, n: w, k: w)
        // Per (sequence, head). A continuation of a prefix of the batch (`forwardRecording`) also
        // gives dK, dV of the prefix's rows: into its own slice dPre[S][np, 2W] (dK | dV), added to
        // the prefix's rows afterwards in sequence order (deterministic whatever the split).
        func prefixRows(_ s: RaggedSequence) -> Int { s.prefix.map { seqs[$0].count } ?? 0 }
        var offsets: [Int] = [], o = 0, preOffsets: [Int] = [], po = 0
        for s in seqs {
            offsets.append(o); o += heads * s.count * (prefixRows(s) + s.count)
            preOffsets.append(po); po += prefixRows(s) * 2 * w
        }
        precondition(tape.probs.count == o, "EncoderLayer.backward: the tape's attention does not fit the sequences")
        // (A keys-only first sequence has no pairs: its dq | dk | dv start at zero.)
        let (parts, maxTK) = attentionPairParts(seqs, heads: heads, keysOnly: k0 > 0, parts: threadBudget), nt = parts.count
        dQKV.ptr.update(repeating: 0, count: k0 * 3 * w)
        let dPs = (0..<nt).map { scratch(4 + $0, maxTK) }, dPre = scratch(3, po)
        nonisolated(unsafe) let (qkvP, probsP, dAP, dQKVP, dPreP) = (ConstFloatPtr(tape.qkv.ptr), ConstFloatPtr(tape.probs.ptr),
                                                                     ConstFloatPtr(dA.ptr), dQKV.ptr, dPre.ptr)
        let dPPtrs = dPs.map(\.ptr)
        nonisolated(unsafe) let dPP = dPPtrs
        parallelFor(nt) { part in
            let dP = dPP[part]
            for item in parts[part] {
                let si = item / heads, s = seqs[si], h = item % heads, t = s.count, np = prefixRows(s)
                let pre = s.prefix.map { (qkv: qkvP + seqs[$0].row * 3 * w, dKV: dPreP + preOffsets[si]) }
                attentionHeadBackward(qkv: qkvP + s.row * 3 * w, probs: probsP + offsets[si] + h * t * (np + t),
                                      dOut: dAP + s.row * w + h * d, dQKV: dQKVP + s.row * 3 * w, dP: dP,
                                      tokens: t, width: w, head: h, headDim: d, causal: causal,
                                      prefix: pre.map { (qkv: $0.qkv, rows: np, dKV: $0.dKV) })
            }
        }
        withExtendedLifetime(dPs) {}
        // dK, dV of each prefix's rows += its continuations' parts, in sequence order
        for (si, s) in seqs.enumerated() {
            guard let pi = s.prefix else { continue }
            let ps = seqs[pi], src = dPre.ptr + preOffsets[si]
            for r in 0..<ps.count {
                let dst = dQKV.ptr + (ps.row + r) * 3 * w + w, sr = src + r * 2 * w
                for j in 0..<(2 * w) { dst[j] += sr[j] }
            }
        }
        // dh1[R, W] = dqkv[R, 3W] · Wqkv[3W, W]; dx = dmid + LN1ᵀ(dh1) (with `inputRows`, those rows)
        let r0 = inputRows?.lowerBound ?? 0, rn = inputRows?.count ?? rows
        precondition(r0 >= 0 && r0 + rn <= rows, "EncoderLayer.backward: inputRows outside the rows")
        gemmNN(dQKV.ptr + r0 * 3 * w, lda: 3 * w, selfAttn.qkv.weight, ldb: w, dH.ptr + r0 * w, ldc: w, m: rn, n: w, k: 3 * w)
        layerNormBackward(layerNorm1, x: tape.input.ptr + r0 * w, mean: tape.ln1Mean.ptr + r0, rstd: tape.ln1Rstd.ptr + r0,
                          dy: dH.ptr + r0 * w, dx: dx + r0 * w, rows: rn)
    }
}

/// Backward of one attention head of one sequence (single-threaded).
/// qkv: [T, 3W] (row stride 3W), probs: [T, np + T] (softmax output over the prefix's keys, then
/// the sequence's own; causal: zero past column np + r), dOut: dL/d(head output) [T, d] (row
/// stride W); writes dQ, dK, dV of the head into dQKV [T, 3W] (columns h·d, W + h·d, 2W + h·d);
/// dP: scratch [T, np + T]. `prefix`: the prefix's q | k | v [np, 3W] and where dK, dV of its rows
/// go: dKV [np, 2W] (columns h·d and W + h·d, written).
func attentionHeadBackward(qkv: ConstFloatPtr, probs: ConstFloatPtr, dOut: ConstFloatPtr, dQKV: FloatPtr, dP: FloatPtr,
                           tokens t: Int, width w: Int, head h: Int, headDim d: Int, causal: Bool,
                           prefix: (qkv: ConstFloatPtr, rows: Int, dKV: FloatPtr)? = nil) {
    let q = qkv + h * d, k = qkv + w + h * d, v = qkv + 2 * w + h * d
    let np = prefix?.rows ?? 0, nk = np + t
    let scale = 1 / Float(d).squareRoot()
    // dV_h[T, d] = P[:, np:]ᵀ dO_h;  dP[T, nk] = dO_h [V_pre; V]_hᵀ  (and dV_pre_h[np, d] = P[:, :np]ᵀ dO_h)
    gemmTN(probs + np, lda: nk, dOut, ldb: w, dQKV + 2 * w + h * d, ldc: 3 * w, m: t, n: d, k: t)
    if let prefix, np > 0 {
        gemmTN(probs, lda: nk, dOut, ldb: w, prefix.dKV + w + h * d, ldc: 2 * w, m: np, n: d, k: t)
        gemmNT(dOut, lda: w, prefix.qkv + 2 * w + h * d, ldb: 3 * w, dP, ldc: nk, m: t, n: np, k: d)
    }
    gemmNT(dOut, lda: w, v, ldb: 3 * w, dP + np, ldc: nk, m: t, n: t, k: d)
    // dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale (S = scale · q kᵀ); causal: P, and so dS, is zero
    // past column np + r
    for r in 0..<t {
        let pr = probs + r * nk, dr = dP + r * nk, n = causal ? np + r + 1 : nk
        var dot: Float = 0
        for j in 0..<n { dot += pr[j] * dr[j] }
        for j in 0..<n { dr[j] = pr[j] * (dr[j] - dot) * scale }
        for j in n..<nk { dr[j] = 0 }
    }
    // dQ_h = dS [K_pre; K]_h;  dK_h = dS[:, np:]ᵀ Q_h  (and dK_pre_h = dS[:, :np]ᵀ Q_h)
    if let prefix, np > 0 {
        gemmNN(dP, lda: nk, prefix.qkv + w + h * d, ldb: 3 * w, dQKV + h * d, ldc: 3 * w, m: t, n: d, k: np)
        gemmNN(dP + np, lda: nk, k, ldb: 3 * w, dQKV + h * d, ldc: 3 * w, m: t, n: d, k: t, beta: 1)
        gemmTN(dP, lda: nk, q, ldb: 3 * w, prefix.dKV + h * d, ldc: 2 * w, m: np, n: d, k: t)
    } else {
        gemmNN(dP, lda: nk, k, ldb: 3 * w, dQKV + h * d, ldc: 3 * w, m: t, n: d, k: t)
    }
    gemmTN(dP + np, lda: nk, q, ldb: 3 * w, dQKV + w + h * d, ldc: 3 * w, m: t, n: d, k: t)
}

/// g[n] *= act'(x[n]) for the activation's input x (Float vector kernels, `KernelLevel`; split over
/// the thread budget when large, in blocks of 64 so the split does not change the bits).
package func activationBackward(_ x: ConstFloatPtr, _ g: FloatPtr, count n: Int, _ act: Activation) {
    let blocks = (n + 63) / 64
    let nt = n >= 1 << 14 ? min(threadBudget, blocks) : 1
    nonisolated(unsafe) let (xp, gp) = (x, g)
    parallelFor(max(nt, 1)) { i in
        let start = blocks * i / nt * 64, end = min(blocks * (i + 1) / nt * 64, n)
        guard end > start else { return }
        switch act {
        case .quickGELU: zs_quick_gelu_grad(xp + start, gp + start, end - start)
        case .gelu: zs_gelu_erf_grad(xp + start, gp + start, end - start)
        case .geluTanh, .geluNew: zs_gelu_tanh_grad(xp + start, gp + start, end - start)
        }
    }
}

/// Layer-norm backward with respect to the input, accumulated: dx[rows, C] +=
/// rstd · (g − mean(g) − x̂ · mean(g ⊙ x̂)) with g = dy ⊙ weight, x̂ = (x − mean) · rstd
/// (row sums in Double; rows split over the thread budget when many).
func layerNormBackward(_ ln: LayerNorm, x: ConstFloatPtr, mean: ConstFloatPtr, rstd: ConstFloatPtr,
                       dy: ConstFloatPtr, dx: FloatPtr, rows: Int) {
    layerNormBackward(weight: ln.weight, cols: ln.dim, x: x, mean: mean, rstd: rstd, dy: dy, dx: dx, rows: rows)
}

/// `layerNormBackward` for a layer norm given by its weight [C].
func layerNormBackward(weight: ConstFloatPtr, cols c: Int, x: ConstFloatPtr, mean: ConstFloatPtr, rstd: ConstFloatPtr,
                       dy: ConstFloatPtr, dx: FloatPtr, rows: Int) {
    let nt = rows * c >= 1 << 15 ? min(threadBudget, rows) : 1
    nonisolated(unsafe) let (xp, mp, rp, dyp, dxp, wp) = (x, mean, rstd, dy, dx, weight)
    parallelFor(max(nt, 1)) { part in
        for r in (rows * part / nt)..<(rows * (part + 1) / nt) {
            let xr = xp + r * c, gr = dyp + r * c, dr = dxp + r * c
            let mu = mp[r], inv = rp[r]
            var sg = 0.0, sgx = 0.0
            for i in 0..<c {
                let g = Double(gr[i] * wp[i]), xh = Double((xr[i] - mu) * inv)
                sg += g
                sgx += g * xh
            }
            let mg = Float(sg / Double(c)), mgx = Float(sgx / Double(c))
            for i in 0..<c {
                let g = gr[i] * wp[i], xh = (xr[i] - mu) * inv
                dr[i] += inv * (g - mg - xh * mgx)
            }
        }
    }
}

/// Layer-norm backward with respect to the weight and bias, accumulated: dweight[C] += Σ_rows dy ⊙ x̂,
/// dbias[C] += Σ_rows dy (one thread, rows in order).
func layerNormParameterBackward(x: ConstFloatPtr, mean: ConstFloatPtr, rstd: ConstFloatPtr, dy: ConstFloatPtr,
                                dWeight: FloatPtr, dBias: FloatPtr, rows: Int, cols c: Int) {
    for r in 0..<rows {
        let xr = x + r * c, gr = dy + r * c, mu = mean[r], inv = rstd[r]
        for i in 0..<c {
            dWeight[i] += gr[i] * (xr[i] - mu) * inv
            dBias[i] += gr[i]
        }
    }
}
