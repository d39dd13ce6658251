import Foundation
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegCLIP
import ZeroSegSegmentation

// Training an image-conditioned head (HeadPrompts.swift) on crops with the encoder in the loop:
// the visual prompts change the encoder's activations, so features cannot be cached. Each step:
// B seeded random crops (+ horizontal flips) of the training images rescaled as segmentation
// rescales them, the seen classes' CoOp prompts forward, the prompted encoder forward (recorded),
// the head, the loss; then backward through head, encoder (prompts only) and text (context only).

/// One training image for an image-conditioned head: rescaled as segmentation rescales it (short
/// side, mmcv `imrescale`), normalised, with its seen-class targets at that size (nearest).
public struct HeadExample: Sendable {
    /// [3, H, W] normalised pixels, kept as float16 (half the memory of a training set: CamVid's
    /// 367 images at 448x336 take 330 MB; the crops are float32 again, within 2^-11 relative).
    public let pixels: [Float16]
    /// [H, W] seen-class index per pixel, −1 = ignored.
    public let target: [Int32]
    public let width: Int, height: Int
    public init(pixels: [Float], target: [Int32], width: Int, height: Int) {
        self.pixels = pixels.map { Float16($0) }; self.target = target; self.width = width; self.height = height
    }

    /// A crop x [3, c, c] and its target [c, c] at (x0, y0), mirrored when `flip`.
    public func crop(x0: Int, y0: Int, size c: Int, flip: Bool) -> (pixels: [Float], target: [Int32]) {
        var px = [Float](repeating: 0, count: 3 * c * c), tg = [Int32](repeating: -1, count: c * c)
        for y in 0..<c {
            for x in 0..<c {
                let sx = x0 + (flip ? c - 1 - x : x), sy = y0 + y
                for ch in 0..<3 { px[(ch * c + y) * c + x] = Float(pixels[(ch * height + sy) * width + sx]) }
                tg[y * c + x] = target[sy * width + sx]
            }
        }
        return (px, tg)
    }

    /// The seeded random crop of `example` in `epoch` (position uniform, flip with probability ½).
    public func randomCrop(size c: Int, seed: UInt64, epoch: Int, example: Int) -> (pixels: [Float], target: [Int32]) {
        var rng = SplitMix64(seed: seed ^ (UInt64(epoch) &* 0x9E37_79B9_7F4A_7C15) ^ (UInt64(example) &* 0xD1B5_4A32_D192_ED03))
        let x0 = Int(rng.next() % UInt64(width - c + 1)), y0 = Int(rng.next() % UInt64(height - c + 1))
        return crop(x0: x0, y0: y0, size: c, flip: rng.next() & 1 == 1)
    }

    /// The centre crop, not mirrored (the fixed crops of the initial and final losses).
    public func centerCrop(size c: Int) -> (pixels: [Float], target: [Int32]) {
        crop(x0: (width - c) / 2, y0: (height - c) / 2, size: c, flip: false)
    }
}

extension TuneDataset {
    /// The training images rescaled to `shortSide` and normalised for `model`, with their targets.
    /// An image that rescales smaller than `crop` on either side is an error.
    public func headExamples(model: CLIPModel, shortSide: Int, crop: Int,
                             progress: ((_ done: Int, _ total: Int, _ stem: String) -> Void)? = nil) throws -> [HeadExample] {
        let pre = try CLIPPreprocessor(size: model.preprocessor.shortestEdge, cropSize: model.preprocessor.cropSize,
                                       mean: model.preprocessor.mean, std: model.preprocessor.std)
        var out: [HeadExample] = []
        for (i, p) in pairs.enumerated() {
            progress?(i, pairs.count, p.stem)
            let (image, full) = try load(p)
            let (ws, hs) = Segmenter.rescaledSize(width: image.width, height: image.height, shortSide: shortSide)
            guard ws >= crop && hs >= crop else {
                throw ZeroSegError.invalidArgument("\(p.image.path) rescales to \(ws)x\(hs), smaller than the \(crop)-pixel training crop",
                                                   parameter: "crop")
            }
            let resized = (ws == image.width && hs == image.height) ? image : try resizeBilinear(image, width: ws, height: hs)
            // labels: nearest neighbour (mmseg resizes segmentation maps with nearest)
            var target = [Int32](repeating: -1, count: ws * hs)
            for y in 0..<hs {
                let sy = min(image.height - 1, y * image.height / hs)
                for x in 0..<ws { target[y * ws + x] = full[sy * image.width + min(image.width - 1, x * image.width / ws)] }
            }
            out.append(HeadExample(pixels: pre.normalizeOnly(resized), target: target, width: ws, height: hs))
        }
        progress?(pairs.count, pairs.count, "done")
        return out
    }
}

/// Loss and gradients of one batch of crops.
public struct HeadStep: Sendable {
    public var loss: Float
    /// Counted (seen-class) pixels.
    public var pixels: Int
    /// Same layout as `HeadPrompts.parameters` (nil for a forward pass only).
    public var gradients: NamedTensors?
}

/// The loss of crops x [B, 3, c, c] with targets [B][c·c] under `prompts`, and (with `gradients`)
/// the gradients of every learned tensor, with `threads` threads.
public func headLossAndGradients(model: CLIPModel, prompts: HeadPrompts, seenNames: [String], pixels: [Float], targets: [[Int32]],
                                 crop c: Int, gradients: Bool = true, threads: Int = defaultThreads) throws -> HeadStep {
    let budget = enterThreads(threads)
    defer { budget.leave() }
    let nb = targets.count, p = model.config.projectionDim, cs = seenNames.count
    guard nb >= 1, pixels.count == nb * 3 * c * c, targets.allSatisfy({ $0.count == c * c }) else {
        throw ZeroSegError("headLossAndGradients: \(pixels.count) pixel values and \(targets.count) targets for crops of \(c)x\(c)")
    }
    let text = try model.coopText(seenNames, context: prompts.context, contextLength: prompts.contextLength, record: gradients, threads: threads)
    let record = gradients && prompts.visual != nil
    var tape: VisionTape? = nil
    let tokens: [Float], gh: Int, gw: Int
    if record {
        let t = try pixels.withUnsafeBufferPointer {
            try model.promptedForward(pixels: $0.baseAddress!, batch: nb, height: c, width: c, prompts: prompts.visual!, threads: threads)
        }
        (tokens, gh, gw) = (t.tokens.array, t.gh, t.gw)
        tape = t
    } else {
        let r = try pixels.withUnsafeBufferPointer {
            try model.promptedTokens(pixels: $0.baseAddress!, batch: nb, height: c, width: c, prompts: prompts.visual, threads: threads)
        }
        (tokens, gh, gw) = (r.tokens.array, r.gh, r.gw)
    }
    let g = gh * gw
    let (global, patches) = splitTokens(tokens, batch: nb, patches: g, dim: p)
    let (scores, headTape) = try prompts.head.forward(text: text.embeddings, classes: cs, global: global, patches: patches, batch: nb,
                                                      gridHeight: gh, gridWidth: gw, threads: threads, record: gradients)
    let l = try segLoss(prompts.settings.loss, scores: scores, batch: nb, classes: cs, gridHeight: gh, gridWidth: gw, targets: targets,
                        height: c, width: c, gradients: gradients)
    guard gradients, let headTape else { return HeadStep(loss: l.loss, pixels: l.pixels, gradients: nil) }
    let d = try prompts.head.backward(headTape, dScores: l.dScores, threads: threads)
    var grads = prompts.parameters.zeros
    grads["ctx"] = try model.coopContextGradient(text, dEmbeddings: d.text, threads: threads)
    if let tape {
        let dTokens = joinTokens(global: d.global, patches: d.patches, batch: nb, patches: g, dim: p)
        let dv = try model.promptedBackward(tape, dTokens: dTokens, threads: threads)
        for n in dv.names { grads[n] = dv[n] }
    }
    for n in d.parameters.names { grads[n] = d.parameters[n] }
    return HeadStep(loss: l.loss, pixels: l.pixels, gradients: grads)
}

/// The encoder's output tokens [B, 1 + G, P] as the heads take them: the class rows [B, P] and
/// the patch rows [B, G, P]. `joinTokens` is its transpose (for the gradients).
func splitTokens(_ tokens: [Float], batch nb: Int, patches g: Int, dim p: Int) -> (global: [Float], patches: [Float]) {
    let t = g + 1
    var global = [Float](repeating: 0, count: nb * p), patches = [Float](repeating: 0, count: nb * g * p)
    for b in 0..<nb {
        for i in 0..<p { global[b * p + i] = tokens[(b * t) * p + i] }
        for j in 0..<(g * p) { patches[b * g * p + j] = tokens[(b * t + 1) * p + j] }
    }
    return (global, patches)
}

/// [B, 1 + G, P] from the class rows [B, P] and the patch rows [B, G, P].
func joinTokens(global: [Float], patches: [Float], batch nb: Int, patches g: Int, dim p: Int) -> [Float] {
    let t = g + 1
    var tokens = [Float](repeating: 0, count: nb * t * p)
    for b in 0..<nb {
        for i in 0..<p { tokens[(b * t) * p + i] = global[b * p + i] }
        for j in 0..<(g * p) { tokens[(b * t + 1) * p + j] = patches[b * g * p + j] }
    }
    return tokens
}

/// Deterministic training of an image-conditioned head: each epoch a seeded shuffle, batches of
/// seeded random crops, one optimiser step each.
public struct HeadTuner {
    public let model: CLIPModel
    public let names: [String]
    public let examples: [HeadExample]
    public let settings: TuneSettings
    public var prompts: HeadPrompts
    public var optimizer: TensorOptimizer
    public var epoch = 0
    public var epochLosses: [Float] = []

    public var crop: Int { prompts.settings.crop }
    public var stepsPerEpoch: Int { (examples.count + settings.batch - 1) / settings.batch }

    public init(model: CLIPModel, names: [String], examples: [HeadExample], prompts: HeadPrompts, settings: TuneSettings) throws {
        try settings.validate()
        guard !names.isEmpty else { throw ZeroSegError("no seen classes to train on") }
        guard !examples.isEmpty else { throw ZeroSegError("no training images") }
        let c = prompts.settings.crop
        if let small = examples.first(where: { $0.width < c || $0.height < c }) {
            throw ZeroSegError.invalidArgument("a \(small.width)x\(small.height) training image is smaller than the \(c)-pixel crop", parameter: "crop")
        }
        self.model = model; self.names = names; self.examples = examples; self.prompts = prompts; self.settings = settings
        let steps = settings.epochs * ((examples.count + settings.batch - 1) / settings.batch)
        let p = prompts
        optimizer = TensorOptimizer(kind: settings.optimizer, lr: settings.lr, weightDecay: settings.weightDecay, totalSteps: steps,
                                    parameters: p.parameters, decays: { p.decays($0) })
    }

    /// The example order of an epoch (the linear head's shuffle).
    public func order(epoch e: Int) -> [Int] { shuffledOrder(count: examples.count, seed: settings.seed, epoch: e) }

    /// One step on the examples `batch` (indices) with their crops of `epoch`.
    public mutating func step(_ batch: [Int], epoch e: Int) throws -> HeadStep {
        var px: [Float] = [], tg: [[Int32]] = []
        for i in batch {
            let (x, t) = examples[i].randomCrop(size: crop, seed: settings.seed, epoch: e, example: i)
            px += x; tg.append(t)
        }
        let s = try headLossAndGradients(model: model, prompts: prompts, seenNames: names, pixels: px, targets: tg, crop: crop,
                                         threads: settings.threads)
        var p = prompts.parameters
        optimizer.apply(s.gradients!, to: &p)
        prompts.parameters = p
        return s
    }

    /// Mean loss over the training set's centre crops (forward only), batches of `settings.batch`.
    public func datasetLoss() throws -> Float {
        var sum = 0.0, pix = 0
        var i = 0
        while i < examples.count {
            let part = examples[i..<min(examples.count, i + settings.batch)]
            var px: [Float] = [], tg: [[Int32]] = []
            for ex in part { let (x, t) = ex.centerCrop(size: crop); px += x; tg.append(t) }
            let s = try headLossAndGradients(model: model, prompts: prompts, seenNames: names, pixels: px, targets: tg, crop: crop,
                                             gradients: false, threads: settings.threads)
            sum += Double(s.loss) * Double(s.pixels); pix += s.pixels
            i += settings.batch
        }
        return pix > 0 ? Float(sum / Double(pix)) : 0
    }

    /// Runs the remaining epochs; `progress(epoch, step, steps, loss)` after each step,
    /// `endOfEpoch(self)` after each epoch (checkpoints).
    public mutating func train(progress: (Int, Int, Int, Float) -> Void, endOfEpoch: (HeadTuner) throws -> Void) throws {
        while epoch < settings.epochs {
            let ord = order(epoch: epoch)
            var sum: Double = 0, pix = 0
            for s in 0..<stepsPerEpoch {
                let batch = Array(ord[(s * settings.batch)..<min(ord.count, (s + 1) * settings.batch)])
                let r = try step(batch, epoch: epoch)
                sum += Double(r.loss) * Double(r.pixels); pix += r.pixels
                progress(epoch, s + 1, stepsPerEpoch, r.loss)
            }
            epochLosses.append(pix > 0 ? Float(sum / Double(pix)) : 0)
            epoch += 1
            try endOfEpoch(self)
        }
    }
}

// MARK: - Files

/// A prompt file of an image-conditioned head: every learned tensor under its name
/// (`HeadPrompts.parameters`) and, in `__metadata__`, `format` = `zeroseg-prompts-2` and `zeroseg`
/// = the `TuneReport` JSON (with `head`, `head_settings`, `seen_names`).
public struct HeadPromptFile: Sendable {
    public static let format = "zeroseg-prompts-2"
    public var prompts: HeadPrompts
    public let infoJSON: String
    public var report: TuneReport? { try? JSONOutput.decode(TuneReport.self, from: Data(infoJSON.utf8)) }

    public init(prompts: HeadPrompts, report: TuneReport) throws {
        self.prompts = prompts
        infoJSON = try JSONOutput.line(report)
    }

    public func write(to url: URL, extra: [(name: String, shape: [Int], data: [Float])] = []) throws {
        try SafetensorsFile.write(prompts.parameters.tensors.map { ($0.name, $0.shape, $0.data) } + extra,
                                  metadata: ["zeroseg": infoJSON, "format": Self.format], to: url)
    }

    /// Reads a head prompt file made for `model` (every error of kind `.badInput(file:)`).
    public init(url: URL, model: CLIPModel) throws {
        self = try classifyingErrors(as: .badInput(file: url.path)) {
            let f: SafetensorsFile
            do { f = try SafetensorsFile(path: url.path) } catch let e as ZeroSegError { throw ZeroSegError("prompts \(url.path): \(e.message)") }
            guard f.metadata["format"] == Self.format, let json = f.metadata["zeroseg"],
                  let report = try? JSONOutput.decode(TuneReport.self, from: Data(json.utf8)),
                  let settings = report.headSettings else {
                throw ZeroSegError("\(url.path) is not a zeroseg head prompt file (no zeroseg metadata)")
            }
            if report.header.model.fingerprint != model.fingerprint {
                let fp = report.header.model.fingerprint
                throw ZeroSegError("prompts \(url.path) were made for model \(report.header.model.source) (fingerprint \(fp)), not \(model.source) (\(model.fingerprint))")
            }
            let w = model.config.text.hiddenSize
            guard let ci = f.tensors["ctx"], ci.shape.count == 2, ci.shape[1] == w, ci.shape[0] >= 1 else {
                throw ZeroSegError("prompts \(url.path): no context vectors of width \(w)")
            }
            var p = try HeadPrompts(model: model, settings: settings, context: try f.floats("ctx"), contextLength: ci.shape[0],
                                    seenNames: report.seenNames ?? report.seen, seed: 0)
            var loaded = p.parameters
            for t in loaded.tensors {
                guard let info = f.tensors[t.name], info.shape == t.shape else {
                    throw ZeroSegError("prompts \(url.path): tensor \(t.name) missing or not of shape \(t.shape) (settings \(settings.head.rawValue))")
                }
                loaded[t.name] = try f.floats(t.name)
            }
            guard loaded.allFinite else { throw ZeroSegError("prompts \(url.path): non-finite values") }
            p.parameters = loaded
            return HeadPromptFile(prompts: p, infoJSON: json)
        }
    }

    init(prompts: HeadPrompts, infoJSON: String) { self.prompts = prompts; self.infoJSON = infoJSON }

    /// The format of a prompt file (`zeroseg-prompts-1`: the linear head; `-2`: image-conditioned).
    public static func format(of url: URL) throws -> String? {
        try classifyingErrors(as: .badInput(file: url.path)) { try SafetensorsFile(path: url.path).metadata["format"] }
    }
}
