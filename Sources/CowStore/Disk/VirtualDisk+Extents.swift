// Allocation of the virtual disk by range, for NBD_CMD_BLOCK_STATUS: which bytes are holes
// reading as zeros, and which layer (store, base, neither) they come from.

import CowFormat
import SystemPackage

/// One stretch of the virtual disk with the same status.
public struct DiskExtent: Equatable, Sendable {
    /// Where a range's bytes come from: qemu's allocation depth 1, 2 and 0.
    public enum Source: UInt32, Sendable {
        case none = 0
        case store = 1
        case base = 2
    }

    public var byteCount: UInt64
    /// Not backed by allocated storage (NBD_STATE_HOLE).
    public var isHole: Bool
    /// Reads as zeros (NBD_STATE_ZERO).
    public var isZero: Bool
    public var source: Source

    public init(byteCount: UInt64, isHole: Bool, isZero: Bool, source: Source) {
        self.byteCount = byteCount
        self.isHole = isHole
        self.isZero = isZero
        self.source = source
    }
}

extension VirtualDisk {
    /// Consecutive extents from `virtualByteOffset`, covering at most `byteCount` bytes and at
    /// most `maxExtentCount` extents (at least one). Adjacent extents with equal status merge.
    public func extents(
        at virtualByteOffset: UInt64, byteCount requested: UInt64, maxExtentCount: Int
    ) throws
        -> [DiskExtent]
    {
        try checkRange(virtualByteOffset, requested)
        precondition(maxExtentCount > 0)
        var extents: [DiskExtent] = []
        var cursor = virtualByteOffset
        let end = virtualByteOffset + requested
        while cursor < end {
            let (isWritten, runEnd) = presentRun(from: cursor, end: end)
            let next =
                isWritten
                ? try storeExtent(at: cursor, end: runEnd) : try baseExtent(at: cursor, end: runEnd)
            if let last = extents.last, last.isHole == next.isHole, last.isZero == next.isZero,
                last.source == next.source
            {
                extents[extents.count - 1].byteCount += next.byteCount
            } else {
                if extents.count == maxExtentCount { break }
                extents.append(next)
            }
            cursor += next.byteCount
        }
        return extents
    }

    private func storeExtent(at virtualByteOffset: UInt64, end: UInt64) throws -> DiskExtent {
        do {
            let run = try store.dataRun(from: virtualByteOffset, end: end)
            return DiskExtent(
                byteCount: run.end - virtualByteOffset, isHole: run.isHole, isZero: run.isHole,
                source: .store)
        } catch {
            // Reporting data is never wrong: the bytes are read from the store either way.
            return DiskExtent(
                byteCount: end - virtualByteOffset, isHole: false, isZero: false, source: .store)
        }
    }

    private func baseExtent(at virtualByteOffset: UInt64, end: UInt64) throws -> DiskExtent {
        guard virtualByteOffset < base.byteCount else {
            return DiskExtent(
                byteCount: end - virtualByteOffset, isHole: true, isZero: true, source: .none)
        }
        let extent = try base.extent(
            at: virtualByteOffset, maxByteCount: min(end, base.byteCount) - virtualByteOffset)
        return DiskExtent(
            byteCount: extent.byteCount, isHole: extent.isHole, isZero: extent.isHole,
            source: extent.isHole ? .none : .base)
    }
}
