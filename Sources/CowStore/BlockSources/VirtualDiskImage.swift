// A COW store's virtual disk seen as a read-only block source: the lower layer of a store
// over a store (a chain), and what `compress` and `merge --output` flatten. Reads go through
// VirtualDisk, which reads its own lower layer the same way; nothing is written.

import CowFormat
import SystemPackage

/// The disk a store presents (its base plus its changes), as a `BlockSource`.
public final class VirtualDiskImage: BlockSource {
    public let disk: VirtualDisk
    public var path: FilePath { disk.store.path }
    public var byteCount: UInt64 { disk.byteCount }
    public var kindName: String { "cow" }
    /// As slow as the slowest layer under the store.
    public var mayBeSlow: Bool { disk.base.mayBeSlow }
    /// Stores in the chain from this one down (this one included): 1 over a raw image.
    public let storeCount: Int
    /// Which layer holds each chunk, for the chain right under the served store (nil: each
    /// read asks the layers in turn; see LayerOwnerIndex.swift).
    let ownerIndex: LayerOwnerIndex?

    /// Wraps an open disk; open it read-only, so it cannot change while it is read.
    public init(disk: VirtualDisk) {
        self.disk = disk
        storeCount = 1 + ((disk.base as? VirtualDiskImage)?.storeCount ?? 0)
        ownerIndex = nil
    }

    /// Opens the store at `path` read-only (its exclusive lock: no server changes it meanwhile)
    /// and its base with `options`.
    public convenience init(storePath: FilePath, options: BaseOpenOptions) throws {
        self.init(
            disk: try VirtualDisk.open(storePath: storePath, readOnly: true, options: options))
    }

    /// Opens the store at `path` as the lower layer of the stores in `options.layersAbove`:
    /// under a shared lock (any number of uppers read it at once; a server that would write
    /// it, taking the exclusive lock, is refused meanwhile), after refusing a cycle and a chain
    /// deeper than `LayerChain.maxStoreCount`. The layer right under the store being opened
    /// (one layer above it) indexes its chain's owners; deeper layers are read through it.
    init(lowerStorePath path: FilePath, options: BaseOpenOptions) throws {
        let identity = try FileIdentity(of: path)
        if let above = options.layersAbove.last,
            options.layersAbove.contains(where: { $0.identity == identity })
        {
            throw ChainError.cycle(store: above.path, lower: path)
        }
        let storeCount = options.layersAbove.count + 1
        guard storeCount <= LayerChain.maxStoreCount else {
            throw ChainError.tooDeep(store: path, storeCount: storeCount)
        }
        self.disk = try VirtualDisk.open(storePath: path, access: .sharedRead, options: options)
        self.storeCount = 1 + ((disk.base as? VirtualDiskImage)?.storeCount ?? 0)
        ownerIndex = options.layersAbove.count == 1 ? LayerOwnerIndex(chainOf: disk) : nil
    }

    public func read(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        guard let ownerIndex else { return try disk.read(at: byteOffset, into: buffer) }
        try disk.checkRange(byteOffset, UInt64(buffer.count))
        try ownerIndex.read(at: byteOffset, into: buffer)
    }

    public func readIfReady(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer)
        -> Bool
    {
        guard let ownerIndex else {
            return (try? disk.readIfCached(at: byteOffset, into: buffer)) ?? false
        }
        guard (try? disk.checkRange(byteOffset, UInt64(buffer.count))) != nil else { return false }
        return ownerIndex.readIfCached(at: byteOffset, into: buffer)
    }

    /// The store's chunks at depth 1, its lower layers' at 2 and deeper, zeros that no layer
    /// holds at 0.
    public func extent(at byteOffset: UInt64, maxByteCount: UInt64) throws -> SourceExtent {
        let limit = min(maxByteCount, byteCount - byteOffset)
        return try disk.extents(at: byteOffset, byteCount: limit, maxExtentCount: 1).first
            ?? SourceExtent(byteCount: limit, allocation: .data, depth: 1)
    }

    public func prefetch(at byteOffset: UInt64, byteCount prefetchByteCount: UInt64) {
        try? disk.prefetch(at: byteOffset, byteCount: prefetchByteCount)
    }
}
