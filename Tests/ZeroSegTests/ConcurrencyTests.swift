import Foundation
import Testing
import ZeroSeg
import ZeroSegTestSupport

// Thread safety and determinism (see Sources/ZeroSegCore/Threads.swift): one model and one
// segmenter used from several OS threads at once give the same bits as serial use, whatever the
// other callers' thread counts; a given input and thread count give the same bits every time;
// labels on the golden fixtures do not depend on the thread count. `scripts/tsan.sh` runs
// `ConcurrencyTests` under ThreadSanitizer.

/// Runs `body(thread, iteration)` on `threads` new OS threads at once (released together),
/// `iterations` times on each; returns the results [thread][iteration].
func onThreads<T: Sendable>(_ threads: Int, iterations: Int, _ body: @escaping @Sendable (Int, Int) throws -> T) throws -> [[T]] {
    let box = ThreadResults<T>(threads)
    let group = DispatchGroup()
    let start = DispatchSemaphore(value: 0)
    for t in 0..<threads {
        group.enter()
        let thread = Thread {
            start.wait()
            var mine: [Result<T, any Error>] = []
            for i in 0..<iterations { mine.append(Result { try body(t, i) }) }
            box.lock.withLock { box.results[t] = mine }
            group.leave()
        }
        thread.stackSize = 8 << 20
        thread.start()
    }
    for _ in 0..<threads { start.signal() }
    group.wait()
    return try box.lock.withLock { box.results }.map { try $0.map { try $0.get() } }
}

/// Results of `onThreads`, one slot per thread, behind a lock.
final class ThreadResults<T>: @unchecked Sendable {
    let lock = NSLock()
    var results: [[Result<T, any Error>]]
    init(_ n: Int) { results = Array(repeating: [], count: n) }
}

@Suite struct ConcurrencyTests {
    static let model = SegmentationGoldenTests.tinyModel
    static let image = SegmentTests.image  // 75 x 50
    static let image2: RGBImage = try! resizeBilinear(SegmentTests.image, width: 41, height: 37)
    static let texts = ["a photo of a cat.", "a photo of a dog.", "grass", "a bright photo of a sofa.", "sky"]
    static let set = try! ClassSet.parse("cat,grass|lawn,wall,dog", background: "sky")

    static func options() -> SegmentationOptions {
        var o = SegmentationOptions()
        o.shortSide = 40; o.window = 32; o.stride = 16; o.pamrDilations = [2, 4]
        return o
    }

    static func twoStageOptions() -> TwoStageOptions {
        var t = TwoStageOptions()
        t.regionFeatures = .crop
        t.proposalSettings.maxProposals = 5
        return t
    }

    /// What one call returns, as bytes (floats by bit pattern).
    enum Op: Int, CaseIterable { case text, images, segment, twoStage }

    /// Shared values: one model, and per thread count one segmenter and one two-stage segmenter.
    struct Shared: @unchecked Sendable {
        let segmenters: [Int: Segmenter]
        let twoStage: [Int: TwoStageSegmenter]
        let queries: [[Float]]
        init(threadCounts: [Int]) throws {
            var s: [Int: Segmenter] = [:], t: [Int: TwoStageSegmenter] = [:]
            for k in threadCounts {
                s[k] = try Segmenter(model: ConcurrencyTests.model, options: ConcurrencyTests.options(), threads: k)
                t[k] = try TwoStageSegmenter(segmenter: s[k]!, options: ConcurrencyTests.twoStageOptions())
            }
            segmenters = s; twoStage = t
            queries = try s[threadCounts[0]]!.queryEmbeddings(ConcurrencyTests.set, templates: ["a photo of a {}.", "a {}."])
        }
    }

    static func run(_ op: Op, threads k: Int, _ shared: Shared) throws -> [UInt32] {
        func bits(_ v: [Float]) -> [UInt32] { v.map(\.bitPattern) }
        switch op {
        case .text:
            return bits(try model.encodeText(texts, threads: k).flatMap { $0 })
        case .images:
            return bits(try model.encodeImages([image, image2], threads: k).flatMap { $0 })
        case .segment:
            let r = try shared.segmenters[k]!.segment(image, classes: set, queries: shared.queries, wantScores: true)
            return r.labels.map(UInt32.init) + bits(r.scores!) + bits(r.meanScore.map(Float.init))
        case .twoStage:
            let r = try shared.twoStage[k]!.segment(image, classes: set, queries: shared.queries, wantScores: true)
            return r.result.labels.map(UInt32.init) + bits(r.result.scores!) + bits(r.regions.flatMap(\.probabilities))
                + r.regions.flatMap { $0.mask.bits.map(UInt32.init) }
        }
    }

    /// encodeText, encodeImages, one-stage and two-stage segment from 4 threads at once on one
    /// shared model and shared segmenters, each call with its own thread count (1, 2 or 4), in a
    /// different order on each thread: every result equals the serial one bit for bit.
    @Test func sharedModelFromFourThreadsEqualsSerial() throws {
        let counts = [1, 2, 4]
        let shared = try Shared(threadCounts: counts)
        var serial: [String: [UInt32]] = [:]
        for op in Op.allCases { for k in counts { serial["\(op) \(k)"] = try Self.run(op, threads: k, shared) } }
        let ops = Op.allCases.count, iterations = 2 * ops
        let got = try onThreads(4, iterations: iterations) { t, i -> (String, [UInt32]) in
            let op = Op(rawValue: (t + i) % ops)!, k = counts[(t + i / ops) % counts.count]
            return ("\(op) \(k)", try Self.run(op, threads: k, shared))
        }
        var compared = 0
        for (t, results) in got.enumerated() {
            for (i, (key, bits)) in results.enumerated() {
                #expect(bits == serial[key]!, "thread \(t), iteration \(i): \(key) differs from the serial result")
                compared += 1
            }
        }
        #expect(compared == 4 * iterations)
    }

    /// The same input and thread count give the same bytes run after run (here: three runs, the
    /// later ones while another thread computes with another thread count).
    @Test(arguments: [1, 2, 4])
    func sameThreadCountSameBits(_ k: Int) throws {
        let shared = try Shared(threadCounts: [k, k == 4 ? 1 : 4])
        for op in Op.allCases {
            let first = try Self.run(op, threads: k, shared)
            let other = k == 4 ? 1 : 4
            let again = try onThreads(2, iterations: 1) { t, _ in try Self.run(op, threads: t == 0 ? k : other, shared) }
            #expect(again[0][0] == first, "\(op), \(k) threads: a second run differs")
            #expect(try Self.run(op, threads: k, shared) == first, "\(op), \(k) threads: a third run differs")
        }
    }

    /// Labels on the one-stage golden fixtures are the same for 1, 2 and 4 threads; scores for the
    /// same thread count are the same bits twice.
    @Test(arguments: SegmentationGoldenTests.caseNames)
    func goldenLabelsDoNotDependOnThreads(_ name: String) throws {
        let c = try #require(SegmentationGoldenTests.cases.first { $0.name == name })
        let image = try RGBImage.load(SegmentationGoldenTests.fixture("image", "png"))
        var labels: [Int: [UInt8]] = [:]
        for k in [1, 2, 4] {
            let a = try SegRun.run(model: Self.model, image: image, case: c, threads: k)
            let b = try SegRun.run(model: Self.model, image: image, case: c, threads: k)
            #expect(a.segmentLabels == a.labels, "\(name), \(k) threads: segment() and finish(logits) labels")
            #expect(a.scores.map(\.bitPattern) == b.scores.map(\.bitPattern), "\(name), \(k) threads: scores differ between two runs")
            #expect(a.segmentScores.map(\.bitPattern) == b.segmentScores.map(\.bitPattern), "\(name), \(k) threads: segment() scores differ")
            labels[k] = a.segmentLabels
        }
        #expect(labels[2] == labels[1] && labels[4] == labels[1], "\(name): labels depend on the thread count")
    }

    /// The same for the two-stage golden fixtures (given masks).
    @Test(arguments: TwoStageGoldenTests.caseNames)
    func twoStageLabelsDoNotDependOnThreads(_ name: String) throws {
        let c = try #require(TwoStageGoldenTests.cases.first { $0.name == name })
        let t = try #require(TwoStageGoldenTests.twoCases.first { $0.name == name })
        let image = try RGBImage.load(SegmentationGoldenTests.fixture("image", "png"))
        let masks = try readProposalMasks(from: TwoStageGoldenTests.fixtureDir.appendingPathComponent("masks"),
                                          width: image.width, height: image.height)
        let set = try c.classSet()
        var o = TwoStageOptions()
        o.regionFeatures = try #require(RegionFeatures(rawValue: t.region))
        o.cropMargin = t.margin
        o.fusionLambda = Float(t.lam)
        var labels: [Int: [UInt8]] = [:]
        for k in [1, 2, 4] {
            let seg = try Segmenter(model: Self.model, options: c.options(), threads: k)
            let queries = try seg.queryEmbeddings(set, templates: Templates.named(c.templates))
            let two = try TwoStageSegmenter(segmenter: seg, options: o)
            let a = try two.segment(image, classes: set, queries: queries, masks: masks, wantScores: true)
            let b = try two.segment(image, classes: set, queries: queries, masks: masks, wantScores: true)
            #expect(a.result.scores!.map(\.bitPattern) == b.result.scores!.map(\.bitPattern), "\(name), \(k) threads: scores differ between two runs")
            labels[k] = a.result.labels
        }
        #expect(labels[2] == labels[1] && labels[4] == labels[1], "\(name): labels depend on the thread count")
    }
}

/// The thread budget and the split matrix products (Sources/ZeroSegCore/Threads.swift, Kernels.swift).
@Suite struct ThreadBudgetTests {
    @Test func budgetIsScopedPerThread() throws {
        #expect(threadBudget == 1, "no budget outside withThreads")
        withThreads(3) {
            #expect(threadBudget == 3)
            withThreads(2) { #expect(threadBudget == 2) }
            #expect(threadBudget == 3)
            let inner = try! onThreads(1, iterations: 1) { _, _ in threadBudget }
            #expect(inner == [[1]], "another thread does not see this thread's budget")
            final class Seen: @unchecked Sendable { var v = [Int](repeating: 0, count: 4) }
            let seen = Seen()
            parallelFor(4) { i in seen.v[i] = threadBudget }
            #expect(seen.v == [1, 1, 1, 1], "parts of a parallel region have a budget of 1")
            let b = enterThreads(5)
            #expect(threadBudget == 5)
            b.leave()
            #expect(threadBudget == 3)
        }
        #expect(threadBudget == 1)
        _ = try SegmentationGoldenTests.tinyModel.encodeText(["a cat"], threads: 3)
        #expect(threadBudget == 1, "a public entry point restores the caller's budget")
        #expect(openBLASThreads() == 1, "OpenBLAS runs single-threaded")
    }

    /// `defaultThreads`: ZEROSEG_THREADS when it is a positive integer (scripts/test-conditions.sh
    /// runs the suite with ZEROSEG_THREADS=1), else all cores.
    @Test func defaultThreadsHonoursTheEnvironment() {
        if let s = ProcessInfo.processInfo.environment["ZEROSEG_THREADS"], let n = Int(s), n >= 1 {
            #expect(defaultThreads == min(n, 256))
        } else {
            #expect(defaultThreads == ProcessInfo.processInfo.activeProcessorCount)
        }
    }

    enum Kind: String, CaseIterable { case nn, nt, tn }

    /// c = alpha · op(a) · op(b) + beta · c in Double.
    static func reference(_ kind: Kind, _ a: [Float], _ b: [Float], _ c0: [Float], m: Int, n: Int, k: Int,
                          alpha: Float, beta: Float) -> [Float] {
        var c = c0
        for i in 0..<m {
            for j in 0..<n {
                var s = 0.0
                for p in 0..<k {
                    let x = kind == .tn ? a[p * m + i] : a[i * k + p]
                    let y = kind == .nt ? b[j * k + p] : b[p * n + j]
                    s += Double(x) * Double(y)
                }
                c[i * n + j] = Float(Double(alpha) * s + Double(beta) * Double(c0[i * n + j]))
            }
        }
        return c
    }

    static func product(_ kind: Kind, _ a: [Float], _ b: [Float], _ c0: [Float], m: Int, n: Int, k: Int,
                        alpha: Float, beta: Float, threads: Int) -> [Float] {
        var c = c0
        withThreads(threads) {
            switch kind {
            case .nn: gemmNN(a, lda: k, b, ldb: n, &c, ldc: n, m: m, n: n, k: k, alpha: alpha, beta: beta)
            case .nt: gemmNT(a, lda: k, b, ldb: k, &c, ldc: n, m: m, n: n, k: k, alpha: alpha, beta: beta)
            case .tn: gemmTN(a, lda: m, b, ldb: n, &c, ldc: n, m: m, n: n, k: k, alpha: alpha, beta: beta)
            }
        }
        return c
    }

    /// Large enough to be split (by rows when M >= N, by columns when M < N), sizes not multiples
    /// of 16: equal to the reference for 1...4 threads, the same bits twice for a thread count and
    /// from 4 threads at once.
    @Test(arguments: Kind.allCases)
    func splitProductsMatchReference(_ kind: Kind) throws {
        for (m, n, k) in [(203, 150, 140), (97, 301, 150)] {
            let a = randomFloats(m * k, seed: 21), b = randomFloats(k * n, seed: 22), c0 = randomFloats(m * n, seed: 23)
            let ref = Self.reference(kind, a, b, c0, m: m, n: n, k: k, alpha: 0.5, beta: 0.25)
            var byThreads: [Int: [Float]] = [:]
            for t in 1...4 {
                let c = Self.product(kind, a, b, c0, m: m, n: n, k: k, alpha: 0.5, beta: 0.25, threads: t)
                #expect(maxAbsDiff(c, ref) < 1e-4, "\(kind) \(m)x\(n)x\(k), \(t) threads")
                #expect(Self.product(kind, a, b, c0, m: m, n: n, k: k, alpha: 0.5, beta: 0.25, threads: t) == c)
                byThreads[t] = c
            }
            let concurrent = try onThreads(4, iterations: 3) { t, _ in
                Self.product(kind, a, b, c0, m: m, n: n, k: k, alpha: 0.5, beta: 0.25, threads: t + 1)
            }
            for (t, runs) in concurrent.enumerated() { for c in runs { #expect(c == byThreads[t + 1]!, "\(kind), \(t + 1) threads, concurrent") } }
        }
    }
}

extension ThreadBudgetTests {
    /// Heads split over the budget (T >= 16): the same bits as one thread (each head's arithmetic
    /// is the same), and the reference.
    @Test(arguments: [false, true])
    func attentionSplitEqualsOneThread(_ causal: Bool) {
        let (t, w, h) = (33, 24, 3)
        let qkv = randomFloats(t * 3 * w, seed: 24)
        var ref = [Float](repeating: 0, count: t * w)
        attentionReference(qkv: qkv, out: &ref, tokens: t, width: w, heads: h, causal: causal)
        var one: [Float] = []
        for threads in 1...4 {
            var out = [Float](repeating: 0, count: t * w), scores = [Float](repeating: 0, count: t * t)
            withThreads(threads) { attention(qkv: qkv, out: &out, scores: &scores, tokens: t, width: w, heads: h, causal: causal) }
            #expect(maxAbsDiff(out, ref) < 1e-5)
            if threads == 1 { one = out } else { #expect(out == one, "\(threads) threads") }
        }
    }
}
