// `cowbd hydrate`: copies every base chunk a store lacks into it, so it no longer needs its
// base. Parses options and prints; the copying is CowStore's (StoreHydrate).

import ArgumentParser
import CowFormat
import CowStore
import CowSupport
import SystemPackage

struct HydrateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hydrate",
        abstract: "Copy every base chunk into the store, so it no longer needs its base.",
        discussion: """
            Each base chunk the store does not hold is copied into it and marked hydrated: \
            it reads the same, but export-diff and merge leave it out, as they do the base. \
            When every base chunk is in the store, the store is self-contained: `serve` and \
            the other commands open it without its base, which may then be moved or deleted \
            (`info` says "self-contained: yes").

            The store is opened under its lock, so it cannot be served meanwhile (use `serve \
            --copy-on-read` to hydrate what clients read). An interrupted run loses at most \
            what it copied in the last second (or 64 MiB); run it again and it continues \
            where it stopped. Hydrated chunks are not changes: checkpoints do not count them \
            and `export-diff --since` leaves them out.

            On a terminal, a status line shows the progress. With --json the result is one \
            object: chunks_copied, bytes_copied (this run), chunks_hydrated, chunks_written, \
            chunks_total, self_contained, milliseconds.

            Exit status: 0 done, 1 failed (the reason on stderr), 64 bad usage.
            """)

    @Argument(help: ArgumentHelp("The store file.", valueName: "cow"))
    var store: String

    @Option(
        help: ArgumentHelp(
            "Copy at most this many bytes a second (K, M, G suffixes). (default: no limit)",
            valueName: "bytes-per-second"))
    var rate: String?

    @OptionGroup var output: OutputOptions

    func validate() throws {
        try exitingOnError(status: ExitStatus.usage) { _ = try parseRate(rate) }
    }

    func run() throws {
        let statusLine = ThrottledStatusLine()
        let started = monotonicSeconds()
        let (summary, chunksTotal) = try exitingOnError {
            defer { statusLine.clear() }
            let disk = try VirtualDisk.open(storePath: FilePath(store), options: baseOpenOptions())
            defer { disk.close() }
            let summary = try StoreHydrate.run(disk, rateBytesPerSecond: try parseRate(rate)) {
                progress in
                statusLine.show {
                    let percent = progress.chunksPresent * 100 / max(progress.chunksTotal, 1)
                    return "hydrating: chunk \(progress.chunksPresent) of \(progress.chunksTotal) "
                        + "(\(percent)%), \(ByteSize.describe(progress.copiedByteCount)) copied"
                }
            }
            return (summary, disk.store.header.chunkCount)
        }
        let seconds = monotonicSeconds() - started
        if output.json {
            let json: JSONValue = .object([
                ("chunks_copied", .integer(summary.chunksCopied)),
                ("bytes_copied", .integer(summary.copiedByteCount)),
                ("chunks_hydrated", .integer(summary.chunksHydrated)),
                ("chunks_written", .integer(summary.chunksWritten)),
                ("chunks_total", .integer(chunksTotal)),
                ("self_contained", .bool(summary.isSelfContained)),
                ("milliseconds", .integer(UInt64(seconds * 1000))),
            ])
            print(json.rendered())
        } else {
            print(
                "\(store): \(summary.chunksCopied) chunks copied "
                    + "(\(ByteSize.describe(summary.copiedByteCount))); "
                    + "\(summary.chunksHydrated) hydrated, \(summary.chunksWritten) written; "
                    + (summary.isSelfContained ? "self-contained" : "still needs its base"))
        }
    }
}
