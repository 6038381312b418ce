// The reader's side of the base queue: which requests may wait on a slow base, and how one
// goes to the queue with its payload. Reads that miss every cache are routed in
// Connection+Transmission.swift, after their inline attempt.

import CowStore
import CowSupport
import NBDProtocol

extension Connection {
    /// Whether a request may wait on the base before it can be answered: a write or zeroing
    /// that touches a chunk the store lacks copies the rest of that chunk from the base (and
    /// waits behind any copy-up of it). Asked before validation; a request outside the export
    /// is refused without the base.
    func mayWaitOnBase(_ header: RequestHeader) -> Bool {
        guard
            header.type == Command.write.rawValue || header.type == Command.writeZeroes.rawValue
        else { return false }
        return !server.disk.needsNoBase(at: header.offset, byteCount: header.length)
    }

    /// Reads the request's payload into a buffer of its own (a busy queue may keep it a while)
    /// and queues the request, which holds `budgetByteCount` of the payload budget (taken by
    /// the caller) until it is answered.
    func submitToBase(
        _ header: RequestHeader, payloadByteCount: Int, budgetByteCount: Int,
        _ input: InputStream, _ queue: BaseRequestQueue
    ) throws {
        var payload: UnsafeMutableRawBufferPointer? = nil
        if payloadByteCount > 0 {
            let bytes = UnsafeMutableRawBufferPointer.allocate(
                byteCount: payloadByteCount, alignment: 64)
            do {
                try input.read(into: bytes)
            } catch {
                bytes.deallocate()
                if budgetByteCount > 0 { server.payloadBudget.release(budgetByteCount) }
                throw error
            }
            payload = bytes
        }
        let job: RequestWorker.Job
        switch session.validate(header) {
        case .success(let request): job = .execute(request)
        case .failure(let rejection): job = .reject(header, rejection)
        }
        queue.submit(job, payload: payload, budgetByteCount: budgetByteCount)
    }

    /// Answers a read whose base bytes just arrived, on the thread that received them (a base
    /// connection's, serving every client): from memory only, and only as far as the socket
    /// takes the reply without waiting, so a client that does not read never holds it.
    /// `.notSent` leaves the read (and its budget) to the base queue's threads. The reply is
    /// read through the disk as any other, so it holds what the disk holds now.
    func answerAtOnce(
        _ request: Request, budgetByteCount: Int, _ disk: VirtualDisk, _ replyForm: ReplyForm,
        _ socket: SocketTransport?
    ) -> ReplyAttempt {
        guard let socket, request.length <= Self.maxAnswerAtOnceByteCount, request.length > 0,
            !broken.load(ordering: .relaxed)
        else { return .notSent }
        let startNanoseconds = monotonicNanoseconds()
        let headerByteCount = Reply.maxHeaderByteCount
        // On this thread's stack where it has room (a 4 KiB read's reply always does): no
        // allocation for the common answer.
        let attempt = withUnsafeTemporaryAllocation(
            byteCount: headerByteCount + Int(request.length), alignment: 64
        ) { buffer -> ReplyAttempt in
            let header = UnsafeMutableRawBufferPointer(rebasing: buffer[..<headerByteCount])
            let data = UnsafeMutableRawBufferPointer(rebasing: buffer[headerByteCount...])
            guard (try? disk.readIfCached(at: request.offset, into: data)) == true else {
                return .notSent
            }
            let count = Self.encodeReadReplyHeader(
                request, dataByteCount: data.count, replyForm, into: header)
            return trySendReply(
                UnsafeRawBufferPointer(rebasing: header[..<count]), UnsafeRawBufferPointer(data),
                on: socket)
        }
        guard attempt != .notSent else { return .notSent }
        server.metrics.recordRequest(
            .read, byteCount: request.length, startNanoseconds: startNanoseconds, error: nil)
        if budgetByteCount > 0 { server.payloadBudget.release(budgetByteCount) }
        return attempt
    }

    /// The largest read answered on a base connection's thread: a few pages, not a copy of
    /// megabytes on the thread every client's base reads go through.
    static let maxAnswerAtOnceByteCount: UInt32 = 128 << 10
}
