// The layers of a chain as `info` and `check` list them, top to bottom, read without locks
// and without verifying fingerprints: a broken chain is listed as far as it goes, with the
// problem where it stops. Opening a chain to read it is BaseLocator's, not this file's.

import CowFormat
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// One layer of a chain, as found on disk now.
public struct ChainLayer: Sendable {
    /// Where the layer was found (for a missing one, the first path tried).
    public var path: FilePath
    /// "cow" (a store), "raw", "cowbd-lz4", or "missing" / "unreadable" where the chain stops.
    public var kind: String
    /// The layer's size in bytes (a store's virtual size); nil when it could not be read.
    public var byteCount: UInt64?
    /// A store's chunk size, chunks written (as of its last flush) and frozen flag.
    public var chunkByteCount: UInt64?
    public var writtenChunkCount: UInt64?
    public var isFrozen = false
    /// Why the chain stops here, for a missing or unreadable layer.
    public var problem: String?

    public var isStore: Bool { kind == "cow" }
}

extension LayerChain {
    /// The layers from the store at `topStorePath` down to the bottom image (or to where the
    /// chain breaks), at most `maxStoreCount + 1` entries. Never throws: a layer that cannot be
    /// read ends the list with its problem.
    public static func list(topStorePath: FilePath) -> [ChainLayer] {
        var layers: [ChainLayer] = []
        var seen: Set<FileIdentity> = []
        var path = topStorePath
        while true {
            if let identity = try? FileIdentity(of: path), !seen.insert(identity).inserted {
                layers.append(.broken(path, "unreadable", "a cycle: this layer is above itself"))
                return layers
            }
            guard layers.count < maxStoreCount else {
                layers.append(
                    .broken(path, "unreadable", "deeper than \(maxStoreCount) stores"))
                return layers
            }
            let store: StoreFile
            do {
                store = try StoreFile(path: path, access: .unlockedRead)
            } catch {
                layers.append(.broken(path, "unreadable", "\(error)"))
                return layers
            }
            let header = store.header
            layers.append(
                ChainLayer(
                    path: path, kind: "cow", byteCount: header.virtualByteCount,
                    chunkByteCount: header.geometry.chunkByteCount,
                    writtenChunkCount: store.writtenChunkCount, isFrozen: header.isFrozen))
            store.close()
            let candidates = BaseLocator.candidatePaths(for: header, storePath: path)
            guard let found = candidates.first(where: { access($0, F_OK) == 0 }) else {
                layers.append(
                    .broken(
                        FilePath(candidates[0]), "missing",
                        "not found (tried \(candidates.joined(separator: ", ")))"))
                return layers
            }
            path = FilePath(found)
            do {
                if try BaseLocator.leadingBytes(of: path) == StoreHeader.magic { continue }
                var options = BaseOpenOptions.quiet
                options.lock = .none
                let image = try BaseLocator.openImage(at: path, options: options)
                layers.append(
                    ChainLayer(
                        path: path, kind: image.kindName, byteCount: image.byteCount,
                        isFrozen: false))
            } catch {
                layers.append(.broken(path, "unreadable", "\(error)"))
            }
            return layers
        }
    }

    /// Refuses to put a new store at `newStorePath` over `lower` when the chain would then hold
    /// more than `maxStoreCount` stores (`create`, `snapshot`).
    public static func checkRoom(over lower: any BlockSource, newStorePath: FilePath) throws {
        let storeCount = 1 + ((lower as? VirtualDiskImage)?.storeCount ?? 0)
        guard storeCount <= maxStoreCount else {
            throw ChainError.tooDeep(store: newStorePath, storeCount: storeCount)
        }
    }
}

extension ChainLayer {
    fileprivate static func broken(_ path: FilePath, _ kind: String, _ problem: String)
        -> ChainLayer
    {
        ChainLayer(path: path, kind: kind, isFrozen: false, problem: problem)
    }
}
