import Foundation
import GRDB
import ZeroSegCore
import ZeroSegANN
import ZeroSegSegmentation

// An index of embeddings in one directory:
//
//   INDEX/index.sqlite (+ -wal, -shm)   metadata (IndexDatabase.swift)
//   INDEX/image-NNNNN.f16                image vectors, float16 (VectorShards.swift)
//   INDEX/region-NNNNN.f16               region vectors
//   INDEX/write.lock                     the one writer's lock
//
// Every change is one SQLite transaction that commits after the rows it names are on disk, so a
// process killed at any moment leaves the index as of its last commit.

/// Which model made an index: its vectors are comparable only with that model's.
public struct IndexIdentity: Sendable, Equatable, Codable {
    /// `CLIPModel.fingerprint`.
    public var fingerprint: String
    /// Where the model came from (`CLIPModel.source`), for messages.
    public var source: String
    /// The embedding width.
    public var dim: Int

    public init(fingerprint: String, source: String, dim: Int) {
        self.fingerprint = fingerprint
        self.source = source
        self.dim = dim
    }
}

/// How images are cut into regions when indexed.
public enum RegionMode: String, Sendable, CaseIterable, Codable {
    /// The two-stage mode's mask proposals (SLIC superpixels merged by their dense features).
    case proposals
    /// A coarse grid of patch cells (2x2 and 3x3).
    case grid
    /// Whole images only.
    case none
}

/// Which search engine answers.
public enum SearchEngine: String, Sendable, CaseIterable, Codable {
    /// Exact below `EmbeddingIndex.approximateThreshold` vectors (or without an up-to-date
    /// approximate index), approximate above.
    case auto
    /// Exact top-k with BLAS over every vector.
    case exact
    /// The approximate index (an error when there is none).
    case approximate
}

/// One search result.
public struct SearchHit: Sendable, Equatable {
    /// The vector's id.
    public var id: Int64
    /// Dot product of the vector (float16 as stored) with the query vector; for several query
    /// vectors the best of them.
    public var score: Float
    /// The image the vector belongs to (nil for vectors added without one).
    public var image: IndexedImage?
    /// The region (nil for whole-image vectors).
    public var region: IndexRegion?
}

/// What a search looks at.
public struct SearchOptions: Sendable, Equatable {
    /// How many hits (1...10,000).
    public var k = 20
    /// Whole images or regions.
    public var kind: VectorKind = .image
    /// At most one hit per image (its best vector). Off: every vector competes.
    public var onePerImage = true
    public var engine: SearchEngine = .auto

    public init(k: Int = 20, kind: VectorKind = .image, onePerImage: Bool = true, engine: SearchEngine = .auto) {
        self.k = k
        self.kind = kind
        self.onePerImage = onePerImage
        self.engine = engine
    }

    public static let maxK = 10_000

    public func validate() throws {
        guard k >= 1 && k <= Self.maxK else { throw ZeroSegError.invalidArgument("k must be between 1 and \(Self.maxK), not \(k)", parameter: "k") }
    }
}

/// The image data `EmbeddingIndex.add` stores with an image's vectors.
public struct ImageEmbeddings: Sendable {
    public var path: String
    public var sha256: String
    public var bytes: Int
    public var width: Int
    public var height: Int
    /// The whole image's embedding: [dim].
    public var global: [Float]
    /// Its regions and their embeddings ([dim] each).
    public var regions: [(region: IndexRegion, vector: [Float])]

    public init(path: String, sha256: String, bytes: Int, width: Int, height: Int, global: [Float],
                regions: [(region: IndexRegion, vector: [Float])]) {
        self.path = path
        self.sha256 = sha256
        self.bytes = bytes
        self.width = width
        self.height = height
        self.global = global
        self.regions = regions
    }
}

/// An embedding index: float16 vectors of images and regions with their metadata, searched
/// exactly (BLAS) or approximately. Open it for reading (any number of processes and threads) or
/// for writing (one process; `add`, `remove`, `compact`); a reader sees the index as of its last
/// `refresh()` (or opening).
///
/// Thread-safe: searches may run concurrently; writes are serialised.
public final class EmbeddingIndex: @unchecked Sendable {
    public let directory: URL
    public let identity: IndexIdentity
    public let regionMode: RegionMode
    let db: IndexDatabase
    let indexID: UUID
    private let writer: WriterLock?
    private let writeLock = NSLock()
    /// Per kind: the snapshot searches use (loaded on first use, replaced by `refresh`).
    private let snapshots = Locked<[VectorKind: KindSnapshot]>([:])
    /// Per kind: the approximate index loaded, with the generation it was built at.
    let approximate = Locked<[VectorKind: (Int, ApproximateIndex)]>([:])

    /// Vectors from which `SearchEngine.auto` uses the approximate index (when it is up to date),
    /// and `zeroseg index` builds one (docs/index.md: where exact search gets slower than the
    /// approximate index and its recall is good).
    public static let approximateThreshold = 500_000

    /// Largest embedding width an index holds (an index's database saying more is damaged).
    static let maxDimension = 8192
    static let databaseName = "index.sqlite"

    private init(directory: URL, identity: IndexIdentity, regionMode: RegionMode, db: IndexDatabase, indexID: UUID, writer: WriterLock?) {
        self.directory = directory
        self.identity = identity
        self.regionMode = regionMode
        self.db = db
        self.indexID = indexID
        self.writer = writer
    }

    // MARK: Opening

    /// Creates a new index in `directory` (made if missing; it must not hold an index already).
    public static func create(at directory: URL, identity: IndexIdentity, regions: RegionMode) throws -> EmbeddingIndex {
        guard (1...maxDimension).contains(identity.dim) else {
            throw ZeroSegError.invalidArgument("embedding width \(identity.dim) is outside 1...\(maxDimension)", parameter: "dim")
        }
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        } catch {
            throw ZeroSegError.io("cannot create the index directory \(directory.path): \(error.localizedDescription)", file: directory.path)
        }
        let dbURL = directory.appendingPathComponent(databaseName)
        guard !FileManager.default.fileExists(atPath: dbURL.path) else {
            throw ZeroSegError.invalidArgument("\(directory.path) already holds an index", parameter: "index")
        }
        let lock = try WriterLock(directory)
        let id = UUID()
        try IndexDatabase.create(at: dbURL, meta: [
            ("format", IndexDatabase.formatVersion), ("model_fingerprint", identity.fingerprint),
            ("model_source", identity.source), ("dim", String(identity.dim)),
            ("regions", regions.rawValue), ("index_id", id.uuidString), ("generation", "0")])
        let db = try IndexDatabase(url: dbURL)
        return EmbeddingIndex(directory: directory, identity: identity, regionMode: regions, db: db, indexID: id, writer: lock)
    }

    /// Opens the index in `directory`. With `expecting`, an index made by another model is refused.
    /// `writable`: take the writer's lock (an error while another process holds it), and remove
    /// files a killed writer left behind.
    public static func open(at directory: URL, expecting model: IndexIdentity? = nil, writable: Bool = false) throws -> EmbeddingIndex {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory.path, isDirectory: &isDir), isDir.boolValue else {
            throw ZeroSegError.badInput("no index at \(directory.path) (not a directory)", file: directory.path)
        }
        let lock = writable ? try WriterLock(directory) : nil
        let db = try IndexDatabase(url: directory.appendingPathComponent(databaseName))
        let meta = try db.meta()
        func need(_ key: String) throws -> String {
            guard let v = meta[key] else {
                throw ZeroSegError.badInput("index \(directory.path) is damaged or not a zeroseg index (no \(key) in its database)", file: directory.path)
            }
            return v
        }
        guard try need("format") == IndexDatabase.formatVersion else {
            throw ZeroSegError.unsupported("index \(directory.path) has format \(meta["format"]!), this zeroseg reads format \(IndexDatabase.formatVersion)")
        }
        guard let dim = Int(try need("dim")), (1...maxDimension).contains(dim), let regions = RegionMode(rawValue: try need("regions")),
              let id = UUID(uuidString: try need("index_id")) else {
            throw ZeroSegError.badInput("index \(directory.path) is damaged (bad dim, regions or index_id)", file: directory.path)
        }
        let identity = IndexIdentity(fingerprint: try need("model_fingerprint"), source: meta["model_source"] ?? "?", dim: dim)
        let index = EmbeddingIndex(directory: directory, identity: identity, regionMode: regions, db: db, indexID: id, writer: lock)
        if let model { try index.check(model) }
        if writable { try index.removeOrphanShards() }
        return index
    }

    /// Whether `directory` holds an index.
    public static func exists(at directory: URL) -> Bool {
        FileManager.default.fileExists(atPath: directory.appendingPathComponent(databaseName).path)
    }

    func requireWriter() throws {
        guard writer != nil else { throw ZeroSegError.invalidArgument("the index was opened for reading only", parameter: "writable") }
    }

    // MARK: Reading

    /// Images, sorted by path.
    public func images() throws -> [IndexedImage] { try db.images() }

    /// The picture with this id (`IndexedImage.id`, a hit's `image.id`), nil when there is none.
    public func image(id: Int64) throws -> IndexedImage? { try db.image(id: id) }

    /// Number of images.
    public func imageCount() throws -> Int { try db.reading { try Int.fetchOne($0, sql: "SELECT count(*) FROM images") ?? 0 } }

    /// Number of vectors of `kind`.
    public func count(_ kind: VectorKind) throws -> Int {
        try db.reading { try Int.fetchOne($0, sql: "SELECT count(*) FROM vectors WHERE kind = ?", arguments: [kind.rawValue]) ?? 0 }
    }

    /// The stored vector `id` (float16 widened to float32) and its kind.
    public func vector(id: Int64) throws -> (vector: [Float], kind: VectorKind) {
        try vector(id: id, retry: true)
    }

    private func vector(id: Int64, retry: Bool) throws -> (vector: [Float], kind: VectorKind) {
        let found = try db.reading { d -> (kind: VectorKind.RawValue, shard: Int, slot: Int)? in
            guard let row = try Row.fetchOne(d, sql: "SELECT kind, shard, slot FROM vectors WHERE id = ?", arguments: [id]) else { return nil }
            return (try row.decode(forColumn: "kind"), try row.decode(forColumn: "shard"), try row.decode(forColumn: "slot"))
        }
        guard let found, let kind = VectorKind(rawValue: found.kind) else {
            throw ZeroSegError.invalidArgument("no vector \(id) in the index", parameter: "id")
        }
        let snap = try snapshot(kind)
        let (shard, slot) = (found.shard, found.slot)
        guard let view = snap.shards.first(where: { $0.slots.number == shard }), slot < view.map.rows, view.slots.ids[slot] == id else {
            // Added or moved after this reader's snapshot: once more with a fresh one.
            guard retry else { throw ZeroSegError.badInput("vector \(id) is named by the database but not in its shard: the index is damaged; rebuild it") }
            try refresh()
            return try vector(id: id, retry: false)
        }
        var out = [Float](repeating: 0, count: identity.dim)
        view.map.rows(slot, 1, into: &out)
        return (out, kind)
    }

    /// Reloads what the index holds (a reader sees other processes' commits after this).
    public func refresh() throws {
        snapshots.withLock { $0.removeAll() }
    }

    /// The generation: a number that every change to the index increases.
    public func generation() throws -> Int { try db.generation() }

    struct KindSnapshot: Sendable {
        var kind: VectorKind
        var generation: Int
        var shards: [ShardView]
        /// Live vectors.
        var count: Int
    }

    func snapshot(_ kind: VectorKind) throws -> KindSnapshot {
        if let s = snapshots.withLock({ $0[kind] }) { return s }
        var lastError: Error?
        for _ in 0..<3 {
            let (gen, slots) = try db.reading { d in (try IndexDatabase.generation(d), try IndexDatabase.slots(d, kind: kind)) }
            do {
                let views = try slots.map { s in
                    ShardView(slots: s, map: try ShardMap(url: shardURL(directory, kind: kind, number: s.number), dim: identity.dim,
                                                          kind: kind, number: s.number, indexID: indexID, rows: s.rows))
                }
                let live = slots.reduce(0) { a, s in a + s.ids.reduce(0) { $0 + ($1 >= 0 ? 1 : 0) } }
                let snap = KindSnapshot(kind: kind, generation: gen, shards: views, count: live)
                snapshots.withLock { $0[kind] = snap }
                return snap
            } catch {
                // A compaction may have replaced the shards between the read and the maps: try again.
                lastError = error
                if try db.generation() == gen { throw error }
            }
        }
        throw lastError!
    }

    // MARK: Writing

    /// The append position of `kind`: its last shard, the rows in use there and their CRC.
    private func appendPosition(_ d: Database, _ kind: VectorKind) throws -> (shard: Int, rows: Int, crc: UInt32) {
        if let row = try Row.fetchOne(d, sql: "SELECT number, rows, crc FROM shards WHERE kind = ? ORDER BY number DESC LIMIT 1", arguments: [kind.rawValue]) {
            return (try row.decode(forColumn: "number"), try row.decode(forColumn: "rows"), UInt32(truncatingIfNeeded: try row.decode(Int64.self, forColumn: "crc")))
        }
        return (0, 0, 0)
    }

    /// Writes rows [n, dim] of `kind` after the last committed row, flushed; returns (shard, slot)
    /// per row and the new shard sizes. Run inside the write lock, before the transaction.
    private func appendRows(_ rows: [Float], kind: VectorKind, from start: (shard: Int, rows: Int, crc: UInt32)) throws
        -> (places: [(shard: Int, slot: Int)], sizes: [Int: (rows: Int, crc: UInt32)]) {
        let dim = identity.dim, n = rows.count / dim
        var places: [(Int, Int)] = [], sizes: [Int: (rows: Int, crc: UInt32)] = [:]
        var shard = start.shard, slot = start.rows, crc = start.crc, i = 0
        var writers: [Int: ShardWriter] = [:]
        while i < n {
            if slot >= shardCapacity { shard += 1; slot = 0; crc = 0 }
            let take = min(n - i, shardCapacity - slot)
            let w = try writers[shard] ?? ShardWriter(url: shardURL(directory, kind: kind, number: shard), dim: dim, kind: kind, number: shard, indexID: indexID)
            writers[shard] = w
            crc = try rows.withUnsafeBufferPointer { try w.write($0.baseAddress! + i * dim, count: take, at: slot, crc: crc) }
            for j in 0..<take { places.append((shard, slot + j)) }
            slot += take
            sizes[shard] = (slot, crc)
            i += take
        }
        for w in writers.values { try w.sync() }
        return (places, sizes)
    }

    private static func saveSizes(_ d: Database, kind: VectorKind, _ sizes: [Int: (rows: Int, crc: UInt32)]) throws {
        for (number, s) in sizes {
            try d.execute(sql: "INSERT INTO shards(kind, number, rows, crc) VALUES (?, ?, ?, ?) ON CONFLICT(kind, number) DO UPDATE SET rows = excluded.rows, crc = excluded.crc",
                          arguments: [kind.rawValue, number, s.rows, Int64(s.crc)])
        }
    }

    private func checkVectors(_ v: [Float], count: Int) throws {
        guard v.count == count * identity.dim else {
            throw ZeroSegError.invalidArgument("\(v.count) values for \(count) vectors of width \(identity.dim)", parameter: "vectors")
        }
        guard v.allSatisfy({ $0.isFinite }) else { throw ZeroSegError.invalidArgument("vectors hold a value that is not finite", parameter: "vectors") }
    }

    /// Adds images with their vectors, all in one transaction; an image whose path is in the index
    /// already is replaced. Returns the images' ids.
    @discardableResult
    public func add(_ items: [ImageEmbeddings]) throws -> [Int64] {
        try requireWriter()
        guard !items.isEmpty else { return [] }
        for it in items {
            try checkVectors(it.global, count: 1)
            for r in it.regions { try checkVectors(r.vector, count: 1) }
        }
        writeLock.lock()
        defer { writeLock.unlock() }
        let globals = items.flatMap(\.global), regions = items.flatMap { $0.regions.flatMap(\.vector) }
        let (gPos, rPos) = try db.reading { d in (try appendPosition(d, .image), try appendPosition(d, .region)) }
        let g = try appendRows(globals, kind: .image, from: gPos)
        let r = regions.isEmpty ? (places: [], sizes: [:]) : try appendRows(regions, kind: .region, from: rPos)
        let ids: [Int64] = try db.writing { d in
            var ids: [Int64] = []
            var ri = 0
            for (i, it) in items.enumerated() {
                try d.execute(sql: "DELETE FROM images WHERE path = ?", arguments: [it.path])
                try d.execute(sql: "INSERT INTO images(path, sha256, bytes, width, height) VALUES (?, ?, ?, ?, ?)",
                              arguments: [it.path, it.sha256, it.bytes, it.width, it.height])
                let imageID = d.lastInsertedRowID
                ids.append(imageID)
                try d.execute(sql: "INSERT INTO vectors(image_id, kind, shard, slot) VALUES (?, ?, ?, ?)",
                              arguments: [imageID, VectorKind.image.rawValue, g.places[i].shard, g.places[i].slot])
                for reg in it.regions {
                    let b = reg.region.box
                    let mask = try reg.region.mask.map { String(decoding: try JSONEncoder().encode($0), as: UTF8.self) }
                    try d.execute(sql: "INSERT INTO vectors(image_id, kind, shard, slot, x0, y0, x1, y1, source, mask) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                  arguments: [imageID, VectorKind.region.rawValue, r.places[ri].shard, r.places[ri].slot,
                                              b.x0, b.y0, b.x1, b.y1, reg.region.source, mask])
                    ri += 1
                }
            }
            try Self.saveSizes(d, kind: .image, g.sizes)
            try Self.saveSizes(d, kind: .region, r.sizes)
            try IndexDatabase.bumpGeneration(d)
            return ids
        }
        try refresh()
        return ids
    }

    /// Adds bare vectors [count, dim] of `kind` (no image); returns their ids in order.
    @discardableResult
    public func add(vectors: [Float], count: Int, kind: VectorKind) throws -> [Int64] {
        try requireWriter()
        try checkVectors(vectors, count: count)
        guard count > 0 else { return [] }
        writeLock.lock()
        defer { writeLock.unlock() }
        let pos = try db.reading { try appendPosition($0, kind) }
        let w = try appendRows(vectors, kind: kind, from: pos)
        let ids: [Int64] = try db.writing { d in
            let st = try d.makeStatement(sql: "INSERT INTO vectors(kind, shard, slot) VALUES (?, ?, ?)")
            var ids: [Int64] = []
            ids.reserveCapacity(count)
            for p in w.places {
                try st.execute(arguments: [kind.rawValue, p.shard, p.slot])
                ids.append(d.lastInsertedRowID)
            }
            try Self.saveSizes(d, kind: kind, w.sizes)
            try IndexDatabase.bumpGeneration(d)
            return ids
        }
        try refresh()
        return ids
    }

    /// Removes vectors by id (unknown ids are ignored). Their slots are reclaimed by `compact`.
    public func remove(vectorIDs: [Int64]) throws {
        try requireWriter()
        writeLock.lock()
        defer { writeLock.unlock() }
        try db.writing { d in
            let st = try d.makeStatement(sql: "DELETE FROM vectors WHERE id = ?")
            for id in vectorIDs { try st.execute(arguments: [id]) }
            try IndexDatabase.bumpGeneration(d)
        }
        try refresh()
    }

    /// Removes images (and their vectors) by path; unknown paths are ignored.
    public func remove(imagePaths: [String]) throws {
        try requireWriter()
        guard !imagePaths.isEmpty else { return }
        writeLock.lock()
        defer { writeLock.unlock() }
        try db.writing { d in
            for p in imagePaths { try d.execute(sql: "DELETE FROM images WHERE path = ?", arguments: [p]) }
            try IndexDatabase.bumpGeneration(d)
        }
        try refresh()
    }

    /// Rewrites the shards with the live vectors only (ids unchanged), then deletes the old files.
    /// Killed midway, the index stays as it was (the new files are removed on the next opening).
    public func compact() throws {
        try requireWriter()
        writeLock.lock()
        defer { writeLock.unlock() }
        try refresh()
        let dim = identity.dim
        var oldFiles: [URL] = []
        for kind in VectorKind.allCases {
            let snap = try snapshot(kind)
            let firstNew = (snap.shards.map(\.slots.number).max() ?? -1) + 1
            var live: [(id: Int64, shard: Int, slot: Int)] = []
            for v in snap.shards { for (slot, id) in v.slots.ids.enumerated() where id >= 0 { live.append((id, v.slots.number, slot)) } }
            live.sort { $0.id < $1.id }
            // Copy in order, a shard's worth at a time, as float16 bits (no rounding).
            var places: [(shard: Int, slot: Int)] = [], sizes: [Int: (rows: Int, crc: UInt32)] = [:]
            var i = 0, number = firstNew
            while i < live.count {
                let take = min(shardCapacity, live.count - i)
                var rows = [Float](repeating: 0, count: take * dim)
                for j in 0..<take {
                    let src = snap.shards.first { $0.slots.number == live[i + j].shard }!
                    rows.withUnsafeMutableBufferPointer { src.map.rows(live[i + j].slot, 1, into: $0.baseAddress! + j * dim) }
                }
                let w = try ShardWriter(url: shardURL(directory, kind: kind, number: number), dim: dim, kind: kind, number: number, indexID: indexID)
                let crc = try rows.withUnsafeBufferPointer { try w.write($0.baseAddress!, count: take, at: 0) }  // float16 → float32 → float16: exact
                w.truncate(rows: take)
                try w.sync()
                for j in 0..<take { places.append((number, j)) }
                sizes[number] = (take, crc)
                number += 1
                i += take
            }
            try db.writing { d in
                let st = try d.makeStatement(sql: "UPDATE vectors SET shard = ?, slot = ? WHERE id = ?")
                // Move through slots no row holds: first out of the way (negative slots), then in place.
                for (k, v) in live.enumerated() { try st.execute(arguments: [places[k].shard, -1 - k, v.id]) }
                try d.execute(sql: "UPDATE vectors SET slot = -1 - slot WHERE kind = ? AND slot < 0", arguments: [kind.rawValue])
                try d.execute(sql: "DELETE FROM shards WHERE kind = ?", arguments: [kind.rawValue])
                try Self.saveSizes(d, kind: kind, sizes)
                try IndexDatabase.bumpGeneration(d)
            }
            oldFiles += snap.shards.map { shardURL(directory, kind: kind, number: $0.slots.number) }
        }
        try refresh()
        for u in oldFiles { try? FileManager.default.removeItem(at: u) }
    }

    /// Deletes shard files the database does not name (a killed compaction's, or a killed first
    /// append's), and cuts named ones after their last used row.
    private func removeOrphanShards() throws {
        let named = try db.reading { d in
            try Row.fetchAll(d, sql: "SELECT kind, number, rows FROM shards").map { (VectorKind(rawValue: try $0.get("kind")) ?? .image, try $0.get("number") as Int, try $0.get("rows") as Int) }
        }
        var keep: [String: Int] = [:]
        for (k, n, r) in named { keep[shardURL(directory, kind: k, number: n).lastPathComponent] = r }
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        for f in files where f.hasSuffix(".f16") && (f.hasPrefix("image-") || f.hasPrefix("region-")) {
            if keep[f] == nil { try? FileManager.default.removeItem(at: directory.appendingPathComponent(f)) }
        }
    }

    // MARK: Checking

    /// Reads every named vector and checks the database's references: a damaged index is a
    /// one-line error naming what is wrong.
    public func verify() throws {
        try refresh()
        for kind in VectorKind.allCases {
            let snap = try snapshot(kind)
            var buf = [Float](repeating: 0, count: identity.dim)
            for v in snap.shards {
                guard v.map.crc() == v.slots.crc else {
                    throw ZeroSegError.badInput("vector shard \(v.map.url.path) is corrupt (its checksum does not match the database's): rebuild the index", file: v.map.url.path)
                }
                for (slot, id) in v.slots.ids.enumerated() where id >= 0 {
                    v.map.rows(slot, 1, into: &buf)
                    guard buf.allSatisfy({ $0.isFinite }) else {
                        throw ZeroSegError.badInput("vector \(id) in \(v.map.url.path) is not finite: the shard is corrupt; rebuild the index", file: v.map.url.path)
                    }
                }
            }
        }
        let problems = try db.reading { d in try String.fetchAll(d, sql: "PRAGMA integrity_check") }
        guard problems == ["ok"] else {
            throw ZeroSegError.badInput("index database \(db.url.path) is corrupt (\(problems.first ?? "?")): rebuild the index", file: db.url.path)
        }
    }
}
