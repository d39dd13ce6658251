import Foundation
import Testing
import ZeroSeg
@testable import ZeroSegCLIP
import ZeroSegTestSupport

/// The transformer block is written once (`EncoderLayer.forward`, Sources/ZeroSegCLIP/Block.swift)
/// and parameterised by the sequences (batch / ragged with a kept prefix, full / causal), the rows
/// that come out (all / one pooled row per sequence) and what it records (nothing / q|k|v / a
/// `LayerTape` for backward). These tests check that its variants agree with each other, and that
/// the one block kept apart, the dense last block (Dense.swift: it changes the attention), follows
/// its formulas. Elsewhere: `GoldenModelTests.sharedPrefixTextPathEqualsReference` (ragged rows +
/// prefix + pooled end token = plain path, 1e-5), `GoldenModelTests.classTokenOnlyLastLayerMatchesTransformers`
/// (pooled class token against transformers), `TextBackwardTests.textForwardEqualsEncodeTokens`
/// (also when the end token is not last), `SegmentationGoldenTests` (dense methods end to end
/// against PyTorch).
///
/// Where two paths do the same arithmetic they agree bit for bit when run alone; the bounds are
/// 1e-6 x max |ref| all the same, because OpenBLAS's thread count is process-wide, other tests
/// running in parallel change it, and OpenBLAS's threaded sgemm rounds differently from its
/// single-threaded one (the tiny vision tower's hidden states: up to 1.1e-6 apart between 1 and 2
/// threads).
@Suite struct BlockAgreementTests {
    static let model = try! CLIPModel(directory: GoldenModelTests.tinyDir)

    static func array(_ p: ConstFloatPtr, _ n: Int) -> [Float] { Array(UnsafeBufferPointer(start: p, count: n)) }

    /// 1e-6 x max |ref| (at least 1e-6).
    static func bound(_ ref: [Float]) -> Float { 1e-6 * max(1, ref.map { abs($0) }.max()!) }

    /// Vision hidden states before the last layer for `n` random images of h x w pixels.
    static func beforeLastLayer(_ n: Int, height: Int, width: Int, seed: UInt64, threads: Int = 1) throws
        -> (x: [Float], gh: Int, gw: Int) {
        let m = model, px = randomFloats(n * 3 * height * width, seed: seed).map { $0 * 2 }
        let (x, gh, gw) = try px.withUnsafeBufferPointer {
            try m.visionHidden(pixels: $0.baseAddress!, batch: n, height: height, width: width,
                               layers: m.visionModel.layers.count - 1, threads: threads)
        }
        return (x.array, gh, gw)
    }

    /// textForward (the block recording a tape) and encodeTokens' plain path (the block recording
    /// nothing) on one sequence: the same arithmetic, every layer's input and the embedding.
    @Test(arguments: [1, 2])
    func recordingTextPathEqualsPlainPath(threads: Int) throws {
        let m = Self.model
        let texts = ["a photo of a cat.", "sky", "", "a bad photo of the sign symbol and a traffic light next to the pavement."]
        for ids in m.tokenize(texts) {
            var hidden: [String: [Float]] = [:]
            let plain = try m.encodeTokens([ids], normalize: false, threads: threads, record: { name, shape, data in
                hidden[name] = Self.array(data, shape.reduce(1, *))
            })[0]
            let pool = ids.firstIndex(of: Tokenizer.endToken)!
            let prompt = try CoOpPrompt(tokens: ids, ctxRange: 1..<1, pool: pool)
            let tape = try m.textForward(inputs: try m.textInputs(prompt, context: []), tokens: ids.count, pool: pool, threads: threads)
            #expect(tape.layers.count == m.textModel.layers.count)
            for (i, layer) in tape.layers.enumerated() {
                let ref = hidden["text.hidden_states.\(i)"]!
                #expect(maxAbsDiff(layer.input.array, ref) <= Self.bound(ref), "\(ids.count) tokens, input of layer \(i)")
            }
            #expect(maxAbsDiff(tape.embedding, plain) <= Self.bound(plain), "\(ids.count) tokens")
        }
    }

    /// The last vision layer computing only the class token (`pooled: .first`, what encodePixels
    /// runs) equals the full layer's class token, for several images. The pooled queries are
    /// projected as a separate, smaller product, so rounding may differ: bound 1e-6 x max |ref|.
    @Test(arguments: [1, 2])
    func pooledClassTokenEqualsFullLayer(threads: Int) throws {
        let m = Self.model, w = m.config.vision.hiddenSize, n = 3
        let (x0, gh, gw) = try Self.beforeLastLayer(n, height: 80, width: 64, seed: 11, threads: threads)
        let t = gh * gw + 1, last = m.visionModel.layers[m.visionModel.layers.count - 1]
        let full = Buffer(x0), scratch = Buffer(x0), pooled = Buffer(n * w)
        withThreads(threads) {
            last.forward(full.ptr, RaggedSequence.batch(n, tokens: t), causal: false)
            last.forward(scratch.ptr, RaggedSequence.batch(n, tokens: t), causal: false, pooled: (.first, pooled.ptr))
        }
        for b in 0..<n {
            let ref = Self.array(full.ptr + b * t * w, w), got = Self.array(pooled.ptr + b * w, w)
            let bound = Self.bound(ref)
            #expect(maxAbsDiff(got, ref) <= bound, "image \(b): \(maxAbsDiff(got, ref))")
            print("BlockAgreementTests pooled class token, \(threads) threads, image \(b): max abs diff \(maxAbsDiff(got, ref)) (bound \(bound))")
        }
    }

    /// A sequence split into a prefix (one pass, q|k|v kept) and its continuation (a second pass
    /// attending to the kept keys and values) gives the continuation rows of the whole sequence,
    /// for every layer input of the text tower; ragged rows of different lengths in one pass.
    @Test func prefixContinuationEqualsWholeSequence() throws {
        let m = Self.model, w = m.config.text.hiddenSize
        let ids = m.tokenize(["a photo of a cat.", "a photo of a traffic light.", "a photo of the sky at night."])
        let cut = 4  // "<start> a photo of"
        for seq in ids { #expect(Array(seq[0..<cut]) == Array(ids[0][0..<cut])) }
        func embed(_ tokens: ArraySlice<Int32>, from position: Int) -> [Float] {
            tokens.enumerated().flatMap { j, tok in
                (0..<w).map { m.textModel.tokenEmbedding[Int(tok) * w + $0] + m.textModel.positionEmbedding[(position + j) * w + $0] }
            }
        }
        // Whole sequences, one at a time.
        let whole = ids.map { Buffer(embed($0[...], from: 0)) }
        // The shared prefix once, then the three continuations as ragged rows in one pass.
        let prefix = Buffer(embed(ids[0][0..<cut], from: 0))
        let prefixSeqs = RaggedSequence.batch(1, tokens: cut)
        var seqs: [RaggedSequence] = [], rows = 0
        for seq in ids {
            seqs.append(RaggedSequence(row: rows, count: seq.count - cut, position: cut, prefix: 0))
            rows += seq.count - cut
        }
        let rest = Buffer(ids.flatMap { embed($0[cut...], from: cut) })
        for l in m.textModel.layers {
            for (i, seq) in ids.enumerated() { l.forward(whole[i].ptr, RaggedSequence.batch(1, tokens: seq.count), causal: true) }
            let kept = l.forwardKeepingQKV(prefix.ptr, prefixSeqs, causal: true)
            l.forward(rest.ptr, seqs, causal: true, prefix: (ConstFloatPtr(kept.ptr), prefixSeqs))
            withExtendedLifetime(kept) {}
            for (i, s) in seqs.enumerated() {
                let ref = Self.array(whole[i].ptr + cut * w, s.count * w), got = Self.array(rest.ptr + s.row * w, s.count * w)
                let bound = Self.bound(ref)
                #expect(maxAbsDiff(got, ref) <= bound, "sequence \(i): \(maxAbsDiff(got, ref))")
                print("BlockAgreementTests prefix continuation, sequence \(i): max abs diff \(maxAbsDiff(got, ref)) (bound \(bound))")
                let refPrefix = Self.array(whole[i].ptr, cut * w)
                #expect(maxAbsDiff(Self.array(prefix.ptr, cut * w), refPrefix) <= Self.bound(refPrefix),
                        "prefix rows of sequence \(i)")
            }
        }
        withExtendedLifetime((whole, prefix, rest)) {}
    }

    /// A keys-only prefix of the batch (the deep visual prompts' rows, `forwardRecording` /
    /// `forwardBatchPrefix` with `keysOnly`) gives each sequence's rows as if the prefix's rows were
    /// inserted after its first row (ZegCLIP's cat(class, prompts, patches)) and leaves the prefix's
    /// rows as they were; recording or not, the same bits. Every vision layer, 2 and 1 threads.
    @Test(arguments: [1, 2]) func keysOnlyPrefixEqualsInsertedRows(threads: Int) throws {
        let m = Self.model, w = m.config.vision.hiddenSize, n = 3, b = 2, t0 = 17
        let prompts = randomFloats(n * w, seed: 31)
        let crops = randomFloats(b * t0 * w, seed: 32)
        let budget = enterThreads(threads)
        defer { budget.leave() }
        for (li, l) in m.visionModel.layers.enumerated() {
            // Reference: each crop's [class, P, patches] through the block on its own.
            let ref = (0..<b).map { bi -> [Float] in
                let c = Array(crops[(bi * t0 * w)..<((bi + 1) * t0 * w)])
                let x = Buffer(Array(c[0..<w]) + prompts + Array(c[w...]))
                l.forward(x.ptr, RaggedSequence.batch(1, tokens: n + t0), causal: false)
                let out = Self.array(x.ptr, (n + t0) * w)
                return Array(out[0..<w]) + Array(out[((1 + n) * w)...])
            }
            let seqs = [RaggedSequence(row: 0, count: n)] + (0..<b).map { RaggedSequence(row: n + $0 * t0, count: t0, position: n, prefix: 0) }
            let x = Buffer(prompts + crops), xr = Buffer(prompts + crops)
            l.forwardBatchPrefix(x.ptr, seqs, causal: false, keysOnly: n)
            let tape = l.forwardRecording(xr.ptr, seqs, causal: false, keysOnly: n)
            #expect(Self.array(x.ptr, (n + b * t0) * w) == Self.array(xr.ptr, (n + b * t0) * w), "layer \(li): recording changed the bits")
            #expect(Self.array(x.ptr, n * w) == prompts, "layer \(li): the keys-only rows changed")
            #expect(tape.probs.count == b * m.config.vision.numAttentionHeads * t0 * (n + t0) + m.config.vision.numAttentionHeads * n * n)
            for bi in 0..<b {
                let got = Self.array(x.ptr + (n + bi * t0) * w, t0 * w), bound = Self.bound(ref[bi])
                #expect(maxAbsDiff(got, ref[bi]) <= bound, "layer \(li), crop \(bi): \(maxAbsDiff(got, ref[bi]))")
            }
            withExtendedLifetime((x, xr, tape)) {}
        }
    }

    /// The dense last block with `vanilla` is plain CLIP: its patch embeddings are the full
    /// encoder's (`visionHidden` + `tokenEmbeddings`), L2-normalised.
    @Test func denseVanillaIsTheSharedBlock() throws {
        let m = Self.model, n = 2, h = 80, wd = 96, p = m.config.projectionDim
        let px = randomFloats(n * 3 * h * wd, seed: 12).map { $0 * 2 }
        let (dense, gh, gw) = try px.withUnsafeBufferPointer {
            try m.densePatchEmbeddings(pixels: $0.baseAddress!, batch: n, height: h, width: wd, method: .vanilla, threads: 1)
        }
        let (hidden, _, _) = try px.withUnsafeBufferPointer {
            try m.visionHidden(pixels: $0.baseAddress!, batch: n, height: h, width: wd, threads: 1)
        }
        let t = gh * gw + 1
        let emb = m.tokenEmbeddings(hidden: hidden, batch: n, tokens: t)
        for b in 0..<n {
            for j in 1..<t {
                let src = emb.ptr + (b * t + j) * p
                var s: Float = 0
                for i in 0..<p { s += src[i] * src[i] }
                let inv = 1 / max(s.squareRoot(), 1e-12)
                let ref = (0..<p).map { src[$0] * inv }
                let got = Self.array(dense.ptr + (b * (t - 1) + j - 1) * p, p)
                #expect(maxAbsDiff(got, ref) <= Self.bound(ref), "image \(b), patch \(j - 1): \(maxAbsDiff(got, ref))")
            }
        }
    }

    /// Each dense method (the block kept apart) against its formula (DenseMethod's documentation)
    /// written naively with the reference kernels, accumulating in Double, Ω included; `vanilla`
    /// ties the formulas to the shared block. Bound: 2e-6 x max |ref| (measured: <= 1.4e-7 x max |ref|).
    @Test(arguments: DenseMethod.allCases)
    func denseMethodMatchesFormula(method: DenseMethod) throws {
        let m = Self.model, c = m.config.vision, w = c.hiddenSize, heads = c.numAttentionHeads, d = w / heads
        let (x0, gh, gw) = try Self.beforeLastLayer(1, height: 80, width: 96, seed: 13)
        let t = gh * gw + 1, l = m.visionModel.layers[c.numHiddenLayers - 1], inter = l.fc1.outFeatures
        let fast = Buffer(x0)
        m.denseLastLayer(l, fast.ptr, batch: 1, tokens: t, width: w, gh: gh, gw: gw, method: method, gaussianStd: 5)

        // h = LN1(x); q | k | v = h · Wqkvᵀ + b
        var h = [Float](repeating: 0, count: t * w), qkv = [Float](repeating: 0, count: t * 3 * w)
        layerNormReference(x0, l.layerNorm1.weight, l.layerNorm1.bias, &h, rows: t, cols: w, eps: l.layerNorm1.eps)
        linearReference(h, l.selfAttn.qkv.weight, l.selfAttn.qkv.bias, &qkv, m: t, n: 3 * w, k: w)
        func softmax(_ s: [Double]) -> [Double] {
            let mx = s.max()!, e = s.map { exp($0 - mx) }, z = e.reduce(0, +)
            return e.map { $0 / z }
        }
        // Ω[p, q] = exp(−‖pos_p − pos_q‖² / 2σ²) between patches, 0 for the class token.
        func omega(_ i: Int, _ j: Int) -> Double {
            guard i > 0, j > 0 else { return 0 }
            let dr = Double((i - 1) / gw - (j - 1) / gw), dc = Double((i - 1) % gw - (j - 1) % gw)
            return exp(-(dr * dr + dc * dc) / (2 * 25))
        }
        var a = [Float](repeating: 0, count: t * w)
        for hd in 0..<heads {
            func part(_ which: Int, _ i: Int) -> [Double] { (0..<d).map { Double(qkv[i * 3 * w + which * w + hd * d + $0]) } }
            func scores(_ u: Int, _ v: Int, _ i: Int) -> [Double] {
                (0..<t).map { j in zip(part(u, i), part(v, j)).reduce(0) { $0 + $1.0 * $1.1 } / Double(d).squareRoot() }
            }
            for i in 0..<t {
                var attn: [Double]
                switch method {
                case .vanilla: attn = softmax(scores(0, 1, i))
                case .maskclip: attn = (0..<t).map { $0 == i ? 1 : 0 }
                case .sclip: attn = zip(softmax(scores(0, 0, i)), softmax(scores(1, 1, i))).map { $0 + $1 }
                case .clearclip: attn = softmax(scores(0, 0, i))
                case .naclip: attn = softmax(zip(scores(1, 1, i), (0..<t).map { omega(i, $0) }).map { $0 + $1 })
                }
                for e in 0..<d {
                    a[i * w + hd * d + e] = Float((0..<t).reduce(0.0) { $0 + attn[$1] * part(2, $1)[e] })
                }
            }
        }
        var o = [Float](repeating: 0, count: t * w)
        linearReference(a, l.selfAttn.outProj.weight, l.selfAttn.outProj.bias, &o, m: t, n: w, k: w)
        var ref = o
        if method.keepsResidualAndMLP {
            let mid = zip(x0, o).map { $0 + $1 }
            var h2 = [Float](repeating: 0, count: t * w), f = [Float](repeating: 0, count: t * inter), y = [Float](repeating: 0, count: t * w)
            layerNormReference(mid, l.layerNorm2.weight, l.layerNorm2.bias, &h2, rows: t, cols: w, eps: l.layerNorm2.eps)
            linearReference(h2, l.fc1.weight, l.fc1.bias, &f, m: t, n: inter, k: w)
            f = f.map { activationReference($0, l.act) }
            linearReference(f, l.fc2.weight, l.fc2.bias, &y, m: t, n: w, k: inter)
            ref = zip(mid, y).map { $0 + $1 }
        }
        let err = maxAbsDiff(fast.array, ref), maxRef = ref.map { abs($0) }.max()!
        #expect(err <= 2e-6 * max(1, maxRef), "\(method): max abs error \(err), max |ref| \(maxRef)")
        print("BlockAgreementTests dense \(method): max abs error \(err), max |ref| \(maxRef)")
    }
}
