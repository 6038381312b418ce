// Starting a detached OS thread for a closure. The server's data path runs on threads of its
// own with blocking I/O, never on the cooperative executor (docs/ARCHITECTURE.md).

#if canImport(Glibc)
    import Glibc
#endif

private final class ThreadBody {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

/// Runs `body` on a new detached thread. The corresponding C function is `pthread_create`.
func startThread(stackByteCount: Int = 512 << 10, _ body: @escaping @Sendable () -> Void) {
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
    pthread_attr_setstacksize(&attributes, stackByteCount)
    let context = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    var thread = pthread_t()
    let result = pthread_create(
        &thread, &attributes,
        { context in
            guard let context else { return nil }
            let box = Unmanaged<ThreadBody>.fromOpaque(context).takeRetainedValue()
            box.body()
            return nil
        }, context)
    precondition(result == 0, "pthread_create failed: \(result)")
}
