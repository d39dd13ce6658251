// swift-tools-version:6.0
// A package that uses zeroseg as a dependency, by path: proof that the library product builds as
// somebody else's dependency (no unsafe flags, resources found through the package).
import PackageDescription

let package = Package(
    name: "zeroseg-example",
    dependencies: [.package(name: "zeroseg", path: "../..")],
    targets: [
        .executableTarget(
            name: "zeroseg-example",
            dependencies: [.product(name: "ZeroSeg", package: "zeroseg")]
        ),
    ]
)
