// A TLS client session with a pre-shared key over a RawSocket, for tests that must send what
// libnbd never would around NBD_OPT_STARTTLS. The cryptography is GnuTLS's.

import CGnuTLS
import TestSupport

/// Bytes in and out, in plaintext or over TLS, for the raw wire helpers.
protocol ByteStream {
    func send(_ bytes: [UInt8]) throws
    func receive(_ count: Int) throws -> [UInt8]
}

extension RawSocket: ByteStream {}

extension ByteStream {
    func receiveInteger(_ byteCount: Int) throws -> UInt64 {
        try receive(byteCount).reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// Sends one option (`IHAVEOPT`, number, length, data).
    func sendOption(_ option: UInt32, _ data: [UInt8] = []) throws {
        try send(
            bigEndian(Wire.optionMagic) + bigEndian(option) + bigEndian(UInt32(data.count)) + data)
    }

    /// One option reply: (option echoed, reply type, data).
    func receiveOptionReply() throws -> (option: UInt32, type: UInt32, data: [UInt8]) {
        guard try receiveInteger(8) == Wire.optionReplyMagic else {
            throw TestFailure("bad option reply magic")
        }
        let option = UInt32(try receiveInteger(4))
        let type = UInt32(try receiveInteger(4))
        let length = UInt32(try receiveInteger(4))
        guard length <= 65_536 else { throw TestFailure("option reply of \(length) bytes") }
        return (option, type, try receive(Int(length)))
    }
}

/// The client side of one TLS session over `socket`'s descriptor (its receive timeout bounds
/// every wait).
final class TLSClientSession: ByteStream {
    private let socket: RawSocket
    private let credentials: gnutls_psk_client_credentials_t
    private let session: gnutls_session_t

    /// Runs the client handshake with `username` and its hexadecimal key.
    init(over socket: RawSocket, username: String, hexKey: String) throws {
        self.socket = socket
        var credentials: gnutls_psk_client_credentials_t? = nil
        guard gnutls_psk_allocate_client_credentials(&credentials) >= 0, let credentials else {
            throw TestFailure("gnutls_psk_allocate_client_credentials failed")
        }
        self.credentials = credentials
        var keyBytes = Array(hexKey.utf8)
        let keySet = keyBytes.withUnsafeMutableBufferPointer { buffer in
            var key = gnutls_datum_t(data: buffer.baseAddress, size: UInt32(buffer.count))
            return gnutls_psk_set_client_credentials(
                credentials, username, &key, GNUTLS_PSK_KEY_HEX)
        }
        var session: gnutls_session_t? = nil
        guard keySet >= 0, gnutls_init(&session, UInt32(GNUTLS_CLIENT)) >= 0, let session else {
            gnutls_psk_free_client_credentials(credentials)
            throw TestFailure("cannot make a GnuTLS client session")
        }
        self.session = session
        _ = gnutls_priority_set_direct(session, "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK", nil)
        _ = gnutls_credentials_set(session, GNUTLS_CRD_PSK, UnsafeMutableRawPointer(credentials))
        gnutls_transport_set_int2(session, socket.descriptor, socket.descriptor)
        gnutls_handshake_set_timeout(session, 5000)
        var result: Int32
        repeat { result = gnutls_handshake(session) } while result == GNUTLS_E_INTERRUPTED
        guard result >= 0 else {
            throw TestFailure("TLS handshake: \(String(cString: gnutls_strerror(result)))")
        }
    }

    deinit {
        gnutls_deinit(session)
        gnutls_psk_free_client_credentials(credentials)
    }

    func send(_ bytes: [UInt8]) throws {
        var sentCount = 0
        while sentCount < bytes.count {
            let result = bytes[sentCount...].withUnsafeBytes {
                gnutls_record_send(session, $0.baseAddress, $0.count)
            }
            guard result > 0 else {
                throw TestFailure(
                    "gnutls_record_send: \(String(cString: gnutls_strerror(Int32(result))))")
            }
            sentCount += result
        }
    }

    func receive(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var receivedCount = 0
        while receivedCount < count {
            let result = bytes[receivedCount...].withUnsafeMutableBytes {
                gnutls_record_recv(session, $0.baseAddress, $0.count)
            }
            if result == 0 {
                throw TestFailure("TLS session closed after \(receivedCount) of \(count) bytes")
            }
            guard result > 0 else {
                throw TestFailure(
                    "gnutls_record_recv: \(String(cString: gnutls_strerror(Int32(result))))")
            }
            receivedCount += result
        }
        return bytes
    }
}
