// The read-only interface of every layer a virtual disk reads through: a raw image, a
// compressed image, a store's own disk, an export on an NBD server. Sources never write; reads
// at explicit offsets are safe from many threads at once. Locking and opening are each
// source's own (RawBaseImage, CompressedBaseImage, VirtualDiskImage); chains are VirtualDisk's.

import CowFormat
import SystemPackage

/// How a stretch of a source is stored.
public enum SourceAllocation: Sendable {
    /// Bytes are stored: read them.
    case data
    /// Stored as known zeros (a zeroed range the layer holds): reads as zeros.
    case zero
    /// Nothing stored (a sparse hole, a zero block): reads as zeros.
    case hole
}

/// One stretch of a source with the same allocation, and the layer that holds it.
public struct SourceExtent: Equatable, Sendable {
    /// Bytes the extent covers.
    public var byteCount: UInt64
    public var allocation: SourceAllocation
    /// Which layer holds the stretch, counted as `qemu:allocation-depth` counts: 1 for the
    /// source itself, 2 for the layer under it, and so on; 0 where no layer holds it.
    public var depth: UInt32

    public init(byteCount: UInt64, allocation: SourceAllocation, depth: UInt32) {
        self.byteCount = byteCount
        self.allocation = allocation
        self.depth = depth
    }

    /// A stretch of a single-layer source: data at depth 1, a hole at depth 0.
    public init(byteCount: UInt64, isHole: Bool) {
        self.init(
            byteCount: byteCount, allocation: isHole ? .hole : .data, depth: isHole ? 0 : 1)
    }

    /// True if nothing is stored for the stretch (NBD_STATE_HOLE); it reads as zeros.
    public var isHole: Bool { allocation == .hole }
    /// True if the stretch reads as zeros (NBD_STATE_ZERO).
    public var readsAsZeros: Bool { allocation != .data }
}

/// A read-only image that a virtual disk reads the chunks its store does not hold from.
public protocol BlockSource: AnyObject, Sendable {
    /// The source's file, for messages and for `info`.
    var path: FilePath { get }
    /// Where the source is, as a message names it: its path (or, for a network source, a URI).
    var locationDescription: String { get }
    /// The source's virtual size in bytes.
    var byteCount: UInt64 { get }
    /// What kind of image this is, for `info`: "raw", "cowbd-lz4", "cowbd store", "nbd".
    var kindName: String { get }
    /// True if a `read` may wait on something slower than a local disk (a network), for long:
    /// a connection's reader thread then calls only `readIfReady` and hands misses to threads
    /// that may block.
    var mayBeSlow: Bool { get }
    /// Fills `buffer` with the bytes at `byteOffset`; the range must lie within `byteCount`.
    /// May block. Throws rather than return bytes it cannot vouch for.
    func read(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws
    /// Like `read`, but never waits (for a device, a network, or a block being loaded by
    /// another thread); false means "not now" and may leave `buffer` partly filled: the caller
    /// retries with `read` on a thread that may block. Does not allocate.
    func readIfReady(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool
    /// The extent that starts at `byteOffset` (within `byteCount`), at most `maxByteCount` long.
    func extent(at byteOffset: UInt64, maxByteCount: UInt64) throws -> SourceExtent
    /// The content fingerprint (docs/FORMAT.md, "Base fingerprint"): a fixed number of samples.
    func fingerprint() throws -> BaseFingerprint
    /// A hint that a range will be read soon (NBD_CMD_CACHE). Never fails.
    func prefetch(at byteOffset: UInt64, byteCount: UInt64)
    /// Starts fetching the range (within `byteCount`) and runs `then` once a `read` of it no
    /// longer waits, on the thread that finished the last fetch, with the first error if one
    /// failed. False, running nothing, if the source has nothing to wait for or no way to
    /// keep what arrives: the caller reads at once. Never waits.
    func whenFetched(
        at byteOffset: UInt64, byteCount: UInt64,
        _ then: @escaping @Sendable (StoreError?) -> Void
    ) -> Bool
}

extension BlockSource {
    public var locationDescription: String { path.string }
    public var mayBeSlow: Bool { false }

    public func whenFetched(
        at byteOffset: UInt64, byteCount: UInt64,
        _ then: @escaping @Sendable (StoreError?) -> Void
    ) -> Bool { false }

    public func fingerprint() throws -> BaseFingerprint {
        try sampleFingerprint(byteCount: byteCount, read: read(at:into:))
    }
}

/// The fingerprint of `byteCount` bytes that `read` returns: the sampled ranges laid end to end
/// and hashed (docs/FORMAT.md, "Base fingerprint"). Shared by sources and the virtual disk, so
/// a merged image's fingerprint can be known before the merge writes it.
func sampleFingerprint(
    byteCount: UInt64, read: (UInt64, UnsafeMutableRawBufferPointer) throws -> Void
) throws -> BaseFingerprint {
    let total = Int(BaseFingerprintPlan.sampledByteCount(baseByteCount: byteCount))
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(total, 1), alignment: 4096)
    defer { buffer.deallocate() }
    var filled = 0
    for range in BaseFingerprintPlan.ranges(baseByteCount: byteCount) {
        let length = Int(range.count)
        try read(
            range.lowerBound,
            UnsafeMutableRawBufferPointer(rebasing: buffer[filled..<(filled + length)]))
        filled += length
    }
    return BaseFingerprintPlan.fingerprint(
        sampledBytes: UnsafeRawBufferPointer(rebasing: buffer[..<total]), baseByteCount: byteCount)
}
