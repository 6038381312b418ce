// The import record: written beside TARGET before import-diff changes its first byte, removed
// once TARGET is durable. A rerun that finds the record of the same diff knows TARGET is partly
// written by this very import and finishes it without the base check that a partly applied
// diff no longer passes (docs/FORMAT.md, "Applying a diff").

import CowFormat
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

extension DiffImport {
    /// `.NAME.cowbd-import` in TARGET's folder; for a block device, whose folder (/dev) is not
    /// ours to write, `.cowbd-import.dev-RDEV` in $TMPDIR.
    var importRecordPath: FilePath {
        if let status = try? targetStatus(), status.st_mode & S_IFMT == S_IFBLK {
            return Self.temporaryFolder.appending(".cowbd-import.dev-\(status.st_rdev)")
        }
        let path = absolutePath(target.path.string)
        return path.removingLastComponent().appending(
            ".\(path.lastComponent?.string ?? "target").cowbd-import")
    }

    static var temporaryFolder: FilePath {
        FilePath(getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp")
    }

    private func targetStatus() throws -> stat {
        var status = stat()
        guard stat(target.path.string, &status) == 0 else {
            throw StoreError.io(
                path: target.path, operation: "stat", byteOffset: 0, Errno(rawValue: errno))
        }
        return status
    }

    /// Which file TARGET is: (st_dev, st_ino), or (st_rdev, 0) for a block device.
    private func targetIdentity() throws -> (device: UInt64, inode: UInt64) {
        let status = try targetStatus()
        if status.st_mode & S_IFMT == S_IFBLK { return (UInt64(status.st_rdev), 0) }
        return (UInt64(status.st_dev), UInt64(status.st_ino))
    }

    /// The record of importing this diff (after the verifying pass) into TARGET as it is now.
    func makeImportRecord() throws -> ImportRecord {
        let identity = try targetIdentity()
        return ImportRecord(
            diffByteCount: input.byteCount, diffDigest: input.digest,
            targetDevice: identity.device, targetInode: identity.inode,
            targetByteCountBefore: target.byteCount)
    }

    /// The record an interrupted import left for TARGET, if any. A record naming another file
    /// (TARGET was replaced since) is ignored; a damaged one is refused unless `force`.
    func pendingImportRecord() throws -> ImportRecord? {
        let path = importRecordPath
        let descriptor: FileDescriptor
        do {
            descriptor = try FileDescriptor.open(path, .readOnly, options: [.closeOnExec])
        } catch Errno.noSuchFileOrDirectory {
            return nil
        } catch let errno as Errno {
            throw StoreError.open(path: path, errno)
        }
        defer { try? descriptor.close() }
        var bytes = [UInt8](repeating: 0, count: ImportRecord.byteCount + 1)
        let record: ImportRecord
        do {
            let count = try bytes.withUnsafeMutableBytes {
                try descriptor.readUpToFully(at: 0, into: $0)
            }
            record = try bytes[..<count].withUnsafeBytes { bytes throws(FormatError) in
                try ImportRecord(parsing: bytes)
            }
        } catch {
            if force { return nil }
            throw StoreError.invalidArgument(
                "\(path): damaged import record (\(error)); an import into \(target.path) may "
                    + "have been interrupted: rerun it with --force")
        }
        let identity = try targetIdentity()
        guard record.targetDevice == identity.device, record.targetInode == identity.inode else {
            return nil
        }
        return record
    }

    /// Writes `record` durably (file and folder) before TARGET is first written.
    func writeImportRecord(_ record: ImportRecord) throws {
        let bytes = record.encoded()
        try AtomicFile.write(to: importRecordPath, replacing: true, permissions: .ownerReadWrite) {
            descriptor in
            try bytes.withUnsafeBytes { try descriptor.writeFully(at: 0, from: $0) }
        }
    }

    /// Removes the record, durably, once TARGET is.
    func removeImportRecord() throws {
        let path = importRecordPath
        guard unlink(path.string) == 0 || errno == ENOENT else {
            throw StoreError.io(
                path: path, operation: "unlink", byteOffset: 0, Errno(rawValue: errno))
        }
        try AtomicFile.syncFolder(AtomicFile.folder(of: path), after: path)
    }
}
