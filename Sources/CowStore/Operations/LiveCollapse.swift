// A collapse of the frozen layers under a served store, run while it serves: one job at a
// time, on a thread of its own, throttled, with progress for `info`. The job folds the layers
// into a new layer file (LiveCollapse+Fold.swift), then rebinds the served store to it
// (VirtualDisk+LowerSwap.swift). Killed at any instant, a rerun finishes or restarts it.

import CowFormat
import CowSupport
import Synchronization
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// The live collapses of one served disk.
public final class LiveCollapse: Sendable {
    /// What a collapse was asked to do.
    public struct Request: Sendable {
        /// Stores under the served one to fold into one.
        public var depth: Int
        /// Where the folded layer goes.
        public var layerPath: FilePath
        /// Bytes copied a second at most; nil for no limit.
        public var rateBytesPerSecond: UInt64?

        public init(depth: Int, layerPath: FilePath, rateBytesPerSecond: UInt64?) {
            self.depth = depth
            self.layerPath = layerPath
            self.rateBytesPerSecond = rateBytesPerSecond
        }
    }

    /// Where a collapse is.
    public enum State: Sendable, Equatable {
        case running
        case done
        /// Nothing to do: the served store was over the folded layer already.
        case alreadyDone
        case failed(String)
    }

    /// One collapse's progress, as `info` shows it.
    public struct Status: Sendable {
        public var request: Request
        public var state: State
        /// Bytes to copy (known once the layers were scanned) and copied so far.
        public var totalByteCount: UInt64
        public var doneByteCount: UInt64
        /// Seconds since the job started, and its rate so far in bytes a second.
        public var elapsedSeconds: Double
        public var bytesPerSecond: UInt64
        /// True when an interrupted collapse's complete layer was found and reused.
        public var reusedLayer: Bool
    }

    /// One running collapse: its progress counters and its stop flag.
    /// `@unchecked Sendable`: counters are atomics; the rest is set before it is shared.
    final class Job: @unchecked Sendable {
        let request: Request
        let startedSeconds = monotonicSeconds()
        let total = Atomic<UInt64>(0)
        let done = Atomic<UInt64>(0)
        let isCancelled = Atomic<Bool>(false)

        init(request: Request) { self.request = request }

        func setTotal(_ byteCount: UInt64) { total.store(byteCount, ordering: .relaxed) }

        /// Counts `byteCount` copied, then sleeps as long as the rate limit asks (at most a
        /// second at a time, so a stop is seen).
        func advance(by byteCount: UInt64) {
            let copied = done.add(byteCount, ordering: .relaxed).newValue
            guard let rate = request.rateBytesPerSecond, rate > 0 else { return }
            while !isCancelled.load(ordering: .relaxed) {
                let ahead = Double(copied) / Double(rate) - (monotonicSeconds() - startedSeconds)
                guard ahead > 0 else { return }
                usleep(UInt32(min(ahead, 1) * 1_000_000))
            }
        }

        func checkNotCancelled() throws {
            guard !isCancelled.load(ordering: .relaxed) else {
                throw StoreError.invalidArgument(
                    "\(request.layerPath): collapse stopped (the server is stopping); run it again")
            }
        }
    }

    private let disk: VirtualDisk
    private let options: BaseOpenOptions
    /// The job running or last run, its thread, and its final state. Held only briefly.
    private let current = Locked<(job: Job, thread: JoinableThread?, state: State, reused: Bool)?>(
        nil)

    /// Collapses of `disk`'s lower chain, opening layers with `options`.
    public init(disk: VirtualDisk, options: BaseOpenOptions) {
        self.disk = disk
        self.options = options
    }

    /// Starts a collapse on a thread of its own and returns at once; refused with one line if
    /// one is running, or if the disk's lower chain cannot be collapsed.
    public func start(_ request: Request) throws -> Status {
        guard let lower = disk.swappableLower, !disk.isReadOnly else {
            throw StoreError.invalidArgument(
                "\(disk.store.path): collapse needs a store served writable over a chain of "
                    + "stores (this one is served --read-only, or its base is not a store)")
        }
        _ = try Fold(chain: lower.source, depth: request.depth, storePath: disk.store.path)
        return try current.withLock { current in
            if let running = current, running.state == .running {
                throw StoreError.invalidArgument(
                    "\(disk.store.path): a collapse is running already (depth "
                        + "\(running.job.request.depth) into \(running.job.request.layerPath)); "
                        + "see cowbd info")
            }
            current?.thread?.join()
            let job = Job(request: request)
            let thread = JoinableThread { [self] in run(job) }
            let entry = (job: job, thread: Optional(thread), state: State.running, reused: false)
            current = entry
            return status(of: entry)
        }
    }

    /// The running or last collapse, nil if none ran since the server started.
    public var status: Status? { current.withLock { $0.map(status(of:)) } }

    /// Stops a running collapse (it leaves no folded layer, or a complete one the next run
    /// reuses) and waits for its thread.
    public func stop() {
        let thread = current.withLock { current -> JoinableThread? in
            current?.job.isCancelled.store(true, ordering: .relaxed)
            defer { current?.thread = nil }
            return current?.thread
        }
        thread?.join()
    }

    private func status(of entry: (job: Job, thread: JoinableThread?, state: State, reused: Bool))
        -> Status
    {
        let elapsed = monotonicSeconds() - entry.job.startedSeconds
        let done = entry.job.done.load(ordering: .relaxed)
        return Status(
            request: entry.job.request, state: entry.state,
            totalByteCount: entry.job.total.load(ordering: .relaxed), doneByteCount: done,
            elapsedSeconds: elapsed, bytesPerSecond: UInt64(Double(done) / max(elapsed, 0.001)),
            reusedLayer: entry.reused)
    }

    private func run(_ job: Job) {
        let outcome: (State, Bool)
        do {
            outcome = try collapse(job)
        } catch {
            outcome = (.failed("\(error)"), false)
        }
        current.withLock { current in
            guard current?.job === job else { return }
            current?.state = outcome.0
            current?.reused = outcome.1
        }
    }

    /// The collapse itself: nothing to do if the served store is over the layer already; a
    /// complete layer an interrupted run left is reused (its lower is the right one and its
    /// fingerprint the served store's); otherwise it is written. Then the rebind.
    private func collapse(_ job: Job) throws -> (State, Bool) {
        let request = job.request
        guard let lower = disk.swappableLower else { preconditionFailure("checked by start") }
        let chain = lower.source
        let layerIdentity = try? FileIdentity(of: request.layerPath)
        if let layerIdentity, (try? FileIdentity(of: chain.path)) == layerIdentity {
            return (.alreadyDone, false)
        }
        let fold = try Fold(chain: chain, depth: request.depth, storePath: disk.store.path)
        var reused = false
        if layerIdentity != nil {
            try checkReusable(request.layerPath, fold: fold)
            reused = true
        } else {
            try Self.writeFoldedLayer(fold, to: request.layerPath, job: job)
        }
        try job.checkNotCancelled()
        try disk.replaceLower(withLayerAt: request.layerPath, options: options)
        return (.done, reused)
    }

    /// Refuses an existing file at the layer path unless it is the complete folded layer of
    /// this chain that an interrupted collapse left: a frozen store over the same lower.
    private func checkReusable(_ path: FilePath, fold: Fold) throws {
        let store = try StoreFile(path: path, access: .unlockedRead)
        defer { store.close() }
        let header = store.header
        let sameLower = BaseLocator.candidatePaths(for: header, storePath: path).contains {
            (try? FileIdentity(of: FilePath($0))) == (try? FileIdentity(of: fold.lower.path))
        }
        guard header.isFrozen, sameLower,
            header.virtualByteCount == fold.upper.byteCount
        else {
            throw StoreError.exists(path: path)
        }
    }
}
