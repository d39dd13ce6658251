import ZeroSegCore
import ZeroSegCLIP

/// What a one-stage segmenter needs from learned prompts (ZeroSegTuning's `LearnedPrompts` and
/// `HeadPrompts` conform): class queries for a class set, a logit scale, and either a map over the
/// patch embeddings (the linear head) or the scoring of whole windows (the image-conditioned heads
/// of ZegCLIP and DenseCLIP, which run their own prompted encoder). The segmenter knows nothing
/// else of tuning.
public protocol PromptHead: Sendable {
    /// Throws when the head was learned for another model (widths differ).
    func checkFits(_ model: CLIPModel) throws
    /// The logit scale that replaces `SegmentationOptions.logitScale`.
    var logitScale: Float { get }
    /// Query embeddings [Q][P] for the set's names (templates and the text cache are not used),
    /// computed with `threads` threads.
    func queries(_ set: ClassSet, model: CLIPModel, threads: Int) throws -> [[Float]]
    /// Rewrites patch embeddings x: [rows, P] in place (with the caller's thread budget).
    func adaptPatchEmbeddings(_ x: FloatPtr, rows: Int)
    /// Image-conditioned heads: window scores for normalised pixels [B, 3, H, W] and the queries of
    /// `queries(_:model:threads:)` (`set`: their class set, when known: sigmoid heads lower the seen
    /// classes' scores by it); nil for heads that only adapt the dense patch embeddings (the
    /// segmenter's dense method then runs, as without prompts).
    func scoreWindows(pixels: ConstFloatPtr, batch: Int, height: Int, width: Int, queries: [[Float]], set: ClassSet?,
                      model: CLIPModel, threads: Int) throws -> WindowScores?
    /// True when `scoreWindows` gives scores (an image-conditioned head).
    var scoresWindows: Bool { get }
}

/// Scores of a batch of windows from an image-conditioned head.
public struct WindowScores: Sendable {
    /// [B, Q, gh, gw]: per window, per query, per patch; × `PromptHead.logitScale` = the logits the
    /// segmenter averages over windows, resizes, refines and soft-maxes.
    public let scores: Buffer
    /// [B, gh·gw, P] the windows' L2-normalised patch embeddings from the head's encoder (for
    /// proposals and mask pooling in two-stage mode).
    public let patches: Buffer
    public let gridHeight: Int, gridWidth: Int
    public init(scores: Buffer, patches: Buffer, gridHeight: Int, gridWidth: Int) {
        self.scores = scores; self.patches = patches; self.gridHeight = gridHeight; self.gridWidth = gridWidth
    }
}

extension PromptHead {
    public func scoreWindows(pixels: ConstFloatPtr, batch: Int, height: Int, width: Int, queries: [[Float]], set: ClassSet?,
                             model: CLIPModel, threads: Int) throws -> WindowScores? { nil }
    public var scoresWindows: Bool { false }
}
