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

            The cost follows the size of the change, not of the disk. The base is not read. \
            Refused while the store is served or merged (they lock it): stop the server first.

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
            // The server answers why, or does it (docs/CONTROL.md).
            _ = try exitingOnError {
                try client.call(
                    "export-diff",
                    [
                        ("since", since.map { .string($0) } ?? .null),
                        ("format", .string(format.rawValue)),
                    ])
            }
            return
        }
        let result = try exitingOnError {
            let export = try StoreDiffExport(
                storePath: FilePath(store), sinceCheckpoint: since, recordingCheckpoint: to,
                options: baseOpenOptions())
            defer { export.close() }
            let progress = ProgressLine(label: "export-diff")
            defer { progress.finish() }
            let total = try export.store.allocatedDataByteCount()
            func write(to descriptor: FileDescriptor, name: String) throws
                -> StoreDiffExport.Summary
            {
                try export.write(
                    format: format, to: descriptor, name: name,
                    progress: { done, _ in progress.update(done, max(done, total)) })
            }
            guard output != "-" else { return try write(to: .standardOutput, name: "stdout") }
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
                    return try write(to: descriptor, name: output)
                }
                if !force { throw StoreError.exists(path: path) }
            }
            // A file is written under a temporary name, synced, then moved into place: an
            // interrupted export never leaves a partial OUT.
            var written: StoreDiffExport.Summary?
            do {
                try AtomicFile.write(to: path, replacing: force) { descriptor in
                    written = try write(to: descriptor, name: output)
                }
            } catch {
                // OUT was not put in place: the checkpoint it names must not stay either.
                try? export.forgetEndCheckpoint()
                throw error
            }
            guard let written else { preconditionFailure("the export ran") }
            return written
        }
        guard summary else { return }
        let value = JSONValue.object([
            ("format", .string(format.rawValue)), ("extents", .integer(result.extentCount)),
            ("data_bytes", .integer(result.dataByteCount)),
            ("zero_bytes", .integer(result.zeroByteCount)),
            ("stream_bytes", .integer(result.streamByteCount)),
            ("since", .optional(since)), ("to", .optional(to)),
        ])
        printErrorLine("export-diff summary: " + value.rendered().replacing("\n", with: " "))
    }
}
