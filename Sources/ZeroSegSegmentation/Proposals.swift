import Foundation
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegCLIP

// Class-agnostic mask proposals for the two-stage mode (zsseg style: propose masks, then
// classify each masked crop with CLIP). Training-free generators:
//
// * `SLICProposals`: SLIC superpixels merged greedily over their adjacency graph (by dense CLIP
//   features when given, else by Lab colour), the regions at a few region counts emitted.
// * `KMeansProposals`: spherical k-means of the dense CLIP features for several k, snapped to
//   superpixel boundaries, each cluster's 4-connected pieces emitted.
//
// `proposals(image:features:source:settings:)` runs one or both (sharing one SLIC run) and
// `finalize` filters, de-duplicates and caps the result.

// MARK: - Masks

/// A pixel rectangle, end-exclusive: columns x0..<x1, rows y0..<y1 (all 0 for an empty mask).
public struct PixelBox: Sendable, Equatable, Hashable, Codable {
    public var x0: Int
    public var y0: Int
    public var x1: Int
    public var y1: Int

    public init(x0: Int, y0: Int, x1: Int, y1: Int) {
        self.x0 = x0; self.y0 = y0; self.x1 = x1; self.y1 = y1
    }

    public var width: Int { x1 - x0 }
    public var height: Int { y1 - y0 }
    public var isEmpty: Bool { x1 <= x0 || y1 <= y0 }

    /// The overlap of two boxes (empty when they do not overlap).
    public func intersection(_ o: PixelBox) -> PixelBox {
        let b = PixelBox(x0: max(x0, o.x0), y0: max(y0, o.y0), x1: min(x1, o.x1), y1: min(y1, o.y1))
        return b.isEmpty ? PixelBox(x0: 0, y0: 0, x1: 0, y1: 0) : b
    }
}

/// One class-agnostic mask over a width x height picture.
///
/// The fields are immutable so that `area` and `bbox` always describe `bits`: make a new mask
/// (`init(width:height:bits:source:)`) to change one.
public struct ProposalMask: Sendable, Equatable {
    public let width: Int
    public let height: Int
    /// [H*W] row-major: 1 inside, 0 outside.
    public let bits: [UInt8]
    /// Pixels inside.
    public let area: Int
    /// The smallest end-exclusive box holding every inside pixel (all 0 when empty).
    public let bbox: PixelBox
    /// Where it came from: "slic-merge:16" (a merged region when 16 regions were left),
    /// "kmeans:k=4", "file:003.png".
    public let source: String

    /// A mask from bits[H*W]: any non-zero value is inside (stored as 1). Throws for another size.
    public init(width: Int, height: Int, bits: [UInt8], source: String) throws {
        guard width >= 0 && height >= 0 && bits.count == width * height else {
            throw ZeroSegError("ProposalMask \(source): \(bits.count) bits for \(width)x\(height)")
        }
        var b = bits
        var area = 0
        var x0 = width, y0 = height, x1 = 0, y1 = 0
        for y in 0..<height {
            for x in 0..<width where b[y * width + x] != 0 {
                b[y * width + x] = 1
                area += 1
                x0 = min(x0, x); x1 = max(x1, x + 1)
                y0 = min(y0, y); y1 = max(y1, y + 1)
            }
        }
        self.width = width
        self.height = height
        self.bits = b
        self.area = area
        self.bbox = area > 0 ? PixelBox(x0: x0, y0: y0, x1: x1, y1: y1) : PixelBox(x0: 0, y0: 0, x1: 0, y1: 0)
        self.source = source
    }

    /// A mask from the indices (y * width + x) of its inside pixels (each once).
    init(width: Int, height: Int, pixels: [Int], source: String) {
        var b = [UInt8](repeating: 0, count: width * height)
        var x0 = width, y0 = height, x1 = 0, y1 = 0
        for p in pixels {
            b[p] = 1
            let x = p % width, y = p / width
            x0 = min(x0, x); x1 = max(x1, x + 1)
            y0 = min(y0, y); y1 = max(y1, y + 1)
        }
        self.width = width
        self.height = height
        self.bits = b
        self.area = pixels.count
        self.bbox = pixels.isEmpty ? PixelBox(x0: 0, y0: 0, x1: 0, y1: 0) : PixelBox(x0: x0, y0: y0, x1: x1, y1: y1)
        self.source = source
    }

    /// Pixels inside both masks (same size required, else it throws).
    public func intersectionArea(with other: ProposalMask) throws -> Int {
        guard width == other.width && height == other.height else {
            throw ZeroSegError("ProposalMask: intersecting \(width)x\(height) and \(other.width)x\(other.height) masks")
        }
        let box = bbox.intersection(other.bbox)
        guard !box.isEmpty else { return 0 }
        var n = 0
        bits.withUnsafeBufferPointer { a in
            other.bits.withUnsafeBufferPointer { b in
                for y in box.y0..<box.y1 {
                    let row = y * width
                    for x in box.x0..<box.x1 { n += Int(a[row + x] & b[row + x]) }
                }
            }
        }
        return n
    }

    /// Intersection over union with a mask of the same size; 0 when both are empty.
    public func iou(with other: ProposalMask) throws -> Double {
        let inter = try intersectionArea(with: other)
        let union = area + other.area - inter
        return union > 0 ? Double(inter) / Double(union) : 0
    }
}

// MARK: - Generators

/// Something that proposes class-agnostic masks for a picture.
public protocol ProposalGenerator: Sendable {
    var name: String { get }
    /// Masks for `image`; `features` are its dense CLIP embeddings when the caller has them.
    func propose(_ image: RGBImage, features: FeatureGrid?) throws -> [ProposalMask]
}

/// How the proposals are filtered.
public struct ProposalSettings: Sendable, Equatable {
    /// At most this many masks (0 gives none).
    public var maxProposals: Int
    /// Masks with fewer pixels are dropped. nil: `defaultMinArea(width:height:)`.
    public var minArea: Int?
    /// A mask whose IoU with an earlier one exceeds this is a duplicate and dropped.
    public var dedupeIoU: Double

    public init(maxProposals: Int = 50, minArea: Int? = nil, dedupeIoU: Double = 0.9) {
        self.maxProposals = maxProposals
        self.minArea = minArea
        self.dedupeIoU = dedupeIoU
    }

    /// 0.2% of the picture, at least 16 pixels: about one CLIP patch cell of a 336-pixel input
    /// (1/21 of the short side, squared), below which a masked crop tells CLIP nothing.
    public static func defaultMinArea(width: Int, height: Int) -> Int {
        max(16, Int((0.002 * Double(width * height)).rounded(.up)))
    }

    public func resolvedMinArea(width: Int, height: Int) -> Int {
        minArea ?? Self.defaultMinArea(width: width, height: height)
    }
}

/// Filters proposals: (1) drops empty masks and those below the minimum area, (2) drops
/// near-duplicates (IoU > `dedupeIoU` with a mask kept before it, in the given order), (3)
/// orders the rest coarse to fine, interleaved: masks are put in area octaves (octave o holds
/// areas in (A/2^(o+1), A/2^o], A the picture's area) and taken round-robin, one from each
/// octave in turn, largest octave first, keeping the given order inside an octave; so (4) the
/// cap at `maxProposals` keeps a spread of scales instead of only the large or the small ones.
public func finalize(_ masks: [ProposalMask], settings: ProposalSettings = ProposalSettings()) -> [ProposalMask] {
    var unique: [ProposalMask] = []
    for m in masks where m.area > 0 && m.area >= settings.resolvedMinArea(width: m.width, height: m.height) {
        let duplicate = unique.contains { u in
            guard u.width == m.width, u.height == m.height else { return false }
            // IoU <= min(area) / max(area): skip the pixel count when that already rules it out.
            guard Double(min(u.area, m.area)) / Double(max(u.area, m.area)) > settings.dedupeIoU else { return false }
            guard let iou = try? u.iou(with: m) else { return false }  // same size: does not throw
            return iou > settings.dedupeIoU
        }
        if !duplicate { unique.append(m) }
    }
    var buckets: [Int: [ProposalMask]] = [:]
    for m in unique {
        let total = m.width * m.height
        var octave = 0
        while m.area * (2 << octave) <= total { octave += 1 }
        buckets[octave, default: []].append(m)
    }
    let ordered = buckets.keys.sorted().map { buckets[$0]! }
    var out: [ProposalMask] = []
    var next = [Int](repeating: 0, count: ordered.count)
    let cap = max(0, settings.maxProposals)
    while out.count < min(cap, unique.count) {
        for (b, bucket) in ordered.enumerated() where next[b] < bucket.count && out.count < cap {
            out.append(bucket[next[b]])
            next[b] += 1
        }
    }
    return out
}

// MARK: - SLIC + hierarchical merge

/// How `SLICProposals` ranks adjacent region pairs for merging. d is the pair's dissimilarity:
/// 1 - cos of their mean dense CLIP features when features are given, else the Euclidean
/// distance of their mean Lab colours (squared for `.ward`).
public enum MergeLinkage: String, Sendable, CaseIterable {
    /// Ward's criterion: the pair with the least (a·b / (a + b))·d merges first (a, b the
    /// areas); with colour that is the least increase of the squared colour error. Small
    /// regions merge before large ones, so the coarse levels are balanced regions.
    case ward
    /// The most similar means first (largest cos, or smallest colour distance), areas ignored.
    /// On photos this chains: one region grows over most of the picture and the coarse levels
    /// are that region plus a few outliers.
    case mean
}

/// Masks from SLIC superpixels merged hierarchically.
///
/// The region adjacency graph of the superpixels (4-connectivity) is merged greedily: the best
/// adjacent pair by `linkage`, repeatedly (ties: lower region ids first). A region's feature is
/// the mean over its pixels of their grid cell's dense CLIP feature when `features` is given,
/// else its mean Lab colour; means are area-weighted when merging. Whenever the region count
/// first drops to one of `levels`, every region that appeared since the previous emission is
/// emitted (source "slic-merge:N", N the region count then); when SLIC gives fewer regions than
/// a level, that level's emission is the superpixels themselves. Each merged region is emitted
/// once, at the finest level it reaches.
public struct SLICProposals: ProposalGenerator {
    public var superpixels: SLICParameters
    /// Region counts at which the regions are emitted (default 64, 32, 16, 8, 4, 2: a halving
    /// ladder from parts to the two-way split; 126 masks at most before `finalize`).
    public var levels: [Int]
    /// Default `.ward` (balanced hierarchies; `.mean` chains on photos, see `MergeLinkage`).
    public var linkage: MergeLinkage

    public init(superpixels: SLICParameters = SLICParameters(), levels: [Int] = [64, 32, 16, 8, 4, 2],
                linkage: MergeLinkage = .ward) {
        self.superpixels = superpixels
        self.levels = levels
        self.linkage = linkage
    }

    public var name: String { "slic" }

    public func propose(_ image: RGBImage, features: FeatureGrid?) throws -> [ProposalMask] {
        try propose(image, features: features, superpixels: slicSuperpixels(image, parameters: superpixels))
    }

    /// The same on superpixels computed already (of this picture).
    public func propose(_ image: RGBImage, features: FeatureGrid?, superpixels sp: Superpixels) throws -> [ProposalMask] {
        guard sp.width == image.width, sp.height == image.height else {
            throw ZeroSegError("SLIC proposals: superpixels are \(sp.width)x\(sp.height), the image is \(image.width)x\(image.height)")
        }
        let dim = features?.dim ?? 3
        var means: [[Float]]
        if let features {
            let m = regionFeatureMeans(sp, features)
            means = (0..<sp.count).map { Array(m[$0 * dim..<($0 + 1) * dim]) }
        } else {
            means = (0..<sp.count).map { Array(sp.meanLab[3 * $0..<3 * $0 + 3]) }
        }
        let useCosine = features != nil, ward = linkage == .ward
        // Higher merges first.
        func priority(_ a: [Float], _ b: [Float], _ areaA: Int, _ areaB: Int) -> Float {
            var d: Double
            if useCosine {
                var dot = 0.0, na = 0.0, nb = 0.0
                for j in 0..<a.count {
                    dot += Double(a[j]) * Double(b[j]); na += Double(a[j]) * Double(a[j]); nb += Double(b[j]) * Double(b[j])
                }
                d = 1 - (na > 0 && nb > 0 ? dot / (na * nb).squareRoot() : 0)
            } else {
                d = 0
                for j in 0..<a.count { let t = Double(a[j]) - Double(b[j]); d += t * t }
                if !ward { d = d.squareRoot() }
            }
            if ward { d *= Double(areaA) * Double(areaB) / Double(areaA + areaB) }
            return Float(-d)
        }

        var area = sp.areas
        var members: [[Int]] = (0..<sp.count).map { [$0] }
        var neighbours = [Set<Int>](repeating: [], count: sp.count)
        var alive = [Bool](repeating: true, count: sp.count)
        var emitted = [Bool](repeating: false, count: sp.count)
        var heap = MergeHeap()
        for (a, b) in sp.adjacency() {
            neighbours[a].insert(b); neighbours[b].insert(a)
            heap.push(MergeCandidate(priority: priority(means[a], means[b], area[a], area[b]), a: a, b: b))
        }

        let pixelLists = sp.pixelLists()
        var out: [ProposalMask] = []
        let ladder = Array(Set(levels.filter { $0 >= 1 })).sorted(by: >)
        var nextLevel = 0
        var live = sp.count
        func emitIfLevel() {
            var reached = false
            while nextLevel < ladder.count && live <= ladder[nextLevel] { nextLevel += 1; reached = true }
            guard reached else { return }
            for r in 0..<alive.count where alive[r] && !emitted[r] {
                emitted[r] = true
                let pixels = members[r].flatMap { pixelLists[$0] }
                out.append(ProposalMask(width: sp.width, height: sp.height, pixels: pixels, source: "slic-merge:\(live)"))
            }
        }
        emitIfLevel()
        while nextLevel < ladder.count, let e = heap.pop() {
            guard alive[e.a], alive[e.b] else { continue }
            let c = alive.count
            let wa = Float(area[e.a]), wb = Float(area[e.b])
            let mean = zip(means[e.a], means[e.b]).map { ($0 * wa + $1 * wb) / (wa + wb) }
            means.append(mean)
            area.append(area[e.a] + area[e.b])
            members.append(members[e.a] + members[e.b])
            alive[e.a] = false; alive[e.b] = false
            alive.append(true)
            emitted.append(false)
            var around = neighbours[e.a].union(neighbours[e.b])
            around.remove(e.a); around.remove(e.b)
            neighbours.append(around)
            for n in around {
                neighbours[n].remove(e.a); neighbours[n].remove(e.b); neighbours[n].insert(c)
                heap.push(MergeCandidate(priority: priority(mean, means[n], area[c], area[n]), a: n, b: c))
            }
            neighbours[e.a] = []; neighbours[e.b] = []
            live -= 1
            emitIfLevel()
        }
        return out
    }
}

/// [count, dim] mean dense feature of each superpixel: the mean over its pixels of their grid
/// cell's feature (not re-normalised). Summed per (region, cell) pair in a fixed order, so the
/// result is the same on every run.
func regionFeatureMeans(_ sp: Superpixels, _ grid: FeatureGrid) -> [Float] {
    let w = sp.width, h = sp.height, dim = grid.dim, cells = grid.height * grid.width
    let rows = grid.cellRows(imageHeight: h), cols = grid.cellColumns(imageWidth: w)
    // Runs of equal (region, cell) along each row, then summed per pair.
    var runs: [(key: Int, count: Int)] = []
    for y in 0..<h {
        var x = 0
        while x < w {
            let r = Int(sp.labels[y * w + x]), gx = cols[x]
            var end = x + 1
            while end < w && Int(sp.labels[y * w + end]) == r && cols[end] == gx { end += 1 }
            runs.append((r * cells + rows[y] * grid.width + gx, end - x))
            x = end
        }
    }
    runs.sort { $0.key < $1.key }
    var sums = [Double](repeating: 0, count: sp.count * dim)
    var i = 0
    while i < runs.count {
        let key = runs[i].key
        var n = 0
        while i < runs.count && runs[i].key == key { n += runs[i].count; i += 1 }
        let r = key / cells, cell = key % cells
        for j in 0..<dim { sums[r * dim + j] += Double(n) * Double(grid.data[cell * dim + j]) }
    }
    var out = [Float](repeating: 0, count: sp.count * dim)
    for r in 0..<sp.count where sp.areas[r] > 0 {
        for j in 0..<dim { out[r * dim + j] = Float(sums[r * dim + j] / Double(sp.areas[r])) }
    }
    return out
}

/// An adjacent pair of regions to merge (a < b is not required).
struct MergeCandidate {
    var priority: Float
    var a: Int
    var b: Int

    /// Pops first: higher priority, then lower (min, max) ids, so the order is total.
    func before(_ o: MergeCandidate) -> Bool {
        if priority != o.priority { return priority > o.priority }
        let (p, q) = (min(a, b), max(a, b)), (r, s) = (min(o.a, o.b), max(o.a, o.b))
        return p != r ? p < r : q < s
    }
}

/// A binary max-heap of merge candidates (stale ones are skipped by the caller).
struct MergeHeap {
    private var items: [MergeCandidate] = []

    mutating func push(_ c: MergeCandidate) {
        items.append(c)
        var i = items.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            guard items[i].before(items[p]) else { break }
            items.swapAt(i, p)
            i = p
        }
    }

    mutating func pop() -> MergeCandidate? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var best = i
                if l < items.count && items[l].before(items[best]) { best = l }
                if r < items.count && items[r].before(items[best]) { best = r }
                if best == i { break }
                items.swapAt(i, best)
                i = best
            }
        }
        return top
    }
}

// MARK: - Spherical k-means

/// out[n, k] = points[n, dim] · centroids[k, dim]ᵀ (cosine similarities for unit rows), BLAS sgemm.
public func pointCentroidSimilarities(_ points: ConstFloatPtr, _ centroids: ConstFloatPtr, _ out: FloatPtr,
                                      n: Int, k: Int, dim: Int) {
    guard n > 0, k > 0 else { return }
    gemmNT(points, lda: dim, centroids, ldb: dim, out, ldc: k, m: n, n: k, k: dim)
}

/// The result of `sphericalKMeans`.
public struct KMeansResult: Sendable, Equatable {
    public let k: Int
    /// [n] cluster of each point, 0..<k.
    public let assignments: [Int]
    /// [k, dim] L2-normalised centroids.
    public let centroids: [Float]
    /// Lloyd iterations run (centroid updates).
    public let iterations: Int
    /// True when the assignments stopped changing before `maxIterations`.
    public let converged: Bool
}

/// Spherical k-means (cosine similarity) of points[n, dim] (rows L2-normalised here).
///
/// Deterministic: k-means++ seeding (first centre uniform, then each with probability
/// proportional to the squared chord distance 2 - 2 cos to the nearest chosen centre) from a
/// splitmix64 generator seeded with `seed` (mixed with k), then Lloyd iterations: each point to
/// its most similar centroid (ties: lower index), each centroid the normalised sum of its points.
/// An emptied cluster is re-seeded with the point least similar to its own centroid. Stops when
/// an iteration changes no assignment, or after `maxIterations`. Requires 1 <= k <= n.
public func sphericalKMeans(_ points: [Float], count n: Int, dim: Int, k: Int, seed: UInt64 = 0,
                            maxIterations: Int = 50) throws -> KMeansResult {
    guard n >= 0 && dim >= 1 && points.count == n * dim else {
        throw ZeroSegError("sphericalKMeans: \(points.count) values for \(n) points of \(dim)")
    }
    guard k >= 1 && k <= n else { throw ZeroSegError("sphericalKMeans: k = \(k) for \(n) points") }
    let x = normalisedRows(points, rows: n, dim: dim)
    var rng = SplitMix64(seed: seed ^ (UInt64(k) &* 0x9E37_79B9_7F4A_7C15))

    // k-means++ seeding.
    var centroids = [Float](repeating: 0, count: k * dim)
    var chosen = [Int(rng.next() % UInt64(n))]
    var best = [Float](repeating: -.infinity, count: n)  // max cosine to a chosen centre
    while chosen.count < k {
        let c = chosen[chosen.count - 1]
        // hot loop: unchecked via unsafe buffer pointers
        x.withUnsafeBufferPointer { x in best.withUnsafeMutableBufferPointer { best in
            for i in 0..<n {
                var s: Float = 0
                for j in 0..<dim { s += x[i * dim + j] * x[c * dim + j] }
                best[i] = max(best[i], s)
            }
        } }
        let weights = best.map { Double(max(0, 2 - 2 * $0)) }
        let total = weights.reduce(0, +)
        var pick = -1
        if total > 0 {
            let target = Double(rng.next() >> 11) * 0x1p-53 * total
            var acc = 0.0
            for i in 0..<n where weights[i] > 0 {
                acc += weights[i]
                pick = i
                if acc > target { break }
            }
        }
        if pick < 0 { pick = (0..<n).first { !chosen.contains($0) } ?? 0 }  // all points coincide
        chosen.append(pick)
    }
    for (c, i) in chosen.enumerated() {
        for j in 0..<dim { centroids[c * dim + j] = x[i * dim + j] }
    }

    var sims = [Float](repeating: 0, count: n * k)
    func assign() -> [Int] {
        x.withUnsafeBufferPointer { xp in
            centroids.withUnsafeBufferPointer { cp in
                sims.withUnsafeMutableBufferPointer { sp in
                    pointCentroidSimilarities(xp.baseAddress!, cp.baseAddress!, sp.baseAddress!, n: n, k: k, dim: dim)
                }
            }
        }
        return (0..<n).map { i in
            var b = 0
            for c in 1..<max(1, k) where sims[i * k + c] > sims[i * k + b] { b = c }
            return b
        }
    }
    var assignments = assign()
    var iterations = 0
    var converged = false
    while iterations < maxIterations {
        // Update: normalised sums; empty clusters re-seeded from the worst-fitting points.
        var sums = [Double](repeating: 0, count: k * dim)
        var sizes = [Int](repeating: 0, count: k)
        // hot loop: unchecked via unsafe buffer pointers (assignments are 0..<k by construction)
        x.withUnsafeBufferPointer { x in sums.withUnsafeMutableBufferPointer { sums in
            for i in 0..<n {
                let c = assignments[i]
                sizes[c] += 1
                for j in 0..<dim { sums[c * dim + j] += Double(x[i * dim + j]) }
            }
        } }
        var reseeded = false
        var taken = Set<Int>()
        for c in 0..<k {
            if sizes[c] == 0 {
                var worst = -1
                for i in 0..<n where !taken.contains(i) {
                    if worst < 0 || sims[i * k + assignments[i]] < sims[worst * k + assignments[worst]] { worst = i }
                }
                taken.insert(worst)
                for j in 0..<dim { centroids[c * dim + j] = x[worst * dim + j] }
                reseeded = true
                continue
            }
            var norm = 0.0
            for j in 0..<dim { norm += sums[c * dim + j] * sums[c * dim + j] }
            let inv = norm > 0 ? 1 / norm.squareRoot() : 0
            for j in 0..<dim { centroids[c * dim + j] = Float(sums[c * dim + j] * inv) }
        }
        iterations += 1
        let next = assign()
        if next == assignments && !reseeded {
            converged = true
            break
        }
        assignments = next
    }
    return KMeansResult(k: k, assignments: assignments, centroids: centroids, iterations: iterations, converged: converged)
}

/// rows[rows, dim] each scaled to unit length (zero rows kept).
private func normalisedRows(_ v: [Float], rows: Int, dim: Int) -> [Float] {
    var out = v
    for r in 0..<rows {
        var s = 0.0
        for j in 0..<dim { s += Double(v[r * dim + j]) * Double(v[r * dim + j]) }
        guard s > 0 else { continue }
        let inv = 1 / s.squareRoot()
        for j in 0..<dim { out[r * dim + j] = Float(Double(v[r * dim + j]) * inv) }
    }
    return out
}

// MARK: - k-means proposals

/// Masks from spherical k-means of the dense CLIP features, for each k in `ks`.
///
/// The cluster map (one cluster per grid cell, `sphericalKMeans`) is taken to the picture by
/// the grid's nearest mapping; with `snapToSuperpixels` each SLIC superpixel then takes the
/// cluster most of its pixels have (ties: the lower cluster), so mask edges follow the image's
/// edges rather than the patch grid. Each cluster's 4-connected pieces of at least
/// `minComponentArea` pixels become masks (source "kmeans:k=K"), in the order of their first
/// pixel. Needs `features`: without them `propose` throws. A k larger than the grid's cell
/// count is skipped.
public struct KMeansProposals: ProposalGenerator {
    /// Default 2, 3, 4, 6, 8: from figure/ground to a handful of parts, the range where k-means
    /// of CLIP patch features gives object-level groups.
    public var ks: [Int]
    public var seed: UInt64
    public var maxIterations: Int
    public var snapToSuperpixels: Bool
    public var superpixels: SLICParameters
    /// Pieces smaller than this are dropped. nil: `ProposalSettings.defaultMinArea`.
    public var minComponentArea: Int?

    public init(ks: [Int] = [2, 3, 4, 6, 8], seed: UInt64 = 0, maxIterations: Int = 50, snapToSuperpixels: Bool = true,
                superpixels: SLICParameters = SLICParameters(), minComponentArea: Int? = nil) {
        self.ks = ks
        self.seed = seed
        self.maxIterations = maxIterations
        self.snapToSuperpixels = snapToSuperpixels
        self.superpixels = superpixels
        self.minComponentArea = minComponentArea
    }

    public var name: String { "kmeans" }

    public func propose(_ image: RGBImage, features: FeatureGrid?) throws -> [ProposalMask] {
        guard features != nil else { throw Self.needsFeatures }
        let sp = snapToSuperpixels ? try slicSuperpixels(image, parameters: superpixels) : nil
        return try propose(image, features: features, superpixels: sp)
    }

    static let needsFeatures = ZeroSegError("k-means proposals need the image's dense CLIP features (a FeatureGrid); none were given")

    /// The same with superpixels computed already (used when `snapToSuperpixels`; nil: no snapping).
    public func propose(_ image: RGBImage, features: FeatureGrid?, superpixels sp: Superpixels?) throws -> [ProposalMask] {
        guard let grid = features else { throw Self.needsFeatures }
        let w = image.width, h = image.height
        if let sp, sp.width != w || sp.height != h {
            throw ZeroSegError("k-means proposals: superpixels are \(sp.width)x\(sp.height), the image is \(w)x\(h)")
        }
        let cells = grid.height * grid.width
        let rows = grid.cellRows(imageHeight: h), cols = grid.cellColumns(imageWidth: w)
        let minArea = minComponentArea ?? ProposalSettings.defaultMinArea(width: w, height: h)
        var out: [ProposalMask] = []
        for k in ks where k >= 1 && k <= cells {
            let result = try sphericalKMeans(grid.data, count: cells, dim: grid.dim, k: k, seed: seed, maxIterations: maxIterations)
            var map = [Int32](repeating: 0, count: w * h)
            for y in 0..<h {
                for x in 0..<w { map[y * w + x] = Int32(result.assignments[rows[y] * grid.width + cols[x]]) }
            }
            if let sp {
                var votes = [Int](repeating: 0, count: sp.count * k)
                for i in 0..<(w * h) { votes[Int(sp.labels[i]) * k + Int(map[i])] += 1 }
                var winner = [Int32](repeating: 0, count: sp.count)
                for r in 0..<sp.count {
                    var b = 0
                    for c in 1..<max(1, k) where votes[r * k + c] > votes[r * k + b] { b = c }
                    winner[r] = Int32(b)
                }
                for i in 0..<(w * h) { map[i] = winner[Int(sp.labels[i])] }
            }
            let (pieces, count) = try connectedComponents(map, width: w, height: h)
            var lists = [[Int]](repeating: [], count: count)
            for (i, p) in pieces.enumerated() { lists[Int(p)].append(i) }
            for list in lists where list.count >= minArea {
                out.append(ProposalMask(width: w, height: h, pixels: list, source: "kmeans:k=\(k)"))
            }
        }
        return out
    }
}

// MARK: - Combined

/// Which generators make the proposals (CLI: "slic", "kmeans", "both").
public enum ProposalSource: String, Sendable, CaseIterable {
    case slic, kmeans, both

    /// Parses a CLI value; anything else is a one-line error listing the choices.
    public static func parse(_ text: String) throws -> ProposalSource {
        guard let s = ProposalSource(rawValue: text.trimmingCharacters(in: .whitespaces).lowercased()) else {
            throw ZeroSegError("unknown proposal source \"\(text)\" (choose slic, kmeans or both)")
        }
        return s
    }

    /// True when k-means (and so dense features) takes part.
    public var needsFeatures: Bool { self != .slic }
}

/// The proposals of `source` for `image`, through `finalize`.
///
/// One SLIC segmentation (`slic.superpixels`' parameters) serves both generators; k-means
/// pieces are dropped below the settings' minimum area. With `.both` the two lists are
/// interleaved (slic, kmeans, slic, ...) before `finalize`, so neither crowds the other out at
/// equal scale. `.kmeans` and `.both` need `features` (a one-line error otherwise).
public func proposals(image: RGBImage, features: FeatureGrid?, source: ProposalSource,
                      settings: ProposalSettings = ProposalSettings(),
                      slic: SLICProposals = SLICProposals(), kmeans: KMeansProposals = KMeansProposals()) throws -> [ProposalMask] {
    if source.needsFeatures && features == nil { throw KMeansProposals.needsFeatures }
    var km = kmeans
    km.minComponentArea = kmeans.minComponentArea ?? settings.resolvedMinArea(width: image.width, height: image.height)
    let needSLIC = source != .kmeans || km.snapToSuperpixels
    let sp = needSLIC ? try slicSuperpixels(image, parameters: source == .kmeans ? km.superpixels : slic.superpixels) : nil
    var a: [ProposalMask] = [], b: [ProposalMask] = []
    if source != .kmeans, let sp { a = try slic.propose(image, features: features, superpixels: sp) }
    if source != .slic { b = try km.propose(image, features: features, superpixels: km.snapToSuperpixels ? sp : nil) }
    var all: [ProposalMask] = []
    all.reserveCapacity(a.count + b.count)
    for i in 0..<max(a.count, b.count) {
        if i < a.count { all.append(a[i]) }
        if i < b.count { all.append(b[i]) }
    }
    return finalize(all, settings: settings)
}
