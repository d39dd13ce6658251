import Foundation
import GRDB
import ZeroSegCore
import ZeroSegImaging
import ZeroSegSegmentation
#if canImport(Glibc)
import Glibc
#endif

// The index's metadata in SQLite (GRDB, WAL mode: readers never block the one writer).
//
//   meta(key, value)       format, model fingerprint and source, dim, regions mode, index id,
//                          generation (bumped by every change)
//   images(id, path, sha256, bytes, width, height)
//   vectors(id, image_id, kind, shard, slot, x0, y0, x1, y1, source, mask)
//                          id: AUTOINCREMENT, never reused; image_id NULL for vectors added raw
//   shards(kind, number, rows, crc)   rows: the slots in use (the append position); crc: CRC-32
//                          of those rows' bytes (checked by `verify`)

/// One image of the index.
public struct IndexedImage: Sendable, Equatable, Codable {
    public var id: Int64
    public var path: String
    /// Hex SHA-256 of the file's bytes.
    public var sha256: String
    public var bytes: Int
    public var width: Int
    public var height: Int
}

/// A region mask as COCO's uncompressed RLE: run lengths over the pixels of a `height` x `width`
/// picture in column-major order, starting with a run of zeros.
public struct RLEMask: Sendable, Equatable, Codable {
    public var width: Int
    public var height: Int
    public var counts: [Int]

    public init(width: Int, height: Int, counts: [Int]) {
        self.width = width
        self.height = height
        self.counts = counts
    }

    /// Encodes bits: [height, width] (row-major, nonzero = inside).
    public init(bits: [UInt8], width: Int, height: Int) {
        var counts: [Int] = [], current: UInt8 = 0, run = 0
        for x in 0..<width {
            for y in 0..<height {
                let b: UInt8 = bits[y * width + x] != 0 ? 1 : 0
                if b != current { counts.append(run); run = 0; current = b }
                run += 1
            }
        }
        counts.append(run)
        self.init(width: width, height: height, counts: counts)
    }

    /// Whether the mask is one `init(bits:width:height:)` can make: a size of at most
    /// `RGBImage.defaultMaxPixels` pixels, and runs (none negative) that cover it exactly. Masks
    /// read back from an index are checked with it (a damaged database is an error, not a crash).
    public var isWellFormed: Bool {
        guard width >= 0, height >= 0 else { return false }
        let (n, o) = width.multipliedReportingOverflow(by: height)
        guard !o, n <= RGBImage.defaultMaxPixels else { return false }
        var total = 0
        for c in counts {
            guard c >= 0 else { return false }
            total += c
            guard total <= n else { return false }
        }
        return total == n
    }

    /// The mask as bits: [height, width] (row-major, 1 inside); empty for a mask that is not
    /// `isWellFormed`.
    public func bits() -> [UInt8] {
        guard isWellFormed else { return [] }
        let n = width * height
        var out = [UInt8](repeating: 0, count: n)
        var i = 0, value: UInt8 = 0
        for c in counts {
            for j in i..<(i + c) { out[(j % height) * width + j / height] = value }
            i += c
            value ^= 1
        }
        return out
    }
}

/// Where a region vector comes from in its image.
public struct IndexRegion: Sendable, Equatable, Codable {
    /// Its bounding box in the original image's pixels (x1, y1 exclusive).
    public var box: PixelBox
    /// "grid 2x2" / "grid 3x3" cells, or the proposal generator ("slic", "kmeans").
    public var source: String
    /// The mask at the original image's size, for proposals (nil for grid cells: the box is the region).
    public var mask: RLEMask?

    public init(box: PixelBox, source: String, mask: RLEMask? = nil) {
        self.box = box
        self.source = source
        self.mask = mask
    }
}

/// The slots of one shard as a snapshot sees them.
struct ShardSlots: Sendable {
    var number: Int
    /// Slots in use (named or not).
    var rows: Int
    /// CRC-32 of the rows' bytes.
    var crc: UInt32
    /// [rows]: the vector id in each slot, −1 where none is (deleted, or a crash's leftover).
    var ids: [Int64]
    /// [rows]: the image id of each slot's vector, −1 for none.
    var images: [Int64]
}

/// The database of one index directory.
final class IndexDatabase: @unchecked Sendable {
    static let formatVersion = "1"
    let url: URL
    let pool: DatabasePool

    /// Opens the database of an existing index.
    init(url: URL) throws {
        self.url = url
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw ZeroSegError.badInput("\(url.deletingLastPathComponent().path) is not a zeroseg index (no \(url.lastPathComponent))", file: url.path)
        }
        do {
            pool = try DatabasePool(path: url.path, configuration: Self.configuration)
            // Opening is lazy: read once, so that a file that is not a database fails here.
            _ = try pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM sqlite_master") }
        } catch let e as DatabaseError {
            throw Self.describe(e, url)
        }
    }

    static var configuration: Configuration {
        var config = Configuration()
        config.busyMode = .timeout(30)
        config.foreignKeysEnabled = true
        config.label = "zeroseg-index"
        return config
    }

    /// Makes the database of a new index at `url` with its tables and `meta`, all or nothing: it
    /// is built under another name and renamed into place, so a process killed while creating an
    /// index leaves no database (and the next run creates it again), never one without its meta.
    static func create(at url: URL, meta: [(String, String)]) throws {
        let tmp = URL(fileURLWithPath: url.path + ".new")
        for suffix in ["", "-journal", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: tmp.path + suffix) }
        do {
            let q = try DatabaseQueue(path: tmp.path, configuration: configuration)
            try q.write { db in
                try db.execute(sql: """
                    CREATE TABLE meta(key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
                    CREATE TABLE images(id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL UNIQUE,
                        sha256 TEXT NOT NULL, bytes INTEGER NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL);
                    CREATE TABLE vectors(id INTEGER PRIMARY KEY AUTOINCREMENT,
                        image_id INTEGER REFERENCES images(id) ON DELETE CASCADE, kind INTEGER NOT NULL,
                        shard INTEGER NOT NULL, slot INTEGER NOT NULL, x0 INTEGER, y0 INTEGER, x1 INTEGER, y1 INTEGER,
                        source TEXT, mask TEXT, UNIQUE(kind, shard, slot));
                    CREATE INDEX vectors_image ON vectors(image_id);
                    CREATE TABLE shards(kind INTEGER NOT NULL, number INTEGER NOT NULL, rows INTEGER NOT NULL, crc INTEGER NOT NULL,
                        PRIMARY KEY(kind, number));
                    """)
                for (k, v) in meta { try setMeta(db, k, v) }
            }
            try q.close()
        } catch let e as DatabaseError {
            throw describe(e, tmp)
        }
        guard rename(tmp.path, url.path) == 0 else {
            throw ZeroSegError.io("cannot create the index database \(url.path): \(String(cString: strerror(errno)))", file: url.path)
        }
    }

    /// A database error as a one-line library error (a corrupt file says so).
    static func describe(_ e: DatabaseError, _ url: URL) -> ZeroSegError {
        switch e.resultCode {
        case .SQLITE_CORRUPT, .SQLITE_NOTADB:
            return .badInput("index database \(url.path) is corrupt (\(e.message ?? "SQLite: \(e.resultCode)")): rebuild the index", file: url.path)
        case .SQLITE_READONLY, .SQLITE_CANTOPEN, .SQLITE_IOERR, .SQLITE_FULL, .SQLITE_PERM:
            return .io("index database \(url.path): \(e.message ?? "\(e.resultCode)")", file: url.path)
        default:
            return ZeroSegError("index database \(url.path): \(e.message ?? "\(e.resultCode)")")
        }
    }

    func reading<T>(_ body: (Database) throws -> T) throws -> T {
        do { return try pool.read(body) }
        catch let e as DatabaseError { throw Self.describe(e, url) }
        catch let e as RowDecodingError { throw Self.describe(e, url) }
    }

    func writing<T>(_ body: (Database) throws -> T) throws -> T {
        do { return try pool.write(body) }
        catch let e as DatabaseError { throw Self.describe(e, url) }
        catch let e as RowDecodingError { throw Self.describe(e, url) }
    }

    /// A value of the wrong type where the schema wants another (a damaged or hand-edited database).
    static func describe(_ e: RowDecodingError, _ url: URL) -> ZeroSegError {
        let what = String(String(describing: e).map { $0.isNewline ? " " : $0 }.prefix(200))
        return .badInput("index database \(url.path) holds a value of the wrong type (\(what)): the index is damaged; rebuild it", file: url.path)
    }

    // MARK: Meta

    func meta() throws -> [String: String] {
        try reading { db in
            var m: [String: String] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT key, value FROM meta") { m[try row.decode(forColumn: "key")] = try row.decode(forColumn: "value") }
            return m
        }
    }

    static func setMeta(_ db: Database, _ key: String, _ value: String) throws {
        try db.execute(sql: "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                       arguments: [key, value])
    }

    /// Bumps the generation (inside a write transaction): readers and the approximate index see a change.
    static func bumpGeneration(_ db: Database) throws {
        try db.execute(sql: "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'generation'")
    }

    func generation() throws -> Int { try reading(Self.generation) }

    static func generation(_ db: Database) throws -> Int {
        try Int(String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'generation'") ?? "0") ?? 0
    }

    /// Rows of `select` (which must end in "... IN") for the given ids, 500 ids per statement.
    static func rows(_ db: Database, _ select: String, ids: [Int64]) throws -> [Row] {
        var out: [Row] = []
        for start in stride(from: 0, to: ids.count, by: 500) {
            let part = Array(ids[start..<min(ids.count, start + 500)])
            let marks = part.map { _ in "?" }.joined(separator: ",")
            out += try Row.fetchAll(db, sql: "\(select) (\(marks))", arguments: StatementArguments(part))
        }
        return out
    }

    // MARK: Images

    func images() throws -> [IndexedImage] {
        try reading { db in
            try Row.fetchAll(db, sql: "SELECT id, path, sha256, bytes, width, height FROM images ORDER BY path").map {
                IndexedImage(id: try $0.get("id"), path: try $0.get("path"), sha256: try $0.get("sha256"), bytes: try $0.get("bytes"),
                             width: try $0.get("width"), height: try $0.get("height"))
            }
        }
    }

    func image(id: Int64) throws -> IndexedImage? {
        try reading { db in
            try Row.fetchOne(db, sql: "SELECT id, path, sha256, bytes, width, height FROM images WHERE id = ?", arguments: [id]).map {
                IndexedImage(id: try $0.get("id"), path: try $0.get("path"), sha256: try $0.get("sha256"), bytes: try $0.get("bytes"),
                             width: try $0.get("width"), height: try $0.get("height"))
            }
        }
    }

    // MARK: Snapshot

    /// The shards of `kind` with their slots' ids, as of one read transaction.
    static func slots(_ db: Database, kind: VectorKind) throws -> [ShardSlots] {
        var shards: [ShardSlots] = []
        var byNumber: [Int: Int] = [:]
        for row in try Row.fetchAll(db, sql: "SELECT number, rows, crc FROM shards WHERE kind = ? ORDER BY number", arguments: [kind.rawValue]) {
            let n: Int = try row.decode(forColumn: "number"), r: Int = try row.decode(forColumn: "rows"), c: Int64 = try row.decode(forColumn: "crc")
            guard n >= 0, (0...shardCapacity).contains(r) else {
                throw ZeroSegError.badInput("index database says \(kind.fileStem) shard \(n) holds \(r) rows (0 to \(shardCapacity) are possible): the index is damaged; rebuild it")
            }
            byNumber[n] = shards.count
            shards.append(ShardSlots(number: n, rows: r, crc: UInt32(truncatingIfNeeded: c), ids: [Int64](repeating: -1, count: r), images: [Int64](repeating: -1, count: r)))
        }
        let cursor = try Row.fetchCursor(db, sql: "SELECT shard, slot, id, image_id FROM vectors WHERE kind = ?", arguments: [kind.rawValue])
        while let row = try cursor.next() {
            let shard: Int = try row.decode(atIndex: 0), slot: Int = try row.decode(atIndex: 1), id: Int64 = try row.decode(atIndex: 2)
            let image: Int64? = try row.decode(atIndex: 3)
            guard let s = byNumber[shard], slot >= 0, slot < shards[s].rows else {
                throw ZeroSegError.badInput("index database names slot \(slot) of \(kind.fileStem) shard \(shard), which it does not have: the index is damaged; rebuild it")
            }
            shards[s].ids[slot] = id
            shards[s].images[slot] = image ?? -1
        }
        return shards
    }
}

extension Row {
    /// The column's value, decoded with a thrown error: a value of the wrong type in a damaged or
    /// hand-edited database is a one-line ZeroSegError, where GRDB's subscript would stop the process.
    func get<T: DatabaseValueConvertible>(_ column: String) throws -> T {
        do { return try decode(forColumn: column) } catch let e as RowDecodingError {
            let what = String(String(describing: e).map { $0.isNewline ? " " : $0 }.prefix(200))
            throw ZeroSegError.badInput("index database holds a value of the wrong type (\(what)): the index is damaged; rebuild it")
        }
    }
}

/// One writer at a time per index directory, across processes: an exclusive `flock` on
/// INDEX/write.lock, released when the holder ends however it ends (SIGKILL included).
final class WriterLock {
    private let fd: Int32

    init(_ dir: URL) throws {
        let path = dir.appendingPathComponent("write.lock").path
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ZeroSegError.io("cannot open \(path): \(String(cString: strerror(errno)))", file: path) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw ZeroSegError.io("index \(dir.path) is being written by another process (only one writer at a time)", file: dir.path)
        }
    }

    deinit {
        flock(fd, LOCK_UN)
        close(fd)
    }
}
