// Socket plumbing shared by the tests that speak raw bytes to a server.

import Foundation

/// Exactly `count` bytes from the socket `descriptor`; throws when the peer closes the
/// connection first, on an error, or after the socket's receive timeout.
/// The corresponding C function is `recv`.
public func receiveExactly(_ count: Int, from descriptor: Int32) throws -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    var receivedCount = 0
    while receivedCount < count {
        let result = bytes[receivedCount...].withUnsafeMutableBytes {
            recv(descriptor, $0.baseAddress, $0.count, 0)
        }
        if result == 0 {
            throw TestFailure("connection closed after \(receivedCount) of \(count) bytes")
        }
        guard result > 0 else {
            throw TestFailure("recv: errno \(errno) after \(receivedCount) of \(count) bytes")
        }
        receivedCount += result
    }
    return bytes
}
