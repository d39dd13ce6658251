import Foundation
import Testing
import ZeroSeg

/// Public API input that does not fit is a thrown `ZeroSegError` (checked in release builds too),
/// never a trap or an out-of-bounds read.
@Suite struct InputCheckTests {
    @Test func imagingInputThrows() throws {
        #expect(throws: ZeroSegError.self) { try RGBImage(width: 2, height: 2, pixels: [0, 0, 0]) }
        #expect(throws: ZeroSegError.self) { try RGBImage(width: -1, height: -3, pixels: [0, 0, 0]) }
        let img = try RGBImage(width: 2, height: 1, pixels: [1, 2, 3, 4, 5, 6])
        let empty = try RGBImage(width: 0, height: 0, pixels: [])
        #expect(throws: ZeroSegError.self) { try resizeBilinear(img, width: 0, height: 3) }
        #expect(throws: ZeroSegError.self) { try resizeBilinear(empty, width: 2, height: 2) }
        #expect(throws: ZeroSegError.self) { try resizeBicubicPIL(img, width: 3, height: -1) }
        #expect(throws: ZeroSegError.self) { try resizeBicubicPIL(empty, width: 2, height: 2) }
        #expect(throws: ZeroSegError.self) { try CLIPPreprocessor(size: 0) }
        #expect(throws: ZeroSegError.self) { try CLIPPreprocessor(mean: [0.5, 0.5]) }
        #expect(throws: ZeroSegError.self) { try CLIPPreprocessor()(empty) }
        #expect(throws: ZeroSegError.self) { try classPalette(count: 255) }
        #expect(throws: ZeroSegError.self) { try classPalette(count: -1) }
        #expect(try classPalette(count: 254).count == 254)
    }

    @Test func safetensorsWriteShapeThrows() throws {
        let url = temporaryDirectory().appendingPathComponent("bad.safetensors")
        #expect(throws: ZeroSegError.self) { try SafetensorsFile.write([("x", [2, 2], [1, 2, 3])], to: url) }
        #expect(throws: ZeroSegError.self) { try SafetensorsFile.write([("x", [-1, -3], [1, 2, 3])], to: url) }
        #expect(!FileManager.default.fileExists(atPath: url.path))
    }

    @Test func tokenizerContextLengthThrows() throws {
        let m = TextBackwardTests.tiny
        #expect(throws: ZeroSegError.self) { try m.tokenizer.tokenize("a cat", contextLength: 0) }
        #expect(throws: ZeroSegError.self) { try m.tokenizer.tokenizeReportingTruncation("a cat", contextLength: -5) }
        #expect(try m.tokenizer.tokenize("a cat", contextLength: 1) == [49407])
    }

    @Test func segmentationInputThrows() throws {
        #expect(throws: ZeroSegError.self) { try FeatureGrid(height: 2, width: 2, dim: 3, data: [1, 2, 3]) }
        #expect(throws: ZeroSegError.self) { try FeatureGrid(height: 0, width: 2, dim: 3, data: []) }
        #expect(throws: ZeroSegError.self) { try ProposalMask(width: 3, height: 2, bits: [1, 0], source: "t") }
        let a = try ProposalMask(width: 2, height: 2, bits: [1, 0, 0, 1], source: "a")
        let b = try ProposalMask(width: 4, height: 1, bits: [1, 0, 0, 1], source: "b")
        #expect(throws: ZeroSegError.self) { try a.iou(with: b) }
        #expect(throws: ZeroSegError.self) { try a.intersectionArea(with: b) }
        #expect(try a.iou(with: a) == 1)
        #expect(throws: ZeroSegError.self) { try sphericalKMeans([1, 2, 3], count: 2, dim: 2, k: 1) }
        #expect(throws: ZeroSegError.self) { try sphericalKMeans([1, 2, 3, 4], count: 2, dim: 2, k: 3) }
        #expect(throws: ZeroSegError.self) { try sphericalKMeans([1, 2, 3, 4], count: 2, dim: 2, k: 0) }
        #expect(throws: ZeroSegError.self) { try connectedComponents([1, 2, 3], width: 2, height: 2) }
        #expect(throws: ZeroSegError.self) { try Superpixels(width: 2, height: 1, rawLabels: [0, 1], lab: [0, 0, 0]) }
        let empty = try RGBImage(width: 0, height: 5, pixels: [])
        #expect(throws: ZeroSegError.self) { try slicSuperpixels(empty) }
        #expect(throws: ZeroSegError.self) { try ConfusionMatrix(numClasses: 0) }
        #expect(throws: ZeroSegError.self) { try ConfusionMatrix(numClasses: 256) }
        var m3 = try ConfusionMatrix(numClasses: 3)
        #expect(throws: ZeroSegError.self) { try m3.merge(try ConfusionMatrix(numClasses: 2)) }
        #expect(throws: ZeroSegError.self) { try LabelMap(width: 2, height: 2, values: [0, 1, 2]) }
    }

    @Test func labellingSizesThrow() throws {
        // logits [Q=2, HW=3]
        let logits: [Float] = [1, 2, 3, 3, 2, 1]
        #expect(throws: ZeroSegError.self) { try classProbabilities(logits: logits, pixels: 4, owners: [0, 1], rows: 2, scale: 1) }
        #expect(throws: ZeroSegError.self) { try classProbabilities(logits: logits, pixels: 3, owners: [0, 2], rows: 2, scale: 1) }
        let p = try classProbabilities(logits: logits, pixels: 3, owners: [0, 1], rows: 2, scale: 1)
        #expect(throws: ZeroSegError.self) { try labelPixels(p, rows: 3, pixels: 3, classes: 2, hasBackground: false, threshold: 0) }
        let labels = try labelPixels(p, rows: 2, pixels: 3, classes: 2, hasBackground: false, threshold: 0)
        #expect(labels == [1, 0, 0])
        #expect(throws: ZeroSegError.self) { try labelAreas(labels, probabilities: p, classes: 2, pixels: 4) }
        #expect(throws: ZeroSegError.self) { try labelAreas(labels, probabilities: p, classes: 3, pixels: 3) }
        let (area, _) = try labelAreas(labels, probabilities: p, classes: 2, pixels: 3)
        #expect(area == [2.0 / 3, 1.0 / 3])
    }

    @Test func segmenterAndTwoStageSizesThrow() throws {
        let model = TextBackwardTests.tiny
        let seg = try Segmenter(model: model, options: SegmentationOptions())
        let set = try ClassSet.parse("cat,dog")
        #expect(throws: ZeroSegError.self) { try seg.finish(logits: [0, 1, 2], width: 2, height: 1, set: set, wantScores: false) }
        let two = try TwoStageSegmenter(segmenter: seg)
        let img = try RGBImage(width: 4, height: 2, pixels: [Float](repeating: 9, count: 24))
        let wrong = try ProposalMask(width: 2, height: 4, bits: [UInt8](repeating: 1, count: 8), source: "wrong")
        #expect(throws: ZeroSegError.self) { try two.regionCrops(img, masks: [wrong]) }
    }

    @Test func textGradientInputThrows() throws {
        let m = TextBackwardTests.tiny
        let w = m.config.text.hiddenSize
        #expect(throws: ZeroSegError.self) { try CoOpPrompt(tokens: [], ctxRange: 0..<0, pool: 0) }
        #expect(throws: ZeroSegError.self) { try CoOpPrompt(tokens: [1, 2], ctxRange: 1..<3, pool: 0) }
        #expect(throws: ZeroSegError.self) { try CoOpPrompt(tokens: [1, 2], ctxRange: 1..<2, pool: 2) }
        #expect(throws: ZeroSegError.self) { try m.coopPrompt(name: "cat", contextLength: -1) }
        let p = try m.coopPrompt(name: "cat", contextLength: 2)
        #expect(throws: ZeroSegError.self) { try m.textInputs(p, context: [Float](repeating: 0, count: w)) }
        let bad = try CoOpPrompt(tokens: [49406, Int32(m.config.text.vocabSize), 49407], ctxRange: 0..<0, pool: 2)
        #expect(throws: ZeroSegError.self) { try m.textInputs(bad, context: []) }
        let x0 = try m.textInputs(p, context: [Float](repeating: 0, count: 2 * w))
        let t = p.tokens.count
        #expect(throws: ZeroSegError.self) { try m.textForward(inputs: x0, tokens: 0, pool: 0, threads: 1) }
        #expect(throws: ZeroSegError.self) { try m.textForward(inputs: Array(x0.dropLast()), tokens: t, pool: p.pool, threads: 1) }
        #expect(throws: ZeroSegError.self) { try m.textForward(inputs: x0, tokens: t, pool: t, threads: 1) }
        let tape = try m.textForward(inputs: x0, tokens: t, pool: p.pool, threads: 1)
        #expect(throws: ZeroSegError.self) { try m.textBackward(tape, gradEmbedding: [1, 2], threads: 1) }
        let other = TextBackwardTests.models.values.first { $0.fingerprint != m.fingerprint }!
        #expect(throws: ZeroSegError.self) {
            try other.textBackward(tape, gradEmbedding: [Float](repeating: 0, count: other.config.projectionDim), threads: 1)
        }
        #expect(throws: ZeroSegError.self) { try m.contextGradient(p, inputGradient: [1, 2, 3]) }
        #expect(throws: ZeroSegError.self) { try l2NormalizeBackward([1, 2], grad: [1]) }
    }
}
