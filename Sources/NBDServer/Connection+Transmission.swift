// The transmission phase's reader: parses request headers from a buffered stream, reads write
// payloads straight into a worker's buffer, and hands requests to workers, which reply out of
// order as they finish.

import CowStore
import Logging
import NBDProtocol

extension Connection {
    /// Bytes read from the socket at once: many small requests arrive in one `recv`.
    static let inputByteCount = 256 << 10

    func transmit() throws {
        socket.setSendTimeout(seconds: Int(server.configuration.sendTimeoutSeconds))
        let pool = WorkerPool(
            count: server.configuration.workersPerConnection,
            payloadByteCount: Int(server.exportDescription.maximumPayloadByteCount),
            makeScratch: { server.disk.makeScratch() })
        pool.start { [self] worker in execute(worker) }
        defer { pool.drainAndStop() }
        let input = InputStream(socket: socket, byteCount: Self.inputByteCount)
        let headerByteCount = session.extendedHeaders ? RequestHeader.extendedByteCount : RequestHeader.compactByteCount
        let maxPayload = UInt64(session.export.maximumPayloadByteCount)
        while !broken.load(ordering: .relaxed) {
            let header: RequestHeader
            do {
                header = try input.withBytes(headerByteCount) { bytes throws(ProtocolViolation) in
                    try RequestHeader(parsing: bytes, extended: session.extendedHeaders)
                }
            } catch let violation as ProtocolViolation {
                throw ServerError.protocolViolation(violation.description)
            }
            let payloadByteCount = header.payloadByteCount
            guard payloadByteCount <= maxPayload else {
                throw ServerError.protocolViolation("write payload of \(payloadByteCount) bytes exceeds \(maxPayload)")
            }
            if header.type == Command.disconnect.rawValue { return }
            let worker = pool.acquire()
            do {
                try input.read(into: UnsafeMutableRawBufferPointer(rebasing: worker.buffer[..<Int(payloadByteCount)]))
            } catch {
                pool.release(worker)
                throw error
            }
            switch session.validate(header) {
            case .success(let request): pool.submit(worker, .execute(request))
            case .failure(let rejection): pool.submit(worker, .reject(header, rejection))
            }
        }
    }
}

/// A receive buffer over the socket. Used by the reader thread only.
final class InputStream {
    private let socket: Socket
    private let storage: UnsafeMutableRawBufferPointer
    private var start = 0
    private var end = 0

    init(socket: Socket, byteCount: Int) {
        self.socket = socket
        storage = .allocate(byteCount: byteCount, alignment: 64)
    }

    deinit { storage.deallocate() }

    /// Calls `body` with the next `byteCount` bytes (at most the buffer size), then consumes them.
    func withBytes<Result, Failure: Error>(
        _ byteCount: Int, _ body: (UnsafeRawBufferPointer) throws(Failure) -> Result
    ) throws -> Result {
        while end - start < byteCount {
            if start > 0 {
                // Move the partial message to the front; it is at most one header.
                storage.baseAddress!.copyMemory(from: storage.baseAddress! + start, byteCount: end - start)
                end -= start
                start = 0
            }
            end += try socket.receiveSome(into: UnsafeMutableRawBufferPointer(rebasing: storage[end...]))
        }
        defer { start += byteCount }
        return try body(UnsafeRawBufferPointer(rebasing: storage[start..<(start + byteCount)]))
    }

    /// Fills `destination`: first from what is buffered, then straight from the socket.
    func read(into destination: UnsafeMutableRawBufferPointer) throws {
        let buffered = min(end - start, destination.count)
        if buffered > 0 {
            destination.baseAddress!.copyMemory(from: storage.baseAddress! + start, byteCount: buffered)
            start += buffered
        }
        if buffered < destination.count {
            try socket.receive(into: UnsafeMutableRawBufferPointer(rebasing: destination[buffered...]))
        }
    }
}
