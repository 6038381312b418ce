// A request's payload buffer: address space for the export's largest payload, mapped lazily
// by the kernel. Pages beyond a small head stay resident only while their payload budget is
// held: from one request to the next on a busy connection (no page faults, no madvise per
// request), and back to the kernel when the connection goes idle or a request elsewhere waits
// for budget (WorkerPool), so idle connections cost little memory however large their last
// request was.

#if canImport(Glibc)
    import Glibc
#endif

/// One payload buffer, used by one thread at a time (the reader fills a worker's buffer only
/// while the worker is idle, as `RequestWorker` describes).
final class PayloadBuffer {
    /// Bytes at the start of a buffer that stay resident after use: requests up to this size
    /// take no budget and cost no page faults. The largest block status payload (16,384
    /// extended descriptors) is a few bytes more, which costs a page returned now and then.
    static let keptResidentByteCount = 256 << 10

    /// The whole buffer.
    let bytes: UnsafeMutableRawBufferPointer
    /// Bytes from the start that may be resident: the largest use since pages were last given
    /// back. Exclusivity unchecked: one thread at a time uses the buffer (above), and the
    /// dynamic check cost more than the rest of `prefix`, every request.
    @exclusivity(unchecked) private var touchedByteCount = 0

    /// Maps `byteCount` bytes of private anonymous memory; no page is resident until touched.
    /// The corresponding C function is `mmap`.
    init(byteCount: Int) {
        let address = mmap(
            nil, byteCount, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let address, address != MAP_FAILED else {
            preconditionFailure("cannot map a \(byteCount)-byte payload buffer: errno \(errno)")
        }
        bytes = UnsafeMutableRawBufferPointer(start: address, count: byteCount)
    }

    deinit { munmap(bytes.baseAddress, bytes.count) }

    /// The first `byteCount` bytes, recorded as touched.
    func prefix(_ byteCount: Int) -> UnsafeMutableRawBufferPointer {
        touchedByteCount = max(touchedByteCount, byteCount)
        return UnsafeMutableRawBufferPointer(rebasing: bytes[..<byteCount])
    }

    /// Returns the touched pages beyond the kept head to the kernel; they read as zeros if
    /// touched again. The corresponding C function is `madvise(MADV_DONTNEED)`.
    func giveBackPages() {
        let kept = Self.keptResidentByteCount
        guard touchedByteCount > kept else { return }
        _ = madvise(bytes.baseAddress! + kept, touchedByteCount - kept, MADV_DONTNEED)
        touchedByteCount = kept
    }
}
