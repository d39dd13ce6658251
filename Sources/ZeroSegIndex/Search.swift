import Foundation
import GRDB
import ZeroSegCLIP
import ZeroSegCore
import ZeroSegImaging
import ZeroSegSegmentation

extension EmbeddingIndex {
    /// The top `options.k` vectors of `options.kind` for query vectors [Q][dim]: each vector's
    /// score is its best dot product over the queries (several queries: synonyms). With
    /// `onePerImage`, an image counts once, with its best vector. Ranked by score, then by id.
    public func search(vectors queries: [[Float]], options: SearchOptions = SearchOptions(),
                       threads: Int = defaultThreads) throws -> [SearchHit] {
        try options.validate()
        guard !queries.isEmpty else { throw ZeroSegError.invalidArgument("no query vector", parameter: "queries") }
        for q in queries {
            guard q.count == identity.dim else {
                throw ZeroSegError.invalidArgument("a query vector has \(q.count) values, the index's vectors \(identity.dim)", parameter: "queries")
            }
            guard q.allSatisfy({ $0.isFinite }) else { throw ZeroSegError.invalidArgument("a query vector holds a value that is not finite", parameter: "queries") }
        }
        let snap = try snapshot(options.kind)
        let total = snap.count
        let flat = queries.flatMap { $0 }
        var want = options.onePerImage ? options.k * 4 : options.k
        var best: [Candidate]
        while true {
            let lists = try candidates(snap, flat, k: min(want, max(1, total)), engine: options.engine, threads: threads)
            // Best score per vector over the queries: exact, since a vector in the top k of the
            // maximum is in the top k of the query that attains it.
            var byID: [Int64: Candidate] = [:]
            for l in lists { for c in l where byID[c.id].map({ c.before($0) }) ?? true { byID[c.id] = c } }
            best = byID.values.sorted { $0.before($1) }
            try resolveImages(&best)
            if options.onePerImage {
                var seen = Set<Int64>(), kept: [Candidate] = []
                for c in best where c.image < 0 || seen.insert(c.image).inserted { kept.append(c) }
                best = kept
            }
            if best.count >= options.k || want >= total { break }
            want = min(total, want * 4)
        }
        return try hits(Array(best.prefix(options.k)))
    }

    /// The engine `engine` stands for on `snap` (the approximate index when it is current and
    /// the snapshot holds at least `approximateThreshold` vectors, for `.auto`).
    public func resolvedEngine(_ engine: SearchEngine, kind: VectorKind) throws -> SearchEngine {
        let snap = try snapshot(kind)
        switch engine {
        case .exact: return .exact
        case .approximate: return .approximate
        case .auto:
            guard snap.count >= Self.approximateThreshold else { return .exact }
            return try currentApproximate(kind, generation: snap.generation) != nil ? .approximate : .exact
        }
    }

    /// Per query, its best `k` candidates from the engine `engine` picks. Candidates of the
    /// approximate index carry no image yet (image −2: `resolveImages`).
    func candidates(_ snap: KindSnapshot, _ flat: [Float], k: Int, engine: SearchEngine, threads: Int) throws -> [[Candidate]] {
        let kind: VectorKind = snap.kind
        let use = try resolvedEngine(engine, kind: kind)
        switch use {
        case .exact, .auto:
            return exactTopK(snap.shards, dim: identity.dim, queries: flat, k: k, threads: threads)
        case .approximate:
            guard let ann = try currentApproximate(kind, generation: snap.generation) else {
                throw ZeroSegError.invalidArgument(
                    "index \(directory.path) has no up-to-date approximate index of its \(kind.fileStem) vectors (index again to build it, or search exactly)",
                    parameter: "engine")
            }
            let q = flat.count / identity.dim
            return try flat.withUnsafeBufferPointer {
                try ann.search($0.baseAddress!, count: q, k: k, threads: threads).map { row in row.map { Candidate(id: $0.id, image: -2, score: $0.score) } }
            }
        }
    }

    /// Fills in the image of candidates that lack it (from the database).
    func resolveImages(_ cands: inout [Candidate]) throws {
        let missing = cands.filter { $0.image == -2 }.map(\.id)
        guard !missing.isEmpty else { return }
        var image: [Int64: Int64] = [:]
        for r in try db.reading({ try IndexDatabase.rows($0, "SELECT id, image_id FROM vectors WHERE id IN", ids: missing) }) {
            image[try r.get("id")] = (try r.get("image_id") as Int64?) ?? -1
        }
        for i in cands.indices where cands[i].image == -2 { cands[i].image = image[cands[i].id] ?? -1 }
    }

    /// The hits with their images and regions, in the given order (vectors removed since the
    /// snapshot are left out).
    func hits(_ cands: [Candidate]) throws -> [SearchHit] {
        guard !cands.isEmpty else { return [] }
        let select = """
            SELECT v.id, v.kind, v.x0, v.y0, v.x1, v.y1, v.source, v.mask,
                   i.id AS image_id, i.path, i.sha256, i.bytes, i.width, i.height
            FROM vectors v LEFT JOIN images i ON i.id = v.image_id WHERE v.id IN
            """
        var rows: [Int64: Row] = [:]
        for r in try db.reading({ try IndexDatabase.rows($0, select, ids: cands.map(\.id)) }) { rows[try r.get("id")] = r }
        return try cands.compactMap { c in
            guard let r = rows[c.id] else { return nil }
            var image: IndexedImage?
            if let iid: Int64 = try r.get("image_id") {
                image = IndexedImage(id: iid, path: try r.get("path"), sha256: try r.get("sha256"), bytes: try r.get("bytes"),
                                     width: try r.get("width"), height: try r.get("height"))
            }
            var region: IndexRegion?
            if (try r.get("kind") as Int) == VectorKind.region.rawValue, let x0: Int = try r.get("x0") {
                let mask: RLEMask? = try (try r.get("mask") as String?).map { try Self.decodeMask($0, vector: c.id) }
                region = IndexRegion(box: PixelBox(x0: x0, y0: try r.get("y0"), x1: try r.get("x1"), y1: try r.get("y1")),
                                     source: (try r.get("source") as String?) ?? "", mask: mask)
            }
            return SearchHit(id: c.id, score: c.score, image: image, region: region)
        }
    }
}

extension EmbeddingIndex {
    /// A region mask as the database stores it (RLE JSON), checked: a damaged one is an error.
    static func decodeMask(_ json: String, vector id: Int64) throws -> RLEMask {
        guard let m = try? JSONDecoder().decode(RLEMask.self, from: Data(json.utf8)), m.isWellFormed else {
            throw ZeroSegError.badInput("the index database holds a malformed region mask for vector \(id): the index is damaged; rebuild it")
        }
        return m
    }
}

// MARK: - Queries

/// A search by text and/or example image, as segmentation reads class names: `text` may hold
/// synonyms ("car|automobile": a vector scores its best synonym), each encoded through the
/// template ensemble; `negatives` subtract: score = cos(v, query) − mean over the negatives of
/// cos(v, negative). With both text and an image, each synonym's vector and the image's embedding
/// are averaged.
public struct SearchQuery: Sendable, Equatable {
    public var text: String?
    public var image: RGBImage?
    public var negatives: [String]
    public var templates: [String]

    public init(text: String? = nil, image: RGBImage? = nil, negatives: [String] = [], templates: [String] = Templates.imagenet80) {
        self.text = text
        self.image = image
        self.negatives = negatives
        self.templates = templates
    }
}

extension EmbeddingIndex {
    /// The identity of `model` as an index records it.
    public static func identity(of model: CLIPModel) -> IndexIdentity {
        IndexIdentity(fingerprint: model.fingerprint, source: model.source, dim: model.config.projectionDim)
    }

    /// Checks that `model` made this index (a one-line error naming both otherwise).
    public func check(model: CLIPModel) throws { try check(Self.identity(of: model)) }

    /// Checks that the model `m` identifies made this index.
    func check(_ m: IndexIdentity) throws {
        guard m.fingerprint == identity.fingerprint && m.dim == identity.dim else {
            throw ZeroSegError.invalidArgument(
                "index \(directory.path) was made with model \(identity.source) (fingerprint \(identity.fingerprint.prefix(12))), not \(m.source) (fingerprint \(m.fingerprint.prefix(12))): search it with its own model, or index again into a new index",
                parameter: "model")
        }
    }

    /// The query vectors of `query` (see `SearchQuery`): one per synonym (or one for an image).
    public func queryVectors(_ query: SearchQuery, model: CLIPModel, cache: TextEmbeddingCache? = nil,
                             threads: Int = defaultThreads) throws -> [[Float]] {
        try check(model: model)
        let text = query.text?.trimmingCharacters(in: .whitespaces)
        guard (text?.isEmpty == false) || query.image != nil else {
            throw ZeroSegError.invalidArgument("a search needs a text or an image", parameter: "query")
        }
        let segmenter = try Segmenter(model: model, threads: threads)
        func embed(_ names: [String]) throws -> [[Float]] {
            try segmenter.queryEmbeddings(try ClassSet(classes: [names]), templates: query.templates, cache: cache)
        }
        var positives: [[Float]] = []
        if let text, !text.isEmpty {
            let names = text.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            guard !names.contains(where: \.isEmpty) else { throw ZeroSegError.invalidArgument("an empty synonym in \"\(text)\"", parameter: "query") }
            positives = try embed(names)
        }
        if let image = query.image {
            let e = try model.encodeImages([image], threads: threads)[0]
            if positives.isEmpty {
                positives = [e]
            } else {
                positives = positives.map { p in
                    var v = zip(p, e).map { $0 + $1 }
                    l2Normalize(&v)
                    return v
                }
            }
        }
        let negatives = query.negatives.map { $0.trimmingCharacters(in: .whitespaces) }
        guard !negatives.contains(where: \.isEmpty) else { throw ZeroSegError.invalidArgument("an empty negative term", parameter: "negatives") }
        if !negatives.isEmpty {
            let n = try negatives.map { try embed([$0])[0] }
            var mean = [Float](repeating: 0, count: identity.dim)
            for v in n { for i in mean.indices { mean[i] += v[i] / Float(n.count) } }
            positives = positives.map { p in zip(p, mean).map { $0 - $1 } }
        }
        return positives
    }

    /// Searches by text and/or image (`queryVectors`).
    public func search(_ query: SearchQuery, model: CLIPModel, options: SearchOptions = SearchOptions(),
                       cache: TextEmbeddingCache? = nil, threads: Int = defaultThreads) throws -> [SearchHit] {
        try search(vectors: try queryVectors(query, model: model, cache: cache, threads: threads), options: options, threads: threads)
    }

    /// Searches with a stored vector as the query (more like this region / image); the vector
    /// itself is left out of the hits.
    public func search(similarTo id: Int64, options: SearchOptions = SearchOptions(), threads: Int = defaultThreads) throws -> [SearchHit] {
        let (v, _) = try vector(id: id)
        var o = options
        o.k = min(SearchOptions.maxK, options.k + 1)
        return Array(try search(vectors: [v], options: o, threads: threads).filter { $0.id != id }.prefix(options.k))
    }
}

extension EmbeddingIndex {
    /// An image's vectors (its own first, then its regions in the order they were added), as stored.
    public func vectors(ofImage imageID: Int64) throws -> [(id: Int64, kind: VectorKind, region: IndexRegion?, vector: [Float])] {
        let ids = try db.reading { d in
            try Int64.fetchAll(d, sql: "SELECT id FROM vectors WHERE image_id = ? ORDER BY kind, id", arguments: [imageID])
        }
        let meta = try hits(ids.map { Candidate(id: $0, image: imageID, score: 0) })
        return try meta.map { h in
            let (v, kind) = try vector(id: h.id)
            return (h.id, kind, h.region, v)
        }
    }
}
