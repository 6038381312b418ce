// `cowbd collapse` on a served store: the same command, sent to the server's control socket
// (docs/CONTROL.md). The server runs the collapse on a thread of its own; this waits for it,
// showing its progress. Interrupting this command leaves the collapse running (see cowbd info).

import ArgumentParser
import CowFormat
import CowSupport
import NBDServer
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// A collapse of a served store, run by its server.
struct LiveCollapseClient {
    /// Seconds between two progress polls.
    static let pollSeconds = 0.2

    let client: ControlClient
    let store: String

    /// Asks the server to fold `depth` layers into `layer` (made absolute here: the server's
    /// folder is not ours; nil: the default name) at most `rate` bytes a second, waits for the end and returns its
    /// status object; a refusal or a failed collapse throws its one line.
    func run(depth: Int, layer: String?, rate: UInt64?) throws -> ControlJSON {
        var arguments: [(String, ControlJSON)] = [("depth", .integer(Int64(depth)))]
        if let layer { arguments.append(("layer", .string(absoluteLayerPath(layer)))) }
        if let rate { arguments.append(("rate", .integer(Int64(clamping: rate)))) }
        _ = try client.call("collapse", arguments)
        let progress = ProgressLine(label: "collapse")
        defer { progress.finish() }
        while true {
            let status = try client.call("collapse-status")["collapse"] ?? .null
            let state = status["state"]?.stringValue
            if state == "failed" {
                throw ControlFailure(status["error"]?.stringValue ?? "\(store): collapse failed")
            }
            guard state == "running" else { return status }
            progress.update(
                UInt64(clamping: status["done_bytes"]?.integerValue ?? 0),
                UInt64(clamping: status["total_bytes"]?.integerValue ?? 0))
            usleep(UInt32(Self.pollSeconds * 1_000_000))
        }
    }

    private func absoluteLayerPath(_ path: String) -> String {
        guard !FilePath(path).isAbsolute else { return path }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard getcwd(&buffer, buffer.count) != nil else { return path }
        let length = buffer.firstIndex(of: 0) ?? buffer.count
        let folder = String(
            decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return FilePath(folder).pushing(FilePath(path)).lexicallyNormalized().string
    }
}

extension CollapseCommand {
    /// The collapse of a served store: run by its server, waited for here.
    func runLive(_ client: ControlClient) throws {
        let status = try exitingOnError {
            try LiveCollapseClient(client: client, store: store).run(
                depth: depth, layer: into, rate: try parseRate(rate))
        }
        if output.json {
            print(status.rendered())
            return
        }
        let layerPath = status["layer"]?.stringValue ?? into ?? "?"
        if status["state"]?.stringValue == "already-done" {
            print("\(store): already over \(layerPath); nothing to do")
            return
        }
        let bytes = UInt64(clamping: status["done_bytes"]?.integerValue ?? 0)
        print(
            "\(store): now over \(layerPath) (\(depth) layers folded by the server, "
                + "\(ByteSize.describe(bytes)) read)"
                + (status["reused_layer"]?.boolValue == true
                    ? "; kept the layer an interrupted run had made" : ""))
    }
}
