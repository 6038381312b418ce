// What a served store answers on its control socket (docs/CONTROL.md): info with live
// figures, and checkpoints recorded, deleted and listed while clients keep writing. The socket
// and the line protocol are NBDServer's (ControlChannel.swift).

import ArgumentParser
import CowFormat
import CowStore
import Logging
import NBDServer
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// The commands of the control channel, over the served disk.
struct ControlService: Sendable {
    static let commands = [
        "info", "checkpoint", "delete-checkpoint", "list-checkpoints", "snapshot", "export-diff",
        "collapse", "collapse-status",
    ]

    let storePath: String
    let controlPath: String
    let server: NBDServer
    /// The served disk as of now (a live snapshot replaces it).
    var disk: VirtualDisk { server.liveDisk.current }
    /// Where `--metrics` serves them, if it does.
    let metricsURL: String?
    /// The live collapse of the frozen layers under the store (ServeCommand+Collapse.swift).
    let collapses: LiveCollapse

    /// Commands that send bytes before their response line, then the rest.
    func handle(_ request: ControlRequest, stream: ControlReplyStream) throws -> ControlJSON {
        switch request.command {
        case "export-diff": return try exportDiff(request, stream: stream)
        default: return try handle(request)
        }
    }

    func handle(_ request: ControlRequest) throws -> ControlJSON {
        switch request.command {
        case "info": return info()
        case "list-checkpoints": return checkpointList()
        case "checkpoint":
            let name = try request.string("name")
            try checkWritable(request.command)
            let checkpoint = try server.liveDisk.whileChanging { disk in
                try disk.addCheckpoint(named: name, createdUnixSeconds: UInt64(max(0, time(nil))))
            }
            return .object([
                ("checkpoint", .string(checkpoint.name)), ("deleted", .bool(false)),
                ("created", .string(iso8601(unixSeconds: checkpoint.createdUnixSeconds))),
                ("disk_fingerprint", .string(checkpoint.diskFingerprint.description)),
            ])
        case "delete-checkpoint":
            let name = try request.string("name")
            try checkWritable(request.command)
            try server.liveDisk.whileChanging { try $0.deleteCheckpoint(named: name) }
            return .object([("checkpoint", .string(name)), ("deleted", .bool(true))])
        case "snapshot": return try snapshot(request)
        case "collapse": return try startCollapse(request)
        case "collapse-status": return collapseStatus()
        case "merge": return try refuseMerge(request)
        default:
            throw ControlFailure(
                "unknown command '\(request.command)' (known: "
                    + Self.commands.joined(separator: ", ") + ")")
        }
    }

    func checkWritable(_ command: String) throws {
        guard !disk.isReadOnly else {
            throw ControlFailure("\(storePath): \(command): the store is served --read-only")
        }
    }

    /// `info`'s object and rows, with the live figures: chunks written as of now (not of the
    /// last flush), and the server's own.
    private func info() -> ControlJSON {
        var summary = StoreSummary(
            path: storePath, header: disk.store.currentHeader,
            writtenChunkCount: disk.store.writtenChunkCount,
            allocatedByteCount: (try? disk.store.allocatedDataByteCount()) ?? 0,
            base: BaseStatus(
                header: disk.store.currentHeader, storePath: FilePath(storePath),
                options: baseOpenOptions()))
        summary.checkpoints = CheckpointListing(disk.store)
        summary.checkpoints?.countsEveryHeldChunk = false
        let served: [(String, String)] =
            [
                ("served by", "pid \(getpid())"), ("control socket", controlPath),
                ("connections", String(server.connectionCount)),
                ("metrics", metricsURL ?? "none (serve --metrics HOST:PORT)"),
            ] + server.metrics.summaryRows(disk: disk) + collapseRows()
        guard case .object(var members) = summary.json else {
            preconditionFailure("a summary is an object")
        }
        members.append(
            (
                "served",
                .object([
                    ("pid", .integer(Int64(getpid()))), ("control", .string(controlPath)),
                    ("connections", .integer(Int64(server.connectionCount))),
                    ("collapse", collapses.status.map(Self.collapseJSON) ?? .null),
                ])
            ))
        return .object([
            ("summary", .object(members)), ("rows", controlValue(rows: summary.rows + served)),
        ])
    }

    private func checkpointList() -> ControlJSON {
        var listing = CheckpointListing(disk.store)
        // The table is marked open while served; the bitmaps in memory miss nothing.
        listing.countsEveryHeldChunk = false
        return .object([
            ("checkpoints", listing.json), ("rows", controlValue(rows: listing.rows)),
            ("counts_every_held_chunk", .bool(listing.countsEveryHeldChunk)),
        ])
    }
}

extension ServeCommand {
    /// Binds the control socket (`--control`, or beside the store) and starts answering on it.
    /// A default path too long for a unix socket leaves the store without one (logged); an
    /// explicit one throws.
    func startControlChannel(
        server: NBDServer, metricsURL: String?, collapses: LiveCollapse, logger: Logger
    ) throws -> ControlChannel? {
        let path = control.path ?? defaultControlPath(storePath: store)
        let service = ControlService(
            storePath: store, controlPath: path, server: server, metricsURL: metricsURL,
            collapses: collapses)
        do {
            let channel = try ControlChannel(path: path, logger: logger) { request, stream in
                try service.handle(request, stream: stream)
            }
            channel.start()
            return channel
        } catch ServerError.invalidAddress(_, let why)
            where control.path == nil && why.contains("longer")
        {
            logger.warning("no control socket: \(path): \(why); give a shorter one with --control")
            return nil
        }
    }
}

extension ServeCommand {
    /// `--metrics`: PORT alone means 127.0.0.1:PORT; a unix socket is refused.
    func parseMetricsAddress(_ text: String) throws -> ListenAddress {
        if let port = UInt16(text) { return .tcp(host: "127.0.0.1", port: port) }
        let address: ListenAddress
        do { address = try ListenAddress(parsing: text) } catch {
            throw ValidationError("--metrics: \(error)")
        }
        guard case .tcp = address else {
            throw ValidationError("--metrics takes HOST:PORT or PORT, not a unix socket")
        }
        return address
    }

    /// Binds and starts the metrics endpoint, if `--metrics` was given.
    func startMetricsEndpoint(server: NBDServer) throws -> MetricsEndpoint? {
        guard let metricsAddress else { return nil }
        let endpoint = try MetricsEndpoint(address: try parseMetricsAddress(metricsAddress)) {
            server.metrics.exposition(disk: server.liveDisk.current)
        }
        endpoint.start()
        return endpoint
    }
}
