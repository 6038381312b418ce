// OS threads for blocking work: the server's data path and compress's workers do blocking
// reads, writes and CPU-bound compression, which belong on threads of their own, never on the
// cooperative executor (docs/ARCHITECTURE.md). One detached kind, one joined kind.

#if canImport(Glibc)
    import Glibc
#endif

/// A thread started at init and joined with `join`.
package final class JoinableThread {
    private let thread: pthread_t
    private var isJoined = false

    /// Starts `body` on a new thread. The corresponding C function is `pthread_create`.
    package init(stackByteCount: Int = 512 << 10, _ body: @escaping @Sendable () -> Void) {
        thread = spawnThread(detached: false, stackByteCount: stackByteCount, body)
    }

    deinit { precondition(isJoined, "a thread must be joined before it is released") }

    /// Waits for the thread to end. The corresponding C function is `pthread_join`.
    package func join() {
        precondition(!isJoined, "a thread is joined once")
        pthread_join(thread, nil)
        isJoined = true
    }
}

/// Runs `body` on a new detached thread. The corresponding C function is `pthread_create`.
package func startThread(
    stackByteCount: Int = 512 << 10, _ body: @escaping @Sendable () -> Void
) {
    _ = spawnThread(detached: true, stackByteCount: stackByteCount, body)
}

private final class ThreadBody {
    let run: @Sendable () -> Void
    init(_ run: @escaping @Sendable () -> Void) { self.run = run }
}

/// Starts a thread running `body`; the body box is handed over retained and released by the
/// thread. A failure to start is a programmer error (limits exhausted): it stops the process.
private func spawnThread(
    detached: Bool, stackByteCount: Int, _ body: @escaping @Sendable () -> Void
) -> pthread_t {
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    if detached { pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED)) }
    pthread_attr_setstacksize(&attributes, stackByteCount)
    let context = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    var thread = pthread_t()
    let result = pthread_create(
        &thread, &attributes,
        { context in
            guard let context else { return nil }
            Unmanaged<ThreadBody>.fromOpaque(context).takeRetainedValue().run()
            return nil
        }, context)
    precondition(result == 0, "pthread_create failed: \(result)")
    return thread
}
