import Foundation
import ZeroSegCore

// The JSON outputs of zeroseg share one schema (docs/json.md): every record starts with the
// same header keys (`zeroseg_version`, `command`, `model`, `date`, `timings`) and has a
// `settings` object; the rest is the command's own. Records are Codable and written with
// `JSONOutput` (keys sorted), so equal records give equal bytes.

/// The model a record was made with: the same three fields in every output.
public struct ModelRecord: Codable, Sendable, Equatable {
    /// The model folder (or what the model was loaded from).
    public var source: String
    /// `CLIPModel.fingerprint`: identifies the weights.
    public var fingerprint: String
    /// Synthetic random weights (meaningless outputs).
    public var synthetic: Bool
    /// The precision of the encoders' linear layers ("fp32", "bf16", "int8"); absent in records
    /// made before it was recorded (they are fp32).
    public var precision: String?

    public init(source: String, fingerprint: String, synthetic: Bool, precision: String? = nil) {
        self.source = source; self.fingerprint = fingerprint; self.synthetic = synthetic; self.precision = precision
    }

    public init(_ model: CLIPModel) {
        self.init(source: model.source, fingerprint: model.fingerprint, synthetic: model.isSynthetic, precision: model.precision.rawValue)
    }
}

/// The keys every zeroseg JSON record starts with.
public struct RecordHeader: Codable, Sendable, Equatable {
    /// zeroseg's version (`zeroseg_version`).
    public var zerosegVersion: String
    /// The command (pipeline) that made the record: segment, eval, tune, bench, classify.
    public var command: String
    public var model: ModelRecord
    /// When the record was made (ISO 8601); absent when timings are not recorded.
    public var date: String?
    /// Seconds per stage. Every value is 0 when timings are not recorded.
    public var timings: [String: Double]

    public init(command: String, model: ModelRecord, timings: [String: Double], date: String? = JSONOutput.now()) {
        zerosegVersion = ZeroSegCore.version
        self.command = command
        self.model = model
        self.timings = timings
        self.date = date
    }

    /// A header with `timings` as measured, or, when `record` is false, every timing 0 and no
    /// date: the record then depends only on the inputs (byte-comparable between runs).
    public init(command: String, model: CLIPModel, timings: [String: Double], record: Bool) {
        self.init(command: command, model: ModelRecord(model), timings: record ? timings : timings.mapValues { _ in 0 },
                  date: record ? JSONOutput.now() : nil)
    }

    enum CodingKeys: String, CodingKey {
        case zerosegVersion = "zeroseg_version", command, model, date, timings
    }
}

// MARK: - classify

/// `zeroseg classify --json`: per-class probabilities of one image.
public struct ClassifyRecord: Codable, Sendable, Equatable {
    public struct Settings: Codable, Sendable, Equatable {
        public var template: String
        public var threads: Int
        public init(template: String, threads: Int) { self.template = template; self.threads = threads }
    }
    public struct ClassProbability: Codable, Sendable, Equatable {
        public var name: String
        public var probability: Double
        public init(name: String, probability: Double) { self.name = name; self.probability = probability }
    }

    public var header: RecordHeader
    public var settings: Settings
    public var image: String
    /// In the order given.
    public var classes: [ClassProbability]

    public init(header: RecordHeader, settings: Settings, image: String, classes: [ClassProbability]) {
        self.header = header; self.settings = settings; self.image = image; self.classes = classes
    }

    enum CodingKeys: String, CodingKey { case settings, image, classes }
    public init(from decoder: any Decoder) throws {
        header = try RecordHeader(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        settings = try c.decode(Settings.self, forKey: .settings)
        image = try c.decode(String.self, forKey: .image)
        classes = try c.decode([ClassProbability].self, forKey: .classes)
    }
    public func encode(to encoder: any Encoder) throws {
        try header.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(settings, forKey: .settings)
        try c.encode(image, forKey: .image)
        try c.encode(classes, forKey: .classes)
    }
}

// MARK: - bench

/// `zeroseg bench --json`: the timed cases.
public struct BenchReport: Codable, Sendable, Equatable {
    public struct Settings: Codable, Sendable, Equatable {
        public var threads: Int
        public var repeats: Int
        public var cases: [String]
        public var folderImages: Int
        public init(threads: Int, repeats: Int, cases: [String], folderImages: Int) {
            self.threads = threads; self.repeats = repeats; self.cases = cases; self.folderImages = folderImages
        }
        enum CodingKeys: String, CodingKey { case threads, repeats, cases, folderImages = "folder_images" }
    }
    /// One timed case: the best time, and for cases with a FLOP count the sgemm floor.
    public struct Case: Codable, Sendable, Equatable {
        public var name: String
        public var seconds: Double
        /// Model FLOPs / the measured sgemm rate.
        public var floorSeconds: Double?
        public var ratioToFloor: Double?
        public var gflop: Double?
        /// Throughput cases (index): images per second.
        public var imagesPerSecond: Double?
        /// Search cases: vectors searched, milliseconds per query (median), recall against exact
        /// search, bytes per vector.
        public var vectors: Int?
        public var msPerQuery: Double?
        public var recall: Double?
        public var bytesPerVector: Double?
        /// The precision of the encoders' linear layers in this case (fp32 cases of older reports: absent).
        public var precision: String?
        /// Memory cases (large images, folder memory): the peak resident set size while the case
        /// ran, and the resident size after loading the model (the weights and the runtime).
        public var peakRSSBytes: Int?
        public var baselineRSSBytes: Int?
        /// Large images: seconds / the seconds of the case named `relativeTo`.
        public var relativeTo: String?
        public var ratio: Double?
        /// Folder memory: the resident size after so many images.
        public var rssSamples: [RSSSample]?
        public struct RSSSample: Codable, Sendable, Equatable {
            public var images: Int
            public var rssBytes: Int
            public init(images: Int, rssBytes: Int) { self.images = images; self.rssBytes = rssBytes }
            enum CodingKeys: String, CodingKey { case images, rssBytes = "rss_bytes" }
        }
        public init(name: String, seconds: Double, flops: Double? = nil, sgemmRate: Double? = nil, precision: String? = nil) {
            self.name = name
            self.seconds = seconds
            self.precision = precision
            if let flops, let sgemmRate {
                let floor = flops / sgemmRate
                floorSeconds = floor; ratioToFloor = seconds / floor; gflop = flops / 1e9
            }
        }
        enum CodingKeys: String, CodingKey {
            case name = "case", seconds, floorSeconds = "floor_seconds", ratioToFloor = "ratio_to_floor", gflop
            case imagesPerSecond = "images_per_second", vectors, msPerQuery = "ms_per_query", recall, bytesPerVector = "bytes_per_vector"
            case precision
            case peakRSSBytes = "peak_rss_bytes", baselineRSSBytes = "baseline_rss_bytes", relativeTo = "relative_to", ratio
            case rssSamples = "rss_samples"
        }
    }

    /// The header; its `timings` hold every case's seconds by name.
    public var header: RecordHeader
    public var settings: Settings
    public var sgemmGflops: Double
    public var cases: [Case]
    public var peakRSSBytes: Int
    public var openblasKernels: String
    /// zeroseg's own element-wise kernels in use (`KernelLevel`: avx512, avx2, portable).
    public var kernels: String
    /// The kernel set OpenBLAS chose before zeroseg replaced it (nil: not replaced).
    @Nullable public var openblasKernelsReplaced: String?
    /// Each low precision against fp32 (the `accuracy` case); absent when not run.
    public var accuracy: [PrecisionAccuracy]?
    /// oneDNN's version and the ISA it runs with (dnnl_cpu_isa_t, hex); absent in older reports.
    public var onednn: String?

    public init(header: RecordHeader, settings: Settings, sgemmGflops: Double, cases: [Case], peakRSSBytes: Int,
                openblasKernels: String, openblasKernelsReplaced: String?, kernels: String) {
        self.kernels = kernels
        self.header = header; self.settings = settings; self.sgemmGflops = sgemmGflops; self.cases = cases
        self.peakRSSBytes = peakRSSBytes; self.openblasKernels = openblasKernels
        self.openblasKernelsReplaced = openblasKernelsReplaced
    }

    enum CodingKeys: String, CodingKey {
        case settings, sgemmGflops = "sgemm_gflops", cases, peakRSSBytes = "peak_rss_bytes",
             openblasKernels = "openblas_kernels", openblasKernelsReplaced = "openblas_kernels_replaced", kernels
        case accuracy, onednn
    }
    public init(from decoder: any Decoder) throws {
        header = try RecordHeader(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        settings = try c.decode(Settings.self, forKey: .settings)
        sgemmGflops = try c.decode(Double.self, forKey: .sgemmGflops)
        cases = try c.decode([Case].self, forKey: .cases)
        peakRSSBytes = try c.decode(Int.self, forKey: .peakRSSBytes)
        openblasKernels = try c.decode(String.self, forKey: .openblasKernels)
        kernels = try c.decode(String.self, forKey: .kernels)
        _openblasKernelsReplaced = try c.decode(Nullable<String>.self, forKey: .openblasKernelsReplaced)
        accuracy = try c.decodeIfPresent([PrecisionAccuracy].self, forKey: .accuracy)
        onednn = try c.decodeIfPresent(String.self, forKey: .onednn)
    }
    public func encode(to encoder: any Encoder) throws {
        try header.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(settings, forKey: .settings)
        try c.encode(sgemmGflops, forKey: .sgemmGflops)
        try c.encode(cases, forKey: .cases)
        try c.encode(peakRSSBytes, forKey: .peakRSSBytes)
        try c.encode(openblasKernels, forKey: .openblasKernels)
        try c.encode(kernels, forKey: .kernels)
        try c.encode(_openblasKernelsReplaced, forKey: .openblasKernelsReplaced)
        try c.encodeIfPresent(accuracy, forKey: .accuracy)
        try c.encodeIfPresent(onednn, forKey: .onednn)
    }
}

/// What `zeroseg embed` prints (and `POST /v1/embed` answers): plain data, not a record:
/// `{"image": [[...]], "text": [[...]]}`, the embeddings in input order as JSON numbers
/// (each float widened to double), keys sorted, on one line.
public struct EmbeddingsOutput: Sendable, Equatable {
    public var text: [[Float]]
    public var image: [[Float]]
    public init(text: [[Float]], image: [[Float]]) { self.text = text; self.image = image }

    public func jsonLine() throws -> Data {
        try JSONSerialization.data(withJSONObject: ["text": text.map { $0.map { Double($0) } }, "image": image.map { $0.map { Double($0) } }],
                                   options: [.sortedKeys, .withoutEscapingSlashes])
    }
}
