// Writes, zeroes and trims. The first change to a chunk writes (or punches) the whole chunk,
// copying up from the base what the request does not cover, before its bit is set in memory;
// the bit reaches the disk only at the next flush (docs/FORMAT.md, "Crash safety").

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
            to: virtualByteOffset + UInt64(data.count), skipPartialUnwritten: false,
            scratch: scratch)
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
            .zeros(mayPunch: mayPunch), from: virtualByteOffset, to: end,
            skipPartialUnwritten: false, scratch: scratch)
        if fua { try flush() }
    }

    /// Discards the range (NBD_CMD_TRIM): whole chunks become holes that read as zeros; parts of
    /// chunks still read from the base are left alone, as the protocol allows.
    public func trim(at virtualByteOffset: UInt64, byteCount: UInt64, fua: Bool = false) throws {
        try checkWritable(virtualByteOffset, byteCount)
        guard byteCount > 0 else { return }
        try apply(
            .zeros(mayPunch: true), from: virtualByteOffset, to: virtualByteOffset + byteCount,
            skipPartialUnwritten: true, scratch: nil)
        if fua { try flush() }
    }

    func checkWritable(_ virtualByteOffset: UInt64, _ count: UInt64) throws {
        try checkRange(virtualByteOffset, count)
        guard !isReadOnly else { throw StoreError.readOnly }
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

    func apply(
        _ fill: Fill, from start: UInt64, to end: UInt64, skipPartialUnwritten: Bool,
        scratch: ChunkScratch?
    )
        throws
    {
        guard start < end else { return }
        store.markChanged(
            geometry.chunkIndex(containing: start)...geometry.chunkIndex(containing: end - 1))
        var cursor = start
        while cursor < end {
            let (isWritten, runEnd) = run(from: cursor, end: end)
            if isWritten {
                try fillStore(fill, from: cursor, to: runEnd)
            } else {
                let chunks =
                    geometry.chunkIndex(
                        containing: cursor)...geometry.chunkIndex(containing: runEnd - 1)
                try copyUpLocks.withLocks(chunks: chunks) {
                    try fillUnwritten(
                        fill, from: cursor, to: runEnd, skipPartialUnwritten: skipPartialUnwritten,
                        scratch: scratch)
                }
            }
            cursor = runEnd
        }
    }

    /// Called holding the copy-up locks of every chunk in the range. A chunk's bit goes from
    /// clear to set only under its lock, so the states seen here stay true until we set them.
    private func fillUnwritten(
        _ fill: Fill, from start: UInt64, to end: UInt64, skipPartialUnwritten: Bool,
        scratch: ChunkScratch?
    ) throws {
        var cursor = start
        while cursor < end {
            let (isWritten, runEnd) = run(from: cursor, end: end)
            if isWritten {
                // Another request took these chunks while we waited for the locks.
                try fillStore(fill, from: cursor, to: runEnd)
                cursor = runEnd
                continue
            }
            // Whole chunks are written (or punched) in one call; partial ones are copied up.
            var wholeChunks: ClosedRange<UInt64>? = nil
            for chunkIndex in geometry.chunkIndex(
                containing: cursor)...geometry.chunkIndex(containing: runEnd - 1)
            {
                let chunkStart = geometry.byteOffset(ofChunk: chunkIndex)
                let chunkEnd = min(chunkStart + geometry.chunkByteCount, byteCount)
                if cursor <= chunkStart && runEnd >= chunkEnd {
                    wholeChunks = (wholeChunks?.lowerBound ?? chunkIndex)...chunkIndex
                    continue
                }
                if let pending = wholeChunks {
                    try fillWholeChunks(fill, pending)
                    wholeChunks = nil
                }
                if skipPartialUnwritten { continue }
                guard let scratch else { preconditionFailure("copy-up needs a scratch buffer") }
                try copyUp(
                    chunkIndex, chunkStart: chunkStart, chunkEnd: chunkEnd, fill: fill,
                    coveredStart: max(chunkStart, cursor), coveredEnd: min(chunkEnd, runEnd),
                    scratch: scratch)
                markWritten(chunkIndex...chunkIndex)
            }
            if let pending = wholeChunks { try fillWholeChunks(fill, pending) }
            cursor = runEnd
        }
    }

    /// Writes or punches whole unwritten chunks, replacing anything an unflushed write left
    /// in their data region before a crash, then marks them written.
    private func fillWholeChunks(_ fill: Fill, _ chunks: ClosedRange<UInt64>) throws {
        let start = geometry.byteOffset(ofChunk: chunks.lowerBound)
        let end = min(geometry.byteOffset(ofChunk: chunks.upperBound + 1), byteCount)
        try fillStore(fill, from: start, to: end)
        markWritten(chunks)
    }

    /// Builds the chunk in `scratch` from the base plus the request, and writes it whole.
    private func copyUp(
        _ chunkIndex: UInt64, chunkStart: UInt64, chunkEnd: UInt64, fill: Fill,
        coveredStart: UInt64, coveredEnd: UInt64, scratch: ChunkScratch
    ) throws {
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
        try writeStore(at: chunkStart, from: UnsafeRawBufferPointer(chunk))
    }

    private func markWritten(_ chunks: ClosedRange<UInt64>) {
        store.bitmap.withLock { bitmap in
            for chunkIndex in chunks { bitmap.set(chunkIndex) }
        }
    }

    /// Puts `fill` into the store's data region for virtual bytes `start..<end`.
    private func fillStore(_ fill: Fill, from start: UInt64, to end: UInt64) throws {
        switch fill {
        case .data(let data, let requestByteOffset):
            try writeStore(
                at: start,
                from: UnsafeRawBufferPointer(
                    rebasing: data[Int(start - requestByteOffset)..<Int(end - requestByteOffset)]))
        case .zeros(let mayPunch):
            let storeByteOffset = store.header.dataByteOffset + start
            do {
                if mayPunch {
                    try store.io.punchHole(at: storeByteOffset, byteCount: end - start)
                } else {
                    try store.io.zeroRange(at: storeByteOffset, byteCount: end - start)
                }
            } catch {
                throw StoreError.io(
                    path: store.path, operation: mayPunch ? "punch hole" : "zero range",
                    byteOffset: storeByteOffset,
                    error)
            }
        }
    }

    private func writeStore(at virtualByteOffset: UInt64, from data: UnsafeRawBufferPointer) throws
    {
        let storeByteOffset = store.header.dataByteOffset + virtualByteOffset
        do {
            try store.io.write(at: storeByteOffset, from: data)
        } catch {
            throw StoreError.io(
                path: store.path, operation: "write", byteOffset: storeByteOffset, error)
        }
    }
}
