import Crypto
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegCLIP
import Foundation

/// Class embeddings on disk (`$XDG_CACHE_HOME/zeroseg/text`, else `~/.cache/zeroseg/text`), one
/// small file per (model, template set, name), so a second run with the same names encodes no text.
/// A file is `P` little-endian float32 values; a damaged or short one is ignored and rewritten.
///
/// With `memoryEntries` > 0 the cache also keeps up to that many embeddings in memory (for a
/// long-lived process such as the HTTP service, where one cache serves every request; the oldest
/// entries go first). Safe to use from several threads at once.
public final class TextEmbeddingCache: @unchecked Sendable {
    public let directory: URL
    let dim: Int
    let memoryEntries: Int
    private let lock = NSLock()
    private var memory: [String: [Float]] = [:]
    private var order: [String] = []  // insertion order, oldest first

    public init(model: CLIPModel, root: URL = CacheDirectory.url().appendingPathComponent("text"), memoryEntries: Int = 0) {
        directory = root.appendingPathComponent(model.cacheKey)
        dim = model.config.projectionDim
        self.memoryEntries = max(0, memoryEntries)
    }

    /// Embeddings held in memory now.
    public var memoryCount: Int { lock.withLock { memory.count } }

    private func remember(_ key: String, _ v: [Float]) {
        guard memoryEntries > 0 else { return }
        lock.withLock {
            if memory.updateValue(v, forKey: key) == nil { order.append(key) }
            while memory.count > memoryEntries, !order.isEmpty { memory.removeValue(forKey: order.removeFirst()) }
        }
    }

    func url(name: String, templates: [String]) -> URL {
        var h = SHA256()
        h.update(data: Data(templates.joined(separator: "\u{0}").utf8))
        h.update(data: Data([0xFF]))
        h.update(data: Data(name.utf8))
        return directory.appendingPathComponent(h.finalize().map { String(format: "%02x", $0) }.joined() + ".f32")
    }

    public func load(name: String, templates: [String]) -> [Float]? {
        let file = url(name: name, templates: templates)
        if memoryEntries > 0, let v = lock.withLock({ memory[file.path] }) { return v }
        guard let d = FileManager.default.contents(atPath: file.path), d.count == dim * 4 else { return nil }
        let v = d.withUnsafeBytes { raw in (0..<dim).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) } }
        guard v.allSatisfy(\.isFinite) else { return nil }
        remember(file.path, v)
        return v
    }

    /// Best effort: a cache that cannot be written is skipped silently (it only costs time).
    public func store(_ v: [Float], name: String, templates: [String]) {
        remember(url(name: name, templates: templates).path, v)
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
        directory = root.appendingPathComponent(model.cacheKey)
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
        return try? FeatureGrid(height: gh, width: gw, dim: dm, normalizedData: data)  // as stored, bit for bit
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
