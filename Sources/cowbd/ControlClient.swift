// How the offline commands reach a served store (docs/CONTROL.md): the control socket beside
// the store (STORE.control, or --control PATH), one JSON request line, one response line.
// A store with no live socket is not served (or served without one): the caller goes on offline.

import ArgumentParser
import NBDServer
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// `--control PATH`: the control socket `serve` makes for live info and checkpoints, and the
/// one the other commands reach a served store through.
struct ControlOptions: ParsableArguments {
    @Option(
        name: .customLong("control"),
        help: ArgumentHelp(
            "The control socket of the served store (default: the store's path + .control).",
            valueName: "path"))
    var path: String?
}

/// The control socket `serve` makes for `storePath` unless told otherwise.
func defaultControlPath(storePath: String) -> String { storePath + ".control" }

/// A connection to a serving cowbd's control socket.
final class ControlClient {
    /// Seconds to wait for a response: a checkpoint flushes and samples the disk first.
    static let responseTimeoutSeconds = 600
    let path: String
    private let descriptor: Int32

    private init(path: String, descriptor: Int32) {
        self.path = path
        self.descriptor = descriptor
    }

    deinit { close(descriptor) }

    /// Connects to the server of `storePath`. Nil when nothing serves it there: no socket file,
    /// or a stale one left by a killed server (nobody accepts; the next `serve` replaces it).
    /// An explicit `--control` path that cannot be reached, or a socket of another user,
    /// throws. The corresponding C functions are `socket` and `connect`.
    static func connect(storePath: String, options: ControlOptions) throws -> ControlClient? {
        let path = options.path ?? defaultControlPath(storePath: storePath)
        var status = stat()
        guard lstat(path, &status) == 0, status.st_mode & S_IFMT == S_IFSOCK else {
            if options.path != nil { throw ControlFailure("\(path): no control socket there") }
            return nil
        }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(path.utf8)
        guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw ControlFailure("\(path): control socket path too long")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in pathBytes.enumerated() { raw[index] = byte }
        }
        let descriptor = socket(
            AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else {
            throw ControlFailure("\(path): socket failed: \(Errno(rawValue: errno))")
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            let failure = Errno(rawValue: errno)
            close(descriptor)
            // Nobody answers (stale), or another user's server: go on offline, where reading
            // works as it always did and changing meets the store's lock.
            if failure == .connectionRefused || failure == .permissionDenied,
                options.path == nil
            {
                return nil
            }
            throw ControlFailure("\(path): cannot reach the serving cowbd: \(failure)")
        }
        var timeout = timeval(tv_sec: responseTimeoutSeconds, tv_usec: 0)
        setsockopt(
            descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return ControlClient(path: path, descriptor: descriptor)
    }

    /// Sends `command` with `arguments` and returns the result; the server's error line is
    /// thrown as it is.
    func call(_ command: String, _ arguments: [(String, ControlJSON)] = []) throws -> ControlJSON {
        do {
            try sendRequest(command, arguments)
        } catch {
            // The server may have answered and closed first (a refused peer): read that.
            if let line = try? receiveLine() { return try ControlProtocol.parseResponse(line) }
            throw error
        }
        return try ControlProtocol.parseResponse(try receiveLine())
    }

    /// Sends `command` like `call`, and hands the bytes the server streams before its
    /// response line (frames: docs/CONTROL.md, "Byte streams") to `receive`, in order.
    func callStreaming(
        _ command: String, _ arguments: [(String, ControlJSON)],
        receive: (UnsafeRawBufferPointer) throws -> Void
    ) throws -> ControlJSON {
        try sendRequest(command, arguments)
        var buffer = [UInt8](repeating: 0, count: ControlStreamFrame.maxPayloadByteCount)
        var header = [UInt8](repeating: 0, count: ControlStreamFrame.headerByteCount)
        while true {
            try header.withUnsafeMutableBytes {
                try receiveExactly(UnsafeMutableRawBufferPointer(rebasing: $0[..<1]))
            }
            if header[0] == UInt8(ascii: "{") {
                return try ControlProtocol.parseResponse([header[0]] + (try receiveLine()))
            }
            try header.withUnsafeMutableBytes {
                try receiveExactly(UnsafeMutableRawBufferPointer(rebasing: $0[1...]))
            }
            guard
                let length = header.withUnsafeBytes({
                    ControlStreamFrame.payloadByteCount(header: $0)
                })
            else {
                throw ControlFailure("\(path): bad stream frame header \(header)")
            }
            try buffer.withUnsafeMutableBytes { bytes in
                let frame = UnsafeMutableRawBufferPointer(rebasing: bytes[..<length])
                try receiveExactly(frame)
                try receive(UnsafeRawBufferPointer(frame))
            }
        }
    }

    /// Sends the request line for `command` with `arguments`, all of it.
    private func sendRequest(_ command: String, _ arguments: [(String, ControlJSON)]) throws {
        let line = Array(
            ControlProtocol.requestLine(
                ControlRequest(command: command, arguments: .object(arguments))
            ).utf8)
        var sent = 0
        while sent < line.count {
            let result = line.withUnsafeBytes {
                send(descriptor, $0.baseAddress! + sent, line.count - sent, Int32(MSG_NOSIGNAL))
            }
            if result < 0 && errno == EINTR { continue }
            guard result > 0 else {
                throw ControlFailure("\(path): send failed: \(Errno(rawValue: errno))")
            }
            sent += result
        }
    }

    /// Fills `buffer` from the socket, byte for byte (no read-ahead: a line follows frames).
    private func receiveExactly(_ buffer: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            done += try receiveSome(UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
        }
    }

    /// One response line, without its newline.
    private func receiveLine() throws -> [UInt8] {
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while !response.contains(UInt8(ascii: "\n")) {
            guard response.count < ControlProtocol.maxLineByteCount * 64 else {
                throw ControlFailure("\(path): response too long")
            }
            let received = try chunk.withUnsafeMutableBytes { try receiveSome($0) }
            response += chunk[..<received]
        }
        let end = response.firstIndex(of: UInt8(ascii: "\n")) ?? response.endIndex
        return Array(response[..<end])
    }

    /// Receives what has arrived, up to `buffer.count` bytes, and returns how many (at least
    /// one). The server closing the connection, or an error, throws. The corresponding C
    /// function is `recv`.
    private func receiveSome(_ buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        while true {
            let received = recv(descriptor, buffer.baseAddress!, buffer.count, 0)
            if received < 0 && errno == EINTR { continue }
            guard received > 0 else {
                throw ControlFailure(
                    received == 0
                        ? "\(path): the server closed the control connection"
                        : "\(path): no response: \(Errno(rawValue: errno))")
            }
            return received
        }
    }
}

/// "key: value" rows sent as `[["key","value"],...]`.
func controlRows(_ value: ControlJSON?) -> [(String, String)] {
    guard case .array(let rows)? = value else { return [] }
    return rows.compactMap { row in
        guard case .array(let pair) = row, pair.count == 2, let key = pair[0].stringValue,
            let text = pair[1].stringValue
        else { return nil }
        return (key, text)
    }
}

/// Rows as a control value.
func controlValue(rows: [(String, String)]) -> ControlJSON {
    .array(rows.map { .array([.string($0.0), .string($0.1)]) })
}
