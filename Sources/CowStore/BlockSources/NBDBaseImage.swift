// A base image served by an NBD server, read through libnbd: `nbd://HOST:PORT/EXPORT`,
// `nbd+unix:///EXPORT?socket=PATH`, and the TLS forms (`nbds://...` with libnbd's query
// parameters). Several connections when the server allows multi-conn, many reads in flight
// on each, block status to skip zeros, read-ahead for sequential runs and a bounded cache.
// A read waits through an outage of up to `--base-timeout` and never returns bytes the base
// did not send. The connections are NBDBaseLink's, the memory NBDBaseCache's.

import CowFormat
import CowSupport
import Logging
import SystemPackage

/// A read-only base image on an NBD server.
public final class NBDBaseImage: BlockSource {
    /// The URI schemes libnbd connects to.
    static let schemes = ["nbd://", "nbds://", "nbd+unix://", "nbds+unix://", "nbd+vsock://"]
    /// The largest read sent to the server (less if the server says so).
    static let maxFetchByteCount = 1 << 20
    /// Bytes one block-status query asks about.
    static let blockStatusByteCount = 1 << 30
    /// Read-ahead of a sequential run starts at this and doubles up to the maximum.
    static let firstReadAheadByteCount: UInt64 = 256 << 10
    static let maxReadAheadByteCount: UInt64 = 8 << 20
    /// Sequential runs followed at once.
    static let maxStreamCount = 8
    /// A prefetch (NBD_CMD_CACHE) fetches at most this much.
    static let maxPrefetchByteCount: UInt64 = 64 << 20

    /// True if `text` is an NBD URI rather than a path.
    public static func isURI(_ text: String) -> Bool {
        schemes.contains { text.hasPrefix($0) }
    }

    public let uri: String
    public let byteCount: UInt64
    public var path: FilePath { FilePath(uri) }
    public var locationDescription: String { uri }
    public var kindName: String { "nbd" }
    public var mayBeSlow: Bool { true }
    /// Connections to the server: more than one when it allows multi-conn.
    public let connectionCount: Int
    let settings: RemoteBaseSettings
    private let identity: RemoteBaseIdentity
    private let link: NBDBaseLink
    private let cache: NBDBaseCache
    private let maxFetchByteCount: Int
    private let streams = Locked(ReadAheadStreams())

    /// Connects to `uri`, reads its size and fingerprint, and starts the connections (and,
    /// if the server answers block status, a walk of its zero ranges). Fails at once if the
    /// server cannot be reached now.
    public init(uri: String, settings: RemoteBaseSettings, logger: Logger) throws {
        self.uri = uri
        self.settings = settings
        let deadline = monotonicSeconds() + min(settings.timeoutSeconds, 60)
        let handle = try NBDBaseConnection.connect(uri: uri, deadline: deadline)
        let answersBlockStatus: Bool
        do {
            identity = try NBDBaseConnection.identity(of: handle, uri: uri, deadline: deadline)
            maxFetchByteCount = NBDBaseConnection.maxReadByteCount(
                handle, limit: Self.maxFetchByteCount)
            connectionCount =
                NBDBaseConnection.allowsMultipleConnections(handle)
                ? max(settings.connectionCount, 1) : 1
            answersBlockStatus = NBDBaseConnection.answersBlockStatus(handle)
        } catch {
            NBDBaseConnection.closeHandle(handle)
            throw error
        }
        byteCount = identity.byteCount
        link = NBDBaseLink(uri: uri, settings: settings, identity: identity, logger: logger)
        cache = NBDBaseCache(imageByteCount: byteCount, byteCount: settings.cacheByteCount)
        link.start(
            first: NBDBaseConnection(link: link, handle: handle), extraCount: connectionCount - 1)
        if answersBlockStatus && byteCount > 0 { startZeroWalk() }
    }

    deinit { link.close() }

    public func fingerprint() throws -> BaseFingerprint { identity.fingerprint }

    public func read(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        precondition(byteOffset + UInt64(buffer.count) <= byteCount, "base read past its end")
        guard !buffer.isEmpty else { return }
        if let error = link.unusableError { throw error }
        let plan = cache.plan(
            at: byteOffset, byteCount: buffer.count, into: buffer,
            deadline: monotonicSeconds() + settings.timeoutSeconds,
            maxFetchByteCount: maxFetchByteCount)
        link.submit(plan.newFetches)
        readAhead(after: byteOffset, byteCount: UInt64(buffer.count))
        for wait in plan.waits {
            try wait.fetch.wait(uri: uri)
            UnsafeMutableRawBufferPointer(
                rebasing: buffer[wait.bufferOffset..<(wait.bufferOffset + wait.byteCount)]
            ).copyMemory(
                from: UnsafeRawBufferPointer(
                    rebasing: wait.fetch.buffer[
                        wait.fetchOffset..<(wait.fetchOffset + wait.byteCount)]))
        }
    }

    /// Only from the cache and known zeros: anything else would wait on the network.
    public func readIfReady(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer)
        -> Bool
    {
        precondition(byteOffset + UInt64(buffer.count) <= byteCount, "base read past its end")
        guard !link.isStopping else { return false }
        return cache.readIfCached(at: byteOffset, into: buffer)
    }

    /// From what block status has told so far; data where nothing is known yet. Never waits.
    public func extent(at byteOffset: UInt64, maxByteCount: UInt64) throws -> SourceExtent {
        precondition(byteOffset < byteCount && maxByteCount > 0)
        return cache.extent(at: byteOffset, maxByteCount: maxByteCount)
    }

    public func prefetch(at byteOffset: UInt64, byteCount: UInt64) {
        guard byteOffset < self.byteCount, byteCount > 0, settings.cacheByteCount > 0 else {
            return
        }
        let count = min(byteCount, Self.maxPrefetchByteCount, self.byteCount - byteOffset)
        let plan = cache.plan(
            at: byteOffset, byteCount: Int(count), into: nil,
            deadline: monotonicSeconds() + settings.timeoutSeconds,
            maxFetchByteCount: maxFetchByteCount)
        link.submit(plan.newFetches)
    }

    /// Fetches what of the range is neither cached, known zeros nor in flight, and runs `then`
    /// once every page of it has arrived in the cache (or a fetch failed). A reader then finds
    /// it there, so the thread that will answer need not wait for the network, nor be woken
    /// twice. Nothing without a cache to keep what arrives.
    public func whenFetched(
        at byteOffset: UInt64, byteCount: UInt64,
        _ then: @escaping @Sendable (StoreError?) -> Void
    ) -> Bool {
        guard settings.cacheByteCount > 0, byteCount > 0, byteOffset < self.byteCount,
            byteCount <= self.byteCount - byteOffset, link.unusableError == nil
        else { return false }
        let plan = cache.plan(
            at: byteOffset, byteCount: Int(byteCount), into: nil,
            deadline: monotonicSeconds() + settings.timeoutSeconds,
            maxFetchByteCount: maxFetchByteCount, collectsInFlight: true)
        // Read-ahead now, not when the reader comes back once the bytes are in (its `read`
        // notes the same read again, which changes nothing).
        readAhead(after: byteOffset, byteCount: byteCount)
        let fetches = plan.waits.map(\.fetch) + plan.newFetches
        guard !fetches.isEmpty else { return false }
        let countdown = FetchCountdown(count: fetches.count, then)
        // Registered before the new fetches are sent, so only those already in flight can
        // have finished in between.
        for fetch in fetches {
            switch fetch.onFinish({ countdown.finishOne($0) }) {
            case nil: break
            case .success?: countdown.finishOne(nil)
            case .failure(let error)?: countdown.finishOne(error)
            }
        }
        link.submit(plan.newFetches)
        return true
    }

    /// Fetches ahead of a read that continues a sequential run, the window doubling as the
    /// run goes on. Nothing without a cache to keep what arrives.
    private func readAhead(after byteOffset: UInt64, byteCount: UInt64) {
        guard settings.cacheByteCount > 0 else { return }
        let range = streams.withLock {
            $0.note(
                byteOffset: byteOffset, byteCount: byteCount, imageByteCount: self.byteCount)
        }
        if let range { prefetch(at: range.lowerBound, byteCount: UInt64(range.count)) }
    }

    /// Asks the server, in order, which stretches read as zeros, on a thread of its own; stops
    /// at the end, on an error, when the map is full, or when the base closes.
    private func startZeroWalk() {
        let (link, cache, imageByteCount, timeout) = (
            link, cache, byteCount, settings.timeoutSeconds
        )
        startThread {
            var byteOffset: UInt64 = 0
            while byteOffset < imageByteCount && !link.isStopping && !cache.isZeroMapFull {
                let count = min(UInt64(Self.blockStatusByteCount), imageByteCount - byteOffset)
                let fetch = NBDBaseFetch(
                    kind: .blockStatus, byteOffset: byteOffset, byteCount: Int(count),
                    deadline: monotonicSeconds() + timeout)
                link.submit([fetch])
                guard (try? fetch.wait(uri: link.uri)) != nil else { return }
                let knownEnd = cache.record(fetch)
                guard knownEnd > byteOffset else { return }
                byteOffset = knownEnd
            }
        }
    }
}

/// Runs a continuation once a number of fetches have finished, with the first error.
final class FetchCountdown: Sendable {
    private let state: Locked<(remainingCount: Int, error: StoreError?)>
    private let then: @Sendable (StoreError?) -> Void

    init(count: Int, _ then: @escaping @Sendable (StoreError?) -> Void) {
        precondition(count > 0, "a countdown of nothing")
        state = Locked((count, nil))
        self.then = then
    }

    func finishOne(_ error: StoreError?) {
        let outcome = state.withLock { state -> StoreError?? in
            if state.error == nil { state.error = error }
            state.remainingCount -= 1
            return state.remainingCount == 0 ? .some(state.error) : .none
        }
        if let outcome { then(outcome) }
    }
}

/// The sequential runs being read, for read-ahead.
struct ReadAheadStreams {
    struct Stream {
        /// Where the run's last read started: the same read noted twice counts once.
        var lastByteOffset: UInt64
        var nextByteOffset: UInt64
        var windowByteCount: UInt64
        var prefetchedEnd: UInt64
        var lastUse: UInt64
    }

    var streams: [Stream] = []
    var useCount: UInt64 = 0

    /// Notes a read; returns the range to fetch ahead if it continues a run.
    mutating func note(byteOffset: UInt64, byteCount: UInt64, imageByteCount: UInt64)
        -> Range<UInt64>?
    {
        useCount += 1
        let end = byteOffset + byteCount
        if streams.contains(where: { $0.lastByteOffset == byteOffset && $0.nextByteOffset == end })
        {
            return nil
        }
        guard let index = streams.firstIndex(where: { $0.nextByteOffset == byteOffset }) else {
            let stream = Stream(
                lastByteOffset: byteOffset, nextByteOffset: end, windowByteCount: 0,
                prefetchedEnd: end, lastUse: useCount)
            if streams.count < NBDBaseImage.maxStreamCount {
                streams.append(stream)
            } else if let oldest = streams.indices.min(by: {
                streams[$0].lastUse < streams[$1].lastUse
            }) {
                streams[oldest] = stream
            }
            return nil
        }
        var stream = streams[index]
        stream.windowByteCount =
            stream.windowByteCount == 0
            ? NBDBaseImage.firstReadAheadByteCount
            : min(stream.windowByteCount * 2, NBDBaseImage.maxReadAheadByteCount)
        stream.lastByteOffset = byteOffset
        stream.nextByteOffset = end
        stream.lastUse = useCount
        let from = max(end, stream.prefetchedEnd)
        let to = min(end + stream.windowByteCount, imageByteCount)
        if to > from { stream.prefetchedEnd = to }
        streams[index] = stream
        return to > from ? from..<to : nil
    }
}
