import Crypto
import Foundation

/// Class embeddings on disk (`$XDG_CACHE_HOME/zeroseg/text`, else `~/.cache/zeroseg/text`), one
/// small file per (model, template set, name), so a second run with the same names encodes no text.
/// A file is `P` little-endian float32 values; a damaged or short one is ignored and rewritten.
public final class TextEmbeddingCache: @unchecked Sendable {
    public let directory: URL
    let dim: Int

    public init(model: CLIPModel, root: URL = ModelResolver.cacheDirectory().appendingPathComponent("text")) {
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
            try v.withUnsafeBytes { try writeAtomically(Data($0), to: url(name: name, templates: templates)) }
        } catch {}
    }
}

extension CLIPModel {
    /// A fingerprint of the weights and config: SHA-256 over the config, the weights file's size and
    /// 16 sampled 64 KiB blocks (hashing 600 MB whole would cost seconds per run).
    static func fingerprint(config: CLIPConfig, weights: URL) -> String {
        var h = SHA256()
        if let c = try? JSONSerialization.data(withJSONObject: config.json(), options: [.sortedKeys]) { h.update(data: c) }
        if let f = try? FileHandle(forReadingFrom: weights) {
            let size = (try? f.seekToEnd()) ?? 0
            h.update(data: withUnsafeBytes(of: size.littleEndian) { Data($0) })
            let block: UInt64 = 65536
            for i in 0..<16 {
                let off = size > block ? (size - block) * UInt64(i) / 15 : 0
                try? f.seek(toOffset: off)
                if let d = try? f.read(upToCount: Int(block)) { h.update(data: d) }
            }
            try? f.close()
        }
        return h.finalize().prefix(16).map { String(format: "%02x", $0) }.joined()
    }
}
