import Foundation
import Testing

/// Every fuzz target's committed seed corpus and past crash inputs (Tests/Fuzz/TARGET/corpus and
/// regressions), fed once each through the same harness code as the libFuzzer executable
/// (Tests/ZeroSegTests/FuzzHarness links to Tests/Fuzz/Sources), in the normal build: no sanitizer
/// and no fuzzing, so that CI replays them without the long sanitizer build (scripts/fuzz.sh
/// --replay does it under AddressSanitizer). A harness check that fails, or a parser that throws an
/// untyped error, stops the process (fatalError / precondition): that is the finding.
@Suite(.serialized) struct FuzzCorpusReplayTests {
    static let fuzzRoot = repoRoot.appendingPathComponent("Tests/Fuzz")

    static func inputs(_ target: String) -> [URL] {
        let fm = FileManager.default
        return ["corpus", "regressions"].flatMap { sub -> [URL] in
            let dir = fuzzRoot.appendingPathComponent(target).appendingPathComponent(sub)
            let names = (try? fm.contentsOfDirectory(atPath: dir.path)) ?? []
            return names.sorted().map { dir.appendingPathComponent($0) }
        }
    }

    /// The folders under Tests/Fuzz with a corpus are exactly the harness's targets.
    @Test func everyCorpusHasItsTarget() throws {
        let dirs = try FileManager.default.contentsOfDirectory(atPath: Self.fuzzRoot.path).filter {
            FileManager.default.fileExists(atPath: Self.fuzzRoot.appendingPathComponent($0).appendingPathComponent("corpus").path)
        }
        #expect(Set(dirs) == Set(fuzzTargets.map(\.name)))
        #expect(fuzzTargets.count == 14)
    }

    @Test(arguments: fuzzTargets.map(\.name)) func replay(_ name: String) throws {
        let target = try #require(fuzzTargets.first { $0.name == name })
        let files = Self.inputs(name)
        #expect(files.count >= 2, "\(name): \(files.count) inputs")
        try target.setUp()
        for f in files {
            let bytes = try Data(contentsOf: f)
            bytes.withUnsafeBytes { target.run($0) }
        }
    }
}
