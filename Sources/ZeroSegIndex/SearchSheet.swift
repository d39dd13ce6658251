import Foundation
import ZeroSegCore
import ZeroSegImaging

/// The contact sheet of search hits: a thumbnail per hit in rank order, captioned with its rank,
/// score and file name, its region (if any) outlined and labelled with the score. At most
/// `ContactSheetLayout.maxTiles` hits are drawn; a hit whose file is gone or unreadable gets a
/// grey tile that says so.
public enum SearchSheet {
    /// The sheet as a picture.
    public static func render(_ hits: [SearchHit], title: String, layout: ContactSheetLayout = ContactSheetLayout()) throws -> RGBImage {
        var layout = layout
        layout.title = title
        let tiles = try hits.prefix(ContactSheetLayout.maxTiles).enumerated().map { i, h -> SheetTile in
            let name = h.image.map { URL(fileURLWithPath: $0.path).lastPathComponent } ?? "vector \(h.id)"
            let caption = String(format: "%d  %.3f  ", i + 1, h.score) + name
            guard let path = h.image?.path, let img = try? RGBImage.load(URL(fileURLWithPath: path)) else {
                let grey = try RGBImage(width: 4, height: 3, pixels: [Float](repeating: 128, count: 36))
                return SheetTile(image: grey, caption: caption + " (unreadable)")
            }
            let boxes = h.region.map { r in [SheetBox(x0: r.box.x0, y0: r.box.y0, x1: r.box.x1, y1: r.box.y1, label: String(format: "%.3f", h.score))] } ?? []
            return SheetTile(image: img, caption: caption, boxes: boxes)
        }
        return try renderContactSheet(tiles, layout: layout)
    }

    /// Renders the sheet and writes it as a PNG (atomically: a complete file or none).
    public static func write(_ hits: [SearchHit], query: String, to url: URL, layout: ContactSheetLayout = ContactSheetLayout()) throws {
        let title = "\(query): \(hits.count) hit\(hits.count == 1 ? "" : "s")"
        try writeRGBPNG(try render(hits, title: title, layout: layout), to: url)
    }
}
