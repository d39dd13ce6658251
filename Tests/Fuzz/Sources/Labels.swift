import Foundation
import ZeroSeg
@testable import ZeroSegSegmentation

/// Label maps (Evaluation.decodeLabelPNG: palette / grey class indices) and proposal masks
/// (readProposalMasks: a folder of PNGs, the input as its one mask, at the size its IHDR claims).
let labelsTarget = FuzzTarget(name: "labels", covers: "label map PNGs (decodeLabelPNG) and proposal mask folders (readProposalMasks)") { bytes in
    let arr = Array(bytes)
    do {
        let m = try Evaluation.decodeLabelPNG(arr, source: "fuzz.png", maxPixels: fuzzMaxPixels)
        precondition(m.values.count == m.width * m.height)
    } catch { expectTyped(error) }
    // The mask folder reader, at the size the header claims (or 1x1).
    // Only PNGs: their IHDR (checked against the pixel limit before decoding) gives the size.
    guard arr.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) else { return }
    var w = 1, h = 1
    if arr.count >= 24 {
        func be32(_ i: Int) -> Int { Int(arr[i]) << 24 | Int(arr[i + 1]) << 16 | Int(arr[i + 2]) << 8 | Int(arr[i + 3]) }
        w = be32(16); h = be32(20)
    }
    guard w > 0, h > 0, w <= fuzzMaxPixels, h <= fuzzMaxPixels, w * h <= fuzzMaxPixels else { return }
    let dir = fuzzScratch.appendingPathComponent("masks", isDirectory: true)
    try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    FileManager.default.createFile(atPath: dir.appendingPathComponent("000.png").path, contents: Data(arr))
    do {
        let masks = try readProposalMasks(from: dir, width: w, height: h)
        precondition(masks.count == 1)
    } catch { expectTyped(error) }
}
