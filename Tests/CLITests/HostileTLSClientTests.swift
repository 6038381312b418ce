// The hostile-client round over TLS: `cowbd serve --tls-psk` (TLS required) while a libnbd
// client keeps writing and verifying over TLS: a client that stops mid-TLS-handshake, one that
// goes silent after STARTTLS, garbage after STARTTLS and pipelined with it, plaintext options,
// and a wrong key. Each bad connection must end with a log line naming its peer, within the
// handshake timeout; the good client must be answered within 4 s throughout; the server lives.

import Foundation
import NBDClient
import TestSupport
import Testing

extension HostileClientTests {
    static let optStartTLS: UInt32 = 5  // NBD_OPT_STARTTLS
    static let repErrTLSRequired: UInt32 = 0x8000_0005  // NBD_REP_ERR_TLS_REQD

    @Test func badTLSClientsAreCutAndLoggedWhileAGoodTLSClientGoesOn() throws {
        let credentials = try TLSTestCredentials()
        let fixture = try HostileFixture(
            extraServerArguments: ["--tls-psk", credentials.keysFile],
            clientSettings: { connection in
                try connection.setTLS(.require)
                try connection.setTLSPSKFile(credentials.keysFile)
                try connection.setTLSUsername(credentials.username)
            })
        let uri =
            "nbds://\(credentials.username)@127.0.0.1:\(fixture.port)/disk?tls-psk-file="
            + credentials.keysFile
        let good = GoodClient(uri: uri, base: fixture.base)
        good.start()
        Thread.sleep(forTimeInterval: 1)
        let logStart = fixture.logByteCount()
        let attacks: [(String, @Sendable () -> Outcome)] = [
            ("stops mid-TLS-handshake", { Self.stopsMidHandshake(fixture) }),
            ("silent after STARTTLS", { Self.silentAfterStartTLS(fixture) }),
            ("garbage after STARTTLS", { Self.garbageAfterStartTLS(fixture, pipelined: false) }),
            (
                "garbage pipelined with STARTTLS",
                {
                    Self.garbageAfterStartTLS(fixture, pipelined: true)
                }
            ),
            ("plaintext options under --tls require", { Self.plaintextOptions(fixture) }),
            ("wrong pre-shared key", { Self.wrongKey(fixture, credentials) }),
        ]
        let outcomes = Outcomes()
        let group = DispatchGroup()
        for (name, attack) in attacks {
            DispatchQueue.global().async(group: group) { outcomes.set(name, attack()) }
        }
        #expect(group.wait(timeout: .now() + 60) == .success, "attacks did not finish")
        var badPorts: [Int] = []
        for (name, _) in attacks {
            let outcome = outcomes.get(name) ?? Outcome(ok: false, detail: "did not finish")
            let dealtWith = outcome.ok
            #expect(dealtWith, "\(name): \(outcome.detail)")
            badPorts += outcome.ports
        }
        let missing = fixture.portsWithoutEndingLine(badPorts, seconds: 15, since: logStart)
        #expect(missing.isEmpty, "bad connections without a log line: \(missing.sorted())")
        let report = good.finish()
        #expect(
            report.failures.isEmpty && report.operationCount > 10,
            Comment(
                rawValue: "good TLS client: \(report.operationCount) operations, "
                    + "\(report.reconnectCount) reconnects, slowest "
                    + "\(Int(report.slowestSeconds * 1000)) ms; failures: "
                    + "\(report.failures.prefix(3))"))
        #expect(fixture.server.isRunning, "the server died: \(fixture.server.logTail())")
        try fixture.server.stop()
    }

    /// Connects, sends the client flags and NBD_OPT_STARTTLS, and reads the ACK.
    static func startTLS(_ fixture: HostileFixture) throws -> HostileSocket {
        let connection = try HostileSocket(tcpPort: fixture.port)
        _ = try connection.receive(18)
        connection.send(bigEndian(NBDWire.clientFlags) + NBDWire.option(optStartTLS, length: 0))
        let reply = try connection.receive(20)
        guard NBDWire.integer(reply[12..<16]) == UInt64(Wire.repAck) else {
            throw TestFailure("STARTTLS not acknowledged: \(reply)")
        }
        return connection
    }

    /// Closed by the server within the handshake timeout and a margin.
    static func closedWithinHandshakeTimeout(_ connection: HostileSocket) -> Outcome {
        let started = Date()
        let closed = connection.closedByPeer(within: HostileClientTests.handshakeTimeoutSeconds + 5)
        let seconds = Date().timeIntervalSince(started)
        return Outcome(
            ok: closed, detail: "closed: \(closed) after \(Int(seconds)) s",
            ports: [connection.localPort])
    }

    /// The first 100 bytes of a 512-byte TLS handshake record (a ClientHello), then nothing.
    static func stopsMidHandshake(_ fixture: HostileFixture) -> Outcome {
        guard let connection = try? startTLS(fixture) else {
            return Outcome(ok: false, detail: "no STARTTLS")
        }
        connection.send([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03])
        connection.send([UInt8](repeating: 0x2a, count: 89))
        return closedWithinHandshakeTimeout(connection)
    }

    static func silentAfterStartTLS(_ fixture: HostileFixture) -> Outcome {
        guard let connection = try? startTLS(fixture) else {
            return Outcome(ok: false, detail: "no STARTTLS")
        }
        return closedWithinHandshakeTimeout(connection)
    }

    static func garbageAfterStartTLS(_ fixture: HostileFixture, pipelined: Bool) -> Outcome {
        var generator = SplitMix64(seed: pipelined ? 5 : 6)
        let garbage = (0..<4096).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
        let connection: HostileSocket
        if pipelined {
            guard let opened = try? HostileSocket(tcpPort: fixture.port),
                (try? opened.receive(18)) != nil
            else { return Outcome(ok: false, detail: "cannot connect") }
            opened.send(
                bigEndian(NBDWire.clientFlags) + NBDWire.option(optStartTLS, length: 0) + garbage)
            connection = opened
        } else {
            guard let opened = try? startTLS(fixture) else {
                return Outcome(ok: false, detail: "no STARTTLS")
            }
            opened.send(garbage)
            connection = opened
        }
        let closed = connection.closedByPeer(within: 5)
        return Outcome(
            ok: closed, detail: "closed within 5 s: \(closed)", ports: [connection.localPort])
    }

    /// LIST gets NBD_REP_ERR_TLS_REQD; EXPORT_NAME ends the connection with no export data.
    static func plaintextOptions(_ fixture: HostileFixture) -> Outcome {
        guard let connection = try? HostileSocket(tcpPort: fixture.port),
            (try? connection.receive(18)) != nil
        else { return Outcome(ok: false, detail: "cannot connect") }
        connection.send(bigEndian(NBDWire.clientFlags) + NBDWire.option(Wire.optList, length: 0))
        guard let reply = try? connection.receive(20) else {
            return Outcome(ok: false, detail: "no reply to LIST", ports: [connection.localPort])
        }
        _ = try? connection.receive(Int(NBDWire.integer(reply[16..<20])))
        let refused = NBDWire.integer(reply[12..<16]) == UInt64(repErrTLSRequired)
        let name = Array("disk".utf8)
        connection.send(NBDWire.option(Wire.optExportName, length: UInt32(name.count)) + name)
        let closed = connection.closedByPeer(within: 5)
        return Outcome(
            ok: refused && closed,
            detail: "LIST refused: \(refused), EXPORT_NAME closed: \(closed)",
            ports: [connection.localPort])
    }

    /// libnbd with the right name and the wrong key: refused, and the server says why.
    static func wrongKey(_ fixture: HostileFixture, _ credentials: TLSTestCredentials) -> Outcome {
        let since = fixture.logByteCount()
        let refused: Bool
        do {
            let connection = try NBDConnection()
            try connection.setTLS(.require)
            try connection.setTLSPSKFile(credentials.wrongKeysFile)
            try connection.setTLSUsername(credentials.username)
            try connection.setExportName("disk")
            try connection.connect(host: "127.0.0.1", port: "\(fixture.port)")
            refused = false
        } catch {
            refused = true
        }
        let logged = waitUntil(seconds: 5) {
            fixture.log(since: since).contains("gnutls_handshake failed")
        }
        return Outcome(ok: refused && logged, detail: "refused: \(refused), logged: \(logged)")
    }
}
