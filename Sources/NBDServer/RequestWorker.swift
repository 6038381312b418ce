// Request buffers and the per-connection pool of threads for requests that may block. Every
// buffer is allocated once, so the data path allocates nothing per request; payload buffers
// give their pages back after large requests (PayloadBuffer).

import CowStore
import CowSupport
import Dispatch
import NBDProtocol

/// One set of request buffers: the reader's own, or a pool thread's.
/// `@unchecked Sendable`: a pool worker's `job`, `heldBudgetByteCount` and buffers are written
/// by the reader only while the worker is idle (taken from the free list) and used by the
/// worker only after `wake` is signalled; the semaphore orders the two.
final class RequestWorker: @unchecked Sendable {
    /// What a worker is asked to do.
    enum Job {
        case execute(Request)
        case reject(RequestHeader, RequestRejection)
        case stop
    }

    let index: Int
    /// Payload in (WRITE) and out (READ, BLOCK_STATUS): the export's maximum payload.
    let payload: PayloadBuffer
    /// Reply headers with their fixed payload prefixes, and whole error chunks.
    let header: UnsafeMutableRawBufferPointer
    let scratch: ChunkScratch
    var job: Job = .stop
    /// Bytes of the server's payload budget the job holds, given back when it is done.
    var heldBudgetByteCount = 0
    let wake = DispatchSemaphore(value: 0)

    init(index: Int, payloadByteCount: Int, scratch: ChunkScratch) {
        self.index = index
        payload = PayloadBuffer(byteCount: payloadByteCount)
        header = .allocate(byteCount: Reply.headerBufferByteCount, alignment: 64)
        self.scratch = scratch
    }

    deinit { header.deallocate() }
}

/// A fixed set of threads with a free list. The reader takes an idle worker (waiting if none
/// is idle, which bounds requests in flight and memory), fills its buffer, and wakes it.
final class WorkerPool: Sendable {
    let workers: [RequestWorker]
    private let free: Locked<[Int]>
    private let available: DispatchSemaphore

    init(count: Int, payloadByteCount: Int, makeScratch: () -> ChunkScratch) {
        workers = (0..<count).map {
            RequestWorker(index: $0, payloadByteCount: payloadByteCount, scratch: makeScratch())
        }
        free = Locked(Array((0..<count).reversed()))
        available = DispatchSemaphore(value: count)
    }

    /// Starts every worker's thread, running `execute` for each job until `.stop`.
    func start(_ execute: @escaping @Sendable (RequestWorker.Job, RequestWorker) -> Void) {
        for worker in workers {
            startThread { [self] in
                while true {
                    worker.wake.wait()
                    if case .stop = worker.job { return }
                    execute(worker.job, worker)
                    release(worker)
                }
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

    /// Returns a worker to the free list (also when the reader took one it did not use).
    func release(_ worker: RequestWorker) {
        free.withLock { $0.append(worker.index) }
        available.signal()
    }

    /// Waits until every job handed out has been answered, then stops the threads.
    func drainAndStop() {
        for _ in workers { available.wait() }
        for worker in workers {
            worker.job = .stop
            worker.wake.signal()
        }
        // libdispatch traps if a semaphore is freed below its initial value.
        for _ in workers { available.signal() }
    }
}
