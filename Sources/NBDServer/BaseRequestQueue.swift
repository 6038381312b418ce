// Requests that may wait on a slow lower layer (an NBD base), and the threads that run them,
// apart from everything else: a base that stops answering holds these threads and this queue,
// never the connection's reader nor the workers for chunks the store holds. Bounded: a fixed
// set of threads, and at most `maxWaitingCount` requests waiting for one of them.

import CowStore
import CowSupport
import Dispatch
import NBDProtocol

/// A connection's queue of requests for the base. The reader submits without waiting (unless
/// the bound is reached); a thread that finishes a request takes the oldest waiting one.
/// `@unchecked Sendable`: the queue's state is behind `state`'s lock; a worker's buffers and
/// job are written by the reader only while the worker is idle (off the free list, not yet
/// woken) and used by the worker after `wake`, as in `WorkerPool`.
final class BaseRequestQueue: @unchecked Sendable {
    /// Requests that may wait for a thread, beyond those the threads run: more than any
    /// client's queue depth (Linux's nbd driver: 128 tags a queue; qemu: 16), so a client
    /// whose base reads are all stuck still reaches its other requests.
    static let maxWaitingCount = 1024

    /// A request no thread was free for: its job, a copy of its payload, its payload budget.
    private struct Waiting {
        let job: RequestWorker.Job
        let payload: UnsafeMutableRawBufferPointer?
        let budgetByteCount: Int
    }

    /// Idle threads, and the waiting requests in a ring of `maxWaitingCount` slots.
    private struct State {
        var free: [Int]
        var waiting = [Waiting?](repeating: nil, count: BaseRequestQueue.maxWaitingCount)
        var firstWaiting = 0
        var waitingCount = 0
    }

    let workers: [RequestWorker]
    private let state: Locked<State>
    /// One per request submitted and not yet answered, up to threads plus `maxWaitingCount`.
    private let room: DispatchSemaphore
    private let capacity: Int

    init(
        count: Int, payloadByteCount: Int, replyForm: ReplyForm,
        makeScratch: () -> ChunkScratch
    ) {
        workers = RequestWorker.makeWorkers(
            count: count, payloadByteCount: payloadByteCount, replyForm: replyForm,
            makeScratch: makeScratch)
        state = Locked(State(free: Array((0..<count).reversed())))
        capacity = count + Self.maxWaitingCount
        room = DispatchSemaphore(value: capacity)
    }

    /// Starts every thread, running `execute` for each request until `.stop`.
    func start(_ execute: @escaping @Sendable (RequestWorker.Job, RequestWorker) -> Void) {
        for worker in workers {
            worker.start { [self] worker in
                var job = worker.job
                while true {
                    execute(job, worker)
                    // Taken before the room is given back: a thread between requests still
                    // counts as busy, so the ring cannot overflow.
                    let next = takeWaiting(orFree: worker)
                    room.signal()
                    guard let next else { break }
                    load(next, into: worker)
                    job = next.job
                }
            }
        }
    }

    /// Queues a request whose payload (a WRITE's, allocated by the caller, now owned by the
    /// queue) has been read and whose `budgetByteCount` of the payload budget is taken. Waits
    /// only when threads plus `maxWaitingCount` requests are already outstanding.
    func submit(
        _ job: RequestWorker.Job, payload: UnsafeMutableRawBufferPointer?, budgetByteCount: Int
    ) {
        room.wait()
        dispatch(Waiting(job: job, payload: payload, budgetByteCount: budgetByteCount))
    }

    /// Queues a read only once `fetch` (which starts fetching its bytes, or returns false if
    /// there is nothing to wait for) reports them arrived. Then `answer`, on the thread that
    /// saw them arrive, may reply at once without waiting (giving back the request's budget
    /// when it did); otherwise a thread takes the read and answers from memory, woken once
    /// rather than once to send and once when the answer comes. A failed fetch fails the read
    /// with its error. Waits, as `submit`, only for room.
    func submit(
        _ request: Request, budgetByteCount: Int,
        afterFetching fetch: (@escaping @Sendable (StoreError?) -> Void) -> Bool,
        answer: @escaping @Sendable (Request) -> ReplyAttempt
    ) {
        room.wait()
        let isFetching = fetch { [self] error in
            if error == nil {
                switch answer(request) {
                case .sent:
                    room.signal()
                    return
                case .sentInPart:
                    // The request's room now holds the rest of its reply until a thread sends it.
                    dispatch(Waiting(job: .sendUnsentReply, payload: nil, budgetByteCount: 0))
                    return
                case .notSent: break
                }
            }
            let job: RequestWorker.Job = error.map { .fail(request, $0) } ?? .execute(request)
            dispatch(Waiting(job: job, payload: nil, budgetByteCount: budgetByteCount))
        }
        if !isFetching {
            dispatch(
                Waiting(job: .execute(request), payload: nil, budgetByteCount: budgetByteCount))
        }
    }

    /// Hands `request`, whose room is taken, to an idle thread or the waiting ring.
    private func dispatch(_ request: Waiting) {
        let idle = state.withLock { state -> Int? in
            if let index = state.free.popLast() { return index }
            precondition(state.waitingCount < Self.maxWaitingCount, "base request ring full")
            let slot = (state.firstWaiting + state.waitingCount) % Self.maxWaitingCount
            state.waiting[slot] = request
            state.waitingCount += 1
            return nil
        }
        guard let idle else { return }
        let worker = workers[idle]
        load(request, into: worker)
        worker.job = request.job
        worker.wake.signal()
    }

    /// Waits until every request submitted has been answered, then stops the threads.
    func drainAndStop() {
        for _ in 0..<capacity { room.wait() }
        for worker in workers {
            worker.job = .stop
            worker.wake.signal()
        }
        // libdispatch traps if a semaphore is freed below its initial value.
        for _ in 0..<capacity { room.signal() }
    }

    /// The oldest waiting request, or nil after putting `worker` back on the free list.
    private func takeWaiting(orFree worker: RequestWorker) -> Waiting? {
        state.withLock { state -> Waiting? in
            guard state.waitingCount > 0 else {
                state.free.append(worker.index)
                return nil
            }
            let next = state.waiting[state.firstWaiting]
            state.waiting[state.firstWaiting] = nil
            state.firstWaiting = (state.firstWaiting + 1) % Self.maxWaitingCount
            state.waitingCount -= 1
            return next
        }
    }

    /// Gives `worker` a request's payload and budget; the payload's copy is freed.
    private func load(_ request: Waiting, into worker: RequestWorker) {
        worker.heldBudgetByteCount = request.budgetByteCount
        guard let payload = request.payload else { return }
        worker.payload.prefix(payload.count).copyMemory(from: UnsafeRawBufferPointer(payload))
        payload.deallocate()
    }
}
