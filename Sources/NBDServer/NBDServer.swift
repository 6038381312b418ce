// The server: listeners, the registry of connections, and graceful shutdown. Accept loops and
// connections run on their own threads; this type only holds what they share.

import CowStore
import CowSupport
import Dispatch
import Logging
import NBDProtocol

/// An NBD server over one virtual disk.
public final class NBDServer: Sendable {
    /// What `cowbd serve` configures.
    public struct Configuration: Sendable {
        public var listenAddresses: [ListenAddress] = [.defaultAddress]
        /// Listening sockets passed by a supervisor (`SocketActivation`), served as well as
        /// `listenAddresses` (`cowbd serve` sets no address when it was passed sockets).
        public var passedDescriptors: [Int32] = []
        public var exportName = ""
        public var description = ""
        /// Connections served at once. At the limit a new client evicts the oldest connection
        /// still in its handshake; if every one has finished its handshake, the new client is
        /// closed as soon as it is accepted.
        public var maxConnections = 64
        /// A client must finish the handshake within this many seconds.
        public var handshakeTimeoutSeconds: Double = 120
        /// A reply that cannot be sent for this long, or a request whose rest does not arrive
        /// for this long once it has begun, ends the connection.
        public var messageTimeoutSeconds: Double = 120
        /// Requests of one connection executed at once.
        public var workersPerConnection = 4
        /// Over a network base: requests of one connection that wait on the base, run at once
        /// (BaseRequestQueue.swift).
        public var baseWorkersPerConnection = 32
        /// Largest READ or WRITE payload (NBD_INFO_BLOCK_SIZE maximum).
        public var maximumPayloadByteCount: UInt32 = 32 << 20
        /// Memory for the payloads of requests in flight, across all connections
        /// (`--max-inflight-bytes`): at least one largest payload, so no request waits forever.
        public var maxInflightByteCount = 256 << 20
        /// TLS through NBD_OPT_STARTTLS (`--tls-certificates`, `--tls-psk`); nil: plaintext.
        public var tls: TLSConfiguration? = nil

        public init() {}
    }

    private struct Registry {
        var connections: [Int: Connection] = [:]
        var nextID = 1
        var stopping = false
    }

    /// The served disk; a live snapshot replaces it while connections stay up.
    public let liveDisk: LiveDisk
    /// The disk as of now: a request takes it once and keeps it to its end.
    var disk: VirtualDisk { liveDisk.current }
    let configuration: Configuration
    let logger: Logger
    let exportDescription: ExportDescription
    let payloadBudget: PayloadBudget
    /// Loaded from `configuration.tls` at start, so a bad file is reported before serving.
    let tlsCredentials: TLSCredentials?
    /// What `serve --metrics` and a live `info` show.
    public let metrics = ServerMetrics()
    private let listeners: [Listener]
    private let registry = Locked(Registry())
    private let running = DispatchGroup()

    /// Binds every listen address; throws (and binds nothing) if one fails.
    public init(disk: VirtualDisk, configuration: Configuration, logger: Logger) throws {
        self.liveDisk = LiveDisk(disk)
        self.configuration = configuration
        self.logger = logger
        precondition(
            configuration.maxInflightByteCount >= Int(configuration.maximumPayloadByteCount),
            "the payload budget holds at least one largest request")
        precondition(
            BlockStatusPrefix.payloadByteCount(
                descriptorCount: Connection.maxExtentCount, extended: true)
                <= Int(configuration.maximumPayloadByteCount),
            "a block status reply fits the maximum payload")
        payloadBudget = PayloadBudget(byteCount: configuration.maxInflightByteCount)
        tlsCredentials = try configuration.tls.map { configuration throws(ServerError) in
            try TLSCredentials(configuration)
        }
        exportDescription = ExportDescription(
            name: configuration.exportName, description: configuration.description,
            byteCount: disk.byteCount,
            isReadOnly: disk.isReadOnly, minimumBlockByteCount: 1,
            preferredBlockByteCount: UInt32(max(4096, min(disk.geometry.chunkByteCount, 1 << 20))),
            maximumPayloadByteCount: configuration.maximumPayloadByteCount)
        var bound: [Listener] = []
        do {
            for address in configuration.listenAddresses {
                bound.append(try Listener(address: address))
            }
            for descriptor in configuration.passedDescriptors {
                bound.append(try Listener(passedDescriptor: descriptor))
            }
        } catch {
            for listener in bound { listener.shutdownAndRemove() }
            throw error
        }
        listeners = bound
    }

    /// Starts accepting on every address.
    public func start() {
        for listener in listeners {
            running.enter()
            startThread { [self] in
                defer { running.leave() }
                while let transport = listener.accept() { admit(transport) }
            }
        }
    }

    /// Registers a new client, making room if needed: clients that connect and never finish
    /// the handshake must not lock out the ones that do, however many there are.
    private func admit(_ transport: any Transport) {
        let connection: Connection? = registry.withLock { registry in
            guard !registry.stopping else { return nil }
            if registry.connections.count >= configuration.maxConnections {
                // The oldest is the one most likely idle; the evicted thread logs its own end.
                let negotiating = registry.connections.values.filter {
                    $0.phase.load(ordering: .relaxed) == .handshake
                }
                guard let oldest = negotiating.min(by: { $0.id < $1.id }),
                    oldest.evictIfNegotiating()
                else { return nil }
                registry.connections[oldest.id] = nil
            }
            let connection = Connection(id: registry.nextID, transport: transport, server: self)
            registry.nextID += 1
            registry.connections[connection.id] = connection
            return connection
        }
        guard let connection else {
            logger.warning(
                "refusing a connection: \(configuration.maxConnections) already open (--max-connections)",
                metadata: ["peer": "\(transport.peer)"])
            return
        }
        running.enter()
        metrics.connectionOpened()
        startThread { [self] in
            defer {
                metrics.connectionClosed()
                _ = registry.withLock { $0.connections.removeValue(forKey: connection.id) }
                connection.socket.shutdownBoth()
                running.leave()
            }
            connection.run()
        }
    }

    /// Stops accepting, lets each connection finish the requests it has read, then flushes.
    /// Waits at most `timeoutSeconds` for connections to end.
    public func stop(timeoutSeconds: Double = 30) throws {
        let connections = registry.withLock { registry -> [Connection] in
            registry.stopping = true
            return Array(registry.connections.values)
        }
        for listener in listeners { listener.shutdownAndRemove() }
        for connection in connections { connection.socket.shutdownReceiving() }
        if running.wait(timeout: .now() + timeoutSeconds) == .timedOut {
            logger.warning("connections still busy after \(timeoutSeconds) s; flushing anyway")
        }
        if !disk.isReadOnly { try disk.flush() }
    }

    /// The export as a new client sees it: with one dirty-bitmap context per checkpoint the
    /// store holds now (checkpoints come and go while it is served).
    func currentExportDescription() -> ExportDescription {
        var description = exportDescription
        description.dirtyBitmapNames = disk.checkpointNames
        return description
    }

    /// Connections open now, in their handshake or serving requests.
    public var connectionCount: Int { registry.withLock { $0.connections.count } }

    /// The URIs clients can use, one per listening socket.
    /// Under `--tls require` they are `nbds://` and `nbds+unix://`, as libnbd and nbdkit write
    /// a URI that must use TLS.
    public var uris: [String] {
        listeners.map { listener in
            let uri = listener.address.uri(exportName: configuration.exportName)
            guard configuration.tls?.requirement == .require, uri.hasPrefix("nbd") else {
                return uri
            }
            return "nbds" + uri.dropFirst("nbd".count)
        }
    }
}
