// A listening socket: one bound for a `--listen` address (TCP, IPv4 or IPv6, or a unix socket
// made with mode 0600; stale unix socket files are replaced, a live one is refused), or one
// passed already listening by a supervisor (systemd socket activation, SocketActivation.swift).

import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// A listening socket. `@unchecked Sendable`: the descriptors are immutable and closed only in
/// `deinit`; `accept` runs on one thread and `shutdownAndRemove` wakes it from another.
final class Listener: @unchecked Sendable {
    let address: ListenAddress
    let descriptor: Int32
    /// False for a socket passed by a supervisor: systemd keeps it and queues the clients that
    /// come while cowbd restarts, so stopping must neither shut it down nor remove its file.
    let ownsSocket: Bool
    /// A pipe written once by `shutdownAndRemove` (`[1]`) that wakes `accept` polling its read
    /// end (`[0]`) without touching the socket itself (a passed socket must stay listening).
    private let stopPipe: [Int32]
    /// Connections the kernel queues until `accept` takes them (capped by `somaxconn`). A full
    /// queue drops new TCP clients' SYNs, which costs them a second or more to retry, so it is
    /// deep enough for a burst of thousands of connections a second.
    static let backlog: Int32 = 1024

    init(address: ListenAddress) throws(ServerError) {
        let descriptor: Int32
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
        do {
            try Self.setNonBlocking(descriptor, address: address.description)
            stopPipe = try Self.makeStopPipe(address: address.description)
        } catch {
            close(descriptor)
            throw error
        }
        self.address = address
        self.descriptor = descriptor
        ownsSocket = true
    }

    /// Takes a socket a supervisor bound and put in the listening state (systemd's
    /// `ListenStream=`, libnbd's `nbd_connect_systemd_socket_activation`). Refuses anything
    /// else: a datagram socket, a socket not listening, a file. The corresponding C functions
    /// are `getsockopt(SO_TYPE, SO_ACCEPTCONN)` and `getsockname`.
    init(passedDescriptor descriptor: Int32) throws(ServerError) {
        let name = "descriptor \(descriptor) from LISTEN_FDS"
        let type = try Self.socketOption(descriptor, SO_TYPE, name: name)
        let acceptsConnections = try Self.socketOption(descriptor, SO_ACCEPTCONN, name: name)
        guard type == Int32(SOCK_STREAM.rawValue), acceptsConnections == 1 else {
            throw .invalidAddress(name, "not a listening stream socket")
        }
        // As sd_listen_fds does: commands cowbd starts must not inherit the socket.
        _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
        try Self.setNonBlocking(descriptor, address: name)
        address = try Self.localAddress(of: descriptor, name: name)
        stopPipe = try Self.makeStopPipe(address: name)
        self.descriptor = descriptor
        ownsSocket = false
    }

    deinit {
        close(descriptor)
        for end in stopPipe { close(end) }
    }

    /// Waits for the next client; nil once the listener was shut down. The socket is
    /// non-blocking (systemd passes it so), so `accept` runs only after `poll` says a client
    /// is queued, and a client gone in between is waited for again.
    /// The corresponding C functions are `poll`, `accept` and `fcntl(FD_CLOEXEC)`.
    func accept() -> SocketTransport? {
        while true {
            var events = [
                pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0),
                pollfd(fd: stopPipe[0], events: Int16(POLLIN), revents: 0),
            ]
            if poll(&events, 2, -1) < 0 {
                if errno == EINTR { continue }
                return nil
            }
            if events[1].revents != 0 { return nil }
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let client = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.accept(descriptor, $0, &length)
                }
            }
            if client >= 0 {
                // Linux does not pass the listener's O_NONBLOCK on: the client socket blocks.
                _ = fcntl(client, F_SETFD, FD_CLOEXEC)
                let transport = SocketTransport(
                    descriptor: client, peer: Self.describe(storage, fallback: address))
                // Both fail harmlessly on unix sockets.
                transport.setNoDelay()
                transport.enableKeepAlive()
                return transport
            }
            switch errno {
            case EAGAIN, EWOULDBLOCK, EINTR, ECONNABORTED, EPROTO: continue
            case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                usleep(100_000)  // out of descriptors: back off rather than spin
                continue
            default: return nil
            }
        }
    }

    /// Stops accepting: wakes `accept`; a socket cowbd bound is also shut down, so new clients
    /// are refused at once, and a unix socket's file is removed. A passed socket is left
    /// listening for its supervisor. The descriptors are closed in `deinit`, when no thread
    /// can be inside `accept`.
    func shutdownAndRemove() {
        var byte: UInt8 = 1
        _ = write(stopPipe[1], &byte, 1)
        guard ownsSocket else { return }
        _ = shutdown(descriptor, Int32(SHUT_RDWR))
        if case .unix(let path) = address { _ = unlink(path) }
    }

    private static func makeStopPipe(address: String) throws(ServerError) -> [Int32] {
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else {
            throw .socket(address: address, call: "pipe", Errno(rawValue: errno))
        }
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        return ends
    }

    private static func setNonBlocking(_ descriptor: Int32, address: String) throws(ServerError) {
        let flags = fcntl(descriptor, F_GETFL)
        guard flags >= 0, fcntl(descriptor, F_SETFL, flags | O_NONBLOCK) == 0 else {
            throw .socket(address: address, call: "fcntl(O_NONBLOCK)", Errno(rawValue: errno))
        }
    }

    private static func socketOption(_ descriptor: Int32, _ option: Int32, name: String)
        throws(ServerError) -> Int32
    {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(descriptor, SOL_SOCKET, option, &value, &length) == 0 else {
            throw .socket(address: name, call: "getsockopt", Errno(rawValue: errno))
        }
        return value
    }

    /// The address a passed socket is bound to, for the URIs cowbd prints and the peer names
    /// it logs. An abstract unix socket is written `@NAME`, as systemd does.
    private static func localAddress(of descriptor: Int32, name: String) throws(ServerError)
        -> ListenAddress
    {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let status = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getsockname(descriptor, $0, &length)
            }
        }
        guard status == 0 else {
            throw .socket(address: name, call: "getsockname", Errno(rawValue: errno))
        }
        let family = Int32(storage.ss_family)
        if family == AF_UNIX {
            let pathOffset = MemoryLayout<sa_family_t>.size
            let pathBytes = withUnsafeBytes(of: &storage) { raw in
                Array(raw[pathOffset..<max(pathOffset, Int(length))])
            }
            if pathBytes.first == 0 {
                return .unix(path: "@" + String(decoding: pathBytes.dropFirst(), as: UTF8.self))
            }
            let end = pathBytes.firstIndex(of: 0) ?? pathBytes.count
            return .unix(path: String(decoding: pathBytes[..<end], as: UTF8.self))
        }
        guard let (host, port) = numericHostAndPort(storage) else {
            throw .invalidAddress(name, "not a TCP or unix socket")
        }
        return .tcp(host: host, port: port)
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
        guard let (host, port) = numericHostAndPort(storage) else { return fallback.description }
        return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// The numeric host and port of an IPv4 or IPv6 address; nil for any other family.
    /// The corresponding C function is `getnameinfo`.
    private static func numericHostAndPort(_ storage: sockaddr_storage) -> (String, UInt16)? {
        var storage = storage
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        var service = [CChar](repeating: 0, count: Int(NI_MAXSERV))
        let family = Int32(storage.ss_family)
        guard family == AF_INET || family == AF_INET6 else { return nil }
        let length = socklen_t(
            family == AF_INET ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size)
        let status = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getnameinfo(
                    $0, length, &host, socklen_t(host.count), &service, socklen_t(service.count),
                    NI_NUMERICHOST | NI_NUMERICSERV)
            }
        }
        guard status == 0, let port = UInt16(decodeCString(service)) else { return nil }
        return (decodeCString(host), port)
    }
}

/// The text of a NUL-terminated C string held in an array.
private func decodeCString(_ characters: [CChar]) -> String {
    let length = characters.firstIndex(of: 0) ?? characters.count
    return String(decoding: characters[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
