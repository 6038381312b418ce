// `cowbd serve`'s TLS options: credentials as nbdkit and qemu lay them out, and whether
// plaintext clients are still served. Loading and the handshake are NBDServer's.

import ArgumentParser
import NBDServer

/// The TLS options of `cowbd serve`, shown under their own heading in --help and the man page.
struct TLSOptions: ParsableArguments {
    /// `--tls off` beside the two requirements.
    enum Mode: String, ExpressibleByArgument, CaseIterable {
        case require, allow, off
    }

    @Option(
        name: .customLong("tls-certificates"),
        help: ArgumentHelp(
            """
            Offer TLS with the X.509 certificate in DIR: server-cert.pem, server-key.pem and, \
            to verify clients, ca-cert.pem (and ca-crl.pem if present), as nbdkit and qemu lay \
            them out. Clients: nbds:// URIs, qemu's --object tls-creds-x509, nbd-client -certfile.
            """,
            valueName: "dir"))
    var certificates: String?

    @Flag(
        name: .customLong("tls-verify-peer"),
        help: "With --tls-certificates: require a client certificate signed by ca-cert.pem.")
    var verifyPeer = false

    @Option(
        name: .customLong("tls-psk"),
        help: ArgumentHelp(
            """
            Offer TLS with the pre-shared keys in FILE, USERNAME:HEXKEY lines as `psktool -u \
            USERNAME -p FILE` writes them (keep it mode 0600). Clients: libnbd's tls-psk-file, \
            qemu's --object tls-creds-psk.
            """,
            valueName: "file"))
    var preSharedKeys: String?

    @Option(
        name: .customLong("tls"),
        help: ArgumentHelp(
            """
            require (the default with credentials): every option but STARTTLS is refused \
            with NBD_REP_ERR_TLS_REQD until the client has upgraded, so no data is ever sent in \
            plaintext. allow: plaintext clients are served too. off: no TLS.
            """,
            valueName: "mode"))
    var mode: Mode?

    func validate() throws {
        if certificates != nil && preSharedKeys != nil {
            throw ValidationError("--tls-certificates and --tls-psk cannot be used together")
        }
        if verifyPeer && certificates == nil {
            throw ValidationError("--tls-verify-peer needs --tls-certificates")
        }
        if let mode, mode != .off, certificates == nil, preSharedKeys == nil {
            throw ValidationError("--tls \(mode.rawValue) needs --tls-certificates or --tls-psk")
        }
    }

    /// The server's TLS configuration; nil for plaintext only.
    var serverConfiguration: TLSConfiguration? {
        let requirement: TLSConfiguration.Requirement
        switch mode ?? .require {
        case .off: return nil
        case .require: requirement = .require
        case .allow: requirement = .allow
        }
        if let certificates {
            return TLSConfiguration(
                credentials: .certificates(directory: certificates, verifyPeer: verifyPeer),
                requirement: requirement)
        }
        if let preSharedKeys {
            return TLSConfiguration(
                credentials: .preSharedKeys(file: preSharedKeys), requirement: requirement)
        }
        return nil
    }
}
