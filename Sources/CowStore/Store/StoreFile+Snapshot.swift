// What a snapshot does to the store file it freezes (docs/FORMAT.md, "Snapshot"): everything
// flushed, the checkpoint table closed (its bitmaps exact), the frozen bit set; and the bytes of
// the empty store that goes over it, which carries the same checkpoints with their bitmaps so
// far. The order of the steps is StoreSnapshot's.

import CowFormat
import SystemPackage

extension StoreFile {
    /// Makes every acknowledged change durable, closes the checkpoint table (clears its open
    /// flag: the bitmaps on disk are now exact) and sets the frozen bit. No change may run
    /// meanwhile (the disk's write barrier, or the store opened by `snapshot` alone).
    func freezeForSnapshot() throws {
        try flush()
        try flushLock.withLock { _ in
            guard var table = checkpoints.withLock({ $0.table }), table.isOpen else { return }
            table.isOpen = false
            try writeCheckpointTable(&table)
            checkpoints.withLock { $0.table = table }
        }
        guard !header.isFrozen else { return }
        var frozen = header
        frozen.setFrozen(true)
        try writeHeader(frozen)
    }

    /// Takes a freeze back (a live snapshot whose new top could not be put in place): clears
    /// the frozen bit and sets the checkpoint table's open flag again, so the store goes on
    /// taking writes as before.
    func thawAfterFailedSnapshot(wasFrozen: Bool) throws {
        if !wasFrozen { try writeHeader(header) }
        try openCheckpointsForWriting()
    }

    /// Turns this descriptor's exclusive lock into a shared one, so the frozen file can be
    /// read by others as a lower layer (export-diff, another upper) while this process reads
    /// it too. The corresponding C function is `flock(LOCK_SH)`.
    func shareLock() {
        guard let file = io as? FileStoreIO else { return }
        _ = try? file.descriptor.tryLock(exclusive: false)
    }

    /// The identity of the open file (not of whatever its path names now), nil if unknown.
    /// (`stat` of /proc/self/fd/N, which is `fstat`.)
    var identity: FileIdentity? {
        guard let file = io as? FileStoreIO else { return nil }
        return try? FileIdentity(of: FilePath("/proc/self/fd/\(file.descriptor.rawValue)"))
    }

    /// The checkpoints and their bitmaps as of now, for the store that goes over this one.
    func checkpointsForUpperStore() -> (table: CheckpointTable, bitmaps: [Int: ChunkBitmap])? {
        checkpoints.withLock { state in
            guard var table = state.table, !table.checkpoints.isEmpty else { return nil }
            table.isOpen = false
            table.generation = 0
            var copies: [Int: ChunkBitmap] = [:]
            for (slot, bitmap) in state.bitmaps {
                let copy = ChunkBitmap(chunkCount: bitmap.chunkCount)
                copy.formUnion(bitmap.allocatedPages())
                copies[slot] = copy
            }
            return (table, copies)
        }
    }

    /// Writes an empty store with `header` into `descriptor` (a new file), with the checkpoint
    /// area of `checkpoints` when there are any: table (closed, generation 1) and bitmaps.
    static func writeEmptyStore(
        _ header: StoreHeader,
        checkpoints: (table: CheckpointTable, bitmaps: [Int: ChunkBitmap])?,
        into descriptor: FileDescriptor
    ) throws {
        var header = header
        header.setHasCheckpoints(checkpoints != nil)
        try descriptor.setByteCount(
            checkpoints == nil
                ? header.dataByteOffset + header.virtualByteCount : header.expectedFileByteCount)
        if let (model, bitmaps) = checkpoints {
            var table = model
            table.generation = 1
            let tableByteOffset =
                header.checkpointAreaByteOffset
                + UInt64(CheckpointTable.copyIndex(forGeneration: table.generation))
                * UInt64(CheckpointTable.byteCount)
            try table.encoded().withUnsafeBytes {
                try descriptor.writeFully(at: tableByteOffset, from: $0)
            }
            let page = UnsafeMutableRawBufferPointer.allocate(
                byteCount: ChunkBitmap.pageByteCount, alignment: 8)
            defer { page.deallocate() }
            for (slot, bitmap) in bitmaps {
                for (pageIndex, _) in bitmap.allocatedPages() {
                    bitmap.copyPage(pageIndex, into: page)
                    try descriptor.writeFully(
                        at: header.checkpointBitmapByteOffset(slot: slot) + UInt64(pageIndex)
                            * UInt64(ChunkBitmap.pageByteCount),
                        from: UnsafeRawBufferPointer(page))
                }
            }
        }
        try header.encoded().withUnsafeBytes { try descriptor.writeFully(at: 0, from: $0) }
    }
}
