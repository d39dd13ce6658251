import Foundation
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegCLIP

// Proposal masks on disk (`--save-proposals DIR`, `--masks DIR`): one 8-bit greyscale PNG per
// mask, 000.png, 001.png, ... (255 inside, 0 outside), and their JSON summary.

/// The file name of mask `index` among `count`: zero-padded to 3 digits, or to as many as the
/// largest index needs, so that name order is index order.
public func proposalMaskFileName(_ index: Int, count: Int) -> String {
    let digits = max(3, String(max(0, count - 1)).count)
    let s = String(index)
    return String(repeating: "0", count: max(0, digits - s.count)) + s + ".png"
}

/// Writes each mask as `NNN.png` (`proposalMaskFileName`) into `dir` (created when missing):
/// 8-bit greyscale, 255 inside, 0 outside, each file atomically. Returns the file names in mask
/// order.
///
/// Other files in `dir` are left alone unless `removingStale`: then every other `*.png` whose
/// name is only digits (an earlier run's masks) is deleted, so that `readProposalMasks` gives
/// back exactly these masks. Use a folder of its own for that.
@discardableResult
public func writeProposalMasks(_ masks: [ProposalMask], to dir: URL, removingStale: Bool = false) throws -> [String] {
    do {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    } catch {
        throw ZeroSegError.io("cannot create proposal mask folder \(dir.path): \(error.localizedDescription)", file: dir.path)
    }
    var names: [String] = []
    for (i, m) in masks.enumerated() {
        let name = proposalMaskFileName(i, count: masks.count)
        try writeGreyPNG(m.bits.map { $0 != 0 ? 255 : 0 }, width: m.width, height: m.height,
                         to: dir.appendingPathComponent(name), what: "proposal mask")
        names.append(name)
    }
    if removingStale {
        let written = Set(names)
        for name in try maskFolderPNGs(dir) where !written.contains(name) {
            let stem = name.dropLast(4)
            guard !stem.isEmpty, stem.allSatisfy({ $0.isASCII && $0.isNumber }) else { continue }
            do {
                try FileManager.default.removeItem(at: dir.appendingPathComponent(name))
            } catch {
                throw ZeroSegError.io("cannot remove stale proposal mask \(dir.appendingPathComponent(name).path): \(error.localizedDescription)",
                                      file: dir.appendingPathComponent(name).path)
            }
        }
    }
    return names
}

/// Reads every `*.png` in `dir` (not hidden files), in name order, as masks of a width x height
/// picture: a pixel is inside when any of its R, G, B is non-zero as zeroseg decodes the PNG
/// (greyscale, RGB, palette (the palette colour), any bit depth; alpha ignored). Sources are
/// "file:NAME". A mask of another size, an unreadable or undecodable file, a missing folder or
/// one without PNGs is a one-line `ZeroSegError` naming the file or folder.
public func readProposalMasks(from dir: URL, width: Int, height: Int) throws -> [ProposalMask] {
    try classifyingErrors(as: .badInput(file: dir.path)) { try readMasks(from: dir, width: width, height: height) }
}

func readMasks(from dir: URL, width: Int, height: Int) throws -> [ProposalMask] {
    let names = try maskFolderPNGs(dir)
    guard !names.isEmpty else { throw ZeroSegError("no proposal masks (*.png) in \(dir.path)") }
    return try names.map { name in
        let url = dir.appendingPathComponent(name)
        let img = try RGBImage.load(url)
        guard img.width == width, img.height == height else {
            throw ZeroSegError("proposal mask \(url.path) is \(img.width)x\(img.height), the image is \(width)x\(height)")
        }
        var bits = [UInt8](repeating: 0, count: width * height)
        for i in 0..<(width * height) {
            let p = img.pixels[3 * i] != 0 || img.pixels[3 * i + 1] != 0 || img.pixels[3 * i + 2] != 0
            bits[i] = p ? 1 : 0
        }
        return try ProposalMask(width: width, height: height, bits: bits, source: "file:\(name)")
    }
}

/// Names of the non-hidden `*.png` / `*.PNG` entries of `dir`, sorted.
private func maskFolderPNGs(_ dir: URL) throws -> [String] {
    let entries: [String]
    do {
        entries = try FileManager.default.contentsOfDirectory(atPath: dir.path)
    } catch {
        throw ZeroSegError("cannot read proposal mask folder \(dir.path): \(error.localizedDescription)")
    }
    return entries.filter { !$0.hasPrefix(".") && $0.lowercased().hasSuffix(".png") }.sorted()
}

/// One mask in the JSON summary.
public struct ProposalSummary: Codable, Sendable, Equatable {
    public var index: Int
    /// The file `writeProposalMasks` gives it.
    public var file: String
    public var area: Int
    /// [x0, y0, x1, y1], end-exclusive.
    public var bbox: [Int]
    public var source: String

    /// The same as a JSONSerialization-ready dictionary.
    public var json: [String: Any] {
        ["index": index, "file": file, "area": area, "bbox": bbox, "source": source]
    }
}

/// The summary of masks in order (index, file name as `writeProposalMasks` names it, area,
/// box, source).
public func proposalSummaries(_ masks: [ProposalMask]) -> [ProposalSummary] {
    masks.enumerated().map { i, m in
        ProposalSummary(index: i, file: proposalMaskFileName(i, count: masks.count), area: m.area,
                        bbox: [m.bbox.x0, m.bbox.y0, m.bbox.x1, m.bbox.y1], source: m.source)
    }
}
