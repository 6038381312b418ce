// Hostile clients against `cowbd serve` while a well-behaved libnbd client keeps writing and
// verifying a model of the disk: garbage before and after the handshake, a 4 GiB option length,
// a 4 GiB READ and WRITE header, 2000 idle connections, a client that never reads its replies
// (in the handshake and in transmission), and clients sending one byte a second.
//
// The good client must be answered within 4 s throughout (reconnects included), every bad
// connection must end with a log line naming its peer, the server's memory (VmHWM under its
// baseline VmRSS + 64 MiB) and threads must stay bounded, and the server must never die. The
// server runs with --handshake-timeout 10 --message-timeout 5 --max-connections 64, so each bad
// client ends in seconds.

import Foundation
import Synchronization
import TestSupport
import Testing

// Serialized: the plaintext and the TLS round (HostileTLSClientTests.swift) each time a good
// client, so they must not compete with each other for the CPU.
@Suite("Hostile clients", .serialized) struct HostileClientTests {
    static let handshakeTimeoutSeconds = 10.0
    static let messageTimeoutSeconds = 5.0
    static let maxConnections = 64
    /// COWBD_HOSTILE_LONG=1: 10,000 idle connections in each of three rounds.
    static let long = ProcessInfo.processInfo.environment["COWBD_HOSTILE_LONG"] == "1"
    static let idleConnectionCount = long ? 10_000 : 2000
    static let roundCount = long ? 3 : 1
    static let rssGrowthLimitByteCount = 64 << 20
    static let diskByteCount = 64 << 20
    static let mebibyte = 1 << 20

    /// One attack: whether the server dealt with it, what happened, its bad connections' ports.
    struct Outcome: Sendable {
        var ok: Bool
        var detail: String
        var ports: [Int] = []
    }

    @Test func badClientsNeitherStallAGoodClientNorGrowTheServer() throws {
        let fixture = try HostileFixture()
        let server = fixture.server
        let good = GoodClient(uri: fixture.uri, base: fixture.base)
        good.start()
        Thread.sleep(forTimeInterval: 2)  // warm up: the good client's buffers, the page cache
        let pid = server.processIdentifier
        let baselineRSS = try procStatus(pid, "VmRSS")
        let baselineThreads = try procStatus(pid, "Threads")
        for round in 1...Self.roundCount { Self.attackOnce(round: round, fixture, good) }
        let report = good.finish()
        #expect(
            report.failures.isEmpty && report.operationCount > 100,
            Comment(
                rawValue: "good client: \(report.operationCount) operations, "
                    + "\(report.reconnectCount) reconnects, slowest "
                    + "\(Int(report.slowestSeconds * 1000)) ms; failures: "
                    + "\(report.failures.prefix(3))"))
        let peak = try procStatus(pid, "VmHWM")
        #expect(
            peak - baselineRSS < Self.rssGrowthLimitByteCount,
            "server memory: baseline \(baselineRSS >> 20) MiB, peak \(peak >> 20) MiB")
        _ = waitUntil(seconds: 15) { (try? procStatus(pid, "Threads")) ?? 0 <= baselineThreads }
        let threads = try procStatus(pid, "Threads")
        #expect(threads <= baselineThreads, "\(threads) threads now, \(baselineThreads) before")
        try server.stop()
        let check = try runCommand(
            try cowbdExecutable(), ["check", fixture.storePath], in: fixture.workspace.folder)
        #expect(check.status == 0, "cowbd check: \(check.standardOutput.suffix(200))")
    }

    /// One round: every attack side by side, then the idle connections; every bad connection
    /// must end with a log line and the server must live.
    static func attackOnce(round: Int, _ fixture: HostileFixture, _ good: GoodClient) {
        let logStart = fixture.logByteCount()
        // The slow and stuck clients take seconds each: they run side by side.
        let outcomes = Outcomes()
        let group = DispatchGroup()
        for (name, attack) in Self.attacks {
            DispatchQueue.global().async(group: group) { [fixture] in
                outcomes.set(name, attack(fixture))
            }
        }
        #expect(group.wait(timeout: .now() + 120) == .success, "attacks did not finish")
        var badPorts: [Int] = []
        for (name, _) in Self.attacks {
            let outcome = outcomes.get(name) ?? Outcome(ok: false, detail: "did not finish")
            let dealtWith = outcome.ok  // not the outcome itself: its ports would fill the report
            #expect(dealtWith, "round \(round), \(name): \(outcome.detail)")
            badPorts += outcome.ports
        }
        let idle = idleConnections(fixture, good)
        let idleClosed = idle.ok
        #expect(idleClosed, "\(idleConnectionCount) idle connections: \(idle.detail)")
        badPorts += idle.ports
        let missing = fixture.portsWithoutEndingLine(badPorts, seconds: 15, since: logStart)
        #expect(
            missing.isEmpty,
            Comment(
                rawValue: "\(Set(badPorts).count - missing.count)/\(Set(badPorts).count) bad "
                    + "connections logged; missing e.g. \(missing.sorted().prefix(5))"))
        #expect(fixture.server.isRunning, "the server died: \(fixture.server.logTail())")
    }

    // MARK: Attacks

    static let attacks: [(String, @Sendable (HostileFixture) -> Outcome)] = [
        ("garbage right after connecting", garbageAfterConnecting),
        ("garbage after the handshake", garbageAfterHandshake),
        ("option with a 4 GiB length", optionLength4GiB),
        ("READ of 4 GiB refused, connection usable", read4GiB),
        ("WRITE header of 4 GiB without payload", writeHeader4GiB),
        ("client that never reads its replies", neverReadsReplies),
        ("handshake replies never read", optionFloodNeverRead),
        ("one byte a second in the handshake", slowHandshake),
        ("one byte a second in a request", slowRequest),
    ]

    static let garbageAfterConnecting: @Sendable (HostileFixture) -> Outcome = { fixture in
        var ports: [Int] = []
        var closedCount = 0
        for variant in 0..<4 {
            guard let connection = try? HostileSocket(tcpPort: fixture.port) else {
                return Outcome(ok: false, detail: "cannot connect", ports: ports)
            }
            ports.append(connection.localPort)
            if variant % 2 == 1 { _ = try? connection.receive(18) }  // the greeting first, or not
            var generator = SplitMix64(seed: UInt64(variant))
            connection.send(
                variant < 2
                    ? (0..<4096).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
                    : [UInt8](repeating: 0xff, count: 100))
            if connection.closedByPeer(within: 10) { closedCount += 1 }
        }
        return Outcome(
            ok: closedCount == 4, detail: "\(closedCount)/4 closed by the server", ports: ports)
    }

    static let garbageAfterHandshake: @Sendable (HostileFixture) -> Outcome = { fixture in
        guard let connection = try? HostileSocket.handshake(tcpPort: fixture.port) else {
            return Outcome(ok: false, detail: "handshake failed")
        }
        var generator = SplitMix64(seed: 99)
        connection.send((0..<280).map { _ in UInt8(truncatingIfNeeded: generator.next()) })
        return closedOutcome(connection)
    }

    static let optionLength4GiB: @Sendable (HostileFixture) -> Outcome = { fixture in
        guard let connection = try? HostileSocket(tcpPort: fixture.port),
            (try? connection.receive(18)) != nil
        else { return Outcome(ok: false, detail: "cannot connect") }
        connection.send(
            bigEndian(NBDWire.clientFlags)
                + NBDWire.option(Wire.optGo, length: 0xFFFF_FFFF)
                + [UInt8](repeating: 0, count: 64))
        return closedOutcome(connection)
    }

    /// A READ of 4 GiB is answered with EINVAL or EOVERFLOW and the connection stays usable.
    static let read4GiB: @Sendable (HostileFixture) -> Outcome = { fixture in
        guard let connection = try? HostileSocket.handshake(tcpPort: fixture.port) else {
            return Outcome(ok: false, detail: "handshake failed")
        }
        let port = connection.localPort
        connection.send(
            NBDWire.request(Wire.cmdRead, byteOffset: 0, length: 0xFFFF_FFFF, cookie: 7))
        guard let refusal = try? connection.receive(16) else {
            return Outcome(ok: false, detail: "no reply to the 4 GiB READ", ports: [port])
        }
        let error = Int32(NBDWire.integer(refusal[4..<8]))
        let refused =
            NBDWire.integer(refusal[0..<4]) == UInt64(Wire.simpleReplyMagic)
            && (error == EINVAL || error == EOVERFLOW) && NBDWire.integer(refusal[8..<16]) == 7
        connection.send(NBDWire.request(Wire.cmdRead, byteOffset: 4096, length: 512, cookie: 8))
        let answer = try? connection.receive(16 + 512)
        let usable =
            answer.map { NBDWire.integer($0[4..<8]) == 0 && NBDWire.integer($0[8..<16]) == 8 }
            ?? false
        connection.send(NBDWire.request(Wire.cmdDisc, byteOffset: 0, length: 0, cookie: 9))
        return Outcome(
            ok: refused && usable, detail: "error \(error), then a read answered: \(usable)",
            ports: [port])
    }

    static let writeHeader4GiB: @Sendable (HostileFixture) -> Outcome = { fixture in
        guard let connection = try? HostileSocket.handshake(tcpPort: fixture.port) else {
            return Outcome(ok: false, detail: "handshake failed")
        }
        connection.send(
            NBDWire.request(Wire.cmdWrite, byteOffset: 0, length: 0xFFFF_FFFF, cookie: 1))
        return closedOutcome(connection)
    }

    /// Many 1 MiB reads, replies never read: the server must give up sending within the message
    /// timeout, drop the connection and log it.
    static let neverReadsReplies: @Sendable (HostileFixture) -> Outcome = { fixture in
        let since = fixture.logByteCount()
        guard let connection = try? HostileSocket.handshake(tcpPort: fixture.port) else {
            return Outcome(ok: false, detail: "handshake failed")
        }
        connection.shrinkReceiveBuffer()
        var requestCount: UInt64 = 0
        let started = Date()
        var lastProgress = Date()
        // Send until the server stops taking requests for a second (it is blocked sending).
        while Date().timeIntervalSince(lastProgress) < 1 && Date().timeIntervalSince(started) < 10 {
            let request = NBDWire.request(
                Wire.cmdRead, byteOffset: (requestCount % 60) * UInt64(mebibyte),
                length: UInt32(mebibyte), cookie: requestCount)
            if connection.sendWithoutBlocking(request[...]) == request.count {
                requestCount += 1
                lastProgress = Date()
            } else {
                usleep(50_000)
            }
        }
        let stalled = Date()
        let missing = fixture.portsWithoutEndingLine(
            [connection.localPort], seconds: messageTimeoutSeconds + 10, since: since)
        return Outcome(
            ok: missing.isEmpty,
            detail: "\(requestCount) requests sent until the server stopped reading; "
                + (missing.isEmpty
                    ? "dropped and logged \(Int(Date().timeIntervalSince(stalled))) s later"
                    : "never logged"),
            ports: [connection.localPort])
    }

    /// 250 NBD_OPT_LIST (each answered with ~4 KiB) over the unix socket, replies never read:
    /// the server blocks sending them, and the handshake timeout must still end the connection.
    static let optionFloodNeverRead: @Sendable (HostileFixture) -> Outcome = { fixture in
        let since = fixture.logByteCount()
        guard let connection = try? HostileSocket(unixSocketPath: fixture.server.socketPath) else {
            return Outcome(ok: false, detail: "cannot connect")
        }
        connection.shrinkReceiveBuffer()
        connection.send(bigEndian(NBDWire.clientFlags))
        let options = Array(
            repeatElement(NBDWire.option(Wire.optList, length: 0), count: 250).joined())
        var sentCount = 0
        let started = Date()
        while sentCount < options.count && Date().timeIntervalSince(started) < 3 {
            let sent = connection.sendWithoutBlocking(options[sentCount...])
            if sent == 0 { usleep(50_000) }
            sentCount += sent
        }
        let logged = waitUntil(seconds: handshakeTimeoutSeconds + 15) {
            fixture.log(since: since).split(separator: "\n").contains {
                $0.contains("peer=unix:") && $0.contains("timed out sending")
            }
        }
        return Outcome(
            ok: logged,
            detail: "\(sentCount / 16) options sent; "
                + (logged ? "dropped and logged" : "no log line")
                + " after \(Int(Date().timeIntervalSince(started))) s")
    }

    /// Client flags and an option, one byte a second: the handshake timeout ends it.
    static let slowHandshake: @Sendable (HostileFixture) -> Outcome = { fixture in
        guard let connection = try? HostileSocket(tcpPort: fixture.port),
            (try? connection.receive(18)) != nil
        else { return Outcome(ok: false, detail: "cannot connect") }
        let message = bigEndian(UInt32(1)) + NBDWire.option(Wire.optList, length: 0)
        return trickle(
            Array(repeatElement(message, count: 4).joined()), connection,
            limitSeconds: handshakeTimeoutSeconds + 5)
    }

    /// After the handshake, a READ header one byte a second: the message timeout ends it.
    static let slowRequest: @Sendable (HostileFixture) -> Outcome = { fixture in
        guard let connection = try? HostileSocket.handshake(tcpPort: fixture.port) else {
            return Outcome(ok: false, detail: "handshake failed")
        }
        let request = NBDWire.request(Wire.cmdRead, byteOffset: 0, length: 4096, cookie: 1)
        return trickle(
            Array(repeatElement(request, count: 3).joined()), connection,
            limitSeconds: messageTimeoutSeconds + 5)
    }

    /// Sends `bytes` one a second; the server must close the connection within `limitSeconds`.
    static func trickle(_ bytes: [UInt8], _ connection: HostileSocket, limitSeconds: Double)
        -> Outcome
    {
        let started = Date()
        var closed = false
        for byte in bytes {
            if !connection.send([byte]) || connection.closedByPeer(within: 1) {
                closed = true
                break
            }
        }
        let elapsed = Date().timeIntervalSince(started)
        return Outcome(
            ok: closed && elapsed < limitSeconds,
            detail: closed ? "closed by the server after \(Int(elapsed)) s" : "never closed",
            ports: [connection.localPort])
    }

    static func closedOutcome(_ connection: HostileSocket) -> Outcome {
        let closed = connection.closedByPeer(within: 10)
        return Outcome(
            ok: closed, detail: closed ? "closed by the server" : "still open",
            ports: [connection.localPort])
    }

    /// `idleConnectionCount` connections opened as fast as possible and left idle. The server
    /// must close every one (at its limit, or when the handshake times out) and log each, while
    /// the good client goes on, reconnects included.
    static func idleConnections(_ fixture: HostileFixture, _ good: GoodClient) -> Outcome {
        let reconnectsBefore = good.reconnectCount
        var connections: [HostileSocket] = []
        let started = Date()
        for _ in 0..<idleConnectionCount {
            guard let connection = try? HostileSocket(tcpPort: fixture.port) else {
                return Outcome(
                    ok: false, detail: "connect failed after \(connections.count)",
                    ports: connections.map(\.localPort))
            }
            connections.append(connection)
        }
        let ports = connections.map(\.localPort)
        var open = Set(connections.indices)
        let deadline = Date().addingTimeInterval(handshakeTimeoutSeconds + 15)
        while !open.isEmpty && Date() < deadline {
            for index in open where connections[index].peerHasClosed() { open.remove(index) }
            usleep(200_000)
        }
        let reconnects = good.reconnectCount - reconnectsBefore
        return Outcome(
            ok: open.isEmpty && reconnects > 0,
            detail: "\(ports.count) opened, all but \(open.count) closed by the server after "
                + "\(Int(Date().timeIntervalSince(started))) s; the good client reconnected "
                + "\(reconnects) times meanwhile",
            ports: ports)
    }
}

/// The attacks' outcomes by name, filled from several threads. Sendable: `Mutex`-guarded.
final class Outcomes: Sendable {
    private let outcomes = Mutex([String: HostileClientTests.Outcome]())
    func set(_ name: String, _ outcome: HostileClientTests.Outcome) {
        outcomes.withLock { $0[name] = outcome }
    }
    func get(_ name: String) -> HostileClientTests.Outcome? { outcomes.withLock { $0[name] } }
}

/// A field of /proc/PID/status, in bytes for kB fields.
func procStatus(_ pid: Int32, _ key: String) throws -> Int {
    let text = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
    for line in text.split(separator: "\n") where line.hasPrefix(key + ":") {
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            .flatMap { $0.split(separator: "\t") }
        guard fields.count >= 2, let value = Int(fields[1]) else { break }
        return fields.last == "kB" ? value * 1024 : value
    }
    throw TestFailure("no \(key) in /proc/\(pid)/status")
}
