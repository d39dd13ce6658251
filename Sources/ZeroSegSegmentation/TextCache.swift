import Crypto
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegCLIP
import Foundation

/// Class embeddings on disk (`$XDG_CACHE_HOME/zeroseg/text`, else `~/.cache/zeroseg/text`), one
/// small file per (model, template set, name), so a second run with the same names encodes no text.
/// A file is `P` little-endian float32 values; a damaged or short one is ignored and rewritten.
public final class TextEmbeddingCache: @unchecked Sendable {
    public let directory: URL
    let dim: Int

    public init(model: CLIPModel, root: URL = CacheDirectory.url().appendingPathComponent("text")) {
        directory = root.appendingPathComponent(model.fingerprint)
        dim = model.config.projectionDim
    }

    func url(name: String, templates: [String]) -> URL {
        var h = SHA256()
        h.update(data: Data(templates.joined(separator: "\u{0}").utf8))
        h.update(data: Data([0xFF]))
        h.update(data: Data(name.utf8))
        return directory.appendingPathComponent(h.finalize().map { String(format: "%02x", $0) }.joined() + ".f32")
    }

    public func load(name: String, templates: [String]) -> [Float]? {
        guard let d = FileManager.default.contents(atPath: url(name: name, templates: templates).path), d.count == dim * 4 else { return nil }
        let v = d.withUnsafeBytes { raw in (0..<dim).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) } }
        return v.allSatisfy(\.isFinite) ? v : nil
    }

    /// Best effort: a cache that cannot be written is skipped silently (it only costs time).
    public func store(_ v: [Float], name: String, templates: [String]) {
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            try v.withUnsafeBytes { try writeDataAtomically(Data($0), to: url(name: name, templates: templates)) }
        } catch {}
    }
}

/// Dense-feature grids on disk (`$XDG_CACHE_HOME/zeroseg/features/<model>/`), for `zeroseg tune`:
/// a second run (other learning rate, more epochs, `--resume`) skips the image encoder. Keyed by
/// the segmentation settings that shape the features and by the image file (path, size,
/// modification time). A file is a 16-byte header (magic "ZSFG", gh, gw, dim as UInt32 LE) and
/// gh·gw·dim float32 values; a damaged or mismatching one is ignored and rewritten.
public final class FeatureCache: @unchecked Sendable {
    public let directory: URL
    let dim: Int
    let settingsKey: String

    public init(model: CLIPModel, options o: SegmentationOptions,
                root: URL = CacheDirectory.url().appendingPathComponent("features")) {
        directory = root.appendingPathComponent(model.fingerprint)
        dim = model.config.projectionDim
        settingsKey = "\(o.method.rawValue)|\(o.shortSide)|\(o.window)|\(o.stride)|\(o.useWindows)|\(o.gaussianStd)"
    }

    func url(_ image: URL) -> URL {
        let attrs = try? FileManager.default.attributesOfItem(atPath: image.path)
        let size = (attrs?[.size] as? NSNumber)?.int64Value ?? -1
        let mtime = (attrs?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
        var h = SHA256()
        h.update(data: Data("\(settingsKey)\u{0}\(image.standardizedFileURL.path)\u{0}\(size)\u{0}\(mtime)".utf8))
        return directory.appendingPathComponent(h.finalize().map { String(format: "%02x", $0) }.joined() + ".f32")
    }

    public func load(_ image: URL) -> FeatureGrid? {
        guard let d = FileManager.default.contents(atPath: url(image).path), d.count >= 16 else { return nil }
        let v = d.withUnsafeBytes { raw in (0..<(d.count / 4)).map { UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self)) } }
        guard v[0] == 0x4746_535A else { return nil }  // "ZSFG"
        let (gh, gw, dm) = (Int(v[1]), Int(v[2]), Int(v[3]))
        guard dm == dim, gh >= 1, gw >= 1, v.count == 4 + gh * gw * dm else { return nil }
        let data = v[4...].map { Float(bitPattern: $0) }
        guard data.allSatisfy(\.isFinite) else { return nil }
        return try? FeatureGrid(height: gh, width: gw, dim: dm, data: data)
    }

    /// Best effort, like the text cache.
    public func store(_ g: FeatureGrid, for image: URL) {
        var words: [UInt32] = [0x4746_535A, UInt32(g.height), UInt32(g.width), UInt32(g.dim)]
        words += g.data.map(\.bitPattern)
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            try words.map(\.littleEndian).withUnsafeBytes { try writeDataAtomically(Data($0), to: url(image)) }
        } catch {}
    }
}
