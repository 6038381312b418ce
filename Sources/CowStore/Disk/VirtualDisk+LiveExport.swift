// Copy-before-write for a live export-diff (docs/CONTROL.md, "Live export-diff"): at one
// instant behind the write barrier the export fixes the set of chunks it will read; from then
// on a change to a chunk of that set not yet read first copies the chunk's bytes to a scratch
// file, so the export reads every chunk as it was at that instant while clients keep writing.
// A chunk read, or copied, leaves the set: later writes to it pay nothing.

import CowFormat
import CowSupport
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// The chunks a live export still has to read, and the copies writes made of them first.
/// `@unchecked Sendable`: `pending` and `saved` are guarded by their `Locked`; the scratch
/// file's regions are each written once, before they are published in `saved`, and read after.
final class ExportFreeze: @unchecked Sendable {
    /// The chunks the export reads, fixed at its instant (never changed afterwards).
    let exportSet: ChunkBitmap
    private let pending: Locked<ChunkBitmap>
    /// Chunk → byte offset of its copy in `scratch`.
    private let saved = Locked<[UInt64: UInt64]>([:])
    private let nextScratchByteOffset = Locked<UInt64>(0)
    private let scratch: FileDescriptor
    /// Held by a write while it copies a chunk, and by the export while it reads one.
    private let locks = StripedLocks()
    let geometry: ChunkGeometry
    let diskByteCount: UInt64
    let scratchFolder: FilePath

    init(exportSet: ChunkBitmap, geometry: ChunkGeometry, diskByteCount: UInt64, folder: FilePath)
        throws
    {
        self.exportSet = exportSet
        let pendingSet = ChunkBitmap(chunkCount: exportSet.chunkCount)
        pendingSet.formUnion(exportSet.allocatedPages())
        pending = Locked(pendingSet)
        self.geometry = geometry
        self.diskByteCount = diskByteCount
        scratchFolder = folder
        // Unnamed, in the store's folder: gone with the process, whatever happens.
        let descriptor = open(
            folder.string, AtomicFile.openTemporaryFileFlag | O_RDWR | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw StoreError.io(
                path: folder, operation: "open (O_TMPFILE, export-diff scratch)", byteOffset: 0,
                Errno(rawValue: errno))
        }
        scratch = FileDescriptor(rawValue: descriptor)
    }

    deinit { try? scratch.close() }

    /// Bytes the copies take (what writes during the export cost).
    var scratchByteCount: UInt64 { nextScratchByteOffset.withLock { $0 } }

    /// Before a change to `chunks` of `disk`: copies each chunk still to be read.
    func preserve(_ chunks: Range<UInt64>, of disk: VirtualDisk) throws {
        guard !chunks.isEmpty else { return }
        try locks.withLocks(chunks: chunks.lowerBound...(chunks.upperBound - 1)) {
            var buffer: UnsafeMutableRawBufferPointer?
            defer { buffer?.deallocate() }
            for chunkIndex in chunks where pending.withLock({ $0.isSet(chunkIndex) }) {
                let start = geometry.byteOffset(ofChunk: chunkIndex)
                let count = Int(min(geometry.chunkByteCount, diskByteCount - start))
                let chunk =
                    buffer
                    ?? .allocate(byteCount: Int(geometry.chunkByteCount), alignment: 4096)
                buffer = chunk
                let piece = UnsafeMutableRawBufferPointer(rebasing: chunk[..<count])
                try disk.read(at: start, into: piece)
                let byteOffset = nextScratchByteOffset.withLock { next in
                    defer { next += geometry.chunkByteCount }
                    return next
                }
                do {
                    try scratch.writeFully(at: byteOffset, from: UnsafeRawBufferPointer(piece))
                } catch let error as Errno {
                    throw StoreError.io(
                        path: scratchFolder, operation: "write (export-diff scratch)",
                        byteOffset: byteOffset, error)
                }
                saved.withLock { $0[chunkIndex] = byteOffset }
                _ = pending.withLock { $0.clear(chunkIndex..<(chunkIndex + 1)) }
            }
        }
    }

    /// The bytes of `chunks` as they were at the export's instant, into `buffer` (their
    /// length). Each chunk is read from its copy if a write made one, else from `disk`.
    func read(
        _ chunks: Range<UInt64>, of disk: VirtualDisk, into buffer: UnsafeMutableRawBufferPointer
    )
        throws
    {
        try locks.withLocks(chunks: chunks.lowerBound...(chunks.upperBound - 1)) {
            let start = geometry.byteOffset(ofChunk: chunks.lowerBound)
            try disk.read(at: start, into: buffer)
            for chunkIndex in chunks {
                guard let byteOffset = saved.withLock({ $0[chunkIndex] }) else { continue }
                let from = Int(geometry.byteOffset(ofChunk: chunkIndex) - start)
                let to = min(buffer.count, from + Int(geometry.chunkByteCount))
                let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[from..<to])
                do {
                    _ = try scratch.readUpToFully(at: byteOffset, into: piece)
                } catch let error as Errno {
                    throw StoreError.io(
                        path: scratchFolder, operation: "read (export-diff scratch)",
                        byteOffset: byteOffset, error)
                }
            }
            _ = pending.withLock { $0.clear(chunks) }
        }
    }
}

extension VirtualDisk {
    /// The export in progress on this disk, if any (at most one at a time).
    var exportFreeze: ExportFreeze? {
        guard hasExportFreeze.load(ordering: .acquiring) else { return nil }
        return exportFreezeSlot.withLock { $0 }
    }

    /// Behind the barrier: fixes what a live export reads (the chunks changed since the
    /// checkpoint in `slot`, or every chunk the store holds), records checkpoint
    /// `endCheckpointName` if given (at this same instant), and starts copy-before-write.
    /// `endExport` stops it.
    func beginExport(since slot: Int?, recordingCheckpointNamed endCheckpointName: String?)
        throws -> (freeze: ExportFreeze, endCheckpoint: Checkpoint?)
    {
        try writeBarrier.withChangesStopped {
            guard exportFreeze == nil else {
                throw StoreError.invalidArgument(
                    "\(store.path): an export-diff is running on it already; wait for it")
            }
            let exportSet = ChunkBitmap(chunkCount: store.header.chunkCount)
            if let slot {
                store.checkpoints.withLock { state in
                    if let bitmap = state.bitmaps[slot] {
                        exportSet.formUnion(bitmap.allocatedPages())
                    }
                }
            } else {
                store.bitmap.withLock { exportSet.formUnion($0.allocatedPages()) }
            }
            let freeze = try ExportFreeze(
                exportSet: exportSet, geometry: geometry, diskByteCount: byteCount,
                folder: AtomicFile.folder(of: store.path))
            var endCheckpoint: Checkpoint?
            if let endCheckpointName {
                let checkpoint = Checkpoint(
                    name: endCheckpointName, id: UInt64.random(in: 1...UInt64.max),
                    createdUnixSeconds: UInt64(max(0, time(nil))),
                    diskFingerprint: try fingerprint())
                try store.addCheckpoint(checkpoint)
                endCheckpoint = checkpoint
            }
            exportFreezeSlot.withLock { $0 = freeze }
            hasExportFreeze.store(true, ordering: .releasing)
            return (freeze, endCheckpoint)
        }
    }

    /// Stops copy-before-write; the scratch file goes with the freeze.
    func endExport() {
        hasExportFreeze.store(false, ordering: .releasing)
        exportFreezeSlot.withLock { $0 = nil }
    }
}
