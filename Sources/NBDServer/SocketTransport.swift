// The plain-socket transport: a connected stream socket with receives under an optional
// deadline, and gathered sends that never raise SIGPIPE. Short sends loop here and nowhere
// else; short receives loop once for every transport (Transport.receive).

import CowSupport
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// One connected socket. `@unchecked Sendable`: the descriptor is immutable; receives happen on
/// the connection's reader thread only, sends under the connection's send lock.
final class SocketTransport: Transport, @unchecked Sendable {
    let descriptor: Int32
    let peer: String

    init(descriptor: Int32, peer: String) {
        self.descriptor = descriptor
        self.peer = peer
    }

    deinit { close(descriptor) }

    /// Waits until the socket is readable or `deadline` passes.
    /// The corresponding C function is `poll`.
    private func waitReadable(until deadline: Double) throws(ServerError) {
        while true {
            let remaining = deadline - monotonicSeconds()
            guard remaining > 0 else {
                throw .timedOut("waiting for the client to finish a message")
            }
            var pollDescriptor = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pollDescriptor, 1, Int32(min(remaining * 1000 + 1, 60_000)))
            if ready > 0 { return }
            if ready < 0 && errno != EINTR {
                throw .socket(address: peer, call: "poll", Errno(rawValue: errno))
            }
        }
    }

    /// Receives whatever is available, up to `buffer.count` bytes (at least one), waiting at most
    /// until `deadline` when one is given. The corresponding C function is `recv`.
    func receiveSome(into buffer: UnsafeMutableRawBufferPointer, deadline: Double?)
        throws(ServerError) -> Int
    {
        // With a deadline, what has arrived is taken at once and `poll` waits only when nothing
        // has: a payload streaming in costs one call per piece, not two.
        let flags = deadline == nil ? 0 : Int32(MSG_DONTWAIT)
        while true {
            let result = recv(descriptor, buffer.baseAddress!, buffer.count, flags)
            if result > 0 { return result }
            if result == 0 { throw .peerClosed }
            let failure = errno
            if let deadline, failure == EAGAIN || failure == EWOULDBLOCK {
                try waitReadable(until: deadline)
            } else if failure != EINTR {
                throw .socket(address: peer, call: "recv", Errno(rawValue: failure))
            }
        }
    }

    /// Lets the kernel probe an idle TCP peer, so a vanished client is noticed in minutes.
    /// The corresponding C function is `setsockopt(SO_KEEPALIVE, TCP_KEEPIDLE, ...)`.
    func enableKeepAlive() {
        var on: Int32 = 1
        var idleSeconds: Int32 = 60
        var intervalSeconds: Int32 = 10
        var probes: Int32 = 6
        let size = socklen_t(MemoryLayout<Int32>.size)
        guard setsockopt(descriptor, SOL_SOCKET, SO_KEEPALIVE, &on, size) == 0 else { return }
        _ = setsockopt(descriptor, Int32(IPPROTO_TCP), TCP_KEEPIDLE, &idleSeconds, size)
        _ = setsockopt(descriptor, Int32(IPPROTO_TCP), TCP_KEEPINTVL, &intervalSeconds, size)
        _ = setsockopt(descriptor, Int32(IPPROTO_TCP), TCP_KEEPCNT, &probes, size)
    }

    /// Sends all of `first` then all of `second` with as few calls as possible.
    /// The corresponding C function is `sendmsg(MSG_NOSIGNAL)`.
    func send(_ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer)
        throws(ServerError)
    {
        var parts = (first, second)
        while parts.0.count + parts.1.count > 0 {
            let result = sendOnce(parts.0, parts.1, flags: Int32(MSG_NOSIGNAL))
            if result < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK {
                    throw .timedOut("sending to a client that does not read")
                }
                throw .socket(address: peer, call: "sendmsg", Errno(rawValue: errno))
            }
            var sent = result
            let fromFirst = min(sent, parts.0.count)
            parts.0 = UnsafeRawBufferPointer(rebasing: parts.0[fromFirst...])
            sent -= fromFirst
            parts.1 = UnsafeRawBufferPointer(rebasing: parts.1[sent...])
        }
    }

    /// Sends what of `first` then `second` the socket takes now, without waiting for room;
    /// returns the bytes sent (0 if it is full). The corresponding C function is
    /// `sendmsg(MSG_DONTWAIT | MSG_NOSIGNAL)`.
    func sendWithoutWaiting(_ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer)
        throws(ServerError) -> Int
    {
        while true {
            let result = sendOnce(first, second, flags: Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
            if result >= 0 { return result }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK { return 0 }
            throw .socket(address: peer, call: "sendmsg", Errno(rawValue: errno))
        }
    }

    /// One `sendmsg` of `first` then `second` (an empty `first` left out): the bytes sent, or
    /// -1 with `errno` set.
    private func sendOnce(
        _ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer, flags: Int32
    ) -> Int {
        var vectors = (
            iovec(
                iov_base: UnsafeMutableRawPointer(mutating: first.baseAddress), iov_len: first.count
            ),
            iovec(
                iov_base: UnsafeMutableRawPointer(mutating: second.baseAddress),
                iov_len: second.count)
        )
        return withUnsafeMutablePointer(to: &vectors) { pointer -> Int in
            pointer.withMemoryRebound(to: iovec.self, capacity: 2) { iov in
                var message = msghdr()
                message.msg_iov = first.count == 0 ? iov + 1 : iov
                message.msg_iovlen = first.count == 0 ? 1 : 2
                return sendmsg(descriptor, &message, flags)
            }
        }
    }

    /// Bounds how long a send may block (a client that never reads its replies).
    /// The corresponding C function is `setsockopt(SO_SNDTIMEO)`.
    func setSendTimeout(seconds: Double) {
        // The kernel treats anything beyond its own maximum as "wait forever" anyway.
        let bounded = min(seconds, Double(Int32.max))
        let wholeSeconds = bounded.rounded(.down)
        var value = timeval(
            tv_sec: Int(wholeSeconds), tv_usec: Int((bounded - wholeSeconds) * 1_000_000))
        _ = setsockopt(
            descriptor, SOL_SOCKET, SO_SNDTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Disables Nagle's algorithm, as the protocol recommends for TCP.
    func setNoDelay() {
        var one: Int32 = 1
        _ = setsockopt(
            descriptor, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Stops further receives, waking a reader blocked in `recv` (graceful shutdown).
    func shutdownReceiving() { _ = shutdown(descriptor, Int32(SHUT_RD)) }

    /// Stops both directions: the peer sees the connection end.
    func shutdownBoth() { _ = shutdown(descriptor, Int32(SHUT_RDWR)) }
}
