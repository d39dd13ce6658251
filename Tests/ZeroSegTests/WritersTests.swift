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

// The output writers: label and RGB PNGs (round trips through zeroseg's decoders, libpng as
// stored, and Pillow when python3 has it), .npy byte for byte against numpy.save
// (Fixtures/eval/npy, made by scripts/reference/make_eval_fixture.py), the overlay, the legend
// font lookup, and atomic writing.

private let npyFixtures: URL = Bundle.module.resourceURL!.appendingPathComponent("Fixtures/eval/npy")

/// Runs python3 with a script; nil when python3 or the module is missing.
private func python(_ script: String, _ args: [String] = []) -> (status: Int32, out: String)? {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["python3", "-c", script] + args
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    do { try p.run() } catch { return nil }
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

private let pillowAvailable: Bool = python("import PIL, numpy")?.status == 0

/// Names of hidden (temporary) files left in a folder.
private func leftovers(_ dir: URL) throws -> [String] {
    try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasPrefix(".") }
}

@Suite struct WritersTests {
    static let labels: (w: Int, h: Int, values: [UInt8]) = {
        let w = 37, h = 23
        var v = [UInt8](repeating: 0, count: w * h)
        for i in v.indices { v[i] = UInt8((i * 7 + i / w) % 6) }
        v[0] = 255; v[5] = 255; v[w * h - 1] = 200  // background, and an index past the palette
        return (w, h, v)
    }()

    // MARK: Label PNG

    @Test func labelPNGRoundTrips() throws {
        let d = temporaryDirectory()
        let url = d.appendingPathComponent("labels.png")
        let (w, h, v) = Self.labels
        let palette = try classPalette(count: 5)
        try writeLabelPNG(labels: v, width: w, height: h, palette: palette, to: url)

        // As stored: 8-bit palette, indices unchanged, 256 PLTE entries (the rest black).
        let raw = try readRawPNG(url)
        #expect(raw.width == w && raw.height == h && raw.colorType == 3 && raw.bitDepth == 8)
        #expect(raw.samples == v)
        #expect(raw.palette.count == 256 * 3)
        for i in 0..<256 {
            let want: [UInt8] = i < palette.count ? [palette[i].0, palette[i].1, palette[i].2] : [0, 0, 0]
            #expect(Array(raw.palette[3 * i..<3 * i + 3]) == want, "palette entry \(i)")
        }
        // As a label map (indices) and as a picture (colours).
        #expect(try Evaluation.loadLabelMap(url) == LabelMap(width: w, height: h, values: v))
        let img = try RGBImage.load(url)
        #expect(img.width == w && img.height == h)
        for (i, l) in v.enumerated() {
            let c: (UInt8, UInt8, UInt8) = Int(l) < palette.count ? palette[Int(l)] : (0, 0, 0)
            #expect(img.pixels[3 * i] == Float(c.0) && img.pixels[3 * i + 1] == Float(c.1) && img.pixels[3 * i + 2] == Float(c.2))
        }
        #expect(try leftovers(d).isEmpty)
    }

    @Test(.enabled(if: pillowAvailable)) func labelPNGAsPillowReadsIt() throws {
        let d = temporaryDirectory()
        let url = d.appendingPathComponent("labels.png")
        let (w, h, v) = Self.labels
        let palette = try classPalette(count: 5)
        try writeLabelPNG(labels: v, width: w, height: h, palette: palette, to: url)
        let script = """
            import sys, json, numpy as np
            from PIL import Image
            im = Image.open(sys.argv[1]); im.load()
            print(json.dumps({"mode": im.mode, "size": list(im.size), "values": np.array(im).reshape(-1).tolist(),
                              "palette": im.getpalette()[:15]}))
            """
        let r = try #require(python(script, [url.path]))
        #expect(r.status == 0)
        let obj = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as! [String: Any]
        #expect(obj["mode"] as? String == "P")
        #expect(obj["size"] as? [Int] == [w, h])
        #expect(obj["values"] as? [Int] == v.map(Int.init))
        #expect(obj["palette"] as? [Int] == palette.flatMap { [Int($0.0), Int($0.1), Int($0.2)] })
    }

    @Test func labelPNGErrors() throws {
        let d = temporaryDirectory()
        let url = d.appendingPathComponent("x.png")
        #expect(throws: ZeroSegError.self) { try writeLabelPNG(labels: [0, 1], width: 3, height: 1, palette: [], to: url) }
        #expect(throws: ZeroSegError.self) { try writeLabelPNG(labels: [], width: 0, height: 0, palette: [], to: url) }
        #expect(throws: ZeroSegError.self) {
            try writeLabelPNG(labels: [0], width: 1, height: 1, palette: Array(repeating: (1, 2, 3), count: 256), to: url)
        }
        #expect(!FileManager.default.fileExists(atPath: url.path))
        #expect(try leftovers(d).isEmpty)
    }

    // MARK: RGB PNG

    @Test func rgbPNGRoundTrips() throws {
        let d = temporaryDirectory()
        let url = d.appendingPathComponent("rgb.png")
        let w = 19, h = 11
        var px = [Float](repeating: 0, count: w * h * 3)
        for i in px.indices { px[i] = Float((i * 37) % 256) }
        px[0] = 12.5; px[1] = 12.49; px[2] = -3; px[3] = 300; px[4] = .nan; px[5] = 254.5; px[6] = .infinity
        try writeRGBPNG(RGBImage(width: w, height: h, pixels: px), to: url)
        let raw = try readRawPNG(url)
        #expect(raw.colorType == 2 && raw.bitDepth == 8 && raw.width == w && raw.height == h)
        let back = try RGBImage.load(url)
        let want = px.map { v -> Float in v.isNaN ? 0 : max(0, min(255, v.rounded())) }
        #expect(back.pixels == want)
        #expect(Array(back.pixels.prefix(7)) == [13, 12, 0, 255, 0, 255, 255])
        #expect(try leftovers(d).isEmpty)
    }

    // MARK: .npy

    @Test(arguments: [
        ("f32_0d", [Int]()), ("f32_5", [5]), ("f32_2x3", [2, 3]), ("f32_1x2x3x4", [1, 2, 3, 4]), ("f32_0x3", [0, 3]),
        ("f32_12345x0", [12345, 0]), ("f32_3x1000000x0", [3, 1_000_000, 0]), ("f32_pad64", [1, 1, 100, 1000, 1000, 1000, 1000, 1000, 0]),
    ])
    func npyIsByteExactAsNumpy(_ name: String, _ shape: [Int]) throws {
        let d = temporaryDirectory()
        let url = d.appendingPathComponent("\(name).npy")
        let n = shape.reduce(1, *)
        let data = (0..<n).map { Float($0) * 0.5 - 1.25 }
        try writeNpy(data, shape: shape, to: url)
        let mine = try Data(contentsOf: url)
        let numpy = try Data(contentsOf: npyFixtures.appendingPathComponent("\(name).npy"))
        #expect(mine == numpy, "\(name): \(mine.count) vs \(numpy.count) bytes; header \(String(decoding: mine.prefix(200).dropFirst(10), as: UTF8.self))")
        #expect(npyHeader(shape: shape).count % 64 == 0)
        #expect(try leftovers(d).isEmpty)
    }

    @Test func npyErrorsLeaveNothing() throws {
        let d = temporaryDirectory()
        let url = d.appendingPathComponent("bad.npy")
        #expect(throws: ZeroSegError.self) { try writeNpy([1, 2, 3], shape: [2, 2], to: url) }
        #expect(throws: ZeroSegError.self) { try writeNpy([], shape: [-1, 0], to: url) }
        #expect(throws: ZeroSegError.self) { try writeNpy([1], shape: [], to: d.appendingPathComponent("no/such/dir/a.npy")) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: d.path).isEmpty)
    }

    // MARK: Overlay

    static let overlayInput: (image: RGBImage, labels: [UInt8]) = {
        let w = 64, h = 48
        var px = [Float](repeating: 0, count: w * h * 3)
        var lab = [UInt8](repeating: 255, count: w * h)
        for y in 0..<h {
            for x in 0..<w {
                let i = y * w + x
                px[3 * i] = Float(x * 4); px[3 * i + 1] = Float(y * 5); px[3 * i + 2] = 100
                if y >= 8 { lab[i] = x < 32 ? 0 : (x < 48 ? 1 : 2) }
            }
        }
        return (try! RGBImage(width: w, height: h, pixels: px), lab)
    }()

    @Test(arguments: [Float(0.5), 0.3, 0, 1])
    func overlayBlendsAndHasALegend(_ alpha: Float) throws {
        let (image, labels) = Self.overlayInput
        let palette = try classPalette(count: 3)
        let names = ["cat", "grass", "a rather long class name that will not fit in the legend at all, surely"]
        let out = try renderOverlay(image: image, labels: labels, classNames: names, areaFractions: [0.5, 0.25, 0.08],
                                    palette: palette, alpha: alpha, title: "zeroseg naclip", footer: "SYNTHETIC WEIGHTS: meaningless")
        let w = image.width, h = image.height
        #expect(out.width > w + 100 && out.width < w + 1000, "width \(out.width)")
        #expect(out.height >= h)
        func px(_ x: Int, _ y: Int) -> [Float] { let i = (y * out.width + x) * 3; return Array(out.pixels[i..<i + 3]) }
        // The picture area: blended exactly as documented; background pixels unchanged.
        for y in 0..<h {
            for x in 0..<w {
                let i = y * w + x
                let src = Array(image.pixels[3 * i..<3 * i + 3])
                if labels[i] == 255 {
                    #expect(px(x, y) == src)
                } else {
                    let c = palette[Int(labels[i])]
                    let want = [src[0] * (1 - alpha) + Float(c.0) * alpha, src[1] * (1 - alpha) + Float(c.1) * alpha,
                                src[2] * (1 - alpha) + Float(c.2) * alpha]
                    #expect(px(x, y) == want, "(\(x), \(y))")
                }
            }
        }
        // Legend: grey border at x = w, white panel with the three swatch colours and dark text.
        #expect((0..<out.height).allSatisfy { px(w, $0) == [200, 200, 200] })
        var colours = Set<[Float]>()
        var dark = 0
        for y in 0..<out.height {
            for x in (w + 1)..<out.width {
                let p = px(x, y)
                colours.insert(p)
                if p[0] < 80 && p[1] < 80 && p[2] < 80 { dark += 1 }
            }
        }
        for c in palette { #expect(colours.contains([Float(c.0), Float(c.1), Float(c.2)])) }
        #expect(colours.contains([255, 255, 255]))
        #expect(dark > 50, "no text drawn?")
        // The footer is red.
        #expect(colours.contains { $0[0] > 150 && $0[1] < 60 && $0[2] < 60 })
        // Below the picture (when the legend is taller) the image area is white.
        for y in h..<out.height { #expect(px(0, y) == [255, 255, 255] && px(w - 1, y) == [255, 255, 255]) }
    }

    @Test func overlayGrowsWithTheLegend() throws {
        let (image, labels) = Self.overlayInput
        let names = (0..<30).map { "class \($0)" }
        let out = try renderOverlay(image: image, labels: labels, classNames: names, areaFractions: [Double](repeating: 0.01, count: 30),
                                    palette: classPalette(count: 30))
        #expect(out.height > image.height * 3)
        // Written and read back as PNG at that size.
        let url = temporaryDirectory().appendingPathComponent("overlay.png")
        try writeRGBPNG(out, to: url)
        let back = try RGBImage.load(url)
        #expect(back.width == out.width && back.height == out.height)
    }

    @Test func overlayErrors() throws {
        let (image, labels) = Self.overlayInput
        let palette = try classPalette(count: 3)
        func render(labels l: [UInt8] = labels, names: [String] = ["a", "b", "c"], areas: [Double] = [0, 0, 0],
                    palette p: [(UInt8, UInt8, UInt8)]? = nil, alpha: Float = 0.5, font: String? = nil) throws {
            _ = try renderOverlay(image: image, labels: l, classNames: names, areaFractions: areas, palette: p ?? palette,
                                  alpha: alpha, fontPath: font)
        }
        #expect(throws: ZeroSegError.self) { try render(labels: [0, 1]) }
        #expect(throws: ZeroSegError.self) { try render(names: ["a", "b"]) }            // label 2 is not a class
        #expect(throws: ZeroSegError.self) { try render(areas: [0]) }
        #expect(throws: ZeroSegError.self) { try render(palette: [(1, 2, 3)]) }
        #expect(throws: ZeroSegError.self) { try render(alpha: 1.5) }
        #expect(throws: ZeroSegError.self) { try render(alpha: .nan) }
        do {
            try render(font: repoRoot.appendingPathComponent("README.md").path)
            Issue.record("a text file was accepted as a font")
        } catch let e as ZeroSegError {
            #expect(e.message.hasPrefix("cannot load font") && e.message.contains("ZEROSEG_FONT"))
        }
    }

    // MARK: Legend font

    @Test func legendFontLookup() throws {
        let d = temporaryDirectory()
        let font = d.appendingPathComponent("f.ttf")
        try Data("not really".utf8).write(to: font)
        #expect(try findLegendFont(environment: ["ZEROSEG_FONT": font.path], candidates: []) == font.path)
        #expect(try findLegendFont(environment: [:], candidates: ["/nonexistent/a.ttf", font.path]) == font.path)
        #expect(try findLegendFont(environment: ["ZEROSEG_FONT": ""], candidates: [font.path]) == font.path)
        for env in [["ZEROSEG_FONT": "/nonexistent/x.ttf"], ["ZEROSEG_FONT": d.path]] {
            do {
                _ = try findLegendFont(environment: env, candidates: [font.path])
                Issue.record("accepted \(env)")
            } catch let e as ZeroSegError {
                #expect(e.message.hasPrefix("ZEROSEG_FONT=") && e.message.contains("no readable font file"))
            }
        }
        do {
            _ = try findLegendFont(environment: [:], candidates: ["/nonexistent/a.ttf", d.path])
            Issue.record("found a font where there is none")
        } catch let e as ZeroSegError {
            #expect(e.message == "no font for the overlay legend: install fonts-dejavu-core (apt-get install fonts-dejavu-core) or set ZEROSEG_FONT to a .ttf file")
        }
    }

    // MARK: Atomic writing

    @Test func failedWriteLeavesOldFileAndNoTemporary() throws {
        let d = temporaryDirectory()
        let url = d.appendingPathComponent("out.png")
        try Data("old".utf8).write(to: url)
        // libpng refuses widths over 1,000,000 (its user limit) while writing: the error comes from
        // inside the write, after the temporary file was created.
        do {
            try writeLabelPNG(labels: [UInt8](repeating: 0, count: 1_000_001), width: 1_000_001, height: 1, palette: [], to: url)
            Issue.record("no error")
        } catch let e as ZeroSegError {
            #expect(e.message.hasPrefix("cannot write label PNG \(url.path): ") && !e.message.contains("\n"), "\(e.message)")
        }
        #expect(try Data(contentsOf: url) == Data("old".utf8))
        #expect(try leftovers(d).isEmpty)

        // A folder in the way, or no folder at all.
        let folder = d.appendingPathComponent("folder.npy")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        #expect(throws: ZeroSegError.self) { try writeNpy([1], shape: [1], to: folder) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).isEmpty)
        #expect(throws: ZeroSegError.self) { try writeDataAtomically(Data([1]), to: d.appendingPathComponent("none/x.json")) }
        #expect(throws: ZeroSegError.self) { try writeRGBPNG(Self.overlayInput.image, to: url.appendingPathComponent("under-a-file.png")) }
        #expect(try leftovers(d).isEmpty)

        // A successful write replaces the file in one step.
        try writeDataAtomically(Data("new".utf8), to: url, what: "report")
        #expect(try Data(contentsOf: url) == Data("new".utf8))
        #expect(try leftovers(d).isEmpty)
    }
}
