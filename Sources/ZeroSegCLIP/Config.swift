import Foundation
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegText


/// `text_config` of a Hugging Face `config.json` (missing keys take transformers' CLIPTextConfig defaults).
public struct TextConfig: Sendable, Equatable {
    public var vocabSize = 49408
    public var hiddenSize = 512
    public var intermediateSize = 2048
    public var numHiddenLayers = 12
    public var numAttentionHeads = 8
    public var maxPositionEmbeddings = 77
    public var hiddenAct = Activation.quickGELU
    public var layerNormEps = 1e-5
    public var eosTokenId = 49407
    public init() {}
}

/// `vision_config` of a Hugging Face `config.json` (missing keys take CLIPVisionConfig defaults).
public struct VisionConfig: Sendable, Equatable {
    public var hiddenSize = 768
    public var intermediateSize = 3072
    public var numHiddenLayers = 12
    public var numAttentionHeads = 12
    public var numChannels = 3
    public var imageSize = 224
    public var patchSize = 32
    public var hiddenAct = Activation.quickGELU
    public var layerNormEps = 1e-5
    public init() {}
    public var gridSize: Int { imageSize / patchSize }
}

/// A CLIP model's `config.json` in the Hugging Face layout.
public struct CLIPConfig: Sendable, Equatable {
    public var text = TextConfig()
    public var vision = VisionConfig()
    public var projectionDim = 512
    public var logitScaleInitValue = 2.6592
    public init() {}

    public static func load(_ url: URL) throws -> CLIPConfig {
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw ZeroSegError("cannot read \(url.path)")
        }
        return try parse(data, source: url.lastPathComponent)
    }

    public static func parse(_ data: Data, source: String = "config.json") throws -> CLIPConfig {
        guard let root = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw ZeroSegError("\(source) is not a JSON object")
        }
        var c = CLIPConfig()
        let r = Reader(dict: root, source: source)
        c.projectionDim = try r.int("projection_dim") ?? c.projectionDim
        c.logitScaleInitValue = try r.double("logit_scale_init_value") ?? c.logitScaleInitValue
        if let t = root["text_config"] as? [String: Any] {
            let r = Reader(dict: t, source: "\(source) text_config")
            c.text.vocabSize = try r.int("vocab_size") ?? c.text.vocabSize
            c.text.hiddenSize = try r.int("hidden_size") ?? c.text.hiddenSize
            c.text.intermediateSize = try r.int("intermediate_size") ?? c.text.intermediateSize
            c.text.numHiddenLayers = try r.int("num_hidden_layers") ?? c.text.numHiddenLayers
            c.text.numAttentionHeads = try r.int("num_attention_heads") ?? c.text.numAttentionHeads
            c.text.maxPositionEmbeddings = try r.int("max_position_embeddings") ?? c.text.maxPositionEmbeddings
            c.text.hiddenAct = try r.activation("hidden_act") ?? c.text.hiddenAct
            c.text.layerNormEps = try r.double("layer_norm_eps") ?? c.text.layerNormEps
            c.text.eosTokenId = try r.int("eos_token_id") ?? c.text.eosTokenId
        } else if root["text_config"] != nil {
            throw ZeroSegError("\(source): text_config is not an object")
        }
        if let v = root["vision_config"] as? [String: Any] {
            let r = Reader(dict: v, source: "\(source) vision_config")
            c.vision.hiddenSize = try r.int("hidden_size") ?? c.vision.hiddenSize
            c.vision.intermediateSize = try r.int("intermediate_size") ?? c.vision.intermediateSize
            c.vision.numHiddenLayers = try r.int("num_hidden_layers") ?? c.vision.numHiddenLayers
            c.vision.numAttentionHeads = try r.int("num_attention_heads") ?? c.vision.numAttentionHeads
            c.vision.numChannels = try r.int("num_channels") ?? c.vision.numChannels
            c.vision.imageSize = try r.int("image_size") ?? c.vision.imageSize
            c.vision.patchSize = try r.int("patch_size") ?? c.vision.patchSize
            c.vision.hiddenAct = try r.activation("hidden_act") ?? c.vision.hiddenAct
            c.vision.layerNormEps = try r.double("layer_norm_eps") ?? c.vision.layerNormEps
        } else if root["vision_config"] != nil {
            throw ZeroSegError("\(source): vision_config is not an object")
        }
        try c.validate(source: source)
        return c
    }

    func validate(source: String) throws {
        func check(_ ok: Bool, _ what: String) throws { if !ok { throw ZeroSegError("\(source): \(what)") } }
        for (name, v) in [("text hidden_size", text.hiddenSize), ("text intermediate_size", text.intermediateSize),
                          ("text num_hidden_layers", text.numHiddenLayers), ("text num_attention_heads", text.numAttentionHeads),
                          ("max_position_embeddings", text.maxPositionEmbeddings), ("vocab_size", text.vocabSize),
                          ("vision hidden_size", vision.hiddenSize), ("vision intermediate_size", vision.intermediateSize),
                          ("vision num_hidden_layers", vision.numHiddenLayers), ("vision num_attention_heads", vision.numAttentionHeads),
                          ("image_size", vision.imageSize), ("patch_size", vision.patchSize), ("projection_dim", projectionDim)] {
            try check(v > 0 && v < 1 << 24, "\(name) = \(v) is out of range")
        }
        try check(text.hiddenSize % text.numAttentionHeads == 0, "text hidden_size is not divisible by num_attention_heads")
        try check(vision.hiddenSize % vision.numAttentionHeads == 0, "vision hidden_size is not divisible by num_attention_heads")
        try check(vision.imageSize % vision.patchSize == 0, "image_size is not a multiple of patch_size")
        try check(vision.numChannels == 3, "num_channels must be 3")
    }

    /// The JSON transformers writes for such a config (enough keys for `CLIPModel.from_pretrained`).
    public func json() -> [String: Any] {
        [
            "architectures": ["CLIPModel"], "model_type": "clip",
            "projection_dim": projectionDim, "logit_scale_init_value": logitScaleInitValue,
            "text_config": [
                "model_type": "clip_text_model",
                "vocab_size": text.vocabSize, "hidden_size": text.hiddenSize, "intermediate_size": text.intermediateSize,
                "num_hidden_layers": text.numHiddenLayers, "num_attention_heads": text.numAttentionHeads,
                "max_position_embeddings": text.maxPositionEmbeddings, "hidden_act": text.hiddenAct.rawValue,
                "layer_norm_eps": text.layerNormEps, "projection_dim": projectionDim,
                "bos_token_id": 49406, "eos_token_id": text.eosTokenId, "pad_token_id": 1,
            ] as [String: Any],
            "vision_config": [
                "model_type": "clip_vision_model",
                "hidden_size": vision.hiddenSize, "intermediate_size": vision.intermediateSize,
                "num_hidden_layers": vision.numHiddenLayers, "num_attention_heads": vision.numAttentionHeads,
                "num_channels": vision.numChannels, "image_size": vision.imageSize, "patch_size": vision.patchSize,
                "hidden_act": vision.hiddenAct.rawValue, "layer_norm_eps": vision.layerNormEps,
                "projection_dim": projectionDim,
            ] as [String: Any],
        ]
    }
}

private struct Reader {
    let dict: [String: Any]
    let source: String
    func int(_ key: String) throws -> Int? {
        guard let v = dict[key], !(v is NSNull) else { return nil }
        guard let n = v as? NSNumber, n.doubleValue == Double(n.intValue) else {
            throw ZeroSegError("\(source): \(key) is not an integer")
        }
        return n.intValue
    }
    func double(_ key: String) throws -> Double? {
        guard let v = dict[key], !(v is NSNull) else { return nil }
        guard let n = v as? NSNumber else { throw ZeroSegError("\(source): \(key) is not a number") }
        return n.doubleValue
    }
    func activation(_ key: String) throws -> Activation? {
        guard let v = dict[key], !(v is NSNull) else { return nil }
        guard let s = v as? String, let a = Activation(rawValue: s) else {
            throw ZeroSegError.unsupported("\(source): unsupported \(key) \(v) (supported: quick_gelu, gelu, gelu_pytorch_tanh, gelu_new)")
        }
        return a
    }
}

/// `preprocessor_config.json` (CLIPImageProcessor): the few keys CLIP preprocessing depends on.
public struct PreprocessorConfig: Sendable, Equatable {
    public var shortestEdge: Int
    public var cropSize: Int
    public var mean: [Float] = [0.48145466, 0.4578275, 0.40821073]
    public var std: [Float] = [0.26862954, 0.26130258, 0.27577711]

    public init(imageSize: Int) { shortestEdge = imageSize; cropSize = imageSize }

    public static func load(_ url: URL, imageSize: Int) throws -> PreprocessorConfig {
        guard FileManager.default.fileExists(atPath: url.path) else { return PreprocessorConfig(imageSize: imageSize) }
        return try parse(FileManager.default.contents(atPath: url.path), name: url.lastPathComponent, imageSize: imageSize)
    }

    /// The file's contents (nil: unreadable); `name` names it in errors.
    static func parse(_ data: Data?, name: String, imageSize: Int) throws -> PreprocessorConfig {
        var p = PreprocessorConfig(imageSize: imageSize)
        guard let data, let root = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
        else { throw ZeroSegError("\(name) is not a JSON object") }
        func num(_ v: Any?) -> Int? { (v as? NSNumber)?.intValue }
        if let s = root["size"] {
            if let d = s as? [String: Any] { p.shortestEdge = num(d["shortest_edge"]) ?? num(d["height"]) ?? p.shortestEdge }
            else if let n = num(s) { p.shortestEdge = n }
        }
        if let s = root["crop_size"] {
            if let d = s as? [String: Any] { p.cropSize = num(d["height"]) ?? p.cropSize }
            else if let n = num(s) { p.cropSize = n }
        }
        if let m = root["image_mean"] as? [NSNumber], m.count == 3 { p.mean = m.map { $0.floatValue } }
        if let s = root["image_std"] as? [NSNumber], s.count == 3 { p.std = s.map { $0.floatValue } }
        guard p.shortestEdge > 0, p.cropSize > 0, p.std.allSatisfy({ $0 > 0 }) else {
            throw ZeroSegError("\(name): bad size, crop_size or image_std")
        }
        return p
    }

    public func json() -> [String: Any] {
        ["image_processor_type": "CLIPImageProcessor", "do_resize": true, "size": ["shortest_edge": shortestEdge],
         "resample": 3, "do_center_crop": true, "crop_size": ["height": cropSize, "width": cropSize],
         "do_rescale": true, "rescale_factor": 1.0 / 255.0, "do_normalize": true,
         "image_mean": mean.map { Double($0) }, "image_std": std.map { Double($0) }, "do_convert_rgb": true]
    }
}
