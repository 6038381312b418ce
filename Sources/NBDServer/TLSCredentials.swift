// The server's TLS credentials, loaded once at start: an X.509 certificate and key (with the CA
// to verify clients against) or a pre-shared keys file, and the cipher priorities that go with
// them. All cryptography is GnuTLS's; this only names files and reports what failed.

import CGnuTLS
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Loaded GnuTLS credentials, shared by every connection. `@unchecked Sendable`: they are
/// written only in `init`; GnuTLS documents read-only use of credentials and priority caches
/// from many threads at once as safe.
final class TLSCredentials: @unchecked Sendable {
    /// Longest pre-shared keys file read for its check (psktool writes one short line a user).
    static let maxKeysFileByteCount = 1 << 20

    let configuration: TLSConfiguration
    // Set only in `init`. Each starts nil, so a throw part-way through `init` still runs
    // `deinit`, which frees whatever was made.
    private var certificates: gnutls_certificate_credentials_t? = nil
    private var preSharedKeys: gnutls_psk_server_credentials_t? = nil
    private var priorities: gnutls_priority_t? = nil

    /// Loads the credentials `configuration` names; throws naming the file and the failing
    /// call.
    init(_ configuration: TLSConfiguration) throws(ServerError) {
        self.configuration = configuration
        let priorityText: String
        switch configuration.credentials {
        case .certificates(let directory, let verifyPeer):
            try loadCertificates(directory: directory, verifyPeer: verifyPeer)
            priorityText = "NORMAL"
        case .preSharedKeys(let file):
            try Self.checkKeysFile(file)
            try Self.check(
                gnutls_psk_allocate_server_credentials(&preSharedKeys), path: file,
                "gnutls_psk_allocate_server_credentials")
            // GnuTLS reads the file again at each handshake, so a rewritten key file applies to
            // the next client without a restart.
            try Self.check(
                gnutls_psk_set_server_credentials_file(preSharedKeys, file), path: file,
                "gnutls_psk_set_server_credentials_file")
            // PSK suites are not in NORMAL; the ECDHE and DHE ones give forward secrecy.
            priorityText = "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK"
        }
        try Self.check(
            gnutls_priority_init(&priorities, priorityText, nil), path: priorityText,
            "gnutls_priority_init")
    }

    deinit {
        if let certificates { gnutls_certificate_free_credentials(certificates) }
        if let preSharedKeys { gnutls_psk_free_server_credentials(preSharedKeys) }
        if let priorities { gnutls_priority_deinit(priorities) }
    }

    /// Makes a server session with these credentials over nothing yet; the caller sets its
    /// transport and runs the handshake.
    func makeSession(peer: String) throws(ServerError) -> gnutls_session_t {
        var session: gnutls_session_t? = nil
        let initialised = gnutls_init(&session, UInt32(GNUTLS_SERVER))
        guard initialised >= 0, let session else {
            throw .tls(peer: peer, call: "gnutls_init", Self.message(initialised))
        }
        var result = gnutls_priority_set(session, priorities)
        if result >= 0, let certificates {
            result = gnutls_credentials_set(
                session, GNUTLS_CRD_CERTIFICATE, UnsafeMutableRawPointer(certificates))
            if result >= 0, case .certificates(_, verifyPeer: true) = configuration.credentials {
                gnutls_certificate_server_set_request(session, GNUTLS_CERT_REQUIRE)
                // Verified during the handshake against ca-cert.pem (and ca-crl.pem), which
                // then fails on a bad, expired or unsigned client certificate.
                gnutls_session_set_verify_cert(session, nil, 0)
            }
        }
        if result >= 0, let preSharedKeys {
            result = gnutls_credentials_set(
                session, GNUTLS_CRD_PSK, UnsafeMutableRawPointer(preSharedKeys))
        }
        guard result >= 0 else {
            gnutls_deinit(session)
            throw .tls(peer: peer, call: "gnutls_credentials_set", Self.message(result))
        }
        return session
    }

    /// GnuTLS's text for an error code.
    static func message(_ code: Int32) -> String {
        String(cString: gnutls_strerror(code))
    }

    private static func check(_ result: Int32, path: String, _ call: String) throws(ServerError) {
        guard result >= 0 else { throw .tlsSetup(path: path, call: call, message(result)) }
    }

    private func loadCertificates(directory: String, verifyPeer: Bool) throws(ServerError) {
        let certificate = directory + "/server-cert.pem"
        let key = directory + "/server-key.pem"
        let authority = directory + "/ca-cert.pem"
        let revocations = directory + "/ca-crl.pem"
        for required in [certificate, key] + (verifyPeer ? [authority] : []) {
            guard access(required, R_OK) == 0 else {
                throw .tlsSetup(path: required, call: "open", "\(Errno(rawValue: errno))")
            }
        }
        try Self.check(
            gnutls_certificate_allocate_credentials(&certificates), path: directory,
            "gnutls_certificate_allocate_credentials")
        try Self.check(
            gnutls_certificate_set_x509_key_file(
                certificates, certificate, key, GNUTLS_X509_FMT_PEM),
            path: "\(certificate) with \(key)", "gnutls_certificate_set_x509_key_file")
        if access(authority, R_OK) == 0 {
            try Self.check(
                gnutls_certificate_set_x509_trust_file(
                    certificates, authority, GNUTLS_X509_FMT_PEM),
                path: authority, "gnutls_certificate_set_x509_trust_file")
        }
        if access(revocations, R_OK) == 0 {
            try Self.check(
                gnutls_certificate_set_x509_crl_file(
                    certificates, revocations, GNUTLS_X509_FMT_PEM),
                path: revocations, "gnutls_certificate_set_x509_crl_file")
        }
    }

    /// Checks that a pre-shared keys file is readable and in psktool's format now, rather than
    /// at the first client's handshake. Reads names and lengths only; keys are not logged.
    private static func checkKeysFile(_ path: String) throws(ServerError) {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw .tlsSetup(path: path, call: "open", "\(Errno(rawValue: errno))")
        }
        defer { close(descriptor) }
        var bytes = [UInt8](repeating: 0, count: maxKeysFileByteCount + 1)
        let count = bytes.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
        guard count >= 0 else {
            throw .tlsSetup(path: path, call: "read", "\(Errno(rawValue: errno))")
        }
        guard count <= maxKeysFileByteCount else {
            throw .tlsSetup(path: path, call: "read", "longer than \(maxKeysFileByteCount) bytes")
        }
        let lines = bytes[..<count].split(
            separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        var keyCount = 0
        for (index, line) in lines.enumerated() where !line.isEmpty {
            let fields = line.split(separator: UInt8(ascii: ":"), omittingEmptySubsequences: false)
            let isHex = fields.last?.allSatisfy { Self.isHexDigit($0) } ?? false
            guard fields.count == 2, !fields[0].isEmpty, let key = fields.last, !key.isEmpty,
                key.count % 2 == 0, isHex
            else {
                throw .tlsSetup(
                    path: path, call: "parse",
                    "line \(index + 1) is not USERNAME:HEXKEY (psktool's format)")
            }
            keyCount += 1
        }
        guard keyCount > 0 else {
            throw .tlsSetup(path: path, call: "parse", "no USERNAME:HEXKEY line")
        }
    }

    private static func isHexDigit(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
            || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
            || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains(byte)
    }
}
