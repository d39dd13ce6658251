import Foundation
import Testing
@testable import ZeroSegCore
@testable import ZeroSegFormats
@testable import ZeroSegImaging
@testable import ZeroSegText
@testable import ZeroSegCLIP
@testable import ZeroSegHub
@testable import ZeroSegSegmentation
@testable import ZeroSegTuning
import ZeroSegTestSupport

// Image decoding and CLIP preprocessing against Pillow / transformers / torch references in
// Fixtures/images (made by scripts/reference/make_image_fixtures.py, see manifest.json).
//
// Tolerances (stated, and why; measured with Pillow 13.0.0, transformers 5.24.0, torch 2.15):
// * PNG decode: exact.
// * JPEG decode: max |diff| <= 2 levels and mean |diff| <= 0.1 level. Debian's libjpeg-turbo
//   2.1.5 and Pillow's bundled 3.2.0 both use JDCT_ISLOW + fancy upsampling and measured
//   identical (0 difference); the slack is for other libjpeg-turbo builds.
// * Pillow bicubic resize (8-bit): exact (measured 0).
// * CLIP tensors from the same decoded pixels: max |diff| <= 1e-5 (measured 0: bit-exact).
//   End to end from the file: 1e-5 for PNG, 0.031 for JPEG (2 levels / 255 / std); measured 0.
// * torch bilinear on float pixels: max |diff| <= 1e-3 on the 0...255 scale (float32
//   rounding; torch may fuse multiply-adds); measured 6.1e-5.

private let regenerate = "if the fixtures are stale, regenerate them: python scripts/reference/make_image_fixtures.py"

// MARK: - Fixture access

private let imagesDir: URL = Bundle.module.resourceURL!.appendingPathComponent("Fixtures/images")

private struct ImageManifest: Decodable {
    struct Decode: Decodable { let input: String; let reference: String; let codec: String }
    struct Failure: Decodable { let input: String; let message_contains: String }
    struct Resize: Decodable { let input: String; let width: Int; let height: Int; let reference: String }
    struct Clip: Decodable { let input: String; let size: Int; let crop: Int; let reference: String }
    let versions: [String: String]
    let decode: [Decode]
    let errors: [Failure]
    let resize: [Resize]
    let clip: [Clip]
    let bilinear: [Resize]
}

private func loadManifest() throws -> ImageManifest {
    let url = imagesDir.appendingPathComponent("manifest.json")
    guard let data = try? Data(contentsOf: url) else {
        throw ZeroSegError("missing \(url.path); \(regenerate)")
    }
    return try JSONDecoder().decode(ImageManifest.self, from: data)
}

private func fixture(_ rel: String) -> URL { imagesDir.appendingPathComponent(rel) }

/// A .npy array (little-endian float32 or uint8, C order) as floats with its shape.
private func loadNPY(_ rel: String) throws -> (shape: [Int], values: [Float]) {
    let b = [UInt8](try Data(contentsOf: fixture(rel)))
    guard b.count > 10, b[0] == 0x93, Array(b[1..<6]) == Array("NUMPY".utf8) else {
        throw ZeroSegError("\(rel): not a .npy file; \(regenerate)")
    }
    let (hlen, start) = b[6] == 1 ? (Int(b[8]) | Int(b[9]) << 8, 10)
                                  : (Int(b[8]) | Int(b[9]) << 8 | Int(b[10]) << 16 | Int(b[11]) << 24, 12)
    let header = String(decoding: b[start..<start + hlen], as: UTF8.self)
    guard !header.contains("'fortran_order': True") else { throw ZeroSegError("\(rel): Fortran order") }
    let shapeText = header.components(separatedBy: "'shape': (")[1].components(separatedBy: ")")[0]
    let shape = shapeText.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
    let count = shape.reduce(1, *)
    let body = Array(b[(start + hlen)...])
    if header.contains("'<f4'") {
        guard body.count == count * 4 else { throw ZeroSegError("\(rel): size mismatch") }
        let values = (0..<count).map { i in
            Float(bitPattern: UInt32(body[4 * i]) | UInt32(body[4 * i + 1]) << 8 | UInt32(body[4 * i + 2]) << 16 | UInt32(body[4 * i + 3]) << 24)
        }
        return (shape, values)
    } else if header.contains("'|u1'") {
        guard body.count == count else { throw ZeroSegError("\(rel): size mismatch") }
        return (shape, body.map { Float($0) })
    }
    throw ZeroSegError("\(rel): unsupported dtype in \(header)")
}

/// A uint8 reference picture (.png via our PNG decoder, which is checked exactly, or .npy).
private func loadReference(_ rel: String) throws -> RGBImage {
    if rel.hasSuffix(".png") { return try RGBImage.load(fixture(rel)) }
    let (shape, v) = try loadNPY(rel)
    return try RGBImage(width: shape[1], height: shape[0], pixels: v)
}

private struct DiffStats: CustomStringConvertible {
    var maxAbs: Float = 0
    var mean: Double = 0
    var description: String { "max |diff| \(maxAbs), mean |diff| \(String(format: "%.5f", mean))" }
}

private func diffStats(_ a: [Float], _ b: [Float]) -> DiffStats {
    precondition(a.count == b.count)
    var s = DiffStats()
    var sum = 0.0
    for i in 0..<a.count {
        let d = abs(a[i] - b[i])
        s.maxAbs = max(s.maxAbs, d)
        sum += Double(d)
    }
    s.mean = a.isEmpty ? 0 : sum / Double(a.count)
    return s
}

// MARK: - Decoding

@Test func imageDecodeMatchesPillow() throws {
    let m = try loadManifest()
    #expect(m.decode.count >= 20, "too few decode fixtures; \(regenerate)")
    var jpegWorst = DiffStats()
    for c in m.decode {
        let ours: RGBImage
        do {
            ours = try RGBImage.load(fixture(c.input))
        } catch {
            Issue.record("\(c.input): decode failed: \(error); \(regenerate)")
            continue
        }
        let ref = try loadReference(c.reference)
        guard ours.width == ref.width, ours.height == ref.height else {
            Issue.record("\(c.input): size \(ours.width)x\(ours.height), Pillow \(ref.width)x\(ref.height); \(regenerate)")
            continue
        }
        let d = diffStats(ours.pixels, ref.pixels)
        if c.codec == "png" {
            #expect(d.maxAbs == 0, "\(c.input): PNG decode differs from Pillow (\(d)); \(regenerate)")
        } else {
            jpegWorst.maxAbs = max(jpegWorst.maxAbs, d.maxAbs)
            jpegWorst.mean = max(jpegWorst.mean, d.mean)
            #expect(d.maxAbs <= 2 && d.mean <= 0.1, "\(c.input): JPEG decode vs Pillow \(d), allowed max 2 / mean 0.1; \(regenerate)")
        }
    }
    print("image decode: JPEG vs Pillow \(m.versions["pillow"] ?? "?") (libjpeg-turbo \(m.versions["pillow_libjpeg_turbo"] ?? "?")): worst \(jpegWorst)")
}

@Test func imageDecodeIgnoresFileExtension() throws {
    let a = try RGBImage.load(fixture("inputs/jpeg_named_as.png"))
    let b = try RGBImage.load(fixture("inputs/jpeg_444_97x61.jpg"))
    #expect(a == b, "a JPEG named .png must decode like the .jpg; \(regenerate)")
    let data = try Data(contentsOf: fixture("inputs/png_rgb_97x61.png"))
    #expect(try RGBImage.decode(data: data) == RGBImage.load(fixture("inputs/png_rgb_97x61.png")))
}

@Test func imageEXIFOrientation() throws {
    let upright = try RGBImage.load(fixture("inputs/jpeg_exif1_40x24.jpg"))
    #expect(upright.width == 40 && upright.height == 24, "\(regenerate)")
    for o in 1...8 {
        let img = try RGBImage.load(fixture("inputs/jpeg_exif\(o)_40x24.jpg"))
        // All eight files hold the same JPEG data; only the EXIF tag differs.
        #expect(img == upright.applyingEXIFOrientation(o), "orientation \(o): not the transposed upright picture; \(regenerate)")
        #expect(o >= 5 ? (img.width == 24 && img.height == 40) : (img.width == 40 && img.height == 24), "orientation \(o): size")
    }
    // Spot checks of the geometry on a 3x2 picture (pixel value = 10 * index).
    let p = try RGBImage(width: 3, height: 2, pixels: (0..<6).flatMap { i in [Float(10 * i), 0, 0] })
    func reds(_ im: RGBImage) -> [Int] { stride(from: 0, to: im.pixels.count, by: 3).map { Int(im.pixels[$0]) / 10 } }
    // 0 1 2      orientation 6 (rotate 90 clockwise): 3 0      orientation 8: 2 5
    // 3 4 5                                          4 1                     1 4
    //                                                5 2                     0 3
    #expect(reds(p.applyingEXIFOrientation(6)) == [3, 0, 4, 1, 5, 2])
    #expect(reds(p.applyingEXIFOrientation(8)) == [2, 5, 1, 4, 0, 3])
    #expect(reds(p.applyingEXIFOrientation(2)) == [2, 1, 0, 5, 4, 3])
    #expect(reds(p.applyingEXIFOrientation(4)) == [3, 4, 5, 0, 1, 2])
    #expect(reds(p.applyingEXIFOrientation(5)) == [0, 3, 1, 4, 2, 5])
    #expect(reds(p.applyingEXIFOrientation(7)) == [5, 2, 4, 1, 3, 0])
    #expect(p.applyingEXIFOrientation(9) == p && p.applyingEXIFOrientation(0) == p)
    // XMP-only orientation and PNG eXIf / "Raw profile type exif" are honoured too.
    #expect(try RGBImage.load(fixture("inputs/jpeg_xmp6_40x24.jpg")) == RGBImage.load(fixture("inputs/jpeg_exif6_40x24.jpg")))
    let png = try RGBImage.load(fixture("inputs/png_exif6_40x24.png"))
    #expect(png.width == 24 && png.height == 40)
    #expect(try RGBImage.load(fixture("inputs/png_rawexif8_40x24.png")) == png.applyingEXIFOrientation(3))
}

@Test func imageEXIFParser() {
    func tiff(little: Bool, entries: [(tag: Int, type: Int, count: Int, value: Int)]) -> [UInt8] {
        func u16(_ v: Int) -> [UInt8] { little ? [UInt8(v & 255), UInt8(v >> 8 & 255)] : [UInt8(v >> 8 & 255), UInt8(v & 255)] }
        func u32(_ v: Int) -> [UInt8] { little ? u16(v & 0xFFFF) + u16(v >> 16) : u16(v >> 16) + u16(v & 0xFFFF) }
        var b: [UInt8] = little ? [0x49, 0x49, 0x2A, 0] : [0x4D, 0x4D, 0, 0x2A]
        b += u32(8) + u16(entries.count)
        for e in entries { b += u16(e.tag) + u16(e.type) + u32(e.count) + (e.type == 3 ? u16(e.value) + [0, 0] : u32(e.value)) }
        return b + u32(0)
    }
    let exif: [UInt8] = Array("Exif".utf8) + [0, 0]
    #expect(exifOrientation(exif + tiff(little: true, entries: [(0x0112, 3, 1, 6)])) == 6)
    #expect(exifOrientation(exif + tiff(little: false, entries: [(0x010F, 2, 4, 0), (0x0112, 3, 1, 8)])) == 8)
    #expect(exifOrientation(tiff(little: false, entries: [(0x0112, 4, 1, 3)])) == 3)
    #expect(exifOrientation(exif + exif + tiff(little: true, entries: [(0x0112, 3, 1, 2)])) == 2)
    #expect(exifOrientation(exif + tiff(little: true, entries: [(0x0112, 3, 2, 6)])) == nil)  // count 2: Pillow gets a tuple
    #expect(exifOrientation(exif + tiff(little: true, entries: [(0x0100, 3, 1, 6)])) == nil)
    #expect(exifOrientation(exif + Array(tiff(little: true, entries: [(0x0112, 3, 1, 6)]).prefix(15))) == nil)  // truncated
    #expect(exifOrientation(exif + [1, 2, 3]) == nil)
    #expect(xmpOrientation(Array(#"<a tiff:Orientation="7"/>"#.utf8)) == 7)
    #expect(xmpOrientation(Array("<tiff:Orientation>5</tiff:Orientation>".utf8)) == 5)
    #expect(xmpOrientation(Array("tiff:Orientation=6".utf8)) == nil)
}

@Test func imageBrokenFilesThrowOneLineErrors() throws {
    let m = try loadManifest()
    #expect(m.errors.count >= 8, "\(regenerate)")
    for c in m.errors {
        do {
            let img = try RGBImage.load(fixture(c.input))
            Issue.record("\(c.input): decoded to \(img.width)x\(img.height), expected an error containing \"\(c.message_contains)\"; \(regenerate)")
        } catch let e as ZeroSegError {
            #expect(e.message.contains(c.message_contains), "\(c.input): error \"\(e.message)\" lacks \"\(c.message_contains)\"")
            #expect(!e.message.contains("\n"), "\(c.input): error message is not one line")
            #expect(e.message.contains(c.input.components(separatedBy: "/").last!), "\(c.input): error does not name the file")
        } catch {
            Issue.record("\(c.input): threw \(type(of: error)), not ZeroSegError")
        }
    }
    // a missing file
    #expect(throws: ZeroSegError.self) { try RGBImage.load(URL(fileURLWithPath: "/nonexistent/zeroseg.png")) }
}

/// A PNG with only a signature, an IHDR claiming `width` x `height` RGB8, then optionally a
/// tiny IDAT and IEND.
private func pngHeader(width: UInt32, height: UInt32, withData: Bool) -> Data {
    func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 255), UInt8(v >> 8 & 255), UInt8(v & 255)] }
    func chunk(_ type: String, _ body: [UInt8]) -> [UInt8] {
        let t = Array(type.utf8)
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in t + body {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
        }
        return be32(UInt32(body.count)) + t + body + be32(~crc)
    }
    var b: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
    b += chunk("IHDR", be32(width) + be32(height) + [8, 2, 0, 0, 0])
    if withData {
        b += chunk("IDAT", [0x78, 0x9C, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01])
        b += chunk("IEND", [])
    }
    return Data(b)
}

@Test func imageDecompressionBombsAreRefused() throws {
    for withData in [false, true] {
        do {
            _ = try RGBImage.decode(data: pngHeader(width: 100_000, height: 100_000, withData: withData))
            Issue.record("a PNG claiming 100000x100000 was accepted")
        } catch let e as ZeroSegError {
            #expect(e.message.contains("10000000000 pixels") && e.message.contains("178956970"), "\(e.message)")
        }
    }
    // JPEG: patch the frame header of a real file to 65000x65000.
    var jpeg = [UInt8](try Data(contentsOf: fixture("inputs/jpeg_420_97x61.jpg")))
    let sof = (0..<jpeg.count - 1).first { jpeg[$0] == 0xFF && jpeg[$0 + 1] == 0xC0 }!
    jpeg[sof + 5] = 0xFD; jpeg[sof + 6] = 0xE8; jpeg[sof + 7] = 0xFD; jpeg[sof + 8] = 0xE8
    #expect(throws: ZeroSegError.self) { try RGBImage.decode(data: Data(jpeg)) }
    do { _ = try RGBImage.decode(data: Data(jpeg)) } catch let e as ZeroSegError {
        #expect(e.message.contains("65000x65000") && e.message.contains("decompression bomb"), "\(e.message)")
        #expect(e.kind == .limitExceeded)
    }
    // The limit is inclusive and can be changed.
    let data = try Data(contentsOf: fixture("inputs/png_rgb_97x61.png"))
    #expect(throws: ZeroSegError.self) { try RGBImage.decode(data: data, maxPixels: 97 * 61 - 1) }
    #expect(try RGBImage.decode(data: data, maxPixels: 97 * 61).width == 97)
    let jdata = try Data(contentsOf: fixture("inputs/jpeg_420_97x61.jpg"))
    #expect(throws: ZeroSegError.self) { try RGBImage.decode(data: jdata, maxPixels: 97 * 61 - 1) }
}

// MARK: - Resizing

@Test func imagePillowBicubicResizeMatchesPillow() throws {
    let m = try loadManifest()
    #expect(m.resize.count >= 8, "\(regenerate)")
    for c in m.resize {
        // Input: Pillow's own decode of the input, so only the resize is compared.
        let decodedRef = m.decode.first { $0.input == c.input }!.reference
        let src = try loadReference(decodedRef)
        let ours = try resizeBicubicPIL(src, width: c.width, height: c.height)
        let ref = try loadReference(c.reference)
        #expect(ours.width == ref.width && ours.height == ref.height)
        let d = diffStats(ours.pixels, ref.pixels)
        #expect(d.maxAbs == 0, "\(c.input) -> \(c.width)x\(c.height): Pillow bicubic port differs (\(d)); \(regenerate)")
    }
}

@Test func imageFastResizeEqualsReference() {
    // Deterministic pseudo-random 8-bit pictures; sizes cover down/up/same on each axis.
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    func next() -> UInt8 { state = state &* 6364136223846793005 &+ 1442695040888963407; return UInt8(state >> 56) }
    let cases = [(17, 11, 5, 3), (17, 11, 40, 30), (17, 11, 17, 30), (17, 11, 6, 11), (64, 48, 22, 17),
                 (1, 1, 7, 5), (7, 5, 1, 1), (300, 7, 13, 29), (5, 200, 64, 3),
                 // vertical pass first (Pillow 13): height shrinks by more than twice the width's shrink
                 (64, 48, 60, 5), (30, 200, 25, 40), (20, 90, 70, 9), (9, 300, 2, 7)]
    for (w, h, ow, oh) in cases {
        let px = (0..<(w * h * 3)).map { _ in next() }
        let fast = pilResizeBicubic(px, width: w, height: h, outWidth: ow, outHeight: oh)
        let slow = pilResizeBicubicReference(px, width: w, height: h, channels: 3, outWidth: ow, outHeight: oh)
        #expect(fast == slow, "\(w)x\(h) -> \(ow)x\(oh): fast resize differs from the reference port")
    }
    #expect(pilVerticalFirst(width: 97, height: 61, outWidth: 200, outHeight: 20))
    #expect(!pilVerticalFirst(width: 4000, height: 3000, outWidth: 298, outHeight: 224))
    #expect(!pilVerticalFirst(width: 3000, height: 4000, outWidth: 224, outHeight: 298))
    #expect(pilVerticalFirst(width: 500, height: 4000, outWidth: 224, outHeight: 1792))
}

@Test func imageBilinearMatchesTorch() throws {
    let m = try loadManifest()
    #expect(m.bilinear.count >= 3, "\(regenerate)")
    var worst: Float = 0
    for c in m.bilinear {
        let src = try loadReference(m.decode.first { $0.input == c.input }!.reference)
        let ours = try resizeBilinear(src, width: c.width, height: c.height)
        let (shape, ref) = try loadNPY(c.reference)
        #expect(shape == [c.height, c.width, 3], "\(c.reference): shape \(shape); \(regenerate)")
        let d = diffStats(ours.pixels, ref)
        worst = max(worst, d.maxAbs)
        #expect(d.maxAbs <= 1e-3, "\(c.input) -> \(c.width)x\(c.height): bilinear vs torch \(d); \(regenerate)")
    }
    print("image bilinear vs torch: worst max |diff| \(worst)")
    // Same size is the identity.
    let src = try loadReference(m.decode[0].reference)
    #expect(try resizeBilinear(src, width: src.width, height: src.height) == src)
}

// MARK: - CLIP preprocessing

@Test func imageShortestEdgeRule() {
    // transformers: int(S * long / short) for the long edge.
    #expect(CLIPPreprocessor.shortestEdgeSize(width: 640, height: 480, shortestEdge: 224) == (298, 224))
    #expect(CLIPPreprocessor.shortestEdgeSize(width: 480, height: 640, shortestEdge: 224) == (224, 298))
    #expect(CLIPPreprocessor.shortestEdgeSize(width: 97, height: 61, shortestEdge: 64) == (101, 64))
    #expect(CLIPPreprocessor.shortestEdgeSize(width: 300, height: 300, shortestEdge: 224) == (224, 224))
    #expect(CLIPPreprocessor.shortestEdgeSize(width: 4000, height: 3000, shortestEdge: 224) == (298, 224))
    #expect(CLIPPreprocessor.shortestEdgeSize(width: 3, height: 1000, shortestEdge: 336) == (336, 112000))
}

@Test func imageCLIPPreprocessMatchesTransformers() throws {
    let m = try loadManifest()
    #expect(m.clip.count >= 5, "\(regenerate)")
    var worstSame: Float = 0, worstEndToEnd: Float = 0
    for c in m.clip {
        let (shape, ref) = try loadNPY(c.reference)
        #expect(shape == [3, c.crop, c.crop], "\(c.reference): shape \(shape); \(regenerate)")
        let pre = try CLIPPreprocessor(size: c.size, cropSize: c.crop)
        // 1. From Pillow's decoded pixels: only the preprocessing is compared.
        let decodeCase = m.decode.first { $0.input == c.input }!
        let same = diffStats(try pre(try loadReference(decodeCase.reference)), ref)
        worstSame = max(worstSame, same.maxAbs)
        #expect(same.maxAbs <= 1e-5, "\(c.input) size \(c.size) crop \(c.crop): CLIP tensor vs transformers \(same); \(regenerate)")
        // 2. End to end from the file with our decoder: exact for PNG; for JPEG the decode tolerance
        //    (2 levels) can move a value by up to 2 / 255 / std ~ 0.03.
        let e2e = diffStats(try pre(try RGBImage.load(fixture(c.input))), ref)
        worstEndToEnd = max(worstEndToEnd, e2e.maxAbs)
        let allowed: Float = decodeCase.codec == "png" ? 1e-5 : 0.031
        #expect(e2e.maxAbs <= allowed, "\(c.input) size \(c.size) crop \(c.crop): end-to-end CLIP tensor vs transformers \(e2e); \(regenerate)")
    }
    print("image CLIP preprocess vs transformers \(m.versions["transformers"] ?? "?"): same pixels worst \(worstSame), end to end worst \(worstEndToEnd)")
}

@Test func imageNormalizeOnly() throws {
    let pre = try CLIPPreprocessor()
    let img = try RGBImage(width: 2, height: 1, pixels: [0, 128, 255, 12.5, 200, 3])
    let out = pre.normalizeOnly(img)
    #expect(out.count == 6)
    // CHW: channel 0 = [0, 12.5], channel 1 = [128, 200], channel 2 = [255, 3]
    let mean = CLIPPreprocessor.openAIMean, std = CLIPPreprocessor.openAIStd
    let expected: [Float] = [0, 12.5, 128, 200, 255, 3].enumerated().map { i, v in
        (Float(Double(v) * (1.0 / 255.0)) - mean[i / 2]) / std[i / 2]
    }
    #expect(out == expected)
    // The table used after resizing gives the same values as normalizeOnly.
    let u8: [UInt8] = [0, 128, 255, 13, 200, 3]
    #expect(try pre.normalizeU8(u8, width: 2, height: 1) == pre.normalizeOnly(RGBImage(width: 2, height: 1, pixels: u8.map { Float($0) })))
}

@Test func imagePreprocessLargePhotoIsFast() throws {
    // 4000x3000 -> 298x224 -> 224x224. Timing is printed, not asserted (debug builds are slow).
    let w = 4000, h = 3000
    var px = [Float](repeating: 0, count: w * h * 3)
    for y in 0..<h { for x in 0..<w { let i = (y * w + x) * 3; px[i] = Float((x ^ y) & 255); px[i + 1] = Float(x & 255); px[i + 2] = Float(y & 255) } }
    let img = try RGBImage(width: w, height: h, pixels: px)
    let t0 = Date()
    let out = try CLIPPreprocessor()(img)
    let dt = Date().timeIntervalSince(t0)
    #expect(out.count == 3 * 224 * 224)
    print("image CLIP preprocess of 4000x3000: \(String(format: "%.3f", dt)) s")
}
