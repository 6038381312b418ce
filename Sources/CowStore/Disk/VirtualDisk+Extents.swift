// Allocation of the virtual disk by range, for NBD_CMD_BLOCK_STATUS: which bytes are holes
// reading as zeros, and which layer (store, base, neither) they come from.

import CowFormat
import SystemPackage

extension VirtualDisk {
    /// Consecutive extents from `virtualByteOffset`, covering at most `byteCount` bytes and at
    /// most `maxExtentCount` extents (at least one). Adjacent extents with equal status merge.
    /// Depth counts as `qemu:allocation-depth` does: 1 for the store, 2 for the base, 0 where
    /// neither holds the bytes.
    public func extents(
        at virtualByteOffset: UInt64, byteCount requested: UInt64, maxExtentCount: Int
    ) throws -> [SourceExtent] {
        try checkRange(virtualByteOffset, requested)
        precondition(maxExtentCount > 0)
        var extents: [SourceExtent] = []
        var cursor = virtualByteOffset
        let end = virtualByteOffset + requested
        while cursor < end {
            let (isWritten, runEnd) = presentRun(from: cursor, end: end)
            let next =
                isWritten
                ? try storeExtent(at: cursor, end: runEnd) : try baseExtent(at: cursor, end: runEnd)
            if let last = extents.last, last.allocation == next.allocation, last.depth == next.depth
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

    private func storeExtent(at virtualByteOffset: UInt64, end: UInt64) throws -> SourceExtent {
        do {
            let run = try store.dataRun(from: virtualByteOffset, end: end)
            return SourceExtent(
                byteCount: run.end - virtualByteOffset, allocation: run.isHole ? .hole : .data,
                depth: 1)
        } catch {
            // Reporting data is never wrong: the bytes are read from the store either way.
            return SourceExtent(byteCount: end - virtualByteOffset, allocation: .data, depth: 1)
        }
    }

    private func baseExtent(at virtualByteOffset: UInt64, end: UInt64) throws -> SourceExtent {
        guard virtualByteOffset < base.byteCount else {
            return SourceExtent(byteCount: end - virtualByteOffset, isHole: true)
        }
        let extent = try base.extent(
            at: virtualByteOffset, maxByteCount: min(end, base.byteCount) - virtualByteOffset)
        // A lower layer's depth d is d + 1 here; a raw base's hole is no layer's (depth 0).
        return SourceExtent(
            byteCount: extent.byteCount, allocation: extent.isHole ? .hole : .data,
            depth: extent.depth == 0 ? 0 : extent.depth + 1)
    }
}
