import ZeroSegCore
import Foundation

// The contact sheet: search hits as a grid of thumbnails, each with its matched regions outlined
// and labelled and a caption under it, for `zeroseg search ... --sheet OUT.png` (issue 14).
// Text is drawn with Overlay.swift's FreeType `FontFace` and the legend's font lookup; the
// thumbnails are Pillow-bicubic downscales (`resizeBicubicPIL`, whose filter widens with the
// scale factor, so it averages like an area filter instead of aliasing).

// MARK: - API

/// One region to outline on a tile, in pixels of the tile's source picture (not the thumbnail):
/// columns `x0 ..< x1`, rows `y0 ..< y1` (x1, y1 exclusive).
///
/// Boxes are clipped to the picture; a box that is empty after clipping (including one with
/// x1 <= x0 or y1 <= y0) is skipped, not an error.
public struct SheetBox: Sendable, Equatable {
    /// Left column (inclusive), in source-picture pixels.
    public var x0: Int
    /// Top row (inclusive), in source-picture pixels.
    public var y0: Int
    /// Right column (exclusive), in source-picture pixels.
    public var x1: Int
    /// Bottom row (exclusive), in source-picture pixels.
    public var y1: Int
    /// Text of the box's tag (e.g. "red car 0.31"); empty: no tag.
    public var label: String

    public init(x0: Int, y0: Int, x1: Int, y1: Int, label: String = "") {
        self.x0 = x0
        self.y0 = y0
        self.x1 = x1
        self.y1 = y1
        self.label = label
    }
}

/// One cell of the sheet: a picture, the caption under its thumbnail, and its boxes.
public struct SheetTile: Sendable {
    /// The full-size picture (any size of at least 1x1; it is scaled to the thumbnail).
    public var image: RGBImage
    /// One line under the thumbnail, e.g. "1  0.312  street.jpg"; shortened with "…" when it is
    /// wider than the thumbnail. Empty: a blank caption band.
    public var caption: String
    /// Regions to outline, in `image`'s pixels; box i gets colour i (cycling through 8).
    public var boxes: [SheetBox]

    public init(image: RGBImage, caption: String = "", boxes: [SheetBox] = []) {
        self.image = image
        self.caption = caption
        self.boxes = boxes
    }
}

/// How the sheet is laid out. All sizes in pixels.
public struct ContactSheetLayout: Sendable, Equatable {
    /// Cells per row, 1...16 (`maxColumns`). A sheet with fewer tiles is only as wide as its tiles.
    public var columns: Int = 4
    /// The side of a cell's square picture area, 32...1024 (`tileSizes`): the longest side of
    /// each thumbnail. Also sets the text sizes (see `renderContactSheet`).
    public var tileSize: Int = 256
    /// One line over the grid (bold), e.g. "zeroseg search · a red car"; nil or empty: no title band.
    public var title: String?
    /// The font file for all text; nil: `findLegendFont()` (`$ZEROSEG_FONT`, then DejaVu Sans).
    /// Its "-Bold" sibling, when there is one, is used for the title and the box tags.
    public var fontPath: String?

    /// Allowed `columns`.
    public static let columnRange = 1...16
    /// Allowed `tileSize`.
    public static let tileSizes = 32...1024
    /// The most tiles one sheet takes.
    public static let maxTiles = 256
    /// The most pixels a sheet may have (40 megapixels, 480 MB as the Float RGB picture): 256
    /// tiles of 256 in 4 columns is about 19.5 Mpx, 256 tiles of 512 would be 73 Mpx and throws.
    public static let maxSheetPixels = 40_000_000

    public init(columns: Int = 4, tileSize: Int = 256, title: String? = nil, fontPath: String? = nil) {
        self.columns = columns
        self.tileSize = tileSize
        self.title = title
        self.fontPath = fontPath
    }

    /// Throws `.invalidArgument` naming the parameter ("columns", "tileSize") when a value is out
    /// of its range.
    public func validate() throws {
        guard Self.columnRange.contains(columns) else {
            throw ZeroSegError.invalidArgument(
                "contact sheet: columns must be \(Self.columnRange.lowerBound)...\(Self.columnRange.upperBound), not \(columns)",
                parameter: "columns")
        }
        guard Self.tileSizes.contains(tileSize) else {
            throw ZeroSegError.invalidArgument(
                "contact sheet: tileSize must be \(Self.tileSizes.lowerBound)...\(Self.tileSizes.upperBound) pixels, not \(tileSize)",
                parameter: "tileSize")
        }
    }
}

/// Renders a contact sheet of `tiles`, in order, left to right and top to bottom.
///
/// Geometry (all in pixels; T = `tileSize`, n = tiles.count; `ContactSheetGeometry`):
///
/// * caption text size s = clamp(round(T / 18), 10, 18); title text round(1.3 s) (bold);
///   tag text max(9, round(0.85 s)) (bold);
/// * margin and gap p = clamp(T / 32, 4, 16); caption band 2 s tall; title band 2 * round(1.3 s)
///   tall when there is a title, else 0;
/// * c = min(columns, n) cells per row (columns when n = 0), r = ceil(n / c) rows;
/// * width = p + c (T + p); height = p + titleBand + r (T + 2 s + p), or with no tiles
///   p + titleBand + 2 s + p (one grey "no hits" line);
/// * cell k (column k % c, row k / c) starts at x = p + (k % c)(T + p),
///   y = p + titleBand + (k / c)(T + 2 s + p): a T x T light grey square (230) holding the
///   thumbnail, then the caption band (sheet white, dark text, left-aligned, shortened with "…").
///
/// Thumbnail: aspect kept, longest side T: tw = max(1, round(w T / max(w, h))), likewise th,
/// resized with `resizeBicubicPIL` (pixels rounded to 0...255 first), centred in the square at
/// offset ((T - tw) / 2, (T - th) / 2) (integer division).
///
/// Boxes (`thumbnailBox`): clipped to the picture, then scaled outwards to thumbnail pixels
/// X0 = floor(x0 tw / w), X1 = max(X0 + 1, ceil(x1 tw / w)) (likewise Y). Each is outlined
/// with a band `stroke` pixels wide (3 when T >= 128, else 2) along the inside of that rectangle,
/// in colour i % 8 of a fixed bright palette, with a dark 1-pixel edge just outside the rectangle
/// and just inside the band; everything is clipped to the thumbnail. The label goes in a tag filled
/// with the box's colour (dark 1-pixel edge, dark or white text by the colour's brightness) whose
/// bottom-left sits on the box's top-left outer corner, or just inside the box's top edge when
/// there is no room above it in the square; it is kept inside the square and shortened with "…".
/// All outlines of a tile are drawn before its tags.
///
/// Limits: `layout.validate()`; at most `ContactSheetLayout.maxTiles` tiles; at most
/// `maxSheetPixels` pixels (checked before anything is allocated); every tile's picture at least
/// 1x1. Violations throw `.invalidArgument` naming the parameter. A missing font throws as for
/// the overlay. Zero tiles is not an error. The result is deterministic: the same input gives the
/// same pixels (and `writeRGBPNG` the same bytes).
///
/// Returns the sheet, [height, width, 3] Float values in 0...255 (text edges are fractional).
public func renderContactSheet(_ tiles: [SheetTile], layout: ContactSheetLayout = .init()) throws -> RGBImage {
    try layout.validate()
    guard tiles.count <= ContactSheetLayout.maxTiles else {
        throw ZeroSegError.invalidArgument(
            "contact sheet: \(tiles.count) tiles (at most \(ContactSheetLayout.maxTiles))", parameter: "tiles")
    }
    for (i, tile) in tiles.enumerated() where tile.image.width < 1 || tile.image.height < 1 {
        throw ZeroSegError.invalidArgument(
            "contact sheet: tile \(i) has an empty \(tile.image.width)x\(tile.image.height) picture", parameter: "tiles")
    }
    let hasTitle = !(layout.title ?? "").isEmpty
    let geo = ContactSheetGeometry(layout: layout, tileCount: tiles.count, hasTitle: hasTitle)
    guard geo.width * geo.height <= ContactSheetLayout.maxSheetPixels else {
        throw ZeroSegError.invalidArgument(
            "contact sheet: \(geo.width)x\(geo.height) pixels is more than \(ContactSheetLayout.maxSheetPixels) (use fewer tiles or a smaller tileSize)",
            parameter: "tileSize")
    }

    let regular = try layout.fontPath ?? findLegendFont()
    let bold = boldFontPath(for: regular)
    let captionFont = try FontFace(path: regular, pixelSize: geo.captionFontSize)
    let tagFont = try FontFace(path: bold, pixelSize: geo.tagFontSize)

    var canvas = Canvas(width: geo.width, height: geo.height, fill: 255)

    if hasTitle, let title = layout.title {
        let titleFont = try FontFace(path: bold, pixelSize: geo.titleFontSize)
        let text = titleFont.fit(legendScalars(title), maxWidth: geo.width - 2 * geo.pad)
        titleFont.draw(text, on: &canvas, x: geo.pad,
                       baseline: centredBaseline(top: geo.pad, height: geo.titleBand, font: titleFont),
                       color: SheetInk.title)
    }

    if tiles.isEmpty {
        let text = captionFont.fit(legendScalars("no hits"), maxWidth: geo.width - 2 * geo.pad)
        captionFont.draw(text, on: &canvas, x: geo.pad,
                         baseline: centredBaseline(top: geo.gridTop, height: geo.captionBand, font: captionFont),
                         color: SheetInk.noHits)
        return RGBImage(unchecked: geo.width, height: geo.height, pixels: canvas.pixels)
    }

    let t = layout.tileSize
    for (k, tile) in tiles.enumerated() {
        let cell = geo.cellOrigin(k)
        canvas.fill(x: cell.x, y: cell.y, width: t, height: t, color: SheetInk.tileBackground)

        // The thumbnail, centred in the square.
        let (tw, th) = geo.thumbnailSize(width: tile.image.width, height: tile.image.height)
        let thumb = try resizeBicubicPIL(tile.image, width: tw, height: th)
        let ox = cell.x + (t - tw) / 2, oy = cell.y + (t - th) / 2
        canvas.paste(thumb, x: ox, y: oy)
        let clip = PixelRect(x0: ox, y0: oy, x1: ox + tw, y1: oy + th)

        // Outlines, then tags (so that no outline crosses a tag).
        var tags: [(rect: PixelRect, label: String, colour: (UInt8, UInt8, UInt8))] = []
        for (i, box) in tile.boxes.enumerated() {
            guard let b = thumbnailBox(box, imageWidth: tile.image.width, imageHeight: tile.image.height,
                                       thumbWidth: tw, thumbHeight: th) else { continue }
            let r = PixelRect(x0: ox + b.x0, y0: oy + b.y0, x1: ox + b.x1, y1: oy + b.y1)
            let colour = sheetBoxColours[i % sheetBoxColours.count]
            let s = geo.stroke
            canvas.ring(r.inset(by: -1), thickness: 1, clip: clip, color: SheetInk.edge)
            let inner = r.inset(by: s)
            if !inner.isEmpty { canvas.ring(inner, thickness: 1, clip: clip, color: SheetInk.edge) }
            canvas.ring(r, thickness: s, clip: clip, color: colour)
            if !box.label.isEmpty { tags.append((r, box.label, colour)) }
        }
        let square = PixelRect(x0: cell.x, y0: cell.y, x1: cell.x + t, y1: cell.y + t)
        for tag in tags {
            drawTag(tag.label, box: tag.rect, square: square, colour: tag.colour, font: tagFont, on: &canvas)
        }

        // The caption band under the square.
        if !tile.caption.isEmpty {
            let text = captionFont.fit(legendScalars(tile.caption), maxWidth: t)
            captionFont.draw(text, on: &canvas, x: cell.x,
                             baseline: centredBaseline(top: cell.y + t, height: geo.captionBand, font: captionFont),
                             color: SheetInk.caption)
        }
    }
    return RGBImage(unchecked: geo.width, height: geo.height, pixels: canvas.pixels)
}

// MARK: - Geometry

/// The sheet's layout in pixels, as `renderContactSheet` documents it.
struct ContactSheetGeometry: Equatable {
    var tileSize: Int
    var captionFontSize: Int, titleFontSize: Int, tagFontSize: Int
    /// Margin around the grid and gap between cells.
    var pad: Int
    /// Height of the caption band under each square (and of the "no hits" line).
    var captionBand: Int
    /// Height of the title band (0 without a title).
    var titleBand: Int
    /// Width of a box's coloured outline band.
    var stroke: Int
    /// Cells per row and rows used.
    var columns: Int, rows: Int
    /// y of the first row of cells.
    var gridTop: Int
    var width: Int, height: Int

    init(layout: ContactSheetLayout, tileCount n: Int, hasTitle: Bool) {
        let t = layout.tileSize
        tileSize = t
        let s = min(18, max(10, Int((Double(t) / 18).rounded())))
        captionFontSize = s
        titleFontSize = Int((Double(s) * 1.3).rounded())
        tagFontSize = max(9, Int((Double(s) * 0.85).rounded()))
        pad = min(16, max(4, t / 32))
        captionBand = 2 * s
        titleBand = hasTitle ? 2 * titleFontSize : 0
        stroke = t >= 128 ? 3 : 2
        columns = n == 0 ? layout.columns : min(layout.columns, n)
        rows = n == 0 ? 0 : (n + columns - 1) / columns
        gridTop = pad + titleBand
        width = pad + columns * (t + pad)
        height = n == 0 ? gridTop + captionBand + pad : gridTop + rows * (t + captionBand + pad)
    }

    /// Top-left corner of cell k's square.
    func cellOrigin(_ k: Int) -> (x: Int, y: Int) {
        (pad + (k % columns) * (tileSize + pad), gridTop + (k / columns) * (tileSize + captionBand + pad))
    }

    /// Thumbnail size of a `width x height` picture: aspect kept, longest side `tileSize`.
    func thumbnailSize(width w: Int, height h: Int) -> (width: Int, height: Int) {
        let scale = Double(tileSize) / Double(max(w, h))
        return (max(1, min(tileSize, Int((Double(w) * scale).rounded()))),
                max(1, min(tileSize, Int((Double(h) * scale).rounded()))))
    }
}

/// A box in thumbnail pixels (x1, y1 exclusive): `box` clipped to the `imageWidth x imageHeight`
/// picture, then scaled outwards (floor for x0/y0, ceil for x1/y1, at least 1 pixel) to the
/// `thumbWidth x thumbHeight` thumbnail. nil when the clipped box is empty.
func thumbnailBox(_ box: SheetBox, imageWidth w: Int, imageHeight h: Int,
                  thumbWidth tw: Int, thumbHeight th: Int) -> (x0: Int, y0: Int, x1: Int, y1: Int)? {
    let cx0 = max(0, box.x0), cy0 = max(0, box.y0), cx1 = min(w, box.x1), cy1 = min(h, box.y1)
    guard cx0 < cx1, cy0 < cy1 else { return nil }
    let sx = Double(tw) / Double(w), sy = Double(th) / Double(h)
    let x0 = min(tw - 1, Int((Double(cx0) * sx).rounded(.down)))
    let y0 = min(th - 1, Int((Double(cy0) * sy).rounded(.down)))
    let x1 = max(x0 + 1, min(tw, Int((Double(cx1) * sx).rounded(.up))))
    let y1 = max(y0 + 1, min(th, Int((Double(cy1) * sy).rounded(.up))))
    return (x0, y0, x1, y1)
}

/// The outline colours, box i taking entry i % 8: bright, far apart in hue, each readable with
/// dark text on it.
let sheetBoxColours: [(UInt8, UInt8, UInt8)] = [
    (255, 59, 48),    // red
    (52, 230, 80),    // green
    (40, 170, 255),   // blue
    (255, 214, 0),    // yellow
    (255, 64, 220),   // magenta
    (0, 232, 232),    // cyan
    (255, 140, 0),    // orange
    (175, 255, 60),   // lime
]

/// Colours of the sheet's other parts.
enum SheetInk {
    static let tileBackground: (UInt8, UInt8, UInt8) = (230, 230, 230)
    static let edge: (UInt8, UInt8, UInt8) = (16, 16, 16)
    static let caption: (UInt8, UInt8, UInt8) = (30, 30, 30)
    static let title: (UInt8, UInt8, UInt8) = (20, 20, 20)
    static let noHits: (UInt8, UInt8, UInt8) = (110, 110, 110)
}

// MARK: - Drawing

/// A rectangle of canvas pixels, x1/y1 exclusive.
struct PixelRect: Equatable {
    var x0: Int, y0: Int, x1: Int, y1: Int
    var isEmpty: Bool { x0 >= x1 || y0 >= y1 }
    /// Shrunk by `d` on every side (grown when d < 0).
    func inset(by d: Int) -> PixelRect { PixelRect(x0: x0 + d, y0: y0 + d, x1: x1 - d, y1: y1 - d) }
    func intersection(_ o: PixelRect) -> PixelRect {
        PixelRect(x0: max(x0, o.x0), y0: max(y0, o.y0), x1: min(x1, o.x1), y1: min(y1, o.y1))
    }
}

/// Baseline that centres a line of `font` text vertically in the band `top ..< top + height`.
private func centredBaseline(top: Int, height: Int, font: FontFace) -> Int {
    top + (height + font.ascender - font.descender) / 2
}

extension Canvas {
    /// Copies `img` (its values as they are) with its top-left corner at (x, y); must fit.
    mutating func paste(_ img: RGBImage, x: Int, y: Int) {
        precondition(x >= 0 && y >= 0 && x + img.width <= width && y + img.height <= height)
        let rowLength = img.width * 3
        img.pixels.withUnsafeBufferPointer { src in
            pixels.withUnsafeMutableBufferPointer { dst in
                for row in 0..<img.height {
                    let d = ((y + row) * width + x) * 3
                    for i in 0..<rowLength { dst[d + i] = src[row * rowLength + i] }
                }
            }
        }
    }

    /// Fills `r` ∩ `clip`.
    mutating func fill(_ r: PixelRect, clip: PixelRect, color: (UInt8, UInt8, UInt8)) {
        let c = r.intersection(clip)
        guard !c.isEmpty else { return }
        fill(x: c.x0, y: c.y0, width: c.x1 - c.x0, height: c.y1 - c.y0, color: color)
    }

    /// Fills the band `thickness` pixels wide along the inside of `r`'s edges (all of `r` when it
    /// is thinner than twice that), clipped to `clip`.
    mutating func ring(_ r: PixelRect, thickness t: Int, clip: PixelRect, color: (UInt8, UInt8, UInt8)) {
        guard !r.isEmpty else { return }
        fill(PixelRect(x0: r.x0, y0: r.y0, x1: r.x1, y1: min(r.y1, r.y0 + t)), clip: clip, color: color)
        fill(PixelRect(x0: r.x0, y0: max(r.y0, r.y1 - t), x1: r.x1, y1: r.y1), clip: clip, color: color)
        fill(PixelRect(x0: r.x0, y0: r.y0, x1: min(r.x1, r.x0 + t), y1: r.y1), clip: clip, color: color)
        fill(PixelRect(x0: max(r.x0, r.x1 - t), y0: r.y0, x1: r.x1, y1: r.y1), clip: clip, color: color)
    }
}

/// Draws a box's label tag: a rectangle in `colour` with a dark 1-pixel edge and the text
/// (shortened with "…" to fit the square), its bottom-left on the outer top-left corner of `box`
/// (the box's rectangle on the canvas), or just inside the box's top edge when there is no room
/// above it in `square` (the cell's picture square); always inside `square`.
private func drawTag(_ label: String, box: PixelRect, square: PixelRect, colour: (UInt8, UInt8, UInt8),
                     font: FontFace, on canvas: inout Canvas) {
    let padX = max(2, font.pixelSize / 4), padY = 1
    let side = square.x1 - square.x0
    let text = font.fit(legendScalars(label), maxWidth: side - 2 * padX - 2)
    let w = min(side, font.width(text) + 2 * padX + 2)
    let h = min(square.y1 - square.y0, font.ascender + font.descender + 2 * padY + 2)
    var x = box.x0 - 1
    var y = box.y0 - h
    if y < square.y0 { y = box.y0 }
    x = max(square.x0, min(x, square.x1 - w))
    y = max(square.y0, min(y, square.y1 - h))
    let r = PixelRect(x0: x, y0: y, x1: x + w, y1: y + h)
    canvas.fill(r, clip: square, color: SheetInk.edge)
    canvas.fill(r.inset(by: 1), clip: square, color: colour)
    // Rec. 601 luma: dark text on bright colours, white on dark ones.
    let luma = 0.299 * Double(colour.0) + 0.587 * Double(colour.1) + 0.114 * Double(colour.2)
    let ink: (UInt8, UInt8, UInt8) = luma >= 110 ? (0, 0, 0) : (255, 255, 255)
    font.draw(text, on: &canvas, x: x + 1 + padX, baseline: y + 1 + padY + font.ascender, color: ink)
}
