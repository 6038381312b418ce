// Many requests in flight on one connection: `aioPread`/`aioPwrite` queue a command and return
// its cookie at once; `waitForNextCompletion` drives the socket with `nbd_poll` and retires
// finished commands with `nbd_aio_command_completed`. No completion callbacks: the buffers of
// queued commands stay in `pendingCommands` until retired, so nothing escapes to C land.

import CNBD
import NBDProtocol

#if canImport(Glibc)
    import Glibc
#endif

/// The cookie libnbd gives a queued command; unique per connection.
public struct NBDCookie: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int64
    public var description: String { "cookie \(rawValue)" }
}

/// A retired async command: the bytes read (empty for a write), or the command's error.
public struct AsyncCompletion: Sendable {
    public let cookie: NBDCookie
    public let result: Result<[UInt8], NBDClientError>
}

/// A buffer libnbd reads (write) or fills (read) until the command is retired.
struct PendingCommand {
    /// At least 1 byte, so there is an address even for a zero-length request.
    let buffer: UnsafeMutableRawBufferPointer
    let byteCount: Int
    let isRead: Bool
}

extension NBDConnection {
    /// Queues `NBD_CMD_READ` of `byteCount` bytes. The corresponding C function is
    /// `nbd_aio_pread`.
    public func aioPread(at byteOffset: UInt64, byteCount: Int, flags: CommandFlags = [])
        throws -> NBDCookie
    {
        let buffer = UnsafeMutableRawBufferPointer.allocate(
            byteCount: max(byteCount, 1), alignment: 8)
        let cookie = nbd_aio_pread(
            handle, buffer.baseAddress, byteCount, byteOffset, nbd_completion_callback(),
            flags.libnbdFlags)
        return try track(
            cookie, PendingCommand(buffer: buffer, byteCount: byteCount, isRead: true),
            "nbd_aio_pread")
    }

    /// Queues `NBD_CMD_WRITE` of a copy of `bytes`. The corresponding C function is
    /// `nbd_aio_pwrite`.
    public func aioPwrite(_ bytes: [UInt8], at byteOffset: UInt64, flags: CommandFlags = [])
        throws -> NBDCookie
    {
        let buffer = UnsafeMutableRawBufferPointer.allocate(
            byteCount: max(bytes.count, 1), alignment: 8)
        buffer.copyBytes(from: bytes)
        let cookie = nbd_aio_pwrite(
            handle, buffer.baseAddress, bytes.count, byteOffset, nbd_completion_callback(),
            flags.libnbdFlags)
        return try track(
            cookie, PendingCommand(buffer: buffer, byteCount: bytes.count, isRead: false),
            "nbd_aio_pwrite")
    }

    /// Commands queued or sent but not yet retired. The corresponding C function is
    /// `nbd_aio_in_flight`.
    public func aioInFlightCount() throws -> Int {
        Int(try checkedValue(nbd_aio_in_flight(handle), "nbd_aio_in_flight"))
    }

    /// Waits up to `timeoutMilliseconds` for the socket and lets libnbd send or receive what
    /// it can; false on timeout. The corresponding C function is `nbd_poll`.
    @discardableResult
    public func poll(timeoutMilliseconds: Int32) throws -> Bool {
        try checkedValue(nbd_poll(handle, timeoutMilliseconds), "nbd_poll") == 1
    }

    /// Retires `cookie` if its reply has arrived; nil while it is still in flight. The
    /// corresponding C function is `nbd_aio_command_completed`.
    public func aioCommandCompleted(_ cookie: NBDCookie) -> AsyncCompletion? {
        let status = nbd_aio_command_completed(handle, UInt64(cookie.rawValue))
        if status == 0 { return nil }
        // Read the error before anything else can make a libnbd call on this thread.
        let failure = status < 0 ? NBDClientError.last("nbd_aio_command_completed") : nil
        guard let command = pendingCommands.removeValue(forKey: cookie.rawValue) else {
            return AsyncCompletion(
                cookie: cookie, result: .failure(failure ?? unknownCookieError(cookie)))
        }
        defer { command.buffer.deallocate() }
        if let failure { return AsyncCompletion(cookie: cookie, result: .failure(failure)) }
        let bytes = command.isRead ? [UInt8](command.buffer[..<command.byteCount]) : []
        return AsyncCompletion(cookie: cookie, result: .success(bytes))
    }

    /// Polls until some command completes and retires it; throws when nothing is in flight,
    /// the connection fails, or `timeoutMilliseconds` pass. Uses `nbd_aio_peek_command_completed`,
    /// `nbd_aio_command_completed` and `nbd_poll`.
    public func waitForNextCompletion(timeoutMilliseconds: Int32) throws -> AsyncCompletion {
        let clock = ContinuousClock()
        let deadline = clock.now + .milliseconds(timeoutMilliseconds)
        while true {
            let cookie = nbd_aio_peek_command_completed(handle)
            if cookie < 0 { throw NBDClientError.last("nbd_aio_peek_command_completed") }
            if cookie > 0, let completion = aioCommandCompleted(NBDCookie(rawValue: cookie)) {
                return completion
            }
            let remaining = deadline - clock.now
            guard remaining > .zero else {
                throw NBDClientError(
                    operation: "nbd_poll",
                    message: "no command completed within \(timeoutMilliseconds) ms",
                    errno: ETIMEDOUT)
            }
            try poll(timeoutMilliseconds: Int32((remaining / .milliseconds(1)).rounded(.up)))
        }
    }

    /// Records a queued command's buffer, or frees it and throws when queueing failed.
    private func track(_ cookie: Int64, _ command: PendingCommand, _ operation: String) throws
        -> NBDCookie
    {
        guard cookie > 0 else {
            let error = NBDClientError.last(operation)
            command.buffer.deallocate()
            throw error
        }
        precondition(pendingCommands[cookie] == nil, "libnbd reused cookie \(cookie)")
        pendingCommands[cookie] = command
        return NBDCookie(rawValue: cookie)
    }

    private func unknownCookieError(_ cookie: NBDCookie) -> NBDClientError {
        NBDClientError(
            operation: "nbd_aio_command_completed",
            message: "\(cookie) was not sent by aioPread/aioPwrite",
            errno: EINVAL)
    }
}
