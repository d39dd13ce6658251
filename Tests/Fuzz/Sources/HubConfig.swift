import Foundation
import ZeroSeg
@testable import ZeroSegCLIP

/// The JSON files a model folder from the hub holds, each reader given the input: config.json
/// (CLIPConfig.parse), open_clip_config.json (refusals by name, towers, preprocess_cfg),
/// preprocessor_config.json and tokenizer_config.json.
let hubConfigTarget = FuzzTarget(name: "hub-config", covers: "config.json, open_clip_config.json, preprocessor_config.json, tokenizer_config.json") { bytes in
    let data = Data(bytes)
    do {
        let c = try CLIPConfig.parse(data)
        precondition(c.vision.gridSize > 0)
    } catch { expectTyped(error) }
    do {
        let (c, p) = try CheckpointFiles.openCLIPConfig(data, name: "open_clip_config.json")
        precondition(c.vision.gridSize > 0 && p.mean.count == 3)
    } catch { expectTyped(error) }
    do { _ = try PreprocessorConfig.parse(data, name: "preprocessor_config.json", imageSize: 224) } catch { expectTyped(error) }
    do { try CLIPModel.checkTokenizerClass(data, path: "tokenizer_config.json") } catch { expectTyped(error) }
}
