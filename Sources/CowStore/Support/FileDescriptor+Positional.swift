// Positional I/O on file descriptors: whole-buffer pread/pwrite loops, hole punching,
// SEEK_DATA/SEEK_HOLE and syncs. Thin wrappers: each names the syscall it makes.

import CLinux
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

extension FileDescriptor {
    /// Opens `path` in `mode`, close-on-exec; a failure is `StoreError.open` naming the path.
    /// The corresponding C function is `open`.
    static func openClosingOnExec(_ path: FilePath, _ mode: AccessMode) throws -> FileDescriptor {
        do {
            return try FileDescriptor.open(path, mode, options: [.closeOnExec])
        } catch let errno as Errno {
            throw StoreError.open(path: path, errno)
        }
    }

    /// Reads exactly `buffer.count` bytes at `byteOffset`, looping over short reads.
    /// Returns the bytes read, less than `buffer.count` only at end of file.
    /// The corresponding C function is `pread`.
    func readUpToFully(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer)
        throws(Errno) -> Int
    {
        var done = 0
        while done < buffer.count {
            let result = Glibc.pread(
                rawValue, buffer.baseAddress! + done, buffer.count - done,
                off_t(byteOffset) + off_t(done))
            if result > 0 {
                done += result
            } else if result == 0 {
                break
            } else if Glibc.errno != EINTR {
                throw Errno(rawValue: Glibc.errno)
            }
        }
        return done
    }

    /// Reads all of `buffer` at `byteOffset` only if that needs no waiting for the device (the
    /// bytes are in the page cache); false otherwise, or where the kernel cannot tell.
    /// The corresponding C function is `preadv2(RWF_NOWAIT)`.
    func readIfCached(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool {
        var vector = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
        while true {
            let result = preadv2(rawValue, &vector, 1, off_t(byteOffset), COWBD_RWF_NOWAIT)
            if result == buffer.count { return true }
            if result < 0 && Glibc.errno == EINTR { continue }
            return false
        }
    }

    /// Writes all of `buffer` at `byteOffset`, looping over short writes; a write of nothing
    /// fails with EIO. The corresponding C function is `pwrite`.
    func writeFully(at byteOffset: UInt64, from buffer: UnsafeRawBufferPointer) throws(Errno) {
        try writeInFull(byteCount: buffer.count) { done in
            Glibc.pwrite(
                rawValue, buffer.baseAddress! + done, buffer.count - done,
                off_t(byteOffset) + off_t(done))
        }
    }

    /// Deallocates the byte range: it reads as zeros afterwards and the file size is kept.
    /// The corresponding C function is `fallocate(COWBD_FALLOC_FL_PUNCH_HOLE | COWBD_FALLOC_FL_KEEP_SIZE)`.
    func punchHole(at byteOffset: UInt64, byteCount: UInt64) throws(Errno) {
        try retryingInterrupts {
            fallocate(
                rawValue, COWBD_FALLOC_FL_PUNCH_HOLE | COWBD_FALLOC_FL_KEEP_SIZE, off_t(byteOffset),
                off_t(byteCount))
        }
    }

    /// Zeroes the byte range, keeping it allocated (for NO_HOLE).
    /// The corresponding C function is `fallocate(FALLOC_FL_ZERO_RANGE)`.
    /// Where ZERO_RANGE is unsupported (tmpfs), punches and then allocates the range.
    func zeroRange(at byteOffset: UInt64, byteCount: UInt64) throws(Errno) {
        let mode = COWBD_FALLOC_FL_ZERO_RANGE | COWBD_FALLOC_FL_KEEP_SIZE
        while fallocate(rawValue, mode, off_t(byteOffset), off_t(byteCount)) != 0 {
            switch Glibc.errno {
            case EINTR:
                continue
            case EOPNOTSUPP:
                try punchHole(at: byteOffset, byteCount: byteCount)
                try retryingInterrupts {
                    fallocate(
                        rawValue, COWBD_FALLOC_FL_KEEP_SIZE, off_t(byteOffset), off_t(byteCount))
                }
                return
            default:
                throw Errno(rawValue: Glibc.errno)
            }
        }
    }

    /// The first offset at or after `byteOffset` that holds data, or nil if only holes follow.
    /// The corresponding C function is `lseek(COWBD_SEEK_DATA)`.
    func nextData(from byteOffset: UInt64) throws(Errno) -> UInt64? {
        let result = Glibc.lseek(rawValue, off_t(byteOffset), COWBD_SEEK_DATA)
        if result < 0 {
            if Glibc.errno == ENXIO { return nil }
            throw Errno(rawValue: Glibc.errno)
        }
        return UInt64(result)
    }

    /// The first offset at or after `byteOffset` that is a hole (end of file counts as one).
    /// The corresponding C function is `lseek(COWBD_SEEK_HOLE)`.
    func nextHole(from byteOffset: UInt64) throws(Errno) -> UInt64 {
        let result = Glibc.lseek(rawValue, off_t(byteOffset), COWBD_SEEK_HOLE)
        if result < 0 { throw Errno(rawValue: Glibc.errno) }
        return UInt64(result)
    }

    /// Flushes the file's data and the metadata needed to read it back.
    /// The corresponding C function is `fdatasync`.
    func synchronizeData() throws(Errno) {
        try retryingInterrupts { fdatasync(rawValue) }
    }

    /// Flushes the file's data and all its metadata.
    /// The corresponding C function is `fsync`.
    func synchronizeAll() throws(Errno) {
        try retryingInterrupts { fsync(rawValue) }
    }

    /// The file's size in bytes; for a block device, the device's size.
    /// The corresponding C functions are `fstat` and `ioctl(BLKGETSIZE64)`.
    func byteCount() throws(Errno) -> UInt64 {
        var status = Glibc.stat()
        guard fstat(rawValue, &status) == 0 else { throw Errno(rawValue: Glibc.errno) }
        if status.st_mode & S_IFMT == S_IFBLK {
            var size: UInt64 = 0
            // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
            guard ioctl(rawValue, 0x8008_1272, &size) == 0 else {
                throw Errno(rawValue: Glibc.errno)
            }
            return size
        }
        return UInt64(status.st_size)
    }

    /// Sets the file size (sparse growth). The corresponding C function is `ftruncate`.
    func setByteCount(_ byteCount: UInt64) throws(Errno) {
        try retryingInterrupts { ftruncate(rawValue, off_t(byteCount)) }
    }

    /// Takes an advisory whole-file lock without waiting; false if another holder has it.
    /// The corresponding C function is `flock(LOCK_NB)`.
    func tryLock(exclusive: Bool) throws(Errno) -> Bool {
        if flock(rawValue, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) == 0 { return true }
        if Glibc.errno == EWOULDBLOCK { return false }
        throw Errno(rawValue: Glibc.errno)
    }

    /// Drops this descriptor's lock. The corresponding C function is `flock(LOCK_UN)`.
    func unlock() { _ = flock(rawValue, LOCK_UN) }

    /// Allocates the byte range's blocks, keeping the size; bytes already there stay, new blocks
    /// read as zeros. The corresponding C function is `fallocate(COWBD_FALLOC_FL_KEEP_SIZE)`.
    func allocate(at byteOffset: UInt64, byteCount: UInt64) throws(Errno) {
        try retryingInterrupts {
            fallocate(rawValue, COWBD_FALLOC_FL_KEEP_SIZE, off_t(byteOffset), off_t(byteCount))
        }
    }

    /// Tells the kernel a range will be read soon. The corresponding C function is `posix_fadvise`.
    func adviseWillNeed(at byteOffset: UInt64, byteCount: UInt64) {
        _ = posix_fadvise(rawValue, off_t(byteOffset), off_t(byteCount), POSIX_FADV_WILLNEED)
    }
}

/// The loop of `FileDescriptor.writeFully`: calls `write` with the count of bytes written so
/// far until `byteCount` are written. `write` returns what `pwrite` returns: the bytes it wrote,
/// or -1 with errno set (EINTR is retried). A write of nothing fails with EIO: retrying it would
/// spin forever. Inlined, so the closure costs nothing on the I/O path.
@inlinable
public func writeInFull(byteCount: Int, using write: (_ done: Int) -> Int) throws(Errno) {
    var done = 0
    while done < byteCount {
        let result = write(done)
        if result > 0 {
            done += result
        } else if result == 0 {
            throw Errno.ioError
        } else if Glibc.errno != EINTR {
            throw Errno(rawValue: Glibc.errno)
        }
    }
}

/// Runs a call that returns 0 or -1 with errno, retrying on EINTR.
private func retryingInterrupts(_ call: () -> Int32) throws(Errno) {
    while call() != 0 {
        guard Glibc.errno == EINTR else { throw Errno(rawValue: Glibc.errno) }
    }
}
