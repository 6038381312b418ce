// Synchronous commands: each call sends one request and waits for its reply. A server error
// reply becomes an NBDClientError whose `errno` is the NBD error (EINVAL, EPERM, ENOSPC...).

import CNBD
import NBDProtocol

extension NBDConnection {
    /// `NBD_CMD_READ` into `buffer`. The corresponding C function is `nbd_pread`.
    public func pread(
        into buffer: UnsafeMutableRawBufferPointer, at byteOffset: UInt64,
        flags: CommandFlags = []
    ) throws {
        try withNonNullBase(buffer) { base in
            try check(
                nbd_pread(handle, base, buffer.count, byteOffset, flags.libnbdFlags), "nbd_pread")
        }
    }

    /// `NBD_CMD_READ` of `byteCount` bytes. The corresponding C function is `nbd_pread`.
    public func pread(at byteOffset: UInt64, byteCount: Int, flags: CommandFlags = [])
        throws -> [UInt8]
    {
        var bytes = [UInt8](repeating: 0, count: byteCount)
        try bytes.withUnsafeMutableBytes { try pread(into: $0, at: byteOffset, flags: flags) }
        return bytes
    }

    /// `NBD_CMD_READ` that also reports each structured reply chunk the server sent (with
    /// `.dontFragment`, a compliant server sends one). libnbd's `nbd_pread` takes no flags;
    /// DF needs this call. The corresponding C function is `nbd_pread_structured`.
    public func preadStructured(at byteOffset: UInt64, byteCount: Int, flags: CommandFlags = [])
        throws -> (bytes: [UInt8], chunks: [ReadChunk])
    {
        let collector = Collector<ReadChunk>()
        let callback = nbd_chunk_callback(
            callback: { userData, _, count, offset, status, _ in
                guard let userData else { return -1 }
                Unmanaged<Collector<ReadChunk>>.fromOpaque(userData).takeUnretainedValue().items
                    .append(ReadChunk(byteOffset: offset, byteCount: count, status: status))
                return 0
            },
            user_data: Unmanaged.passUnretained(collector).toOpaque(), free: nil)
        var bytes = [UInt8](repeating: 0, count: byteCount)
        try withExtendedLifetime(collector) {
            try bytes.withUnsafeMutableBytes { buffer in
                try withNonNullBase(buffer) { base in
                    try check(
                        nbd_pread_structured(
                            handle, base, buffer.count, byteOffset, callback, flags.libnbdFlags),
                        "nbd_pread_structured")
                }
            }
        }
        return (bytes, collector.items)
    }

    /// `NBD_CMD_WRITE`. The corresponding C function is `nbd_pwrite`.
    public func pwrite(_ bytes: [UInt8], at byteOffset: UInt64, flags: CommandFlags = [])
        throws
    {
        try bytes.withUnsafeBytes { buffer in
            // nbd_pwrite takes `const void *`: the mutable view is never written through.
            try withNonNullBase(UnsafeMutableRawBufferPointer(mutating: buffer)) { base in
                try check(
                    nbd_pwrite(handle, base, buffer.count, byteOffset, flags.libnbdFlags),
                    "nbd_pwrite")
            }
        }
    }

    /// `NBD_CMD_FLUSH`. The corresponding C function is `nbd_flush`.
    public func flush() throws {
        try check(nbd_flush(handle, 0), "nbd_flush")
    }

    /// `NBD_CMD_TRIM` (flags: `.fua`). The corresponding C function is `nbd_trim`.
    public func trim(at byteOffset: UInt64, byteCount: UInt64, flags: CommandFlags = [])
        throws
    {
        try check(nbd_trim(handle, byteCount, byteOffset, flags.libnbdFlags), "nbd_trim")
    }

    /// `NBD_CMD_WRITE_ZEROES` (flags: `.noHole`, `.fastZero`, `.fua`). The corresponding C
    /// function is `nbd_zero`.
    public func zero(at byteOffset: UInt64, byteCount: UInt64, flags: CommandFlags = [])
        throws
    {
        try check(nbd_zero(handle, byteCount, byteOffset, flags.libnbdFlags), "nbd_zero")
    }

    /// `NBD_CMD_CACHE`. The corresponding C function is `nbd_cache`.
    public func cache(at byteOffset: UInt64, byteCount: UInt64) throws {
        try check(nbd_cache(handle, byteCount, byteOffset, 0), "nbd_cache")
    }

    /// `NBD_CMD_BLOCK_STATUS` for every negotiated context: the extents the server returned,
    /// by context name, in order. The server may describe less than `byteCount` (and with
    /// `.requestOne`, one extent). The corresponding C function is `nbd_block_status`.
    public func blockStatus(at byteOffset: UInt64, byteCount: UInt64, flags: CommandFlags = [])
        throws -> [String: [BlockStatusExtent]]
    {
        let collector = ExtentCollector()
        let callback = nbd_extent_callback(
            callback: { userData, context, _, entries, entryCount, _ in
                guard let userData, let context, let entries else { return -1 }
                let collector = Unmanaged<ExtentCollector>.fromOpaque(userData)
                    .takeUnretainedValue()
                // Entries come as (length, flags) pairs of 32-bit values.
                let pairs = UnsafeBufferPointer(start: entries, count: entryCount)
                var extents: [BlockStatusExtent] = []
                for pairIndex in stride(from: 0, to: entryCount - 1, by: 2) {
                    extents.append(
                        BlockStatusExtent(
                            length: UInt64(pairs[pairIndex]), flags: pairs[pairIndex + 1]))
                }
                collector.extentsByContext[String(cString: context), default: []]
                    .append(contentsOf: extents)
                return 0
            },
            user_data: Unmanaged.passUnretained(collector).toOpaque(), free: nil)
        try withExtendedLifetime(collector) {
            try check(
                nbd_block_status(handle, byteCount, byteOffset, callback, flags.libnbdFlags),
                "nbd_block_status")
        }
        return collector.extentsByContext
    }
}

/// Runs `body` with `buffer`'s address, or with a 1-byte stand-in when `buffer` is empty:
/// libnbd refuses a NULL buffer even for a zero-length request, and an empty Swift buffer has
/// no address.
func withNonNullBase<Result>(
    _ buffer: UnsafeMutableRawBufferPointer, _ body: (UnsafeMutableRawPointer) throws -> Result
) rethrows -> Result {
    if let base = buffer.baseAddress { return try body(base) }
    var standIn: UInt8 = 0
    return try withUnsafeMutableBytes(of: &standIn) { try body($0.baseAddress.unsafelyUnwrapped) }
}

/// Gathers the extents of one BLOCK_STATUS call.
private final class ExtentCollector {
    var extentsByContext: [String: [BlockStatusExtent]] = [:]
}
