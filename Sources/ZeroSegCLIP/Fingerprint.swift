import Crypto
import Foundation

/// Identity of a model's weights (keys caches of embeddings and features).
extension CLIPModel {
    /// A fingerprint of the weights and config: SHA-256 over the config, the weights file's size and
    /// 16 sampled 64 KiB blocks (hashing 600 MB whole would cost seconds per run).
    package static func fingerprint(config: CLIPConfig, weights: URL) -> String {
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

