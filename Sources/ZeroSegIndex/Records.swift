import Foundation
import ZeroSegCLIP
import ZeroSegCore
import ZeroSegSegmentation

// The JSON records of `zeroseg index --json` and `zeroseg search --json` (docs/json.md): the
// common header, then the command's own keys.

/// `zeroseg index --json`: what one indexing run did.
public struct IndexRecord: Codable, Sendable, Equatable {
    public struct Settings: Codable, Sendable, Equatable {
        public var regions: RegionMode
        public var batch: Int
        public var maxProposals: Int
        public var method: DenseMethod
        public var threads: Int
        public init(regions: RegionMode, batch: Int, maxProposals: Int, method: DenseMethod, threads: Int) {
            self.regions = regions; self.batch = batch; self.maxProposals = maxProposals; self.method = method; self.threads = threads
        }
        enum CodingKeys: String, CodingKey { case regions, batch, maxProposals = "max_proposals", method, threads }
    }
    public var header: RecordHeader
    public var settings: Settings
    /// The index directory.
    public var index: String
    public var roots: [String]
    public var report: IndexingReport

    public init(header: RecordHeader, settings: Settings, index: String, roots: [String], report: IndexingReport) {
        self.header = header; self.settings = settings; self.index = index; self.roots = roots; self.report = report
    }

    enum CodingKeys: String, CodingKey { case settings, index, roots, report }
    public init(from decoder: any Decoder) throws {
        header = try RecordHeader(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        settings = try c.decode(Settings.self, forKey: .settings)
        index = try c.decode(String.self, forKey: .index)
        roots = try c.decode([String].self, forKey: .roots)
        report = try c.decode(IndexingReport.self, forKey: .report)
    }
    public func encode(to encoder: any Encoder) throws {
        try header.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(settings, forKey: .settings)
        try c.encode(index, forKey: .index)
        try c.encode(roots, forKey: .roots)
        try c.encode(report, forKey: .report)
    }
}

/// `zeroseg search --json`: the ranked hits of one query.
public struct SearchRecord: Codable, Sendable, Equatable {
    public struct Settings: Codable, Sendable, Equatable {
        public var top: Int
        public var regions: Bool
        public var onePerImage: Bool
        public var engine: SearchEngine
        public var templates: String
        public var threads: Int
        public init(top: Int, regions: Bool, onePerImage: Bool, engine: SearchEngine, templates: String, threads: Int) {
            self.top = top; self.regions = regions; self.onePerImage = onePerImage; self.engine = engine; self.templates = templates; self.threads = threads
        }
        enum CodingKeys: String, CodingKey { case top, regions, onePerImage = "one_per_image", engine, templates, threads }
    }
    public struct Query: Codable, Sendable, Equatable {
        @Nullable public var text: String?
        @Nullable public var image: String?
        public var not: [String]
        public init(text: String?, image: String?, not: [String]) { self.text = text; self.image = image; self.not = not }
    }
    public struct Hit: Codable, Sendable, Equatable {
        public var rank: Int
        /// The image file (null for vectors added without an image).
        @Nullable public var path: String?
        public var score: Float
        /// The region's box, source and (for proposals) mask; null for whole-image hits.
        @Nullable public var region: IndexRegion?
        public var id: Int64
        /// The picture's id in the index (null for vectors added without an image).
        @Nullable public var imageId: Int64?
        public init(rank: Int, hit: SearchHit) {
            self.rank = rank
            path = hit.image?.path
            score = hit.score
            region = hit.region
            id = hit.id
            imageId = hit.image?.id
        }
        enum CodingKeys: String, CodingKey { case rank, path, score, region, id, imageId = "image_id" }
    }
    public var header: RecordHeader
    public var settings: Settings
    public var index: String
    public var query: Query
    public var hits: [Hit]

    public init(header: RecordHeader, settings: Settings, index: String, query: Query, hits: [SearchHit]) {
        self.header = header; self.settings = settings; self.index = index; self.query = query
        self.hits = hits.enumerated().map { Hit(rank: $0.offset + 1, hit: $0.element) }
    }

    enum CodingKeys: String, CodingKey { case settings, index, query, hits }
    public init(from decoder: any Decoder) throws {
        header = try RecordHeader(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        settings = try c.decode(Settings.self, forKey: .settings)
        index = try c.decode(String.self, forKey: .index)
        query = try c.decode(Query.self, forKey: .query)
        hits = try c.decode([Hit].self, forKey: .hits)
    }
    public func encode(to encoder: any Encoder) throws {
        try header.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(settings, forKey: .settings)
        try c.encode(index, forKey: .index)
        try c.encode(query, forKey: .query)
        try c.encode(hits, forKey: .hits)
    }
}
