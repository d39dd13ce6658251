import CImageShim
import ZeroSegCore
import CPNG
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// PNG output (label maps and RGB pictures) through libpng, the fixed class palette, and the
// atomic-file helper every zeroseg output writer uses.

// MARK: - Class palette

/// The colour of label 255 in label PNGs and overlays: background / unlabelled.
public let backgroundLabel: UInt8 = 255

/// The largest class count `classPalette(count:)` serves (label 255 is the background and
/// 254 is kept free).
public let maxPaletteClasses = 254

/// The first 20 class colours: Sasha Trubetskoy's "20 simple, distinct colours" in his
/// recommended order (red, green, yellow, blue, orange, purple, cyan, magenta, lime, pink,
/// teal, lavender, brown, beige, maroon, mint, olive, apricot, navy, grey). Chosen over
/// segmentation-benchmark palettes (ADE20K/mmseg starts grey, greyish pink, ...) because a
/// zero-shot run usually has a handful of classes and those must be told apart at a glance.
let distinctColours: [(UInt8, UInt8, UInt8)] = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (67, 99, 216), (245, 130, 49),
    (145, 30, 180), (66, 212, 244), (240, 50, 230), (191, 239, 69), (250, 190, 212),
    (70, 153, 144), (220, 190, 255), (154, 99, 36), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 216, 177), (0, 0, 117), (169, 169, 169),
]

/// The fixed class palette: entry i is class i's colour, the same on every run and machine.
///
/// * Classes 0...19: `distinctColours` (Trubetskoy's 20 distinct colours).
/// * Classes 20...253: generated: hue steps by the golden ratio (h = frac(0.11 + 0.618034 * k),
///   k = i - 20), saturation cycles 0.85 / 0.55 / 0.70 and value cycles 0.95 / 0.75 / 0.60 /
///   0.85 on co-prime periods, HSV -> RGB rounded. Every entry differs from every other and
///   from black (0, 0, 0), which PNGs and overlays keep for the background (label 255).
///
/// `count` must be 0...254 (`maxPaletteClasses`); other counts throw.
public func classPalette(count: Int) throws -> [(UInt8, UInt8, UInt8)] {
    guard (0...maxPaletteClasses).contains(count) else {
        throw ZeroSegError("classPalette: count must be 0...\(maxPaletteClasses), not \(count)")
    }
    var out: [(UInt8, UInt8, UInt8)] = []
    out.reserveCapacity(count)
    for i in 0..<count {
        if i < distinctColours.count {
            out.append(distinctColours[i])
            continue
        }
        let k = i - distinctColours.count
        let h = (0.11 + 0.618033988749895 * Double(k)).truncatingRemainder(dividingBy: 1)
        let s = [0.85, 0.55, 0.70][k % 3]
        let v = [0.95, 0.75, 0.60, 0.85][k % 4]
        out.append(hsvToRGB8(h: h, s: s, v: v))
    }
    return out
}

/// HSV (each 0...1) -> 8-bit RGB, rounded.
private func hsvToRGB8(h: Double, s: Double, v: Double) -> (UInt8, UInt8, UInt8) {
    let h6 = h * 6
    let sector = Int(h6) % 6
    let f = h6 - Double(Int(h6))
    let p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f))
    let (r, g, b): (Double, Double, Double)
    switch sector {
    case 0: (r, g, b) = (v, t, p)
    case 1: (r, g, b) = (q, v, p)
    case 2: (r, g, b) = (p, v, t)
    case 3: (r, g, b) = (p, q, v)
    case 4: (r, g, b) = (t, p, v)
    default: (r, g, b) = (v, p, q)
    }
    func c(_ x: Double) -> UInt8 { UInt8(max(0, min(255, (x * 255).rounded()))) }
    return (c(r), c(g), c(b))
}

// MARK: - PNG writers

/// Writes a label map as an 8-bit paletted PNG (colour type 3, one byte per pixel).
///
/// `labels` is row-major, `width * height` class indices; 255 (`backgroundLabel`) marks
/// background / unlabelled pixels. The PLTE chunk always has 256 entries: entry i is
/// `palette[i]` for i < palette.count, every other entry (and always entry 255) is black.
/// Pillow opens the file as mode "P" with the indices unchanged (`np.array(Image.open(p))`
/// gives `labels` back). `palette` may have at most 255 entries.
///
/// Written atomically (temporary file in the same directory, renamed into place); on any
/// error nothing is left behind and a one-line `ZeroSegError` is thrown.
public func writeLabelPNG(labels: [UInt8], width: Int, height: Int, palette: [(UInt8, UInt8, UInt8)],
                          to url: URL) throws {
    let what = "label PNG"
    let plte = try labelPalette(labels: labels, width: width, height: height, palette: palette, what: what, url: url)
    try writePNG(url, what: what, width: width, height: height, colorType: PNG_COLOR_TYPE_PALETTE,
                 plte: plte, pixels: labels)
}

/// Writes an RGB picture as an 8-bit RGB PNG (colour type 2). Each value is rounded to the
/// nearest whole number (halves away from zero) and clamped to 0...255; NaN becomes 0.
/// Atomic like `writeLabelPNG`.
public func writeRGBPNG(_ img: RGBImage, to url: URL) throws {
    let what = "PNG"
    try checkPNGSize(width: img.width, height: img.height, what: what, url: url)
    let bytes = img.pixels.map { v -> UInt8 in
        v.isNaN ? 0 : UInt8(max(0, min(255, v.rounded())))
    }
    try writePNG(url, what: what, width: img.width, height: img.height, colorType: PNG_COLOR_TYPE_RGB,
                 plte: [], pixels: bytes)
}

/// Writes 8-bit greyscale samples (row-major, `width * height` bytes) as a greyscale PNG
/// (colour type 0). Atomic like `writeLabelPNG`.
public func writeGreyPNG(_ samples: [UInt8], width: Int, height: Int, to url: URL, what: String = "greyscale PNG") throws {
    try checkPNGSize(width: width, height: height, what: what, url: url)
    guard samples.count == width * height else {
        throw ZeroSegError("cannot write \(what) \(url.path): \(samples.count) samples for a \(width)x\(height) picture")
    }
    try writePNG(url, what: what, width: width, height: height, colorType: PNG_COLOR_TYPE_GRAY,
                 plte: [], pixels: samples)
}

// MARK: - PNG in memory (the same bytes as the files above)

/// `writeLabelPNG`'s file as bytes in memory.
public func labelPNGData(labels: [UInt8], width: Int, height: Int, palette: [(UInt8, UInt8, UInt8)]) throws -> Data {
    let what = "label PNG"
    let plte = try labelPalette(labels: labels, width: width, height: height, palette: palette, what: what, url: nil)
    return try encodePNG(what: what, width: width, height: height, colorType: PNG_COLOR_TYPE_PALETTE, plte: plte, pixels: labels)
}

/// `writeRGBPNG`'s file as bytes in memory.
public func rgbPNGData(_ img: RGBImage) throws -> Data {
    let what = "PNG"
    try checkPNGSize(width: img.width, height: img.height, what: what, url: nil)
    let bytes = img.pixels.map { v -> UInt8 in v.isNaN ? 0 : UInt8(max(0, min(255, v.rounded()))) }
    return try encodePNG(what: what, width: img.width, height: img.height, colorType: PNG_COLOR_TYPE_RGB, plte: [], pixels: bytes)
}

/// `writeGreyPNG`'s file as bytes in memory.
public func greyPNGData(_ samples: [UInt8], width: Int, height: Int, what: String = "greyscale PNG") throws -> Data {
    try checkPNGSize(width: width, height: height, what: what, url: nil)
    guard samples.count == width * height else {
        throw ZeroSegError("cannot encode \(what): \(samples.count) samples for a \(width)x\(height) picture")
    }
    return try encodePNG(what: what, width: width, height: height, colorType: PNG_COLOR_TYPE_GRAY, plte: [], pixels: samples)
}

private func encodePNG(what: String, width: Int, height: Int, colorType: Int32, plte: [UInt8], pixels: [UInt8]) throws -> Data {
    var message = [CChar](repeating: 0, count: 256)
    var out: UnsafeMutablePointer<UInt8>?
    var count = 0
    let rc = plte.withUnsafeBufferPointer { pb in
        pixels.withUnsafeBufferPointer { px in
            zs_png_write_mem(UInt32(width), UInt32(height), colorType, pb.baseAddress, Int32(plte.count / 3), px.baseAddress,
                             &out, &count, &message, message.count)
        }
    }
    guard rc == 0, let out else {
        let text = String(decoding: message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        throw ZeroSegError("cannot encode \(what): \(text.isEmpty ? "libpng error" : text)")
    }
    return Data(bytesNoCopy: out, count: count, deallocator: .free)
}

/// A label map's checks and its 256-entry PLTE (unused entries and 255 black).
private func labelPalette(labels: [UInt8], width: Int, height: Int, palette: [(UInt8, UInt8, UInt8)], what: String, url: URL?) throws -> [UInt8] {
    try checkPNGSize(width: width, height: height, what: what, url: url)
    let doing = url.map { "write \(what) \($0.path)" } ?? "encode \(what)"
    guard labels.count == width * height else {
        throw ZeroSegError("cannot \(doing): \(labels.count) labels for a \(width)x\(height) picture")
    }
    guard palette.count <= 255 else {
        throw ZeroSegError("cannot \(doing): \(palette.count) palette colours, at most 255 (index 255 is the background)")
    }
    var plte = [UInt8](repeating: 0, count: 256 * 3)
    for (i, c) in palette.enumerated() {
        plte[3 * i] = c.0; plte[3 * i + 1] = c.1; plte[3 * i + 2] = c.2
    }
    return plte
}

private func checkPNGSize(width: Int, height: Int, what: String, url: URL?) throws {
    // PNG allows 1 ... 2^31 - 1 in each direction.
    guard (1...Int(Int32.max)).contains(width), (1...Int(Int32.max)).contains(height) else {
        throw ZeroSegError("cannot \(url.map { "write \(what) \($0.path)" } ?? "encode \(what)"): a PNG cannot be \(width)x\(height)")
    }
}

private func writePNG(_ url: URL, what: String, width: Int, height: Int, colorType: Int32,
                      plte: [UInt8], pixels: [UInt8]) throws {
    try writeFileAtomically(url, what: what) { fd in
        var message = [CChar](repeating: 0, count: 256)
        let rc = plte.withUnsafeBufferPointer { pb in
            pixels.withUnsafeBufferPointer { px in
                zs_png_write_fd(fd, UInt32(width), UInt32(height), colorType,
                                pb.baseAddress, Int32(plte.count / 3), px.baseAddress,
                                &message, message.count)
            }
        }
        guard rc == 0 else {
            let text = String(decoding: message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            // a failed write(2) is reported with strerror's text: its code is recovered from it
            throw text.isEmpty ? AtomicWriteFailure(reason: "libpng error") : AtomicWriteFailure(systemMessage: text)
        }
    }
}
