import CKernels

/// Which build of the element-wise kernels (softmax, GELU variants; CKernels) runs. The CPU's
/// features choose it once, on first use: AVX-512 (F/BW/DQ/VL) when present, else AVX2 + FMA, else
/// portable C (the only build on other architectures). The environment variable `ZEROSEG_KERNELS`
/// (`portable`, `avx2`, `avx512` or `auto`, read once) forces one; a level the CPU cannot run
/// falls back to the best one it can, with one line on stderr.
public enum KernelLevel: String, Sendable, CaseIterable, Comparable {
    case portable, avx2, avx512

    /// The level in use in this process.
    public static var active: KernelLevel { KernelLevel(zs_kernels_level()) }

    /// Whether this CPU (and build) can run the level.
    public var isSupported: Bool { zs_kernels_supported(code) != 0 }

    /// The best level this CPU supports (what `auto` picks).
    public static var best: KernelLevel { allCases.last { $0.isSupported } ?? .portable }

    public static func < (a: KernelLevel, b: KernelLevel) -> Bool { a.code < b.code }

    var code: Int32 {
        switch self {
        case .portable: Int32(ZS_KERNELS_PORTABLE)
        case .avx2: Int32(ZS_KERNELS_AVX2)
        case .avx512: Int32(ZS_KERNELS_AVX512)
        }
    }

    init(_ code: Int32) {
        switch code {
        case Int32(ZS_KERNELS_AVX512): self = .avx512
        case Int32(ZS_KERNELS_AVX2): self = .avx2
        default: self = .portable
        }
    }

    // This level's kernels, whatever the active one is (for tests comparing the builds). An
    // unsupported level runs the portable kernel.

    /// Softmax over row[0..<valid] in place; row[valid..<count] = 0.
    public func softmaxRow(_ row: FloatPtr, valid: Int, count: Int) {
        zs_softmax_row_at(code, row, Int32(valid), Int32(count))
    }

    /// In-place activation over x[count], on the calling thread.
    public func activate(_ x: FloatPtr, count: Int, _ act: Activation) {
        switch act {
        case .quickGELU: zs_quick_gelu_at(code, x, count)
        case .gelu: zs_gelu_erf_at(code, x, count)
        case .geluTanh, .geluNew: zs_gelu_tanh_at(code, x, count)
        }
    }

    /// The activation's backward over g[count] in place: g[i] *= act'(x[i]), on the calling thread.
    public func activationBackward(_ x: ConstFloatPtr, _ g: FloatPtr, count: Int, _ act: Activation) {
        switch act {
        case .quickGELU: zs_quick_gelu_grad_at(code, x, g, count)
        case .gelu: zs_gelu_erf_grad_at(code, x, g, count)
        case .geluTanh, .geluNew: zs_gelu_tanh_grad_at(code, x, g, count)
        }
    }
}
