// An OS thread that runs one closure and is waited for: compress's workers do blocking reads,
// writes and CPU-bound compression, which belong on threads of their own, not on the
// cooperative executor.

#if canImport(Glibc)
    import Glibc
#endif

/// A thread started at init and joined with `join`.
final class JoinableThread {
    private final class Body {
        let run: @Sendable () -> Void
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }

    private var thread = pthread_t()
    private var isJoined = false

    /// Starts `body` on a new thread. The corresponding C function is `pthread_create`.
    init(stackByteCount: Int = 512 << 10, _ body: @escaping @Sendable () -> Void) {
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setstacksize(&attributes, stackByteCount)
        let context = Unmanaged.passRetained(Body(body)).toOpaque()
        let result = pthread_create(
            &thread, &attributes,
            { context in
                guard let context else { return nil }
                Unmanaged<Body>.fromOpaque(context).takeRetainedValue().run()
                return nil
            }, context)
        precondition(result == 0, "pthread_create failed: \(result)")
    }

    deinit { precondition(isJoined, "a thread must be joined before it is released") }

    /// Waits for the thread to end. The corresponding C function is `pthread_join`.
    func join() {
        precondition(!isJoined, "a thread is joined once")
        pthread_join(thread, nil)
        isJoined = true
    }
}
