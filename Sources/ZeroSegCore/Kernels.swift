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
// Their naive references (`linearReference`, `layerNormReference`, ...) live in the test-only
// target ZeroSegTestSupport (Sources/ZeroSegTestSupport), outside the shipped library.

public typealias FloatPtr = UnsafeMutablePointer<Float>
public typealias ConstFloatPtr = UnsafePointer<Float>

// MARK: - Matrix products

/// out[M, N] = x[M, K] · w[N, K]ᵀ (+ bias[N]) — a Linear layer with PyTorch's [out, in] weight.
/// `ldx`/`ldo` are row strides (default K and N).
/// With a thread budget (`withThreads`) and enough work, the product is split over the threads,
/// each running a single-threaded sgemm on a block of output columns (weight rows) when M < N,
/// else of rows: each thread then packs the smaller operand whole and its part of the larger one.
/// At the encoder's sizes this beats OpenBLAS's own threading, which synchronises its workers
/// around the shared packed panel (docs/benchmarks.md, "split").
public func linear(_ x: ConstFloatPtr, _ w: ConstFloatPtr, _ bias: ConstFloatPtr?, _ out: FloatPtr,
                   m: Int, n: Int, k: Int, ldx: Int? = nil, ldo: Int? = nil, accumulate: Bool = false) {
    let ldx = ldx ?? k, ldo = ldo ?? n
    let byColumns = m < n, len = byColumns ? n : m
    let nt = splitParts(m: m, n: n, k: k)
    if nt > 1 {
        nonisolated(unsafe) let (xp, wp, bp, op) = (x, w, bias, out)
        parallelFor(nt) { i in
            let (e0, e1) = splitBlock(len, i, nt)
            if byColumns {
                linearRows(xp, wp + e0 * k, bp.map { $0 + e0 }, op + e0, m: m, n: e1 - e0, k: k, ldx: ldx, ldo: ldo, accumulate: accumulate)
            } else {
                linearRows(xp + e0 * ldx, wp, bp, op + e0 * ldo, m: e1 - e0, n: n, k: k, ldx: ldx, ldo: ldo, accumulate: accumulate)
            }
        }
        return
    }
    linearRows(x, w, bias, out, m: m, n: n, k: k, ldx: ldx, ldo: ldo, accumulate: accumulate)
}

/// Rows (or columns) per thread below which a product is not split further.
let linearMinRowsPerThread = 32
/// m·n·k below which a product is not split (the hand-off costs more than it saves).
let linearSplitMinWork = 1 << 22

/// Parts a product c[M, N] (inner size K) is split into: up to the thread budget, blocks of
/// output rows (M >= N) or columns (M < N) of at least `linearMinRowsPerThread`; 1 when small.
/// A function of the shape and the budget only.
func splitParts(m: Int, n: Int, k: Int) -> Int {
    let threads = threadBudget
    guard threads > 1, m * n * k >= linearSplitMinWork else { return 1 }
    return max(1, min(threads, max(m, n) / linearMinRowsPerThread))
}

/// Block `i` of `parts` over 0..<len, edges at multiples of 16 (OpenBLAS's micro-kernel tiles).
@inline(__always)
func splitBlock(_ len: Int, _ i: Int, _ parts: Int) -> (Int, Int) {
    ((len * i / parts) & ~15, i == parts - 1 ? len : (len * (i + 1) / parts) & ~15)
}

/// `linear` in one single-threaded sgemm on the calling thread.
@inline(__always)
func linearRows(_ x: ConstFloatPtr, _ w: ConstFloatPtr, _ bias: ConstFloatPtr?, _ out: FloatPtr,
                m: Int, n: Int, k: Int, ldx: Int, ldo: Int, accumulate: Bool) {
    guard m > 0, n > 0 else { return }
    ensureSingleThreadedBLAS()
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

/// c[M, N] = alpha · a[M, K] · b[K, N] (+ beta · c) with explicit row strides.
package func gemmNN(_ a: ConstFloatPtr, lda: Int, _ b: ConstFloatPtr, ldb: Int, _ c: FloatPtr, ldc: Int,
            m: Int, n: Int, k: Int, alpha: Float = 1, beta: Float = 0) {
    gemm(transA: false, transB: false, a, lda: lda, b, ldb: ldb, c, ldc: ldc, m: m, n: n, k: k, alpha: alpha, beta: beta)
}

/// c[M, N] = alpha · a[M, K] · b[N, K]ᵀ (+ beta · c) with explicit row strides.
package func gemmNT(_ a: ConstFloatPtr, lda: Int, _ b: ConstFloatPtr, ldb: Int, _ c: FloatPtr, ldc: Int,
            m: Int, n: Int, k: Int, alpha: Float = 1, beta: Float = 0) {
    gemm(transA: false, transB: true, a, lda: lda, b, ldb: ldb, c, ldc: ldc, m: m, n: n, k: k, alpha: alpha, beta: beta)
}

/// c[M, N] = alpha · a[K, M]ᵀ · b[K, N] (+ beta · c) with explicit row strides.
package func gemmTN(_ a: ConstFloatPtr, lda: Int, _ b: ConstFloatPtr, ldb: Int, _ c: FloatPtr, ldc: Int,
            m: Int, n: Int, k: Int, alpha: Float = 1, beta: Float = 0) {
    gemm(transA: true, transB: false, a, lda: lda, b, ldb: ldb, c, ldc: ldc, m: m, n: n, k: k, alpha: alpha, beta: beta)
}

/// c[M, N] = alpha · op(a) · op(b) (+ beta · c), split as `linear` is (`splitParts`): blocks of
/// rows of c take the matching rows of op(a), blocks of columns the matching columns of op(b);
/// each block is one single-threaded sgemm.
func gemm(transA: Bool, transB: Bool, _ a: ConstFloatPtr, lda: Int, _ b: ConstFloatPtr, ldb: Int, _ c: FloatPtr, ldc: Int,
          m: Int, n: Int, k: Int, alpha: Float, beta: Float) {
    let nt = splitParts(m: m, n: n, k: k)
    if nt > 1 {
        let byColumns = m < n
        nonisolated(unsafe) let (ap, bp, cp) = (a, b, c)
        parallelFor(nt) { i in
            let (e0, e1) = splitBlock(byColumns ? n : m, i, nt)
            if byColumns {
                sgemm1(transA, transB, ap, lda, transB ? bp + e0 * ldb : bp + e0, ldb, cp + e0, ldc, m, e1 - e0, k, alpha, beta)
            } else {
                sgemm1(transA, transB, transA ? ap + e0 : ap + e0 * lda, lda, bp, ldb, cp + e0 * ldc, ldc, e1 - e0, n, k, alpha, beta)
            }
        }
        return
    }
    sgemm1(transA, transB, a, lda, b, ldb, c, ldc, m, n, k, alpha, beta)
}

/// One row-major cblas_sgemm on the calling thread (OpenBLAS single-threaded).
@inline(__always)
func sgemm1(_ transA: Bool, _ transB: Bool, _ a: ConstFloatPtr, _ lda: Int, _ b: ConstFloatPtr, _ ldb: Int, _ c: FloatPtr, _ ldc: Int,
            _ m: Int, _ n: Int, _ k: Int, _ alpha: Float, _ beta: Float) {
    guard m > 0, n > 0 else { return }
    ensureSingleThreadedBLAS()
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, Int32(m), Int32(n), Int32(k),
                alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
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

// MARK: - Softmax

/// Softmax over each row of x[rows, n] (row stride `ld`), in place; only the first `valid(r)` entries
/// of row r take part (the rest are set to 0), for causal attention. Vector kernels (`KernelLevel`);
/// large inputs are split over the thread budget.
public func softmaxRows(_ x: FloatPtr, rows: Int, n: Int, ld: Int? = nil, valid: ((Int) -> Int)? = nil) {
    let ld = ld ?? n
    nonisolated(unsafe) let xp = x
    parallelChunks(rows, work: rows * n) { r0, r1 in
        for r in r0..<r1 { zs_softmax_row(xp + r * ld, Int32(valid?(r) ?? n), Int32(n)) }
    }
}

/// Runs body over [0, count) in contiguous chunks on up to `threadBudget` threads when
/// `work` (elements touched) is large enough to pay for the hand-off.
func parallelChunks(_ count: Int, work: Int, minWork: Int = 1 << 15, _ body: (Int, Int) -> Void) {
    let nt = min(threadBudget, count)
    if nt <= 1 || work < minWork { body(0, count); return }
    parallelFor(nt) { i in body(count * i / nt, count * (i + 1) / nt) }
}


// MARK: - Activations

/// In-place activation over x[n] (vector kernels, `KernelLevel`; split over the thread budget when large).
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

// MARK: - Attention

/// Multi-head scaled dot-product attention for one sequence.
/// qkv: [T, 3W] (q | k | v, heads contiguous inside each), out: [T, W], scores: scratch [T, T].
/// With `causal`, token t attends to tokens 0...t.
/// With a thread budget the heads are split over the threads, each head's small products running
/// single-threaded.
public func attention(qkv: ConstFloatPtr, out: FloatPtr, scores: FloatPtr, tokens t: Int, width w: Int,
                      heads: Int, causal: Bool) {
    let d = w / heads
    let scale = 1 / Float(d).squareRoot()
    let nt = min(threadBudget, heads)
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
    parallelFor(nt) { i in
        let (h0, h1) = (heads * i / nt, heads * (i + 1) / nt)
        if i == 0 { run(h0, h1, scoresP); return }
        let s = FloatPtr.allocate(capacity: t * t)
        defer { s.deallocate() }
        run(h0, h1, s)
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
