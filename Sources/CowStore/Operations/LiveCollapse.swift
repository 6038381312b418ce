// A collapse of the frozen layers under a served store, run while it serves: one job at a
// time, on a thread of its own, throttled, with progress for `info`. The job folds the layers
// into a new layer file (LayerFold, as offline), then rebinds the served store to it
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
        /// Stores under the served one to fold into one: at least 2.
        public var depth: Int
        /// Where the folded layer goes (absolute); nil for LayerFold's default name, which
        /// `start` resolves.
        public var layerPath: FilePath?
        /// Bytes copied a second at most, at least `minimumRateBytesPerSecond`; nil for no limit.
        public var rateBytesPerSecond: UInt64?

        public init(depth: Int, layerPath: FilePath?, rateBytesPerSecond: UInt64?) {
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

    /// The smallest `--rate`: LayerFold paces between 1 MiB pieces, so at this rate a stop
    /// waits at most about a second for the piece in hand.
    public static let minimumRateBytesPerSecond: UInt64 = 1 << 20

    /// One running collapse: its progress counters and its stop flag.
    /// `@unchecked Sendable`: counters are atomics; `request` is set before it is shared.
    final class Job: @unchecked Sendable {
        /// With `layerPath` resolved.
        let request: Request
        let startedSeconds = monotonicSeconds()
        let total = Atomic<UInt64>(0)
        let done = Atomic<UInt64>(0)
        let isCancelled = Atomic<Bool>(false)

        init(request: Request) { self.request = request }

        /// LayerFold's progress, after each piece: recorded, and the way a stop is seen.
        func record(_ progress: LayerFold.Progress) throws {
            total.store(progress.totalByteCount, ordering: .relaxed)
            done.store(progress.doneByteCount, ordering: .relaxed)
            try checkNotCancelled()
        }

        func checkNotCancelled() throws {
            guard !isCancelled.load(ordering: .relaxed) else {
                throw StoreError.invalidArgument(
                    "\(request.layerPath?.string ?? "collapse"): collapse stopped (the server "
                        + "is stopping); run it again")
            }
        }
    }

    /// The served disk; a live snapshot may replace it (a collapse then works on the new top).
    private let live: LiveDisk
    private var disk: VirtualDisk { live.current }
    private let options: BaseOpenOptions
    /// The job running or last run, its thread, and its final state. Held only briefly.
    private let current = Locked<(job: Job, thread: JoinableThread?, state: State, reused: Bool)?>(
        nil)

    /// Collapses of the served disk's lower chain, opening layers with `options`.
    public init(disk: LiveDisk, options: BaseOpenOptions) {
        live = disk
        self.options = options
    }

    /// Starts a collapse on a thread of its own and returns at once; refused with one line if
    /// one is running, or if the disk's lower chain cannot be collapsed as asked (LayerFold's
    /// checks, run here first, so the refusal is the command's answer).
    public func start(_ request: Request) throws -> Status {
        let disk = self.disk
        guard disk.swappableLower != nil, !disk.isReadOnly else {
            throw StoreError.invalidArgument(
                "\(disk.store.path): collapse needs a store served writable over a chain of "
                    + "stores (this one is served --read-only, or its base is not a store)")
        }
        if let rate = request.rateBytesPerSecond, rate < Self.minimumRateBytesPerSecond {
            throw StoreError.invalidArgument(
                "\(disk.store.path): collapse --rate \(rate): at least 1 MiB a second")
        }
        var request = request
        if let running = status, running.state == .running {
            throw Self.busy(disk.store.path, running.request)
        }
        if let layerPath = request.layerPath, isCurrentLower(layerPath) {
            return finishedAlready(request)
        }
        let fold = try LayerFold(
            topPath: disk.store.path, depth: request.depth, outputPath: request.layerPath,
            options: options)
        request.layerPath = fold.outputPath
        fold.close()
        return try current.withLock { current in
            if let running = current, running.state == .running {
                throw Self.busy(disk.store.path, running.job.request)
            }
            current?.thread?.join()
            let job = Job(request: request)
            let thread = JoinableThread { [self] in run(job) }
            let entry = (job: job, thread: Optional(thread), state: State.running, reused: false)
            current = entry
            return status(of: entry)
        }
    }

    /// Whether the served store is over the layer at `path` already (a collapse into it done).
    private func isCurrentLower(_ path: FilePath) -> Bool {
        let disk = self.disk
        guard let lower = disk.swappableLower, let layer = try? FileIdentity(of: path) else {
            return false
        }
        return (try? FileIdentity(of: lower.source.path)) == layer
    }

    /// Records and returns a collapse that had nothing to do.
    private func finishedAlready(_ request: Request) -> Status {
        current.withLock { current in
            current?.thread?.join()
            let entry = (
                job: Job(request: request), thread: JoinableThread?.none,
                state: State.alreadyDone, reused: false
            )
            current = entry
            return status(of: entry)
        }
    }

    private static func busy(_ storePath: FilePath, _ running: Request) -> StoreError {
        StoreError.invalidArgument(
            "\(storePath): a collapse is running already (depth \(running.depth) into "
                + "\(running.layerPath?.string ?? "?")); see cowbd info")
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

    /// The collapse itself: nothing to do if the served store is over the layer already;
    /// else LayerFold builds it (or keeps a complete one an interrupted run left), and the
    /// served store is rebound to it.
    private func collapse(_ job: Job) throws -> (State, Bool) {
        let request = job.request
        let disk = self.disk
        guard disk.swappableLower != nil, let layerPath = request.layerPath else {
            preconditionFailure("checked and resolved by start")
        }
        if isCurrentLower(layerPath) { return (.alreadyDone, false) }
        let fold = try LayerFold(
            topPath: disk.store.path, depth: request.depth, outputPath: layerPath,
            options: options)
        defer { fold.close() }
        let summary = try fold.build(
            rateLimitBytesPerSecond: request.rateBytesPerSecond,
            createdUnixSeconds: UInt64(max(0, time(nil))), progress: job.record)
        try job.checkNotCancelled()
        try live.whileChanging { current in
            // A live snapshot since the start made another disk the top: this fold is of the
            // chain under the frozen one.
            guard current === disk else {
                throw StoreError.invalidArgument(
                    "\(disk.store.path): a live snapshot came during the collapse; run it again")
            }
            try disk.replaceLower(withLayerAt: summary.outputPath, options: options)
        }
        return (.done, summary.reusedExisting)
    }
}
