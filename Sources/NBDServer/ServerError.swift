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

    public var description: String {
        switch self {
        case .invalidAddress(let text, let why): return "invalid listen address '\(text)': \(why)"
        case .socket(let address, let call, let errno):
            return "\(address): \(call) failed: \(errno)"
        case .addressInUse(let address): return "\(address): already in use by a running server"
        case .peerClosed: return "the client closed the connection"
        case .timedOut(let what): return "timed out \(what)"
        case .protocolViolation(let what): return "protocol violation: \(what)"
        }
    }
}
