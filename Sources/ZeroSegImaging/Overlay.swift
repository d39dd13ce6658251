import CFreeType
import ZeroSegCore
import Foundation

// The overlay picture: the input blended with class colours, and a legend panel to its right
// drawn with FreeType (swatch, class name, area share per class; optional title and footer).

// MARK: - Fonts

/// Where the legend font is looked for after `$ZEROSEG_FONT`: DejaVu Sans as Debian/Ubuntu
/// (fonts-dejavu-core), Fedora, Arch, Alpine/openSUSE and hand installs place it.
public let legendFontCandidates = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/DejaVuSans.ttf",
    "/usr/local/share/fonts/DejaVuSans.ttf",
    "/Library/Fonts/DejaVuSans.ttf",
]

/// The legend font file: `$ZEROSEG_FONT` when set (it must be a readable file), else the first
/// of `candidates` (default `legendFontCandidates`) that is. Throws a one-line error saying what
/// to install.
public func findLegendFont(environment: [String: String] = ProcessInfo.processInfo.environment,
                           candidates: [String] = legendFontCandidates) throws -> String {
    func isReadableFile(_ path: String) -> Bool {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && !isDir.boolValue
            && FileManager.default.isReadableFile(atPath: path)
    }
    if let custom = environment["ZEROSEG_FONT"], !custom.isEmpty {
        guard isReadableFile(custom) else {
            throw ZeroSegError("ZEROSEG_FONT=\(custom): no readable font file there (point it at a .ttf/.otf, or unset it to use DejaVu Sans from fonts-dejavu-core)")
        }
        return custom
    }
    for path in candidates where isReadableFile(path) {
        return path
    }
    throw ZeroSegError("no font for the overlay legend: install fonts-dejavu-core (apt-get install fonts-dejavu-core) or set ZEROSEG_FONT to a .ttf file")
}

/// One glyph rendered to 8-bit coverage.
struct Glyph {
    var width = 0, rows = 0
    /// Offset of the bitmap's top-left corner from the pen position on the baseline (y up).
    var left = 0, top = 0
    /// Pen advance in 1/64 pixel.
    var advance = 0
    /// `rows * width` coverage values, 0 (none) ... 255 (full).
    var coverage: [UInt8] = []
}

/// A FreeType face at one pixel size, with its rendered glyphs cached.
/// Missing characters come out as the font's .notdef glyph (what FreeType renders for glyph 0).
final class FontFace {
    private let library: FT_Library
    private let face: FT_Face
    let pixelSize: Int
    /// Pixels above / below the baseline (both positive), from the face's scaled metrics.
    let ascender: Int, descender: Int
    private var cache: [UInt32: Glyph] = [:]

    init(path: String, pixelSize: Int) throws {
        var lib: FT_Library? = nil
        var err = FT_Init_FreeType(&lib)
        guard err == 0, let lib else { throw ZeroSegError("cannot start FreeType (error \(err))") }
        var f: FT_Face? = nil
        err = FT_New_Face(lib, path, 0, &f)
        guard err == 0, let f else {
            FT_Done_FreeType(lib)
            throw ZeroSegError("cannot load font \(path) (FreeType error \(err)): set ZEROSEG_FONT to a .ttf file or install fonts-dejavu-core")
        }
        err = FT_Set_Pixel_Sizes(f, 0, FT_UInt(pixelSize))
        guard err == 0 else {
            FT_Done_Face(f)
            FT_Done_FreeType(lib)
            throw ZeroSegError("cannot use font \(path) at \(pixelSize) px (FreeType error \(err)): set ZEROSEG_FONT to a scalable .ttf file")
        }
        library = lib
        face = f
        self.pixelSize = pixelSize
        let m = f.pointee.size.pointee.metrics
        ascender = Int((m.ascender + 63) >> 6)
        descender = Int((-m.descender + 63) >> 6)
    }

    deinit {
        FT_Done_Face(face)
        FT_Done_FreeType(library)
    }

    /// Rendered glyph for a character (cached).
    func glyph(_ scalar: Unicode.Scalar) -> Glyph {
        if let g = cache[scalar.value] { return g }
        var err = FT_Load_Char(face, FT_ULong(scalar.value), ZS_FT_LOAD_RENDER)
        if err != 0 { err = FT_Load_Glyph(face, 0, ZS_FT_LOAD_RENDER) }  // .notdef
        var g = Glyph()
        if err == 0, let slot = face.pointee.glyph {
            let bm = slot.pointee.bitmap
            g.advance = Int(slot.pointee.advance.x)
            g.left = Int(slot.pointee.bitmap_left)
            g.top = Int(slot.pointee.bitmap_top)
            let w = Int(bm.width), h = Int(bm.rows), pitch = Int(bm.pitch)
            let mode = UInt32(bm.pixel_mode)
            if let buf = bm.buffer, w > 0, h > 0,
               mode == FT_PIXEL_MODE_GRAY.rawValue || mode == FT_PIXEL_MODE_MONO.rawValue {
                g.width = w
                g.rows = h
                g.coverage = [UInt8](repeating: 0, count: w * h)
                // A negative pitch means the rows are stored bottom-up.
                let first = pitch >= 0 ? buf : buf + (h - 1) * (-pitch)
                for y in 0..<h {
                    let row = first + y * pitch
                    for x in 0..<w {
                        if mode == FT_PIXEL_MODE_GRAY.rawValue {
                            g.coverage[y * w + x] = row[x]
                        } else {
                            g.coverage[y * w + x] = row[x >> 3] & (0x80 >> UInt8(x & 7)) != 0 ? 255 : 0
                        }
                    }
                }
            }
        } else {
            g.advance = pixelSize * 32  // half an em of space if even .notdef failed
        }
        cache[scalar.value] = g
        return g
    }

    /// Advance width of a line of text, in whole pixels.
    func width(_ text: [Unicode.Scalar]) -> Int {
        (text.reduce(0) { $0 + glyph($1).advance } + 32) >> 6
    }

    /// `text` shortened with "…" at the end so that it is at most `maxWidth` pixels wide.
    func fit(_ text: [Unicode.Scalar], maxWidth: Int) -> [Unicode.Scalar] {
        if width(text) <= maxWidth { return text }
        let ellipsis: Unicode.Scalar = "\u{2026}"
        var t = text
        while !t.isEmpty && width(t + [ellipsis]) > maxWidth { t.removeLast() }
        while let last = t.last, last == " " { t.removeLast() }
        return t + [ellipsis]
    }

    /// Greedy word wrap (at spaces) to lines at most `maxWidth` wide; an over-long word is
    /// shortened with "…".
    func wrap(_ text: [Unicode.Scalar], maxWidth: Int) -> [[Unicode.Scalar]] {
        let words = text.split(separator: " ").map(Array.init)
        var lines: [[Unicode.Scalar]] = []
        var line: [Unicode.Scalar] = []
        for word in words {
            let candidate = line.isEmpty ? word : line + [" "] + word
            if width(candidate) <= maxWidth {
                line = candidate
            } else {
                if !line.isEmpty { lines.append(line) }
                line = fit(word, maxWidth: maxWidth)
            }
        }
        if !line.isEmpty { lines.append(line) }
        return lines
    }

    /// Draws `text` with its pen starting at (x, baseline), alpha-blending glyph coverage in
    /// `color`. Kerning is not applied.
    func draw(_ text: [Unicode.Scalar], on canvas: inout Canvas, x: Int, baseline: Int, color: (UInt8, UInt8, UInt8)) {
        var pen = x << 6
        for s in text {
            let g = glyph(s)
            canvas.blend(coverage: g.coverage, width: g.width, rows: g.rows,
                         x: ((pen + 32) >> 6) + g.left, y: baseline - g.top, color: color)
            pen += g.advance
        }
    }
}

/// The "-Bold" sibling of a .ttf font file (DejaVuSans-Bold.ttf for DejaVuSans.ttf, also in
/// fonts-dejavu-core) when it is readable, else `path` itself.
func boldFontPath(for path: String) -> String {
    if path.hasSuffix(".ttf") {
        let candidate = String(path.dropLast(4)) + "-Bold.ttf"
        if FileManager.default.isReadableFile(atPath: candidate) { return candidate }
    }
    return path
}

/// Text as the legend draws it: NFC (so "e" + combining acute uses the precomposed glyph),
/// control characters (tabs, newlines) as spaces.
func legendScalars(_ s: String) -> [Unicode.Scalar] {
    s.precomposedStringWithCanonicalMapping.unicodeScalars.map {
        $0.properties.generalCategory == .control ? " " : $0
    }
}

// MARK: - Canvas

/// An RGB float picture being drawn on (same layout as `RGBImage.pixels`).
struct Canvas {
    let width: Int, height: Int
    var pixels: [Float]

    init(width: Int, height: Int, fill: Float = 255) {
        self.width = width
        self.height = height
        pixels = [Float](repeating: fill, count: width * height * 3)
    }

    mutating func fill(x: Int, y: Int, width w: Int, height h: Int, color: (UInt8, UInt8, UInt8)) {
        let x0 = max(0, x), y0 = max(0, y), x1 = min(width, x + w), y1 = min(height, y + h)
        guard x0 < x1, y0 < y1 else { return }
        for yy in y0..<y1 {
            for xx in x0..<x1 {
                let i = (yy * width + xx) * 3
                pixels[i] = Float(color.0); pixels[i + 1] = Float(color.1); pixels[i + 2] = Float(color.2)
            }
        }
    }

    /// dst = dst + (color - dst) * coverage / 255 over a `width x rows` coverage bitmap at (x, y).
    mutating func blend(coverage: [UInt8], width w: Int, rows h: Int, x: Int, y: Int, color: (UInt8, UInt8, UInt8)) {
        let c = (Float(color.0), Float(color.1), Float(color.2))
        for gy in 0..<h {
            let yy = y + gy
            guard yy >= 0 && yy < height else { continue }
            for gx in 0..<w {
                let xx = x + gx
                guard xx >= 0 && xx < width else { continue }
                let cov = coverage[gy * w + gx]
                guard cov > 0 else { continue }
                let a = Float(cov) / 255
                let i = (yy * width + xx) * 3
                pixels[i] += (c.0 - pixels[i]) * a
                pixels[i + 1] += (c.1 - pixels[i + 1]) * a
                pixels[i + 2] += (c.2 - pixels[i + 2]) * a
            }
        }
    }
}

// MARK: - Legend layout

/// Legend text size in pixels for a picture `height` pixels tall: height / 30 rounded,
/// clamped to 12...28.
func legendFontSize(imageHeight height: Int) -> Int {
    min(28, max(12, Int((Double(height) / 30).rounded())))
}

/// Where everything in the legend panel goes. x values are absolute (the panel starts at
/// `panelX`, the image's width); y values from the top of the output.
struct LegendLayout {
    struct Line { var text: [Unicode.Scalar]; var x: Int; var baseline: Int }
    struct Row {
        /// The colour square, its 1-pixel border included.
        var swatchX: Int, swatchY: Int, swatchSize: Int
        var name: Line
        var percent: Line
        /// The row's band: rowTop ..< rowTop + rowHeight.
        var rowTop: Int, rowHeight: Int
    }
    var fontSize: Int
    var panelX: Int
    /// Panel width, including its 1-pixel grey left border.
    var panelWidth: Int
    /// Height the legend needs (the output is max(image height, this)).
    var contentHeight: Int
    var title: [Line]
    /// y of the thin rule under the title (nil without a title).
    var ruleY: Int?
    var rows: [Row]
    var footer: [Line]
}

/// The fonts one legend uses.
struct LegendFonts {
    var body: FontFace
    var title: FontFace
    var footer: FontFace

    /// `path` for text; its bold sibling (`boldFontPath(for:)`) for title and footer.
    init(path: String, size: Int) throws {
        let bold = boldFontPath(for: path)
        body = try FontFace(path: path, pixelSize: size)
        title = try FontFace(path: bold, pixelSize: Int((Double(size) * 1.15).rounded()))
        footer = try FontFace(path: bold, pixelSize: size)
    }
}

/// Lays the legend out for a picture `imageWidth x imageHeight`: rows in class order, each a
/// swatch, the class name (shortened with "…" past 22 em) and its area share with one decimal
/// ("12.3%", right-aligned); title above (bold, wrapped), footer below (bold, wrapped).
func layoutLegend(imageWidth: Int, imageHeight: Int, classNames: [String], areaFractions: [Double],
                  title: String?, footer: String?, fonts: LegendFonts) -> LegendLayout {
    let s = fonts.body.pixelSize
    let pad = max(8, Int((Double(s) * 0.8).rounded()))
    let gap = max(4, Int((Double(s) * 0.5).rounded()))
    let swatch = s
    let bodyLine = fonts.body.ascender + fonts.body.descender
    let rowHeight = bodyLine + max(3, Int((Double(s) * 0.3).rounded()))

    let names = classNames.map { fonts.body.fit(legendScalars($0), maxWidth: 22 * s) }
    let percents = areaFractions.map { legendScalars(String(format: "%.1f%%", $0 * 100)) }
    let nameWidth = names.map(fonts.body.width).max() ?? 0
    let percentWidth = percents.map(fonts.body.width).max() ?? 0
    let rowsWidth = swatch + gap + nameWidth + s + percentWidth
    let contentWidth = max(rowsWidth, 10 * s)

    let panelX = imageWidth
    let left = panelX + 1 + pad                 // after the border
    let right = left + contentWidth
    var y = pad

    var titleLines: [LegendLayout.Line] = []
    var ruleY: Int? = nil
    if let title, !title.isEmpty {
        let tf = fonts.title
        for line in tf.wrap(legendScalars(title), maxWidth: contentWidth) {
            titleLines.append(.init(text: line, x: left, baseline: y + tf.ascender))
            y += tf.ascender + tf.descender
        }
        y += max(3, s / 3)
        ruleY = y
        y += 1 + max(4, s / 2)
    }

    var rows: [LegendLayout.Row] = []
    for i in 0..<names.count {
        let top = y + i * rowHeight
        let centre = top + rowHeight / 2
        let baseline = centre + (fonts.body.ascender - fonts.body.descender) / 2
        rows.append(.init(
            swatchX: left, swatchY: centre - swatch / 2, swatchSize: swatch,
            name: .init(text: names[i], x: left + swatch + gap, baseline: baseline),
            percent: .init(text: percents[i], x: right - fonts.body.width(percents[i]), baseline: baseline),
            rowTop: top, rowHeight: rowHeight))
    }
    y += names.count * rowHeight

    var footerLines: [LegendLayout.Line] = []
    if let footer, !footer.isEmpty {
        let ff = fonts.footer
        y += max(4, s / 2)
        for line in ff.wrap(legendScalars(footer), maxWidth: contentWidth) {
            footerLines.append(.init(text: line, x: left, baseline: y + ff.ascender))
            y += ff.ascender + ff.descender
        }
    }
    y += pad

    return LegendLayout(fontSize: s, panelX: panelX, panelWidth: 1 + pad + contentWidth + pad,
                        contentHeight: y, title: titleLines, ruleY: ruleY, rows: rows, footer: footerLines)
}

// MARK: - Overlay

/// Colours of the legend's parts.
private enum LegendInk {
    static let border: (UInt8, UInt8, UInt8) = (200, 200, 200)
    static let rule: (UInt8, UInt8, UInt8) = (215, 215, 215)
    static let title: (UInt8, UInt8, UInt8) = (20, 20, 20)
    static let name: (UInt8, UInt8, UInt8) = (35, 35, 35)
    static let percent: (UInt8, UInt8, UInt8) = (95, 95, 95)
    static let footer: (UInt8, UInt8, UInt8) = (200, 0, 0)
}

/// The overlay picture: `image` with each labelled pixel blended with its class colour, and a
/// white legend panel to the right.
///
/// * Pixel with label l < classNames.count: `out = image * (1 - alpha) + palette[l] * alpha`
///   per channel (Float arithmetic, not rounded; `writeRGBPNG` rounds). Label 255
///   (`backgroundLabel`) keeps the image's pixel. Any other label is an error.
/// * Legend (drawn with FreeType, text size `legendFontSize(imageHeight:)`): a 1-pixel grey
///   border, then the optional `title` (bold, e.g. "zeroseg · naclip") over a thin rule, one
///   row per class in class order (swatch in the class colour with a darker 1-pixel edge,
///   class name, area share `areaFractions[i] * 100` with one decimal), and the optional
///   `footer` (bold red, e.g. "SYNTHETIC WEIGHTS: meaningless"). Long text is wrapped or
///   shortened with "…"; characters missing from the font show its .notdef box.
/// * Output size: (image.width + panel width) x max(image.height, legend height); when the
///   legend is taller the image area is padded with white below the image.
/// * Font: `fontPath`, else `findLegendFont()` (`$ZEROSEG_FONT`, then DejaVu Sans); no font
///   is an error, never a silently missing legend.
public func renderOverlay(image: RGBImage, labels: [UInt8], classNames: [String], areaFractions: [Double],
                          palette: [(UInt8, UInt8, UInt8)], alpha: Float = 0.5,
                          title: String? = nil, footer: String? = nil, fontPath: String? = nil) throws -> RGBImage {
    let w = image.width, h = image.height
    guard w > 0, h > 0 else { throw ZeroSegError("cannot draw an overlay on an empty \(w)x\(h) picture") }
    guard labels.count == w * h else {
        throw ZeroSegError("overlay: \(labels.count) labels for a \(w)x\(h) picture")
    }
    guard areaFractions.count == classNames.count else {
        throw ZeroSegError("overlay: \(areaFractions.count) area fractions for \(classNames.count) classes")
    }
    guard classNames.count <= 255, palette.count >= classNames.count else {
        throw ZeroSegError("overlay: \(palette.count) palette colours for \(classNames.count) classes")
    }
    guard alpha >= 0 && alpha <= 1 else { throw ZeroSegError("overlay: alpha must be 0...1, not \(alpha)") }
    if let bad = labels.firstIndex(where: { $0 != backgroundLabel && Int($0) >= classNames.count }) {
        throw ZeroSegError("overlay: label \(labels[bad]) at pixel (\(bad % w), \(bad / w)) is not one of the \(classNames.count) classes")
    }

    let fonts = try LegendFonts(path: fontPath ?? findLegendFont(), size: legendFontSize(imageHeight: h))
    let layout = layoutLegend(imageWidth: w, imageHeight: h, classNames: classNames, areaFractions: areaFractions,
                              title: title, footer: footer, fonts: fonts)
    let outW = w + layout.panelWidth, outH = max(h, layout.contentHeight)
    var canvas = Canvas(width: outW, height: outH)

    // The blended picture.
    let keep = 1 - alpha
    let colours = palette.prefix(classNames.count).map { (Float($0.0), Float($0.1), Float($0.2)) }
    image.pixels.withUnsafeBufferPointer { src in
        canvas.pixels.withUnsafeMutableBufferPointer { dst in
            for y in 0..<h {
                for x in 0..<w {
                    let s = (y * w + x) * 3, d = (y * outW + x) * 3
                    let l = labels[y * w + x]
                    if l == backgroundLabel {
                        dst[d] = src[s]; dst[d + 1] = src[s + 1]; dst[d + 2] = src[s + 2]
                    } else {
                        let c = colours[Int(l)]
                        dst[d] = src[s] * keep + c.0 * alpha
                        dst[d + 1] = src[s + 1] * keep + c.1 * alpha
                        dst[d + 2] = src[s + 2] * keep + c.2 * alpha
                    }
                }
            }
        }
    }

    // The legend.
    canvas.fill(x: layout.panelX, y: 0, width: 1, height: outH, color: LegendInk.border)
    for line in layout.title {
        fonts.title.draw(line.text, on: &canvas, x: line.x, baseline: line.baseline, color: LegendInk.title)
    }
    if let ruleY = layout.ruleY {
        canvas.fill(x: layout.panelX + 1, y: ruleY, width: layout.panelWidth - 1, height: 1, color: LegendInk.rule)
    }
    for (i, row) in layout.rows.enumerated() {
        let c = palette[i]
        let edge = (UInt8(Double(c.0) * 0.6), UInt8(Double(c.1) * 0.6), UInt8(Double(c.2) * 0.6))
        canvas.fill(x: row.swatchX, y: row.swatchY, width: row.swatchSize, height: row.swatchSize, color: edge)
        canvas.fill(x: row.swatchX + 1, y: row.swatchY + 1, width: row.swatchSize - 2, height: row.swatchSize - 2, color: c)
        fonts.body.draw(row.name.text, on: &canvas, x: row.name.x, baseline: row.name.baseline, color: LegendInk.name)
        fonts.body.draw(row.percent.text, on: &canvas, x: row.percent.x, baseline: row.percent.baseline, color: LegendInk.percent)
    }
    for line in layout.footer {
        fonts.footer.draw(line.text, on: &canvas, x: line.x, baseline: line.baseline, color: LegendInk.footer)
    }
    return RGBImage(unchecked: outW, height: outH, pixels: canvas.pixels)
}
