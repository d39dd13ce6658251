import Foundation
import ZeroSegANN
import ZeroSegCLIP
import ZeroSegCore
import ZeroSegSegmentation

/// The index cases of `zeroseg bench` (`--cases index,search`). Timings are best-of runs of whole
/// operations; compare them only within one run.
public enum IndexBench {
    // MARK: Indexing throughput

    /// The pictures of the `index` case: the first `count` image files of `folder` (sorted by
    /// name), repeated if it has fewer.
    public static func pictures(in folder: URL, count: Int) throws -> [URL] {
        let all = try DirectoryIndexer.imageFiles(under: [folder])
        guard !all.isEmpty else { throw ZeroSegError.badInput("no pictures in \(folder.path)", file: folder.path) }
        return (0..<count).map { URL(fileURLWithPath: all[$0 % all.count]) }
    }

    /// Seconds to index `files` into a new index (read, hash, decode, one encoder pass per batch,
    /// regions, storage): the best of `repeats` runs after one warm-up.
    public static func indexingSeconds(model: CLIPModel, files: [URL], options: IndexingOptions, repeats: Int, threads: Int) throws -> Double {
        let indexer = DirectoryIndexer(embedder: try RegionEmbedder(model: model, options: options, threads: threads))
        return try Bench.best(repeats) {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("zeroseg-bench-index-\(UUID().uuidString)")
            defer { try? FileManager.default.removeItem(at: dir) }
            let index = try EmbeddingIndex.create(at: dir, identity: EmbeddingIndex.identity(of: model), regions: options.regions)
            // Duplicates of one file are one image: index copies under distinct names.
            let report = try indexer.update(index, roots: files)
            guard report.failed.isEmpty else { throw ZeroSegError("bench pictures failed: \(report.failed[0].error)") }
        }
    }

    // MARK: Search

    /// Synthetic clustered unit vectors [n, dim] (real embeddings cluster; uniform random ones in
    /// 512 dimensions have no near neighbours to find): `centres` random unit centres, each vector
    /// normalize(centre + uniform noise of amplitude `noise` per coordinate) around the centre
    /// (i·7919 mod centres); with noise 0.078 a vector's cosine to its centre is about 0.7.
    public static func clusteredVectors(_ n: Int, dim: Int, centres: Int = 4096, noise: Float = 0.078, seed: UInt64) -> [Float] {
        var c = Synth.values(name: "centres", seed: 1, count: centres * dim, amplitude: 1)
        for i in 0..<centres { normalizeRow(&c, i, dim) }
        var out = [Float](repeating: 0, count: n * dim)
        let chunk = 65_536
        for start in stride(from: 0, to: n, by: chunk) {
            let m = min(chunk, n - start)
            let z = Synth.values(name: "noise-\(start)", seed: seed, count: m * dim, amplitude: Double(noise))
            for r in 0..<m {
                let i = start + r, ci = (i &* 7919 &+ Int(seed)) % centres
                for d in 0..<dim { out[i * dim + d] = c[ci * dim + d] + z[r * dim + d] }
                normalizeRow(&out, i, dim)
            }
        }
        return out
    }

    static func normalizeRow(_ v: inout [Float], _ i: Int, _ dim: Int) {
        var s: Float = 0
        for d in 0..<dim { s += v[i * dim + d] * v[i * dim + d] }
        let inv = 1 / max(s.squareRoot(), 1e-12)
        for d in 0..<dim { v[i * dim + d] *= inv }
    }

    /// What the search case measured on one collection.
    public struct SearchFigures: Sendable {
        public var vectors: Int
        public var dim: Int
        public var k: Int
        public var queries: Int
        /// Seconds to add the vectors to a new index (float16 shards + database rows).
        public var addSeconds: Double
        /// Seconds to open the index and load its slot table (the first search's cost).
        public var openSeconds: Double
        /// Exact top-k, one query at a time: best and median seconds per query.
        public var exactBest: Double
        public var exactMedian: Double
        /// Bytes on disk per vector (shard rows + database).
        public var bytesPerVector: Double
        /// The approximate index (nil below its minimum size).
        public var approximate: Approximate?
        public struct Approximate: Sendable {
            public var settings: ApproximateSettings
            public var buildSeconds: Double
            public var best: Double
            public var median: Double
            /// Mean over the queries of |approximate top-k ∩ exact top-k| / k.
            public var recall: Double
            /// The FAISS index's memory per vector.
            public var bytesPerVector: Double
        }
    }

    /// Builds an index of `n` clustered vectors in a temporary directory and times exact and
    /// approximate top-`k` searches of `queries` single queries against each other.
    public static func search(vectors n: Int, dim: Int = 512, k: Int = 20, queries: Int = 50, approximate: Bool = true,
                              threads: Int) throws -> SearchFigures {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("zeroseg-bench-search-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let rows = clusteredVectors(n, dim: dim, seed: 1)
        let qs = clusteredVectors(queries, dim: dim, seed: 2)
        var clock = Stopwatch()
        let writer = try EmbeddingIndex.create(at: dir, identity: IndexIdentity(fingerprint: "bench", source: "bench", dim: dim), regions: .none)
        try writer.add(vectors: rows, count: n, kind: .region)
        let addSeconds = clock.lap()
        let reader = try EmbeddingIndex.open(at: dir)
        _ = try reader.count(.region)
        _ = try reader.search(vectors: [Array(qs[0..<dim])], options: SearchOptions(k: k, kind: .region, onePerImage: false, engine: .exact), threads: threads)
        let openSeconds = clock.lap()
        var exactTimes: [Double] = [], exactIDs: [[Int64]] = []
        for q in 0..<queries {
            let v = Array(qs[q * dim..<(q + 1) * dim])
            var c = Stopwatch()
            let hits = try reader.search(vectors: [v], options: SearchOptions(k: k, kind: .region, onePerImage: false, engine: .exact), threads: threads)
            exactTimes.append(c.lap())
            exactIDs.append(hits.map(\.id))
        }
        let bytes = try FileManager.default.contentsOfDirectory(atPath: dir.path).reduce(0) { a, f in
            a + ((try? FileManager.default.attributesOfItem(atPath: dir.appendingPathComponent(f).path)[.size] as? Int) ?? 0)
        }
        var fig = SearchFigures(vectors: n, dim: dim, k: k, queries: queries, addSeconds: addSeconds, openSeconds: openSeconds,
                                exactBest: exactTimes.min()!, exactMedian: median(exactTimes), bytesPerVector: Double(bytes) / Double(n))
        if approximate {
            let settings = ApproximateSettings.forCount(n)
            clock = Stopwatch()
            try writer.buildApproximate(.region, settings: settings, threads: threads)
            let build = clock.lap()
            let annReader = try EmbeddingIndex.open(at: dir)
            var times: [Double] = [], found = 0
            _ = try annReader.search(vectors: [Array(qs[0..<dim])], options: SearchOptions(k: k, kind: .region, onePerImage: false, engine: .approximate), threads: threads)
            for q in 0..<queries {
                let v = Array(qs[q * dim..<(q + 1) * dim])
                var c = Stopwatch()
                let hits = try annReader.search(vectors: [v], options: SearchOptions(k: k, kind: .region, onePerImage: false, engine: .approximate), threads: threads)
                times.append(c.lap())
                found += Set(hits.map(\.id)).intersection(exactIDs[q]).count
            }
            let ann = try annReader.currentApproximate(.region, generation: try annReader.generation())!
            fig.approximate = .init(settings: settings, buildSeconds: build, best: times.min()!, median: median(times),
                                    recall: Double(found) / Double(queries * k), bytesPerVector: Double(ann.memoryBytes) / Double(n))
        }
        return fig
    }

    static func median(_ v: [Double]) -> Double {
        let s = v.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }
}
