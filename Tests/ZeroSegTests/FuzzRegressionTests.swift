import Foundation
import GRDB
import Testing
@testable import ZeroSegCLIP
@testable import ZeroSegIndex
import ZeroSeg

/// Inputs that crashed (trapped) a fuzz target, fed through the normal build the way zeroseg reads
/// them: each is now a thrown, one-line ZeroSegError (or, where the input is valid, a result).
/// The bytes are the committed regression inputs, Tests/Fuzz/TARGET/regressions/NAME, which
/// scripts/fuzz.sh also replays under AddressSanitizer (Tests/Fuzz/make_regressions.py wrote them).
@Suite struct FuzzRegressionTests {
    static func input(_ target: String, _ name: String) throws -> Data {
        try Data(contentsOf: repoRoot.appendingPathComponent("Tests/Fuzz/\(target)/regressions/\(name)"))
    }

    static func file(_ target: String, _ name: String) throws -> URL {
        let url = temporaryDirectory("fuzz-regression").appendingPathComponent(name)
        try input(target, name).write(to: url)
        return url
    }

    static func isBadInput(_ e: ZeroSegError?) -> Bool {
        if case .badInput = e?.kind { return true }
        return false
    }

    /// A shape whose element count fits in Int but whose byte count does not: the check of the
    /// byte count overflowed (trap) instead of refusing the header.
    @Test func safetensorsShapeWhoseByteCountOverflows() throws {
        let url = try Self.file("safetensors", "shape-bytes-overflow")
        let e = #expect(throws: ZeroSegError.self) { try SafetensorsFile(path: url.path) }
        #expect(e?.kind == .badModel)
        #expect(e?.message.contains("shape [4611686018427387904] x F32 overflows") == true, "\(String(describing: e))")
        #expect(e?.message.contains("\n") == false)
    }

    /// A header length past Int.max (0xdfdfe7287b000000): converting it to Int trapped before the
    /// length was checked (found by the safetensors and prompts targets).
    @Test func safetensorsHeaderLengthPastIntMax() throws {
        let url = try Self.file("safetensors", "header-length-past-int-max")
        let e = #expect(throws: ZeroSegError.self) { try SafetensorsFile(path: url.path) }
        #expect(e?.kind == .badModel)
        #expect(e?.message.contains("header length 16131866551312711680 is not sane") == true, "\(String(describing: e))")
    }

    /// An empty tensor at storage offset 2^62: the offset was multiplied by the element size
    /// (trap) although an empty tensor never reads its storage. Now it loads, as in torch.
    @Test func torchEmptyTensorAtAHugeStorageOffset() throws {
        let url = try Self.file("torch", "empty-tensor-huge-offset")
        let c = try TorchCheckpoint(path: url.path, verifyChecksums: true)
        #expect(c.tensors["empty"]?.shape == [0])
        #expect(try c.floats("empty") == [])
    }

    /// open_clip_config.json with mlp_ratio 1e300: width x ratio was converted to Int (trap).
    @Test func openCLIPConfigWithAHugeMLPRatio() throws {
        let data = try Self.input("hub-config", "mlp-ratio-overflow")
        let e = #expect(throws: ZeroSegError.self) { try CheckpointFiles.openCLIPConfig(data, name: "open_clip_config.json") }
        #expect(e?.message.contains("vision_cfg.width x mlp_ratio") == true, "\(String(describing: e))")
        // Through the model folder reader too (every error of a model folder is .badModel).
        let dir = temporaryDirectory("fuzz-openclip")
        try data.write(to: dir.appendingPathComponent("open_clip_config.json"))
        try Data([0]).write(to: dir.appendingPathComponent("open_clip_model.safetensors"))
        let e2 = #expect(throws: ZeroSegError.self) { try CheckpointFiles(directory: dir) }
        #expect(e2?.kind == .badModel)
    }

    // MARK: index

    /// A small index (dim 4, two images, region masks), damaged as the index fuzz target damages
    /// it: the regression input is a mode byte (2: database values) and `name=value` lines.
    static func damagedIndex(_ name: String) throws -> URL {
        let dir = temporaryDirectory("fuzz-index")
        do {
            let index = try EmbeddingIndex.create(at: dir, identity: IndexIdentity(fingerprint: "f", source: "s", dim: 4), regions: .proposals)
            let bits: [UInt8] = (0..<24).map { $0 % 6 < 2 ? 1 : 0 }
            let region = IndexRegion(box: PixelBox(x0: 0, y0: 0, x1: 2, y1: 4), source: "slic", mask: RLEMask(bits: bits, width: 6, height: 4))
            _ = try index.add([
                ImageEmbeddings(path: "/a.png", sha256: String(repeating: "a", count: 64), bytes: 1, width: 6, height: 4,
                                global: [1, 0, 0, 0], regions: [(region, [0.5, 0.5, 0.5, 0.5])]),
                ImageEmbeddings(path: "/b.png", sha256: String(repeating: "b", count: 64), bytes: 1, width: 6, height: 4,
                                global: [0, 1, 0, 0], regions: [(region, [0.5, -0.5, 0.5, 0.5])]),
            ])
        }
        let bytes = try input("index", name)
        #expect(bytes.first == 2)
        let sql = ["shards.rows": "UPDATE shards SET rows = ?", "meta.dim": "UPDATE meta SET value = ? WHERE key = 'dim'",
                   "vectors.mask": "UPDATE vectors SET mask = ? WHERE kind = 1", "images.height": "UPDATE images SET height = ?"]
        let q = try DatabaseQueue(path: dir.appendingPathComponent(EmbeddingIndex.databaseName).path)
        try q.write { db in
            for line in String(decoding: bytes.dropFirst(), as: UTF8.self).split(separator: "\n") {
                let eq = line.firstIndex(of: "=")!
                let v = String(line[line.index(after: eq)...])
                let value: DatabaseValueConvertible = Int64(v).map { $0 as DatabaseValueConvertible } ?? v
                try db.execute(sql: sql[String(line[..<eq])]!, arguments: [value])
            }
        }
        try q.close()
        return dir
    }

    /// shards.rows = -1: the snapshot made an array of -1 slots (trap).
    @Test func indexWithANegativeShardRowCount() throws {
        let index = try EmbeddingIndex.open(at: Self.damagedIndex("negative-shard-rows"))
        let e = #expect(throws: ZeroSegError.self) { try index.search(vectors: [[1, 0, 0, 0]], options: SearchOptions(engine: .exact), threads: 1) }
        #expect(Self.isBadInput(e) && e?.message.contains("holds -1 rows") == true, "\(String(describing: e))")
    }

    /// shards.rows = '(1' (text where an integer belongs): GRDB's non-throwing row subscript
    /// stopped the process; every database value is now decoded with a thrown error.
    @Test func indexWithATextShardRowCount() throws {
        let dir = try Self.damagedIndex("rows-not-an-integer")
        let e = #expect(throws: ZeroSegError.self) {
            let index = try EmbeddingIndex.open(at: dir)
            _ = try index.search(vectors: [[1, 0, 0, 0]], options: SearchOptions(engine: .exact), threads: 1)
        }
        #expect(Self.isBadInput(e) && e?.message.contains("holds a value of the wrong type") == true, "\(String(describing: e))")
        #expect(e?.message.contains("\n") == false)
    }

    /// images.height = '' (found by the fuzzer after the fix above): the image list and the search
    /// results decoded rows through GRDB's subscripts too; every row value is now `Row.get`.
    @Test func indexWithATextImageHeight() throws {
        let index = try EmbeddingIndex.open(at: Self.damagedIndex("height-not-an-integer"))
        let e1 = #expect(throws: ZeroSegError.self) { try index.images() }
        let e2 = #expect(throws: ZeroSegError.self) {
            try index.search(vectors: [[1, 0, 0, 0]], options: SearchOptions(kind: .image, engine: .exact), threads: 1)
        }
        for e in [e1, e2] { #expect(Self.isBadInput(e) && e?.message.contains("holds a value of the wrong type") == true, "\(String(describing: e))") }
    }

    /// meta.dim = 2^62: a shard's byte size (rows x dim x 2) overflowed (trap).
    @Test func indexWithAHugeDimension() throws {
        let dir = try Self.damagedIndex("huge-dim")
        let e = #expect(throws: ZeroSegError.self) { try EmbeddingIndex.open(at: dir) }
        #expect(Self.isBadInput(e) && e?.message.contains("bad dim") == true, "\(String(describing: e))")
    }

    /// A region mask with a negative run: RLEMask.bits() made a backwards range (trap); a mask that
    /// is not JSON: JSONDecoder's DecodingError escaped the search untyped.
    @Test func indexWithDamagedRegionMasks() throws {
        for name in ["negative-mask-run", "mask-not-json"] {
            let index = try EmbeddingIndex.open(at: Self.damagedIndex(name))
            let e = #expect(throws: ZeroSegError.self, "\(name)") {
                try index.search(vectors: [[1, 0, 0, 0]], options: SearchOptions(kind: .region, onePerImage: false, engine: .exact), threads: 1)
            }
            #expect(Self.isBadInput(e) && e?.message.contains("malformed region mask") == true, "\(name): \(String(describing: e))")
        }
        // The mask as a value (the fuzz target's mode 3): not well formed, no bits, no trap.
        let bytes = try Self.input("index", "rle-negative-run")
        let m = try JSONDecoder().decode(RLEMask.self, from: bytes.dropFirst())
        #expect(!m.isWellFormed)
        #expect(m.bits() == [])
        let good = RLEMask(bits: [0, 1, 1, 0, 0, 1], width: 3, height: 2)
        #expect(good.isWellFormed && good.bits() == [0, 1, 1, 0, 0, 1])
    }
}
