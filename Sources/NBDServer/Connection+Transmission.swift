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
        transport.setSendTimeout(seconds: server.configuration.messageTimeoutSeconds)
        let payloadByteCount = Int(session.export.maximumPayloadByteCount)
        let pool = WorkerPool(
            count: server.configuration.workersPerConnection, payloadByteCount: payloadByteCount,
            makeScratch: { server.disk.makeScratch() })
        pool.start { [self] job, worker in
            execute(job, worker)
            finish(worker)
        }
        defer { pool.drainAndStop() }
        // Over a network base, requests that may wait on it have threads of their own, so a
        // base that stops answering never holds up the reader or the requests for chunks the
        // store holds (BaseRequestQueue.swift).
        let baseQueue =
            server.disk.base.mayBeSlow
            ? BaseRequestQueue(
                count: server.configuration.baseWorkersPerConnection,
                payloadByteCount: payloadByteCount, makeScratch: { server.disk.makeScratch() })
            : nil
        baseQueue?.start { [self] job, worker in
            execute(job, worker)
            finish(worker)
        }
        defer { baseQueue?.drainAndStop() }
        let inline = RequestWorker(
            index: -1, payloadByteCount: payloadByteCount, scratch: server.disk.makeScratch())
        defer { finish(inline) }
        let input = InputStream(
            transport: transport, byteCount: Self.inputByteCount,
            messageTimeoutSeconds: server.configuration.messageTimeoutSeconds)
        // The reader's buffer keeps its pages (and their budget) while requests keep coming,
        // and gives them back once the client has nothing more to send.
        input.whenIdle = IdleRelease(
            isHolding: { inline.heldBudgetByteCount > 0 }, release: { [self] in finish(inline) })
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
            let payloadByteCount = header.payloadByteCount(extended: extended)
            guard payloadByteCount <= maxPayload else {
                throw ServerError.protocolViolation(
                    "request payload of \(payloadByteCount) bytes exceeds \(maxPayload)")
            }
            if header.type == Command.disconnect.rawValue { return }
            let budgetByteCount = Self.budgetByteCount(
                header, payloadByteCount: Int(payloadByteCount), maxPayload: maxPayload)
            if let baseQueue, mayWaitOnBase(header) {
                // A write into a chunk the store lacks copies the rest of it from the base.
                reserveForWorker(budgetByteCount, inline)
                try submitToBase(
                    header, payloadByteCount: Int(payloadByteCount),
                    budgetByteCount: budgetByteCount, input, baseQueue)
                continue
            }
            // CACHE may wait for the device to read ahead (a compressed base reads its index).
            let mayBlock =
                header.flags.contains(.fua) || header.type == Command.flush.rawValue
                || header.type == Command.cache.rawValue
            // Budget before any buffer is touched. A request that may block then takes a pool
            // worker before its payload is read, so the payload lands in the buffer of the
            // thread that will use it.
            if mayBlock {
                reserveForWorker(budgetByteCount, inline)
            } else {
                reserveForReader(budgetByteCount, inline)
            }
            let worker = mayBlock ? pool.acquire() : inline
            if mayBlock { worker.heldBudgetByteCount = budgetByteCount }
            do {
                try input.read(into: worker.payload.prefix(Int(payloadByteCount)))
            } catch {
                if mayBlock {
                    finish(worker)
                    pool.release(worker)
                }
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
                if !readIfCached(request, inline) {
                    // The reader's pages and budget go back before a worker's are taken.
                    reserveForWorker(budgetByteCount, inline)
                    if let baseQueue,
                        !server.disk.needsNoBase(at: request.offset, byteCount: request.length)
                    {
                        baseQueue.submit(job, payload: nil, budgetByteCount: budgetByteCount)
                        continue
                    }
                    let blocking = pool.acquire()
                    blocking.heldBudgetByteCount = budgetByteCount
                    pool.submit(blocking, job)
                }
            } else {
                execute(job, inline)
            }
        }
    }

    /// Takes `byteCount` bytes of the payload budget for the reader's own buffer. The budget
    /// it already holds for its resident pages serves if it is enough.
    private func reserveForReader(_ byteCount: Int, _ reader: RequestWorker) {
        guard byteCount > reader.heldBudgetByteCount else { return }
        reserveForWorker(byteCount, reader)
        reader.heldBudgetByteCount = byteCount
    }

    /// Takes `byteCount` bytes of the payload budget for a request about to go to a pool
    /// worker. The reader first gives back its own pages and budget, so it never waits for
    /// budget while holding some: the budget cannot deadlock.
    private func reserveForWorker(_ byteCount: Int, _ reader: RequestWorker) {
        guard byteCount > 0 else { return }
        finish(reader)
        server.payloadBudget.acquire(byteCount)
    }

    /// Bytes of the payload budget a request takes: what its buffer will hold, if that is more
    /// than the part of a buffer that stays resident anyway.
    private static func budgetByteCount(
        _ header: RequestHeader, payloadByteCount: Int, maxPayload: UInt64
    ) -> Int {
        // A READ over the maximum is refused without touching a buffer.
        let readByteCount =
            header.type == Command.read.rawValue && header.length <= maxPayload
            ? Int(header.length) : 0
        let bufferByteCount = max(payloadByteCount, readByteCount)
        return bufferByteCount > PayloadBuffer.keptResidentByteCount ? bufferByteCount : 0
    }

    /// Gives a buffer's pages beyond its kept head and the budget held for them back: after
    /// each request for a pool worker, when the client goes idle for the reader.
    func finish(_ worker: RequestWorker) {
        worker.payload.giveBackPages()
        if worker.heldBudgetByteCount > 0 {
            server.payloadBudget.release(worker.heldBudgetByteCount)
            worker.heldBudgetByteCount = 0
        }
    }

    /// Answers a read from memory if every byte is cached; false means "send it to the pool".
    private func readIfCached(_ request: Request, _ worker: RequestWorker) -> Bool {
        let startSeconds = monotonicSeconds()
        let data = worker.payload.prefix(Int(request.length))
        do {
            guard try server.disk.readIfCached(at: request.offset, into: data) else {
                server.metrics.recordReadCache(hit: false)
                return false
            }
        } catch {
            server.metrics.recordReadCache(hit: false)
            return false  // the pool's blocking read reports the error properly
        }
        server.metrics.recordReadCache(hit: true)
        server.metrics.recordRequest(
            .read, byteCount: request.length, seconds: monotonicSeconds() - startSeconds,
            error: nil)
        replyRead(request, UnsafeRawBufferPointer(data), worker)
        return true
    }
}

/// A receive buffer over the transport. Used by the reader thread only.
/// Between requests the client may stay silent for as long as it likes; once a message has
/// begun, the rest must arrive within `messageTimeoutSeconds` of its first byte, so a client
/// that stops mid-request, or sends a byte now and then, cannot hold the connection's thread
/// and buffers forever.
final class InputStream {
    private let transport: any Transport
    private let storage: UnsafeMutableRawBufferPointer
    private let messageTimeoutSeconds: Double
    private var start = 0
    private var end = 0
    /// What to give back when the client has nothing more to send right now.
    var whenIdle: IdleRelease? = nil

    init(transport: any Transport, byteCount: Int, messageTimeoutSeconds: Double) {
        self.transport = transport
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
            let free = UnsafeMutableRawBufferPointer(rebasing: storage[end...])
            // Between messages, before waiting for the client: if it has nothing to send, its
            // connection is idle and what it holds goes back. One extra `recv` only while
            // something is held.
            if end == start, let whenIdle, whenIdle.isHolding() {
                let received = try transport.receiveWithoutWaiting(into: free)
                if received > 0 {
                    end += received
                    continue
                }
                whenIdle.release()
            }
            end += try transport.receiveSome(into: free, deadline: deadline)
        }
        defer { start += byteCount }
        return try body(UnsafeRawBufferPointer(rebasing: storage[start..<(start + byteCount)]))
    }

    /// Fills `destination`: first from what is buffered, then straight from the transport.
    func read(into destination: UnsafeMutableRawBufferPointer) throws {
        let buffered = min(end - start, destination.count)
        if buffered > 0 {
            destination.baseAddress!.copyMemory(
                from: storage.baseAddress! + start, byteCount: buffered)
            start += buffered
        }
        if buffered < destination.count {
            try transport.receive(
                into: UnsafeMutableRawBufferPointer(rebasing: destination[buffered...]),
                deadline: monotonicSeconds() + messageTimeoutSeconds)
        }
    }
}

/// Resources a connection's reader gives back while its client is idle.
struct IdleRelease {
    let isHolding: () -> Bool
    let release: () -> Void
}
