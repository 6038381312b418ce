// A server killed (SIGKILL) at random instants of a live snapshot, under writers that flush
// every write: whatever the instant, the store (after the rerun `snapshot` asks for, if the
// layer was made) passes `check` and serves every flushed write (docs/FORMAT.md, "Snapshot").

import Foundation
import NBDClient
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Writers that flush every write, each writing fresh pairs of chunks; a kill ends them.
private final class FlushedLoad: @unchecked Sendable {
    let writerCount = 2
    private let lock = NSLock()
    /// Per writer: pairs flushed, and the pair written but not known flushed.
    private var flushed: [[WriteRecord]]
    private var inFlight: [Int: WriteRecord] = [:]
    private let finished = DispatchGroup()

    init() { flushed = Array(repeating: [], count: writerCount) }

    func start(socketPath: String, pairCount: Int) {
        for writer in 0..<writerCount {
            finished.enter()
            Thread.detachNewThread { [self] in
                defer { finished.leave() }
                guard let connection = try? NBDConnection(),
                    (try? connection.connect(unixSocketPath: socketPath)) != nil
                else { return }
                for sequence in 0..<(pairCount / writerCount) {
                    let record = WriteRecord(
                        sequence: sequence, pairIndex: writer + sequence * writerCount,
                        issuedSeconds: 0, acknowledgedSeconds: 0)
                    lock.withLock { inFlight[writer] = record }
                    do {
                        try connection.pwrite(
                            writeContent(writer: writer, sequence: sequence),
                            at: UInt64(record.pairIndex * 8192))
                        try connection.flush()
                    } catch { return }
                    lock.withLock {
                        flushed[writer].append(record)
                        inFlight[writer] = nil
                    }
                }
            }
        }
    }

    var leastCount: Int { lock.withLock { flushed.map(\.count).min() ?? 0 } }

    func wait() -> (flushed: [WriteRecord], inFlight: [WriteRecord]) {
        _ = finished.wait(timeout: .now() + 60)
        return lock.withLock { (flushed.flatMap { $0 }, Array(inFlight.values)) }
    }
}

@Suite("Live snapshot killed at random instants") struct LiveSnapshotCrashTests {
    @Test func serverKilledDuringLiveSnapshotLeavesACheckedStoreWithEveryFlushedWrite() throws {
        let diskByteCount = 8 << 20
        let trialCount = 12
        var outcomes: [String: Int] = [:]
        let seed = UInt64(time(nil))
        var generator = SplitMix64(seed: seed)
        for trial in 0..<trialCount {
            // Spread over the first 48 ms after the request (the snapshot takes tens of ms).
            let delayMicroseconds = UInt32(trial * 4000) + UInt32(generator.next() % 4000)
            let fixture = try LiveFixture(diskByteCount: diskByteCount)
            defer { fixture.server.kill() }
            let workspace = fixture.workspace
            let load = FlushedLoad()
            load.start(socketPath: fixture.server.socketPath, pairCount: diskByteCount / 8192)
            #expect(waitUntil(seconds: 60) { load.leastCount >= 20 })
            // The request straight on the control socket: a CLI that found the server gone
            // would snapshot offline instead.
            let control = try connectUnix(workspace.path("disk.cow.control"))
            defer { close(control) }
            let request = Array(
                "{\"version\":1,\"command\":\"snapshot\",\"args\":{\"layer\":\"\(workspace.path("layer.cow"))\"}}\n"
                    .utf8)
            _ = request.withUnsafeBytes { send(control, $0.baseAddress!, $0.count, 0) }
            usleep(delayMicroseconds)
            fixture.server.kill()
            let (flushed, inFlight) = load.wait()

            // The rerun rule: a LAYER that exists means a snapshot began; finish it.
            var outcome = "no layer"
            if access(workspace.path("layer.cow"), F_OK) == 0 {
                let rerun = try workspace.cowbd("snapshot", "disk.cow", "layer.cow", "--json")
                #expect(rerun.status == 0, "trial \(trial): rerun: \(rerun.standardError)")
                let result =
                    (try? JSONSerialization.jsonObject(with: Data(rerun.standardOutput.utf8)))
                    as? [String: Any]
                outcome =
                    result?["already_done"] as? Bool == true
                    ? "done before the kill"
                    : (result?["resumed"] as? Bool == true ? "finished by the rerun" : "rerun")
            }
            outcomes[outcome, default: 0] += 1
            let check = try workspace.cowbd("check", "disk.cow")
            #expect(check.status == 0, "trial \(trial) (\(outcome)): \(check.standardOutput)")

            // Every flushed write is there; an unflushed one is there or not, chunk by chunk;
            // nothing else was written.
            let disk = try workspace.servedDisk("disk.cow")
            var expected = [[UInt8]?](repeating: nil, count: diskByteCount / 4096)
            for record in flushed {
                let bytes = writeContent(writer: record.pairIndex % 2, sequence: record.sequence)
                expected[2 * record.pairIndex] = Array(bytes[..<4096])
                expected[2 * record.pairIndex + 1] = Array(bytes[4096...])
            }
            let zeros = [UInt8](repeating: 0, count: 4096)
            var unflushed: [Int: [UInt8]] = [:]
            for record in inFlight {
                let bytes = writeContent(writer: record.pairIndex % 2, sequence: record.sequence)
                unflushed[2 * record.pairIndex] = Array(bytes[..<4096])
                unflushed[2 * record.pairIndex + 1] = Array(bytes[4096...])
            }
            var mismatches: [Int] = []
            for chunk in 0..<expected.count {
                let actual = Array(disk[(chunk * 4096)..<((chunk + 1) * 4096)])
                if let wanted = expected[chunk] {
                    if actual != wanted { mismatches.append(chunk) }
                } else if actual != zeros && actual != unflushed[chunk] {
                    mismatches.append(chunk)
                }
            }
            #expect(
                mismatches.isEmpty,
                "seed \(seed) trial \(trial) (\(outcome), kill after \(delayMicroseconds) µs): chunks \(mismatches.prefix(8)) wrong"
            )
        }
        print("live snapshot kills (seed \(seed)): \(trialCount) trials: \(outcomes)")
    }
}
