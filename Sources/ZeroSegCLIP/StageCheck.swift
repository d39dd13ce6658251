import Foundation
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegText

/// Compares every stage of a forward pass with a reference dump made by
/// scripts/reference/dump_stages.py (transformers' CLIPModel on the same checkpoint).
public enum StageCheck {
    public struct Row: Sendable {
        public let name: String
        public let count: Int
        /// Largest |reference| value, largest |ours − reference|, and their ratio.
        public let maxRef: Double, maxAbs: Double
        public var relative: Double { maxAbs / max(maxRef, 1e-30) }
    }

    /// Runs the model on the dump's inputs; returns one row per reference stage that was compared.
    public static func run(model: CLIPModel, stages ref: SafetensorsFile, threads: Int = defaultThreads) throws -> [Row] {
        var ours: [String: (shape: [Int], data: [Float])] = [:]
        var rows: [Row] = []

        // Text: each sequence alone, so recorded tensors map to reference rows; compare tokens < length.
        let ids = try ref.ints("text.input_ids"), lengths = try ref.ints("text.lengths")
        let shape = ref.tensors["text.input_ids"]!.shape
        let b = shape[0], l = shape[1]
        var textEmb: [[Float]] = []
        var perSeq: [[String: [Float]]] = []
        for i in 0..<b {
            let seq = ids[(i * l)..<(i * l + lengths[i])].map { Int32($0) }
            var rec: [String: [Float]] = [:]
            let e = try model.encodeTokens([seq], normalize: false, threads: threads) { name, shape, data in
                rec[name] = Array(UnsafeBufferPointer(start: data, count: shape.reduce(1, *)))
            }
            textEmb.append(e[0])
            perSeq.append(rec)
        }
        for name in perSeq[0].keys.sorted() where ref.tensors[name] != nil {
            let r = try ref.floats(name), rshape = ref.tensors[name]!.shape
            var maxRef = 0.0, maxAbs = 0.0, n = 0
            for i in 0..<b {
                let mine = perSeq[i][name]!
                if rshape.count == 3 {  // [B, L, W]: tokens below the length only
                    let w = rshape[2]
                    for t in 0..<lengths[i] {
                        for c in 0..<w {
                            let rv = Double(r[(i * rshape[1] + t) * w + c]), mv = Double(mine[t * w + c])
                            maxRef = max(maxRef, abs(rv)); maxAbs = max(maxAbs, abs(rv - mv)); n += 1
                        }
                    }
                } else {  // [B, W]
                    let w = rshape[1]
                    for c in 0..<w {
                        let rv = Double(r[i * w + c]), mv = Double(mine[c])
                        maxRef = max(maxRef, abs(rv)); maxAbs = max(maxAbs, abs(rv - mv)); n += 1
                    }
                }
            }
            rows.append(Row(name: name, count: n, maxRef: maxRef, maxAbs: maxAbs))
        }

        // Vision.
        func record(_ name: String, _ shape: [Int], _ data: ConstFloatPtr) {
            ours[name] = (shape, Array(UnsafeBufferPointer(start: data, count: shape.reduce(1, *))))
        }
        var imageEmb: [[Float]] = []
        if let info = ref.tensors["vision.pixel_values"] {
            let px = try ref.floats("vision.pixel_values")
            let (n, h, w) = (info.shape[0], info.shape[2], info.shape[3])
            imageEmb = try px.withUnsafeBufferPointer {
                try model.encodePixels($0.baseAddress!, batch: n, height: h, width: w, normalize: false, threads: threads, record: record)
            }
            let (x, gh, gw) = try px.withUnsafeBufferPointer {
                try model.visionHidden(pixels: $0.baseAddress!, batch: n, height: h, width: w, threads: threads)
            }
            let t = gh * gw + 1
            let pe = model.tokenEmbeddings(hidden: x, batch: n, tokens: t, threads: threads)
            record("vision.patch_embeds", [n, t, model.config.projectionDim], pe.ptr)
            withExtendedLifetime(pe) {}
        }
        if let info = ref.tensors["interp.pixel_values"] {
            let px = try ref.floats("interp.pixel_values")
            let (n, h, w) = (info.shape[0], info.shape[2], info.shape[3])
            let (x, gh, gw) = try px.withUnsafeBufferPointer {
                try model.visionHidden(pixels: $0.baseAddress!, batch: n, height: h, width: w, threads: threads,
                                       record: record, prefix: "interp")
            }
            let t = gh * gw + 1
            record("interp.last_hidden_state", [n, t, model.config.vision.hiddenSize], x.ptr)
            let pe = model.tokenEmbeddings(hidden: x, batch: n, tokens: t, threads: threads)
            record("interp.patch_embeds", [n, t, model.config.projectionDim], pe.ptr)
            withExtendedLifetime((x, pe)) {}
        }
        if !imageEmb.isEmpty {
            let cos = cosineSimilarities(imageEmb, textEmb)
            let s = model.scale
            ours["logits_per_image"] = ([imageEmb.count, textEmb.count], cos.flatMap { $0.map { $0 * s } })
        }
        for name in ours.keys.sorted() {
            guard let info = ref.tensors[name] else { continue }
            let (shape, data) = ours[name]!
            guard info.shape == shape else {
                throw ZeroSegError("stage \(name): shape \(shape), reference \(info.shape)")
            }
            let r = try ref.floats(name)
            var maxRef = 0.0, maxAbs = 0.0
            for i in r.indices { maxRef = max(maxRef, Double(abs(r[i]))); maxAbs = max(maxAbs, Double(abs(r[i] - data[i]))) }
            rows.append(Row(name: name, count: r.count, maxRef: maxRef, maxAbs: maxAbs))
        }
        return rows
    }
}
