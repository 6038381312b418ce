// One `compress` run, shared by its worker threads: each worker claims the next block, reads
// and compresses it in parallel with the others, then waits for its turn and appends it to the
// file, so blocks land in order and memory stays at a few blocks per worker.

import CowFormat
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// The shared state of a compression: which block is next to claim and to write, the totals,
/// and the first failure (which stops every worker).
///
/// `@unchecked Sendable`: the counters, totals and failure are guarded by `mutex`. The write
/// position and the entry batch are used only by the worker whose turn it is to write; the
/// turn passes under `mutex`, which orders one holder's writes before the next holder's.
final class CompressionJob: @unchecked Sendable {
    /// What has been written so far.
    struct Totals {
        var inputByteCount: UInt64 = 0
        var storedByteCount: UInt64 = 0
        var zeroBlockCount: UInt64 = 0
        var rawBlockCount: UInt64 = 0
    }

    /// A block ready to write: nothing (all zeros), or bytes in one of the worker's buffers.
    private enum EncodedBlock {
        case zero
        case stored(LZ4BlockEntry.Storage, UnsafeRawBufferPointer, checksum: UInt64)
    }

    /// Index entries gathered before one write: 4096 entries, 128 KiB.
    static let entriesPerBatch = 4096

    let source: any BlockSource
    let descriptor: FileDescriptor
    let destination: FilePath
    let geometry: LZ4BlockGeometry
    let level: CompressionLevel
    /// The shared dictionary (empty for none): written at the start of the data region; each
    /// worker's compressor keeps its own copy.
    let dictionary: UnsafeMutableRawBufferPointer
    let dictionaryChecksum: UInt64
    let blockCount: UInt64
    let layout: (indexByteOffset: UInt64, indexByteCount: UInt64, dataByteOffset: UInt64)

    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    /// Signalled when the turn to write moves on, or a worker fails.
    private let turnChanged: UnsafeMutablePointer<pthread_cond_t>
    /// Signalled when a worker exits.
    private let workerExited: UnsafeMutablePointer<pthread_cond_t>
    private var nextBlockToClaim: UInt64 = 0
    private var nextBlockToWrite: UInt64 = 0
    private var runningWorkerCount: Int
    private var failure: (any Error)?
    private var totals = Totals()

    private var writeByteOffset: UInt64
    private let entryBatch: UnsafeMutableRawBufferPointer
    private var batchFirstBlock: UInt64 = 0
    private var batchEntryCount = 0

    init(
        source: any BlockSource, descriptor: FileDescriptor, destination: FilePath,
        options: ImageCompressor.Options, dictionary: [UInt8], workerCount: Int
    ) {
        self.source = source
        self.descriptor = descriptor
        self.destination = destination
        geometry = options.geometry
        level = options.level
        blockCount = geometry.blockCount(covering: source.byteCount)
        layout = LZ4ImageHeader.layout(geometry: geometry, virtualByteCount: source.byteCount)
        self.dictionary = .allocate(byteCount: dictionary.count, alignment: 16)
        self.dictionary.copyMemory(from: dictionary.withUnsafeBytes { $0 })
        dictionaryChecksum =
            dictionary.isEmpty
            ? 0 : LZ4ImageHeader.dictionaryChecksum(of: UnsafeRawBufferPointer(self.dictionary))
        writeByteOffset = layout.dataByteOffset + UInt64(dictionary.count)
        runningWorkerCount = workerCount
        entryBatch = .allocate(
            byteCount: Self.entriesPerBatch * LZ4BlockEntry.byteCount, alignment: 4096)
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        turnChanged = .allocate(capacity: 1)
        pthread_cond_init(turnChanged, nil)
        workerExited = .allocate(capacity: 1)
        pthread_cond_init(workerExited, nil)
    }

    deinit {
        dictionary.deallocate()
        entryBatch.deallocate()
        for condition in [turnChanged, workerExited] {
            pthread_cond_destroy(condition)
            condition.deallocate()
        }
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    // MARK: Workers

    /// A worker's loop: claim, encode, wait for the turn, write; until no block is left or
    /// any worker failed.
    func runWorker() {
        let blockByteCount = Int(geometry.blockByteCount)
        let input = UnsafeMutableRawBufferPointer.allocate(
            byteCount: blockByteCount, alignment: 4096)
        let output = UnsafeMutableRawBufferPointer.allocate(
            byteCount: blockByteCount, alignment: 16)
        let compressor = LZ4Compressor(
            level: level, maxBlockByteCount: blockByteCount,
            dictionary: UnsafeRawBufferPointer(dictionary))
        defer {
            input.deallocate()
            output.deallocate()
            locked {
                runningWorkerCount -= 1
                pthread_cond_broadcast(workerExited)
            }
        }
        while let blockIndex = claimBlock() {
            do {
                let encoded = try encode(blockIndex, input, output, compressor)
                guard waitForTurn(blockIndex) else { return }
                try write(blockIndex, encoded)
            } catch {
                fail(error)
                return
            }
        }
    }

    private func claimBlock() -> UInt64? {
        locked {
            guard failure == nil, nextBlockToClaim < blockCount else { return nil }
            defer { nextBlockToClaim += 1 }
            return nextBlockToClaim
        }
    }

    /// Reads block `blockIndex` (unless the source says it is a hole) and encodes it: zero,
    /// LZ4 if that is smaller, else raw.
    private func encode(
        _ blockIndex: UInt64, _ input: UnsafeMutableRawBufferPointer,
        _ output: UnsafeMutableRawBufferPointer, _ compressor: LZ4Compressor
    ) throws -> EncodedBlock {
        let byteOffset = geometry.byteOffset(ofBlock: blockIndex)
        let blockByteCount = geometry.byteCount(
            ofBlock: blockIndex, virtualByteCount: source.byteCount)
        if let extent = try? source.extent(at: byteOffset, maxByteCount: UInt64(blockByteCount)),
            extent.isHole, extent.byteCount == UInt64(blockByteCount)
        {
            return .zero
        }
        let block = UnsafeMutableRawBufferPointer(rebasing: input[..<blockByteCount])
        try source.read(at: byteOffset, into: block)
        if isAllZero(UnsafeRawBufferPointer(block)) { return .zero }
        // One byte less than the block: LZ4 gives up as soon as it cannot save a byte.
        let capacity = UnsafeMutableRawBufferPointer(rebasing: output[..<(blockByteCount - 1)])
        if let compressedByteCount = compressor.compress(
            UnsafeRawBufferPointer(block), into: capacity)
        {
            let compressed = UnsafeRawBufferPointer(rebasing: output[..<compressedByteCount])
            return .stored(.lz4, compressed, checksum: LZ4BlockEntry.dataChecksum(of: compressed))
        }
        let raw = UnsafeRawBufferPointer(block)
        return .stored(.raw, raw, checksum: LZ4BlockEntry.dataChecksum(of: raw))
    }

    /// Waits until every block before `blockIndex` is written; false if a worker failed.
    private func waitForTurn(_ blockIndex: UInt64) -> Bool {
        locked {
            while nextBlockToWrite != blockIndex && failure == nil {
                pthread_cond_wait(turnChanged, mutex)
            }
            return failure == nil
        }
    }

    /// Appends the block's bytes and records its entry, then passes the turn on.
    /// Runs only on the thread whose turn it is.
    private func write(_ blockIndex: UInt64, _ encoded: EncodedBlock) throws {
        let entry: LZ4BlockEntry
        switch encoded {
        case .zero:
            entry = .zero
        case .stored(let storage, let bytes, let checksum):
            try writeFully(bytes, at: writeByteOffset)
            entry = LZ4BlockEntry(
                storage: storage, dataByteOffset: writeByteOffset,
                storedByteCount: UInt32(bytes.count), dataChecksum: checksum)
            writeByteOffset += UInt64(bytes.count)
        }
        try appendEntry(entry, blockIndex: blockIndex)
        let blockByteCount = geometry.byteCount(
            ofBlock: blockIndex, virtualByteCount: source.byteCount)
        locked {
            totals.inputByteCount += UInt64(blockByteCount)
            totals.storedByteCount += UInt64(entry.storedByteCount)
            if entry.storage == .zero { totals.zeroBlockCount += 1 }
            if entry.storage == .raw { totals.rawBlockCount += 1 }
            nextBlockToWrite += 1
            pthread_cond_broadcast(turnChanged)
        }
    }

    private func appendEntry(_ entry: LZ4BlockEntry, blockIndex: UInt64) throws {
        precondition(blockIndex == batchFirstBlock + UInt64(batchEntryCount), "entries in order")
        let start = batchEntryCount * LZ4BlockEntry.byteCount
        entry.encode(
            into: UnsafeMutableRawBufferPointer(
                rebasing: entryBatch[start..<(start + LZ4BlockEntry.byteCount)]),
            blockIndex: blockIndex)
        batchEntryCount += 1
        if batchEntryCount == Self.entriesPerBatch { try flushEntries() }
    }

    /// Writes the gathered entries to their place in the index.
    private func flushEntries() throws {
        let byteCount = batchEntryCount * LZ4BlockEntry.byteCount
        try writeFully(
            UnsafeRawBufferPointer(rebasing: entryBatch[..<byteCount]),
            at: layout.indexByteOffset + batchFirstBlock * UInt64(LZ4BlockEntry.byteCount))
        batchFirstBlock += UInt64(batchEntryCount)
        batchEntryCount = 0
    }

    private func fail(_ error: any Error) {
        locked {
            if failure == nil { failure = error }
            pthread_cond_broadcast(turnChanged)
        }
    }

    // MARK: The calling thread

    /// Waits for every worker to exit, calling `report` with the totals about every
    /// `intervalSeconds` meanwhile (on this thread).
    func waitForWorkers(intervalSeconds: Double, _ report: (Totals) -> Void) {
        pthread_mutex_lock(mutex)
        while runningWorkerCount > 0 {
            var deadline = timespec()
            clock_gettime(CLOCK_REALTIME, &deadline)
            let nanoseconds = Int(deadline.tv_nsec) + Int(intervalSeconds * 1e9)
            deadline.tv_sec += nanoseconds / 1_000_000_000
            deadline.tv_nsec = nanoseconds % 1_000_000_000
            let status = pthread_cond_timedwait(workerExited, mutex, &deadline)
            if status == ETIMEDOUT {
                let snapshot = totals
                pthread_mutex_unlock(mutex)
                report(snapshot)
                pthread_mutex_lock(mutex)
            }
        }
        pthread_mutex_unlock(mutex)
    }

    /// After every worker exited: rethrows the first failure, or writes the rest of the index,
    /// the footer and, last, the header. Returns the header and the totals.
    func finish(fingerprint: BaseFingerprint) throws -> (LZ4ImageHeader, Totals) {
        let (failure, totals) = locked {
            precondition(runningWorkerCount == 0, "finish runs after the workers")
            return (self.failure, self.totals)
        }
        if let failure { throw failure }
        precondition(nextBlockToWrite == blockCount, "every block written")
        if batchEntryCount > 0 { try flushEntries() }
        if dictionary.count > 0 {
            try writeFully(UnsafeRawBufferPointer(dictionary), at: layout.dataByteOffset)
        }
        let header: LZ4ImageHeader
        do {
            header = try LZ4ImageHeader(
                geometry: geometry, virtualByteCount: source.byteCount, fingerprint: fingerprint,
                compressionLevel: level.recordedLevel,
                fileByteCount: writeByteOffset + UInt64(LZ4ImageHeader.recordByteCount),
                dictionaryByteCount: UInt32(dictionary.count),
                dictionaryChecksum: dictionaryChecksum)
        } catch {
            throw StoreError.format(path: destination, error)
        }
        let record = header.encoded()
        try record.withUnsafeBytes { bytes in
            try writeFully(bytes, at: header.footerByteOffset)
            try writeFully(bytes, at: 0)
        }
        return (header, totals)
    }

    // MARK: Helpers

    private func writeFully(_ bytes: UnsafeRawBufferPointer, at byteOffset: UInt64) throws {
        do {
            try descriptor.writeFully(at: byteOffset, from: bytes)
        } catch {
            throw StoreError.io(
                path: destination, operation: "write", byteOffset: byteOffset, error)
        }
    }

    private func locked<Result>(_ body: () throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

/// Whether every byte is zero. The corresponding C function is `memcmp`: comparing the buffer
/// with itself shifted by one byte uses libc's vectorised loop.
func isAllZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
    guard let start = bytes.baseAddress, bytes.count > 0 else { return true }
    return bytes[0] == 0 && memcmp(start, start + 1, bytes.count - 1) == 0
}
