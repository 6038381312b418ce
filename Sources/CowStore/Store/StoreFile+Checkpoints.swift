// Checkpoints of a store (docs/FORMAT.md, "Checkpoints"): named points in time, each with a
// bitmap of the chunks changed since. Every write marks its chunks in every checkpoint's bitmap;
// the bitmaps reach the disk at flush, with the chunk bitmap. A writer sets the table's open
// flag before its first write and clears it at a clean close: finding it set means a crash may
// have lost marks, so every chunk the store holds counts as changed.

import CowFormat
import SystemPackage

/// The checkpoint table and one bitmap a checkpoint, in memory. Guarded by the store's lock.
struct CheckpointState {
    /// Nil when the store has no checkpoint area.
    var table: CheckpointTable?
    /// By slot.
    var bitmaps: [Int: ChunkBitmap] = [:]
}

extension StoreFile {
    /// The checkpoint table as last read or written, or nil without checkpoints.
    public var checkpointTable: CheckpointTable? { checkpoints.withLock { $0.table } }

    /// Chunks marked changed since the checkpoint in `slot`.
    public func changedChunkCount(slot: Int) -> UInt64 {
        checkpoints.withLock { $0.bitmaps[slot]?.setCount ?? 0 }
    }

    /// The state of chunk `chunkIndex` in `slot`'s bitmap and how many chunks from it (at most
    /// `limit`) share it.
    func changedRun(slot: Int, from chunkIndex: UInt64, limit: UInt64) -> (
        isSet: Bool, chunkCount: UInt64
    ) {
        checkpoints.withLock { state in
            guard let bitmap = state.bitmaps[slot] else { return (false, limit) }
            return bitmap.run(from: chunkIndex, limit: limit)
        }
    }

    /// Marks chunks changed in every checkpoint, a word at a time; called before a write, zero
    /// or trim changes them (at most `maxChunkCountPerLock` at once).
    func markChanged(_ chunks: Range<UInt64>) {
        precondition(
            UInt64(chunks.count) <= Self.maxChunkCountPerLock, "mark longer than one batch")
        checkpoints.withLock { state in
            for bitmap in state.bitmaps.values { bitmap.set(chunks) }
        }
    }

    /// Records a checkpoint: from now on, its bitmap collects the chunks that change.
    public func addCheckpoint(_ checkpoint: Checkpoint) throws {
        precondition(isWritable, "checkpoint on a read-only store")
        if let problem = Checkpoint.problem(withName: checkpoint.name) {
            throw StoreError.invalidArgument("\(checkpoint.name): \(problem)")
        }
        try flush()
        try flushLock.withLock { _ in
            var table = try checkpoints.withLock { $0.table } ?? createCheckpointArea()
            guard table.slot(named: checkpoint.name) == nil else {
                throw StoreError.invalidArgument(
                    "\(path): a checkpoint named \(checkpoint.name) exists already")
            }
            guard let slot = table.slots.firstIndex(where: { $0 == nil }) else {
                throw StoreError.invalidArgument(
                    "\(path): the store holds \(CheckpointTable.slotCount) checkpoints, the most "
                        + "it can; delete one first (cowbd checkpoint --delete)")
            }
            // The slot's region may hold a deleted checkpoint's bits: clear it before use.
            let regionByteOffset = header.checkpointBitmapByteOffset(slot: slot)
            try io("punch hole", at: regionByteOffset) { () throws(Errno) in
                try io.punchHole(at: regionByteOffset, byteCount: header.bitmapByteCount)
            }
            try synchronize(.all, "fsync (checkpoint bitmap)")
            table.slots[slot] = checkpoint
            try writeCheckpointTable(&table)
            checkpoints.withLock {
                $0.table = table
                $0.bitmaps[slot] = ChunkBitmap(chunkCount: header.chunkCount)
            }
        }
    }

    /// Forgets a checkpoint. The last one takes the checkpoint area with it.
    public func deleteCheckpoint(named name: String) throws {
        precondition(isWritable, "checkpoint on a read-only store")
        try flushLock.withLock { _ in
            guard var table = checkpoints.withLock({ $0.table }), let slot = table.slot(named: name)
            else {
                throw StoreError.invalidArgument("\(path): no checkpoint named \(name)")
            }
            table.slots[slot] = nil
            try writeCheckpointTable(&table)
            checkpoints.withLock {
                $0.table = table
                $0.bitmaps[slot] = nil
            }
            let regionByteOffset = header.checkpointBitmapByteOffset(slot: slot)
            try? io.punchHole(at: regionByteOffset, byteCount: header.bitmapByteCount)
            guard table.checkpoints.isEmpty else { return }
            // Header first: a crash before the truncate leaves only unused bytes past the end.
            var plain = currentHeader
            plain.setHasCheckpoints(false)
            plain.setHasHydration(hasHydration)
            try writeHeaderBytes(plain)
            checkpoints.withLock { $0 = CheckpointState() }
            guard !hasHydration else {
                // The hydration bitmap stays where it is, past the area: the area is punched.
                let start = header.checkpointAreaByteOffset
                let count = header.hydrationBitmapByteOffset - start
                try io("punch hole", at: start) { () throws(Errno) in
                    try io.punchHole(at: start, byteCount: count)
                }
                try synchronize(.all, "fsync (punch hole)")
                return
            }
            let dataEnd = header.dataByteOffset + header.virtualByteCount
            try io("ftruncate", at: dataEnd) { () throws(Errno) in try io.setByteCount(dataEnd) }
            try synchronize(.all, "fsync (ftruncate)")
        }
    }

    /// Makes the area (tables and slots, sparse) and then sets the header's feature bit, so a
    /// crash in between leaves only unused bytes past the end of the file. Called under the
    /// flush lock.
    private func createCheckpointArea() throws -> CheckpointTable {
        var withArea = currentHeader
        withArea.setHasCheckpoints(true)
        // With a hydration bitmap the file already reaches past the area: the size stays.
        withArea.setHasHydration(hasHydration)
        try io("ftruncate", at: withArea.expectedFileByteCount) { () throws(Errno) in
            try io.setByteCount(withArea.expectedFileByteCount)
        }
        var table = CheckpointTable()
        table.isOpen = true
        try writeCheckpointTable(&table)
        try writeHeaderBytes(withArea)
        checkpoints.withLock { $0.table = table }
        return table
    }

    /// Writes `table` as the next generation, to the copy the current one is not in, and makes
    /// it durable. Called under the flush lock.
    func writeCheckpointTable(_ table: inout CheckpointTable) throws {
        table.generation += 1
        let byteOffset =
            header.checkpointAreaByteOffset
            + UInt64(CheckpointTable.copyIndex(forGeneration: table.generation))
            * UInt64(CheckpointTable.byteCount)
        try checkTakesChanges()
        let bytes = table.encoded()
        do {
            try bytes.withUnsafeBytes { try io.write(at: byteOffset, from: $0) }
        } catch let error as Errno {
            throw StoreError.io(
                path: path, operation: "write checkpoint table", byteOffset: byteOffset, error)
        }
        try synchronize(.data, "fdatasync (checkpoint table)")
    }

    /// At a writer's open: if the last writer did not close cleanly, counts every chunk the
    /// store holds as changed in every checkpoint; then records that a writer is open.
    func openCheckpointsForWriting() throws {
        guard var table = checkpoints.withLock({ $0.table }) else { return }
        if table.isOpen {
            let held = bitmap.withLock { $0.allocatedPages() }
            checkpoints.withLock { state in
                for changed in state.bitmaps.values { changed.formUnion(held) }
            }
        }
        table.isOpen = true
        try flushLock.withLock { _ in try writeCheckpointTable(&table) }
        checkpoints.withLock { $0.table = table }
    }

    /// At a clean close: flushes, then clears the open flag. Leaves it set if anything fails.
    func closeCheckpointsAfterWriting() {
        guard isWritable, var table = checkpoints.withLock({ $0.table }), table.isOpen else {
            return
        }
        do {
            try flush()
            table.isOpen = false
            try flushLock.withLock { _ in try writeCheckpointTable(&table) }
            checkpoints.withLock { $0.table = table }
        } catch {
            // The flag stays set: the next writer counts every held chunk as changed.
        }
    }

    /// Reads the checkpoint table and the bitmaps of the checkpoints it holds.
    static func readCheckpoints(_ io: any StoreIO, header: StoreHeader, path: FilePath)
        throws -> CheckpointState
    {
        guard header.hasCheckpoints else { return CheckpointState() }
        let byteCount = 2 * CheckpointTable.byteCount
        var bytes = [UInt8](repeating: 0, count: byteCount)
        let done = try bytes.withUnsafeMutableBytes {
            try io.read(at: header.checkpointAreaByteOffset, into: $0)
        }
        let table: CheckpointTable
        do {
            guard done == byteCount else {
                throw FormatError.truncated(expectedByteCount: byteCount, actualByteCount: done)
            }
            table = try bytes.withUnsafeBytes { bytes throws(FormatError) in
                try CheckpointTable.current(
                    of: UnsafeRawBufferPointer(rebasing: bytes[..<CheckpointTable.byteCount]),
                    UnsafeRawBufferPointer(rebasing: bytes[CheckpointTable.byteCount...]))
            }
        } catch let error as FormatError {
            throw StoreError.format(path: path, error)
        }
        var state = CheckpointState(table: table)
        for (slot, _) in table.checkpoints {
            state.bitmaps[slot] = try readBitmap(
                io, header: header,
                regionByteOffset: header.checkpointBitmapByteOffset(slot: slot), path: path)
        }
        return state
    }
}
