import Foundation
import ZeroSegCore
import ZeroSegCLIP

// Deep visual prompt tuning (VPT-deep, Jia et al. 2022) as ZegCLIP uses it (Zhou et al. 2023,
// `VPTCLIPVisionTransformer` in models/backbone/img_encoder.py, deep mode with total_d_layer =
// L − 1): N learnable prompt tokens per layer, shared by every crop, inserted after the class
// token; CLIP's weights stay frozen.
//
//   x0 = pre_layrnorm(class / patch embeddings + position embeddings)           [B, 1 + G, W]
//   P_i = E_i · Wpᵀ + bp                  (E: [L, N, W]; one shared Linear W → W)  [N, W]
//   layer 0 input: cat(x0[:, :1], P_0, x0[:, 1:])                                 [B, T = 1 + N + G, W]
//   before layer i >= 1: rows 1...N of every crop replaced by P_i
//   y = prompt_norm(x_L) (LayerNorm, eps 1e-6); tokens = visual_projection(post_layernorm(y)) at
//   the class row and the G patch rows (prompt rows dropped)                      [B, 1 + G, P]
//
// The passes hold the prompt rows once, as a keys-only prefix shared by every crop
// (`promptedLayout`): only their keys and values are ever used, and they are the same for every crop.
//
// With N = 0 this is the plain encoder and tokens = visual_projection(post_layernorm(x_L)) (no
// prompt_norm: ZegCLIP's CLIPVisionTransformer), i.e. `tokenEmbeddings(visionHidden(...))`.
// ZegCLIP applies dropout (p = 0.1) to the projected prompts while training; here it is not
// applied (training is deterministic: the same inputs give the same bits).
//
// Backward (`promptedBackward`): from dL/d(tokens) through visual_projection, post_layernorm,
// prompt_norm (whose weight and bias get gradients) and the layers (`EncoderLayer.backward`) down;
// at the input of layer i, dP_i = Σ_crops dx[:, 1...N] (the shared prompt rows' gradient; then
// zeroed: the prompts replaced the previous layer's outputs there); dE_i = dP_i · Wp,
// dWp += dP_iᵀ · E_i, dbp += Σ_rows dP_i. CLIP's weights and the pixels get no gradients.

/// The learnable tensors of deep visual prompts (names as in a prompt file):
/// - `visual_prompts.embeddings` [L, N, W]: row 0 ZegCLIP's prompt_embeddings (before layer 0),
///   rows 1...L−1 its deep_prompt_embeddings;
/// - `visual_prompts.proj.weight` [W, W] (torch Linear layout [out, in]), `visual_prompts.proj.bias`
///   [W]: ZegCLIP's shared prompt_proj;
/// - `visual_prompts.norm.weight` [W], `visual_prompts.norm.bias` [W]: ZegCLIP's prompt_norm
///   (LayerNorm, eps 1e-6).
public struct VisualPrompts: Sendable {
    public static let embeddingsName = "visual_prompts.embeddings"
    public static let projWeightName = "visual_prompts.proj.weight"
    public static let projBiasName = "visual_prompts.proj.bias"
    public static let normWeightName = "visual_prompts.norm.weight"
    public static let normBiasName = "visual_prompts.norm.bias"
    public static let names = [embeddingsName, projWeightName, projBiasName, normWeightName, normBiasName]
    /// prompt_norm's epsilon (ZegCLIP: nn.LayerNorm(W, eps=1e-6)).
    public static let normEps: Float = 1e-6

    public var parameters: NamedTensors
    /// N, prompt tokens per layer.
    public let count: Int
    /// L (vision layers) and W (vision width).
    public let layers: Int, width: Int

    /// Seeded initial prompts (`Synth.values`, deterministic): embeddings uniform(±v) with
    /// v = √(6 / (3·p² + W)) (p: patch size; VPT's / ZegCLIP's xavier-style bound); proj.weight
    /// uniform with ZegCLIP's kaiming_normal(fan_out) standard deviation √(2/W) (amplitude √(6/W));
    /// proj.bias uniform(±1/√W) (torch Linear's default); norm weight 1, bias 0. Throws for a count
    /// outside 0...256.
    public init(model: CLIPModel, count n: Int, seed: UInt64 = 0) throws {
        let c = model.config.vision, w = c.hiddenSize, l = c.numHiddenLayers, p = c.patchSize
        guard (0...256).contains(n) else {
            throw ZeroSegError.invalidArgument("the number of visual prompt tokens must be between 0 and 256", parameter: "count")
        }
        let v = (6.0 / Double(3 * p * p + w)).squareRoot()
        parameters = NamedTensors([
            NamedTensor(Self.embeddingsName, [l, n, w], Synth.values(name: Self.embeddingsName, seed: seed, count: l * n * w, amplitude: v)),
            NamedTensor(Self.projWeightName, [w, w], Synth.values(name: Self.projWeightName, seed: seed, count: w * w,
                                                                  amplitude: (6.0 / Double(w)).squareRoot())),
            NamedTensor(Self.projBiasName, [w], Synth.values(name: Self.projBiasName, seed: seed, count: w, amplitude: 1 / Double(w).squareRoot())),
            NamedTensor(Self.normWeightName, [w], [Float](repeating: 1, count: w)),
            NamedTensor(Self.normBiasName, [w], [Float](repeating: 0, count: w)),
        ])
        count = n; layers = l; width = w
    }

    /// Prompts from named tensors (e.g. read from a file); throws unless the five tensors are
    /// present with the model's shapes ([L, N, W], [W, W], [W], [W], [W]) and finite. Other tensors
    /// are left out.
    public init(parameters t: NamedTensors, model: CLIPModel) throws {
        let c = model.config.vision, w = c.hiddenSize, l = c.numHiddenLayers
        guard let es = t.shape(Self.embeddingsName), es.count == 3, es[0] == l, es[2] == w else {
            throw ZeroSegError("visual prompts: \(Self.embeddingsName) missing or not of shape [\(l), N, \(w)]")
        }
        let want: [(String, [Int])] = [(Self.embeddingsName, es), (Self.projWeightName, [w, w]), (Self.projBiasName, [w]),
                                       (Self.normWeightName, [w]), (Self.normBiasName, [w])]
        var p = NamedTensors()
        for (name, shape) in want {
            guard t.shape(name) == shape else {
                throw ZeroSegError("visual prompts: \(name) has shape \(t.shape(name).map { "\($0)" } ?? "none"), expected \(shape)")
            }
            guard t[name].allSatisfy(\.isFinite) else { throw ZeroSegError("visual prompts: \(name) has non-finite values") }
            p.append(NamedTensor(name, shape, t[name]))
        }
        parameters = p; count = es[1]; layers = l; width = w
    }

    func fits(_ model: CLIPModel) -> Bool {
        layers == model.config.vision.numHiddenLayers && width == model.config.vision.hiddenSize
    }
}

/// The recorded forward pass of `CLIPModel.promptedForward`: the output tokens and what
/// `promptedBackward` needs.
public struct VisionTape: Sendable {
    /// Crops, patch grid and prompt tokens per layer.
    public let batch: Int, gh: Int, gw: Int, count: Int
    /// The output tokens visual_projection(post_layernorm(·)) at the class and patch rows:
    /// [B, 1 + G, P], not normalised.
    public let tokens: Buffer
    /// Per layer, what its backward needs (rows as `promptedLayout`: the N prompt rows once, then B
    /// sequences of 1 + G rows continuing them).
    public let layers: [LayerTape]
    /// x_L at the class and patch rows [B·(1 + G), W] and prompt_norm's per-row statistics (N > 0).
    let last: Buffer, promptNormMean: Buffer, promptNormRstd: Buffer
    /// post_layernorm's input [B·(1 + G), W] (prompt_norm(x_L), or x_L when N = 0) and statistics.
    let normed: Buffer, postMean: Buffer, postRstd: Buffer
    /// The prompts the pass ran with.
    let prompts: VisualPrompts
    /// The model's fingerprint (a tape belongs to the model that made it).
    public let model: String

    /// Floats held by the tape (the layer tapes are most of it).
    public var floats: Int {
        layers.reduce(0) { $0 + $1.floats } + tokens.count + last.count + normed.count + 4 * postMean.count
    }
}

extension CLIPModel {
    /// Output tokens [B, 1 + G, P] (class token first, then the patches row by row; not normalised)
    /// of pixels [B, 3, H, W] (preprocessed) through the vision tower with deep visual prompts;
    /// `prompts` nil or with N = 0: `tokenEmbeddings(visionHidden(...))`. For inference: nothing is
    /// recorded. Throws for an image smaller than one patch or prompts of another model.
    public func promptedTokens(pixels: ConstFloatPtr, batch b: Int, height: Int, width: Int, prompts: VisualPrompts?,
                               threads: Int = defaultThreads) throws -> (tokens: Buffer, gh: Int, gw: Int) {
        guard let prompts, prompts.count > 0 else {
            let (x, gh, gw) = try visionHidden(pixels: pixels, batch: b, height: height, width: width, threads: threads)
            return (tokenEmbeddings(hidden: x, batch: b, tokens: gh * gw + 1, threads: threads), gh, gw)
        }
        let budget = enterThreads(threads)
        defer { budget.leave() }
        return try promptedRun(pixels: pixels, batch: b, height: height, width: width, prompts: prompts, record: false).map { ($0.tokens, $0.gh, $0.gw) }!
    }

    /// `promptedTokens` recording what `promptedBackward` needs (`tape.tokens` are the output;
    /// with N = 0, the plain encoder, up to rounding). Throws as `promptedTokens`.
    public func promptedForward(pixels: ConstFloatPtr, batch b: Int, height: Int, width: Int, prompts: VisualPrompts,
                                threads: Int = defaultThreads) throws -> VisionTape {
        let budget = enterThreads(threads)
        defer { budget.leave() }
        return try promptedRun(pixels: pixels, batch: b, height: height, width: width, prompts: prompts, record: true)!
    }

    private func promptedRun(pixels: ConstFloatPtr, batch b: Int, height: Int, width: Int, prompts: VisualPrompts,
                             record: Bool) throws -> VisionTape? {
        guard prompts.fits(self) else { throw ZeroSegError("the visual prompts do not fit this model") }
        guard b >= 1 else { throw ZeroSegError("promptedForward: no crops") }
        let c = config.vision, w = c.hiddenSize, pd = config.projectionDim, n = prompts.count, nl = visionModel.layers.count
        let (x0, gh, gw) = try visionEmbeddings(pixels: pixels, batch: b, height: height, width: width)
        let t0 = gh * gw + 1, kept = b * t0
        // P[L, N, W] = E · Wpᵀ + bp (one product for every layer)
        let pr = prompts.parameters
        let e = Buffer(pr[VisualPrompts.embeddingsName]), pw = Buffer(pr[VisualPrompts.projWeightName])
        let pb = Buffer(pr[VisualPrompts.projBiasName])
        let pRows = Buffer(nl * n * w)
        if n > 0 { ZeroSegCore.linear(e.ptr, pw.ptr, pb.ptr, pRows.ptr, m: nl * n, n: w, k: w) }
        // x[N + B·(1 + G), W] = P_i, then the crops' class and patch rows (`promptedLayout`)
        let x = Buffer((n + kept) * w)
        (x.ptr + n * w).update(from: x0.ptr, count: kept * w)
        let seqs = promptedLayout(batch: b, tokens: t0, prompts: n), scratch = BlockScratch()
        var tapes: [LayerTape] = []
        for (li, layer) in visionModel.layers.enumerated() {
            x.ptr.update(from: pRows.ptr + li * n * w, count: n * w)
            if record {
                tapes.append(layer.forwardRecording(x.ptr, seqs, causal: false, keysOnly: n, scratch: scratch))
            } else {
                layer.forwardBatchPrefix(x.ptr, seqs, causal: false, keysOnly: n, scratch: scratch)
            }
        }
        // The class and patch rows of x_L: [B·(1 + G), W]
        let last = Buffer(kept * w)
        last.ptr.update(from: x.ptr + n * w, count: kept * w)
        let pnMean = Buffer(record && n > 0 ? kept : 0), pnRstd = Buffer(record && n > 0 ? kept : 0)
        let normed: Buffer
        if n > 0 {
            normed = Buffer(kept * w)
            let nw = Buffer(pr[VisualPrompts.normWeightName]), nb = Buffer(pr[VisualPrompts.normBiasName])
            if record {
                layerNormRows(last.ptr, nw.ptr, nb.ptr, normed.ptr, rows: 0..<kept, cols: w, eps: VisualPrompts.normEps,
                              mean: pnMean.ptr, rstd: pnRstd.ptr)
            } else {
                layerNorm(last.ptr, nw.ptr, nb.ptr, normed.ptr, rows: kept, cols: w, eps: VisualPrompts.normEps)
            }
            withExtendedLifetime((nw, nb)) {}
        } else {
            normed = last
        }
        let post = Buffer(kept * w), postMean = Buffer(record ? kept : 0), postRstd = Buffer(record ? kept : 0)
        visionModel.postLayernorm(normed.ptr, post.ptr, rows: kept, mean: record ? postMean.ptr : nil, rstd: record ? postRstd.ptr : nil)
        let tokens = Buffer(kept * pd)
        ZeroSegCore.linear(post.ptr, visualProjection, nil, tokens.ptr, m: kept, n: pd, k: w)
        withExtendedLifetime((x0, e, pw, pb, pRows, x, post, scratch)) {}
        return VisionTape(batch: b, gh: gh, gw: gw, count: n, tokens: tokens, layers: tapes, last: last, promptNormMean: pnMean,
                          promptNormRstd: pnRstd, normed: normed, postMean: postMean, postRstd: postRstd, prompts: prompts,
                          model: fingerprint)
    }

    /// Gradients of the five prompt tensors (names and shapes of `tape`'s prompts' parameters,
    /// summed over the crops) given dL/d(tape.tokens): [B, 1 + G, P]. With N = 0 all are zero.
    /// Throws for a tape of another model or a gradient of the wrong size.
    public func promptedBackward(_ tape: VisionTape, dTokens: [Float], threads: Int = defaultThreads) throws -> NamedTensors {
        guard tape.model == fingerprint, tape.prompts.fits(self), tape.layers.count == visionModel.layers.count else {
            throw ZeroSegError("promptedBackward: the tape was recorded by another model")
        }
        let w = config.vision.hiddenSize, pd = config.projectionDim, n = tape.count, b = tape.batch, nl = visionModel.layers.count
        let t0 = tape.gh * tape.gw + 1, kept = b * t0
        guard dTokens.count == kept * pd else {
            throw ZeroSegError("promptedBackward: gradient has \(dTokens.count) values, expected [\(b), \(t0), \(pd)]")
        }
        var grads = tape.prompts.parameters.zeros
        guard n > 0 else { return grads }
        let budget = enterThreads(threads)
        defer { budget.leave() }
        let pr = tape.prompts.parameters
        // tokens = post · Wvᵀ (Wv: [P, W])  →  dPost[K, W] = dTokens[K, P] · Wv
        let dTok = Buffer(dTokens), dPost = Buffer(kept * w), dNormed = Buffer(zeros: kept * w)
        gemmNN(dTok.ptr, lda: pd, visualProjection, ldb: w, dPost.ptr, ldc: w, m: kept, n: w, k: pd)
        layerNormBackward(visionModel.postLayernorm, x: tape.normed.ptr, mean: tape.postMean.ptr, rstd: tape.postRstd.ptr,
                          dy: dPost.ptr, dx: dNormed.ptr, rows: kept)
        // prompt_norm: weight / bias gradients, and dL/dx_L at the kept rows (into dPost)
        let nw = Buffer(pr[VisualPrompts.normWeightName]), dNW = Buffer(zeros: w), dNB = Buffer(zeros: w)
        layerNormParameterBackward(x: tape.last.ptr, mean: tape.promptNormMean.ptr, rstd: tape.promptNormRstd.ptr, dy: dNormed.ptr,
                                   dWeight: dNW.ptr, dBias: dNB.ptr, rows: kept, cols: w)
        let dLast = dPost
        dLast.ptr.update(repeating: 0, count: kept * w)
        layerNormBackward(weight: nw.ptr, cols: w, x: tape.last.ptr, mean: tape.promptNormMean.ptr, rstd: tape.promptNormRstd.ptr,
                          dy: dNormed.ptr, dx: dLast.ptr, rows: kept)
        // dx[N + B·(1 + G), W] (`promptedLayout`): the prompt rows zero (no layer's output there is
        // used: the next layer's prompts replace it, or the last layer's is dropped), the crops' rows
        // from dLast
        let dx = Buffer(zeros: (n + kept) * w)
        (dx.ptr + n * w).update(from: dLast.ptr, count: kept * w)
        // Down the layers; dP_i = dx at the prompt rows of layer i's input (the crops' parts summed
        // by the backward pass, as the rows of a shared prefix), zeroed before the layer below.
        // Layer 0's input gradient is needed at the prompt rows only.
        let dP = Buffer(zeros: nl * n * w), seqs = promptedLayout(batch: b, tokens: t0, prompts: n), scratch = BackwardScratch()
        for li in stride(from: nl - 1, through: 0, by: -1) {
            visionModel.layers[li].backward(tape.layers[li], seqs, causal: false, dx: dx.ptr, threads: threads, scratch: scratch,
                                            keysOnly: n, inputRows: li == 0 ? 0..<n : nil)
            (dP.ptr + li * n * w).update(from: dx.ptr, count: n * w)
            dx.ptr.update(repeating: 0, count: n * w)
        }
        // P = E · Wpᵀ + bp:  dE[LN, W] = dP · Wp;  dWp[W, W] = dPᵀ · E;  dbp = Σ_rows dP
        let e = Buffer(pr[VisualPrompts.embeddingsName]), pw = Buffer(pr[VisualPrompts.projWeightName])
        let dE = Buffer(nl * n * w), dW = Buffer(w * w), dB = Buffer(zeros: w)
        gemmNN(dP.ptr, lda: w, pw.ptr, ldb: w, dE.ptr, ldc: w, m: nl * n, n: w, k: w)
        gemmTN(dP.ptr, lda: w, e.ptr, ldb: w, dW.ptr, ldc: w, m: w, n: w, k: nl * n)
        for r in 0..<(nl * n) { for j in 0..<w { dB.ptr[j] += dP.ptr[r * w + j] } }
        grads[VisualPrompts.embeddingsName] = dE.array
        grads[VisualPrompts.projWeightName] = dW.array
        grads[VisualPrompts.projBiasName] = dB.array
        grads[VisualPrompts.normWeightName] = dNW.array
        grads[VisualPrompts.normBiasName] = dNB.array
        withExtendedLifetime((dTok, dNormed, nw, dx, scratch, e, pw, tape)) {}
        return grads
    }
}

/// The rows of a prompted pass: the N prompt rows P_i once, as a prefix that every crop's class
/// and patch rows continue (B sequences of 1 + G rows after it). The same attention as ZegCLIP's
/// cat(class, P_i, patches) per crop up to the order of the keys, i.e. rounding. The prompt rows'
/// own outputs are never used (the next layer's prompts replace them, the last layer's are
/// dropped), so they are a keys-only prefix (`keysOnly`: LN1 and q | k | v, no attention or MLP),
/// computed once, not once per crop. N = 0: the plain batch.
func promptedLayout(batch b: Int, tokens t0: Int, prompts n: Int) -> [RaggedSequence] {
    guard n > 0 else { return RaggedSequence.batch(b, tokens: t0) }
    return [RaggedSequence(row: 0, count: n)]
        + (0..<b).map { RaggedSequence(row: n + $0 * t0, count: t0, position: n, prefix: 0) }
}
