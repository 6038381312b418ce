// Reads that cover whole blocks (sequential reads): the stored bytes of adjacent blocks come in
// one pread, and each block is checked and decompressed straight into the caller's buffer,
// past the cache of decompressed blocks, which a scan would only flush. Partial blocks go
// through the cache (CompressedBaseImage+Read).

import CowFormat
import SystemPackage

extension CompressedBaseImage {
    /// Most stored bytes one pread of a run fetches (a run longer than that is split): a 1 MiB
    /// read of 16 KiB blocks compressed to 40% is one pread. A raw block of the largest size
    /// still fits, as the scratch buffer is at least one block.
    static let maxRunStoredByteCount = 512 << 10
    /// Scratch buffers kept for later reads; more readers than this allocate their own.
    static let maxKeptScratchBufferCount = 16

    /// Consecutive blocks that one read covers whole, whose stored bytes are back to back in
    /// the file (zero blocks, which store nothing, may be among them).
    struct WholeBlockRun {
        var firstBlockIndex: UInt64
        var blockCount: UInt64 = 0
        /// Where the first block's bytes go in the caller's buffer.
        var bufferByteOffset: Int
        /// The file bytes of the run's stored blocks; nil while they are all zero blocks.
        var storedRange: Range<UInt64>?

        init(firstBlockIndex: UInt64, bufferByteOffset: Int) {
            self.firstBlockIndex = firstBlockIndex
            self.bufferByteOffset = bufferByteOffset
        }

        /// Adds the next block if its bytes follow the run's in the file and the run's stored
        /// bytes stay within `maxStoredByteCount`; false (and no change) otherwise.
        mutating func append(_ entry: LZ4BlockEntry, maxStoredByteCount: Int) -> Bool {
            if entry.storage != .zero {
                let lower = storedRange?.lowerBound ?? entry.dataByteOffset
                guard storedRange == nil || storedRange?.upperBound == entry.dataByteOffset,
                    entry.dataEndByteOffset - lower <= UInt64(maxStoredByteCount)
                else { return false }
                storedRange = lower..<entry.dataEndByteOffset
            }
            blockCount += 1
            return true
        }
    }

    /// Fills the run's part of `buffer`: one pread of its stored bytes into a scratch buffer,
    /// then each block checked against its checksum and decompressed (or copied, if raw) into
    /// place. Throws `StoreError.io` (EIO) naming the first block that is missing, damaged or
    /// does not decompress to its size.
    func readWholeBlocks(_ run: WholeBlockRun, into buffer: UnsafeMutableRawBufferPointer) throws {
        let geometry = header.geometry
        guard let storedRange = run.storedRange else {
            let end = run.bufferByteOffset + blockBytes(from: run.firstBlockIndex, run.blockCount)
            UnsafeMutableRawBufferPointer(rebasing: buffer[run.bufferByteOffset..<end])
                .initializeMemory(as: UInt8.self, repeating: 0)
            return
        }
        try withScratchBuffer { scratch in
            let stored = UnsafeMutableRawBufferPointer(
                rebasing: scratch[..<Int(storedRange.count)])
            let storedByteCount = try readRunBytes(run, storedRange, into: stored)
            var bufferByteOffset = run.bufferByteOffset
            for blockIndex in run.firstBlockIndex..<(run.firstBlockIndex + run.blockCount) {
                let entry = try entry(ofBlock: blockIndex)
                let blockByteCount = geometry.byteCount(
                    ofBlock: blockIndex, virtualByteCount: header.virtualByteCount)
                let piece = UnsafeMutableRawBufferPointer(
                    rebasing: buffer[bufferByteOffset..<(bufferByteOffset + blockByteCount)])
                bufferByteOffset += blockByteCount
                guard entry.storage != .zero else {
                    piece.initializeMemory(as: UInt8.self, repeating: 0)
                    continue
                }
                let start = Int(entry.dataByteOffset - storedRange.lowerBound)
                let end = start + Int(entry.storedByteCount)
                guard end <= storedByteCount else {
                    throw blockError(
                        blockIndex,
                        "truncated file: \(max(0, storedByteCount - start)) of "
                            + "\(entry.storedByteCount) bytes",
                        byteOffset: entry.dataByteOffset)
                }
                loadCounter.add(1, ordering: .relaxed)
                try decodeBlock(
                    blockIndex, entry, from: UnsafeRawBufferPointer(rebasing: stored[start..<end]),
                    into: piece)
            }
        }
    }

    /// Reads the run's stored bytes; returns how many there were (fewer: the file was cut
    /// short after it was opened, and the blocks past the end fail).
    private func readRunBytes(
        _ run: WholeBlockRun, _ storedRange: Range<UInt64>,
        into stored: UnsafeMutableRawBufferPointer
    ) throws -> Int {
        do {
            return try descriptor.readUpToFully(at: storedRange.lowerBound, into: stored)
        } catch {
            throw StoreError.io(
                path: path,
                operation: "read of blocks \(run.firstBlockIndex) to "
                    + "\(run.firstBlockIndex + run.blockCount - 1)",
                byteOffset: storedRange.lowerBound, error)
        }
    }

    /// Checks a block's stored bytes against its checksum, then decompresses them (or copies
    /// them, if raw) into `piece`, which is exactly the block's size.
    private func decodeBlock(
        _ blockIndex: UInt64, _ entry: LZ4BlockEntry, from stored: UnsafeRawBufferPointer,
        into piece: UnsafeMutableRawBufferPointer
    ) throws {
        try checkStoredBytes(blockIndex, entry, stored)
        guard entry.storage == .lz4 else {
            piece.copyMemory(from: stored)
            return
        }
        let decompressed = dictionary.withUnsafeBytes { dictionary in
            LZ4Decompressor.decompress(stored, into: piece, dictionary: dictionary)
        }
        guard decompressed else {
            throw blockError(
                blockIndex, "LZ4 data does not decompress to \(piece.count) bytes",
                byteOffset: entry.dataByteOffset)
        }
    }

    /// Uncompressed bytes in `blockCount` blocks from `firstBlockIndex` (the last block of the
    /// image may be short).
    private func blockBytes(from firstBlockIndex: UInt64, _ blockCount: UInt64) -> Int {
        let geometry = header.geometry
        let start = geometry.byteOffset(ofBlock: firstBlockIndex)
        let end = min(geometry.byteOffset(ofBlock: firstBlockIndex + blockCount), byteCount)
        return Int(end - start)
    }

    /// Runs `body` on a scratch buffer of `scratchByteCount` bytes that no other thread uses,
    /// taken from those kept (or allocated) and kept again after.
    private func withScratchBuffer<Result>(
        _ body: (UnsafeMutableRawBufferPointer) throws -> Result
    ) rethrows -> Result {
        let scratch =
            scratchBuffers.withLock { $0.popLast() }
            ?? .allocate(byteCount: scratchByteCount, alignment: 4096)
        defer {
            let kept = scratchBuffers.withLock { buffers in
                guard buffers.count < Self.maxKeptScratchBufferCount else { return false }
                buffers.append(scratch)
                return true
            }
            if !kept { scratch.deallocate() }
        }
        return try body(scratch)
    }
}
