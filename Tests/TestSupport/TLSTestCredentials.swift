// TLS credentials for tests, made fresh by GnuTLS's own tools (certtool, psktool) in a
// temporary folder: nothing secret or expiring is committed, and nothing here is cryptography
// of ours. Laid out as nbdkit, qemu, libnbd and cowbd expect.

import Foundation

/// A test CA, a server certificate for localhost, client certificates (one the CA signed, one
/// it did not) and pre-shared keys files. Removed from disk in `deinit`.
public final class TLSTestCredentials: Sendable {
    public let folder: URL
    /// ca-cert.pem, server-cert.pem, server-key.pem: `cowbd serve --tls-certificates`.
    public var serverDirectory: String { folder.appendingPathComponent("server").path }
    /// ca-cert.pem, client-cert.pem, client-key.pem, signed by the same CA: libnbd, qemu.
    public var clientDirectory: String { folder.appendingPathComponent("client").path }
    /// ca-cert.pem only: a client that verifies the server but has no certificate of its own.
    public var anonymousClientDirectory: String {
        folder.appendingPathComponent("anonymous").path
    }
    /// A client certificate signed by another CA (the server's ca-cert.pem, to trust it).
    public var untrustedClientDirectory: String { folder.appendingPathComponent("untrusted").path }
    /// `alice:KEY`, as `psktool -u alice` writes it.
    public var keysFile: String { folder.appendingPathComponent("keys.psk").path }
    /// `alice:OTHERKEY`: the right name with the wrong key.
    public var wrongKeysFile: String { folder.appendingPathComponent("wrong.psk").path }
    public let username = "alice"

    /// Makes every file with certtool and psktool (ECDSA keys: quick to generate).
    public init() throws {
        folder = URL(fileURLWithPath: "/tmp").appendingPathComponent(
            "cowbd-tls-\(UUID().uuidString.prefix(8))")
        for name in ["pki", "server", "client", "anonymous", "untrusted"] {
            try FileManager.default.createDirectory(
                at: folder.appendingPathComponent(name), withIntermediateDirectories: true)
        }
        try makeCertificates()
        try run("psktool", ["-u", username, "-p", keysFile])
        try run("psktool", ["-u", username, "-p", wrongKeysFile])
    }

    deinit { try? FileManager.default.removeItem(at: folder) }

    /// The hexadecimal key of `username` in a keys file.
    public func hexKey(in file: String) throws -> String {
        let text = try String(contentsOfFile: file, encoding: .utf8)
        guard
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix(username + ":") })
        else { throw TestFailure("\(file): no key for \(username)") }
        return String(line.dropFirst(username.count + 1))
    }

    private func makeCertificates() throws {
        let pki = folder.appendingPathComponent("pki").path
        let days = "expiration_days = 3650\n"
        try write("\(pki)/ca.info", "cn = cowbd test CA\nca\ncert_signing_key\n" + days)
        try write("\(pki)/other-ca.info", "cn = another CA\nca\ncert_signing_key\n" + days)
        try write(
            "\(pki)/server.info",
            "organization = cowbd test\ncn = localhost\ndns_name = localhost\n"
                + "ip_address = 127.0.0.1\nip_address = ::1\ntls_www_server\nencryption_key\n"
                + "signing_key\n" + days)
        try write(
            "\(pki)/client.info",
            "organization = cowbd test\ncn = client\ntls_www_client\nencryption_key\n"
                + "signing_key\n" + days)
        for name in ["ca", "other-ca", "server", "client", "untrusted"] {
            try run(
                "certtool",
                ["--generate-privkey", "--key-type=ecdsa", "--outfile", "\(pki)/\(name)-key.pem"])
        }
        for ca in ["ca", "other-ca"] {
            try run(
                "certtool",
                [
                    "--generate-self-signed", "--load-privkey", "\(pki)/\(ca)-key.pem",
                    "--template", "\(pki)/\(ca).info", "--outfile", "\(pki)/\(ca)-cert.pem",
                ])
        }
        for (name, template, ca) in [
            ("server", "server", "ca"), ("client", "client", "ca"),
            ("untrusted", "client", "other-ca"),
        ] {
            try run(
                "certtool",
                [
                    "--generate-certificate", "--load-privkey", "\(pki)/\(name)-key.pem",
                    "--load-ca-certificate", "\(pki)/\(ca)-cert.pem", "--load-ca-privkey",
                    "\(pki)/\(ca)-key.pem", "--template", "\(pki)/\(template).info",
                    "--outfile", "\(pki)/\(name)-cert.pem",
                ])
        }
        let copies: [(String, String)] = [
            ("ca-cert.pem", "server/ca-cert.pem"), ("server-cert.pem", "server/server-cert.pem"),
            ("server-key.pem", "server/server-key.pem"), ("ca-cert.pem", "client/ca-cert.pem"),
            ("client-cert.pem", "client/client-cert.pem"),
            ("client-key.pem", "client/client-key.pem"), ("ca-cert.pem", "anonymous/ca-cert.pem"),
            ("ca-cert.pem", "untrusted/ca-cert.pem"),
            ("untrusted-cert.pem", "untrusted/client-cert.pem"),
            ("untrusted-key.pem", "untrusted/client-key.pem"),
        ]
        for (source, destination) in copies {
            try FileManager.default.copyItem(
                atPath: "\(pki)/\(source)", toPath: folder.appendingPathComponent(destination).path)
        }
    }

    private func write(_ path: String, _ text: String) throws {
        try text.write(toFile: path, atomically: true, encoding: .utf8)
    }

    private func run(_ tool: String, _ arguments: [String]) throws {
        let result = try runCommand(
            URL(fileURLWithPath: "/usr/bin/\(tool)"), arguments, in: folder)
        guard result.status == 0 else {
            throw TestFailure(
                "\(tool) \(arguments.joined(separator: " ")) exited with status "
                    + "\(result.status) (is gnutls-bin installed?): \(result.standardError)")
        }
    }
}
