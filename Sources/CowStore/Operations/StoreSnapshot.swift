// `cowbd snapshot COW LAYER`: freezes what COW holds into a read-only layer LAYER and leaves
// COW an empty store over it, with the store stopped. Every step leaves COW openable and
// reading the same bytes, and a rerun finishes what an interrupted one began
// (docs/FORMAT.md, "Snapshot"). Live snapshots (while serving) are not this file's.

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
    }

    /// Snapshots the store at `storePath` into a new layer at `layerPath` (same folder or at
    /// least the same filesystem). Refused while COW is open elsewhere (its exclusive lock), if
    /// LAYER exists and is not the file an interrupted snapshot linked, and if COW has
    /// checkpoints or a merge under way. `afterStep` runs after each durable step (tests).
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
            if try isFinished(storePath: storePath, layerIdentity: layerIdentity) {
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
        if !isLinked {
            guard link(storePath.string, layerPath.string) == 0 else {
                let error = Errno(rawValue: errno)
                if error == .fileExists { throw StoreError.exists(path: layerPath) }
                throw StoreError.io(path: layerPath, operation: "link", byteOffset: 0, error)
            }
            try AtomicFile.syncFolder(AtomicFile.folder(of: layerPath), after: layerPath)
        }
        try afterStep(.linked)
        // 2. Frozen: no writer opens it again (an interrupted run leaves COW read-only, with
        // the same bytes, until it is run again).
        if !store.header.isFrozen {
            var header = store.header
            header.setFrozen(true)
            try store.writeHeader(header)
        }
        try afterStep(.frozen)
        // 3. An empty store over LAYER, written whole, renamed over COW.
        try writeEmptyStore(
            at: storePath, over: layerPath, like: store.header, layerByteCount: disk.byteCount,
            fingerprint: fingerprint, createdUnixSeconds: createdUnixSeconds)
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
        let checkpointNames = store.checkpointTable?.checkpoints.map(\.checkpoint.name) ?? []
        guard checkpointNames.isEmpty else {
            throw StoreError.invalidArgument(
                "\(store.path): the store has checkpoints (\(checkpointNames.joined(separator: ", "))); "
                    + "they would stay with the frozen layer: delete them first "
                    + "(cowbd checkpoint \(store.path) NAME --delete)")
        }
    }

    /// Whether COW is already the empty store over LAYER that a finished snapshot leaves.
    private static func isFinished(storePath: FilePath, layerIdentity: FileIdentity) throws
        -> Bool
    {
        let store = try StoreFile(path: storePath, access: .unlockedRead)
        defer { store.close() }
        guard store.writtenChunkCount == 0 else { return false }
        for candidate in BaseLocator.candidatePaths(for: store.header, storePath: storePath) {
            if let identity = try? FileIdentity(of: FilePath(candidate)) {
                return identity == layerIdentity
            }
        }
        return false
    }

    /// Writes a new empty store at `path` (replacing what is there, atomically) with `model`'s
    /// chunk size and disk size, bound to the layer at `layerPath`.
    private static func writeEmptyStore(
        at path: FilePath, over layerPath: FilePath, like model: StoreHeader,
        layerByteCount: UInt64, fingerprint: BaseFingerprint, createdUnixSeconds: UInt64
    ) throws {
        let resolved = absolutePath(layerPath.string)
        // Beside COW: recorded by name, so the chain can be moved as a folder.
        let given =
            resolved.removingLastComponent() == absolutePath(path.string).removingLastComponent()
            ? (resolved.lastComponent?.string ?? resolved.string) : resolved.string
        let header: StoreHeader
        do {
            header = try StoreHeader(
                geometry: model.geometry, virtualByteCount: model.virtualByteCount,
                baseByteCount: layerByteCount, baseFingerprint: fingerprint,
                fingerprintScheme: BaseFingerprintPlan.scheme, basePathGiven: given,
                basePathResolved: resolved.string, createdUnixSeconds: createdUnixSeconds)
        } catch {
            throw StoreError.format(path: path, error)
        }
        try AtomicFile.write(to: path, replacing: true) { descriptor in
            try descriptor.setByteCount(header.dataByteOffset + header.virtualByteCount)
            let bytes = header.encoded()
            try bytes.withUnsafeBytes { try descriptor.writeFully(at: 0, from: $0) }
        }
    }
}
