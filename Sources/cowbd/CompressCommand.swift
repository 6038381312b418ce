// `cowbd compress`: makes a compressed read-only base from a raw image or a store's disk, and
// checks one (--verify). Parses options and prints; the format, the parallel compression and
// the checks are CowStore's (ImageCompressor, CompressedBaseImage+Verify).

import ArgumentParser
import CowFormat
import CowStore
import CowSupport
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

extension CompressionLevel: ExpressibleByArgument {}

struct CompressCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compress",
        abstract: "Compress an image (or a store's disk) into a read-only base; or verify one.",
        discussion: """
            SRC is a raw image file, a block device, a compressed image, or a COW store: then \
            the disk it presents (its base plus its changes) is compressed, so flattening a \
            VM's disk into a new golden image is one command. The store is opened read-only \
            under its lock, so it cannot be served meanwhile.

            DST is a cowbd-lz4 image: blocks of --block-size bytes, each compressed with LZ4 \
            on its own against a dictionary of up to 64 KiB that zstd's trainer makes from \
            samples of SRC and that the image stores once (or stored as it is if LZ4 cannot \
            shrink it; an all-zero block takes no space), with a checksum each and an index. It can be the base of `cowbd create`, \
            and it has the same fingerprint as its source, so a store made over the raw image \
            also works over the compressed one put in its place.

            DST is written to an unnamed temporary file beside it, synced and then linked into \
            place: an interrupted run leaves no DST and no temporary file. An existing DST is \
            refused unless --force.

            On a terminal, a status line shows the bytes done, the rate and the ratio so far. \
            With --json the result is one object: input_bytes, output_bytes, ratio \
            (input / output), seconds, block_size, blocks, zero_blocks, raw_blocks, level, \
            dictionary_bytes.

            --verify IMAGE reads every block of IMAGE, checks its checksum and that it \
            decompresses, and recomputes the fingerprint; with SRC and DST it does so after \
            compressing. With --json: path, intact, blocks, zero_blocks, raw_blocks, \
            damaged_blocks, damaged (block, reason), fingerprint_problem (null if it matches), \
            dictionary_problem (null if the dictionary, if any, matches its checksum); after \
            compressing, under the key "verify".

            Examples:
              cowbd compress golden.img golden.lz4
              cowbd compress vm.cow golden-v2.lz4 --level fast
              cowbd compress --verify golden.lz4

            Exit status: 0 done (and intact), 1 failed or damage found (the reason on \
            stderr), 64 bad usage.
            """)

    @Argument(
        help: ArgumentHelp(
            "The image or store to compress (with --verify alone: the image to verify).",
            valueName: "src"))
    var source: String

    @Argument(help: ArgumentHelp("The compressed image to write.", valueName: "dst"))
    var destination: String?

    @Option(
        help: ArgumentHelp(
            "Uncompressed bytes per block: a power of two from 16K to 1M. "
                + "(default: \((1 << LZ4BlockGeometry.defaultShift) >> 10)K)",
            discussion:
                "Larger blocks compress better; a read decompresses the whole block it "
                + "falls in, so smaller blocks serve random reads faster.",
            valueName: "size"))
    var blockSize: String?

    @Option(
        help: ArgumentHelp(
            "high: LZ4 HC, smaller and as fast to read; fast: LZ4, about a sixth of the CPU "
                + "to make, 6% larger.",
            discussion:
                "high is the default: an image is made once and read by every host, and at high "
                + "it stays within 10% of a zstd qcow2's size (docs/FORMAT.md)."))
    var level: CompressionLevel = .high

    @Option(help: "Compressing threads, 1 to 64. (default: the number of cores)")
    var threads: Int?

    @Flag(
        inversion: .prefixedNo,
        help: ArgumentHelp(
            "Compress every block against a dictionary trained on SRC. (default: on)",
            discussion:
                "Without it, small blocks lose much of their ratio: use 256K blocks then."))
    var dictionary = true

    @Flag(help: "Replace DST if it exists.")
    var force = false

    @Flag(
        help:
            "Check every block and the fingerprint of the image (after compressing, if SRC and DST are given)."
    )
    var verify = false

    @OptionGroup var output: OutputOptions

    func validate() throws {
        guard destination != nil || verify else {
            throw ValidationError("give SRC and DST to compress, or --verify IMAGE")
        }
        try exitingOnError(status: ExitStatus.usage) { _ = try geometry() }
        if let threads, !(1...ImageCompressor.maxThreadCount).contains(threads) {
            throw ValidationError("--threads must be 1 to \(ImageCompressor.maxThreadCount)")
        }
    }

    func run() throws {
        guard let destination else {
            try runVerify(imagePath: source)
            return
        }
        let summary = try runCompress(destination: destination)
        if verify {
            try runVerify(imagePath: destination, compressed: summary)
        } else {
            printCompressSummary(summary)
        }
    }

    // MARK: Compress

    private func runCompress(destination: String) throws -> CompressedRun {
        let options = ImageCompressor.Options(
            geometry: try geometry(), level: level, threadCount: threads ?? Self.coreCount(),
            replacesExisting: force, usesDictionary: dictionary)
        let statusLine = StatusLine()
        let started = monotonicSeconds()
        let summary = try exitingOnError {
            defer { statusLine.clear() }  // before an error line is printed
            let image = try ImageCompressor.openSource(
                at: FilePath(source), options: baseOpenOptions())
            return try ImageCompressor.compress(
                image, to: FilePath(destination), options: options
            ) { progress in
                statusLine.show(Self.progressText(progress, seconds: monotonicSeconds() - started))
            }
        }
        return CompressedRun(
            path: destination, summary: summary, seconds: monotonicSeconds() - started)
    }

    private func printCompressSummary(_ run: CompressedRun) {
        let summary = run.summary
        let header = summary.header
        let ratio = Self.ratio(summary.inputByteCount, summary.outputByteCount)
        if output.json {
            print(renderJSON(run.jsonMembers))
            return
        }
        print(
            "\(run.path): \(ByteSize.describe(summary.inputByteCount)) in, "
                + "\(ByteSize.describe(summary.outputByteCount)) out (ratio \(Self.decimal(ratio))), "
                + "\(Self.decimal(run.seconds)) s; \(header.blockCount) blocks of "
                + "\(ByteSize.describe(header.geometry.blockByteCount)) (\(summary.zeroBlockCount) "
                + "zero, \(summary.rawBlockCount) stored raw), "
                + (summary.dictionaryByteCount > 0
                    ? "\(ByteSize.describe(UInt64(summary.dictionaryByteCount))) dictionary"
                    : "no dictionary"))
    }

    private static func progressText(_ progress: ImageCompressor.Progress, seconds: Double)
        -> String
    {
        let percent = progress.inputByteCount * 100 / max(progress.totalInputByteCount, 1)
        let rate = UInt64(Double(progress.inputByteCount) / max(seconds, 0.001))
        let ratio = ratio(progress.inputByteCount, progress.outputByteCount)
        return "compressing: \(ByteSize.describe(progress.inputByteCount)) of "
            + "\(ByteSize.describe(progress.totalInputByteCount)) (\(percent)%), "
            + "\(ByteSize.describe(rate))/s, ratio \(decimal(ratio))"
    }

    // MARK: Verify

    private func runVerify(imagePath: String, compressed: CompressedRun? = nil) throws {
        let statusLine = ThrottledStatusLine()
        let verification = try exitingOnError {
            defer { statusLine.clear() }
            let image = try CompressedBaseImage(
                path: FilePath(imagePath), options: baseOpenOptions())
            return image.verify { checkedCount in
                statusLine.show { "verifying: block \(checkedCount) of \(image.header.blockCount)" }
            }
        }
        if output.json {
            let json = verifyJSON(verification, path: imagePath)
            if let compressed {
                print(renderJSON(compressed.jsonMembers + [("verify", json.rendered(indent: 2))]))
            } else {
                print(json.rendered())
            }
        } else {
            if let compressed { printCompressSummary(compressed) }
            printVerification(verification, path: imagePath)
        }
        guard verification.isIntact else {
            printErrorLine(
                "\(imagePath): \(verification.damagedBlockCount) of \(verification.blockCount) "
                    + "blocks damaged"
                    + (verification.dictionaryProblem.map { "; \($0)" } ?? "")
                    + (verification.fingerprintProblem.map { "; \($0)" } ?? ""))
            throw ExitStatus.failure
        }
    }

    private func printVerification(_ verification: CompressedBaseImage.Verification, path: String) {
        // Each reason names its block and file offset already.
        for damaged in verification.damagedBlocks { print(damaged.reason) }
        guard verification.isIntact else { return }
        print(
            "\(path): intact, \(verification.blockCount) blocks (\(verification.zeroBlockCount) "
                + "zero, \(verification.rawBlockCount) stored raw), fingerprint ok")
    }

    private func verifyJSON(_ verification: CompressedBaseImage.Verification, path: String)
        -> JSONValue
    {
        let damaged = verification.damagedBlocks.map { block -> JSONValue in
            .object([("block", .integer(block.blockIndex)), ("reason", .string(block.reason))])
        }
        return .object([
            ("path", .string(path)),
            ("intact", .bool(verification.isIntact)),
            ("blocks", .integer(verification.blockCount)),
            ("zero_blocks", .integer(verification.zeroBlockCount)),
            ("raw_blocks", .integer(verification.rawBlockCount)),
            ("damaged_blocks", .integer(verification.damagedBlockCount)),
            ("damaged", .array(damaged)),
            ("fingerprint_problem", .optional(verification.fingerprintProblem)),
            ("dictionary_problem", .optional(verification.dictionaryProblem)),
        ])
    }

    // MARK: Helpers

    /// `--block-size` as a geometry; the default when absent.
    private func geometry() throws -> LZ4BlockGeometry {
        try LZ4BlockGeometry(option: "--block-size", blockSize, sizes: "from 16K to 1M")
    }

    /// Cores online, at most `ImageCompressor.maxThreadCount`. The corresponding C function is
    /// `sysconf(_SC_NPROCESSORS_ONLN)`.
    private static func coreCount() -> Int {
        min(max(sysconf(Int32(_SC_NPROCESSORS_ONLN)), 1), ImageCompressor.maxThreadCount)
    }

    private static func ratio(_ inputByteCount: UInt64, _ outputByteCount: UInt64) -> Double {
        Double(inputByteCount) / Double(max(outputByteCount, 1))
    }

    /// Two decimals: "2.86".
    private static func decimal(_ value: Double) -> String {
        let hundredths = Int((value * 100).rounded())
        let fraction = String(hundredths % 100)
        return "\(hundredths / 100)." + (fraction.count == 1 ? "0" + fraction : fraction)
    }

    /// A JSON object from members whose values are already JSON text (JSONValue has no
    /// fractional numbers, and ratio and seconds need them).
    private func renderJSON(_ members: [(String, String)]) -> String {
        let lines = members.map { "  " + JSONValue.quoted($0.0) + ": " + $0.1 }
        return "{\n" + lines.joined(separator: ",\n") + "\n}"
    }
}

/// A finished compression, as the summary lines and JSON show it.
private struct CompressedRun {
    var path: String
    var summary: ImageCompressor.Summary
    var seconds: Double

    var jsonMembers: [(String, String)] {
        let header = summary.header
        return [
            ("input_bytes", String(summary.inputByteCount)),
            ("output_bytes", String(summary.outputByteCount)),
            ("ratio", String(Double(summary.inputByteCount) / Double(summary.outputByteCount))),
            ("seconds", String(seconds)),
            ("block_size", String(header.geometry.blockByteCount)),
            ("blocks", String(header.blockCount)),
            ("zero_blocks", String(summary.zeroBlockCount)),
            ("raw_blocks", String(summary.rawBlockCount)),
            ("level", JSONValue.quoted(header.compressionLevel == 0 ? "fast" : "high")),
            ("dictionary_bytes", String(summary.dictionaryByteCount)),
        ]
    }
}
