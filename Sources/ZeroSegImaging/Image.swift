import Foundation
import ZeroSegCore

/// An RGB picture in memory: interleaved, row-major (HWC), one `Float` per channel.
///
/// `pixels[(y * width + x) * 3 + c]` is channel `c` (0 = R, 1 = G, 2 = B) of the pixel in
/// column `x`, row `y`. Decoded images hold the file's 8-bit values exactly (0...255 as
/// whole numbers); later stages (e.g. `resizeBilinear`) may hold fractions.
///
/// Decoding follows what Pillow gives for `ImageOps.exif_transpose(Image.open(p)).convert("RGB")`:
///
/// * Formats are recognised by their first bytes, never by the file name: JPEG (libjpeg-turbo)
///   and PNG (libpng). Anything else is an error naming the format when it is a known one.
/// * Alpha is dropped, not composited (Pillow's `convert("RGB")` discards it).
/// * Grey becomes R = G = B. PNG grey of 1, 2 or 4 bits is scaled to 0...255 (x255, x85, x17).
/// * PNG palette images use the palette's colours; an index past the end of the palette is
///   black, as in Pillow. tRNS transparency is ignored.
/// * 16-bit PNG, as Pillow does it (checked with Pillow 13.0): RGB, RGBA and grey+alpha keep the
///   HIGH byte of each sample (`v >> 8`); 16-bit GREY (Pillow mode "I;16") is CLIPPED,
///   `min(v, 255)`, not scaled, so most 16-bit grey pictures come out nearly white. That is
///   Pillow's (odd) behaviour and CLIP users' pipelines see the same thing.
/// * JPEG: JDCT_ISLOW and fancy upsampling (libjpeg's defaults, which Pillow keeps).
///   CMYK/YCCK JPEGs are read with Adobe's inverted convention, as Pillow always does
///   ("CMYK;I"), then `R = C*K/255` rounded the way Pillow's MULDIV255 rounds (likewise G, B),
///   with C, M, Y, K the values stored in the file.
/// * EXIF orientation (tag 0x0112 of IFD0 in the JPEG APP1 "Exif" segment or the PNG eXIf
///   chunk; when absent, `tiff:Orientation` in JPEG XMP, as Pillow's `getexif`) is applied like
///   `ImageOps.exif_transpose`, so photos come out upright. Note that transformers'
///   `CLIPImageProcessor` itself does NOT do this; zeroseg does it on purpose.
/// * Truncated or corrupt data is an error, never a partly grey picture: a JPEG that ends
///   early (even just its EOI marker missing, which Pillow refuses too) or whose entropy-coded
///   data is damaged (libjpeg's "corrupt data" warnings), a PNG with a bad checksum or too
///   little pixel data. Harmless JPEG warnings (extraneous bytes between markers, unusual JFIF
///   version, bogus ICC details) are ignored as Pillow ignores them. Damage in a PNG's chunks
///   after its pixel data is ignored (Pillow is mostly lenient there too).
/// * Pictures with more than `maxPixels` pixels (default 178,956,970 = 2 x Pillow's
///   `MAX_IMAGE_PIXELS`, where Pillow raises `DecompressionBombError`) are refused from the
///   header alone, before any pixel memory is allocated.
public struct RGBImage: Sendable, Equatable {
    public private(set) var width: Int
    public private(set) var height: Int
    /// Interleaved RGB, shape [height, width, 3].
    public private(set) var pixels: [Float]

    /// Throws unless width, height >= 0 and pixels.count == width * height * 3.
    public init(width: Int, height: Int, pixels: [Float]) throws {
        guard width >= 0 && height >= 0 && pixels.count == width * height * 3 else {
            throw ZeroSegError("RGBImage: \(pixels.count) values for a \(width)x\(height) picture (width * height * 3 expected)")
        }
        self.init(unchecked: width, height: height, pixels: pixels)
    }

    /// For pictures built here, whose sizes hold by construction.
    package init(unchecked width: Int, height: Int, pixels: [Float]) {
        assert(width >= 0 && height >= 0 && pixels.count == width * height * 3)
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    /// Pillow raises `DecompressionBombError` above 2 * MAX_IMAGE_PIXELS = 178,956,970 pixels.
    public static let defaultMaxPixels = 178_956_970

    /// Reads and decodes a JPEG or PNG file (format from its content, not its name). Errors are
    /// `.badInput(file:)` (missing, unreadable, corrupt), or `.unsupported` (another format).
    public static func load(_ url: URL, maxPixels: Int = defaultMaxPixels) throws -> RGBImage {
        try classifyingErrors(as: .badInput(file: url.path)) {
            let data: Data
            do {
                data = try Data(contentsOf: url)
            } catch {
                throw ZeroSegError("cannot read image \(url.path): \(error.localizedDescription)")
            }
            return try decode(bytes: [UInt8](data), source: url.path, maxPixels: maxPixels)
        }
    }

    /// Decodes JPEG or PNG bytes (format from the first bytes).
    public static func decode(data: Data, maxPixels: Int = defaultMaxPixels) throws -> RGBImage {
        try classifyingErrors(as: .badInput(file: nil)) {
            try decode(bytes: [UInt8](data), source: "image data", maxPixels: maxPixels)
        }
    }

    static func decode(bytes: [UInt8], source: String, maxPixels: Int) throws -> RGBImage {
        let decoded: DecodedImage
        switch ImageFormat.sniff(bytes) {
        case .jpeg:
            decoded = try decodeJPEG(bytes, source: source, maxPixels: maxPixels)
        case .png:
            decoded = try decodePNG(bytes, source: source, maxPixels: maxPixels)
        case .other(let name):
            throw ZeroSegError.unsupported("cannot decode \(source): \(name) is not supported (zeroseg reads JPEG and PNG)")
        case .unknown:
            throw ZeroSegError("cannot decode \(source): not a JPEG or PNG file (unrecognised first bytes)")
        }
        return decoded.image.applyingEXIFOrientation(decoded.orientation)
    }

    /// The picture as Pillow's `ImageOps.exif_transpose` leaves it for an EXIF orientation
    /// 1...8 (values outside 2...8 change nothing):
    /// 2 mirror left-right, 3 rotate 180, 4 mirror top-bottom, 5 transpose,
    /// 6 rotate 90 clockwise (Pillow's ROTATE_270), 7 transverse, 8 rotate 90 anticlockwise.
    public func applyingEXIFOrientation(_ orientation: Int) -> RGBImage {
        guard (2...8).contains(orientation) else { return self }
        let w = width, h = height
        let swaps = orientation >= 5
        let ow = swaps ? h : w, oh = swaps ? w : h
        var out = [Float](repeating: 0, count: pixels.count)
        pixels.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for y in 0..<oh {
                    for x in 0..<ow {
                        // (sx, sy): the source pixel that lands on output (x, y).
                        let sx: Int, sy: Int
                        switch orientation {
                        case 2: sx = w - 1 - x; sy = y
                        case 3: sx = w - 1 - x; sy = h - 1 - y
                        case 4: sx = x; sy = h - 1 - y
                        case 5: sx = y; sy = x
                        case 6: sx = y; sy = h - 1 - x
                        case 7: sx = w - 1 - y; sy = h - 1 - x
                        default: sx = w - 1 - y; sy = x  // 8
                        }
                        let s = (sy * w + sx) * 3, d = (y * ow + x) * 3
                        dst[d] = src[s]; dst[d + 1] = src[s + 1]; dst[d + 2] = src[s + 2]
                    }
                }
            }
        }
        return RGBImage(unchecked: ow, height: oh, pixels: out)
    }
}

/// What the first bytes of a file say it is.
package enum ImageFormat: Equatable {
    case jpeg, png
    case other(String)
    case unknown

    package static func sniff(_ b: [UInt8]) -> ImageFormat {
        func starts(_ magic: [UInt8]) -> Bool { b.count >= magic.count && Array(b[0..<magic.count]) == magic }
        if starts([0xFF, 0xD8, 0xFF]) { return .jpeg }
        if starts([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) { return .png }
        if starts(Array("GIF8".utf8)) { return .other("GIF") }
        if starts(Array("BM".utf8)) { return .other("BMP") }
        if b.count >= 12 && starts(Array("RIFF".utf8)) && Array(b[8..<12]) == Array("WEBP".utf8) { return .other("WebP") }
        if starts([0x49, 0x49, 0x2A, 0x00]) || starts([0x4D, 0x4D, 0x00, 0x2A]) { return .other("TIFF") }
        if b.count >= 12 && Array(b[4..<8]) == Array("ftyp".utf8) { return .other("HEIF/AVIF") }
        return .unknown
    }
}

/// A decoded picture before its orientation is applied.
struct DecodedImage {
    var image: RGBImage
    var orientation: Int
}

/// Throws when a header's size exceeds the pixel limit (Pillow counts max(1, w) * max(1, h)).
package func checkPixelLimit(width: Int, height: Int, maxPixels: Int, source: String) throws {
    let (pixels, overflow) = max(1, width).multipliedReportingOverflow(by: max(1, height))
    if overflow || pixels > maxPixels {
        throw ZeroSegError.limitExceeded("refusing \(source): \(width)x\(height) is \(overflow ? "too many" : String(pixels)) pixels, above the limit of \(maxPixels) (possible decompression bomb)")
    }
}
