// `cowbd export-diff`: writes a store's changes as a native diff, an rbd diff v1 stream or a
// JSON list of extents, to a file or stdout. The logic is CowStore's (StoreDiffExport.swift).

import ArgumentParser
import CowFormat
import CowStore
import NBDServer
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

extension StoreDiffExport.Format: ExpressibleByArgument {}

struct ExportDiffCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export-diff",
        abstract: "Write a store's changes as a diff stream.",
        discussion: """
            Formats:
              native  cowbd's diff (docs/FORMAT.md, "Diff stream"): the base's size and \
            fingerprint, data and zero extents with checksums, and a trailer with a checksum of \
            the whole stream. import-diff refuses it if damaged or made for another base.
              rbd     Ceph's "rbd diff v1" stream, for rbd import-diff (no fingerprint).
              json    the changed extents: [{"offset": .., "length": .., "zero": bool}].

            OUT may be - for stdout, so a diff can be streamed:
              cowbd export-diff vm.cow - | ssh host cowbd import-diff - base-copy.img

            With --since NAME, only the chunks changed since checkpoint NAME: a native diff \
            then applies to an image of the disk as it was at the checkpoint (for example the \
            previous backup with the previous incremental diffs applied); an rbd diff names the \
            checkpoint in an "f" (from snapshot) record, as rbd export-diff --from-snap does.

            With --to NAME, the export also records checkpoint NAME at the instant of the diff \
            (the store is locked throughout, so nothing changes in between), and an rbd diff \
            names it in a "t" (to snapshot) record. Successive diffs then chain as Ceph's do: \
            rbd import-diff creates the snapshots they name, and rbd merge-diff joins a full \
            diff and the next incremental one:
              cowbd export-diff vm.cow full.rbd --format rbd --to s1
              cowbd export-diff vm.cow inc.rbd --format rbd --since s1 --to s2
            The checkpoint is recorded only once the whole diff is written (for a file: synced \
            under a temporary name, then moved into place); a failed export records none. It \
            takes the disk's fingerprint, so it needs the base. A store holds at most 8 \
            checkpoints: delete old ones with cowbd checkpoint --delete.

            The cost follows the size of the change, not of the disk. The base is not read, \
            but for chunks changed since the checkpoint that a lower layer holds (a snapshot \
            froze them there). Refused while the store is merged. On a served store, the \
            server exports the disk as it is at the instant of the command, while clients \
            keep writing (docs/CONTROL.md, "Live export-diff"); a frozen layer under a served \
            store exports as it is.

            Exit status: 0 written, 1 failed (the reason on stderr).
            """)

    @Argument(help: ArgumentHelp("The COW store.", valueName: "cow"))
    var store: String

    @Argument(help: ArgumentHelp("Where to write the diff; - for stdout.", valueName: "out"))
    var output: String

    @Option(help: "native, rbd or json.")
    var format: StoreDiffExport.Format = .native

    @Option(
        help: ArgumentHelp(
            "Only what changed since this checkpoint (cowbd checkpoint): an incremental diff.",
            valueName: "checkpoint"))
    var since: String?

    @Option(
        help: ArgumentHelp(
            "Record this checkpoint at the instant of the diff (an rbd diff names it in a t record).",
            valueName: "checkpoint"))
    var to: String?

    @Flag(help: "Replace OUT if it exists.")
    var force = false

    @Flag(help: "Print a summary as JSON on stderr when done.")
    var summary = false

    func validate() throws {
        if output == "-" && format != .json && isatty(STDOUT_FILENO) == 1 {
            throw ValidationError("refusing to write a binary diff to a terminal; redirect stdout")
        }
        if let to, let problem = Checkpoint.problem(withName: to) {
            throw ValidationError("\(to): \(problem)")
        }
        if let to, to == since {
            throw ValidationError("--to names the checkpoint --since starts from: \(to)")
        }
    }

    @OptionGroup var control: ControlOptions

    func run() throws {
        if let client = try exitingOnError({
            try ControlClient.connect(storePath: store, options: control)
        }) {
            return try runLive(client)
        }
        let result = try exitingOnError {
            let export = try StoreDiffExport(
                storePath: FilePath(store), sinceCheckpoint: since, recordingCheckpoint: to,
                options: baseOpenOptions())
            defer { export.close() }
            let progress = ProgressLine(label: "export-diff")
            defer { progress.finish() }
            let total = try export.store.allocatedDataByteCount()
            return try writeOutput(forget: { try export.forgetEndCheckpoint() }) {
                descriptor, name in
                try export.write(
                    format: format, to: descriptor, name: name,
                    progress: { done, _ in progress.update(done, max(done, total)) })
            }
        }
        printSummary(result)
    }

    /// The same on a served store: the server writes the diff of the disk at the instant it
    /// takes the request (docs/CONTROL.md, "Live export-diff") and streams it here, to OUT.
    private func runLive(_ client: ControlClient) throws {
        let arguments: [(String, ControlJSON)] = [
            ("since", since.map { .string($0) } ?? .null), ("to", to.map { .string($0) } ?? .null),
            ("format", .string(format.rawValue)),
        ]
        let result = try exitingOnError {
            try writeOutput(
                forget: {
                    if let to { _ = try client.call("delete-checkpoint", [("name", .string(to))]) }
                }
            ) { descriptor, name in
                let answer = try client.callStreaming("export-diff", arguments) { bytes in
                    do { try descriptor.writeAll(bytes) } catch let errno as Errno {
                        throw StoreError.io(
                            path: FilePath(name), operation: "write", byteOffset: 0, errno)
                    }
                }
                var summary = StoreDiffExport.Summary()
                summary.extentCount = UInt64(clamping: answer["extents"]?.integerValue ?? 0)
                summary.dataByteCount = UInt64(clamping: answer["data_bytes"]?.integerValue ?? 0)
                summary.zeroByteCount = UInt64(clamping: answer["zero_bytes"]?.integerValue ?? 0)
                summary.streamByteCount = UInt64(
                    clamping: answer["stream_bytes"]?.integerValue ?? 0)
                summary.copiedBeforeWriteByteCount = UInt64(
                    clamping: answer["copied_before_write_bytes"]?.integerValue ?? 0)
                return summary
            }
        }
        printSummary(result)
    }

    /// Runs `write` on OUT: stdout, a pipe or device as it is, a file through a temporary
    /// put in place only once whole. If placing it fails, `forget` takes back the end
    /// checkpoint the export recorded.
    private func writeOutput(
        forget: () throws -> Void,
        _ write: (FileDescriptor, String) throws -> StoreDiffExport.Summary
    ) throws -> StoreDiffExport.Summary {
        do {
            guard output != "-" else { return try write(.standardOutput, "stdout") }
            let path = FilePath(output)
            var status = stat()
            if stat(output, &status) == 0 {
                if status.st_mode & S_IFMT != S_IFREG {
                    // A pipe or a device (/dev/stdout, a FIFO): written as it is.
                    let descriptor: FileDescriptor
                    do {
                        descriptor = try FileDescriptor.open(
                            path, .writeOnly, options: [.closeOnExec])
                    } catch let errno as Errno {
                        throw StoreError.open(path: path, errno)
                    }
                    defer { try? descriptor.close() }
                    return try write(descriptor, output)
                }
                if !force { throw StoreError.exists(path: path) }
            }
            // A file is written under a temporary name, synced, then moved into place: an
            // interrupted export never leaves a partial OUT.
            var written: StoreDiffExport.Summary?
            try AtomicFile.write(to: path, replacing: force) { descriptor in
                written = try write(descriptor, output)
            }
            guard let written else { preconditionFailure("the export ran") }
            return written
        } catch {
            // OUT was not put in place: the checkpoint it names must not stay either.
            try? forget()
            throw error
        }
    }

    private func printSummary(_ result: StoreDiffExport.Summary) {
        guard summary else { return }
        let value = JSONValue.object([
            ("format", .string(format.rawValue)), ("extents", .integer(result.extentCount)),
            ("data_bytes", .integer(result.dataByteCount)),
            ("zero_bytes", .integer(result.zeroByteCount)),
            ("stream_bytes", .integer(result.streamByteCount)),
            ("since", .optional(since)), ("to", .optional(to)),
            ("copied_before_write_bytes", .integer(result.copiedBeforeWriteByteCount)),
        ])
        printErrorLine("export-diff summary: " + value.rendered().replacing("\n", with: " "))
    }
}
