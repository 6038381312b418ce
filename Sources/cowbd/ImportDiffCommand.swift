// `cowbd import-diff`: applies a native or rbd diff to a raw image or a COW store, after
// verifying all of it. The logic is CowStore's (DiffImport*.swift); this file parses and prints.

import ArgumentParser
import CowStore
import SystemPackage

struct ImportDiffCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import-diff",
        abstract: "Apply a diff stream to a raw image or a COW store.",
        discussion: """
            DIFF is a native diff (cowbd export-diff) or an rbd diff v1/v2 stream; - reads \
            stdin. TARGET is a raw image (a file or a block device) equal to the diff's base, or \
            a COW store over that base (the diff is written into its store).

            Nothing is written until the whole diff has been read and checked: checksums, \
            trailer, extent ranges, and that it was made for TARGET (size, and for a native \
            diff the base fingerprint: of TARGET itself when raw, of its base when a store). A \
            diff read from a pipe is first copied to a temporary file beside TARGET (deleted \
            afterwards), so it costs the diff's size in space there.

            An rbd diff carries no fingerprint: cowbd cannot check its base, so it needs \
            --force. --force also applies a native diff made for another base.

            Before the first write, a small record of the import is written beside TARGET \
            (.NAME.cowbd-import; for a block device in $TMPDIR) and it is removed once TARGET \
            is durable. If the import is interrupted (kill, power loss, I/O error), run the \
            same command again: the record tells it that TARGET is partly written by this very \
            diff, and it finishes without --force. An import of another diff is refused until \
            then (or forced). Every block of DIFF is checked again as it is applied, so a DIFF \
            changed since it was verified is refused before its changed bytes are written.

            Refused while a COW TARGET is served (the same lock as serve).

            Exit status: 0 applied (or verified), 1 refused or failed (the reason on stderr).
            """)

    @Argument(help: ArgumentHelp("The diff; - for stdin.", valueName: "diff"))
    var diff: String

    @Argument(help: ArgumentHelp("A raw image or a COW store.", valueName: "target"))
    var target: String

    @Flag(help: "Apply even without a matching base fingerprint (always needed for rbd).")
    var force = false

    @Flag(help: "Verify the diff against TARGET, and write nothing.")
    var dryRun = false

    @OptionGroup var outputOptions: OutputOptions

    func run() throws {
        let summary = try exitingOnError {
            let job = try DiffImport(diffPath: diff, targetPath: FilePath(target), force: force)
            if dryRun { return try job.verify() }
            let progress = ProgressLine(label: "import-diff")
            defer { progress.finish() }
            return try job.run(progress: progress.update)
        }
        if outputOptions.json {
            let value = JSONValue.object([
                ("target", .string(target)), ("format", .string(summary.kind.rawValue)),
                ("dry_run", .bool(dryRun)), ("extents", .integer(summary.extentCount)),
                ("data_bytes", .integer(summary.dataByteCount)),
                ("zero_bytes", .integer(summary.zeroByteCount)),
                ("spooled", .bool(summary.spooled)), ("resumed", .bool(summary.resumed)),
            ])
            print(value.rendered())
            return
        }
        print(
            "\(target): \(dryRun ? "would apply" : "applied") \(summary.extentCount) extents "
                + "(\(describeSize(summary.dataByteCount)) of data, "
                + "\(describeSize(summary.zeroByteCount)) of zeros) from a \(summary.kind.rawValue) diff"
                + (summary.resumed ? " (finishing an interrupted import)" : ""))
    }
}
