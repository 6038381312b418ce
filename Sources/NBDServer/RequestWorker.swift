// Request buffers and the per-connection pool of threads for requests that may block. Every
// buffer is allocated once, so the data path allocates nothing per request. A buffer stays
// warm (its pages resident, their payload budget held) from one request to the next, and gives
// both back when its connection goes idle or a request elsewhere waits for budget.

import CowStore
import CowSupport
import Dispatch
import NBDProtocol
import Synchronization

/// One set of request buffers: the reader's own, or a pool thread's.
/// `@unchecked Sendable`: a pool worker's `job`, `heldBudgetByteCount` and buffers are written
/// by the reader only while the worker is idle (taken from the free list) and used by the
/// worker only after `wake` is signalled; the semaphore orders the two.
final class RequestWorker: @unchecked Sendable {
    /// What a worker is asked to do.
    enum Job {
        case execute(Request)
        /// A request that failed before a thread took it (its base fetch): reply the error.
        case fail(Request, StoreError)
        case reject(RequestHeader, RequestRejection)
        /// Send the rest of a reply another thread sent in part (`Connection.trySendReply`).
        case sendUnsentReply
        case stop
    }

    let index: Int
    /// Payload in (WRITE) and out (READ, BLOCK_STATUS): the export's maximum payload.
    let payload: PayloadBuffer
    /// Reply headers with their fixed payload prefixes, and whole error chunks.
    let header: UnsafeMutableRawBufferPointer
    let scratch: ChunkScratch
    /// How the connection's replies are framed (fixed by the handshake), kept here so that a
    /// reply reads two flags rather than copying the negotiated session.
    let replyForm: ReplyForm
    var job: Job = .stop
    /// Bytes of the server's payload budget its buffer holds: kept from one job to the next
    /// while the connection is busy (WorkerPool), given back when it goes idle.
    var heldBudgetByteCount = 0
    let wake = DispatchSemaphore(value: 0)

    init(index: Int, payloadByteCount: Int, scratch: ChunkScratch, replyForm: ReplyForm) {
        self.index = index
        payload = PayloadBuffer(byteCount: payloadByteCount)
        header = .allocate(byteCount: Reply.headerBufferByteCount, alignment: 64)
        self.scratch = scratch
        self.replyForm = replyForm
    }

    deinit { header.deallocate() }

    /// `count` workers, each with its own buffers and scratch, indexed from 0 (the index a free
    /// list keeps).
    static func makeWorkers(
        count: Int, payloadByteCount: Int, replyForm: ReplyForm,
        makeScratch: () -> ChunkScratch
    ) -> [RequestWorker] {
        (0..<count).map {
            RequestWorker(
                index: $0, payloadByteCount: payloadByteCount, scratch: makeScratch(),
                replyForm: replyForm)
        }
    }

    /// Starts the worker's thread: it sleeps until `wake`, calls `run` for the job it was
    /// handed, and sleeps again, until woken with `.stop`. `run` is made once per thread, so
    /// a request costs one call and no allocation.
    func start(_ run: @escaping @Sendable (RequestWorker) -> Void) {
        startThread { [self] in
            while true {
                wake.wait()
                if case .stop = job { return }
                run(self)
            }
        }
    }
}

/// How replies are framed on a connection: structured replies and extended headers.
struct ReplyForm {
    let structured: Bool
    let extended: Bool
}

/// A fixed set of threads with a free list. The reader takes an idle worker (waiting if none
/// is idle, which bounds requests in flight and memory), fills its buffer, and wakes it.
/// A worker back from a job keeps its buffer warm unless its connection is idle or the budget
/// has waiters; the idle flag and the free list share one lock, so a worker returning while
/// the reader goes idle is either cooled by the reader or cools itself.
final class WorkerPool: Sendable {
    let workers: [RequestWorker]
    private let free: Locked<[Int]>
    private let available: DispatchSemaphore
    private let budget: PayloadBudget
    /// Set (under `free`'s lock) while the connection's client is idle.
    private let idle = Atomic<Bool>(false)
    /// Budget held by workers' warm buffers, so the reader can tell cheaply whether any is.
    private let warmByteCount = Atomic<Int>(0)

    init(
        count: Int, payloadByteCount: Int, replyForm: ReplyForm, budget: PayloadBudget,
        makeScratch: () -> ChunkScratch
    ) {
        self.budget = budget
        workers = RequestWorker.makeWorkers(
            count: count, payloadByteCount: payloadByteCount, replyForm: replyForm,
            makeScratch: makeScratch)
        free = Locked(Array((0..<count).reversed()))
        available = DispatchSemaphore(value: count)
    }

    /// Starts every worker's thread, running `execute` for each job until `.stop`.
    func start(_ execute: @escaping @Sendable (RequestWorker.Job, RequestWorker) -> Void) {
        for worker in workers {
            worker.start { [self] worker in
                execute(worker.job, worker)
                release(worker)
            }
        }
    }

    /// Waits for an idle worker and takes it.
    func acquire() -> RequestWorker {
        available.wait()
        let index = free.withLock { free -> Int in
            guard let index = free.popLast() else {
                preconditionFailure("semaphore and free list disagree")
            }
            return index
        }
        return workers[index]
    }

    /// Hands `worker` its job and wakes it.
    func submit(_ worker: RequestWorker, _ job: RequestWorker.Job) {
        worker.job = job
        worker.wake.signal()
    }

    /// Returns a worker to the free list (also when the reader took one it did not use),
    /// cooling its buffer first if the connection is idle or the budget has waiters.
    func release(_ worker: RequestWorker) {
        free.withLock { free in
            if idle.load(ordering: .relaxed) || budget.hasWaiters { cool(worker) }
            free.append(worker.index)
        }
        available.signal()
    }

    /// Makes sure `worker`, taken from the free list, holds `byteCount` bytes of budget for its
    /// buffer. If the budget cannot give them at once, every warm buffer of the connection is
    /// cooled first (`coolReader` for the reader's own), so it never waits while holding idle
    /// budget: the budget cannot deadlock.
    func reserve(_ byteCount: Int, for worker: RequestWorker, coolReader: () -> Void) {
        guard byteCount > worker.heldBudgetByteCount else { return }
        giveBack(worker)
        guard byteCount > 0 else { return }
        if !budget.tryAcquire(byteCount) {
            coolReader()
            coolIdleWorkers()
            budget.acquire(byteCount)
        }
        worker.heldBudgetByteCount = byteCount
        warmByteCount.add(byteCount, ordering: .relaxed)
    }

    /// Whether an idle worker holds budget for a warm buffer.
    var hasWarmWorkers: Bool { warmByteCount.load(ordering: .relaxed) > 0 }

    /// The client has nothing more to send: idle workers cool now, busy ones when they finish.
    func connectionWentIdle() {
        free.withLock { free in
            idle.store(true, ordering: .relaxed)
            for index in free { cool(workers[index]) }
        }
    }

    /// The client sends again: workers keep their buffers warm from now on.
    func connectionIsBusy() {
        if idle.load(ordering: .relaxed) { idle.store(false, ordering: .relaxed) }
    }

    /// Cools every idle worker (a request elsewhere waits for budget).
    func coolIdleWorkers() {
        free.withLock { free in
            for index in free { cool(workers[index]) }
        }
    }

    /// Gives `worker`'s pages beyond its buffer's kept head and their budget back.
    private func cool(_ worker: RequestWorker) {
        guard worker.heldBudgetByteCount > 0 else { return }
        giveBack(worker)
    }

    /// Gives `worker`'s pages and budget back; the caller owns the worker (taken, or idle
    /// under the free list's lock).
    private func giveBack(_ worker: RequestWorker) {
        worker.payload.giveBackPages()
        guard worker.heldBudgetByteCount > 0 else { return }
        budget.release(worker.heldBudgetByteCount)
        warmByteCount.subtract(worker.heldBudgetByteCount, ordering: .relaxed)
        worker.heldBudgetByteCount = 0
    }

    /// Waits until every job handed out has been answered, then stops the threads.
    func drainAndStop() {
        for _ in workers { available.wait() }
        for worker in workers { giveBack(worker) }
        for worker in workers {
            worker.job = .stop
            worker.wake.signal()
        }
        // libdispatch traps if a semaphore is freed below its initial value.
        for _ in workers { available.signal() }
    }
}
