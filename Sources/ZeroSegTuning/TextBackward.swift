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
// gradients). Several prompts of different lengths at once as ragged rows (one [R, W] matrix for
// the linear layers, causal attention per prompt), through the same block as `encodeTokens`
// (`EncoderLayer.forwardRecording`, Block.swift; transformers' CLIPTextTransformer); the block's
// backward is `EncoderLayer.backward` (BlockBackward.swift).
//
// Forward: x0 = token embeddings (ctx rows replaced) + position embeddings; per layer
//   h1 = LN1(x); qkv = h1 · Wqkvᵀ + b; a = causal softmax(q kᵀ / √d) v per head; mid = x + a · Woᵀ + bo
//   h2 = LN2(mid); m = h2 · W1ᵀ + b1; out = mid + act(m) · W2ᵀ + b2
// then e = LNf(x_L[pool]) · Wpᵀ. `textForward(batch:)` records what the backward needs (a
// `TextBatchTape` of `LayerTape`s); `textBackward(_:gradEmbeddings:)` returns dL/dx0 of every
// prompt given dL/de. `textForward` / `textBackward` on one sequence are the batch of one.
// The text transformer is causal, so rows that are the same at the start of every prompt
// ([SOT] ctx_1..ctx_N) have the same states in every prompt: `sharingPrefix` runs them once as one
// sequence and each prompt's rest as its continuation (attending to the prefix's keys and
// values); the backward pass then gives the shared rows' gradient summed over the prompts
// (`textInputGradients`), about half the rows of a CoOp batch.

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

/// The recorded forward pass of several sequences through the text encoder (`textForward(batch:)`).
public struct TextBatchTape: Sendable {
    /// Token count and pooled position of each sequence.
    public let lengths: [Int], pools: [Int]
    /// Per layer, what the backward pass needs (`EncoderLayer.forwardRecording`, the sequences as
    /// ragged rows one after the other).
    public let layers: [LayerTape]
    /// The last layer's output at the pooled rows (input of the final layer norm): [S, W]; its
    /// per-row mean and 1/√(var + eps): [S].
    let finalInput: Buffer, finalMean: Buffer, finalRstd: Buffer
    /// text_projection(final_layer_norm(pooled rows)): [S][P], not normalised.
    public let embeddings: [[Float]]
    /// The model's fingerprint (a tape belongs to the model that made it).
    public let model: String
    /// Rows 0..<shared of every sequence's input were identical and ran once, as one sequence that
    /// the rest of each sequence continues (`textForward(batch:pools:sharingPrefix:)`); 0: none.
    public let shared: Int

    /// The sequences as ragged rows and each one's pooled row (`layout`).
    var seqs: [RaggedSequence] { Self.layout(lengths: lengths, pools: pools, shared: shared).seqs }
    var pooledRows: [Int] { Self.layout(lengths: lengths, pools: pools, shared: shared).pooledRows }

    /// Sequences of `lengths` tokens as ragged rows: one after the other; with a shared prefix,
    /// the prefix first (rows 0..<shared), then each sequence's rows after it, continuing it
    /// (position `shared`, prefix 0). `pooledRows[i]`: the row of sequence i's pooled position.
    static func layout(lengths: [Int], pools: [Int], shared: Int) -> (seqs: [RaggedSequence], pooledRows: [Int]) {
        var r = shared, own: [RaggedSequence] = []
        for t in lengths {
            own.append(RaggedSequence(row: r, count: t - shared, position: shared, prefix: shared > 0 ? 0 : nil))
            r += t - shared
        }
        return ((shared > 0 ? [RaggedSequence(row: 0, count: shared)] : []) + own, zip(own, pools).map { $0.row + $1 - shared })
    }
}

/// dL/dx0 of a batch of sequences (`textInputGradients`): the shared prefix's rows [shared, W]
/// (one input of every sequence: the sum over sequences) and each sequence's rows after it
/// [T_i − shared, W]. Without a shared prefix, `prefix` is empty and `rows` the whole inputs.
public struct TextInputGradients: Sendable {
    public let shared: Int
    public let prefix: [Float]
    public let rows: [[Float]]

    /// dL/dctx [N, W] summed over all sequences (`prompts[i]` made sequence i): the rows at each
    /// prompt's `ctxRange`, the shared ones counted once (they already hold the sum).
    public func context(_ prompts: [CoOpPrompt], width w: Int) throws -> [Float] {
        guard prompts.count == rows.count else {
            throw ZeroSegError("TextInputGradients.context: \(prompts.count) prompts for \(rows.count) sequences")
        }
        let n = prompts.first?.ctxRange.count ?? 0
        guard prompts.allSatisfy({ $0.ctxRange.count == n }) else { throw ZeroSegError("TextInputGradients.context: prompts with different context lengths") }
        var dCtx = [Float](repeating: 0, count: n * w)
        if let first = prompts.first {
            for (k, pos) in first.ctxRange.enumerated() where pos < shared {
                for j in 0..<w { dCtx[k * w + j] += prefix[pos * w + j] }
            }
        }
        for (p, dx) in zip(prompts, rows) {
            for (k, pos) in p.ctxRange.enumerated() where pos >= shared {
                for j in 0..<w { dCtx[k * w + j] += dx[(pos - shared) * w + j] }
            }
        }
        return dCtx
    }
}

/// The recorded forward pass of one sequence through the text encoder (`textForward`).
public struct TextTape: Sendable {
    let batch: TextBatchTape
    /// Sequence length T and pooled position.
    public var tokens: Int { batch.lengths[0] }
    public var pool: Int { batch.pools[0] }
    /// Per layer, what the backward pass needs (`EncoderLayer.forwardRecording`, one sequence of T rows).
    public var layers: [LayerTape] { batch.layers }
    /// The last layer's output at the pooled row (input of the final layer norm): [W]; its mean and
    /// 1/√(var + eps).
    public var finalInput: [Float] { batch.finalInput.array }
    public var finalMean: Float { batch.finalMean[0] }
    public var finalRstd: Float { batch.finalRstd[0] }
    /// text_projection(final_layer_norm(finalInput)): [P], not normalised.
    public var embedding: [Float] { batch.embeddings[0] }
    /// The model's fingerprint (a tape belongs to the model that made it).
    public var model: String { batch.model }
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
        let w = config.text.hiddenSize
        guard x0.count == t * w else { throw ZeroSegError("textForward: inputs have \(x0.count) values, expected \(t) x \(w)") }
        return TextTape(batch: try textForward(batch: [x0], pools: [pool], threads: threads))
    }

    /// dL/dx0: [T, W] given dL/d(tape.embedding): [P]. Rows after the pooled one get zeros (causal).
    /// Throws for a tape of another model or a gradient of the wrong size.
    public func textBackward(_ tape: TextTape, gradEmbedding: [Float], threads: Int = defaultThreads) throws -> [Float] {
        try textBackward(tape.batch, gradEmbeddings: [gradEmbedding], threads: threads)[0]
    }

    /// The text encoder on several sequences of input embeddings x0_i: [T_i, W] at once (ragged
    /// rows: one product per linear layer over all tokens; causal attention per sequence),
    /// recording what `textBackward(_:gradEmbeddings:)` needs; `pools[i]`: the pooled position of
    /// sequence i. The embeddings equal `textForward` on each sequence alone up to rounding.
    /// Throws for no sequences, a token count outside 1...max positions, inputs that are not whole
    /// rows of W, or a pooled position outside its sequence.
    public func textForward(batch x0s: [[Float]], pools: [Int], threads: Int = defaultThreads) throws -> TextBatchTape {
        try textForward(batch: x0s, pools: pools, sharingPrefix: false, threads: threads)
    }

    /// `textForward(batch:pools:)`; with `sharingPrefix`, the longest run of leading rows that is
    /// the same (bit for bit) in every sequence, up to the first pooled position, runs once as one
    /// sequence, and the rest of each sequence continues it (attends to its keys and values; the
    /// text transformer is causal, so those rows' states are the same in every sequence): the CoOp
    /// prompts' [SOT] ctx_1..ctx_N. Falls back to the plain batch (`tape.shared` = 0) for one
    /// sequence or no shared row. Use `textInputGradients` for the backward pass of a shared tape.
    public func textForward(batch x0s: [[Float]], pools: [Int], sharingPrefix: Bool, threads: Int = defaultThreads) throws -> TextBatchTape {
        let c = config.text, w = c.hiddenSize, p = config.projectionDim
        guard !x0s.isEmpty, x0s.count == pools.count else {
            throw ZeroSegError("textForward: \(x0s.count) sequences and \(pools.count) pooled positions")
        }
        var lengths: [Int] = []
        for (x0, pool) in zip(x0s, pools) {
            guard x0.count % w == 0 else { throw ZeroSegError("textForward: inputs have \(x0.count) values, not rows of \(w)") }
            let t = x0.count / w
            guard t >= 1 && t <= c.maxPositionEmbeddings else {
                throw ZeroSegError("textForward: \(t) tokens (must be 1...\(c.maxPositionEmbeddings))")
            }
            guard (0..<t).contains(pool) else { throw ZeroSegError("textForward: pooled position \(pool) outside the \(t) tokens") }
            lengths.append(t)
        }
        let budget = enterThreads(threads)
        defer { budget.leave() }
        let ns = lengths.count
        // Shared rows: identical in every sequence (bitwise), at most up to the first pooled row
        // (every sequence keeps its pooled row, and so at least one row, of its own).
        var shared = 0
        if sharingPrefix && ns > 1 {
            let limit = pools.min()!
            let first = x0s[0]
            while shared < limit
                    && x0s.dropFirst().allSatisfy({ x0 in (0..<w).allSatisfy { x0[shared * w + $0].bitPattern == first[shared * w + $0].bitPattern } }) {
                shared += 1
            }
        }
        let rows = lengths.reduce(0, +) - (shared > 0 ? (ns - 1) * shared : 0)
        let x = Buffer(rows * w)
        if shared > 0 { x0s[0].withUnsafeBufferPointer { x.ptr.update(from: $0.baseAddress!, count: shared * w) } }
        var r = shared
        for (x0, t) in zip(x0s, lengths) {
            x0.withUnsafeBufferPointer { (x.ptr + r * w).update(from: $0.baseAddress! + shared * w, count: (t - shared) * w) }
            r += t - shared
        }
        let (seqs, pooledRows) = TextBatchTape.layout(lengths: lengths, pools: pools, shared: shared)
        let scratch = BlockScratch()
        let layers = textModel.layers.map { $0.forwardRecording(x.ptr, seqs, causal: true, scratch: scratch) }
        let fin = Buffer(ns * w), pooled = Buffer(ns * w), mean = Buffer(ns), rstd = Buffer(ns), emb = Buffer(ns * p)
        for (si, pr) in pooledRows.enumerated() { (fin.ptr + si * w).update(from: x.ptr + pr * w, count: w) }
        textModel.finalLayerNorm(fin.ptr, pooled.ptr, rows: ns, mean: mean.ptr, rstd: rstd.ptr)
        ZeroSegCore.linear(pooled.ptr, textProjection, nil, emb.ptr, m: ns, n: p, k: w)
        withExtendedLifetime((x, pooled, scratch)) {}
        return TextBatchTape(lengths: lengths, pools: pools, layers: layers, finalInput: fin, finalMean: mean, finalRstd: rstd,
                             embeddings: (0..<ns).map { Array(UnsafeBufferPointer(start: emb.ptr + $0 * p, count: p)) },
                             model: fingerprint, shared: shared)
    }

    /// dL/dx0_i: [T_i, W] of every sequence given dL/d(tape.embeddings[i]): [P] each. Rows after a
    /// sequence's pooled one get zeros (causal). Throws for a tape of another model or gradients of
    /// the wrong size.
    public func textBackward(_ tape: TextBatchTape, gradEmbeddings: [[Float]], threads: Int = defaultThreads) throws -> [[Float]] {
        guard tape.shared == 0 else {
            throw ZeroSegError("textBackward: the tape shares a prefix between its sequences (use textInputGradients)")
        }
        return try textInputGradients(tape, gradEmbeddings: gradEmbeddings, threads: threads).rows
    }

    /// dL/dx0 given dL/d(tape.embeddings[i]): [P] each, for any tape (shared prefix or not): the
    /// shared rows' gradient summed over the sequences, and each sequence's own rows. Rows after a
    /// sequence's pooled one get zeros (causal). Throws for a tape of another model or gradients of
    /// the wrong size.
    public func textInputGradients(_ tape: TextBatchTape, gradEmbeddings: [[Float]], threads: Int = defaultThreads) throws -> TextInputGradients {
        let w = config.text.hiddenSize, p = config.projectionDim, ns = tape.lengths.count
        guard tape.model == fingerprint && tape.layers.count == textModel.layers.count else {
            throw ZeroSegError("textBackward: the tape was recorded by another model")
        }
        guard gradEmbeddings.count == ns, gradEmbeddings.allSatisfy({ $0.count == p }) else {
            throw ZeroSegError("textBackward: gradients of \(gradEmbeddings.map(\.count)) values for \(ns) sequences, expected \(p) each")
        }
        let budget = enterThreads(threads)
        defer { budget.leave() }
        let seqs = tape.seqs, rows = seqs.reduce(0) { $0 + $1.count }
        let dx = Buffer(zeros: rows * w)  // dL/d(residual stream), from the top down
        // e[S, P] = pooled[S, W] · Wpᵀ (Wp: [P, W])  →  dPooled[S, W] = dE[S, P] · Wp
        let dE = Buffer(gradEmbeddings.flatMap { $0 }), dPooled = Buffer(ns * w), dFin = Buffer(zeros: ns * w)
        gemmNN(dE.ptr, lda: p, textProjection, ldb: w, dPooled.ptr, ldc: w, m: ns, n: w, k: p)
        layerNormBackward(textModel.finalLayerNorm, x: tape.finalInput.ptr, mean: tape.finalMean.ptr, rstd: tape.finalRstd.ptr,
                          dy: dPooled.ptr, dx: dFin.ptr, rows: ns)
        for (si, pr) in tape.pooledRows.enumerated() { (dx.ptr + pr * w).update(from: dFin.ptr + si * w, count: w) }
        withExtendedLifetime((dE, dPooled, dFin)) {}
        let scratch = BackwardScratch()
        for (l, tp) in zip(textModel.layers, tape.layers).reversed() {
            l.backward(tp, seqs, causal: true, dx: dx.ptr, threads: threads, scratch: scratch)
        }
        return TextInputGradients(shared: tape.shared, prefix: Array(UnsafeBufferPointer(start: dx.ptr, count: tape.shared * w)),
                                  rows: seqs.suffix(ns).map { Array(UnsafeBufferPointer(start: dx.ptr + $0.row * w, count: $0.count * w)) })
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

/// The derivative of the activation `act` (computed in Double; the reference of the Float kernels
/// behind `activationBackward`, BlockBackward.swift):
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
