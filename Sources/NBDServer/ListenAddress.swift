// Where the server listens: `HOST:PORT`, `[V6]:PORT` or `unix:PATH`, and the NBD URI a
// client would use to reach it.

/// A parsed `--listen` value.
public enum ListenAddress: Equatable, Sendable, CustomStringConvertible {
    case tcp(host: String, port: UInt16)
    case unix(path: String)

    /// The default: loopback only, the IANA NBD port.
    public static let defaultAddress = ListenAddress.tcp(host: "127.0.0.1", port: 10809)

    /// Parses `HOST:PORT`, `[V6]:PORT` or `unix:PATH`.
    public init(parsing text: String) throws(ServerError) {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard !path.isEmpty else { throw .invalidAddress(text, "unix: needs a path") }
            self = .unix(path: path)
            return
        }
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"),
                text[text.index(after: close)...].hasPrefix(":")
            else {
                throw .invalidAddress(text, "use [V6]:PORT")
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                throw .invalidAddress(text, "use HOST:PORT")
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty else { throw .invalidAddress(text, "missing host") }
        guard let port = UInt16(portText), port > 0 else {
            throw .invalidAddress(text, "bad port '\(portText)'")
        }
        self = .tcp(host: String(host), port: port)
    }

    public var description: String {
        switch self {
        case .tcp(let host, let port):
            return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unix(let path): return "unix:\(path)"
        }
    }

    /// The NBD URI for `exportName` at this address (the URI spec's form).
    public func uri(exportName: String) -> String {
        let name = exportName.addingPercentEncodingForURIPath()
        switch self {
        case .tcp(let host, let port):
            let shown = host.contains(":") ? "[\(host)]" : host
            return "nbd://\(shown):\(port)/\(name)"
        case .unix(let path):
            return "nbd+unix:///\(name)?socket=\(path)"
        }
    }
}

extension String {
    fileprivate func addingPercentEncodingForURIPath() -> String {
        var result = ""
        for byte in utf8 {
            let character = Character(UnicodeScalar(byte))
            if character.isLetter && byte < 128 || character.isNumber && byte < 128
                || "-._~".contains(character)
            {
                result.append(character)
            } else {
                result += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return result
    }

    fileprivate func leftPadded(to width: Int) -> String {
        String(repeating: "0", count: max(0, width - count)) + self
    }
}
