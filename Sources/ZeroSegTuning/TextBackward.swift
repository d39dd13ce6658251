import CBLAS
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegCLIP
import ZeroSegSegmentation
import CKernels
import Foundation

// Backward pass of the frozen CLIP text transformer, for CoOp prompt learning (Zhou et al. 2022,
// "Learning to Prompt for Vision-Language Models"): N context vectors in token-embedding space,
// shared by all classes, replace the "X" placeholders of "X X X X classname."; CLIP's weights
// stay frozen, so only gradients with respect to the input embeddings are computed (no weight
// gradients). One sequence at a time, causal attention, through the same block as `encodeTokens`
// (`EncoderLayer.forwardRecording`, Block.swift; transformers' CLIPTextTransformer).
//
// Forward: x0 = token embeddings (ctx rows replaced) + position embeddings; per layer
//   h1 = LN1(x); qkv = h1 · Wqkvᵀ + b; a = causal softmax(q kᵀ / √d) v per head; mid = x + a · Woᵀ + bo
//   h2 = LN2(mid); m = h2 · W1ᵀ + b1; out = mid + act(m) · W2ᵀ + b2
// then e = LNf(x_L[pool]) · Wpᵀ. `textForward` records what the backward needs (a `TextTape` of
// `LayerTape`s); `textBackward`, the block's backward, returns dL/dx0 given dL/de.

/// A CoOp prompt: [start] ctx_1..ctx_N [BPE ids of "name."] [end]. The token ids at `ctxRange`
/// are placeholders (the id of "X") whose embeddings `textInputs` replaces by the context vectors.
public struct CoOpPrompt: Sendable, Equatable {
    public let tokens: [Int32]
    /// Positions of the context vectors (1..<1+N).
    public let ctxRange: Range<Int>
    /// The pooled position: the first end token (`eos_token_id`), as `encodeTokens` and
    /// transformers pool; for prompts from `coopPrompt`, the last token.
    public let pool: Int

    /// Throws for no tokens, or a context range or pooled position outside them.
    public init(tokens: [Int32], ctxRange: Range<Int>, pool: Int) throws {
        guard !tokens.isEmpty else { throw ZeroSegError("CoOpPrompt: no tokens") }
        guard ctxRange.lowerBound >= 0 && ctxRange.upperBound <= tokens.count else {
            throw ZeroSegError("CoOpPrompt: context range \(ctxRange) outside the \(tokens.count) tokens")
        }
        guard tokens.indices.contains(pool) else {
            throw ZeroSegError("CoOpPrompt: pooled position \(pool) outside the \(tokens.count) tokens")
        }
        self.tokens = tokens
        self.ctxRange = ctxRange
        self.pool = pool
    }
}

/// The recorded forward pass of one sequence through the text encoder (`textForward`).
public struct TextTape: Sendable {
    /// Sequence length T and pooled position.
    public let tokens: Int, pool: Int
    /// Per layer, what the backward pass needs (`EncoderLayer.forwardRecording`, one sequence of T rows).
    public let layers: [LayerTape]
    /// The last layer's output at the pooled row (input of the final layer norm): [W]; its mean and
    /// 1/√(var + eps).
    public let finalInput: [Float], finalMean: Float, finalRstd: Float
    /// finalLayerNorm(finalInput): [W].
    public let pooled: [Float]
    /// text_projection(pooled): [P], not normalised.
    public let embedding: [Float]
    /// The model's fingerprint (a tape belongs to the model that made it).
    public let model: String
}

extension CLIPModel {
    /// The CoOp prompt for a class: `tokenize("X " × n + name + ".")`, whose positions 1...n hold the
    /// id of "X" (one BPE token, as CoOp's "X X X X name."). Refuses (throws) prompts longer
    /// than the context length (77) rather than truncating the class name, a negative `n`, and a
    /// vocabulary in which "X" is not one token.
    public func coopPrompt(name: String, contextLength n: Int) throws -> CoOpPrompt {
        guard n >= 0 else { throw ZeroSegError("coopPrompt: negative number of context vectors (\(n))") }
        let limit = config.text.maxPositionEmbeddings
        let x = tokenizer.encode("X")
        guard x.count == 1 else { throw ZeroSegError("coopPrompt: \"X\" is \(x.count) BPE tokens in this vocabulary, expected 1") }
        let (ids, truncated) = tokenizer.tokenize(String(repeating: "X ", count: n) + name + ".", positiveContextLength: limit)
        if truncated {
            throw ZeroSegError("the prompt for \"\(name)\" with \(n) context vectors is longer than the context length \(limit) tokens")
        }
        guard ids.count >= n + 2 && ids[1..<(1 + n)].allSatisfy({ $0 == x[0] }) else {
            throw ZeroSegError("coopPrompt: positions 1...\(n) of the prompt for \"\(name)\" are not the \"X\" placeholder (\(ids))")
        }
        let pool = ids.firstIndex(of: Int32(config.text.eosTokenId)) ?? (ids.count - 1)
        return try CoOpPrompt(tokens: ids, ctxRange: 1..<(1 + n), pool: pool)
    }

    /// x0: [T, W] = token embedding of each id (rows at `ctxRange` replaced by `context` [N, W]) +
    /// position embeddings. Throws for a context of the wrong size, more tokens than positions, or
    /// a token id outside the vocabulary.
    public func textInputs(_ p: CoOpPrompt, context: [Float]) throws -> [Float] {
        let c = config.text, w = c.hiddenSize, t = p.tokens.count
        guard context.count == p.ctxRange.count * w else {
            throw ZeroSegError("textInputs: context has \(context.count) values, expected \(p.ctxRange.count) x \(w)")
        }
        guard t <= c.maxPositionEmbeddings else {
            throw ZeroSegError("textInputs: \(t) tokens, more than the \(c.maxPositionEmbeddings) positions")
        }
        for (ti, tok) in p.tokens.enumerated() where !p.ctxRange.contains(ti) && !(tok >= 0 && Int(tok) < c.vocabSize) {
            throw ZeroSegError("textInputs: token id \(tok) is outside the vocabulary (\(c.vocabSize))")
        }
        var x0 = [Float](repeating: 0, count: t * w)
        for (ti, tok) in p.tokens.enumerated() {
            let pe = textModel.positionEmbedding + ti * w
            if p.ctxRange.contains(ti) {
                let r = (ti - p.ctxRange.lowerBound) * w
                for i in 0..<w { x0[ti * w + i] = context[r + i] + pe[i] }
            } else {
                let e = textModel.tokenEmbedding + Int(tok) * w
                for i in 0..<w { x0[ti * w + i] = e[i] + pe[i] }
            }
        }
        return x0
    }

    /// The rows of dL/dx0 [T, W] at the context positions: dL/dctx [N, W] through this prompt
    /// (the position embeddings are constant, the ctx rows enter x0 as they are).
    public func contextGradient(_ p: CoOpPrompt, inputGradient: [Float]) throws -> [Float] {
        let w = config.text.hiddenSize
        guard inputGradient.count == p.tokens.count * w else {
            throw ZeroSegError("contextGradient: \(inputGradient.count) values, expected [\(p.tokens.count), \(w)]")
        }
        return Array(inputGradient[(p.ctxRange.lowerBound * w)..<(p.ctxRange.upperBound * w)])
    }

    /// The text encoder on one sequence of input embeddings x0: [T, W] (causal attention), recording
    /// what `textBackward` needs. `tape.embedding` = text_projection(final_layer_norm(x_L[pool])),
    /// [P], not normalised; equals `encodeTokens(normalize: false)` when x0 comes from token ids.
    /// Throws for a token count outside 1...max positions, inputs of the wrong size or a pooled
    /// position outside the tokens.
    public func textForward(inputs x0: [Float], tokens t: Int, pool: Int, threads: Int = defaultThreads) throws -> TextTape {
        let c = config.text, w = c.hiddenSize, p = config.projectionDim
        guard t >= 1 && t <= c.maxPositionEmbeddings else {
            throw ZeroSegError("textForward: \(t) tokens (must be 1...\(c.maxPositionEmbeddings))")
        }
        guard x0.count == t * w else { throw ZeroSegError("textForward: inputs have \(x0.count) values, expected \(t) x \(w)") }
        guard (0..<t).contains(pool) else { throw ZeroSegError("textForward: pooled position \(pool) outside the \(t) tokens") }
        let budget = enterThreads(threads)
        defer { budget.leave() }
        let x = Buffer(x0)
        let layers = textModel.layers.map { $0.forwardRecording(x.ptr, RaggedSequence.batch(1, tokens: t), causal: true) }
        let fin = Buffer(Array(UnsafeBufferPointer(start: x.ptr + pool * w, count: w)))
        let pooled = Buffer(w), mean = Buffer(1), rstd = Buffer(1), emb = Buffer(p)
        textModel.finalLayerNorm(fin.ptr, pooled.ptr, rows: 1, mean: mean.ptr, rstd: rstd.ptr)
        ZeroSegCore.linear(pooled.ptr, textProjection, nil, emb.ptr, m: 1, n: p, k: w)
        return TextTape(tokens: t, pool: pool, layers: layers, finalInput: fin.array, finalMean: mean[0], finalRstd: rstd[0],
                        pooled: pooled.array, embedding: emb.array, model: fingerprint)
    }

    /// dL/dx0: [T, W] given dL/d(tape.embedding): [P]. Rows after the pooled one get zeros (causal).
    /// Throws for a tape of another model or a gradient of the wrong size.
    public func textBackward(_ tape: TextTape, gradEmbedding: [Float], threads: Int = defaultThreads) throws -> [Float] {
        let budget = enterThreads(threads)
        defer { budget.leave() }
        let c = config.text, w = c.hiddenSize, p = config.projectionDim, t = tape.tokens
        guard tape.model == fingerprint && tape.layers.count == textModel.layers.count else {
            throw ZeroSegError("textBackward: the tape was recorded by another model")
        }
        guard gradEmbedding.count == p else { throw ZeroSegError("textBackward: gradient has \(gradEmbedding.count) values, expected \(p)") }
        let dx = Buffer(zeros: t * w)  // dL/d(residual stream), from the top down
        // e[P] = pooled[W] · Wpᵀ (Wp: [P, W])  →  dPooled[W] = dE[P] · Wp
        let dE = Buffer(gradEmbedding), dPooled = Buffer(w), fin = Buffer(tape.finalInput)
        let mean = Buffer([tape.finalMean]), rstd = Buffer([tape.finalRstd])
        gemmNN(dE.ptr, lda: p, textProjection, ldb: w, dPooled.ptr, ldc: w, m: 1, n: w, k: p)
        layerNormBackward(textModel.finalLayerNorm, x: fin.ptr, mean: mean.ptr, rstd: rstd.ptr,
                          dy: dPooled.ptr, dx: dx.ptr + tape.pool * w, rows: 1)
        withExtendedLifetime((dE, dPooled, fin, mean, rstd)) {}
        for (l, tp) in zip(textModel.layers, tape.layers).reversed() {
            let heads = l.selfAttn.heads, d = w / heads, inter = l.fc1.outFeatures
            let dM = Buffer(t * inter), dH = Buffer(t * w), dA = Buffer(t * w)
            let dQKV = Buffer(zeros: t * 3 * w), dP = Buffer(t * t)
            // MLP: out = mid + act(m) · W2ᵀ + b2, m = h2 · W1ᵀ + b1 (W2: [W, I], W1: [I, W])
            gemmNN(dx.ptr, lda: w, l.fc2.weight, ldb: inter, dM.ptr, ldc: inter, m: t, n: inter, k: w)
            let m = tp.preActivation.ptr
            for i in 0..<(t * inter) { dM.ptr[i] *= activationDerivative(m[i], l.act) }
            gemmNN(dM.ptr, lda: inter, l.fc1.weight, ldb: w, dH.ptr, ldc: w, m: t, n: w, k: inter)
            layerNormBackward(l.layerNorm2, x: tp.mid.ptr, mean: tp.ln2Mean.ptr, rstd: tp.ln2Rstd.ptr,
                              dy: dH.ptr, dx: dx.ptr, rows: t)  // dx is now dL/dmid
            // attention: mid = x + a · Woᵀ + bo
            gemmNN(dx.ptr, lda: w, l.selfAttn.outProj.weight, ldb: w, dA.ptr, ldc: w, m: t, n: w, k: w)
            let scale = 1 / Float(d).squareRoot()
            let qkv = tp.qkv.ptr
            for h in 0..<heads {
                let prob = tp.probs.ptr + h * t * t, dO = dA.ptr + h * d
                let q = qkv + h * d, k = qkv + w + h * d, v = qkv + 2 * w + h * d
                // dV_h = Pᵀ dO_h;  dP = dO_h V_hᵀ
                gemmTN(prob, lda: t, dO, ldb: w, dQKV.ptr + 2 * w + h * d, ldc: 3 * w, m: t, n: d, k: t)
                gemmNT(dO, lda: w, v, ldb: 3 * w, dP.ptr, ldc: t, m: t, n: t, k: d)
                // dS = P ⊙ (dP − rowsum(dP ⊙ P)), times the score scale (S = scale · q kᵀ);
                // P is zero past the diagonal, so is dS
                for r in 0..<t {
                    let pr = prob + r * t, dr = dP.ptr + r * t
                    var dot: Float = 0
                    for j in 0...r { dot += pr[j] * dr[j] }
                    for j in 0...r { dr[j] = pr[j] * (dr[j] - dot) * scale }
                    for j in (r + 1)..<t { dr[j] = 0 }
                }
                // dQ_h = dS K_h;  dK_h = dSᵀ Q_h
                gemmNN(dP.ptr, lda: t, k, ldb: 3 * w, dQKV.ptr + h * d, ldc: 3 * w, m: t, n: d, k: t)
                gemmTN(dP.ptr, lda: t, q, ldb: 3 * w, dQKV.ptr + w + h * d, ldc: 3 * w, m: t, n: d, k: t)
            }
            // qkv = h1 · Wqkvᵀ + b (Wqkv: [3W, W])
            gemmNN(dQKV.ptr, lda: 3 * w, l.selfAttn.qkv.weight, ldb: w, dH.ptr, ldc: w, m: t, n: w, k: 3 * w)
            layerNormBackward(l.layerNorm1, x: tp.input.ptr, mean: tp.ln1Mean.ptr, rstd: tp.ln1Rstd.ptr,
                              dy: dH.ptr, dx: dx.ptr, rows: t)  // dx is now dL/dx (the layer's input)
            withExtendedLifetime((dM, dH, dA, dQKV, dP, tp)) {}
        }
        return dx.array
    }
}

/// d/de of e / ‖e‖ applied to `grad` (= dL/d(e/‖e‖)): (g − y (y·g)) / ‖e‖ with y = e/‖e‖.
/// ‖e‖ is clamped at 1e-12 as `l2Normalize` does (below it the map is e · 1e12).
public func l2NormalizeBackward(_ e: [Float], grad: [Float]) throws -> [Float] {
    guard e.count == grad.count else { throw ZeroSegError("l2NormalizeBackward: \(e.count) vs \(grad.count) values") }
    var s = 0.0
    for v in e { s += Double(v) * Double(v) }
    let norm = s.squareRoot()
    if norm <= 1e-12 { return grad.map { Float(Double($0) * 1e12) } }
    var dot = 0.0
    for i in e.indices { dot += Double(e[i]) * Double(grad[i]) }
    dot /= norm  // y·g
    return e.indices.map { Float((Double(grad[$0]) - Double(e[$0]) / norm * dot) / norm) }
}

/// The derivative of the activation `act` (computed in Double):
/// quick_gelu: σ(1.702x) + 1.702x σ(1.702x)(1 − σ(1.702x));  gelu: Φ(x) + x φ(x);
/// gelu tanh: 0.5(1 + tanh u) + 0.5x (1 − tanh² u) √(2/π)(1 + 3·0.044715 x²), u = √(2/π)(x + 0.044715 x³).
public func activationDerivative(_ v: Float, _ act: Activation) -> Float {
    let x = Double(v)
    switch act {
    case .quickGELU:
        let s = 1 / (1 + exp(-1.702 * x))
        return Float(s + 1.702 * x * s * (1 - s))
    case .gelu:
        return Float(0.5 * (1 + erf(x / 2.0.squareRoot())) + x * exp(-0.5 * x * x) / (2 * Double.pi).squareRoot())
    case .geluTanh, .geluNew:
        let k = (2 / Double.pi).squareRoot()
        let th = tanh(k * (x + 0.044715 * x * x * x))
        return Float(0.5 * (1 + th) + 0.5 * x * (1 - th * th) * k * (1 + 3 * 0.044715 * x * x))
    }
}

// MARK: - Kernels of the backward pass

/// Layer-norm backward with respect to the input, accumulated: dx[rows, C] +=
/// rstd · (g − mean(g) − x̂ · mean(g ⊙ x̂)) with g = dy ⊙ weight, x̂ = (x − mean) · rstd.
func layerNormBackward(_ ln: LayerNorm, x: ConstFloatPtr, mean: ConstFloatPtr, rstd: ConstFloatPtr,
                       dy: ConstFloatPtr, dx: FloatPtr, rows: Int) {
    let c = ln.dim, w = ln.weight
    for r in 0..<rows {
        let xr = x + r * c, gr = dy + r * c, dr = dx + r * c
        let mu = mean[r], inv = rstd[r]
        var sg = 0.0, sgx = 0.0
        for i in 0..<c {
            let g = Double(gr[i] * w[i]), xh = Double((xr[i] - mu) * inv)
            sg += g
            sgx += g * xh
        }
        let mg = Float(sg / Double(c)), mgx = Float(sgx / Double(c))
        for i in 0..<c {
            let g = gr[i] * w[i], xh = (xr[i] - mu) * inv
            dr[i] += inv * (g - mg - xh * mgx)
        }
    }
}
