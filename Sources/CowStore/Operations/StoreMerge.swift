// `cowbd merge`: folds a store's changes into a raw image (a copy of the base, or the base
// itself), or flattens the virtual disk into a new image. The merge into a target is recorded in
// the store's header before the first byte is written, copies only chunks the store holds, and
// resets the store only once the target is durable: run again after any interruption, it
// finishes. docs/FORMAT.md ("Merge") gives the states.

import CowFormat
import Logging
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// One merge of one store.
public final class StoreMerge {
    /// Where the changes go.
    public enum Destination: Sendable {
        /// A raw image equal to the base; the store is then emptied and bound to it.
        case into(FilePath)
        /// The base itself (the one command that writes a base).
        case inPlace
        /// A new flattened raw image; base and store untouched.
        case output(FilePath, overwrite: Bool)
    }

    /// What a merge will write (`--dry-run`) or wrote.
    public struct Summary: Sendable {
        public var targetPath: String
        /// Chunks the store holds.
        public var chunkCount: UInt64
        /// Bytes of data copied (or to copy).
        public var dataByteCount: UInt64
        /// Bytes written as holes: trimmed or zeroed chunks, or zeros of the flattened image.
        public var holeByteCount: UInt64
        /// True when an interrupted merge was found and finished.
        public var resumed: Bool
        /// True when the merge had been done already (`--into` a target that is now the
        /// store's base, the store empty): nothing was written.
        public var alreadyDone = false
    }

    /// Largest piece copied at once.
    static let copyByteCount = 1 << 20

    let storePath: FilePath
    let destination: Destination
    let store: StoreFile
    let base: any BlockSource
    /// Where the merge's disks log.
    let logger: Logger
    /// The absolute path merged into.
    let targetPath: String
    /// In place over a lower store: that store's disk, open to write (StoreMerge+Lower.swift).
    let lowerDisk: VirtualDisk?

    /// Opens the store exclusively (a running server makes this fail) and its base; refuses a base
    /// that changed since create, and a destination that disagrees with an interrupted merge.
    /// The base is opened with `options`; in place, with an exclusive lock, as it is written.
    /// `wrappingIO` wraps the store's I/O (`StoreFile.init(path:access:wrappingIO:)`).
    public init(
        storePath: FilePath, destination: Destination, options: BaseOpenOptions = .quiet,
        wrappingIO: (any StoreIO) -> any StoreIO = { $0 }
    ) throws {
        self.storePath = storePath
        logger = options.logger
        self.destination = destination
        let writesStore: Bool
        if case .output = destination { writesStore = false } else { writesStore = true }
        store = try StoreFile(
            path: storePath, access: writesStore ? .exclusiveWrite : .exclusiveRead,
            wrappingIO: wrappingIO)
        let checkpointNames = store.checkpointTable?.checkpoints.map(\.checkpoint.name) ?? []
        if writesStore && !checkpointNames.isEmpty {
            throw StoreError.invalidArgument(
                "\(storePath): the store has checkpoints (\(checkpointNames.joined(separator: ", "))); "
                    + "a merge moves the chunks they track out of the store: delete them first "
                    + "(cowbd checkpoint \(storePath) NAME --delete)")
        }
        var baseOptions = options
        if case .inPlace = destination { baseOptions.lock = .exclusive }
        if case .inPlace = destination,
            let lower = try Self.openLowerStoreForWriting(
                under: store, storePath: storePath, options: options)
        {
            lowerDisk = lower
            base = VirtualDiskImage(disk: lower)
        } else {
            lowerDisk = nil
            base = try BaseLocator.openBase(
                for: store.header, storePath: storePath, options: baseOptions)
        }
        switch destination {
        case .into(let path), .output(let path, _): targetPath = absolutePath(path.string).string
        case .inPlace: targetPath = base.path.string
        }
        guard let record = store.header.merge else {
            try BaseLocator.verify(base, against: store.header, storePath: storePath)
            if let lowerDisk {
                try Self.checkLowerTakesTheDisk(lowerDisk, of: store, storePath: storePath)
                return
            }
            if case .inPlace = destination, base.kindName != "raw" {
                throw StoreError.invalidArgument(
                    "\(base.path): an in-place merge needs a writable raw base or a store, not a \(base.kindName) image"
                )
            }
            return
        }
        switch destination {
        case .into(let target)
        where !record.isInPlace && absolutePath(target.string).string == record.targetPath:
            try BaseLocator.verify(base, against: store.header, storePath: storePath)
        case .inPlace where record.isInPlace:
            // The base is part-merged: its fingerprint is neither the old nor the new one.
            break
        default:
            throw StoreError.invalidArgument(
                "\(storePath): an interrupted merge into \(record.targetPath) must be finished first "
                    + "(cowbd merge \(storePath) \(record.isInPlace ? "--in-place" : "--into \(record.targetPath)"))"
                    + " or taken back (cowbd merge \(storePath) --abort)"
            )
        }
    }

    /// Closes the store (and a lower store merged into) and releases their locks now, rather
    /// than whenever the last reference goes. Nothing may use the merge afterwards.
    public func close() {
        store.close()
        lowerDisk?.close()
    }

    /// What `run` would write, without writing anything.
    public func plan() throws -> Summary {
        if try isAlreadyDone() { return alreadyDoneSummary }
        let chunkCount = store.writtenChunkCount
        var summary = Summary(
            targetPath: targetPath, chunkCount: chunkCount, dataByteCount: 0, holeByteCount: 0,
            resumed: store.header.merge != nil)
        if case .output = destination {
            // The whole disk: data extents are written, zero extents stay holes.
            let disk = VirtualDisk(store: store, base: base, logger: logger)
            var cursor: UInt64 = 0
            while cursor < disk.byteCount {
                for extent in try disk.extents(
                    at: cursor, byteCount: disk.byteCount - cursor, maxExtentCount: 4096)
                {
                    if extent.readsAsZeros {
                        summary.holeByteCount += extent.byteCount
                    } else {
                        summary.dataByteCount += extent.byteCount
                    }
                    cursor += extent.byteCount
                }
            }
            return summary
        }
        // Only the chunks the store holds: their data, and the rest of them as holes.
        let heldByteCount = min(
            chunkCount * store.header.geometry.chunkByteCount, store.header.virtualByteCount)
        summary.dataByteCount = try store.allocatedDataByteCount()
        summary.holeByteCount = heldByteCount - min(heldByteCount, summary.dataByteCount)
        return summary
    }

    /// Runs the merge. `progress` gets (bytes done, bytes in all) now and then.
    public func run(progress: (UInt64, UInt64) -> Void = { _, _ in }) throws -> Summary {
        if case .output(let path, let overwrite) = destination {
            return try flatten(into: path, overwrite: overwrite, progress: progress)
        }
        if try isAlreadyDone() { return alreadyDoneSummary }
        if let lowerDisk { return try mergeIntoLowerStore(lowerDisk, progress: progress) }
        // Checked before the record is written: with the record, the store is not served.
        if store.header.merge == nil { try checkTargetBeforeRecording() }
        return try mergeIntoTarget(progress: progress)
    }
}
