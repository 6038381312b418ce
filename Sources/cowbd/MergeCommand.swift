// `cowbd merge`: folds a store's changes into a copy of the base, into the base itself
// (--in-place), or into a new flattened image (--output). The logic and its crash safety are
// CowStore's (StoreMerge*.swift); this file parses options and prints.

import ArgumentParser
import CowFormat
import CowStore
import CowSupport
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

struct MergeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Fold a store's changes into an image.",
        discussion: """
            Exactly one destination:
              --into TARGET   a raw image equal to the base (checked by size and fingerprint \
            before anything is written). Every chunk the store holds is written into it; then \
            the store is emptied and bound to TARGET, so serving it shows the same disk.
              --in-place      the same, into the base itself. The only command that ever \
            writes a base; the base must be a writable raw file, or a store (a chain: the \
            store's chunks are committed into its lower store, as qemu-img commit does, and \
            the store is left empty over it, serving the same disk). A lower store must be \
            the same size, and is refused while any other store over it is open (their shared \
            locks); another store over it that is closed is refused by its fingerprint \
            binding when next opened, since the lower's disk changed. A frozen lower (made by \
            snapshot) may be merged into: committing a disk's top into its snapshot layer is \
            how a snapshot is deleted; it stays frozen for everything else.
              --output NEW    a new flattened raw image of the whole disk; base and store are \
            untouched. Zero and trimmed areas become holes. With --compress, NEW is a \
            compressed image instead (the same as `cowbd compress COW NEW --level high`).

            A merge into a target first checks that it can finish: the target exists, is \
            writable, can grow to the disk's size, and its filesystem has the space; then it \
            records itself in the store's header before it writes the first byte. If it is \
            interrupted (kill, power loss, I/O error), run the same command again: it \
            finishes. Until then the store refuses to be served. The cost of --into and \
            --in-place follows the changed data, not the disk's size.

            --abort takes an interrupted merge back instead, while the store still holds its \
            chunks. After --into it is always safe: the record is cleared, the store serves \
            the same disk again, and TARGET may be partly written (recopy it from the base \
            before merging into it again). After --in-place the base may be partly changed, so \
            --abort is refused without --force; --abort --force binds the store to the base as \
            it now is (its own disk is whole: every byte the merge wrote lies in a chunk the \
            store holds), and any other store over the old base is no longer valid. Once the \
            merge has emptied the store, it can only be finished.

            Refused while the store is being served (the same lock as serve).

            Examples:
              cowbd merge vm.cow --into golden-v2.img
              cowbd merge vm.cow --in-place
              cowbd merge vm.cow --in-place        (vm.cow over snap.cow: into snap.cow)
              cowbd merge vm.cow --output flat.img --dry-run
              cowbd merge vm.cow --abort

            Exit status: 0 merged (or planned), 1 failed (the reason on stderr).
            """)

    @Argument(help: ArgumentHelp("The COW store.", valueName: "cow"))
    var store: String

    @Option(
        help: ArgumentHelp("A raw image equal to the base, to merge into.", valueName: "target"))
    var into: String?

    @Flag(help: "Merge into the base itself (a writable raw file, or a lower store).")
    var inPlace = false

    @Option(help: ArgumentHelp("Write a new flattened raw image instead.", valueName: "new"))
    var output: String?

    @Flag(help: "Take back an interrupted merge (see above); the store is served again.")
    var abort = false

    @Flag(help: "With --output: replace NEW if it exists. With --abort: abort an in-place merge.")
    var force = false

    @Flag(help: "With --output: write a compressed (cowbd-lz4, --level high) image.")
    var compress = false

    @Flag(help: "Say what would be written, and write nothing.")
    var dryRun = false

    @OptionGroup var outputOptions: OutputOptions
    @OptionGroup var control: ControlOptions

    func validate() throws {
        if abort {
            guard into == nil, !inPlace, output == nil, !compress, !dryRun else {
                throw ValidationError("--abort takes no destination (only --force)")
            }
            return
        }
        let count = (into == nil ? 0 : 1) + (inPlace ? 1 : 0) + (output == nil ? 0 : 1)
        guard count == 1 else {
            throw ValidationError("give exactly one of --into, --in-place, --output")
        }
        guard !force || output != nil else {
            throw ValidationError("--force goes with --output or --abort")
        }
        guard !compress || output != nil else {
            throw ValidationError("--compress goes with --output")
        }
        guard !compress || !dryRun else {
            throw ValidationError("--dry-run does not apply to --compress")
        }
    }

    func run() throws {
        // A served store: the server answers why not (ServeCommand+Collapse.swift).
        if let client = try exitingOnError({
            try ControlClient.connect(storePath: store, options: control)
        }) {
            _ = try exitingOnError { try client.call("merge") }
        }
        if abort {
            try abortMerge()
            return
        }
        if compress, let output {
            try flattenCompressed(into: output)
            return
        }
        let destination: StoreMerge.Destination
        if let into {
            destination = .into(FilePath(into))
        } else if let output {
            destination = .output(FilePath(output), overwrite: force)
        } else {
            destination = .inPlace
        }
        let summary = try exitingOnError {
            let merge = try StoreMerge(
                storePath: FilePath(store), destination: destination, options: baseOpenOptions())
            if dryRun { return try merge.plan() }
            let progress = ProgressLine(label: "merge")
            defer { progress.finish() }
            return try merge.run(progress: progress.update)
        }
        report(summary)
    }

    /// `--output NEW --compress`: the store's disk through the compressor (CowStore's
    /// ImageCompressor reads a store as its virtual disk, under the store's lock).
    private func flattenCompressed(into output: String) throws {
        let summary = try exitingOnError {
            let options = ImageCompressor.Options(
                geometry: try LZ4BlockGeometry(shift: LZ4BlockGeometry.defaultShift), level: .high,
                threadCount: max(1, min(Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), 16)),
                replacesExisting: force)
            let progress = ProgressLine(label: "merge")
            defer { progress.finish() }
            return try ImageCompressor.compress(
                try ImageCompressor.openSource(at: FilePath(store), options: baseOpenOptions()),
                to: FilePath(output),
                options: options
            ) { progress.update($0.inputByteCount, $0.totalInputByteCount) }
        }
        if outputOptions.json {
            let value = JSONValue.object([
                ("target", .string(output)), ("input_bytes", .integer(summary.inputByteCount)),
                ("output_bytes", .integer(summary.outputByteCount)),
            ])
            print(value.rendered())
        } else {
            print(
                "\(store): wrote a compressed image of \(describeSize(summary.outputByteCount)) "
                    + "for a \(describeSize(summary.inputByteCount)) disk into \(output)")
        }
    }

    /// `--abort`: clears an interrupted merge's record (CowStore's StoreMerge+Abort.swift).
    private func abortMerge() throws {
        let summary = try exitingOnError {
            try StoreMerge.abort(storePath: FilePath(store), force: force)
        }
        if outputOptions.json {
            let value = JSONValue.object([
                ("aborted", .bool(true)), ("target", .string(summary.targetPath)),
                ("in_place", .bool(summary.wasInPlace)),
            ])
            print(value.rendered())
        } else if summary.wasInPlace {
            print(
                "\(store): took back the in-place merge; the store is bound to the base "
                    + "\(summary.targetPath) as it is now (partly merged) and serves the same disk; "
                    + "other stores over the old base are no longer valid")
        } else {
            print(
                "\(store): took back the merge; the store serves the same disk again; "
                    + "\(summary.targetPath) may be partly written (recopy it from the base)")
        }
    }

    private func report(_ summary: StoreMerge.Summary) {
        if outputOptions.json {
            let value = JSONValue.object([
                ("target", .string(summary.targetPath)), ("dry_run", .bool(dryRun)),
                ("resumed", .bool(summary.resumed)),
                ("already_done", .bool(summary.alreadyDone)),
                ("chunks", .integer(summary.chunkCount)),
                ("data_bytes", .integer(summary.dataByteCount)),
                ("hole_bytes", .integer(summary.holeByteCount)),
            ])
            print(value.rendered())
            return
        }
        if summary.alreadyDone {
            print(
                "\(store): already merged into \(summary.targetPath), now its base; nothing to do")
            return
        }
        let verb = dryRun ? "would write" : "wrote"
        print(
            "\(store): \(verb) \(describeSize(summary.dataByteCount)) of data and "
                + "\(describeSize(summary.holeByteCount)) of holes into \(summary.targetPath)"
                + (summary.resumed ? " (finished an interrupted merge)" : ""))
    }
}

/// Reports a long merge's progress on the shared status line: percent, bytes and rate.
final class ProgressLine {
    private let label: String
    private let line = ThrottledStatusLine(intervalSeconds: 0.2)
    private let started = monotonicSeconds()

    init(label: String) { self.label = label }

    func update(_ done: UInt64, _ total: UInt64) {
        line.show(force: done == total) {
            let rate = Double(done) / max(monotonicSeconds() - started, 0.001)
            let percent = total == 0 ? 100 : Int(Double(done) * 100 / Double(total))
            return "\(label): \(percent)% \(ByteSize.describe(done)) of "
                + "\(ByteSize.describe(total)), \(ByteSize.describe(UInt64(rate)))/s"
        }
    }

    func finish() { line.clear() }
}
