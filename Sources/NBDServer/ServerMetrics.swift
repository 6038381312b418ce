// The figures `serve --metrics` exposes in Prometheus text format and `info` shows live:
// requests, bytes and latency by command, errors by errno, connections, reads answered from
// the page cache, flushes, and the disk's copy-ups and written chunks. Recording a request
// adds to a few atomics and nothing else (no lock, no retain, no allocation); a scrape carries
// what they gathered into swift-prometheus's series, and renders the latency histogram itself
// (swift-prometheus's takes a lock and compares every bucket per request).

import CowStore
import CowSupport
import NBDProtocol
import Prometheus
import Synchronization

/// One server's metrics, in one registry.
/// `@unchecked Sendable`: `figures` is a fixed block of atomics, allocated once.
public final class ServerMetrics: @unchecked Sendable {
    /// Latency bucket bounds, 50 µs to 10 s.
    static let latencyBucketSeconds: [Double] = [
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1, 2.5, 10,
    ]
    /// The commands, by `Command.rawValue`, as they are labelled.
    static let commandNames = [
        "read", "write", "disconnect", "flush", "trim", "cache", "write_zeroes", "block_status",
    ]
    /// The errno names of `ErrorCode`, as they are labelled.
    static func errnoName(_ code: ErrorCode) -> String {
        switch code {
        case .perm: return "EPERM"
        case .io: return "EIO"
        case .noMemory: return "ENOMEM"
        case .invalid: return "EINVAL"
        case .noSpace: return "ENOSPC"
        case .overflow: return "EOVERFLOW"
        case .notSupported: return "ENOTSUP"
        case .shutdown: return "ESHUTDOWN"
        }
    }

    /// `cowbd_METRIC_UNIT` with its help line.
    static func name(_ metric: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "cowbd", metricName: metric, unitName: unit, helpText: help)
    }

    /// Latency bucket bounds in nanoseconds, for the per-request search.
    static let latencyBucketNanoseconds: [UInt64] = latencyBucketSeconds.map {
        UInt64($0 * 1e9)
    }
    /// Atomics per command in `figures`: requests, bytes, latency sum (ns), then one count per
    /// latency bucket (not cumulative) and one past the last bound.
    static let figuresPerCommand = 3 + latencyBucketSeconds.count + 1

    public let registry = PrometheusCollectorRegistry()
    private let requests: [Counter]
    private let bytes: [Counter]
    /// What the requests and bytes series were last brought up to, per command.
    private let requestsSeen: UnsafeMutablePointer<Atomic<UInt64>>
    private let bytesSeen: UnsafeMutablePointer<Atomic<UInt64>>
    /// What requests add to: `figuresPerCommand` atomics per command, in command order.
    private let figures: UnsafeMutablePointer<Atomic<UInt64>>
    /// `figuresPerCommand` and `latencyBucketNanoseconds`, kept here: a static is reached
    /// through its lazy initialiser's check on every use, four times a request.
    private let figureStride = ServerMetrics.figuresPerCommand
    private let bucketBoundsNanoseconds = ServerMetrics.latencyBucketNanoseconds
    private let errors: [UInt32: Counter]
    private let connectionsOpened: Counter
    private let connectionsOpen: Gauge
    private let cachedReads: Counter
    private let uncachedReads: Counter
    private let copyUps: Counter
    private let chunksWritten: Gauge
    private let copyUpsSeen = Atomic<UInt64>(0)
    /// What `info` shows, kept beside the registry (which only renders text).
    private let errorCount = Atomic<UInt64>(0)
    private let connectionCount = Atomic<Int>(0)
    private let cacheHitCount = Atomic<UInt64>(0)
    private let cacheMissCount = Atomic<UInt64>(0)
    private let cacheHitsSeen = Atomic<UInt64>(0)
    private let cacheMissesSeen = Atomic<UInt64>(0)

    public init() {
        let registry = registry
        requests = Self.commandNames.map {
            registry.makeCounter(
                descriptor: Self.name("requests", "total", "NBD requests completed, by command."),
                labels: [("command", $0)])
        }
        bytes = Self.commandNames.map {
            registry.makeCounter(
                descriptor: Self.name(
                    "request_bytes", "total", "Bytes covered by completed requests, by command."),
                labels: [("command", $0)])
        }
        let commandCount = Self.commandNames.count
        figures = .allocate(capacity: commandCount * Self.figuresPerCommand)
        for index in 0..<(commandCount * Self.figuresPerCommand) {
            (figures + index).initialize(to: Atomic(0))
        }
        requestsSeen = .allocate(capacity: commandCount)
        bytesSeen = .allocate(capacity: commandCount)
        for index in 0..<commandCount {
            (requestsSeen + index).initialize(to: Atomic(0))
            (bytesSeen + index).initialize(to: Atomic(0))
        }
        var errors: [UInt32: Counter] = [:]
        for code in [
            ErrorCode.perm, .io, .noMemory, .invalid, .noSpace, .overflow, .notSupported,
            .shutdown,
        ] {
            errors[code.rawValue] = registry.makeCounter(
                descriptor: Self.name(
                    "request_errors", "total", "Requests answered with an error, by NBD errno."),
                labels: [("errno", Self.errnoName(code))])
        }
        self.errors = errors
        connectionsOpened = registry.makeCounter(
            descriptor: Self.name("connections", "total", "Client connections accepted."))
        connectionsOpen = registry.makeGauge(
            descriptor: Self.name("connections", "", "Client connections open now."))
        cachedReads = registry.makeCounter(
            descriptor: Self.name(
                "read_cache_hits", "total",
                "Reads answered at once from memory (page cache) by the connection's reader."))
        uncachedReads = registry.makeCounter(
            descriptor: Self.name(
                "read_cache_misses", "total",
                "Reads that had to wait for a device, on a worker thread."))
        copyUps = registry.makeCounter(
            descriptor: Self.name(
                "copy_ups", "total", "Chunks built from the base plus part of a write or zero."))
        chunksWritten = registry.makeGauge(
            descriptor: Self.name("chunks_written", "", "Chunks the store holds now."))
    }

    deinit {
        let commandCount = Self.commandNames.count
        figures.deinitialize(count: commandCount * Self.figuresPerCommand)
        figures.deallocate()
        requestsSeen.deinitialize(count: commandCount)
        requestsSeen.deallocate()
        bytesSeen.deinitialize(count: commandCount)
        bytesSeen.deallocate()
    }

    /// Figure `slot` of command `commandIndex` (0 requests, 1 bytes, 2 latency sum in ns, then
    /// the buckets).
    private func figure(_ commandIndex: Int, _ slot: Int) -> UnsafeMutablePointer<Atomic<UInt64>> {
        figures + (commandIndex * figureStride + slot)
    }

    /// A request that started at `startNanoseconds` (`monotonicNanoseconds`) and is done now:
    /// `byteCount` is its length, `error` its NBD error if it failed (counted by errno as well
    /// as by command). Whole nanoseconds and wrapping adds: a checked add is a compare-and-swap
    /// loop, and this runs for every request (the sums would take centuries to wrap).
    func recordRequest(
        _ command: Command, byteCount: UInt64, startNanoseconds: UInt64, error: ErrorCode?
    ) {
        let now = monotonicNanoseconds()
        let nanoseconds = now > startNanoseconds ? now - startNanoseconds : 0
        var bucket = 0
        while bucket < bucketBoundsNanoseconds.count
            && nanoseconds > bucketBoundsNanoseconds[bucket]
        {
            bucket += 1
        }
        let index = Int(command.rawValue)
        figure(index, 0).pointee.wrappingAdd(1, ordering: .relaxed)
        figure(index, 1).pointee.wrappingAdd(byteCount, ordering: .relaxed)
        figure(index, 2).pointee.wrappingAdd(nanoseconds, ordering: .relaxed)
        figure(index, 3 + bucket).pointee.wrappingAdd(1, ordering: .relaxed)
        if let error {
            errors[error.rawValue]?.increment()
            errorCount.add(1, ordering: .relaxed)
        }
    }

    /// A request refused before it ran (bad range, flags, length): an error by errno.
    func recordRejection(_ error: ErrorCode) {
        errors[error.rawValue]?.increment()
        errorCount.add(1, ordering: .relaxed)
    }

    /// A read answered from memory (`true`) or sent to a worker.
    func recordReadCache(hit: Bool) {
        if hit {
            cacheHitCount.add(1, ordering: .relaxed)
        } else {
            cacheMissCount.add(1, ordering: .relaxed)
        }
    }

    func connectionOpened() {
        connectionsOpened.increment()
        connectionsOpen.set(Int64(connectionCount.add(1, ordering: .relaxed).newValue))
    }

    func connectionClosed() {
        connectionsOpen.set(Int64(connectionCount.subtract(1, ordering: .relaxed).newValue))
    }

    /// The text a scrape of /metrics returns, with the disk's own figures brought up to date.
    public func exposition(disk: VirtualDisk) -> [UInt8] {
        let copyUpCount = disk.copyUpCount
        let previous = copyUpsSeen.exchange(copyUpCount, ordering: .relaxed)
        if copyUpCount > previous { copyUps.increment(by: Int64(clamping: copyUpCount - previous)) }
        chunksWritten.set(Int64(clamping: disk.store.writtenChunkCount))
        catchUp(cachedReads, to: cacheHitCount, seen: cacheHitsSeen)
        catchUp(uncachedReads, to: cacheMissCount, seen: cacheMissesSeen)
        for index in Self.commandNames.indices {
            catchUp(requests[index], to: figure(index, 0), seen: requestsSeen + index)
            catchUp(bytes[index], to: figure(index, 1), seen: bytesSeen + index)
        }
        return registry.emitToBuffer() + latencyExposition()
    }

    /// Adds to `counter` what `figure` gained since the last scrape (scrapes may overlap: each
    /// takes its own part).
    private func catchUp(
        _ counter: Counter, to figure: UnsafeMutablePointer<Atomic<UInt64>>,
        seen: UnsafeMutablePointer<Atomic<UInt64>>
    ) {
        catchUp(counter, to: figure.pointee, seen: seen.pointee)
    }

    private func catchUp(
        _ counter: Counter, to figure: borrowing Atomic<UInt64>, seen: borrowing Atomic<UInt64>
    ) {
        let current = figure.load(ordering: .relaxed)
        let previous = seen.exchange(current, ordering: .relaxed)
        if current > previous { counter.increment(by: Int64(clamping: current - previous)) }
    }

    /// `cowbd_request_duration_seconds`, a histogram by command, in the text format
    /// swift-prometheus renders its own histograms in.
    private func latencyExposition() -> [UInt8] {
        let name = "cowbd_request_duration_seconds"
        var text =
            "# HELP \(name) Time from the start of a request's execution until its reply is ready, by command.\n"
            + "# TYPE \(name) histogram\n"
        for (index, command) in Self.commandNames.enumerated() {
            let label = "command=\"\(command)\""
            var cumulative: UInt64 = 0
            for (bucket, bound) in Self.latencyBucketSeconds.enumerated() {
                cumulative += figure(index, 3 + bucket).pointee.load(ordering: .relaxed)
                text += "\(name)_bucket{\(label),le=\"\(bound)\"} \(cumulative)\n"
            }
            cumulative += figure(index, 3 + Self.latencyBucketSeconds.count).pointee.load(
                ordering: .relaxed)
            let sumSeconds = Double(figure(index, 2).pointee.load(ordering: .relaxed)) / 1e9
            text += "\(name)_bucket{\(label),le=\"+Inf\"} \(cumulative)\n"
            text += "\(name)_sum{\(label)} \(sumSeconds)\n"
            text += "\(name)_count{\(label)} \(cumulative)\n"
        }
        return Array(text.utf8)
    }

    /// "key: value" rows for `info`: requests by command, errors, cache, connections.
    public func summaryRows(disk: VirtualDisk) -> [(String, String)] {
        let counts = Self.commandNames.indices.compactMap { index -> String? in
            let count = figure(index, 0).pointee.load(ordering: .relaxed)
            return count == 0 ? nil : "\(Self.commandNames[index]) \(count)"
        }
        return [
            ("requests", counts.isEmpty ? "none" : counts.joined(separator: ", ")),
            ("request errors", String(errorCount.load(ordering: .relaxed))),
            (
                "read cache",
                "\(cacheHitCount.load(ordering: .relaxed)) hits, "
                    + "\(cacheMissCount.load(ordering: .relaxed)) misses"
            ),
            ("copy-ups", String(disk.copyUpCount)),
        ]
    }
}
