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
    /// After a request with a payload this large, the next header is received alone: the
    /// request after a large write is likely another, whose payload should go straight from
    /// the socket into its buffer rather than through the input buffer and a copy.
    static let largePayloadByteCount = 64 << 10

    func transmit() throws {
        transport.setSendTimeout(seconds: server.configuration.messageTimeoutSeconds)
        let session: NegotiatedSession = self.session
        let payloadByteCount = Int(session.export.maximumPayloadByteCount)
        let replyForm = ReplyForm(
            structured: session.structuredReplies, extended: session.extendedHeaders)
        let budget = server.payloadBudget
        let metrics = server.metrics
        let pool = WorkerPool(
            count: server.configuration.workersPerConnection, payloadByteCount: payloadByteCount,
            replyForm: replyForm, budget: budget, makeScratch: { server.disk.makeScratch() })
        pool.start { [self] job, worker in execute(job, worker) }
        defer { pool.drainAndStop() }
        // Over a network base, requests that may wait on it have threads of their own, so a
        // base that stops answering never holds up the reader or the requests for chunks the
        // store holds (BaseRequestQueue.swift).
        let baseQueue =
            server.disk.base.mayBeSlow
            ? BaseRequestQueue(
                count: server.configuration.baseWorkersPerConnection,
                payloadByteCount: payloadByteCount, replyForm: replyForm,
                makeScratch: { server.disk.makeScratch() })
            : nil
        baseQueue?.start { [self] job, worker in
            execute(job, worker)
            finish(worker)
        }
        defer { baseQueue?.drainAndStop() }
        // Replies sent without waiting need the plain socket (TLS records are not cut short).
        let plainSocket = transport as? SocketTransport
        let inline = RequestWorker(
            index: -1, payloadByteCount: payloadByteCount, scratch: server.disk.makeScratch(),
            replyForm: replyForm)
        defer { finish(inline) }
        let input = InputStream(
            transport: transport, byteCount: Self.inputByteCount,
            messageTimeoutSeconds: server.configuration.messageTimeoutSeconds)
        // Buffers keep their pages (and their budget) while requests keep coming, and give
        // them back once the client has nothing more to send.
        input.whenIdle = IdleRelease(
            isHolding: { inline.heldBudgetByteCount > 0 || pool.hasWarmWorkers },
            release: { [self] in
                finish(inline)
                pool.connectionWentIdle()
            })
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
            pool.connectionIsBusy()
            // Someone waits for budget: this connection's warm buffers give theirs back.
            if budget.hasWaiters {
                finish(inline)
                pool.coolIdleWorkers()
            }
            let budgetByteCount = Self.budgetByteCount(
                header, payloadByteCount: Int(payloadByteCount), maxPayload: maxPayload)
            input.receiveByteCountLimit =
                payloadByteCount >= Self.largePayloadByteCount ? headerByteCount : nil
            if let baseQueue, mayWaitOnBase(header) {
                // A write into a chunk the store lacks copies the rest of it from the base.
                reserveForBaseQueue(budgetByteCount, inline, pool)
                try submitToBase(
                    header, payloadByteCount: Int(payloadByteCount),
                    budgetByteCount: budgetByteCount, input, baseQueue)
                continue
            }
            // CACHE may wait for the device to read ahead (a compressed base reads its index).
            // A large write goes to a worker too: the reader receives the next request while
            // the worker copies this one into the store, and the two run on two cores.
            let isWrite = header.type == Command.write.rawValue
            let mayBlock =
                header.flags.contains(.fua) || header.type == Command.flush.rawValue
                || header.type == Command.cache.rawValue
                || (isWrite && payloadByteCount >= Self.largePayloadByteCount)
            // Budget before any buffer is touched. A request that may block takes a pool worker
            // before its payload is read, so the payload lands in the buffer of the thread that
            // will use it.
            let worker: RequestWorker
            if mayBlock {
                worker = pool.acquire()
                pool.reserve(budgetByteCount, for: worker) { [self] in finish(inline) }
            } else {
                worker = inline
                reserveForReader(budgetByteCount, inline, pool)
            }
            do {
                try input.read(into: worker.payload.prefix(Int(payloadByteCount)))
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
                // The disk is taken anew for each request: a live snapshot replaces it.
                let disk = server.disk
                if !readIfCached(request, inline, disk, metrics) {
                    if let baseQueue,
                        !disk.needsNoBase(at: request.offset, byteCount: request.length)
                    {
                        reserveForBaseQueue(budgetByteCount, inline, pool)
                        baseQueue.submit(
                            request, budgetByteCount: budgetByteCount,
                            afterFetching: { then in
                                disk.whenBaseFetched(
                                    at: request.offset, byteCount: UInt64(request.length), then)
                            },
                            answer: { [self] request in
                                answerAtOnce(
                                    request, budgetByteCount: budgetByteCount, disk, replyForm,
                                    plainSocket)
                            })
                        continue
                    }
                    let blocking = pool.acquire()
                    pool.reserve(budgetByteCount, for: blocking) { [self] in finish(inline) }
                    pool.submit(blocking, job)
                }
            } else {
                execute(job, inline)
            }
        }
    }

    /// Takes `byteCount` bytes of the payload budget for the reader's own buffer. The budget
    /// it already holds for its resident pages serves if it is enough. If the budget cannot
    /// give the rest at once, the reader first gives back its own pages and the pool's idle
    /// warm buffers, so it never waits while holding idle budget: the budget cannot deadlock.
    private func reserveForReader(_ byteCount: Int, _ reader: RequestWorker, _ pool: WorkerPool) {
        guard byteCount > reader.heldBudgetByteCount else { return }
        finish(reader)
        if !server.payloadBudget.tryAcquire(byteCount) {
            pool.coolIdleWorkers()
            server.payloadBudget.acquire(byteCount)
        }
        reader.heldBudgetByteCount = byteCount
    }

    /// Takes `byteCount` bytes of the payload budget for a request the base queue answers (its
    /// worker gives them back when done). As for the reader's own, it never waits while this
    /// connection holds idle budget.
    private func reserveForBaseQueue(
        _ byteCount: Int, _ reader: RequestWorker, _ pool: WorkerPool
    ) {
        guard byteCount > 0, !server.payloadBudget.tryAcquire(byteCount) else { return }
        finish(reader)
        pool.coolIdleWorkers()
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

    /// Gives the reader's buffer's pages beyond its kept head and the budget held for them
    /// back: when the client goes idle, or a request waits for budget.
    func finish(_ worker: RequestWorker) {
        worker.payload.giveBackPages()
        if worker.heldBudgetByteCount > 0 {
            server.payloadBudget.release(worker.heldBudgetByteCount)
            worker.heldBudgetByteCount = 0
        }
    }

    /// Answers a read from memory if every byte is cached; false means "send it to the pool".
    /// The disk and the metrics come from the caller, which holds them for the connection:
    /// reaching them through `server` costs a retain and a release each, every request.
    private func readIfCached(
        _ request: Request, _ worker: RequestWorker, _ disk: VirtualDisk, _ metrics: ServerMetrics
    ) -> Bool {
        let startNanoseconds = monotonicNanoseconds()
        let data = worker.payload.prefix(Int(request.length))
        do {
            guard try disk.readIfCached(at: request.offset, into: data) else {
                metrics.recordReadCache(hit: false)
                return false
            }
        } catch {
            metrics.recordReadCache(hit: false)
            return false  // the pool's blocking read reports the error properly
        }
        metrics.recordReadCache(hit: true)
        metrics.recordRequest(
            .read, byteCount: request.length, startNanoseconds: startNanoseconds, error: nil)
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
    /// How long the client may stay silent between requests before the buffers it keeps warm
    /// go back: long enough for a client with requests in flight to send its next one as a
    /// reply arrives, short against the time an idle connection holds memory.
    let idleGraceSeconds = 0.01
    /// Most bytes one `recv` into the buffer takes (at least what the caller asked for); nil:
    /// as many as fit.
    var receiveByteCountLimit: Int? = nil

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
            var freeEnd = storage.count
            if let receiveByteCountLimit {
                freeEnd = min(freeEnd, max(end + receiveByteCountLimit, start + byteCount))
            }
            let free = UnsafeMutableRawBufferPointer(rebasing: storage[end..<freeEnd])
            // Between messages, before waiting for the client: if it sends nothing within
            // `idleGraceSeconds`, its connection is idle and what it holds goes back. A client
            // that keeps requests in flight sends its next one as a reply reaches it, often a
            // moment after the reader looked: releasing on the first empty look made a stream
            // of 1 MiB writes fault in most of a buffer's pages again, request after request.
            if end == start, let whenIdle, whenIdle.isHolding() {
                let received = try receiveArriving(into: free, withinSeconds: idleGraceSeconds)
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

    /// Receives what arrives within `seconds` into `free`; 0 if nothing does.
    private func receiveArriving(
        into free: UnsafeMutableRawBufferPointer, withinSeconds seconds: Double
    ) throws -> Int {
        do {
            return try transport.receiveSome(into: free, deadline: monotonicSeconds() + seconds)
        } catch {
            if case .timedOut = error { return 0 }
            throw error
        }
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
