// Hydrated chunks (docs/FORMAT.md, "Hydration"): base chunks the store keeps a copy of, marked
// in a bitmap of their own so that diffs and merges, which follow the chunk bitmap, never see
// them. Written and hydrated are disjoint: a chunk's first write moves it from one to the other.
// What a hydrated chunk holds, and when, is VirtualDisk+CopyOnRead.swift's business.

import CowFormat
import SystemPackage

extension StoreFile {
    /// Chunks the store holds a copy of the base's bytes for (hydrated and not written since).
    public var hydratedChunkCount: UInt64 { hydration.withLock { $0?.setCount ?? 0 } }

    /// Whether the store has a hydration bitmap (it hydrated at least one chunk once).
    public var hasHydration: Bool { hasHydrationBitmap.load(ordering: .acquiring) }

    /// Whether every chunk that covers a byte of the base is written or hydrated: the disk then
    /// reads nothing from its base, which may be gone.
    public var isSelfContained: Bool {
        let baseChunkCount = header.geometry.chunkCount(covering: header.baseByteCount)
        var chunkIndex: UInt64 = 0
        while chunkIndex < baseChunkCount {
            let run = presentRun(from: chunkIndex, limit: baseChunkCount - chunkIndex)
            guard run.isPresent else { return false }
            chunkIndex += run.chunkCount
        }
        return true
    }

    /// Whether chunk `chunkIndex` is written or hydrated (its bytes are in the data region),
    /// and how many chunks from it (at most `limit`) share that; runs may end early.
    public func presentRun(from chunkIndex: UInt64, limit: UInt64) -> (
        isPresent: Bool, chunkCount: UInt64
    ) {
        let written = heldRun(from: chunkIndex, limit: limit)
        if written.isHeld { return (true, written.chunkCount) }
        // Without a hydration bitmap nothing is hydrated: one lock a lookup, not two. A bitmap
        // made meanwhile holds only chunks hydrated after this began, which still hold the
        // base's bytes, so the answer "not present" (read the base) stays right for this read.
        guard hasHydration else { return (false, written.chunkCount) }
        let hydrated = hydratedRun(from: chunkIndex, limit: written.chunkCount)
        return (hydrated.isHydrated, hydrated.chunkCount)
    }

    /// Whether chunk `chunkIndex` is hydrated, and how many chunks from it (at most `limit`)
    /// share that.
    public func hydratedRun(from chunkIndex: UInt64, limit: UInt64) -> (
        isHydrated: Bool, chunkCount: UInt64
    ) {
        hydration.withLock { hydrated in
            guard let hydrated else { return (false, limit) }
            let run = hydrated.run(from: chunkIndex, limit: limit)
            return (run.isSet, run.chunkCount)
        }
    }

    // MARK: Hydrating

    /// Makes the hydration bitmap, once: the file grows by the bitmap (a hole, all clear), that
    /// is made durable, and only then does the header get the feature bit. A crash in between
    /// leaves unused bytes past the end. The bitmap sits past where a checkpoint area ends,
    /// so checkpoints made before or after keep their place (docs/FORMAT.md, "Hydration").
    /// Called, like every change to the checkpoint area, under the flush lock.
    func prepareHydration() throws {
        guard !hasHydration else { return }
        try checkTakesChanges()
        try flushLock.withLock { _ in
            guard !hasHydration else { return }
            var withBitmap = currentHeader
            withBitmap.setHasHydration(true)
            // The header as it is now: checkpoints may have come since the store opened.
            withBitmap.setHasCheckpoints(checkpoints.withLock { $0.table != nil })
            let end = withBitmap.expectedFileByteCount
            try io("ftruncate", at: end) { () throws(Errno) in try io.setByteCount(end) }
            try synchronize(.all, "fsync (ftruncate)")
            try writeHeaderBytes(withBitmap)
            hydration.withLock { $0 = ChunkBitmap(chunkCount: header.chunkCount) }
            hasHydrationBitmap.store(true, ordering: .releasing)
        }
    }

    /// Marks `chunks` hydrated: called only after every byte of them (the base's) is in the
    /// data region, holding their copy-up locks, for chunks neither written nor hydrated. The
    /// bits reach the disk at the next flush, after that data, as written bits do.
    func commitHydrated(_ chunks: Range<UInt64>) {
        precondition(
            UInt64(chunks.count) <= Self.maxChunkCountPerLock, "commit longer than one batch")
        hydration.withLock { hydrated in
            guard let hydrated else { preconditionFailure("hydrated before prepareHydration") }
            hydrated.set(chunks)
        }
    }

    /// Turns hydrated `chunks` into written ones before a change to them, durably: a change
    /// goes in place, over the copy of the base, so the written bit must be on the disk first,
    /// or a crash could leave new bytes in a chunk that diffs and merges take for the base's.
    /// Called holding the chunks' copy-up locks, so nobody writes them meanwhile.
    func promoteHydrated(_ chunks: Range<UInt64>) throws {
        try checkTakesChanges()
        bitmap.withLock { _ = $0.set(chunks) }
        hydration.withLock { _ = $0?.clear(chunks) }
        try flush()
    }

    /// Forgets every hydrated chunk (a merge rebinding the store to another image): the bitmap
    /// is punched, then the caller punches the data. Called under the flush lock.
    func discardHydration() throws {
        guard hasHydration else { return }
        let byteOffset = header.hydrationBitmapByteOffset
        try io("punch hole", at: byteOffset) { () throws(Errno) in
            try io.punchHole(at: byteOffset, byteCount: header.bitmapByteCount)
        }
        hydration.withLock { hydrated in
            hydrated?.clearAll()
            _ = hydrated?.takeDirtyPages()
        }
    }

    /// Reads the hydration bitmap of a store that has one. A chunk both written and hydrated
    /// (a crash between the two bitmap pages of a first write) counts as written.
    static func readHydration(_ io: any StoreIO, header: StoreHeader, path: FilePath)
        throws -> ChunkBitmap?
    {
        guard header.hasHydration else { return nil }
        return try readBitmap(
            io, header: header, regionByteOffset: header.hydrationBitmapByteOffset, path: path)
    }
}
