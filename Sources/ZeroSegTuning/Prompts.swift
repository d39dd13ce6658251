import Foundation
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegCLIP
import ZeroSegSegmentation

// Learnable prompts on seen classes (CoOp context + a light pixel-text head), CLIP frozen.
//
//   text:  t_c = normalise(textProjection(textTransformer([SOT] ctx_1..ctx_N name_c . [EOT])))
//   image: u_g = normalise(f_g + A f_g + a)        (f_g: dense patch embedding, A = 0, a = 0 at start)
//   logits z[c, g] = exp(σ) · u_g · t_c             (σ = log logit scale, 40 at start)
//   loss = cross-entropy over the seen classes of bilinear_up(z) at the label resolution, mean over
//          pixels whose label is a seen class (unseen classes and the ignore label left out).
//
// A scalar bias on the logits cancels in the softmax, so the head has none. At step 0 (A = 0,
// a = 0, σ = log 40, ctx from "a photo of a") the model is the training-free one-stage model up to
// the prompt (one template instead of 80). Reference: scripts/reference/tune_reference.py.

/// The learned tensors.
public struct LearnedPrompts: Sendable, Equatable {
    /// [N, Wt] context vectors in token-embedding space.
    public var context: [Float]
    public var contextLength: Int
    /// [P, P] residual adapter (f + A f + a), [P] its bias.
    public var adapter: [Float]
    public var adapterBias: [Float]
    /// log of the logit scale.
    public var logScale: Float
    public let textWidth: Int, dim: Int

    public init(context: [Float], contextLength: Int, textWidth: Int, dim: Int, logScale: Float = logf(40)) {
        self.context = context; self.contextLength = contextLength
        self.textWidth = textWidth; self.dim = dim
        adapter = [Float](repeating: 0, count: dim * dim)
        adapterBias = [Float](repeating: 0, count: dim)
        self.logScale = logScale
    }

    public var scale: Float { expf(logScale) }

    /// The parameters as one flat vector (context, adapter, adapter bias, log scale) and back.
    var flat: [Float] { context + adapter + adapterBias + [logScale] }
    mutating func setFlat(_ v: [Float]) {
        let n = context.count, a = adapter.count, b = adapterBias.count
        context = Array(v[0..<n]); adapter = Array(v[n..<(n + a)]); adapterBias = Array(v[(n + a)..<(n + a + b)])
        logScale = v[n + a + b]
    }
}

extension CLIPModel {
    /// Context vectors initialised from the token embeddings of `phrase` ("a photo of a"): its BPE
    /// tokens give N = their count (CoOp's ctx_init); else `count` vectors, seeded, uniform with
    /// std 0.02 (CoOp draws them from a normal with std 0.02).
    public func initialContext(count: Int, phrase: String?, seed: UInt64 = 0) throws -> (values: [Float], count: Int) {
        let w = config.text.hiddenSize
        if let phrase {
            let ids = tokenize([phrase])[0]
            let inner = Array(ids.dropFirst().dropLast())
            guard !inner.isEmpty else {
                throw ZeroSegError.invalidArgument("the context phrase \"\(phrase)\" has no tokens", parameter: "contextPhrase")
            }
            var v = [Float]()
            for id in inner { v += Array(UnsafeBufferPointer(start: textModel.tokenEmbedding + Int(id) * w, count: w)) }
            return (v, inner.count)
        }
        guard count >= 1 && count <= 60 else {
            throw ZeroSegError.invalidArgument("the number of context vectors must be between 1 and 60", parameter: "contextLength")
        }
        return (Synth.values(name: "coop-ctx", seed: seed, count: count * w, amplitude: 0.02 * 3.0.squareRoot()), count)
    }

    /// Normalised class embeddings [names][P] from CoOp prompts with the learned context (by
    /// default all prompts in one ragged batch sharing the [SOT] ctx rows, `textForward(batch:pools:sharingPrefix:)`;
    /// the other `TextPass`es for comparisons), the tapes for backward (one, or one per prompt) and the prompts.
    func promptEmbeddings(_ names: [String], _ p: LearnedPrompts, threads: Int, pass: TextPass = .prefixShared) throws
        -> (embeddings: [[Float]], tapes: [TextBatchTape], prompts: [CoOpPrompt]) {
        let prompts = try names.map { try coopPrompt(name: $0, contextLength: p.contextLength) }
        let x0s = try prompts.map { try textInputs($0, context: p.context) }
        let tapes = pass == .oneAtATime
            ? try zip(x0s, prompts).map { try textForward(batch: [$0], pools: [$1.pool], threads: threads) }
            : [try textForward(batch: x0s, pools: prompts.map(\.pool), sharingPrefix: pass == .prefixShared, threads: threads)]
        let e = tapes.flatMap(\.embeddings).map { v -> [Float] in var v = v; l2Normalize(&v); return v }
        return (e, tapes, prompts)
    }

    /// Query embeddings [Q][P] for a class set under learned prompts (one CoOp prompt per name).
    public func promptQueries(_ set: ClassSet, prompts p: LearnedPrompts, threads: Int = defaultThreads) throws -> [[Float]] {
        try promptEmbeddings(set.queries.map(\.name), p, threads: threads).embeddings
    }
}

/// u = normalise(f + A f + a) for f: [G, P] (rows), and the norms ‖f + A f + a‖ per row.
func applyAdapter(_ f: [Float], rows g: Int, _ p: LearnedPrompts) -> (u: [Float], norms: [Float]) {
    let d = p.dim
    var pre = f
    f.withUnsafeBufferPointer { fp in
        p.adapter.withUnsafeBufferPointer { ap in
            pre.withUnsafeMutableBufferPointer { op in
                // pre[G, P] += f[G, P] · Aᵀ
                gemmNT(fp.baseAddress!, lda: d, ap.baseAddress!, ldb: d, op.baseAddress!, ldc: d, m: g, n: d, k: d, beta: 1)
            }
        }
    }
    var u = pre, norms = [Float](repeating: 0, count: g)
    for r in 0..<g {
        var s: Float = 0
        for j in 0..<d { pre[r * d + j] += p.adapterBias[j]; s += pre[r * d + j] * pre[r * d + j] }
        let n = max(s.squareRoot(), 1e-12)
        norms[r] = n
        for j in 0..<d { u[r * d + j] = pre[r * d + j] / n }
    }
    return (u, norms)
}

extension LearnedPrompts: PromptHead {
    public func checkFits(_ model: CLIPModel) throws {
        guard dim == model.config.projectionDim, textWidth == model.config.text.hiddenSize else {
            throw ZeroSegError("the prompts do not fit this model")
        }
    }
    public var logitScale: Float { scale }
    public func queries(_ set: ClassSet, model: CLIPModel, threads: Int) throws -> [[Float]] {
        try model.promptQueries(set, prompts: self, threads: threads)
    }
    public func adaptPatchEmbeddings(_ x: FloatPtr, rows: Int) { ZeroSegTuning.adaptPatchEmbeddings(x, rows: rows, prompts: self) }
}

/// Patch embeddings through the adapter (for segmentation with learned prompts): rows of x [G, P]
/// replaced by normalise(x + A x + a).
public func adaptPatchEmbeddings(_ x: FloatPtr, rows g: Int, prompts p: LearnedPrompts) {
    let f = Array(UnsafeBufferPointer(start: x, count: g * p.dim))
    let u = applyAdapter(f, rows: g, p).u
    x.update(from: u, count: g * p.dim)
}

/// One training example: a feature grid and its label map (values: seen-class index, or anything
/// else = ignored).
public struct TuneExample: Sendable {
    public let features: FeatureGrid
    /// [H, W] seen-class index per pixel, −1 = ignored.
    public let target: [Int32]
    public let width: Int, height: Int
    public init(features: FeatureGrid, target: [Int32], width: Int, height: Int) {
        self.features = features; self.target = target; self.width = width; self.height = height
    }
}

/// Loss and gradients of one batch.
public struct TuneGradients: Sendable {
    public var loss: Float
    public var pixels: Int
    public var context: [Float], adapter: [Float], adapterBias: [Float], logScale: Float
    var flat: [Float] { context + adapter + adapterBias + [logScale] }
}

/// Loss (mean cross-entropy over counted pixels of the whole batch) and its gradients (all zero
/// when `gradients` is false: the forward pass only), computed with `threads` threads.
public func tuneLossAndGradients(model: CLIPModel, prompts p: LearnedPrompts, seenNames: [String],
                                 batch: [TuneExample], gradients: Bool = true, threads: Int = defaultThreads) throws -> TuneGradients {
    try tuneLossAndGradients(model: model, prompts: p, seenNames: seenNames, batch: batch, gradients: gradients, threads: threads,
                             text: .prefixShared)
}

/// How the text tower runs the prompts of a step (`tuneLossAndGradients`, `zeroseg bench`).
package enum TextPass: Sendable {
    /// Forward and backward one prompt at a time (the structure before the batched text passes).
    case oneAtATime
    /// All prompts as ragged rows, every prompt's rows computed.
    case batched
    /// All prompts as ragged rows, the rows they share ([SOT] ctx_1..ctx_N) once (the default).
    case prefixShared
}

/// `tuneLossAndGradients` with the text tower run one prompt at a time (`textOneAtATime`) or as
/// the plain ragged batch (every prompt's rows computed).
package func tuneLossAndGradients(model: CLIPModel, prompts p: LearnedPrompts, seenNames: [String], batch: [TuneExample],
                                  gradients: Bool, threads: Int, textOneAtATime: Bool) throws -> TuneGradients {
    try tuneLossAndGradients(model: model, prompts: p, seenNames: seenNames, batch: batch, gradients: gradients, threads: threads,
                             text: textOneAtATime ? .oneAtATime : .batched)
}

/// `tuneLossAndGradients` with the text tower run as `textPass`.
package func tuneLossAndGradients(model: CLIPModel, prompts p: LearnedPrompts, seenNames: [String], batch: [TuneExample],
                                  gradients: Bool, threads: Int, text textPass: TextPass) throws -> TuneGradients {
    let budget = enterThreads(threads)
    defer { budget.leave() }
    let d = p.dim, cs = seenNames.count, s = p.scale
    let text = try model.promptEmbeddings(seenNames, p, threads: threads, pass: textPass)
    let t = text.embeddings.flatMap { $0 }  // [Cs, P]
    var dT = [Float](repeating: 0, count: cs * d)
    var dA = [Float](repeating: 0, count: d * d), da = [Float](repeating: 0, count: d)
    var dSigma: Float = 0
    var loss: Double = 0
    let total = batch.reduce(0) { $0 + $1.target.filter { $0 >= 0 }.count }
    var dCtx = [Float](repeating: 0, count: p.context.count)
    guard total > 0 else {
        return TuneGradients(loss: 0, pixels: 0, context: dCtx, adapter: dA, adapterBias: da, logScale: 0)
    }
    for ex in batch {
        let g = ex.features.height * ex.features.width, gh = ex.features.height, gw = ex.features.width
        let (u, norms) = applyAdapter(ex.features.data, rows: g, p)
        // cosine c[Cs, G] = T · Uᵀ; z = s · c
        var cosv = [Float](repeating: 0, count: cs * g)
        gemmNT(t, lda: d, u, ldb: d, &cosv, ldc: g, m: cs, n: g, k: d)
        let z = cosv.map { $0 * s }
        let (h, w) = (ex.height, ex.width), hw = h * w
        var up = [Float](repeating: 0, count: cs * hw)
        z.withUnsafeBufferPointer { zp in up.withUnsafeMutableBufferPointer { resizeBilinearCHW(zp.baseAddress!, channels: cs, height: gh, width: gw, $0.baseAddress!, outHeight: h, outWidth: w) } }
        // d up = (softmax − onehot) / total at counted pixels
        var dUp = [Float](repeating: 0, count: gradients ? cs * hw : 0)
        for px in 0..<hw {
            let y = Int(ex.target[px])
            guard y >= 0 else { continue }
            var mx = -Float.infinity
            for c in 0..<cs { mx = max(mx, up[c * hw + px]) }
            var sum: Float = 0
            for c in 0..<cs { sum += expf(up[c * hw + px] - mx) }
            loss += Double(logf(sum) + mx - up[y * hw + px])
            if gradients { for c in 0..<cs { dUp[c * hw + px] = (expf(up[c * hw + px] - mx) / sum - (c == y ? 1 : 0)) / Float(total) } }
        }
        guard gradients else { continue }
        // back through the bilinear upsampling
        var dz = [Float](repeating: 0, count: cs * g)
        resizeBilinearCHWBackward(dUp, channels: cs, height: gh, width: gw, &dz, outHeight: h, outWidth: w)
        // z = s · cos: dσ = Σ dz ⊙ z (s = exp σ); dcos = s · dz
        for i in 0..<(cs * g) { dSigma += dz[i] * z[i] }
        let dcos = dz.map { $0 * s }
        // dT += dcos · U  [Cs, P];  dU = dcosᵀ · T  [G, P]
        gemmNN(dcos, lda: g, u, ldb: d, &dT, ldc: d, m: cs, n: d, k: g, beta: 1)
        var dU = [Float](repeating: 0, count: g * d)
        dcos.withUnsafeBufferPointer { dc in
            // dU[G, P] = dcosᵀ[G, Cs] · T[Cs, P]
            gemmTN(dc.baseAddress!, lda: g, t, ldb: d, &dU, ldc: d, m: g, n: d, k: cs)
        }
        // u = pre / ‖pre‖: dpre = (dU − u (u·dU)) / ‖pre‖
        var dPre = [Float](repeating: 0, count: g * d)
        for r in 0..<g {
            var dot: Float = 0
            for j in 0..<d { dot += u[r * d + j] * dU[r * d + j] }
            for j in 0..<d { dPre[r * d + j] = (dU[r * d + j] - u[r * d + j] * dot) / norms[r] }
        }
        // pre = f + f Aᵀ + a: dA += dPreᵀ · f  [P, P]; da += Σ_rows dPre
        ex.features.data.withUnsafeBufferPointer { fp in
            dPre.withUnsafeBufferPointer { dp in gemmTN(dp.baseAddress!, lda: d, fp.baseAddress!, ldb: d, &dA, ldc: d, m: d, n: d, k: g, beta: 1) }
        }
        for r in 0..<g { for j in 0..<d { da[j] += dPre[r * d + j] } }
    }
    // Text: t_c = e_c / ‖e_c‖ → e → x0 → context rows (all prompts in one batched backward)
    let wt = p.textWidth
    var c0 = 0
    for tape in text.tapes where gradients {
        let dE = try tape.embeddings.indices.map { i in
            try l2NormalizeBackward(tape.embeddings[i], grad: Array(dT[((c0 + i) * d)..<((c0 + i + 1) * d)]))
        }
        let dX = try model.textInputGradients(tape, gradEmbeddings: dE, threads: threads)
        let g = try dX.context(Array(text.prompts[c0..<(c0 + tape.embeddings.count)]), width: wt)
        for i in dCtx.indices { dCtx[i] += g[i] }
        c0 += tape.embeddings.count
    }
    return TuneGradients(loss: Float(loss / Double(total)), pixels: total, context: dCtx, adapter: dA, adapterBias: da,
                         logScale: dSigma)
}

/// Transpose of `resizeBilinearCHW`: dx[C, H, W] += the output gradient dy[C, OH, OW] scattered
/// back with the same weights.
public func resizeBilinearCHWBackward(_ dy: [Float], channels: Int, height h: Int, width w: Int,
                                      _ dx: inout [Float], outHeight oh: Int, outWidth ow: Int) {
    let (x0, x1, lx0, lx1) = bilinearTaps(input: w, output: ow)
    let (y0s, y1s, ly0s, ly1s) = bilinearTaps(input: h, output: oh)
    for oy in 0..<oh {
        let (y0, y1, ly0, ly1) = (y0s[oy], y1s[oy], ly0s[oy], ly1s[oy])
        for c in 0..<channels {
            let r0 = (c * h + y0) * w, r1 = (c * h + y1) * w, o = (c * oh + oy) * ow
            for ox in 0..<ow {
                let g = dy[o + ox]
                if g == 0 { continue }
                dx[r0 + x0[ox]] += ly0 * lx0[ox] * g; dx[r0 + x1[ox]] += ly0 * lx1[ox] * g
                dx[r1 + x0[ox]] += ly1 * lx0[ox] * g; dx[r1 + x1[ox]] += ly1 * lx1[ox] * g
            }
        }
    }
}

// MARK: - Optimiser

public enum TuneOptimizer: String, CaseIterable, Sendable { case adamw, sgd }

/// AdamW (decoupled weight decay, bias-corrected moments) or SGD with momentum 0.9 (CoOp's), with a
/// cosine learning-rate schedule from `lr` to 0 over `totalSteps`. Weight decay applies to the
/// adapter matrix only (it pulls the head back to the identity).
public struct PromptOptimizer: Sendable {
    public let kind: TuneOptimizer
    public let lr: Float, weightDecay: Float, totalSteps: Int
    public var step = 0
    var m: [Float], v: [Float]
    /// Per value of `LearnedPrompts.flat`: whether weight decay applies (the adapter matrix).
    let decay: [Bool]

    public init(kind: TuneOptimizer, lr: Float, weightDecay: Float = 0.01, totalSteps: Int, prompts p: LearnedPrompts) {
        self.kind = kind; self.lr = lr; self.weightDecay = weightDecay; self.totalSteps = max(1, totalSteps)
        let n = p.flat.count
        m = [Float](repeating: 0, count: n); v = [Float](repeating: 0, count: n)
        let decayRange = p.context.count..<(p.context.count + p.adapter.count)
        decay = (0..<n).map { decayRange.contains($0) }
    }

    /// The learning rate of the current step (cosine: lr · (1 + cos(π · step / total)) / 2).
    public var currentLR: Float { lr * 0.5 * (1 + cosf(Float.pi * Float(min(step, totalSteps)) / Float(totalSteps))) }

    public mutating func apply(_ g: TuneGradients, to p: inout LearnedPrompts) {
        var x = p.flat
        let lrBefore = currentLR  // the schedule's value before the step counts
        step += 1
        optimizerUpdate(kind, x: &x, gradient: g.flat, m: &m, v: &v, step: step, lr: lrBefore, weightDecay: weightDecay, decay: decay)
        p.setFlat(x)
    }

    /// The optimiser state as tensors (for resumable checkpoints).
    public var state: (m: [Float], v: [Float]) { (m, v) }
    public mutating func restore(step: Int, m: [Float], v: [Float]) throws {
        guard m.count == self.m.count, v.count == self.v.count else { throw ZeroSegError("checkpoint optimiser state does not fit these prompts") }
        self.step = step; self.m = m; self.v = v
    }
}

// MARK: - Prediction, training loop, files

/// Seen-class labels [H, W] of one example under the prompts (argmax of the upsampled logits).
public func tunePredict(model: CLIPModel, prompts p: LearnedPrompts, names: [String], example ex: TuneExample,
                        threads: Int = defaultThreads) throws -> [UInt8] {
    let budget = enterThreads(threads)
    defer { budget.leave() }
    let d = p.dim, cs = names.count, g = ex.features.height * ex.features.width
    let t = try model.promptEmbeddings(names, p, threads: threads).embeddings.flatMap { $0 }
    let u = applyAdapter(ex.features.data, rows: g, p).u
    var z = [Float](repeating: 0, count: cs * g)
    gemmNT(t, lda: d, u, ldb: d, &z, ldc: g, m: cs, n: g, k: d, alpha: p.scale)
    let hw = ex.width * ex.height
    var up = [Float](repeating: 0, count: cs * hw)
    z.withUnsafeBufferPointer { zp in up.withUnsafeMutableBufferPointer { resizeBilinearCHW(zp.baseAddress!, channels: cs, height: ex.features.height, width: ex.features.width, $0.baseAddress!, outHeight: ex.height, outWidth: ex.width) } }
    var labels = [UInt8](repeating: 0, count: hw)
    for px in 0..<hw {
        var best = 0
        for c in 1..<cs where up[c * hw + px] > up[best * hw + px] { best = c }
        labels[px] = UInt8(best)
    }
    return labels
}

/// Settings of `zeroseg tune`.
public struct TuneSettings: Sendable, Equatable {
    public var epochs = 5
    public var lr: Float = 0.002
    public var batch = 8
    public var optimizer: TuneOptimizer = .adamw
    public var weightDecay: Float = 0.01
    public var seed: UInt64 = 0
    /// Threads for the loss and gradients (not a learning setting: results are the same bits for
    /// the same thread count).
    public var threads = defaultThreads
    public init() {}
    public func validate() throws {
        func bad(_ parameter: String, _ message: String) -> ZeroSegError { .invalidArgument(message, parameter: parameter) }
        guard epochs >= 1 && epochs <= 10_000 else { throw bad("epochs", "the number of epochs must be between 1 and 10000") }
        guard lr > 0 && lr.isFinite else { throw bad("lr", "the learning rate must be positive") }
        guard batch >= 1 else { throw bad("batch", "the batch size must be at least 1") }
        guard weightDecay >= 0 else { throw bad("weightDecay", "the weight decay must not be negative") }
        guard threads >= 1 else { throw bad("threads", "the thread count must be at least 1") }
    }
}

/// The example order of epoch `e` of a tuning run: a seeded Fisher-Yates shuffle (over
/// `Synth.values`, i.e. splitmix64) of 0..<count.
func shuffledOrder(count: Int, seed: UInt64, epoch e: Int) -> [Int] {
    var idx = Array(0..<count)
    let r = Synth.values(name: "tune-shuffle", seed: seed &+ UInt64(e), count: count, amplitude: 0.5, offset: 0.5)
    for i in stride(from: count - 1, to: 0, by: -1) {
        let j = min(i, Int(Double(r[i]) * Double(i + 1)))
        idx.swapAt(i, j)
    }
    return idx
}

/// Deterministic mini-batch training: each epoch a seeded shuffle (Fisher-Yates over
/// splitmix64), batches of `batch` examples, one optimiser step each.
public struct PromptTuner {
    public let model: CLIPModel
    public let names: [String]
    public let examples: [TuneExample]
    public let settings: TuneSettings
    public var prompts: LearnedPrompts
    public var optimizer: PromptOptimizer
    public var epoch = 0
    /// Mean loss of each finished epoch.
    public var epochLosses: [Float] = []

    public var stepsPerEpoch: Int { (examples.count + settings.batch - 1) / settings.batch }

    public init(model: CLIPModel, names: [String], examples: [TuneExample], prompts: LearnedPrompts, settings: TuneSettings) throws {
        try settings.validate()
        guard !names.isEmpty else { throw ZeroSegError("no seen classes to train on") }
        guard !examples.isEmpty else { throw ZeroSegError("no training images") }
        self.model = model; self.names = names; self.examples = examples; self.prompts = prompts; self.settings = settings
        optimizer = PromptOptimizer(kind: settings.optimizer, lr: settings.lr, weightDecay: settings.weightDecay,
                                    totalSteps: settings.epochs * ((examples.count + settings.batch - 1) / settings.batch), prompts: prompts)
    }

    /// The example order of an epoch.
    public func order(epoch e: Int) -> [Int] { shuffledOrder(count: examples.count, seed: settings.seed, epoch: e) }

    /// Runs the remaining epochs; `progress(epoch, step, steps, loss)` after each step,
    /// `endOfEpoch(self)` after each epoch (checkpoints).
    public mutating func train(progress: (Int, Int, Int, Float) -> Void, endOfEpoch: (PromptTuner) throws -> Void) throws {
        while epoch < settings.epochs {
            let ord = order(epoch: epoch)
            var sum: Double = 0, pix = 0
            for s in 0..<stepsPerEpoch {
                let batch = ord[(s * settings.batch)..<min(ord.count, (s + 1) * settings.batch)].map { examples[$0] }
                let g = try tuneLossAndGradients(model: model, prompts: prompts, seenNames: names, batch: batch, threads: settings.threads)
                optimizer.apply(g, to: &prompts)
                sum += Double(g.loss) * Double(g.pixels); pix += g.pixels
                progress(epoch, s + 1, stepsPerEpoch, g.loss)
            }
            epochLosses.append(pix > 0 ? Float(sum / Double(pix)) : 0)
            epoch += 1
            try endOfEpoch(self)
        }
    }
}

/// A prompt file: the learned tensors (`ctx` [N, Wt], `adapter.weight` [P, P], `adapter.bias` [P],
/// `logit_scale` [] (log)) and, in `__metadata__` under `zeroseg`, a JSON object: the
/// `TuneReport` (model, seen classes, settings, training, loss, date and timings).
public struct PromptFile: Sendable {
    public var prompts: LearnedPrompts
    public var info: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(infoJSON.utf8))) as? [String: Any] ?? [:] }
    public let infoJSON: String

    public init(prompts: LearnedPrompts, info: [String: Any]) throws {
        self.prompts = prompts
        infoJSON = String(decoding: try JSONSerialization.data(withJSONObject: info, options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self)
    }

    public init(prompts: LearnedPrompts, report: TuneReport) throws {
        self.prompts = prompts
        infoJSON = try JSONOutput.line(report)
    }

    /// The metadata as a `TuneReport` (nil for files written before the JSON schema was unified).
    public var report: TuneReport? { try? JSONOutput.decode(TuneReport.self, from: Data(infoJSON.utf8)) }

    public func write(to url: URL, extra: [(name: String, shape: [Int], data: [Float])] = []) throws {
        let p = prompts
        try SafetensorsFile.write([("ctx", [p.contextLength, p.textWidth], p.context), ("adapter.weight", [p.dim, p.dim], p.adapter),
                                   ("adapter.bias", [p.dim], p.adapterBias), ("logit_scale", [], [p.logScale])] + extra,
                                  metadata: ["zeroseg": infoJSON, "format": "zeroseg-prompts-1"], to: url)
    }

    /// Reads a prompt file and checks it against the model: made for another model → error
    /// (every error is of kind `.badInput(file:)`).
    public init(url: URL, model: CLIPModel) throws {
        self = try classifyingErrors(as: .badInput(file: url.path)) { try PromptFile(reading: url, model: model) }
    }

    init(reading url: URL, model: CLIPModel) throws {
        let f: SafetensorsFile
        do { f = try SafetensorsFile(path: url.path) } catch let e as ZeroSegError { throw ZeroSegError("prompts \(url.path): \(e.message)") }
        guard f.metadata["format"] == "zeroseg-prompts-1", let json = f.metadata["zeroseg"],
              let info = (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String: Any] else {
            throw ZeroSegError("\(url.path) is not a zeroseg prompt file (no zeroseg metadata)")
        }
        // the model object of the unified schema, or the older "model" string + "model_fingerprint"
        let made = info["model"] as? [String: Any]
        if let fp = made?["fingerprint"] as? String ?? info["model_fingerprint"] as? String, fp != model.fingerprint {
            let source = made?["source"] as? String ?? info["model"] as? String ?? "?"
            throw ZeroSegError("prompts \(url.path) were made for model \(source) (fingerprint \(fp)), not \(model.source) (\(model.fingerprint))")
        }
        let w = model.config.text.hiddenSize, d = model.config.projectionDim
        guard let ci = f.tensors["ctx"], ci.shape.count == 2, ci.shape[1] == w, ci.shape[0] >= 1,
              f.tensors["adapter.weight"]?.shape == [d, d], f.tensors["adapter.bias"]?.shape == [d], f.tensors["logit_scale"]?.shape == [] else {
            throw ZeroSegError("prompts \(url.path): tensors do not fit this model (text width \(w), embedding \(d))")
        }
        var p = LearnedPrompts(context: try f.floats("ctx"), contextLength: ci.shape[0], textWidth: w, dim: d, logScale: try f.floats("logit_scale")[0])
        p.adapter = try f.floats("adapter.weight"); p.adapterBias = try f.floats("adapter.bias")
        guard p.flat.allSatisfy(\.isFinite) else { throw ZeroSegError("prompts \(url.path): non-finite values") }
        prompts = p
        infoJSON = json
    }
}
