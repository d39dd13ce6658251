import ArgumentParser
import Foundation
import ZeroSeg

struct SearchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "search",
        abstract: "Search an index (zeroseg index) by text and/or an example image: ranked images, or regions with --regions.",
        discussion: """
            TEXT is read as segmentation reads a class: synonyms with | ("car|automobile", a vector \
            scores its best synonym), each through the prompt templates. --not subtracts: score = \
            cosine to the query - mean cosine to the --not terms. With TEXT and --image, each synonym \
            is averaged with the image's embedding. Scores are cosine similarities of float16 vectors. \
            The model is the index's own unless --model names one (another model is an error).
            """)

    @Argument(help: "The index directory.")
    var index: String

    @Argument(help: "What to look for, e.g. \"a red car\" or \"car|automobile\".")
    var text: String?

    @Option(help: "An example image (JPEG or PNG) to search by.")
    var image: String?

    @Flag(help: "Rank regions (the index's proposals or grid cells), at most one per image, instead of whole images.")
    var regions = false

    @Flag(help: "With --regions: let several regions of one image be hits.")
    var allRegions = false

    @Option(help: "Number of hits (1-10000).")
    var top: Int = 20

    @Option(name: .customLong("not"), help: "A term whose similarity is subtracted (repeatable).")
    var negatives: [String] = []

    @Option(help: "Prompt templates for TEXT: imagenet80, single, or a file with one template per line ({} = the text).")
    var templates: String = "imagenet80"

    @Option(help: "Search engine: auto (exact below \(EmbeddingIndex.approximateThreshold) vectors, else the approximate index when it is up to date), exact, approximate.")
    var engine: String = "auto"

    @Option(help: "Draw the hits as a contact sheet (PNG), each matched region outlined and labelled.")
    var sheet: String?

    @Flag(help: "Print the record (SearchRecord, docs/json.md: {\"hits\": [{\"path\", \"score\", \"region\"}, ...], ...}) as one line of JSON.")
    var json = false

    @OptionGroup var options: ModelOptions

    func validate() throws {
        if (text ?? "").trimmingCharacters(in: .whitespaces).isEmpty && image == nil { throw ValidationError("give a TEXT to search for, or --image") }
        guard top >= 1 && top <= SearchOptions.maxK else { throw ValidationError("--top must be between 1 and \(SearchOptions.maxK)") }
        guard SearchEngine(rawValue: engine) != nil else { throw ValidationError("--engine must be auto, exact or approximate, not \"\(engine)\"") }
        if allRegions && !regions { throw ValidationError("--all-regions needs --regions") }
        if negatives.contains(where: { $0.trimmingCharacters(in: .whitespaces).isEmpty }) { throw ValidationError("--not is empty") }
        if let sheet, !sheet.lowercased().hasSuffix(".png") { throw ValidationError("--sheet must name a .png file") }
    }

    func run() throws {
        let dir = URL(fileURLWithPath: index)
        let idx = try EmbeddingIndex.open(at: dir)
        if regions && idx.regionMode == .none {
            throw ValidationError("--regions: the index at \(index) has no regions (it was made with --regions none)")
        }
        let queryImage = try image.map { try RGBImage.load(URL(fileURLWithPath: $0)) }
        var modelOptions = options
        if modelOptions.model == nil { modelOptions.model = idx.identity.source }  // the index's own model
        let model = try modelOptions.load()
        let tmpl = try Templates.named(templates)
        let query = SearchQuery(text: text, image: queryImage, negatives: negatives, templates: tmpl)
        let searchOptions = SearchOptions(k: top, kind: regions ? .region : .image, onePerImage: !allRegions,
                                          engine: SearchEngine(rawValue: engine)!)
        var clock = Stopwatch()
        let hits = try idx.search(query, model: model, options: searchOptions, cache: TextEmbeddingCache(model: model),
                                  threads: options.threads)
        let seconds = clock.lap()
        if let sheet { try SearchSheet.write(hits, query: text ?? image ?? "", to: URL(fileURLWithPath: sheet)) }
        if json {
            let record = SearchRecord(
                header: RecordHeader(command: "search", model: model, timings: ["search": seconds], record: true),
                settings: .init(top: top, regions: regions, onePerImage: !allRegions,
                                engine: try idx.resolvedEngine(searchOptions.engine, kind: searchOptions.kind), templates: templates,
                                threads: options.threads),
                index: index, query: .init(text: text, image: image, not: negatives), hits: hits)
            print(try JSONOutput.line(record))
        } else {
            var out = ""
            for (i, h) in hits.enumerated() {
                out += String(format: "%3d  %8.4f  ", i + 1, h.score) + (h.image?.path ?? "vector \(h.id)")
                if let r = h.region { out += "  [\(r.box.x0),\(r.box.y0),\(r.box.x1),\(r.box.y1)) \(r.source)" }
                out += "\n"
            }
            if hits.isEmpty { out = "no hits (the index holds no \(regions ? "regions" : "pictures"))\n" }
            print(out, terminator: "")
        }
    }
}
