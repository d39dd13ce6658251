import Foundation
import Testing
import ZeroSeg

// PyTorch checkpoints (TorchCheckpoint, Pickle, Zip) against fixtures made by
// scripts/reference/make_checkpoint_fixtures.py (see Fixtures/checkpoints/README.md), and against
// zips and pickles crafted below.

private let checkpointsDir: URL = Bundle.module.resourceURL!.appendingPathComponent("Fixtures/checkpoints")
private func fixture(_ name: String) -> String { checkpointsDir.appendingPathComponent(name).path }
/// The file the malicious fixtures' pickles would create if anything ever ran them.
private let marker = "/tmp/zeroseg_torchcheckpoint_pwned_marker"

private func loadError(_ path: String) -> String {
    do { _ = try TorchCheckpoint(path: path); return "" } catch { return "\(error)" }
}

private func json(_ name: String) throws -> Any {
    try JSONSerialization.jsonObject(with: Data(contentsOf: checkpointsDir.appendingPathComponent(name)))
}

// MARK: - crafting zips and pickles

private let crcTable: [UInt32] = (0..<256).map { n in
    var c = UInt32(n)
    for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
    return c
}
private func crc32(_ d: [UInt8]) -> UInt32 {
    ~d.reduce(~UInt32(0)) { crcTable[Int(($0 ^ UInt32($1)) & 0xFF)] ^ ($0 >> 8) }
}
private func le(_ v: Int, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }

/// A stored zip (no zip64) of the given entries, written to a temporary file.
private func makeZip(_ entries: [(String, [UInt8])], method: Int = 0) -> String {
    var out: [UInt8] = [], central: [UInt8] = []
    for (name, data) in entries {
        let n = Array(name.utf8), off = out.count, crc = Int(crc32(data))
        out += le(0x0403_4B50, 4) + le(20, 2) + le(0, 2) + le(method, 2) + le(0, 4) + le(crc, 4)
            + le(data.count, 4) + le(data.count, 4) + le(n.count, 2) + le(0, 2) + n + data
        central += le(0x0201_4B50, 4) + le(20, 2) + le(20, 2) + le(0, 2) + le(method, 2) + le(0, 4) + le(crc, 4)
            + le(data.count, 4) + le(data.count, 4) + le(n.count, 2) + le(0, 2) + le(0, 2) + le(0, 2) + le(0, 2)
            + le(0, 4) + le(off, 4) + n
    }
    let cd = out.count
    out += central
    out += le(0x0605_4B50, 4) + le(0, 2) + le(0, 2) + le(entries.count, 2) + le(entries.count, 2)
        + le(central.count, 4) + le(cd, 4) + le(0, 2)
    let url = temporaryDirectory("zeroseg-pt").appendingPathComponent("crafted.pt")
    _ = FileManager.default.createFile(atPath: url.path, contents: Data(out))
    return url.path
}

/// A torch.save-like archive around a data.pkl and storages (data/0, data/1, ...).
private func torchZip(_ pkl: [UInt8], storages: [[UInt8]] = []) -> String {
    var e: [(String, [UInt8])] = [("archive/data.pkl", pkl), ("archive/byteorder", Array("little".utf8))]
    for (i, s) in storages.enumerated() { e.append(("archive/data/\(i)", s)) }
    e.append(("archive/version", Array("3\n".utf8)))
    return makeZip(e)
}

/// A tiny pickle assembler (opcodes as in CPython's pickletools).
private enum Pk {
    static let mark: [UInt8] = [0x28], tuple: [UInt8] = [0x74], tuple1: [UInt8] = [0x85], reduce: [UInt8] = [0x52]
    static let stop: [UInt8] = [0x2E], emptyTuple: [UInt8] = [0x29], emptyDict: [UInt8] = [0x7D]
    static let emptyList: [UInt8] = [0x5D], setitem: [UInt8] = [0x73], append: [UInt8] = [0x61]
    static let persid: [UInt8] = [0x51], newFalse: [UInt8] = [0x89], none: [UInt8] = [0x4E]
    static func proto(_ n: UInt8) -> [UInt8] { [0x80, n] }
    static func str(_ s: String) -> [UInt8] { let b = Array(s.utf8); return [0x58] + le(b.count, 4) + b }
    static func global(_ m: String, _ n: String) -> [UInt8] { [0x63] + Array("\(m)\n\(n)\n".utf8) }
    static func int(_ v: Int) -> [UInt8] { [0x4A] + le(v, 4) }
    static func long(_ v: Int) -> [UInt8] { [0x8A, 8] + le(v, 8) }
    static func put(_ i: Int) -> [UInt8] { [0x71, UInt8(i)] }
    static func get(_ i: Int) -> [UInt8] { [0x68, UInt8(i)] }
    static func tup(_ xs: [[UInt8]]) -> [UInt8] { mark + xs.flatMap { $0 } + tuple }
    static let orderedDict = global("collections", "OrderedDict") + emptyTuple + reduce
    static func storage(_ type: String = "FloatStorage", key: String = "0", numel: Int) -> [UInt8] {
        tup([str("storage"), global("torch", type), str(key), str("cpu"), long(numel)]) + persid
    }
    static func tensor(_ storage: [UInt8], offset: Int, size: [Int], stride: [Int], hooks: [UInt8] = orderedDict) -> [UInt8] {
        global("torch._utils", "_rebuild_tensor_v2")
            + tup([storage, long(offset), tup(size.map(long)), tup(stride.map(long)), newFalse, hooks]) + reduce
    }
    /// {name: value} as a plain dict pickle.
    static func dict(_ items: [(String, [UInt8])]) -> [UInt8] {
        proto(2) + emptyDict + items.flatMap { str($0.0) + $0.1 + setitem } + stop
    }
}

private func floats(_ v: [Float]) -> [UInt8] { v.flatMap { le(Int($0.bitPattern), 4) } }

// MARK: - tests

@Suite struct TorchCheckpointTests {
    static let stateFiles = ["state.pt", "state_p4.pt", "state_legacy.pt", "state_pyzip.pt"]

    /// Every tensor of the fixture state dict, in each format, exactly as torch saw it.
    @Test(arguments: stateFiles) func stateDictValues(_ file: String) throws {
        let ckpt = try TorchCheckpoint(path: fixture(file))
        #expect(ckpt.format == (file == "state_legacy.pt" ? .legacy : .zip))
        let expected = try json("state_expected.json") as! [String: [String: Any]]
        #expect(Set(ckpt.tensors.keys) == Set(expected.keys))
        let fileSize = try FileManager.default.attributesOfItem(atPath: fixture(file))[.size] as! Int
        for (name, e) in expected {
            let info = try #require(ckpt.tensors[name], "\(file): missing \(name)")
            #expect(info.dtype.rawValue == e["dtype"] as! String, "\(file) \(name)")
            #expect(info.shape == e["shape"] as! [Int], "\(file) \(name)")
            #expect(info.begin >= 0 && info.begin <= info.end && info.end <= fileSize, "\(file) \(name)")
            #expect(Int(bitPattern: ckpt.rawPointer(info)) % info.dtype.size == 0, "\(file) \(name) is misaligned")
            let values = e["values"] as! [NSNumber]
            if info.dtype == .i64 || info.dtype == .i32 {
                #expect(try ckpt.ints(name) == values.map { $0.intValue }, "\(file) \(name)")
            } else {
                #expect(try ckpt.floats(name) == values.map { $0.floatValue }, "\(file) \(name)")
            }
        }
    }

    /// torch's own archives: contiguous tensors are used in place, views copied, ties shared.
    @Test func zeroCopyAndSharing() throws {
        let ckpt = try TorchCheckpoint(path: fixture("state.pt"))
        #expect(ckpt.copiedTensors == ["transposed", "f16_transposed", "offset_strided", "expanded"])
        let p = { (n: String) in ckpt.rawPointer(ckpt.tensors[n]!) }
        #expect(p("tied_a") == p("tied_b"))
        #expect(p("tied_a") == p("tied_view"))
        #expect(ckpt.tensors["tied_a"]!.begin == ckpt.tensors["tied_b"]!.begin)
        // In place: the pointer shows the file's bytes at [begin, end).
        let data = try Data(contentsOf: URL(fileURLWithPath: fixture("state.pt")))
        for name in ["f32", "offset", "f16", "i64", "scalar"] {
            let info = ckpt.tensors[name]!
            #expect(info.end - info.begin == info.count * info.dtype.size)
            let fromFile = [UInt8](data[info.begin..<info.end])
            let fromPointer = [UInt8](UnsafeRawBufferPointer(start: p(name), count: info.end - info.begin))
            #expect(fromFile == fromPointer, "\(name)")
        }
        // The storage offset: "offset" is elements 5..<11 of arange(20).
        #expect(ckpt.tensors["offset"]!.begin % 64 == 20)
        // The Python-zipfile repack is unaligned: its float32 tensors are copied.
        let repacked = try TorchCheckpoint(path: fixture("state_pyzip.pt"))
        #expect(repacked.copiedTensors.isSuperset(of: ckpt.copiedTensors))
    }

    @Test func trainingCheckpointUsesStateDict() throws {
        let ckpt = try TorchCheckpoint(path: fixture("train_ckpt.pt"))
        let expected = try json("train_ckpt_expected.json") as! [String: [String: Any]]
        #expect(Set(ckpt.tensors.keys) == ["weight", "bias"])
        for (name, e) in expected {
            #expect(ckpt.tensors[name]?.shape == e["shape"] as? [Int])
            #expect(try ckpt.floats(name) == (e["values"] as! [NSNumber]).map { $0.floatValue })
        }
    }

    /// Malicious and broken fixtures: refused with the reason, and nothing ever executed.
    @Test func refusesMaliciousAndBrokenFixtures() throws {
        try? FileManager.default.removeItem(atPath: marker)
        let cases: [(String, String)] = [
            ("evil_global.pt", "refusing to load evil_global.pt: pickle asks for os.system (only state-dict tensors are allowed)"),
            ("evil_stack_global.pt", "refusing to load evil_stack_global.pt: pickle asks for os.system"),
            ("evil_eval.pt", "pickle asks for builtins.eval"),
            ("bad_offset.pt", "at storage offset 10 reaches element 11 of storage 0, which has 4 elements"),
            ("bad_truncated.pt", "no end-of-central-directory record (truncated"),
            ("bad_deflated.pt", "state/data.pkl is compressed (method 8, deflate)"),
            ("bad_bigendian.pt", "byteorder \"big\": only little-endian"),
            ("bad_whole_module.pt", "pickle asks for torch.nn.modules.linear.Linear"),
            ("bad_torchscript.pt", "is a TorchScript archive (torch.jit.save)"),
        ]
        for (file, message) in cases {
            let e = loadError(fixture(file))
            #expect(e.contains(message), "\(file): \(e)")
        }
        #expect(!FileManager.default.fileExists(atPath: marker), "a malicious pickle was executed")
    }

    /// The micro transformers checkpoint: exactly the tensors a CLIPModel of its config has.
    @Test func microCheckpointMatchesConfig() throws {
        let dir = checkpointsDir.appendingPathComponent("micro")
        let cfg = try CLIPConfig.load(dir.appendingPathComponent("config.json"))
        let ckpt = try TorchCheckpoint(path: dir.appendingPathComponent("pytorch_model.bin").path)
        #expect(ckpt.copiedTensors.isEmpty)
        var expected: [String: [Int]] = [
            "logit_scale": [], "text_projection.weight": [cfg.projectionDim, cfg.text.hiddenSize],
            "visual_projection.weight": [cfg.projectionDim, cfg.vision.hiddenSize],
            "text_model.embeddings.token_embedding.weight": [cfg.text.vocabSize, cfg.text.hiddenSize],
            "text_model.embeddings.position_embedding.weight": [cfg.text.maxPositionEmbeddings, cfg.text.hiddenSize],
            "text_model.final_layer_norm.weight": [cfg.text.hiddenSize], "text_model.final_layer_norm.bias": [cfg.text.hiddenSize],
            "vision_model.embeddings.class_embedding": [cfg.vision.hiddenSize],
            "vision_model.embeddings.patch_embedding.weight": [cfg.vision.hiddenSize, 3, cfg.vision.patchSize, cfg.vision.patchSize],
            "vision_model.embeddings.position_embedding.weight": [cfg.vision.gridSize * cfg.vision.gridSize + 1, cfg.vision.hiddenSize],
            "vision_model.pre_layrnorm.weight": [cfg.vision.hiddenSize], "vision_model.pre_layrnorm.bias": [cfg.vision.hiddenSize],
            "vision_model.post_layernorm.weight": [cfg.vision.hiddenSize], "vision_model.post_layernorm.bias": [cfg.vision.hiddenSize],
        ]
        for (tower, w, m, layers) in [("text_model", cfg.text.hiddenSize, cfg.text.intermediateSize, cfg.text.numHiddenLayers),
                                      ("vision_model", cfg.vision.hiddenSize, cfg.vision.intermediateSize, cfg.vision.numHiddenLayers)] {
            for l in 0..<layers {
                let p = "\(tower).encoder.layers.\(l)"
                for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    expected["\(p).self_attn.\(proj).weight"] = [w, w]
                    expected["\(p).self_attn.\(proj).bias"] = [w]
                }
                for ln in ["layer_norm1", "layer_norm2"] { expected["\(p).\(ln).weight"] = [w]; expected["\(p).\(ln).bias"] = [w] }
                expected["\(p).mlp.fc1.weight"] = [m, w]; expected["\(p).mlp.fc1.bias"] = [m]
                expected["\(p).mlp.fc2.weight"] = [w, m]; expected["\(p).mlp.fc2.bias"] = [w]
            }
        }
        #expect(Set(ckpt.tensors.keys) == Set(expected.keys))
        for (name, shape) in expected { #expect(ckpt.tensors[name]?.shape == shape, "\(name)") }
        // Values: per-tensor sums and first elements written by the fixture script.
        let stats = try json("micro/micro_tensors.json") as! [String: [String: Any]]
        #expect(Set(stats.keys) == Set(ckpt.tensors.keys))
        for (name, s) in stats {
            let v = try ckpt.floats(name)
            // (as Float: Foundation's JSON parser is not correctly rounded, but the values are floats)
            #expect(Array(v.prefix(4)) == (s["first"] as! [NSNumber]).map(\.floatValue), "\(name)")
            let sum = v.reduce(0.0) { $0 + Double($1) }, absSum = v.reduce(0.0) { $0 + abs(Double($1)) }
            #expect(abs(sum - (s["sum"] as! NSNumber).doubleValue) <= 1e-9 * max(1, absSum), "\(name)")
            #expect(abs(absSum - (s["abs_sum"] as! NSNumber).doubleValue) <= 1e-9 * max(1, absSum), "\(name)")
        }
    }

    /// End to end: CLIPModel loads the fixture directory (config.json + pytorch_model.bin, no vocab.json:
    /// the bundled BPE vocabulary) as it is, and gives transformers' embeddings from micro_reference.json.
    @Test func microCheckpointEmbeddingsMatchTransformers() throws {
        let dir = checkpointsDir.appendingPathComponent("micro")
        let model = try CLIPModel(directory: dir)
        #expect(model.layout == .huggingFace && !model.isSynthetic)
        let ref = try json("micro/micro_reference.json") as! [String: Any]
        let ids = (ref["token_ids"] as! [[NSNumber]]).map { $0.map { Int32($0.intValue) } }
        #expect(model.tokenize(ref["texts"] as! [String]) == ids)
        let text = try model.encodeTokens(ids, normalize: false, threads: 1)
        for (got, want) in zip(text, ref["text_embeds"] as! [[NSNumber]]) {
            #expect(maxAbsDiff(got, want.map(\.floatValue)) < 1e-5, "text \(got) vs \(want)")
        }
        let pixels = (ref["pixel_values"] as! [NSNumber]).map(\.floatValue)
        let image = try pixels.withUnsafeBufferPointer {
            try model.encodePixels($0.baseAddress!, batch: 1, height: 32, width: 32, normalize: false, threads: 1)
        }
        let want = (ref["image_embeds"] as! [NSNumber]).map(\.floatValue)
        #expect(maxAbsDiff(image[0], want) < 1e-5, "image \(image[0]) vs \(want)")
    }

    // MARK: crafted files

    @Test func craftedZipDamage() throws {
        let good = try Data(contentsOf: URL(fileURLWithPath: fixture("state.pt")))
        func write(_ d: Data) -> String {
            let u = temporaryDirectory("zeroseg-pt").appendingPathComponent("damaged.pt")
            _ = FileManager.default.createFile(atPath: u.path, contents: d)
            return u.path
        }
        // A flipped byte inside data.pkl: "collections" -> "dollections".
        var flipped = good
        let at = flipped.range(of: Data("collections".utf8))!.lowerBound
        flipped[at] = UInt8(ascii: "d")
        #expect(loadError(write(flipped)).contains("CRC-32 mismatch in entry state/data.pkl"))
        // Zip64 end record pointing the central directory past the end of the file.
        var moved = good
        let z64 = moved.range(of: Data([0x50, 0x4B, 0x06, 0x06]), options: .backwards)!.lowerBound
        moved.replaceSubrange((z64 + 48)..<(z64 + 56), with: le(1 << 40, 8))
        #expect(loadError(write(moved)).contains("lies outside the file"))
        // Truncated legacy file.
        let legacy = try Data(contentsOf: URL(fileURLWithPath: fixture("state_legacy.pt")))
        #expect(loadError(write(legacy.prefix(legacy.count - 10))).contains("(truncated)"))
        #expect(loadError(write(legacy.prefix(100))).contains("(truncated) (sys_info byte"))
        // Not checkpoints at all.
        #expect(loadError(write(Data("hello, world".utf8))).contains("not a PyTorch checkpoint"))
        #expect(loadError(write(Data())).contains("not a PyTorch checkpoint"))
        #expect(loadError("/nonexistent/pytorch_model.bin").contains("cannot open"))
        // A zip that is not a torch.save archive; a stored entry whose sizes disagree.
        #expect(loadError(makeZip([("readme.txt", Array("hi".utf8))])).contains("has no <archive>/data.pkl"))
        #expect(loadError(makeZip([("a/data.pkl", [0x80, 2, 0x7D, 0x2E])], method: 8)).contains("is compressed"))
        // Duplicate entries.
        #expect(loadError(makeZip([("a/data.pkl", [0x80, 2, 0x7D, 0x2E]), ("a/data.pkl", [0x80, 2, 0x7D, 0x2E])])).contains("duplicate entry"))
        // An empty state dict is fine.
        #expect(try TorchCheckpoint(path: makeZip([("a/data.pkl", [0x80, 2, 0x7D, 0x2E])])).tensors.isEmpty)
    }

    @Test func craftedPicklesAreRefused() throws {
        try? FileManager.default.removeItem(atPath: marker)
        let four = floats([1, 2, 3, 4])
        let okTensor = Pk.tensor(Pk.storage(numel: 4), offset: 0, size: [2, 2], stride: [2, 1])
        // Sanity: the assembler makes a loadable checkpoint.
        let ok = try TorchCheckpoint(path: torchZip(Pk.dict([("w", okTensor)]), storages: [four]))
        #expect(try ok.floats("w") == [1, 2, 3, 4])
        let t = try TorchCheckpoint(path: torchZip(Pk.dict([("w", Pk.tensor(Pk.storage(numel: 4), offset: 0, size: [2, 2], stride: [1, 2]))]), storages: [four]))
        #expect(try t.floats("w") == [1, 3, 2, 4])
        #expect(t.copiedTensors == ["w"])
        let cases: [(String, [UInt8], [[UInt8]])] = [
            // strides reaching past the storage; negative/overflowing sizes
            ("reaches element 4 of storage 0", Pk.dict([("w", Pk.tensor(Pk.storage(numel: 4), offset: 0, size: [3], stride: [2]))]), [four]),
            ("strides [4611686018427387904] overflow", Pk.dict([("w", Pk.tensor(Pk.storage(numel: 4), offset: 0, size: [5], stride: [1 << 62]))]), [four]),
            ("bad size or stride", Pk.dict([("w", Pk.tensor(Pk.storage(numel: 4), offset: 0, size: [-1], stride: [1]))]), [four]),
            ("bad size or stride", Pk.dict([("w", Pk.tensor(Pk.storage(numel: 4), offset: 0, size: [2, 2], stride: [1]))]), [four]),
            ("overflows", Pk.dict([("w", Pk.tensor(Pk.storage(numel: 4), offset: 0, size: [1 << 40, 1 << 40, 0], stride: [0, 0, 0]))]), [four]),
            ("expanding it would take more than", Pk.dict([("w", Pk.tensor(Pk.storage(numel: 4), offset: 0, size: [1 << 40], stride: [0]))]), [four]),
            // storage records: wrong size, missing, dtype clash, unsupported dtype, absurd size
            ("storage 0 has 12 bytes", Pk.dict([("w", okTensor)]), [floats([1, 2, 3])]),
            ("uses storage 0, which is missing", Pk.dict([("w", okTensor)]), []),
            ("used with different types", Pk.dict([("w", okTensor), ("v", Pk.tensor(Pk.storage("HalfStorage", numel: 4), offset: 0, size: [4], stride: [1]))]), [four]),
            ("pickle asks for torch.DoubleStorage (only tensors of dtype", Pk.dict([("w", Pk.tensor(Pk.storage("DoubleStorage", numel: 2), offset: 0, size: [2], stride: [1]))]), [four]),
            ("absurdly large", Pk.dict([("w", Pk.tensor(Pk.storage(numel: Int.max / 2), offset: 0, size: [1], stride: [1]))]), [four]),
            // hooks, other rebuild functions, other persistent ids
            ("backward hooks", Pk.dict([("w", Pk.tensor(Pk.storage(numel: 4), offset: 0, size: [4], stride: [1],
                                                         hooks: Pk.orderedDict + Pk.str("h") + Pk.none + Pk.setitem))]), [four]),
            ("pickle asks for torch._utils._rebuild_tensor_v3", Pk.dict([("w", Pk.global("torch._utils", "_rebuild_tensor_v3") + Pk.tup([]) + Pk.reduce)]), []),
            ("pickled nn.Module", Pk.dict([("w", Pk.tup([Pk.str("module"), Pk.none, Pk.none, Pk.none]) + Pk.persid)]), []),
            ("persistent id of kind xyz", Pk.dict([("w", Pk.tup([Pk.str("xyz")]) + Pk.persid)]), []),
            ("pickle calls torch.FloatStorage", Pk.dict([("w", Pk.global("torch", "FloatStorage") + Pk.tup([]) + Pk.reduce)]), []),
            ("pickle calls a str", Pk.dict([("w", Pk.str("os.system") + Pk.tup([]) + Pk.reduce)]), []),
            ("OrderedDict from arguments", Pk.dict([("w", Pk.global("collections", "OrderedDict") + Pk.tup([Pk.emptyList]) + Pk.reduce)]), []),
            ("pickle sets the state of a str", Pk.dict([("w", Pk.str("x") + Pk.emptyDict + [0x62])]), []),
            // object-creating opcodes that bypass GLOBAL, and text opcodes
            ("INST (0x69) is not allowed", Pk.proto(2) + Array("ios\nsystem\n".utf8) + Pk.stop, []),
            ("NEWOBJ (0x81) is not allowed", Pk.proto(2) + Pk.global("collections", "OrderedDict") + Pk.emptyTuple + [0x81] + Pk.stop, []),
            ("EXT1 (0x82) is not allowed", Pk.proto(2) + [0x82, 1] + Pk.stop, []),
            ("READONLY_BUFFER (0x98)", Pk.proto(5) + [0x98] + Pk.stop, []),
            ("INT (0x49)", Pk.proto(2) + Array("I1\n".utf8) + Pk.stop, []),
            ("unsupported pickle protocol 6", Pk.proto(6) + Pk.emptyDict + Pk.stop, []),
            // structure: cycles, depth, memo, stack, truncation, keys
            ("cyclic structures", Pk.proto(2) + Pk.emptyList + Pk.put(0) + Pk.get(0) + Pk.append + Pk.stop, []),
            ("cyclic structures", Pk.proto(2) + Pk.emptyList + Pk.put(0) + Pk.emptyList + Pk.put(1) + Pk.get(0) + Pk.append
                + Pk.append + Pk.stop, []),
            ("more than 100 deep", Pk.proto(2) + Array(repeating: Pk.emptyList, count: 150).flatMap { $0 }
                + Array(repeating: Pk.append, count: 149).flatMap { $0 } + Pk.stop, []),
            ("memo entry 7, which does not exist", Pk.proto(2) + Pk.get(7) + Pk.stop, []),
            ("pickle stack underflow", Pk.proto(2) + Pk.emptyDict + Pk.mark + Pk.tuple1 + Pk.stop, []),
            ("pickle stops with items left", Pk.proto(2) + Pk.emptyDict + Pk.emptyDict + Pk.stop, []),
            ("truncated", Pk.proto(2) + Pk.emptyDict + [0x58, 0xFF, 0xFF, 0, 0, 0x41], []),
            ("truncated", Pk.proto(2) + Pk.emptyDict, []),
            ("not valid UTF-8", Pk.proto(2) + [0x58, 2, 0, 0, 0, 0xC3, 0x28] + Pk.stop, []),
            ("as a dict key", Pk.proto(2) + Pk.emptyDict + Pk.emptyList + Pk.none + Pk.setitem + Pk.stop, []),
            // top-level shape
            ("holds a list, not a dict", Pk.proto(2) + Pk.emptyList + Pk.stop, []),
            ("entry epoch is a int, not a tensor", Pk.dict([("w", okTensor), ("epoch", Pk.int(3))]), [four]),
            ("state dict entry x is a str, not a tensor", Pk.dict([("state_dict", Pk.emptyDict + Pk.str("x") + Pk.str("y") + Pk.setitem)]), []),
            ("has a int key", Pk.proto(2) + Pk.emptyDict + Pk.int(1) + okTensor + Pk.setitem + Pk.stop, [four]),
        ]
        for (message, pkl, storages) in cases {
            let e = loadError(torchZip(pkl, storages: storages))
            #expect(e.contains(message), "expected \"\(message)\", got \"\(e)\"")
            #expect(e.hasPrefix("refusing to load") || e.hasPrefix("invalid PyTorch checkpoint"), "\(e)")
        }
        #expect(!FileManager.default.fileExists(atPath: marker))
    }

    /// A legacy-format file with a main pickle that is refused is refused the same way.
    @Test func legacyFormatIsRestrictedToo() throws {
        var bytes: [UInt8] = Pk.proto(2) + [0x8A, 10, 0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19] + Pk.stop
        bytes += Pk.proto(2) + Pk.int(1001) + Pk.stop
        bytes += Pk.proto(2) + Pk.emptyDict + Pk.str("little_endian") + [0x88] + Pk.setitem + Pk.stop
        let u = temporaryDirectory("zeroseg-pt").appendingPathComponent("legacy.pt")
        _ = FileManager.default.createFile(atPath: u.path, contents: Data(bytes + Pk.dict([("w", Pk.global("os", "system"))])))
        #expect(loadError(u.path).contains("refusing to load legacy.pt: pickle asks for os.system"))
        var big = bytes
        big[big.count - 3] = 0x89  // little_endian: False
        _ = FileManager.default.createFile(atPath: u.path, contents: Data(big + Pk.dict([])))
        #expect(loadError(u.path).contains("big-endian"))
        // A legacy file whose storage list names a storage twice / a storage with the wrong count.
        let pid = Pk.tup([Pk.str("storage"), Pk.global("torch", "FloatStorage"), Pk.str("k"), Pk.str("cpu"), Pk.int(2), Pk.none]) + Pk.persid
        let main = Pk.dict([("w", Pk.tensor(pid, offset: 0, size: [2], stride: [1]))])
        let keys = Pk.proto(2) + Pk.emptyList + Pk.mark + Pk.str("k") + [0x65] + Pk.stop
        _ = FileManager.default.createFile(atPath: u.path, contents: Data(bytes + main + keys + le(2, 8) + floats([5, 6])))
        let good = try TorchCheckpoint(path: u.path)
        #expect(good.format == .legacy)
        #expect(try good.floats("w") == [5, 6])
        _ = FileManager.default.createFile(atPath: u.path, contents: Data(bytes + main + keys + le(3, 8) + floats([5, 6, 7])))
        #expect(loadError(u.path).contains("storage k holds 3 elements, the pickle says 2"))
    }
}

/// Opt-in check of a real checkpoint: `ZEROSEG_TORCH_CHECKPOINT=/path/to/pytorch_model.bin`
/// (optionally `ZEROSEG_TORCH_CHECKPOINT_SAFETENSORS=/path/to/model.safetensors` holding the same
/// tensors, compared bit for bit). Prints load times.
@Suite struct TorchCheckpointExternalTests {
    static let path = ProcessInfo.processInfo.environment["ZEROSEG_TORCH_CHECKPOINT"]

    @Test(.enabled(if: path != nil)) func loadsExternalCheckpoint() throws {
        let path = Self.path!
        var t0 = Date()
        let ckpt = try TorchCheckpoint(path: path)
        let plain = Date().timeIntervalSince(t0)
        t0 = Date()
        _ = try TorchCheckpoint(path: path, verifyChecksums: true)
        let checked = Date().timeIntervalSince(t0)
        print("\(path): \(ckpt.tensors.count) tensors, \(ckpt.copiedTensors.count) copied; "
              + "load \(String(format: "%.3f", plain)) s, with CRC \(String(format: "%.3f", checked)) s")
        #expect(!ckpt.tensors.isEmpty)
        if let st = ProcessInfo.processInfo.environment["ZEROSEG_TORCH_CHECKPOINT_SAFETENSORS"] {
            let ref = try SafetensorsFile(path: st)
            #expect(Set(ref.tensors.keys) == Set(ckpt.tensors.keys))
            for (name, info) in ref.tensors {
                guard let mine = ckpt.tensors[name] else { continue }
                #expect(mine.shape == info.shape && mine.dtype == info.dtype, "\(name)")
                #expect(memcmp(ckpt.rawPointer(mine), ref.rawPointer(info), info.count * info.dtype.size) == 0, "\(name)")
            }
        }
    }
}
