// One request to a network base (a read, or a block-status query) and its outcome, which
// readers wait for. The buffer belongs to the fetch, never to a reader: a reader that gives up
// at its deadline leaves it to libnbd, which may still fill it until the command is retired or
// the handle closed (NBDBaseLink.swift).

import CowSupport

#if canImport(Glibc)
    import Glibc
#endif

/// A range of a network base being fetched, with the bytes once they arrive.
///
/// `@unchecked Sendable`: `outcome` and `extents` are guarded by `mutex`; `buffer` is written
/// only by the connection thread that runs the command, before `finish` publishes it under
/// the mutex, and read only by those who saw `.done`.
final class NBDBaseFetch: @unchecked Sendable {
    enum Kind {
        /// `NBD_CMD_READ` of the range into `buffer`.
        case read
        /// `NBD_CMD_BLOCK_STATUS` of the range for `base:allocation`.
        case blockStatus
    }

    enum Outcome {
        case pending
        case done
        case failed(StoreError)
    }

    let kind: Kind
    let byteOffset: UInt64
    let byteCount: Int
    /// Monotonic seconds after which the fetch fails rather than waits (`--base-timeout`).
    let deadline: Double
    /// The bytes read; empty (no allocation) for a block-status query.
    let buffer: UnsafeMutableRawBufferPointer
    /// Runs on the connection thread once the fetch is finished (true if it succeeded),
    /// before waiters wake.
    let whenFinished: (@Sendable (NBDBaseFetch, Bool) -> Void)?
    private var outcome = Outcome.pending
    /// Run once the fetch is finished, after `whenFinished`, with its error or nil.
    private var continuations: [@Sendable (StoreError?) -> Void] = []
    /// `base:allocation` (length, flags) pairs in order, for a block-status query; filled by
    /// the connection thread's extent callback before `finish`.
    var extents: [(byteCount: UInt64, flags: UInt32)] = []
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let changed: UnsafeMutablePointer<pthread_cond_t>

    init(
        kind: Kind, byteOffset: UInt64, byteCount: Int, deadline: Double,
        whenFinished: (@Sendable (NBDBaseFetch, Bool) -> Void)? = nil
    ) {
        precondition(byteCount > 0, "an empty fetch")
        self.kind = kind
        self.byteOffset = byteOffset
        self.byteCount = byteCount
        self.deadline = deadline
        self.whenFinished = whenFinished
        buffer =
            kind == .read
            ? .allocate(byteCount: byteCount, alignment: 4096)
            : UnsafeMutableRawBufferPointer(start: nil, count: 0)
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        changed = .allocate(capacity: 1)
        // Deadlines are monotonic seconds, so the wait's clock must be the monotonic one.
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(changed, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        if kind == .read { buffer.deallocate() }
        pthread_cond_destroy(changed)
        changed.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// True once the deadline has passed: the fetch is not worth sending any more.
    func isExpired(now: Double) -> Bool { now >= deadline }

    /// True while nobody has finished the fetch.
    var isPending: Bool {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        if case .pending = outcome { return true }
        return false
    }

    /// Records the outcome once (later calls are ignored) and wakes the waiters.
    func finish(_ result: Result<Void, StoreError>) {
        pthread_mutex_lock(mutex)
        guard case .pending = outcome else {
            pthread_mutex_unlock(mutex)
            return
        }
        var succeeded = false
        switch result {
        case .success:
            outcome = .done
            succeeded = true
        case .failure(let error): outcome = .failed(error)
        }
        let continuations = self.continuations
        self.continuations = []
        pthread_mutex_unlock(mutex)
        whenFinished?(self, succeeded)
        // Outside the mutex: the outcome was set under it, and a waiter woken while it is held
        // would only block on it again (a futex wait and wake more per fetch).
        pthread_cond_broadcast(changed)
        let error: StoreError?
        switch result {
        case .success: error = nil
        case .failure(let failure): error = failure
        }
        for continuation in continuations { continuation(error) }
    }

    /// Runs `continuation` once the fetch is finished, on the thread that finishes it, and
    /// returns nil; or, if it is finished already, runs nothing and returns its outcome.
    func onFinish(_ continuation: @escaping @Sendable (StoreError?) -> Void) -> Result<
        Void, StoreError
    >? {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        switch outcome {
        case .pending:
            continuations.append(continuation)
            return nil
        case .done: return .success(())
        case .failed(let error): return .failure(error)
        }
    }

    /// Waits until the fetch is done (its bytes are then in `buffer`), and throws its error,
    /// or a timeout at the deadline. The corresponding C function is `pthread_cond_timedwait`.
    func wait(uri: String) throws {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        var until = timespec()
        until.tv_sec = Int(deadline)
        until.tv_nsec = Int((deadline - Double(Int(deadline))) * 1e9)
        while true {
            switch outcome {
            case .done: return
            case .failed(let error): throw error
            case .pending: break
            }
            if monotonicSeconds() >= deadline {
                throw StoreError.remoteBase(
                    uri: uri,
                    detail:
                        "no answer for \(byteCount) bytes at byte \(byteOffset) before the base timeout"
                )
            }
            _ = pthread_cond_timedwait(changed, mutex, &until)
        }
    }
}
