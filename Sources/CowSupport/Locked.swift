// A value guarded by a pthread mutex, for state that threads contend for. Used instead of
// Synchronization's Mutex: on Linux a contended Mutex is handed to a waiter inside the kernel
// (a priority-inheritance futex), a hand-over ThreadSanitizer cannot see, so under contention
// it reports races on the guarded value that are not there. pthread mutexes it understands.

#if canImport(Glibc)
    import Glibc
#endif

/// `Value` behind a mutex: only `withLock` reaches it.
/// `@unchecked Sendable`: the mutex is the synchronisation; the pointers never change.
package final class Locked<Value>: @unchecked Sendable {
    private let value: UnsafeMutablePointer<Value>
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    package init(_ initialValue: consuming sending Value) {
        value = .allocate(capacity: 1)
        value.initialize(to: initialValue)
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        value.deinitialize(count: 1)
        value.deallocate()
    }

    /// Runs `body` on the value while holding the mutex.
    package func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value.pointee)
    }
}
