// The lower chain of a served store, replaceable by an equivalent chain (the same bytes: a
// live collapse's folded layer) while requests run. Which bytes are right is the caller's
// proof (size and fingerprint, VirtualDisk+LowerSwap.swift); this file is only the hand-over.

import CowFormat
import CowSupport
import SystemPackage

/// A `BlockSource` that forwards to the current lower chain. Each call takes a reference to
/// the chain current when it starts and finishes on it; a swapped-out chain stays open until
/// the last call using it returns, and its files (and their shared locks) are closed when that
/// reference goes. Costs one uncontended mutex and a reference count per call: only a store
/// whose base is another store is served through one.
public final class SwappableLower: BlockSource {
    /// The chain reads start on. `Locked` holds it only for the load or the swap, never
    /// across a read.
    private let current: Locked<any BlockSource>
    /// Fixed: a replacement must have the same size.
    public let byteCount: UInt64

    /// Serves `source` until the first `swap`.
    public init(_ source: any BlockSource) {
        current = Locked(source)
        byteCount = source.byteCount
    }

    /// The chain new calls start on.
    public var source: any BlockSource { current.withLock { $0 } }

    /// Makes `replacement` (the same size and bytes) the chain new calls start on and returns
    /// the old one, which calls already running finish on.
    @discardableResult
    public func swap(to replacement: any BlockSource) -> any BlockSource {
        precondition(replacement.byteCount == byteCount, "a lower chain swapped for another size")
        return current.withLock { chain in
            let old = chain
            chain = replacement
            return old
        }
    }

    public var path: FilePath { source.path }
    public var locationDescription: String { source.locationDescription }
    public var kindName: String { source.kindName }
    public var mayBeSlow: Bool { source.mayBeSlow }

    public func read(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try source.read(at: byteOffset, into: buffer)
    }

    public func readIfReady(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer)
        -> Bool
    {
        source.readIfReady(at: byteOffset, into: buffer)
    }

    public func extent(at byteOffset: UInt64, maxByteCount: UInt64) throws -> SourceExtent {
        try source.extent(at: byteOffset, maxByteCount: maxByteCount)
    }

    public func fingerprint() throws -> BaseFingerprint { try source.fingerprint() }

    public func prefetch(at byteOffset: UInt64, byteCount prefetchByteCount: UInt64) {
        source.prefetch(at: byteOffset, byteCount: prefetchByteCount)
    }
}
