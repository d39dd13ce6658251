import Foundation
import ZeroSeg

// libFuzzer's entry points for every fuzz target of zeroseg (scripts/fuzz.sh builds and runs them).
// One executable holds them all (one link instead of one per target); ZEROSEG_FUZZ_TARGET picks the
// target. Each target feeds the input to one parser the way zeroseg feeds a file or a request to it
// and checks the rule for bad input: a thrown, typed error (ZeroSegError; the HTTP layer's APIError)
// and never a crash, a hang or an unbounded allocation. A crash, a sanitizer report, a timeout or an
// out-of-memory stop is a finding.

/// One fuzz target: `setUp` once per process, then `run` once per input.
struct FuzzTarget {
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

nonisolated(unsafe) private var selected: FuzzTarget?

/// Fails the run (a libFuzzer crash) when a parser throws anything but a typed error.
func expectTyped(_ error: Error, alsoAllowed: (Error) -> Bool = { _ in false }) {
    if error is ZeroSegError || alsoAllowed(error) { return }
    fatalError("untyped error \(type(of: error)): \(error)")
}

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<CInt>,
                           _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    let env = ProcessInfo.processInfo.environment
    let name = env["ZEROSEG_FUZZ_TARGET"] ?? ""
    guard let t = fuzzTargets.first(where: { $0.name == name }) else {
        let names = fuzzTargets.map { "  \($0.name): \($0.covers)" }.joined(separator: "\n")
        FileHandle.standardError.write(Data("zeroseg-fuzz: set ZEROSEG_FUZZ_TARGET to one of\n\(names)\n".utf8))
        exit(2)
    }
    do { try t.setUp() } catch {
        FileHandle.standardError.write(Data("zeroseg-fuzz: setting up \(name) failed: \(error)\n".utf8))
        exit(2)
    }
    selected = t
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    selected!.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
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
