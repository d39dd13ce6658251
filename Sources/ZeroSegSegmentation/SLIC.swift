import CVLFeat
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegCLIP
import Foundation

// SLIC superpixels (VLFeat's `vl_slic_segment`) in CIE Lab, the sRGB -> Lab conversion they
// run on, and the label-map helpers the mask proposals share: 4-connected components and the
// region adjacency graph.

// MARK: - sRGB -> CIE Lab

/// The sRGB (D65) colour (each 0...255) as CIE L*a*b* (D65 white): L 0...100, a and b about
/// -128...127. The standard formulas: sRGB decoding (linear below 0.04045), IEC 61966-2-1's
/// sRGB -> XYZ matrix, white (Xn, Yn, Zn) = the matrix's row sums (0.95047, 1, 1.08883), and
/// f(t) = cbrt(t) above (6/29)³, t / (3 (6/29)²) + 4/29 below. White gives (100, 0, 0), pure
/// red (53.24, 80.09, 67.20).
public func srgbToLab(_ r: Float, _ g: Float, _ b: Float) -> (l: Float, a: Float, b: Float) {
    func linear(_ v: Float) -> Double {
        let c = Double(v) / 255
        return c <= 0.04045 ? c / 12.92 : pow((c + 0.055) / 1.055, 2.4)
    }
    let rl = linear(r), gl = linear(g), bl = linear(b)
    let x = 0.4124564 * rl + 0.3575761 * gl + 0.1804375 * bl
    let y = 0.2126729 * rl + 0.7151522 * gl + 0.0721750 * bl
    let z = 0.0193339 * rl + 0.1191920 * gl + 0.9503041 * bl
    let delta = 6.0 / 29
    func f(_ t: Double) -> Double { t > delta * delta * delta ? cbrt(t) : t / (3 * delta * delta) + 4.0 / 29 }
    let fx = f(x / 0.95047), fy = f(y), fz = f(z / 1.08883)
    return (Float(116 * fy - 16), Float(500 * (fx - fy)), Float(200 * (fy - fz)))
}

/// The whole picture in Lab, planar: out [3, H, W] (L plane, a plane, b plane), the layout
/// `vl_slic_segment` reads.
public func labPlanes(_ image: RGBImage) -> [Float] {
    let n = image.width * image.height
    var out = [Float](repeating: 0, count: 3 * n)
    image.pixels.withUnsafeBufferPointer { px in
        out.withUnsafeMutableBufferPointer { o in
            for i in 0..<n {
                let lab = srgbToLab(px[3 * i], px[3 * i + 1], px[3 * i + 2])
                o[i] = lab.l; o[n + i] = lab.a; o[2 * n + i] = lab.b
            }
        }
    }
    return out
}

// MARK: - SLIC

/// How SLIC cuts a picture into superpixels.
public struct SLICParameters: Sendable, Equatable {
    /// Nominal superpixel side in pixels (VLFeat's `regionSize`: the seed grid step). nil: about
    /// 300 superpixels for the picture, `defaultRegionSize(width:height:)`.
    public var regionSize: Int?
    /// SLIC's compactness m (Achanta et al.: 1...40, 10 usual on Lab): the distance is
    /// dLab² + (m / S)² dxy², so VLFeat's `regularization` is m².
    public var compactness: Float
    /// Connected pieces smaller than this (pixels) are merged into a neighbour. nil: VLFeat's
    /// MATLAB default, (regionSize / 6)², at least 1.
    public var minRegionSize: Int?

    public init(regionSize: Int? = nil, compactness: Float = 10, minRegionSize: Int? = nil) {
        self.regionSize = regionSize
        self.compactness = compactness
        self.minRegionSize = minRegionSize
    }

    /// round(sqrt(W·H / 300)), at least 4: about 300 superpixels, a few hundred being what the
    /// greedy merge handles in milliseconds and enough for the object boundaries of a 336-pixel
    /// CLIP input (24 px at 480x360).
    public static func defaultRegionSize(width: Int, height: Int) -> Int {
        max(4, Int((Double(width * height) / 300).squareRoot().rounded()))
    }

    public func resolvedRegionSize(width: Int, height: Int) -> Int {
        max(1, regionSize ?? Self.defaultRegionSize(width: width, height: height))
    }

    public func resolvedMinRegionSize(width: Int, height: Int) -> Int {
        if let minRegionSize { return max(1, minRegionSize) }
        let s = Double(resolvedRegionSize(width: width, height: height)) / 6
        return max(1, Int((s * s).rounded()))
    }
}

/// A label map of superpixels: every label 0..<count is ONE 4-connected region, numbered in
/// the order of their first pixel (row-major scan).
public struct Superpixels: Sendable, Equatable {
    public let width: Int
    public let height: Int
    public let count: Int
    /// [H*W] region of each pixel, 0..<count.
    public let labels: [Int32]
    /// [count] pixels in each region.
    public let areas: [Int]
    /// [count, 3] mean CIE Lab colour of each region.
    public let meanLab: [Float]

    /// Regions from any label map (values need not be contiguous nor connected): each
    /// 4-connected piece of equal values becomes one region; mean colours from `lab` ([3, H, W]).
    /// Throws for a label map or Lab planes of another size.
    public init(width: Int, height: Int, rawLabels: [Int32], lab: [Float]) throws {
        guard width >= 0 && height >= 0 && rawLabels.count == width * height && lab.count == 3 * width * height else {
            throw ZeroSegError("Superpixels: \(rawLabels.count) labels and \(lab.count) Lab values for \(width)x\(height)")
        }
        let (labels, count) = try connectedComponents(rawLabels, width: width, height: height)
        var areas = [Int](repeating: 0, count: count)
        var sums = [Double](repeating: 0, count: 3 * count)
        let n = width * height
        for i in 0..<n {
            let r = Int(labels[i])
            areas[r] += 1
            for c in 0..<3 { sums[3 * r + c] += Double(lab[c * n + i]) }
        }
        var mean = [Float](repeating: 0, count: 3 * count)
        for r in 0..<count where areas[r] > 0 {
            for c in 0..<3 { mean[3 * r + c] = Float(sums[3 * r + c] / Double(areas[r])) }
        }
        self.width = width
        self.height = height
        self.count = count
        self.labels = labels
        self.areas = areas
        self.meanLab = mean
    }

    /// The region adjacency graph (4-connectivity): each touching pair (a, b), a < b, once,
    /// sorted.
    public func adjacency() -> [(Int, Int)] {
        var keys = Set<Int>()
        func add(_ p: Int32, _ q: Int32) {
            guard p != q else { return }
            let a = Int(min(p, q)), b = Int(max(p, q))
            keys.insert(a * count + b)
        }
        for y in 0..<height {
            let row = y * width
            for x in 0..<width {
                let l = labels[row + x]
                if x + 1 < width { add(l, labels[row + x + 1]) }
                if y + 1 < height { add(l, labels[row + width + x]) }
            }
        }
        return keys.sorted().map { ($0 / count, $0 % count) }
    }

    /// [count] lists of each region's pixel indices (row-major order).
    public func pixelLists() -> [[Int]] {
        var lists = areas.map { a -> [Int] in
            var l = [Int](); l.reserveCapacity(a); return l
        }
        for (i, l) in labels.enumerated() { lists[Int(l)].append(i) }
        return lists
    }
}

/// SLIC superpixels of `image` with VLFeat's `vl_slic_segment`, on the picture in CIE Lab.
///
/// VLFeat reads the image as `image[x + y * width + k * width * height]` (planar, x fastest:
/// its "width by height by numChannels" array), which is row-major [3, H, W], and writes
/// `segmentation[x + y * width]`. Its labels are seed-grid tile numbers: some are unused and
/// one label may cover disconnected pieces, so they are renumbered into 4-connected regions
/// (see `Superpixels`).
public func slicSuperpixels(_ image: RGBImage, parameters: SLICParameters = SLICParameters()) throws -> Superpixels {
    let w = image.width, h = image.height
    guard w >= 1 && h >= 1 else { throw ZeroSegError("slicSuperpixels: empty \(w)x\(h) picture") }
    let lab = labPlanes(image)
    let regionSize = parameters.resolvedRegionSize(width: w, height: h)
    let minRegion = parameters.resolvedMinRegionSize(width: w, height: h)
    var seg = [UInt32](repeating: 0, count: w * h)
    lab.withUnsafeBufferPointer { lp in
        seg.withUnsafeMutableBufferPointer { sp in
            vl_slic_segment(sp.baseAddress, lp.baseAddress, vl_size(w), vl_size(h), 3, vl_size(regionSize),
                            parameters.compactness * parameters.compactness, vl_size(minRegion))
        }
    }
    return try Superpixels(width: w, height: h, rawLabels: seg.map { Int32(bitPattern: $0) }, lab: lab)
}

// MARK: - Connected components

/// 4-connected components of equal values in values[H*W]: labels [H*W] numbered 0..<count in
/// the order of each component's first pixel (row-major scan). Throws unless
/// values.count == width * height.
public func connectedComponents(_ values: [Int32], width: Int, height: Int) throws -> (labels: [Int32], count: Int) {
    guard width >= 0 && height >= 0 && values.count == width * height else {
        throw ZeroSegError("connectedComponents: \(values.count) values for \(width)x\(height)")
    }
    var labels = [Int32](repeating: -1, count: values.count)
    var stack: [Int] = []
    var count: Int32 = 0
    for start in 0..<values.count where labels[start] < 0 {
        let v = values[start]
        labels[start] = count
        stack.append(start)
        while let p = stack.popLast() {
            let x = p % width, y = p / width
            if x > 0, labels[p - 1] < 0, values[p - 1] == v { labels[p - 1] = count; stack.append(p - 1) }
            if x + 1 < width, labels[p + 1] < 0, values[p + 1] == v { labels[p + 1] = count; stack.append(p + 1) }
            if y > 0, labels[p - width] < 0, values[p - width] == v { labels[p - width] = count; stack.append(p - width) }
            if y + 1 < height, labels[p + width] < 0, values[p + width] == v { labels[p + width] = count; stack.append(p + width) }
        }
        count += 1
    }
    return (labels, Int(count))
}
