// `snapshot` on the control channel (docs/CONTROL.md, "Live snapshot"): the served store
// freezes into LAYER and a new empty top takes the writes, with connections kept up.
// The steps are CowStore's (StoreSnapshot+Live.swift).

import CowStore
import NBDServer
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

extension ControlService {
    /// `{"layer": PATH}` (absolute: the client resolves it) → the layer's chunk count.
    func snapshot(_ request: ControlRequest) throws -> ControlJSON {
        let layer = try request.string("layer")
        guard layer.hasPrefix("/") else {
            throw ControlFailure("snapshot: \"layer\" must be an absolute path, not \(layer)")
        }
        try checkWritable(request.command)
        let summary = try server.liveDisk.snapshot(
            storePath: FilePath(storePath), layerPath: FilePath(layer),
            createdUnixSeconds: UInt64(clamping: time(nil)))
        return .object([
            ("store", .string(storePath)), ("layer", .string(layer)),
            ("layer_chunks", .integer(Int64(clamping: summary.layerChunkCount))),
            ("resumed", .bool(summary.resumed)), ("already_done", .bool(summary.alreadyDone)),
        ])
    }
}
