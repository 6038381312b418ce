// The TLS transport: a GnuTLS session over a connected socket, after NBD_OPT_STARTTLS. Records
// are decrypted straight into the caller's buffer; a reply's header and payload go out corked
// into as few records as GnuTLS allows. Timeouts and shutdown are the socket's. It leaves
// renegotiation and session resumption out: a client gets one full handshake per connection.

import CGnuTLS
import CowSupport

/// One TLS session with a client. `@unchecked Sendable`: receives happen on the connection's
/// reader thread only and sends under the connection's send lock; GnuTLS allows one thread
/// receiving while another sends on a session (and nothing here renegotiates).
final class TLSTransport: Transport, @unchecked Sendable {
    /// Replies up to this size are corked into one TLS record batch (copied); a larger payload
    /// follows its header in records of its own, so no connection buffers a whole 32 MiB read.
    static let maxCorkedByteCount = 64 << 10

    private let socket: SocketTransport
    private let session: gnutls_session_t
    var peer: String { socket.peer }

    /// Runs the server side of the TLS handshake over `socket`, which must be past the ACK to
    /// NBD_OPT_STARTTLS; throws if it fails or does not finish before `deadline` (monotonic
    /// seconds). The corresponding C function is `gnutls_handshake`.
    init(socket: SocketTransport, credentials: TLSCredentials, deadline: Double)
        throws(ServerError)
    {
        self.socket = socket
        session = try credentials.makeSession(peer: socket.peer)
        gnutls_transport_set_int2(session, socket.descriptor, socket.descriptor)
        while true {
            let remainingSeconds = deadline - monotonicSeconds()
            // Every stored property is set: a throw from here on runs `deinit`, which frees the
            // session.
            guard remainingSeconds > 0 else {
                throw .timedOut("waiting for the client to finish the TLS handshake")
            }
            gnutls_handshake_set_timeout(session, UInt32(min(remainingSeconds * 1000 + 1, 1e9)))
            let result = gnutls_handshake(session)
            if result >= 0 { return }
            if result == GNUTLS_E_AGAIN || result == GNUTLS_E_INTERRUPTED { continue }
            throw Self.handshakeError(result, peer: socket.peer)
        }
    }

    deinit { gnutls_deinit(session) }

    private static func handshakeError(_ result: Int32, peer: String) -> ServerError {
        switch result {
        case GNUTLS_E_TIMEDOUT:
            return .timedOut("waiting for the client to finish the TLS handshake")
        case GNUTLS_E_PREMATURE_TERMINATION, GNUTLS_E_PULL_ERROR, GNUTLS_E_PUSH_ERROR:
            return .tls(
                peer: peer, call: "gnutls_handshake",
                "the client went away during the TLS handshake (\(TLSCredentials.message(result)))"
            )
        default:
            return .tls(peer: peer, call: "gnutls_handshake", TLSCredentials.message(result))
        }
    }

    /// The protocol version and cipher, for the log: "TLS1.3 AES-256-GCM".
    var sessionDescription: String {
        let version = gnutls_protocol_get_name(gnutls_protocol_get_version(session))
        let cipher = gnutls_cipher_get_name(gnutls_cipher_get(session))
        return [version, cipher].compactMap { $0.map { String(cString: $0) } }.joined(
            separator: " ")
    }

    /// Decrypts up to `buffer.count` bytes (at least one) into `buffer`, waiting at most until
    /// `deadline`. The corresponding C function is `gnutls_record_recv`.
    func receiveSome(into buffer: UnsafeMutableRawBufferPointer, deadline: Double?)
        throws(ServerError) -> Int
    {
        while true {
            if let deadline {
                let remainingSeconds = deadline - monotonicSeconds()
                guard remainingSeconds > 0 else {
                    throw .timedOut("waiting for the client to finish a message")
                }
                gnutls_record_set_timeout(session, UInt32(min(remainingSeconds * 1000 + 1, 1e9)))
            } else {
                gnutls_record_set_timeout(session, 0)  // 0: wait as long as it takes
            }
            let result = gnutls_record_recv(session, buffer.baseAddress, buffer.count)
            if result > 0 { return result }
            switch Int32(truncatingIfNeeded: result) {
            case 0, GNUTLS_E_PREMATURE_TERMINATION: throw .peerClosed
            case GNUTLS_E_AGAIN, GNUTLS_E_INTERRUPTED: continue
            case GNUTLS_E_TIMEDOUT: throw .timedOut("waiting for the client to finish a message")
            case let code:
                throw .tls(
                    peer: peer, call: "gnutls_record_recv", TLSCredentials.message(code))
            }
        }
    }

    /// Encrypts and sends all of `header` then all of `payload`.
    /// The corresponding C functions are `gnutls_record_cork`, `gnutls_record_send` and
    /// `gnutls_record_uncork`.
    func send(_ header: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer)
        throws(ServerError)
    {
        let corks = header.count + payload.count <= Self.maxCorkedByteCount
        if corks { gnutls_record_cork(session) }
        try sendAll(header)
        try sendAll(payload)
        guard corks else { return }
        while true {
            // Not GNUTLS_RECORD_WAIT: it retries GNUTLS_E_AGAIN forever, which would defeat
            // the socket's send timeout.
            let result = gnutls_record_uncork(session, 0)
            if result >= 0 { return }
            try throwUnlessInterrupted(Int32(truncatingIfNeeded: result), "gnutls_record_uncork")
        }
    }

    private func sendAll(_ bytes: UnsafeRawBufferPointer) throws(ServerError) {
        var sent = 0
        while sent < bytes.count {
            let result = gnutls_record_send(
                session, bytes.baseAddress! + sent, bytes.count - sent)
            if result >= 0 {
                sent += result
            } else {
                try throwUnlessInterrupted(Int32(truncatingIfNeeded: result), "gnutls_record_send")
            }
        }
    }

    /// GNUTLS_E_INTERRUPTED means "call again with the same arguments"; anything else ends
    /// the connection (GNUTLS_E_AGAIN here is the socket's send timeout).
    private func throwUnlessInterrupted(_ code: Int32, _ call: String) throws(ServerError) {
        switch code {
        case GNUTLS_E_INTERRUPTED: return
        case GNUTLS_E_AGAIN: throw .timedOut("sending to a client that does not read")
        default: throw .tls(peer: peer, call: call, TLSCredentials.message(code))
        }
    }

    func setSendTimeout(seconds: Double) { socket.setSendTimeout(seconds: seconds) }

    func shutdownReceiving() { socket.shutdownReceiving() }

    func shutdownBoth() { socket.shutdownBoth() }

    /// Sends TLS's close_notify, so the client sees a clean end rather than a truncation.
    /// Called once no other thread sends. The corresponding C function is `gnutls_bye`.
    func endSession() { _ = gnutls_bye(session, GNUTLS_SHUT_WR) }
}
