// The offline end of `cowbd collapse`: binds the top, stopped, to the folded layer that
// LayerFold built. One header rewrite; the top's disk is the same before and after, so its size
// and fingerprint stay and only the lower's paths change. A served top is rebound by its server.

import CowFormat
import SystemPackage

extension LayerFold {
    /// Binds the store at `topPath` to the layer at `layerPath` (a fold of its lower layers):
    /// under the top's exclusive lock (refused while it is served), after checking that the
    /// layer's disk has the size and fingerprint the top records for its lower. The header is
    /// rewritten once (one 4 KiB write and `fdatasync`, docs/FORMAT.md "Collapse"): before it
    /// the top reads through the old layers, after it through the new one, the same bytes either
    /// way. Returns false, writing nothing, if the top is already bound to that file.
    public static func rebind(
        topPath: FilePath, to layerPath: FilePath, options: BaseOpenOptions = .quiet
    ) throws -> Bool {
        let top = try StoreFile(path: topPath, access: .exclusiveWrite, logger: options.logger)
        defer { top.close() }
        let header = top.header
        if let merge = header.merge {
            throw StoreError.mergeInProgress(path: topPath, target: merge.targetPath)
        }
        let layerIdentity = try FileIdentity(of: layerPath)
        let current = BaseLocator.candidatePaths(for: header, storePath: topPath).lazy
            .compactMap { try? FileIdentity(of: FilePath($0)) }.first
        if current == layerIdentity { return false }
        var layerOptions = options
        layerOptions.layersAbove = [
            LayerAbove(path: topPath, identity: try FileIdentity(of: topPath))
        ]
        let layer = try BaseLocator.openImage(at: layerPath, options: layerOptions)
        try BaseLocator.verify(layer, against: header, storePath: topPath)
        let resolved = absolutePath(layerPath.string)
        // Beside the top: recorded by name, so the chain can be moved as a folder.
        let given =
            resolved.removingLastComponent()
                == absolutePath(topPath.string).removingLastComponent()
            ? (resolved.lastComponent?.string ?? resolved.string) : resolved.string
        try top.rebindBase(basePathGiven: given, basePathResolved: resolved.string)
        return true
    }
}
