// What the live-management tests share: a served store in a workspace, the chunks a
// checkpoint's dirty bitmap marks (read with the libnbd client), raw lines on the control
// socket, and a scrape of the metrics endpoint.

import Foundation
import NBDClient
import TestSupport

#if canImport(Glibc)
    import Glibc
#endif

/// A workspace with `base.img` (zeros, `diskByteCount` bytes) and `disk.cow` over it, served.
final class LiveFixture {
    static let chunkByteCount = 4096
    let workspace: Workspace
    let server: ServedStore
    let diskByteCount: Int

    init(diskByteCount: Int, serveArguments: [String] = []) throws {
        self.diskByteCount = diskByteCount
        workspace = try Workspace()
        let base = FileManager.default.createFile(atPath: workspace.path("base.img"), contents: nil)
        guard base, truncate(workspace.path("base.img"), off_t(diskByteCount)) == 0 else {
            throw TestFailure("cannot make base.img")
        }
        try workspace.succeed("create", "disk.cow", "--base", "base.img")
        server = ServedStore(
            store: workspace.path("disk.cow"), socket: workspace.path("nbd.sock"),
            extraArguments: serveArguments)
        try server.start()
    }

    /// The chunks marked in `qemu:dirty-bitmap:NAME`, asked of the server by the Swift client.
    func dirtyChunks(since name: String) throws -> Set<Int> {
        let context = "qemu:dirty-bitmap:" + name
        let connection = try server.connect { try $0.addMetaContext(context) }
        guard try connection.canMetaContext(context) else {
            throw TestFailure("the server did not agree to \(context)")
        }
        var dirty = Set<Int>()
        var offset: UInt64 = 0
        var rounds = 0
        while offset < UInt64(diskByteCount) {
            rounds += 1
            guard rounds < 100_000 else { throw TestFailure("block status makes no progress") }
            let extents =
                try connection.blockStatus(
                    at: offset, byteCount: UInt64(diskByteCount) - offset)[context] ?? []
            guard !extents.isEmpty else { throw TestFailure("no extents for \(context)") }
            for extent in extents {
                if extent.flags & 1 != 0 {
                    let first = Int(offset) / Self.chunkByteCount
                    let end =
                        (Int(offset + extent.length) + Self.chunkByteCount - 1)
                        / Self.chunkByteCount
                    for chunk in first..<end { dirty.insert(chunk) }
                }
                offset += extent.length
            }
        }
        return dirty
    }

    /// The chunks `nbdinfo --map=qemu:dirty-bitmap:NAME --json` reports dirty.
    func dirtyChunksByNbdinfo(since name: String) throws -> Set<Int> {
        let result = try runCommand(
            URL(fileURLWithPath: "/usr/bin/nbdinfo"),
            [
                "--map=qemu:dirty-bitmap:" + name, "--json",
                "nbd+unix:///?socket=" + server.socketPath,
            ], in: workspace.folder)
        guard result.status == 0,
            let entries = try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8))
                as? [[String: Any]]
        else { throw TestFailure("nbdinfo --map failed: \(result.standardError)") }
        var dirty = Set<Int>()
        for entry in entries {
            guard let offset = entry["offset"] as? Int, let length = entry["length"] as? Int,
                let type = entry["type"] as? Int
            else { throw TestFailure("nbdinfo entry \(entry)") }
            guard type & 1 != 0 else { continue }
            for chunk in (offset / Self.chunkByteCount)..<((offset + length) / Self.chunkByteCount)
            {
                dirty.insert(chunk)
            }
        }
        return dirty
    }

    /// The whole disk, read through a new connection.
    func readDisk() throws -> [UInt8] {
        let connection = try server.connect()
        var bytes: [UInt8] = []
        let step = 1 << 20
        for offset in stride(from: 0, to: diskByteCount, by: step) {
            bytes += try connection.pread(
                at: UInt64(offset), byteCount: min(step, diskByteCount - offset))
        }
        return bytes
    }
}

/// Sends `text` to the unix socket at `path` and returns what comes back until the server
/// closes or `lineCount` lines arrived (bounded by a 10 s receive timeout).
func exchangeLines(socketPath path: String, _ text: [UInt8], lineCount: Int) throws -> [String] {
    let descriptor = try connectUnix(path)
    defer { close(descriptor) }
    var sent = 0
    while sent < text.count {
        let result = text.withUnsafeBytes {
            send(descriptor, $0.baseAddress! + sent, text.count - sent, Int32(MSG_NOSIGNAL))
        }
        guard result > 0 else { break }  // the server may close on an overlong line
        sent += result
    }
    var received: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while received.filter({ $0 == UInt8(ascii: "\n") }).count < lineCount {
        let count = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress!, $0.count, 0) }
        guard count > 0 else { break }
        received += chunk[..<count]
    }
    return String(decoding: received, as: UTF8.self).split(separator: "\n").map(String.init)
}

/// A connected unix stream socket with a 10 s receive timeout.
func connectUnix(_ path: String) throws -> Int32 {
    let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
    }
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
    }
    guard connected == 0 else {
        close(descriptor)
        throw TestFailure("connect \(path): errno \(errno)")
    }
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    return descriptor
}

/// GET http://127.0.0.1:PORT/PATH over a plain socket: the status line and the body.
func httpGet(port: UInt16, path: String) throws -> (status: String, body: String) {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(descriptor) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard connected == 0 else { throw TestFailure("connect 127.0.0.1:\(port): errno \(errno)") }
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    let request = Array("GET \(path) HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8)
    _ = request.withUnsafeBytes { send(descriptor, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
    var received: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress!, $0.count, 0) }
        guard count > 0 else { break }
        received += chunk[..<count]
    }
    let text = String(decoding: received, as: UTF8.self)
    guard let split = text.range(of: "\r\n\r\n") else { throw TestFailure("no HTTP head: \(text)") }
    let status = text[..<split.lowerBound].components(separatedBy: "\r\n").first ?? ""

    return (status, String(text[split.upperBound...]))
}

/// Prometheus text format (version 0.0.4) samples: "name{labels}" → value. Comments and
/// blank lines skipped; a malformed sample line throws.
func parsePrometheusText(_ text: String) throws -> [String: Double] {
    var samples: [String: Double] = [:]
    for line in text.split(separator: "\n") where !line.hasPrefix("#") && !line.isEmpty {
        guard let space = line.lastIndex(of: " "),
            let value = Double(line[line.index(after: space)...])
        else { throw TestFailure("not a sample line: \(line)") }
        let key = String(line[..<space])
        guard
            key.wholeMatch(of: /[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})?/)
                != nil
        else { throw TestFailure("bad metric name or labels: \(key)") }
        samples[key] = value
    }
    return samples
}
