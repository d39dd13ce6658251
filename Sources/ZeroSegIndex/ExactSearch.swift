import CBLAS
import Foundation
import ZeroSegCore

// Exact top-k over float16 shards: blocks of rows are widened to float32 (F16C where the CPU has
// it) and scored against every query with one sgemm (sgemv for one query; OpenBLAS), keeping the
// best k per query.
//
// Determinism: blocks are cut at fixed rows of each shard (`exactBlockRows`), whatever the thread
// count, and each block is scored by one single-threaded sgemm, so every score has the same bits
// for any thread count; threads take whole blocks (split by count) and their lists are merged by
// (score descending, id ascending).

/// Rows per scoring block: 256 rows x 512 dims of float32 = 512 KiB, about an L2 cache.
let exactBlockRows = 256

/// One candidate: a slot's vector id, its image id (−1 for none) and score.
struct Candidate: Sendable, Equatable {
    var id: Int64
    var image: Int64
    var score: Float

    /// The ranking: higher score first, then lower id.
    @inline(__always) func before(_ o: Candidate) -> Bool { score > o.score || (score == o.score && id < o.id) }
}

/// The best `k` candidates seen, as a binary heap whose root is the worst kept.
struct TopK {
    let k: Int
    private(set) var heap: [Candidate] = []

    init(k: Int) {
        self.k = k
        heap.reserveCapacity(k)
    }

    /// The score a candidate must beat to enter (−inf while the heap is not full).
    var threshold: Float { heap.count < k ? -.infinity : heap[0].score }

    mutating func offer(_ c: Candidate) {
        if heap.count < k {
            heap.append(c)
            var i = heap.count - 1
            while i > 0 {
                let p = (i - 1) / 2
                guard heap[p].before(heap[i]) else { break }
                heap.swapAt(p, i)
                i = p
            }
        } else if c.before(heap[0]) {
            heap[0] = c
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var worst = i
                if l < heap.count && heap[worst].before(heap[l]) { worst = l }
                if r < heap.count && heap[worst].before(heap[r]) { worst = r }
                if worst == i { break }
                heap.swapAt(i, worst)
                i = worst
            }
        }
    }

    /// The kept candidates, best first.
    func sorted() -> [Candidate] { heap.sorted { $0.before($1) } }
}

/// A shard as one search sees it: its slots and its mapped rows.
struct ShardView: Sendable {
    let slots: ShardSlots
    let map: ShardMap
}

/// The exact top-k of each query among the live slots of `shards`.
/// queries: [Q, dim] float32; returns [Q][≤k], best first. `skip` leaves out slots by vector id.
func exactTopK(_ shards: [ShardView], dim: Int, queries: [Float], k: Int, threads: Int,
               skip: Set<Int64> = []) -> [[Candidate]] {
    let q = queries.count / dim
    guard q > 0, k > 0 else { return [] }
    // Work items: (shard, first row) blocks of fixed placement.
    var blocks: [(shard: Int, start: Int, count: Int)] = []
    for (si, s) in shards.enumerated() {
        var start = 0
        while start < s.slots.rows {
            blocks.append((si, start, min(exactBlockRows, s.slots.rows - start)))
            start += exactBlockRows
        }
    }
    guard !blocks.isEmpty else { return [[Candidate]](repeating: [], count: q) }
    let parts = max(1, min(threads, blocks.count))
    var partial = [[TopK]](repeating: [], count: parts)
    let blocksRef = blocks
    partial.withUnsafeMutableBufferPointer { out in
        nonisolated(unsafe) let outP = out.baseAddress!
        queries.withUnsafeBufferPointer { qb in
            nonisolated(unsafe) let qp = qb.baseAddress!
            parallelFor(parts) { part in
                let lo = blocksRef.count * part / parts, hi = blocksRef.count * (part + 1) / parts
                var tops = (0..<q).map { _ in TopK(k: k) }
                let rows = Buffer(exactBlockRows * dim), scores = Buffer(q * exactBlockRows)
                for b in blocksRef[lo..<hi] {
                    let view = shards[b.shard]
                    view.map.rows(b.start, b.count, into: rows.ptr)  // rows: [count, dim]
                    // scores: [Q, count] = queries [Q, dim] · rowsᵀ (one query: sgemv, no packing)
                    if q == 1 {
                        cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(b.count), Int32(dim), 1, rows.ptr, Int32(dim), qp, 1, 0, scores.ptr, 1)
                    } else {
                        gemmNT(qp, lda: dim, rows.ptr, ldb: dim, scores.ptr, ldc: b.count, m: q, n: b.count, k: dim)
                    }
                    view.slots.ids.withUnsafeBufferPointer { ids in
                        view.slots.images.withUnsafeBufferPointer { images in
                            for qi in 0..<q {
                                let s = scores.ptr + qi * b.count
                                var bar = tops[qi].threshold
                                for j in 0..<b.count where s[j] >= bar {
                                    let id = ids[b.start + j]
                                    guard id >= 0, skip.isEmpty || !skip.contains(id) else { continue }
                                    tops[qi].offer(Candidate(id: id, image: images[b.start + j], score: s[j]))
                                    bar = tops[qi].threshold
                                }
                            }
                        }
                    }
                }
                withExtendedLifetime((rows, scores)) {}
                outP[part] = tops
            }
        }
    }
    return (0..<q).map { qi in
        var merged = TopK(k: k)
        for p in partial { for c in p[qi].heap { merged.offer(c) } }
        return merged.sorted()
    }
}
