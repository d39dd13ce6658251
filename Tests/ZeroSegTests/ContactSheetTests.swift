import Foundation
import Testing
@testable import ZeroSegCore
@testable import ZeroSegImaging
import ZeroSegTestSupport

// The contact sheet of search hits (ZeroSegImaging/ContactSheet.swift): size formula, where the
// outlines go, captions, the empty sheet, limits, determinism, and a sheet of examples/.
// Needs the legend font (fonts-dejavu-core or $ZEROSEG_FONT), as the overlay tests do.

/// A `width x height` picture with a gradient (so that a misplaced thumbnail shows).
private func gradient(_ width: Int, _ height: Int) -> RGBImage {
    var px = [Float](repeating: 0, count: width * height * 3)
    for y in 0..<height {
        for x in 0..<width {
            let i = (y * width + x) * 3
            px[i] = Float(x * 255 / max(1, width - 1))
            px[i + 1] = Float(y * 255 / max(1, height - 1))
            px[i + 2] = 90
        }
    }
    return try! RGBImage(width: width, height: height, pixels: px)
}

/// Pixel (x, y) of `img` as [r, g, b].
private func pixel(_ img: RGBImage, _ x: Int, _ y: Int) -> [Float] {
    let i = (y * img.width + x) * 3
    return Array(img.pixels[i..<i + 3])
}

private func rgb(_ c: (UInt8, UInt8, UInt8)) -> [Float] { [Float(c.0), Float(c.1), Float(c.2)] }

/// The documented size formula, written out again: (width, height, margin, caption band, title band).
private func expectedSize(columns: Int, tileSize t: Int, tiles n: Int, title: Bool)
    -> (width: Int, height: Int, pad: Int, caption: Int, titleBand: Int) {
    let s = min(18, max(10, Int((Double(t) / 18).rounded())))
    let p = min(16, max(4, t / 32))
    let titleBand = title ? 2 * Int((Double(s) * 1.3).rounded()) : 0
    let c = n == 0 ? columns : min(columns, n)
    let r = n == 0 ? 0 : (n + c - 1) / c
    let height = n == 0 ? p + titleBand + 2 * s + p : p + titleBand + r * (t + 2 * s + p)
    return (p + c * (t + p), height, p, 2 * s, titleBand)
}

@Suite struct ContactSheetTests {
    @Test(arguments: [(4, 256, 6, true), (4, 256, 6, false), (3, 32, 3, false), (16, 48, 20, true),
                      (1, 100, 2, false), (5, 64, 3, true), (4, 1024, 1, false)])
    func sizeFollowsTheLayoutFormula(_ columns: Int, _ tileSize: Int, _ n: Int, _ title: Bool) throws {
        let tiles = (0..<n).map { SheetTile(image: gradient(20 + 7 * $0, 15 + 3 * $0), caption: "\($0 + 1)") }
        let layout = ContactSheetLayout(columns: columns, tileSize: tileSize, title: title ? "zeroseg search · a red car" : nil)
        let sheet = try renderContactSheet(tiles, layout: layout)
        let want = expectedSize(columns: columns, tileSize: tileSize, tiles: n, title: title)
        #expect(sheet.width == want.width && sheet.height == want.height,
                "\(sheet.width)x\(sheet.height), want \(want.width)x\(want.height)")
        #expect(sheet.pixels.allSatisfy { $0 >= 0 && $0 <= 255 })
    }

    @Test func defaultLayoutSizesWorkedOut() throws {
        // T = 256: text 14 px, margin 8, caption band 28, title band 2 * 18; 6 tiles in 4 columns = 2 rows.
        let tiles = (0..<6).map { _ in SheetTile(image: gradient(30, 20)) }
        let plain = try renderContactSheet(tiles)
        #expect(plain.width == 8 + 4 * (256 + 8) && plain.height == 8 + 2 * (256 + 28 + 8))
        var layout = ContactSheetLayout()
        layout.title = "hits"
        let titled = try renderContactSheet(tiles, layout: layout)
        #expect(titled.width == 1064 && titled.height == 592 + 36)
        // An empty title is no title.
        layout.title = ""
        #expect(try renderContactSheet(tiles, layout: layout).height == 592)
    }

    @Test func outlinesSitOnTheScaledBox() throws {
        // A 200x100 picture in 100-pixel tiles: thumbnail 100x50 at offset (0, 25) in the square;
        // stroke 2 (T < 128). Box 0 (20, 10)-(120, 80) scales to (10, 5)-(60, 40).
        let image = gradient(200, 100)
        let boxes = [
            SheetBox(x0: 20, y0: 10, x1: 120, y1: 80),                      // colour 0, no tag
            SheetBox(x0: 150, y0: 60, x1: 400, y1: 300, label: "clipped"),  // colour 1, clipped to the picture
            SheetBox(x0: 300, y0: 0, x1: 400, y1: 50, label: "outside"),    // colour 2: empty after clipping
            SheetBox(x0: 50, y0: 50, x1: 50, y1: 90),                       // colour 3: empty
        ]
        let layout = ContactSheetLayout(columns: 2, tileSize: 100)
        let sheet = try renderContactSheet([SheetTile(image: image, boxes: boxes)], layout: layout)
        let geo = ContactSheetGeometry(layout: layout, tileCount: 1, hasTitle: false)
        #expect(geo.stroke == 2 && geo.pad == 4)
        let thumb = try resizeBicubicPIL(image, width: 100, height: 50)
        let ox = geo.pad, oy = geo.pad + 25
        #expect(thumbnailBox(boxes[0], imageWidth: 200, imageHeight: 100, thumbWidth: 100, thumbHeight: 50)! == (10, 5, 60, 40))
        #expect(thumbnailBox(boxes[1], imageWidth: 200, imageHeight: 100, thumbWidth: 100, thumbHeight: 50)! == (75, 30, 100, 50))
        #expect(thumbnailBox(boxes[2], imageWidth: 200, imageHeight: 100, thumbWidth: 100, thumbHeight: 50) == nil)
        #expect(thumbnailBox(boxes[3], imageWidth: 200, imageHeight: 100, thumbWidth: 100, thumbHeight: 50) == nil)

        let red = rgb(sheetBoxColours[0]), edge = rgb(SheetInk.edge)
        func at(_ x: Int, _ y: Int) -> [Float] { pixel(sheet, ox + x, oy + y) }
        func thumbAt(_ x: Int, _ y: Int) -> [Float] { pixel(thumb, x, y) }
        // Left and top edges of box 0: the 2-pixel band inside the box, dark edges either side.
        for y in [8, 20, 35] {
            #expect(at(10, y) == red && at(11, y) == red, "left band at y \(y)")
            #expect(at(9, y) == edge && at(12, y) == edge, "left dark edges at y \(y)")
            #expect(at(7, y) == thumbAt(7, y), "outside the box at y \(y)")
        }
        for x in [15, 30, 55] {
            #expect(at(x, 5) == red && at(x, 6) == red && at(x, 4) == edge && at(x, 7) == edge, "top band at x \(x)")
            #expect(at(x, 38) == red && at(x, 39) == red && at(x, 40) == edge, "bottom band at x \(x)")
        }
        #expect(at(58, 36) == red && at(59, 36) == red && at(60, 36) == edge && at(57, 36) == edge)
        // The interior keeps the thumbnail's pixels.
        for (x, y) in [(13, 8), (35, 22), (56, 36)] {
            #expect(at(x, y) == thumbAt(x, y), "interior (\(x), \(y))")
        }
        // Box 1 is drawn (clipped at the thumbnail's right and bottom edges), with its tag; box 2
        // and 3 are not; nothing is drawn outside the thumbnail but the tag.
        #expect(at(75, 45) == rgb(sheetBoxColours[1]) && at(99, 45) == rgb(sheetBoxColours[1]))
        var colours = Set<[Float]>()
        for y in 0..<sheet.height { for x in 0..<sheet.width { colours.insert(pixel(sheet, x, y)) } }
        #expect(!colours.contains(rgb(sheetBoxColours[2])) && !colours.contains(rgb(sheetBoxColours[3])))
        // Box 0 draws nothing in the grey letterbox above the thumbnail (its outer edge is row 4).
        #expect(pixel(sheet, ox + 30, oy - 3) == rgb(SheetInk.tileBackground))
        // Box 1's tag sits above its top edge (row 30), pushed left to stay in the square.
        var tagPixels = 0
        for y in (oy + 5)..<(oy + 30) {
            for x in (ox + 40)..<(ox + 100) where pixel(sheet, x, y) == rgb(sheetBoxColours[1]) { tagPixels += 1 }
        }
        #expect(tagPixels > 40, "box 1's tag above its top edge")
    }

    @Test func captionBandHasTextOnlyWithACaption() throws {
        let layout = ContactSheetLayout(columns: 3, tileSize: 64)
        let tiles = [SheetTile(image: gradient(80, 60), caption: "1  0.312  street.jpg"),
                     SheetTile(image: gradient(60, 80), caption: ""),
                     SheetTile(image: gradient(64, 64), caption: String(repeating: "a very long caption ", count: 10))]
        let sheet = try renderContactSheet(tiles, layout: layout)
        let geo = ContactSheetGeometry(layout: layout, tileCount: 3, hasTitle: false)
        func inked(_ k: Int) -> Int {
            let c = geo.cellOrigin(k)
            var n = 0
            for y in (c.y + 64)..<(c.y + 64 + geo.captionBand) {
                for x in c.x..<(c.x + 64) where pixel(sheet, x, y) != [255, 255, 255] { n += 1 }
            }
            return n
        }
        #expect(inked(0) > 30, "caption text")
        #expect(inked(1) == 0, "no caption, no ink")
        #expect(inked(2) > 30, "long caption, shortened")
        // The long caption stays in its cell: the gap to the right of it is white.
        let c2 = geo.cellOrigin(2)
        for y in (c2.y + 64)..<(c2.y + 64 + geo.captionBand) {
            for x in (c2.x + 64)..<sheet.width { #expect(pixel(sheet, x, y) == [255, 255, 255]) }
        }
        // The square around a letterboxed thumbnail is the neutral grey.
        let c1 = geo.cellOrigin(1)
        #expect(pixel(sheet, c1.x + 1, c1.y + 32) == rgb(SheetInk.tileBackground))
    }

    @Test func zeroTilesGiveANoHitsSheet() throws {
        for title: String? in [nil, "zeroseg search · a red car"] {
            let layout = ContactSheetLayout(columns: 4, tileSize: 128, title: title)
            let sheet = try renderContactSheet([], layout: layout)
            let want = expectedSize(columns: 4, tileSize: 128, tiles: 0, title: title != nil)
            #expect(sheet.width == want.width && sheet.height == want.height)
            // "no hits" in grey in the band under the title band; the title near-black above it.
            let bandTop = want.pad + want.titleBand
            var greyInk = 0, darkInk = 0, titleInk = 0
            for y in 0..<sheet.height {
                for x in 0..<sheet.width {
                    let p = pixel(sheet, x, y)
                    guard p != [255, 255, 255] else { continue }
                    if y >= bandTop && y < bandTop + want.caption {
                        greyInk += 1
                        if p.contains(where: { $0 < Float(SheetInk.noHits.0) }) { darkInk += 1 }
                    } else if y < bandTop {
                        if p[0] < 60 && p[1] < 60 && p[2] < 60 { titleInk += 1 }
                    } else {
                        Issue.record("ink at (\(x), \(y)), outside the title and no-hits bands")
                    }
                }
            }
            #expect(greyInk > 30 && darkInk == 0, "no-hits line: \(greyInk) pixels, \(darkInk) too dark")
            #expect(title == nil ? titleInk == 0 : titleInk > 20, "title text")
        }
    }

    @Test func badLayoutsAndInputsThrow() throws {
        let tile = SheetTile(image: gradient(4, 3))
        func kind(_ tiles: [SheetTile] = [tile], columns: Int = 4, tileSize: Int = 256) -> ZeroSegError.Kind? {
            do {
                _ = try renderContactSheet(tiles, layout: ContactSheetLayout(columns: columns, tileSize: tileSize))
                return nil
            } catch let e as ZeroSegError {
                #expect(!e.message.contains("\n") && e.message.hasPrefix("contact sheet: "), "\(e.message)")
                return e.kind
            } catch {
                Issue.record("not a ZeroSegError: \(error)")
                return nil
            }
        }
        for c in [0, -1, 17, 1000] { #expect(kind(columns: c) == .invalidArgument(parameter: "columns"), "columns \(c)") }
        for t in [0, 31, 1025, Int.max] { #expect(kind(tileSize: t) == .invalidArgument(parameter: "tileSize"), "tileSize \(t)") }
        #expect(throws: ZeroSegError.self) { try ContactSheetLayout(columns: 17).validate() }
        try ContactSheetLayout(columns: 16, tileSize: 32).validate()
        try ContactSheetLayout(columns: 1, tileSize: 1024).validate()
        // Too many tiles; a sheet past the pixel limit; an empty picture.
        #expect(kind([SheetTile](repeating: tile, count: 257), tileSize: 32) == .invalidArgument(parameter: "tiles"))
        #expect(kind([SheetTile](repeating: tile, count: 256), columns: 16, tileSize: 1024) == .invalidArgument(parameter: "tileSize"))
        let empty = SheetTile(image: try RGBImage(width: 0, height: 0, pixels: []))
        #expect(kind([tile, empty]) == .invalidArgument(parameter: "tiles"))
        // The limits themselves are fine: 256 tiles, 16 columns, 32 pixels.
        #expect(kind([SheetTile](repeating: tile, count: 256), columns: 16, tileSize: 32) == nil)
        // Boxes anywhere (inverted, huge, negative) are skipped or clipped, never an error.
        let wild = SheetTile(image: gradient(10, 10), caption: "x", boxes: [
            SheetBox(x0: 5, y0: 5, x1: 2, y1: 2), SheetBox(x0: Int.min, y0: Int.min, x1: Int.max, y1: Int.max, label: "all"),
            SheetBox(x0: -5, y0: -5, x1: 0, y1: 0), SheetBox(x0: 9, y0: 9, x1: 10, y1: 10, label: "corner")])
        #expect(kind([wild], tileSize: 32) == nil)
        // A bad font is the overlay's error.
        var layout = ContactSheetLayout()
        layout.fontPath = repoRoot.appendingPathComponent("README.md").path
        #expect(throws: ZeroSegError.self) { try renderContactSheet([tile], layout: layout) }
    }

    @Test func renderingTwiceGivesTheSameBytes() throws {
        let tiles = (0..<5).map { k in
            SheetTile(image: gradient(120 + 13 * k, 90 - 7 * k), caption: "\(k + 1)  0.\(300 - k)  pic\(k).jpg",
                      boxes: (0...k).map { SheetBox(x0: 10 * $0, y0: 5 * $0, x1: 60 + 10 * $0, y1: 50 + 3 * $0, label: "box \($0)") })
        }
        let layout = ContactSheetLayout(columns: 3, tileSize: 96, title: "same bytes — twice")
        let a = try renderContactSheet(tiles, layout: layout)
        let b = try renderContactSheet(tiles, layout: layout)
        #expect(a == b)
        let d = temporaryDirectory()
        let ua = d.appendingPathComponent("a.png"), ub = d.appendingPathComponent("b.png")
        try writeRGBPNG(a, to: ua)
        try writeRGBPNG(b, to: ub)
        #expect(try Data(contentsOf: ua) == Data(contentsOf: ub))
        let back = try readRawPNG(ua)
        #expect(back.width == a.width && back.height == a.height && back.colorType == 2)
    }

    /// The example pictures with made-up boxes; set ZEROSEG_SHEET_OUT=/path/sheet.png to keep
    /// the PNG and look at it.
    @Test func sheetOfTheExamplePictures() throws {
        let hits: [(String, String, [SheetBox])] = [
            ("astronaut.jpg", "1  0.312  astronaut.jpg", [SheetBox(x0: 120, y0: 20, x1: 300, y1: 220, label: "a face"),
                                                          SheetBox(x0: 0, y0: 0, x1: 110, y1: 300, label: "a flag")]),
            ("camera.jpg", "2  0.297  camera.jpg", [SheetBox(x0: 200, y0: 60, x1: 440, y1: 512, label: "a person with a camera")]),
            ("chelsea.jpg", "3  0.281  chelsea.jpg", [SheetBox(x0: 130, y0: 20, x1: 340, y1: 300, label: "a cat")]),
            ("horse.jpg", "4  0.250  horse.jpg", [SheetBox(x0: 0, y0: 0, x1: 400, y1: 328, label: "a horse")]),
            ("rocket.jpg", "5  0.233  rocket.jpg", [SheetBox(x0: 290, y0: 40, x1: 360, y1: 330, label: "a rocket"),
                                                    SheetBox(x0: 0, y0: 0, x1: 640, y1: 120, label: "sky")]),
            ("coffee.jpg", "6  0.201  coffee.jpg — a caption long enough to be shortened", [SheetBox(x0: 180, y0: 20, x1: 480, y1: 260, label: "coffee cup")]),
        ]
        let tiles = try hits.map { name, caption, boxes in
            SheetTile(image: try RGBImage.load(repoRoot.appendingPathComponent("examples/\(name)")), caption: caption, boxes: boxes)
        }
        let layout = ContactSheetLayout(columns: 3, tileSize: 256, title: "zeroseg search examples · “made-up boxes”")
        let sheet = try renderContactSheet(tiles, layout: layout)
        let want = expectedSize(columns: 3, tileSize: 256, tiles: 6, title: true)
        #expect(sheet.width == want.width && sheet.height == want.height)
        let out = ProcessInfo.processInfo.environment["ZEROSEG_SHEET_OUT"].map { URL(fileURLWithPath: $0) }
            ?? temporaryDirectory().appendingPathComponent("sheet.png")
        try writeRGBPNG(sheet, to: out)
        #expect(try RGBImage.load(out).width == sheet.width)
    }
}
