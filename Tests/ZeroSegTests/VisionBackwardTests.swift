import Foundation
import Testing
import ZeroSeg
import ZeroSegTestSupport

/// Deep visual prompts (ZegCLIP's VPT-deep; VisualPrompts.swift) against torch autograd on the tiny
/// synthetic CLIP (`Fixtures/vpt/reference.safetensors`, written by
/// `scripts/reference/make_vpt_fixture.py`; see `Fixtures/vpt/README.md`): N = 3 prompt tokens per
/// layer, 2 crops of 64x64, loss = Σ tokens ⊙ g.
///
/// Tolerances: output tokens max |diff| <= 1e-4 x max(1, max |ref|); gradients ‖g − g_ref‖ /
/// ‖g_ref‖ <= 1e-3 per tensor (float32 autograd itself is <= 5e-7 from float64). The N = 0,
/// finite-difference, determinism and init checks do not use the fixture (except `plain_tokens`).
@Suite struct VisionBackwardTests {
    static let reference: SafetensorsFile = try! SafetensorsFile(
        path: Bundle.module.url(forResource: "reference", withExtension: "safetensors", subdirectory: "Fixtures/vpt")!.path)
    static let tiny = try! CLIPModel(directory: GoldenModelTests.tinyDir)

    static func rel(_ a: [Float], _ b: [Float]) -> Double {
        precondition(a.count == b.count)
        var num = 0.0, den = 0.0
        for (x, y) in zip(a, b) { num += Double(x - y) * Double(x - y); den += Double(y) * Double(y) }
        return (num / max(den, 1e-300)).squareRoot()
    }

    static func fixturePrompts(_ m: CLIPModel) throws -> VisualPrompts {
        let r = reference
        let t = try NamedTensors(VisualPrompts.names.map { NamedTensor($0, r.tensors[$0]!.shape, try r.floats($0)) })
        return try VisualPrompts(parameters: t, model: m)
    }

    /// Σ tokens ⊙ g through the inference path.
    static func loss(_ m: CLIPModel, _ px: [Float], batch b: Int, size s: Int, _ p: VisualPrompts, _ g: [Float]) throws -> Double {
        let (tok, _, _) = try px.withUnsafeBufferPointer {
            try m.promptedTokens(pixels: $0.baseAddress!, batch: b, height: s, width: s, prompts: p, threads: 1)
        }
        return zip(tok.array, g).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
    }

    @Test func tokensAndGradientsMatchTorch() throws {
        let m = Self.tiny, r = Self.reference
        let p = try Self.fixturePrompts(m)
        #expect(p.count == Int(r.metadata["count"]!)!)
        let px = try r.floats("pixels"), s = m.config.vision.imageSize, b = r.tensors["pixels"]!.shape[0]
        let g = try r.floats("upstream"), refTok = try r.floats("tokens")
        let tape = try px.withUnsafeBufferPointer { try m.promptedForward(pixels: $0.baseAddress!, batch: b, height: s, width: s, prompts: p, threads: 2) }
        let maxRef = refTok.map { abs($0) }.max()!
        let dTok = maxAbsDiff(tape.tokens.array, refTok)
        #expect(dTok <= 1e-4 * max(1, maxRef), "tokens max |diff| \(dTok), max |ref| \(maxRef)")
        let inference = try px.withUnsafeBufferPointer { try m.promptedTokens(pixels: $0.baseAddress!, batch: b, height: s, width: s, prompts: p, threads: 2) }
        #expect(maxAbsDiff(inference.tokens.array, tape.tokens.array) <= 1e-6 * max(1, maxRef), "inference path vs recording path")
        let grads = try m.promptedBackward(tape, dTokens: g, threads: 2)
        #expect(grads.names == VisualPrompts.names)
        var report = [String(format: "tokens %.2e (abs, max |ref| %.2f)", dTok, maxRef)]
        for name in VisualPrompts.names {
            let e = Self.rel(grads[name], try r.floats("grad.\(name)"))
            #expect(e <= 1e-3, "\(name): relative gradient error \(e)")
            report.append(String(format: "%@ %.2e", name, e))
        }
        print("VisionBackwardTests vs torch: " + report.joined(separator: "; "))
    }

    /// N = 0: the plain encoder, `tokenEmbeddings(visionHidden)`, recording or not; all gradients zero.
    @Test func noPromptsIsThePlainEncoder() throws {
        let m = Self.tiny, r = Self.reference
        let px = try r.floats("pixels"), s = m.config.vision.imageSize, b = 2, t = (s / 16) * (s / 16) + 1
        let p0 = try VisualPrompts(model: m, count: 0)
        let plain = try px.withUnsafeBufferPointer { pp -> [Float] in
            let (x, _, _) = try m.visionHidden(pixels: pp.baseAddress!, batch: b, height: s, width: s, threads: 2)
            return m.tokenEmbeddings(hidden: x, batch: b, tokens: t, threads: 2).array
        }
        let maxRef = plain.map { abs($0) }.max()!
        let none = try px.withUnsafeBufferPointer { try m.promptedTokens(pixels: $0.baseAddress!, batch: b, height: s, width: s, prompts: nil, threads: 2) }
        #expect(none.tokens.array == plain)
        let zero = try px.withUnsafeBufferPointer { try m.promptedTokens(pixels: $0.baseAddress!, batch: b, height: s, width: s, prompts: p0, threads: 2) }
        #expect(zero.tokens.array == plain)
        let tape = try px.withUnsafeBufferPointer { try m.promptedForward(pixels: $0.baseAddress!, batch: b, height: s, width: s, prompts: p0, threads: 2) }
        #expect(maxAbsDiff(tape.tokens.array, plain) <= 1e-6 * max(1, maxRef), "recording N = 0")
        #expect(maxAbsDiff(plain, try r.floats("plain_tokens")) <= 1e-4 * max(1, maxRef), "N = 0 vs transformers")
        let grads = try m.promptedBackward(tape, dTokens: try r.floats("upstream"), threads: 2)
        #expect(grads.flat.allSatisfy { $0 == 0 } && grads.sameLayout(as: p0.parameters))
    }

    /// Double-sided finite differences (eps 1e-2 on float32 forward passes) of Σ tokens ⊙ g on a few
    /// coordinates of each tensor, seeded prompts with a perturbed norm: |fd − backward| <= 2e-2 x
    /// max |gradient of that tensor|.
    @Test func finiteDifferences() throws {
        let m = Self.tiny, s = m.config.vision.imageSize, b = 2, w = m.config.vision.hiddenSize
        var p = try VisualPrompts(model: m, count: 2, seed: 3)
        p.parameters[VisualPrompts.normWeightName] = randomFloats(w, seed: 8).map { 1 + 0.1 * $0 }
        p.parameters[VisualPrompts.normBiasName] = randomFloats(w, seed: 9).map { 0.02 * $0 }
        let px = randomFloats(b * 3 * s * s, seed: 4)
        let t0 = (s / 16) * (s / 16) + 1, g = randomFloats(b * t0 * m.config.projectionDim, seed: 5)
        let tape = try px.withUnsafeBufferPointer { try m.promptedForward(pixels: $0.baseAddress!, batch: b, height: s, width: s, prompts: p, threads: 2) }
        let grads = try m.promptedBackward(tape, dTokens: g, threads: 2)
        let eps: Float = 1e-2
        var worst = 0.0
        let picks: [(String, [Int])] = [(VisualPrompts.embeddingsName, [0, 7, w + 3, 2 * w + 11, 3 * w + 47]),
                                        (VisualPrompts.projWeightName, [0, 5 * w + 9, w * w - 1]),
                                        (VisualPrompts.projBiasName, [1, 30]), (VisualPrompts.normWeightName, [2, 40]),
                                        (VisualPrompts.normBiasName, [0, 17])]
        for (name, idx) in picks {
            let scale = Double(grads[name].map { abs($0) }.max()!)
            #expect(scale > 0, "\(name): zero gradient")
            for i in idx {
                var plus = p, minus = p
                plus.parameters[name][i] += eps; minus.parameters[name][i] -= eps
                let fd = (try Self.loss(m, px, batch: b, size: s, plus, g) - Self.loss(m, px, batch: b, size: s, minus, g)) / Double(2 * eps)
                let err = abs(fd - Double(grads[name][i])) / scale
                worst = max(worst, err)
                #expect(err <= 2e-2, "\(name)[\(i)]: finite difference \(fd), backward \(grads[name][i])")
            }
        }
        print("VisionBackwardTests finite differences: worst |fd - backward| / max |grad| = \(worst)")
    }

    /// The same bits with 1 and 2 threads (forward tokens and every gradient).
    @Test func deterministicAcrossThreadCounts() throws {
        let m = Self.tiny, r = Self.reference
        let p = try Self.fixturePrompts(m)
        let px = try r.floats("pixels"), s = m.config.vision.imageSize, g = try r.floats("upstream")
        func run(_ threads: Int) throws -> ([Float], NamedTensors) {
            let tape = try px.withUnsafeBufferPointer { try m.promptedForward(pixels: $0.baseAddress!, batch: 2, height: s, width: s, prompts: p, threads: threads) }
            return (tape.tokens.array, try m.promptedBackward(tape, dTokens: g, threads: threads))
        }
        let (a, ga) = try run(1), (b, gb) = try run(2)
        #expect(a == b)
        #expect(ga == gb)
    }

    @Test func initialisationAndChecks() throws {
        let m = Self.tiny, c = m.config.vision, w = c.hiddenSize
        let p = try VisualPrompts(model: m, count: 4, seed: 1)
        #expect(p.parameters.names == VisualPrompts.names)
        #expect(p.parameters.shape(VisualPrompts.embeddingsName) == [c.numHiddenLayers, 4, w])
        #expect(p.parameters.shape(VisualPrompts.projWeightName) == [w, w])
        let v = Float((6.0 / Double(3 * c.patchSize * c.patchSize + w)).squareRoot())
        #expect(p.parameters[VisualPrompts.embeddingsName].allSatisfy { abs($0) <= v })
        #expect(p.parameters[VisualPrompts.normWeightName].allSatisfy { $0 == 1 } && p.parameters[VisualPrompts.normBiasName].allSatisfy { $0 == 0 })
        #expect(try VisualPrompts(model: m, count: 4, seed: 1).parameters == p.parameters)
        #expect(try VisualPrompts(model: m, count: 4, seed: 2).parameters != p.parameters)
        #expect(try VisualPrompts(parameters: p.parameters, model: m).parameters == p.parameters)
        var bad = p.parameters
        bad = NamedTensors(bad.tensors.map { $0.name == VisualPrompts.projBiasName ? NamedTensor($0.name, [w - 1], Array($0.data.dropLast())) : $0 })
        #expect(throws: ZeroSegError.self) { try VisualPrompts(parameters: bad, model: m) }
        #expect(throws: ZeroSegError.self) { try VisualPrompts(model: m, count: -1) }
        let s = c.imageSize, px = randomFloats(3 * s * s, seed: 1)
        let tape = try px.withUnsafeBufferPointer { try m.promptedForward(pixels: $0.baseAddress!, batch: 1, height: s, width: s, prompts: p, threads: 1) }
        #expect(throws: ZeroSegError.self) { try m.promptedBackward(tape, dTokens: [1, 2, 3], threads: 1) }
    }

    /// Full-size check driven by `scripts/reference/vpt_fullsize_check.py` (not in the normal run):
    /// with ZEROSEG_VPT_FULLSIZE=DIR, reads the model folder DIR/model and DIR/inputs.safetensors
    /// (`pixels` [B, 3, H, W], the five prompt tensors, `upstream` [B, 1 + G, P]) and writes
    /// DIR/zeroseg.safetensors (`tokens`, `grad.<name>`); the script compares them with torch.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["ZEROSEG_VPT_FULLSIZE"] != nil))
    func fullSizeDump() throws {
        let dir = URL(fileURLWithPath: ProcessInfo.processInfo.environment["ZEROSEG_VPT_FULLSIZE"]!)
        let m = try CLIPModel(directory: dir.appendingPathComponent("model"))
        let f = try SafetensorsFile(path: dir.appendingPathComponent("inputs.safetensors").path)
        let p = try VisualPrompts(parameters: NamedTensors(VisualPrompts.names.map { NamedTensor($0, f.tensors[$0]!.shape, try f.floats($0)) }), model: m)
        let ps = f.tensors["pixels"]!.shape, px = try f.floats("pixels")
        let tape = try px.withUnsafeBufferPointer {
            try m.promptedForward(pixels: $0.baseAddress!, batch: ps[0], height: ps[2], width: ps[3], prompts: p, threads: defaultThreads)
        }
        let grads = try m.promptedBackward(tape, dTokens: try f.floats("upstream"), threads: defaultThreads)
        let t0 = tape.gh * tape.gw + 1
        try SafetensorsFile.write([("tokens", [ps[0], t0, m.config.projectionDim], tape.tokens.array)] + grads.tensors.map { ("grad.\($0.name)", $0.shape, $0.data) },
                                  metadata: ["zeroseg": "VisionBackwardTests.fullSizeDump"], to: dir.appendingPathComponent("zeroseg.safetensors"))
    }
}
