import Foundation
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegText

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

    /// Errors are of kind `.badModel` (or `.unsupported`).
    public init(directory: URL) throws {
        self = try classifyingErrors(as: .badModel) { try CheckpointFiles(reading: directory) }
    }

    init(reading directory: URL) throws {
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

    /// `open_clip_config.json` (`model_cfg` + `preprocess_cfg`, as the hub's OpenCLIP repositories have it) as a
    /// CLIPConfig. Only OpenCLIP's standard `CLIP` with ViT towers (open_clip 3.3.0's `VisionTransformer` and
    /// `TextTransformer`, its default tokenizer) is supported: every option that changes the architecture, the
    /// pooling or the tokenizer is refused by name, rather than loaded into a model that would compute
    /// something else.
    static func openCLIPConfig(_ url: URL) throws -> (CLIPConfig, PreprocessorConfig) {
        try openCLIPConfig(FileManager.default.contents(atPath: url.path), name: url.lastPathComponent)
    }

    /// The same from the file's contents (nil: unreadable); `name` names it in errors.
    static func openCLIPConfig(_ data: Data?, name: String) throws -> (CLIPConfig, PreprocessorConfig) {
        guard let data,
              let root = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any],
              let m = root["model_cfg"] as? [String: Any],
              let v = m["vision_cfg"] as? [String: Any], let t = m["text_cfg"] as? [String: Any]
        else { throw ZeroSegError("\(name) has no model_cfg with vision_cfg and text_cfg") }
        // JSON true/false arrive as NSNumber too (of the boolean class): told apart so that `true` is no number.
        let boolClass: AnyClass = type(of: NSNumber(value: true))
        func isBool(_ x: Any?) -> Bool { (x as? NSNumber).map { type(of: $0) == boolClass } ?? false }
        func isNumber(_ x: Any?) -> NSNumber? {
            guard let n = x as? NSNumber, !isBool(n) else { return nil }
            return n
        }
        func int(_ d: [String: Any], _ k: String, _ def: Int? = nil) throws -> Int {
            if let n = isNumber(d[k]), n.doubleValue == n.doubleValue.rounded(), abs(n.doubleValue) < 1e9 { return n.intValue }
            if let def, d[k] == nil || d[k] is NSNull { return def }
            throw ZeroSegError("\(name): \(k) is missing or not a whole number")
        }
        func ratio(_ d: [String: Any]) throws -> Double {
            guard let r = d["mlp_ratio"], !(r is NSNull) else { return 4 }
            guard let n = isNumber(r), n.doubleValue > 0 else { throw ZeroSegError("\(name): mlp_ratio is not a positive number") }
            return n.doubleValue
        }
        /// int(width * mlp_ratio), as open_clip; a product past every size's bound (2^24) is refused
        /// here, before converting it to an integer.
        func mlpWidth(_ width: Int, _ d: [String: Any], _ tower: String) throws -> Int {
            let x = Double(width) * (try ratio(d))
            guard x < Double(1 << 24) else { throw ZeroSegError("\(name): \(tower).width x mlp_ratio = \(x) is out of range") }
            return Int(x)
        }
        /// Set: not absent, null, false, or an empty object.
        func isSet(_ x: Any?) -> Bool {
            guard let x, !(x is NSNull) else { return false }
            if isBool(x) { return (x as! NSNumber).boolValue }
            if let d = x as? [String: Any] { return !d.isEmpty }
            return true
        }
        func refuse(_ what: String) -> ZeroSegError {
            ZeroSegError.unsupported("\(name): \(what) is not supported (only OpenCLIP's standard CLIP with ViT towers and its default tokenizer)")
        }
        // Whole-model options: CustomTextCLIP (`text.` names), CoCa, SigLIP's logit bias.
        for k in ["custom_text", "multimodal_cfg", "init_logit_bias", "nonscalar_logit_scale"] where isSet(m[k]) {
            throw refuse("model_cfg.\(k)")
        }
        // Per-tower options that change the architecture (open_clip 3.3.0's CLIPVisionCfg / CLIPTextCfg).
        let custom = ["block_type", "qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc",
                      "ls_init_value", "act_kwargs", "norm_kwargs", "final_ln_after_pool"]
        for (tower, d, keys) in [("vision_cfg", v, custom + ["timm_model_name", "hf_model_name", "attentional_pool", "input_patchnorm", "no_ln_pre"]),
                                 ("text_cfg", t, custom + ["hf_model_name", "hf_tokenizer_name", "tokenizer_mode", "tokenizer_kwargs",
                                                           "no_causal_mask", "proj_bias", "embed_cls"])] {
            for k in keys where isSet(d[k]) {
                // block_type "default" is the standard block
                if k == "block_type", d[k] as? String == "default" { continue }
                throw refuse("\(tower).\(k)")
            }
        }
        if v["layers"] is [Any] { throw refuse("a ResNet image tower (vision_cfg.layers is a list)") }
        if let pool = v["pool_type"], !(pool is NSNull), pool as? String != "tok" { throw refuse("vision_cfg.pool_type \(pool)") }
        if let pe = v["pos_embed_type"], !(pe is NSNull), pe as? String != "learnable" { throw refuse("vision_cfg.pos_embed_type \(pe)") }
        // Text pooling: zeroseg never pads, and pools the end token (the highest id: open_clip's "argmax").
        // "last" pools the last *padded* position in open_clip, "eos" a tokenizer-specific id: both refused.
        if let pool = t["pool_type"], !(pool is NSNull), pool as? String != "argmax" { throw refuse("text_cfg.pool_type \(pool)") }
        if let pt = t["proj_type"], !(pt is NSNull), pt as? String != "linear" { throw refuse("text_cfg.proj_type \(pt)") }
        /// image_size / patch_size: a number, or a square [n, n].
        func side(_ k: String) throws -> Int {
            if let a = v[k] as? [Any] {
                guard a.count == 2, let h = isNumber(a[0])?.intValue, let w = isNumber(a[1])?.intValue else {
                    throw ZeroSegError("\(name): vision_cfg.\(k) is not a number or a pair of numbers")
                }
                guard h == w else { throw refuse("a non-square vision_cfg.\(k) \(h)x\(w)") }
                return h
            }
            return try int(v, k)
        }
        var c = CLIPConfig()
        let quick = m["quick_gelu"]
        guard quick == nil || quick is NSNull || isBool(quick) else {
            throw ZeroSegError("\(name): quick_gelu is not true or false")
        }
        let act: Activation = isSet(quick) ? .quickGELU : .gelu
        c.projectionDim = try int(m, "embed_dim")
        c.vision.imageSize = try side("image_size")
        c.vision.patchSize = try side("patch_size")
        c.vision.hiddenSize = try int(v, "width")
        c.vision.numHiddenLayers = try int(v, "layers")
        let headWidth = try int(v, "head_width", 64)
        guard headWidth > 0, c.vision.hiddenSize % headWidth == 0 else {
            throw ZeroSegError("\(name): vision_cfg.width \(c.vision.hiddenSize) is not a multiple of head_width \(headWidth)")
        }
        c.vision.numAttentionHeads = c.vision.hiddenSize / headWidth
        c.vision.intermediateSize = try mlpWidth(c.vision.hiddenSize, v, "vision_cfg")
        c.vision.hiddenAct = act
        c.text.hiddenSize = try int(t, "width")
        c.text.numHiddenLayers = try int(t, "layers")
        c.text.numAttentionHeads = try int(t, "heads", 8)
        c.text.intermediateSize = try mlpWidth(c.text.hiddenSize, t, "text_cfg")
        c.text.maxPositionEmbeddings = try int(t, "context_length", 77)
        c.text.vocabSize = try int(t, "vocab_size", 49408)
        c.text.hiddenAct = act
        try c.validate(source: name)
        var p = PreprocessorConfig(imageSize: c.vision.imageSize)
        if let pc = root["preprocess_cfg"] as? [String: Any] {
            for (k, dst) in [("mean", \PreprocessorConfig.mean), ("std", \PreprocessorConfig.std)] {
                guard let x = pc[k], !(x is NSNull) else { continue }
                guard let a = x as? [Any], a.count == 3, case let nums = a.compactMap({ isNumber($0)?.floatValue }), nums.count == 3,
                      k == "mean" || nums.allSatisfy({ $0 > 0 }) else {
                    throw ZeroSegError("\(name): preprocess_cfg.\(k) is not three \(k == "std" ? "positive " : "")numbers")
                }
                p[keyPath: dst] = nums
            }
            if let mode = pc["resize_mode"], !(mode is NSNull), mode as? String != "shortest" {
                throw ZeroSegError.unsupported("\(name): preprocess_cfg.resize_mode \(mode) is not supported (zeroseg resizes the shortest side, then crops the centre)")
            }
            if let interp = pc["interpolation"], !(interp is NSNull), interp as? String != "bicubic" {
                throw ZeroSegError.unsupported("\(name): preprocess_cfg.interpolation \(interp) is not supported (zeroseg resizes bicubic)")
            }
        }
        return (c, p)
    }

    /// Opens the weights file as named tensors: safetensors, or a PyTorch checkpoint (`*.bin`, read by the
    /// restricted unpickler of TorchCheckpoint, which never runs code from the file).
    func open() throws -> any TensorSource {
        if weights.pathExtension == "safetensors" { return try SafetensorsFile(path: weights.path) }
        return try TorchCheckpoint(path: weights.path)
    }
}
