// `cowbd collapse`: folds the N layers under a stopped store into one new frozen layer and
// binds the store to it, so a long chain gets shorter without being flattened onto its bottom
// image. The build and the rebind are CowStore's (LayerFold*.swift); this file parses options
// and prints.

import ArgumentParser
import CowFormat
import CowStore
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

struct CollapseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "collapse",
        abstract: "Fold the N layers under a store into one new layer; the chain gets shorter.",
        discussion: """
            With vm.cow over snap3.cow over snap2.cow over snap1.cow over base.img, \
            `cowbd collapse vm.cow --depth 3` writes one new frozen layer holding every chunk \
            the three snapshot layers hold (an upper layer's bytes win), over base.img, and \
            binds vm.cow to it: vm.cow serves the same disk through a chain of two stores \
            instead of four. The disk is never flattened onto the bottom image (for that, \
            merge --output or compress).

            The new layer is NEW (--into) or, by default, FIRST+LAST.EXT in COW's folder, \
            from the names of the first and last folded layers (here snap3+snap1.cow). It must \
            not exist. No layer anyone may be reading is modified: the new file is built from \
            the layers read-only under a temporary name (.NEW.cowbd-fold), synced and linked \
            into place; then COW's header is rewritten once (the same disk size and \
            fingerprint, a new lower). The old layers are left where they are; collapse says \
            which ones COW no longer uses (delete them if no other store is built over them).

            On a served COW the server does it (docs/CONTROL.md, "Live collapse"): the \
            command asks it through the control socket and waits, showing the progress, \
            while clients keep reading and writing; cowbd info shows the progress too, and \
            interrupting this command leaves the collapse running. --rate is then at least 1M. \
            Interrupted at any instant, COW still opens and reads the same disk; run the same command \
            again: it starts the build over, or keeps a NEW already in place (checked to be \
            this fold) and binds COW to it (once the server is back, for a served COW). Once COW is bound to NEW the collapse is done: a \
            rerun with the same --into says so; without --into, a rerun would fold the \
            shorter chain again, so scripts that may rerun should give --into.

            --rate bounds the bytes read from the folded layers per second (suffixes K, M, G).

            Examples:
              cowbd collapse vm.cow --depth 3
              cowbd collapse vm.cow --depth 2 --into vm-base2.cow --rate 50M
              cowbd collapse vm.cow --depth 3 --dry-run

            Exit status: 0 collapsed (or planned, or already done), 1 failed (the reason on \
            stderr; COW serves the same disk as before).
            """)

    @Argument(help: ArgumentHelp("The store whose lower layers are folded.", valueName: "cow"))
    var store: String

    @Option(help: ArgumentHelp("How many layers under COW to fold (2 or more).", valueName: "n"))
    var depth: Int

    @Option(
        help: ArgumentHelp(
            "The new layer's file (default: FIRST+LAST.EXT in COW's folder).", valueName: "new"))
    var into: String?

    @Option(
        help: ArgumentHelp(
            "Read at most this many bytes per second from the folded layers (K, M, G).",
            valueName: "bytes-per-second"))
    var rate: String?

    @Flag(help: "Say what would be written, and write nothing.")
    var dryRun = false

    @OptionGroup var output: OutputOptions
    @OptionGroup var control: ControlOptions

    func validate() throws {
        guard depth >= 2 else {
            throw ValidationError("--depth must be 2 or more (one layer folds into nothing)")
        }
        try exitingOnError(status: ExitStatus.usage) { _ = try parseRate(rate) }
    }

    func run() throws {
        // A served store: its server collapses it (CollapseCommand+Live.swift). A dry run
        // only reads the layers, which works beside the server.
        if !dryRun,
            let client = try exitingOnError({
                try ControlClient.connect(storePath: store, options: control)
            })
        {
            return try runLive(client)
        }
        let topPath = FilePath(store)
        if let into, try exitingOnError({ try isBound(to: FilePath(into)) }) {
            report(alreadyDone: into)
            return
        }
        let summary = try exitingOnError {
            let fold = try LayerFold(
                topPath: topPath, depth: depth, outputPath: into.map { FilePath($0) },
                options: baseOpenOptions())
            defer { fold.close() }
            if dryRun { return try fold.plan() }
            try checkStopped(topPath)
            let progress = ProgressLine(label: "collapse")
            defer { progress.finish() }
            let summary = try fold.build(
                rateLimitBytesPerSecond: try parseRate(rate),
                createdUnixSeconds: UInt64(clamping: time(nil))
            ) { progress.update($0.doneByteCount, $0.totalByteCount) }
            fold.close()
            _ = try LayerFold.rebind(
                topPath: topPath, to: summary.outputPath, options: baseOpenOptions())
            return summary
        }
        report(summary)
    }

    /// Whether COW's lower layer is already the file at `path`.
    private func isBound(to path: FilePath) throws -> Bool {
        guard let target = try? FileIdentity(of: path) else { return false }
        let top = try StoreFile(path: FilePath(store), access: .unlockedRead)
        defer { top.close() }
        return BaseLocator.candidatePaths(for: top.header, storePath: FilePath(store)).lazy
            .compactMap { try? FileIdentity(of: FilePath($0)) }.first == target
    }

    /// Refuses a served COW before the build rather than after it: the rebind needs COW's
    /// exclusive lock.
    private func checkStopped(_ topPath: FilePath) throws {
        do {
            try StoreFile(path: topPath, access: .exclusiveRead).close()
        } catch StoreError.inUse {
            throw StoreError.invalidArgument(
                "\(topPath): in use by another cowbd process (served?); collapse rebinds it, so "
                    + "it must be stopped; nothing was written")
        }
    }

    private func report(alreadyDone into: String) {
        if output.json {
            print(
                JSONValue.object([
                    ("store", .string(store)), ("output", .string(into)),
                    ("already_done", .bool(true)), ("dry_run", .bool(dryRun)),
                ]).rendered())
        } else {
            print("\(store): already over \(into); nothing to do")
        }
    }

    private func report(_ summary: LayerFold.Summary) {
        let folded = summary.foldedLayerPaths.map(\.string)
        if output.json {
            print(
                JSONValue.object([
                    ("store", .string(store)), ("output", .string(summary.outputPath.string)),
                    ("lower", .string(summary.lowerPath.string)),
                    ("depth", .integer(UInt64(folded.count))),
                    ("folded_layers", .array(folded.map { .string($0) })),
                    ("folded_bytes", .integer(summary.foldedByteCount)),
                    ("data_bytes", .integer(summary.dataByteCount)),
                    ("chunk_size", .integer(summary.chunkByteCount)),
                    ("reused_existing", .bool(summary.reusedExisting)),
                    ("already_done", .bool(false)), ("dry_run", .bool(dryRun)),
                    ("no_longer_used", .array(dryRun ? [] : folded.map { .string($0) })),
                ]).rendered())
            return
        }
        if dryRun {
            print(
                "\(store): would fold \(folded.count) layers (\(folded.joined(separator: ", "))) "
                    + "into \(summary.outputPath) over \(summary.lowerPath): "
                    + "\(describeSize(summary.dataByteCount)) of data, "
                    + "\(describeSize(summary.foldedByteCount - summary.dataByteCount)) of zeros")
            return
        }
        print(
            "\(store): now over \(summary.outputPath) (\(folded.count) layers folded, "
                + "\(describeSize(summary.dataByteCount)) of data, over \(summary.lowerPath))"
                + (summary.reusedExisting ? "; kept the layer an interrupted run had made" : ""))
        print(
            "\(store) no longer uses: \(folded.joined(separator: ", ")) (delete them if no other "
                + "store is built over them)")
    }
}
