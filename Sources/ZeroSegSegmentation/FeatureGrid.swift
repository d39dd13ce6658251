import Foundation
import ZeroSegCore

/// Dense CLIP patch embeddings covering the whole picture: a gh x gw grid of dim-vectors.
///
/// Grid cell (gy, gx) covers picture rows y in [gy·H/gh, (gy+1)·H/gh) and columns likewise,
/// i.e. pixel (y, x) takes cell (min(gh-1, y·gh/H), min(gw-1, x·gw/W)) (integer division).
public struct FeatureGrid: Sendable, Equatable {
    public let height: Int
    public let width: Int
    public let dim: Int
    /// [gh*gw, dim], row gy*gw + gx, each row L2-normalised (all-zero rows stay zero).
    public let data: [Float]

    /// The rows of `data` are L2-normalised here (in Double), whatever they were. Throws unless
    /// the sizes are positive and data.count == height * width * dim.
    public init(height: Int, width: Int, dim: Int, data: [Float]) throws {
        try Self.checkSize(height: height, width: width, dim: dim, count: data.count)
        var d = data
        for r in 0..<(height * width) {
            var s = 0.0
            for j in 0..<dim { s += Double(d[r * dim + j]) * Double(d[r * dim + j]) }
            guard s > 0 else { continue }
            let inv = 1 / s.squareRoot()
            for j in 0..<dim { d[r * dim + j] = Float(Double(d[r * dim + j]) * inv) }
        }
        self.height = height
        self.width = width
        self.dim = dim
        self.data = d
    }

    /// A grid whose rows are already L2-normalised (what a `FeatureGrid` stored): kept bit for
    /// bit. Normalising again is not exact (x / |x| of a unit vector can move by an ulp), so a grid
    /// read back from a cache would differ from the one that was computed.
    init(height: Int, width: Int, dim: Int, normalizedData data: [Float]) throws {
        try Self.checkSize(height: height, width: width, dim: dim, count: data.count)
        self.height = height
        self.width = width
        self.dim = dim
        self.data = data
    }

    /// Sizes must be positive and `count` == height · width · dim.
    static func checkSize(height: Int, width: Int, dim: Int, count: Int) throws {
        guard height >= 1 && width >= 1 && dim >= 1 && count == height * width * dim else {
            throw ZeroSegError("FeatureGrid: \(count) values for a \(height)x\(width) grid of \(dim)-vectors")
        }
    }

    /// [imageHeight] the grid row of each picture row.
    public func cellRows(imageHeight h: Int) -> [Int] { (0..<h).map { min(height - 1, $0 * height / h) } }

    /// [imageWidth] the grid column of each picture column.
    public func cellColumns(imageWidth w: Int) -> [Int] { (0..<w).map { min(width - 1, $0 * width / w) } }
}
