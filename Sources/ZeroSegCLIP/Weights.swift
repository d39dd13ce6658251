import Foundation
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegText

/// Hands out a checkpoint's tensors by their Hugging Face name (translated through `NameTable`
/// for OpenCLIP checkpoints), strictly: each shape is checked when taken, and `finish()` names every
/// tensor that was never taken. F32 tensors are used in place (memory-mapped); F16/BF16 and
/// transposed tensors are converted once into owned buffers. This is the one place where weight
/// layouts change.
final class WeightReader {
    let file: any TensorSource
    let layout: CheckpointLayout
    /// The precision the encoders' linear layers are packed for (oneDNN, on first use); nil:
    /// they run on the fp32 weights with OpenBLAS.
    let packing: Precision?
    private(set) var taken = Set<String>()
    var owned: [Buffer] = []

    init(_ file: any TensorSource, layout: CheckpointLayout = .huggingFace, packing: Precision? = nil) {
        self.file = file
        self.layout = layout
        self.packing = packing
    }

    /// A float tensor of the given shape, by its Hugging Face name.
    func take(_ hfName: String, _ shape: [Int]) throws -> ConstFloatPtr {
        guard layout == .openCLIP else { return try takeRaw(hfName, shape) }
        let name = NameTable.openCLIPName(hfName)
        guard NameTable.openCLIPTransposed.contains(hfName), shape.count == 2 else { return try takeRaw(name, shape) }
        // [P, W] wanted; OpenCLIP stores [W, P].
        let (p, w) = (shape[0], shape[1])
        let src = try takeRaw(name, [w, p])
        let b = Buffer(p * w)
        for i in 0..<p { for j in 0..<w { b.ptr[i * w + j] = src[j * p + i] } }
        owned.append(b)
        return ConstFloatPtr(b.ptr)
    }

    /// q, k, v projections fused into [3W, W] weights and [3W] biases (`prefix` = `....self_attn`).
    func qkv(_ prefix: String, width w: Int) throws -> (weight: ConstFloatPtr, bias: ConstFloatPtr) {
        if layout == .openCLIP {
            let p = NameTable.openCLIPName(prefix).replacingOccurrences(of: ".self_attn", with: ".attn")
            return (try takeRaw("\(p).in_proj_weight", [3 * w, w]), try takeRaw("\(p).in_proj_bias", [3 * w]))
        }
        let names = ["q_proj", "k_proj", "v_proj"]
        return (try stack(names.map { "\(prefix).\($0).weight" }, [w, w]), try stack(names.map { "\(prefix).\($0).bias" }, [w]))
    }

    private func info(_ name: String, _ shape: [Int]) throws -> TensorInfo {
        guard let info = file.tensors[name] else {
            throw ZeroSegError("checkpoint \((file.path as NSString).lastPathComponent) is missing tensor \(name) (expected shape \(shape))")
        }
        guard info.shape == shape else {
            throw ZeroSegError("tensor \(name) has shape \(info.shape), expected \(shape)")
        }
        guard [.f32, .f16, .bf16].contains(info.dtype) else {
            throw ZeroSegError("tensor \(name) has dtype \(info.dtype.rawValue), expected a float type")
        }
        taken.insert(name)
        return info
    }

    /// A float tensor of the given shape, by its name in the file.
    private func takeRaw(_ name: String, _ shape: [Int]) throws -> ConstFloatPtr {
        let info = try info(name, shape)
        let raw = file.rawPointer(info)
        if info.dtype == .f32, Int(bitPattern: raw) % 4 == 0 {
            return raw.assumingMemoryBound(to: Float.self)
        }
        let b = Buffer(SafetensorsFile.toFloats(raw, info.dtype, info.count))
        owned.append(b)
        return ConstFloatPtr(b.ptr)
    }

    /// Several tensors of the same trailing shape stacked into one owned buffer (e.g. q, k, v → qkv).
    private func stack(_ names: [String], _ shape: [Int]) throws -> ConstFloatPtr {
        let n = shape.reduce(1, *)
        let b = Buffer(n * names.count)
        for (i, name) in names.enumerated() {
            let info = try info(name, shape)
            let vals = SafetensorsFile.toFloats(file.rawPointer(info), info.dtype, n)
            vals.withUnsafeBufferPointer { (b.ptr + i * n).update(from: $0.baseAddress!, count: n) }
        }
        owned.append(b)
        return ConstFloatPtr(b.ptr)
    }

    /// An optional `position_ids` buffer (old transformers checkpoints carry it): must be 0..<n.
    func positionIDs(_ name: String, _ n: Int) throws {
        guard layout == .huggingFace, let info = file.tensors[name] else { return }
        let ids = try file.ints(name)
        guard ids == Array(0..<n), info.shape.reduce(1, *) == n else {
            throw ZeroSegError("tensor \(name) is not the expected 0..<\(n) position ids")
        }
        taken.insert(name)
    }

    func finish() throws {
        // OpenCLIP's causal mask buffer, when a checkpoint carries it, is rebuilt, not read.
        if layout == .openCLIP, file.tensors["attn_mask"] != nil { taken.insert("attn_mask") }
        let extra = Set(file.tensors.keys).subtracting(taken).sorted()
        if !extra.isEmpty {
            let shown = extra.prefix(5).joined(separator: ", ")
            throw ZeroSegError("checkpoint has \(extra.count) unexpected tensor(s): \(shown)\(extra.count > 5 ? ", ..." : "")")
        }
    }
}

/// nn.Linear: weight [out, in], optional bias [out]. The fp32 weights stay as loaded (the
/// backward passes and the fallback read them); with `packing`, forward products run on a copy
/// packed for oneDNN at the model's precision, made on first use.
public struct Linear: @unchecked Sendable {
    public let weight: ConstFloatPtr
    public let bias: ConstFloatPtr?
    public let outFeatures: Int, inFeatures: Int
    public let packing: LazyPackedWeights?

    init(_ r: WeightReader, _ prefix: String, out: Int, in inF: Int, bias hasBias: Bool = true) throws {
        let w = try r.take("\(prefix).weight", [out, inF])
        self.init(weight: w, bias: hasBias ? try r.take("\(prefix).bias", [out]) : nil, out: out, in: inF, packing: r.packing)
    }

    init(weight: ConstFloatPtr, bias: ConstFloatPtr?, out: Int, in inF: Int, packing: Precision?) {
        self.weight = weight; self.bias = bias; outFeatures = out; inFeatures = inF
        self.packing = packing.map { LazyPackedWeights(weight, out: out, in: inF, precision: $0) }
    }

    /// out[M, out] = x[M, in] · Wᵀ + b (accumulate: out += ...); `ldo`: out's row stride.
    package func callAsFunction(_ x: ConstFloatPtr, _ out: FloatPtr, rows: Int, ldo: Int? = nil, accumulate: Bool = false) {
        if let packed = packing?.packed {
            packed.linear(x, bias, out, m: rows, ldo: ldo, accumulate: accumulate)
        } else {
            ZeroSegCore.linear(x, weight, bias, out, m: rows, n: outFeatures, k: inFeatures, ldo: ldo, accumulate: accumulate)
        }
    }
}

/// nn.LayerNorm: weight [dim], bias [dim].
public struct LayerNorm: @unchecked Sendable {
    public let weight: ConstFloatPtr, bias: ConstFloatPtr
    public let dim: Int
    public let eps: Float

    init(_ r: WeightReader, _ prefix: String, dim: Int, eps: Double) throws {
        weight = try r.take("\(prefix).weight", [dim])
        bias = try r.take("\(prefix).bias", [dim])
        self.dim = dim; self.eps = Float(eps)
    }

    package func callAsFunction(_ x: ConstFloatPtr, _ out: FloatPtr, rows: Int) {
        layerNorm(x, weight, bias, out, rows: rows, cols: dim, eps: eps)
    }
}

/// CLIPAttention with q, k, v fused into one [3W, W] product (the one layout change made at load).
public struct Attention: @unchecked Sendable {
    public let qkv: Linear
    public let outProj: Linear
    public let heads: Int

    init(_ r: WeightReader, _ prefix: String, width w: Int, heads: Int) throws {
        let (wt, b) = try r.qkv(prefix, width: w)
        qkv = Linear(weight: wt, bias: b, out: 3 * w, in: w, packing: r.packing)
        outProj = try Linear(r, "\(prefix).out_proj", out: w, in: w)
        self.heads = heads
    }
}

/// CLIPEncoderLayer: pre-LN attention and MLP, each with a residual.
public struct EncoderLayer: @unchecked Sendable {
    public let layerNorm1: LayerNorm
    public let selfAttn: Attention
    public let layerNorm2: LayerNorm
    public let fc1: Linear, fc2: Linear
    public let act: Activation

    init(_ r: WeightReader, _ prefix: String, width w: Int, intermediate: Int, heads: Int, act: Activation, eps: Double) throws {
        layerNorm1 = try LayerNorm(r, "\(prefix).layer_norm1", dim: w, eps: eps)
        selfAttn = try Attention(r, "\(prefix).self_attn", width: w, heads: heads)
        layerNorm2 = try LayerNorm(r, "\(prefix).layer_norm2", dim: w, eps: eps)
        fc1 = try Linear(r, "\(prefix).mlp.fc1", out: intermediate, in: w)
        fc2 = try Linear(r, "\(prefix).mlp.fc2", out: w, in: intermediate)
        self.act = act
    }
}

/// CLIPTextTransformer (`text_model.*`).
public struct TextModel: @unchecked Sendable {
    public let config: TextConfig
    public let tokenEmbedding: ConstFloatPtr     // [V, W]
    public let positionEmbedding: ConstFloatPtr  // [P, W]
    public let layers: [EncoderLayer]
    public let finalLayerNorm: LayerNorm

    init(_ r: WeightReader, _ c: TextConfig) throws {
        config = c
        let w = c.hiddenSize
        tokenEmbedding = try r.take("text_model.embeddings.token_embedding.weight", [c.vocabSize, w])
        positionEmbedding = try r.take("text_model.embeddings.position_embedding.weight", [c.maxPositionEmbeddings, w])
        try r.positionIDs("text_model.embeddings.position_ids", c.maxPositionEmbeddings)
        layers = try (0..<c.numHiddenLayers).map {
            try EncoderLayer(r, "text_model.encoder.layers.\($0)", width: w, intermediate: c.intermediateSize,
                             heads: c.numAttentionHeads, act: c.hiddenAct, eps: c.layerNormEps)
        }
        finalLayerNorm = try LayerNorm(r, "text_model.final_layer_norm", dim: w, eps: c.layerNormEps)
    }
}

/// CLIPVisionTransformer (`vision_model.*`).
public struct VisionModel: @unchecked Sendable {
    public let config: VisionConfig
    public let classEmbedding: ConstFloatPtr     // [W]
    public let patchEmbedding: ConstFloatPtr     // [W, 3·p·p] (conv weight [W, 3, p, p] flattened)
    public let positionEmbedding: ConstFloatPtr  // [G·G + 1, W]
    public let preLayrnorm: LayerNorm
    public let layers: [EncoderLayer]
    public let postLayernorm: LayerNorm

    init(_ r: WeightReader, _ c: VisionConfig) throws {
        config = c
        let w = c.hiddenSize, p = c.patchSize
        classEmbedding = try r.take("vision_model.embeddings.class_embedding", [w])
        patchEmbedding = try r.take("vision_model.embeddings.patch_embedding.weight", [w, c.numChannels, p, p])
        positionEmbedding = try r.take("vision_model.embeddings.position_embedding.weight", [c.gridSize * c.gridSize + 1, w])
        try r.positionIDs("vision_model.embeddings.position_ids", c.gridSize * c.gridSize + 1)
        preLayrnorm = try LayerNorm(r, "vision_model.pre_layrnorm", dim: w, eps: c.layerNormEps)
        layers = try (0..<c.numHiddenLayers).map {
            try EncoderLayer(r, "vision_model.encoder.layers.\($0)", width: w, intermediate: c.intermediateSize,
                             heads: c.numAttentionHeads, act: c.hiddenAct, eps: c.layerNormEps)
        }
        postLayernorm = try LayerNorm(r, "vision_model.post_layernorm", dim: w, eps: c.layerNormEps)
    }
}
