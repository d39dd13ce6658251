// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "zeroseg",
    products: [
        .library(name: "ZeroSeg", targets: ["ZeroSeg"]),
        .executable(name: "zeroseg", targets: ["zeroseg"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/vapor/multipart-kit", from: "4.7.1"),
    ],
    targets: [
        // C system libraries (Debian: libopenblas-dev libjpeg-dev libpng-dev libutf8proc-dev zlib1g-dev
        // libvlfeat-dev)
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS"),
        .systemLibrary(name: "CJPEG", path: "Sources/CJPEG"),
        .systemLibrary(name: "CPNG", path: "Sources/CPNG"),
        .systemLibrary(name: "CUTF8Proc", path: "Sources/CUTF8Proc"),
        .systemLibrary(name: "CZlib", path: "Sources/CZlib"),
        // VLFeat's SLIC superpixels for the two-stage mode's mask proposals
        .systemLibrary(name: "CVLFeat", path: "Sources/CVLFeat"),
        // FreeType 2 for the overlay legend's text (Debian: libfreetype-dev)
        .systemLibrary(name: "CFreeType", path: "Sources/CFreeType", pkgConfig: "freetype2",
                       providers: [.apt(["libfreetype-dev"])]),
        // setjmp/longjmp wrappers so libjpeg/libpng errors return instead of exit()
        .target(
            name: "CImageShim",
            dependencies: ["CJPEG", "CPNG"],
            linkerSettings: [.linkedLibrary("jpeg"), .linkedLibrary("png16")]
        ),
        // Element-wise kernels: portable C, and AVX2+FMA / AVX-512 over glibc's libmvec (vector
        // expf/erff/tanhf) chosen at run time by the CPU (per-function target attributes, no -m flags)
        .target(
            name: "CKernels",
            linkerSettings: [.linkedLibrary("mvec"), .linkedLibrary("m")]
        ),
        // Matrix products with pre-packed weights (fp32, bf16, u8·s8) through oneDNN (Debian
        // libdnnl-dev, oneDNN 2.6; its threading runtime is libgomp), and the low-precision helpers.
        .target(
            name: "CMatmul",
            linkerSettings: [.linkedLibrary("dnnl"), .linkedLibrary("gomp"), .linkedLibrary("m")]
        ),
        // FAISS (Debian libfaiss-dev: a static C++ libfaiss.a, no C API symbols) behind a small C
        // API. libfaiss.a needs OpenMP (libgomp), BLAS and LAPACK (sgemm_, sgesvd_, ...: all in
        // libopenblas, the same OpenBLAS ZeroSegCore uses) and zlib for the file checksum; SwiftPM
        // links libstdc++ for the C++ source.
        .target(
            name: "CFaiss",
            linkerSettings: [.linkedLibrary("faiss"), .linkedLibrary("openblas"), .linkedLibrary("gomp"),
                             .linkedLibrary("z")]
        ),
        // The library, bottom to top (ARCHITECTURE.md): each target sees only the ones below it.
        .target(name: "ZeroSegCore", dependencies: ["CKernels", "CBLAS", "CMatmul"]),
        .target(name: "ZeroSegFormats", dependencies: ["ZeroSegCore", "CZlib"]),
        .target(name: "ZeroSegImaging",
                dependencies: ["ZeroSegCore", "CJPEG", "CPNG", "CImageShim", "CFreeType", "CZlib"]),
        .target(name: "ZeroSegText", dependencies: ["ZeroSegCore", "CUTF8Proc", "CZlib"],
                exclude: ["Resources/README.md", "Resources/LICENSE-open_clip"],
                resources: [.copy("Resources/bpe_simple_vocab_16e6.txt.gz")]),
        .target(name: "ZeroSegCLIP",
                dependencies: ["ZeroSegCore", "ZeroSegFormats", "ZeroSegImaging", "ZeroSegText", "CKernels", "CBLAS",
                               .product(name: "Crypto", package: "swift-crypto")]),
        .target(name: "ZeroSegHub",
                dependencies: ["ZeroSegCore", "ZeroSegCLIP", .product(name: "Crypto", package: "swift-crypto")]),
        .target(name: "ZeroSegSegmentation",
                dependencies: ["ZeroSegCore", "ZeroSegFormats", "ZeroSegImaging", "ZeroSegCLIP", "CVLFeat", "CKernels", "CBLAS",
                               "CImageShim", "CPNG", .product(name: "Crypto", package: "swift-crypto")]),
        .target(name: "ZeroSegTuning",
                dependencies: ["ZeroSegCore", "ZeroSegFormats", "ZeroSegImaging", "ZeroSegCLIP", "ZeroSegSegmentation", "CKernels", "CBLAS"]),
        // Approximate nearest-neighbour search over float vectors (FAISS IVF), for embedding indexes.
        .target(name: "ZeroSegANN", dependencies: ["ZeroSegCore", "CFaiss"]),
        // The embedding index: float16 vector shards (memory-mapped) + SQLite metadata (GRDB, WAL),
        // exact top-k with BLAS, region embeddings, search by text / image / region.
        .target(name: "ZeroSegIndex",
                dependencies: ["ZeroSegCore", "ZeroSegImaging", "ZeroSegCLIP", "ZeroSegSegmentation", "ZeroSegANN", "CKernels", "CBLAS", "CZlib",
                               .product(name: "GRDB", package: "GRDB.swift"),
                               .product(name: "Crypto", package: "swift-crypto")]),
        // The product: re-exports the layers above.
        .target(name: "ZeroSeg",
                dependencies: ["ZeroSegCore", "ZeroSegFormats", "ZeroSegImaging", "ZeroSegText", "ZeroSegCLIP",
                               "ZeroSegHub", "ZeroSegSegmentation", "ZeroSegTuning", "ZeroSegANN", "ZeroSegIndex"]),
        // `zeroseg serve`: the HTTP API and the web page (Hummingbird 2), metrics (swift-prometheus),
        // multipart bodies (MultipartKit). Over the product; the CLI is a thin layer over it.
        .target(name: "ZeroSegService",
                dependencies: ["ZeroSeg",
                               .product(name: "Hummingbird", package: "hummingbird"),
                               .product(name: "Prometheus", package: "swift-prometheus"),
                               .product(name: "MultipartKit", package: "multipart-kit")],
                resources: [.copy("Web"), .copy("openapi.json")]),
        // Test-only code, in no product: naive reference kernels and the PNG reader the writer
        // tests use. Only the test target depends on it.
        .target(name: "ZeroSegTestSupport",
                dependencies: ["ZeroSegCore", "ZeroSegImaging", "ZeroSegSegmentation", "CImageShim", "CPNG"]),
        .executableTarget(
            name: "zeroseg",
            dependencies: ["ZeroSeg", "ZeroSegService", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .testTarget(
            name: "ZeroSegTests",
            dependencies: ["ZeroSeg", "ZeroSegTestSupport", "ZeroSegANN", "ZeroSegService", "CMatmul",
                           .product(name: "HummingbirdTesting", package: "hummingbird"),
                           .product(name: "GRDB", package: "GRDB.swift")],
            resources: [.copy("Fixtures")]
        ),
    ]
)

// The fuzz targets (Tests/Fuzz, run by scripts/fuzz.sh): one libFuzzer executable, declared only when
// ZEROSEG_FUZZ=1 so that no normal build, test run or product sees it. scripts/fuzz.sh builds it in
// its own scratch path (.build-fuzz) with `--sanitize=fuzzer --sanitize=address` (Swift and C
// targets alike) and `-enable-testing` (the harnesses reach internal parsers with @testable).
if Context.environment["ZEROSEG_FUZZ"] == "1" {
    package.targets.append(.executableTarget(
        name: "zeroseg-fuzz",
        dependencies: ["ZeroSeg", "ZeroSegService", .product(name: "Hummingbird", package: "hummingbird"),
                       .product(name: "GRDB", package: "GRDB.swift")],
        path: "Tests/Fuzz/Sources",
        // Harness globals (the selected target, set-up state) are plain globals: one thread.
        swiftSettings: [.swiftLanguageMode(.v5)]))
    package.products.append(.executable(name: "zeroseg-fuzz", targets: ["zeroseg-fuzz"]))
}
