// Reading a compressed image: block by block through the shared cache of decompressed blocks.
// A block is checksummed before it is decompressed, and a damaged one fails only the reads
// that touch it, with an error naming the block and its file offset. Never wrong bytes.

import CowFormat
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

extension CompressedBaseImage {
    /// Largest block `readIfReady` decompresses on the caller's thread: LZ4 takes a few
    /// microseconds for 16 KiB, about 15 for 64 KiB; larger blocks go to a pool thread.
    static let maxInlineLoadBlockByteCount: UInt64 = 64 << 10

    /// Blocks the range covers whole are read as runs, one pread each, and decompressed
    /// straight into `buffer` (CompressedBaseImage+WholeBlocks); a block it covers in part is
    /// read through the cache.
    public func read(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        precondition(byteOffset + UInt64(buffer.count) <= byteCount, "base read past its end")
        var run: WholeBlockRun?
        try forEachBlock(at: byteOffset, byteCount: buffer.count) {
            blockIndex, offsetInBlock, bufferRange in
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[bufferRange])
            let entry = try entry(ofBlock: blockIndex)
            let blockByteCount = header.geometry.byteCount(
                ofBlock: blockIndex, virtualByteCount: header.virtualByteCount)
            if piece.count == blockByteCount {
                if run?.append(entry, maxStoredByteCount: scratchByteCount) == true { return true }
                if let run { try readWholeBlocks(run, into: buffer) }
                run = WholeBlockRun(
                    firstBlockIndex: blockIndex, bufferByteOffset: bufferRange.lowerBound)
                let appended = run?.append(entry, maxStoredByteCount: scratchByteCount)
                precondition(appended == true, "one block always fits a scratch buffer")
                return true
            }
            guard entry.storage != .zero else {
                piece.initializeMemory(as: UInt8.self, repeating: 0)
                return true
            }
            // On a miss only the prefix the read needs is decompressed; a later read past it
            // decompresses the whole block, so sequential small reads pay at most twice.
            try cache.withBlock(
                blockIndex, neededByteCount: offsetInBlock + piece.count,
                load: { slot, wholeBlock in
                    try loadBlock(
                        blockIndex, entry, into: slot,
                        upTo: wholeBlock ? nil : offsetInBlock + piece.count)
                },
                { block in
                    piece.copyMemory(
                        from: UnsafeRawBufferPointer(
                            rebasing: block[offsetInBlock..<(offsetInBlock + piece.count)]))
                })
            return true
        }
        if let run { try readWholeBlocks(run, into: buffer) }
    }

    /// True only if the range's bytes came without waiting: from the cache, from zero blocks,
    /// or, for a range inside one block of at most `maxInlineLoadBlockByteCount` (a random
    /// small read), decompressed here from stored bytes that are all in the page cache. A
    /// pool thread then needs no waking for a read that never waits on the device (handing a
    /// read over costs more CPU than decompressing a 16 KiB block). Anything else (a read of
    /// several blocks, a block another thread is loading, a damaged block) returns false:
    /// `read` on a pool thread gives the answer.
    public func readIfReady(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer)
        -> Bool
    {
        precondition(byteOffset + UInt64(buffer.count) <= byteCount, "base read past its end")
        let loadsMisses = isSmallReadOfOneBlock(at: byteOffset, byteCount: buffer.count)
        return forEachBlock(at: byteOffset, byteCount: buffer.count) {
            blockIndex, offsetInBlock, bufferRange in
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[bufferRange])
            guard let entry = try? entry(ofBlock: blockIndex) else { return false }
            guard entry.storage != .zero else {
                piece.initializeMemory(as: UInt8.self, repeating: 0)
                return true
            }
            let neededByteCount = offsetInBlock + piece.count
            let copy = { (block: UnsafeRawBufferPointer) in
                piece.copyMemory(
                    from: UnsafeRawBufferPointer(rebasing: block[offsetInBlock..<neededByteCount]))
            }
            let hit: Void? =
                loadsMisses
                ? cache.withBlockIfLoadable(
                    blockIndex, neededByteCount: neededByteCount,
                    load: { slot, wholeBlock in
                        loadBlockIfCached(
                            blockIndex, entry, into: slot,
                            upTo: wholeBlock ? nil : neededByteCount)
                    }, copy)
                : cache.withCachedBlock(blockIndex, neededByteCount: neededByteCount, copy)
            return hit != nil
        }
    }

    /// Whether `readIfReady` may decompress a missed block itself: the range lies inside one
    /// block, covers less than all of it (whole blocks bypass the cache, in `read`), and that
    /// block is small enough to decompress in a few microseconds.
    private func isSmallReadOfOneBlock(at byteOffset: UInt64, byteCount rangeByteCount: Int)
        -> Bool
    {
        let geometry = header.geometry
        guard rangeByteCount > 0,
            geometry.blockByteCount <= Self.maxInlineLoadBlockByteCount,
            UInt64(rangeByteCount) < geometry.blockByteCount
        else { return false }
        return geometry.blockIndex(containing: byteOffset)
            == geometry.blockIndex(containing: byteOffset + UInt64(rangeByteCount) - 1)
    }

    /// Zero blocks are holes; every other block is data (a damaged entry too: reading it
    /// fails, so it must not be reported as zeros).
    public func extent(at byteOffset: UInt64, maxByteCount: UInt64) throws -> SourceExtent {
        precondition(byteOffset < byteCount && maxByteCount > 0)
        let end = byteOffset + min(maxByteCount, byteCount - byteOffset)
        let geometry = header.geometry
        var blockIndex = geometry.blockIndex(containing: byteOffset)
        let isHole = isZeroBlock(blockIndex)
        var extentEnd = byteOffset
        while extentEnd < end {
            extentEnd = min(end, geometry.byteOffset(ofBlock: blockIndex + 1))
            blockIndex += 1
            guard extentEnd < end, isZeroBlock(blockIndex) == isHole else { break }
        }
        return SourceExtent(byteCount: extentEnd - byteOffset, isHole: isHole)
    }

    /// Asks the kernel to read ahead the stored bytes of the blocks in the range.
    public func prefetch(at byteOffset: UInt64, byteCount prefetchByteCount: UInt64) {
        guard prefetchByteCount > 0, byteOffset < byteCount else { return }
        let geometry = header.geometry
        let firstBlock = geometry.blockIndex(containing: byteOffset)
        let lastBlock = geometry.blockIndex(
            containing: min(byteOffset + prefetchByteCount, byteCount) - 1)
        var storedRange: Range<UInt64>?
        for blockIndex in firstBlock...lastBlock {
            guard let entry = try? entry(ofBlock: blockIndex), entry.storage != .zero else {
                continue
            }
            let lower = storedRange?.lowerBound ?? entry.dataByteOffset
            storedRange = lower..<entry.dataEndByteOffset
        }
        if let storedRange {
            descriptor.adviseWillNeed(
                at: storedRange.lowerBound, byteCount: UInt64(storedRange.count))
        }
    }

    // MARK: Blocks

    /// The parsed index entry of block `blockIndex`. A damaged entry fails with an I/O error
    /// naming the block and where its entry is.
    public func entry(ofBlock blockIndex: UInt64) throws -> LZ4BlockEntry {
        precondition(blockIndex < header.blockCount, "block index past the end of the image")
        let entryOffset = Int(blockIndex) * LZ4BlockEntry.byteCount
        do {
            return try index.withUnsafeBytes { bytes throws(FormatError) in
                try LZ4BlockEntry(
                    parsing: UnsafeRawBufferPointer(
                        rebasing: bytes[entryOffset..<(entryOffset + LZ4BlockEntry.byteCount)]),
                    blockIndex: blockIndex)
            }
        } catch {
            throw blockError(
                blockIndex, "index entry damaged (\(error))",
                byteOffset: header.indexByteOffset + UInt64(entryOffset))
        }
    }

    /// Whether block `blockIndex` is a zero block whose entry is intact.
    func isZeroBlock(_ blockIndex: UInt64) -> Bool {
        (try? entry(ofBlock: blockIndex))?.storage == .zero
    }

    /// Fills `slot` with block `blockIndex`'s bytes from its stored form: reads them (an LZ4
    /// block goes to the end of the slot, to be decompressed in place), checks their checksum,
    /// then decompresses them all, or with `prefixByteCount` only that many first bytes.
    /// Returns how many bytes of the slot are now the block's. Throws `StoreError.io` (EIO)
    /// naming the block and offset if the bytes are missing, damaged or do not decompress to
    /// the block's size.
    @discardableResult
    func loadBlock(
        _ blockIndex: UInt64, _ entry: LZ4BlockEntry, into slot: UnsafeMutableRawBufferPointer,
        upTo prefixByteCount: Int? = nil
    ) throws -> Int {
        let stored = storedBytes(entry, in: slot)
        try readStoredBytes(blockIndex, entry, into: stored)
        return try decodeStoredBytes(blockIndex, entry, in: slot, upTo: prefixByteCount)
    }

    /// As `loadBlock`, but only from the page cache (`preadv2(RWF_NOWAIT)`): nil if some of
    /// the stored bytes are not there, or if the block is damaged (`loadBlock` names why).
    func loadBlockIfCached(
        _ blockIndex: UInt64, _ entry: LZ4BlockEntry, into slot: UnsafeMutableRawBufferPointer,
        upTo prefixByteCount: Int?
    ) -> Int? {
        let stored = storedBytes(entry, in: slot)
        guard descriptor.readIfCached(at: entry.dataByteOffset, into: stored) else { return nil }
        return try? decodeStoredBytes(blockIndex, entry, in: slot, upTo: prefixByteCount)
    }

    /// Where in a slot a block's stored bytes go: at its start if raw, at its end if LZ4.
    private func storedBytes(_ entry: LZ4BlockEntry, in slot: UnsafeMutableRawBufferPointer)
        -> UnsafeMutableRawBufferPointer
    {
        let storedByteCount = Int(entry.storedByteCount)
        let storedRange =
            entry.storage == .raw
            ? 0..<storedByteCount : (slot.count - storedByteCount)..<slot.count
        return UnsafeMutableRawBufferPointer(rebasing: slot[storedRange])
    }

    /// The rest of `loadBlock`, once the stored bytes are in `slot`: checks their checksum,
    /// then decompresses them (all, or `prefixByteCount` first bytes) in place.
    private func decodeStoredBytes(
        _ blockIndex: UInt64, _ entry: LZ4BlockEntry, in slot: UnsafeMutableRawBufferPointer,
        upTo prefixByteCount: Int?
    ) throws -> Int {
        loadCounter.add(1, ordering: .relaxed)
        try checkStoredBytes(
            blockIndex, entry, UnsafeRawBufferPointer(storedBytes(entry, in: slot)))
        let blockByteCount = header.geometry.byteCount(
            ofBlock: blockIndex, virtualByteCount: header.virtualByteCount)
        guard entry.storage == .lz4 else { return blockByteCount }
        let targetByteCount = min(prefixByteCount ?? blockByteCount, blockByteCount)
        let decompressed = dictionary.withUnsafeBytes { dictionary in
            LZ4Decompressor.decompressInPlace(
                slot, compressedByteCount: Int(entry.storedByteCount),
                decompressedByteCount: blockByteCount, prefixByteCount: targetByteCount,
                dictionary: dictionary)
        }
        guard decompressed else {
            throw blockError(
                blockIndex, "LZ4 data does not decompress to \(blockByteCount) bytes",
                byteOffset: entry.dataByteOffset)
        }
        return targetByteCount
    }

    /// Checks a block's stored bytes: their checksum, and for an LZ4 block that the dictionary
    /// it needs is intact. Throws `StoreError.io` (EIO) naming the block if not.
    func checkStoredBytes(
        _ blockIndex: UInt64, _ entry: LZ4BlockEntry, _ stored: UnsafeRawBufferPointer
    ) throws {
        let checksum = LZ4BlockEntry.dataChecksum(of: stored)
        guard checksum == entry.dataChecksum else {
            throw blockError(
                blockIndex,
                "checksum mismatch (stored 0x\(String(entry.dataChecksum, radix: 16)), "
                    + "computed 0x\(String(checksum, radix: 16)))",
                byteOffset: entry.dataByteOffset)
        }
        if entry.storage == .lz4, let dictionaryProblem {
            throw blockError(blockIndex, dictionaryProblem, byteOffset: header.dataByteOffset)
        }
    }

    /// Reads a block's stored bytes in full; a short read means the file was cut short.
    func readStoredBytes(
        _ blockIndex: UInt64, _ entry: LZ4BlockEntry, into stored: UnsafeMutableRawBufferPointer
    ) throws {
        let done: Int
        do {
            done = try descriptor.readUpToFully(at: entry.dataByteOffset, into: stored)
        } catch {
            throw StoreError.io(
                path: path, operation: "read of block \(blockIndex)",
                byteOffset: entry.dataByteOffset, error)
        }
        guard done == stored.count else {
            throw blockError(
                blockIndex, "truncated file: \(done) of \(stored.count) bytes",
                byteOffset: entry.dataByteOffset)
        }
    }

    /// An EIO error whose text names the block, what is wrong, and the file offset.
    func blockError(_ blockIndex: UInt64, _ problem: String, byteOffset: UInt64) -> StoreError {
        .io(
            path: path, operation: "block \(blockIndex): \(problem); read", byteOffset: byteOffset,
            .ioError)
    }

    /// Calls `body` for each block the range touches, with the block index, the offset in the
    /// block where the range starts, and the part of the caller's buffer that block fills.
    /// Stops, returning false, as soon as `body` returns false.
    @discardableResult
    private func forEachBlock(
        at byteOffset: UInt64, byteCount rangeByteCount: Int,
        _ body: (UInt64, Int, Range<Int>) throws -> Bool
    ) rethrows -> Bool {
        let geometry = header.geometry
        var done = 0
        while done < rangeByteCount {
            let position = byteOffset + UInt64(done)
            let blockIndex = geometry.blockIndex(containing: position)
            let offsetInBlock = Int(position - geometry.byteOffset(ofBlock: blockIndex))
            let blockByteCount = geometry.byteCount(
                ofBlock: blockIndex, virtualByteCount: header.virtualByteCount)
            let pieceByteCount = min(rangeByteCount - done, blockByteCount - offsetInBlock)
            guard try body(blockIndex, offsetInBlock, done..<(done + pieceByteCount)) else {
                return false
            }
            done += pieceByteCount
        }
        return true
    }
}
