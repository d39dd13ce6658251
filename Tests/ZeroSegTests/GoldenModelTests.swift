import Foundation
import Testing
import ZeroSeg

/// The tiny synthetic CLIP (written by `Synth`, identical to scripts/reference/synth.py) against
/// transformers' activations on the same weights, stage by stage.
/// Regenerate the reference with `scripts/reference/make_tiny_fixture.sh` (see Fixtures/tiny/README.md).
@Suite struct GoldenModelTests {
    static let tinyDir: URL = {
        let d = temporaryDirectory("zeroseg-tiny")
        try! Synth.write(arch: .tiny, seed: 0, to: d)
        return d
    }()

    static func stages() throws -> SafetensorsFile {
        try SafetensorsFile(path: Bundle.module.url(forResource: "stages", withExtension: "safetensors", subdirectory: "Fixtures/tiny")!.path)
    }

    @Test func everyStageMatchesTransformers() throws {
        let model = try CLIPModel(directory: Self.tinyDir)
        let ref = try Self.stages()
        let rows = try StageCheck.run(model: model, stages: ref, threads: 2)
        let compared = Set(rows.map(\.name))
        let expected = Set(ref.tensors.keys).subtracting(["text.input_ids", "text.lengths", "vision.pixel_values", "interp.pixel_values"])
        #expect(compared == expected, "stages not compared: \(expected.subtracting(compared).sorted())")
        for r in rows {
            // float32 through two layers: measured errors are <= 8e-7 of max |ref|; the bound is 2e-5.
            #expect(r.maxAbs <= 2e-5 * max(1, r.maxRef),
                    "stage \(r.name): max abs error \(r.maxAbs) (max |ref| \(r.maxRef)); regenerate with scripts/reference/make_tiny_fixture.sh if the reference changed")
        }
    }

    @Test func tokenizerMatchesFixtureIds() throws {
        let model = try CLIPModel(directory: Self.tinyDir)
        let ref = try Self.stages()
        let texts = try JSONSerialization.jsonObject(with: Data(ref.metadata["texts"]!.utf8)) as! [String]
        let ids = try ref.ints("text.input_ids"), lengths = try ref.ints("text.lengths")
        for (i, t) in texts.enumerated() {
            let expected = ids[(i * 77)..<(i * 77 + lengths[i])].map { Int32($0) }
            #expect(model.tokenize([t])[0] == expected, "text \(i)")
        }
    }

    @Test func embeddingsAreNormalisedAndBatchingIsExact() throws {
        let model = try CLIPModel(directory: Self.tinyDir)
        let texts = ["a photo of a cat.", "a photo of a dog.", "sky", "a photo of a cat."]
        let batched = try model.encodeText(texts, threads: 1)
        for (i, t) in texts.enumerated() {
            let single = try model.encodeText([t], threads: 1)[0]
            #expect(maxAbsDiff(single, batched[i]) < 1e-6)
        }
        for e in batched { #expect(abs(e.reduce(0) { $0 + $1 * $1 } - 1) < 1e-5) }
        #expect(model.isSynthetic)
    }

    /// Images encoded several per encoder pass equal one at a time (5 images: batches of 2, 2, 1 and
    /// of 8), for 1 and 2 threads; a batch below 1 is an error.
    @Test(arguments: [1, 2]) func imageBatchingIsExact(threads: Int) throws {
        let model = try CLIPModel(directory: Self.tinyDir)
        let images = try (0..<5).map { i in
            try RGBImage(width: 40 + 9 * i, height: 50 - 3 * i,
                         pixels: randomFloats((40 + 9 * i) * (50 - 3 * i) * 3, seed: UInt64(40 + i)).map { abs($0) })
        }
        let single = try images.map { try model.encodeImages([$0], threads: threads)[0] }
        for b in [2, 8] {
            let batched = try model.encodeImages(images, batch: b, threads: threads)
            #expect(batched.count == images.count)
            for i in images.indices { #expect(maxAbsDiff(single[i], batched[i]) < 1e-6, "batch \(b), image \(i)") }
        }
        #expect(throws: ZeroSegError.self) { try model.encodeImages(images, batch: 0, threads: threads) }
    }

    /// The fast text path (shared template prefixes, ragged rows, last layer on the end token only)
    /// equals the reference path (every sequence whole) on templates x names.
    @Test func sharedPrefixTextPathEqualsReference() throws {
        let model = try CLIPModel(directory: Self.tinyDir)
        let names = ["cat", "grass", "traffic light", "sign symbol", "a", "pavement"]
        let prompts = Templates.imagenet80.prefix(20).flatMap { t in names.map { Templates.fill(t, $0) } } + ["x", ""]
        let ids = model.tokenize(prompts)
        let fast = try model.encodeTokens(ids, normalize: false)
        let ref = try model.encodeTokens(ids, normalize: false, record: { _, _, _ in })
        for (a, b) in zip(fast, ref) { #expect(maxAbsDiff(a, b) < 1e-5) }
    }

    /// The image path without a recorder (last layer for the class token only) gives transformers'
    /// image embeddings, for every batch size and thread count.
    @Test func classTokenOnlyLastLayerMatchesTransformers() throws {
        let model = try CLIPModel(directory: Self.tinyDir)
        let ref = try Self.stages()
        let px = try ref.floats("vision.pixel_values"), shape = ref.tensors["vision.pixel_values"]!.shape
        let embeds = try ref.floats("vision.embeds"), p = model.config.projectionDim
        let maxRef = Double(embeds.map { abs($0) }.max()!)
        for threads in [1, 2] {
            let e = try px.withUnsafeBufferPointer {
                try model.encodePixels($0.baseAddress!, batch: shape[0], height: shape[2], width: shape[3], normalize: false, threads: threads)
            }
            for b in 0..<shape[0] {
                let err = Double(maxAbsDiff(e[b], Array(embeds[(b * p)..<((b + 1) * p)])))
                #expect(err <= 2e-5 * max(1, maxRef), "image \(b), \(threads) threads: max abs error \(err)")
            }
        }
    }

    /// Strict loading: a missing, an extra, or a mis-shaped tensor is named in the error.
    @Test func strictLoading() throws {
        let cfg = SyntheticArch.tiny.config
        var tensors = Synth.tensors(config: cfg, seed: 0)
        func attempt(_ t: [(name: String, shape: [Int], data: [Float])]) -> String {
            let d = temporaryDirectory()
            for f in ["config.json", "vocab.json", "merges.txt", "preprocessor_config.json"] {
                try! FileManager.default.copyItem(at: Self.tinyDir.appendingPathComponent(f), to: d.appendingPathComponent(f))
            }
            try! SafetensorsFile.write(t, to: d.appendingPathComponent("model.safetensors"))
            do { _ = try CLIPModel(directory: d); return "" } catch { return "\(error)" }
        }
        #expect(attempt(tensors) == "")
        let removed = tensors.remove(at: 5)
        #expect(attempt(tensors).contains("missing tensor \(removed.name)"))
        tensors.insert(removed, at: 5)
        #expect(attempt(tensors + [("extra.weight", [1], [0])]).contains("unexpected tensor(s): extra.weight"))
        var bad = tensors
        bad[0] = (bad[0].name, [2, bad[0].data.count / 2], bad[0].data)
        #expect(attempt(bad).contains("has shape"))
    }

    @Test func badModelDirectories() throws {
        func err(_ d: URL) -> String { do { _ = try CLIPModel(directory: d); return "" } catch { return "\(error)" } }
        #expect(err(URL(fileURLWithPath: "/nonexistent")).contains("does not exist"))
        let d = temporaryDirectory()
        #expect(err(d).contains("no config.json"))
        try Data("{\"text_config\": 3}".utf8).write(to: d.appendingPathComponent("config.json"))
        #expect(err(d).contains("has no weights (looked for model.safetensors, pytorch_model.bin)"))
        try FileManager.default.copyItem(at: Self.tinyDir.appendingPathComponent("model.safetensors"), to: d.appendingPathComponent("model.safetensors"))
        #expect(err(d).contains("text_config is not an object"))
        try FileManager.default.removeItem(at: d.appendingPathComponent("config.json"))
        try FileManager.default.copyItem(at: Self.tinyDir.appendingPathComponent("config.json"), to: d.appendingPathComponent("config.json"))
        #expect(err(d) == "")
        try Data("garbage".utf8).write(to: d.appendingPathComponent("model.safetensors"))
        #expect(err(d).contains("invalid safetensors"))
    }
}
