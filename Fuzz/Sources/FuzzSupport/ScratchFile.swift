// A file the fuzz targets rewrite for every input, for parsers that read through a descriptor
// (stores, compressed images, diffs). It lives in /dev/shm when there is one, so no disk I/O.

#if canImport(Glibc)
    import Glibc
#endif

/// One scratch file per process and name; removed when the value goes. The fuzz targets keep
/// theirs in globals, so tools/fuzz removes the folder they are in.
public final class ScratchFile: Sendable {
    public let path: String
    private let descriptor: Int32

    /// Creates (or truncates) `<folder>/cowbd-fuzz-<pid>-<name>`, in `$COWBD_FUZZ_SCRATCH` if
    /// set (tools/fuzz sets it to a folder it removes afterwards: globals are never deinited).
    public init(name: String) {
        let folder =
            getenv("COWBD_FUZZ_SCRATCH").map { String(cString: $0) }
            ?? (access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp")
        path = "\(folder)/cowbd-fuzz-\(getpid())-\(name)"
        descriptor = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        precondition(descriptor >= 0, "cannot create \(path): errno \(errno)")
    }

    deinit {
        close(descriptor)
        unlink(path)
    }

    /// Replaces the file's contents with `bytes`, then extends it (sparsely, with
    /// `ftruncate`) to `byteCount` when that is larger.
    public func write(_ bytes: [UInt8], extendingTo byteCount: UInt64 = 0) {
        precondition(ftruncate(descriptor, 0) == 0, "ftruncate \(path): errno \(errno)")
        var done = 0
        bytes.withUnsafeBytes { buffer in
            while done < buffer.count {
                let count = pwrite(
                    descriptor, buffer.baseAddress! + done, buffer.count - done, off_t(done))
                precondition(count > 0, "pwrite \(path): errno \(errno)")
                done += count
            }
        }
        if byteCount > UInt64(bytes.count), let length = off_t(exactly: byteCount) {
            // A size the file system refuses (EFBIG) leaves the file short: the parser then
            // sees a truncated file, which is an input like any other.
            _ = ftruncate(descriptor, length)
        }
    }
}
