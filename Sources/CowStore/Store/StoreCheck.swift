// Verifies a store piece by piece (header, bitmap, file size, leaked data, base) and reports
// every finding instead of stopping at the first; with repair, fixes what is safe to fix.
// Opens the file itself rather than through StoreFile, whose init stops at the first error.

import CowFormat
import SystemPackage

/// Consistency check and repair of a store file (`cowbd check`).
public enum StoreCheck {
    /// Checks the store at `path`.
    ///
    /// Without `repair` the file is opened read-only under a shared lock (like
    /// `StoreFile.Access.sharedRead`) and nothing is changed. With `repair` it is opened
    /// read-write under the exclusive lock; leaked data is punched, bitmap bits past the last
    /// chunk are cleared, the file size is fixed where that loses no written data, and the file
    /// is synced before return. A damaged header or a changed base is left alone.
    ///
    /// Throws `StoreError` when the file cannot be checked at all: missing or unreadable, in use
    /// by another cowbd, not a store, shorter than its data region, or of a format this build
    /// does not read. Everything else is a finding in the report.
    public static func run(storePath path: FilePath, repair: Bool) throws -> StoreCheckReport {
        try Checker(path: path, repair: repair).run()
    }
}

/// One check of one store; holds the descriptor (and its lock) for the duration.
private final class Checker {
    let path: FilePath
    let repair: Bool
    /// Opened, locked and closed here; read and written only through `file`.
    let descriptor: FileDescriptor
    let file: any StoreIO
    var report: StoreCheckReport
    /// Whether a repair wrote anything, so the file must be synced.
    var changedFile = false

    init(path: FilePath, repair: Bool) throws {
        self.path = path
        self.repair = repair
        report = StoreCheckReport(path: path)
        descriptor = try FileDescriptor.openClosingOnExec(path, repair ? .readWrite : .readOnly)
        // Shared without repair: a server (exclusive) makes check fail rather than read a
        // bitmap that is changing underneath it. Exclusive with repair: nobody else may write.
        let locked: Bool
        do {
            locked = try descriptor.tryLock(exclusive: repair)
        } catch {
            try? descriptor.close()
            throw StoreError.io(path: path, operation: "flock", byteOffset: 0, error)
        }
        guard locked else {
            try? descriptor.close()
            throw StoreError.inUse(path: path)
        }
        file = FileStoreIO(descriptor)
    }

    deinit { try? descriptor.close() }

    func run() throws -> StoreCheckReport {
        report.checkedAreas.append(.header)
        guard var header = try checkHeader() else { return report }
        report.header = header
        let fileByteCount = try io("fstat") { try file.byteCount() }
        // Shorter than its data region: the bitmap cannot be read, so there is no store to check.
        try StoreFile.checkReachesDataRegion(header, fileByteCount: fileByteCount, path: path)
        report.checkedAreas.append(.bitmap)
        let bitmap = try checkBitmap(header)
        report.writtenChunkCount = bitmap.setCount
        if header.hasHydration {
            // Hydrated chunks hold data the chunk bitmap does not point at: it is not leaked.
            let hydrated = try StoreFile.readBitmap(
                file, header: header, regionByteOffset: header.hydrationBitmapByteOffset,
                path: path)
            bitmap.formUnion(hydrated.allocatedPages())
        }
        let baseChunkCount = header.geometry.chunkCount(covering: header.baseByteCount)
        let isSelfContained =
            header.hasHydration
            && (baseChunkCount == 0
                || bitmap.run(from: 0, limit: baseChunkCount) == (true, baseChunkCount))
        report.checkedAreas.append(.checkpoints)
        header = try checkCheckpoints(header)
        report.checkedAreas.append(.fileSize)
        try checkFileSize(header, fileByteCount: fileByteCount, bitmap: bitmap)
        report.checkedAreas.append(.leakedData)
        try checkLeakedData(header, fileByteCount: fileByteCount, bitmap: bitmap)
        report.checkedAreas.append(.base)
        checkBase(header, isSelfContained: isSelfContained)
        if changedFile { try io("fsync") { try file.synchronizeAll() } }
        return report
    }

    // MARK: Header

    /// The parsed header, or nil after recording a damaged one. Throws when the file is not a
    /// store at all, or is one this build cannot read.
    private func checkHeader() throws -> StoreHeader? {
        var bytes = [UInt8](repeating: 0, count: StoreHeader.byteCount)
        let done = try io("read header") {
            try bytes.withUnsafeMutableBytes { buffer in
                try file.read(at: 0, into: buffer)
            }
        }
        do {
            return try StoreFile.parseHeader(bytes, readByteCount: done)
        } catch let error as FormatError {
            switch error {
            case .checksumMismatch, .invalidField:
                // The magic matched: a store whose header is damaged. No field can be trusted.
                report.add(
                    .header, .problem, "\(error)",
                    .impossible("the header cannot be rebuilt, and nothing after it can be checked")
                )
                return nil
            default:
                throw StoreError.format(path: path, error)
            }
        }
    }

    // MARK: Bitmap

    /// Loads the bitmap, reporting (and with repair, clearing) bits past the last chunk.
    private func checkBitmap(_ header: StoreHeader) throws -> ChunkBitmap {
        let bitmap = ChunkBitmap(chunkCount: header.chunkCount)
        var page = [UInt8](repeating: 0, count: ChunkBitmap.pageByteCount)
        var pageIndex = nextAllocatedPage(from: 0, header: header, pageCount: bitmap.pageCount)
        while let currentPage = pageIndex {
            let byteOffset =
                header.bitmapByteOffset + UInt64(currentPage * ChunkBitmap.pageByteCount)
            let done = try io("read bitmap", at: byteOffset) {
                try page.withUnsafeMutableBytes { buffer in
                    try file.read(at: byteOffset, into: buffer)
                }
            }
            guard done == page.count else {
                throw StoreError.shortRead(
                    path: path, byteOffset: byteOffset, expectedByteCount: page.count,
                    actualByteCount: done)
            }
            let strayBitCount = clearBitsPastLastChunk(
                &page, pageIndex: currentPage, chunkCount: header.chunkCount)
            if strayBitCount > 0 {
                try reportStrayBits(
                    strayBitCount, page: page, byteOffset: byteOffset, header: header)
            }
            do {
                try page.withUnsafeBytes { bytes in try bitmap.loadPage(currentPage, from: bytes) }
            } catch let error as FormatError {
                throw StoreError.format(path: path, error)
            }
            pageIndex = nextAllocatedPage(
                from: currentPage + 1, header: header, pageCount: bitmap.pageCount)
        }
        return bitmap
    }

    /// The first bitmap page at or after `pageIndex` holding data, skipping holes (unwritten
    /// pages are all clear); every page when the filesystem cannot tell; nil past the last.
    private func nextAllocatedPage(from pageIndex: Int, header: StoreHeader, pageCount: Int) -> Int?
    {
        guard pageIndex < pageCount else { return nil }
        let pageByteCount = UInt64(ChunkBitmap.pageByteCount)
        let regionEnd = header.bitmapByteOffset + UInt64(pageCount) * pageByteCount
        let found: UInt64?
        do {
            found = try file.nextData(
                from: header.bitmapByteOffset + UInt64(pageIndex) * pageByteCount)
        } catch {
            return pageIndex
        }
        guard let found, found < regionEnd else { return nil }
        return Int((found - header.bitmapByteOffset) / pageByteCount)
    }

    /// Clears the bits of `page` that lie past chunk `chunkCount - 1`; returns how many were set.
    private func clearBitsPastLastChunk(_ page: inout [UInt8], pageIndex: Int, chunkCount: UInt64)
        -> Int
    {
        let firstChunk = UInt64(pageIndex) * ChunkBitmap.chunksPerPage
        guard chunkCount - firstChunk < ChunkBitmap.chunksPerPage else { return 0 }
        let validBitCount = Int(chunkCount - firstChunk)
        var strayBitCount = 0
        for byteIndex in (validBitCount / 8)..<page.count {
            let validBitsInByte = max(0, validBitCount - byteIndex * 8)
            let validMask: UInt8 = validBitsInByte >= 8 ? 0xFF : UInt8((1 << validBitsInByte) - 1)
            strayBitCount += (page[byteIndex] & ~validMask).nonzeroBitCount
            page[byteIndex] &= validMask
        }
        return strayBitCount
    }

    private func reportStrayBits(
        _ count: Int, page: [UInt8], byteOffset: UInt64, header: StoreHeader
    ) throws {
        let bits = count == 1 ? "1 bit" : "\(count) bits"
        let message =
            "\(bits) set past the last chunk (the disk has \(header.chunkCount) chunks); "
            + "serve and info refuse the store"
        guard repair else {
            report.add(.bitmap, .problem, message, .available("clear the stray bits"))
            return
        }
        // Bits past the end address no data: clearing them cannot change what the disk reads.
        try io("write bitmap", at: byteOffset) {
            try page.withUnsafeBytes { bytes in
                try file.write(at: byteOffset, from: bytes)
            }
        }
        changedFile = true
        report.add(.bitmap, .problem, message, .done("cleared the stray bits"))
    }

    // MARK: File size

    // MARK: Checkpoints

    /// Reads the checkpoint table and bitmaps as a writer would. Damaged ones are dropped by a
    /// repair (the disk's data does not depend on them); returns the header as it now is.
    private func checkCheckpoints(_ header: StoreHeader) throws -> StoreHeader {
        guard header.hasCheckpoints else { return header }
        do {
            let state = try StoreFile.readCheckpoints(file, header: header, path: path)
            report.checkpointCount = state.table?.checkpoints.count ?? 0
            return header
        } catch let error as StoreError {
            guard case .format = error else { throw error }
            let message = "the checkpoint area is damaged: \(error)"
            guard repair else {
                report.add(
                    .checkpoints, .problem, message,
                    .available("delete every checkpoint (the disk's data is not affected)"))
                return header
            }
            var plain = header
            plain.setHasCheckpoints(false)
            let bytes = plain.encoded()
            try io("write header") {
                try bytes.withUnsafeBytes { try file.write(at: 0, from: $0) }
                try file.synchronizeData()
            }
            changedFile = true
            report.header = plain
            report.add(
                .checkpoints, .problem, message,
                .done("deleted every checkpoint (the next incremental diff needs a full one first)")
            )
            return plain
        }
    }

    // MARK: File size

    /// The file must be exactly `expectedFileByteCount` bytes (sparse): the end of the data
    /// region, or of the checkpoint area.
    private func checkFileSize(_ header: StoreHeader, fileByteCount: UInt64, bitmap: ChunkBitmap)
        throws
    {
        let expected = header.expectedFileByteCount
        guard fileByteCount != expected else { return }
        let message =
            "the file is \(fileByteCount) bytes; the format says \(expected) "
            + (header.hasCheckpoints
                ? "(the end of the checkpoint area)" : "(data offset + disk size)")
        if fileByteCount > expected && !header.hasCheckpoints {
            // A checkpoint area being made or removed when a crash came: nothing reads it.
            let note =
                "\(fileByteCount - expected) bytes past the end of the data region, left by an "
                + "interrupted checkpoint command; nothing reads them"
            guard repair else {
                report.add(
                    .fileSize, .note, note, .available("truncate the file to \(expected) bytes"))
                return
            }
            try io("ftruncate", at: expected) { try file.setByteCount(expected) }
            changedFile = true
            report.add(.fileSize, .note, note, .done("truncated the file to \(expected) bytes"))
            return
        }
        if fileByteCount > expected {
            // The bytes past the end belong to no chunk: nothing reads them.
            try fixFileSize(
                expected, message: message, offer: "truncate the file to \(expected) bytes",
                done: "truncated the file to \(expected) bytes")
            return
        }
        let firstMissingChunk = header.geometry.chunkIndex(
            containing: fileByteCount - header.dataByteOffset)
        let lostChunkCount = setBitCount(bitmap, from: firstMissingChunk)
        guard lostChunkCount == 0 else {
            // Extending would turn their lost data into zeros: wrong bytes instead of a read error.
            report.add(
                .fileSize, .problem,
                message + "; \(lostChunkCount) written chunks from chunk \(firstMissingChunk) on "
                    + "lie past the end",
                .impossible("their data is lost; restore the store from a backup"))
            return
        }
        // No written chunk lies past the end: the missing tail is unwritten space, a hole.
        try fixFileSize(
            expected, message: message, offer: "extend the file to \(expected) bytes (a hole)",
            done: "extended the file to \(expected) bytes (a hole)")
    }

    private func fixFileSize(_ expected: UInt64, message: String, offer: String, done: String)
        throws
    {
        guard repair else {
            report.add(.fileSize, .problem, message, .available(offer))
            return
        }
        try io("ftruncate", at: expected) { try file.setByteCount(expected) }
        changedFile = true
        report.add(.fileSize, .problem, message, .done(done))
    }

    private func setBitCount(_ bitmap: ChunkBitmap, from chunkIndex: UInt64) -> UInt64 {
        var count: UInt64 = 0
        var cursor = chunkIndex
        while cursor < bitmap.chunkCount {
            let run = bitmap.run(from: cursor, limit: bitmap.chunkCount - cursor)
            if run.isSet { count += run.chunkCount }
            cursor += run.chunkCount
        }
        return count
    }

    // MARK: Leaked data

    /// Finds data allocated in chunks whose bit is clear: writes a crash kept from being
    /// flushed. Harmless (those chunks read from the base, and their next first write rewrites
    /// the whole chunk), so a note; repair punches it to free the space.
    private func checkLeakedData(_ header: StoreHeader, fileByteCount: UInt64, bitmap: ChunkBitmap)
        throws
    {
        let regionStart = header.dataByteOffset
        let regionEnd = min(fileByteCount, header.dataByteOffset + header.virtualByteCount)
        var cursor = regionStart
        var lastCountedChunk: UInt64? = nil
        while cursor < regionEnd {
            let found: UInt64?
            do {
                found = try file.nextData(from: cursor)
            } catch {
                report.add(
                    .leakedData, .note,
                    "cannot look for leaked data: lseek(SEEK_DATA) failed: \(error)",
                    .impossible("the filesystem does not report holes"))
                return
            }
            guard let dataStart = found, dataStart < regionEnd else { break }
            let holeStart = try io("lseek(SEEK_HOLE)", at: dataStart) {
                try file.nextHole(from: dataStart)
            }
            let dataEnd = min(regionEnd, holeStart)
            try collectLeaks(
                in: (dataStart - regionStart)..<(dataEnd - regionStart), header: header,
                bitmap: bitmap,
                lastCountedChunk: &lastCountedChunk)
            cursor = dataEnd
        }
        guard report.leakedChunkCount > 0 else { return }
        let chunks = report.leakedChunkCount == 1 ? "1 chunk" : "\(report.leakedChunkCount) chunks"
        let message =
            "\(chunks) hold \(ByteSize.describe(report.leakedByteCount)) of leaked data (written "
            + "before a crash, never flushed); harmless: they still read from the base"
        report.add(
            .leakedData, .note, message,
            repair
                ? .done("punched it, freeing the space") : .available("punch it, freeing the space")
        )
    }

    /// Counts (and with repair, punches) the allocated virtual bytes `range` that fall in
    /// chunks whose bit is clear.
    private func collectLeaks(
        in range: Range<UInt64>, header: StoreHeader, bitmap: ChunkBitmap,
        lastCountedChunk: inout UInt64?
    ) throws {
        let geometry = header.geometry
        let lastChunk = geometry.chunkIndex(containing: range.upperBound - 1)
        var cursor = range.lowerBound
        while cursor < range.upperBound {
            let chunkIndex = geometry.chunkIndex(containing: cursor)
            let run = bitmap.run(from: chunkIndex, limit: lastChunk - chunkIndex + 1)
            let runEnd = min(
                range.upperBound, geometry.byteOffset(ofChunk: chunkIndex + run.chunkCount))
            if !run.isSet {
                report.leakedByteCount += runEnd - cursor
                // Two allocated stretches can share a chunk: count each chunk once.
                let firstUncounted = lastCountedChunk.map { max($0 + 1, chunkIndex) } ?? chunkIndex
                let lastInRun = geometry.chunkIndex(containing: runEnd - 1)
                if lastInRun >= firstUncounted {
                    report.leakedChunkCount += lastInRun - firstUncounted + 1
                }
                lastCountedChunk = lastInRun
                if repair {
                    try punch(at: header.dataByteOffset + cursor, byteCount: runEnd - cursor)
                }
            }
            cursor = runEnd
        }
    }

    /// Safe at any time: the bytes lie in chunks whose bit is clear, which nothing reads.
    private func punch(at storeByteOffset: UInt64, byteCount: UInt64) throws {
        try io("punch hole", at: storeByteOffset) {
            try file.punchHole(at: storeByteOffset, byteCount: byteCount)
        }
        changedFile = true
    }

    // MARK: Base

    private func checkBase(_ header: StoreHeader, isSelfContained: Bool) {
        let status = BaseStatus(header: header, storePath: path)
        report.base = status
        switch status {
        case .ok:
            break
        case _ where isSelfContained:
            report.add(
                .base, .note,
                "base image \(status.summary); not needed: the store holds every base chunk",
                .impossible("none needed; put the base back only to merge into it"))
        case .changed(let image, let detail):
            report.add(
                .base, .problem,
                "base \(image.path) has changed since the store was created: \(detail)",
                .impossible(
                    "put the original base image back; the store's chunks only make sense over it"))
        case .missing(let tried):
            report.add(
                .base, .problem, "base image not found (tried \(tried.joined(separator: ", ")))",
                .impossible("put the original base image back at \(header.basePathResolved)"))
        case .unreadable(let reason):
            report.add(
                .base, .problem, "base image unreadable: \(reason)", .impossible("make it readable")
            )
        }
    }

    // MARK: Helpers

    /// Runs one syscall wrapper, naming the store and the operation if it fails.
    private func io<Result>(
        _ operation: String, at byteOffset: UInt64 = 0, _ call: () throws -> Result
    ) throws
        -> Result
    {
        do {
            return try call()
        } catch let errno as Errno {
            throw StoreError.io(path: path, operation: operation, byteOffset: byteOffset, errno)
        }
    }
}
