// TLS through NBD_OPT_STARTTLS against libnbd (nbds+unix) and a raw GnuTLS client: X.509
// certificates with and without client verification, pre-shared keys, plaintext refused under
// --tls require and served under --tls allow, bad credentials refused with a log line while the
// server goes on, and options chosen before STARTTLS forgotten after it.

import Foundation
import NBDClient
import TestSupport
import Testing

/// Spec numbers (nbd-protocol.md, "Values"), written out here rather than taken from the server.
private enum TLSWire {
    static let optStartTLS: UInt32 = 5
    static let optStructuredReply: UInt32 = 8
    static let optSetMetaContext: UInt32 = 10
    static let repErrInvalid: UInt32 = 0x8000_0003
    static let repErrTLSRequired: UInt32 = 0x8000_0005
}

@Suite(.serialized) struct TLSTests {
    func options(_ arguments: [String]) -> ServerOptions {
        var options = ServerOptions()
        options.extraArguments = arguments
        return options
    }

    /// Writes then reads back a pattern, through whichever settings `configure` makes.
    func roundTrip(_ server: TestServer, seed: UInt64, _ configure: (NBDConnection) throws -> Void)
        throws
    {
        let connection = try server.connect(configure)
        #expect(try connection.isTLSNegotiated())
        let data = patternBytes(count: 300_000, seed: seed)
        try connection.pwrite(data, at: 12_345)
        #expect(try connection.pread(at: 12_345, byteCount: data.count) == data)
        // A READ larger than a corked reply: header and payload in records of their own.
        let large = try connection.pread(at: 0, byteCount: 4 << 20)
        #expect(Array(large[12_345..<(12_345 + data.count)]) == data)
        try connection.shutdown()
    }

    @Test func certificatesCarryWritesAndReadsOverTLS() throws {
        let credentials = try TLSTestCredentials()
        try withTestServer(options(["--tls-certificates", credentials.serverDirectory])) {
            server in
            try roundTrip(server, seed: 1) { connection in
                try connection.setTLS(.require)
                try connection.setTLSCertificates(directory: credentials.anonymousClientDirectory)
            }
            #expect(server.serverStderr().contains("tls=true"))
        }
    }

    @Test func verifyPeerRefusesClientsWithoutATrustedCertificateAndServesTheNext() throws {
        let credentials = try TLSTestCredentials()
        try withTestServer(
            options(["--tls-certificates", credentials.serverDirectory, "--tls-verify-peer"])
        ) { server in
            for directory in [
                credentials.anonymousClientDirectory, credentials.untrustedClientDirectory,
            ] {
                #expect(throws: NBDClientError.self, "client certificates of \(directory)") {
                    try server.connect { connection in
                        try connection.setTLS(.require)
                        try connection.setTLSCertificates(directory: directory)
                    }
                }
            }
            try roundTrip(server, seed: 2) { connection in
                try connection.setTLS(.require)
                try connection.setTLSCertificates(directory: credentials.clientDirectory)
            }
            let failures = server.serverStderr().split(separator: "\n").filter {
                $0.contains("gnutls_handshake failed")
            }
            #expect(failures.count == 2, "\(server.serverStderr())")
        }
    }

    @Test func preSharedKeysServeTheRightKeyAndRefuseAWrongOne() throws {
        let credentials = try TLSTestCredentials()
        try withTestServer(options(["--tls-psk", credentials.keysFile])) { server in
            #expect(throws: NBDClientError.self, "a wrong key must be refused") {
                try server.connect { connection in
                    try connection.setTLS(.require)
                    try connection.setTLSPSKFile(credentials.wrongKeysFile)
                    try connection.setTLSUsername(credentials.username)
                }
            }
            try roundTrip(server, seed: 3) { connection in
                try connection.setTLS(.require)
                try connection.setTLSPSKFile(credentials.keysFile)
                try connection.setTLSUsername(credentials.username)
            }
            #expect(server.serverStderr().contains("gnutls_handshake failed"))
        }
    }

    @Test func plaintextIsRefusedUnderRequire() throws {
        let credentials = try TLSTestCredentials()
        try withTestServer(options(["--tls-psk", credentials.keysFile])) { server in
            #expect(
                server.printedURI.hasPrefix("nbds+unix:///disk?socket="), "\(server.printedURI)")
            #expect(throws: NBDClientError.self, "a plaintext client must not be served") {
                try server.connect { try $0.setTLS(.disable) }
            }
            // Raw: every option but STARTTLS gets NBD_REP_ERR_TLS_REQD, no export data.
            let socket = try RawSocket(unixSocketPath: server.socketPath)
            try RawProtocolTests().greet(socket)
            for option in [Wire.optList, Wire.optGo, TLSWire.optStructuredReply, 0x1234] {
                let data = option == Wire.optGo ? bigEndian(UInt32(0)) + bigEndian(UInt16(0)) : []
                try socket.sendOption(option, data)
                let reply = try socket.receiveOptionReply()
                #expect(reply.option == option && reply.type == TLSWire.repErrTLSRequired)
            }
            // EXPORT_NAME cannot be refused with an error: the connection ends, no size sent.
            try socket.sendOption(Wire.optExportName, Array("disk".utf8))
            #expect(socket.peerCloses())
        }
    }

    @Test func plaintextAndTLSAreBothServedUnderAllow() throws {
        let credentials = try TLSTestCredentials()
        try withTestServer(options(["--tls-psk", credentials.keysFile, "--tls", "allow"])) {
            server in
            #expect(server.printedURI.hasPrefix("nbd+unix:///disk?socket="), "\(server.printedURI)")
            let plain = try server.connect { try $0.setTLS(.disable) }
            #expect(try !plain.isTLSNegotiated())
            #expect(try plain.pread(at: 0, byteCount: 4096) == Array(TestImage.bytes[0..<4096]))
            try plain.shutdown()
            try roundTrip(server, seed: 4) { connection in
                try connection.setTLS(.require)
                try connection.setTLSPSKFile(credentials.keysFile)
                try connection.setTLSUsername(credentials.username)
            }
        }
    }

    /// CVE-2021-3716 class: structured replies and meta contexts chosen in plaintext must not
    /// survive STARTTLS, or a man in the middle decides how the encrypted replies are framed.
    @Test func optionsChosenBeforeStartTLSAreForgotten() throws {
        let credentials = try TLSTestCredentials()
        try withTestServer(options(["--tls-psk", credentials.keysFile, "--tls", "allow"])) {
            server in
            let socket = try RawSocket(unixSocketPath: server.socketPath)
            try RawProtocolTests().greet(socket)
            try socket.sendOption(TLSWire.optStructuredReply)
            #expect(try socket.receiveOptionReply().type == Wire.repAck)
            let query = "base:allocation"
            try socket.sendOption(
                TLSWire.optSetMetaContext,
                bigEndian(UInt32(4)) + Array("disk".utf8) + bigEndian(UInt32(1))
                    + bigEndian(UInt32(query.utf8.count)) + Array(query.utf8))
            var reply = try socket.receiveOptionReply()
            while reply.type != Wire.repAck { reply = try socket.receiveOptionReply() }
            try socket.sendOption(TLSWire.optStartTLS)
            #expect(try socket.receiveOptionReply().type == Wire.repAck)
            let tls = try TLSClientSession(
                over: socket, username: credentials.username,
                hexKey: credentials.hexKey(in: credentials.keysFile))
            try tls.sendOption(TLSWire.optStartTLS)
            #expect(try tls.receiveOptionReply().type == TLSWire.repErrInvalid)
            try tls.sendOption(Wire.optGo, bigEndian(UInt32(4)) + Array("disk".utf8) + [0, 0])
            reply = try tls.receiveOptionReply()
            while reply.type == Wire.repInfo { reply = try tls.receiveOptionReply() }
            #expect(reply.type == Wire.repAck)
            // A READ now gets a simple reply: structured replies were forgotten.
            try tls.send(
                bigEndian(Wire.requestMagic) + bigEndian(UInt16(0)) + bigEndian(Wire.cmdRead)
                    + bigEndian(UInt64(7)) + bigEndian(UInt64(4000)) + bigEndian(UInt32(9000)))
            #expect(try tls.receiveInteger(4) == UInt64(Wire.simpleReplyMagic))
            #expect(try tls.receiveInteger(4) == 0)
            #expect(try tls.receiveInteger(8) == 7)
            #expect(try tls.receive(9000) == Array(TestImage.bytes[4000..<13_000]))
            #expect(server.serverStderr().contains("structured=false"))
            #expect(server.serverStderr().contains("contexts= "))
        }
    }

    @Test func badCredentialFilesStopTheServerAtStartNamingTheFile() throws {
        let credentials = try TLSTestCredentials()
        let garbage = credentials.folder.appendingPathComponent("garbage.psk").path
        try "alice:not-hex\n".write(toFile: garbage, atomically: true, encoding: .utf8)
        let missing = credentials.folder.appendingPathComponent("missing").path
        // A certificate that is not PEM, beside a real key: GnuTLS refuses it, naming both.
        let broken = credentials.folder.appendingPathComponent("broken").path
        try FileManager.default.createDirectory(atPath: broken, withIntermediateDirectories: true)
        try "not a certificate\n".write(
            toFile: broken + "/server-cert.pem", atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(
            atPath: credentials.serverDirectory + "/server-key.pem",
            toPath: broken + "/server-key.pem")
        let folder = credentials.folder
        try TestImage.write(to: folder.appendingPathComponent("base.img").path)
        let cowbd = try cowbdExecutable()
        let created = try runCommand(
            cowbd, ["create", "disk.cow", "--base", "base.img"], in: folder)
        try #require(created.status == 0, "\(created.standardError)")
        for (arguments, named) in [
            (["--tls-psk", garbage], garbage), (["--tls-psk", missing], missing),
            (["--tls-certificates", missing], missing + "/server-cert.pem"),
            (["--tls-certificates", broken], broken + "/server-cert.pem with"),
            (
                ["--tls-certificates", credentials.anonymousClientDirectory],
                credentials.anonymousClientDirectory + "/server-cert.pem"
            ),
        ] {
            let result = try runCommand(
                cowbd, ["serve", "disk.cow", "--listen", "unix:nbd.sock"] + arguments, in: folder,
                seconds: 20)
            #expect(result.status != 0, "\(arguments)")
            #expect(result.standardError.contains(named), "\(result.standardError)")
        }
    }

    @Test func contradictoryTLSOptionsAreRefusedBeforeServing() throws {
        let cowbd = try cowbdExecutable()
        let folder = URL(fileURLWithPath: "/tmp").appendingPathComponent(
            "cowbd-tls-options-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        for (arguments, message) in [
            (["--tls", "require"], "--tls require needs --tls-certificates or --tls-psk"),
            (["--tls", "allow"], "--tls allow needs --tls-certificates or --tls-psk"),
            (["--tls-verify-peer"], "--tls-verify-peer needs --tls-certificates"),
            (
                ["--tls-certificates", "/nonexistent", "--tls-psk", "/nonexistent"],
                "--tls-certificates and --tls-psk cannot be used together"
            ),
            (["--tls", "sometimes"], "sometimes"),
        ] {
            let result = try runCommand(
                cowbd, ["serve", "/nonexistent.cow"] + arguments, in: folder, seconds: 20)
            #expect(result.status != 0, "\(arguments)")
            #expect(result.standardError.contains(message), "\(result.standardError)")
        }
    }
}
