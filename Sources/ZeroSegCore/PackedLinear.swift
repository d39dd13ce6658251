import CMatmul
import Foundation

// Linear layers with weights packed once for oneDNN's matmul (CMatmul), at one `Precision`:
//
//   out[M, N] (+)= x[M, K] · W[N, K]ᵀ (+ bias[N])
//
// fp32: x and W as they are. bf16: x rounded to bf16 row by row (nearest even), W stored in bf16,
// fp32 accumulation. int8: x quantised per row (u8, asymmetric, `zs_quantize_rows_u8`), W per
// output channel (s8, symmetric: scale = max|W[n, :]| / 127, q = clamp(rint(W / scale), -127, 127)),
// int32 products, then out = x_scale[m] · w_scale[n] · (acc - x_zp[m] · Σ_k q[n, k]) + bias.
// Rows are split over the thread budget (blocks of at least 32 rows, edges at multiples of 16);
// each block converts its own rows and runs one single-threaded oneDNN product, so a row's result
// depends on the thread count only through which block it falls in.

/// One linear layer's weights, packed for oneDNN at one precision. Immutable; products may run
/// concurrently from several threads.
public final class PackedWeights: @unchecked Sendable {
    public let precision: Precision
    public let outFeatures: Int, inFeatures: Int
    private let handle: OpaquePointer
    /// The fp32 weights, for a block oneDNN fails to compute (it then runs with OpenBLAS).
    private let fp32Weights: ConstFloatPtr
    private let failures = Locked<(count: Int, last: String?)>((0, nil))
    /// int8: per output channel, the weights' scale and the sum of the quantised row ([N] each).
    private let scales: [Float], columnSums: [Int32]

    /// Packs w[N, K] (fp32, row-major, PyTorch's [out, in]). Throws when oneDNN refuses.
    public init(_ w: ConstFloatPtr, out n: Int, in k: Int, precision: Precision) throws {
        self.precision = precision; outFeatures = n; inFeatures = k; fp32Weights = w
        var err = [CChar](repeating: 0, count: 256)
        var packed: OpaquePointer?
        var s: [Float] = [], sums: [Int32] = []
        switch precision {
        case .fp32:
            packed = zs_mm_pack(ZS_MM_F32, w, Int64(n), Int64(k), &err, err.count)
        case .bf16:
            var b = [UInt16](repeating: 0, count: n * k)
            zs_f32_to_bf16(w, &b, n * k)
            packed = zs_mm_pack(ZS_MM_BF16, b, Int64(n), Int64(k), &err, err.count)
        case .int8:
            var q = [Int8](repeating: 0, count: n * k)
            (s, sums) = q.withUnsafeMutableBufferPointer { quantizeWeightsPerChannel(w, n: n, k: k, into: $0.baseAddress!) }
            packed = zs_mm_pack(ZS_MM_U8S8, q, Int64(n), Int64(k), &err, err.count)
        }
        guard let packed else { throw ZeroSegError(cMessage(err)) }
        handle = packed; scales = s; columnSums = sums
    }

    deinit { zs_mm_free(handle) }

    /// Bytes of the packed weights.
    public var bytes: Int { zs_mm_bytes(handle) }
    /// oneDNN's implementation (e.g. "brg:avx512_core_bf16").
    public var implementation: String { String(cString: zs_mm_impl(handle)) }

    /// Products oneDNN failed (each then computed in fp32 with OpenBLAS), and the last reason.
    public var failedProducts: (count: Int, last: String?) { failures.withLock { $0 } }

    /// out[M, N] = x[M, K] · Wᵀ (+ bias) (accumulate: +=), row strides ldx / ldo (default K / N),
    /// split over the thread budget.
    public func linear(_ x: ConstFloatPtr, _ bias: ConstFloatPtr?, _ out: FloatPtr, m: Int, ldx: Int? = nil, ldo: Int? = nil,
                       accumulate: Bool = false) {
        let ldx = ldx ?? inFeatures, ldo = ldo ?? outFeatures
        let n = outFeatures, k = inFeatures
        let nt = threadBudget > 1 && m * n * k >= linearSplitMinWork ? max(1, min(threadBudget, m / linearMinRowsPerThread)) : 1
        if nt <= 1 { return rows(x, bias, out, m: m, ldx: ldx, ldo: ldo, accumulate: accumulate) }
        nonisolated(unsafe) let (xp, bp, op) = (x, bias, out)
        parallelFor(nt) { i in
            let (r0, r1) = splitBlock(m, i, nt)
            self.rows(xp + r0 * ldx, bp, op + r0 * ldo, m: r1 - r0, ldx: ldx, ldo: ldo, accumulate: accumulate)
        }
    }

    /// `linear` on the calling thread: one oneDNN product (or, when oneDNN fails, OpenBLAS on
    /// the fp32 weights, counted in `failedProducts`).
    private func rows(_ x: ConstFloatPtr, _ bias: ConstFloatPtr?, _ out: FloatPtr, m: Int, ldx: Int, ldo: Int, accumulate: Bool) {
        guard m > 0 else { return }
        let n = outFeatures, k = inFeatures
        var err = [CChar](repeating: 0, count: 256)
        var rc: Int32 = 0
        switch precision {
        case .fp32:
            rc = zs_mm_run(handle, x, Int64(m), Int64(ldx), out, Int64(ldo), bias, accumulate ? 1 : 0, &err, err.count)
        case .bf16:
            // xb[M, K] = bf16(x)
            let xb = UnsafeMutablePointer<UInt16>.allocate(capacity: m * k)
            defer { xb.deallocate() }
            if ldx == k { zs_f32_to_bf16(x, xb, m * k) } else { for r in 0..<m { zs_f32_to_bf16(x + r * ldx, xb + r * k, k) } }
            rc = zs_mm_run(handle, xb, Int64(m), Int64(k), out, Int64(ldo), bias, accumulate ? 1 : 0, &err, err.count)
        case .int8:
            // xq[M, K] u8 with scale[M], zp[M]; acc[M, N] = xq · qᵀ (int32); out from acc
            let xq = UnsafeMutablePointer<UInt8>.allocate(capacity: m * k)
            let acc = UnsafeMutablePointer<Int32>.allocate(capacity: m * n)
            var xs = [Float](repeating: 0, count: m), zp = [Int32](repeating: 0, count: m)
            defer { xq.deallocate(); acc.deallocate() }
            zs_quantize_rows_u8(x, Int64(m), Int64(k), Int64(ldx), xq, &xs, &zp)
            rc = zs_mm_run(handle, xq, Int64(m), Int64(k), acc, Int64(n), nil, 0, &err, err.count)
            if rc == 0 {
                zs_dequantize_s32(acc, Int64(m), Int64(n), xs, zp, scales, columnSums, bias, out, Int64(ldo), accumulate ? 1 : 0)
            }
        }
        if rc != 0 {
            let why = cMessage(err)
            failures.withLock { $0 = ($0.count + 1, why) }
            linearRows(x, fp32Weights, bias, out, m: m, n: n, k: k, ldx: ldx, ldo: ldo, accumulate: accumulate)
        }
    }
}

/// The NUL-terminated message a CMatmul call wrote into `buffer`.
func cMessage(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Symmetric per-output-channel int8 quantisation of w[N, K]: scale[n] = max_k |w[n, k]| / 127
/// (1 for an all-zero row), q[n, k] = clamp(rint(w[n, k] / scale[n]), -127, 127); also each row's
/// sum of q (for the activations' zero point). Returns (scale[N], Σq[N]).
/// Rows are split over the thread budget (each row on its own: the same result for any split).
package func quantizeWeightsPerChannel(_ w: ConstFloatPtr, n: Int, k: Int, into q: UnsafeMutablePointer<Int8>) -> ([Float], [Int32]) {
    var scales = [Float](repeating: 1, count: n), sums = [Int32](repeating: 0, count: n)
    scales.withUnsafeMutableBufferPointer { sp in sums.withUnsafeMutableBufferPointer { up in
        nonisolated(unsafe) let (sc, su, qp, wp) = (sp.baseAddress!, up.baseAddress!, q, w)
        parallelChunks(n, work: n * k) { r0, r1 in
            for r in r0..<r1 {
                let row = wp + r * k, qr = qp + r * k
                var mx: Float = 0
                for i in 0..<k { mx = max(mx, abs(row[i])) }
                let s: Float = mx > 0 ? mx / 127 : 1
                var sum: Int32 = 0
                for i in 0..<k {
                    let v = min(max((row[i] / s).rounded(.toNearestOrEven), -127), 127)
                    qr[i] = Int8(v); sum += Int32(v)
                }
                sc[r] = s; su[r] = sum
            }
        }
    } }
    return (scales, sums)
}

/// A layer's weights packed on first use (thread-safe: one thread packs, the others wait), or
/// never when packing fails (the layer then runs on the fp32 weights with OpenBLAS; `failure`
/// says why).
public final class LazyPackedWeights: @unchecked Sendable {
    public let precision: Precision
    private let weight: ConstFloatPtr
    private let n: Int, k: Int
    private let lock = NSLock()
    private var state: Result<PackedWeights, Error>?

    public init(_ w: ConstFloatPtr, out n: Int, in k: Int, precision: Precision) {
        weight = w; self.n = n; self.k = k; self.precision = precision
    }

    /// The packed weights (packing them now if this is the first call); nil when packing failed.
    public var packed: PackedWeights? {
        lock.lock(); defer { lock.unlock() }
        if state == nil { state = Result { try PackedWeights(weight, out: n, in: k, precision: precision) } }
        return try? state!.get()
    }

    /// Why packing failed, once it was tried.
    public var failure: String? {
        lock.lock(); defer { lock.unlock() }
        if case .failure(let e)? = state { return "\(e)" }
        return nil
    }
}
