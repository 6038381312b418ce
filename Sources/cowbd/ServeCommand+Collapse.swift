// What a served store answers for a live collapse (docs/CONTROL.md): `collapse` starts one
// (CowStore's LiveCollapse), `collapse-status` and `info` show its progress, and the merges
// that are unsafe while served are refused with one line. The job itself is CowStore's.

import CowFormat
import CowStore
import NBDServer
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

extension ControlService {
    /// `collapse {"depth": N, "layer": PATH or null, "rate": BYTES or null}`: starts folding
    /// the N stores under the served one into the new layer PATH (absolute; null: LayerFold's
    /// default name); returns its status.
    func startCollapse(_ request: ControlRequest) throws -> ControlJSON {
        guard let depth = request.arguments["depth"]?.integerValue, depth >= 2,
            depth <= Int64(LayerChain.maxStoreCount)
        else {
            throw ControlFailure(
                "collapse: argument \"depth\" (an integer from 2 to \(LayerChain.maxStoreCount)) "
                    + "is missing or out of range")
        }
        var layer: FilePath?
        if let value = request.arguments["layer"], value != .null {
            guard let text = value.stringValue, FilePath(text).isAbsolute else {
                throw ControlFailure("collapse: argument \"layer\" must be an absolute path")
            }
            layer = FilePath(text)
        }
        var rate: UInt64?
        if let value = request.arguments["rate"], value != .null {
            guard let bytes = value.integerValue, bytes > 0 else {
                throw ControlFailure("collapse: argument \"rate\" must be a positive integer")
            }
            rate = UInt64(bytes)
        }
        let status = try collapses.start(
            LiveCollapse.Request(
                depth: Int(depth), layerPath: layer, rateBytesPerSecond: rate))
        return Self.collapseJSON(status)
    }

    /// `collapse-status`: the running or last collapse, `{"collapse": null}` if none ran.
    func collapseStatus() -> ControlJSON {
        .object([("collapse", collapses.status.map(Self.collapseJSON) ?? .null)])
    }

    /// `merge`: never live. The served store's own merges would change the layer it reads
    /// from (or a base other stores use) under its clients; frozen layers are folded with
    /// `collapse` instead.
    func refuseMerge(_ request: ControlRequest) throws -> ControlJSON {
        throw ControlFailure(
            "\(storePath): in use by a running server (pid \(getpid())): merge changes the "
                + "layer the served disk reads (or a base other stores use) and is refused "
                + "while served; fold the frozen layers under it with cowbd collapse "
                + "\(storePath) --depth N, or stop the server first")
    }

    /// The progress rows `info` shows for the running or last collapse.
    func collapseRows() -> [(String, String)] {
        guard let status = collapses.status else { return [] }
        return [("collapse", Self.describe(status))]
    }

    static func describe(_ status: LiveCollapse.Status) -> String {
        let request = status.request
        let percent =
            status.totalByteCount == 0
            ? (status.state == .running ? 0 : 100)
            : Int(Double(status.doneByteCount) * 100 / Double(status.totalByteCount))
        let progress =
            "\(percent)% (\(ByteSize.describe(status.doneByteCount)) of "
            + "\(ByteSize.describe(status.totalByteCount)), "
            + "\(ByteSize.describe(status.bytesPerSecond))/s"
            + (request.rateBytesPerSecond.map { ", limit \(ByteSize.describe($0))/s" } ?? "")
            + ")"
        let layer = request.layerPath?.string ?? "?"
        let what = "depth \(request.depth) into \(layer)"
        switch status.state {
        case .running: return "running, \(progress), \(what)"
        case .done: return "done, \(progress), \(what)" + (status.reusedLayer ? " (reused)" : "")
        case .alreadyDone: return "done already: the store is over \(layer)"
        case .failed(let reason): return "failed: \(reason)"
        }
    }

    static func collapseJSON(_ status: LiveCollapse.Status) -> ControlJSON {
        let state: String
        var error = ControlJSON.null
        switch status.state {
        case .running: state = "running"
        case .done: state = "done"
        case .alreadyDone: state = "already-done"
        case .failed(let reason):
            state = "failed"
            error = .string(reason)
        }
        return .object([
            ("state", .string(state)), ("depth", .integer(Int64(status.request.depth))),
            ("layer", status.request.layerPath.map { .string($0.string) } ?? .null),
            ("total_bytes", .integer(Int64(clamping: status.totalByteCount))),
            ("done_bytes", .integer(Int64(clamping: status.doneByteCount))),
            ("bytes_per_second", .integer(Int64(clamping: status.bytesPerSecond))),
            (
                "rate_limit",
                status.request.rateBytesPerSecond.map { .integer(Int64(clamping: $0)) }
                    ?? .null
            ),
            ("elapsed_ms", .integer(Int64(status.elapsedSeconds * 1000))),
            ("reused_layer", .bool(status.reusedLayer)), ("error", error),
        ])
    }
}
