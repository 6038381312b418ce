// Live export-diff of a served store (docs/CONTROL.md, "Live export-diff"): writers keep
// rewriting their chunks while `export-diff --since A --to B` runs; the diff is the disk at
// one instant inside the command (a single cut of each writer's acknowledged writes), the
// checkpoint B was recorded at that same instant, and no request fails.

import Foundation
import NBDClient
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The bytes of write `sequence` of writer `writer` to pair `pairIndex`: unlike any other.
private func rewriteContent(writer: Int, sequence: Int, pairIndex: Int) -> [UInt8] {
    var bytes = [UInt8](repeating: UInt8((writer * 37 + sequence) % 251 + 1), count: 8192)
    for (index, byte) in "w\(writer)s\(sequence)p\(pairIndex)".utf8.enumerated() {
        bytes[index] = byte
        bytes[4096 + index] = byte
    }
    return bytes
}

/// Writers each rewriting random pairs of their own (writer w owns pairs w, w+W, ...), one
/// write at a time, so each pair's writes are ordered by one writer.
private final class RewriteLoad: @unchecked Sendable {
    let writerCount = 3
    let pairsPerWriter: Int
    private let lock = NSLock()
    private var records: [[WriteRecord]]
    private var failures: [String] = []
    private var stopping = false
    private let finished = DispatchGroup()

    init(pairsPerWriter: Int) {
        self.pairsPerWriter = pairsPerWriter
        records = Array(repeating: [], count: writerCount)
    }

    func start(socketPath: String) {
        for writer in 0..<writerCount {
            finished.enter()
            Thread.detachNewThread { [self] in
                defer { finished.leave() }
                var generator = SplitMix64(seed: UInt64(writer + 1))
                do {
                    let connection = try NBDConnection()
                    try connection.connect(unixSocketPath: socketPath)
                    var sequence = 0
                    while !lock.withLock({ stopping }) && sequence < 200_000 {
                        let pairIndex =
                            writer + Int(generator.next() % UInt64(pairsPerWriter)) * writerCount
                        let issued = nowSeconds()
                        try connection.pwrite(
                            rewriteContent(
                                writer: writer, sequence: sequence, pairIndex: pairIndex),
                            at: UInt64(pairIndex * 8192))
                        let record = WriteRecord(
                            sequence: sequence, pairIndex: pairIndex, issuedSeconds: issued,
                            acknowledgedSeconds: nowSeconds())
                        lock.withLock { records[writer].append(record) }
                        sequence += 1
                        usleep(200)
                    }
                } catch {
                    lock.withLock { failures.append("writer \(writer): \(error)") }
                }
            }
        }
    }

    var leastCount: Int { lock.withLock { records.map(\.count).min() ?? 0 } }

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

@Suite("Live export-diff of a served store") struct LiveExportDiffTests {
    @Test func liveExportDiffUnderRewritesIsTheDiskAtOneInstant() throws {
        let pairsPerWriter = 256
        let diskByteCount = 8 << 20
        let fixture = try LiveFixture(diskByteCount: diskByteCount)
        defer { fixture.server.kill() }
        let workspace = fixture.workspace
        try workspace.succeed("checkpoint", "disk.cow", "start")
        let load = RewriteLoad(pairsPerWriter: pairsPerWriter)
        load.start(socketPath: fixture.server.socketPath)
        #expect(waitUntil(seconds: 60) { load.leastCount >= 400 })
        let commandStart = nowSeconds()
        let result = try workspace.cowbd(
            "export-diff", "disk.cow", "live.diff", "--since", "start", "--to", "mid", "--summary")
        let commandEnd = nowSeconds()
        #expect(result.status == 0, "\(result.standardError)")
        #expect(waitUntil(seconds: 60) { load.leastIssued(after: commandEnd) >= 100 })
        let (records, failures) = load.stop()
        #expect(failures.isEmpty, "\(failures)")
        let final = try fixture.readDisk()

        // The diff onto the disk at "start" (zeros) is a state S; each writer's pairs in S
        // are its writes up to one cut, which lies inside the command.
        try Data(count: diskByteCount).write(to: URL(fileURLWithPath: workspace.path("s.img")))
        try workspace.succeed("import-diff", "live.diff", "s.img")
        let state = [UInt8](workspace.contents("s.img") ?? Data())
        var latenciesDuring: [Double] = []
        for (writer, list) in records.enumerated() {
            let earliest = list.filter { $0.acknowledgedSeconds < commandStart }.count
            let latest = list.filter { $0.issuedSeconds <= commandEnd }.count
            var model: [Int: Int] = [:]  // pair → sequence of its last write
            for record in list[..<earliest] { model[record.pairIndex] = record.sequence }
            func mismatches() -> Int {
                (0..<pairsPerWriter).reduce(0) { count, slot in
                    let pairIndex = writer + slot * load.writerCount
                    let expected =
                        model[pairIndex].map {
                            rewriteContent(writer: writer, sequence: $0, pairIndex: pairIndex)
                        } ?? [UInt8](repeating: 0, count: 8192)
                    return count
                        + (Array(state[(pairIndex * 8192)..<((pairIndex + 1) * 8192)]) == expected
                            ? 0 : 1)
                }
            }
            var cut: Int? = mismatches() == 0 ? earliest : nil
            var index = earliest
            while cut == nil && index < latest {
                model[list[index].pairIndex] = list[index].sequence
                index += 1
                if mismatches() == 0 { cut = index }
            }
            #expect(
                cut != nil,
                "writer \(writer): no cut of its writes \(earliest)...\(latest) is the exported state"
            )
            for record in list
            where record.acknowledgedSeconds >= commandStart && record.issuedSeconds <= commandEnd {
                latenciesDuring.append(record.acknowledgedSeconds - record.issuedSeconds)
            }
        }

        // The checkpoint recorded with it is the same instant: S + the diff since "mid" is
        // the disk now.
        try fixture.server.stop()
        try workspace.succeed("export-diff", "disk.cow", "rest.diff", "--since", "mid")
        try workspace.succeed("import-diff", "rest.diff", "s.img")
        #expect(
            workspace.contents("s.img") == Data(final), "exported state + diff since --to != disk")
        let check = try workspace.cowbd("check", "disk.cow")
        #expect(check.status == 0, "\(check.standardOutput)")
        let sorted = latenciesDuring.sorted()
        let p99 = sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, sorted.count * 99 / 100)]
        let summaryLine = result.standardError.split(separator: "\n").last ?? ""
        print(
            "live export-diff: command \(Int((commandEnd - commandStart) * 1000)) ms under 3 rewriting writers; writes during it: \(sorted.count), p99 \(String(format: "%.2f", p99 * 1000)) ms; \(summaryLine)"
        )
    }
}
