import CImageShim
import ZeroSegCore
import CJPEG
import CPNG
import Foundation

// JPEG and PNG decoding into RGBImage, matching Pillow's `Image.open(p).convert("RGB")`
// (see RGBImage's documentation for every rule). libjpeg and libpng are called through
// CImageShim, whose wrappers turn the libraries' fatal errors into return codes.

// MARK: - JPEG

func decodeJPEG(_ bytes: [UInt8], source: String, maxPixels: Int) throws -> DecodedImage {
    try bytes.withUnsafeBufferPointer { buf -> DecodedImage in
        guard let j = zs_jpeg_create(buf.baseAddress, buf.count) else {
            throw ZeroSegError("cannot decode \(source): out of memory starting libjpeg")
        }
        defer { zs_jpeg_destroy(j) }
        let cinfo = zs_jpeg_cinfo(j).assumingMemoryBound(to: jpeg_decompress_struct.self)
        func failure() -> ZeroSegError {
            let msg = String(cString: zs_jpeg_message(j))
            return ZeroSegError("cannot decode \(source): corrupt or truncated JPEG (libjpeg: \(msg))")
        }

        guard zs_jpeg_read_header(j) == 0 else { throw failure() }
        try checkPixelLimit(width: Int(cinfo.pointee.image_width), height: Int(cinfo.pointee.image_height),
                            maxPixels: maxPixels, source: source)
        let components = Int(cinfo.pointee.num_components)
        switch components {
        case 1: cinfo.pointee.out_color_space = JCS_GRAYSCALE
        case 3: cinfo.pointee.out_color_space = JCS_RGB
        case 4: cinfo.pointee.out_color_space = JCS_CMYK  // libjpeg turns YCCK into CMYK
        default:
            throw ZeroSegError.unsupported("cannot decode \(source): JPEG with \(components) colour components is not supported")
        }
        // Pillow's defaults (it changes them only in draft mode).
        cinfo.pointee.dct_method = JDCT_ISLOW
        cinfo.pointee.do_fancy_upsampling = 1
        let orientation = jpegOrientation(cinfo.pointee.marker_list)

        guard zs_jpeg_start(j) == 0 else { throw failure() }
        let width = Int(cinfo.pointee.output_width), height = Int(cinfo.pointee.output_height)
        let channels = Int(cinfo.pointee.output_components)
        guard channels == components, width > 0, height > 0 else {
            throw ZeroSegError("cannot decode \(source): unexpected libjpeg output layout")
        }

        var pixels = [Float](repeating: 0, count: width * height * 3)
        let batch = 16
        var rowBuf = [UInt8](repeating: 0, count: width * channels * batch)
        try pixels.withUnsafeMutableBufferPointer { out in
            try rowBuf.withUnsafeMutableBufferPointer { rb in
                var rows: [UnsafeMutablePointer<UInt8>?] = (0..<batch).map { rb.baseAddress! + $0 * width * channels }
                while Int(cinfo.pointee.output_scanline) < height {
                    let y0 = Int(cinfo.pointee.output_scanline)
                    let want = UInt32(min(batch, height - y0))
                    var got: UInt32 = 0
                    guard zs_jpeg_read_scanlines(j, &rows, want, &got) == 0 else { throw failure() }
                    guard got > 0 else {
                        throw ZeroSegError("cannot decode \(source): libjpeg returned no scanlines")
                    }
                    for r in 0..<Int(got) {
                        let src = rb.baseAddress! + r * width * channels
                        let dst = out.baseAddress! + (y0 + r) * width * 3
                        convertJPEGRow(src, dst, width: width, channels: channels)
                    }
                }
            }
        }
        // Reads to the EOI marker; a file that ends before it is refused, as Pillow refuses it.
        guard zs_jpeg_finish(j) == 0 else { throw failure() }
        return DecodedImage(image: RGBImage(unchecked: width, height: height, pixels: pixels), orientation: orientation)
    }
}

/// One libjpeg output row -> RGB floats.
/// src: [width, channels] u8 (channels 1 grey, 3 RGB, 4 CMYK as stored); dst: [width, 3].
@inline(__always)
private func convertJPEGRow(_ src: UnsafePointer<UInt8>, _ dst: UnsafeMutablePointer<Float>, width: Int, channels: Int) {
    switch channels {
    case 1:
        for x in 0..<width {
            let v = Float(src[x])
            dst[3 * x] = v; dst[3 * x + 1] = v; dst[3 * x + 2] = v
        }
    case 3:
        for i in 0..<(3 * width) { dst[i] = Float(src[i]) }
    default:
        // Pillow reads CMYK JPEG as "CMYK;I" (inverts what libjpeg returns), then
        // cmyk2rgb: R = MULDIV255(255 - C', 255 - K') with C' = 255 - stored C.
        for x in 0..<width {
            let k = Int(src[4 * x + 3])
            for c in 0..<3 { dst[3 * x + c] = Float(mulDiv255(Int(src[4 * x + c]), k)) }
        }
    }
}

/// Pillow's MULDIV255(a, b): a * b / 255 rounded, computed as ((t >> 8) + t) >> 8 with t = a*b + 128.
@inline(__always)
func mulDiv255(_ a: Int, _ b: Int) -> Int {
    let t = a * b + 128
    return ((t >> 8) + t) >> 8
}

/// EXIF orientation from saved APP1 markers, the way Pillow finds it: the first "Exif\0\0"
/// APP1 (later ones appended without their prefix), IFD0 tag 0x0112; when that has no
/// orientation, `tiff:Orientation` in the last XMP APP1. 1 (upright) if none.
private func jpegOrientation(_ list: jpeg_saved_marker_ptr?) -> Int {
    var exif: [UInt8]? = nil
    var xmp: [UInt8]? = nil
    let xmpPrefix = Array("http://ns.adobe.com/xap/1.0/\u{0}".utf8)
    var m = list
    while let marker = m {
        defer { m = marker.pointee.next }
        guard Int(marker.pointee.marker) == 0xE1, let data = marker.pointee.data else { continue }
        let bytes = Array(UnsafeBufferPointer(start: data, count: Int(marker.pointee.data_length)))
        if bytes.starts(with: exifPrefix) {
            if exif == nil { exif = bytes } else { exif! += bytes.dropFirst(6) }
        } else if bytes.starts(with: xmpPrefix) {
            xmp = Array(bytes.dropFirst(xmpPrefix.count))
        }
    }
    if let exif, let o = exifOrientation(exif) { return o }
    if let xmp, let o = xmpOrientation(xmp) { return o }
    return 1
}

private let exifPrefix: [UInt8] = Array("Exif".utf8) + [0, 0]

/// Orientation (tag 0x0112) in IFD0 of an EXIF block, read as Pillow's `Exif.load` does:
/// up to two leading "Exif\0\0" are skipped, then a classic TIFF header ("II*\0" / "MM\0*"),
/// then the entries of the first IFD, the last Orientation entry with count 1 winning.
/// Anything malformed yields nil (Pillow warns or raises; zeroseg keeps the picture as stored).
func exifOrientation(_ block: [UInt8]) -> Int? {
    var start = 0
    for _ in 0..<2 where block.count >= start + 6 && Array(block[start..<start + 6]) == exifPrefix {
        start += 6
    }
    let t = Array(block[start...])
    guard t.count >= 8 else { return nil }
    let little: Bool
    if t[0] == 0x49, t[1] == 0x49, t[2] == 0x2A, t[3] == 0 { little = true }
    else if t[0] == 0x4D, t[1] == 0x4D, t[2] == 0, t[3] == 0x2A { little = false }
    else { return nil }
    func u16(_ i: Int) -> Int {
        little ? Int(t[i]) | Int(t[i + 1]) << 8 : Int(t[i]) << 8 | Int(t[i + 1])
    }
    func u32(_ i: Int) -> Int {
        little ? u16(i) | u16(i + 2) << 16 : u16(i) << 16 | u16(i + 2)
    }
    let ifd = u32(4)
    guard ifd >= 0, ifd + 2 <= t.count else { return nil }
    var result: Int? = nil
    for i in 0..<u16(ifd) {
        let e = ifd + 2 + 12 * i
        guard e + 12 <= t.count else { break }
        guard u16(e) == 0x0112, u32(e + 4) == 1 else { continue }
        switch u16(e + 2) {
        case 1: result = Int(t[e + 8])                          // BYTE
        case 3: result = u16(e + 8)                             // SHORT (the usual one)
        case 4: result = u32(e + 8)                             // LONG
        case 6: result = Int(Int8(bitPattern: t[e + 8]))        // SBYTE
        case 8: result = Int(Int16(truncatingIfNeeded: u16(e + 8)))  // SSHORT
        case 9: result = Int(Int32(truncatingIfNeeded: u32(e + 8)))  // SLONG
        default: break
        }
    }
    return result
}

/// Pillow's XMP fallback: the first match of the regex `tiff:Orientation(="|>)([0-9])`.
func xmpOrientation(_ xmp: [UInt8]) -> Int? {
    let key = Array("tiff:Orientation".utf8)
    let eq = UInt8(ascii: "="), quote = UInt8(ascii: "\""), gt = UInt8(ascii: ">")
    func digit(_ i: Int) -> Int? { i < xmp.count && (0x30...0x39).contains(xmp[i]) ? Int(xmp[i] - 0x30) : nil }
    var i = 0
    while i + key.count < xmp.count {
        if xmp[i] == key[0] && xmp[i..<i + key.count].elementsEqual(key) {
            let a = i + key.count
            if xmp[a] == eq, a + 1 < xmp.count, xmp[a + 1] == quote, let d = digit(a + 2) { return d }
            if xmp[a] == gt, let d = digit(a + 1) { return d }
        }
        i += 1
    }
    return nil
}

// MARK: - PNG

/// Checks the size in a PNG's IHDR chunk against the pixel limit before libpng reads anything
/// else (a bomb may have no more than a header).
package func checkPNGHeaderLimit(_ bytes: [UInt8], maxPixels: Int, source: String) throws {
    guard bytes.count >= 24, Array(bytes[12..<16]) == Array("IHDR".utf8) else { return }
    func be32(_ i: Int) -> Int { Int(bytes[i]) << 24 | Int(bytes[i + 1]) << 16 | Int(bytes[i + 2]) << 8 | Int(bytes[i + 3]) }
    try checkPixelLimit(width: be32(16), height: be32(20), maxPixels: maxPixels, source: source)
}

func decodePNG(_ bytes: [UInt8], source: String, maxPixels: Int) throws -> DecodedImage {
    try checkPNGHeaderLimit(bytes, maxPixels: maxPixels, source: source)
    return try bytes.withUnsafeBufferPointer { buf -> DecodedImage in
        guard let p = zs_png_create(buf.baseAddress, buf.count) else {
            throw ZeroSegError("cannot decode \(source): out of memory starting libpng")
        }
        defer { zs_png_destroy(p) }
        let png = OpaquePointer(zs_png_ptr(p)), info = OpaquePointer(zs_png_info(p))
        func failure() -> ZeroSegError {
            ZeroSegError("cannot decode \(source): corrupt or truncated PNG (libpng: \(String(cString: zs_png_message(p))))")
        }

        guard zs_png_read_info(p) == 0 else { throw failure() }
        var w: png_uint_32 = 0, h: png_uint_32 = 0
        var depth: Int32 = 0, colorType: Int32 = 0, interlace: Int32 = 0
        png_get_IHDR(png, info, &w, &h, &depth, &colorType, &interlace, nil, nil)
        let width = Int(w), height = Int(h)
        try checkPixelLimit(width: width, height: height, maxPixels: maxPixels, source: source)

        // Ask libpng only to unpack sub-byte samples to one byte each and to de-interlace;
        // every other conversion is done below, Pillow's way.
        if depth < 8 { png_set_packing(png) }
        _ = png_set_interlace_handling(png)
        guard zs_png_update_info(p) == 0 else { throw failure() }
        let rowBytes = Int(png_get_rowbytes(png, info))
        let channels = Int(png_get_channels(png, info))
        let bytesPerSample = depth == 16 ? 2 : 1
        guard rowBytes == width * channels * bytesPerSample else {
            throw ZeroSegError("cannot decode \(source): unexpected libpng row layout")
        }

        var raw = [UInt8](repeating: 0, count: rowBytes * height)
        try raw.withUnsafeMutableBufferPointer { rb in
            var rows: [UnsafeMutablePointer<UInt8>?] = (0..<height).map { rb.baseAddress! + $0 * rowBytes }
            guard zs_png_read_image(p, &rows) == 0 else { throw failure() }
        }
        // Trailing chunks (eXIf, text may follow the pixels). Errors after complete pixel data
        // are ignored: Pillow too stops quietly at a damaged or missing end.
        _ = zs_png_read_end(p)

        var palette = [UInt8](repeating: 0, count: 256 * 3)  // missing entries are black, as in Pillow
        if colorType == PNG_COLOR_TYPE_PALETTE {
            var plte: png_colorp? = nil
            var n: Int32 = 0
            if png_get_PLTE(png, info, &plte, &n) != 0, let plte {
                for i in 0..<min(Int(n), 256) {
                    palette[3 * i] = plte[i].red; palette[3 * i + 1] = plte[i].green; palette[3 * i + 2] = plte[i].blue
                }
            }
        }

        var pixels = [Float](repeating: 0, count: width * height * 3)
        raw.withUnsafeBufferPointer { src in
            pixels.withUnsafeMutableBufferPointer { dst in
                convertPNG(src.baseAddress!, dst.baseAddress!, count: width * height,
                           colorType: colorType, depth: Int(depth), palette: palette)
            }
        }
        let orientation = pngOrientation(png, info)
        return DecodedImage(image: RGBImage(unchecked: width, height: height, pixels: pixels), orientation: orientation)
    }
}

/// libpng samples -> RGB floats, Pillow's way.
/// src: [count, channels] samples (1 byte, or 2 big-endian bytes when depth == 16; sub-byte
/// depths already unpacked to one byte each); dst: [count, 3].
private func convertPNG(_ src: UnsafePointer<UInt8>, _ dst: UnsafeMutablePointer<Float>, count: Int,
                        colorType: Int32, depth: Int, palette: [UInt8]) {
    switch colorType {
    case PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_GRAY_ALPHA:
        let ch = colorType == PNG_COLOR_TYPE_GRAY ? 1 : 2
        for i in 0..<count {
            let v: Float
            switch depth {
            case 1: v = src[i] != 0 ? 255 : 0
            case 2: v = Float(Int(src[i]) * 85)
            case 4: v = Float(Int(src[i]) * 17)
            case 8: v = Float(src[i * ch])
            default:
                // 16-bit grey is Pillow's "I;16": convert("RGB") clips to 255.
                // 16-bit grey+alpha is Pillow's "LA;16B" -> RGBA: high byte.
                let s = i * ch * 2
                v = ch == 1 ? Float(min(Int(src[s]) << 8 | Int(src[s + 1]), 255)) : Float(src[s])
            }
            dst[3 * i] = v; dst[3 * i + 1] = v; dst[3 * i + 2] = v
        }
    case PNG_COLOR_TYPE_PALETTE:
        for i in 0..<count {
            let k = 3 * Int(src[i])
            dst[3 * i] = Float(palette[k]); dst[3 * i + 1] = Float(palette[k + 1]); dst[3 * i + 2] = Float(palette[k + 2])
        }
    default:  // RGB, RGBA: alpha dropped; 16-bit keeps the high byte
        let ch = colorType == PNG_COLOR_TYPE_RGB ? 3 : 4
        let step = depth == 16 ? 2 : 1
        for i in 0..<count {
            for c in 0..<3 { dst[3 * i + c] = Float(src[(i * ch + c) * step]) }
        }
    }
}

/// EXIF orientation of a PNG, as Pillow's `getexif` finds it: the eXIf chunk, else a
/// "Raw profile type exif" text chunk (hex, as ImageMagick writes it); when neither holds an
/// orientation, `tiff:Orientation` in an "XML:com.adobe.xmp" text chunk. 1 if none.
private func pngOrientation(_ png: OpaquePointer?, _ info: OpaquePointer?) -> Int {
    var texts: [String: [UInt8]] = [:]
    var textPtr: png_textp? = nil
    var n: Int32 = 0
    if png_get_text(png, info, &textPtr, &n) > 0, let textPtr {
        for i in 0..<Int(n) {
            guard let key = textPtr[i].key, let text = textPtr[i].text else { continue }
            texts[String(cString: key)] = Array(UnsafeBufferPointer(start: UnsafeRawPointer(text).assumingMemoryBound(to: UInt8.self), count: strlen(text)))
        }
    }
    var exif: [UInt8]? = nil
    var exifPtr: png_bytep? = nil
    var exifLen: png_uint_32 = 0
    if png_get_eXIf_1(png, info, &exifLen, &exifPtr) != 0, let exifPtr {
        exif = exifPrefix + Array(UnsafeBufferPointer(start: exifPtr, count: Int(exifLen)))
    } else if let raw = texts["Raw profile type exif"] {
        // Pillow: bytes.fromhex("".join(text.split("\n")[3:]))
        let lines = raw.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        if lines.count > 3 { exif = hexBytes(Array(lines[3...].joined())) }
    }
    if let exif, let o = exifOrientation(exif) { return o }
    if let xmp = texts["XML:com.adobe.xmp"], let o = xmpOrientation(xmp) { return o }
    return 1
}

/// Hex digits (whitespace skipped) -> bytes; nil on anything else.
private func hexBytes(_ s: [UInt8]) -> [UInt8]? {
    var out: [UInt8] = []
    var hi: UInt8? = nil
    for c in s {
        let v: UInt8
        switch c {
        case 0x30...0x39: v = c - 0x30
        case 0x41...0x46: v = c - 0x41 + 10
        case 0x61...0x66: v = c - 0x61 + 10
        case 0x20, 0x09, 0x0A, 0x0D: continue
        default: return nil
        }
        if let h = hi { out.append(h << 4 | v); hi = nil } else { hi = v }
    }
    return out
}
