import Foundation
import Testing
import ZeroSeg

/// Prompt tuning (Prompts.swift) against torch autograd (`scripts/reference/tune_reference.py`) on the
/// tiny synthetic CLIP: the loss and the gradients of the context vectors and head parameters for
/// one batch (per tensor ‖g − g_ref‖ / ‖g_ref‖ <= 1e-3), and the losses of 3 AdamW steps with a
/// cosine schedule (relative 1e-3). Regenerate `Fixtures/tune/reference.safetensors` with that script.
@Suite struct TuneGoldenTests {
    static let ref: SafetensorsFile = try! SafetensorsFile(path: Bundle.module.url(forResource: "reference", withExtension: "safetensors", subdirectory: "Fixtures/tune")!.path)

    static func setup() throws -> (CLIPModel, LearnedPrompts, [String], [TuneExample]) {
        let model = SegmentationGoldenTests.tinyModel
        let r = ref
        let names = try JSONDecoder().decode([String].self, from: Data(r.metadata["names"]!.utf8))
        let nCtx = Int(r.metadata["n_ctx"]!)!
        let w = model.config.text.hiddenSize, d = model.config.projectionDim
        var p = LearnedPrompts(context: try r.floats("ctx"), contextLength: nCtx, textWidth: w, dim: d, logScale: try r.floats("sigma")[0])
        p.adapter = try r.floats("A"); p.adapterBias = try r.floats("a")
        let f = try r.floats("features"), fs = r.tensors["features"]!.shape  // [B, gh, gw, P]
        let t = try r.ints("targets"), ts = r.tensors["targets"]!.shape      // [B, H, W]
        let g = fs[1] * fs[2] * fs[3], hw = ts[1] * ts[2]
        let ex = try (0..<fs[0]).map { b in
            TuneExample(features: try FeatureGrid(height: fs[1], width: fs[2], dim: fs[3], data: Array(f[(b * g)..<((b + 1) * g)])),
                        target: t[(b * hw)..<((b + 1) * hw)].map { Int32($0) }, width: ts[2], height: ts[1])
        }
        return (model, p, names, ex)
    }

    static func rel(_ a: [Float], _ b: [Float]) -> Double {
        var num = 0.0, den = 0.0
        for (x, y) in zip(a, b) { num += Double(x - y) * Double(x - y); den += Double(y) * Double(y) }
        return (num / max(den, 1e-30)).squareRoot()
    }

    @Test func promptIdsMatchOpenCLIP() throws {
        let (model, p, names, _) = try Self.setup()
        let ids = try JSONDecoder().decode([[Int32]].self, from: Data(Self.ref.metadata["ids"]!.utf8))
        for (n, want) in zip(names, ids) { #expect(try model.coopPrompt(name: n, contextLength: p.contextLength).tokens == want, "\(n)") }
    }

    @Test func lossAndGradientsMatchAutograd() throws {
        let (model, p, names, ex) = try Self.setup()
        let g = try tuneLossAndGradients(model: model, prompts: p, seenNames: names, batch: ex)
        let loss = try Self.ref.floats("loss")[0]
        #expect(abs(g.loss - loss) <= 1e-4 * abs(loss), "loss \(g.loss) vs \(loss)")
        let forwardOnly = try tuneLossAndGradients(model: model, prompts: p, seenNames: names, batch: ex, gradients: false)
        #expect(forwardOnly.loss == g.loss && forwardOnly.pixels == g.pixels && forwardOnly.context.allSatisfy { $0 == 0 })
        let checks: [(String, [Float], String)] = [("ctx", g.context, "grad.ctx"), ("A", g.adapter, "grad.A"), ("a", g.adapterBias, "grad.a"),
                                                   ("sigma", [g.logScale], "grad.sigma")]
        for (name, mine, key) in checks {
            let r = Self.rel(mine, try Self.ref.floats(key))
            #expect(r <= 1e-3, "\(name): relative gradient error \(r)")
        }
    }

    /// The text tower batched (all prompts as ragged rows) against one prompt at a time (the
    /// structure before batching): loss and gradients within 1e-5 relative of each other, both
    /// within 1e-3 of torch.
    @Test func batchedTextEqualsOneAtATime() throws {
        let (model, p, names, ex) = try Self.setup()
        let a = try tuneLossAndGradients(model: model, prompts: p, seenNames: names, batch: ex, gradients: true, threads: 2, textOneAtATime: false)
        let b = try tuneLossAndGradients(model: model, prompts: p, seenNames: names, batch: ex, gradients: true, threads: 2, textOneAtATime: true)
        #expect(abs(a.loss - b.loss) <= 1e-5 * abs(b.loss))
        var report: [String] = []
        for (name, x, y, key) in [("ctx", a.context, b.context, "grad.ctx"), ("A", a.adapter, b.adapter, "grad.A")] {
            let d = Self.rel(x, y), ra = Self.rel(x, try Self.ref.floats(key)), rb = Self.rel(y, try Self.ref.floats(key))
            #expect(d <= 1e-5, "\(name): batched vs one at a time \(d)")
            report.append(String(format: "%@: batched vs one at a time %.2e, vs torch %.2e (batched) %.2e (one at a time)", name, d, ra, rb))
        }
        print("TuneGoldenTests " + report.joined(separator: "; "))
    }

    /// The text tower with the shared [SOT] ctx rows once (the default pass) against the plain
    /// batch: loss and gradients within 1e-5 relative; the same bits with 1 and 2 threads.
    @Test func prefixSharedTextEqualsBatched() throws {
        let (model, p, names, ex) = try Self.setup()
        let a = try tuneLossAndGradients(model: model, prompts: p, seenNames: names, batch: ex, gradients: true, threads: 2, text: .prefixShared)
        let b = try tuneLossAndGradients(model: model, prompts: p, seenNames: names, batch: ex, gradients: true, threads: 2, text: .batched)
        let a1 = try tuneLossAndGradients(model: model, prompts: p, seenNames: names, batch: ex, gradients: true, threads: 1, text: .prefixShared)
        #expect(abs(a.loss - b.loss) <= 1e-5 * abs(b.loss))
        let dc = Self.rel(a.context, b.context), dA = Self.rel(a.adapter, b.adapter)
        #expect(dc <= 1e-5 && dA <= 1e-5)
        #expect(a1.loss == a.loss && a1.context == a.context && a1.adapter == a.adapter)
        print(String(format: "TuneGoldenTests prefix-shared vs batched: loss %.1e, ctx %.2e, A %.2e", abs(a.loss - b.loss) / abs(b.loss), dc, dA))
    }

    @Test func adamWStepsMatchTorch() throws {
        let (model, p0, names, ex) = try Self.setup()
        let steps = Int(Self.ref.metadata["steps"]!)!
        var p = p0
        var opt = PromptOptimizer(kind: .adamw, lr: 0.01, weightDecay: 0.01, totalSteps: steps, prompts: p)
        var losses: [Float] = []
        for _ in 0..<steps {
            let g = try tuneLossAndGradients(model: model, prompts: p, seenNames: names, batch: ex)
            losses.append(g.loss)
            opt.apply(g, to: &p)
        }
        losses.append(try tuneLossAndGradients(model: model, prompts: p, seenNames: names, batch: ex).loss)
        let want = try Self.ref.floats("step_losses")
        for (a, b) in zip(losses, want) { #expect(abs(a - b) <= 1e-3 * abs(b), "losses \(losses) vs \(want)") }
        #expect(Self.rel(p.context, try Self.ref.floats("final.ctx")) <= 1e-3)
        #expect(Self.rel(p.adapter, try Self.ref.floats("final.A")) <= 1e-3)
    }

    /// The bilinear backward is the transpose of the forward: <up(x), y> = <x, upᵀ(y)>.
    @Test func bilinearBackwardIsTranspose() {
        let (c, h, w, oh, ow) = (2, 3, 5, 7, 11)
        let x = randomFloats(c * h * w, seed: 21), y = randomFloats(c * oh * ow, seed: 22)
        var up = [Float](repeating: 0, count: c * oh * ow)
        x.withUnsafeBufferPointer { xp in up.withUnsafeMutableBufferPointer { resizeBilinearCHW(xp.baseAddress!, channels: c, height: h, width: w, $0.baseAddress!, outHeight: oh, outWidth: ow) } }
        var back = [Float](repeating: 0, count: c * h * w)
        resizeBilinearCHWBackward(y, channels: c, height: h, width: w, &back, outHeight: oh, outWidth: ow)
        let lhs = zip(up, y).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }, rhs = zip(x, back).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        #expect(abs(lhs - rhs) <= 1e-5 * max(1, abs(lhs)))
    }

    /// On a small synthetic task (each seen class's region carries its own random feature
    /// direction, unrelated to the text embeddings) tuning lowers the loss and raises seen mIoU.
    @Test func tuningLearnsASyntheticTask() throws {
        let model = SegmentationGoldenTests.tinyModel
        let d = model.config.projectionDim
        let names = ["cat", "tree", "sofa"]
        let dirs = (0..<3).map { Synth.values(name: "task-dir-\($0)", seed: 1, count: d, amplitude: 1) }
        var examples: [TuneExample] = []
        for i in 0..<6 {
            let (gh, gw, h, w) = (4, 4, 16, 16)
            var feats = [Float](), target = [Int32](repeating: 0, count: h * w)
            let noise = Synth.values(name: "task-noise", seed: UInt64(i), count: gh * gw * d, amplitude: 0.3)
            var cellClass = [Int](repeating: 0, count: gh * gw)
            for cell in 0..<(gh * gw) { cellClass[cell] = (cell / gw + cell % gw + i) % 3 }
            for cell in 0..<(gh * gw) { for j in 0..<d { feats.append(dirs[cellClass[cell]][j] + noise[cell * d + j]) } }
            for y in 0..<h { for x in 0..<w { target[y * w + x] = Int32(cellClass[(y / 4) * gw + x / 4]) } }
            examples.append(TuneExample(features: try FeatureGrid(height: gh, width: gw, dim: d, data: feats), target: target, width: w, height: h))
        }
        let c0 = try model.initialContext(count: 4, phrase: nil, seed: 0)
        let p = LearnedPrompts(context: c0.values, contextLength: 4, textWidth: model.config.text.hiddenSize, dim: d)
        func miou(_ p: LearnedPrompts) throws -> Double {
            var m = try ConfusionMatrix(numClasses: 3)
            for ex in examples {
                try m.add(prediction: try tunePredict(model: model, prompts: p, names: names, example: ex), label: ex.target.map { UInt8($0) })
            }
            return m.metrics.mIoU ?? 0
        }
        var s = TuneSettings()
        s.epochs = 15; s.lr = 0.01; s.batch = 3
        var tuner = try PromptTuner(model: model, names: names, examples: examples, prompts: p, settings: s)
        let before = try tuneLossAndGradients(model: model, prompts: p, seenNames: names, batch: examples).loss
        let m0 = try miou(p)
        try tuner.train(progress: { _, _, _, _ in }, endOfEpoch: { _ in })
        let after = try tuneLossAndGradients(model: model, prompts: tuner.prompts, seenNames: names, batch: examples).loss
        let m1 = try miou(tuner.prompts)
        #expect(after < 0.7 * before, "loss \(before) -> \(after)")
        #expect(m1 > m0 + 0.2, "mIoU \(m0) -> \(m1)")
        // Deterministic: the same run again gives the same prompts.
        var again = try PromptTuner(model: model, names: names, examples: examples, prompts: p, settings: s)
        try again.train(progress: { _, _, _, _ in }, endOfEpoch: { _ in })
        #expect(again.prompts == tuner.prompts)
    }
}
