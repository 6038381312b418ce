// The connections to a network base and the queue of fetches they share. Each connection
// (NBDBaseConnection.swift) takes fetches from the queue while it is up; a connection that
// drops puts its unanswered fetches back and reconnects. A fetch fails only at its deadline,
// when the base answers with an error, or when the base came back changed (then everything
// fails: the link is refused for good). Caching and planning are NBDBaseCache's.

import CowFormat
import CowSupport
import Logging
import Synchronization

/// Settings of a network base, from the command line (`--base-timeout`, `--base-cache-size`).
public struct RemoteBaseSettings: Sendable {
    /// Seconds a read waits for an unreachable base before it fails with EIO.
    public var timeoutSeconds: Double
    /// Bytes of base data kept in memory; 0 keeps none.
    public var cacheByteCount: Int
    /// Connections opened when the server allows multi-conn (one otherwise).
    public var connectionCount: Int

    public static let defaultTimeoutSeconds: Double = 60
    public static let defaultCacheByteCount = 64 << 20

    public init(
        timeoutSeconds: Double = RemoteBaseSettings.defaultTimeoutSeconds,
        cacheByteCount: Int = RemoteBaseSettings.defaultCacheByteCount, connectionCount: Int = 4
    ) {
        self.timeoutSeconds = timeoutSeconds
        self.cacheByteCount = cacheByteCount
        self.connectionCount = connectionCount
    }
}

/// What every connection of one base must find when it (re)connects.
struct RemoteBaseIdentity: Sendable, Equatable {
    let byteCount: UInt64
    let fingerprint: BaseFingerprint
}

/// The shared queue and state of all connections to one network base.
///
/// `@unchecked Sendable`: `state` is `Locked`; `connections` is set once in `start` before
/// any other thread sees the link and only read after.
final class NBDBaseLink: @unchecked Sendable {
    struct State {
        /// Fetches waiting for a connection, oldest first.
        var queue: [NBDBaseFetch] = []
        /// Why the base is refused (it came back changed); nil while it is usable.
        var refusal: StoreError?
        var isClosing = false
    }

    let uri: String
    let settings: RemoteBaseSettings
    let identity: RemoteBaseIdentity
    let logger: Logger
    let state = Locked(State())
    private var connections: [NBDBaseConnection] = []
    /// Which connection the next submit wakes first.
    private let nextWake = Atomic<Int>(0)
    /// Raised (under `state`'s lock) once the base is refused or closing: every connection
    /// thread asks each turn, and every read, so the common answer costs no lock.
    private let stopping = Atomic<Bool>(false)

    init(uri: String, settings: RemoteBaseSettings, identity: RemoteBaseIdentity, logger: Logger) {
        self.uri = uri
        self.settings = settings
        self.identity = identity
        self.logger = logger
    }

    /// Starts a thread for `first` (already connected and verified) and `extraCount` more
    /// connections that connect on their own threads.
    func start(first: NBDBaseConnection, extraCount: Int) {
        connections = [first]
        for _ in 0..<extraCount { connections.append(NBDBaseConnection(link: self)) }
        for connection in connections { connection.startThread() }
    }

    /// Queues `fetches` and wakes the connections; fails them at once if the base is refused.
    func submit(_ fetches: [NBDBaseFetch]) {
        guard !fetches.isEmpty else { return }
        let refusal = state.withLock { state -> StoreError? in
            if let refusal = state.refusal { return refusal }
            if state.isClosing { return closedError }
            state.queue.append(contentsOf: fetches)
            return nil
        }
        if let refusal {
            for fetch in fetches { fetch.finish(.failure(refusal)) }
            return
        }
        wakeOne()
    }

    /// Wakes one connection that is up, taking turns (each wake-up is a write to a pipe and a
    /// thread scheduled: at most one per submit, not one per connection, and none if that
    /// connection is awake). With none up, wakes them all.
    func wakeOne() {
        let first = nextWake.add(1, ordering: .relaxed).oldValue
        for step in 0..<connections.count {
            let connection = connections[(first + step) % connections.count]
            if connection.isUp.load(ordering: .relaxed) {
                connection.wakeForQueued()
                return
            }
        }
        for connection in connections { connection.wake() }
    }

    /// Whether fetches wait in the queue for a connection.
    var hasQueued: Bool { state.withLock { !$0.queue.isEmpty } }

    /// Up to `maxCount` queued fetches for a connection to send. Fetches past their deadline
    /// are failed on the way.
    func take(maxCount: Int) -> [NBDBaseFetch] {
        guard maxCount > 0 else { return [] }
        let now = monotonicSeconds()
        let (taken, isMoreQueued, expired) = state.withLock { state in
            let expired = Self.removeExpired(from: &state, now: now)
            let count = min(maxCount, state.queue.count)
            let taken = Array(state.queue.prefix(count))
            state.queue.removeFirst(count)
            return (taken, !state.queue.isEmpty, expired)
        }
        fail(expired)
        // This connection is full: another one takes the rest.
        if isMoreQueued { wakeOne() }
        return taken
    }

    /// Puts back the fetches of a connection that dropped: they go first, they are the oldest.
    func requeue(_ fetches: [NBDBaseFetch]) {
        guard !fetches.isEmpty else { return }
        let failure = state.withLock { state -> StoreError? in
            if let refusal = state.refusal { return refusal }
            if state.isClosing { return closedError }
            state.queue.insert(contentsOf: fetches, at: 0)
            return nil
        }
        if let failure {
            for fetch in fetches { fetch.finish(.failure(failure)) }
        } else {
            for connection in connections { connection.wake() }
        }
    }

    /// Fails the queued fetches whose deadline has passed (while no connection is up, nobody
    /// else would).
    func expireQueued() {
        let now = monotonicSeconds()
        fail(state.withLock { Self.removeExpired(from: &$0, now: now) })
    }

    /// Takes the queued fetches past their deadline out of the queue.
    private static func removeExpired(from state: inout State, now: Double) -> [NBDBaseFetch] {
        // Deadlines are the submit time plus one timeout and requeued fetches go first, so
        // the front is (about) the oldest: while it is fresh, the queue is not scanned. A
        // fetch that expires behind it waits to be sent or scanned; its readers time out on
        // their own (NBDBaseFetch.wait).
        guard let oldest = state.queue.first, oldest.isExpired(now: now) else { return [] }
        let expired = state.queue.filter { $0.isExpired(now: now) }
        if !expired.isEmpty { state.queue.removeAll { $0.isExpired(now: now) } }
        return expired
    }

    /// Fails fetches that expired in the queue.
    private func fail(_ expired: [NBDBaseFetch]) {
        for fetch in expired {
            fetch.finish(
                .failure(
                    .remoteBase(
                        uri: uri,
                        detail:
                            "unreachable for \(settings.timeoutSeconds) s (the base timeout): \(fetch.byteCount) bytes at byte \(fetch.byteOffset) not read"
                    )))
        }
    }

    /// Refuses the base for good: it came back with other content. Every queued and future
    /// fetch fails; the connections stop.
    func refuse(_ detail: String) {
        let error = StoreError.remoteBase(
            uri: uri, detail: "came back changed (\(detail)); refusing to read from it")
        let queued = state.withLock { state -> [NBDBaseFetch]? in
            guard state.refusal == nil else { return nil }
            state.refusal = error
            stopping.store(true, ordering: .releasing)
            defer { state.queue = [] }
            return state.queue
        }
        guard let queued else { return }
        logger.error(
            "network base refused", metadata: ["base": "\(uri)", "reason": "\(detail)"])
        for fetch in queued { fetch.finish(.failure(error)) }
        for connection in connections { connection.wake() }
    }

    /// The error every read throws once the base is refused or closed; nil while usable.
    var unusableError: StoreError? {
        guard stopping.load(ordering: .acquiring) else { return nil }
        return state.withLock { $0.refusal ?? ($0.isClosing ? closedError : nil) }
    }

    var isStopping: Bool { stopping.load(ordering: .acquiring) }

    /// Stops every connection and fails what is queued. Waits for the connection threads.
    func close() {
        let queued = state.withLock { state -> [NBDBaseFetch] in
            state.isClosing = true
            stopping.store(true, ordering: .releasing)
            defer { state.queue = [] }
            return state.queue
        }
        for fetch in queued { fetch.finish(.failure(closedError)) }
        for connection in connections { connection.wake() }
        for connection in connections { connection.join() }
    }

    private var closedError: StoreError {
        .remoteBase(uri: uri, detail: "the base was closed")
    }
}
