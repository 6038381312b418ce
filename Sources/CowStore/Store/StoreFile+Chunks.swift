// The store's chunk interface, after dm-exception-store's prepare and commit: a writer puts a
// chunk's bytes into the data region (prepare), then commits the chunk (sets its bit); `flush`
// makes the data durable before the bits (docs/FORMAT.md, "Crash safety"). Nothing outside the
// store touches its bitmap, its file or its data region's offset. Offsets here are virtual byte
// offsets; `storeByteOffset(_:)` is the one place that turns one into an offset in the file.

import CowFormat
import SystemPackage

extension StoreFile {
    /// Most chunks committed or marked under one lock acquisition; callers split larger
    /// requests into runs this long, so a huge request never holds other connections' reads
    /// off for long (2^20 chunks are 16384 bitmap words).
    public static let maxChunkCountPerLock: UInt64 = 1 << 20

    /// Smallest write into unheld chunks that is allocated before it is written: below it the
    /// extra call costs about what it saves.
    static let minAllocateAheadByteCount = 64 << 10

    /// The file offset of virtual byte `virtualByteOffset`: the data region is identity-mapped.
    private func storeByteOffset(_ virtualByteOffset: UInt64) -> UInt64 {
        header.dataByteOffset + virtualByteOffset
    }

    // MARK: Runs of held chunks

    /// Whether chunk `chunkIndex` is held, and how many chunks from it (at most `limit`) share
    /// that state. One lock acquisition.
    public func heldRun(from chunkIndex: UInt64, limit: UInt64) -> (
        isHeld: Bool, chunkCount: UInt64
    ) {
        let run = bitmap.withLock { $0.run(from: chunkIndex, limit: limit) }
        return (run.isSet, run.chunkCount)
    }

    /// Calls `body` with each run of held chunks, in ascending order.
    public func forEachHeldRun(_ body: (Range<UInt64>) throws -> Void) rethrows {
        let chunkCount = header.chunkCount
        var chunkIndex: UInt64 = 0
        while chunkIndex < chunkCount {
            let run = heldRun(from: chunkIndex, limit: chunkCount - chunkIndex)
            if run.isHeld { try body(chunkIndex..<(chunkIndex + run.chunkCount)) }
            chunkIndex += run.chunkCount
        }
    }

    // MARK: Prepare

    /// Throws unless the store takes changes: it is writable and no fsync of it has failed.
    public func checkTakesChanges() throws {
        guard isWritable else { throw StoreError.readOnly }
        guard !isFailed else { throw StoreError.failed(path: path) }
    }

    /// Writes `data` into the data region at `virtualByteOffset`. Its chunks read it only once
    /// committed. `intoUnheldChunks`: the range is whole chunks not held yet, usually holes in
    /// the file; a large one is allocated first (`StoreIO.allocateAhead`), which costs the
    /// file system less than filling holes page by page. The corresponding C function is
    /// `pwrite`.
    func writeBytes(
        at virtualByteOffset: UInt64, from data: UnsafeRawBufferPointer,
        intoUnheldChunks: Bool = false
    ) throws {
        try checkTakesChanges()
        let byteOffset = storeByteOffset(virtualByteOffset)
        if intoUnheldChunks && data.count >= Self.minAllocateAheadByteCount {
            io.allocateAhead(at: byteOffset, byteCount: UInt64(data.count))
        }
        try io("write", at: byteOffset) { () throws(Errno) in
            try io.write(at: byteOffset, from: data)
        }
    }

    /// Makes `byteCount` bytes of the data region at `virtualByteOffset` read as zeros: a hole
    /// if `mayPunch`, else allocated zeros (NO_HOLE).
    /// The corresponding C function is `fallocate` (PUNCH_HOLE or ZERO_RANGE).
    func zeroBytes(at virtualByteOffset: UInt64, byteCount: UInt64, mayPunch: Bool) throws {
        try checkTakesChanges()
        let byteOffset = storeByteOffset(virtualByteOffset)
        try io(mayPunch ? "punch hole" : "zero range", at: byteOffset) { () throws(Errno) in
            if mayPunch {
                try io.punchHole(at: byteOffset, byteCount: byteCount)
            } else {
                try io.zeroRange(at: byteOffset, byteCount: byteCount)
            }
        }
    }

    // MARK: Commit

    /// Marks `chunks` held, a word at a time: called only after every byte of them is in the
    /// data region. The bits reach the disk at the next flush, after that data.
    func commit(_ chunks: Range<UInt64>) {
        precondition(
            UInt64(chunks.count) <= Self.maxChunkCountPerLock, "commit longer than one batch")
        bitmap.withLock { _ = $0.set(chunks) }
    }

    // MARK: Read held bytes

    /// Reads held bytes at `virtualByteOffset`, all of `buffer`. The corresponding C function
    /// is `pread`.
    func readBytes(at virtualByteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer)
        throws
    {
        let byteOffset = storeByteOffset(virtualByteOffset)
        var done = 0
        try io("read", at: byteOffset) { () throws(Errno) in
            done = try io.read(at: byteOffset, into: buffer)
        }
        guard done == buffer.count else {
            throw StoreError.shortRead(
                path: path, byteOffset: byteOffset, expectedByteCount: buffer.count,
                actualByteCount: done)
        }
    }

    /// Reads held bytes like `readBytes`, but only if none needs a device wait; false
    /// otherwise. The corresponding C function is `preadv2(RWF_NOWAIT)`.
    func readBytesIfCached(
        at virtualByteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer
    ) -> Bool {
        io.readIfCached(at: storeByteOffset(virtualByteOffset), into: buffer)
    }

    /// Tells the kernel the data region's range will be read soon.
    func adviseWillNeed(at virtualByteOffset: UInt64, byteCount: UInt64) {
        io.adviseWillNeed(at: storeByteOffset(virtualByteOffset), byteCount: byteCount)
    }

    // MARK: Data and holes

    /// Whether the data region at `virtualByteOffset` is a hole (reads as zeros, takes no
    /// space) or data, and where that stretch ends (at most `end`). Any error but "no data
    /// follows" is thrown: a hole taken for data costs space, data taken for a hole loses it.
    /// The corresponding C function is `lseek(SEEK_DATA, SEEK_HOLE)`.
    func dataRun(from virtualByteOffset: UInt64, end: UInt64) throws -> (
        isHole: Bool, end: UInt64
    ) {
        let byteOffset = storeByteOffset(virtualByteOffset)
        let limit = end - virtualByteOffset
        var result: (isHole: Bool, byteCount: UInt64) = (true, limit)
        try io("lseek", at: byteOffset) { () throws(Errno) in
            guard let dataStart = try io.nextData(from: byteOffset) else { return }
            if dataStart > byteOffset {
                result = (true, min(limit, dataStart - byteOffset))
                return
            }
            let holeStart = try io.nextHole(from: byteOffset)
            result = (false, min(limit, max(holeStart, byteOffset + 1) - byteOffset))
        }
        return (result.isHole, virtualByteOffset + result.byteCount)
    }

    // MARK: Forgetting every chunk

    /// Forgets every chunk, as a finished merge does: the bitmap region first (made durable),
    /// then the data. A crash after the bitmap leaves leaked data, which a rerun punches with
    /// `wholeDataRegion` (the bitmap that said where it is is gone); the other order would let
    /// a rerun copy punched chunks into the target as zeros. Without `wholeDataRegion` only the
    /// held runs are punched: punching a large disk's whole range costs seconds on some
    /// filesystems.
    /// Hydrated chunks go too (their bitmap with the chunk bitmap), and then the whole data
    /// region is punched.
    func discardAllChunks(wholeDataRegion: Bool) throws {
        try checkTakesChanges()
        try flushLock.withLock { _ in
            try io("punch hole", at: header.bitmapByteOffset) { () throws(Errno) in
                try io.punchHole(at: header.bitmapByteOffset, byteCount: header.bitmapByteCount)
            }
            let hadHydration = hasHydration
            try discardHydration()
            try synchronize(.all, "fsync (bitmap)")
            if wholeDataRegion || hadHydration {
                try zeroBytes(at: 0, byteCount: header.virtualByteCount, mayPunch: true)
            } else {
                let geometry = header.geometry
                try forEachHeldRun { chunks in
                    let start = geometry.byteOffset(ofChunk: chunks.lowerBound)
                    let end = min(
                        geometry.byteOffset(ofChunk: chunks.upperBound), header.virtualByteCount)
                    try zeroBytes(at: start, byteCount: end - start, mayPunch: true)
                }
            }
            try synchronize(.all, "fsync (data)")
            bitmap.withLock { bitmap in
                bitmap.clearAll()
                // Zeros on disk already.
                _ = bitmap.takeDirtyPages()
            }
        }
    }
}
