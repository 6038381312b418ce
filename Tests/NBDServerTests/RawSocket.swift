// A plain blocking Unix-socket client for tests that must send bytes libnbd never would. The
// spec numbers it sends are TestSupport's `Wire`, written out from the spec, not NBDProtocol's.

import Foundation

/// One blocking connection with a receive timeout, so a silent server fails the test.
final class RawSocket {
    static let receiveTimeoutSeconds = 5
    /// The socket, for a TLS session a test runs over it.
    let descriptor: Int32

    init(unixSocketPath path: String) throws {
        descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw TestFailure("socket: errno \(errno)") }
        var timeout = timeval(tv_sec: Self.receiveTimeoutSeconds, tv_usec: 0)
        setsockopt(
            descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(path.utf8)
        guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(descriptor)
            throw TestFailure("socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: pathBytes + [0]) }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard result == 0 else {
            let code = errno
            close(descriptor)
            throw TestFailure("connect \(path): errno \(code)")
        }
    }

    deinit { close(descriptor) }

    func send(_ bytes: [UInt8]) throws {
        var sentCount = 0
        while sentCount < bytes.count {
            let result = bytes[sentCount...].withUnsafeBytes {
                Foundation.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
            }
            guard result > 0 else { throw TestFailure("send: errno \(errno)") }
            sentCount += result
        }
    }

    /// Exactly `count` bytes; throws on end of stream or after the receive timeout.
    func receive(_ count: Int) throws -> [UInt8] { try receiveExactly(count, from: descriptor) }

    /// Whether the peer closes the connection (EOF or reset) within the receive timeout,
    /// discarding anything it sends first.
    func peerCloses() -> Bool {
        var buffer = [UInt8](repeating: 0, count: 4096)
        for _ in 0..<1000 {
            let result = buffer.withUnsafeMutableBytes {
                recv(descriptor, $0.baseAddress, $0.count, 0)
            }
            if result == 0 || (result < 0 && errno == ECONNRESET) { return true }
            if result < 0 { return false }  // timeout: still open
        }
        return false
    }

    func receiveUInt16() throws -> UInt16 { UInt16(try receiveInteger(2)) }
    func receiveUInt32() throws -> UInt32 { UInt32(try receiveInteger(4)) }
    func receiveUInt64() throws -> UInt64 { try receiveInteger(8) }

    private func receiveInteger(_ byteCount: Int) throws -> UInt64 {
        try receive(byteCount).reduce(0) { $0 << 8 | UInt64($1) }
    }
}
