// What `cowbd serve --tls-*` asks for: where the credentials are and whether plaintext clients
// are served too. Loading them is TLSCredentials'; the handshake rules are NBDProtocol's.

import NBDProtocol

/// TLS for the server's connections (the NBD spec's "TLS support"): nil in
/// `NBDServer.Configuration.tls` serves plaintext only (NOTLS).
public struct TLSConfiguration: Sendable {
    /// Where the server's TLS credentials come from.
    public enum Credentials: Sendable, Equatable {
        /// A folder laid out as nbdkit and qemu expect: `server-cert.pem`, `server-key.pem`,
        /// and `ca-cert.pem` (needed with `verifyPeer`, which requires a client certificate
        /// the CA signed). `ca-crl.pem` is honoured when present.
        case certificates(directory: String, verifyPeer: Bool)
        /// A pre-shared keys file in psktool's format: `USERNAME:HEXKEY` lines.
        case preSharedKeys(file: String)
    }

    /// Whether a client may stay in plaintext.
    public enum Requirement: String, Sendable, CaseIterable {
        /// FORCEDTLS: every option but NBD_OPT_STARTTLS and NBD_OPT_ABORT is refused with
        /// NBD_REP_ERR_TLS_REQD until TLS is up, so no data is ever sent in plaintext.
        case require
        /// SELECTIVETLS: TLS is offered; a client that does not ask is served in plaintext.
        case allow
    }

    public var credentials: Credentials
    public var requirement: Requirement

    public init(credentials: Credentials, requirement: Requirement = .require) {
        self.credentials = credentials
        self.requirement = requirement
    }

    /// The handshake's mode for this configuration.
    var handshakeMode: TLSMode {
        switch requirement {
        case .require: return .forced
        case .allow: return .selective
        }
    }
}
