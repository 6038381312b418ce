// A COW store's virtual disk seen as a read-only image, so that `compress` can flatten a
// VM's disk into a new golden image. Reads go through VirtualDisk; nothing is written.

import SystemPackage

/// The disk a store presents (its base plus its changes), as a `BaseImage`.
public final class VirtualDiskImage: BaseImage {
    public let disk: VirtualDisk
    public var path: FilePath { disk.store.path }
    public var byteCount: UInt64 { disk.byteCount }
    public var kindName: String { "cowbd store" }

    /// Wraps an open disk; open it read-only, so it cannot change while it is read.
    public init(disk: VirtualDisk) {
        self.disk = disk
    }

    /// Opens the store at `path` read-only (its exclusive lock: no server changes it meanwhile).
    public convenience init(storePath: FilePath) throws {
        self.init(disk: try VirtualDisk.open(storePath: storePath, readOnly: true))
    }

    public func read(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try disk.read(at: byteOffset, into: buffer)
    }

    public func readIfCached(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer)
        -> Bool
    {
        (try? disk.readIfCached(at: byteOffset, into: buffer)) ?? false
    }

    /// A range that reads as zeros counts as a hole, whichever layer it comes from.
    public func extent(at byteOffset: UInt64, maxByteCount: UInt64) throws -> ImageExtent {
        let limit = min(maxByteCount, byteCount - byteOffset)
        guard
            let first = try disk.extents(at: byteOffset, byteCount: limit, maxExtentCount: 1).first
        else {
            return ImageExtent(byteCount: limit, isHole: false)
        }
        return ImageExtent(byteCount: first.byteCount, isHole: first.isZero)
    }

    public func prefetch(at byteOffset: UInt64, byteCount prefetchByteCount: UInt64) {
        try? disk.prefetch(at: byteOffset, byteCount: prefetchByteCount)
    }
}
