// `merge --in-place` when the store's lower layer is another store (qemu-img commit): the
// store's chunks are written into the lower store through its own write path (data durable
// before bits, by its flush), then the store is emptied and bound to the lower's new disk. The
// same record and steps as a merge into a raw base (StoreMerge+Target.swift), so a rerun
// finishes and `--abort` applies; docs/FORMAT.md, "Merge into a lower store".

import CowFormat
import SystemPackage

extension StoreMerge {
    /// The lower layer of `store`, opened to be written, if it is a store: under its exclusive
    /// lock (so refused while another upper over it is open, or it is served or checked), over
    /// its own verified chain. Nil if the lower is not a store. A frozen lower is opened too:
    /// the merge is the one writer a frozen layer takes, and it stays frozen for everyone else.
    static func openLowerStoreForWriting(
        under store: StoreFile, storePath: FilePath, options: BaseOpenOptions
    ) throws -> VirtualDisk? {
        let header = store.header
        if NBDBaseImage.isURI(header.basePathGiven) { return nil }
        guard
            let lowerPath = BaseLocator.candidatePaths(for: header, storePath: storePath)
                .map({ FilePath($0) }).first(where: { (try? FileIdentity(of: $0)) != nil }),
            (try? BaseLocator.leadingBytes(of: lowerPath)) == StoreHeader.magic
        else { return nil }
        let lower: StoreFile
        do {
            lower = try StoreFile(path: lowerPath, access: .exclusiveWrite, logger: options.logger)
        } catch StoreError.inUse {
            throw StoreError.invalidArgument(
                "\(lowerPath): the lower store is open elsewhere (another store over it, or a "
                    + "server, check or merge); an in-place merge into it needs it alone; "
                    + "nothing was written")
        }
        do {
            if let merge = lower.header.merge {
                throw StoreError.mergeInProgress(path: lowerPath, target: merge.targetPath)
            }
            var lowerOptions = options
            lowerOptions.layersAbove = [
                LayerAbove(path: storePath, identity: try FileIdentity(of: storePath))
            ]
            let lowerBase = try VirtualDisk.openBase(
                of: lower, storePath: lowerPath, options: lowerOptions)
            return VirtualDisk(store: lower, base: lowerBase, logger: options.logger)
        } catch {
            lower.close()
            throw error
        }
    }

    /// Refuses, before anything is recorded, a merge the lower store cannot take: a store's disk
    /// has a fixed size, so the upper's disk must be the same size as the lower's (a store
    /// grown over its lower cannot be merged into it).
    static func checkLowerTakesTheDisk(
        _ lower: VirtualDisk, of store: StoreFile, storePath: FilePath
    ) throws {
        guard store.header.virtualByteCount == lower.byteCount else {
            throw StoreError.invalidArgument(
                "\(storePath): its disk (\(store.header.virtualByteCount) bytes) is larger than "
                    + "its lower store \(lower.store.path)'s (\(lower.byteCount) bytes), which "
                    + "cannot grow; flatten it instead (cowbd merge \(storePath) --output NEW)")
        }
        try lower.store.checkTakesChanges()
    }

    /// The steps of StoreMerge+Target.swift with the lower store as the target: record; write
    /// every held chunk into the lower (idempotent, so a rerun writes them all again); flush the
    /// lower; empty the store; bind it to the lower's new disk (same paths) and clear the record.
    func mergeIntoLowerStore(
        _ lower: VirtualDisk, progress: (UInt64, UInt64) -> Void
    ) throws -> Summary {
        let header = store.header
        let resumed = header.merge != nil
        let record = try header.merge ?? startRecord()
        let scratch = lower.makeScratch()
        let summary = try copyWrittenRuns(of: record, resumed: resumed, progress: progress) {
            start, end, buffer, summary in
            try writeStoreRange(
                from: start, to: end, into: lower, buffer: buffer, scratch: scratch,
                summary: &summary)
        }
        // The lower's chunks durable (data, then bits) before the store forgets its own.
        try lower.flush()
        let fingerprint = try lower.fingerprint()
        guard fingerprint == record.targetFingerprint, lower.byteCount == record.targetByteCount
        else {
            throw StoreError.invalidArgument(
                "\(lower.store.path): after the merge its disk's fingerprint is \(fingerprint), "
                    + "not the merged disk's \(record.targetFingerprint) (was it changed "
                    + "meanwhile?); the store still holds its chunks and the merge stays "
                    + "recorded: run it again, or take it back (--abort --force)")
        }
        try finish(
            record, resumed: resumed, basePathGiven: header.basePathGiven,
            basePathResolved: header.basePathResolved)
        return summary
    }

    /// Writes virtual bytes `start..<end` of the store into the lower through its own write
    /// path, a buffer at a time: data as data, holes as zeroes the lower may punch. Idempotent.
    private func writeStoreRange(
        from start: UInt64, to end: UInt64, into lower: VirtualDisk,
        buffer: UnsafeMutableRawBufferPointer, scratch: ChunkScratch, summary: inout Summary
    ) throws {
        var cursor = start
        while cursor < end {
            let run = try store.dataRun(from: cursor, end: min(end, cursor + UInt64(buffer.count)))
            let count = run.end - cursor
            if run.isHole {
                try lower.writeZeroes(
                    at: cursor, byteCount: count, mayPunch: true, scratch: scratch)
                summary.holeByteCount += count
            } else {
                let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[..<Int(count)])
                try store.readBytes(at: cursor, into: piece)
                try lower.write(at: cursor, from: UnsafeRawBufferPointer(piece), scratch: scratch)
                summary.dataByteCount += count
            }
            cursor = run.end
        }
    }
}
