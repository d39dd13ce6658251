import Foundation
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegCLIP
import ZeroSegSegmentation

// The image-conditioned pixel-text heads as learned prompts (issue 13): CoOp context vectors,
// VPT-deep visual prompts in the frozen image encoder, and ZegCLIP's relationship descriptor + ATM
// decoder or DenseCLIP's context decoder, trained on seen classes with CLIP frozen.
//
//   text:   t_c = textProjection(textTransformer([SOT] ctx_1..ctx_N name_c . [EOT]))   (raw)
//   image:  tokens = visualProjection(ln_post(prompt_norm(ViT with deep prompts)))      (VisualPrompts.swift)
//           g = tokens[class], f = tokens[patches]
//   scores: head(t, g, f) [C, gh, gw]                                     (ZegCLIPHead / ContextDecoderHead)
//   loss:   softmax cross-entropy, or ZegCLIP's sigmoid focal + dice, on the scores upsampled to the
//           crop's labels (SegLoss.swift), seen classes only.

/// Which pixel-text head `zeroseg tune` learns.
public enum HeadKind: String, CaseIterable, Sendable, Codable {
    /// CoOp context + a residual linear adapter on cached dense features (Prompts.swift).
    case linear
    /// ZegCLIP: deep visual prompts, relationship descriptor, ATM decoder.
    case zegclip
    /// DenseCLIP: deep visual prompts (optional), context decoder updating the class embeddings.
    case denseclip
}

/// The settings of an image-conditioned head (recorded in the prompt file).
public struct HeadSettings: Sendable, Equatable, Codable {
    public var head: HeadKind = .zegclip
    /// Deep visual prompt tokens per layer (0: the encoder runs as is).
    public var visualPrompts = 10
    /// Decoder layers (ZegCLIP's ATM decoder or DenseCLIP's context decoder).
    public var decoderLayers = 3
    /// softmax: cross-entropy over the seen classes; sigmoid: ZegCLIP's per-class focal (×20) + dice (×1).
    public var loss: SegLossKind = .softmax
    /// Side of the square training crops.
    public var crop = 224
    /// Subtracted from the seen classes' sigmoid scores at inference (ZegCLIP's calibration).
    public var seenBias: Float = 0.1
    /// Decoder width and heads (0: the paper's: ZegCLIP 512 / 8, DenseCLIP 256 / 4).
    public var width = 0
    public var heads = 0
    public init() {}

    public var resolvedWidth: Int { width > 0 ? width : (head == .denseclip ? 256 : 512) }
    public var resolvedHeads: Int { heads > 0 ? heads : (head == .denseclip ? 4 : 8) }

    /// Errors of kind `.invalidArgument(parameter:)`.
    public func validate() throws {
        func bad(_ parameter: String, _ message: String) -> ZeroSegError { .invalidArgument(message, parameter: parameter) }
        guard (0...100).contains(visualPrompts) else { throw bad("visualPrompts", "the number of visual prompts must be between 0 and 100") }
        guard (1...12).contains(decoderLayers) else { throw bad("decoderLayers", "the number of decoder layers must be between 1 and 12") }
        guard (16...1024).contains(crop) else { throw bad("crop", "the crop size must be between 16 and 1024 pixels") }
        guard seenBias.isFinite && seenBias >= 0 && seenBias < 1 else { throw bad("seenBias", "the seen-class bias must be in [0, 1)") }
        guard width >= 0 && width <= 4096 else { throw bad("width", "the decoder width must be between 1 and 4096") }
        guard heads >= 0 && (heads == 0 || resolvedWidth % heads == 0) else {
            throw bad("heads", "the decoder width \(resolvedWidth) is not a multiple of \(heads) heads")
        }
        if head == .linear && visualPrompts != 0 {
            throw bad("visualPrompts", "the linear head trains on cached features: visual prompts need the zegclip or denseclip head")
        }
    }

    enum CodingKeys: String, CodingKey {
        case head, visualPrompts = "visual_prompts", decoderLayers = "decoder_layers", loss, crop, seenBias = "seen_bias", width, heads
    }
}

/// Learned prompts of an image-conditioned head: what `zeroseg tune --head zegclip|denseclip`
/// writes and `--prompts` reads.
public struct HeadPrompts: @unchecked Sendable {
    /// The head's settings (`seenBias` may be changed for inference; the rest shapes the tensors).
    public var settings: HeadSettings
    /// [N, Wt] CoOp context vectors.
    public var context: [Float]
    public let contextLength: Int
    public var visual: VisualPrompts?
    public var head: any ImageConditionedHead
    /// Lower-cased names of the seen classes (the sigmoid head's calibration lowers their scores).
    public let seenNames: Set<String>
    public let textWidth: Int, dim: Int

    /// Fresh, seeded parameters for `model`.
    public init(model: CLIPModel, settings: HeadSettings, context: [Float], contextLength: Int, seenNames: [String], seed: UInt64,
                logitScale: Float = 1 / 0.07) throws {
        try settings.validate()
        self.settings = settings
        self.context = context; self.contextLength = contextLength
        textWidth = model.config.text.hiddenSize; dim = model.config.projectionDim
        self.seenNames = Set(seenNames.map { $0.lowercased() })
        visual = settings.visualPrompts > 0 ? try VisualPrompts(model: model, count: settings.visualPrompts, seed: seed) : nil
        switch settings.head {
        case .zegclip:
            head = try ZegCLIPHead(dim: dim, width: settings.resolvedWidth, heads: settings.resolvedHeads,
                                   layers: settings.decoderLayers, seed: seed)
        case .denseclip:
            head = try ContextDecoderHead(dim: dim, width: settings.resolvedWidth, heads: settings.resolvedHeads,
                                          layers: settings.decoderLayers, logScale: logf(logitScale), seed: seed)
        case .linear:
            throw ZeroSegError.invalidArgument("the linear head is LearnedPrompts, not an image-conditioned head", parameter: "head")
        }
    }

    /// Every learned tensor: `ctx`, the visual prompts' and the head's.
    public var parameters: NamedTensors {
        get {
            var p = NamedTensors([NamedTensor("ctx", [contextLength, textWidth], context)])
            if let visual { p.append(contentsOf: visual.parameters) }
            p.append(contentsOf: head.parameters)
            return p
        }
        set {
            precondition(newValue.sameLayout(as: parameters), "HeadPrompts: parameters of another layout")
            context = newValue["ctx"]
            if var v = visual {
                var vp = v.parameters
                for n in vp.names { vp[n] = newValue[n] }
                v.parameters = vp
                visual = v
            }
            var hp = head.parameters
            for n in hp.names { hp[n] = newValue[n] }
            head.parameters = hp
        }
    }

    /// Weight decay: the head's linear weights.
    public func decays(_ name: String) -> Bool { head.parameters.contains(name) && head.decays(name) }
}

extension HeadPrompts: PromptHead {
    public func checkFits(_ model: CLIPModel) throws {
        guard dim == model.config.projectionDim, textWidth == model.config.text.hiddenSize else {
            throw ZeroSegError("the prompts do not fit this model")
        }
        if let visual, !visual.fits(model) { throw ZeroSegError("the visual prompts do not fit this model") }
    }

    /// The head's scores are its logits: scale 1 (a learned scale, if any, is inside the head).
    public var logitScale: Float { 1 }
    public var scoresWindows: Bool { true }

    /// Raw (not normalised) CoOp class embeddings [Q][P]: the heads normalise what their papers do.
    public func queries(_ set: ClassSet, model: CLIPModel, threads: Int) throws -> [[Float]] {
        let c = try model.coopText(set.queries.map(\.name), context: context, contextLength: contextLength, record: false, threads: threads)
        let p = model.config.projectionDim
        return (0..<c.count).map { Array(c.embeddings[($0 * p)..<(($0 + 1) * p)]) }
    }

    public func adaptPatchEmbeddings(_ x: FloatPtr, rows: Int) {}

    /// The prompted encoder on the windows, then the head. Sigmoid heads: ZegCLIP's
    /// `semantic_inference`, p = σ(x) − bias for seen classes, returned as log(max(p, 1e-6)) so
    /// that the segmenter's softmax gives p / Σ p (ZegCLIP takes the argmax of p; windows are
    /// averaged here in log space, ZegCLIP averages p).
    public func scoreWindows(pixels: ConstFloatPtr, batch nb: Int, height: Int, width: Int, queries: [[Float]], set: ClassSet?,
                             model: CLIPModel, threads: Int) throws -> WindowScores? {
        let budget = enterThreads(threads)
        defer { budget.leave() }
        let (tokens, gh, gw) = try model.promptedTokens(pixels: pixels, batch: nb, height: height, width: width, prompts: visual, threads: threads)
        let p = dim, g = gh * gw, q = queries.count
        let (global, patches) = splitTokens(tokens.array, batch: nb, patches: g, dim: p)
        var (scores, _) = try head.forward(text: queries.flatMap { $0 }, classes: q, global: global, patches: patches, batch: nb,
                                           gridHeight: gh, gridWidth: gw, threads: threads, record: false)
        if settings.loss == .sigmoid {
            let seen = set.map { s in s.queries.map { seenNames.contains($0.name.lowercased()) } } ?? [Bool](repeating: false, count: q)
            for b in 0..<nb {
                for k in 0..<q {
                    let bias: Float = seen[k] ? settings.seenBias : 0
                    for j in 0..<g {
                        let i = (b * q + k) * g + j
                        scores[i] = logf(max(1 / (1 + expf(-scores[i])) - bias, 1e-6))
                    }
                }
            }
        }
        // normalised patch embeddings, for proposals
        let normalised = l2NormalizeRows(patches, rows: nb * g, dim: p).y
        return WindowScores(scores: Buffer(scores), patches: Buffer(normalised), gridHeight: gh, gridWidth: gw)
    }
}

// MARK: - CoOp text, batched

/// CoOp prompts through the text encoder: raw embeddings [C, P] and, when recorded, what the
/// backward pass needs.
public struct CoOpText: @unchecked Sendable {
    public let count: Int
    /// [C, P] text_projection outputs, not normalised.
    public let embeddings: [Float]
    let tape: TextBatchTape?
    let prompts: [CoOpPrompt]
}

extension CLIPModel {
    /// The CoOp prompts of `names` with `context` [N, Wt] through the text encoder, all in one
    /// ragged batch, the shared [SOT] ctx_1..ctx_N rows once (`textForward(batch:pools:sharingPrefix:)`;
    /// `sharingPrefix: false`: the plain batch); with `record`, the tape for `coopContextGradient`.
    public func coopText(_ names: [String], context: [Float], contextLength: Int, record: Bool, threads: Int,
                         sharingPrefix: Bool = true) throws -> CoOpText {
        let prompts = try names.map { try coopPrompt(name: $0, contextLength: contextLength) }
        let inputs = try prompts.map { try textInputs($0, context: context) }
        let tape = try textForward(batch: inputs, pools: prompts.map(\.pool), sharingPrefix: sharingPrefix, threads: threads)
        return CoOpText(count: names.count, embeddings: tape.embeddings.flatMap { $0 }, tape: record ? tape : nil, prompts: prompts)
    }

    /// dL/dctx [N, Wt] given dL/d(embeddings) [C, P] (one batched backward pass).
    public func coopContextGradient(_ text: CoOpText, dEmbeddings: [Float], threads: Int) throws -> [Float] {
        let p = config.projectionDim, wt = config.text.hiddenSize
        guard let tape = text.tape, dEmbeddings.count == text.count * p else {
            throw ZeroSegError("coopContextGradient: the text pass was not recorded, or the gradient has the wrong size")
        }
        let dX = try textInputGradients(tape, gradEmbeddings: (0..<text.count).map { Array(dEmbeddings[($0 * p)..<(($0 + 1) * p)]) },
                                        threads: threads)
        let dCtx = try dX.context(text.prompts, width: wt)
        return dCtx
    }
}
