import Crypto
import Foundation
import ZeroSegCLIP
import ZeroSegCore
import ZeroSegImaging

/// What one `DirectoryIndexer.update` did.
public struct IndexingReport: Sendable, Codable, Equatable {
    public struct Failure: Sendable, Codable, Equatable {
        public var path: String
        public var error: String
    }
    /// Images new to the index.
    public var added = 0
    /// Images whose content changed (by SHA-256) and were embedded again.
    public var updated = 0
    /// Images that are gone from disk, removed from the index.
    public var removed = 0
    /// Images already indexed with the same content.
    public var unchanged = 0
    /// Files that could not be read or decoded (left out; the rest is indexed).
    public var failed: [Failure] = []
    /// The index afterwards.
    public var images = 0
    public var imageVectors = 0
    public var regionVectors = 0
    public var seconds = 0.0

    public init() {}

    enum CodingKeys: String, CodingKey {
        case added, updated, removed, unchanged, failed, images, imageVectors = "image_vectors", regionVectors = "region_vectors", seconds
    }
}

/// The image files under some roots, and bringing an index up to date with them.
public final class DirectoryIndexer: @unchecked Sendable {
    public let embedder: RegionEmbedder

    /// File name extensions indexed (lowercase).
    public static let imageExtensions: Set<String> = ["jpg", "jpeg", "png"]

    public init(embedder: RegionEmbedder) {
        self.embedder = embedder
    }

    /// The image files under `roots` (files given directly, or found recursively in folders;
    /// hidden entries skipped), as absolute standardised paths, sorted, without duplicates.
    /// A root that does not exist is an error.
    public static func imageFiles(under roots: [URL], excluding excluded: URL? = nil) throws -> [String] {
        var out = Set<String>()
        let skip = excluded?.standardizedFileURL.path
        for root in roots {
            let r = root.standardizedFileURL
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: r.path, isDirectory: &isDir) else {
                throw ZeroSegError.badInput("\(root.path): no such file or folder", file: root.path)
            }
            if !isDir.boolValue {
                out.insert(r.path)
                continue
            }
            guard let e = FileManager.default.enumerator(at: r, includingPropertiesForKeys: [.isRegularFileKey],
                                                         options: [.skipsHiddenFiles, .skipsPackageDescendants]) else {
                throw ZeroSegError.badInput("\(root.path): cannot list the folder", file: root.path)
            }
            for case let u as URL in e {
                let path = u.standardizedFileURL.path
                if let skip, path == skip || path.hasPrefix(skip + "/") { e.skipDescendants(); continue }
                guard imageExtensions.contains(u.pathExtension.lowercased()),
                      (try? u.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile) == true else { continue }
                out.insert(path)
            }
        }
        return out.sorted()
    }

    /// Brings `index` up to date with the image files under `roots`: adds new files, embeds again
    /// files whose content changed, removes indexed files that no longer exist, and leaves the
    /// rest alone. Each batch of images is one transaction, so a run killed at any point leaves
    /// a usable index and the next run goes on from there. `progress` gets (done, to do).
    public func update(_ index: EmbeddingIndex, roots: [URL], progress: ((Int, Int) -> Void)? = nil) throws -> IndexingReport {
        var clock = Stopwatch()
        try index.check(model: embedder.model)
        let options = embedder.options
        var report = IndexingReport()
        let files = try Self.imageFiles(under: roots, excluding: index.directory)
        var known: [String: IndexedImage] = [:]
        for im in try index.images() { known[im.path] = im }
        let gone = known.keys.filter { !FileManager.default.fileExists(atPath: $0) }.sorted()
        try index.remove(imagePaths: gone)
        report.removed = gone.count

        // Batches are fixed runs of `batch` files of the sorted list (only their files that need
        // work are encoded), so a run that resumes after a kill encodes each image in the same
        // company as an uninterrupted run: batched encoding agrees with one image at a time only
        // to rounding, and this keeps the index bit for bit what one run makes.
        // Files are read one batch at a time (memory stays bounded by the batch).
        progress?(0, files.count)
        for start in stride(from: 0, to: files.count, by: options.batch) {
            let chunk = files[start..<min(files.count, start + options.batch)]
            // Read, hash and decode on the thread budget, one file per task; then in file order.
            let loaded = try embedder.perPicture(chunk.count) { i -> Loaded in
                let f = chunk[chunk.startIndex + i]
                do {
                    let data = try readLimited(f, maxBytes: options.maxFileBytes)
                    let sha = SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
                    if let k = known[f], k.sha256 == sha { return .unchanged }
                    return .decoded(bytes: data.count, sha: sha, image: try RGBImage.decode(data: data, maxPixels: options.maxPixels))
                } catch let e as ZeroSegError {
                    return .failed(e.message)
                }
            }
            var decoded: [(path: String, bytes: Int, sha: String, isNew: Bool, image: RGBImage)] = []
            for (f, l) in zip(chunk, loaded) {
                switch l {
                case .unchanged: report.unchanged += 1
                case .failed(let m): report.failed.append(.init(path: f, error: m))
                case .decoded(let bytes, let sha, let image): decoded.append((f, bytes, sha, known[f] == nil, image))
                }
            }
            if !decoded.isEmpty {
                let vectors = try embedder.embed(decoded.map(\.image))
                try index.add(zip(decoded, vectors).map { d, v in
                    ImageEmbeddings(path: d.path, sha256: d.sha, bytes: d.bytes, width: d.image.width, height: d.image.height,
                                    global: v.global, regions: v.regions)
                })
                for d in decoded { if d.isNew { report.added += 1 } else { report.updated += 1 } }
            }
            progress?(start + chunk.count, files.count)
        }
        report.failed.sort { $0.path < $1.path }
        report.images = try index.imageCount()
        report.imageVectors = try index.count(.image)
        report.regionVectors = try index.count(.region)
        report.seconds = clock.lap()
        return report
    }
}

/// One file of a batch after reading: unchanged, unreadable, or decoded.
enum Loaded {
    case unchanged
    case failed(String)
    case decoded(bytes: Int, sha: String, image: RGBImage)
}

/// The bytes of a file, refusing more than `maxBytes`.
func readLimited(_ path: String, maxBytes: Int) throws -> Data {
    let attrs: [FileAttributeKey: Any]
    do { attrs = try FileManager.default.attributesOfItem(atPath: path) } catch {
        throw ZeroSegError.badInput("\(path): cannot read (\(error.localizedDescription))", file: path)
    }
    if let size = attrs[.size] as? Int, size > maxBytes {
        throw ZeroSegError.badInput("\(path): \(size) bytes, more than the limit of \(maxBytes)", file: path)
    }
    guard let d = FileManager.default.contents(atPath: path) else {
        throw ZeroSegError.badInput("\(path): cannot read", file: path)
    }
    guard d.count <= maxBytes else { throw ZeroSegError.badInput("\(path): more than the limit of \(maxBytes) bytes", file: path) }
    return d
}
