// Operating errors of the server: bad addresses, sockets that cannot be made, peers that break
// the protocol. Each names the address or peer and the failing call.

import SystemPackage

/// Why the server (or one connection) could not go on.
public enum ServerError: Error, CustomStringConvertible {
    case invalidAddress(String, String)
    case socket(address: String, call: String, Errno)
    case addressInUse(String)
    case peerClosed
    case timedOut(String)
    case protocolViolation(String)
    /// TLS credentials that cannot be loaded: the file, the failing call, GnuTLS's message.
    case tlsSetup(path: String, call: String, String)
    /// A TLS session that failed with one client: a bad certificate, a wrong key, a broken
    /// record.
    case tls(peer: String, call: String, String)

    public var description: String {
        switch self {
        case .invalidAddress(let text, let why): return "invalid listen address '\(text)': \(why)"
        case .socket(let address, let call, let errno):
            return "\(address): \(call) failed: \(errno)"
        case .addressInUse(let address): return "\(address): already in use by a running server"
        case .peerClosed: return "the client closed the connection"
        case .timedOut(let what): return "timed out \(what)"
        case .protocolViolation(let what): return "protocol violation: \(what)"
        case .tlsSetup(let path, let call, let message):
            return "\(path): \(call) failed: \(message)"
        case .tls(let peer, let call, let message):
            return "\(peer): TLS: \(call) failed: \(message)"
        }
    }
}
