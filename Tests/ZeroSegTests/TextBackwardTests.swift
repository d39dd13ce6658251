import Foundation
import Testing
import ZeroSeg
import ZeroSegTestSupport

/// Gradients of the frozen text encoder with respect to its input embeddings (CoOp prompts;
/// `TextBackward.swift`) against torch autograd on the tiny synthetic CLIP, for the model's own
/// quick_gelu and for gelu / gelu_pytorch_tanh swapped into the same weights. Reference:
/// `Fixtures/textgrad/reference.safetensors`, written by `scripts/reference/make_textgrad_fixture.py`
/// (regenerate with it; see `Fixtures/textgrad/README.md`).
///
/// Tolerances: ids equal; inputs 1e-6 (abs); embeddings 1e-5 x max |ref|; gradients ‖g − g_ref‖ /
/// ‖g_ref‖ <= 1e-3 per tensor (float32 autograd itself is ~4e-7 from float64). The finite-difference
/// and `encodeTokens` checks do not use the fixture.
@Suite struct TextBackwardTests {
    static let reference: SafetensorsFile = try! SafetensorsFile(
        path: Bundle.module.url(forResource: "reference", withExtension: "safetensors", subdirectory: "Fixtures/textgrad")!.path)
    static func meta<T: Decodable>(_ key: String, _ type: T.Type) -> T {
        try! JSONDecoder().decode(T.self, from: Data(reference.metadata[key]!.utf8))
    }
    static let names = meta("names", [String].self)
    static let contextLength = meta("context_length", Int.self)
    static let cases = meta("cases", [String].self)

    /// The tiny model with the text MLP activation replaced (the weights are the same).
    static func model(_ act: String) -> CLIPModel {
        if act == Activation.quickGELU.rawValue { return tiny }
        let d = temporaryDirectory("zeroseg-tiny-\(act)")
        for f in ["model.safetensors", "vocab.json", "merges.txt", "preprocessor_config.json"] {
            try! FileManager.default.copyItem(at: GoldenModelTests.tinyDir.appendingPathComponent(f), to: d.appendingPathComponent(f))
        }
        var cfg = SyntheticArch.tiny.config
        cfg.text.hiddenAct = Activation(rawValue: act)!
        try! JSONSerialization.data(withJSONObject: cfg.json()).write(to: d.appendingPathComponent("config.json"))
        let m = try! CLIPModel(directory: d)
        precondition(m.config.text.hiddenAct.rawValue == act)
        return m
    }
    static let tiny = try! CLIPModel(directory: GoldenModelTests.tinyDir)
    static let models: [String: CLIPModel] = Dictionary(uniqueKeysWithValues: cases.map { ($0, model($0)) })

    static func relativeError(_ a: [Float], _ b: [Float]) -> Double {
        precondition(a.count == b.count)
        var num = 0.0, den = 0.0
        for (x, y) in zip(a, b) { num += Double(x - y) * Double(x - y); den += Double(y) * Double(y) }
        return (num / max(den, 1e-300)).squareRoot()
    }

    static func rows(_ a: [Float], _ i: Int, _ width: Int) -> [Float] { Array(a[(i * width)..<((i + 1) * width)]) }

    /// loss = Σ_i dot(e_i / ‖e_i‖, g_i) over the prompts with shared context; its value, dL/dx0 per
    /// prompt and dL/dctx summed over the prompts.
    static func lossAndGradients(_ m: CLIPModel, _ prompts: [CoOpPrompt], context: [Float], upstream: [[Float]])
        -> (loss: Float, inputs: [[Float]], context: [Float]) {
        var loss: Float = 0
        var dInputs: [[Float]] = []
        var dCtx = [Float](repeating: 0, count: context.count)
        for (p, g) in zip(prompts, upstream) {
            let tape = try! m.textForward(inputs: try! m.textInputs(p, context: context), tokens: p.tokens.count, pool: p.pool, threads: 1)
            var y = tape.embedding
            l2Normalize(&y)
            loss += zip(y, g).reduce(0) { $0 + $1.0 * $1.1 }
            let dx = try! m.textBackward(tape, gradEmbedding: try! l2NormalizeBackward(tape.embedding, grad: g), threads: 1)
            dInputs.append(dx)
            for (i, v) in try! m.contextGradient(p, inputGradient: dx).enumerated() { dCtx[i] += v }
        }
        return (loss, dInputs, dCtx)
    }

    static func loss(_ m: CLIPModel, _ p: CoOpPrompt, inputs x0: [Float], upstream g: [Float]) -> Float {
        var y = try! m.textForward(inputs: x0, tokens: p.tokens.count, pool: p.pool, threads: 1).embedding
        l2Normalize(&y)
        return zip(y, g).reduce(0) { $0 + $1.0 * $1.1 }
    }

    // MARK: Against torch

    @Test func fixtureHasCases() {
        #expect(Self.cases == ["quick_gelu", "gelu", "gelu_pytorch_tanh"])
        #expect(Self.names.count == 3 && Self.contextLength == 4)
    }

    @Test func promptIdsMatchOpenCLIP() throws {
        let m = Self.tiny
        let x = m.tokenize(["X"])[0]
        #expect(x.count == 3)
        for (k, name) in Self.names.enumerated() {
            let p = try m.coopPrompt(name: name, contextLength: Self.contextLength)
            let ref = try Self.reference.ints("prompt.\(k).ids").map { Int32($0) }
            #expect(p.tokens == ref, "\(name)")
            #expect(p.ctxRange == 1..<(1 + Self.contextLength))
            #expect(p.tokens[p.ctxRange].allSatisfy { $0 == x[1] })
            #expect(p.pool == p.tokens.count - 1 && p.tokens[p.pool] == Tokenizer.endToken)
            #expect(Array(p.tokens[p.ctxRange.upperBound...]) == Array(m.tokenize(["\(name)."])[0].dropFirst()))
        }
    }

    @Test func inputsMatchTorch() throws {
        let m = Self.tiny, w = m.config.text.hiddenSize
        let ctx = try Self.reference.floats("context")
        #expect(ctx.count == Self.contextLength * w)
        for (k, name) in Self.names.enumerated() {
            let p = try m.coopPrompt(name: name, contextLength: Self.contextLength)
            let x0 = try m.textInputs(p, context: ctx)
            let d = maxAbsDiff(x0, try Self.reference.floats("prompt.\(k).inputs"))
            #expect(d <= 1e-6, "\(name): inputs max |diff| \(d)")
        }
    }

    @Test(arguments: TextBackwardTests.cases)
    func embeddingsAndGradientsMatchTorch(_ act: String) throws {
        let m = try #require(Self.models[act]), ref = Self.reference
        let w = m.config.text.hiddenSize, pd = m.config.projectionDim, n = Self.contextLength
        let ctx = try ref.floats("context"), upstream = try ref.floats("upstream")
        let refEmb = try ref.floats("\(act).embeddings"), refGradEmb = try ref.floats("\(act).grad_embeddings")
        let refGradCtx = try ref.floats("\(act).grad_context")
        let maxRef = Double(refEmb.map { abs($0) }.max()!)
        var dCtx = [Float](repeating: 0, count: n * w)
        var report: [String] = []
        for (k, name) in Self.names.enumerated() {
            let p = try m.coopPrompt(name: name, contextLength: n)
            let tape = try m.textForward(inputs: try m.textInputs(p, context: ctx), tokens: p.tokens.count, pool: p.pool, threads: 1)
            let de = Double(maxAbsDiff(tape.embedding, Self.rows(refEmb, k, pd)))
            #expect(de <= 1e-5 * maxRef, "\(act) \(name): embedding max |diff| \(de) (max |ref| \(maxRef))")
            let gE = try l2NormalizeBackward(tape.embedding, grad: Self.rows(upstream, k, pd))
            let eGE = Self.relativeError(gE, Self.rows(refGradEmb, k, pd))
            #expect(eGE <= 1e-3, "\(act) \(name): d loss / d embedding relative error \(eGE)")
            let dx = try m.textBackward(tape, gradEmbedding: gE, threads: 1)
            let eX = Self.relativeError(dx, try ref.floats("\(act).prompt.\(k).grad_inputs"))
            #expect(eX <= 1e-3, "\(act) \(name): d loss / d inputs relative error \(eX)")
            let g = try m.contextGradient(p, inputGradient: dx)
            let eC = Self.relativeError(g, Self.rows(refGradCtx, k, n * w))
            #expect(eC <= 1e-3, "\(act) \(name): d loss / d ctx relative error \(eC)")
            for i in g.indices { dCtx[i] += g[i] }
            report.append(String(format: "%@: emb %.2e (of max), dE %.2e, dX %.2e, dCtx %.2e", name, de / maxRef, eGE, eX, eC))
        }
        let eSum = Self.relativeError(dCtx, try ref.floats("\(act).grad_context_sum"))
        #expect(eSum <= 1e-3, "\(act): summed d loss / d ctx relative error \(eSum)")
        print("TextBackwardTests \(act): " + report.joined(separator: "; ") + String(format: "; dCtx summed %.2e", eSum))
    }

    // MARK: Without the fixture

    /// Double-sided finite differences (eps 1e-2, float32) of the CoOp loss on seeded context and
    /// upstream vectors: context coordinates (the summed gradient) and other input coordinates.
    @Test(arguments: TextBackwardTests.cases)
    func finiteDifferences(_ act: String) throws {
        let m = try #require(Self.models[act])
        let w = m.config.text.hiddenSize, pd = m.config.projectionDim, n = 3
        let prompts = try ["dog", "traffic light"].map { try m.coopPrompt(name: $0, contextLength: n) }
        let ctx = randomFloats(n * w, seed: 11).map { $0 * 0.05 }
        let upstream = (0..<prompts.count).map { randomFloats(pd, seed: 20 + UInt64($0)) }
        let (_, dInputs, dCtx) = Self.lossAndGradients(m, prompts, context: ctx, upstream: upstream)
        let eps: Float = 1e-2
        func total(_ c: [Float]) -> Float { Self.lossAndGradients(m, prompts, context: c, upstream: upstream).loss }
        let scaleCtx = dCtx.map { abs($0) }.max()!
        var worst: Float = 0
        for i in [0, 5, w + 7, 2 * w + 31, 2 * w + 3] {
            var plus = ctx, minus = ctx
            plus[i] += eps; minus[i] -= eps
            let fd = (total(plus) - total(minus)) / (2 * eps)
            worst = max(worst, abs(fd - dCtx[i]) / scaleCtx)
            #expect(abs(fd - dCtx[i]) <= 0.02 * scaleCtx, "\(act) ctx[\(i)]: finite difference \(fd), backward \(dCtx[i])")
        }
        // non-context rows of the second prompt: start token, a name token, the end token
        let p = prompts[1], x0 = try m.textInputs(p, context: ctx), dx = dInputs[1]
        let scaleX = dx.map { abs($0) }.max()!
        for (row, col) in [(0, 3), (n + 1, 10), (p.pool, 0), (p.pool, 29)] {
            let i = row * w + col
            var plus = x0, minus = x0
            plus[i] += eps; minus[i] -= eps
            let fd = (Self.loss(m, p, inputs: plus, upstream: upstream[1]) - Self.loss(m, p, inputs: minus, upstream: upstream[1])) / (2 * eps)
            worst = max(worst, abs(fd - dx[i]) / scaleX)
            #expect(abs(fd - dx[i]) <= 0.02 * scaleX, "\(act) x0[\(row), \(col)]: finite difference \(fd), backward \(dx[i])")
        }
        print("TextBackwardTests finite differences \(act): worst |fd - backward| / max |grad| = \(worst)")
    }

    /// textForward on plain token ids (no context vectors) gives encodeTokens' embeddings, also when
    /// the end token is not last; rows after the pooled one get no gradient (causal attention).
    @Test func textForwardEqualsEncodeTokens() throws {
        let m = Self.tiny, w = m.config.text.hiddenSize
        var ids = m.tokenize(["a photo of a cat.", "sky", "traffic light", "", "Sidewalk & traffic-light, 2 cars!"])
        ids.append(m.tokenize(["a photo of a dog."])[0] + [320, 1929])  // tokens after the end token
        let ref = try m.encodeTokens(ids, normalize: false, threads: 1)
        for (seq, e) in zip(ids, ref) {
            let pool = seq.firstIndex(of: Tokenizer.endToken)!
            let p = try CoOpPrompt(tokens: seq, ctxRange: 1..<1, pool: pool)
            let tape = try m.textForward(inputs: try m.textInputs(p, context: []), tokens: seq.count, pool: pool, threads: 1)
            let maxRef = e.map { abs($0) }.max()!
            #expect(maxAbsDiff(tape.embedding, e) <= 1e-5 * max(1, maxRef), "\(seq)")
            let dx = try m.textBackward(tape, gradEmbedding: randomFloats(e.count, seed: 3), threads: 1)
            #expect(dx[((pool + 1) * w)...].allSatisfy { $0 == 0 })
            #expect(dx[..<((pool + 1) * w)].contains { $0 != 0 })
        }
    }

    /// The batched forward / backward (all prompts as ragged rows, `textForward(batch:)`) against
    /// each prompt alone: embeddings and input gradients within 1e-5 x max |value| (the products
    /// run over different row counts, so rounding may differ), and the same bits with 1 and 2 threads.
    @Test func batchEqualsOneAtATime() throws {
        let m = Self.tiny, pd = m.config.projectionDim
        let prompts = try ["cat", "traffic light", "sofa", "a"].map { try m.coopPrompt(name: $0, contextLength: 3) }
        let ctx = randomFloats(3 * m.config.text.hiddenSize, seed: 12).map { $0 * 0.05 }
        let x0s = try prompts.map { try m.textInputs($0, context: ctx) }
        let g = (0..<prompts.count).map { randomFloats(pd, seed: 30 + UInt64($0)) }
        let batch = try m.textForward(batch: x0s, pools: prompts.map(\.pool), threads: 2)
        let dBatch = try m.textBackward(batch, gradEmbeddings: g, threads: 2)
        for (k, p) in prompts.enumerated() {
            let one = try m.textForward(inputs: x0s[k], tokens: p.tokens.count, pool: p.pool, threads: 1)
            let e = one.embedding, dx = try m.textBackward(one, gradEmbedding: g[k], threads: 1)
            #expect(maxAbsDiff(batch.embeddings[k], e) <= 1e-5 * e.map { abs($0) }.max()!, "prompt \(k) embedding")
            #expect(maxAbsDiff(dBatch[k], dx) <= 1e-5 * dx.map { abs($0) }.max()!, "prompt \(k) input gradient")
        }
        let batch1 = try m.textForward(batch: x0s, pools: prompts.map(\.pool), threads: 1)
        #expect(batch1.embeddings == batch.embeddings)
        #expect(try m.textBackward(batch1, gradEmbeddings: g, threads: 1) == dBatch)
        #expect(throws: ZeroSegError.self) { try m.textBackward(batch, gradEmbeddings: Array(g.dropLast()), threads: 1) }
        #expect(throws: ZeroSegError.self) { try m.textForward(batch: x0s, pools: [0], threads: 1) }
    }

    /// The prefix-shared batch (`textForward(batch:pools:sharingPrefix: true)`: the rows every
    /// prompt has the same, [SOT] ctx_1..ctx_N and here also "traffic", once; each prompt's rest
    /// attends to them) against the plain batch: embeddings within 1e-5 x max |value|, input
    /// gradients of each prompt's own rows and the context gradient (summed over the prompts)
    /// within 1e-5 relative (measured ~1e-7: the same products over other row counts); the same
    /// bits with 1 and 2 threads; the fallbacks (one sequence, no shared row) are the plain batch.
    @Test func prefixSharedEqualsBatched() throws {
        let m = Self.tiny, pd = m.config.projectionDim, w = m.config.text.hiddenSize
        // (names, N, extra shared rows after [SOT] + ctx; nil: all rows up to the pooled one)
        for (names, n, extra) in [(["cat", "traffic light", "sofa", "a"], 3, 0), (["traffic light", "traffic sign"], 2, 1),
                                  (["cat", "cat", "sky"], 4, 0), (["road", "sky"], 0, 0), (["cat", "cat"], 2, nil)] as [([String], Int, Int?)] {
            let prompts = try names.map { try m.coopPrompt(name: $0, contextLength: n) }
            let ctx = randomFloats(n * w, seed: 13).map { $0 * 0.05 }
            let x0s = try prompts.map { try m.textInputs($0, context: ctx) }
            let g = (0..<prompts.count).map { randomFloats(pd, seed: 40 + UInt64($0)) }
            let plain = try m.textForward(batch: x0s, pools: prompts.map(\.pool), threads: 2)
            let dPlain = try m.textInputGradients(plain, gradEmbeddings: g, threads: 2)
            let shared = try m.textForward(batch: x0s, pools: prompts.map(\.pool), sharingPrefix: true, threads: 2)
            let dShared = try m.textInputGradients(shared, gradEmbeddings: g, threads: 2)
            // Shared rows: [SOT] + N context rows, one more for "traffic ..."; "cat", "cat", "sky":
            // "sky" ends the run at 1 + N; "cat", "cat": the run stops at the pooled row.
            #expect(plain.shared == 0 && shared.shared == (extra.map { 1 + n + $0 } ?? prompts[0].pool), "\(names)")
            var report = String(format: "prefixSharedEqualsBatched %@ N=%d shared %d:", names.description, n, shared.shared)
            for k in prompts.indices {
                let e = plain.embeddings[k]
                let de = maxAbsDiff(shared.embeddings[k], e) / e.map { abs($0) }.max()!
                #expect(de <= 1e-5, "\(names) prompt \(k) embedding")
                let own = Array(dPlain.rows[k][(shared.shared * w)...])
                let dr = Self.relativeError(dShared.rows[k], own)
                #expect(dr <= 1e-5, "\(names) prompt \(k) own rows' gradient")
                report += String(format: " e %.1e dx %.1e", de, dr)
            }
            // The shared rows' gradient is the sum over the prompts of theirs.
            var sum = [Float](repeating: 0, count: shared.shared * w)
            for dx in dPlain.rows { for i in sum.indices { sum[i] += dx[i] } }
            let dsum = Self.relativeError(dShared.prefix, sum)
            #expect(dsum <= 1e-5, "\(names) shared rows' gradient")
            let dCtxPlain = try dPlain.context(prompts, width: w), dCtxShared = try dShared.context(prompts, width: w)
            if n > 0 {
                let dc = Self.relativeError(dCtxShared, dCtxPlain)
                #expect(dc <= 1e-5, "\(names) context gradient")
                report += String(format: "; shared rows %.1e, ctx %.1e", dsum, dc)
            }
            print(report)
            let shared1 = try m.textForward(batch: x0s, pools: prompts.map(\.pool), sharingPrefix: true, threads: 1)
            let dShared1 = try m.textInputGradients(shared1, gradEmbeddings: g, threads: 1)
            #expect(shared1.embeddings == shared.embeddings && dShared1.prefix == dShared.prefix && dShared1.rows == dShared.rows)
            #expect(throws: ZeroSegError.self) { try m.textBackward(shared, gradEmbeddings: g, threads: 1) }
        }
        // Fallbacks: one sequence; no shared first row: the plain batch, bit for bit.
        let p = try m.coopPrompt(name: "cat", contextLength: 2), ctx = randomFloats(2 * w, seed: 14)
        let x0 = try m.textInputs(p, context: ctx)
        let one = try m.textForward(batch: [x0], pools: [p.pool], sharingPrefix: true, threads: 1)
        let onePlain = try m.textForward(batch: [x0], pools: [p.pool], threads: 1)
        #expect(one.shared == 0 && one.embeddings == onePlain.embeddings)
        var other = x0
        other[0] += 1
        let x0s = [x0, other], gs = [randomFloats(pd, seed: 1), randomFloats(pd, seed: 2)]
        let none = try m.textForward(batch: x0s, pools: [p.pool, p.pool], sharingPrefix: true, threads: 1)
        let plain = try m.textForward(batch: x0s, pools: [p.pool, p.pool], threads: 1)
        #expect(none.shared == 0 && none.embeddings == plain.embeddings)
        let (dNone, dPlain) = (try m.textBackward(none, gradEmbeddings: gs, threads: 1), try m.textBackward(plain, gradEmbeddings: gs, threads: 1))
        #expect(dNone == dPlain)
        // The head training's CoOp text (`coopText` / `coopContextGradient`) shares by default.
        let names = ["cat", "traffic light", "sofa"], ctx3 = randomFloats(3 * w, seed: 15).map { $0 * 0.05 }
        let dE = randomFloats(names.count * pd, seed: 16)
        let a = try m.coopText(names, context: ctx3, contextLength: 3, record: true, threads: 2)
        let b = try m.coopText(names, context: ctx3, contextLength: 3, record: true, threads: 2, sharingPrefix: false)
        #expect(maxAbsDiff(a.embeddings, b.embeddings) <= 1e-5 * b.embeddings.map { abs($0) }.max()!)
        let dc = Self.relativeError(try m.coopContextGradient(a, dEmbeddings: dE, threads: 2), try m.coopContextGradient(b, dEmbeddings: dE, threads: 2))
        #expect(dc <= 1e-5, "coopContextGradient shared vs plain \(dc)")
    }

    @Test func l2NormalizeBackwardMatchesFiniteDifferences() throws {
        let e = randomFloats(7, seed: 5).map { $0 * 3 }, g = randomFloats(7, seed: 6)
        let d = try l2NormalizeBackward(e, grad: g)
        func f(_ v: [Double]) -> Double {
            let n = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
            return zip(v, g).reduce(0) { $0 + $1.0 / n * Double($1.1) }
        }
        let ed = e.map(Double.init), h = 1e-6
        for i in e.indices {
            var p = ed, q = ed
            p[i] += h; q[i] -= h
            #expect(abs((f(p) - f(q)) / (2 * h) - Double(d[i])) < 1e-5, "coordinate \(i)")
        }
        // the normalised vector's gradient is orthogonal to it
        #expect(abs(zip(e, d).reduce(0) { $0 + $1.0 * $1.1 }) < 1e-5)
    }

    @Test(arguments: [Activation.quickGELU, .gelu, .geluTanh, .geluNew])
    func activationDerivativeMatchesFiniteDifferences(_ act: Activation) {
        let h: Float = 1e-2
        for i in -60...60 {
            let x = Float(i) / 10
            let fd = (activationReference(x + h, act) - activationReference(x - h, act)) / (2 * h)
            #expect(abs(fd - activationDerivative(x, act)) < 1e-4, "\(act) at \(x)")
        }
    }

    /// The Float kernels of the activations' backward (every build this CPU runs, and the
    /// dispatched `activationBackward`) against the Double derivative, over [-12, 12] and some
    /// large values: |fast − exact| <= 2e-6 + 2e-6 |exact| (float32 rounding of libmvec/libm).
    @Test(arguments: [Activation.quickGELU, .gelu, .geluTanh, .geluNew])
    func activationBackwardKernelsMatchDouble(_ act: Activation) {
        let x = (0..<2401).map { Float($0 - 1200) / 100 } + [-80, -30, 25, 60, 1e-6, -1e-6]
        let g = randomFloats(x.count, seed: 41)
        var worst: Float = 0
        for level in KernelLevel.allCases.filter(\.isSupported) {
            var out = g
            x.withUnsafeBufferPointer { xp in out.withUnsafeMutableBufferPointer { level.activationBackward(xp.baseAddress!, $0.baseAddress!, count: x.count, act) } }
            for i in x.indices {
                let exact = g[i] * activationDerivative(x[i], act)
                worst = max(worst, abs(out[i] - exact))
                #expect(abs(out[i] - exact) <= 2e-6 + 2e-6 * abs(exact), "\(act) \(level) at \(x[i]): \(out[i]) vs \(exact)")
            }
        }
        var out = g
        x.withUnsafeBufferPointer { xp in out.withUnsafeMutableBufferPointer { activationBackward(xp.baseAddress!, $0.baseAddress!, count: x.count, act) } }
        #expect(maxAbsDiff(out, x.indices.map { g[$0] * activationDerivative(x[$0], act) }) <= 1e-5)
        print("TextBackwardTests activation backward \(act): worst |fast - double| = \(worst)")
    }

    @Test func coopPromptLayout() throws {
        let m = Self.tiny
        let p0 = try m.coopPrompt(name: "cat", contextLength: 0)
        #expect(p0.tokens == m.tokenize(["cat."])[0] && p0.ctxRange.isEmpty && p0.pool == p0.tokens.count - 1)
        let p16 = try m.coopPrompt(name: "traffic light", contextLength: 16)
        #expect(p16.ctxRange == 1..<17 && p16.tokens.count == 16 + 5)
        let w = m.config.text.hiddenSize, ctx = randomFloats(16 * w, seed: 9)
        let x0 = try m.textInputs(p16, context: ctx)
        let plain = try m.textInputs(try CoOpPrompt(tokens: p16.tokens, ctxRange: 0..<0, pool: p16.pool), context: [])
        // ctx rows are ctx + position embedding; the others are the plain token + position embeddings
        let pe = m.textModel.positionEmbedding
        #expect((1..<17).allSatisfy { r in (0..<w).allSatisfy { x0[r * w + $0] == ctx[(r - 1) * w + $0] + pe[r * w + $0] } })
        #expect(x0[..<w] == plain[..<w] && x0[(17 * w)...] == plain[(17 * w)...])
        #expect(try m.contextGradient(p16, inputGradient: x0) == Array(x0[w..<(17 * w)]))
        // the longest prompt that fits: start, 4 x "X", 70 x "cat", ".", end = 77 tokens
        #expect(try m.coopPrompt(name: String(repeating: "cat ", count: 70), contextLength: 4).tokens.count == 77)
    }

    /// A prompt longer than the context length is an error (not truncated).
    @Test func tooLongPromptIsRefused() throws {
        let m = try CLIPModel(directory: GoldenModelTests.tinyDir)
        #expect(throws: ZeroSegError.self) { try m.coopPrompt(name: String(repeating: "cat ", count: 71), contextLength: 4) }  // 78 tokens
    }
}
