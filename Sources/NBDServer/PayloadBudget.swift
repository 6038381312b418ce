// The server-wide bound on memory for request payloads (`serve --max-inflight-bytes`). A
// request with a large payload (a WRITE's data, a READ's reply) takes its byte count from the
// budget before its buffer is touched, and gives it back once its reply is sent and its
// buffer's pages are returned to the kernel; with the budget spent, the reader waits, and the
// client's further requests wait in its socket. Small requests use the part of a buffer that
// stays resident (`PayloadBuffer.keptResidentByteCount`) and never wait.

#if canImport(Glibc)
    import Glibc
#endif

/// Bytes of payload memory shared by every connection. Waiters are served first come, first
/// served, so a 32 MiB request is not starved by a stream of smaller ones. It never
/// deadlocks: the budget holds at least one largest request, and a request that holds budget
/// only waits for its own I/O and its reply's send (bounded by the message timeout).
/// `@unchecked Sendable`: every field is guarded by `mutex`.
final class PayloadBudget: @unchecked Sendable {
    /// The budget's size in bytes.
    let byteCount: Int
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var availableByteCount: Int
    /// Tickets of waiters in arrival order: `servingTicket` is the next one to go.
    private var nextTicket: UInt64 = 0
    private var servingTicket: UInt64 = 0

    init(byteCount: Int) {
        precondition(byteCount > 0, "a payload budget holds at least one request")
        self.byteCount = byteCount
        availableByteCount = byteCount
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(changed, nil)
    }

    deinit {
        pthread_cond_destroy(changed)
        pthread_mutex_destroy(mutex)
        changed.deallocate()
        mutex.deallocate()
    }

    /// Takes `requestByteCount` bytes, waiting for earlier waiters and for bytes to be given
    /// back. The corresponding C functions are `pthread_mutex_lock` and `pthread_cond_wait`.
    func acquire(_ requestByteCount: Int) {
        precondition(requestByteCount <= byteCount, "request larger than the whole budget")
        pthread_mutex_lock(mutex)
        let ticket = nextTicket
        nextTicket += 1
        while ticket != servingTicket || availableByteCount < requestByteCount {
            pthread_cond_wait(changed, mutex)
        }
        availableByteCount -= requestByteCount
        servingTicket += 1
        // The next waiter in line may fit too.
        pthread_cond_broadcast(changed)
        pthread_mutex_unlock(mutex)
    }

    /// Gives back bytes taken by `acquire`.
    func release(_ requestByteCount: Int) {
        pthread_mutex_lock(mutex)
        availableByteCount += requestByteCount
        precondition(availableByteCount <= byteCount, "more budget given back than taken")
        pthread_cond_broadcast(changed)
        pthread_mutex_unlock(mutex)
    }

    /// Bytes not taken right now (for tests and logs).
    var unusedByteCount: Int {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return availableByteCount
    }
}
