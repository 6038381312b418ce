// `serve --metrics HOST:PORT`: a minimal HTTP/1.x responder for Prometheus scrapes. GET
// /metrics returns the exposition (ServerMetrics.swift); any other path 404, any other method
// 405. One scrape at a time on one thread, each connection closed after its response, request
// heads bounded in size and time: enough for a scraper, nothing for anyone else to hold.

import CowSupport
import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// The listening metrics socket.
public final class MetricsEndpoint: Sendable {
    /// Longest request head read; a longer one is answered 431 and closed.
    static let maxRequestHeadByteCount = 8 << 10
    /// Seconds a scraper has to send its request head.
    static let requestTimeoutSeconds: Double = 5

    public let address: ListenAddress
    private let listener: Listener
    private let render: @Sendable () -> [UInt8]

    /// Binds `address` (a TCP address); `render` produces the body of each scrape.
    public init(address: ListenAddress, render: @escaping @Sendable () -> [UInt8]) throws {
        listener = try Listener(address: address)
        self.address = address
        self.render = render
    }

    /// Answers scrapes on a thread of its own until `stop`.
    public func start() {
        startThread { [self] in
            while let transport = listener.accept() {
                answer(transport)
                transport.shutdownBoth()
            }
        }
    }

    public func stop() { listener.shutdownAndRemove() }

    /// "http://HOST:PORT/metrics".
    public var url: String {
        guard case .tcp(let host, let port) = address else { return address.description }
        return "http://" + (host.contains(":") ? "[\(host)]" : host) + ":\(port)/metrics"
    }

    private func answer(_ transport: SocketTransport) {
        var head: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 2048)
        let deadline = monotonicSeconds() + Self.requestTimeoutSeconds
        let endOfHead: [UInt8] = Array("\r\n\r\n".utf8)
        while !head.contains(subsequence: endOfHead) {
            guard head.count < Self.maxRequestHeadByteCount else {
                return respond(transport, status: "431 Request Header Fields Too Large", body: [])
            }
            guard
                let received = try? chunk.withUnsafeMutableBytes({
                    try transport.receiveSome(into: $0, deadline: deadline)
                })
            else { return }
            head += chunk[..<received]
        }
        let requestLine = head.prefix { $0 != UInt8(ascii: "\r") }
        let parts = requestLine.split(separator: UInt8(ascii: " ")).map {
            String(decoding: $0, as: UTF8.self)
        }
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1.") else {
            return respond(transport, status: "400 Bad Request", body: [])
        }
        guard parts[0] == "GET" || parts[0] == "HEAD" else {
            return respond(transport, status: "405 Method Not Allowed", body: [])
        }
        let path = parts[1].prefix { $0 != "?" }
        guard path == "/metrics" else {
            return respond(transport, status: "404 Not Found", body: [])
        }
        let body = render()
        respond(
            transport, status: "200 OK", body: parts[0] == "HEAD" ? [] : body,
            contentType: "text/plain; version=0.0.4; charset=utf-8")
    }

    private func respond(
        _ transport: SocketTransport, status: String, body: [UInt8],
        contentType: String = "text/plain; charset=utf-8"
    ) {
        let head =
            "HTTP/1.1 \(status)\r\nContent-Type: \(contentType)\r\n"
            + "Content-Length: \(body.count)\r\nConnection: close\r\n\r\n"
        try? transport.send(Array(head.utf8) + body)
    }
}

extension Array where Element == UInt8 {
    fileprivate func contains(subsequence: [UInt8]) -> Bool {
        guard count >= subsequence.count else { return false }
        return (0...(count - subsequence.count)).contains {
            Array(self[$0..<($0 + subsequence.count)]) == subsequence
        }
    }
}
