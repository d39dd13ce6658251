import CMatmul
import Foundation
import Testing
@testable import ZeroSegCore
import ZeroSeg

// The low-precision paths (PackedLinear.swift, CMatmul): each kernel against a plain Swift
// implementation of the same arithmetic, the packed products against references (int8: bit for
// bit), and whole models at bf16 / int8 against fp32 on the tiny random model at stated bounds.
// Products at a precision the CPU lacks are not run (the notice path is tested instead).

/// bf16 of x, rounding to nearest even; NaN → quiet NaN, denormal → signed zero.
func bf16Reference(_ x: Float) -> UInt16 {
    let u = x.bitPattern
    if x.isNaN { return UInt16(u >> 16) | 0x40 }
    if u & 0x7f80_0000 == 0 { return UInt16(u >> 16) & 0x8000 }
    let upper = u >> 16, lower = u & 0xffff
    let up = lower > 0x8000 || (lower == 0x8000 && upper & 1 == 1)
    return UInt16(upper + (up ? 1 : 0))
}

func floatOfBF16(_ b: UInt16) -> Float { Float(bitPattern: UInt32(b) << 16) }

/// Per-row u8 quantisation, as zs_matmul.h states it.
func quantizeRowsReference(_ x: [Float], m: Int, k: Int, ldx: Int) -> (q: [UInt8], scale: [Float], zp: [Int32]) {
    var q = [UInt8](repeating: 0, count: m * k), scale = [Float](repeating: 0, count: m), zp = [Int32](repeating: 0, count: m)
    for r in 0..<m {
        let row = x[(r * ldx)..<(r * ldx + k)]
        let lo = min(0, row.min()!), hi = max(0, row.max()!)
        let s: Float = hi > lo ? (hi - lo) / 255 : 1
        let z = min(max((-lo / s).rounded(.toNearestOrEven), 0), 255)
        for (i, v) in row.enumerated() { q[r * k + i] = UInt8(min(max((v / s).rounded(.toNearestOrEven) + z, 0), 255)) }
        scale[r] = s; zp[r] = Int32(z)
    }
    return (q, scale, zp)
}

/// out[i, j] (+)= (xs[i] · ws[j]) · Float(acc - zp · colsum) (+ bias[j]), in that order.
func dequantizeReference(_ acc: [Int32], m: Int, n: Int, xs: [Float], zp: [Int32], ws: [Float], colsum: [Int32], bias: [Float]?,
                         out: inout [Float], ldo: Int, accumulate: Bool) {
    for i in 0..<m {
        for j in 0..<n {
            let t = Float(acc[i * n + j] - zp[i] * colsum[j])
            let f = xs[i] * ws[j]
            var v = f * t
            if let bias { v = v + bias[j] }
            out[i * ldo + j] = accumulate ? out[i * ldo + j] + v : v
        }
    }
}

@Suite struct PrecisionKernelTests {
    static let specials: [Float] = [0, -0, 1, -1, .infinity, -.infinity, .nan, -.nan, .greatestFiniteMagnitude, -.greatestFiniteMagnitude,
                                    .leastNormalMagnitude, -.leastNormalMagnitude, .leastNonzeroMagnitude, -.leastNonzeroMagnitude,
                                    Float(bitPattern: 0x3f80_8000), Float(bitPattern: 0x3f81_8000), Float(bitPattern: 0x3f80_8001),
                                    Float(bitPattern: 0x3f80_7fff), Float(bitPattern: 0x7f7f_ffff), Float(bitPattern: 0x7fc0_0001),
                                    Float(bitPattern: 0x7f80_0001), Float(bitPattern: 0x0080_0000), Float(bitPattern: 0x007f_ffff)]

    @Test func bf16RoundingMatchesTheReference() {
        var g = SplitMix64(seed: 11)
        let values = Self.specials + (0..<20_000).map { i in
            i % 2 == 0 ? Float(bitPattern: UInt32(truncatingIfNeeded: g.next())) : Float(bitPattern: UInt32(truncatingIfNeeded: g.next()) & 0xbfff_ffff)
        }
        let want = values.map(bf16Reference)
        var fast = [UInt16](repeating: 0, count: values.count), portable = fast
        zs_f32_to_bf16(values, &fast, values.count)
        zs_f32_to_bf16_portable(values, &portable, values.count)
        #expect(portable == want)
        #expect(fast == want, "the dispatching build (AVX512_BF16: \(zs_cpu_has_avx512_bf16() != 0)) differs from the reference")
        // Tails of every length.
        for n in 0..<40 {
            var out = [UInt16](repeating: 0xdead, count: n + 1)
            zs_f32_to_bf16(Array(values[100..<(100 + n)]), &out, n)
            #expect(Array(out.prefix(n)) == Array(want[100..<(100 + n)]) && out[n] == 0xdead)
        }
    }

    @Test(arguments: [(5, 37, 37), (3, 768, 800), (17, 16, 16), (2, 1, 3)])
    func quantisationMatchesTheReference(_ shape: (Int, Int, Int)) {
        let (m, k, ldx) = shape
        var x = randomFloats(m * ldx, seed: UInt64(m * k))
        if m > 2 {
            for i in 0..<k { x[ldx + i] = abs(x[ldx + i]) + 0.5; x[2 * ldx + i] = -abs(x[2 * ldx + i]) - 0.5 }  // all > 0, all < 0
        }
        if m > 3 { for i in 0..<k { x[3 * ldx + i] = 0 } }       // all zero: scale 1, zero point 0
        if m > 4 { for i in 0..<k { x[4 * ldx + i] = 0.25 } }    // constant
        let want = quantizeRowsReference(x, m: m, k: k, ldx: ldx)
        for f in [zs_quantize_rows_u8, zs_quantize_rows_u8_portable] {
            var q = [UInt8](repeating: 0, count: m * k), s = [Float](repeating: 0, count: m), z = [Int32](repeating: 0, count: m)
            f(x, Int64(m), Int64(k), Int64(ldx), &q, &s, &z)
            #expect(q == want.q && s == want.scale && z == want.zp)
        }
        // Dequantising the codes gives x back within half a step.
        for r in 0..<m {
            for i in 0..<k {
                let back = want.scale[r] * (Float(want.q[r * k + i]) - Float(want.zp[r]))
                #expect(abs(back - x[r * ldx + i]) <= want.scale[r] * 0.5001 + 1e-7)
            }
        }
    }

    @Test(arguments: [(3, 35, 40, true), (4, 16, 16, false), (1, 1, 5, true)])
    func dequantisationMatchesTheReference(_ shape: (Int, Int, Int, Bool)) {
        let (m, n, ldo, accumulate) = shape
        var g = SplitMix64(seed: UInt64(m * n))
        let acc = (0..<(m * n)).map { _ in Int32(truncatingIfNeeded: g.next() % 2_000_000) - 1_000_000 }
        let colsum = (0..<n).map { _ in Int32(truncatingIfNeeded: g.next() % 20_000) - 10_000 }
        let zp = (0..<m).map { _ in Int32(truncatingIfNeeded: g.next() % 256) }
        let xs = randomFloats(m, seed: 3).map { abs($0) * 1e-2 + 1e-4 }, ws = randomFloats(n, seed: 4).map { abs($0) * 1e-2 + 1e-4 }
        let start = randomFloats(m * ldo, seed: 5)
        for bias in [nil, randomFloats(n, seed: 6)] {
            var want = start, got = start
            dequantizeReference(acc, m: m, n: n, xs: xs, zp: zp, ws: ws, colsum: colsum, bias: bias, out: &want, ldo: ldo, accumulate: accumulate)
            zs_dequantize_s32(acc, Int64(m), Int64(n), xs, zp, ws, colsum, bias, &got, Int64(ldo), accumulate ? 1 : 0)
            #expect(got == want)
        }
    }

    @Test func weightQuantisationIsSymmetricPerChannel() {
        let (n, k) = (9, 50)
        var w = randomFloats(n * k, seed: 8)
        for i in 0..<k { w[k + i] = 0 }  // an all-zero row
        var q = [Int8](repeating: 0, count: n * k)
        let (scales, sums) = w.withUnsafeBufferPointer { wp in q.withUnsafeMutableBufferPointer { quantizeWeightsPerChannel(wp.baseAddress!, n: n, k: k, into: $0.baseAddress!) } }
        for r in 0..<n {
            let row = w[(r * k)..<((r + 1) * k)], qr = q[(r * k)..<((r + 1) * k)]
            let mx = row.map(abs).max()!
            #expect(scales[r] == (mx > 0 ? mx / 127 : 1))
            #expect(sums[r] == qr.reduce(0) { $0 + Int32($1) })
            if mx > 0 { #expect(qr.map { abs(Int($0)) }.max() == 127) }
            for (v, c) in zip(row, qr) {
                #expect(Float(c) == min(max((v / scales[r]).rounded(.toNearestOrEven), -127), 127))
                #expect(abs(Float(c) * scales[r] - v) <= scales[r] * 0.5001)
            }
        }
    }
}

@Suite struct PackedProductTests {
    /// x[M, ldx], w[N, K], bias[N]; out[M, ldo] starting from `start`.
    struct Case {
        let m: Int, n: Int, k: Int, ldx: Int, ldo: Int
        let x: [Float], w: [Float], bias: [Float], start: [Float]
        init(m: Int, n: Int, k: Int, ldx: Int? = nil, ldo: Int? = nil, seed: UInt64 = 1) {
            self.m = m; self.n = n; self.k = k; self.ldx = ldx ?? k; self.ldo = ldo ?? n
            x = randomFloats(m * self.ldx, seed: seed); w = randomFloats(n * k, seed: seed + 1).map { $0 * 0.2 }
            bias = randomFloats(n, seed: seed + 2); start = randomFloats(m * self.ldo, seed: seed + 3)
        }

        func run(_ p: PackedWeights, bias useBias: Bool, accumulate: Bool, threads: Int = 1) -> [Float] {
            var out = start
            x.withUnsafeBufferPointer { xp in bias.withUnsafeBufferPointer { bp in out.withUnsafeMutableBufferPointer { op in
                withThreads(threads) {
                    p.linear(xp.baseAddress!, useBias ? bp.baseAddress! : nil, op.baseAddress!, m: m, ldx: ldx, ldo: ldo, accumulate: accumulate)
                }
            } } }
            return out
        }

        func pack(_ precision: Precision) throws -> PackedWeights {
            try w.withUnsafeBufferPointer { try PackedWeights($0.baseAddress!, out: n, in: k, precision: precision) }
        }

        /// The product in Double over inputs given by `xv` / `wv`; and Σ|x||w| per element.
        func reference(bias useBias: Bool, accumulate: Bool, xv: (Int) -> Double, wv: (Int) -> Double) -> ([Double], [Double]) {
            var out = start.map(Double.init), mag = [Double](repeating: 0, count: m * ldo)
            for i in 0..<m {
                for j in 0..<n {
                    var s = 0.0, a = 0.0
                    for t in 0..<k { let p = xv(i * ldx + t) * wv(j * k + t); s += p; a += abs(p) }
                    if useBias { s += Double(bias[j]) }
                    out[i * ldo + j] = accumulate ? out[i * ldo + j] + s : s
                    mag[i * ldo + j] = a + 1
                }
            }
            return (out, mag)
        }
    }

    static let cases = [Case(m: 197, n: 96, k: 64), Case(m: 5, n: 40, k: 33, ldx: 50, ldo: 70, seed: 7), Case(m: 70, n: 130, k: 200, ldo: 150, seed: 9)]

    /// fp32 and bf16: within 2e-6 · Σ|x||w| of the reference in Double (bf16: on the bf16-rounded
    /// inputs), for every bias / accumulate combination, and the same bytes on a second run.
    @Test(arguments: [Precision.fp32, .bf16])
    func floatProductsMatchTheReference(_ precision: Precision) throws {
        guard precision.isSupported else { return }
        for c in Self.cases {
            let p = try c.pack(precision)
            let round: (Float) -> Double = precision == .bf16 ? { Double(floatOfBF16(bf16Reference($0))) } : { Double($0) }
            for (useBias, accumulate) in [(false, false), (true, false), (true, true), (false, true)] {
                let got = c.run(p, bias: useBias, accumulate: accumulate, threads: 2)
                let (want, mag) = c.reference(bias: useBias, accumulate: accumulate, xv: { round(c.x[$0]) }, wv: { round(c.w[$0]) })
                var worst = 0.0
                for i in 0..<c.m { for j in 0..<c.ldo {
                    let e = j < c.n ? abs(Double(got[i * c.ldo + j]) - want[i * c.ldo + j]) / mag[i * c.ldo + j]
                                    : (got[i * c.ldo + j] == c.start[i * c.ldo + j] ? 0 : 1)  // past N: untouched
                    worst = max(worst, e)
                } }
                #expect(worst <= 2e-6, "\(precision) m=\(c.m) n=\(c.n) k=\(c.k) bias=\(useBias) accumulate=\(accumulate): \(worst)")
                #expect(c.run(p, bias: useBias, accumulate: accumulate, threads: 2) == got)
            }
            #expect(p.failedProducts.count == 0)
        }
    }

    /// int8: bit for bit the reference quantisation, the exact integer product and the reference
    /// dequantisation; on 1 and 2 threads alike (integer sums do not depend on the order).
    @Test func int8ProductsAreExactlyTheReference() throws {
        guard Precision.int8.isSupported else { return }
        for c in Self.cases {
            let p = try c.pack(.int8)
            var wq = [Int8](repeating: 0, count: c.n * c.k)
            let (ws, colsum) = c.w.withUnsafeBufferPointer { wp in wq.withUnsafeMutableBufferPointer { quantizeWeightsPerChannel(wp.baseAddress!, n: c.n, k: c.k, into: $0.baseAddress!) } }
            let (xq, xs, zp) = quantizeRowsReference(c.x, m: c.m, k: c.k, ldx: c.ldx)
            var acc = [Int32](repeating: 0, count: c.m * c.n)
            for i in 0..<c.m { for j in 0..<c.n {
                var s: Int32 = 0
                for t in 0..<c.k { s += Int32(xq[i * c.k + t]) * Int32(wq[j * c.k + t]) }
                acc[i * c.n + j] = s
            } }
            for (useBias, accumulate) in [(false, false), (true, false), (true, true)] {
                var want = c.start
                dequantizeReference(acc, m: c.m, n: c.n, xs: xs, zp: zp, ws: ws, colsum: colsum, bias: useBias ? c.bias : nil,
                                    out: &want, ldo: c.ldo, accumulate: accumulate)
                #expect(c.run(p, bias: useBias, accumulate: accumulate, threads: 1) == want)
                #expect(c.run(p, bias: useBias, accumulate: accumulate, threads: 2) == want)
            }
            #expect(p.failedProducts.count == 0)
        }
    }
}

/// Whole models at bf16 / int8 against fp32 (the tiny random model: a check of the arithmetic,
/// not of segmentation quality). Bounds: embeddings' cosine to fp32 >= 0.999 (bf16) / 0.99
/// (int8); labels equal to fp32's on >= 99% of the pixels whose fp32 top-2 margin exceeds 0.1.
@Suite struct PrecisionModelTests {
    static let reference = SegmentationGoldenTests.tinyModel

    @Test(arguments: [Precision.bf16, .int8])
    func lowPrecisionModelStaysCloseToFP32(_ precision: Precision) throws {
        guard precision.isSupported else {
            #expect(throws: ZeroSegError.self) { _ = try CLIPModel(directory: SegmentationGoldenTests.tinyDir, precision: precision) }
            return
        }
        let m = try CLIPModel(directory: SegmentationGoldenTests.tinyDir, precision: precision)
        #expect(m.precision == precision && m.cacheKey == "\(m.fingerprint)-\(precision.rawValue)")
        let s = m.config.vision.imageSize
        let pixels = (3...6).map { Synth.values(name: "pixels", seed: UInt64($0), count: 3 * s * s, amplitude: 2) }
        let pictures = try ["chelsea.jpg", "horse.jpg"].map { try RGBImage.load(repoRoot.appendingPathComponent("examples/\($0)")) }
        let classes = ["cat", "grass", "wall", "floor", "sky"]
        let texts = classes.flatMap { c in Templates.imagenet80.prefix(8).map { Templates.fill($0, c) } }
        let a = try PrecisionAccuracy.compare(reference: Self.reference, candidate: m, pixels: pixels, pictures: pictures, texts: texts,
                                              segment: pictures, classes: ClassSet(classes: classes.map { [$0] }),
                                              templates: Array(Templates.imagenet80.prefix(8)), threads: 2)
        let bound = precision == .bf16 ? 0.999 : 0.99
        #expect(a.imageCosMin! >= bound && a.textCosMin! >= bound, "\(a)")
        #expect(a.labelAgreement! >= 0.99 && a.marginPixels > 1000, "\(a)")
        #expect(a.images == 6 && a.texts == 40 && a.segmented == 2)
    }

    /// The same input gives the same bytes at every precision, run twice and from two threads at once.
    @Test(arguments: [Precision.fp32, .bf16, .int8])
    func lowPrecisionIsDeterministic(_ precision: Precision) throws {
        guard precision.isSupported else { return }
        let m = try CLIPModel(directory: SegmentationGoldenTests.tinyDir, precision: precision)
        let texts = ["a photo of a cat.", "a street at night", "grass"]
        let first = try m.encodeText(texts, threads: 2)
        let lock = NSLock()
        nonisolated(unsafe) var results: [[[Float]]] = []
        DispatchQueue.concurrentPerform(iterations: 2) { _ in
            let e = try! m.encodeText(texts, threads: 2)
            lock.withLock { results.append(e) }
        }
        #expect(results.count == 2 && results.allSatisfy { $0 == first })
    }
}

/// `--precision` on the command line: the notice and fp32 on a CPU without the instructions
/// (oneDNN told so by ONEDNN_MAX_CPU_ISA), the precision in the JSON record, a bad value refused.
@Suite struct PrecisionCLITests {
    var tiny: String { SegmentationGoldenTests.tinyDir.path }

    @Test func unsupportedPrecisionRunsFP32WithANotice() throws {
        let fp32 = try runCLI(["embed", "--model", tiny, "--threads", "2", "--text", "a cat", "--image", "examples/chelsea.jpg"])
        #expect(fp32.status == 0 && fp32.stderr == "")
        for p in ["bf16", "int8"] {
            let r = try runCLI(["embed", "--model", tiny, "--threads", "2", "--precision", p, "--text", "a cat", "--image", "examples/chelsea.jpg"],
                               environment: ["ONEDNN_MAX_CPU_ISA": "AVX2"])
            let need = p == "bf16" ? "AVX512_BF16 or AMX" : "AVX512_VNNI or AVX_VNNI"
            #expect(r.status == 0)
            #expect(r.stderr == "notice: \(p) needs \(need), which this CPU lacks: running fp32\n")
            #expect(r.stdout == fp32.stdout)
        }
    }

    @Test func precisionIsRecordedAndABadValueRefused() throws {
        let out = temporaryDirectory("precision-cli")
        for p in Precision.allCases where p.isSupported {
            let r = try runCLI(["examples/chelsea.jpg", "--model", tiny, "--threads", "2", "--precision", p.rawValue, "--classes", "cat,wall",
                                "--short-side", "224", "--out", out.appendingPathComponent(p.rawValue).path])
            #expect(r.status == 0, "\(r.stderr)")
            let json = try Data(contentsOf: out.appendingPathComponent("\(p.rawValue)/chelsea.json"))
            let model = (try JSONSerialization.jsonObject(with: json) as? [String: Any])?["model"] as? [String: Any]
            #expect(model?["precision"] as? String == p.rawValue)
        }
        let bad = try runCLI(["embed", "--model", tiny, "--precision", "fp16", "--text", "a"])
        #expect(bad.status == 2)
        #expect(bad.stderr.hasPrefix("error: The value 'fp16' is invalid for '--precision <precision>'. Please provide one of 'fp32', 'bf16' or 'int8'."))
    }
}
