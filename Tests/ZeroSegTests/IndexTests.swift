import CKernels
import Foundation
import Testing
@testable import ZeroSegIndex
import ZeroSeg
import ZeroSegCore

/// A synthetic identity (no model needed) for index tests on bare vectors.
func testIdentity(dim: Int, fingerprint: String = "test-model-a") -> IndexIdentity {
    IndexIdentity(fingerprint: fingerprint, source: "test/\(fingerprint)", dim: dim)
}

/// float16 rounding as the shards store it (Swift's Float16: round to nearest even).
func f16(_ v: [Float]) -> [Float] { v.map { Float(Float16($0)) } }

/// Brute force: the top k (score desc, id asc) of queries against rows (already float16-rounded).
func bruteTopK(_ rows: [[Float]], ids: [Int64], query: [Float], k: Int) -> [(id: Int64, score: Double)] {
    var all: [(Int64, Double)] = []
    for (r, id) in zip(rows, ids) { all.append((id, zip(r, query).reduce(0.0) { $0 + Double($1.0) * Double($1.1) })) }
    all.sort { $0.1 > $1.1 || ($0.1 == $1.1 && $0.0 < $1.0) }
    return Array(all.prefix(k)).map { (id: $0.0, score: $0.1) }
}

@Suite struct Float16ConversionTests {
    @Test func everyHalfWidensExactly() {
        let halves = (0...0xffff).map { UInt16($0) }
        var fast = [Float](repeating: 0, count: halves.count), portable = fast
        zs_f16_to_f32(halves, &fast, halves.count)
        zs_f16_to_f32_portable(halves, &portable, halves.count)
        for (i, h) in halves.enumerated() {
            let want = Float(Float16(bitPattern: h))
            if want.isNaN {
                #expect(fast[i].isNaN && portable[i].isNaN)
            } else {
                #expect(fast[i].bitPattern == want.bitPattern && portable[i].bitPattern == want.bitPattern, "half \(h)")
            }
        }
    }

    @Test func narrowingRoundsToNearestEven() {
        // Edge cases (ties, subnormals, overflow, zeros) and many random values.
        var xs: [Float] = [0, -0, 1, -1, 65504, 65519.99, 65520, -65520, 1e-8, 2.9802322e-8, 5.96e-8, 6.1035156e-5, 6.1e-5,
                           1.0009765625, 1.00048828125, 1.000732421875, .infinity, -.infinity, 3.0e-6, -4.5e-7]
        xs += randomFloats(20_000, seed: 11).map { $0 * 3 }
        xs += randomFloats(20_000, seed: 12).map { $0 * 1e-4 }
        xs += (0..<5000).map { Float(bitPattern: UInt32($0) * 858_993 &+ 0x3380_0000) }
        var fast = [UInt16](repeating: 0, count: xs.count), portable = fast
        zs_f32_to_f16(xs, &fast, xs.count)
        zs_f32_to_f16_portable(xs, &portable, xs.count)
        for (i, x) in xs.enumerated() {
            let want = Float16(x).bitPattern
            #expect(fast[i] == want && portable[i] == want, "value \(x)")
        }
    }
}

@Suite struct EmbeddingIndexTests {
    static let dim = 24

    /// Unit-ish vectors [n][dim] from a seed.
    static func vectors(_ n: Int, seed: UInt64) -> [[Float]] {
        let v = randomFloats(n * dim, seed: seed)
        return (0..<n).map { Array(v[$0 * dim..<($0 + 1) * dim]) }
    }

    @Test func exactSearchEqualsBruteForceAtAnyThreadCount() throws {
        let dir = temporaryDirectory("index-exact")
        defer { try? FileManager.default.removeItem(at: dir) }
        let index = try EmbeddingIndex.create(at: dir, identity: testIdentity(dim: Self.dim), regions: .none)
        let rows = Self.vectors(3000, seed: 1)
        let ids = try index.add(vectors: rows.flatMap { $0 }, count: rows.count, kind: .region)
        #expect(ids.count == 3000 && Set(ids).count == 3000)
        try index.remove(vectorIDs: Array(ids[100..<400]))
        let keep = Array(0..<100) + Array(400..<3000)
        let queries = Self.vectors(3, seed: 2)
        var first: [SearchHit]?
        for threads in [1, 2, 3, 7] {
            for (qi, q) in queries.enumerated() {
                let hits = try index.search(vectors: [q], options: SearchOptions(k: 25, kind: .region, onePerImage: false, engine: .exact), threads: threads)
                let want = bruteTopK(keep.map { f16(rows[$0]) }, ids: keep.map { ids[$0] }, query: q, k: 25)
                #expect(hits.map(\.id) == want.map(\.id))
                for (h, w) in zip(hits, want) { #expect(abs(Double(h.score) - w.score) < 1e-5) }
                if qi == 0 {
                    if let first { #expect(first == hits, "same bits at \(threads) threads") } else { first = hits }
                }
            }
        }
        // Several query vectors: a vector scores its best one.
        let both = try index.search(vectors: [queries[0], queries[1]], options: SearchOptions(k: 10, kind: .region, onePerImage: false), threads: 2)
        let a = try index.search(vectors: [queries[0]], options: SearchOptions(k: 10, kind: .region, onePerImage: false), threads: 2)
        let b = try index.search(vectors: [queries[1]], options: SearchOptions(k: 10, kind: .region, onePerImage: false), threads: 2)
        let merged = (a + b).sorted { $0.score > $1.score || ($0.score == $1.score && $0.id < $1.id) }
        var seen = Set<Int64>()
        #expect(both.map(\.id) == Array(merged.filter { seen.insert($0.id).inserted }.prefix(10)).map(\.id))
    }

    @Test func compactKeepsIdsAndResults() throws {
        let dir = temporaryDirectory("index-compact")
        defer { try? FileManager.default.removeItem(at: dir) }
        let index = try EmbeddingIndex.create(at: dir, identity: testIdentity(dim: Self.dim), regions: .none)
        let rows = Self.vectors(500, seed: 3)
        let ids = try index.add(vectors: rows.flatMap { $0 }, count: 500, kind: .image)
        try index.remove(vectorIDs: ids.enumerated().filter { $0.offset % 3 == 0 }.map(\.element))
        let q = Self.vectors(1, seed: 4)[0]
        let opts = SearchOptions(k: 30, kind: .image, onePerImage: false, engine: .exact)
        let before = try index.search(vectors: [q], options: opts, threads: 2)
        try index.compact()
        let after = try index.search(vectors: [q], options: opts, threads: 2)
        #expect(before == after)
        #expect(try index.count(.image) == 500 - 167)
        try index.verify()
        // More vectors after compaction get new ids and are found.
        let more = try index.add(vectors: q, count: 1, kind: .image)
        #expect(more[0] > ids.last!)
        #expect(try index.search(vectors: [q], options: opts, threads: 1).first?.id == more[0])
        // Reopened, the same.
        let reopened = try EmbeddingIndex.open(at: dir, expecting: testIdentity(dim: Self.dim))
        #expect(try reopened.search(vectors: [q], options: opts, threads: 1).first?.id == more[0])
    }

    @Test func anotherModelsIndexIsRefused() throws {
        let dir = temporaryDirectory("index-model")
        defer { try? FileManager.default.removeItem(at: dir) }
        _ = try EmbeddingIndex.create(at: dir, identity: testIdentity(dim: Self.dim), regions: .grid)
        #expect(throws: ZeroSegError.self) { try EmbeddingIndex.open(at: dir, expecting: testIdentity(dim: Self.dim, fingerprint: "other")) }
        do {
            _ = try EmbeddingIndex.open(at: dir, expecting: testIdentity(dim: Self.dim, fingerprint: "other"))
        } catch let e as ZeroSegError {
            #expect(e.message.contains("was made with model test/test-model-a") && e.message.contains("not test/other"))
            #expect(e.kind == .invalidArgument(parameter: "model"))
        }
        // With the real model: the tiny model's queries do not go to this index.
        let reader = try EmbeddingIndex.open(at: dir)
        #expect(throws: ZeroSegError.self) { _ = try reader.queryVectors(SearchQuery(text: "a cat"), model: SegmentationGoldenTests.tinyModel) }
    }

    @Test func damageGivesClearErrors() throws {
        let dir = temporaryDirectory("index-damage")
        defer { try? FileManager.default.removeItem(at: dir) }
        do {
            let index = try EmbeddingIndex.create(at: dir, identity: testIdentity(dim: Self.dim), regions: .none)
            try index.add(vectors: Self.vectors(40, seed: 5).flatMap { $0 }, count: 40, kind: .image)
        }
        let shard = dir.appendingPathComponent("image-00000.f16")
        let good = try Data(contentsOf: shard)
        let q = Self.vectors(1, seed: 6)[0]
        func searchError() -> ZeroSegError? {
            do {
                let ix = try EmbeddingIndex.open(at: dir)
                _ = try ix.search(vectors: [q], options: SearchOptions(k: 3, onePerImage: false))
                try ix.verify()
                return nil
            } catch let e as ZeroSegError { return e } catch { Issue.record("not a ZeroSegError: \(error)"); return nil }
        }
        #expect(searchError() == nil)
        // A damaged header.
        var bad = good
        bad[2] ^= 0xff
        try bad.write(to: shard)
        #expect(searchError()?.message.contains("corrupt or belongs to another index") == true)
        // Truncated.
        try good.prefix(good.count - 100).write(to: shard)
        #expect(searchError()?.message.contains("is truncated") == true)
        // Flipped vector bits: found by the checksum.
        bad = good
        bad[200] ^= 0x10
        try bad.write(to: shard)
        #expect(searchError()?.message.contains("checksum does not match") == true)
        // Missing.
        try FileManager.default.removeItem(at: shard)
        #expect(searchError()?.message.contains("is missing") == true)
        try good.write(to: shard)
        #expect(searchError() == nil)
        // A database that is not one.
        let db = dir.appendingPathComponent("index.sqlite")
        for f in ["index.sqlite-wal", "index.sqlite-shm"] { try? FileManager.default.removeItem(at: dir.appendingPathComponent(f)) }
        try Data(repeating: 0x5a, count: 8192).write(to: db)
        let e = searchError()
        #expect(e?.message.contains("is corrupt") == true, "\(String(describing: e))")
        #expect(e.map { if case .badInput = $0.kind { return true } else { return false } } == true)
        // Not an index at all.
        #expect(throws: ZeroSegError.self) { try EmbeddingIndex.open(at: temporaryDirectory("index-empty")) }
    }

    @Test func oneWriterAtATime() throws {
        let dir = temporaryDirectory("index-writer")
        defer { try? FileManager.default.removeItem(at: dir) }
        let w = try EmbeddingIndex.create(at: dir, identity: testIdentity(dim: Self.dim), regions: .none)
        #expect(throws: ZeroSegError.self) { try EmbeddingIndex.open(at: dir, writable: true) }
        let reader = try EmbeddingIndex.open(at: dir)
        #expect(throws: ZeroSegError.self) { try reader.add(vectors: [Float](repeating: 0.1, count: Self.dim), count: 1, kind: .image) }
        withExtendedLifetime(w) {}
    }

    /// Readers in other index objects (own database connections) search while a writer adds:
    /// every hit is a committed vector, one of those the writer wrote, scored as stored.
    @Test func concurrentReadersWhileAWriterAdds() throws {
        let dir = temporaryDirectory("index-readers")
        defer { try? FileManager.default.removeItem(at: dir) }
        let writer = try EmbeddingIndex.create(at: dir, identity: testIdentity(dim: Self.dim), regions: .none)
        let batches = 30, per = 200
        let rows = Self.vectors(batches * per, seed: 7)
        let written = Set(rows.map { f16($0) })
        let q = Self.vectors(1, seed: 8)[0]
        try writer.add(vectors: rows[0..<per].flatMap { $0 }, count: per, kind: .image)
        let failures = ZeroSegCore.Locked<[String]>([])
        let done = ZeroSegCore.Locked(false)
        let group = DispatchGroup()
        for r in 0..<2 {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                do {
                    let reader = try EmbeddingIndex.open(at: dir)
                    var last = 0
                    for _ in 0..<400 {  // bounded
                        try reader.refresh()
                        let n = try reader.count(.image)
                        let hits = try reader.search(vectors: [q], options: SearchOptions(k: 5, kind: .image, onePerImage: false), threads: 1 + r)
                        if n < last || hits.count != 5 { failures.withLock { $0.append("count \(last) -> \(n), \(hits.count) hits") } }
                        last = n
                        for h in hits {
                            let (v, kind) = try reader.vector(id: h.id)
                            let want = zip(v, q).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
                            if !written.contains(v) || kind != .image || abs(Double(h.score) - want) > 1e-5 {
                                failures.withLock { $0.append("hit \(h.id): score \(h.score), stored \(want)") }
                            }
                        }
                        if done.withLock({ $0 }) && n == batches * per { break }
                    }
                } catch {
                    failures.withLock { $0.append("reader \(r): \(error)") }
                }
            }
        }
        for b in 1..<batches {
            try writer.add(vectors: rows[b * per..<(b + 1) * per].flatMap { $0 }, count: per, kind: .image)
        }
        done.withLock { $0 = true }
        group.wait()
        #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0 }.prefix(5))")
        #expect(try writer.count(.image) == batches * per)
        let final = try EmbeddingIndex.open(at: dir).search(vectors: [q], options: SearchOptions(k: 5, kind: .image, onePerImage: false))
        let want = bruteTopK(rows.map { f16($0) }, ids: Array(1...Int64(batches * per)), query: q, k: 5)
        #expect(final.map(\.id) == want.map(\.id))
    }
}

@Suite struct IndexApproximateTests {
    /// The approximate index of an index: close to exact, current until the next change, then
    /// `auto` falls back to exact and `approximate` refuses.
    @Test func approximateIndexFollowsGenerations() throws {
        let dir = temporaryDirectory("index-ann")
        defer { try? FileManager.default.removeItem(at: dir) }
        let dim = 32
        let index = try EmbeddingIndex.create(at: dir, identity: testIdentity(dim: dim), regions: .none)
        // Clustered vectors: 40 centres, 50 each.
        let centres = randomFloats(40 * dim, seed: 31), noise = randomFloats(2000 * dim, seed: 32)
        let rows = (0..<2000).map { i in (0..<dim).map { centres[(i % 40) * dim + $0] + 0.15 * noise[i * dim + $0] } }
        try index.add(vectors: rows.flatMap { $0 }, count: 2000, kind: .region)
        #expect(throws: ZeroSegError.self) { try index.search(vectors: [rows[0]], options: SearchOptions(k: 5, kind: .region, engine: .approximate)) }
        try index.buildApproximate(.region, settings: ApproximateSettings(lists: 40, probes: 8, trainingSample: 2000), threads: 2)
        #expect(try index.hasCurrentApproximate(.region))
        var recall = 0
        for q in rows.prefix(20) {
            let exact = try index.search(vectors: [q], options: SearchOptions(k: 10, kind: .region, onePerImage: false, engine: .exact))
            let approx = try index.search(vectors: [q], options: SearchOptions(k: 10, kind: .region, onePerImage: false, engine: .approximate))
            recall += Set(exact.map(\.id)).intersection(approx.map(\.id)).count
            for h in approx { #expect(abs(h.score - (exact.first { $0.id == h.id }?.score ?? h.score)) < 1e-3) }
        }
        #expect(recall >= 180, "recall@10 \(Double(recall) / 200)")
        // Reopened: the file is found and current.
        #expect(try EmbeddingIndex.open(at: dir).hasCurrentApproximate(.region))
        // A change makes it stale.
        try index.add(vectors: rows[0], count: 1, kind: .region)
        #expect(try !index.hasCurrentApproximate(.region))
        #expect(throws: ZeroSegError.self) { try index.search(vectors: [rows[0]], options: SearchOptions(k: 5, kind: .region, engine: .approximate)) }
        #expect(try index.resolvedEngine(.auto, kind: .region) == .exact)
    }
}
