// `export-diff` on the control channel (docs/CONTROL.md, "Live export-diff"): the diff of the
// served disk at the instant of the request, streamed to the client as it is written, while
// clients keep writing (copy-before-write: CowStore's VirtualDisk+LiveExport.swift).

import CowStore
import NBDServer
import SystemPackage

extension ControlService {
    /// `{"since": NAME or null, "to": NAME or null, "format": F}` → the diff on `stream`, then
    /// the summary.
    func exportDiff(_ request: ControlRequest, stream: ControlReplyStream) throws -> ControlJSON {
        let since = request.arguments["since"]?.stringValue
        let to = request.arguments["to"]?.stringValue
        let formatName = request.arguments["format"]?.stringValue ?? "native"
        guard let format = StoreDiffExport.Format(rawValue: formatName) else {
            throw ControlFailure("export-diff: unknown format \(formatName)")
        }
        // Taken at one instant with no snapshot or checkpoint change at the same time; read
        // afterwards while those may go on (a snapshot leaves the old disk frozen: still exact).
        let export = try server.liveDisk.whileChanging { disk in
            try StoreDiffExport(live: disk, sinceCheckpoint: since, recordingCheckpoint: to)
        }
        defer { export.close() }
        let summary: StoreDiffExport.Summary
        do {
            summary = try export.write(format: format, name: storePath) { bytes in
                try stream.send(bytes)
            }
        } catch {
            try? server.liveDisk.whileChanging { _ in try export.forgetEndCheckpoint() }
            throw error
        }
        return .object([
            ("extents", .integer(Int64(clamping: summary.extentCount))),
            ("data_bytes", .integer(Int64(clamping: summary.dataByteCount))),
            ("zero_bytes", .integer(Int64(clamping: summary.zeroByteCount))),
            ("stream_bytes", .integer(Int64(clamping: summary.streamByteCount))),
            (
                "copied_before_write_bytes",
                .integer(Int64(clamping: summary.copiedBeforeWriteByteCount))
            ),
        ])
    }
}
