// One client connection: the handshake (bounded by a deadline), then the transmission phase
// with a reader thread and a pool of request workers. Ends cleanly on DISC, on a protocol
// violation (logged), on server shutdown, or when the client goes away.

import CowStore
import CowSupport
import Logging
import NBDProtocol
import Synchronization

/// A connection's life. `@unchecked Sendable`: `session` and `transport` are written by the
/// reader before any worker starts (`transport` once more, at NBD_OPT_STARTTLS); other threads
/// shut the connection down through `socket`, which never changes; sends are serialised by
/// `sendLock`.
final class Connection: @unchecked Sendable {
    /// Where a connection is in its life, as far as making room for new clients goes.
    enum Phase: UInt8, AtomicRepresentable {
        case handshake
        case transmission
        /// Closed by the server before it chose an export, to admit a newer client.
        case evicted
    }

    let id: Int
    /// The accepted socket, for shutdowns from other threads (eviction, server stop).
    let socket: any Transport
    /// What the connection reads and writes through: `socket`, or TLS over it after STARTTLS.
    /// Unchecked exclusivity: it is written only by the reader before any worker starts (see
    /// above), and every reply read it with a dynamic access check.
    @exclusivity(unchecked) private(set) var transport: any Transport
    let server: NBDServer
    let logger: Logger
    /// Whether `logger` takes trace messages, asked once: asking per request copied the log
    /// handler each time, which cost as much as a 4 KiB write's own bookkeeping.
    let logsRequests: Bool
    let acceptedAtSeconds = monotonicSeconds()
    let phase = Atomic<Phase>(.handshake)
    private(set) var session: NegotiatedSession! = nil
    /// Serialises sends. Holds the rest of a reply that `trySendReply` sent in part: whoever
    /// sends next sends that first, so no reply ever cuts into another.
    private let sendLock = Locked<UnsentReplyBytes?>(nil)
    /// Set when a send failed: the reader stops taking requests.
    let broken = Atomic<Bool>(false)

    init(id: Int, transport: any Transport, server: NBDServer) {
        self.id = id
        self.socket = transport
        self.transport = transport
        self.server = server
        var logger = server.logger
        logger[metadataKey: "connection"] = "\(id)"
        logger[metadataKey: "peer"] = "\(transport.peer)"
        self.logger = logger
        logsRequests = logger.logLevel <= .trace
    }

    /// Runs the whole connection on the calling thread.
    func run() {
        do {
            guard try negotiate() else { return }
            logger.info(
                "client attached",
                metadata: [
                    "export": "\(session.export.name)",
                    "structured": "\(session.structuredReplies)",
                    "extended": "\(session.extendedHeaders)",
                    "contexts": "\(session.metaContexts.map(\.name).joined(separator: ","))",
                    "tls": "\(transport is TLSTransport)",
                ])
            try transmit()
            transport.endSession()
            logger.info("client detached")
        } catch {
            logEnd(error)
        }
    }

    /// One line for every connection that ends on an error, naming why.
    private func logEnd(_ error: any Error) {
        if phase.load(ordering: .relaxed) == .evicted {
            let seconds = Int((monotonicSeconds() - acceptedAtSeconds).rounded())
            logger.warning(
                "connection ended: evicted to admit a new client (--max-connections \(server.configuration.maxConnections)); its handshake was unfinished after \(seconds) s"
            )
        } else if case ServerError.peerClosed = error {
            logger.info("client closed the connection")
        } else {
            logger.warning("connection ended: \(error)")
        }
    }

    /// Ends a connection that has not finished its handshake, to make room for a new one.
    /// False if the handshake finished first (the connection is then left alone).
    func evictIfNegotiating() -> Bool {
        guard
            phase.compareExchange(expected: .handshake, desired: .evicted, ordering: .relaxed)
                .exchanged
        else { return false }
        socket.shutdownBoth()
        return true
    }

    /// The handshake. Returns false if it ended without choosing an export.
    private func negotiate() throws(ServerError) -> Bool {
        let deadline = monotonicSeconds() + server.configuration.handshakeTimeoutSeconds
        // A client that never reads the replies to its options must not hold the thread either.
        transport.setSendTimeout(seconds: server.configuration.handshakeTimeoutSeconds)
        var handshake = Handshake(
            exports: [server.currentExportDescription()],
            tlsMode: server.tlsCredentials?.configuration.handshakeMode ?? .noTLS)
        try transport.send(Handshake.greeting())
        var fixed = [UInt8](repeating: 0, count: max(ClientFlags.byteCount, OptionHeader.byteCount))
        let flags = try receive(&fixed, byteCount: ClientFlags.byteCount, deadline: deadline) {
            ClientFlags(parsing: $0)
        }
        if let reason = handshake.receiveClientFlags(flags.rawValue) {
            throw .protocolViolation(reason)
        }
        while true {
            let header = try receive(&fixed, byteCount: OptionHeader.byteCount, deadline: deadline)
            {
                bytes throws(ServerError) in
                do throws(ProtocolViolation) { return try OptionHeader(parsing: bytes) } catch {
                    throw .protocolViolation(error.description)
                }
            }
            var data = [UInt8](repeating: 0, count: Int(header.dataByteCount))
            _ = try receive(&data, byteCount: data.count, deadline: deadline) { _ in () }
            switch handshake.handle(option: header.option, data: data) {
            case .reply(let bytes):
                try transport.send(bytes)
            case .replyAndTransmit(let bytes):
                // Past the handshake before the client hears so: once it has the reply, a new
                // client at the limit must not evict it. An eviction that came first wins (the
                // transport is already shut).
                guard
                    phase.compareExchange(
                        expected: .handshake, desired: .transmission, ordering: .relaxed
                    ).exchanged
                else { throw .peerClosed }
                try transport.send(bytes)
                guard let chosen = handshake.session else {
                    preconditionFailure("transmission without a session")
                }
                session = chosen
                return true
            case .replyAndStartTLS(let bytes):
                try transport.send(bytes)
                try startTLS(deadline: deadline)
            case .replyAndClose(let bytes, let reason):
                if !bytes.isEmpty { try? transport.send(bytes) }
                logger.info("handshake ended: \(reason)")
                return false
            }
        }
    }

    /// After the ACK to NBD_OPT_STARTTLS: the TLS handshake, within the handshake's deadline.
    /// A failure ends the connection (the spec: it is too late to go on without TLS).
    private func startTLS(deadline: Double) throws(ServerError) {
        guard let credentials = server.tlsCredentials, let plain = socket as? SocketTransport
        else { preconditionFailure("STARTTLS acknowledged without TLS credentials") }
        let secured = try TLSTransport(socket: plain, credentials: credentials, deadline: deadline)
        transport = secured
        logger.debug("TLS session started", metadata: ["tls": "\(secured.sessionDescription)"])
    }

    /// Receives `byteCount` bytes into `bytes` before `deadline` and hands them to `parse`.
    private func receive<Value>(
        _ bytes: inout [UInt8], byteCount: Int, deadline: Double,
        _ parse: (UnsafeRawBufferPointer) throws(ServerError) -> Value
    ) throws(ServerError) -> Value {
        let outcome = bytes.withUnsafeMutableBytes { buffer in
            Result { () throws(ServerError) in
                let received = UnsafeMutableRawBufferPointer(rebasing: buffer[..<byteCount])
                try transport.receive(into: received, deadline: deadline)
                return try parse(UnsafeRawBufferPointer(received))
            }
        }
        return try outcome.get()
    }

    /// Sends one reply: `header` then `payload`, as one unit on the wire (after the rest of a
    /// reply sent in part, if one waits).
    func sendReply(_ header: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer) {
        let outcome = sendLock.withLock { unsent in
            Result { () throws(ServerError) in
                try sendUnsent(&unsent)
                try transport.send(header, payload)
            }
        }
        if case .failure(let error) = outcome { sendFailed(error) }
    }

    /// Sends the rest of a reply that `trySendReply` sent in part, if nobody has yet.
    func sendUnsentReply() {
        let outcome = sendLock.withLock { unsent in
            Result { () throws(ServerError) in try sendUnsent(&unsent) }
        }
        if case .failure(let error) = outcome { sendFailed(error) }
    }

    /// Sends one reply on `socket` (the connection's transport) only as far as it goes without
    /// waiting, for a thread that must not wait on this client (a base connection's). If the
    /// lock is held or the socket is full, nothing is sent (`.notSent`: the caller has the
    /// reply sent the ordinary way). If only part fits, the rest is kept (`.sentInPart`): the
    /// caller must make sure `sendUnsentReply` runs; any other send sends it first anyway.
    func trySendReply(
        _ header: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer,
        on socket: SocketTransport
    ) -> ReplyAttempt {
        let outcome = sendLock.withLockIfAvailable { unsent -> Result<ReplyAttempt, ServerError> in
            guard unsent == nil else { return .success(.notSent) }
            let sentByteCount: Int
            do throws(ServerError) {
                sentByteCount = try socket.sendWithoutWaiting(header, payload)
            } catch {
                return .failure(error)
            }
            if sentByteCount == 0 { return .success(.notSent) }
            if sentByteCount == header.count + payload.count { return .success(.sent) }
            unsent = UnsentReplyBytes(header, payload, droppingFirst: sentByteCount)
            return .success(.sentInPart)
        }
        switch outcome {
        case nil: return .notSent
        case .success(let attempt)?: return attempt
        case .failure(let error)?:
            sendFailed(error)
            return .sent  // as with `sendReply`: the connection is gone, the reply with it
        }
    }

    private func sendUnsent(_ unsent: inout UnsentReplyBytes?) throws(ServerError) {
        guard let bytes = unsent else { return }
        unsent = nil
        try transport.send(
            UnsafeRawBufferPointer(bytes.buffer), UnsafeRawBufferPointer(start: nil, count: 0))
    }

    private func sendFailed(_ error: ServerError) {
        if !broken.exchange(true, ordering: .relaxed) {
            logger.warning("cannot send a reply: \(error)")
        }
        transport.shutdownBoth()
    }
}

/// How far `Connection.trySendReply` got.
enum ReplyAttempt {
    case sent
    /// Nothing went out: the reply is still to be sent.
    case notSent
    /// The head went out, the rest waits in the connection for `sendUnsentReply`.
    case sentInPart
}

/// The bytes of a reply that did not fit in the socket, in a buffer of their own.
final class UnsentReplyBytes {
    let buffer: UnsafeMutableRawBufferPointer

    /// The bytes of `header` then `payload` after the first `sentByteCount`.
    init(
        _ header: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer,
        droppingFirst sentByteCount: Int
    ) {
        let byteCount = header.count + payload.count - sentByteCount
        precondition(byteCount > 0, "nothing left unsent")
        buffer = .allocate(byteCount: byteCount, alignment: 16)
        var filled = 0
        if sentByteCount < header.count {
            let rest = UnsafeRawBufferPointer(rebasing: header[sentByteCount...])
            UnsafeMutableRawBufferPointer(rebasing: buffer[..<rest.count]).copyMemory(from: rest)
            filled = rest.count
        }
        let payloadRest = UnsafeRawBufferPointer(
            rebasing: payload[max(sentByteCount - header.count, 0)...])
        UnsafeMutableRawBufferPointer(rebasing: buffer[filled...]).copyMemory(from: payloadRest)
    }

    deinit { buffer.deallocate() }
}
