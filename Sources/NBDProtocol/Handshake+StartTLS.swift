// NBD_OPT_STARTTLS and the TLS modes of the spec's "TLS support" section: which options a
// connection may send before TLS, and what an upgrade forgets. The TLS session itself is the
// server's: this only decides.

/// The server's TLS mode for a connection (the spec's NOTLS, SELECTIVETLS and FORCEDTLS).
public enum TLSMode: Sendable {
    /// NOTLS: NBD_OPT_STARTTLS gets NBD_REP_ERR_UNSUP; NBD_REP_ERR_TLS_REQD is never sent.
    case noTLS
    /// SELECTIVETLS with no TLS-only export: the client may upgrade, or not.
    case selective
    /// FORCEDTLS: every option but NBD_OPT_STARTTLS and NBD_OPT_ABORT gets
    /// NBD_REP_ERR_TLS_REQD until TLS is initiated; NBD_OPT_EXPORT_NAME closes the connection.
    case forced
}

extension Handshake {
    /// Under FORCEDTLS before the upgrade: the reply to any option that is neither STARTTLS nor
    /// ABORT (unknown ones included, as the spec says). Nil when the option may proceed.
    func refusalUntilTLS(_ rawOption: UInt32) -> HandshakeAction? {
        guard tlsMode == .forced, !isTLSInitiated,
            rawOption != Option.startTLS.rawValue, rawOption != Option.abort.rawValue
        else { return nil }
        if rawOption == Option.exportName.rawValue {
            // EXPORT_NAME has no error reply: the spec's answer is to end the session.
            return .replyAndClose(
                [], reason: "NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS, and TLS is required")
        }
        return .reply(
            Self.reply(
                rawOption, .errTLSRequired,
                message: "TLS is required: send NBD_OPT_STARTTLS first"))
    }

    /// NBD_OPT_STARTTLS: the ACK, after which the server runs the TLS handshake.
    mutating func startTLS(_ data: [UInt8]) -> HandshakeAction {
        let option = Option.startTLS.rawValue
        guard tlsMode != .noTLS else {
            return .reply(
                Self.reply(option, .errUnsup, message: "TLS is not configured on this server"))
        }
        guard data.isEmpty else {
            return .reply(Self.reply(option, .errInvalid, message: "option takes no data"))
        }
        guard !isTLSInitiated else {
            return .reply(Self.reply(option, .errInvalid, message: "TLS is already initiated"))
        }
        beginTLS()
        return .replyAndStartTLS(Self.reply(option, .ack))
    }
}
