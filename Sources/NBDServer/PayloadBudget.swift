// The server-wide bound on memory for request payloads (`serve --max-inflight-bytes`). A
// request with a large payload (a WRITE's data, a READ's reply) takes its byte count from the
// budget before its buffer is touched. The buffer keeps the budget with its pages while its
// connection stays busy, so the next request reuses both; they go back together when the
// connection goes idle or another request waits for budget. With the budget spent, the reader
// waits, and the client's further requests wait in its socket. Small requests use the part of
// a buffer that stays resident (`PayloadBuffer.keptResidentByteCount`) and never wait.

import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Bytes of payload memory shared by every connection. Waiters are served first come, first
/// served, so a 32 MiB request is not starved by a stream of smaller ones. It never
/// deadlocks: the budget holds at least one largest request, a request that holds budget
/// only waits for its own I/O and its reply's send (bounded by the message timeout), and a
/// connection gives back the budget of its idle warm buffers before it waits.
/// `@unchecked Sendable`: every field but the atomic `waiterCount` is guarded by `mutex`.
final class PayloadBudget: @unchecked Sendable {
    /// The budget's size in bytes.
    let byteCount: Int
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var availableByteCount: Int
    /// Tickets of waiters in arrival order: `servingTicket` is the next one to go.
    private var nextTicket: UInt64 = 0
    private var servingTicket: UInt64 = 0
    /// Requests waiting in `acquire`: while any does, connections give back the budget they
    /// keep for warm buffers (`RequestWorker.heldBudgetByteCount`) at their next request.
    private let waiterCount = Atomic<Int>(0)

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
        if ticket != servingTicket || availableByteCount < requestByteCount {
            waiterCount.add(1, ordering: .relaxed)
            while ticket != servingTicket || availableByteCount < requestByteCount {
                pthread_cond_wait(changed, mutex)
            }
            waiterCount.subtract(1, ordering: .relaxed)
        }
        availableByteCount -= requestByteCount
        servingTicket += 1
        // The next waiter in line may fit too.
        pthread_cond_broadcast(changed)
        pthread_mutex_unlock(mutex)
    }

    /// Takes `requestByteCount` bytes if they are free now and nobody waits; false otherwise.
    func tryAcquire(_ requestByteCount: Int) -> Bool {
        precondition(requestByteCount <= byteCount, "request larger than the whole budget")
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        guard nextTicket == servingTicket, availableByteCount >= requestByteCount else {
            return false
        }
        availableByteCount -= requestByteCount
        return true
    }

    /// Whether a request waits for budget now (a relaxed read, for the hot path).
    var hasWaiters: Bool { waiterCount.load(ordering: .relaxed) > 0 }

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
