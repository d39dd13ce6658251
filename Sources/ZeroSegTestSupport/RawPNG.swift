import CImageShim
import CPNG
import Foundation
import ZeroSegCore

// Reading PNGs back exactly as stored, for the tests of the PNG writers (ZeroSegImaging/PNGWrite.swift).

/// A PNG as stored: 8-bit samples without any conversion (palette indices stay indices).
public struct RawPNG {
    public var width: Int
    public var height: Int
    public var colorType: Int32
    public var bitDepth: Int
    /// Row-major samples, `width * channels` bytes per row.
    public var samples: [UInt8]
    /// PLTE entries as RGB triples (empty when there is none).
    public var palette: [UInt8]
}

/// Decodes an 8-bit, non-interlaced PNG exactly as stored, with libpng (for checking what
/// the writers wrote).
public func readRawPNG(_ url: URL) throws -> RawPNG {
    let bytes = [UInt8](try Data(contentsOf: url))
    return try bytes.withUnsafeBufferPointer { buf -> RawPNG in
        guard let p = zs_png_create(buf.baseAddress, buf.count) else { throw ZeroSegError("out of memory starting libpng") }
        defer { zs_png_destroy(p) }
        let png = OpaquePointer(zs_png_ptr(p)), info = OpaquePointer(zs_png_info(p))
        func failure() -> ZeroSegError { ZeroSegError("cannot read \(url.path): \(String(cString: zs_png_message(p)))") }
        guard zs_png_read_info(p) == 0 else { throw failure() }
        var w: png_uint_32 = 0, h: png_uint_32 = 0
        var depth: Int32 = 0, colorType: Int32 = 0, interlace: Int32 = 0
        png_get_IHDR(png, info, &w, &h, &depth, &colorType, &interlace, nil, nil)
        guard depth == 8, interlace == PNG_INTERLACE_NONE else {
            throw ZeroSegError("cannot read \(url.path): only 8-bit non-interlaced PNGs are read back")
        }
        let rowBytes = Int(png_get_rowbytes(png, info))
        var samples = [UInt8](repeating: 0, count: rowBytes * Int(h))
        try samples.withUnsafeMutableBufferPointer { sb in
            var rows: [UnsafeMutablePointer<UInt8>?] = (0..<Int(h)).map { sb.baseAddress! + $0 * rowBytes }
            guard zs_png_read_image(p, &rows) == 0 else { throw failure() }
        }
        guard zs_png_read_end(p) == 0 else { throw failure() }
        var palette: [UInt8] = []
        var plte: png_colorp? = nil
        var n: Int32 = 0
        if png_get_PLTE(png, info, &plte, &n) != 0, let plte {
            for i in 0..<Int(n) { palette += [plte[i].red, plte[i].green, plte[i].blue] }
        }
        return RawPNG(width: Int(w), height: Int(h), colorType: colorType, bitDepth: Int(depth),
                      samples: samples, palette: palette)
    }
}
