import Foundation
import GRDB
import ZeroSegANN
import ZeroSegCore

// The approximate index of one kind of vector: INDEX/image.ann or INDEX/region.ann (FAISS IVF
// with an fp16 scalar quantizer, ZeroSegANN), built from the live vectors as of one generation of
// the index. The database records that generation (meta `ann_image_generation` /
// `ann_region_generation`); a later change makes the file stale, and `SearchEngine.auto` then
// searches exactly until the approximate index is built again (`buildApproximate`, which
// `zeroseg index` runs after every run that changed something above the threshold).

extension EmbeddingIndex {
    func approximateURL(_ kind: VectorKind) -> URL { directory.appendingPathComponent("\(kind.fileStem).ann") }
    static func approximateKey(_ kind: VectorKind) -> String { "ann_\(kind.fileStem)_generation" }

    /// Builds the approximate index of `kind` from every live vector (float16 as stored) and
    /// records it as current. Writers only. `settings`: default `ApproximateSettings.forCount`.
    public func buildApproximate(_ kind: VectorKind, settings: ApproximateSettings? = nil, threads: Int = defaultThreads) throws {
        try requireWriter()
        try refresh()
        let snap = try snapshot(kind)
        let dim = identity.dim
        var ids: [Int64] = []
        ids.reserveCapacity(snap.count)
        var rows = [Float](repeating: 0, count: snap.count * dim)
        try rows.withUnsafeMutableBufferPointer { out in
            var r = 0
            for v in snap.shards {
                for (slot, id) in v.slots.ids.enumerated() where id >= 0 {
                    v.map.rows(slot, 1, into: out.baseAddress! + r * dim)
                    ids.append(id)
                    r += 1
                }
            }
            guard r > 0 else { throw ZeroSegError.invalidArgument("the index holds no \(kind.fileStem) vectors", parameter: "kind") }
        }
        let ann = try rows.withUnsafeBufferPointer {
            try ApproximateIndex.build(vectors: $0.baseAddress!, ids: ids, dim: dim, settings: settings ?? .forCount(ids.count), threads: threads)
        }
        try ann.write(to: approximateURL(kind))
        try db.writing { d in try IndexDatabase.setMeta(d, Self.approximateKey(kind), String(snap.generation)) }
        approximate.withLock { $0[kind] = (snap.generation, ann) }
    }

    /// The approximate index of `kind` if it is current for generation `generation` (loaded once).
    func currentApproximate(_ kind: VectorKind, generation: Int) throws -> ApproximateIndex? {
        if let (g, a) = approximate.withLock({ $0[kind] }), g == generation { return a }
        let recorded = try db.reading { d in
            try String.fetchOne(d, sql: "SELECT value FROM meta WHERE key = ?", arguments: [Self.approximateKey(kind)])
        }
        guard let recorded, Int(recorded) == generation, FileManager.default.fileExists(atPath: approximateURL(kind).path) else { return nil }
        let a = try ApproximateIndex.read(from: approximateURL(kind))
        approximate.withLock { $0[kind] = (generation, a) }
        return a
    }

    /// Whether `kind` has an approximate index that is current.
    public func hasCurrentApproximate(_ kind: VectorKind) throws -> Bool {
        try currentApproximate(kind, generation: try snapshot(kind).generation) != nil
    }
}
