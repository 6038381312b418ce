// TLS settings made before connecting: whether to use it, and the credentials libnbd uses
// (X.509 certificates in a folder, or a psktool keys file). Each wraps one libnbd call.

import CNBD

/// What libnbd does about TLS (`LIBNBD_TLS_*`).
public enum NBDTLSMode: Int32, Sendable {
    /// `LIBNBD_TLS_DISABLE`: never send NBD_OPT_STARTTLS.
    case disable = 0
    /// `LIBNBD_TLS_ALLOW`: upgrade if the server agrees, else go on in plaintext.
    case allow = 1
    /// `LIBNBD_TLS_REQUIRE`: upgrade or fail.
    case require = 2
}

extension NBDConnection {
    /// The corresponding C function is `nbd_set_tls`.
    public func setTLS(_ mode: NBDTLSMode) throws {
        try check(nbd_set_tls(handle, mode.rawValue), "nbd_set_tls")
    }

    /// A folder with `ca-cert.pem` (and `client-cert.pem`, `client-key.pem` for a client
    /// certificate). The corresponding C function is `nbd_set_tls_certificates`.
    public func setTLSCertificates(directory: String) throws {
        try check(nbd_set_tls_certificates(handle, directory), "nbd_set_tls_certificates")
    }

    /// Whether to verify the server's certificate (default on). The corresponding C function
    /// is `nbd_set_tls_verify_peer`.
    public func setTLSVerifyPeer(_ verify: Bool) throws {
        try check(nbd_set_tls_verify_peer(handle, verify), "nbd_set_tls_verify_peer")
    }

    /// A psktool keys file. The corresponding C function is `nbd_set_tls_psk_file`.
    public func setTLSPSKFile(_ path: String) throws {
        try check(nbd_set_tls_psk_file(handle, path), "nbd_set_tls_psk_file")
    }

    /// The PSK user name to look up (default: the login name). The corresponding C function is
    /// `nbd_set_tls_username`.
    public func setTLSUsername(_ name: String) throws {
        try check(nbd_set_tls_username(handle, name), "nbd_set_tls_username")
    }

    /// Whether a URI may name local files (`tls-psk-file=`, `tls-certificates=`). The
    /// corresponding C function is `nbd_set_uri_allow_local_file`.
    public func setURIAllowLocalFile(_ allow: Bool) throws {
        try check(nbd_set_uri_allow_local_file(handle, allow), "nbd_set_uri_allow_local_file")
    }

    /// Whether the connection is encrypted. The corresponding C function is
    /// `nbd_get_tls_negotiated`.
    public func isTLSNegotiated() throws -> Bool {
        let result = nbd_get_tls_negotiated(handle)
        try check(result, "nbd_get_tls_negotiated")
        return result == 1
    }
}
