// A listening socket for one `--listen` address: TCP (IPv4 or IPv6) or a unix socket made
// with mode 0600. Stale unix socket files are replaced; a live one is refused.

import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// A bound, listening socket. `@unchecked Sendable`: the descriptor is immutable; `accept`
/// runs on one thread and `close` wakes it from another, which the kernel allows.
final class Listener: @unchecked Sendable {
    let address: ListenAddress
    let descriptor: Int32
    /// Connections the kernel queues until `accept` takes them (capped by `somaxconn`). A full
    /// queue drops new TCP clients' SYNs, which costs them a second or more to retry, so it is
    /// deep enough for a burst of thousands of connections a second.
    static let backlog: Int32 = 1024

    init(address: ListenAddress) throws(ServerError) {
        self.address = address
        switch address {
        case .tcp(let host, let port):
            descriptor = try Self.bindTCP(host: host, port: port, address: address.description)
        case .unix(let path):
            descriptor = try Self.bindUnix(path: path, address: address.description)
        }
        guard listen(descriptor, Self.backlog) == 0 else {
            let failure = Errno(rawValue: errno)
            close(descriptor)
            throw .socket(address: address.description, call: "listen", failure)
        }
    }

    /// Waits for the next client; nil once the listener was shut down.
    /// The corresponding C functions are `accept` and `fcntl(FD_CLOEXEC)`.
    func accept() -> SocketTransport? {
        while true {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let client = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.accept(descriptor, $0, &length)
                }
            }
            if client >= 0 {
                _ = fcntl(client, F_SETFD, FD_CLOEXEC)
                let transport = SocketTransport(
                    descriptor: client, peer: Self.describe(storage, fallback: address))
                // Both fail harmlessly on unix sockets.
                transport.setNoDelay()
                transport.enableKeepAlive()
                return transport
            }
            switch errno {
            case EINTR, ECONNABORTED, EPROTO: continue
            case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                usleep(100_000)  // out of descriptors: back off rather than spin
                continue
            default: return nil
            }
        }
    }

    /// Stops accepting: wakes `accept` and removes a unix socket file.
    func shutdownAndRemove() {
        _ = shutdown(descriptor, Int32(SHUT_RDWR))
        close(descriptor)
        if case .unix(let path) = address { _ = unlink(path) }
    }

    private static func bindTCP(host: String, port: UInt16, address: String) throws(ServerError)
        -> Int32
    {
        var hints = addrinfo()
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var results: UnsafeMutablePointer<addrinfo>? = nil
        let status = getaddrinfo(host, String(port), &hints, &results)
        guard status == 0, let first = results else {
            throw .invalidAddress(address, "cannot resolve host (getaddrinfo error \(status))")
        }
        defer { freeaddrinfo(results) }
        let descriptor = socket(
            first.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else {
            throw .socket(address: address, call: "socket", Errno(rawValue: errno))
        }
        var one: Int32 = 1
        _ = setsockopt(
            descriptor, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if first.pointee.ai_family == AF_INET6 {
            _ = setsockopt(
                descriptor, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one,
                socklen_t(MemoryLayout<Int32>.size))
        }
        guard bind(descriptor, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else {
            let failure = Errno(rawValue: errno)
            close(descriptor)
            if failure == .addressInUse { throw .addressInUse(address) }
            throw .socket(address: address, call: "bind", failure)
        }
        return descriptor
    }

    private static func bindUnix(path: String, address: String) throws(ServerError) -> Int32 {
        var socketAddress = sockaddr_un()
        socketAddress.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: socketAddress.sun_path)
        guard pathBytes.count < capacity else {
            throw .invalidAddress(address, "path longer than \(capacity - 1) bytes")
        }
        withUnsafeMutableBytes(of: &socketAddress.sun_path) { raw in
            for (index, byte) in pathBytes.enumerated() { raw[index] = byte }
        }
        try removeStaleSocket(path: path, address: address, socketAddress: socketAddress)
        let descriptor = socket(
            AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else {
            throw .socket(address: address, call: "socket", Errno(rawValue: errno))
        }
        // umask makes the socket 0600 from the moment it exists: no window where others could connect.
        let previousMask = umask(0o177)
        let result = withUnsafePointer(to: &socketAddress) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        let failure = Errno(rawValue: errno)
        umask(previousMask)
        guard result == 0 else {
            close(descriptor)
            throw .socket(address: address, call: "bind", failure)
        }
        return descriptor
    }

    /// A socket file nobody answers on is left over from a killed server: remove it. Anything
    /// else at the path (a live server, a regular file) is refused.
    private static func removeStaleSocket(path: String, address: String, socketAddress: sockaddr_un)
        throws(ServerError)
    {
        var status = stat()
        guard lstat(path, &status) == 0 else { return }
        guard status.st_mode & S_IFMT == S_IFSOCK else {
            throw .invalidAddress(address, "\(path) exists and is not a socket")
        }
        let probe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(probe) }
        var target = socketAddress
        let connected = withUnsafePointer(to: &target) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(probe, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if connected == 0 { throw .addressInUse(address) }
        _ = unlink(path)
    }

    private static func describe(_ storage: sockaddr_storage, fallback: ListenAddress) -> String {
        var storage = storage
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        var service = [CChar](repeating: 0, count: Int(NI_MAXSERV))
        let family = Int32(storage.ss_family)
        guard family == AF_INET || family == AF_INET6 else { return fallback.description }
        let length = socklen_t(
            family == AF_INET ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size)
        let status = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getnameinfo(
                    $0, length, &host, socklen_t(host.count), &service, socklen_t(service.count),
                    NI_NUMERICHOST | NI_NUMERICSERV)
            }
        }
        guard status == 0 else { return fallback.description }
        let hostText = decodeCString(host)
        let serviceText = decodeCString(service)
        return family == AF_INET6 ? "[\(hostText)]:\(serviceText)" : "\(hostText):\(serviceText)"
    }
}

/// The text of a NUL-terminated C string held in an array.
private func decodeCString(_ characters: [CChar]) -> String {
    let length = characters.firstIndex(of: 0) ?? characters.count
    return String(decoding: characters[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
