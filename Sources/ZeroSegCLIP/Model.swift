import CKernels
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegText
import Foundation

/// Receives named intermediate tensors during a forward pass (golden tests compare them with the
/// reference dump; names follow scripts/reference/dump_stages.py).
public typealias StageRecorder = (_ name: String, _ shape: [Int], _ data: ConstFloatPtr) -> Void

/// The BPE vocabulary a model tokenizes with.
public enum VocabularySource: Sendable, Equatable {
    /// `vocab.json` + `merges.txt` of the model folder.
    case modelFolder(URL)
    /// The vocabulary bundled with zeroseg (`bpe_simple_vocab_16e6.txt.gz`, CLIP's 49408 tokens;
    /// or the file `$ZEROSEG_VOCAB` names), used when the model folder has none.
    case bundled(URL)
}

/// A CLIP model loaded from a Hugging Face layout directory. Immutable after loading, so one value
/// can be shared by several threads: each call computes with its own `threads` (see Threads.swift
/// in ZeroSegCore); concurrent calls give the same bits as serial ones.
public final class CLIPModel: @unchecked Sendable {
    public let config: CLIPConfig
    public let preprocessor: PreprocessorConfig
    public let textModel: TextModel
    public let visionModel: VisionModel
    public let textProjection: ConstFloatPtr    // [P, Wt]
    public let visualProjection: ConstFloatPtr  // [P, Wv]
    public let logitScale: Float                // log of the scale, as stored
    public let tokenizer: Tokenizer
    /// Which BPE vocabulary `tokenizer` was read from.
    public let vocabularySource: VocabularySource
    /// Where the model came from (a directory) and whether its weights are synthetic (random).
    public let source: String
    public let isSynthetic: Bool
    /// Identifies the weights (see `fingerprint(config:weights:)`); keys the class-embedding cache.
    public let fingerprint: String
    /// Which naming the checkpoint used.
    public let layout: CheckpointLayout
    /// The arithmetic of the encoders' linear layers (`Precision`).
    public let precision: Precision
    /// Keys caches of computed embeddings: `fingerprint`, with the precision appended unless fp32.
    public var cacheKey: String { precision == .fp32 ? fingerprint : "\(fingerprint)-\(precision.rawValue)" }
    private let file: any TensorSource
    private let owned: [Buffer]

    /// Loads a model directory: `config.json` + `model.safetensors` / `pytorch_model.bin`, or
    /// `open_clip_config.json` + `open_clip_model.safetensors` / `open_clip_pytorch_model.bin`
    /// (first found in `CheckpointFiles.preference`); `vocab.json` + `merges.txt` (else the bundled
    /// BPE vocabulary, see `vocabularySource`); `preprocessor_config.json` (optional).
    ///
    /// The bundled vocabulary is CLIP's (49408 tokens): a folder without `vocab.json` /
    /// `merges.txt` whose config names another vocabulary size is refused, and so is any folder
    /// whose `tokenizer_config.json` names a tokenizer other than CLIP's. Every failure is a
    /// `ZeroSegError` of kind `.badModel` (or `.unsupported` for a configuration zeroseg does
    /// not implement).
    ///
    /// `precision`: the arithmetic of the encoders' linear layers; a precision this CPU lacks the
    /// instructions for is refused (`.unsupported`; `Precision.resolve` picks one that runs).
    /// The linear layers' weights are packed for it on first use.
    public convenience init(directory: URL, precision: Precision = .fp32) throws {
        guard precision.isSupported else {
            throw ZeroSegError.unsupported(precision.unsupportedReason)
        }
        do {
            try self.init(loading: directory, precision: precision)
        } catch let e as ZeroSegError where e.isGeneric {
            throw e.with(kind: .badModel)
        }
    }

    init(loading directory: URL, precision: Precision) throws {
        let fm = FileManager.default
        let files = try CheckpointFiles(directory: directory)
        config = files.config
        preprocessor = files.preprocessor
        layout = files.layout
        fingerprint = Self.fingerprint(config: files.config, weights: files.weights)
        file = try files.open()
        self.precision = precision
        let r = WeightReader(file, layout: files.layout, packing: precision == .fp32 ? MatmulBackend.fp32.packing : precision)
        textModel = try TextModel(r, config.text)
        visionModel = try VisionModel(r, config.vision)
        textProjection = try r.take("text_projection.weight", [config.projectionDim, config.text.hiddenSize])
        visualProjection = try r.take("visual_projection.weight", [config.projectionDim, config.vision.hiddenSize])
        logitScale = try r.take("logit_scale", [])[0]
        try r.finish()
        owned = r.owned
        let vocab = directory.appendingPathComponent("vocab.json"), merges = directory.appendingPathComponent("merges.txt")
        try Self.checkTokenizerClass(directory)
        if fm.fileExists(atPath: vocab.path) || fm.fileExists(atPath: merges.path) {
            tokenizer = try Tokenizer(vocabJSON: vocab, merges: merges)
            vocabularySource = .modelFolder(directory)
        } else {
            let bundled = try Tokenizer.defaultVocabURL()
            tokenizer = try Tokenizer(bpeGzip: bundled)
            vocabularySource = .bundled(bundled)
            guard tokenizer.vocabularySize == config.text.vocabSize else {
                throw ZeroSegError.badModel("""
                    model \(directory.path) has no vocab.json / merges.txt, and its config names a vocabulary of \
                    \(config.text.vocabSize) tokens, not the \(tokenizer.vocabularySize) of the bundled CLIP vocabulary: \
                    add the model's own vocab.json and merges.txt
                    """)
            }
        }
        guard tokenizer.vocabularySize <= config.text.vocabSize else {
            throw ZeroSegError("tokenizer has \(tokenizer.vocabularySize) tokens but the model's vocab_size is \(config.text.vocabSize)")
        }
        source = directory.path
        isSynthetic = (file as? SafetensorsFile)?.metadata["zeroseg_synthetic"] != nil
    }

    /// Refuses a folder whose `tokenizer_config.json` names a tokenizer other than CLIP's.
    static func checkTokenizerClass(_ directory: URL) throws {
        let url = directory.appendingPathComponent("tokenizer_config.json")
        guard let data = FileManager.default.contents(atPath: url.path) else { return }
        try checkTokenizerClass(data, path: url.path)
    }

    /// The same for the file's contents (`path` names it in errors).
    static func checkTokenizerClass(_ data: Data, path: String) throws {
        guard let root = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw ZeroSegError.badModel("\(path) is not a JSON object")
        }
        if let name = root["tokenizer_class"] as? String, !["CLIPTokenizer", "CLIPTokenizerFast"].contains(name) {
            throw ZeroSegError.badModel("\(path) names the tokenizer \(name): zeroseg tokenizes as CLIPTokenizer only")
        }
    }

    // MARK: Text

    /// Token ids for each text: start, BPE ids, end; truncated to the model's context length.
    public func tokenize(_ texts: [String]) -> [[Int32]] {
        texts.map { tokenizer.tokenize($0, positiveContextLength: config.text.maxPositionEmbeddings).ids }
    }

    /// Projected text embeddings [n][P] (L2-normalised unless `normalize` is false).
    public func encodeText(_ texts: [String], normalize: Bool = true, threads: Int = defaultThreads) throws -> [[Float]] {
        try encodeTokens(tokenize(texts), normalize: normalize, threads: threads)
    }

    /// Projected embeddings of token sequences [n][P]. The pooled token is the first end token
    /// (`eos_token_id`), else the last token. Sequences that end with their end token take the fast
    /// path (`encodeTokensShared`: shared prefixes, ragged rows); the others, and any call with a
    /// `record`er, the reference path below: no padding, sequences of equal length batched (the
    /// text transformer is causal, so both are exact).
    public func encodeTokens(_ ids: [[Int32]], normalize: Bool = true, threads: Int = defaultThreads,
                             record: StageRecorder? = nil) throws -> [[Float]] {
        let budget = enterThreads(threads)
        defer { budget.leave() }
        let c = config.text, w = c.hiddenSize, p = config.projectionDim
        for seq in ids {
            guard !seq.isEmpty, seq.count <= c.maxPositionEmbeddings else {
                throw ZeroSegError("token sequence of length \(seq.count) (must be 1...\(c.maxPositionEmbeddings))")
            }
            if let bad = seq.first(where: { $0 < 0 || Int($0) >= c.vocabSize }) {
                throw ZeroSegError("token id \(bad) is outside the vocabulary (\(c.vocabSize))")
            }
        }
        if record == nil, ids.allSatisfy({ $0.firstIndex(of: Int32(c.eosTokenId)) == $0.count - 1 }) {
            return encodeTokensShared(ids, normalize: normalize)
        }
        var result = [[Float]](repeating: [], count: ids.count)
        let groups = Dictionary(grouping: ids.indices, by: { ids[$0].count })
        for (t, members) in groups.sorted(by: { $0.key < $1.key }) {
            let b = members.count
            let x = Buffer(b * t * w)  // x: [B, T, W]
            let pooled = Buffer(b * w), emb = Buffer(b * p)  // [B, W], [B, P]
            defer { withExtendedLifetime((x, pooled, emb)) {} }
            for (bi, idx) in members.enumerated() {
                for (ti, tok) in ids[idx].enumerated() {
                    let dst = x.ptr + (bi * t + ti) * w
                    let e = textModel.tokenEmbedding + Int(tok) * w, pe = textModel.positionEmbedding + ti * w
                    for i in 0..<w { dst[i] = e[i] + pe[i] }
                }
            }
            let rec: StageRecorder? = record.map { r in { name, shape, data in r(name, shape, data) } }
            rec?("text.hidden_states.0", [b, t, w], x.ptr)
            for (li, layer) in textModel.layers.enumerated() {
                layer.forward(x.ptr, RaggedSequence.batch(b, tokens: t), causal: true)
                rec?("text.hidden_states.\(li + 1)", [b, t, w], x.ptr)
            }
            for (bi, idx) in members.enumerated() {
                let seq = ids[idx]
                let pos = seq.firstIndex(of: Int32(c.eosTokenId)) ?? (seq.count - 1)
                (pooled.ptr + bi * w).update(from: x.ptr + (bi * t + pos) * w, count: w)
            }
            if let rec {
                textModel.finalLayerNorm(x.ptr, x.ptr, rows: b * t)
                rec("text.last_hidden_state", [b, t, w], x.ptr)
            }
            textModel.finalLayerNorm(pooled.ptr, pooled.ptr, rows: b)
            rec?("text.pooled", [b, w], pooled.ptr)
            ZeroSegCore.linear(pooled.ptr, textProjection, nil, emb.ptr, m: b, n: p, k: w)
            rec?("text.embeds", [b, p], emb.ptr)
            for (bi, idx) in members.enumerated() {
                var v = Array(UnsafeBufferPointer(start: emb.ptr + bi * p, count: p))
                if normalize { l2Normalize(&v) }
                result[idx] = v
            }
        }
        return result
    }

    // MARK: Vision

    /// Hidden states of the vision transformer for pixels [N, 3, H, W] (H, W multiples of the patch
    /// size are used fully; a remainder is ignored, as the strided convolution does). Position
    /// embeddings are interpolated bicubically when the grid differs from the model's.
    /// Returns x: [N, 1 + gh·gw, W] after `layers` encoder layers (default all), before post-LN.
    public func visionHidden(pixels: ConstFloatPtr, batch n: Int, height: Int, width: Int, layers: Int? = nil,
                             threads: Int = defaultThreads, record: StageRecorder? = nil, prefix: String = "vision") throws -> (Buffer, gh: Int, gw: Int) {
        let budget = enterThreads(threads)
        defer { budget.leave() }
        let (x, gh, gw) = try visionEmbeddings(pixels: pixels, batch: n, height: height, width: width)
        let w = config.vision.hiddenSize, t = gh * gw + 1
        record?("\(prefix).hidden_states.0", [n, t, w], x.ptr)
        let upTo = layers ?? visionModel.layers.count, scratch = BlockScratch()
        for (li, layer) in visionModel.layers.prefix(upTo).enumerated() {
            layer.forward(x.ptr, RaggedSequence.batch(n, tokens: t), causal: false, scratch: scratch)
            record?("\(prefix).hidden_states.\(li + 1)", [n, t, w], x.ptr)
        }
        return (x, gh, gw)
    }

    /// The vision tower's input: x0 = pre_layrnorm(class / patch embeddings + position embeddings)
    /// [N, 1 + gh·gw, W] for pixels [N, 3, H, W] (see `visionHidden`), with the caller's thread budget.
    package func visionEmbeddings(pixels: ConstFloatPtr, batch n: Int, height: Int, width: Int) throws -> (Buffer, gh: Int, gw: Int) {
        let c = config.vision, w = c.hiddenSize, p = c.patchSize
        let gh = height / p, gw = width / p
        guard gh > 0, gw > 0 else { throw ZeroSegError("image of \(width)x\(height) is smaller than one \(p)x\(p) patch") }
        let t = gh * gw + 1, k = 3 * p * p
        // im2col: cols[N·gh·gw, 3·p·p], column order (channel, ky, kx) as the conv weight.
        let cols = Buffer(n * gh * gw * k)
        let patches = Buffer(n * gh * gw * w)
        let pos = positionEmbedding(gh: gh, gw: gw)  // [T, W]
        defer { withExtendedLifetime((cols, patches, pos)) {} }
        for b in 0..<n {
            for gy in 0..<gh {
                for gx in 0..<gw {
                    let row = cols.ptr + ((b * gh + gy) * gw + gx) * k
                    for ch in 0..<3 {
                        for ky in 0..<p {
                            let src = pixels + ((b * 3 + ch) * height + gy * p + ky) * width + gx * p
                            (row + (ch * p + ky) * p).update(from: src, count: p)
                        }
                    }
                }
            }
        }
        ZeroSegCore.linear(cols.ptr, visionModel.patchEmbedding, nil, patches.ptr, m: n * gh * gw, n: w, k: k)
        let x = Buffer(n * t * w)
        for b in 0..<n {
            let xb = x.ptr + b * t * w
            for i in 0..<w { xb[i] = visionModel.classEmbedding[i] + pos.ptr[i] }
            for j in 1..<t {
                let src = patches.ptr + (b * (t - 1) + j - 1) * w, pe = pos.ptr + j * w, dst = xb + j * w
                for i in 0..<w { dst[i] = src[i] + pe[i] }
            }
        }
        visionModel.preLayrnorm(x.ptr, x.ptr, rows: n * t)
        return (x, gh, gw)
    }

    /// Position embeddings [1 + gh·gw, W] for a gh x gw grid (bicubic interpolation of the patch part,
    /// as transformers' `interpolate_pos_encoding`).
    func positionEmbedding(gh: Int, gw: Int) -> Buffer {
        let c = config.vision, w = c.hiddenSize, g = c.gridSize
        let out = Buffer((gh * gw + 1) * w)
        if gh == g && gw == g {
            out.ptr.update(from: visionModel.positionEmbedding, count: (g * g + 1) * w)
            return out
        }
        out.ptr.update(from: visionModel.positionEmbedding, count: w)
        // [G·G, W] → [W, G, G] → bicubic → [W, gh, gw] → [gh·gw, W]
        let chw = Buffer(w * g * g), resized = Buffer(w * gh * gw)
        defer { withExtendedLifetime((chw, resized)) {} }
        for j in 0..<(g * g) { for i in 0..<w { chw.ptr[i * g * g + j] = visionModel.positionEmbedding[(j + 1) * w + i] } }
        resizeBicubicCHW(chw.ptr, channels: w, height: g, width: g, resized.ptr, outHeight: gh, outWidth: gw)
        for j in 0..<(gh * gw) { for i in 0..<w { out.ptr[(j + 1) * w + i] = resized.ptr[i * gh * gw + j] } }
        return out
    }

    /// Projected image embeddings [N][P] from preprocessed pixels [N, 3, H, W].
    public func encodePixels(_ pixels: ConstFloatPtr, batch n: Int, height: Int, width: Int, normalize: Bool = true,
                             threads: Int = defaultThreads, record: StageRecorder? = nil) throws -> [[Float]] {
        let budget = enterThreads(threads)
        defer { budget.leave() }
        let c = config.vision, w = c.hiddenSize, p = config.projectionDim
        let pooled = Buffer(n * w), emb = Buffer(n * p)
        if let record {
            let (x, gh, gw) = try visionHidden(pixels: pixels, batch: n, height: height, width: width, threads: threads, record: record)
            let t = gh * gw + 1
            record("vision.last_hidden_state", [n, t, w], x.ptr)
            for b in 0..<n { (pooled.ptr + b * w).update(from: x.ptr + b * t * w, count: w) }
            withExtendedLifetime(x) {}
        } else {
            // Only the class token is pooled, so the last layer needs keys and values of every
            // token but queries, attention output and MLP for the class token alone (~7% of the
            // encoder's FLOPs at 224 px saved; identical results up to rounding).
            let layers = visionModel.layers
            let (x, gh, gw) = try visionHidden(pixels: pixels, batch: n, height: height, width: width,
                                               layers: layers.count - 1, threads: threads)
            let t = gh * gw + 1
            layers[layers.count - 1].forward(x.ptr, RaggedSequence.batch(n, tokens: t), causal: false, pooled: (.first, pooled.ptr))
            withExtendedLifetime(x) {}
        }
        defer { withExtendedLifetime((pooled, emb)) {} }
        visionModel.postLayernorm(pooled.ptr, pooled.ptr, rows: n)
        record?("vision.pooled", [n, w], pooled.ptr)
        ZeroSegCore.linear(pooled.ptr, visualProjection, nil, emb.ptr, m: n, n: p, k: w)
        record?("vision.embeds", [n, p], emb.ptr)
        return (0..<n).map { b in
            var v = Array(UnsafeBufferPointer(start: emb.ptr + b * p, count: p))
            if normalize { l2Normalize(&v) }
            return v
        }
    }

    /// Projected embeddings of every token (class token first, then patches row by row):
    /// visual_projection(post_layernorm(hidden)) → [N, 1 + gh·gw, P], not normalised.
    public func tokenEmbeddings(hidden x: Buffer, batch n: Int, tokens t: Int, threads: Int = defaultThreads) -> Buffer {
        let budget = enterThreads(threads)
        defer { budget.leave() }
        let w = config.vision.hiddenSize, p = config.projectionDim
        let ln = Buffer(n * t * w)
        defer { withExtendedLifetime((x, ln)) {} }
        visionModel.postLayernorm(x.ptr, ln.ptr, rows: n * t)
        let out = Buffer(n * t * p)
        ZeroSegCore.linear(ln.ptr, visualProjection, nil, out.ptr, m: n * t, n: p, k: w)
        return out
    }

    /// Embeddings of images, preprocessed as CLIPImageProcessor does with this model's settings,
    /// `batch` images per encoder pass (one product per weight for all of them; a batch of 8 at
    /// 224 px holds about 60 MB of activations). Throws for a batch below 1.
    public func encodeImages(_ images: [RGBImage], normalize: Bool = true, batch: Int = 8,
                             threads: Int = defaultThreads) throws -> [[Float]] {
        guard batch >= 1 else { throw ZeroSegError.invalidArgument("the image batch must be at least 1", parameter: "batch") }
        let budget = enterThreads(threads)  // also for the preprocessor's resize
        defer { budget.leave() }
        let pre = try CLIPPreprocessor(size: preprocessor.shortestEdge, cropSize: preprocessor.cropSize,
                                   mean: preprocessor.mean, std: preprocessor.std)
        let s = preprocessor.cropSize
        var out: [[Float]] = []
        var start = 0
        while start < images.count {
            let part = images[start..<min(images.count, start + batch)]
            let px = try part.flatMap { try pre($0) }  // [B, 3, s, s]
            out += try px.withUnsafeBufferPointer {
                try encodePixels($0.baseAddress!, batch: part.count, height: s, width: s, normalize: normalize, threads: threads)
            }
            start += batch
        }
        return out
    }

    /// exp(logit_scale), the factor CLIP multiplies cosine similarities by.
    public var scale: Float { expf(logitScale) }
}

public func l2Normalize(_ v: inout [Float]) {
    var s: Float = 0
    for x in v { s += x * x }
    let inv = 1 / max(s.squareRoot(), 1e-12)
    for i in v.indices { v[i] *= inv }
}

/// Cosine similarities [A][B] of two lists of vectors.
public func cosineSimilarities(_ a: [[Float]], _ b: [[Float]]) -> [[Float]] {
    let an = a.map { v -> [Float] in var v = v; l2Normalize(&v); return v }
    let bn = b.map { v -> [Float] in var v = v; l2Normalize(&v); return v }
    return an.map { x in bn.map { y in zip(x, y).reduce(0) { $0 + $1.0 * $1.1 } } }
}
