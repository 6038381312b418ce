// Copy-on-read and hydration (docs/FORMAT.md, "Hydration"): base chunks kept in the store as
// hydrated, never as written, so diffs and merges leave them out; changes to a hydrated chunk
// make it written, durably, before its bytes change; and a store that holds every base chunk
// opens without its base. Copying a whole store is StoreHydrate.swift's.

import CowFormat
import SystemPackage

extension VirtualDisk {
    /// Makes every later read keep the whole base chunks it reads in the store
    /// (`serve --copy-on-read`). Refused on a read-only disk. Kept chunks are not changes:
    /// checkpoints do not count them, so diffs since a checkpoint leave them out.
    public func enableCopyOnRead() throws {
        guard !isReadOnly else { throw StoreError.readOnly }
        try store.checkTakesChanges()
        copyOnRead.store(true, ordering: .relaxed)
    }

    /// Whether reads keep base chunks in the store (`serve --copy-on-read`).
    public var isCopyingOnRead: Bool { copyOnRead.load(ordering: .relaxed) }

    /// Whether the chunk at `virtualByteOffset` is written or hydrated, and where that run ends
    /// (at most `end`).
    func presentRun(from virtualByteOffset: UInt64, end: UInt64) -> (
        isPresent: Bool, end: UInt64
    ) {
        let firstChunk = geometry.chunkIndex(containing: virtualByteOffset)
        let lastChunk = geometry.chunkIndex(containing: end - 1)
        let run = store.presentRun(from: firstChunk, limit: lastChunk - firstChunk + 1)
        return (run.isPresent, min(end, geometry.byteOffset(ofChunk: firstChunk + run.chunkCount)))
    }

    /// After a read from the base: keeps the whole chunks of `bytes` in the store. A failure
    /// (a full filesystem, a failed store) costs only the copy: the read has its bytes.
    func keepBaseChunksRead(_ bytes: UnsafeRawBufferPointer, at virtualByteOffset: UInt64) {
        do {
            _ = try keepBaseChunks(bytes, at: virtualByteOffset)
        } catch {
            logger.debug(
                "copy-on-read: chunks not kept",
                metadata: ["byteOffset": "\(virtualByteOffset)", "error": "\(error)"])
        }
    }

    /// Keeps in the store, hydrated, each chunk lying wholly in `bytes` (the base's bytes at
    /// `virtualByteOffset`) that starts inside the base and is neither written nor hydrated.
    /// A chunk of zeros is kept as a hole. Returns the number of chunks kept.
    @discardableResult
    public func keepBaseChunks(_ bytes: UnsafeRawBufferPointer, at virtualByteOffset: UInt64)
        throws -> UInt64
    {
        let end = virtualByteOffset + UInt64(bytes.count)
        let firstChunk = geometry.chunkIndex(containing: virtualByteOffset + geometry.offsetMask)
        var endChunk = geometry.chunkIndex(containing: end)
        if end == byteCount { endChunk = geometry.chunkCount(covering: byteCount) }
        endChunk = min(endChunk, geometry.chunkCount(covering: store.header.baseByteCount))
        guard firstChunk < endChunk else { return 0 }
        try store.prepareHydration()
        return try copyUpLocks.withLocks(chunks: firstChunk...(endChunk - 1)) {
            var kept: UInt64 = 0
            var chunkIndex = firstChunk
            while chunkIndex < endChunk {
                let run = store.presentRun(from: chunkIndex, limit: endChunk - chunkIndex)
                if !run.isPresent {
                    try keepChunks(
                        chunkIndex..<(chunkIndex + run.chunkCount), from: bytes,
                        at: virtualByteOffset)
                    kept += run.chunkCount
                }
                chunkIndex += run.chunkCount
            }
            return kept
        }
    }

    /// Puts `chunks`' bytes from `bytes` into the data region, zero chunks as holes, then
    /// marks them hydrated. Called holding their copy-up locks.
    private func keepChunks(
        _ chunks: Range<UInt64>, from bytes: UnsafeRawBufferPointer, at virtualByteOffset: UInt64
    ) throws {
        var chunkIndex = chunks.lowerBound
        while chunkIndex < chunks.upperBound {
            let isZero = isZeroChunk(chunkIndex, bytes, virtualByteOffset)
            var runEnd = chunkIndex + 1
            while runEnd < chunks.upperBound,
                isZeroChunk(runEnd, bytes, virtualByteOffset) == isZero
            {
                runEnd += 1
            }
            let start = geometry.byteOffset(ofChunk: chunkIndex)
            let stop = chunkEnd(runEnd - 1)
            if isZero {
                try store.zeroBytes(at: start, byteCount: stop - start, mayPunch: true)
            } else {
                try store.writeBytes(
                    at: start,
                    from: UnsafeRawBufferPointer(
                        rebasing: bytes[
                            Int(start - virtualByteOffset)..<Int(stop - virtualByteOffset)]))
            }
            chunkIndex = runEnd
        }
        var committed = chunks.lowerBound
        while committed < chunks.upperBound {
            let batchEnd = min(chunks.upperBound, committed + StoreFile.maxChunkCountPerLock)
            store.commitHydrated(committed..<batchEnd)
            committed = batchEnd
        }
    }

    private func isZeroChunk(
        _ chunkIndex: UInt64, _ bytes: UnsafeRawBufferPointer, _ virtualByteOffset: UInt64
    ) -> Bool {
        let start = Int(geometry.byteOffset(ofChunk: chunkIndex) - virtualByteOffset)
        let stop = Int(chunkEnd(chunkIndex) - virtualByteOffset)
        return !bytes[start..<stop].contains { $0 != 0 }
    }

    /// `apply` on a store with hydrated chunks: every run takes its chunks' copy-up locks, so
    /// no write lands in a chunk while it turns from hydrated to written, whose bit must be on
    /// the disk before the chunk's bytes change. A trim leaves hydrated chunks alone, as it
    /// does chunks still in the base.
    func applyToHydratedStore(
        _ fill: Fill, from start: UInt64, to end: UInt64, isTrim: Bool, scratch: ChunkScratch?
    ) throws {
        let locked = chunks(from: start, to: end)
        try copyUpLocks.withLocks(chunks: locked.lowerBound...(locked.upperBound - 1)) {
            var cursor = start
            while cursor < end {
                let (isHeld, heldEnd) = run(from: cursor, end: end)
                if isHeld {
                    store.markChanged(chunks(from: cursor, to: heldEnd))
                    try fillStore(fill, from: cursor, to: heldEnd)
                    cursor = heldEnd
                    continue
                }
                let firstChunk = geometry.chunkIndex(containing: cursor)
                let lastChunk = geometry.chunkIndex(containing: heldEnd - 1)
                let hydrated = store.hydratedRun(
                    from: firstChunk, limit: lastChunk - firstChunk + 1)
                let runEnd = min(
                    heldEnd, geometry.byteOffset(ofChunk: firstChunk + hydrated.chunkCount))
                if !isTrim {
                    let run = chunks(from: cursor, to: runEnd)
                    store.markChanged(run)
                    if hydrated.isHydrated {
                        try store.promoteHydrated(run)
                        try fillStore(fill, from: cursor, to: runEnd)
                    } else {
                        try fillUnheldRun(fill, from: cursor, to: runEnd, scratch: scratch)
                    }
                }
                cursor = runEnd
            }
        }
    }

    /// The store's base: none when every base chunk is in the store (the base may be gone),
    /// else the base found and verified.
    static func openBase(of store: StoreFile, storePath: FilePath, options: BaseOpenOptions)
        throws -> any BlockSource
    {
        if store.hasHydration && store.isSelfContained {
            return AbsentBase(header: store.header)
        }
        let base = try BaseLocator.openBase(
            for: store.header, storePath: storePath, options: options)
        try BaseLocator.verify(base, against: store.header, storePath: storePath)
        return base
    }
}
