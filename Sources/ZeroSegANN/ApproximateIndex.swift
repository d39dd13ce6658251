import CFaiss
import Foundation
import ZeroSegCore
#if canImport(Glibc)
import Glibc
#endif

// Approximate nearest-neighbour search by inner product (cosine on L2-normalised vectors) over
// FAISS's inverted-file index (Debian libfaiss-dev 1.7.3 through the C shim in Sources/CFaiss):
// k-means splits the collection into `lists` cells; a query scans the `probes` cells whose
// centroids are nearest. Vectors are stored as fp16 residuals (IndexIVFScalarQuantizer QT_fp16).

/// How an `ApproximateIndex` is built and searched.
public struct ApproximateSettings: Sendable, Equatable, Codable {
    /// Inverted lists (k-means cells). At least 1 and at most the number of vectors built from.
    public var lists: Int
    /// Lists a query scans by default (clamped to `lists`); more is slower and finds more.
    public var probes: Int
    /// Vectors (a seeded sample) the k-means that places the lists is trained on; at least
    /// `lists`, clamped to the number of vectors.
    public var trainingSample: Int

    public init(lists: Int, probes: Int, trainingSample: Int) {
        self.lists = lists
        self.probes = probes
        self.trainingSample = trainingSample
    }

    /// Defaults for a collection of `n` vectors: lists ≈ 2·√n, probes 16, a training sample of
    /// 32 vectors a list.
    ///
    /// Measured (2 threads; clustered unit vectors, each normalise(centre + 0.045·gaussian) around
    /// one of 4,096 random unit centres, cosine ≈ 0.70 to it; 100 fresh queries drawn the same
    /// way; recall@20 against brute force; a throwaway executable over this target, not in the
    /// repository: `measure 1000000 2000 32 4,8,16,32`). At 1,000,000 × 512, lists 2,000
    /// (= forCount), training sample 64,000: build 53.8 s, 1,382 bytes a vector (1,382 MB):
    ///
    ///     probes   recall@20   single query   batch of 100
    ///          4     0.9785        2.66 ms     1.61 ms/query
    ///          8     0.9855        4.08 ms     3.08 ms/query
    ///         16     0.9880        6.69 ms     5.98 ms/query   <- default
    ///         32     0.9890       12.22 ms    11.26 ms/query
    ///
    /// The goal (recall@20 ≥ 0.95 under 10 ms a query) holds from probes 4 to 16. At 100,000 × 512
    /// on the same 4,096 centres (only ~24 vectors a centre) with 632 lists, recall was lower:
    /// 0.684 / 0.743 / 0.786 at probes 4 / 8 / 16 (3.3 / 5.1 / 9.1 ms); raise `probes` or `lists`
    /// for such data. Debian's FAISS is a generic build (no AVX, software fp16 decoding): a scan
    /// costs ≈ 0.8 µs a vector at d = 512, and a single query runs on one thread (FAISS splits
    /// work by query).
    public static func forCount(_ n: Int) -> ApproximateSettings {
        let n = max(1, n)
        let lists = max(1, min(n, Int((2 * Double(n).squareRoot()).rounded())))
        return ApproximateSettings(lists: lists, probes: min(lists, 16), trainingSample: min(n, 32 * lists))
    }
}

/// An approximate nearest-neighbour index over float vectors of one dimension, with explicit
/// `Int64` ids; search scores are inner products, best (largest) first.
///
/// Thread safety: any number of `search`es (and `count`, `memoryBytes`, `write`) may run at once
/// on one instance (FAISS's search only reads the index); `add` and `remove` take the instance's
/// write lock, so they wait for running searches and searches wait for them.
///
/// Determinism: the same vectors, ids, settings and thread counts give the same index and the
/// same results (k-means is seeded; FAISS's parallel loops are partitioned by the data and thread
/// count, never by timing). A single query and the same query inside a batch may differ in the
/// last bits of a score (FAISS assigns batches of 20 or more with BLAS).
public final class ApproximateIndex: @unchecked Sendable {
    private let handle: OpaquePointer
    private let lock: UnsafeMutablePointer<pthread_rwlock_t>

    /// The fp16 scalar quantizer (see `ApproximateSettings.forCount` for the measurements).
    static let codec = ZS_FAISS_CODEC_FP16

    private init(handle: OpaquePointer) {
        self.handle = handle
        lock = .allocate(capacity: 1)
        pthread_rwlock_init(lock, nil)
    }

    deinit {
        zs_faiss_free(handle)
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    private func reading<R>(_ body: () throws -> R) rethrows -> R {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }

    private func writing<R>(_ body: () throws -> R) rethrows -> R {
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }

    /// Trains the lists on a seeded sample of `settings.trainingSample` of the vectors, then adds
    /// all of them. `vectors`: [ids.count, dim] row-major, finite; `ids`: one each, not -1
    /// (duplicates are kept as separate entries).
    public static func build(vectors: UnsafePointer<Float>, ids: [Int64], dim: Int, settings: ApproximateSettings,
                             threads: Int) throws -> ApproximateIndex {
        let n = ids.count
        guard dim > 0 else { throw bad("dim", "the dimension must be positive, not \(dim)") }
        guard n > 0 else { throw bad("ids", "building needs at least one vector") }
        guard settings.lists >= 1, settings.lists <= n else {
            throw bad("lists", "lists must be in 1...\(n) (the number of vectors), not \(settings.lists)")
        }
        guard settings.probes >= 1 else { throw bad("probes", "probes must be at least 1, not \(settings.probes)") }
        guard settings.trainingSample >= settings.lists else {
            throw bad("trainingSample", "the training sample (\(settings.trainingSample)) must be at least lists (\(settings.lists))")
        }
        try checkIds(ids)
        try checkFinite(vectors, count: n * dim)

        // The training sample: a seeded partial Fisher-Yates choice of rows, in row order.
        let sampleCount = min(n, settings.trainingSample)
        var sample: [Float] = []
        if sampleCount < n {
            var rows = Array(0..<n)
            var rng = SplitMix64(seed: 0x414E_4E5F_7472_6169) // "ANN_trai"
            for i in 0..<sampleCount {
                let j = i + Int(rng.next() % UInt64(n - i))
                rows.swapAt(i, j)
            }
            let chosen = rows[0..<sampleCount].sorted()
            sample = [Float](unsafeUninitializedCapacity: sampleCount * dim) { buf, count in
                for (r, row) in chosen.enumerated() {
                    (buf.baseAddress! + r * dim).update(from: vectors + row * dim, count: dim)
                }
                count = sampleCount * dim
            }
        }

        ensureSingleThreadedBLAS()
        var out: OpaquePointer?
        var err = [CChar](repeating: 0, count: 512)
        let rc: Int32 = sample.isEmpty
            ? zs_faiss_train_new(Int64(dim), Int64(settings.lists), codec, Int64(settings.probes), vectors, Int64(n),
                                 clampThreads(threads), &out, &err, err.count)
            : sample.withUnsafeBufferPointer {
                zs_faiss_train_new(Int64(dim), Int64(settings.lists), codec, Int64(settings.probes), $0.baseAddress!,
                                   Int64(sampleCount), clampThreads(threads), &out, &err, err.count)
            }
        guard rc == 0, let handle = out else { throw ZeroSegError("ANN index: training failed: \(message(err))") }
        let index = ApproximateIndex(handle: handle)
        try index.addChecked(vectors: vectors, ids: ids, threads: threads)
        return index
    }

    /// Adds vectors: [ids.count, dim] row-major, finite, with their ids (not -1).
    public func add(vectors: UnsafePointer<Float>, ids: [Int64], threads: Int) throws {
        try Self.checkIds(ids)
        try Self.checkFinite(vectors, count: ids.count * dim)
        try addChecked(vectors: vectors, ids: ids, threads: threads)
    }

    private func addChecked(vectors: UnsafePointer<Float>, ids: [Int64], threads: Int) throws {
        guard !ids.isEmpty else { return }
        ensureSingleThreadedBLAS()
        var err = [CChar](repeating: 0, count: 512)
        let rc = writing {
            zs_faiss_add(handle, vectors, ids, Int64(ids.count), Self.clampThreads(threads), &err, err.count)
        }
        guard rc == 0 else { throw ZeroSegError("ANN index: adding vectors failed: \(Self.message(err))") }
    }

    /// Removes every entry whose id is in `ids` (a scan of the whole index); returns how many.
    @discardableResult
    public func remove(ids: [Int64], threads: Int) throws -> Int {
        guard !ids.isEmpty else { return 0 }
        var removed: Int64 = 0
        var err = [CChar](repeating: 0, count: 512)
        let rc = writing {
            zs_faiss_remove_ids(handle, ids, Int64(ids.count), Self.clampThreads(threads), &removed, &err, err.count)
        }
        guard rc == 0 else { throw ZeroSegError("ANN index: removing ids failed: \(Self.message(err))") }
        return Int(removed)
    }

    /// The `k` best entries for each of `count` queries: [count, dim] row-major, finite, best
    /// (largest inner product) first; fewer than `k` when the scanned lists hold fewer.
    /// `probes`: lists scanned (default: the settings the index was built with), clamped to `lists`.
    public func search(_ queries: UnsafePointer<Float>, count: Int, k: Int, probes: Int? = nil,
                       threads: Int) throws -> [[(id: Int64, score: Float)]] {
        guard count >= 0 else { throw Self.bad("count", "the query count must not be negative, not \(count)") }
        guard k >= 1 else { throw Self.bad("k", "k must be at least 1, not \(k)") }
        if let probes, probes < 1 { throw Self.bad("probes", "probes must be at least 1, not \(probes)") }
        guard count > 0 else { return [] }
        let d = dim
        try Self.checkFinite(queries, count: count * d)
        let (total, overflow) = count.multipliedReportingOverflow(by: k)
        guard !overflow, total <= 1 << 34 else { throw Self.bad("k", "count × k (\(count) × \(k)) is too large") }
        var scores = [Float](repeating: 0, count: total)
        var ids = [Int64](repeating: -1, count: total)
        var err = [CChar](repeating: 0, count: 512)
        ensureSingleThreadedBLAS()
        let rc = reading {
            zs_faiss_search(handle, queries, Int64(count), Int64(k), Int64(probes ?? 0), Self.clampThreads(threads),
                            &scores, &ids, &err, err.count)
        }
        guard rc == 0 else { throw ZeroSegError("ANN index: search failed: \(Self.message(err))") }
        return (0..<count).map { q in
            var row: [(id: Int64, score: Float)] = []
            row.reserveCapacity(k)
            for j in q * k..<(q + 1) * k where ids[j] != -1 { row.append((ids[j], scores[j])) }
            return row
        }
    }

    /// Entries held.
    public var count: Int { reading { Int(zs_faiss_ntotal(handle)) } }
    /// The vectors' dimension.
    public var dim: Int { Int(zs_faiss_dim(handle)) }
    /// Inverted lists.
    public var lists: Int { Int(zs_faiss_nlist(handle)) }
    /// Lists a search scans when `probes` is not given.
    public var defaultProbes: Int { reading { Int(zs_faiss_nprobe(handle)) } }
    /// Heap bytes the index holds (codes and ids at their allocated capacity, centroids).
    public var memoryBytes: Int { reading { Int(zs_faiss_memory_bytes(handle)) } }

    /// Writes the index to `url` atomically (a temporary file renamed over `url`): FAISS's own
    /// format followed by a 24-byte trailer with the length and a CRC-32, which `read` checks.
    public func write(to url: URL) throws {
        try writeFileAtomically(url, what: "ANN index") { fd in
            var err = [CChar](repeating: 0, count: 512)
            let rc = reading { zs_faiss_write_fd(handle, fd, &err, err.count) }
            guard rc == 0 else { throw AtomicWriteFailure(reason: Self.message(err)) }
        }
    }

    /// Reads an index written by `write(to:)`. A missing, truncated, corrupt or foreign file is a
    /// thrown `ZeroSegError` of kind `.badInput(file:)` with a one-line message.
    public static func read(from url: URL) throws -> ApproximateIndex {
        let path = url.path
        var out: OpaquePointer?
        var err = [CChar](repeating: 0, count: 512)
        guard zs_faiss_read_path(path, &out, &err, err.count) == 0, let handle = out else {
            throw ZeroSegError.badInput("cannot read ANN index \(path): \(message(err))", file: path)
        }
        return ApproximateIndex(handle: handle)
    }

    // MARK: - Checks

    private static func bad(_ parameter: String, _ why: String) -> ZeroSegError {
        .invalidArgument("ANN index: \(why)", parameter: parameter)
    }

    private static func checkIds(_ ids: [Int64]) throws {
        if let i = ids.firstIndex(of: -1) { throw bad("ids", "id -1 (at \(i)) is reserved for missing results") }
    }

    private static func checkFinite(_ p: UnsafePointer<Float>, count: Int) throws {
        for i in 0..<count where !p[i].isFinite {
            throw bad("vectors", "value \(i) (\(p[i])) is not finite")
        }
    }

    private static func clampThreads(_ threads: Int) -> Int32 { Int32(min(max(threads, 1), 256)) }

    private static func message(_ err: [CChar]) -> String {
        let s = err.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        return s.isEmpty ? "unknown error" : s
    }
}
