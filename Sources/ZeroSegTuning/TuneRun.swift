import Foundation
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegCLIP
import ZeroSegSegmentation

// Prompt tuning as `zeroseg tune` runs it (docs/tune.md): the training set, the run with its
// checkpoints, the prompt file's metadata (`TuneReport`), and learned prompts for segmentation.

// MARK: - Record

/// The metadata of a prompt file (`__metadata__["zeroseg"]`), in the shared JSON schema.
public struct TuneReport: Codable, Sendable, Equatable {
    public struct Training: Codable, Sendable, Equatable {
        public var epochs: Int
        public var epochsDone: Int
        public var lr: Double
        public var batch: Int
        public var optimizer: String
        public var weightDecay: Double
        public var seed: UInt64
        /// The number of context vectors.
        public var ctx: Int
        /// The phrase the context started from.
        @Nullable public var ctxInit: String?
        /// Training images.
        public var examples: Int

        public init(settings: TuneSettings, epochsDone: Int, contextLength: Int, contextPhrase: String?, examples: Int) {
            epochs = settings.epochs; self.epochsDone = epochsDone; lr = Double(settings.lr); batch = settings.batch
            optimizer = settings.optimizer.rawValue; weightDecay = Double(settings.weightDecay); seed = settings.seed
            ctx = contextLength; ctxInit = contextPhrase; self.examples = examples
        }
        enum CodingKeys: String, CodingKey {
            case epochs, epochsDone = "epochs_done", lr, batch, optimizer, weightDecay = "weight_decay", seed, ctx,
                 ctxInit = "ctx_init", examples
        }
    }
    public struct Loss: Codable, Sendable, Equatable {
        /// Over the whole set before training.
        public var initial: Double
        /// Mean loss of each finished epoch.
        public var epochs: [Double]
        /// Over the whole set after training (nil in checkpoints).
        @Nullable public var final: Double?
        public init(initial: Double, epochs: [Double], final: Double?) {
            self.initial = initial; self.epochs = epochs; self.final = final
        }
    }

    /// The header; `timings`: features, training, total (none in checkpoints).
    public var header: RecordHeader
    public var settings: SettingsRecord
    /// Display names of the seen classes, and of the others.
    public var seen: [String]
    public var unseen: [String]
    /// The names whose prompts were trained (each seen class's first name).
    public var promptNames: [String]
    public var training: Training
    public var loss: Loss
    /// The head ("linear", "zegclip", "denseclip"); nil in files written before heads existed
    /// (= linear).
    public var head: String?
    /// The image-conditioned head's settings (nil for the linear head).
    public var headSettings: HeadSettings?
    /// Every name of every seen class, lower-cased (the sigmoid head's calibration).
    public var seenNames: [String]?
    /// `loss.initial` and `loss.final` again under the keys of issue 13 (image-conditioned heads).
    public var initialLoss: Double?
    @Nullable public var finalLoss: Double?

    public init(header: RecordHeader, settings: SettingsRecord, seen: [String], unseen: [String], promptNames: [String],
                training: Training, loss: Loss) {
        self.header = header; self.settings = settings; self.seen = seen; self.unseen = unseen
        self.promptNames = promptNames; self.training = training; self.loss = loss
    }

    enum CodingKeys: String, CodingKey {
        case settings, seen, unseen, promptNames = "prompt_names", training, loss, head, headSettings = "head_settings",
             seenNames = "seen_names", initialLoss = "initial_loss", finalLoss = "final_loss"
    }
    public init(from decoder: any Decoder) throws {
        header = try RecordHeader(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        settings = try c.decode(SettingsRecord.self, forKey: .settings)
        seen = try c.decode([String].self, forKey: .seen)
        unseen = try c.decode([String].self, forKey: .unseen)
        promptNames = try c.decode([String].self, forKey: .promptNames)
        training = try c.decode(Training.self, forKey: .training)
        loss = try c.decode(Loss.self, forKey: .loss)
        head = try c.decodeIfPresent(String.self, forKey: .head)
        headSettings = try c.decodeIfPresent(HeadSettings.self, forKey: .headSettings)
        seenNames = try c.decodeIfPresent([String].self, forKey: .seenNames)
        initialLoss = try c.decodeIfPresent(Double.self, forKey: .initialLoss)
        finalLoss = try c.decodeIfPresent(Double.self, forKey: .finalLoss)
    }
    public func encode(to encoder: any Encoder) throws {
        try header.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(settings, forKey: .settings)
        try c.encode(seen, forKey: .seen)
        try c.encode(unseen, forKey: .unseen)
        try c.encode(promptNames, forKey: .promptNames)
        try c.encode(training, forKey: .training)
        try c.encode(loss, forKey: .loss)
        if let head {  // nil only in records read from files made before heads existed
            try c.encode(head, forKey: .head)
            try c.encodeIfPresent(headSettings, forKey: .headSettings)
            try c.encodeIfPresent(seenNames, forKey: .seenNames)
            try c.encodeIfPresent(initialLoss, forKey: .initialLoss)
            try c.encode(_finalLoss, forKey: .finalLoss)
        }
    }
}

// MARK: - Data set

/// The training set of prompt tuning: image/label pairs and the seen classes. Inductive: the
/// unseen classes' names are never used, and their pixels (and the ignore label's) are left out
/// of the loss.
public struct TuneDataset: Sendable {
    public let classes: ClassSet
    /// The seen classes' indices, sorted.
    public let seen: [Int]
    public let pairs: [EvalPair]
    public let images: URL, labels: URL
    public let ignore: Int
    public let limit: Int?

    /// The names whose prompts are trained: each seen class's first name.
    public var names: [String] { seen.map { classes.classes[$0][0] } }

    /// Pairs the folders (`Evaluation.pairs`; the first `limit` pairs). No seen class, or no
    /// pair, is an error.
    public init(images: URL, labels: URL, classes: ClassSet, seen: Set<Int>, ignore: Int = 255, limit: Int? = nil) throws {
        guard !seen.isEmpty else { throw ZeroSegError.invalidArgument("every class is unseen: nothing to train on", parameter: "seen") }
        guard (0...255).contains(ignore) else { throw ZeroSegError.invalidArgument("the ignore value must be between 0 and 255", parameter: "ignore") }
        if let limit, limit < 1 { throw ZeroSegError.invalidArgument("the limit must be at least 1", parameter: "limit") }
        if let bad = seen.first(where: { $0 < 0 || $0 >= classes.classes.count }) {
            throw ZeroSegError.invalidArgument("seen class index \(bad) is not a class", parameter: "seen")
        }
        var pairs = try Evaluation.pairs(images: images, labels: labels).pairs
        if let limit { pairs = Array(pairs.prefix(limit)) }
        guard !pairs.isEmpty else { throw ZeroSegError.badInput("\(images.path): no image/label pairs", file: images.path) }
        self.classes = classes; self.seen = seen.sorted(); self.pairs = pairs
        self.images = images; self.labels = labels; self.ignore = ignore; self.limit = limit
    }

    /// A pair's image and its label map as seen-class indices ([H, W], −1 = ignored: the ignore
    /// label and unseen classes); throws unless the sizes agree and every label is a class or the
    /// ignore value.
    func load(_ p: EvalPair) throws -> (image: RGBImage, target: [Int32]) {
        var remap = [Int32](repeating: -1, count: 256)
        for (k, c) in seen.enumerated() { remap[c] = Int32(k) }
        let label = try Evaluation.loadLabelMap(p.label)
        let image = try RGBImage.load(p.image)
        guard image.width == label.width && image.height == label.height else {
            throw ZeroSegError.badInput("\(p.label.path) is \(label.width)x\(label.height), \(p.image.path) is \(image.width)x\(image.height)",
                                        file: p.label.path)
        }
        try ConfusionMatrix.checkLabels(label.values, numClasses: classes.classes.count, ignore: ignore, source: p.label.path)
        return (image, label.values.map { ignore == Int($0) ? -1 : remap[Int($0)] })
    }

    /// The training examples: each image's dense features from the frozen encoder (from `cache`
    /// when it has them; stored there otherwise) and its label map as seen-class indices.
    /// `progress(done, total, stem)` before each image. Returns how many came from the cache.
    public func examples(segmenter: Segmenter, cache: FeatureCache? = nil,
                         progress: ((_ done: Int, _ total: Int, _ stem: String) -> Void)? = nil) throws -> (examples: [TuneExample], cached: Int) {
        var out: [TuneExample] = [], cached = 0
        for (i, p) in pairs.enumerated() {
            progress?(i, pairs.count, p.stem)
            let (image, target) = try load(p)
            let features: FeatureGrid
            if let c = cache?.load(p.image) {
                features = c
                cached += 1
            } else {
                features = try segmenter.featureGrid(image)
                cache?.store(features, for: p.image)
            }
            out.append(TuneExample(features: features, target: target, width: image.width, height: image.height))
        }
        progress?(pairs.count, pairs.count, "done")
        return (out, cached)
    }
}

// MARK: - The run

/// What `zeroseg tune` sets besides the data set and the segmentation settings.
public struct TuneOptions: Sendable, Equatable {
    public var training = TuneSettings()
    /// Learned context vectors (ignored with `contextPhrase`).
    public var contextLength = 16
    /// Start from the token embeddings of this phrase ("a photo of a"); its token count sets the
    /// context length.
    public var contextPhrase: String?
    /// Stop after this many epochs (the checkpoint is kept; continue with `resume`).
    public var stopAfterEpochs: Int?
    /// Continue from the checkpoint when it exists.
    public var resume = false
    /// Read and write the dense-feature cache (`FeatureCache`).
    public var featureCache = true
    /// Timings and the date in the report; false: every timing 0 and no date.
    public var timings = true
    /// The head and its settings (default: zegclip with 10 visual prompts, as the CLI). With
    /// `head.head` = .linear (the linear head of Prompts.swift) set `head.visualPrompts` to 0; the
    /// other head settings are then unused.
    public var head = HeadSettings()
    public init() {}

    /// Errors of kind `.invalidArgument(parameter:)`.
    public func validate() throws {
        try training.validate()
        try head.validate()
        if contextPhrase == nil && !(1...60).contains(contextLength) {
            throw ZeroSegError.invalidArgument("the number of context vectors must be between 1 and 60", parameter: "contextLength")
        }
        if let s = stopAfterEpochs, s < 1 || s >= training.epochs {
            throw ZeroSegError.invalidArgument("stopping after \(s) epochs: must be between 1 and the number of epochs - 1",
                                               parameter: "stopAfterEpochs")
        }
    }
}

/// How a tuning run ended.
public enum TuneOutcome: Sendable {
    /// Trained all epochs; the prompt file is written and the checkpoint removed.
    case finished(TuneResult)
    /// Stopped after `epoch` (`TuneOptions.stopAfterEpochs`); the checkpoint holds the state.
    case stopped(epoch: Int, of: Int, checkpoint: URL)
}

public struct TuneResult: @unchecked Sendable {
    public let report: TuneReport
    /// The linear head's prompts (nil for an image-conditioned head).
    public let prompts: LearnedPrompts?
    /// An image-conditioned head's prompts (nil for the linear head).
    public var headPrompts: HeadPrompts? = nil
    /// Training images, and how many of their features came from the cache.
    public let examples: Int
    public let cachedFeatures: Int
}

/// Prompt tuning as `zeroseg tune` runs it: the dense features of the training set once, then
/// CoOp context + pixel-text head training with a checkpoint (`output` + ".ckpt") after every
/// epoch, then the prompt file at `output`.
public final class PromptTraining: @unchecked Sendable {
    public let dataset: TuneDataset
    public let segmentation: SegmentationSettings
    public let options: TuneOptions
    /// The prompt file to write.
    public let output: URL
    public var checkpoint: URL { URL(fileURLWithPath: output.path + ".ckpt") }
    /// The class file the classes came from (recorded only).
    public var classesFile: String?

    /// Checks the options (one-stage settings without prompts only) and that `output` can be
    /// written.
    public init(dataset: TuneDataset, segmentation: SegmentationSettings, options: TuneOptions, output: URL) throws {
        try options.validate()
        try segmentation.validate()
        guard segmentation.mode == .oneStage, segmentation.prompts == nil else {
            throw ZeroSegError.invalidArgument("tuning learns one-stage prompts: no two-stage mode, no prompts", parameter: "mode")
        }
        try checkWritableFile(output, what: "prompt file")
        self.dataset = dataset; self.segmentation = segmentation; self.options = options; self.output = output
    }

    /// Trains. `features(done, total, stem)` while the features are computed; `step(epoch,
    /// step, steps, loss)` after each step; `resumed(checkpoint, epoch)` when training continues
    /// from a checkpoint.
    public func run(model: CLIPModel, threads: Int = defaultThreads,
                    features: ((_ done: Int, _ total: Int, _ stem: String) -> Void)? = nil,
                    step: ((_ epoch: Int, _ step: Int, _ steps: Int, _ loss: Float) -> Void)? = nil,
                    resumed: ((_ checkpoint: URL, _ epoch: Int) -> Void)? = nil) throws -> TuneOutcome {
        if options.head.head != .linear {
            return try runHead(model: model, threads: threads, examples: features, step: step, resumed: resumed)
        }
        let t0 = Date()
        let segmenter = try Segmenter(model: model, options: segmentation.options, threads: threads)
        let cache = options.featureCache ? FeatureCache(model: model, options: segmenter.options) : nil
        let (examples, cached) = try dataset.examples(segmenter: segmenter, cache: cache, progress: features)
        let tFeatures = Date().timeIntervalSince(t0)

        let c0 = try model.initialContext(count: options.contextLength, phrase: options.contextPhrase, seed: options.training.seed)
        let prompts = LearnedPrompts(context: c0.values, contextLength: c0.count, textWidth: model.config.text.hiddenSize,
                                     dim: model.config.projectionDim, logScale: logf(segmentation.options.logitScale))
        let names = dataset.names
        var training = options.training
        training.threads = threads  // the run's thread count drives the steps too
        var tuner = try PromptTuner(model: model, names: names, examples: examples, prompts: prompts, settings: training)
        let first = try tuneLossAndGradients(model: model, prompts: prompts, seenNames: names, batch: examples, gradients: false, threads: threads).loss
        if options.resume, FileManager.default.fileExists(atPath: checkpoint.path) {
            try PromptCheckpoint.restore(&tuner, from: checkpoint, model: model)
            resumed?(checkpoint, tuner.epoch)
        }
        let t1 = Date()
        struct Stopped: Error { let epoch: Int }
        do {
            try tuner.train(progress: { e, s, n, loss in step?(e, s, n, loss) }, endOfEpoch: { t in
                try PromptCheckpoint.write(t, report: report(t, model: model, threads: threads, initialLoss: first, timings: [:]),
                                           to: checkpoint)
                if t.epoch == options.stopAfterEpochs { throw Stopped(epoch: t.epoch) }
            })
        } catch let s as Stopped {
            return .stopped(epoch: s.epoch, of: options.training.epochs, checkpoint: checkpoint)
        }
        let tTrain = Date().timeIntervalSince(t1)
        let final = try tuneLossAndGradients(model: model, prompts: tuner.prompts, seenNames: names, batch: examples, gradients: false, threads: threads).loss
        let r = report(tuner, model: model, threads: threads, initialLoss: first, finalLoss: final,
                       timings: ["features": tFeatures, "training": tTrain, "total": Date().timeIntervalSince(t0)])
        try PromptFile(prompts: tuner.prompts, report: r).write(to: output)
        try? FileManager.default.removeItem(at: checkpoint)
        return .finished(TuneResult(report: r, prompts: tuner.prompts, examples: examples.count, cachedFeatures: cached))
    }

    /// Training of an image-conditioned head: crops with the encoder in the loop (HeadTraining.swift).
    func runHead(model: CLIPModel, threads: Int, examples progress: ((_ done: Int, _ total: Int, _ stem: String) -> Void)?,
                 step: ((_ epoch: Int, _ step: Int, _ steps: Int, _ loss: Float) -> Void)?,
                 resumed: ((_ checkpoint: URL, _ epoch: Int) -> Void)?) throws -> TuneOutcome {
        let t0 = Date()
        let hs = options.head
        let examples = try dataset.headExamples(model: model, shortSide: segmentation.options.shortSide, crop: hs.crop, progress: progress)
        let tData = Date().timeIntervalSince(t0)
        let c0 = try model.initialContext(count: options.contextLength, phrase: options.contextPhrase, seed: options.training.seed)
        let d = dataset
        let seenNames = d.seen.flatMap { d.classes.classes[$0] }.map { $0.lowercased() }
        let prompts = try HeadPrompts(model: model, settings: hs, context: c0.values, contextLength: c0.count, seenNames: seenNames,
                                      seed: options.training.seed, logitScale: segmentation.options.logitScale)
        var training = options.training
        training.threads = threads
        var tuner = try HeadTuner(model: model, names: d.names, examples: examples, prompts: prompts, settings: training)
        let first = try tuner.datasetLoss()
        if options.resume, FileManager.default.fileExists(atPath: checkpoint.path) {
            try PromptCheckpoint.restore(&tuner, from: checkpoint, model: model)
            resumed?(checkpoint, tuner.epoch)
        }
        let t1 = Date()
        struct Stopped: Error { let epoch: Int }
        do {
            try tuner.train(progress: { e, s, n, loss in step?(e, s, n, loss) }, endOfEpoch: { t in
                try PromptCheckpoint.write(t, report: report(t, model: model, threads: threads, initialLoss: first, timings: [:]), to: checkpoint)
                if t.epoch == options.stopAfterEpochs { throw Stopped(epoch: t.epoch) }
            })
        } catch let s as Stopped {
            return .stopped(epoch: s.epoch, of: options.training.epochs, checkpoint: checkpoint)
        }
        let tTrain = Date().timeIntervalSince(t1)
        let final = try tuner.datasetLoss()
        let r = report(tuner, model: model, threads: threads, initialLoss: first, finalLoss: final,
                       timings: ["features": tData, "training": tTrain, "total": Date().timeIntervalSince(t0)])
        try HeadPromptFile(prompts: tuner.prompts, report: r).write(to: output)
        try? FileManager.default.removeItem(at: checkpoint)
        var result = TuneResult(report: r, prompts: nil, examples: examples.count, cachedFeatures: 0)
        result.headPrompts = tuner.prompts
        return .finished(result)
    }

    /// The report of an image-conditioned head's tuner.
    public func report(_ t: HeadTuner, model: CLIPModel, threads: Int, initialLoss: Float, finalLoss: Float? = nil,
                       timings: [String: Double]) -> TuneReport {
        var r = report(settings: t.settings, epochsDone: t.epoch, contextLength: t.prompts.contextLength, examples: t.examples.count,
                       epochLosses: t.epochLosses, model: model, threads: threads, initialLoss: initialLoss, finalLoss: finalLoss,
                       timings: timings)
        r.head = t.prompts.settings.head.rawValue
        r.headSettings = t.prompts.settings
        r.seenNames = t.prompts.seenNames.sorted()
        r.initialLoss = Double(initialLoss)
        r.finalLoss = finalLoss.map(Double.init)
        return r
    }

    /// The report of a tuner's state.
    public func report(_ t: PromptTuner, model: CLIPModel, threads: Int, initialLoss: Float, finalLoss: Float? = nil,
                       timings: [String: Double]) -> TuneReport {
        var r = report(settings: t.settings, epochsDone: t.epoch, contextLength: t.prompts.contextLength, examples: t.examples.count,
                       epochLosses: t.epochLosses, model: model, threads: threads, initialLoss: initialLoss, finalLoss: finalLoss,
                       timings: timings)
        r.head = HeadKind.linear.rawValue
        r.initialLoss = Double(initialLoss)
        r.finalLoss = finalLoss.map(Double.init)
        return r
    }

    func report(settings ts: TuneSettings, epochsDone: Int, contextLength: Int, examples: Int, epochLosses: [Float], model: CLIPModel,
                threads: Int, initialLoss: Float, finalLoss: Float?, timings: [String: Double]) -> TuneReport {
        let d = dataset
        let settings = SettingsRecord(segmentation: segmentation.record(background: d.classes.background),
                                      dataset: DatasetRecord(images: d.images.path, labels: d.labels.path, classesFile: classesFile,
                                                             ignore: d.ignore, reduceZeroLabel: nil, limit: d.limit, threads: threads))
        return TuneReport(header: RecordHeader(command: "tune", model: model, timings: timings, record: options.timings),
                          settings: settings, seen: d.seen.map { d.classes.displayNames[$0] },
                          unseen: d.classes.classes.indices.filter { !d.seen.contains($0) }.map { d.classes.displayNames[$0] },
                          promptNames: d.names,
                          training: .init(settings: ts, epochsDone: epochsDone, contextLength: contextLength,
                                          contextPhrase: options.contextPhrase, examples: examples),
                          loss: .init(initial: Double(initialLoss), epochs: epochLosses.map(Double.init), final: finalLoss.map(Double.init)))
    }
}

/// The resumable checkpoint of a tuning run: a prompt file (`PromptFile`, with the report of
/// the epochs done) plus the optimiser state: `optimizer.m`, `optimizer.v` [n], `optimizer.step`
/// [] and `epoch` [].
public enum PromptCheckpoint {
    public static func write(_ t: PromptTuner, report: TuneReport, to url: URL) throws {
        let s = t.optimizer.state
        try PromptFile(prompts: t.prompts, report: report).write(to: url, extra: [
            ("optimizer.m", [s.m.count], s.m), ("optimizer.v", [s.v.count], s.v),
            ("optimizer.step", [], [Float(t.optimizer.step)]), ("epoch", [], [Float(t.epoch)]),
        ])
    }

    /// Restores prompts, optimiser state, epoch and epoch losses into `t`.
    public static func restore(_ t: inout PromptTuner, from url: URL, model: CLIPModel) throws {
        try classifyingErrors(as: .badInput(file: url.path)) {
            let f = try PromptFile(url: url, model: model)
            let st = try SafetensorsFile(path: url.path)
            guard f.prompts.contextLength == t.prompts.contextLength else { throw ZeroSegError("\(url.path): another context length") }
            t.prompts = f.prompts
            try t.optimizer.restore(step: Int(try st.floats("optimizer.step")[0]), m: try st.floats("optimizer.m"), v: try st.floats("optimizer.v"))
            t.epoch = Int(try st.floats("epoch")[0])
            if let l = f.info["loss"] as? [String: Any], let e = l["epochs"] as? [Double] { t.epochLosses = e.map(Float.init) }
        }
    }
}

extension PromptCheckpoint {
    /// An image-conditioned head's checkpoint: its prompt file plus `optimizer.m`, `optimizer.v`,
    /// `optimizer.step` and `epoch`.
    public static func write(_ t: HeadTuner, report: TuneReport, to url: URL) throws {
        try HeadPromptFile(prompts: t.prompts, report: report).write(to: url, extra: [
            ("optimizer.m", [t.optimizer.m.count], t.optimizer.m), ("optimizer.v", [t.optimizer.v.count], t.optimizer.v),
            ("optimizer.step", [], [Float(t.optimizer.step)]), ("epoch", [], [Float(t.epoch)]),
        ])
    }

    public static func restore(_ t: inout HeadTuner, from url: URL, model: CLIPModel) throws {
        try classifyingErrors(as: .badInput(file: url.path)) {
            let f = try HeadPromptFile(url: url, model: model)
            let st = try SafetensorsFile(path: url.path)
            guard f.prompts.parameters.sameLayout(as: t.prompts.parameters), f.prompts.settings == t.prompts.settings else {
                throw ZeroSegError("\(url.path): a checkpoint of other head settings")
            }
            t.prompts = f.prompts
            try t.optimizer.restore(step: Int(try st.floats("optimizer.step")[0]), m: try st.floats("optimizer.m"), v: try st.floats("optimizer.v"))
            t.epoch = Int(try st.floats("epoch")[0])
            t.epochLosses = (f.report?.loss.epochs ?? []).map(Float.init)
        }
    }
}

// MARK: - Learned prompts for segmentation

extension SegmentationSettings {
    /// The learned prompts `prompts` names (nil when none), checked against the model (made for
    /// another model: an error of kind `.badInput(file:)`). `warn` gets one line when they were
    /// tuned with other settings that shape the features (method, short side, windows).
    public func loadPrompts(model: CLIPModel, warn: (String) -> Void = { _ in }) throws -> (any PromptHead)? {
        guard let prompts else { return nil }
        let url = URL(fileURLWithPath: prompts)
        if try HeadPromptFile.format(of: url) == HeadPromptFile.format {
            // An image-conditioned head runs its own prompted encoder: the dense method is not used.
            return try HeadPromptFile(url: url, model: model).prompts
        }
        let f = try PromptFile(url: url, model: model)
        if let made = f.info["settings"] as? [String: Any] {
            // compared after a JSON round trip, as the file's settings went through one
            let now = (try? JSONOutput.data(record(background: [])))
                .flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] } ?? [:]
            let keys = ["method", "short_side", "window", "stride", "windows"]
            let differ = keys.filter { k in "\(made[k] ?? "-")" != "\(now[k] ?? "-")" }
            if !differ.isEmpty {
                warn("prompts \(prompts) were tuned with other settings (\(differ.map { "\($0) \(made[$0] ?? "-")" }.joined(separator: ", ")))")
            }
        }
        return f.prompts
    }
}
