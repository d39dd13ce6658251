import CBLAS
import CKernels
import Foundation

/// Activation functions named by `hidden_act` in a CLIP config.
public enum Activation: String, Sendable, Codable {
    case quickGELU = "quick_gelu"
    case gelu = "gelu"
    case geluTanh = "gelu_pytorch_tanh"
    case geluNew = "gelu_new"
}

// Kernels are plain functions over buffers; shapes are row-major and given in comments.
// Each fast kernel has a naive reference (`*Reference`) beside it, used by the tests.

public typealias FloatPtr = UnsafeMutablePointer<Float>
public typealias ConstFloatPtr = UnsafePointer<Float>

/// Sets OpenBLAS's thread count (OpenBLAS keeps it per process).
public func setBLASThreads(_ n: Int) {
    if openblas_get_num_threads() != Int32(n) { openblas_set_num_threads(Int32(n)) }
}

/// OpenBLAS's current thread count.
public func blasThreads() -> Int { Int(openblas_get_num_threads()) }

// MARK: - Matrix products

/// out[M, N] = x[M, K] · w[N, K]ᵀ (+ bias[N]) — a Linear layer with PyTorch's [out, in] weight.
/// `ldx`/`ldo` are row strides (default K and N).
/// With several BLAS threads and enough work, the product is split over the threads, each running
/// a single-threaded sgemm on a block of output columns (weight rows) when M < N, else of rows:
/// each thread then packs the smaller operand whole and its part of the larger one. At the
/// encoder's sizes this beats OpenBLAS's own threading, which synchronises its workers around the
/// shared packed panel (docs/benchmarks.md, "split").
public func linear(_ x: ConstFloatPtr, _ w: ConstFloatPtr, _ bias: ConstFloatPtr?, _ out: FloatPtr,
                   m: Int, n: Int, k: Int, ldx: Int? = nil, ldo: Int? = nil, accumulate: Bool = false) {
    let ldx = ldx ?? k, ldo = ldo ?? n
    let threads = elementThreads(), byColumns = m < n
    let nt = min(threads, (byColumns ? n : m) / linearMinRowsPerThread)
    if nt > 1 && m * n * k >= linearSplitMinWork {
        nonisolated(unsafe) let (xp, wp, bp, op) = (x, w, bias, out)
        setBLASThreads(1)
        DispatchQueue.concurrentPerform(iterations: nt) { i in
            // block edges at multiples of 16 (OpenBLAS's micro-kernel tiles)
            let len = byColumns ? n : m
            let e0 = (len * i / nt) & ~15, e1 = i == nt - 1 ? len : (len * (i + 1) / nt) & ~15
            if byColumns {
                linearRows(xp, wp + e0 * k, bp.map { $0 + e0 }, op + e0, m: m, n: e1 - e0, k: k, ldx: ldx, ldo: ldo, accumulate: accumulate)
            } else {
                linearRows(xp + e0 * ldx, wp, bp, op + e0 * ldo, m: e1 - e0, n: n, k: k, ldx: ldx, ldo: ldo, accumulate: accumulate)
            }
        }
        setBLASThreads(threads)
        return
    }
    linearRows(x, w, bias, out, m: m, n: n, k: k, ldx: ldx, ldo: ldo, accumulate: accumulate)
}

/// Rows (or columns) per thread below which `linear` leaves the threading to OpenBLAS.
let linearMinRowsPerThread = 32
/// m·n·k below which `linear` does not split (the hand-off costs more than it saves).
let linearSplitMinWork = 1 << 22

/// `linear` on the calling thread's BLAS setting.
@inline(__always)
func linearRows(_ x: ConstFloatPtr, _ w: ConstFloatPtr, _ bias: ConstFloatPtr?, _ out: FloatPtr,
                m: Int, n: Int, k: Int, ldx: Int, ldo: Int, accumulate: Bool) {
    guard m > 0, n > 0 else { return }
    var beta: Float = accumulate ? 1 : 0
    if let bias, !accumulate {
        for i in 0..<m { (out + i * ldo).update(from: bias, count: n) }
        beta = 1
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k), 1,
                x, Int32(ldx), w, Int32(k), beta, out, Int32(ldo))
    if let bias, accumulate {
        for i in 0..<m { for j in 0..<n { out[i * ldo + j] += bias[j] } }
    }
}

/// Naive reference of `linear` (accumulating in Double).
public func linearReference(_ x: ConstFloatPtr, _ w: ConstFloatPtr, _ bias: ConstFloatPtr?, _ out: FloatPtr,
                            m: Int, n: Int, k: Int) {
    for i in 0..<m {
        for j in 0..<n {
            var s = Double(bias?[j] ?? 0)
            for p in 0..<k { s += Double(x[i * k + p]) * Double(w[j * k + p]) }
            out[i * n + j] = Float(s)
        }
    }
}

/// c[M, N] = alpha · a[M, K] · b[K, N] (+ beta · c) with explicit row strides.
@inline(__always)
package func gemmNN(_ a: ConstFloatPtr, lda: Int, _ b: ConstFloatPtr, ldb: Int, _ c: FloatPtr, ldc: Int,
            m: Int, n: Int, k: Int, alpha: Float = 1, beta: Float = 0) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k), alpha,
                a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}

/// c[M, N] = alpha · a[M, K] · b[N, K]ᵀ (+ beta · c) with explicit row strides.
@inline(__always)
package func gemmNT(_ a: ConstFloatPtr, lda: Int, _ b: ConstFloatPtr, ldb: Int, _ c: FloatPtr, ldc: Int,
            m: Int, n: Int, k: Int, alpha: Float = 1, beta: Float = 0) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k), alpha,
                a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}

/// c[M, N] = alpha · a[K, M]ᵀ · b[K, N] (+ beta · c) with explicit row strides.
@inline(__always)
package func gemmTN(_ a: ConstFloatPtr, lda: Int, _ b: ConstFloatPtr, ldb: Int, _ c: FloatPtr, ldc: Int,
            m: Int, n: Int, k: Int, alpha: Float = 1, beta: Float = 0) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k), alpha,
                a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}

// MARK: - Layer norm

/// out[M, C] = (x - mean) / sqrt(var + eps) · w + b, per row (biased variance, as torch).
/// `out` may alias `x`.
public func layerNorm(_ x: ConstFloatPtr, _ w: ConstFloatPtr, _ b: ConstFloatPtr, _ out: FloatPtr,
                      rows: Int, cols c: Int, eps: Float) {
    nonisolated(unsafe) let (xp, wp, bp, op) = (x, w, b, out)
    parallelChunks(rows, work: rows * c * 4) { r0, r1 in layerNormRows(xp, wp, bp, op, rows: r0..<r1, cols: c, eps: eps) }
}

/// `layerNorm` over the rows in `rows` (the same arithmetic, row by row, on one thread); with
/// `mean` / `rstd` ([rows]) it also records each row's mean and 1/√(var + eps) (for backward).
package func layerNormRows(_ x: ConstFloatPtr, _ w: ConstFloatPtr, _ b: ConstFloatPtr, _ out: FloatPtr,
                   rows: Range<Int>, cols c: Int, eps: Float, mean: FloatPtr? = nil, rstd: FloatPtr? = nil) {
    for r in rows {
        let xr = x + r * c, or = out + r * c
        var sum: Float = 0
        for i in 0..<c { sum += xr[i] }
        let mu = sum / Float(c)
        var sq: Float = 0
        for i in 0..<c { let d = xr[i] - mu; sq += d * d }
        let inv = 1 / (sq / Float(c) + eps).squareRoot()
        for i in 0..<c { or[i] = (xr[i] - mu) * inv * w[i] + b[i] }
        mean?[r] = mu
        rstd?[r] = inv
    }
}

public func layerNormReference(_ x: ConstFloatPtr, _ w: ConstFloatPtr, _ b: ConstFloatPtr, _ out: FloatPtr,
                               rows: Int, cols c: Int, eps: Float) {
    for r in 0..<rows {
        var mean = 0.0, v = 0.0
        for i in 0..<c { mean += Double(x[r * c + i]) }
        mean /= Double(c)
        for i in 0..<c { let d = Double(x[r * c + i]) - mean; v += d * d }
        v /= Double(c)
        let inv = 1 / (v + Double(eps)).squareRoot()
        for i in 0..<c { out[r * c + i] = Float((Double(x[r * c + i]) - mean) * inv * Double(w[i]) + Double(b[i])) }
    }
}

// MARK: - Softmax

/// Softmax over each row of x[rows, n] (row stride `ld`), in place; only the first `valid(r)` entries
/// of row r take part (the rest are set to 0), for causal attention. Vector kernels (`KernelLevel`);
/// large inputs are split over the BLAS thread count.
public func softmaxRows(_ x: FloatPtr, rows: Int, n: Int, ld: Int? = nil, valid: ((Int) -> Int)? = nil) {
    let ld = ld ?? n
    nonisolated(unsafe) let xp = x
    parallelChunks(rows, work: rows * n) { r0, r1 in
        for r in r0..<r1 { zs_softmax_row(xp + r * ld, Int32(valid?(r) ?? n), Int32(n)) }
    }
}

/// Runs body over [0, count) in contiguous chunks on up to `elementThreads()` threads when
/// `work` (elements touched) is large enough to pay for the hand-off.
func parallelChunks(_ count: Int, work: Int, minWork: Int = 1 << 15, _ body: (Int, Int) -> Void) {
    let nt = min(elementThreads(), count)
    if nt <= 1 || work < minWork { body(0, count); return }
    withoutActuallyEscaping(body) { b in
        nonisolated(unsafe) let f = b
        DispatchQueue.concurrentPerform(iterations: nt) { i in f(count * i / nt, count * (i + 1) / nt) }
    }
}

/// Threads for element-wise kernels: the BLAS thread count the caller set (`setBLASThreads`).
func elementThreads() -> Int { max(1, Int(openblas_get_num_threads())) }

public func softmaxReference(_ x: FloatPtr, rows: Int, n: Int) {
    for r in 0..<rows {
        let mx = (0..<n).map { Double(x[r * n + $0]) }.max()!
        let e = (0..<n).map { exp(Double(x[r * n + $0]) - mx) }
        let s = e.reduce(0, +)
        for i in 0..<n { x[r * n + i] = Float(e[i] / s) }
    }
}

// MARK: - Activations

/// In-place activation over x[n] (vector kernels, `KernelLevel`; split over the BLAS thread count when large).
public func activate(_ x: FloatPtr, count n: Int, _ act: Activation) {
    nonisolated(unsafe) let xp = x
    parallelChunks((n + 63) / 64, work: n * 8) { c0, c1 in
        let start = c0 * 64, len = min(c1 * 64, n) - start
        guard len > 0 else { return }
        switch act {
        case .quickGELU: zs_quick_gelu(xp + start, len)
        case .gelu: zs_gelu_erf(xp + start, len)
        case .geluTanh, .geluNew: zs_gelu_tanh(xp + start, len)
        }
    }
}

public func activationReference(_ v: Float, _ act: Activation) -> Float {
    let x = Double(v)
    switch act {
    case .quickGELU: return Float(x / (1 + exp(-1.702 * x)))
    case .gelu: return Float(0.5 * x * (1 + erf(x / 2.0.squareRoot())))
    case .geluTanh, .geluNew: return Float(0.5 * x * (1 + tanh((2 / Double.pi).squareRoot() * (x + 0.044715 * x * x * x))))
    }
}

// MARK: - Attention

/// Multi-head scaled dot-product attention for one sequence.
/// qkv: [T, 3W] (q | k | v, heads contiguous inside each), out: [T, W], scores: scratch [T, T].
/// With `causal`, token t attends to tokens 0...t.
/// With several BLAS threads the heads are split over them, each head's small products running
/// single-threaded (cheaper than waking the BLAS thread pool 2 x heads times).
public func attention(qkv: ConstFloatPtr, out: FloatPtr, scores: FloatPtr, tokens t: Int, width w: Int,
                      heads: Int, causal: Bool) {
    let d = w / heads
    let scale = 1 / Float(d).squareRoot()
    let threads = elementThreads(), nt = min(threads, heads)
    nonisolated(unsafe) let qkvP = qkv, outP = out, scoresP = scores
    @Sendable func run(_ h0: Int, _ h1: Int, _ s: FloatPtr) {
        for h in h0..<h1 {
            let q = qkvP + h * d, k = qkvP + w + h * d, v = qkvP + 2 * w + h * d
            // s[T, T] = q kᵀ · scale
            gemmNT(q, lda: 3 * w, k, ldb: 3 * w, s, ldc: t, m: t, n: t, k: d, alpha: scale)
            for r in 0..<t { zs_softmax_row(s + r * t, Int32(causal ? r + 1 : t), Int32(t)) }
            // out[:, h] = s · v
            gemmNN(s, lda: t, v, ldb: 3 * w, outP + h * d, ldc: w, m: t, n: d, k: t)
        }
    }
    if nt <= 1 || t < 16 {
        run(0, heads, scores)
        return
    }
    setBLASThreads(1)
    DispatchQueue.concurrentPerform(iterations: nt) { i in
        let (h0, h1) = (heads * i / nt, heads * (i + 1) / nt)
        if i == 0 { run(h0, h1, scoresP); return }
        let s = FloatPtr.allocate(capacity: t * t)
        defer { s.deallocate() }
        run(h0, h1, s)
    }
    setBLASThreads(threads)
}

public func attentionReference(qkv: ConstFloatPtr, out: FloatPtr, tokens t: Int, width w: Int, heads: Int, causal: Bool) {
    let d = w / heads
    for h in 0..<heads {
        for i in 0..<t {
            let n = causal ? i + 1 : t
            var s = [Double](repeating: 0, count: n)
            for j in 0..<n {
                var acc = 0.0
                for c in 0..<d { acc += Double(qkv[i * 3 * w + h * d + c]) * Double(qkv[j * 3 * w + w + h * d + c]) }
                s[j] = acc / Double(d).squareRoot()
            }
            let mx = s.max()!
            let e = s.map { exp($0 - mx) }
            let z = e.reduce(0, +)
            for c in 0..<d {
                var acc = 0.0
                for j in 0..<n { acc += e[j] / z * Double(qkv[j * 3 * w + 2 * w + h * d + c]) }
                out[i * w + h * d + c] = Float(acc)
            }
        }
    }
}

// MARK: - Resampling

/// Bicubic resize of x[C, H, W] to out[C, OH, OW] as torch's `interpolate(mode="bicubic",
/// align_corners=False)` given an output size (A = -0.75, indices clamped at the borders).
public func resizeBicubicCHW(_ x: ConstFloatPtr, channels: Int, height h: Int, width w: Int,
                             _ out: FloatPtr, outHeight oh: Int, outWidth ow: Int) {
    func coeffs(_ t: Float) -> (Float, Float, Float, Float) {
        let a: Float = -0.75
        func c1(_ x: Float) -> Float { ((a + 2) * x - (a + 3)) * x * x + 1 }
        func c2(_ x: Float) -> Float { ((a * x - 5 * a) * x + 8 * a) * x - 4 * a }
        return (c2(t + 1), c1(t), c1(1 - t), c2(2 - t))
    }
    let sh = Float(h) / Float(oh), sw = Float(w) / Float(ow)
    for oy in 0..<oh {
        let ry = sh * (Float(oy) + 0.5) - 0.5
        let iy = Int(floorf(ry))
        let (y0, y1, y2, y3) = coeffs(ry - Float(iy))
        let wy = [y0, y1, y2, y3]
        for ox in 0..<ow {
            let rx = sw * (Float(ox) + 0.5) - 0.5
            let ix = Int(floorf(rx))
            let (x0, x1, x2, x3) = coeffs(rx - Float(ix))
            let wx = [x0, x1, x2, x3]
            for c in 0..<channels {
                let plane = x + c * h * w
                var acc: Float = 0
                for j in 0..<4 {
                    let yy = min(max(iy - 1 + j, 0), h - 1)
                    var row: Float = 0
                    for i in 0..<4 {
                        let xx = min(max(ix - 1 + i, 0), w - 1)
                        row += plane[yy * w + xx] * wx[i]
                    }
                    acc += row * wy[j]
                }
                out[c * oh * ow + oy * ow + ox] = acc
            }
        }
    }
}

// MARK: - BLAS kernel choice

/// OpenBLAS (Debian's DYNAMIC_ARCH build, 0.3.21) picks its kernels from the CPU model when it is
/// loaded. On CPUs newer than the library (or virtual CPUs with unusual model ids) it falls back
/// to `Prescott` (SSE3) kernels: about 4x slower sgemm on an AVX-512 machine. The environment
/// variable OPENBLAS_CORETYPE overrides the choice, but only before the library is loaded.
public enum BLASKernels {
    /// OpenBLAS's kernel set in use, e.g. "SkylakeX", "Haswell", "Prescott".
    public static var coreName: String { openblas_get_corename().map { String(cString: $0) } ?? "unknown" }

    /// Kernel sets without AVX2 code paths.
    static let preAVX2: Set<String> = ["prescott", "core2", "penryn", "dunnington", "nehalem", "sandybridge",
                                       "katmai", "coppermine", "northwood", "banias", "atom", "barcelona", "opteron"]

    /// The OPENBLAS_CORETYPE that should be set for this CPU, or nil when OpenBLAS's own choice is
    /// fine (or the user set OPENBLAS_CORETYPE). AVX-512 (F/BW/DQ/VL, enabled by the OS): SkylakeX;
    /// AVX2 + FMA: Haswell.
    public static func betterCoreType(environment env: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        guard env["OPENBLAS_CORETYPE"] == nil, preAVX2.contains(coreName.lowercased()) else { return nil }
        if zs_cpu_has_avx512() != 0 { return "SkylakeX" }
        if zs_cpu_has_avx2_fma() != 0 { return "Haswell" }
        return nil
    }
}
