// A COW store's virtual disk seen as a read-only block source, so that `compress` can flatten
// a VM's disk into a new golden image (and, next, a store can be another store's lower layer).
// Reads go through VirtualDisk; nothing is written.

import SystemPackage

/// The disk a store presents (its base plus its changes), as a `BlockSource`.
public final class VirtualDiskImage: BlockSource {
    public let disk: VirtualDisk
    public var path: FilePath { disk.store.path }
    public var byteCount: UInt64 { disk.byteCount }
    public var kindName: String { "cowbd store" }
    /// As slow as the slowest layer under the store.
    public var mayBeSlow: Bool { disk.base.mayBeSlow }

    /// Wraps an open disk; open it read-only, so it cannot change while it is read.
    public init(disk: VirtualDisk) {
        self.disk = disk
    }

    /// Opens the store at `path` read-only (its exclusive lock: no server changes it meanwhile)
    /// and its base with `options`.
    public convenience init(storePath: FilePath, options: BaseOpenOptions) throws {
        self.init(
            disk: try VirtualDisk.open(storePath: storePath, readOnly: true, options: options))
    }

    public func read(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try disk.read(at: byteOffset, into: buffer)
    }

    public func readIfReady(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer)
        -> Bool
    {
        (try? disk.readIfCached(at: byteOffset, into: buffer)) ?? false
    }

    /// The store's chunks at depth 1, its base's at 2, zeros past the base at 0.
    public func extent(at byteOffset: UInt64, maxByteCount: UInt64) throws -> SourceExtent {
        let limit = min(maxByteCount, byteCount - byteOffset)
        return try disk.extents(at: byteOffset, byteCount: limit, maxExtentCount: 1).first
            ?? SourceExtent(byteCount: limit, allocation: .data, depth: 1)
    }

    public func prefetch(at byteOffset: UInt64, byteCount prefetchByteCount: UInt64) {
        try? disk.prefetch(at: byteOffset, byteCount: prefetchByteCount)
    }
}
