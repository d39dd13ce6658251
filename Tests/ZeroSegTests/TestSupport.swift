import Foundation
import ZeroSeg

/// The repository root (tests find vocab/, examples/ and ../shared relative to it).
let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// A fresh temporary directory.
func temporaryDirectory(_ tag: String = "zeroseg-test") -> URL {
    let u = FileManager.default.temporaryDirectory.appendingPathComponent("\(tag)-\(UUID().uuidString)")
    try! FileManager.default.createDirectory(at: u, withIntermediateDirectories: true)
    return u
}

/// Deterministic pseudo-random floats in [-1, 1) for kernel tests.
func randomFloats(_ n: Int, seed: UInt64) -> [Float] {
    Synth.values(name: "test", seed: seed, count: n, amplitude: 1)
}

func maxAbsDiff(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count)
    return zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) }
}
