import ArgumentParser
import Foundation
import ZeroSeg

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Time the machine's sgemm (the floor), image and text encoding, and one-stage segmentation (cold and with the class cache).",
        discussion: """
            Cases: sgemm on ViT-B/16 layer shapes; one image at the model's size (best of --repeats); \
            the 11 CamVid classes x 80 ImageNet templates through the text encoder; segmentation of a \
            480x360 image (short side 336, 224/112 windows, NACLIP, PAMR) with an empty class cache \
            (cold) and with it filled (warm). Ratios are to the sgemm floor (model FLOPs / measured \
            sgemm rate). Compare only numbers from one run: machines differ from day to day.
            """)

    @OptionGroup var options: ModelOptions

    @Option(help: "Repeats per case (the best is reported).")
    var repeats: Int = 3

    @Option(help: "Also write the results as JSON to this file.")
    var json: String?

    @Option(help: "Comma-separated cases to run: image, text, segment, pamr, folder, vpt_step, tune_text_step, index, search, accuracy, large, folder_memory (default: the first five).")
    var cases: String = "image,text,segment,pamr,folder"

    @Option(help: "Precisions of the image, text and segment cases, comma-separated (fp32, bf16, int8; default: --precision). Cases at bf16 / int8 are named with the suffix [bf16] / [int8]; the accuracy case compares each of them with fp32. A precision this CPU cannot run is left out, with a notice.")
    var precisions: String?

    @Option(help: "Batch sizes of the vpt_step case (comma-separated).")
    var vptBatches: String = "1,8"

    @Option(help: "Images in the folder case.")
    var folderImages: Int = 8

    @Option(help: "Picture sizes of the large case (WxH, comma-separated; times are given as ratios to the first).")
    var largeSizes: String = "480x360,4000x3000"

    @Option(help: "Images in the folder_memory case (160x120 each).")
    var memoryImages: Int = 2000

    @Option(help: "Short side the folder_memory case rescales to (the segmentation setting; smaller is faster).")
    var memoryShortSide: Int = 336

    @Option(help: "Pictures of the index case: the first --index-count image files of this folder (sorted by name; repeated when fewer). Default: ../shared/data/camvid/val when it exists, else examples.")
    var indexPictures: String?

    @Option(help: "Pictures indexed by the index case.")
    var indexCount: Int = 64

    @Option(help: "Collection sizes of the search case (synthetic clustered vectors, d = the model's embedding width), comma-separated.")
    var searchSizes: String = "1000000"

    var selected: Set<String> { Set(cases.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }) }

    func validate() throws {
        guard repeats >= 1 else { throw ValidationError("--repeats must be at least 1") }
        if let precisions, parsedPrecisions == nil {
            throw ValidationError("--precisions \"\(precisions)\": use comma-separated fp32, bf16, int8, each once")
        }
        let unknown = selected.subtracting(Self.allCases)
        guard unknown.isEmpty else { throw ValidationError("unknown --cases \(unknown.sorted().joined(separator: ", ")): use \(Self.allCases.sorted().joined(separator: ", "))") }
        guard folderImages >= 1 else { throw ValidationError("--folder-images must be at least 1") }
        guard let sizes = parsedLargeSizes, !sizes.isEmpty else {
            throw ValidationError("--large-sizes \"\(largeSizes)\": use comma-separated WxH sizes, e.g. 480x360,4000x3000")
        }
        guard memoryImages >= 100 else { throw ValidationError("--memory-images must be at least 100") }
        guard memoryShortSide >= 16 && memoryShortSide <= 2048 else { throw ValidationError("--memory-short-side must be between 16 and 2048") }
        guard indexCount >= 1 && indexCount <= 10_000 else { throw ValidationError("--index-count must be between 1 and 10000") }
        guard let sizes = parsedSearchSizes, !sizes.isEmpty, sizes.allSatisfy({ $0 >= 1000 && $0 <= 20_000_000 }) else {
            throw ValidationError("--search-sizes must be comma-separated counts between 1000 and 20000000")
        }
    }

    static let allCases: Set<String> = ["image", "text", "segment", "pamr", "folder", "vpt_step", "tune_text_step", "index", "search", "accuracy",
                                        "large", "folder_memory"]

    /// `--large-sizes` parsed (nil when malformed).
    var parsedLargeSizes: [(width: Int, height: Int)]? {
        let parts = largeSizes.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased().split(separator: "x").map { Int($0) } }
        guard parts.allSatisfy({ $0.count == 2 && $0.allSatisfy { ($0 ?? 0) >= 1 && ($0 ?? 0) <= 40_000 } }) else { return nil }
        return parts.map { ($0[0]!, $0[1]!) }
    }

    /// `--precisions` parsed (nil when malformed or repeated).
    var parsedPrecisions: [Precision]? {
        guard let precisions else { return [options.precision] }
        let list = precisions.split(separator: ",", omittingEmptySubsequences: false).map { Precision(rawValue: $0.trimmingCharacters(in: .whitespaces)) }
        guard !list.isEmpty, !list.contains(nil), Set(list.map { $0! }).count == list.count else { return nil }
        return list.map { $0! }
    }

    var parsedSearchSizes: [Int]? {
        let parts = searchSizes.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        return parts.contains(nil) ? nil : parts.map { $0! }
    }

    static let camvid = ["sky", "building", "pole", "road", "pavement", "tree", "sign symbol", "fence", "car", "pedestrian", "bicyclist"]

    func run() throws {
        let model = try options.load()
        let t = options.threads
        var rows: [BenchReport.Case] = []
        func report(_ name: String, _ seconds: Double, flops: Double? = nil, floor: Double? = nil, extra: String = "", precision: Precision? = nil) {
            let r = BenchReport.Case(name: name, seconds: seconds, flops: flops, sgemmRate: floor, precision: precision?.rawValue)
            var line = name.padding(toLength: max(40, name.count), withPad: " ", startingAt: 0) + String(format: " %9.3f s", seconds)
            if let fl = r.floorSeconds, let ratio = r.ratioToFloor { line += String(format: "   floor %7.3f s   x%.2f", fl, ratio) }
            if !extra.isEmpty { line += "   " + extra }
            print(line)
            rows.append(r)
        }
        let loadedRSS = Bench.currentRSS()
        let rate = Bench.sgemmRate(threads: t)
        print(String(format: "sgemm (ViT-B/16 layer shapes, %d threads): %.1f GFLOP/s", t, rate / 1e9)
              + ", OpenBLAS kernels \(BLASKernels.coreName)"
              + (ProcessInfo.processInfo.environment["ZEROSEG_BLAS_REEXEC"].map { " (instead of \($0): set OPENBLAS_CORETYPE to choose)" } ?? ""))
        print("model: \(model.source)\(model.isSynthetic ? " (synthetic)" : "")")
        print("element-wise kernels: \(KernelLevel.active.rawValue) (best for this CPU: \(KernelLevel.best.rawValue); ZEROSEG_KERNELS to choose)")
        print("linear layers: oneDNN \(MatmulBackend.oneDNNVersion) (\(MatmulBackend.oneDNNISA)), fp32 through \(MatmulBackend.fp32.rawValue)"
              + " (ZEROSEG_MATMUL to choose); bf16 \(Precision.bf16.isSupported ? "native" : "not supported"), int8 \(Precision.int8.isSupported ? "native" : "not supported")")
        // The precisions of the encoder cases: each a model of its own (packed on first use, in the warm-up).
        var models: [(Precision, CLIPModel)] = []
        for p in parsedPrecisions ?? [] {
            if p == model.precision { models.append((p, model)); continue }
            guard p.isSupported else { print(Precision.resolve(p).notice!); continue }
            models.append((p, try ModelResolver.load(options.model, precision: p, warn: { printErr($0) })))
        }

        let prompts = Self.camvid.flatMap { c in Templates.imagenet80.map { Templates.fill($0, c) } }
        let lengths = model.tokenize(prompts).map(\.count)
        let textFlops = lengths.reduce(0.0) { $0 + Bench.textFLOPs(model.config, tokens: $1) }
        for (p, m) in models {
            let suffix = p == .fp32 ? "" : " [\(p.rawValue)]"
            // Image encoder at the model's size.
            if selected.contains("image") {
                let s = m.config.vision.imageSize
                let px = Synth.values(name: "pixels", seed: 3, count: 3 * s * s, amplitude: 2)
                let imgT = try Bench.best(repeats) {
                    _ = try px.withUnsafeBufferPointer { try m.encodePixels($0.baseAddress!, batch: 1, height: s, width: s, threads: t) }
                }
                report("image encoder (\(s) px, 1 image)" + suffix, imgT, flops: Bench.visionFLOPs(m.config, height: s, width: s), floor: rate, precision: p)
            }

            // Text: 11 classes x 80 templates.
            if selected.contains("text") {
                let textT = try Bench.best(max(1, repeats - 1), warmUp: false) { _ = try m.encodeText(prompts, threads: t) }
                report("text encoder (\(prompts.count) prompts)" + suffix, textT, flops: textFlops, floor: rate,
                       extra: "(floor = all tokens of every prompt; shared template prefixes need less)", precision: p)
            }

            // Segmentation of a 480x360 image.
            if selected.contains("segment") {
                let image = try Self.benchImage(width: 480, height: 360)
                let seg = try Segmenter(model: m, options: SegmentationOptions(), threads: t)
                let set = try ClassSet(classes: Self.camvid.map { [$0] })
                let (ws, hs) = Segmenter.rescaledSize(width: 480, height: 360, shortSide: 336)
                let wins = Segmenter.windows(height: hs, width: ws, window: 224, stride: 112)
                let encFlops = Double(wins.count) * Bench.visionFLOPs(m.config, height: 224, width: 224)
                var cold = Double.infinity, warm = Double.infinity, encoder = Double.infinity
                for _ in 0..<max(1, repeats - 1) {
                    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("zeroseg-bench-\(UUID().uuidString)")
                    defer { try? FileManager.default.removeItem(at: dir) }
                    let cache = TextEmbeddingCache(model: m, root: dir)
                    let t0 = Date()
                    _ = try seg.segment(image, classes: set, queries: try seg.queryEmbeddings(set, templates: Templates.imagenet80, cache: cache))
                    cold = min(cold, Date().timeIntervalSince(t0))
                    let t1 = Date()
                    let r = try seg.segment(image, classes: set, queries: try seg.queryEmbeddings(set, templates: Templates.imagenet80, cache: cache))
                    warm = min(warm, Date().timeIntervalSince(t1))
                    encoder = min(encoder, r.timings["image_encoder"] ?? .nan)
                }
                report("segment 480x360 cold (11x80 prompts)" + suffix, cold, flops: encFlops + textFlops, floor: rate, precision: p)
                report("segment 480x360 warm class cache" + suffix, warm, flops: encFlops, floor: rate,
                       extra: String(format: "(%d windows; their encoder passes %.3f s: x%.2f)", wins.count, encoder, warm / encoder), precision: p)
            }
        }
        // PAMR alone: 11 classes at 480x360, affinities included (10 iterations, dilations 8 and 16).
        if selected.contains("pamr") {
            let guide = Synth.values(name: "pamr-guide", seed: 5, count: 3 * 360 * 480, amplitude: 2)
            let masks = Synth.values(name: "pamr-masks", seed: 6, count: 11 * 360 * 480, amplitude: 1)
            let pamrT = try Bench.best(repeats) {
                let p = try PAMR(guide: guide, height: 360, width: 480, dilations: [8, 16], threads: t)
                _ = try p.refine(masks, channels: 11, iterations: 10, threads: t)
            }
            report("PAMR (11 classes at 480x360)", pamrT)
        }
        // A folder of 480x360 PNGs through the segmentation pipeline (decode next / segment /
        // write previous), warm class cache, all outputs written: images per second.
        if selected.contains("folder") {
            let n = folderImages
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("zeroseg-bench-folder-\(UUID().uuidString)")
            defer { try? FileManager.default.removeItem(at: dir) }
            let inDir = dir.appendingPathComponent("in"), outDir = dir.appendingPathComponent("out")
            try FileManager.default.createDirectory(at: inDir, withIntermediateDirectories: true)
            try FileManager.default.createDirectory(at: outDir, withIntermediateDirectories: true)
            let files = try (0..<n).map { i -> URL in
                let u = inDir.appendingPathComponent(String(format: "street%03d.png", i))
                try writeRGBPNG(try Self.benchImage(width: 480, height: 360, seed: UInt64(10 + i)), to: u)
                return u
            }
            let pipeline = try SegmentationPipeline(model: model, classes: ClassSet(classes: Self.camvid.map { [$0] }),
                                                    settings: SegmentationSettings(), threads: t,
                                                    cache: TextEmbeddingCache(model: model, root: dir.appendingPathComponent("cache")))
            var failed: [(input: URL, error: any Error)] = []
            let folderT = Bench.best(max(1, repeats - 1), warmUp: false) {
                failed = pipeline.run(files, into: outDir).failed
            }
            if let f = failed.first { throw f.error }
            report("folder of \(n) images 480x360 (pipeline)", folderT,
                   extra: String(format: "%.2f images/s, decode + segment + write", Double(n) / folderT))
        }
        // Deep visual prompts (N = 10) at the model's size: one training step (recording forward +
        // backward) against one plain forward (visionHidden) of the same batch.
        if selected.contains("vpt_step") {
            let s = model.config.vision.imageSize, prompts = try VisualPrompts(model: model, count: 10, seed: 0)
            for b in vptBatches.split(separator: ",").compactMap({ Int($0.trimmingCharacters(in: .whitespaces)) }) where b >= 1 {
                let px = Synth.values(name: "pixels", seed: 3, count: b * 3 * s * s, amplitude: 2)
                let g0 = (s / model.config.vision.patchSize) * (s / model.config.vision.patchSize) + 1
                let dTok = Synth.values(name: "vpt-upstream", seed: 4, count: b * g0 * model.config.projectionDim, amplitude: 1)
                var tapeBytes = 0
                // The three cases take turns, so that their ratios see the same machine state.
                let times = try Bench.bestInterleaved(repeats, [
                    {
                        _ = try px.withUnsafeBufferPointer {
                            try model.visionHidden(pixels: $0.baseAddress!, batch: b, height: s, width: s, threads: t)
                        }
                    },
                    {
                        let tape = try px.withUnsafeBufferPointer {
                            try model.promptedForward(pixels: $0.baseAddress!, batch: b, height: s, width: s, prompts: prompts, threads: t)
                        }
                        tapeBytes = tape.floats * 4
                        _ = try model.promptedBackward(tape, dTokens: dTok, threads: t)
                    },
                    {
                        _ = try px.withUnsafeBufferPointer {
                            try model.promptedTokens(pixels: $0.baseAddress!, batch: b, height: s, width: s, prompts: prompts, threads: t)
                        }
                    },
                ])
                let (fwd, step, inference) = (times[0], times[1], times[2])
                let flops = Double(b) * Bench.visionFLOPs(model.config, height: s, width: s)
                report("vpt plain forward (\(s) px, batch \(b))", fwd, flops: flops, floor: rate)
                report("vpt prompted forward N=10 (batch \(b))", inference, extra: String(format: "x%.2f of the plain forward", inference / fwd))
                report("vpt step N=10 (batch \(b))", step,
                       extra: String(format: "x%.2f of the plain forward; tape %.0f MB", step / fwd, Double(tapeBytes) / 1e6))
            }
        }
        // Prompt tuning (CoOp context + linear head): one step on 8 feature grids (14x14 at the
        // model's embedding size, labels 224x224) x 8 classes, the text tower batched (all prompts
        // as ragged rows), batched with the shared [SOT] ctx rows once, and one prompt at a time.
        if selected.contains("tune_text_step") {
            let d = model.config.projectionDim, names = Array(Self.camvid.prefix(8))
            let examples = try (0..<8).map { i in
                TuneExample(features: try FeatureGrid(height: 14, width: 14, dim: d,
                                                      data: Synth.values(name: "tune-bench", seed: UInt64(i), count: 14 * 14 * d, amplitude: 1)),
                            target: Synth.values(name: "tune-bench-labels", seed: UInt64(i), count: 224 * 224, amplitude: 0.5, offset: 0.5)
                                .map { Int32(min(7, $0 * 8)) }, width: 224, height: 224)
            }
            let c0 = try model.initialContext(count: 0, phrase: "a photo of a")
            let p = LearnedPrompts(context: c0.values, contextLength: c0.count, textWidth: model.config.text.hiddenSize, dim: d)
            func step(_ pass: TextPass) throws -> Double {
                try Bench.best(repeats) {
                    _ = try tuneLossAndGradients(model: model, prompts: p, seenNames: names, batch: examples, gradients: true, threads: t, text: pass)
                }
            }
            let batched = try step(.batched), single = try step(.oneAtATime), shared = try step(.prefixShared)
            report("tune step 8 images x 8 classes, text one prompt at a time", single)
            report("tune step 8 images x 8 classes, text batched", batched, extra: String(format: "x%.2f faster", single / batched))
            report("tune step 8 images x 8 classes, text batched, shared prefix once", shared,
                   extra: String(format: "x%.2f faster (x%.2f of batched)", single / shared, batched / shared))
        }
        // Indexing throughput: the pictures into a new index (read, hash, decode, one encoder pass
        // per batch of 8 for the image and dense features, regions, storage), regions as proposals
        // and as the grid; and without regions.
        if selected.contains("index") {
            let camvid = URL(fileURLWithPath: "../shared/data/camvid/val")
            let folder = indexPictures.map { URL(fileURLWithPath: $0) }
                ?? (FileManager.default.fileExists(atPath: camvid.path) ? camvid : URL(fileURLWithPath: "examples"))
            let files = try IndexBench.pictures(in: folder, count: indexCount)
            let distinct = Set(files.map(\.path)).count
            for mode in [RegionMode.proposals, .grid, .none] {
                var o = IndexingOptions()
                o.regions = mode
                let sec = try IndexBench.indexingSeconds(model: model, files: files, options: o, repeats: repeats, threads: t)
                let name = mode == .proposals ? "index (\(distinct) pictures of \(folder.lastPathComponent), regions: proposals, batch 8)"
                                              : "indexing, regions: \(mode.rawValue) (\(distinct) pictures, batch 8)"
                report(name, sec, extra: String(format: "%.2f images/s", Double(distinct) / sec))
                rows[rows.count - 1].imagesPerSecond = Double(distinct) / sec
            }
        }
        // Search: exact top-20 (BLAS over float16 shards) and the approximate index, single
        // queries on synthetic clustered vectors.
        if selected.contains("search") {
            for n in parsedSearchSizes ?? [] {
                let f = try IndexBench.search(vectors: n, dim: model.config.projectionDim, k: 20, queries: 50, approximate: true, threads: t)
                print(String(format: "search collection: %d x %d vectors: added in %.1f s, opened and first search %.2f s, %.0f bytes on disk per vector",
                             n, f.dim, f.addSeconds, f.openSeconds, f.bytesPerVector))
                report("search exact top-20 of \(n) x \(f.dim) (median of 50 queries)", f.exactMedian,
                       extra: String(format: "best %.1f ms", f.exactBest * 1000))
                rows[rows.count - 1].vectors = n
                rows[rows.count - 1].msPerQuery = f.exactMedian * 1000
                rows[rows.count - 1].bytesPerVector = f.bytesPerVector
                if let a = f.approximate {
                    report("search approximate top-20 of \(n) x \(f.dim) (median of 50 queries)", a.median,
                           extra: String(format: "recall@20 %.3f, best %.1f ms, %d lists, %d probes, built in %.1f s, %.0f bytes per vector",
                                         a.recall, a.best * 1000, a.settings.lists, a.settings.probes, a.buildSeconds, a.bytesPerVector))
                    rows[rows.count - 1].vectors = n
                    rows[rows.count - 1].msPerQuery = a.median * 1000
                    rows[rows.count - 1].recall = a.recall
                    rows[rows.count - 1].bytesPerVector = a.bytesPerVector
                }
            }
        }
        // Large pictures: segmentation (one-stage, default settings, the 11 CamVid classes, warm
        // class queries) of street-like pictures of each --large-sizes size, made in the process:
        // best time (the sizes take turns), ratio to the first size, and the peak resident size of
        // one run of each (the picture already in memory).
        if selected.contains("large") {
            let set = try ClassSet(classes: Self.camvid.map { [$0] })
            let seg = try Segmenter(model: model, options: SegmentationOptions(), threads: t)
            let cacheDir = FileManager.default.temporaryDirectory.appendingPathComponent("zeroseg-bench-large-\(UUID().uuidString)")
            defer { try? FileManager.default.removeItem(at: cacheDir) }
            let queries = try seg.queryEmbeddings(set, templates: Templates.imagenet80, cache: TextEmbeddingCache(model: model, root: cacheDir))
            let sizes = parsedLargeSizes ?? []
            var peaks: [Int] = [], buffers: [Int] = []
            for (w, h) in sizes {
                let image = try Self.benchImage(width: w, height: h)
                Bench.resetPeakRSS()
                let r = try seg.segment(image, classes: set, queries: queries)
                peaks.append(Bench.peakRSSSinceReset())
                buffers.append(r.fullResolutionBytes)
            }
            let images = try sizes.map { try Self.benchImage(width: $0.width, height: $0.height) }
            let times = try Bench.bestInterleaved(repeats, images.map { img in { _ = try seg.segment(img, classes: set, queries: queries) } })
            let first = "segment \(sizes[0].width)x\(sizes[0].height) (11 classes, warm)"
            for (i, (w, h)) in sizes.enumerated() {
                let name = "segment \(w)x\(h) (11 classes, warm)"
                report(name, times[i], extra: String(format: "x%.2f of %dx%d; peak RSS %.0f MB = %.0f MB after loading the model + %.0f MB; full-resolution buffers %.0f MB",
                                                     times[i] / times[0], sizes[0].width, sizes[0].height, Double(peaks[i]) / 1e6,
                                                     Double(loadedRSS) / 1e6, Double(peaks[i] - loadedRSS) / 1e6, Double(buffers[i]) / 1e6))
                rows[rows.count - 1].peakRSSBytes = peaks[i]
                rows[rows.count - 1].baselineRSSBytes = loadedRSS
                rows[rows.count - 1].relativeTo = first
                rows[rows.count - 1].ratio = times[i] / times[0]
            }
        }
        // Memory over a long folder: --memory-images 160x120 PNGs through the segmentation pipeline
        // (all outputs written), the resident size after 100 images and after the last.
        if selected.contains("folder_memory") {
            let n = memoryImages
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("zeroseg-bench-memory-\(UUID().uuidString)")
            defer { try? FileManager.default.removeItem(at: dir) }
            let inDir = dir.appendingPathComponent("in"), outDir = dir.appendingPathComponent("out")
            try FileManager.default.createDirectory(at: inDir, withIntermediateDirectories: true)
            try FileManager.default.createDirectory(at: outDir, withIntermediateDirectories: true)
            let files = try (0..<n).map { i -> URL in
                let u = inDir.appendingPathComponent(String(format: "small%05d.png", i))
                try writeRGBPNG(try Self.benchImage(width: 160, height: 120, seed: UInt64(1000 + i)), to: u)
                return u
            }
            var settings = SegmentationSettings()
            settings.options.shortSide = memoryShortSide
            settings.options.window = min(settings.options.window, memoryShortSide)
            settings.options.stride = min(settings.options.stride, settings.options.window)
            let pipeline = try SegmentationPipeline(model: model, classes: ClassSet(classes: Self.camvid.map { [$0] }),
                                                    settings: settings, threads: t,
                                                    cache: TextEmbeddingCache(model: model, root: dir.appendingPathComponent("cache")))
            var samples: [BenchReport.Case.RSSSample] = []
            Bench.resetPeakRSS()
            let t0 = Date()
            let summary = pipeline.run(files, into: outDir, progress: { done, _, _ in
                if done == 100 || done == n { samples.append(.init(images: done, rssBytes: Bench.currentRSS())) }
            })
            let seconds = Date().timeIntervalSince(t0)
            if let f = summary.failed.first { throw f.error }
            let a = samples.first?.rssBytes ?? 0, b = samples.last?.rssBytes ?? 0
            report("folder of \(n) images 160x120, memory" + (memoryShortSide == 336 ? "" : " (short side \(memoryShortSide))"), seconds,
                   extra: String(format: "RSS after 100 images %.1f MB, after %d %.1f MB (%+.1f MB); %.1f images/s",
                                 Double(a) / 1e6, n, Double(b) / 1e6, Double(b - a) / 1e6, Double(n) / seconds))
            rows[rows.count - 1].rssSamples = samples
            rows[rows.count - 1].peakRSSBytes = Bench.peakRSSSinceReset()
            rows[rows.count - 1].baselineRSSBytes = loadedRSS
        }
        // Each low precision against fp32 on the same inputs (random weights: this measures the
        // arithmetic, not segmentation quality).
        var accuracy: [PrecisionAccuracy]? = nil
        if selected.contains("accuracy") {
            let reference = try models.first { $0.0 == .fp32 }?.1 ?? ModelResolver.load(options.model, precision: .fp32, warn: { printErr($0) })
            let s = reference.config.vision.imageSize
            let pixels = (3...6).map { Synth.values(name: "pixels", seed: UInt64($0), count: 3 * s * s, amplitude: 2) }
            let pictures = try Self.examplePictures()
            let segmentImages = try [Self.benchImage(width: 480, height: 360)] + pictures
            let set = try ClassSet(classes: Self.camvid.map { [$0] })
            accuracy = []
            for (p, m) in models where p != .fp32 {
                let a = try PrecisionAccuracy.compare(reference: reference, candidate: m, pixels: pixels, pictures: pictures, texts: prompts,
                                                      segment: segmentImages, classes: set, templates: Templates.imagenet80, threads: t)
                accuracy?.append(a)
                func f(_ v: Double?, _ digits: Int = 5) -> String { v.map { String(format: "%.\(digits)f", $0) } ?? "-" }
                print("accuracy \(p.rawValue) vs fp32: image cos min \(f(a.imageCosMin)) mean \(f(a.imageCosMean)) (\(a.images) images), "
                      + "text cos min \(f(a.textCosMin)) mean \(f(a.textCosMean)) (\(a.texts) prompts), labels equal on "
                      + "\(f(a.labelAgreement.map { $0 * 100 }, 2))% of \(a.marginPixels) pixels with fp32 margin > \(a.margin) "
                      + "(\(f(a.labelAgreementAll.map { $0 * 100 }, 2))% of all \(a.pixels); \(a.segmented) images)")
            }
        }
        let rss = Bench.peakRSS()
        print(String(format: "peak RSS: %.0f MB", Double(rss) / 1e6))
        if let json {
            var report = BenchReport(
                header: RecordHeader(command: "bench", model: ModelRecord(model),
                                     timings: Dictionary(rows.map { ($0.name, $0.seconds) }, uniquingKeysWith: { a, _ in a })),
                settings: .init(threads: t, repeats: repeats, cases: selected.sorted(), folderImages: folderImages),
                sgemmGflops: rate / 1e9, cases: rows, peakRSSBytes: rss, openblasKernels: BLASKernels.coreName,
                openblasKernelsReplaced: ProcessInfo.processInfo.environment["ZEROSEG_BLAS_REEXEC"],
                kernels: KernelLevel.active.rawValue)
            report.accuracy = accuracy
            report.onednn = "\(MatmulBackend.oneDNNVersion) \(MatmulBackend.oneDNNISA)"
            try writeDataAtomically(JSONOutput.data(report), to: URL(fileURLWithPath: json), what: "JSON")
        }
    }

    /// The pictures in examples/ (sorted by name; none when the folder is absent).
    static func examplePictures() throws -> [RGBImage] {
        let dir = URL(fileURLWithPath: "examples")
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? [])
            .filter { [".jpg", ".png"].contains(where: $0.lowercased().hasSuffix) }.sorted()
        return try names.map { try RGBImage.load(dir.appendingPathComponent($0)) }
    }

    /// A deterministic street-like picture (timing does not depend on content).
    static func benchImage(width w: Int, height h: Int, seed: UInt64 = 4) throws -> RGBImage {
        var px = [Float](repeating: 0, count: w * h * 3)
        let noise = Synth.values(name: "bench-image", seed: seed, count: w * h, amplitude: 20)
        for y in 0..<h {
            for x in 0..<w {
                let sky = y < h / 3, road = y > 2 * h / 3
                let base: (Float, Float, Float) = sky ? (120, 160, 220) : road ? (90, 90, 95) : (x / 60 % 2 == 0 ? (150, 110, 80) : (60, 120, 50))
                let n = noise[y * w + x], i = (y * w + x) * 3
                px[i] = max(0, min(255, base.0 + n)); px[i + 1] = max(0, min(255, base.1 + n)); px[i + 2] = max(0, min(255, base.2 + n))
            }
        }
        return try RGBImage(width: w, height: h, pixels: px)
    }
}
