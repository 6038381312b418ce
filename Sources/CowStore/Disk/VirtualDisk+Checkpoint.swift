// Checkpoints of a disk that may be in use: taken and deleted behind the write barrier, so a
// request in flight lands wholly before or after; and the changes since one, by range, for the
// `qemu:dirty-bitmap:NAME` contexts of NBD_CMD_BLOCK_STATUS. The bitmaps are the store's
// (StoreFile+Checkpoints.swift).

import CowFormat

/// One stretch of the disk that did, or did not, change since a checkpoint.
public struct CheckpointChangeRun: Equatable, Sendable {
    public var byteCount: UInt64
    public var isChanged: Bool
}

extension VirtualDisk {
    /// Records checkpoint `name` at this instant: every change acknowledged before the call
    /// is in the state it marks, every change after it is marked in its bitmap. Changes in
    /// flight finish first; new ones wait until it is recorded (a flush, the disk's sampled
    /// fingerprint and a checkpoint table write).
    @discardableResult
    public func addCheckpoint(named name: String, createdUnixSeconds: UInt64) throws -> Checkpoint {
        try writeBarrier.withChangesStopped {
            let checkpoint = Checkpoint(
                name: name, id: UInt64.random(in: 1...UInt64.max),
                createdUnixSeconds: createdUnixSeconds, diskFingerprint: try fingerprint())
            try store.addCheckpoint(checkpoint)
            return checkpoint
        }
    }

    /// Forgets checkpoint `name` (StoreFile.deleteCheckpoint), with no change in flight.
    public func deleteCheckpoint(named name: String) throws {
        try writeBarrier.withChangesStopped { try store.deleteCheckpoint(named: name) }
    }

    /// The names of the disk's checkpoints, oldest first.
    public var checkpointNames: [String] {
        (store.checkpointTable?.checkpoints ?? []).map(\.checkpoint.name)
    }

    /// Consecutive extents from `virtualByteOffset` that changed since checkpoint `name`, or
    /// did not, covering at most `byteCount` bytes and `maxExtentCount` extents (at least one).
    /// A chunk counts whole: it changed if any byte of it was written, zeroed or trimmed.
    public func changedExtents(
        sinceCheckpoint name: String, at virtualByteOffset: UInt64, byteCount requested: UInt64,
        maxExtentCount: Int
    ) throws -> [CheckpointChangeRun] {
        try checkRange(virtualByteOffset, requested)
        precondition(maxExtentCount > 0)
        guard let slot = store.checkpointTable?.slot(named: name) else {
            throw StoreError.invalidArgument("\(store.path): no checkpoint named \(name)")
        }
        var extents: [CheckpointChangeRun] = []
        var cursor = virtualByteOffset
        let end = virtualByteOffset + requested
        while cursor < end && extents.count < maxExtentCount {
            let firstChunk = geometry.chunkIndex(containing: cursor)
            let lastChunk = geometry.chunkIndex(containing: end - 1)
            let run = store.changedRun(
                slot: slot, from: firstChunk, limit: lastChunk - firstChunk + 1)
            let runEnd = min(end, geometry.byteOffset(ofChunk: firstChunk + run.chunkCount))
            extents.append(CheckpointChangeRun(byteCount: runEnd - cursor, isChanged: run.isSet))
            cursor = runEnd
        }
        return extents
    }
}
