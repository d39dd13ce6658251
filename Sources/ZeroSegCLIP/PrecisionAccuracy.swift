import Foundation
import ZeroSegCore

/// How far a model at a low precision is from the same model at fp32, on the same inputs:
/// image and text embeddings' cosine to fp32, and per-pixel labels of one-stage segmentation.
/// The labels are compared where fp32 is decided: pixels whose top-2 margin (in the scaled
/// logits the per-pixel softmax takes, after refinement) exceeds `margin`. Computed by
/// `PrecisionAccuracy.compare` (ZeroSegSegmentation); nil where there was nothing to compare.
public struct PrecisionAccuracy: Codable, Sendable, Equatable {
    public var precision: String
    /// Cosine of each image embedding to fp32's: smallest and mean.
    public var imageCosMin: Double?, imageCosMean: Double?
    /// Cosine of each text embedding to fp32's: smallest and mean.
    public var textCosMin: Double?, textCosMean: Double?
    /// Fraction of the decided pixels (fp32 margin > `margin`) whose label equals fp32's.
    public var labelAgreement: Double?
    /// Fraction of all pixels whose label equals fp32's.
    public var labelAgreementAll: Double?
    /// Decided pixels, and all pixels compared.
    public var marginPixels: Int, pixels: Int
    /// Images embedded (pixel tensors and pictures) and segmented; texts embedded.
    public var images: Int, segmented: Int, texts: Int
    public var margin: Double

    enum CodingKeys: String, CodingKey {
        case precision, imageCosMin = "image_cos_min", imageCosMean = "image_cos_mean", textCosMin = "text_cos_min"
        case textCosMean = "text_cos_mean", labelAgreement = "label_agreement", labelAgreementAll = "label_agreement_all"
        case marginPixels = "margin_pixels", pixels, images, segmented, texts, margin
    }

    public init(precision: String, imageCosMin: Double?, imageCosMean: Double?, textCosMin: Double?, textCosMean: Double?,
                labelAgreement: Double?, labelAgreementAll: Double?, marginPixels: Int, pixels: Int, images: Int, segmented: Int,
                texts: Int, margin: Double) {
        self.precision = precision; self.imageCosMin = imageCosMin; self.imageCosMean = imageCosMean
        self.textCosMin = textCosMin; self.textCosMean = textCosMean; self.labelAgreement = labelAgreement
        self.labelAgreementAll = labelAgreementAll; self.marginPixels = marginPixels; self.pixels = pixels; self.images = images
        self.segmented = segmented; self.texts = texts; self.margin = margin
    }
}
