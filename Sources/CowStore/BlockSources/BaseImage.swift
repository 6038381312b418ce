// The read-only origin of a virtual disk. Implementations never write; reads at explicit
// offsets are safe from many threads at once.

import CowFormat
import SystemPackage

/// One stretch of an image with the same allocation state.
public struct ImageExtent: Equatable, Sendable {
    /// Bytes the extent covers.
    public var byteCount: UInt64
    /// True if the range is known to read as zeros without data behind it (a hole).
    public var isHole: Bool

    public init(byteCount: UInt64, isHole: Bool) {
        self.byteCount = byteCount
        self.isHole = isHole
    }
}

/// A read-only image that a COW store reads untouched chunks from.
public protocol BaseImage: AnyObject, Sendable {
    /// The image's path, for messages.
    var path: FilePath { get }
    /// The image's virtual size in bytes.
    var byteCount: UInt64 { get }
    /// What kind of image this is, for `info` ("raw", "cowbd-lz4").
    var kindName: String { get }
    /// Fills `buffer` with the bytes at `byteOffset`; the range must lie within `byteCount`.
    /// Throws rather than return bytes it cannot vouch for.
    func read(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws
    /// Like `read`, but only if the bytes are at hand without waiting for a device; false
    /// means "not now" (the caller retries with `read` on a thread that may block).
    func readIfCached(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool
    /// The extent that starts at `byteOffset` (within `byteCount`), at most `maxByteCount` long.
    func extent(at byteOffset: UInt64, maxByteCount: UInt64) throws -> ImageExtent
    /// A hint that a range will be read soon (NBD_CMD_CACHE).
    func prefetch(at byteOffset: UInt64, byteCount: UInt64)
}

extension BaseImage {
    /// The content fingerprint (docs/FORMAT.md, "Base fingerprint"): a fixed number of samples.
    public func fingerprint() throws -> BaseFingerprint {
        try sampleFingerprint(byteCount: byteCount, read: read(at:into:))
    }
}

/// The fingerprint of `byteCount` bytes that `read` returns: the sampled ranges laid end to end
/// and hashed (docs/FORMAT.md, "Base fingerprint"). Shared by bases and the virtual disk, so a
/// merged image's fingerprint can be known before the merge writes it.
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

/// A raw image file or block device, opened read-only.
public final class RawBaseImage: BaseImage {
    public let path: FilePath
    public let byteCount: UInt64
    public var kindName: String { "raw" }
    /// Immutable after init: shared by every thread, used only with positional reads.
    private let descriptor: FileDescriptor

    /// Opens `path` read-only. The corresponding C function is `open(O_RDONLY)`.
    public init(path: FilePath) throws {
        self.path = path
        do {
            descriptor = try FileDescriptor.open(path, .readOnly, options: [.closeOnExec])
        } catch let errno as Errno {
            throw StoreError.open(path: path, errno)
        }
        do {
            byteCount = try descriptor.byteCount()
        } catch {
            try? descriptor.close()
            throw StoreError.io(path: path, operation: "fstat", byteOffset: 0, error)
        }
    }

    deinit { try? descriptor.close() }

    public func read(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        precondition(byteOffset + UInt64(buffer.count) <= byteCount, "base read past its end")
        let done: Int
        do {
            done = try descriptor.readUpToFully(at: byteOffset, into: buffer)
        } catch {
            throw StoreError.io(path: path, operation: "read", byteOffset: byteOffset, error)
        }
        // A base that shrank underneath us must not turn into zeros: that would be wrong bytes.
        guard done == buffer.count else {
            throw StoreError.shortRead(
                path: path, byteOffset: byteOffset, expectedByteCount: buffer.count,
                actualByteCount: done)
        }
    }

    public func readIfCached(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer)
        -> Bool
    {
        precondition(byteOffset + UInt64(buffer.count) <= byteCount, "base read past its end")
        return descriptor.readIfCached(at: byteOffset, into: buffer)
    }

    public func extent(at byteOffset: UInt64, maxByteCount: UInt64) throws -> ImageExtent {
        precondition(byteOffset < byteCount && maxByteCount > 0)
        let limit = min(maxByteCount, byteCount - byteOffset)
        do {
            guard let dataStart = try descriptor.nextData(from: byteOffset) else {
                return ImageExtent(byteCount: limit, isHole: true)
            }
            if dataStart > byteOffset {
                return ImageExtent(byteCount: min(limit, dataStart - byteOffset), isHole: true)
            }
            let holeStart = try descriptor.nextHole(from: byteOffset)
            return ImageExtent(
                byteCount: min(limit, max(holeStart, byteOffset + 1) - byteOffset), isHole: false)
        } catch {
            // Block devices and some filesystems cannot tell: everything is data.
            return ImageExtent(byteCount: limit, isHole: false)
        }
    }

    public func prefetch(at byteOffset: UInt64, byteCount: UInt64) {
        descriptor.adviseWillNeed(at: byteOffset, byteCount: byteCount)
    }
}
