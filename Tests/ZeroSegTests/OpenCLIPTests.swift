import Foundation
import Testing
@testable import ZeroSegCore
@testable import ZeroSegFormats
@testable import ZeroSegImaging
@testable import ZeroSegText
@testable import ZeroSegCLIP
@testable import ZeroSegHub
@testable import ZeroSegSegmentation
@testable import ZeroSegTuning

// OpenCLIP checkpoints: a small random open_clip CLIP (Fixtures/checkpoints/openclip, made by
// scripts/reference/make_openclip_fixtures.py) in each file format, loaded with CLIPModel(directory:)
// and compared with open_clip's own encode_text / encode_image.

private let openCLIPDir: URL = Bundle.module.resourceURL!.appendingPathComponent("Fixtures/checkpoints/openclip")
private let checkpointsDir: URL = Bundle.module.resourceURL!.appendingPathComponent("Fixtures/checkpoints")

/// A directory holding the named fixture files (copies), as a model directory would.
private func modelDir(_ files: [String], renaming: [String: String] = [:]) throws -> URL {
    let dir = temporaryDirectory("zeroseg-openclip")
    for f in files {
        try FileManager.default.copyItem(at: openCLIPDir.appendingPathComponent(f),
                                         to: dir.appendingPathComponent(renaming[f] ?? f))
    }
    return dir
}

private struct Reference {
    let texts: [String]
    let ids: [[Int32]]
    let text: [[Float]]
    let pixels: [Float]
    let image: [[Float]]
    let logitScale: Float

    static let shared: Reference = {
        let url = openCLIPDir.appendingPathComponent("openclip_reference.json")
        let r = try! JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        func rows(_ k: String) -> [[Float]] { (r[k] as! [[NSNumber]]).map { $0.map(\.floatValue) } }
        return Reference(texts: r["texts"] as! [String],
                         ids: (r["token_ids"] as! [[NSNumber]]).map { $0.map { Int32($0.intValue) } },
                         text: rows("text_embeds"), pixels: (r["pixel_values"] as! [NSNumber]).map(\.floatValue),
                         image: rows("image_embeds"), logitScale: (r["logit_scale"] as! NSNumber).floatValue)
    }()
}

/// Largest |difference| between the model's unnormalised embeddings and open_clip's.
private func embeddingError(_ model: CLIPModel) throws -> (text: Float, image: Float) {
    let ref = Reference.shared
    #expect(model.tokenize(ref.texts) == ref.ids)
    let text = try model.encodeTokens(ref.ids, normalize: false, threads: 1)
    let image = try ref.pixels.withUnsafeBufferPointer {
        try model.encodePixels($0.baseAddress!, batch: ref.image.count, height: 32, width: 32, normalize: false, threads: 1)
    }
    #expect(text.count == ref.text.count && image.count == ref.image.count)
    let t = zip(text, ref.text).map { maxAbsDiff($0, $1) }.max() ?? .infinity
    let i = zip(image, ref.image).map { maxAbsDiff($0, $1) }.max() ?? .infinity
    return (t, i)
}

@Suite struct OpenCLIPTests {
    /// Tolerance: 1e-5 absolute on embeddings of magnitude ~1 (float32 all through, different summation orders).
    static let tolerance: Float = 1e-5

    /// Each format on its own: the OpenCLIP names (safetensors, .bin) and the same weights under transformers' names.
    @Test(arguments: [
        (["open_clip_config.json", "open_clip_model.safetensors"], CheckpointLayout.openCLIP),
        (["open_clip_config.json", "open_clip_pytorch_model.bin"], CheckpointLayout.openCLIP),
        (["config.json", "pytorch_model.bin"], CheckpointLayout.huggingFace),
    ])
    func embeddingsMatchOpenCLIP(_ files: [String], _ layout: CheckpointLayout) throws {
        let model = try CLIPModel(directory: modelDir(files))
        #expect(model.layout == layout && !model.isSynthetic)
        #expect(model.config.projectionDim == 8 && model.config.vision.numAttentionHeads == 2 && model.config.text.numAttentionHeads == 2)
        #expect(model.config.text.hiddenAct == .quickGELU && model.config.vision.hiddenAct == .quickGELU)
        #expect(model.logitScale == Reference.shared.logitScale)
        let err = try embeddingError(model)
        print("OpenCLIP fixture \(files[1]): max abs error text \(err.text), image \(err.image) (tolerance \(Self.tolerance))")
        #expect(err.text < Self.tolerance && err.image < Self.tolerance, "\(files[1]): \(err)")
    }

    /// The OpenCLIP config's preprocessing settings are taken.
    @Test func preprocessFromOpenCLIPConfig() throws {
        let files = try CheckpointFiles(directory: modelDir(["open_clip_config.json", "open_clip_model.safetensors"]))
        #expect(files.preprocessor.shortestEdge == 32 && files.preprocessor.cropSize == 32)
        #expect(files.preprocessor.mean == [0.48145466, 0.4578275, 0.40821073])
        #expect(files.preprocessor.std == [0.26862954, 0.26130258, 0.27577711])
        // quick_gelu false (or absent): GELU, as open_clip's LAION-trained models
        let dir = try modelDir(["open_clip_model.safetensors"])
        var cfg = try JSONSerialization.jsonObject(with: Data(contentsOf: openCLIPDir.appendingPathComponent("open_clip_config.json"))) as! [String: Any]
        var m = cfg["model_cfg"] as! [String: Any]
        m["quick_gelu"] = false
        cfg["model_cfg"] = m
        try JSONSerialization.data(withJSONObject: cfg).write(to: dir.appendingPathComponent("open_clip_config.json"))
        let gelu = try CheckpointFiles(directory: dir)
        #expect(gelu.config.text.hiddenAct == .gelu && gelu.config.vision.hiddenAct == .gelu)
    }

    /// Preference: model.safetensors, open_clip_model.safetensors, pytorch_model.bin, open_clip_pytorch_model.bin;
    /// a weights file counts only with its layout's config.
    @Test func preferenceOrder() throws {
        func pick(_ files: [String], renaming: [String: String] = [:]) throws -> String {
            let f = try CheckpointFiles(directory: modelDir(files, renaming: renaming))
            return "\(f.weights.lastPathComponent) \(f.layout.rawValue)"
        }
        let all = ["config.json", "open_clip_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin"]
        // safetensors before .bin, whichever naming
        #expect(try pick(all) == "open_clip_model.safetensors open_clip")
        #expect(try pick(["open_clip_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin"]) == "open_clip_model.safetensors open_clip")
        #expect(try pick(["config.json", "pytorch_model.bin", "open_clip_config.json", "open_clip_model.safetensors"]) == "open_clip_model.safetensors open_clip")
        // HF names first among equals
        #expect(try pick(["config.json", "pytorch_model.bin", "open_clip_config.json", "open_clip_pytorch_model.bin"]) == "pytorch_model.bin hf")
        // without config.json, pytorch_model.bin is not a candidate
        #expect(try pick(["open_clip_config.json", "pytorch_model.bin", "open_clip_pytorch_model.bin"]) == "open_clip_pytorch_model.bin open_clip")
        // the fixture directory as it is (every format): loads the preferred file and gives open_clip's numbers
        let model = try CLIPModel(directory: openCLIPDir)
        #expect(model.layout == .openCLIP)
        let err = try embeddingError(model)
        #expect(err.text < Self.tolerance && err.image < Self.tolerance, "\(err)")
        // no weights at all
        let e = #expect(throws: ZeroSegError.self) { try CheckpointFiles(directory: modelDir(["open_clip_config.json", "pytorch_model.bin"])) }
        #expect(e?.message.hasSuffix("has no weights (looked for open_clip_model.safetensors, open_clip_pytorch_model.bin)") == true, "\(e?.message ?? "")")
    }

    /// A weights file named as the other layout's is refused by name (strict loading), not misread.
    @Test func mismatchedNamesAreRefused() throws {
        let dir = try modelDir(["open_clip_config.json", "pytorch_model.bin"], renaming: ["pytorch_model.bin": "open_clip_pytorch_model.bin"])
        let e = #expect(throws: ZeroSegError.self) { try CLIPModel(directory: dir) }
        #expect(e?.message.contains("is missing tensor") == true, "\(e?.message ?? "")")
    }

    /// A malicious pickle in a model directory is refused when the model loads; nothing runs.
    @Test func maliciousBinInAModelDirectory() throws {
        let marker = "/tmp/zeroseg_torchcheckpoint_pwned_marker"
        try? FileManager.default.removeItem(atPath: marker)
        for (evil, name, config) in [("evil_global.pt", "pytorch_model.bin", "config.json"),
                                     ("evil_stack_global.pt", "open_clip_pytorch_model.bin", "open_clip_config.json"),
                                     ("evil_eval.pt", "pytorch_model.bin", "config.json")] {
            let dir = try modelDir([config])
            try FileManager.default.copyItem(at: checkpointsDir.appendingPathComponent(evil), to: dir.appendingPathComponent(name))
            let e = #expect(throws: ZeroSegError.self) { try CLIPModel(directory: dir) }
            #expect(e?.message.hasPrefix("refusing to load \(name): pickle asks for ") == true, "\(e?.message ?? "")")
        }
        #expect(!FileManager.default.fileExists(atPath: marker), "a malicious pickle was executed")
    }

    /// open_clip_config.json options that would make a different model are refused by name.
    @Test func unsupportedOpenCLIPConfigsAreRefused() throws {
        let base = try JSONSerialization.jsonObject(with: Data(contentsOf: openCLIPDir.appendingPathComponent("open_clip_config.json"))) as! [String: Any]
        func message(_ edit: (inout [String: Any], inout [String: Any], inout [String: Any], inout [String: Any]) -> Void) throws -> String {
            var root = base
            var m = root["model_cfg"] as! [String: Any], v = m["vision_cfg"] as! [String: Any], t = m["text_cfg"] as! [String: Any]
            var p = root["preprocess_cfg"] as! [String: Any]
            edit(&m, &v, &t, &p)
            m["vision_cfg"] = v; m["text_cfg"] = t; root["model_cfg"] = m; root["preprocess_cfg"] = p
            let dir = try modelDir(["open_clip_model.safetensors"])
            try JSONSerialization.data(withJSONObject: root).write(to: dir.appendingPathComponent("open_clip_config.json"))
            do { _ = try CheckpointFiles(directory: dir); return "" } catch { return "\(error)" }
        }
        #expect(try message { _, _, _, _ in } == "")
        #expect(try message { _, v, _, _ in v["block_type"] = "default"; v["qk_norm"] = false; v["pos_embed_type"] = "learnable" } == "")
        let cases: [(String, (inout [String: Any], inout [String: Any], inout [String: Any], inout [String: Any]) -> Void)] = [
            ("model_cfg.custom_text is not supported", { m, _, _, _ in m["custom_text"] = true }),
            ("model_cfg.init_logit_bias is not supported", { m, _, _, _ in m["init_logit_bias"] = -10 }),
            ("model_cfg.multimodal_cfg is not supported", { m, _, _, _ in m["multimodal_cfg"] = ["width": 8] }),
            ("text_cfg.hf_tokenizer_name is not supported", { _, _, t, _ in t["hf_tokenizer_name"] = "facebook/xlm-v-base" }),
            ("text_cfg.tokenizer_kwargs is not supported", { _, _, t, _ in t["tokenizer_kwargs"] = ["clean": "canonicalize"] }),
            ("text_cfg.pool_type last is not supported", { _, _, t, _ in t["pool_type"] = "last" }),
            ("text_cfg.pool_type eos is not supported", { _, _, t, _ in t["pool_type"] = "eos" }),
            ("text_cfg.proj_type none is not supported", { _, _, t, _ in t["proj_type"] = "none" }),
            ("text_cfg.no_causal_mask is not supported", { _, _, t, _ in t["no_causal_mask"] = true }),
            ("text_cfg.final_ln_after_pool is not supported", { _, _, t, _ in t["final_ln_after_pool"] = true }),
            ("text_cfg.norm_kwargs is not supported", { _, _, t, _ in t["norm_kwargs"] = ["eps": 1e-6] }),
            ("vision_cfg.ls_init_value is not supported", { _, v, _, _ in v["ls_init_value"] = 1e-4 }),
            ("vision_cfg.timm_model_name is not supported", { _, v, _, _ in v["timm_model_name"] = "vit_base_patch16_siglip_224" }),
            ("vision_cfg.qk_norm is not supported", { _, v, _, _ in v["qk_norm"] = true }),
            ("vision_cfg.block_type is not supported", { _, v, _, _ in v["block_type"] = "custom" }),
            ("vision_cfg.pos_embed_type sin_cos_2d is not supported", { _, v, _, _ in v["pos_embed_type"] = "sin_cos_2d" }),
            ("vision_cfg.pool_type avg is not supported", { _, v, _, _ in v["pool_type"] = "avg" }),
            ("a ResNet image tower (vision_cfg.layers is a list) is not supported", { _, v, _, _ in v["layers"] = [3, 4, 6, 3] }),
            ("a non-square vision_cfg.image_size 32x64 is not supported", { _, v, _, _ in v["image_size"] = [32, 64] }),
            ("layers is missing or not a whole number", { _, v, _, _ in v["layers"] = true }),
            ("width is missing or not a whole number", { _, _, t, _ in t["width"] = 4.5 }),
            ("vision_cfg.width 16 is not a multiple of head_width 6", { _, v, _, _ in v["head_width"] = 6 }),
            ("quick_gelu is not true or false", { m, _, _, _ in m["quick_gelu"] = "yes" }),
            ("preprocess_cfg.resize_mode squash is not supported", { _, _, _, p in p["resize_mode"] = "squash" }),
            ("preprocess_cfg.interpolation bilinear is not supported", { _, _, _, p in p["interpolation"] = "bilinear" }),
            ("preprocess_cfg.std is not three positive numbers", { _, _, _, p in p["std"] = [0.2, 0, 0.2] }),
        ]
        for (want, edit) in cases {
            let got = try message(edit)
            #expect(got.hasPrefix("open_clip_config.json: ") && got.contains(want), "expected \"\(want)\", got \"\(got)\"")
        }
        // a square [n, n] image size is fine
        #expect(try message { _, v, _, _ in v["image_size"] = [32, 32] } == "")
    }
}
