// The transmission phase. One reader thread per connection parses requests from a buffered
// stream and answers the ones that cannot block on the spot: reads whose bytes are in the page
// cache, writes, trims, zeroes, block status. Reads that must wait for a device, FLUSH and FUA
// requests go to a small pool of threads, which reply out of order as they finish.
// docs/ARCHITECTURE.md gives the measurements behind this split.

import CowStore
import CowSupport
import Logging
import NBDProtocol

extension Connection {
    /// Bytes read from the socket at once: many small requests arrive in one `recv`.
    static let inputByteCount = 256 << 10

    func transmit() throws {
        socket.setSendTimeout(seconds: server.configuration.messageTimeoutSeconds)
        let payloadByteCount = Int(session.export.maximumPayloadByteCount)
        let pool = WorkerPool(
            count: server.configuration.workersPerConnection, payloadByteCount: payloadByteCount,
            makeScratch: { server.disk.makeScratch() })
        pool.start { [self] job, worker in execute(job, worker) }
        defer { pool.drainAndStop() }
        let inline = RequestWorker(
            index: -1, payloadByteCount: payloadByteCount, scratch: server.disk.makeScratch())
        let input = InputStream(
            socket: socket, byteCount: Self.inputByteCount,
            messageTimeoutSeconds: server.configuration.messageTimeoutSeconds)
        let extended = session.extendedHeaders
        let headerByteCount =
            extended ? RequestHeader.extendedByteCount : RequestHeader.compactByteCount
        let maxPayload = UInt64(session.export.maximumPayloadByteCount)
        while !broken.load(ordering: .relaxed) {
            let header: RequestHeader
            do {
                header = try input.withBytes(headerByteCount) { bytes throws(ProtocolViolation) in
                    try RequestHeader(parsing: bytes, extended: extended)
                }
            } catch let violation as ProtocolViolation {
                throw ServerError.protocolViolation(violation.description)
            }
            let payloadByteCount = header.payloadByteCount
            guard payloadByteCount <= maxPayload else {
                throw ServerError.protocolViolation(
                    "write payload of \(payloadByteCount) bytes exceeds \(maxPayload)")
            }
            if header.type == Command.disconnect.rawValue { return }
            let mayBlock = header.flags.contains(.fua) || header.type == Command.flush.rawValue
            // A request that may block takes a pool worker before its payload is read, so the
            // payload lands in the buffer of the thread that will use it.
            let worker = mayBlock ? pool.acquire() : inline
            do {
                try input.read(
                    into: UnsafeMutableRawBufferPointer(
                        rebasing: worker.buffer[..<Int(payloadByteCount)]))
            } catch {
                if mayBlock { pool.release(worker) }
                throw error
            }
            let job: RequestWorker.Job
            switch session.validate(header) {
            case .success(let request): job = .execute(request)
            case .failure(let rejection): job = .reject(header, rejection)
            }
            if mayBlock {
                pool.submit(worker, job)
            } else if case .execute(let request) = job, request.command == .read {
                if !readIfCached(request, inline) { pool.submit(pool.acquire(), job) }
            } else {
                execute(job, inline)
            }
        }
    }

    /// Answers a read from memory if every byte is cached; false means "send it to the pool".
    private func readIfCached(_ request: Request, _ worker: RequestWorker) -> Bool {
        let data = UnsafeMutableRawBufferPointer(rebasing: worker.buffer[..<Int(request.length)])
        do {
            guard try server.disk.readIfCached(at: request.offset, into: data) else { return false }
        } catch {
            return false  // the pool's blocking read reports the error properly
        }
        replyRead(request, UnsafeRawBufferPointer(data), worker)
        return true
    }
}

/// A receive buffer over the socket. Used by the reader thread only.
/// Between requests the client may stay silent for as long as it likes; once a message has
/// begun, the rest must arrive within `messageTimeoutSeconds` of its first byte, so a client
/// that stops mid-request, or sends a byte now and then, cannot hold the connection's thread
/// and buffers forever.
final class InputStream {
    private let socket: Socket
    private let storage: UnsafeMutableRawBufferPointer
    private let messageTimeoutSeconds: Double
    private var start = 0
    private var end = 0

    init(socket: Socket, byteCount: Int, messageTimeoutSeconds: Double) {
        self.socket = socket
        self.messageTimeoutSeconds = messageTimeoutSeconds
        storage = .allocate(byteCount: byteCount, alignment: 64)
    }

    deinit { storage.deallocate() }

    /// Calls `body` with the next `byteCount` bytes (at most the buffer size), then consumes them.
    func withBytes<Result, Failure: Error>(
        _ byteCount: Int, _ body: (UnsafeRawBufferPointer) throws(Failure) -> Result
    ) throws -> Result {
        var deadline: Double? = nil
        while end - start < byteCount {
            if start > 0 {
                // Move the partial message to the front; it is shorter than one header.
                storage.baseAddress!.copyMemory(
                    from: storage.baseAddress! + start, byteCount: end - start)
                end -= start
                start = 0
            }
            // Idle between requests is fine; a half-received header is not. The deadline is
            // set once, when the header has begun, not renewed by each byte that trickles in.
            if deadline == nil && end > start {
                deadline = monotonicSeconds() + messageTimeoutSeconds
            }
            end += try socket.receiveSome(
                into: UnsafeMutableRawBufferPointer(rebasing: storage[end...]), deadline: deadline)
        }
        defer { start += byteCount }
        return try body(UnsafeRawBufferPointer(rebasing: storage[start..<(start + byteCount)]))
    }

    /// Fills `destination`: first from what is buffered, then straight from the socket.
    func read(into destination: UnsafeMutableRawBufferPointer) throws {
        let buffered = min(end - start, destination.count)
        if buffered > 0 {
            destination.baseAddress!.copyMemory(
                from: storage.baseAddress! + start, byteCount: buffered)
            start += buffered
        }
        if buffered < destination.count {
            try socket.receive(
                into: UnsafeMutableRawBufferPointer(rebasing: destination[buffered...]),
                deadline: monotonicSeconds() + messageTimeoutSeconds)
        }
    }
}
