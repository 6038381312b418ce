// The reader's side of the base queue: which requests may wait on a slow base, and how one
// goes to the queue with its payload. Reads that miss every cache are routed in
// Connection+Transmission.swift, after their inline attempt.

import CowStore
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
}
