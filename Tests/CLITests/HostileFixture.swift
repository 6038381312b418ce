// The server the hostile-client tests attack (TCP on 127.0.0.1, so every log line names the
// client's port, and a unix socket), and the well-behaved client that must stay served.

import Foundation
import NBDClient
import Synchronization
import TestSupport

/// `cowbd serve` over a 64 MiB random base with tight limits, logging at info.
/// Sendable: every stored property is immutable, and ServedStore is only stopped by the test
/// after every attack has finished.
final class HostileFixture: @unchecked Sendable {
    let workspace: Workspace
    let server: ServedStore
    let port: Int
    let base: [UInt8]
    var storePath: String { workspace.path("disk.cow") }
    var uri: String { "nbd://127.0.0.1:\(port)/disk" }

    /// `extraServerArguments` go after the fixture's own (`--tls-psk FILE` for the TLS suite).
    init(
        extraServerArguments: [String] = [],
        clientSettings: @escaping (NBDConnection) throws -> Void = { _ in }
    ) throws {
        try Self.raiseOpenFileLimit(to: HostileClientTests.idleConnectionCount + 256)
        workspace = try Workspace()
        var generator = SplitMix64(seed: 0x4057_11e)
        var words = [UInt64](repeating: 0, count: HostileClientTests.diskByteCount / 8)
        for index in words.indices { words[index] = generator.next() }
        base = words.withUnsafeBytes { Array($0) }
        try Data(base).write(to: workspace.folder.appendingPathComponent("base.img"))
        try workspace.succeed("create", "disk.cow", "--base", "base.img")
        port = try Self.freePort()
        // A long description makes NBD_OPT_LIST replies big enough to fill a socket buffer.
        server = ServedStore(
            store: workspace.path("disk.cow"), socket: workspace.path("disk.sock"),
            exportName: "disk",
            extraArguments: [
                "--listen", "127.0.0.1:\(port)", "--export-name", "disk",
                "--description", String(repeating: "d", count: 4000),
                "--handshake-timeout", "\(Int(HostileClientTests.handshakeTimeoutSeconds))",
                "--message-timeout", "\(Int(HostileClientTests.messageTimeoutSeconds))",
                "--max-connections", "\(HostileClientTests.maxConnections)", "--log-level", "info",
            ] + extraServerArguments)
        server.clientSettings = clientSettings
        try server.start()
    }

    static func raiseOpenFileLimit(to count: Int) throws {
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        guard limit.rlim_cur < rlim_t(count) else { return }
        limit.rlim_cur = rlim_t(count)
        limit.rlim_max = max(limit.rlim_max, rlim_t(count))
        guard setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else {
            throw TestFailure("cannot raise the open-file limit to \(count): errno \(errno)")
        }
    }

    /// A TCP port on 127.0.0.1 that was free a moment ago.
    static func freePort() throws -> Int {
        let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(probe) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = in_addr_t(0x7f00_0001).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(probe, $0, length) == 0 && getsockname(probe, $0, &length) == 0
            }
        }
        guard bound else { throw TestFailure("cannot find a free port: errno \(errno)") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    func logByteCount() -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: server.logPath)[.size]) as? Int) ?? 0
    }

    /// The log from byte `since` on.
    func log(since: Int) -> String {
        guard let handle = FileHandle(forReadingAtPath: server.logPath) else { return "" }
        defer { try? handle.close() }
        try? handle.seek(toOffset: UInt64(since))
        return String(decoding: (try? handle.readToEnd()) ?? Data(), as: UTF8.self)
    }

    static let endingPhrases = [
        "connection ended", "client closed", "client detached", "handshake ended",
        "refusing a connection", "evict", "cannot send a reply",
    ]

    /// Client ports with a line saying their connection ended, from log byte `since` on (ports
    /// are reused, so older lines do not count).
    func endedPorts(since: Int) -> Set<Int> {
        var ports = Set<Int>()
        for line in log(since: since).split(separator: "\n")
        where Self.endingPhrases.contains(where: { line.contains($0) }) {
            if let match = line.firstMatch(of: /peer=127\.0\.0\.1:(\d+)/), let port = Int(match.1) {
                ports.insert(port)
            }
        }
        return ports
    }

    /// The ports in `ports` without an ending line after log byte `since`, once there are none
    /// or `seconds` have passed.
    func portsWithoutEndingLine(_ ports: [Int], seconds: Double, since: Int) -> Set<Int> {
        var missing = Set(ports)
        _ = waitUntil(seconds: seconds) {
            missing.subtract(endedPorts(since: since))
            return missing.isEmpty
        }
        return missing
    }
}

/// Writes, reads back and compares against a model; every 20 operations also opens a new
/// connection and reads through it; every 50 it flushes. Records every failure and the slowest
/// operation. Sendable: its state is behind `state`'s Mutex; the model lives on its thread.
final class GoodClient: Sendable {
    static let operationLimitSeconds = 4.0
    static let regionByteCount = 16 << 20

    struct Report: Sendable {
        var operationCount = 0
        var reconnectCount = 0
        var slowestSeconds = 0.0
        var failures: [String] = []
        var stopping = false
        var finished = false
    }

    let uri: String
    let base: [UInt8]
    private let state = Mutex(Report())

    init(uri: String, base: [UInt8]) {
        self.uri = uri
        self.base = base
    }

    var reconnectCount: Int { state.withLock { $0.reconnectCount } }

    func start() {
        let thread = Thread { [self] in
            run()
            state.withLock { $0.finished = true }
        }
        thread.start()
    }

    /// Stops the client (bounded) and returns what it saw.
    func finish() -> Report {
        state.withLock { $0.stopping = true }
        if !waitUntil(seconds: 30, { state.withLock { $0.finished } }) {
            state.withLock { $0.failures.append("did not stop within 30 s") }
        }
        return state.withLock { $0 }
    }

    /// A new connection, retried until `operationLimitSeconds` pass: while the server is at
    /// its connection limit a new client may have to try again.
    private func connect() throws -> NBDConnection {
        let deadline = Date().addingTimeInterval(Self.operationLimitSeconds)
        while true {
            do {
                let connection = try NBDConnection()
                try connection.setURIAllowLocalFile(true)  // an nbds:// URI's tls-psk-file
                try connection.connect(uri: uri)
                return connection
            } catch {
                if Date() > deadline { throw error }
                usleep(50_000)
            }
        }
    }

    private func timed(_ what: String, _ body: () throws -> Void) {
        let started = Date()
        var failure: String?
        do { try body() } catch { failure = "\(what): \(error)" }
        let elapsed = Date().timeIntervalSince(started)
        state.withLock { report in
            report.operationCount += 1
            report.slowestSeconds = max(report.slowestSeconds, elapsed)
            if let failure { report.failures.append(failure) }
            if elapsed > Self.operationLimitSeconds {
                report.failures.append("\(what) took \(elapsed) s")
            }
        }
    }

    private func run() {
        var model = Array(base.prefix(Self.regionByteCount))
        var generator = SplitMix64(seed: 1)
        let connection: NBDConnection
        do { connection = try connect() } catch {
            state.withLock { $0.failures.append("first connection: \(error)") }
            return
        }
        var operationCount = 0
        while !state.withLock({ $0.stopping }) {
            let byteOffset = Int(generator.next() % UInt64(Self.regionByteCount - 65536))
            let byteCount = 1 + Int(generator.next() % 65535)
            let bytes = (0..<byteCount).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            let readOffset = Int(generator.next() % UInt64(Self.regionByteCount - 131_072))
            timed("write/read") {
                try connection.pwrite(bytes, at: UInt64(byteOffset))
                model.replaceSubrange(byteOffset..<(byteOffset + byteCount), with: bytes)
                let read = try connection.pread(at: UInt64(readOffset), byteCount: 131_072)
                guard read[...] == model[readOffset..<(readOffset + 131_072)] else {
                    throw TestFailure("wrong bytes read at \(readOffset)")
                }
            }
            operationCount += 1
            if operationCount % 20 == 0 {
                let freshOffset = Int(generator.next() % UInt64(Self.regionByteCount - 4096))
                timed("reconnect") {
                    let fresh = try connect()
                    let read = try fresh.pread(at: UInt64(freshOffset), byteCount: 4096)
                    guard read[...] == model[freshOffset..<(freshOffset + 4096)] else {
                        throw TestFailure("wrong bytes read at \(freshOffset) (new connection)")
                    }
                    try fresh.shutdown()
                    state.withLock { $0.reconnectCount += 1 }
                }
            }
            if operationCount % 50 == 0 { timed("flush") { try connection.flush() } }
            usleep(10_000)
        }
        try? connection.shutdown()
    }
}
