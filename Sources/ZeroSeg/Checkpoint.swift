import Foundation

/// How a checkpoint names its tensors. zeroseg's module tree uses the Hugging Face names
/// (`text_model.encoder.layers.0.self_attn.q_proj.weight`, ...); an OpenCLIP checkpoint is read
/// through `openCLIPName`, the one table of name changes.
public enum CheckpointLayout: String, Sendable {
    case huggingFace = "hf"
    case openCLIP = "open_clip"
}

enum NameTable {
    /// HF prefix → OpenCLIP prefix, first match wins.
    static let openCLIPPrefixes: [(hf: String, openCLIP: String)] = [
        ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
        ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
        ("text_model.encoder.layers.", "transformer.resblocks."),
        ("text_model.final_layer_norm.", "ln_final."),
        ("text_projection.weight", "text_projection"),           // stored [W, P]: transposed on load
        ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
        ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"),
        ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
        ("vision_model.pre_layrnorm.", "visual.ln_pre."),
        ("vision_model.encoder.layers.", "visual.transformer.resblocks."),
        ("vision_model.post_layernorm.", "visual.ln_post."),
        ("visual_projection.weight", "visual.proj"),             // stored [W, P]: transposed on load
        ("logit_scale", "logit_scale"),
    ]
    /// Inside an encoder layer. q/k/v: OpenCLIP stores them fused as `attn.in_proj_weight`
    /// [3W, W] / `attn.in_proj_bias` [3W] (q, k, v in that order), which is exactly the layout
    /// zeroseg computes with; for HF checkpoints `WeightReader.qkv` stacks q_proj, k_proj, v_proj.
    static let openCLIPLayer: [(hf: String, openCLIP: String)] = [
        (".layer_norm1.", ".ln_1."), (".layer_norm2.", ".ln_2."),
        (".self_attn.out_proj.", ".attn.out_proj."),
        (".mlp.fc1.", ".mlp.c_fc."), (".mlp.fc2.", ".mlp.c_proj."),
    ]
    /// Tensors OpenCLIP stores transposed relative to HF (used as `x @ proj`).
    static let openCLIPTransposed: Set<String> = ["text_projection.weight", "visual_projection.weight"]

    static func openCLIPName(_ hf: String) -> String {
        for (h, o) in openCLIPPrefixes where hf.hasPrefix(h) {
            var rest = String(hf.dropFirst(h.count))
            for (lh, lo) in openCLIPLayer { rest = rest.replacingOccurrences(of: lh, with: lo) }
            return o + rest
        }
        return hf
    }
}

/// The files of a model directory, chosen in zeroseg's order of preference.
public struct CheckpointFiles: Sendable {
    public let directory: URL
    public let weights: URL
    public let layout: CheckpointLayout
    public let config: CLIPConfig
    public let preprocessor: PreprocessorConfig

    /// Weights file preference (first that exists): `model.safetensors`, `open_clip_model.safetensors`,
    /// `pytorch_model.bin`, `open_clip_pytorch_model.bin`.
    public static let preference: [(file: String, layout: CheckpointLayout)] = [
        ("model.safetensors", .huggingFace), ("open_clip_model.safetensors", .openCLIP),
        ("pytorch_model.bin", .huggingFace), ("open_clip_pytorch_model.bin", .openCLIP),
    ]

    public init(directory: URL) throws {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: directory.path, isDirectory: &isDir), isDir.boolValue else {
            throw ZeroSegError("model directory \(directory.path) does not exist")
        }
        self.directory = directory
        let hfConfig = directory.appendingPathComponent("config.json")
        let ocConfig = directory.appendingPathComponent("open_clip_config.json")
        let hasHF = fm.fileExists(atPath: hfConfig.path), hasOC = fm.fileExists(atPath: ocConfig.path)
        guard hasHF || hasOC else {
            throw ZeroSegError("model directory \(directory.path) has no config.json (or open_clip_config.json)")
        }
        // A file of a layout counts only when that layout's config is there too.
        let usable = Self.preference.filter { ($0.layout == .huggingFace ? hasHF : hasOC) }
        guard let pick = usable.first(where: { fm.fileExists(atPath: directory.appendingPathComponent($0.file).path) }) else {
            throw ZeroSegError("model directory \(directory.path) has no weights (looked for \(usable.map(\.file).joined(separator: ", ")))")
        }
        weights = directory.appendingPathComponent(pick.file)
        layout = pick.layout
        if layout == .huggingFace {
            config = try CLIPConfig.load(hfConfig)
            preprocessor = try PreprocessorConfig.load(directory.appendingPathComponent("preprocessor_config.json"),
                                                       imageSize: config.vision.imageSize)
        } else {
            (config, preprocessor) = try Self.openCLIPConfig(ocConfig)
        }
    }

    /// `open_clip_config.json` (`model_cfg` + `preprocess_cfg`) as a CLIPConfig. Only the standard
    /// CLIP ViT tower is supported; options that change the architecture are refused.
    static func openCLIPConfig(_ url: URL) throws -> (CLIPConfig, PreprocessorConfig) {
        let name = url.lastPathComponent
        guard let data = FileManager.default.contents(atPath: url.path),
              let root = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any],
              let m = root["model_cfg"] as? [String: Any],
              let v = m["vision_cfg"] as? [String: Any], let t = m["text_cfg"] as? [String: Any]
        else { throw ZeroSegError("\(name) has no model_cfg with vision_cfg and text_cfg") }
        func int(_ d: [String: Any], _ k: String, _ def: Int? = nil) throws -> Int {
            if let n = d[k] as? NSNumber { return n.intValue }
            if let def, d[k] == nil || d[k] is NSNull { return def }
            throw ZeroSegError("\(name): \(k) is missing or not a number")
        }
        for (d, keys) in [(v, ["timm_model_name", "hf_model_name", "ls_init_value", "attentional_pool", "input_patchnorm", "no_ln_pre", "final_ln_after_pool", "act_kwargs", "norm_kwargs"]),
                          (t, ["hf_model_name", "ls_init_value", "no_causal_mask", "proj_bias", "act_kwargs", "norm_kwargs", "embed_cls"])] {
            for k in keys where d[k] != nil && !(d[k] is NSNull) && (d[k] as? Bool) != false {
                throw ZeroSegError("\(name): \(k) is not supported (only standard CLIP ViT towers)")
            }
        }
        if let pool = v["pool_type"] as? String, pool != "tok" { throw ZeroSegError("\(name): vision pool_type \(pool) is not supported") }
        if let pool = t["pool_type"] as? String, pool != "argmax", pool != "last" {
            throw ZeroSegError("\(name): text pool_type \(pool) is not supported")
        }
        var c = CLIPConfig()
        let act: Activation = (m["quick_gelu"] as? Bool ?? false) ? .quickGELU : .gelu
        c.projectionDim = try int(m, "embed_dim")
        c.vision.imageSize = try int(v, "image_size")
        c.vision.patchSize = try int(v, "patch_size")
        c.vision.hiddenSize = try int(v, "width")
        c.vision.numHiddenLayers = try int(v, "layers")
        c.vision.numAttentionHeads = c.vision.hiddenSize / (try int(v, "head_width", 64))
        c.vision.intermediateSize = Int(Double(c.vision.hiddenSize) * ((v["mlp_ratio"] as? NSNumber)?.doubleValue ?? 4))
        c.vision.hiddenAct = act
        c.text.hiddenSize = try int(t, "width")
        c.text.numHiddenLayers = try int(t, "layers")
        c.text.numAttentionHeads = try int(t, "heads", 8)
        c.text.intermediateSize = Int(Double(c.text.hiddenSize) * ((t["mlp_ratio"] as? NSNumber)?.doubleValue ?? 4))
        c.text.maxPositionEmbeddings = try int(t, "context_length", 77)
        c.text.vocabSize = try int(t, "vocab_size", 49408)
        c.text.hiddenAct = act
        try c.validate(source: name)
        var p = PreprocessorConfig(imageSize: c.vision.imageSize)
        if let pc = root["preprocess_cfg"] as? [String: Any] {
            if let mean = pc["mean"] as? [NSNumber], mean.count == 3 { p.mean = mean.map { $0.floatValue } }
            if let std = pc["std"] as? [NSNumber], std.count == 3 { p.std = std.map { $0.floatValue } }
            if let mode = pc["resize_mode"] as? String, mode != "shortest" {
                throw ZeroSegError("\(name): resize_mode \(mode) is not supported")
            }
        }
        return (c, p)
    }

    /// Opens the weights file as named tensors.
    func open() throws -> any TensorSource {
        if weights.pathExtension == "safetensors" { return try SafetensorsFile(path: weights.path) }
        throw ZeroSegError("PyTorch checkpoints (\(weights.lastPathComponent)) are not supported yet") // TorchCheckpoint
    }
}
