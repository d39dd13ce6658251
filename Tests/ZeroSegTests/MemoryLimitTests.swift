import Foundation
import Testing
import ZeroSeg

/// Memory limits measured on a child process (`zeroseg bench`, tiny model), so that the other tests
/// running in this process do not disturb the figures: a long folder runs with flat memory, and a
/// large picture's peak stays far below what whole-image buffers would take. The full-size figures
/// (12 MP and 50 MP photos, ViT-B/16) are in docs/reliability.md.
@Suite(.disabled(if: ProcessInfo.processInfo.environment["ZEROSEG_SANITIZER"] != nil,
                 "a sanitizer's shadow memory, redzones and quarantine inflate every figure (scripts/sanitize.sh)"))
struct MemoryLimitTests {
    static func bench(_ args: [String]) throws -> BenchReport {
        let json = temporaryDirectory("zeroseg-memory").appendingPathComponent("bench.json")
        let r = try runCLI(["bench", "--model", GoldenModelTests.tinyDir.path, "--repeats", "1", "--json", json.path] + args)
        #expect(r.status == 0, "\(r.stderr)")
        return try JSONDecoder().decode(BenchReport.self, from: Data(contentsOf: json))
    }

    /// Stated limit: over a folder of 2,000 small pictures (160x120, all outputs written), the
    /// resident size after the last image is within 50 MB of the size after image 100.
    @Test func folderOf2000ImagesRunsWithFlatMemory() throws {
        let report = try Self.bench(["--cases", "folder_memory", "--memory-images", "2000", "--memory-short-side", "32"])
        let row = try #require(report.cases.first { $0.name.hasPrefix("folder of 2000 images") })
        let samples = try #require(row.rssSamples)
        #expect(samples.map(\.images) == [100, 2000])
        let growth = samples[1].rssBytes - samples[0].rssBytes
        #expect(samples[0].rssBytes > 0 && growth <= 50_000_000, "RSS grew by \(growth) bytes from image 100 to image 2000")
    }

    /// Stated limit: segmenting a 1600x1200 picture (the picture itself 23 MB as float RGB) peaks at
    /// most 200 MB above the resident size after loading the model. Whole-image buffers (PAMR
    /// affinities 64 bytes a pixel, a chunk of 8 resized and refined maps 64, the guide 12) would
    /// take about 270 MB more than that.
    @Test func largePicturePeakStaysBounded() throws {
        let report = try Self.bench(["--cases", "large", "--large-sizes", "480x360,1600x1200"])
        let row = try #require(report.cases.first { $0.name.hasPrefix("segment 1600x1200") })
        let peak = try #require(row.peakRSSBytes), base = try #require(row.baselineRSSBytes)
        #expect(peak - base <= 200_000_000, "peak \(peak) bytes, \(peak - base) above the loaded model")
        #expect(row.ratio != nil && row.relativeTo == "segment 480x360 (11 classes, warm)")
    }
}
