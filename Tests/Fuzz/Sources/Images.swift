import ZeroSeg
@testable import ZeroSegImaging

/// Pixel limit of the image targets: 4 MP (a header may claim up to that and the decoder allocates
/// for it; the real default, 179 MP, is tested elsewhere and would only make inputs slow).
let fuzzMaxPixels = 1 << 22

private func decodeImage(_ bytes: UnsafeRawBufferPointer) {
    do {
        let img = try RGBImage.decode(bytes: Array(bytes), source: "fuzz image", maxPixels: fuzzMaxPixels)
        precondition(img.pixels.count == img.width * img.height * 3)
    } catch { expectTyped(error) }
}

/// PNG through CImageShim and libpng (every colour type and depth, interlacing, palettes, eXIf and
/// text chunks for the orientation).
let pngTarget = FuzzTarget(name: "png", covers: "RGBImage.decode of PNG: CImageShim + libpng, conversions, eXIf/tEXt orientation", run: decodeImage)

/// JPEG through CImageShim and libjpeg (baseline, progressive, CMYK, EXIF and XMP orientation).
let jpegTarget = FuzzTarget(name: "jpeg", covers: "RGBImage.decode of JPEG: CImageShim + libjpeg, CMYK, EXIF/XMP orientation", run: decodeImage)
