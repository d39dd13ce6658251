import Foundation
import Testing
import ZeroSeg

/// Exact search against the numpy brute-force reference (Fixtures/index/exact_topk.json, made by
/// scripts/reference/make_index_fixture.py): ids identical, scores within 1e-5.
@Suite struct IndexReferenceTests {
    struct Fixture: Decodable {
        struct Result: Decodable { var query: Int; var k: Int?; var ids: [Int64]; var scores: [Double]; var deletions: Bool? }
        var k: Int
        var deleted_mod: [Int]
        var queries: [Result]
        var all: [Result]
        var extra: [Result]
    }

    /// The fixture's generator: element e of the set with seed s is ((mix(s·2^32 + e) >> 40) − 2^23) · 2^-27.
    static func element(seed: UInt64, _ e: Int) -> Float {
        var z = (seed << 32) &+ UInt64(e) &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return Float(Int64(z >> 40) - (1 << 23)) * 0x1p-27
    }

    static func set(seed: UInt64, n: Int, d: Int) -> [Float] { (0..<(n * d)).map { element(seed: seed, $0) } }

    @Test func exactTopKEqualsNumpy() throws {
        let url = repoRoot.appendingPathComponent("Tests/ZeroSegTests/Fixtures/index/exact_topk.json")
        let fx = try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: url))
        let raw = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        // The generator first: spot values.
        let spots = (raw["spot"] as! [String: Any])["collection"] as! [[String: Any]]
        #expect(spots.count >= 4)
        for s in spots {
            let v = Self.element(seed: 1, s["element"] as? Int ?? -1)
            #expect(v.bitPattern == UInt32(s["float32_bits"] as? Int ?? -1) && Float16(v).bitPattern == UInt16(s["float16_bits"] as? Int ?? -1))
        }
        let n = 20000, d = 512
        let vectors = Self.set(seed: 1, n: n, d: d), queries = Self.set(seed: 2, n: 16, d: d)
        let dir = temporaryDirectory("index-reference")
        defer { try? FileManager.default.removeItem(at: dir) }
        let index = try EmbeddingIndex.create(at: dir, identity: IndexIdentity(fingerprint: "fixture", source: "fixture", dim: d), regions: .none)
        let ids = try index.add(vectors: vectors, count: n, kind: .region)
        let position = Dictionary(uniqueKeysWithValues: ids.enumerated().map { ($0.element, Int64($0.offset)) })
        func check(_ results: [Fixture.Result], threads: Int) throws {
            for r in results {
                let q = Array(queries[r.query * d..<(r.query + 1) * d])
                let hits = try index.search(vectors: [q], options: SearchOptions(k: r.k ?? fx.k, kind: .region, onePerImage: false, engine: .exact), threads: threads)
                #expect(hits.map { position[$0.id]! } == r.ids, "query \(r.query) k \(r.k ?? fx.k)")
                let worst = zip(hits, r.scores).map { abs(Double($0.score) - $1) }.max() ?? 0
                #expect(worst < 1e-5, "query \(r.query): score differs by \(worst)")
            }
        }
        try check(fx.all + fx.extra.filter { $0.deletions == false }, threads: 2)
        let (mod, rem) = (fx.deleted_mod[0], fx.deleted_mod[1])
        try index.remove(vectorIDs: ids.enumerated().filter { $0.offset % mod == rem }.map(\.element))
        try check(fx.queries + fx.extra.filter { $0.deletions == true }, threads: 2)
        try check(Array(fx.queries.prefix(3)), threads: 1)
    }
}
