// Writes, zeroes and trims, through the store's prepare and commit (StoreFile+Chunks.swift).
// The first change to a chunk writes (or punches) the whole chunk, copying up from the base
// what the request does not cover, before the store commits it; the bit reaches the disk only
// at the next flush (docs/FORMAT.md, "Crash safety").

import CowFormat
import SystemPackage

extension VirtualDisk {
    /// What a write-like request puts into the bytes it covers.
    enum Fill {
        /// Bytes for the whole request, indexed from the request's first byte.
        case data(UnsafeRawBufferPointer, requestByteOffset: UInt64)
        /// Zeros; `mayPunch` allows leaving a hole (trim, or write-zeroes without NO_HOLE).
        case zeros(mayPunch: Bool)
    }

    /// Writes `data` at `virtualByteOffset` (NBD_CMD_WRITE); with `fua`, durable on return.
    public func write(
        at virtualByteOffset: UInt64, from data: UnsafeRawBufferPointer, fua: Bool = false,
        scratch: ChunkScratch
    ) throws {
        try checkWritable(virtualByteOffset, UInt64(data.count))
        try apply(
            .data(data, requestByteOffset: virtualByteOffset), from: virtualByteOffset,
            to: virtualByteOffset + UInt64(data.count), isTrim: false, scratch: scratch)
        if fua { try flush() }
    }

    /// Makes the range read as zeros (NBD_CMD_WRITE_ZEROES). `mayPunch` false is NO_HOLE.
    /// With `fast`, fails with `StoreError.notFast` before changing anything if a chunk would
    /// need a copy-up, which costs as much as a write.
    public func writeZeroes(
        at virtualByteOffset: UInt64, byteCount: UInt64, mayPunch: Bool = true, fast: Bool = false,
        fua: Bool = false, scratch: ChunkScratch
    ) throws {
        try checkWritable(virtualByteOffset, byteCount)
        guard byteCount > 0 else { return }
        let end = virtualByteOffset + byteCount
        if fast && needsCopyUp(from: virtualByteOffset, to: end) { throw StoreError.notFast }
        try apply(
            .zeros(mayPunch: mayPunch), from: virtualByteOffset, to: end, isTrim: false,
            scratch: scratch)
        if fua { try flush() }
    }

    /// Discards the range (NBD_CMD_TRIM): what the store holds in it becomes holes that read as
    /// zeros; chunks still read from the base are left alone and nothing is recorded for them,
    /// as the protocol allows.
    public func trim(at virtualByteOffset: UInt64, byteCount: UInt64, fua: Bool = false) throws {
        try checkWritable(virtualByteOffset, byteCount)
        guard byteCount > 0 else { return }
        try apply(
            .zeros(mayPunch: true), from: virtualByteOffset, to: virtualByteOffset + byteCount,
            isTrim: true, scratch: nil)
        if fua { try flush() }
    }

    func checkWritable(_ virtualByteOffset: UInt64, _ count: UInt64) throws {
        try checkRange(virtualByteOffset, count)
        guard !isReadOnly else { throw StoreError.readOnly }
        try store.checkTakesChanges()
    }

    /// Whether the first or last chunk of the range is partly covered and still in the base.
    func needsCopyUp(from start: UInt64, to end: UInt64) -> Bool {
        func partlyCovered(_ chunkIndex: UInt64) -> Bool {
            let chunkStart = geometry.byteOffset(ofChunk: chunkIndex)
            let chunkEnd = min(chunkStart + geometry.chunkByteCount, byteCount)
            return (start > chunkStart || end < chunkEnd) && !store.isWritten(chunkIndex)
        }
        return partlyCovered(geometry.chunkIndex(containing: start))
            || partlyCovered(geometry.chunkIndex(containing: end - 1))
    }

    /// The chunks that hold virtual bytes `start..<end`.
    func chunks(from start: UInt64, to end: UInt64) -> Range<UInt64> {
        geometry.chunkIndex(containing: start)..<(geometry.chunkIndex(containing: end - 1) + 1)
    }

    /// Puts `fill` into `start..<end`, run by run of held and unheld chunks. A run is at most
    /// `StoreFile.maxChunkCountPerLock` chunks, so a huge request takes the bitmap lock many
    /// times briefly rather than once for long. A trim (`isTrim`) leaves unheld chunks alone:
    /// they go on reading from the base, as the protocol allows, and nothing is recorded.
    func apply(
        _ fill: Fill, from start: UInt64, to end: UInt64, isTrim: Bool, scratch: ChunkScratch?
    ) throws {
        // The whole request under one hold: a checkpoint sees all of it or none of it. A disk
        // frozen by a live snapshot meanwhile hands the request to the disk over the new top.
        let next = try writeBarrier.whileChanging { () throws -> VirtualDisk? in
            if isRetired.load(ordering: .acquiring) {
                guard let successor = self.successor else { throw StoreError.readOnly }
                return successor
            }
            // A live export still to read these chunks gets their bytes first.
            if let freeze = exportFreeze {
                try freeze.preserve(chunks(from: start, to: end), of: self)
            }
            try applyRuns(fill, from: start, to: end, isTrim: isTrim, scratch: scratch)
            return nil
        }
        try next?.apply(fill, from: start, to: end, isTrim: isTrim, scratch: scratch)
    }

    private func applyRuns(
        _ fill: Fill, from start: UInt64, to end: UInt64, isTrim: Bool, scratch: ChunkScratch?
    ) throws {
        let maxRunByteCount = geometry.byteOffset(ofChunk: StoreFile.maxChunkCountPerLock)
        var cursor = start
        while cursor < end {
            let batchEnd = min(end, (cursor & ~geometry.offsetMask) + maxRunByteCount)
            let (isHeld, runEnd) = run(from: cursor, end: batchEnd)
            if store.hasHydration {
                // Hydrated chunks turn written under their locks (VirtualDisk+CopyOnRead.swift).
                try applyToHydratedStore(
                    fill, from: cursor, to: runEnd, isTrim: isTrim, scratch: scratch)
            } else if isHeld {
                store.markChanged(chunks(from: cursor, to: runEnd))
                try fillStore(fill, from: cursor, to: runEnd)
            } else if !isTrim {
                let run = chunks(from: cursor, to: runEnd)
                try copyUpLocks.withLocks(chunks: run.lowerBound...(run.upperBound - 1)) {
                    try fillUnheld(fill, from: cursor, to: runEnd, scratch: scratch)
                }
            }
            cursor = runEnd
        }
    }

    /// Called holding the copy-up locks of every chunk in the range. A chunk's bit goes from
    /// clear to set only under its lock, so the states seen here stay true until we set them.
    private func fillUnheld(
        _ fill: Fill, from start: UInt64, to end: UInt64, scratch: ChunkScratch?
    ) throws {
        var cursor = start
        while cursor < end {
            let (isHeld, runEnd) = run(from: cursor, end: end)
            store.markChanged(chunks(from: cursor, to: runEnd))
            if isHeld {
                // Another request took these chunks while we waited for the locks.
                try fillStore(fill, from: cursor, to: runEnd)
            } else {
                try fillUnheldRun(fill, from: cursor, to: runEnd, scratch: scratch)
            }
            cursor = runEnd
        }
    }

    /// Fills a run of unheld chunks and commits them: a partly covered first or last chunk is
    /// copied up from the base; the whole chunks between are written (or punched) in one call,
    /// replacing anything an unflushed write left in their data region before a crash.
    func fillUnheldRun(
        _ fill: Fill, from start: UInt64, to end: UInt64, scratch: ChunkScratch?
    ) throws {
        let run = chunks(from: start, to: end)
        var whole = run
        let firstStart = geometry.byteOffset(ofChunk: run.lowerBound)
        if start > firstStart || end < chunkEnd(run.lowerBound) {
            try copyUp(run.lowerBound, fill: fill, from: start, to: end, scratch: scratch)
            whole = whole.dropFirst()
        }
        if let last = whole.last, end < chunkEnd(last) {
            try copyUp(last, fill: fill, from: start, to: end, scratch: scratch)
            whole = whole.dropLast()
        }
        guard !whole.isEmpty else { return }
        try fillStore(
            fill, from: geometry.byteOffset(ofChunk: whole.lowerBound),
            to: chunkEnd(whole.upperBound - 1), intoUnheldChunks: true)
        store.commit(whole)
    }

    /// Where chunk `chunkIndex` ends on the disk (the last chunk may be short).
    func chunkEnd(_ chunkIndex: UInt64) -> UInt64 {
        min(geometry.byteOffset(ofChunk: chunkIndex + 1), byteCount)
    }

    /// Builds chunk `chunkIndex` in `scratch` from the base plus the part of the request
    /// (`start..<end`) it covers, writes it whole, and commits it.
    private func copyUp(
        _ chunkIndex: UInt64, fill: Fill, from start: UInt64, to end: UInt64,
        scratch: ChunkScratch?
    ) throws {
        guard let scratch else { preconditionFailure("copy-up needs a scratch buffer") }
        let chunkStart = geometry.byteOffset(ofChunk: chunkIndex)
        let chunkEnd = chunkEnd(chunkIndex)
        let coveredStart = max(chunkStart, start)
        let coveredEnd = min(chunkEnd, end)
        let chunk = UnsafeMutableRawBufferPointer(
            rebasing: scratch.buffer[..<Int(chunkEnd - chunkStart)])
        try readBase(at: chunkStart, into: chunk)
        let covered = UnsafeMutableRawBufferPointer(
            rebasing: chunk[Int(coveredStart - chunkStart)..<Int(coveredEnd - chunkStart)])
        switch fill {
        case .data(let data, let requestByteOffset):
            let source = UnsafeRawBufferPointer(
                rebasing: data[
                    Int(coveredStart - requestByteOffset)..<Int(coveredEnd - requestByteOffset)])
            covered.copyMemory(from: source)
        case .zeros:
            covered.initializeMemory(as: UInt8.self, repeating: 0)
        }
        try store.writeBytes(
            at: chunkStart, from: UnsafeRawBufferPointer(chunk), intoUnheldChunks: true)
        store.commit(chunkIndex..<(chunkIndex + 1))
        copyUps.add(1, ordering: .relaxed)
    }

    /// Puts `fill` into the store's data region for virtual bytes `start..<end`;
    /// `intoUnheldChunks` when they are whole chunks the store does not hold yet.
    func fillStore(
        _ fill: Fill, from start: UInt64, to end: UInt64, intoUnheldChunks: Bool = false
    ) throws {
        switch fill {
        case .data(let data, let requestByteOffset):
            try store.writeBytes(
                at: start,
                from: UnsafeRawBufferPointer(
                    rebasing: data[Int(start - requestByteOffset)..<Int(end - requestByteOffset)]),
                intoUnheldChunks: intoUnheldChunks)
        case .zeros(let mayPunch):
            try store.zeroBytes(at: start, byteCount: end - start, mayPunch: mayPunch)
        }
    }
}
