import ZeroSegCore
import ZeroSegCLIP

/// What a one-stage segmenter needs from learned prompts (ZeroSegTuning's `LearnedPrompts`
/// conforms): class queries for a class set, a map over the patch embeddings, a logit scale. The
/// segmenter knows nothing else of tuning.
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
}
