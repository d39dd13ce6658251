import Foundation
import ZeroSeg

// What every fuzz target shares: the target type, the list, the rule for errors and the scratch
// folder. Compiled into the libFuzzer executable (with FuzzMain.swift's entry points) and into the
// test suite (Tests/ZeroSegTests/FuzzHarness links here; FuzzCorpusReplayTests replays every
// committed corpus and regression input through the same targets, without libFuzzer).

/// One fuzz target: `setUp` once per process, then `run` once per input.
struct FuzzTarget: @unchecked Sendable {  // its closures touch only harness state, one input at a time
    var name: String
    /// What it covers (printed by `--list`).
    var covers: String
    var setUp: () throws -> Void = {}
    var run: (UnsafeRawBufferPointer) -> Void
}

let fuzzTargets: [FuzzTarget] = [
    safetensorsTarget, zipTarget, pickleTarget, torchTarget, pngTarget, jpegTarget, labelsTarget,
    tokenizerTarget, classesTarget, promptsTarget, hubConfigTarget, hubHeadersTarget, indexTarget, multipartTarget,
]

/// Fails the run (a libFuzzer crash) when a parser throws anything but a typed error.
func expectTyped(_ error: Error, alsoAllowed: (Error) -> Bool = { _ in false }) {
    if error is ZeroSegError || alsoAllowed(error) { return }
    fatalError("untyped error \(type(of: error)): \(error)")
}

/// A scratch folder of this process (removed at exit by the script's temporary folder).
let fuzzScratch: URL = {
    let base = ProcessInfo.processInfo.environment["ZEROSEG_FUZZ_SCRATCH"] ?? NSTemporaryDirectory()
    let u = URL(fileURLWithPath: base).appendingPathComponent("zeroseg-fuzz-\(getpid())", isDirectory: true)
    try? FileManager.default.createDirectory(at: u, withIntermediateDirectories: true)
    return u
}()

/// Writes the input to `name` in the scratch folder (for parsers that read files).
func writeScratch(_ bytes: UnsafeRawBufferPointer, _ name: String) -> URL {
    let u = fuzzScratch.appendingPathComponent(name)
    FileManager.default.createFile(atPath: u.path, contents: Data(bytes))
    return u
}
