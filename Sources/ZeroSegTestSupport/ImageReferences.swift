import Foundation
import ZeroSegCore
import ZeroSegImaging
import ZeroSegSegmentation

// Naive references of imaging and segmentation kernels (tests only; see KernelReferences.swift).

// MARK: - Pillow's bicubic resize (ZeroSegImaging/Preprocess.swift: `pilResizeBicubic`)

/// One Pillow 8-bit pass along x (naive reference): src [h, w, channels] -> [h, outW, channels].
func pilPassHorizontalReference(_ img: [UInt8], w: Int, h: Int, channels: Int, outW: Int) -> [UInt8] {
    let k = PILResampleCoefficients(inSize: w, outSize: outW)
    var out = [UInt8](repeating: 0, count: h * outW * channels)
    for y in 0..<h {
        for xx in 0..<outW {
            let xmin = k.bounds[2 * xx], n = k.bounds[2 * xx + 1]
            for c in 0..<channels {
                var ss: Int32 = 1 << Int32(PILResampleCoefficients.precisionBits - 1)
                for x in 0..<n {
                    ss = ss &+ Int32(img[(y * w + x + xmin) * channels + c]) &* k.fixed[xx * k.ksize + x]
                }
                out[(y * outW + xx) * channels + c] = pilClip8(ss)
            }
        }
    }
    return out
}

/// One Pillow 8-bit pass along y (naive reference): src [h, w, channels] -> [outH, w, channels].
func pilPassVerticalReference(_ img: [UInt8], w: Int, h: Int, channels: Int, outH: Int) -> [UInt8] {
    let k = PILResampleCoefficients(inSize: h, outSize: outH)
    var out = [UInt8](repeating: 0, count: outH * w * channels)
    for yy in 0..<outH {
        let ymin = k.bounds[2 * yy], n = k.bounds[2 * yy + 1]
        for x in 0..<w {
            for c in 0..<channels {
                var ss: Int32 = 1 << Int32(PILResampleCoefficients.precisionBits - 1)
                for y in 0..<n {
                    ss = ss &+ Int32(img[((y + ymin) * w + x) * channels + c]) &* k.fixed[yy * k.ksize + y]
                }
                out[(yy * w + x) * channels + c] = pilClip8(ss)
            }
        }
    }
    return out
}

/// Reference (slow, written like Pillow's ImagingResampleInner + *_8bpc):
/// src [height, width, channels] u8 -> [outHeight, outWidth, channels] u8, bicubic.
/// Two separable passes, each rounding to uint8; a pass whose size does not change is skipped;
/// the order follows `pilVerticalFirst`. (Pillow restricts the first pass to the rows/columns
/// the second one reads; that saves time and changes no value, so the reference skips it.)
public func pilResizeBicubicReference(_ src: [UInt8], width: Int, height: Int, channels: Int,
                               outWidth: Int, outHeight: Int) -> [UInt8] {
    var img = src
    if pilVerticalFirst(width: width, height: height, outWidth: outWidth, outHeight: outHeight) {
        img = pilPassVerticalReference(img, w: width, h: height, channels: channels, outH: outHeight)
        return pilPassHorizontalReference(img, w: width, h: outHeight, channels: channels, outW: outWidth)
    }
    if outWidth != width {
        img = pilPassHorizontalReference(img, w: width, h: height, channels: channels, outW: outWidth)
    }
    if outHeight != height {
        img = pilPassVerticalReference(img, w: outWidth, h: height, channels: channels, outH: outHeight)
    }
    return img
}

// MARK: - Spherical k-means (ZeroSegSegmentation/Proposals.swift)

/// Naive reference of `pointCentroidSimilarities` (accumulating in Double).
public func pointCentroidSimilaritiesReference(_ points: ConstFloatPtr, _ centroids: ConstFloatPtr, _ out: FloatPtr,
                                               n: Int, k: Int, dim: Int) {
    for i in 0..<n {
        for c in 0..<k {
            var s = 0.0
            for j in 0..<dim { s += Double(points[i * dim + j]) * Double(centroids[c * dim + j]) }
            out[i * k + c] = Float(s)
        }
    }
}

// MARK: - PAMR (ZeroSegSegmentation/PAMR.swift)

extension PAMR {
    /// Naive reference of `refine` (the formula as written, one channel at a time).
    public func refineReference(_ masks: [Float], channels: Int, iterations: Int) -> [Float] {
        let h = height, w = width, hw = h * w
        var cur = masks, next = [Float](repeating: 0, count: masks.count)
        for _ in 0..<iterations {
            for c in 0..<channels {
                for y in 0..<h {
                    for x in 0..<w {
                        var acc: Float = 0
                        for (p, (dy, dx)) in offsets.enumerated() {
                            acc += affinity[p * hw + y * w + x] * cur[c * hw + min(max(y + dy, 0), h - 1) * w + min(max(x + dx, 0), w - 1)]
                        }
                        next[c * hw + y * w + x] = acc
                    }
                }
            }
            swap(&cur, &next)
        }
        return cur
    }
}
