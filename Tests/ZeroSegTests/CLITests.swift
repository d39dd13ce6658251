import Foundation
import Testing
import ZeroSeg

/// Runs the built `zeroseg` binary (next to the test bundle) and checks its output exactly.
struct CLIResult { let status: Int32; let stdout: String; let stderr: String }

/// The built `zeroseg` binary, next to the test bundle.
func zerosegExecutable() -> URL {
    let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    let exe = dir.appendingPathComponent("zeroseg")
    if FileManager.default.fileExists(atPath: exe.path) { return exe }
    return Bundle.module.bundleURL.deletingLastPathComponent().appendingPathComponent("zeroseg")  // xctest bundle layout
}

func runCLI(_ args: [String], environment: [String: String] = [:]) throws -> CLIResult {
    let p = Process()
    p.executableURL = zerosegExecutable()
    p.arguments = args
    p.currentDirectoryURL = repoRoot
    var env = ProcessInfo.processInfo.environment
    env["XDG_CACHE_HOME"] = temporaryDirectory("zeroseg-cli-cache").path
    env["ZEROSEG_MODEL"] = nil
    for (k, v) in environment { env[k] = v }
    p.environment = env
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return CLIResult(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
}

@Suite struct CLITests {
    var tiny: String { GoldenModelTests.tinyDir.path }

    @Test func tokenizePrintsOneArrayPerText() throws {
        let r = try runCLI(["tokenize", "a photo of a cat.", "", "--", "-x"])
        #expect(r.status == 0)
        #expect(r.stdout == "[49406,320,1125,539,320,2368,269,49407]\n[49406,49407]\n[49406,268,343,49407]\n")
        let long = try runCLI(["tokenize", String(repeating: "cat ", count: 100)])
        let ids = try JSONSerialization.jsonObject(with: Data(long.stdout.utf8)) as! [Int]
        #expect(ids.count == 77 && ids.first == 49406 && ids.last == 49407)
    }

    @Test func embedPrintsNormalisedEmbeddingsInOrder() throws {
        let r = try runCLI(["embed", "--model", tiny, "--text", "a cat", "--text", "a dog", "--image", "examples/chelsea.jpg"])
        #expect(r.status == 0, "\(r.stderr)")
        let obj = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: [[Double]]]
        #expect(Set(obj.keys) == ["text", "image"])
        #expect(obj["text"]!.count == 2 && obj["image"]!.count == 1)
        let model = try CLIPModel(directory: GoldenModelTests.tinyDir)
        let lib = try model.encodeText(["a cat", "a dog"])
        for (a, b) in zip(obj["text"]!, lib) { #expect(maxAbsDiff(a.map { Float($0) }, b) < 1e-6) }
        let img = try model.encodeImages([RGBImage.load(repoRoot.appendingPathComponent("examples/chelsea.jpg"))])[0]
        #expect(maxAbsDiff(obj["image"]![0].map { Float($0) }, img) < 1e-6)
        for v in obj["text"]! + obj["image"]! { #expect(abs(v.reduce(0) { $0 + $1 * $1 } - 1) < 1e-5) }
    }

    @Test func classifyTableAndJSON() throws {
        let r = try runCLI(["classify", "--model", tiny, "examples/chelsea.jpg", "--classes", "cat, dog,rocket"])
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n")
        #expect(lines.count == 4)
        #expect(lines.last == "(synthetic random weights: these probabilities are meaningless)")
        let probs = lines.dropLast().map { Double($0.split(separator: " ").last!)! }
        #expect(probs == probs.sorted(by: >))
        #expect(abs(probs.reduce(0, +) - 1) < 2e-4)
        let j = try runCLI(["classify", "--model", tiny, "examples/chelsea.jpg", "--classes", "cat,dog,rocket", "--json"])
        let obj = try JSONSerialization.jsonObject(with: Data(j.stdout.utf8)) as! [String: Any]
        // the shared JSON schema (docs/json.md): the model is an object, as in every record
        #expect((obj["model"] as? [String: Any])?["synthetic"] as? Bool == true)
        #expect(obj["zeroseg_version"] as? String == ZeroSeg.version && obj["command"] as? String == "classify")
        let classes = obj["classes"] as! [[String: Any]]
        #expect(classes.map { $0["name"] as! String } == ["cat", "dog", "rocket"])
        let model = try CLIPModel(directory: GoldenModelTests.tinyDir)
        let lib = try ZeroShotClassifier(model: model).classify(RGBImage.load(repoRoot.appendingPathComponent("examples/chelsea.jpg")),
                                                                 classes: ["cat", "dog", "rocket"])
        for (c, p) in zip(classes, lib) { #expect(abs(c["probability"] as! Double - Double(p)) < 1e-6) }
    }

    /// Bad input: one line on stderr starting with "error:", non-zero exit, nothing on stdout.
    @Test(arguments: [
        (["classify", "--model", "TINY", "examples/nope.jpg", "--classes", "a,b"], "nope.jpg"),
        (["classify", "--model", "TINY", "Tests/ZeroSegTests/Fixtures/images/inputs/jpeg_truncated.jpg", "--classes", "a,b"], "error:"),
        (["classify", "--model", "TINY", "examples/chelsea.jpg", "--classes", ""], "--classes is empty"),
        (["classify", "--model", "TINY", "examples/chelsea.jpg", "--classes", "a,,b"], "empty name"),
        (["classify", "--model", "TINY", "examples/chelsea.jpg", "--classes", "a,a"], "twice"),
        (["classify", "--model", "/nonexistent", "examples/chelsea.jpg", "--classes", "a,b"], "not found"),
        (["embed", "--model", "examples", "--text", "a"], "has no config.json"),
        (["embed", "--model", "TINY"], "at least one --text or --image"),
        (["tokenize"], "at least one TEXT"),
        (["weights", "synth", "--arch", "vit-h", "--out", "/tmp/x"], "unknown --arch"),
        (["embed", "--model", "TINY", "--threads", "0", "--text", "a"], "--threads"),
        (["nonsense-subcommand"], "error:"),
    ])
    func badInputIsOneLineError(_ args: [String], _ needle: String) throws {
        let r = try runCLI(args.map { $0 == "TINY" ? tiny : $0 })
        #expect(r.status != 0)
        #expect(r.stdout.isEmpty)
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count == 1, "stderr: \(r.stderr)")
        #expect(r.stderr.hasPrefix("error: ") && r.stderr.contains(needle), "stderr: \(r.stderr)")
    }

    @Test func missingVocabularyIsAnError() throws {
        // A model directory without vocab.json/merges.txt falls back to the bundled vocabulary; with
        // ZEROSEG_VOCAB pointing nowhere, that is a clear error.
        let d = temporaryDirectory()
        for f in ["config.json", "model.safetensors"] {
            try FileManager.default.copyItem(at: GoldenModelTests.tinyDir.appendingPathComponent(f), to: d.appendingPathComponent(f))
        }
        let ok = try runCLI(["embed", "--model", d.path, "--text", "a"])
        #expect(ok.status == 0)
        let r = try runCLI(["embed", "--model", d.path, "--text", "a"], environment: ["ZEROSEG_VOCAB": "/nonexistent.gz"])
        #expect(r.status != 0 && r.stderr.hasPrefix("error: BPE vocabulary not found"))
        try FileManager.default.copyItem(at: GoldenModelTests.tinyDir.appendingPathComponent("vocab.json"), to: d.appendingPathComponent("vocab.json"))
        let half = try runCLI(["embed", "--model", d.path, "--text", "a"])
        #expect(half.status != 0 && half.stderr.contains("merges.txt"), "\(half.stderr)")
    }

    @Test func helpForEverySubcommand() throws {
        for sub in [[], ["classify"], ["embed"], ["tokenize"], ["weights", "synth"], ["debug", "check-stages"]] {
            let r = try runCLI(sub + ["--help"])
            #expect(r.status == 0 && r.stdout.contains("USAGE:"), "\(sub)")
        }
    }
}
