// The disk a client sees: chunks held by the store come from its data region, the rest from
// the read-only base, and the tail past the base reads as zeros. Byte offsets and lengths
// may have any alignment. Safe to call from many threads at once.

import CowFormat
import CowSupport
import Logging
import Synchronization
import SystemPackage

/// A copy-on-write view of a base image through a store.
public final class VirtualDisk: Sendable {
    public let store: StoreFile
    public let base: any BlockSource
    public let geometry: ChunkGeometry
    /// Size of the disk in bytes.
    public let byteCount: UInt64
    public var isReadOnly: Bool { !store.isWritable }
    let copyUpLocks = StripedLocks()
    /// Held shared by every change, exclusively by a live checkpoint (WriteBarrier.swift).
    let writeBarrier = WriteBarrier()
    /// Chunks copied up from the base since open, for `serve --metrics`.
    let copyUps = Atomic<UInt64>(0)
    /// Whether reads keep the base chunks they read in the store (VirtualDisk+CopyOnRead.swift).
    let copyOnRead = Atomic<Bool>(false)
    /// Set once a live snapshot froze this disk's store: changes go to `successor` from then on
    /// (StoreSnapshot+Live.swift).
    let isRetired = Atomic<Bool>(false)
    private let successorDisk = Locked<VirtualDisk?>(nil)
    /// Set while a live export-diff copies chunks before writes change them
    /// (VirtualDisk+LiveExport.swift).
    let hasExportFreeze = Atomic<Bool>(false)
    let exportFreezeSlot = Locked<ExportFreeze?>(nil)
    let logger: Logger

    /// Combines an open store with its (already verified) base.
    public init(store: StoreFile, base: any BlockSource, logger: Logger) {
        self.store = store
        self.base = base
        self.geometry = store.header.geometry
        self.byteCount = store.header.virtualByteCount
        self.logger = logger
    }

    /// Opens the store at `path`, finds its base (opened with `options`) and refuses a base
    /// that changed. The disk logs to `options.logger`. A frozen layer opens read-only only.
    /// With `swappableLower`, a lower chain of stores is held in a `SwappableLower`, so a live
    /// collapse can replace it (VirtualDisk+LowerSwap.swift).
    public static func open(
        storePath: FilePath, readOnly: Bool = false, options: BaseOpenOptions = .quiet,
        swappableLower: Bool = false
    ) throws -> VirtualDisk {
        try open(
            storePath: storePath, access: readOnly ? .exclusiveRead : .exclusiveWrite,
            options: options, swappableLower: swappableLower)
    }

    /// Opens the store at `path` with `access`, then its chain of lower layers.
    static func open(
        storePath: FilePath, access: StoreFile.Access, options: BaseOpenOptions,
        swappableLower: Bool = false
    ) throws -> VirtualDisk {
        let store = try StoreFile(path: storePath, access: access, logger: options.logger)
        do {
            if let merge = store.header.merge {
                throw StoreError.mergeInProgress(path: storePath, target: merge.targetPath)
            }
            if store.isWritable && store.header.isFrozen {
                throw ChainError.frozen(store: storePath)
            }
            let base = try openBase(of: store, storePath: storePath, options: options)
            let served = swappableLower && base is VirtualDiskImage ? SwappableLower(base) : base
            return VirtualDisk(store: store, base: served, logger: options.logger)
        } catch {
            store.close()
            throw error
        }
    }

    /// The fingerprint the disk's bytes would have as a base image.
    public func fingerprint() throws -> BaseFingerprint {
        try sampleFingerprint(byteCount: byteCount, read: read(at:into:))
    }

    /// Chunks built from the base plus a partial write since the disk was opened.
    public var copyUpCount: UInt64 { copyUps.load(ordering: .relaxed) }

    /// Closes the store and releases its lock (see `StoreFile.close`).
    public func close() { store.close() }

    /// A buffer one chunk long, for copy-up. Each thread that writes owns one.
    public func makeScratch() -> ChunkScratch {
        ChunkScratch(byteCount: Int(geometry.chunkByteCount))
    }

    // MARK: Read

    /// Fills `buffer` with the disk's bytes at `virtualByteOffset`.
    public func read(at virtualByteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer)
        throws
    {
        _ = try forEachRun(at: virtualByteOffset, in: buffer) { isWritten, runByteOffset, piece in
            if isWritten {
                try store.readBytes(at: runByteOffset, into: piece)
            } else {
                try readBase(at: runByteOffset, into: piece)
                if copyOnRead.load(ordering: .relaxed) {
                    keepBaseChunksRead(UnsafeRawBufferPointer(piece), at: runByteOffset)
                }
            }
            return true
        }
    }

    /// Fills `buffer` like `read`, but only if every byte is in memory already (page cache);
    /// returns false, having possibly filled part of `buffer`, if any part would wait on a device.
    /// Lets a server answer cached reads inline and send the rest to threads that may block.
    public func readIfCached(
        at virtualByteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer
    ) throws -> Bool {
        try forEachRun(at: virtualByteOffset, in: buffer) { isWritten, runByteOffset, piece in
            if isWritten { return store.readBytesIfCached(at: runByteOffset, into: piece) }
            // Keeping base chunks writes the store: that is a worker thread's job.
            guard !copyOnRead.load(ordering: .relaxed) else { return false }
            return fillFromBase(at: runByteOffset, into: piece, base.readIfReady(at:into:))
        }
    }

    /// For a read that needs only the base (no chunk of the range is in the store): starts
    /// fetching it and runs `then` once `read` of it no longer waits on the base, with the
    /// first error if a fetch failed (`BlockSource.whenFetched`). False, running nothing, if
    /// the read should go ahead at once (the store holds part of it, copy-on-read keeps what
    /// it reads, or the base has nothing to wait for). Never waits.
    public func whenBaseFetched(
        at virtualByteOffset: UInt64, byteCount: UInt64,
        _ then: @escaping @Sendable (StoreError?) -> Void
    ) -> Bool {
        guard !copyOnRead.load(ordering: .relaxed), byteCount > 0,
            virtualByteOffset < base.byteCount, byteCount <= self.byteCount - virtualByteOffset
        else { return false }
        let end = min(virtualByteOffset + byteCount, base.byteCount)
        let (isPresent, runEnd) = presentRun(from: virtualByteOffset, end: end)
        guard !isPresent, runEnd >= end else { return false }
        return base.whenFetched(at: virtualByteOffset, byteCount: end - virtualByteOffset, then)
    }

    /// True if reading, writing or zeroing the range needs nothing from the base: every chunk in
    /// it is in the store (written or hydrated) or lies past the base's end. A range outside
    /// the disk needs nothing either (it is refused before it reads). Never waits, but for the
    /// bitmap's lock: a server asks it to keep requests off threads a slow base may hold.
    public func needsNoBase(at virtualByteOffset: UInt64, byteCount: UInt64) -> Bool {
        guard virtualByteOffset < self.byteCount, byteCount <= self.byteCount - virtualByteOffset
        else { return true }
        let end = min(virtualByteOffset + byteCount, base.byteCount)
        var cursor = virtualByteOffset
        while cursor < end {
            let (isPresent, runEnd) = presentRun(from: cursor, end: end)
            guard isPresent else { return false }
            cursor = runEnd
        }
        return true
    }

    /// Splits `buffer` (the disk's bytes from `virtualByteOffset`) into runs of chunks the store
    /// holds and chunks it does not, and calls `fill` with each run's state, first byte and part
    /// of `buffer`, in order; stops and returns false as soon as `fill` does.
    @inline(__always)
    private func forEachRun(
        at virtualByteOffset: UInt64, in buffer: UnsafeMutableRawBufferPointer,
        _ fill: (
            _ isWritten: Bool, _ runByteOffset: UInt64, _ piece: UnsafeMutableRawBufferPointer
        ) throws -> Bool
    ) throws -> Bool {
        try checkRange(virtualByteOffset, UInt64(buffer.count))
        var cursor = virtualByteOffset
        let end = virtualByteOffset + UInt64(buffer.count)
        while cursor < end {
            let (isWritten, runEnd) = presentRun(from: cursor, end: end)
            let piece = UnsafeMutableRawBufferPointer(
                rebasing: buffer[Int(cursor - virtualByteOffset)..<Int(runEnd - virtualByteOffset)])
            guard try fill(isWritten, cursor, piece) else { return false }
            cursor = runEnd
        }
        return true
    }

    /// The chunk state at `virtualByteOffset` and where the run of that state ends (at most `end`).
    func run(from virtualByteOffset: UInt64, end: UInt64) -> (isWritten: Bool, end: UInt64) {
        let firstChunk = geometry.chunkIndex(containing: virtualByteOffset)
        let lastChunk = geometry.chunkIndex(containing: end - 1)
        let run = store.heldRun(from: firstChunk, limit: lastChunk - firstChunk + 1)
        return (run.isHeld, min(end, geometry.byteOffset(ofChunk: firstChunk + run.chunkCount)))
    }

    /// Base bytes, with zeros past the end of the base (a disk grown with --size).
    func readBase(at virtualByteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        _ = try fillFromBase(at: virtualByteOffset, into: buffer) { byteOffset, part in
            try base.read(at: byteOffset, into: part)
            return true
        }
    }

    /// Base bytes through `readPart` (a read, or a read only of what is cached), with zeros past
    /// the end of the base; false, having filled part of `buffer`, if `readPart` was.
    @inline(__always)
    private func fillFromBase(
        at virtualByteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer,
        _ readPart: (UInt64, UnsafeMutableRawBufferPointer) throws -> Bool
    ) rethrows -> Bool {
        let baseEnd = base.byteCount
        let inBase =
            virtualByteOffset >= baseEnd
            ? 0 : Int(min(UInt64(buffer.count), baseEnd - virtualByteOffset))
        if inBase > 0 {
            guard
                try readPart(
                    virtualByteOffset, UnsafeMutableRawBufferPointer(rebasing: buffer[..<inBase]))
            else { return false }
        }
        if inBase < buffer.count {
            UnsafeMutableRawBufferPointer(rebasing: buffer[inBase...]).initializeMemory(
                as: UInt8.self, repeating: 0)
        }
        return true
    }

    // MARK: Flush and cache

    /// Makes every completed write durable (NBD_CMD_FLUSH). A read-only disk has nothing to
    /// flush: it succeeds at once.
    public func flush() throws {
        guard !isReadOnly else { return }
        if let successor { return try successor.flush() }
        try store.flush()
    }

    /// The disk that takes this one's changes since a live snapshot froze it, if one did.
    var successor: VirtualDisk? {
        guard isRetired.load(ordering: .acquiring) else { return nil }
        return successorDisk.withLock { $0 }
    }

    /// Hands this disk's changes to `next` for good (a live snapshot, behind the barrier); nil
    /// when the new top could not be opened: changes are then refused (the store is frozen
    /// and has a store over it; the next open of COW finds the new top).
    func retire(to next: VirtualDisk?) {
        successorDisk.withLock { $0 = next }
        isRetired.store(true, ordering: .releasing)
    }

    /// Prefetches a range into the page cache (NBD_CMD_CACHE). Changes nothing.
    public func prefetch(at virtualByteOffset: UInt64, byteCount: UInt64) throws {
        try checkRange(virtualByteOffset, byteCount)
        let inBase =
            virtualByteOffset < base.byteCount
            ? min(byteCount, base.byteCount - virtualByteOffset) : 0
        if inBase > 0 { base.prefetch(at: virtualByteOffset, byteCount: inBase) }
        store.adviseWillNeed(at: virtualByteOffset, byteCount: byteCount)
    }

    func checkRange(_ virtualByteOffset: UInt64, _ count: UInt64) throws {
        guard virtualByteOffset <= byteCount, count <= byteCount - virtualByteOffset else {
            throw StoreError.outOfRange(
                byteOffset: virtualByteOffset, byteCount: count, diskByteCount: byteCount)
        }
    }
}

/// A chunk-sized buffer for copy-up, owned by one thread at a time.
/// `@unchecked Sendable`: handed between threads, never used by two at once (its owner's rule).
public final class ChunkScratch: @unchecked Sendable {
    let buffer: UnsafeMutableRawBufferPointer

    init(byteCount: Int) {
        buffer = .allocate(byteCount: byteCount, alignment: 4096)
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
    }

    deinit { buffer.deallocate() }
}
