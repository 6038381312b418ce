// A raw client socket for the hostile-client tests: TCP to 127.0.0.1 (so every server log line
// names the client's port) or a unix socket, with the sends and receives a misbehaving client
// makes.

import Foundation
import TestSupport

/// The messages a hand-made client sends, from TestSupport's spec numbers.
enum NBDWire {
    /// NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES.
    static let clientFlags = UInt32(Wire.flagFixedNewstyle | Wire.flagNoZeroes)

    /// An option header: IHAVEOPT, the option, the length of its data.
    static func option(_ option: UInt32, length: UInt32) -> [UInt8] {
        bigEndian(Wire.optionMagic) + bigEndian(option) + bigEndian(length)
    }

    /// A simple-header request (28 bytes).
    static func request(_ command: UInt16, byteOffset: UInt64, length: UInt32, cookie: UInt64)
        -> [UInt8]
    {
        bigEndian(Wire.requestMagic) + bigEndian(UInt16(0)) + bigEndian(command)
            + bigEndian(cookie) + bigEndian(byteOffset) + bigEndian(length)
    }

    static func integer(_ bytes: ArraySlice<UInt8>) -> UInt64 {
        bytes.reduce(0) { $0 << 8 | UInt64($1) }
    }
}

/// One blocking client socket. `localPort` is its TCP port (0 for a unix socket).
final class HostileSocket {
    let descriptor: Int32
    private(set) var localPort = 0

    init(tcpPort port: Int, receiveTimeoutSeconds: Double = 10) throws {
        descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw TestFailure("socket: errno \(errno)") }
        setReceiveTimeout(seconds: receiveTimeoutSeconds)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = in_addr_t(0x7f00_0001).bigEndian
        try connect(&address)
        var bound = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getsockname(descriptor, $0, &length)
            }
        }
        localPort = Int(UInt16(bigEndian: bound.sin_port))
    }

    init(unixSocketPath path: String) throws {
        descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw TestFailure("socket: errno \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        try connect(&address)
    }

    deinit { close(descriptor) }

    private func connect<Address>(_ address: inout Address) throws {
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Foundation.connect(descriptor, $0, socklen_t(MemoryLayout<Address>.size))
            }
        }
        guard result == 0 else {
            let code = errno
            close(descriptor)
            throw TestFailure("connect: errno \(code)")
        }
    }

    func setReceiveTimeout(seconds: Double) {
        var timeout = timeval(
            tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1_000_000))
        setsockopt(
            descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// A small receive buffer, so a client that does not read fills it quickly.
    func shrinkReceiveBuffer() {
        var byteCount: Int32 = 4096
        setsockopt(
            descriptor, SOL_SOCKET, SO_RCVBUF, &byteCount, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Sends all of `bytes`; false if the peer has closed or reset the connection.
    @discardableResult
    func send(_ bytes: [UInt8]) -> Bool {
        var sentCount = 0
        while sentCount < bytes.count {
            let result = bytes[sentCount...].withUnsafeBytes {
                Foundation.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
            }
            guard result > 0 else { return false }
            sentCount += result
        }
        return true
    }

    /// Sends what fits without blocking: the byte count sent, 0 when the socket is full.
    func sendWithoutBlocking(_ bytes: ArraySlice<UInt8>) -> Int {
        let result = bytes.withUnsafeBytes {
            Foundation.send(
                descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
        }
        return max(result, 0)
    }

    /// Exactly `count` bytes; throws on end of stream or after the receive timeout.
    func receive(_ count: Int) throws -> [UInt8] { try receiveExactly(count, from: descriptor) }

    /// Whether the peer closes the connection (EOF or reset) within `seconds`, discarding
    /// whatever it sends first.
    func closedByPeer(within seconds: Double) -> Bool {
        setReceiveTimeout(seconds: 0.5)
        var buffer = [UInt8](repeating: 0, count: 65536)
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            let result = buffer.withUnsafeMutableBytes {
                recv(descriptor, $0.baseAddress, $0.count, 0)
            }
            if result == 0 || (result < 0 && (errno == ECONNRESET || errno == EPIPE)) {
                return true
            }
        }
        return false
    }

    /// Without waiting: true once the peer has closed (EOF or reset); discards pending bytes.
    func peerHasClosed() -> Bool {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let result = buffer.withUnsafeMutableBytes {
                recv(descriptor, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT))
            }
            if result > 0 { continue }
            return result == 0 || errno == ECONNRESET
        }
    }

    /// The fixed-newstyle handshake up to NBD_OPT_GO for `exportName` (compact headers, simple
    /// replies). Throws if the server refuses.
    static func handshake(tcpPort port: Int, exportName: String = "disk") throws -> HostileSocket {
        let connection = try HostileSocket(tcpPort: port)
        let greeting = try connection.receive(18)
        guard NBDWire.integer(greeting[0..<8]) == Wire.initPassword,
            NBDWire.integer(greeting[8..<16]) == Wire.optionMagic
        else { throw TestFailure("not an NBD greeting: \(greeting)") }
        let name = Array(exportName.utf8)
        let data = bigEndian(UInt32(name.count)) + name + bigEndian(UInt16(0))
        connection.send(
            bigEndian(NBDWire.clientFlags)
                + NBDWire.option(Wire.optGo, length: UInt32(data.count)) + data)
        while true {
            let header = try connection.receive(20)
            let replyType = UInt32(NBDWire.integer(header[12..<16]))
            _ = try connection.receive(Int(NBDWire.integer(header[16..<20])))
            guard NBDWire.integer(header[0..<8]) == Wire.optionReplyMagic else {
                throw TestFailure("bad option reply magic")
            }
            if replyType == Wire.repAck { return connection }
            guard replyType < 0x8000_0000 else { throw TestFailure("GO refused: \(replyType)") }
        }
    }
}
