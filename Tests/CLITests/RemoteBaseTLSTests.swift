// A base served over TLS (`nbds+unix://`), with libnbd's own URI forms for credentials: a
// pre-shared key (`alice@`, `tls-psk-file=`) or certificates (`tls-certificates=`), made by
// certtool and psktool. The disk over it reads as the image byte for byte (libnbd is the
// judge); a wrong key (or a client certificate from another CA) is refused at create with
// one line.

import Foundation
import NBDClient
import TestSupport
import Testing

@Suite("Remote bases over TLS") struct RemoteBaseTLSTests {
    enum Credentials: String, CaseIterable, Sendable {
        case preSharedKey, certificates
    }

    @Test(arguments: Credentials.allCases)
    func tlsBaseReadsAsTheImageAndAWrongKeyIsRefused(kind: Credentials) throws {
        let credentials = try TLSTestCredentials()
        let workspace = try Workspace()
        let byteCount = 4 << 20
        try workspace.writeRandomFile("golden.img", byteCount: byteCount, seed: 52)
        try workspace.succeed("create", "golden.cow", "--base", "golden.img")
        let socket = workspace.path("base.sock")
        let serverArguments =
            kind == .preSharedKey
            ? ["--tls-psk", credentials.keysFile]
            : ["--tls-certificates", credentials.serverDirectory, "--tls-verify-peer"]
        let base = ServedStore(
            store: workspace.path("golden.cow"), socket: socket,
            extraArguments: ["--read-only"] + serverArguments)
        base.clientSettings = { connection in
            try connection.setTLS(.require)
            if kind == .preSharedKey {
                try connection.setTLSPSKFile(credentials.keysFile)
                try connection.setTLSUsername(credentials.username)
            } else {
                try connection.setTLSCertificates(directory: credentials.clientDirectory)
            }
        }
        try base.start()
        defer { base.kill() }
        func uri(keys: String) -> String {
            kind == .preSharedKey
                ? "nbds+unix://\(credentials.username)@/?socket=\(socket)&tls-psk-file=\(keys)"
                : "nbds+unix:///?socket=\(socket)&tls-certificates=\(keys)"
        }
        let good = uri(
            keys: kind == .preSharedKey ? credentials.keysFile : credentials.clientDirectory)
        try workspace.succeed("create", "vm.cow", "--base", good)
        let info = try workspace.json("info", "vm.cow", "--json")
        #expect(info["base_kind"] as? String == "nbd")
        #expect(info["fingerprint_status"] as? String == "ok")
        let disk = ServedStore(store: workspace.path("vm.cow"), socket: workspace.path("vm.sock"))
        try disk.start()
        defer { disk.kill() }
        let golden = try #require(workspace.contents("golden.img"))
        let served = try disk.connect().allBytes()
        #expect(served.count == byteCount && served == [UInt8](golden), "served disk differs")
        try disk.stop()

        let wrong = uri(
            keys: kind == .preSharedKey
                ? credentials.wrongKeysFile : credentials.untrustedClientDirectory)
        let refused = try workspace.cowbd("create", "other.cow", "--base", wrong)
        expectOneLineError(refused)
        #expect(refused.standardError.contains(socket), "\(refused.standardError)")
        #expect(!workspace.exists("other.cow"))
    }
}
