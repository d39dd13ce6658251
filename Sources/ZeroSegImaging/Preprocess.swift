import Foundation
import ZeroSegCore

// CLIP image preprocessing, reproducing transformers' CLIP image processor with the PIL
// backend (`CLIPImageProcessorPil` in transformers 5; `CLIPImageProcessor` in transformers 4):
//
//   1. resize so the shortest edge is `size` (transformers' get_resize_output_image_size,
//      default_to_square=False: the long edge is int(size * long / short)), with Pillow's
//      BICUBIC filter on the 8-bit picture (antialiased: the filter support grows with the
//      downscale factor; each of the two separable passes rounds and clips to uint8, and their
//      order follows Pillow 13, see `pilVerticalFirst`);
//   2. center crop to cropSize x cropSize (offsets (H - crop) // 2, (W - crop) // 2; a picture
//      smaller than the crop is zero-padded first, the pad before it being the larger half);
//   3. rescale by 1/255 in float64, cast to float32;
//   4. normalize (x - mean) / std in float32, output CHW.
//
// With the same decoded pixels the result is bit-identical to transformers (the tests allow
// 1e-5). transformers 5's default `CLIPImageProcessor` uses torchvision instead of Pillow for
// the resize and differs slightly from this; see scripts/reference/make_image_fixtures.py.

// MARK: - Pillow's bicubic resample for 8-bit pictures (port of src/libImaging/Resample.c)

/// Pillow's bicubic kernel (a = -0.5), support 2.
@inline(__always)
func pilBicubicFilter(_ x: Double) -> Double {
    let x = x < 0 ? -x : x
    if x < 1.0 { return ((-0.5 + 2.0) * x - (-0.5 + 3.0)) * x * x + 1 }
    if x < 2.0 { return (((x - 5) * x + 8) * x - 4) * -0.5 }
    return 0.0
}

/// Filter taps of one axis, exactly as Pillow's `precompute_coeffs` and
/// `normalize_coeffs_8bpc` compute them for the box (0, inSize).
package struct PILResampleCoefficients {
    /// Taps reserved per output pixel.
    package var ksize: Int
    /// [outSize, 2]: first input index and number of taps of each output pixel.
    package var bounds: [Int]
    /// [outSize, ksize]: normalised weights (unused taps 0).
    var weights: [Double]
    /// [outSize, ksize]: the weights in fixed point with 22 fractional bits, rounded half away from zero.
    package var fixed: [Int32]

    package static let precisionBits = 32 - 8 - 2

    package init(inSize: Int, outSize: Int) {
        let support0 = 2.0  // bicubic
        let in0: Float = 0, in1 = Float(inSize)  // Pillow's box is float
        let scale = Double(in1 - in0) / Double(outSize)
        let filterScale = max(scale, 1.0)
        let support = support0 * filterScale
        let ksize = Int(support.rounded(.up)) * 2 + 1
        var bounds = [Int](repeating: 0, count: outSize * 2)
        var weights = [Double](repeating: 0, count: outSize * ksize)
        for xx in 0..<outSize {
            let center = Double(in0) + (Double(xx) + 0.5) * scale
            var ww = 0.0
            let ss = 1.0 / filterScale
            let xmin = max(Int(center - support + 0.5), 0)  // C (int) truncates toward zero
            let xmax = min(Int(center + support + 0.5), inSize) - xmin
            for x in 0..<max(xmax, 0) {
                let w = pilBicubicFilter((Double(x + xmin) - center + 0.5) * ss)
                weights[xx * ksize + x] = w
                ww += w
            }
            if ww != 0.0 {
                for x in 0..<max(xmax, 0) { weights[xx * ksize + x] /= ww }
            }
            bounds[2 * xx] = xmin
            bounds[2 * xx + 1] = xmax
        }
        let one = Double(1 << PILResampleCoefficients.precisionBits)
        self.ksize = ksize
        self.bounds = bounds
        self.weights = weights
        self.fixed = weights.map { $0 < 0 ? Int32(-0.5 + $0 * one) : Int32(0.5 + $0 * one) }
    }
}

/// Pillow's clip8: the fixed-point sum shifted down, clamped to 0...255.
@inline(__always)
package func pilClip8(_ ss: Int32) -> UInt8 {
    let v = ss >> Int32(PILResampleCoefficients.precisionBits)
    return v <= 0 ? 0 : (v >= 255 ? 255 : UInt8(v))
}

/// Whether Pillow (>= 13, PR #9549 "If height is scaled down significantly more than width,
/// resize vertically first") runs the vertical pass before the horizontal one. Pillow up to 12
/// always went horizontal first. The rule was measured on Pillow 13.0 (thousands of random
/// sizes, see scripts/reference/make_image_fixtures.py): vertical first iff the height shrinks
/// and by more than twice as many pixels as the width shrinks. The order matters because each
/// pass rounds to uint8.
package func pilVerticalFirst(width: Int, height: Int, outWidth: Int, outHeight: Int) -> Bool {
    outWidth != width && outHeight < height && height - outHeight > 2 * (width - outWidth)
}

/// Pillow's bicubic resize, bit for bit (tests: `pilResizeBicubicReference` in ZeroSegTestSupport):
/// src [height, width, 3] u8 -> [outHeight, outWidth, 3] u8.
func pilResizeBicubic(_ src: [UInt8], width: Int, height: Int, outWidth: Int, outHeight: Int) -> [UInt8] {
    precondition(src.count == width * height * 3 && outWidth > 0 && outHeight > 0 && width > 0 && height > 0)
    let needH = outWidth != width, needV = outHeight != height
    if !needH && !needV { return src }
    if pilVerticalFirst(width: width, height: height, outWidth: outWidth, outHeight: outHeight) {
        // Only the columns the horizontal pass reads need the vertical pass.
        let ch = PILResampleCoefficients(inSize: width, outSize: outWidth)
        let x0 = ch.bounds[0], x1 = ch.bounds[2 * outWidth - 2] + ch.bounds[2 * outWidth - 1]
        let tmp = pilPassVertical(src, width: width, columns: x0..<x1, height: height, outHeight: outHeight)
        return pilPassHorizontal(tmp, width: x1 - x0, rows: 0..<outHeight, coefficients: ch, shift: x0)
    }
    var img = src
    if needH {
        // Only the rows the vertical pass reads need the horizontal pass.
        let cv = PILResampleCoefficients(inSize: height, outSize: outHeight)
        let rows = needV ? cv.bounds[0]..<(cv.bounds[2 * outHeight - 2] + cv.bounds[2 * outHeight - 1]) : 0..<height
        img = pilPassHorizontal(img, width: width, rows: rows,
                                coefficients: PILResampleCoefficients(inSize: width, outSize: outWidth), shift: 0)
        if needV {
            return pilPassVertical(img, width: outWidth, columns: 0..<outWidth, height: height,
                                   outHeight: outHeight, firstRow: rows.lowerBound)
        }
        return img
    }
    return pilPassVertical(img, width: width, columns: 0..<width, height: height, outHeight: outHeight)
}

/// Fast horizontal pass over RGB rows `rows` of src [*, width, 3] -> [rows.count, outW, 3],
/// outW = coefficients' output size; tap positions are offset by -shift (src starts at column
/// `shift` of the picture the coefficients were made for). Rows are split across the thread budget.
private func pilPassHorizontal(_ src: [UInt8], width: Int, rows: Range<Int>,
                               coefficients ch: PILResampleCoefficients, shift: Int) -> [UInt8] {
    let outWidth = ch.bounds.count / 2
    let half: Int32 = 1 << Int32(PILResampleCoefficients.precisionBits - 1)
    let n = rows.count
    var tmp = [UInt8](repeating: 0, count: n * outWidth * 3)
    let ksize = ch.ksize, yFirst = rows.lowerBound
    src.withUnsafeBufferPointer { s in
        tmp.withUnsafeMutableBufferPointer { t in
            ch.fixed.withUnsafeBufferPointer { k in
                ch.bounds.withUnsafeBufferPointer { b in
                    let ptrs = UnsafeSendable((s.baseAddress!, t.baseAddress!, k.baseAddress!, b.baseAddress!))
                    let chunks = max(1, min(n, threadBudget))  // the caller's `withThreads` (1 outside one)
                    DispatchQueue.concurrentPerform(iterations: chunks) { chunk in
                        let (sp, tp, kp, bp) = ptrs.value
                        for yy in (n * chunk / chunks)..<(n * (chunk + 1) / chunks) {
                            let row = sp + (yy + yFirst) * width * 3
                            let orow = tp + yy * outWidth * 3
                            for xx in 0..<outWidth {
                                let count = bp[2 * xx + 1]
                                let kx = kp + xx * ksize
                                var s0 = half, s1 = half, s2 = half
                                var p = row + (bp[2 * xx] - shift) * 3
                                for x in 0..<count {
                                    let kv = kx[x]
                                    s0 = s0 &+ Int32(p[0]) &* kv
                                    s1 = s1 &+ Int32(p[1]) &* kv
                                    s2 = s2 &+ Int32(p[2]) &* kv
                                    p += 3
                                }
                                orow[3 * xx] = pilClip8(s0)
                                orow[3 * xx + 1] = pilClip8(s1)
                                orow[3 * xx + 2] = pilClip8(s2)
                            }
                        }
                    }
                }
            }
        }
    }
    return tmp
}

/// Fast vertical pass: src [*, width, 3] holds picture rows firstRow... (the picture being
/// `height` rows tall); output [outHeight, columns.count, 3] for the given columns, as
/// row-vector multiply-adds.
private func pilPassVertical(_ src: [UInt8], width: Int, columns: Range<Int>, height: Int,
                             outHeight: Int, firstRow: Int = 0) -> [UInt8] {
    let cv = PILResampleCoefficients(inSize: height, outSize: outHeight)
    let half: Int32 = 1 << Int32(PILResampleCoefficients.precisionBits - 1)
    let rowLen = columns.count * 3, srcRowLen = width * 3, c0 = columns.lowerBound * 3
    var out = [UInt8](repeating: 0, count: outHeight * rowLen)
    var acc = [Int32](repeating: 0, count: rowLen)
    src.withUnsafeBufferPointer { t in
        out.withUnsafeMutableBufferPointer { o in
            cv.fixed.withUnsafeBufferPointer { k in
                acc.withUnsafeMutableBufferPointer { a in
                    let tp = t.baseAddress!, op = o.baseAddress!, kp = k.baseAddress!, ap = a.baseAddress!
                    for yy in 0..<outHeight {
                        let ymin = cv.bounds[2 * yy] - firstRow, n = cv.bounds[2 * yy + 1]
                        for i in 0..<rowLen { ap[i] = half }
                        for y in 0..<n {
                            let kv = kp[yy * cv.ksize + y]
                            let r = tp + (ymin + y) * srcRowLen + c0
                            for i in 0..<rowLen { ap[i] = ap[i] &+ Int32(r[i]) &* kv }
                        }
                        let orow = op + yy * rowLen
                        for i in 0..<rowLen { orow[i] = pilClip8(ap[i]) }
                    }
                }
            }
        }
    }
    return out
}

/// Lets raw pointers into a `concurrentPerform` closure; each iteration writes disjoint rows.
private struct UnsafeSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// Float pixels -> u8 as Pillow would hold them: rounded to nearest, clamped to 0...255
/// (decoded pictures are whole numbers already, so this is exact for them).
/// [n] f32 -> [n] u8.
func quantizeToUInt8(_ pixels: [Float]) -> [UInt8] {
    [UInt8](unsafeUninitializedCapacity: pixels.count) { buf, count in
        pixels.withUnsafeBufferPointer { p in
            for i in 0..<p.count {
                let v = p[i]
                buf[i] = v >= 255 ? 255 : (v > 0 ? UInt8(v.rounded(.toNearestOrEven)) : 0)
            }
        }
        count = pixels.count
    }
}

/// Resize with Pillow's BICUBIC filter on the 8-bit picture (what transformers' PIL backend and
/// OpenAI's CLIP do). Pixels are rounded and clamped to 0...255 first. Throws for an empty
/// picture or a size below 1.
public func resizeBicubicPIL(_ img: RGBImage, width: Int, height: Int) throws -> RGBImage {
    try checkResize("resizeBicubicPIL", img, width: width, height: height)
    let u8 = quantizeToUInt8(img.pixels)
    let out = pilResizeBicubic(u8, width: img.width, height: img.height, outWidth: width, outHeight: height)
    return RGBImage(unchecked: width, height: height, pixels: out.map { Float($0) })
}

/// The resizes' input check: a non-empty picture to at least 1x1.
private func checkResize(_ what: String, _ img: RGBImage, width: Int, height: Int) throws {
    guard img.width > 0 && img.height > 0 else { throw ZeroSegError("\(what): empty \(img.width)x\(img.height) picture") }
    guard width > 0 && height > 0 else { throw ZeroSegError("\(what): output size \(width)x\(height) (must be at least 1x1)") }
}

// MARK: - Bilinear resize on float pixels (torch.nn.functional.interpolate)

/// Source indices and weights of one axis for torch's bilinear interpolation with
/// align_corners=False: scale = in/out (float32); src = max(scale * (dst + 0.5) - 0.5, 0);
/// i0 = min(floor(src), in - 1), i1 = i0 + (i0 < in - 1), l1 = clamp(src - i0, 0, 1), l0 = 1 - l1.
/// Same size: identity. Returns [out] each of i0, i1, l0, l1.
func torchLinearAxis(inSize: Int, outSize: Int) -> (i0: [Int], i1: [Int], l0: [Float], l1: [Float]) {
    var i0 = [Int](repeating: 0, count: outSize), i1 = i0
    var l0 = [Float](repeating: 1, count: outSize), l1 = [Float](repeating: 0, count: outSize)
    if inSize == outSize {
        for i in 0..<outSize { i0[i] = i; i1[i] = i }
        return (i0, i1, l0, l1)
    }
    let scale = Float(inSize) / Float(outSize)
    for i in 0..<outSize {
        var real = scale * (Float(i) + 0.5) - 0.5
        if real < 0 { real = 0 }
        let idx = min(Int(real.rounded(.down)), inSize - 1)
        let lambda = min(max(real - Float(idx), 0), 1)
        i0[i] = idx
        i1[i] = idx + (idx < inSize - 1 ? 1 : 0)
        l1[i] = lambda
        l0[i] = 1 - lambda
    }
    return (i0, i1, l0, l1)
}

/// Bilinear resize of float pixels like
/// `torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=False)`
/// on an NCHW float32 tensor (no antialiasing: a plain 2x2 blend, as mmcv's imrescale-style
/// resizing does it). Results agree with torch to float32 rounding.
/// img [H, W, 3] -> [height, width, 3]. Throws for an empty picture or a size below 1.
public func resizeBilinear(_ img: RGBImage, width: Int, height: Int) throws -> RGBImage {
    try checkResize("resizeBilinear", img, width: width, height: height)
    let ax = torchLinearAxis(inSize: img.width, outSize: width)
    let ay = torchLinearAxis(inSize: img.height, outSize: height)
    let inW = img.width
    var out = [Float](repeating: 0, count: width * height * 3)
    // hot loop: unchecked via unsafe buffer pointers
    img.pixels.withUnsafeBufferPointer { s in
        out.withUnsafeMutableBufferPointer { o in
        ax.i0.withUnsafeBufferPointer { ai0 in ax.i1.withUnsafeBufferPointer { ai1 in
        ax.l0.withUnsafeBufferPointer { al0 in ax.l1.withUnsafeBufferPointer { al1 in
            let ax = (i0: ai0, i1: ai1, l0: al0, l1: al1)
            let sp = s.baseAddress!, op = o.baseAddress!
            for y in 0..<height {
                let r0 = sp + ay.i0[y] * inW * 3, r1 = sp + ay.i1[y] * inW * 3
                let h0 = ay.l0[y], h1 = ay.l1[y]
                for x in 0..<width {
                    let a = ax.i0[x] * 3, b = ax.i1[x] * 3
                    let w0 = ax.l0[x], w1 = ax.l1[x]
                    for c in 0..<3 {
                        // torch's order: (x00*w0 + x01*w1) * h0 + (x10*w0 + x11*w1) * h1
                        let top = r0[a + c] * w0 + r0[b + c] * w1
                        let bottom = r1[a + c] * w0 + r1[b + c] * w1
                        op[(y * width + x) * 3 + c] = top * h0 + bottom * h1
                    }
                }
            }
        } }
        } }
        }
    }
    return RGBImage(unchecked: width, height: height, pixels: out)
}

// MARK: - CLIP preprocessing

/// transformers' CLIP image processing (PIL backend), see the top of this file.
public struct CLIPPreprocessor: Sendable {
    /// OpenAI CLIP's mean and std (transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD), rounded
    /// from float64 to float32 as numpy does.
    public static let openAIMean: [Float] = [0.48145466, 0.4578275, 0.40821073].map { Float($0 as Double) }
    public static let openAIStd: [Float] = [0.26862954, 0.26130258, 0.27577711].map { Float($0 as Double) }

    /// Target length of the shortest edge.
    public var size: Int
    /// Side of the square center crop.
    public var cropSize: Int
    public var mean: [Float]
    public var std: [Float]

    /// Throws unless size and cropSize are positive and mean and std have 3 values.
    public init(size: Int = 224, cropSize: Int = 224,
                mean: [Float] = CLIPPreprocessor.openAIMean, std: [Float] = CLIPPreprocessor.openAIStd) throws {
        guard size > 0 && cropSize > 0 && mean.count == 3 && std.count == 3 else {
            throw ZeroSegError("CLIPPreprocessor: size \(size) and crop \(cropSize) must be positive, mean and std 3 values each (\(mean.count), \(std.count))")
        }
        self.size = size
        self.cropSize = cropSize
        self.mean = mean
        self.std = std
    }

    /// transformers' `get_resize_output_image_size(size=S, default_to_square=False)`:
    /// the short edge becomes S, the long one int(S * long / short) (truncated).
    public static func shortestEdgeSize(width: Int, height: Int, shortestEdge s: Int) -> (width: Int, height: Int) {
        let (short, long) = width <= height ? (width, height) : (height, width)
        let newLong = Int(Double(s * long) / Double(short))
        return width <= height ? (s, newLong) : (newLong, s)
    }

    /// Resize + center crop + rescale + normalize: [3, cropSize, cropSize] f32 (CHW). Throws for
    /// an empty picture.
    public func callAsFunction(_ img: RGBImage) throws -> [Float] {
        guard size > 0 && cropSize > 0 && mean.count == 3 && std.count == 3 else {
            throw ZeroSegError("CLIPPreprocessor: size \(size) and crop \(cropSize) must be positive, mean and std 3 values each (\(mean.count), \(std.count))")
        }
        return normalizeU8(try resizedCrop(img), width: cropSize, height: cropSize)
    }

    /// The resized, center-cropped picture that `callAsFunction` normalises: [cropSize, cropSize, 3] u8.
    func resizedCrop(_ img: RGBImage) throws -> [UInt8] {
        guard img.width > 0 && img.height > 0 else { throw ZeroSegError("CLIPPreprocessor: empty \(img.width)x\(img.height) picture") }
        let (rw, rh) = Self.shortestEdgeSize(width: img.width, height: img.height, shortestEdge: size)
        let resized = pilResizeBicubic(quantizeToUInt8(img.pixels), width: img.width, height: img.height,
                                       outWidth: rw, outHeight: rh)
        return centerCrop(resized, width: rw, height: rh, crop: cropSize)
    }

    /// Both what the model sees and where it lies: the normalised pixels [3, cropSize, cropSize]
    /// (as `callAsFunction`), the same crop as a picture, and the crop's square in the input's
    /// pixel coordinates (x0, y0, x1, y1; fractional, and past the edges when the picture is
    /// smaller than the crop).
    public func preprocessWithCrop(_ img: RGBImage) throws -> (pixels: [Float], crop: RGBImage, box: (x0: Double, y0: Double, x1: Double, y1: Double)) {
        let u8 = try resizedCrop(img)
        let (rw, rh) = Self.shortestEdgeSize(width: img.width, height: img.height, shortestEdge: size)
        let fx = Double(img.width) / Double(rw), fy = Double(img.height) / Double(rh)
        func start(_ n: Int) -> Int { cropSize <= n ? (n - cropSize) / 2 : -((cropSize - n + 1) / 2) }
        let x0 = Double(start(rw)), y0 = Double(start(rh))
        let box = (x0 * fx, y0 * fy, (x0 + Double(cropSize)) * fx, (y0 + Double(cropSize)) * fy)
        let crop = RGBImage(unchecked: cropSize, height: cropSize, pixels: u8.map { Float($0) })
        return (normalizeU8(u8, width: cropSize, height: cropSize), crop, box)
    }

    /// Rescale + normalize only (no resize, no crop), for dense use: [3, H, W] f32 (CHW).
    /// Per value: (Float(Double(v) * (1/255)) - mean[c]) / std[c].
    public func normalizeOnly(_ img: RGBImage) -> [Float] {
        let n = img.width * img.height
        var out = [Float](repeating: 0, count: 3 * n)
        img.pixels.withUnsafeBufferPointer { s in
            out.withUnsafeMutableBufferPointer { o in
                for c in 0..<3 {
                    let m = mean[c], sd = std[c]
                    for i in 0..<n {
                        o[c * n + i] = (Float(Double(s[3 * i + c]) * (1.0 / 255.0)) - m) / sd
                    }
                }
            }
        }
        return out
    }

    /// [height, width, 3] u8 -> [3, height, width] f32, normalised through a per-channel
    /// 256-entry table (the same values as `normalizeOnly`).
    func normalizeU8(_ px: [UInt8], width: Int, height: Int) -> [Float] {
        var lut = [Float](repeating: 0, count: 3 * 256)
        for c in 0..<3 {
            for v in 0..<256 { lut[c * 256 + v] = (Float(Double(v) * (1.0 / 255.0)) - mean[c]) / std[c] }
        }
        let n = width * height
        var out = [Float](repeating: 0, count: 3 * n)
        px.withUnsafeBufferPointer { s in
            out.withUnsafeMutableBufferPointer { o in
                for i in 0..<n {
                    o[i] = lut[Int(s[3 * i])]
                    o[n + i] = lut[256 + Int(s[3 * i + 1])]
                    o[2 * n + i] = lut[512 + Int(s[3 * i + 2])]
                }
            }
        }
        return out
    }
}

/// transformers' numpy `center_crop` to crop x crop: [height, width, 3] u8 -> [crop, crop, 3] u8.
/// Per axis: if crop <= size, start at (size - crop) // 2; otherwise the picture is placed at
/// ceil((crop - size) / 2) in a zero canvas.
func centerCrop(_ px: [UInt8], width: Int, height: Int, crop: Int) -> [UInt8] {
    func axis(_ n: Int) -> (src: Int, dst: Int, len: Int) {
        crop <= n ? ((n - crop) / 2, 0, crop) : (0, (crop - n + 1) / 2, n)
    }
    let ax = axis(width), ay = axis(height)
    var out = [UInt8](repeating: 0, count: crop * crop * 3)
    for y in 0..<ay.len {
        let s = ((ay.src + y) * width + ax.src) * 3
        let d = ((ay.dst + y) * crop + ax.dst) * 3
        out.replaceSubrange(d..<d + ax.len * 3, with: px[s..<s + ax.len * 3])
    }
    return out
}
