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
        // AVX2 element-wise kernels over glibc's libmvec (vector expf/erff/tanhf)
        .target(
            name: "CKernels",
            cSettings: [.unsafeFlags(["-O3", "-mavx2", "-mfma"])],
            linkerSettings: [.linkedLibrary("mvec"), .linkedLibrary("m")]
        ),
        .target(
            name: "ZeroSeg",
            dependencies: ["CKernels", "CBLAS", "CJPEG", "CPNG", "CUTF8Proc", "CZlib", "CImageShim", "CFreeType", "CVLFeat",
                           .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: [.unsafeFlags(["-Ounchecked"], .when(configuration: .release))]
        ),
        .executableTarget(
            name: "zeroseg",
            dependencies: ["ZeroSeg", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .testTarget(
            name: "ZeroSegTests",
            dependencies: ["ZeroSeg"],
            resources: [.copy("Fixtures")]
        ),
    ]
)
