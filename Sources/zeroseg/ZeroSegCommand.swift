import ArgumentParser
import Foundation
import ZeroSeg

@main
struct ZeroSegCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "zeroseg",
        abstract: "Zero-shot, open-vocabulary semantic segmentation with CLIP, on the CPU.",
        version: ZeroSeg.version,
        subcommands: [Segment.self, Eval.self, Tune.self, IndexCommand.self, SearchCommand.self, Serve.self, Classify.self, Embed.self, Tokenize.self, Weights.self, BenchCommand.self, Debug.self],
        defaultSubcommand: Segment.self
    )

    /// Every failure is one line on stderr ("error: ...") and an exit code that says its kind
    /// (`ExitCodes`); --help and --version print as usual.
    static func main() {
        useFastBLASKernels()
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let e as ZeroSegError {
            printErr("error: \(cliMessage(e))")
            Foundation.exit(ExitCodes.code(for: e.kind))
        } catch let e as ExitCode {
            Foundation.exit(e.rawValue)  // the command has already said why
        } catch {
            let code = exitCode(for: error)
            if code == .success { exit(withError: error) }
            let msg = message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            printErr("error: \(msg.hasPrefix("Error: ") ? String(msg.dropFirst(7)) : msg)")
            Foundation.exit(code == .validationFailure ? ExitCodes.usage : (code.rawValue == 0 ? ExitCodes.failed : code.rawValue))
        }
    }
}

/// The exit codes of every command (README "Exit codes").
enum ExitCodes {
    /// Some (not all) inputs of a segmentation run failed, or an error of no other kind.
    static let failed: Int32 = 1
    /// Bad command line: an unknown option, a missing or out-of-range value, a bad combination.
    static let usage: Int32 = 2
    /// An input file or folder is missing, unreadable or malformed (image, label, class list, ...).
    static let badInput: Int32 = 3
    /// The model cannot be loaded or had.
    static let badModel: Int32 = 4
    /// An output cannot be written.
    static let io: Int32 = 5
    /// Valid but not supported (an image format, a model configuration).
    static let unsupported: Int32 = 6

    static func code(for kind: ZeroSegError.Kind) -> Int32 {
        switch kind {
        case .invalidArgument: return usage
        case .badInput, .limitExceeded: return badInput
        case .badModel: return badModel
        case .io: return io
        case .unsupported: return unsupported
        case .other: return failed
        }
    }
}

/// The command-line flag of a library parameter (`ZeroSegError.Kind.invalidArgument`).
let flagOfParameter: [String: String] = [
    "shortSide": "--short-side", "window": "--window", "stride": "--stride", "logitScale": "--logit-scale",
    "threshold": "--threshold", "cropMargin": "--crop-margin", "fusionLambda": "--fusion-lambda",
    "maxProposals": "--max-proposals", "minArea": "--min-area", "masks": "--masks", "classes": "--classes",
    "background": "--background", "seen": "--seen", "unseen": "--unseen", "ignore": "--ignore", "limit": "--limit",
    "savePredictions": "--save-predictions", "epochs": "--epochs", "lr": "--lr", "batch": "--batch",
    "weightDecay": "--weight-decay", "contextLength": "--ctx", "contextPhrase": "--ctx-init",
    "stopAfterEpochs": "--stop-after-epochs", "revision": "--revision", "mode": "--mode", "proposals": "--save-proposals",
    "k": "--top", "negatives": "--not",
    "maxUploadBytes": "--max-upload-bytes", "maxPixels": "--max-pixels", "maxClasses": "--max-classes", "maxTexts": "--max-texts",
    "maxImages": "--max-images", "workers": "--workers", "queueDepth": "--queue", "requestTimeout": "--request-timeout",
    "shutdownTimeout": "--shutdown-timeout", "port": "--port", "threads": "--threads", "token": "--token",
]

/// A library error as the command line says it: a bad parameter is named by its flag.
func cliMessage(_ e: ZeroSegError) -> String {
    if case .invalidArgument(let p?) = e.kind, let flag = flagOfParameter[p] { return "\(flag): \(e.message)" }
    return e.message
}

/// Runs a library check inside `validate()`: its error becomes a usage error naming the flag.
func validating(_ body: () throws -> Void) throws {
    do { try body() } catch let e as ZeroSegError where e.isGeneric { throw ValidationError(cliMessage(e)) }
}

/// When OpenBLAS has fallen back to kernels without AVX2 on a CPU that has it (see
/// `BLASKernels`), runs this program again with OPENBLAS_CORETYPE set, once. Set
/// OPENBLAS_CORETYPE yourself to choose (or to keep) a kernel set.
func useFastBLASKernels() {
    guard getenv("ZEROSEG_BLAS_REEXEC") == nil, let core = BLASKernels.betterCoreType() else { return }
    setenv("OPENBLAS_CORETYPE", core, 1)
    setenv("ZEROSEG_BLAS_REEXEC", BLASKernels.coreName, 1)
    execv("/proc/self/exe", CommandLine.unsafeArgv)
    // execv returned: it failed; go on with the slower kernels.
}

/// Options shared by every command that runs a model.
extension Precision: ExpressibleByArgument {}

struct ModelOptions: ParsableArguments {
    @Option(help: "Model directory in the Hugging Face layout (config.json, model.safetensors, vocab.json, merges.txt). Or a hub id ORG/NAME[@REV] (Hugging Face cache, downloaded when absent). Default: $ZEROSEG_MODEL, else openai/clip-vit-base-patch16, else a synthetic random ViT-B/16 (with a warning).")
    var model: String?

    @Option(help: "Threads for matrix products (default: all cores).")
    var threads: Int = defaultThreads

    @Option(help: "Arithmetic of the encoders' linear layers: fp32 (default, equivalent to the reference), bf16 (AVX512_BF16) or int8 (per-channel weights, per-token activations; AVX512_VNNI). A CPU without the instructions runs fp32, with a notice.")
    var precision: Precision = .fp32

    func validate() throws {
        guard threads >= 1 && threads <= 256 else { throw ValidationError("--threads must be between 1 and 256") }
    }

    /// The model (`ModelResolver`); says on stderr when it tokenizes with the bundled vocabulary.
    func load() throws -> CLIPModel {
        let m = try ModelResolver.load(model, precision: precision, warn: { printErr($0) })
        if case .bundled(let url) = m.vocabularySource {
            printErr("note: \(m.source) has no vocab.json / merges.txt: tokenizing with the bundled CLIP vocabulary (\(url.lastPathComponent), \(m.tokenizer.vocabularySize) tokens)")
        }
        return m
    }
}

func printErr(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }

/// One line of JSON (keys sorted) for outputs that are plain data (tokenize, embed).
func jsonLine(_ obj: Any) throws -> String {
    let d = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys, .withoutEscapingSlashes])
    return String(decoding: d, as: UTF8.self)
}

/// Splits a comma-separated class list, trimming spaces; empty names are an error.
func parseClasses(_ s: String) throws -> [String] {
    let names = s.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
    guard !names.isEmpty, !names.allSatisfy({ $0.isEmpty }) else { throw ValidationError("--classes is empty") }
    if names.contains(where: { $0.isEmpty }) { throw ValidationError("--classes has an empty name: \"\(s)\"") }
    var seen = Set<String>()
    for n in names where !seen.insert(n).inserted { throw ValidationError("--classes names \"\(n)\" twice") }
    return names
}

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print CLIP token ids for each text, one JSON array per line (start and end tokens included, truncated to 77, no padding).")

    @Option(help: "Model directory whose vocab.json + merges.txt to use (default: the bundled BPE vocabulary).")
    var model: String?

    @Option(help: "Context length (truncation keeps the end token).")
    var contextLength: Int = 77

    @Argument(help: "Texts to tokenize (put -- before texts that start with '-').")
    var texts: [String] = []

    func validate() throws {
        if texts.isEmpty { throw ValidationError("give at least one TEXT") }
        if contextLength < 2 { throw ValidationError("--context-length must be at least 2") }
    }

    func run() throws {
        let tok: Tokenizer
        if let model {
            let dir = URL(fileURLWithPath: model)
            tok = try Tokenizer(vocabJSON: dir.appendingPathComponent("vocab.json"), merges: dir.appendingPathComponent("merges.txt"))
        } else {
            tok = try Tokenizer(bpeGzip: Tokenizer.defaultVocabURL())
        }
        var out = ""
        for t in texts { out += try jsonLine(tok.tokenize(t, contextLength: contextLength).map { Int($0) }) + "\n" }
        print(out, terminator: "")
    }
}

struct Embed: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print L2-normalised CLIP embeddings as one JSON object {\"text\": [...], \"image\": [...]}, in input order.")

    @OptionGroup var options: ModelOptions

    @Option(name: .customLong("text"), help: "A text to embed (repeatable).")
    var texts: [String] = []

    @Option(name: .customLong("image"), help: "An image file to embed (repeatable; JPEG or PNG).")
    var images: [String] = []

    func validate() throws {
        if texts.isEmpty && images.isEmpty { throw ValidationError("give at least one --text or --image") }
    }

    func run() throws {
        let decoded = try images.map { try RGBImage.load(URL(fileURLWithPath: $0)) }  // fail before loading the model
        let model = try options.load()
        let t = try texts.isEmpty ? [] : model.encodeText(texts, threads: options.threads)
        let i = try decoded.isEmpty ? [] : model.encodeImages(decoded, threads: options.threads)
        print(String(decoding: try EmbeddingsOutput(text: t, image: i).jsonLine(), as: UTF8.self))
    }
}

struct Classify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Zero-shot image classification: per-class probabilities (template \"a photo of a {}.\", the model's logit scale).")

    @OptionGroup var options: ModelOptions

    @Option(help: "Comma-separated class names, e.g. \"cat,dog\".")
    var classes: String

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    @Argument(help: "The image (JPEG or PNG).")
    var image: String

    func validate() throws { _ = try parseClasses(classes) }

    func run() throws {
        let names = try parseClasses(classes)
        let img = try RGBImage.load(URL(fileURLWithPath: image))
        let model = try options.load()
        let classifier = ZeroShotClassifier(model: model)
        let t0 = Date()
        let result = try classifier.classify(img, classes: names, threads: options.threads)
        if json {
            let record = ClassifyRecord(
                header: RecordHeader(command: "classify", model: ModelRecord(model), timings: ["total": Date().timeIntervalSince(t0)]),
                settings: .init(template: classifier.template, threads: options.threads), image: image,
                classes: zip(names, result).map { .init(name: $0.0, probability: Double($0.1)) })
            print(try JSONOutput.line(record))
        } else {
            let width = max(5, names.map(\.count).max() ?? 0)
            var out = ""
            for i in result.indices.sorted(by: { result[$0] > result[$1] }) {
                out += names[i].padding(toLength: width, withPad: " ", startingAt: 0) + "  " + String(format: "%.4f", result[i]) + "\n"
            }
            if model.isSynthetic { out += "(synthetic random weights: these probabilities are meaningless)\n" }
            print(out, terminator: "")
        }
    }
}

struct Weights: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage model weights.", subcommands: [Synth.self, Fetch.self])

    struct Synth: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a seeded random CLIP checkpoint in the Hugging Face layout (for tests, benchmarks and machines without weights).")

        @Option(help: "Architecture: \(SyntheticArch.allCases.map(\.rawValue).joined(separator: ", ")).")
        var arch: String

        @Option(help: "Random seed.")
        var seed: UInt64 = 0

        @Option(help: "Output directory (created).")
        var out: String

        func validate() throws {
            if SyntheticArch(rawValue: arch) == nil {
                throw ValidationError("unknown --arch \(arch) (choose \(SyntheticArch.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
        }

        func run() throws {
            try ZeroSeg.Synth.write(arch: SyntheticArch(rawValue: arch)!, seed: seed, to: URL(fileURLWithPath: out))
            printErr("wrote synthetic \(arch) (seed \(seed)) to \(out): random weights, not a trained model")
        }
    }
}

struct Debug: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Developer tools.", subcommands: [CheckStages.self])

    struct CheckStages: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a model on the inputs of a reference stage dump (scripts/reference/dump_stages.py) and print the max error per stage.")

        @Option(help: "Model directory.")
        var model: String

        @Option(help: "Stage dump (safetensors) made by scripts/reference/dump_stages.py.")
        var stages: String

        @Option(help: "Threads.")
        var threads: Int = defaultThreads

        func run() throws {
            let m = try CLIPModel(directory: URL(fileURLWithPath: model))
            let report = try StageCheck.run(model: m, stages: SafetensorsFile(path: stages), threads: threads)
            func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
            func lpad(_ s: String, _ n: Int) -> String { s.count >= n ? s : String(repeating: " ", count: n - s.count) + s }
            print(pad("stage", 28) + lpad("n", 9) + lpad("max|ref|", 12) + lpad("max abs err", 13) + lpad("rel err", 11))
            for r in report {
                print(pad(r.name, 28) + lpad("\(r.count)", 9) + lpad(String(format: "%.4g", r.maxRef), 12)
                      + lpad(String(format: "%.3g", r.maxAbs), 13) + lpad(String(format: "%.3g", r.relative), 11))
            }
        }
    }
}
