// Folding layers of a chain into one (`cowbd collapse`): a new frozen store that holds the union
// of the chunks of the N layers under a top (an upper layer's bytes win) over the layer under
// them, so the top reads the same disk through a chain N - 1 layers shorter. Built only from
// layers opened read-only, under a temporary name, then renamed into place; the top is never
// opened for writing here. Rebinding the top to the new layer is LayerFold+Rebind.swift's
// (offline) or the server's (live). docs/FORMAT.md, "Collapse", gives the steps.

import CowFormat
import CowSupport
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// One fold of the N layers under a top into one new layer.
///
/// Usage, offline or live (the layers it reads are never written by anyone while they are
/// some store's lower: their shared locks say so):
///
/// ```swift
/// let fold = try LayerFold(topPath: top, depth: 3, outputPath: nil, options: options)
/// defer { fold.close() }
/// let summary = try fold.build(rateLimitBytesPerSecond: 50 << 20, createdUnixSeconds: now) {
///     progress in print(progress.doneByteCount, progress.totalByteCount)
/// }
/// // summary.outputPath now holds a frozen store whose disk is the top's lower disk, with
/// // the same size and fingerprint the top records (summary.byteCount, .fingerprint): bind the
/// // top to it (offline: LayerFold.rebind).
/// ```
public final class LayerFold {
    /// How far a build has gone: virtual bytes of the folded layers' chunks read so far, of all.
    public struct Progress: Sendable {
        public var doneByteCount: UInt64
        public var totalByteCount: UInt64
    }

    /// What a fold will write (`plan`) or wrote (`build`).
    public struct Summary: Sendable {
        /// The new layer (absolute).
        public var outputPath: FilePath
        /// The layers folded, from the top's lower down (absolute paths as opened).
        public var foldedLayerPaths: [FilePath]
        /// The layer the new one is bound to: the one under the folded layers.
        public var lowerPath: FilePath
        /// The new layer's chunk size: the smallest of the folded layers'.
        public var chunkByteCount: UInt64
        /// The new layer's disk size: the top's lower disk's, as the top records it.
        public var byteCount: UInt64
        /// The new layer's disk fingerprint: the one the top records for its lower.
        public var fingerprint: BaseFingerprint
        /// Virtual bytes held by at least one folded layer: what the new layer holds.
        public var foldedByteCount: UInt64
        /// Of those, bytes written as data (the rest read as zeros and stay holes).
        public var dataByteCount: UInt64
        /// True when the output already existed as this fold, made by an interrupted run: it
        /// was checked and kept, nothing was written.
        public var reusedExisting: Bool
    }

    /// The top whose lower layers are folded (only its header is read).
    public let topPath: FilePath
    /// How many layers under the top are folded: at least 2.
    public let depth: Int
    /// Where the new layer goes (absolute).
    public let outputPath: FilePath
    /// The folded layers, from the top's lower down.
    public let foldedLayerPaths: [FilePath]
    /// The layer under the folded ones.
    public let lowerPath: FilePath
    /// The top's lower disk (the first folded layer), opened read-only under a shared lock
    /// with its whole chain.
    let firstDisk: VirtualDisk
    /// The layer under the folded ones, as the last folded layer opened it.
    let lower: any BlockSource
    let geometry: ChunkGeometry
    /// The size and fingerprint the top records for its lower.
    let expectedByteCount: UInt64
    let expectedFingerprint: BaseFingerprint

    /// Largest piece read and written at once.
    static let pieceByteCount = 1 << 20

    /// Opens the chain under the store at `topPath` read-only (shared locks, as any upper
    /// opens its lowers; the top's own header is read without a lock, so this works while the
    /// top is served) and checks the fold can be made: the top has no merge under way, its lower
    /// is the disk it was made over, and `depth` (at least 2) stores lie under it. `outputPath`
    /// nil picks `defaultOutputPath`. Throws an error naming the layer at fault.
    public init(
        topPath: FilePath, depth: Int, outputPath: FilePath?, options: BaseOpenOptions = .quiet
    ) throws {
        guard depth >= 2 else {
            throw StoreError.invalidArgument(
                "\(topPath): --depth \(depth) folds nothing: give 2 or more layers to fold")
        }
        self.topPath = topPath
        self.depth = depth
        let top = try StoreFile(path: topPath, access: .unlockedRead, logger: options.logger)
        let topHeader = top.header
        top.close()
        if let merge = topHeader.merge {
            throw StoreError.mergeInProgress(path: topPath, target: merge.targetPath)
        }
        expectedByteCount = topHeader.baseByteCount
        expectedFingerprint = topHeader.baseFingerprint
        let first = try BaseLocator.openBase(
            for: topHeader, storePath: topPath, options: options)
        guard let firstImage = first as? VirtualDiskImage else {
            throw StoreError.invalidArgument(
                "\(topPath): its lower layer \(first.locationDescription) is a \(first.kindName) "
                    + "image, not a store: there are no layers to collapse")
        }
        try BaseLocator.verify(first, against: topHeader, storePath: topPath)
        var disks = [firstImage.disk]
        while disks.count < depth {
            guard let next = disks[disks.count - 1].base as? VirtualDiskImage else {
                firstImage.disk.close()
                throw StoreError.invalidArgument(
                    "\(topPath): --depth \(depth) is more than the stores under it "
                        + "(\(disks.count): "
                        + "\(disks.map(\.store.path.string).joined(separator: ", "))); nothing "
                        + "was written")
            }
            disks.append(next.disk)
        }
        firstDisk = firstImage.disk
        lower = disks[disks.count - 1].base
        foldedLayerPaths = disks.map { absolutePath($0.store.path.string) }
        lowerPath = absolutePath(lower.path.string)
        let smallestShift = disks.map(\.geometry.shift).min() ?? StoreChunk.defaultShift
        do { geometry = try ChunkGeometry(shift: smallestShift) } catch {
            firstDisk.close()
            throw StoreError.format(path: topPath, error)
        }
        self.outputPath = absolutePath(
            (outputPath
                ?? Self.defaultOutputPath(topPath: topPath, foldedLayerPaths: foldedLayerPaths))
                .string)
    }

    /// Releases the layers' locks (see `StoreFile.close`).
    public func close() { firstDisk.close() }

    /// The new layer's name when none is given: `FIRST+LAST.EXT` in the top's folder, FIRST and
    /// LAST the names (without extension) of the first and last folded layers, EXT the first's
    /// extension (`cow` if it has none). Folding `snap3.cow` down to `snap1.cow` under `vm.cow`
    /// makes `snap3+snap1.cow`.
    public static func defaultOutputPath(topPath: FilePath, foldedLayerPaths: [FilePath])
        -> FilePath
    {
        let first = foldedLayerPaths.first?.lastComponent
        let last = foldedLayerPaths.last?.lastComponent
        let name =
            "\(first?.stem ?? "layer")+\(last?.stem ?? "layer").\(first?.extension ?? "cow")"
        return absolutePath(topPath.string).removingLastComponent().appending(name)
    }

    /// What `build` would write, writing nothing.
    public func plan() throws -> Summary {
        var summary = emptySummary(reusedExisting: false)
        try forEachFoldedExtent { _, extent in
            summary.foldedByteCount += extent.byteCount
            if !extent.readsAsZeros { summary.dataByteCount += extent.byteCount }
        }
        return summary
    }

    /// Builds the new layer at `outputPath`: a store over the lower layer, frozen from its
    /// first byte, holding every chunk a folded layer holds with the bytes the top's lower disk
    /// reads there, written to a temporary beside it (`.NAME.cowbd-fold`), flushed (data before
    /// bits, as any store), checked (its fingerprint must be the one the top records), then
    /// linked into place (never replacing a file) and its folder fsynced.
    ///
    /// An output that already exists is kept (`reusedExisting`) only if it is this fold: a
    /// frozen store of the same size and fingerprint over the same lower file, as an interrupted
    /// run leaves it; else the build is refused. A temporary left by a killed run is removed and
    /// the build starts over; one that another process holds is refused.
    ///
    /// `rateLimitBytesPerSecond` (nil: none) bounds the folded bytes read per second, sleeping
    /// between 1 MiB pieces. `progress` runs after each piece; an error it throws stops the
    /// build (the temporary is removed) and is rethrown: a caller's way to cancel.
    public func build(
        rateLimitBytesPerSecond: UInt64? = nil, createdUnixSeconds: UInt64,
        progress: (Progress) throws -> Void = { _ in }
    ) throws -> Summary {
        let temporaryPath = Self.temporaryPath(for: outputPath)
        try removeStaleTemporary(temporaryPath)
        if try isExistingFold() { return emptySummary(reusedExisting: true) }
        let total = try plan().foldedByteCount
        try writeEmptyLayer(at: temporaryPath, createdUnixSeconds: createdUnixSeconds)
        var summary = emptySummary(reusedExisting: false)
        do {
            let store = try StoreFile(path: temporaryPath, access: .exclusiveWrite)
            let output = VirtualDisk(store: store, base: lower, logger: store.logger)
            defer { output.close() }
            var pacer = Pacer(bytesPerSecond: rateLimitBytesPerSecond)
            try copyFoldedExtents(into: output, summary: &summary) { pieceByteCount, done in
                pacer.wait(after: pieceByteCount)
                try progress(Progress(doneByteCount: done, totalByteCount: total))
            }
            try output.flush()
            let fingerprint = try output.fingerprint()
            guard fingerprint == expectedFingerprint, output.byteCount == expectedByteCount else {
                throw StoreError.invalidArgument(
                    "\(outputPath): the folded layer's disk (fingerprint \(fingerprint)) differs "
                        + "from \(foldedLayerPaths[0])'s (\(expectedFingerprint)); nothing was "
                        + "put in place")
            }
        } catch {
            _ = unlink(temporaryPath.string)
            throw error
        }
        try place(temporaryPath)
        return summary
    }

    private func emptySummary(reusedExisting: Bool) -> Summary {
        Summary(
            outputPath: outputPath, foldedLayerPaths: foldedLayerPaths, lowerPath: lowerPath,
            chunkByteCount: geometry.chunkByteCount, byteCount: expectedByteCount,
            fingerprint: expectedFingerprint, foldedByteCount: 0, dataByteCount: 0,
            reusedExisting: reusedExisting)
    }

    /// The temporary the new layer is built under, beside it.
    static func temporaryPath(for outputPath: FilePath) -> FilePath {
        AtomicFile.folder(of: outputPath).appending(
            ".\(outputPath.lastComponent?.string ?? "layer").cowbd-fold")
    }
}

/// Sleeps so that bytes go no faster than a rate, measured from the first call.
struct Pacer {
    let bytesPerSecond: UInt64?
    private var startSeconds: Double?
    private var byteCount: UInt64 = 0

    init(bytesPerSecond: UInt64?) { self.bytesPerSecond = bytesPerSecond }

    /// Counts `pieceByteCount` more bytes and sleeps until they are due.
    mutating func wait(after pieceByteCount: UInt64) {
        guard let bytesPerSecond, bytesPerSecond > 0 else { return }
        let now = monotonicSeconds()
        let start = startSeconds ?? now
        startSeconds = start
        byteCount += pieceByteCount
        let dueSeconds = start + Double(byteCount) / Double(bytesPerSecond)
        var remainingSeconds = dueSeconds - now
        while remainingSeconds > 0 {
            // At most a second per sleep: usleep takes less than 2^32 microseconds.
            usleep(useconds_t(min(1, remainingSeconds) * 1_000_000))
            remainingSeconds = dueSeconds - monotonicSeconds()
        }
    }
}
