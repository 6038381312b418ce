// swift-tools-version: 6.1
// libFuzzer targets for cowbd's parsers of outside bytes: one executable a parser. Kept out of
// the main package so `swift build` and `swift test` never build them; tools/fuzz builds them
// with `-sanitize=fuzzer,address` and runs them over the seeds in corpus/.
import PackageDescription

/// A fuzz target: `Sources/<target>`, built as the executable `fuzz-<name>`.
func fuzzTarget(_ name: String, _ target: String, _ dependencies: [Target.Dependency])
    -> (Product, Target)
{
    (
        .executable(name: "fuzz-\(name)", targets: [target]),
        .executableTarget(
            name: target, dependencies: dependencies,
            swiftSettings: [.swiftLanguageMode(.v6), .unsafeFlags(["-parse-as-library"])])
    )
}

let cowFormat = Target.Dependency.product(name: "CowFormat", package: "cowbd")
let cowStore = Target.Dependency.product(name: "CowStore", package: "cowbd")
let nbdProtocol = Target.Dependency.product(name: "NBDProtocol", package: "cowbd")
let system = Target.Dependency.product(name: "SystemPackage", package: "swift-system")

let fuzzTargets = [
    fuzzTarget("handshake", "FuzzHandshake", [nbdProtocol, "FuzzSupport"]),
    fuzzTarget("request", "FuzzRequest", [nbdProtocol, "FuzzSupport"]),
    fuzzTarget("store-header", "FuzzStoreHeader", [cowFormat, cowStore, "FuzzSupport", system]),
    fuzzTarget(
        "compressed-image", "FuzzCompressedImage", [cowFormat, cowStore, "FuzzSupport", system]),
    fuzzTarget("diff-native", "FuzzNativeDiff", ["FuzzSupport"]),
    fuzzTarget("diff-rbd", "FuzzRBDDiff", ["FuzzSupport"]),
]

let package = Package(
    name: "cowbd-fuzz",
    products: fuzzTargets.map(\.0),
    dependencies: [
        .package(name: "cowbd", path: ".."),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
    ],
    targets: fuzzTargets.map(\.1) + [
        .systemLibrary(name: "CLibFuzzer"),
        .systemLibrary(
            name: "FuzzXXHash", pkgConfig: "libxxhash", providers: [.apt(["libxxhash-dev"])]),
        .target(
            name: "FuzzSupport",
            dependencies: ["CLibFuzzer", "FuzzXXHash", cowFormat, cowStore, system],
            swiftSettings: [.swiftLanguageMode(.v6)]),
    ]
)
