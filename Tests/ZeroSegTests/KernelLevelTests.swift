import Foundation
import Testing
import ZeroSeg
import ZeroSegTestSupport

/// The element-wise kernels' builds (portable C, AVX2+FMA, AVX-512) against each other, and the
/// run-time choice (`KernelLevel`, `ZEROSEG_KERNELS`).
@Suite struct KernelLevelTests {
    /// Vector levels this CPU runs (none on a CPU without AVX2 or off x86-64: nothing to compare).
    static var vectorLevels: [KernelLevel] { KernelLevel.allCases.filter { $0 != .portable && $0.isSupported } }

    /// Lengths around the vector widths (8, 16) and the model's (77 text tokens, 197 patches + class).
    static let lengths = [0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 77, 197, 1_001]

    /// Softmax: every probability within 1e-6 of the portable build's (libmvec's expf and libm's
    /// differ by a few ulp; sums are taken in another order).
    @Test func softmaxBuildsAgree() {
        for level in Self.vectorLevels {
            for (i, n) in Self.lengths.enumerated() {
                for valid in Set([n, n / 2, max(0, n - 1)]) {
                    let x = randomFloats(n, seed: UInt64(100 + i)).map { $0 * 30 }
                    var fast = x, portable = x
                    fast.withUnsafeMutableBufferPointer { level.softmaxRow($0.baseAddress!, valid: valid, count: n) }
                    portable.withUnsafeMutableBufferPointer { KernelLevel.portable.softmaxRow($0.baseAddress!, valid: valid, count: n) }
                    #expect(maxAbsDiff(fast, portable) <= 1e-6, "\(level) n=\(n) valid=\(valid)")
                    #expect(fast[valid...].allSatisfy { $0 == 0 } && portable[valid...].allSatisfy { $0 == 0 })
                    if valid > 0 { #expect(abs(fast.reduce(0, +) - 1) < 1e-5) }
                }
            }
        }
    }

    /// Activations: |vector − portable| ≤ 2e-6 · max(1, |x|) (a few ulp of libmvec's
    /// expf/erff/tanhf against libm's), over [-12, 12] and around the tails of the vector loops.
    @Test(arguments: [Activation.quickGELU, .gelu, .geluTanh])
    func activationBuildsAgree(_ act: Activation) {
        for level in Self.vectorLevels {
            for (i, n) in (Self.lengths + [100_003]).enumerated() {
                let x = randomFloats(n, seed: UInt64(200 + i)).map { $0 * 12 }
                var fast = x, portable = x
                fast.withUnsafeMutableBufferPointer { level.activate($0.baseAddress!, count: n, act) }
                portable.withUnsafeMutableBufferPointer { KernelLevel.portable.activate($0.baseAddress!, count: n, act) }
                var worst: Float = 0
                for j in 0..<n { worst = max(worst, abs(fast[j] - portable[j]) / max(1, abs(x[j]))) }
                #expect(worst <= 2e-6, "\(level) \(act) n=\(n): \(worst)")
                // and both against the Double reference
                for j in 0..<n { #expect(abs(portable[j] - activationReference(x[j], act)) < 1e-5) }
            }
        }
    }

    /// The active level is one the CPU runs: the one ZEROSEG_KERNELS names when it can, else the best.
    @Test func activeLevelFollowsEnvironment() {
        let active = KernelLevel.active
        #expect(active.isSupported)
        #expect(KernelLevel.portable.isSupported)
        #expect(KernelLevel.best.isSupported && KernelLevel.best >= active)
        let env = ProcessInfo.processInfo.environment["ZEROSEG_KERNELS"]?.lowercased() ?? "auto"
        if let asked = KernelLevel(rawValue: env), asked.isSupported {
            #expect(active == asked)
        } else {
            #expect(active == KernelLevel.best)
        }
        #if !arch(x86_64)
        #expect(KernelLevel.best == .portable)
        #endif
    }

    /// The CLI honours ZEROSEG_KERNELS: a forced portable run gives the same embeddings (within the
    /// golden bound), an unknown value one warning line and the best level.
    @Test func environmentVariableInTheCLI() throws {
        let tiny = GoldenModelTests.tinyDir.path
        let args = ["embed", "--model", tiny, "--text", "a photo of a cat.", "--image", "examples/chelsea.jpg"]
        func embeddings(_ r: CLIResult) throws -> [[Double]] {
            let obj = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: [[Double]]]
            return obj["text"]! + obj["image"]!
        }
        let portable = try runCLI(args, environment: ["ZEROSEG_KERNELS": "portable"])
        #expect(portable.status == 0 && portable.stderr.isEmpty, "\(portable.stderr)")
        let auto = try runCLI(args, environment: ["ZEROSEG_KERNELS": "auto"])
        #expect(auto.status == 0 && auto.stderr.isEmpty, "\(auto.stderr)")
        for (a, b) in zip(try embeddings(portable), try embeddings(auto)) {
            #expect(maxAbsDiff(a.map { Float($0) }, b.map { Float($0) }) < 1e-5)
        }
        let bogus = try runCLI(args, environment: ["ZEROSEG_KERNELS": "sse9"])
        #expect(bogus.status == 0)
        #expect(bogus.stderr == "zeroseg: ZEROSEG_KERNELS=sse9 is not one of portable, avx2, avx512, auto: using \(KernelLevel.best.rawValue)\n")
        for (a, b) in zip(try embeddings(bogus), try embeddings(auto)) { #expect(maxAbsDiff(a.map { Float($0) }, b.map { Float($0) }) < 1e-6) }
    }
}
