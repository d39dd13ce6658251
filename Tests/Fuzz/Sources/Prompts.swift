import Foundation
import ZeroSeg

nonisolated(unsafe) private var model: CLIPModel!

/// Prompt files (safetensors with zeroseg metadata) checked against a model, the synthetic tiny
/// CLIP: the linear head's PromptFile, the image-conditioned head's HeadPromptFile and the format
/// sniffing. The input is written to a file, as these readers take a path.
let promptsTarget = FuzzTarget(name: "prompts", covers: "PromptFile / HeadPromptFile reading and checks against a model",
                               setUp: {
    let dir = fuzzScratch.appendingPathComponent("tiny-model", isDirectory: true)
    try Synth.write(arch: .tiny, seed: 0, to: dir)
    model = try CLIPModel(directory: dir)
}) { bytes in
    let url = writeScratch(bytes, "prompts.safetensors")
    do { _ = try PromptFile(url: url, model: model) } catch { expectTyped(error) }
    do { _ = try HeadPromptFile(url: url, model: model) } catch { expectTyped(error) }
    do { _ = try HeadPromptFile.format(of: url) } catch { expectTyped(error) }
}
