// One client connection: the handshake (bounded by a deadline), then the transmission phase
// with a reader thread and a pool of request workers. Ends cleanly on DISC, on a protocol
// violation (logged), on server shutdown, or when the client goes away.

import CowStore
import CowSupport
import Logging
import NBDProtocol
import Synchronization

/// A connection's life. `@unchecked Sendable`: `session` is written once by the reader before
/// any worker starts; sends are serialised by `sendLock`.
final class Connection: @unchecked Sendable {
    /// Where a connection is in its life, as far as making room for new clients goes.
    enum Phase: UInt8, AtomicRepresentable {
        case handshake
        case transmission
        /// Closed by the server before it chose an export, to admit a newer client.
        case evicted
    }

    let id: Int
    let socket: Socket
    let server: NBDServer
    let logger: Logger
    let acceptedAtSeconds = monotonicSeconds()
    let phase = Atomic<Phase>(.handshake)
    private(set) var session: NegotiatedSession! = nil
    private let sendLock = Locked<Void>(())
    /// Set when a send failed: the reader stops taking requests.
    let broken = Atomic<Bool>(false)

    init(id: Int, socket: Socket, server: NBDServer) {
        self.id = id
        self.socket = socket
        self.server = server
        var logger = server.logger
        logger[metadataKey: "connection"] = "\(id)"
        logger[metadataKey: "peer"] = "\(socket.peer)"
        self.logger = logger
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
                    "contexts": "\(session.metaContexts.map(\.rawValue).joined(separator: ","))",
                ])
            try transmit()
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
        socket.setSendTimeout(seconds: server.configuration.handshakeTimeoutSeconds)
        var handshake = Handshake(exports: [server.exportDescription])
        try socket.send(Handshake.greeting())
        var word = [UInt8](repeating: 0, count: 16)
        try receive(&word, byteCount: 4, deadline: deadline)
        if let reason = handshake.receiveClientFlags(UInt32(bigEndianBytes: word[0..<4])) {
            throw .protocolViolation(reason)
        }
        while true {
            try receive(&word, byteCount: 16, deadline: deadline)
            guard UInt64(bigEndianBytes: word[0..<8]) == Magic.option else {
                throw .protocolViolation("bad option magic")
            }
            let option = UInt32(bigEndianBytes: word[8..<12])
            let length = UInt32(bigEndianBytes: word[12..<16])
            guard length <= Handshake.maxOptionByteCount else {
                throw .protocolViolation(
                    "option \(option) has \(length) bytes of data (limit \(Handshake.maxOptionByteCount))"
                )
            }
            var data = [UInt8](repeating: 0, count: Int(length))
            try receive(&data, byteCount: Int(length), deadline: deadline)
            switch handshake.handle(option: option, data: data) {
            case .reply(let bytes):
                try socket.send(bytes)
            case .replyAndTransmit(let bytes):
                // Past the handshake before the client hears so: once it has the reply, a new
                // client at the limit must not evict it. An eviction that came first wins (the
                // socket is already shut).
                guard
                    phase.compareExchange(
                        expected: .handshake, desired: .transmission, ordering: .relaxed
                    ).exchanged
                else { throw .peerClosed }
                try socket.send(bytes)
                guard let chosen = handshake.session else {
                    preconditionFailure("transmission without a session")
                }
                session = chosen
                return true
            case .replyAndClose(let bytes, let reason):
                if !bytes.isEmpty { try? socket.send(bytes) }
                logger.info("handshake ended: \(reason)")
                return false
            }
        }
    }

    private func receive(_ bytes: inout [UInt8], byteCount: Int, deadline: Double)
        throws(ServerError)
    {
        let outcome = bytes.withUnsafeMutableBytes { buffer in
            Result { () throws(ServerError) in
                try socket.receive(
                    into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<byteCount]),
                    deadline: deadline)
            }
        }
        try outcome.get()
    }

    /// Sends one reply: `header` then `payload`, as one unit on the wire.
    func sendReply(_ header: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer) {
        let outcome = sendLock.withLock { _ in
            Result { () throws(ServerError) in try socket.send(header, payload) }
        }
        if case .failure(let error) = outcome {
            if !broken.exchange(true, ordering: .relaxed) {
                logger.warning("cannot send a reply: \(error)")
            }
            socket.shutdownBoth()
        }
    }
}

extension UInt32 {
    init(bigEndianBytes bytes: ArraySlice<UInt8>) {
        self = bytes.reduce(0) { $0 << 8 | UInt32($1) }
    }
}

extension UInt64 {
    init(bigEndianBytes bytes: ArraySlice<UInt8>) {
        self = bytes.reduce(0) { $0 << 8 | UInt64($1) }
    }
}
