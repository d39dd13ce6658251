import ZeroSegCore

// The image-conditioned pixel-text heads (issue 13): ZegCLIP's relationship descriptor + ATM
// decoder (ZegCLIPHead.swift) and DenseCLIP's context decoder (ContextDecoderHead.swift). A head
// maps raw CLIP outputs to per-class score maps; each head normalises what its paper normalises.

/// What a head's forward pass records for its backward pass (each head downcasts its own).
public protocol HeadTape: AnyObject, Sendable {}

/// An image-conditioned head: class score maps from the class text embeddings and the image's
/// tokens. Learnable tensors in `parameters` (names as in the prompt file, prefixed by the head).
public protocol ImageConditionedHead: Sendable {
    /// "zegclip" or "denseclip".
    var kind: String { get }
    var parameters: NamedTensors { get set }
    /// Names of the tensors that get weight decay.
    func decays(_ name: String) -> Bool
    /// text: [C, P] text embeddings (text_projection output, not normalised);
    /// global: [B, P] each image's projected class token (visual_projection(ln_post(·)), not normalised);
    /// patches: [B, G, P] projected patch tokens (G = gridHeight · gridWidth, row-major, not normalised).
    /// Returns scores [B, C, G]: the logits the loss and the segmenter use, and with `record` a tape.
    func forward(text: [Float], classes: Int, global: [Float], patches: [Float], batch: Int,
                 gridHeight: Int, gridWidth: Int, threads: Int, record: Bool) throws -> (scores: [Float], tape: (any HeadTape)?)
    /// Gradients given dL/dscores [B, C, G]: of every parameter (same layout as `parameters`), and of
    /// the inputs text [C, P], global [B, P], patches [B, G, P].
    func backward(_ tape: any HeadTape, dScores: [Float], threads: Int) throws
        -> (parameters: NamedTensors, text: [Float], global: [Float], patches: [Float])
}
