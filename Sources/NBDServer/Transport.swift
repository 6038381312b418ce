// How a connection exchanges bytes with its client. The connection reads, writes and shuts
// down only through this type, so a transport other than a plain socket (TLS) can take its
// place without the connection knowing a file descriptor.

/// A connected byte stream to one client. Receives happen on the connection's reader thread
/// only; sends are serialised by the connection's send lock, so an implementation needs no
/// lock of its own for either direction.
protocol Transport: AnyObject, Sendable {
    /// The client, for log lines: `HOST:PORT` or the unix socket's address.
    var peer: String { get }

    /// Fills `buffer` completely, straight from the stream (the zero-copy path for write
    /// payloads). With a `deadline` (monotonic seconds) gives up when it passes.
    func receive(into buffer: UnsafeMutableRawBufferPointer, deadline: Double?) throws(ServerError)

    /// Receives what is available, up to `buffer.count` bytes and at least one, waiting at most
    /// until `deadline` when one is given.
    func receiveSome(into buffer: UnsafeMutableRawBufferPointer, deadline: Double?)
        throws(ServerError) -> Int

    /// Sends all of `header` then all of `payload` as one unit, with as few calls as possible
    /// (one `sendmsg` of both for a socket: the reply's payload is never copied).
    func send(_ header: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer)
        throws(ServerError)

    /// Bounds how long a send may block (a client that never reads its replies).
    func setSendTimeout(seconds: Double)

    /// Stops further receives, waking a reader blocked in one (graceful shutdown).
    func shutdownReceiving()

    /// Ends the connection in both directions: the peer sees it end.
    func shutdownBoth()

    /// Closes the session cleanly from the server's side once no other thread sends (TLS's
    /// close_notify); nothing for a plain socket.
    func endSession()
}

extension Transport {
    func endSession() {}

    /// Fills `buffer` completely with `receiveSome` calls (the one loop over short receives,
    /// for every transport), each waiting at most until `deadline` (monotonic seconds).
    func receive(into buffer: UnsafeMutableRawBufferPointer, deadline: Double?)
        throws(ServerError)
    {
        var done = 0
        while done < buffer.count {
            done += try receiveSome(
                into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]), deadline: deadline)
        }
    }

    /// Sends `bytes` whole (handshake replies).
    func send(_ bytes: [UInt8]) throws(ServerError) {
        let outcome = bytes.withUnsafeBytes { buffer in
            Result { () throws(ServerError) in
                try send(buffer, UnsafeRawBufferPointer(start: nil, count: 0))
            }
        }
        try outcome.get()
    }
}
