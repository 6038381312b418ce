// One libnbd handle to a network base, driven by its own thread with the asynchronous API:
// up to `maxInFlightCount` commands on the wire, `poll` on the handle's socket and a wake-up
// pipe. A handle that dies is closed, its unanswered fetches go back to the link's queue, and
// the thread reconnects with backoff; each new handle must show the size and fingerprint the
// base had when it was opened, or the base is refused.

import CNBD
import CowFormat
import CowSupport
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A connection to a network base and the thread that runs it.
///
/// `@unchecked Sendable`: `handle` and `inFlight` are touched only by the connection's thread
/// (or, for the first connection, by the opener before the thread starts); the pipe's
/// descriptors are immutable; `thread` is set in `startThread` and read by `join`.
final class NBDBaseConnection: @unchecked Sendable {
    /// Commands on the wire at once per connection.
    static let maxInFlightCount = 64
    /// How long one connection attempt may take, at most.
    static let connectSeconds: Double = 10
    static let firstBackoffSeconds = 0.05
    static let maxBackoffSeconds: Double = 2
    /// The block-status context whose holes and zeros let reads skip the network.
    static let allocationContext = "base:allocation"

    let link: NBDBaseLink
    private var handle: OpaquePointer?
    private var inFlight: [Int64: NBDBaseFetch] = [:]
    private let wakeReadDescriptor: Int32
    private let wakeWriteDescriptor: Int32
    private var thread: JoinableThread?
    /// Whether a handle was up before: the next connect is then a reconnect, worth a notice.
    private var hasConnected: Bool
    /// Set when a command failed because the connection went away: the handle is dropped.
    private var isLost = false
    /// Whether a handle is up: submitters wake a connection that can send.
    let isUp = Atomic<Bool>(false)
    /// Set while the thread is about to wait in (or waits in) `poll`: only then does a submit
    /// need the wake-up pipe. A busy thread looks at the queue on its next turn anyway, so
    /// under load most submits cost no `write`, and the thread no `read`, of the pipe.
    private let isAsleep = Atomic<Bool>(false)
    /// When the commands in flight were last checked against their deadlines.
    private var lastExpirySeconds: Double = 0

    init(link: NBDBaseLink, handle: OpaquePointer? = nil) {
        self.link = link
        self.handle = handle
        hasConnected = handle != nil
        isUp.store(handle != nil, ordering: .relaxed)
        var descriptors: [Int32] = [0, 0]
        let result = pipe(&descriptors)
        precondition(result == 0, "pipe failed: \(errno)")
        for descriptor in descriptors {
            _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
            _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
        }
        wakeReadDescriptor = descriptors[0]
        wakeWriteDescriptor = descriptors[1]
    }

    deinit {
        if let handle { nbd_close(handle) }
        Glibc.close(wakeReadDescriptor)
        Glibc.close(wakeWriteDescriptor)
    }

    func startThread() {
        thread = JoinableThread { [self] in run() }
    }

    func join() { thread?.join() }

    /// Makes the thread look at the queue (and the link's state) now.
    func wake() {
        var byte: UInt8 = 1
        _ = Glibc.write(wakeWriteDescriptor, &byte, 1)
    }

    /// Wakes the thread for fetches just queued, unless it is awake: it then takes them
    /// before it next waits (`pump` looks at the queue after raising `isAsleep`, and the
    /// submitter queued before it lowers it, so one of the two sees the other).
    func wakeForQueued() {
        if isAsleep.exchange(false, ordering: .sequentiallyConsistent) { wake() }
    }

    // MARK: The thread

    private func run() {
        var backoffSeconds = Self.firstBackoffSeconds
        while !link.isStopping {
            guard let handle else {
                link.expireQueued()
                if reconnect() {
                    backoffSeconds = Self.firstBackoffSeconds
                } else {
                    waitForWake(seconds: backoffSeconds)
                    backoffSeconds = min(backoffSeconds * 2, Self.maxBackoffSeconds)
                }
                continue
            }
            for fetch in link.take(maxCount: Self.maxInFlightCount - inFlight.count) {
                send(fetch, on: handle)
            }
            pump(handle)
            retireCompleted(handle)
            expireInFlight()
            if isLost || nbd_aio_is_dead(handle) == 1 || nbd_aio_is_closed(handle) == 1 {
                drop(handle)
            }
        }
        let error = link.unusableError ?? .remoteBase(uri: link.uri, detail: "stopped")
        if let handle { nbd_close(handle) }
        handle = nil
        for fetch in inFlight.values { fetch.finish(.failure(error)) }
        inFlight = [:]
    }

    /// Connects again; true once a verified handle is up. A base with other content is refused.
    private func reconnect() -> Bool {
        let candidate: OpaquePointer
        let found: RemoteBaseIdentity
        do {
            candidate = try Self.connect(
                uri: link.uri, deadline: monotonicSeconds() + Self.connectSeconds)
        } catch {
            link.logger.debug("network base not reachable", metadata: ["error": "\(error)"])
            return false
        }
        do {
            found = try Self.identity(
                of: candidate, uri: link.uri, deadline: monotonicSeconds() + Self.connectSeconds)
        } catch {
            nbd_close(candidate)
            link.logger.debug("network base not readable", metadata: ["error": "\(error)"])
            return false
        }
        guard found == link.identity else {
            nbd_close(candidate)
            link.refuse(
                found.byteCount != link.identity.byteCount
                    ? "its size is \(found.byteCount) bytes, expected \(link.identity.byteCount)"
                    : "its content fingerprint is \(found.fingerprint), expected \(link.identity.fingerprint)"
            )
            return false
        }
        handle = candidate
        isUp.store(true, ordering: .relaxed)
        if hasConnected {
            link.logger.notice("network base reconnected", metadata: ["base": "\(link.uri)"])
        }
        hasConnected = true
        return true
    }

    /// Closes a dead handle and gives its unanswered fetches back to the queue.
    private func drop(_ dead: OpaquePointer) {
        let reason = nbd_connection_state(dead).map { String(cString: $0) } ?? "unknown"
        isLost = false
        // After nbd_close libnbd no longer writes into any fetch's buffer.
        nbd_close(dead)
        handle = nil
        isUp.store(false, ordering: .relaxed)
        let lost = inFlight.values.sorted { $0.byteOffset < $1.byteOffset }
        inFlight = [:]
        link.logger.warning(
            "network base connection lost; reconnecting",
            metadata: [
                "base": "\(link.uri)", "state": "\(reason)", "requestsRequeued": "\(lost.count)",
            ])
        link.requeue(lost)
    }

    /// Queues `fetch` on the wire; a refusal from libnbd (the handle died) requeues it.
    private func send(_ fetch: NBDBaseFetch, on handle: OpaquePointer) {
        let cookie: Int64
        switch fetch.kind {
        case .read:
            cookie = nbd_aio_pread(
                handle, fetch.buffer.baseAddress, fetch.byteCount, fetch.byteOffset,
                nbd_completion_callback(), 0)
        case .blockStatus:
            let callback = nbd_extent_callback(
                callback: { userData, context, _, entries, entryCount, _ in
                    guard let userData, let context, let entries else { return 0 }
                    guard String(cString: context) == NBDBaseConnection.allocationContext
                    else { return 0 }
                    let fetch = Unmanaged<NBDBaseFetch>.fromOpaque(userData).takeUnretainedValue()
                    for pairIndex in stride(from: 0, to: entryCount - 1, by: 2) {
                        fetch.extents.append(
                            (UInt64(entries[pairIndex]), entries[pairIndex + 1]))
                    }
                    return 0
                },
                user_data: Unmanaged.passRetained(fetch).toOpaque(),
                free: { userData in
                    guard let userData else { return }
                    Unmanaged<NBDBaseFetch>.fromOpaque(userData).release()
                })
            cookie = nbd_aio_block_status(
                handle, UInt64(fetch.byteCount), fetch.byteOffset, callback,
                nbd_completion_callback(), 0)
        }
        guard cookie > 0 else {
            if Self.isConnectionLoss(handle, errno: nbd_get_errno()) {
                isLost = true
                link.requeue([fetch])
            } else {
                fetch.finish(.failure(failure(of: fetch, "queueing it")))
            }
            return
        }
        inFlight[cookie] = fetch
    }

    /// Waits up to a second for the socket (or a wake-up) and lets libnbd send and receive.
    /// The corresponding C functions are `poll`, `nbd_aio_notify_read` and `_write`.
    private func pump(_ handle: OpaquePointer) {
        let socket = nbd_aio_get_fd(handle)
        guard socket >= 0 else { return }
        let direction = nbd_aio_get_direction(handle)
        var events: Int16 = 0
        if direction & UInt32(LIBNBD_AIO_DIRECTION_READ) != 0 { events |= Int16(POLLIN) }
        if direction & UInt32(LIBNBD_AIO_DIRECTION_WRITE) != 0 { events |= Int16(POLLOUT) }
        var descriptors = [
            pollfd(fd: socket, events: events, revents: 0),
            pollfd(fd: wakeReadDescriptor, events: Int16(POLLIN), revents: 0),
        ]
        isAsleep.store(true, ordering: .sequentiallyConsistent)
        // Fetches queued before `isAsleep` was raised woke nobody: look once more.
        let timeoutMilliseconds: Int32 =
            inFlight.count < Self.maxInFlightCount && link.hasQueued ? 0 : 1000
        let ready = poll(&descriptors, 2, timeoutMilliseconds)
        isAsleep.store(false, ordering: .sequentiallyConsistent)
        guard ready > 0 else { return }
        if descriptors[1].revents != 0 { drainWakes() }
        let happened = descriptors[0].revents
        if happened & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
            _ = nbd_aio_notify_read(handle)
        }
        if happened & Int16(POLLOUT) != 0, nbd_aio_is_dead(handle) != 1 {
            _ = nbd_aio_notify_write(handle)
        }
    }

    /// Errors of a command that mean the connection went away, not that the server refused it:
    /// libnbd fails the commands in flight with these when the socket closes or breaks.
    static let connectionLossErrors: Set<Int32> = [
        ENOTCONN, ESHUTDOWN, ECONNRESET, ECONNABORTED, EPIPE, ETIMEDOUT,
    ]

    static func isConnectionLoss(_ handle: OpaquePointer, errno: Int32) -> Bool {
        nbd_aio_is_dead(handle) == 1 || nbd_aio_is_closed(handle) == 1
            || connectionLossErrors.contains(errno)
    }

    /// Retires every finished command: its fetch is done, failed by the server, or (when the
    /// connection died under it) left in `inFlight` for `drop` to requeue.
    private func retireCompleted(_ handle: OpaquePointer) {
        // With nothing in flight libnbd's peek fails, formatting an error message each time.
        while !inFlight.isEmpty {
            let cookie = nbd_aio_peek_command_completed(handle)
            guard cookie > 0 else { return }
            let status = nbd_aio_command_completed(handle, UInt64(cookie))
            if status < 0 && Self.isConnectionLoss(handle, errno: nbd_get_errno()) {
                isLost = true
                continue  // the connection died, not the command: `drop` requeues it
            }
            guard let fetch = inFlight.removeValue(forKey: cookie) else { continue }
            if status == 1 {
                fetch.finish(.success(()))
            } else {
                fetch.finish(.failure(failure(of: fetch, "the server's answer")))
            }
        }
    }

    /// Fails the fetches on the wire past their deadline (a base that stopped answering but
    /// keeps its connection): nobody may be waiting in `NBDBaseFetch.wait` to notice, only a
    /// continuation. They stay in `inFlight`, their buffers libnbd's until the command is
    /// retired; a late answer is ignored. At most once a second.
    private func expireInFlight() {
        let now = monotonicSeconds()
        guard now - lastExpirySeconds >= 1 else { return }
        lastExpirySeconds = now
        for fetch in inFlight.values where fetch.isExpired(now: now) && fetch.isPending {
            fetch.finish(
                .failure(
                    .remoteBase(
                        uri: link.uri,
                        detail:
                            "no answer for \(fetch.byteCount) bytes at byte \(fetch.byteOffset) before the base timeout"
                    )))
        }
    }

    private func failure(of fetch: NBDBaseFetch, _ stage: String) -> StoreError {
        let message = nbd_get_error().map { String(cString: $0) } ?? "no error text"
        let what = fetch.kind == .read ? "read" : "block status"
        return .remoteBase(
            uri: link.uri,
            detail:
                "\(what) of \(fetch.byteCount) bytes at byte \(fetch.byteOffset) failed (\(stage)): \(message)"
        )
    }

    private func waitForWake(seconds: Double) {
        var descriptor = pollfd(fd: wakeReadDescriptor, events: Int16(POLLIN), revents: 0)
        if poll(&descriptor, 1, Int32(seconds * 1000)) > 0 { drainWakes() }
    }

    private func drainWakes() {
        var bytes = [UInt8](repeating: 0, count: 64)
        while Glibc.read(wakeReadDescriptor, &bytes, bytes.count) > 0 {}
    }
}
