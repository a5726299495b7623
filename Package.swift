// swift-tools-version:6.1
// lorad: one quantized base model, many LoRA adapters per request, background fine-tuning.
//
// Targets:
//   CKernels           small C target: quantized dot-product / dequantization kernels, runtime CPU dispatch
//   COpenBLAS          system library: cblas_sgemm for dense float GEMM (LoRA, training, attention)
//   CSystemd           system library: sd_notify, sd_listen_fds
//   CCrypto            system library: OpenSSL libcrypto (SHA-256 of adapter files)
//   SentencePieceShim  C++ with an extern "C" API over libsentencepiece
//   Runtime            GGUF, quant types, tokenizer, model forward, KV cache, sampling, LoRA application
//   Train              LoRA training on the frozen quantized base: forward/backward, losses, AdamW, data, export
//   Daemon             the lorad server as a library (API, scheduler, engine, adapters, systemd)
//   lorad / loractl    executables
import PackageDescription

let package = Package(
    name: "lorad",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "lorad", targets: ["lorad"]),
        .executable(name: "loractl", targets: ["loractl"]),
        .library(name: "Runtime", targets: ["Runtime"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
    ],
    targets: [
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .target(
            name: "SentencePieceShim",
            linkerSettings: [.linkedLibrary("sentencepiece")]
        ),
        // Kernels are always compiled optimized so debug builds stay usable with the real model.
        .target(
            name: "CKernels",
            cSettings: [.unsafeFlags(["-O3", "-fno-math-errno"])]
        ),
        .target(
            name: "Runtime",
            dependencies: ["CKernels", "COpenBLAS", "SentencePieceShim"]
        ),
        .target(
            name: "Train",
            dependencies: ["Runtime", "CKernels", "COpenBLAS"]
        ),
        .target(
            name: "Daemon",
            dependencies: [
                "Runtime", "Train", "CSystemd", "CCrypto",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            exclude: ["README.md"]
        ),
        .executableTarget(name: "lorad", dependencies: ["Daemon", "Runtime"]),
        .executableTarget(
            name: "loractl",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "RuntimeTests", dependencies: ["Runtime"], resources: [.copy("Fixtures")]),
        .testTarget(
            name: "DaemonTests", dependencies: ["Daemon", "Runtime", "Train"],
            // Read by path (the tests and scripts/continual_demo.py share it), not bundled.
            exclude: ["Fixtures"]),
        .testTarget(name: "TrainTests", dependencies: ["Train", "Runtime"]),
    ],
    swiftLanguageModes: [.v5],
    cxxLanguageStandard: .cxx17
)
