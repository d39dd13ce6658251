import Foundation
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegText

/// Zero-shot classification of whole images, as CLIP does it: one prompt per class
/// ("a photo of a {}." by default), softmax over exp(logit_scale) · cosine similarity.
public struct ZeroShotClassifier: Sendable {
    public let model: CLIPModel
    public let template: String

    public init(model: CLIPModel, template: String = "a photo of a {}.") {
        self.model = model
        self.template = template
    }

    /// Probabilities for each class, in the order given.
    public func classify(_ image: RGBImage, classes: [String], threads: Int = defaultThreads) throws -> [Float] {
        guard !classes.isEmpty else { throw ZeroSegError("the class list is empty") }
        let text = try model.encodeText(classes.map { template.replacingOccurrences(of: "{}", with: $0) }, threads: threads)
        let img = try model.encodeImages([image], threads: threads)[0]
        let s = model.scale
        var logits = text.map { t in s * zip(t, img).reduce(0) { $0 + $1.0 * $1.1 } }
        softmaxRows(&logits, rows: 1, n: logits.count)
        return logits
    }
}
