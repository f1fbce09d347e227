// swift-tools-version:6.0
import PackageDescription

// Ember depends on the toolchain only. Hot integer kernels live in the C target, which is
// always optimised (a debug build of them would make the end-to-end tests crawl); its AVX2
// paths are chosen at run time, so the binary still runs on CPUs without AVX2. OpenCL is
// loaded with dlopen at run time (Backends/OpenCL), so building needs no OpenCL at all.
let package = Package(
    name: "Ember",
    products: [
        .library(name: "EmberCore", targets: ["EmberCore"]),
        .executable(name: "ember", targets: ["ember"]),
    ],
    targets: [
        .target(
            name: "CEmberKernels",
            cSettings: [.unsafeFlags(["-O3", "-fno-math-errno"])],
            // dlopen for the OpenCL loader (part of libc on recent glibc; older ones need libdl).
            linkerSettings: [.linkedLibrary("dl", .when(platforms: [.linux]))]
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
