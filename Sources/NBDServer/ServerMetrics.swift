// The figures `serve --metrics` exposes in Prometheus text format and `info` shows live:
// requests, bytes and latency by command, errors by errno, connections, reads answered from
// the page cache, flushes, and the disk's copy-ups and written chunks. Every series is made
// up front, so recording a request allocates nothing: counters are atomics, a histogram a
// short lock over fixed buckets (swift-prometheus).

import CowStore
import NBDProtocol
import Prometheus
import Synchronization

/// One server's metrics, in one registry.
public final class ServerMetrics: Sendable {
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

    public let registry = PrometheusCollectorRegistry()
    private let requests: [Counter]
    private let bytes: [Counter]
    private let latencies: [DurationHistogram]
    private let errors: [UInt32: Counter]
    private let connectionsOpened: Counter
    private let connectionsOpen: Gauge
    private let cachedReads: Counter
    private let uncachedReads: Counter
    private let copyUps: Counter
    private let chunksWritten: Gauge
    private let copyUpsSeen = Atomic<UInt64>(0)
    /// What `info` shows, kept beside the registry (which only renders text).
    private let requestCounts: [AtomicCount]
    private let errorCount = Atomic<UInt64>(0)
    private let connectionCount = Atomic<Int>(0)
    private let cacheHitCount = Atomic<UInt64>(0)
    private let cacheMissCount = Atomic<UInt64>(0)

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
        latencies = Self.commandNames.map {
            registry.makeDurationHistogram(
                descriptor: Self.name(
                    "request_duration", "seconds",
                    "Time from the start of a request's execution until its reply is ready, by command."
                ),
                labels: [("command", $0)],
                buckets: Self.latencyBucketSeconds.map { .nanoseconds(Int64($0 * 1e9)) })
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
        requestCounts = Self.commandNames.map { _ in AtomicCount() }
    }

    /// A request done in `seconds`: `byteCount` is its length, `error` its NBD error if it
    /// failed (counted by errno as well as by command).
    func recordRequest(_ command: Command, byteCount: UInt64, seconds: Double, error: ErrorCode?) {
        let index = Int(command.rawValue)
        requests[index].increment()
        bytes[index].increment(by: Int64(clamping: byteCount))
        latencies[index].record(.nanoseconds(Int64(seconds * 1e9)))
        requestCounts[index].value.add(1, ordering: .relaxed)
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
            cachedReads.increment()
            cacheHitCount.add(1, ordering: .relaxed)
        } else {
            uncachedReads.increment()
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
        return registry.emitToBuffer()
    }

    /// "key: value" rows for `info`: requests by command, errors, cache, connections.
    public func summaryRows(disk: VirtualDisk) -> [(String, String)] {
        let counts = Self.commandNames.indices.compactMap { index -> String? in
            let count = requestCounts[index].value.load(ordering: .relaxed)
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

/// A counter `info` reads back. A class, so an array can hold it (an Atomic cannot be copied).
private final class AtomicCount: Sendable {
    let value = Atomic<UInt64>(0)
}
