// What a merge into a target checks before it records itself in the store's header: once the
// record is written the store refuses to be served until the merge finishes (or is aborted), so
// everything that can be known to fail is refused first (docs/FORMAT.md, "Merge").

import CowFormat
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

extension StoreMerge {
    /// Whether a merge `--into` TARGET already finished: the store, with no merge recorded, is
    /// bound to TARGET itself (the same file) and holds nothing. A run killed after its last
    /// step leaves exactly that, so the same command again must succeed and write nothing;
    /// opening TARGET to write it would meet the shared lock this process holds on it as the
    /// store's base. Throws if the store holds chunks again: merging them into its own base is
    /// `--in-place`'s job, which the user must ask for.
    func isAlreadyDone() throws -> Bool {
        guard case .into = destination, store.header.merge == nil,
            let targetIdentity = try? FileIdentity(of: FilePath(targetPath)),
            let baseIdentity = try? FileIdentity(of: base.path),
            targetIdentity == baseIdentity
        else { return false }
        guard store.writtenChunkCount == 0 else {
            throw StoreError.invalidArgument(
                "\(storePath): \(targetPath) is the store's base already (an earlier merge "
                    + "into it finished); to fold the store's new changes into it, use "
                    + "--in-place")
        }
        return true
    }

    var alreadyDoneSummary: Summary {
        Summary(
            targetPath: targetPath, chunkCount: 0, dataByteCount: 0, holeByteCount: 0,
            resumed: false, alreadyDone: true)
    }

    /// Refuses a target that the merge could not finish writing: one that is missing, not
    /// writable, neither a regular file nor a block device, too small and unable to grow to the
    /// virtual size (a block device, RLIMIT_FSIZE, the filesystem's largest file), or on a
    /// filesystem with too little free space for the data to copy. Writes nothing. The base's
    /// twin check (size and fingerprint) follows, also before the record.
    func checkTargetBeforeRecording() throws {
        let path = FilePath(targetPath)
        let target = try FileDescriptor.openClosingOnExec(path, .readWrite)
        defer { try? target.close() }
        var status = stat()
        guard fstat(target.rawValue, &status) == 0 else {
            throw StoreError.io(
                path: path, operation: "fstat", byteOffset: 0, Errno(rawValue: errno))
        }
        let isRegularFile = status.st_mode & S_IFMT == S_IFREG
        guard isRegularFile || status.st_mode & S_IFMT == S_IFBLK else {
            throw StoreError.invalidArgument(
                "\(path): a merge target must be a regular file or a block device")
        }
        let byteCount: UInt64
        do { byteCount = try target.byteCount() } catch {
            throw StoreError.io(path: path, operation: "size", byteOffset: 0, error)
        }
        let neededByteCount = store.header.virtualByteCount
        if byteCount < neededByteCount {
            guard isRegularFile else {
                throw StoreError.invalidArgument(
                    "\(path): holds \(byteCount) bytes and, as a block device, cannot grow to the "
                        + "disk's \(neededByteCount); nothing was written")
            }
            try checkCanGrow(path, to: neededByteCount)
        }
        try checkFreeSpace(path, status: status, neededByteCount: neededByteCount)
    }

    /// Whether a file in `path`'s folder may be `byteCount` bytes long: the process's file size
    /// limit, then a sparse file of that size, made and dropped, on the same filesystem.
    private func checkCanGrow(_ path: FilePath, to byteCount: UInt64) throws {
        // RLIM_INFINITY is all ones; Swift imports it as -1, which rlim_t cannot hold.
        var limit = rlimit()
        if getrlimit(__rlimit_resource_t(RLIMIT_FSIZE.rawValue), &limit) == 0,
            limit.rlim_cur != rlim_t.max,
            UInt64(limit.rlim_cur) < byteCount
        {
            throw StoreError.invalidArgument(
                "\(path): must grow to \(byteCount) bytes, over this process's file size limit "
                    + "(\(limit.rlim_cur) bytes, ulimit -f); nothing was written")
        }
        let folder = AtomicFile.folder(of: path)
        do {
            try AtomicFile.withScratchFile(in: folder) { probe in
                try probe.setByteCount(byteCount)
            }
        } catch let errno as Errno {
            throw StoreError.invalidArgument(
                "\(path): must grow to \(byteCount) bytes, which its filesystem does not allow "
                    + "(ftruncate: \(errno)); nothing was written")
        }
    }

    /// Refuses when the filesystem clearly lacks the space the merge needs: at most the store's
    /// data, and at most what the target does not hold allocated yet. Cheap (statvfs), and only
    /// refuses what must fail; a copy-on-write filesystem may still run out.
    private func checkFreeSpace(_ path: FilePath, status: stat, neededByteCount: UInt64) throws {
        guard status.st_mode & S_IFMT == S_IFREG else { return }
        var fileSystem = statvfs()
        guard statvfs(path.string, &fileSystem) == 0 else { return }
        let availableByteCount = UInt64(fileSystem.f_bavail) * UInt64(fileSystem.f_frsize)
        let allocatedByteCount = UInt64(status.st_blocks) * 512
        let unallocatedByteCount =
            neededByteCount > allocatedByteCount ? neededByteCount - allocatedByteCount : 0
        let dataByteCount = try store.allocatedDataByteCount()
        let needed = min(dataByteCount, unallocatedByteCount)
        guard needed <= availableByteCount else {
            throw StoreError.invalidArgument(
                "\(path): the merge may need \(needed) bytes on its filesystem, which has "
                    + "\(availableByteCount) free; nothing was written")
        }
    }
}
