// swift-tools-version: 6.1
// cowbd: a copy-on-write block device in userspace, served over NBD.
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .unsafeFlags(["-warnings-as-errors"]),
]

let package = Package(
    name: "cowbd",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "cowbd", targets: ["cowbd"]),
        // The parsers of outside bytes, for the fuzz targets in Fuzz/ (a separate package).
        .library(name: "CowFormat", targets: ["CowFormat"]),
        .library(name: "CowStore", targets: ["CowStore"]),
        .library(name: "NBDProtocol", targets: ["NBDProtocol"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        // serve --metrics: Prometheus text exposition (counters are atomics, no allocation).
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CNBD", pkgConfig: "libnbd", providers: [.apt(["libnbd-dev"])]),
        // TLS for STARTTLS (`serve --tls-certificates`, `--tls-psk`), as nbdkit and qemu use.
        .systemLibrary(
            name: "CGnuTLS", pkgConfig: "gnutls", providers: [.apt(["libgnutls28-dev"])]),
        .systemLibrary(name: "CLinux"),
        .systemLibrary(
            name: "CXXHash", pkgConfig: "libxxhash", providers: [.apt(["libxxhash-dev"])]),
        // zstd's dictionary trainer (ZDICT_trainFromBuffer) for `compress`'s shared dictionary.
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        // Locked, threads and the monotonic clock: shared by the library targets and the CLI.
        .target(name: "CowSupport", swiftSettings: strict),
        .target(name: "CowFormat", dependencies: ["CXXHash"], swiftSettings: strict),
        .target(
            name: "CowStore",
            dependencies: [
                "CowFormat", "CowSupport", "CLZ4", "CZstd", "CLinux", "CNBD",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .target(name: "NBDProtocol", swiftSettings: strict),
        .target(
            name: "NBDServer",
            dependencies: [
                "NBDProtocol", "CowStore", "CowSupport", "CGnuTLS",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: strict),
        .target(name: "NBDClient", dependencies: ["CNBD", "NBDProtocol"], swiftSettings: strict),
        .executableTarget(
            name: "cowbd",
            dependencies: [
                "NBDServer", "CowStore", "CowFormat", "CowSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .testTarget(
            name: "CowFormatTests", dependencies: ["CowFormat", "TestSupport"],
            swiftSettings: strict),
        .testTarget(
            name: "CowStoreTests", dependencies: ["CowStore", "TestSupport"],
            swiftSettings: strict),
        .testTarget(name: "NBDProtocolTests", dependencies: ["NBDProtocol"], swiftSettings: strict),
        .testTarget(
            name: "NBDServerTests",
            dependencies: [
                "NBDServer", "NBDClient", "NBDProtocol", "CowStore", "TestSupport", "CGnuTLS",
                "CNBD",
            ],
            swiftSettings: strict),
        // Runs the built cowbd: spawning, waiting and the watchdog, shared by the tests above
        // and below; and the seeded generator every suite uses.
        .target(name: "TestSupport", path: "Tests/TestSupport", swiftSettings: strict),
        .testTarget(
            name: "CLITests", dependencies: ["NBDClient", "TestSupport"], swiftSettings: strict),
    ]
)
