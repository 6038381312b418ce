// Live management of a served store (docs/CONTROL.md): a checkpoint taken under a concurrent
// libnbd write load splits the acknowledged writes exactly, checked against a model and byte
// for byte; the dirty-bitmap contexts agree with the written chunks (Swift client and
// nbdinfo), also after a crash; the control socket refuses bad input and other users; a stale
// socket is replaced; the metrics endpoint parses and counts the requests made.

import Foundation
import NBDClient
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The bytes of write `sequence` of writer `writer`: two chunks, unlike any other write's.
func writeContent(writer: Int, sequence: Int) -> [UInt8] {
    var bytes = [UInt8](repeating: UInt8((writer * 31 + sequence) % 251 + 1), count: 8192)
    for (index, byte) in "w\(writer)s\(sequence)".utf8.enumerated() { bytes[index] = byte }
    return bytes
}

func nowSeconds() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

/// One acknowledged write of the load.
struct WriteRecord {
    var sequence: Int
    var pairIndex: Int
    var issuedSeconds: Double
    var acknowledgedSeconds: Double
}

/// Writers each writing fresh pairs of chunks (writer w: pairs w, w+W, w+2W, ...) one at a
/// time, so each chunk is written at most once and a checkpoint's dirty bitmap tells exactly
/// which writes landed after it.
final class WriteLoad: @unchecked Sendable {
    let writerCount: Int
    let pairCount: Int
    private let lock = NSLock()
    private var records: [[WriteRecord]]
    private var failures: [String] = []
    private var stopping = false
    private let finished = DispatchGroup()

    init(writerCount: Int, pairCount: Int) {
        self.writerCount = writerCount
        self.pairCount = pairCount
        records = Array(repeating: [], count: writerCount)
    }

    /// Writers `0..<writerCount` on threads of their own, each on its own connection.
    func start(_ connect: @escaping @Sendable () throws -> NBDConnection) {
        for writer in 0..<writerCount {
            finished.enter()
            Thread.detachNewThread { [self] in
                defer { finished.leave() }
                do {
                    let connection = try connect()
                    var sequence = 0
                    while !isStopping {
                        let pairIndex = writer + sequence * writerCount
                        guard pairIndex < pairCount else { break }
                        let issued = nowSeconds()
                        try connection.pwrite(
                            writeContent(writer: writer, sequence: sequence),
                            at: UInt64(pairIndex * 8192))
                        let record = WriteRecord(
                            sequence: sequence, pairIndex: pairIndex, issuedSeconds: issued,
                            acknowledgedSeconds: nowSeconds())
                        lock.withLock { records[writer].append(record) }
                        sequence += 1
                        usleep(300)
                    }
                } catch {
                    lock.withLock { failures.append("writer \(writer): \(error)") }
                }
            }
        }
    }

    private var isStopping: Bool { lock.withLock { stopping } }

    /// Writes acknowledged so far by the writer with the fewest.
    var leastCount: Int { lock.withLock { records.map(\.count).min() ?? 0 } }

    /// Writes issued after `seconds`, by the writer with the fewest (or pairs exhausted).
    func leastIssued(after seconds: Double) -> Int {
        lock.withLock {
            records.map { list in list.filter { $0.issuedSeconds > seconds }.count }.min() ?? 0
        }
    }

    func stop() -> (records: [[WriteRecord]], failures: [String]) {
        lock.withLock { stopping = true }
        _ = finished.wait(timeout: .now() + 60)
        return lock.withLock { (records, failures) }
    }
}

@Suite("Live management of a served store") struct LiveManagementTests {
    @Test func liveCheckpointUnderWriteLoadHoldsExactlyTheWritesBeforeIt() throws {
        let diskByteCount = 32 << 20
        let fixture = try LiveFixture(diskByteCount: diskByteCount)
        defer { fixture.server.kill() }
        let load = WriteLoad(writerCount: 3, pairCount: diskByteCount / 8192)
        let socketPath = fixture.server.socketPath
        load.start {
            let connection = try NBDConnection()
            try connection.connect(unixSocketPath: socketPath)
            return connection
        }
        #expect(waitUntil(seconds: 60) { load.leastCount >= 100 })
        let commandStart = nowSeconds()
        try fixture.workspace.succeed("checkpoint", "disk.cow", "cp")
        let commandEnd = nowSeconds()
        #expect(waitUntil(seconds: 60) { load.leastIssued(after: commandEnd) >= 100 })
        let (records, failures) = load.stop()
        #expect(failures.isEmpty, "\(failures)")

        // The dirty bitmap, by both clients.
        let dirty = try fixture.dirtyChunks(since: "cp")
        #expect(try fixture.dirtyChunksByNbdinfo(since: "cp") == dirty)

        // Each writer's writes split once: a prefix before the checkpoint, the rest after;
        // no write torn across it; acknowledged before the command: before; issued after: after.
        var writtenPairs = Set<Int>()
        var before: [WriteRecord] = []
        var latenciesDuring: [Double] = []
        var latenciesAll: [Double] = []
        for (writer, list) in records.enumerated() {
            var sawAfter = false
            for record in list {
                writtenPairs.insert(record.pairIndex)
                let first = dirty.contains(2 * record.pairIndex)
                #expect(first == dirty.contains(2 * record.pairIndex + 1), "write torn: \(record)")
                if sawAfter {
                    #expect(first, "writer \(writer) write \(record.sequence) reordered")
                }
                sawAfter = sawAfter || first
                if record.acknowledgedSeconds < commandStart {
                    #expect(!first, "acknowledged before the checkpoint but dirty: \(record)")
                }
                if record.issuedSeconds > commandEnd {
                    #expect(first, "issued after the checkpoint but clean: \(record)")
                }
                if !first { before.append(record) }
                let latency = record.acknowledgedSeconds - record.issuedSeconds
                latenciesAll.append(latency)
                if record.acknowledgedSeconds >= commandStart && record.issuedSeconds <= commandEnd
                {
                    latenciesDuring.append(latency)
                }
            }
        }
        let unwrittenDirty = dirty.filter { !writtenPairs.contains($0 / 2) }
        #expect(
            unwrittenDirty.isEmpty,
            "chunks never written are dirty: \(unwrittenDirty.sorted().prefix(5))")

        // Byte for byte: the model of the disk at the checkpoint has the checkpoint's
        // fingerprint, and it plus the diff since the checkpoint is the disk now.
        var model = [UInt8](repeating: 0, count: diskByteCount)
        for record in before {
            let writer = record.pairIndex % load.writerCount
            let bytes = writeContent(writer: writer, sequence: record.sequence)
            model.replaceSubrange(
                (record.pairIndex * 8192)..<((record.pairIndex + 1) * 8192), with: bytes)
        }
        var final = model
        for (writer, list) in records.enumerated() {
            for record in list {
                final.replaceSubrange(
                    (record.pairIndex * 8192)..<((record.pairIndex + 1) * 8192),
                    with: writeContent(writer: writer, sequence: record.sequence))
            }
        }
        #expect(try fixture.readDisk() == final, "the disk is not every acknowledged write")
        let workspace = fixture.workspace
        try Data(model).write(to: URL(fileURLWithPath: workspace.path("model.img")))
        try fixture.server.stop()
        let listing =
            try JSONSerialization.jsonObject(
                with: Data(try workspace.succeed("checkpoint", "disk.cow", "--json").utf8))
            as? [[String: Any]]
        try workspace.succeed("create", "model.cow", "--base", "model.img")
        let modelFingerprint = try workspace.json("info", "--json", "model.cow")["base_fingerprint"]
        #expect(listing?.first?["disk_fingerprint"] as? String == modelFingerprint as? String)
        try workspace.succeed("export-diff", "disk.cow", "since.diff", "--since", "cp")
        try workspace.succeed("import-diff", "since.diff", "model.img")
        #expect(
            workspace.contents("model.img") == Data(final), "model at checkpoint + diff != disk")

        let sorted = latenciesDuring.sorted()
        let sortedAll = latenciesAll.sorted()
        func p99(_ values: [Double]) -> Double {
            values.isEmpty ? 0 : values[min(values.count - 1, values.count * 99 / 100)]
        }
        print(
            "live checkpoint: command \(Int((commandEnd - commandStart) * 1000)) ms; writes during it: \(sorted.count), p99 \(String(format: "%.2f", p99(sorted) * 1000)) ms, max \(String(format: "%.2f", (sorted.last ?? 0) * 1000)) ms; all writes: \(sortedAll.count), p99 \(String(format: "%.2f", p99(sortedAll) * 1000)) ms; before/after: \(before.count)/\(sortedAll.count - before.count)"
        )
    }
}
