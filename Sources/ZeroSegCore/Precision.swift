import CMatmul
import Foundation

/// The arithmetic of the encoders' linear layers (attention's q | k | v and output projections,
/// the MLPs). Layer norms, softmax, attention's own products, the patch embedding and the final
/// projections are fp32 at every precision.
/// - `fp32`: equivalent to the reference (OpenBLAS, or oneDNN on packed weights: `MatmulBackend`).
/// - `bf16`: weights stored once in bf16, activations rounded to bf16 per layer (nearest even),
///   fp32 accumulation. Needs AVX512_BF16 (or AMX).
/// - `int8`: weights quantised per output channel (symmetric, int8), activations per token
///   (dynamic, asymmetric u8), u8·s8 products with int32 accumulation, dequantised to fp32.
///   Needs AVX512_VNNI (or AVX_VNNI).
public enum Precision: String, Sendable, CaseIterable, Codable {
    case fp32, bf16, int8

    /// Whether this CPU runs the precision with the instructions it needs (as oneDNN sees the
    /// CPU: `ONEDNN_MAX_CPU_ISA` limits it). fp32 always.
    public var isSupported: Bool {
        switch self {
        case .fp32: true
        case .bf16: zs_mm_native(ZS_MM_BF16) != 0
        case .int8: zs_mm_native(ZS_MM_U8S8) != 0
        }
    }

    /// The instructions the precision needs, as a user reads them.
    public var requirement: String {
        switch self {
        case .fp32: "nothing beyond x86-64"
        case .bf16: "AVX512_BF16 or AMX"
        case .int8: "AVX512_VNNI or AVX_VNNI"
        }
    }

    /// The precision to run when `requested` is asked for: itself when the CPU supports it, else
    /// fp32 with a one-line notice saying why (never a slow emulation).
    public static func resolve(_ requested: Precision) -> (precision: Precision, notice: String?) {
        guard !requested.isSupported else { return (requested, nil) }
        return (.fp32, "notice: \(requested.unsupportedReason): running fp32")
    }

    /// Why this CPU cannot run the precision ("bf16 needs AVX512_BF16 or AMX, which this CPU lacks").
    public var unsupportedReason: String { "\(rawValue) needs \(requirement), which this CPU lacks" }
}

/// Which library computes the fp32 linear layers: OpenBLAS on the weights as loaded (the default),
/// or oneDNN with weights packed once (`ZEROSEG_MATMUL=onednn`, read once): about 15% faster on
/// the ViT-B/16 image encoder here, equivalent to the reference (the golden tests pass with it),
/// not yet the default: with the portable element-wise kernels, one head-training test
/// (HeadTuneTests.imageConditionedHeadsLearnWhatTheLinearHeadCannot) does not learn with it, and
/// why is not known (docs/benchmarks.md). bf16 and int8 always run through oneDNN.
public enum MatmulBackend: String, Sendable {
    case onednn, openblas

    /// The backend of fp32 linear layers in this process.
    public static let fp32: MatmulBackend = {
        let v = ProcessInfo.processInfo.environment["ZEROSEG_MATMUL"] ?? ""
        return MatmulBackend(rawValue: v.lowercased()) ?? .openblas
    }()

    /// The precision fp32 weights are packed for (nil: not packed, OpenBLAS).
    public var packing: Precision? { self == .onednn ? .fp32 : nil }

    /// oneDNN's version.
    public static var oneDNNVersion: String { String(cString: zs_mm_version()) }

    /// The instruction set oneDNN runs with (its name for the CPU, limited by `ONEDNN_MAX_CPU_ISA`).
    public static var oneDNNISA: String {
        let isa = Int(zs_mm_isa())
        let names: [(Int, String)] = [(0x3e7, "avx512_core_amx"), (0xe7, "avx512_core_bf16"), (0x67, "avx512_core_vnni"),
                                      (0x27, "avx512_core"), (0x407, "avx2_vnni"), (0x7, "avx2"), (0x3, "avx"), (0x1, "sse41")]
        return names.first { isa & $0.0 == $0.0 }?.1 ?? String(format: "0x%x", isa)
    }
}
