import Foundation
import ZeroSeg

// libFuzzer's entry points for every fuzz target of zeroseg (scripts/fuzz.sh builds and runs them).
// One executable holds them all (one link instead of one per target); ZEROSEG_FUZZ_TARGET picks the
// target. Each target feeds the input to one parser the way zeroseg feeds a file or a request to it
// and checks the rule for bad input: a thrown, typed error (ZeroSegError; the HTTP layer's APIError)
// and never a crash, a hang or an unbounded allocation. A crash, a sanitizer report, a timeout or an
// out-of-memory stop is a finding.

nonisolated(unsafe) private var selected: FuzzTarget?

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
