// The snapshot of a served disk (docs/CONTROL.md, "Live snapshot"): the steps and rerun rules
// of the offline one (docs/FORMAT.md, "Snapshot"), with steps 2 and 3 taken behind the disk's
// write barrier, and the served disk object swapped for one over the new top in the same hold.
// Connections stay up: a request that holds the old disk finds its successor.

import CowFormat
import SystemPackage

extension StoreSnapshot {
    /// Snapshots the served `disk` (the store at `storePath`) into a new layer at `layerPath`.
    /// Every change acknowledged before the call is in LAYER, every change after it goes to the
    /// new top; changes in flight finish first and new ones wait (the pause is a flush, the
    /// sampled fingerprint, the new top written and renamed). `install` runs behind the
    /// barrier with the disk over the new top, which from then on is the one to use.
    /// Checkpoints carry over as offline. A failure before the rename changes nothing the
    /// client sees (a freeze is taken back); LAYER may remain as a second name of the store,
    /// which a rerun picks up.
    public static func runLive(
        disk: VirtualDisk, storePath: FilePath, layerPath: FilePath, createdUnixSeconds: UInt64,
        install: (VirtualDisk) -> Void
    ) throws -> Summary {
        let store = disk.store
        guard !disk.isReadOnly else {
            throw StoreError.invalidArgument("\(storePath): served --read-only: no snapshot")
        }
        guard !disk.isCopyingOnRead else {
            throw StoreError.invalidArgument(
                "\(storePath): served --copy-on-read (reads change the store): no live snapshot")
        }
        try store.checkTakesChanges()
        let storeCount = 2 + ((disk.base as? VirtualDiskImage)?.storeCount ?? 0)
        guard storeCount <= LayerChain.maxStoreCount else {
            throw ChainError.tooDeep(store: storePath, storeCount: storeCount)
        }
        let storeIdentity = try FileIdentity(of: storePath)
        guard store.identity == storeIdentity else {
            throw StoreError.invalidArgument(
                "\(storePath): no longer names the served store file (replaced meanwhile?)")
        }
        // 1. LAYER names the file; or it does already (a run that failed after linking).
        if let layerIdentity = try? FileIdentity(of: layerPath) {
            guard layerIdentity == storeIdentity else { throw StoreError.exists(path: layerPath) }
        } else {
            try linkLayer(storePath: storePath, layerPath: layerPath)
        }
        return try disk.writeBarrier.withChangesStopped {
            let fingerprint = try disk.fingerprint()
            let topHeader = try emptyTopHeader(
                storePath: storePath, layerPath: layerPath, like: store.header,
                layerByteCount: disk.byteCount, fingerprint: fingerprint,
                createdUnixSeconds: createdUnixSeconds)
            let checkpoints = store.checkpointsForUpperStore()
            let wasFrozen = store.header.isFrozen
            var isFrozen = false
            do {
                // 3 is prepared first; 2 (durable) comes before the rename that makes 3 visible.
                try AtomicFile.write(to: storePath, replacing: true) { descriptor in
                    try StoreFile.writeEmptyStore(
                        topHeader, checkpoints: checkpoints, into: descriptor)
                    try store.freezeForSnapshot()
                    isFrozen = true
                }
            } catch {
                // Renamed but the folder not synced: the new top is in place; go on with it.
                guard (try? FileIdentity(of: storePath)) == storeIdentity else {
                    return try swap(disk, storePath: storePath, install: install)
                }
                if isFrozen { try store.thawAfterFailedSnapshot(wasFrozen: wasFrozen) }
                throw error
            }
            return try swap(disk, storePath: storePath, install: install)
        }
    }

    /// Opens the new top at `storePath`, puts it over `disk` (now the frozen layer, read
    /// through the same descriptor, whose lock becomes shared) and installs it.
    private static func swap(
        _ disk: VirtualDisk, storePath: FilePath, install: (VirtualDisk) -> Void
    ) throws -> Summary {
        let top: StoreFile
        do {
            top = try StoreFile(path: storePath, access: .exclusiveWrite, logger: disk.logger)
        } catch {
            // COW is the new top on disk: the frozen store must take no more writes.
            disk.retire(to: nil)
            throw error
        }
        // Swappable, as `serve` opens a store over a store: a live collapse may fold LAYER.
        let next = VirtualDisk(
            store: top, base: SwappableLower(VirtualDiskImage(disk: disk)), logger: disk.logger)
        next.copyUps.store(disk.copyUpCount, ordering: .relaxed)
        disk.store.shareLock()
        disk.retire(to: next)
        install(next)
        return Summary(
            layerChunkCount: disk.store.writtenChunkCount, resumed: false, alreadyDone: false)
    }
}
