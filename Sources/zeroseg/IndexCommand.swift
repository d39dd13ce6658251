import ArgumentParser
import Foundation
import ZeroSeg

struct IndexCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "index",
        abstract: "Index the images under folders for search: each image's CLIP embedding and its regions' (proposals or a grid), by content hash.",
        discussion: """
            A second run on the same index adds new and changed files, removes files that are gone, \
            and leaves the rest alone. Each batch of images is committed at once, so a run that is \
            killed leaves a usable index and the next run goes on. An index made with another model \
            is refused. Files: INDEX/index.sqlite (metadata), INDEX/*.f16 (float16 vectors).
            """)

    @Argument(help: "Folders (searched recursively for .jpg, .jpeg, .png) or image files.")
    var roots: [String] = []

    @Option(help: "The index directory (created when missing).")
    var out: String

    @Option(help: "Regions per image: proposals (mask proposals, pooled dense features), grid (2x2 and 3x3 cells) or none. Default: proposals for a new index, the index's own mode for an existing one.")
    var regions: String?

    @Option(help: "Images per encoder pass (1-64).")
    var batch: Int = 8

    @Option(help: "Proposals kept per image (1-64) with --regions proposals.")
    var maxProposals: Int = 12

    @Flag(help: "Rewrite the vector files without the slots of removed images afterwards.")
    var compact = false

    @Flag(help: "Print the run's record (IndexRecord, docs/json.md) as one line of JSON.")
    var json = false

    @Flag(help: "No progress lines on stderr.")
    var quiet = false

    @OptionGroup var options: ModelOptions

    func validate() throws {
        if roots.isEmpty { throw ValidationError("give at least one folder or image to index") }
        if let regions, RegionMode(rawValue: regions) == nil { throw ValidationError("--regions must be proposals, grid or none, not \"\(regions)\"") }
        var o = IndexingOptions()
        o.batch = batch
        o.maxProposals = maxProposals
        try validating { try o.validate() }
    }

    func run() throws {
        let dir = URL(fileURLWithPath: out)
        let model = try options.load()
        let index: EmbeddingIndex
        if EmbeddingIndex.exists(at: dir) {
            index = try EmbeddingIndex.open(at: dir, expecting: EmbeddingIndex.identity(of: model), writable: true)
            if let regions, regions != index.regionMode.rawValue {
                throw ValidationError("--regions \(regions): the index at \(out) was made with --regions \(index.regionMode.rawValue) (index into a new directory to change it)")
            }
        } else {
            index = try EmbeddingIndex.create(at: dir, identity: EmbeddingIndex.identity(of: model),
                                              regions: regions.flatMap(RegionMode.init(rawValue:)) ?? .proposals)
        }
        var o = IndexingOptions()
        o.regions = index.regionMode
        o.batch = batch
        o.maxProposals = maxProposals
        let indexer = DirectoryIndexer(embedder: try RegionEmbedder(model: model, options: o, threads: options.threads))
        let report = try indexer.update(index, roots: roots.map { URL(fileURLWithPath: $0) }) { done, total in
            if !quiet && total > 0 && (done == total || done % (batch * 4) == 0) { printErr("indexed \(done)/\(total)") }
        }
        if compact { try index.compact() }
        // The approximate index of each kind large enough for it, when the run changed something.
        for kind in VectorKind.allCases where try index.count(kind) >= EmbeddingIndex.approximateThreshold && !(try index.hasCurrentApproximate(kind)) {
            if !quiet { printErr("building the approximate index of \(try index.count(kind)) \(kind == .image ? "image" : "region") vectors") }
            try index.buildApproximate(kind, threads: options.threads)
        }
        for f in report.failed { printErr("warning: \(f.error)") }
        if json {
            let record = IndexRecord(
                header: RecordHeader(command: "index", model: model, timings: ["total": report.seconds], record: true),
                settings: .init(regions: index.regionMode, batch: batch, maxProposals: maxProposals, method: o.method, threads: options.threads),
                index: out, roots: roots, report: report)
            print(try JSONOutput.line(record))
        } else {
            print("\(out): \(report.images) images, \(report.imageVectors) image vectors, \(report.regionVectors) region vectors"
                  + " (\(report.added) added, \(report.updated) updated, \(report.removed) removed, \(report.unchanged) unchanged, \(report.failed.count) failed)"
                  + String(format: " in %.1f s", report.seconds))
        }
        if !report.failed.isEmpty { throw ExitCode(ExitCodes.failed) }
    }
}
