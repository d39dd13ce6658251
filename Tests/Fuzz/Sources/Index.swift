import Foundation
import GRDB
import ZeroSeg
@testable import ZeroSegIndex

/// A small index (dim 4, two images with a masked region each) made once; every input damages a
/// copy of it and then opens, reads and searches the copy. The first byte picks what the rest is:
///   0: the image vector shard file (header, rows), 1: the region shard file;
///   2: values written into its database, one `name=value` per line (meta.dim, meta.regions,
///      meta.index_id, meta.format, shards.rows, shards.number, shards.crc, vectors.shard,
///      vectors.slot, vectors.kind, vectors.mask, vectors.x0 ... y1, images.width, images.height):
///      what a damaged or hand-edited database holds;
///   3: a region mask as stored (RLE JSON), decoded and expanded as search results use it.
let indexTarget = FuzzTarget(name: "index", covers: "index shard files, database values, RLE masks: open, snapshot, vector reads, search",
                             setUp: makePristineIndex) { bytes in
    guard let mode = bytes.first else { return }
    let rest = UnsafeRawBufferPointer(rebasing: bytes.dropFirst())
    if mode % 4 == 3 {
        do {
            let m = try JSONDecoder().decode(RLEMask.self, from: Data(rest))
            // A mask that is not well formed (negative runs, runs not covering the size) gives no bits.
            let bits = m.bits()
            precondition(m.isWellFormed ? bits.count == m.width * m.height : bits.isEmpty)
        } catch {}  // JSONDecoder's own errors: the search wraps them
        return
    }
    let fm = FileManager.default
    let work = fuzzScratch.appendingPathComponent("index-work", isDirectory: true)
    try? fm.removeItem(at: work)
    try! fm.copyItem(at: pristineIndex, to: work)
    switch mode % 4 {
    case 0: fm.createFile(atPath: shardURL(work, kind: .image, number: 0).path, contents: Data(rest))
    case 1: fm.createFile(atPath: shardURL(work, kind: .region, number: 0).path, contents: Data(rest))
    default: damageDatabase(work.appendingPathComponent(EmbeddingIndex.databaseName), String(decoding: rest, as: UTF8.self))
    }
    do {
        let index = try EmbeddingIndex.open(at: work)
        _ = try index.images()
        for kind in VectorKind.allCases {
            _ = try index.count(kind)
            let o = SearchOptions(k: 5, kind: kind, onePerImage: kind == .region, engine: .exact)
            do { _ = try index.search(vectors: [[1, 0, 0, 0], [0, 1, 0, 0]], options: o, threads: 1) } catch { expectTyped(error) }
        }
        for id in Int64(1)...8 {
            do { _ = try index.vector(id: id) } catch { expectTyped(error) }
            do { _ = try index.search(similarTo: id, options: SearchOptions(k: 3, kind: .region, engine: .exact), threads: 1) } catch { expectTyped(error) }
        }
    } catch { expectTyped(error) }
}

nonisolated(unsafe) private var pristineIndex: URL!

private func makePristineIndex() throws {
    let dir = fuzzScratch.appendingPathComponent("index-pristine", isDirectory: true)
    try makeIndex(dir)  // closed again when it returns
    // A fixed index id (the committed shard seeds carry it in their headers).
    let id = UUID(uuidString: "00000000-0000-4000-8000-00000000F022")!
    let q = try DatabaseQueue(path: dir.appendingPathComponent(EmbeddingIndex.databaseName).path)
    try q.write { try $0.execute(sql: "UPDATE meta SET value = ? WHERE key = 'index_id'", arguments: [id.uuidString]) }
    try q.close()
    for kind in VectorKind.allCases {
        let h = try FileHandle(forWritingTo: shardURL(dir, kind: kind, number: 0))
        try h.seek(toOffset: 20)
        try h.write(contentsOf: withUnsafeBytes(of: id.uuid) { Data($0) })
        try h.close()
    }
    pristineIndex = dir
}

private func makeIndex(_ dir: URL) throws {
    let index = try EmbeddingIndex.create(at: dir, identity: IndexIdentity(fingerprint: "fuzz", source: "fuzz", dim: 4), regions: .proposals)
    func region(_ x0: Int) -> (IndexRegion, [Float]) {
        var bits = [UInt8](repeating: 0, count: 6 * 4)
        for y in 0..<4 { for x in x0..<(x0 + 2) { bits[y * 6 + x] = 1 } }
        return (IndexRegion(box: PixelBox(x0: x0, y0: 0, x1: x0 + 2, y1: 4), source: "slic", mask: RLEMask(bits: bits, width: 6, height: 4)),
                [0.5, 0.5, 0.5, 0.5])
    }
    _ = try index.add([
        ImageEmbeddings(path: "/a.png", sha256: String(repeating: "a", count: 64), bytes: 10, width: 6, height: 4,
                        global: [1, 0, 0, 0], regions: [region(0)]),
        ImageEmbeddings(path: "/b.png", sha256: String(repeating: "b", count: 64), bytes: 10, width: 6, height: 4,
                        global: [0, 1, 0, 0], regions: [region(2), region(4)]),
    ])
}

private func damageDatabase(_ url: URL, _ text: String) {
    guard let q = try? DatabaseQueue(path: url.path) else { return }
    defer { try? q.close() }
    let targets: [String: String] = [
        "meta.dim": "UPDATE meta SET value = ? WHERE key = 'dim'",
        "meta.regions": "UPDATE meta SET value = ? WHERE key = 'regions'",
        "meta.index_id": "UPDATE meta SET value = ? WHERE key = 'index_id'",
        "meta.format": "UPDATE meta SET value = ? WHERE key = 'format'",
        "shards.rows": "UPDATE shards SET rows = ?",
        "shards.number": "UPDATE shards SET number = ?",
        "shards.crc": "UPDATE shards SET crc = ?",
        "vectors.shard": "UPDATE vectors SET shard = ? WHERE id = 2",
        "vectors.slot": "UPDATE vectors SET slot = ? WHERE id = 2",
        "vectors.kind": "UPDATE vectors SET kind = ? WHERE id = 3",
        "vectors.mask": "UPDATE vectors SET mask = ? WHERE kind = 1",
        "vectors.x0": "UPDATE vectors SET x0 = ? WHERE kind = 1",
        "vectors.y0": "UPDATE vectors SET y0 = ? WHERE kind = 1",
        "vectors.x1": "UPDATE vectors SET x1 = ? WHERE kind = 1",
        "vectors.y1": "UPDATE vectors SET y1 = ? WHERE kind = 1",
        "images.width": "UPDATE images SET width = ?",
        "images.height": "UPDATE images SET height = ?",
    ]
    try? q.write { db in
        for line in text.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "="), let sql = targets[String(line[..<eq])] else { continue }
            let v = String(line[line.index(after: eq)...])
            let value: DatabaseValueConvertible = Int64(v).map { $0 as DatabaseValueConvertible } ?? v
            try? db.execute(sql: sql, arguments: [value])
        }
    }
}
