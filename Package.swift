// swift-tools-version:6.0
import PackageDescription

// Ember depends on the toolchain only. Hot integer kernels live in the C target, which is
// always optimised (a debug build of them would make the end-to-end tests crawl); its AVX2
// paths are chosen at run time, so the binary still runs on CPUs without AVX2.
let package = Package(
    name: "Ember",
    products: [
        .library(name: "EmberCore", targets: ["EmberCore"]),
        .executable(name: "ember", targets: ["ember"]),
    ],
    targets: [
        .target(
            name: "CEmberKernels",
            cSettings: [.unsafeFlags(["-O3", "-fno-math-errno"])]
        ),
        .target(
            name: "EmberCore",
            dependencies: ["CEmberKernels"]
        ),
        .executableTarget(
            name: "ember",
            dependencies: ["EmberCore"]
        ),
        .testTarget(
            name: "EmberCoreTests",
            dependencies: ["EmberCore"],
            // Reference outputs from llama.cpp, read by path from the tests (scripts/make-*-fixture).
            exclude: ["Fixtures"]
        ),
    ],
    swiftLanguageModes: [.v5]
)
