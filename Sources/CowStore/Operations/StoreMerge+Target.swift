// Merging into a target (a copy of the base, or the base in place), in four durable steps:
// record the merge in the header; copy the store's chunks; fsync the target; empty the store
// and bind it to the target. Each step may be repeated, so a rerun after a crash finishes.

import CowFormat
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

extension StoreMerge {
    func mergeIntoTarget(progress: (UInt64, UInt64) -> Void) throws -> Summary {
        let header = store.header
        let resumed = header.merge != nil
        let target = try openTarget()
        defer { try? target.close() }
        // 1. Record the merge before the first byte reaches the target.
        let record: MergeRecord
        if let existing = header.merge {
            record = existing
        } else {
            record = try startRecord()
        }
        // 2. Copy every chunk the store holds; holes in the store become holes in the target.
        try extendTarget(target, to: record.targetByteCount)
        let summary = try copyWrittenRuns(of: record, resumed: resumed, progress: progress) {
            start, end, buffer, summary in
            try copyStoreRange(
                from: start, to: end, into: target, buffer: buffer, summary: &summary)
        }
        // 3. The target is durable before the store forgets anything.
        try sync(target, path: FilePath(record.targetPath))
        // 4. Empty the store, then bind it to the target and clear the merge.
        let given: String
        switch destination {
        case .into(let path): given = path.string
        default: given = header.basePathGiven
        }
        try finish(
            record, resumed: resumed, basePathGiven: given, basePathResolved: record.targetPath)
        return summary
    }

    /// Step 2's frame for either target: calls `copy` for each run of chunks the store holds
    /// (virtual bytes `start..<end`), with one aligned buffer of `copyByteCount` bytes and the
    /// summary to count into, and reports progress after each run.
    func copyWrittenRuns(
        of record: MergeRecord, resumed: Bool, progress: (UInt64, UInt64) -> Void,
        _ copy: (
            _ start: UInt64, _ end: UInt64, _ buffer: UnsafeMutableRawBufferPointer,
            _ summary: inout Summary
        ) throws -> Void
    ) throws -> Summary {
        var summary = Summary(
            targetPath: record.targetPath, chunkCount: store.writtenChunkCount, dataByteCount: 0,
            holeByteCount: 0, resumed: resumed)
        let total = try store.allocatedDataByteCount()
        let buffer = UnsafeMutableRawBufferPointer.allocate(
            byteCount: Self.copyByteCount, alignment: 4096)
        defer { buffer.deallocate() }
        try forEachWrittenRun { start, end in
            try copy(start, end, buffer, &summary)
            progress(summary.dataByteCount, total)
        }
        return summary
    }

    /// Step 4 for either target, once the merged disk is durable: empties the store, then binds
    /// it to that disk (`record`'s size and fingerprint, named `basePathGiven`,
    /// `basePathResolved` absolute) and clears the merge, in one header write.
    func finish(
        _ record: MergeRecord, resumed: Bool, basePathGiven: String, basePathResolved: String
    ) throws {
        try emptyStore(resumed: resumed)
        var finished = store.header
        finished.setMerge(nil)
        try store.writeHeader(
            finished, reboundTo: record.targetByteCount, fingerprint: record.targetFingerprint,
            basePathGiven: basePathGiven, basePathResolved: basePathResolved)
    }

    private func openTarget() throws -> FileDescriptor {
        let path = FilePath(targetPath)
        // In place, the base's own descriptor holds the exclusive lock (StoreMerge.init).
        if !isInPlace { return try FileDescriptor.openLockedForWriting(path) }
        return try FileDescriptor.openClosingOnExec(path, .readWrite)
    }

    /// Checks the target is the base's twin, computes what it will hold, and writes the record.
    func startRecord() throws -> MergeRecord {
        let header = store.header
        if case .into(let path) = destination {
            let twin = try RawBaseImage(path: path, lock: .none)
            guard twin.byteCount == header.baseByteCount,
                try twin.fingerprint() == header.baseFingerprint
            else {
                throw StoreError.baseMismatch(
                    path: storePath, base: path,
                    detail: "the target is not a copy of the base (size or content differs)")
            }
        }
        let disk = VirtualDisk(store: store, base: base, logger: logger)
        let record: MergeRecord
        do {
            record = try MergeRecord(
                flags: isInPlace ? MergeRecord.inPlaceFlag : 0,
                targetByteCount: header.virtualByteCount,
                targetFingerprint: try disk.fingerprint(), targetPath: targetPath)
        } catch let error as FormatError {
            throw StoreError.format(path: storePath, error)
        }
        var started = header
        started.setMerge(record)
        try store.writeHeader(started)
        return record
    }

    private var isInPlace: Bool {
        if case .inPlace = destination { return true }
        return false
    }

    private func extendTarget(_ target: FileDescriptor, to byteCount: UInt64) throws {
        let current: UInt64
        do { current = try target.byteCount() } catch {
            throw StoreError.io(
                path: FilePath(targetPath), operation: "fstat", byteOffset: 0, error)
        }
        guard current < byteCount else { return }
        do { try target.setByteCount(byteCount) } catch {
            throw StoreError.io(
                path: FilePath(targetPath), operation: "ftruncate", byteOffset: byteCount, error)
        }
    }

    /// Calls `body` for each run of chunks the store holds, as virtual byte ranges.
    func forEachWrittenRun(_ body: (UInt64, UInt64) throws -> Void) throws {
        let geometry = store.header.geometry
        try store.forEachHeldRun { chunks in
            try body(
                geometry.byteOffset(ofChunk: chunks.lowerBound),
                min(geometry.byteOffset(ofChunk: chunks.upperBound), store.header.virtualByteCount))
        }
    }

    /// Copies virtual bytes `start..<end` from the store's data region to the target: data as
    /// data, holes (trimmed or zeroed chunks) as punched holes. Idempotent. Any error finding
    /// the holes stops the merge: taken for a hole, data would be lost in the target.
    private func copyStoreRange(
        from start: UInt64, to end: UInt64, into target: FileDescriptor,
        buffer: UnsafeMutableRawBufferPointer, summary: inout Summary
    ) throws {
        let targetFile = FilePath(targetPath)
        var cursor = start
        while cursor < end {
            let run = try store.dataRun(from: cursor, end: end)
            if run.isHole {
                do {
                    try target.punchHole(at: cursor, byteCount: run.end - cursor)
                } catch {
                    try writeZeros(target, from: cursor, to: run.end, buffer: buffer)
                }
                summary.holeByteCount += run.end - cursor
                cursor = run.end
                continue
            }
            while cursor < run.end {
                let count = Int(min(UInt64(Self.copyByteCount), run.end - cursor))
                let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[..<count])
                try store.readBytes(at: cursor, into: piece)
                do { try target.writeFully(at: cursor, from: UnsafeRawBufferPointer(piece)) } catch
                {
                    throw StoreError.io(
                        path: targetFile, operation: "write", byteOffset: cursor, error)
                }
                summary.dataByteCount += UInt64(count)
                cursor += UInt64(count)
            }
        }
    }

    private func writeZeros(
        _ target: FileDescriptor, from start: UInt64, to end: UInt64,
        buffer: UnsafeMutableRawBufferPointer
    ) throws {
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        var cursor = start
        while cursor < end {
            let count = Int(min(UInt64(buffer.count), end - cursor))
            do {
                try target.writeFully(
                    at: cursor, from: UnsafeRawBufferPointer(rebasing: buffer[..<count]))
            } catch {
                throw StoreError.io(
                    path: FilePath(targetPath), operation: "write", byteOffset: cursor, error)
            }
            cursor += UInt64(count)
        }
    }

    /// Forgets every chunk (`StoreFile.discardAllChunks`); a rerun (`resumed`) punches the whole
    /// data region, since a crash may have left data the bitmap no longer points at.
    func emptyStore(resumed: Bool) throws {
        try store.discardAllChunks(wholeDataRegion: resumed)
    }

    func sync(_ descriptor: FileDescriptor, path: FilePath) throws {
        do { try descriptor.synchronizeAll() } catch {
            throw StoreError.io(path: path, operation: "fsync", byteOffset: 0, error)
        }
    }
}
