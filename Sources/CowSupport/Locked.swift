// A value guarded by a pthread mutex, for state that threads contend for. Used instead of
// Synchronization's Mutex: on Linux a contended Mutex is handed to a waiter inside the kernel
// (a priority-inheritance futex), a hand-over ThreadSanitizer cannot see, so under contention
// it reports races on the guarded value that are not there. pthread mutexes it understands.

#if canImport(Glibc)
    import Glibc
#endif

/// `Value` behind a mutex: only `withLock` reaches it.
/// `@unchecked Sendable`: the mutex is the synchronisation; the pointers never change.
/// Public rather than package: Swift 6.3 keeps no body for an `@inlinable package` method in
/// the module interface, so every lock taken in another module was a generic call.
public final class Locked<Value>: @unchecked Sendable {
    @usableFromInline let value: UnsafeMutablePointer<Value>
    @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>

    public init(_ initialValue: consuming sending Value) {
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

    /// Runs `body` on the value while holding the mutex. Inlinable, so a caller in another
    /// module gets it specialised for its value and result, not a generic call per use.
    @inlinable
    public func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value.pointee)
    }

    /// Runs `body` on the value if the mutex is free now; nil, without waiting, if another
    /// thread holds it. The corresponding C function is `pthread_mutex_trylock`.
    @inlinable
    public func withLockIfAvailable<Result>(_ body: (inout Value) throws -> Result) rethrows
        -> Result?
    {
        guard pthread_mutex_trylock(mutex) == 0 else { return nil }
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value.pointee)
    }
}
