// The control socket of `cowbd serve` (docs/CONTROL.md): a unix socket made with mode 0600,
// used only by its owner (checked again per client with SO_PEERCRED), carrying JSON lines.
// Binding replaces a stale socket and refuses a live one (Listener.swift). This file is the
// plumbing: framing, limits, the owner check; the commands are the handler's.

import CowSupport
import Logging
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// A listening control socket and the threads of its clients.
public final class ControlChannel: Sendable {
    /// Runs one request; a thrown error becomes the failure line (its description). A
    /// command that returns bytes (a live export-diff) sends them on the stream first.
    public typealias Handler = @Sendable (ControlRequest, ControlReplyStream) throws -> ControlJSON

    /// Control clients served at once; more are answered with an error and closed.
    public static let maxClientCount = 8
    /// Seconds a client may stay silent between requests before it is closed.
    public static let idleTimeoutSeconds: Double = 60

    public let path: String
    private let listener: Listener
    private let handler: Handler
    private let logger: Logger
    private let clientCount = Locked(0)
    /// Handler calls in progress, and whether new ones are refused (after `stop`).
    private let requestsRunning = Locked(0)
    private let isStopping = Locked(false)
    /// Longest `stop` waits for a request in progress (a checkpoint flushes first).
    static let stopTimeoutSeconds: Double = 60

    /// Binds `path` (stale socket replaced, live one refused); serves nothing until `start`.
    public init(path: String, logger: Logger, handler: @escaping Handler) throws {
        self.path = path
        self.logger = logger
        self.handler = handler
        do {
            listener = try Listener(address: .unix(path: path))
        } catch .addressInUse {
            throw ServerError.invalidAddress(
                "unix:\(path)",
                "a server is running on this control socket already (is the store served?)")
        }
    }

    /// Accepts clients on a thread of its own until `stop`.
    public func start() {
        startThread { [self] in
            while let transport = listener.accept() { admit(transport) }
        }
    }

    /// Stops accepting, removes the socket file and waits (at most `stopTimeoutSeconds`) for
    /// requests being run to finish, so the caller may close what they use.
    public func stop() {
        listener.shutdownAndRemove()
        isStopping.withLock { $0 = true }
        let deadline = monotonicSeconds() + Self.stopTimeoutSeconds
        while requestsRunning.withLock({ $0 }) > 0 && monotonicSeconds() < deadline {
            usleep(10_000)
        }
    }

    private func admit(_ transport: SocketTransport) {
        let admitted = clientCount.withLock { count in
            guard count < Self.maxClientCount else { return false }
            count += 1
            return true
        }
        guard admitted else {
            try? transport.send(
                Array(
                    ControlProtocol.failureLine(
                        "busy: \(Self.maxClientCount) control clients connected already"
                    ).utf8))
            return
        }
        startThread { [self] in
            defer {
                clientCount.withLock { $0 -= 1 }
                transport.shutdownBoth()
            }
            serve(transport)
        }
    }

    /// Serves a client's requests, one line each, until it closes or goes quiet.
    private func serve(_ transport: SocketTransport) {
        if let refusal = refusal(of: transport.descriptor) {
            logger.warning("control request refused: \(refusal)")
            try? transport.send(Array(ControlProtocol.failureLine(refusal).utf8))
            return
        }
        var pending: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            if let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(pending[..<newline])
                pending.removeSubrange(...newline)
                let stream = ControlReplyStream(transport: transport)
                do { try transport.send(Array(respond(to: line, stream: stream).utf8)) } catch {
                    return
                }
                continue
            }
            guard pending.count < ControlProtocol.maxLineByteCount else {
                try? transport.send(
                    Array(
                        ControlProtocol.failureLine(
                            "bad request: longer than \(ControlProtocol.maxLineByteCount) bytes"
                        ).utf8))
                return
            }
            let received: Int
            do {
                received = try chunk.withUnsafeMutableBytes {
                    try transport.receiveSome(
                        into: $0, deadline: monotonicSeconds() + Self.idleTimeoutSeconds)
                }
            } catch {
                return
            }
            pending += chunk[..<received]
        }
    }

    private func respond(to line: [UInt8], stream: ControlReplyStream) -> String {
        let request: ControlRequest
        do {
            request = try ControlProtocol.parseRequest(line)
        } catch {
            logger.notice("control request refused: \(error.description)")
            return ControlProtocol.failureLine(error.description)
        }
        let admitted = isStopping.withLock { stopping in
            guard !stopping else { return false }
            requestsRunning.withLock { $0 += 1 }
            return true
        }
        guard admitted else {
            return ControlProtocol.failureLine("\(path): the server is stopping")
        }
        defer { requestsRunning.withLock { $0 -= 1 } }
        do {
            let result = try handler(request, stream)
            logger.info("control request done", metadata: ["command": "\(request.command)"])
            return ControlProtocol.successLine(result)
        } catch {
            logger.notice(
                "control request failed: \(error)", metadata: ["command": "\(request.command)"])
            return ControlProtocol.failureLine("\(error)")
        }
    }

    /// Why the peer may not use the socket: it is not the user running the server. Mode 0600
    /// keeps others out already; this also refuses a peer the file mode let through (root, or
    /// a descriptor passed on). The corresponding C function is `getsockopt(SO_PEERCRED)`.
    private func refusal(of descriptor: Int32) -> String? {
        var credentials = PeerCredentials()
        var length = socklen_t(MemoryLayout<PeerCredentials>.size)
        guard getsockopt(descriptor, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0 else {
            return "\(path): cannot identify the peer: \(Errno(rawValue: errno))"
        }
        let owner = geteuid()
        guard credentials.userID == owner else {
            return
                "\(path): permission denied: uid \(credentials.userID) is not the server's "
                + "owner (uid \(owner))"
        }
        return nil
    }
}

/// The bytes a command returns before its response line (docs/CONTROL.md, "Byte streams"), in
/// frames: a `ControlStreamFrame` header, then that many bytes.
public final class ControlReplyStream: @unchecked Sendable {
    /// Used by one request on one thread (its connection's): no lock.
    private let transport: SocketTransport

    init(transport: SocketTransport) { self.transport = transport }

    /// Sends `bytes` as one frame or more.
    public func send(_ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            let count = min(ControlStreamFrame.maxPayloadByteCount, bytes.count - done)
            var header: UInt32 = 0
            try withUnsafeMutableBytes(of: &header) { header in
                ControlStreamFrame.storeHeader(payloadByteCount: count, into: header)
                try transport.send(
                    UnsafeRawBufferPointer(header),
                    UnsafeRawBufferPointer(rebasing: bytes[done..<(done + count)]))
            }
            done += count
        }
    }
}

/// `struct ucred`, which glibc declares only under _GNU_SOURCE: pid, uid, gid.
private struct PeerCredentials {
    var processID: Int32 = 0
    var userID: UInt32 = 0
    var groupID: UInt32 = 0
}
