// The write barrier of a live checkpoint: every write, zero and trim holds it shared while it
// changes the disk; a checkpoint holds it exclusively for the instant it is taken, so each
// request lands wholly before or wholly after the checkpoint, never torn across it.

#if canImport(Glibc)
    import Glibc
#endif

/// A reader-writer lock that prefers the exclusive side: a checkpoint waits only for the
/// requests already changing the disk, not for a stream of new ones (glibc's default would let
/// a steady write load starve it). `@unchecked Sendable`: the rwlock is the synchronisation;
/// the pointer never changes. The corresponding C functions are `pthread_rwlock_rdlock`,
/// `pthread_rwlock_wrlock` and `pthread_rwlock_unlock`.
final class WriteBarrier: @unchecked Sendable {
    private let lock: UnsafeMutablePointer<pthread_rwlock_t>

    init() {
        lock = .allocate(capacity: 1)
        var attributes = pthread_rwlockattr_t()
        pthread_rwlockattr_init(&attributes)
        pthread_rwlockattr_setkind_np(
            &attributes, Int32(PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP))
        pthread_rwlock_init(lock, &attributes)
        pthread_rwlockattr_destroy(&attributes)
    }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    /// Runs a change to the disk; many run at once.
    func whileChanging<Result>(_ body: () throws -> Result) rethrows -> Result {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }

    /// Runs `body` with no change in progress and none starting until it returns.
    func withChangesStopped<Result>(_ body: () throws -> Result) rethrows -> Result {
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }
}
