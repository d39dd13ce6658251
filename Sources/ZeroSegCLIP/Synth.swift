import Foundation
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegText

/// Seeded random CLIP checkpoints in the Hugging Face layout, for tests, benchmarks and machines
/// without real weights. Bit-for-bit the same generator as scripts/reference/synth.py.
public enum SyntheticArch: String, CaseIterable, Sendable {
    case vitB16 = "vit-b-16", vitB32 = "vit-b-32", tiny = "tiny"

    public var config: CLIPConfig {
        var c = CLIPConfig()
        switch self {
        case .vitB16, .vitB32:
            c.vision.patchSize = self == .vitB16 ? 16 : 32
        case .tiny:
            c.text.hiddenSize = 32; c.text.intermediateSize = 64; c.text.numHiddenLayers = 2; c.text.numAttentionHeads = 4
            c.vision.hiddenSize = 48; c.vision.intermediateSize = 96; c.vision.numHiddenLayers = 2
            c.vision.numAttentionHeads = 4; c.vision.imageSize = 64; c.vision.patchSize = 16; c.vision.hiddenAct = .gelu
            c.projectionDim = 24
        }
        return c
    }
}

extension Synth {
    /// The tensors of an HF CLIPModel with the given config, in the generator's per-kind ranges.
    public static func tensors(config cfg: CLIPConfig, seed: UInt64) -> [(name: String, shape: [Int], data: [Float])] {
        var out: [(name: String, shape: [Int], data: [Float])] = []
        func add(_ name: String, _ shape: [Int], _ a: Double, _ c: Double = 0) {
            out.append((name, shape, values(name: name, seed: seed, count: shape.reduce(1, *), amplitude: a, offset: c)))
        }
        func linear(_ p: String, _ o: Int, _ i: Int, bias: Bool = true) {
            add("\(p).weight", [o, i], 1 / Double(i).squareRoot())
            if bias { add("\(p).bias", [o], 0.02) }
        }
        func norm(_ p: String, _ d: Int) { add("\(p).weight", [d], 0.1, 1.0); add("\(p).bias", [d], 0.02) }
        func layers(_ p: String, _ n: Int, _ w: Int, _ m: Int) {
            for l in 0..<n {
                let q = "\(p).encoder.layers.\(l)"
                for s in ["q_proj", "k_proj", "v_proj", "out_proj"] { linear("\(q).self_attn.\(s)", w, w) }
                norm("\(q).layer_norm1", w)
                linear("\(q).mlp.fc1", m, w)
                linear("\(q).mlp.fc2", w, m)
                norm("\(q).layer_norm2", w)
            }
        }
        let t = cfg.text, v = cfg.vision
        add("text_model.embeddings.token_embedding.weight", [t.vocabSize, t.hiddenSize], 0.05)
        add("text_model.embeddings.position_embedding.weight", [t.maxPositionEmbeddings, t.hiddenSize], 0.05)
        layers("text_model", t.numHiddenLayers, t.hiddenSize, t.intermediateSize)
        norm("text_model.final_layer_norm", t.hiddenSize)
        add("vision_model.embeddings.class_embedding", [v.hiddenSize], 0.05)
        add("vision_model.embeddings.patch_embedding.weight", [v.hiddenSize, 3, v.patchSize, v.patchSize],
            1 / Double(3 * v.patchSize * v.patchSize).squareRoot())
        add("vision_model.embeddings.position_embedding.weight", [v.gridSize * v.gridSize + 1, v.hiddenSize], 0.05)
        norm("vision_model.pre_layrnorm", v.hiddenSize)
        layers("vision_model", v.numHiddenLayers, v.hiddenSize, v.intermediateSize)
        norm("vision_model.post_layernorm", v.hiddenSize)
        linear("visual_projection", cfg.projectionDim, v.hiddenSize, bias: false)
        linear("text_projection", cfg.projectionDim, t.hiddenSize, bias: false)
        out.append(("logit_scale", [], [Float(2.6592)]))
        return out
    }

    /// Writes a complete HF-layout checkpoint directory (config, weights, tokenizer files,
    /// preprocessor config). The weights carry `zeroseg_synthetic` in their metadata.
    public static func write(arch: SyntheticArch, seed: UInt64, to dir: URL) throws {
        let fm = FileManager.default
        do { try fm.createDirectory(at: dir, withIntermediateDirectories: true) }
        catch { throw ZeroSegError("cannot create \(dir.path): \(error.localizedDescription)") }
        let cfg = arch.config
        let tok = try Tokenizer(bpeGzip: Tokenizer.defaultVocabURL())
        try tok.writeHF(vocabJSON: dir.appendingPathComponent("vocab.json"), merges: dir.appendingPathComponent("merges.txt"))
        try writeJSON(cfg.json(), to: dir.appendingPathComponent("config.json"))
        try writeJSON(PreprocessorConfig(imageSize: cfg.vision.imageSize).json(),
                      to: dir.appendingPathComponent("preprocessor_config.json"))
        try writeJSON(["bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                       "pad_token": "<|endoftext|>", "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"],
                      to: dir.appendingPathComponent("tokenizer_config.json"))
        let meta = ["format": "pt", "zeroseg_synthetic": "{\"arch\": \"\(arch.rawValue)\", \"seed\": \(seed)}"]
        try SafetensorsFile.write(tensors(config: cfg, seed: seed), metadata: meta, to: dir.appendingPathComponent("model.safetensors"))
    }
}

func writeJSON(_ obj: Any, to url: URL) throws {
    let data = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])
    try writeDataAtomically(data, to: url)
}
