// A COW store file: header, chunk bitmap and identity-mapped data region (docs/FORMAT.md).
// Owns the descriptor, the lock and the flush ordering; knows nothing of the base's bytes.

import CowFormat
import CowSupport
import Logging
import Synchronization
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// An open COW store.
public final class StoreFile: Sendable {
    /// How a store is opened.
    public enum Access: Sendable {
        /// Serving, merging, repairing: exclusive lock, writable.
        case exclusiveWrite
        /// Serving read-only: exclusive lock (nobody else writes meanwhile), read-only descriptor.
        case exclusiveRead
        /// `check`: a shared lock, so it fails while a writer holds the store.
        case sharedRead
        /// `info`: no lock; shows what is on disk now.
        case unlockedRead
    }

    public let path: FilePath
    public let header: StoreHeader
    public let isWritable: Bool
    /// Opened, locked and closed here; never read or written but through `io`.
    private let descriptor: FileDescriptor
    /// Every I/O on the file (StoreIO.swift).
    let io: any StoreIO
    /// Guards the in-memory bitmap. Never held across I/O.
    let bitmap: Locked<ChunkBitmap>
    /// The checkpoints' table and bitmaps (StoreFile+Checkpoints.swift). Never held across I/O;
    /// taken after `bitmap` when both are needed.
    let checkpoints: Locked<CheckpointState>
    /// The hydration bitmap, nil until the store has one (StoreFile+Hydration.swift). Never held
    /// across I/O; taken after `bitmap` when both are needed.
    let hydration: Locked<ChunkBitmap?>
    /// Whether `hydration` holds a bitmap: it goes from nil to a bitmap once and never back, so
    /// a read of a store that never hydrated a chunk skips that lock (StoreFile+Hydration.swift).
    let hasHydrationBitmap = Atomic<Bool>(false)
    /// Serialises flushes and table writes, so pages reach the disk in order.
    let flushLock = Locked<Void>(())
    /// The header as last written by a live rebind of the lower chain, nil before one
    /// (StoreFile+Rebind.swift). Read through `currentHeader`.
    let reboundHeader = Locked<StoreHeader?>(nil)
    /// Set by `close`, so the descriptor is closed exactly once.
    private let isClosed = Atomic<Bool>(false)
    /// Set for good by the first failed fsync or fdatasync (see `synchronize`).
    private let hasFailed = Atomic<Bool>(false)
    let logger: Logger

    /// Opens and validates an existing store. The base is not opened here.
    /// `wrappingIO` receives the file's `FileStoreIO` and returns what the store uses for every
    /// I/O from then on (the header read included): a recorder or a fault injector in tests.
    public init(
        path: FilePath, access: Access, logger: Logger = Logger(label: "cowbd.store"),
        wrappingIO wrap: (any StoreIO) -> any StoreIO = { $0 }
    ) throws {
        self.path = path
        self.logger = logger
        isWritable = access == .exclusiveWrite
        descriptor = try FileDescriptor.openClosingOnExec(path, isWritable ? .readWrite : .readOnly)
        let io = wrap(FileStoreIO(descriptor))
        self.io = io
        do {
            switch access {
            case .exclusiveWrite, .exclusiveRead:
                guard try descriptor.tryLock(exclusive: true) else {
                    throw StoreError.inUse(path: path)
                }
            case .sharedRead:
                guard try descriptor.tryLock(exclusive: false) else {
                    throw StoreError.inUse(path: path)
                }
            case .unlockedRead:
                break
            }
            header = try Self.readHeader(io, path: path)
            try Self.checkReachesDataRegion(header, fileByteCount: try io.byteCount(), path: path)
            bitmap = Locked(
                try Self.readBitmap(
                    io, header: header, regionByteOffset: header.bitmapByteOffset,
                    path: path))
            checkpoints = Locked(try Self.readCheckpoints(io, header: header, path: path))
            let hydrated = try Self.readHydration(io, header: header, path: path)
            hasHydrationBitmap.store(hydrated != nil, ordering: .releasing)
            hydration = Locked(hydrated)
        } catch {
            try? descriptor.close()
            if let errno = error as? Errno {
                throw StoreError.io(path: path, operation: "open", byteOffset: 0, errno)
            }
            throw error
        }
        if isWritable {
            do { try openCheckpointsForWriting() } catch {
                close()
                throw error
            }
        }
    }

    deinit { close() }

    /// Closes the file and releases its lock now, rather than whenever the last reference goes
    /// (which the optimizer may delay). Nothing may use the store afterwards.
    public func close() {
        guard !isClosed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        closeCheckpointsAfterWriting()
        try? descriptor.close()
    }

    /// Chunks held by the store.
    public var writtenChunkCount: UInt64 { bitmap.withLock { $0.setCount } }

    /// Whether chunk `chunkIndex` is held by the store.
    public func isWritten(_ chunkIndex: UInt64) -> Bool { bitmap.withLock { $0.isSet(chunkIndex) } }

    /// Bytes the file occupies on disk (its allocated blocks).
    public func allocatedByteCount() throws -> UInt64 {
        do { return try io.allocatedByteCount() } catch {
            throw StoreError.io(path: path, operation: "fstat", byteOffset: 0, error)
        }
    }

    /// Bytes of the data region actually allocated: what the writes cost on disk.
    public func allocatedDataByteCount() throws -> UInt64 {
        var total: UInt64 = 0
        var cursor = header.dataByteOffset
        let end = header.dataByteOffset + header.virtualByteCount
        do {
            while cursor < end, let dataStart = try io.nextData(from: cursor),
                dataStart < end
            {
                let holeStart = min(end, try io.nextHole(from: dataStart))
                total += holeStart - dataStart
                cursor = holeStart
            }
        } catch {
            throw StoreError.io(path: path, operation: "lseek", byteOffset: cursor, error)
        }
        return total
    }

    /// Whether an fsync or fdatasync of the store has failed. A failed store takes no more
    /// changes and no flush succeeds: the kernel reports a writeback error once and may have
    /// dropped the pages, so a later fsync that succeeds proves nothing ("fsyncgate"). Reads go
    /// on. Reopening the file finds the state of the last successful flush.
    public var isFailed: Bool { hasFailed.load(ordering: .acquiring) }

    /// The two syncs of the store file.
    enum SyncKind {
        /// `fdatasync`: data, and the metadata needed to read it.
        case data
        /// `fsync`: data and all metadata (hole punches, size).
        case all
    }

    /// Every fsync and fdatasync of the store goes through here: the first failure fails the
    /// store for good (`isFailed`) and is logged once.
    func synchronize(_ kind: SyncKind, _ operation: String) throws {
        do {
            switch kind {
            case .data: try io.synchronizeData()
            case .all: try io.synchronizeAll()
            }
        } catch {
            if !hasFailed.exchange(true, ordering: .acquiringAndReleasing) {
                logger.error(
                    "store failed: a sync of the file failed; it takes no more writes until reopened",
                    metadata: ["path": "\(path)", "operation": "\(operation)", "errno": "\(error)"])
            }
            throw StoreError.io(path: path, operation: operation, byteOffset: 0, error)
        }
    }

    /// Makes every acknowledged write durable, in the order docs/FORMAT.md ("Crash safety")
    /// explains: chunk data first, then the bitmap pages that point at it. Fails, changing
    /// nothing, on a failed store.
    public func flush() throws {
        precondition(isWritable, "flush on a read-only store")
        try flushLock.withLock { _ in
            guard !isFailed else { throw StoreError.failed(path: path) }
            let pages = takeDirtyPages()
            var done = 0
            do {
                // In batches, so a flush of many pages (scattered writes over a large disk) holds
                // a bounded copy of them; one batch for the usual flush.
                repeat {
                    let batch = pages[done..<min(pages.count, done + Self.flushBatchPageCount)]
                    // 1. Copy the pages now: every bit in the copy was set after its chunk's
                    //    data was written, so step 2 makes that data durable.
                    let words = copyPages(batch)
                    // 2. Data (and punched holes) durable.
                    try synchronize(.all, "fsync (data)")
                    // 3. Then the bits.
                    try writePages(batch, words)
                    done += batch.count
                } while done < pages.count
                guard !pages.isEmpty else { return }
                try synchronize(.data, "fdatasync (bitmap)")
            } catch {
                // A page write that failed (ENOSPC) is retried by the next flush; after a failed
                // sync there is no next flush.
                markDirty(pages)
                throw error
            }
        }
    }

    /// Bitmap pages a flush copies and writes at a time: 8 MiB.
    public static let flushBatchPageCount = 2048

    /// A bitmap page to write at a flush: of the chunk bitmap (`slot` nil), of a checkpoint's,
    /// or of the hydration bitmap (`isHydration`).
    private struct DirtyPage {
        var slot: Int?
        var isHydration = false
        var pageIndex: Int
        var byteOffset: UInt64
    }

    /// Takes the dirty pages of the chunk bitmap, then of every checkpoint's bitmap, by slot.
    private func takeDirtyPages() -> [DirtyPage] {
        let pageByteCount = UInt64(ChunkBitmap.pageByteCount)
        var pages = bitmap.withLock { $0.takeDirtyPages() }.map {
            DirtyPage(
                slot: nil, pageIndex: $0,
                byteOffset: header.bitmapByteOffset + UInt64($0) * pageByteCount)
        }
        let checkpointPages = checkpoints.withLock { state in
            state.bitmaps.sorted { $0.key < $1.key }.map { ($0.key, $0.value.takeDirtyPages()) }
        }
        for (slot, pageIndexes) in checkpointPages {
            let regionByteOffset = header.checkpointBitmapByteOffset(slot: slot)
            pages += pageIndexes.map {
                DirtyPage(
                    slot: slot, pageIndex: $0,
                    byteOffset: regionByteOffset + UInt64($0) * pageByteCount)
            }
        }
        pages += (hydration.withLock { $0?.takeDirtyPages() } ?? []).map {
            DirtyPage(
                slot: nil, isHydration: true, pageIndex: $0,
                byteOffset: header.hydrationBitmapByteOffset + UInt64($0) * pageByteCount)
        }
        return pages
    }

    /// The pages' current bytes, end to end, as little-endian words, each bitmap copied under
    /// its lock. A checkpoint's bit is set before its write's data is, so it may reach the disk
    /// first: a crash then shows a chunk as changed that is not, never the reverse.
    private func copyPages(_ pages: ArraySlice<DirtyPage>) -> [UInt64] {
        let wordsPerPage = ChunkBitmap.pageByteCount / 8
        var words: [UInt64] = []
        words.reserveCapacity(pages.count * wordsPerPage)
        let chunkPages = pages.filter { $0.slot == nil && !$0.isHydration }.map(\.pageIndex)
        words += bitmap.withLock { Self.copyPages(chunkPages, of: $0) }
        let slots = pages.compactMap(\.slot)
        for slot in Set(slots).sorted() {
            let pageIndexes = pages.filter { $0.slot == slot }.map(\.pageIndex)
            words += checkpoints.withLock { state in
                state.bitmaps[slot].map { Self.copyPages(pageIndexes, of: $0) }
                    ?? [UInt64](repeating: 0, count: pageIndexes.count * wordsPerPage)
            }
        }
        let hydrationPages = pages.filter(\.isHydration).map(\.pageIndex)
        if !hydrationPages.isEmpty {
            words += hydration.withLock { hydrated in
                hydrated.map { Self.copyPages(hydrationPages, of: $0) }
                    ?? [UInt64](repeating: 0, count: hydrationPages.count * wordsPerPage)
            }
        }
        return words
    }

    private func writePages(_ pages: ArraySlice<DirtyPage>, _ words: [UInt64]) throws {
        let pageByteCount = ChunkBitmap.pageByteCount
        try words.withUnsafeBytes { bytes in
            for (position, page) in pages.enumerated() {
                let pageBytes = UnsafeRawBufferPointer(
                    rebasing: bytes[(position * pageByteCount)..<((position + 1) * pageByteCount)])
                do {
                    try io.write(at: page.byteOffset, from: pageBytes)
                } catch let error as Errno {
                    throw StoreError.io(
                        path: path, operation: "write bitmap", byteOffset: page.byteOffset, error)
                }
            }
        }
    }

    /// After a failed flush: its pages must be written again by the next one.
    private func markDirty(_ pages: [DirtyPage]) {
        bitmap.withLock {
            $0.markDirty(pages.filter { $0.slot == nil && !$0.isHydration }.map(\.pageIndex))
        }
        hydration.withLock { $0?.markDirty(pages.filter(\.isHydration).map(\.pageIndex)) }
        checkpoints.withLock { state in
            for page in pages {
                if let slot = page.slot { state.bitmaps[slot]?.markDirty([page.pageIndex]) }
            }
        }
    }

    /// Pages in their on-disk form, end to end, as little-endian words.
    private static func copyPages(_ pageIndexes: [Int], of bitmap: ChunkBitmap) -> [UInt64] {
        let wordsPerPage = ChunkBitmap.pageByteCount / 8
        var words = [UInt64](repeating: 0, count: pageIndexes.count * wordsPerPage)
        words.withUnsafeMutableBytes { bytes in
            for (position, pageIndex) in pageIndexes.enumerated() {
                bitmap.copyPage(
                    pageIndex,
                    into: UnsafeMutableRawBufferPointer(
                        rebasing: bytes[
                            (position * ChunkBitmap.pageByteCount)..<((position + 1)
                                * ChunkBitmap.pageByteCount)]))
            }
        }
        return words
    }

    /// Writes `header` durably, its checkpoint and hydration feature bits as those areas are
    /// now. Returns the header written.
    @discardableResult
    func writeHeader(_ header: StoreHeader) throws -> StoreHeader {
        var header = header
        header.setHasCheckpoints(checkpoints.withLock { $0.table != nil })
        header.setHasHydration(hydration.withLock { $0 != nil })
        try writeHeaderBytes(header)
        return header
    }

    /// Writes exactly `header`, durably.
    func writeHeaderBytes(_ header: StoreHeader) throws {
        precondition(isWritable, "header write on a read-only store")
        try checkTakesChanges()
        do { try header.validate() } catch { throw StoreError.format(path: path, error) }
        let bytes = header.encoded()
        do {
            try bytes.withUnsafeBytes { try io.write(at: 0, from: $0) }
        } catch let error as Errno {
            throw StoreError.io(path: path, operation: "write header", byteOffset: 0, error)
        }
        try synchronize(.data, "fdatasync (header)")
    }

    /// Runs `call`, turning its error into a `StoreError` that names the file and operation.
    func io(_ operation: String, at byteOffset: UInt64 = 0, _ call: () throws(Errno) -> Void)
        throws
    {
        do { try call() } catch {
            throw StoreError.io(path: path, operation: operation, byteOffset: byteOffset, error)
        }
    }

    static func readHeader(_ io: any StoreIO, path: FilePath) throws -> StoreHeader {
        var bytes = [UInt8](repeating: 0, count: StoreHeader.byteCount)
        let done = try bytes.withUnsafeMutableBytes {
            try io.read(at: 0, into: $0)
        }
        do {
            return try parseHeader(bytes, readByteCount: done)
        } catch let error as FormatError {
            throw StoreError.format(path: path, error)
        }
    }

    /// Throws unless a store file of `fileByteCount` bytes reaches the data region `header`
    /// places: shorter, its bitmap cannot be read.
    static func checkReachesDataRegion(_ header: StoreHeader, fileByteCount: UInt64, path: FilePath)
        throws
    {
        guard fileByteCount >= header.dataByteOffset else {
            throw StoreError.format(
                path: path,
                .truncated(
                    expectedByteCount: Int(header.dataByteOffset),
                    actualByteCount: Int(fileByteCount)))
        }
    }

    /// The header in `bytes`, of which the first `readByteCount` were read from the start of a
    /// store file. Wrong first bytes say "not a store" better than a short length does, so the
    /// magic is checked first.
    /// Throws only `FormatError`.
    static func parseHeader(_ bytes: [UInt8], readByteCount: Int) throws -> StoreHeader {
        if readByteCount >= StoreHeader.magic.count && !bytes.starts(with: StoreHeader.magic) {
            throw FormatError.badMagic(expected: "cowbd store")
        }
        guard readByteCount == StoreHeader.byteCount else {
            throw FormatError.truncated(
                expectedByteCount: StoreHeader.byteCount, actualByteCount: readByteCount)
        }
        return try bytes.withUnsafeBytes { bytes throws(FormatError) in
            try StoreHeader(parsing: bytes)
        }
    }

    /// Reads the bitmap region, skipping its holes, so a large empty bitmap costs nothing.
    static func readBitmap(
        _ io: any StoreIO, header: StoreHeader, regionByteOffset: UInt64, path: FilePath
    ) throws -> ChunkBitmap {
        let bitmap = ChunkBitmap(chunkCount: header.chunkCount)
        let pageByteCount = UInt64(ChunkBitmap.pageByteCount)
        let regionEnd = regionByteOffset + UInt64(bitmap.pageCount) * pageByteCount
        let batchByteCount = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(
            byteCount: batchByteCount, alignment: 4096)
        defer { buffer.deallocate() }
        var cursor = regionByteOffset
        while cursor < regionEnd {
            // SEEK_DATA finds the written pages; where it is unsupported, read everything.
            let dataStart: UInt64
            do {
                guard let found = try io.nextData(from: cursor), found < regionEnd else {
                    break
                }
                dataStart = found
            } catch {
                dataStart = cursor
            }
            let pageStart = dataStart - (dataStart - regionByteOffset) % pageByteCount
            let dataEnd = min(regionEnd, (try? io.nextHole(from: dataStart)) ?? regionEnd)
            let batchEnd = min(dataEnd, pageStart + UInt64(batchByteCount))
            let batchByteCountRounded = Int(
                roundUp(batchEnd - pageStart, toMultipleOf: pageByteCount))
            let batch = UnsafeMutableRawBufferPointer(rebasing: buffer[..<batchByteCountRounded])
            let done = try io.read(at: pageStart, into: batch)
            guard done == batch.count else {
                throw StoreError.shortRead(
                    path: path, byteOffset: pageStart, expectedByteCount: batch.count,
                    actualByteCount: done)
            }
            for pageOffset in stride(from: 0, to: batch.count, by: Int(pageByteCount)) {
                let pageIndex =
                    Int((pageStart - regionByteOffset) / pageByteCount) + pageOffset
                    / Int(pageByteCount)
                do {
                    try bitmap.loadPage(
                        pageIndex,
                        from: UnsafeRawBufferPointer(
                            rebasing: batch[pageOffset..<(pageOffset + Int(pageByteCount))]))
                } catch {
                    throw StoreError.format(path: path, error)
                }
            }
            cursor = pageStart + UInt64(batchByteCountRounded)
        }
        return bitmap
    }
}
