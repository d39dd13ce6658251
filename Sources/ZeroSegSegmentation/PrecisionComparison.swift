import Foundation
import ZeroSegCore
import ZeroSegImaging
import ZeroSegCLIP

extension PrecisionAccuracy {
    /// Compares `candidate` with `reference` (the same weights at fp32): embeddings of `pixels`
    /// (each [3, S, S] at the model's size, already normalised) and of `pictures` (preprocessed as
    /// CLIPImageProcessor does), of `texts`; labels of `segment` images for `classes` (prompts:
    /// `templates`) with `options`.
    public static func compare(reference: CLIPModel, candidate: CLIPModel, pixels: [[Float]], pictures: [RGBImage],
                               texts: [String], segment: [RGBImage], classes: ClassSet, templates: [String],
                               options: SegmentationOptions = SegmentationOptions(), margin: Double = 0.1,
                               threads: Int = defaultThreads) throws -> PrecisionAccuracy {
        let s = reference.config.vision.imageSize
        func imageEmbeddings(_ m: CLIPModel) throws -> [[Float]] {
            try pixels.map { px in try px.withUnsafeBufferPointer { try m.encodePixels($0.baseAddress!, batch: 1, height: s, width: s, threads: threads)[0] } }
                + (pictures.isEmpty ? [] : m.encodeImages(pictures, threads: threads))
        }
        let imageCos = zip(try imageEmbeddings(reference), try imageEmbeddings(candidate)).map { cosine($0, $1) }
        let textCos = texts.isEmpty ? [] : zip(try reference.encodeText(texts, threads: threads), try candidate.encodeText(texts, threads: threads)).map { cosine($0, $1) }
        let segRef = try Segmenter(model: reference, options: options, threads: threads)
        let segCand = try Segmenter(model: candidate, options: options, threads: threads)
        let qRef = try segRef.queryEmbeddings(classes, templates: templates), qCand = try segCand.queryEmbeddings(classes, templates: templates)
        var decided = 0, agreeDecided = 0, agreeAll = 0, all = 0
        let scale = options.logitScale
        for image in segment {
            let a = try segRef.logits(image, queries: qRef, set: classes, keepRaw: true)
            let b = try segCand.logits(image, queries: qCand, set: classes, keepRaw: true)
            let la = a.refinedLogits ?? a.rawLogits, lb = b.refinedLogits ?? b.rawLogits
            let hw = image.width * image.height, q = classes.queries.count
            let owners = classes.queries.map(\.owner)
            for px in 0..<hw {
                var best = -Float.infinity, second = -Float.infinity, ownerA = -1
                var bestB = -Float.infinity, ownerB = -1
                for k in 0..<q {
                    let v = la[k * hw + px] * scale
                    if v > best { second = best; best = v; ownerA = owners[k] } else if v > second { second = v }
                    let w = lb[k * hw + px] * scale
                    if w > bestB { bestB = w; ownerB = owners[k] }
                }
                all += 1
                if ownerA == ownerB { agreeAll += 1 }
                if Double(best - second) > margin {
                    decided += 1
                    if ownerA == ownerB { agreeDecided += 1 }
                }
            }
        }
        func minMean(_ v: [Double]) -> (Double?, Double?) { v.isEmpty ? (nil, nil) : (v.min()!, v.reduce(0, +) / Double(v.count)) }
        let (im, ia) = minMean(imageCos), (tm, ta) = minMean(textCos)
        return PrecisionAccuracy(precision: candidate.precision.rawValue, imageCosMin: im, imageCosMean: ia, textCosMin: tm, textCosMean: ta,
                                 labelAgreement: decided > 0 ? Double(agreeDecided) / Double(decided) : nil,
                                 labelAgreementAll: all > 0 ? Double(agreeAll) / Double(all) : nil,
                                 marginPixels: decided, pixels: all, images: imageCos.count, segmented: segment.count,
                                 texts: textCos.count, margin: margin)
    }

    static func cosine(_ a: [Float], _ b: [Float]) -> Double {
        var d = 0.0, na = 0.0, nb = 0.0
        for (x, y) in zip(a, b) { d += Double(x) * Double(y); na += Double(x) * Double(x); nb += Double(y) * Double(y) }
        return d / max(1e-30, (na * nb).squareRoot())
    }
}
