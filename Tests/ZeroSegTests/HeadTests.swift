import Foundation
import Testing
import ZeroSeg

/// The image-conditioned heads (ZegCLIPHead.swift, ContextDecoderHead.swift) and the segmentation
/// losses (SegLoss.swift) against float64 torch autograd (`scripts/reference/make_heads_fixture.py`
/// over `heads_reference.py`): P = 24, C = 3, B = 2, grid 4x5, labels 16x20 with ignored pixels and
/// a class absent from one image; ZegCLIP D = 16, DenseCLIP Dc = 16, 4 heads, 2 layers each.
/// Inputs and parameters are drawn on both sides from synth.py's generator (`Synth.values`).
/// Tolerances: scores max |s − s_ref| <= 1e-4 · max(1, max |s_ref|); losses relative 1e-5 (on the
/// reference scores) / 1e-4 (end to end); gradients per tensor ‖g − g_ref‖ / ‖g_ref‖ <= 1e-3 (a
/// tensor whose reference gradient is below 1e-6 of the whole gradient's norm, i.e. mathematically
/// zero, must be too); 3 AdamW steps: losses relative 1e-4, final parameters per tensor
/// ‖p − p_ref‖ / ‖p_ref‖ <= 1e-3 (Adam turns the noise of a zero gradient into steps of up to lr:
/// ZegCLIP's first-layer key bias ends 3e-4 off; torch's AdamW skips the parameters that get no
/// gradient (the last ZegCLIP layer's FFN, v, proj) while TensorOptimizer applies their weight
/// decay: 2.7e-5; every other tensor <= 1e-7); a directional finite
/// difference per head and loss, relative 1e-2. Regenerate `Fixtures/heads/reference.safetensors` with that script.
@Suite struct HeadTests {
    static let ref: SafetensorsFile = try! SafetensorsFile(path: Bundle.module.url(forResource: "reference", withExtension: "safetensors", subdirectory: "Fixtures/heads")!.path)
    static let (p, c, b, gh, gw, h, w) = (24, 3, 2, 4, 5, 16, 20)

    static func synth(_ name: String, _ count: Int, amplitude: Double, offset: Double = 0) -> [Float] {
        Synth.values(name: "heads-fixture:" + name, seed: 5, count: count, amplitude: amplitude, offset: offset)
    }

    /// The fixture's parameter values for a tensor (the rule of make_heads_fixture.py).
    static func fixtureParameter(_ t: NamedTensor) -> [Float] {
        let n = t.data.count
        if t.name == "logit_scale" { return [2] }
        if t.name == "gamma" { return synth(t.name, n, amplitude: 0.5) }
        if t.name.hasSuffix(".weight") && t.shape.count == 2 { return synth(t.name, n, amplitude: 1 / Double(t.shape[1]).squareRoot()) }
        if t.name.hasSuffix(".weight") { return synth(t.name, n, amplitude: 0.2, offset: 1) }
        precondition(t.name.hasSuffix(".bias"), t.name)
        return synth(t.name, n, amplitude: 0.1)
    }

    static func withFixtureParameters<Head: ImageConditionedHead>(_ head: Head) -> Head {
        var hd = head
        for t in head.parameters.tensors { hd.parameters[t.name] = fixtureParameter(t) }
        return hd
    }

    static func zeg() throws -> ZegCLIPHead { withFixtureParameters(try ZegCLIPHead(dim: p, width: 16, heads: 4, layers: 2)) }
    static func dense() throws -> ContextDecoderHead {
        withFixtureParameters(try ContextDecoderHead(dim: p, width: 16, heads: 4, layers: 2, logScale: 2))
    }
    static func head(_ key: String) throws -> any ImageConditionedHead { key == "zeg" ? try zeg() : try dense() }

    static let text = synth("text", c * p, amplitude: 1), global = synth("global", b * p, amplitude: 1)
    static let patches = synth("patches", b * gh * gw * p, amplitude: 1)
    static var targets: [[Int32]] {
        let t = try! ref.ints("targets")
        return (0..<b).map { i in t[(i * h * w)..<((i + 1) * h * w)].map { Int32($0) } }
    }

    static func rel(_ a: [Float], _ b: [Float]) -> Double {
        var num = 0.0, den = 0.0
        for (x, y) in zip(a, b) { num += Double(x - y) * Double(x - y); den += Double(y) * Double(y) }
        return (num / max(den, 1e-30)).squareRoot()
    }
    static func norm(_ a: [Float]) -> Double { a.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot() }

    static func forward(_ hd: any ImageConditionedHead, text: [Float] = text, global: [Float] = global, patches: [Float] = patches,
                        record: Bool = true) throws -> ([Float], (any HeadTape)?) {
        try hd.forward(text: text, classes: c, global: global, patches: patches, batch: b, gridHeight: gh, gridWidth: gw,
                       threads: 2, record: record)
    }

    static func loss(_ kind: SegLossKind, _ s: [Float], gradients: Bool = true) throws -> SegLossResult {
        try segLoss(kind, scores: s, batch: b, classes: c, gridHeight: gh, gridWidth: gw, targets: targets, height: h, width: w,
                    gradients: gradients)
    }

    @Test(arguments: ["zeg", "dense"])
    func parameterNamesAreTorchStateDictNames(_ key: String) throws {
        let names = try JSONDecoder().decode([String: [String]].self, from: Data(Self.ref.metadata["names"]!.utf8))[key]!
        let hd = try Self.head(key)
        #expect(Set(hd.parameters.names) == Set(names))
        #expect(hd.parameters.names.count == names.count)
        for t in hd.parameters.tensors { #expect(Self.ref.tensors["\(key).softmax.grad.\(t.name)"]?.shape == t.shape, "\(t.name)") }
        for n in hd.parameters.names {
            let linearWeight = n.hasSuffix(".weight") && hd.parameters.shape(n)!.count == 2
            #expect(hd.decays(n) == linearWeight, "\(n)")
        }
        #expect(hd.kind == (key == "zeg" ? "zegclip" : "denseclip"))
    }

    @Test(arguments: ["zeg", "dense"])
    func forwardScoresMatchTorch(_ key: String) throws {
        let (s, tape) = try Self.forward(try Self.head(key))
        let want = try Self.ref.floats("\(key).scores")
        let scale = max(1, want.map { abs($0) }.max()!)
        let err = zip(s, want).map { abs($0 - $1) }.max()!
        #expect(s.count == want.count && err <= 1e-4 * scale, "\(key): max score error \(err) (scale \(scale))")
        #expect(tape != nil)
        let (again, none) = try Self.forward(try Self.head(key), record: false)
        #expect(again == s && none == nil)
    }

    @Test(arguments: ["zeg", "dense"], SegLossKind.allCases)
    func lossMatchesTorch(_ key: String, _ kind: SegLossKind) throws {
        // on the reference scores: the loss alone
        let r = try Self.loss(kind, try Self.ref.floats("\(key).scores"))
        let want = try Self.ref.floats("\(key).\(kind.rawValue).loss")[0]
        #expect(abs(r.loss - want) <= 1e-5 * abs(want), "\(key) \(kind): loss \(r.loss) vs \(want)")
        let dr = Self.rel(r.dScores, try Self.ref.floats("\(key).\(kind.rawValue).dscores"))
        #expect(dr <= 1e-4, "\(key) \(kind): dL/dscores relative error \(dr)")
        #expect(r.pixels == Self.targets.joined().filter { $0 >= 0 }.count)
        let fwd = try Self.loss(kind, try Self.ref.floats("\(key).scores"), gradients: false)
        #expect(fwd.loss == r.loss && fwd.dScores.isEmpty)
    }

    @Test(arguments: ["zeg", "dense"], SegLossKind.allCases)
    func gradientsMatchAutograd(_ key: String, _ kind: SegLossKind) throws {
        let hd = try Self.head(key)
        let (s, tape) = try Self.forward(hd)
        let l = try Self.loss(kind, s)
        let want = try Self.ref.floats("\(key).\(kind.rawValue).loss")[0]
        #expect(abs(l.loss - want) <= 1e-4 * abs(want), "\(key) \(kind): loss \(l.loss) vs \(want)")
        let g = try hd.backward(tape!, dScores: l.dScores, threads: 2)
        #expect(g.parameters.sameLayout(as: hd.parameters))
        let refs = try g.parameters.names.map { try Self.ref.floats("\(key).\(kind.rawValue).grad.\($0)") }
        let total = Self.norm(refs.flatMap { $0 })
        for (t, r) in zip(g.parameters.tensors, refs) {
            // Mathematically zero gradients (the last ZegCLIP layer's FFN, norms, v and proj; a key
            // bias under the attention softmax; a shift of every class under the class softmax)
            // are rounding noise in the reference: compare them to the whole gradient.
            if Self.norm(r) <= 1e-6 * total {
                #expect(Self.norm(t.data) <= 1e-6 * total, "\(key) \(kind) \(t.name): reference gradient is zero, got norm \(Self.norm(t.data))")
                continue
            }
            let e = Self.rel(t.data, r)
            #expect(e <= 1e-3, "\(key) \(kind) \(t.name): relative gradient error \(e)")
        }
        for (name, mine) in [("text", g.text), ("global", g.global), ("patches", g.patches)] {
            let e = Self.rel(mine, try Self.ref.floats("\(key).\(kind.rawValue).grad_input.\(name)"))
            #expect(e <= 1e-3, "\(key) \(kind) input \(name): relative gradient error \(e)")
        }
    }

    @Test(arguments: ["zeg", "dense"])
    func adamWStepsMatchTorch(_ key: String) throws {
        var hd = try Self.head(key)
        let kind: SegLossKind = key == "zeg" ? .sigmoid : .softmax
        var opt = TensorOptimizer(kind: .adamw, lr: 1e-3, weightDecay: 0.01, totalSteps: 6, parameters: hd.parameters, decays: hd.decays)
        var losses: [Float] = []
        for _ in 0..<3 {
            let (s, tape) = try Self.forward(hd)
            let l = try Self.loss(kind, s)
            losses.append(l.loss)
            let g = try hd.backward(tape!, dScores: l.dScores, threads: 2)
            opt.apply(g.parameters, to: &hd.parameters)
        }
        losses.append(try Self.loss(kind, try Self.forward(hd, record: false).0, gradients: false).loss)
        let want = try Self.ref.floats("\(key).adamw.losses")
        for (a, b) in zip(losses, want) { #expect(abs(a - b) <= 1e-4 * abs(b), "\(key): losses \(losses) vs \(want)") }
        for t in hd.parameters.tensors {
            let e = Self.rel(t.data, try Self.ref.floats("\(key).adamw.final.\(t.name)"))
            #expect(e <= 1e-3, "\(key) \(t.name): final parameters relative error \(e)")
        }
    }

    /// Central differences of the loss along one random direction over every parameter and input
    /// (‖δ‖ = 1, step 1e-2) against ⟨∇L, δ⟩ from backward: relative 1e-2.
    @Test(arguments: ["zeg", "dense"], SegLossKind.allCases)
    func directionalDerivativeMatchesFiniteDifferences(_ key: String, _ kind: SegLossKind) throws {
        let hd = try Self.head(key)
        let (s, tape) = try Self.forward(hd)
        let g = try hd.backward(tape!, dScores: try Self.loss(kind, s).dScores, threads: 1)
        let n = hd.parameters.count, nt = Self.text.count, ng = Self.global.count, np = Self.patches.count
        var dir = Synth.values(name: "heads-fd-direction-\(key)", seed: 1, count: n + nt + ng + np, amplitude: 1)
        let dn = Float(Self.norm(dir))
        dir = dir.map { $0 / dn }
        let grad = g.parameters.flat + g.text + g.global + g.patches
        let analytic = zip(grad, dir).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        func lossAt(_ eps: Float) throws -> Double {
            var moved = hd
            var flat = hd.parameters.flat
            for i in 0..<n { flat[i] += eps * dir[i] }
            moved.parameters.setFlat(flat)
            let t = (0..<nt).map { Self.text[$0] + eps * dir[n + $0] }
            let gl = (0..<ng).map { Self.global[$0] + eps * dir[n + nt + $0] }
            let pa = (0..<np).map { Self.patches[$0] + eps * dir[n + nt + ng + $0] }
            return Double(try Self.loss(kind, try Self.forward(moved, text: t, global: gl, patches: pa, record: false).0, gradients: false).loss)
        }
        let step: Float = 1e-2
        let fd = (try lossAt(step) - lossAt(-step)) / (2 * Double(step))
        #expect(abs(fd - analytic) <= 1e-2 * max(abs(analytic), 1e-3), "\(key) \(kind): finite difference \(fd) vs analytic \(analytic)")
    }

    @Test func defaultInitialisation() throws {
        let z = try ZegCLIPHead(dim: 8, width: 16, heads: 4, layers: 3, seed: 3)
        let d = try ContextDecoderHead(dim: 8, width: 16, heads: 4, layers: 3, logScale: 1.5, seed: 3)
        for hd in [z as any ImageConditionedHead, d] {
            for t in hd.parameters.tensors {
                if hd.decays(t.name) {
                    let std = (t.data.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(t.data.count)).squareRoot()
                    #expect(abs(std - 0.02) <= 0.004 && t.data.allSatisfy { Double(abs($0)) <= 0.02 * 3.0.squareRoot() + 1e-7 }, "\(t.name): std \(std)")
                } else if t.name == "gamma" {
                    #expect(t.data.allSatisfy { $0 == 1e-4 })
                } else if t.name == "logit_scale" {
                    #expect(t.data == [1.5] && t.shape == [])
                } else if t.name.hasSuffix(".weight") {
                    #expect(t.data.allSatisfy { $0 == 1 }, "\(t.name)")
                } else {
                    #expect(t.data.allSatisfy { $0 == 0 }, "\(t.name)")
                }
            }
        }
        #expect(z.parameters.names.filter { $0.hasSuffix("linear1.weight") }.count == 3)
        #expect(try ZegCLIPHead(dim: 8, width: 16, heads: 4, layers: 3, seed: 3).parameters == z.parameters)
        #expect(try ZegCLIPHead(dim: 8, width: 16, heads: 4, layers: 3, seed: 4).parameters != z.parameters)
        #expect(try ContextDecoderHead(dim: 8).width == 256)
        #expect(try ZegCLIPHead(dim: 8).width == 512)
    }

    @Test func invalidSizesAndTapesThrow() throws {
        #expect(throws: ZeroSegError.self) { try ZegCLIPHead(dim: 8, width: 10, heads: 4) }
        #expect(throws: ZeroSegError.self) { try ContextDecoderHead(dim: 8, width: 16, heads: 4, layers: 0) }
        let z = try Self.zeg(), d = try Self.dense()
        #expect(throws: ZeroSegError.self) {
            try z.forward(text: Self.text, classes: Self.c + 1, global: Self.global, patches: Self.patches, batch: Self.b,
                          gridHeight: Self.gh, gridWidth: Self.gw, threads: 1, record: true)
        }
        let (s, zt) = try Self.forward(z)
        #expect(throws: ZeroSegError.self) { try d.backward(zt!, dScores: s, threads: 1) }
        #expect(throws: ZeroSegError.self) { try z.backward(zt!, dScores: Array(s.dropLast()), threads: 1) }
        #expect(throws: ZeroSegError.self) {
            try segLoss(.softmax, scores: s, batch: Self.b, classes: Self.c, gridHeight: Self.gh, gridWidth: Self.gw,
                        targets: [Self.targets[0]], height: Self.h, width: Self.w)
        }
        // no counted pixel: loss 0, zero gradients
        let none = try segLoss(.sigmoid, scores: s, batch: Self.b, classes: Self.c, gridHeight: Self.gh, gridWidth: Self.gw,
                               targets: [[Int32]](repeating: [Int32](repeating: -1, count: Self.h * Self.w), count: Self.b),
                               height: Self.h, width: Self.w)
        #expect(none.loss == 0 && none.pixels == 0 && none.dScores.allSatisfy { $0 == 0 })
    }
}
