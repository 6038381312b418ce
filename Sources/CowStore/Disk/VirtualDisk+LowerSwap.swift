// A served disk's lower chain replaced by an equivalent one (a live collapse's folded layer):
// proven equal by size and fingerprint, made durable in the store's header, then swapped under
// the requests in flight (docs/FORMAT.md, "Live collapse"). Building the layer is not this
// file's.

import CowFormat
import SystemPackage

extension VirtualDisk {
    /// The lower chain as a live collapse replaces it, or nil if this disk's lower is not a
    /// chain of stores opened swappable (`open(..., swappableLower: true)`).
    public var swappableLower: SwappableLower? { base as? SwappableLower }

    /// Makes the layer at `layerPath` this disk's lower chain, in this order: open it under a
    /// shared lock (refusing a cycle or a chain too deep); check its size and fingerprint are
    /// the ones the header records (it holds the same bytes as the chain it replaces); point
    /// the header at it (durable); swap. Reads already running finish on the old chain, whose
    /// files are closed when the last of them returns. The layer must be complete and durable
    /// before the call: from the header write on, a restart opens it.
    public func replaceLower(withLayerAt layerPath: FilePath, options: BaseOpenOptions) throws {
        guard let lower = swappableLower, store.isWritable else {
            throw StoreError.invalidArgument(
                "\(store.path): its lower chain cannot be replaced while served this way "
                    + "(not a chain of stores, or served --read-only)")
        }
        var options = options
        options.layersAbove = [
            LayerAbove(path: store.path, identity: try FileIdentity(of: store.path))
        ]
        let replacement = try BaseLocator.openImage(at: layerPath, options: options)
        try BaseLocator.verify(replacement, against: store.currentHeader, storePath: store.path)
        let resolved = absolutePath(layerPath.string)
        try store.rebindBase(
            basePathGiven: Self.recordedPath(of: resolved, from: store.path),
            basePathResolved: resolved.string)
        lower.swap(to: replacement)
    }

    /// How a store at `storePath` records a lower layer at `resolved`: by name alone when the
    /// two share a folder (a chain moved as a folder keeps working), else absolute.
    static func recordedPath(of resolved: FilePath, from storePath: FilePath) -> String {
        let storeFolder = absolutePath(storePath.string).removingLastComponent()
        guard resolved.removingLastComponent() == storeFolder, let name = resolved.lastComponent
        else { return resolved.string }
        return name.string
    }
}
