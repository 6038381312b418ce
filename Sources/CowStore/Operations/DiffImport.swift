// `cowbd import-diff`: applies a native or rbd (v1, v2) diff to a raw image or a COW store.
// Nothing is written until the whole diff has been read once and found sound (checksums,
// trailer, ranges) and made for TARGET's base; a diff on a pipe is first spooled to an unlinked
// temporary file so it can be read twice (docs/FORMAT.md, "Diff stream").

import CowFormat
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// One import of one diff into one target.
public final class DiffImport {
    public enum Kind: String, Sendable {
        case native
        case rbdV1 = "rbd-v1"
        case rbdV2 = "rbd-v2"
    }

    /// What the diff holds (known after the verifying pass) and what was applied.
    public struct Summary: Sendable {
        public var kind: Kind = .native
        public var virtualByteCount: UInt64 = 0
        public var extentCount: UInt64 = 0
        public var dataByteCount: UInt64 = 0
        public var zeroByteCount: UInt64 = 0
        public var targetPath = ""
        public var targetKind = ""
        /// The diff came from a pipe and was spooled to a temporary file first.
        public var spooled = false
        /// An interrupted import of this diff into this target was found (its record) and
        /// finished; the base check, which a partly applied diff no longer passes, was skipped.
        public var resumed = false
    }

    /// Largest piece read and written at once.
    static let pieceByteCount = 1 << 20

    let input: DiffInput
    let target: any DiffTarget
    let force: Bool
    var spooled = false
    /// The native header the verifying pass read (nil for an rbd diff).
    var verifiedNativeHeader: DiffHeader?
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: pieceByteCount, alignment: 4096)
    /// Tests: runs between the verifying pass and the applying pass.
    package var betweenPasses: (() throws -> Void)?
    /// Tests: runs after each record is applied, with the number applied so far.
    package var afterRecordApplied: ((UInt64) throws -> Void)?

    /// Opens TARGET (a COW store is locked exclusively) and the diff; `diffPath` "-" is stdin.
    /// A diff that is not a regular file is spooled beside TARGET first.
    public init(diffPath: String, targetPath: FilePath, force: Bool) throws {
        self.force = force
        target = try openDiffTarget(at: targetPath)
        let source: FileDescriptor
        if diffPath == "-" {
            source = .standardInput
        } else {
            do {
                source = try FileDescriptor.open(
                    FilePath(diffPath), .readOnly, options: [.closeOnExec])
            } catch {
                throw StoreError.open(path: FilePath(diffPath), error as? Errno ?? .ioError)
            }
        }
        var status = Glibc.stat()
        if fstat(source.rawValue, &status) == 0 && status.st_mode & S_IFMT == S_IFREG {
            input = try DiffInput(descriptor: source, path: FilePath(diffPath))
        } else {
            let spool = try Self.spool(source, name: diffPath, beside: targetPath)
            if diffPath != "-" { try? source.close() }
            input = try DiffInput(descriptor: spool, path: FilePath(diffPath))
            spooled = true
        }
    }

    deinit {
        buffer.deallocate()
        if input.descriptor != .standardInput { try? input.descriptor.close() }
    }

    /// Verifies the whole diff, checks it against TARGET's base, then applies it. `progress`
    /// gets (data bytes applied, data bytes in the diff) now and then.
    /// An interrupted import of the same diff is found by its record beside TARGET and
    /// finished (docs/FORMAT.md, "Applying a diff").
    public func run(progress: (UInt64, UInt64) -> Void = { _, _ in }) throws -> Summary {
        var summary = try parse(applying: false, progress: { _, _ in })
        let record = try checkAgainstTarget(&summary)
        try betweenPasses?()
        input.rewind()
        // The record is durable before the first byte of TARGET changes.
        if !summary.resumed { try writeImportRecord(record) }
        try target.prepare(virtualByteCount: summary.virtualByteCount)
        let dataByteCount = summary.dataByteCount
        let resumed = summary.resumed
        summary = try parse(applying: true, progress: { done, _ in progress(done, dataByteCount) })
        // TARGET is durable before the record goes.
        try target.finish()
        try removeImportRecord()
        summary.targetPath = target.path.string
        summary.targetKind = target.kindName
        summary.spooled = spooled
        summary.resumed = resumed
        return summary
    }

    /// Tests: makes what was applied so far durable, as a crash after a flush would leave it.
    package func syncTarget() throws { try target.sync() }

    /// Only the verifying pass: what the diff holds. Writes nothing.
    public func verify() throws -> Summary {
        var summary = try parse(applying: false, progress: { _, _ in })
        _ = try checkAgainstTarget(&summary)
        return summary
    }

    /// Checks the diff against TARGET; returns the record an import of it writes. An interrupted
    /// import of the same diff (its record) sets `summary.resumed` and skips the base check.
    private func checkAgainstTarget(_ summary: inout Summary) throws -> ImportRecord {
        let record = try makeImportRecord()
        if let pending = try pendingImportRecord() {
            if pending.isForSameDiff(as: record) {
                summary.resumed = true
                try checkSize(summary)
                return pending
            }
            guard force else {
                throw StoreError.invalidArgument(
                    "\(target.path): an import of another diff (\(pending.diffByteCount) bytes) "
                        + "into it was interrupted and the target is partly written; run that "
                        + "import again to finish it (its record: \(importRecordPath)), or use "
                        + "--force to apply this diff instead")
            }
        }
        try checkSize(summary)
        try checkBase(summary)
        return record
    }

    private func parse(applying: Bool, progress: (UInt64, UInt64) -> Void) throws -> Summary {
        var magic = [UInt8](repeating: 0, count: DiffHeader.magic.count)
        try magic.withUnsafeMutableBytes { try input.read(into: $0) }
        if magic == DiffHeader.magic {
            return try parseNative(magic: magic, applying: applying, progress: progress)
        }
        var banner = magic + [UInt8](repeating: 0, count: RBDDiff.bannerV1.count - magic.count)
        try banner.withUnsafeMutableBytes {
            try input.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[magic.count...]))
        }
        if banner == RBDDiff.bannerV1 || banner == RBDDiff.bannerV2 {
            return try parseRBD(
                version2: banner == RBDDiff.bannerV2, applying: applying, progress: progress)
        }
        throw StoreError.format(path: input.path, .badMagic(expected: "cowbd or rbd diff"))
    }

    /// Whether TARGET can hold the diff's disk.
    private func checkSize(_ summary: Summary) throws {
        let name = "\(input.path)"
        guard target.canGrow(to: summary.virtualByteCount) || force else {
            throw StoreError.invalidArgument(
                "\(name): the diff is for a disk of \(summary.virtualByteCount) bytes; "
                    + "\(target.path) (\(target.kindName)) holds \(target.byteCount) bytes")
        }
        guard
            summary.virtualByteCount <= target.byteCount
                || target.canGrow(to: summary.virtualByteCount)
        else {
            throw StoreError.invalidArgument(
                "\(name): the diff is for a disk of \(summary.virtualByteCount) bytes; "
                    + "\(target.path) holds only \(target.byteCount) bytes and cannot grow")
        }
    }

    /// Whether the diff was made for TARGET's base: a native diff's fingerprint. An rbd diff
    /// carries no fingerprint, so it needs `force`.
    private func checkBase(_ summary: Summary) throws {
        let name = "\(input.path)"
        guard !force else { return }
        guard summary.kind == .native else {
            throw StoreError.invalidArgument(
                "\(name): an rbd diff carries no base fingerprint, so cowbd cannot check that "
                    + "\(target.path) is the image it was made against; check it, then use --force")
        }
        guard let expected = verifiedNativeHeader else {
            preconditionFailure("the verifying pass keeps a native diff's header")
        }
        // Incremental: TARGET must hold the disk as it was at the checkpoint. Whole: its base.
        let isIncremental = expected.sinceCheckpointID != 0
        let (byteCount, actual) =
            try isIncremental
            ? (target.byteCount, target.diskFingerprint())
            : (target.baseByteCount, target.baseFingerprint())
        guard expected.baseByteCount == byteCount, expected.baseFingerprint == actual else {
            let found = "\(byteCount) bytes with fingerprint \(actual)"
            throw StoreError.invalidArgument(
                isIncremental
                    ? "\(input.path): the diff holds the changes since a checkpoint, over a disk "
                        + "of \(expected.baseByteCount) bytes with fingerprint "
                        + "\(expected.baseFingerprint); \(target.path) holds \(found): not the "
                        + "disk as it was at the checkpoint; refusing to apply it (--force "
                        + "applies it anyway)"
                    : "\(input.path): the diff was made over a base of \(expected.baseByteCount) "
                        + "bytes with fingerprint \(expected.baseFingerprint); \(target.path) "
                        + "holds a base of \(found); refusing to apply it (--force applies it "
                        + "anyway)")
        }
    }

    /// Copies `source` into an unlinked temporary file beside `targetPath` (in $TMPDIR for a
    /// block device): its size is the diff's, and it vanishes with the process.
    static func spool(_ source: FileDescriptor, name: String, beside targetPath: FilePath)
        throws -> FileDescriptor
    {
        var status = Glibc.stat()
        let isDevice =
            stat(targetPath.string, &status) == 0 && status.st_mode & S_IFMT == S_IFBLK
        let folder =
            isDevice
            ? FilePath(getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp")
            : absolutePath(targetPath.string).removingLastComponent()
        var template = Array(folder.appending(".cowbd-import-diff.XXXXXX").string.utf8CString)
        let raw = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard raw >= 0 else {
            throw StoreError.io(
                path: folder, operation: "mkstemp", byteOffset: 0, Errno(rawValue: Glibc.errno))
        }
        _ = template.withUnsafeBufferPointer { unlink($0.baseAddress!) }
        let spool = FileDescriptor(rawValue: raw)
        let buffer = UnsafeMutableRawBufferPointer.allocate(
            byteCount: pieceByteCount, alignment: 4096)
        defer { buffer.deallocate() }
        var total: UInt64 = 0
        while true {
            let count = Glibc.read(source.rawValue, buffer.baseAddress!, buffer.count)
            if count == 0 { break }
            if count < 0 {
                if Glibc.errno == EINTR { continue }
                try? spool.close()
                throw StoreError.io(
                    path: FilePath(name), operation: "read", byteOffset: total,
                    Errno(rawValue: Glibc.errno))
            }
            do {
                try spool.writeFully(
                    at: total, from: UnsafeRawBufferPointer(rebasing: buffer[..<count]))
            } catch {
                try? spool.close()
                throw StoreError.io(path: folder, operation: "spool", byteOffset: total, error)
            }
            total += UInt64(count)
        }
        return spool
    }
}
