// `cowbd snapshot COW LAYER`: freezes what COW holds into a read-only layer LAYER and leaves
// COW an empty store over it, with the store stopped. Every step leaves COW openable and
// reading the same bytes, and a rerun finishes what an interrupted one began
// (docs/FORMAT.md, "Snapshot"). The live snapshot of a served disk takes the same steps
// (StoreSnapshot+Live.swift).

import CowFormat
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// One snapshot of one stopped store.
public enum StoreSnapshot {
    /// The durable steps, in order; a test may stop the run after any of them.
    public enum Step: Sendable, CaseIterable {
        /// LAYER is a second name of COW's file, and the folder is synced.
        case linked
        /// The file's header carries the frozen bit.
        case frozen
        /// A new empty store over LAYER has replaced COW's name, and the folder is synced.
        case replaced
    }

    /// What a snapshot did.
    public struct Summary: Sendable {
        /// Chunks the new layer holds.
        public var layerChunkCount: UInt64
        /// True when an interrupted snapshot was found and finished.
        public var resumed: Bool
        /// True when the snapshot had been finished already: nothing was done.
        public var alreadyDone: Bool

        public init(layerChunkCount: UInt64, resumed: Bool, alreadyDone: Bool) {
            self.layerChunkCount = layerChunkCount
            self.resumed = resumed
            self.alreadyDone = alreadyDone
        }
    }

    /// Snapshots the store at `storePath` into a new layer at `layerPath` (same folder or at
    /// least the same filesystem). Refused while COW is open elsewhere (its exclusive lock), if
    /// LAYER exists and is not the file an interrupted snapshot linked, and if COW has a merge
    /// under way. Checkpoints stay with both: the layer keeps them as they are, and the new
    /// store starts with the same ones, each with the layer's bitmap (changes since NAME go on
    /// counting across the snapshot). `afterStep` runs after each durable step (tests).
    public static func run(
        storePath: FilePath, layerPath: FilePath, options: BaseOpenOptions = .quiet,
        createdUnixSeconds: UInt64, afterStep: (Step) throws -> Void = { _ in }
    ) throws -> Summary {
        let storeIdentity = try FileIdentity(of: storePath)
        let layerIdentity: FileIdentity?
        do { layerIdentity = try FileIdentity(of: layerPath) } catch StoreError.open(
            _, .noSuchFileOrDirectory)
        {
            layerIdentity = nil
        }
        if let layerIdentity, layerIdentity != storeIdentity {
            if try isFinished(
                storePath: storePath, layerPath: layerPath, layerIdentity: layerIdentity)
            {
                return Summary(layerChunkCount: 0, resumed: false, alreadyDone: true)
            }
            throw StoreError.exists(path: layerPath)
        }
        let isLinked = layerIdentity != nil
        let store = try StoreFile(
            path: storePath, access: .exclusiveWrite, logger: options.logger)
        defer { store.close() }
        try checkSnapshottable(store, isLinked: isLinked)
        let base = try BaseLocator.openBase(
            for: store.header, storePath: storePath, options: options)
        try BaseLocator.verify(base, against: store.header, storePath: storePath)
        // The new store goes over the frozen layer: one store more in the chain.
        let storeCount = 2 + ((base as? VirtualDiskImage)?.storeCount ?? 0)
        guard storeCount <= LayerChain.maxStoreCount else {
            throw ChainError.tooDeep(store: storePath, storeCount: storeCount)
        }
        let disk = VirtualDisk(store: store, base: base, logger: options.logger)
        let fingerprint = try disk.fingerprint()
        let layerChunkCount = store.writtenChunkCount

        // 1. A second name for the file: from now on LAYER holds what COW holds.
        if !isLinked { try linkLayer(storePath: storePath, layerPath: layerPath) }
        try afterStep(.linked)
        // 2. Frozen: no writer opens it again (an interrupted run leaves COW read-only, with
        // the same bytes, until it is run again). The checkpoint table is closed with it.
        try store.freezeForSnapshot()
        try afterStep(.frozen)
        // 3. An empty store over LAYER, written whole, renamed over COW.
        let topHeader = try emptyTopHeader(
            storePath: storePath, layerPath: layerPath, like: store.header,
            layerByteCount: disk.byteCount, fingerprint: fingerprint,
            createdUnixSeconds: createdUnixSeconds)
        let checkpoints = store.checkpointsForUpperStore()
        try AtomicFile.write(to: storePath, replacing: true) { descriptor in
            try StoreFile.writeEmptyStore(topHeader, checkpoints: checkpoints, into: descriptor)
        }
        try afterStep(.replaced)
        return Summary(layerChunkCount: layerChunkCount, resumed: isLinked, alreadyDone: false)
    }

    /// Refuses a store a snapshot must not touch. A frozen store is refused unless this run
    /// resumes one that linked it (LAYER already names it).
    private static func checkSnapshottable(_ store: StoreFile, isLinked: Bool) throws {
        if let merge = store.header.merge {
            throw StoreError.mergeInProgress(path: store.path, target: merge.targetPath)
        }
        if store.header.isFrozen && !isLinked { throw ChainError.frozen(store: store.path) }
    }

    /// Step 1: LAYER becomes a second name of COW's file, durably. A LAYER on another
    /// filesystem cannot be a hard link: that is said plainly.
    static func linkLayer(storePath: FilePath, layerPath: FilePath) throws {
        guard link(storePath.string, layerPath.string) == 0 else {
            let error = Errno(rawValue: errno)
            if error == .fileExists { throw StoreError.exists(path: layerPath) }
            if error == .improperLink {
                throw StoreError.invalidArgument(
                    "\(layerPath): not on the filesystem of \(storePath): a snapshot layer is a "
                        + "hard link of the store's file; put it beside the store")
            }
            throw StoreError.io(path: layerPath, operation: "link", byteOffset: 0, error)
        }
        try AtomicFile.syncFolder(AtomicFile.folder(of: layerPath), after: layerPath)
    }

    /// Whether COW is already the store over the frozen LAYER that a finished snapshot leaves
    /// (empty, or written since: a live snapshot's server goes on at once).
    private static func isFinished(
        storePath: FilePath, layerPath: FilePath, layerIdentity: FileIdentity
    ) throws -> Bool {
        guard let layer = try? StoreFile(path: layerPath, access: .unlockedRead) else {
            return false
        }
        let isFrozen = layer.header.isFrozen
        layer.close()
        guard isFrozen else { return false }
        let store = try StoreFile(path: storePath, access: .unlockedRead)
        defer { store.close() }
        for candidate in BaseLocator.candidatePaths(for: store.header, storePath: storePath) {
            if let identity = try? FileIdentity(of: FilePath(candidate)) {
                return identity == layerIdentity
            }
        }
        return false
    }

    /// The header of the empty store that goes at `path` over the layer at `layerPath`, with
    /// `model`'s chunk size and disk size.
    static func emptyTopHeader(
        storePath path: FilePath, layerPath: FilePath, like model: StoreHeader,
        layerByteCount: UInt64, fingerprint: BaseFingerprint, createdUnixSeconds: UInt64
    ) throws -> StoreHeader {
        let resolved = absolutePath(layerPath.string)
        // Beside COW: recorded by name, so the chain can be moved as a folder.
        let given =
            resolved.removingLastComponent() == absolutePath(path.string).removingLastComponent()
            ? (resolved.lastComponent?.string ?? resolved.string) : resolved.string
        do {
            return try StoreHeader(
                geometry: model.geometry, virtualByteCount: model.virtualByteCount,
                baseByteCount: layerByteCount, baseFingerprint: fingerprint,
                fingerprintScheme: BaseFingerprintPlan.scheme, basePathGiven: given,
                basePathResolved: resolved.string, createdUnixSeconds: createdUnixSeconds)
        } catch {
            throw StoreError.format(path: path, error)
        }
    }
}
