// Many requests in flight on one connection (libnbd's async API), and two connections
// sharing the export.

import Foundation
import NBDClient
import NBDProtocol
import Testing

@Suite struct ConcurrencyTests {
    static let inFlightCount = 64
    static let completionTimeoutMilliseconds: Int32 = 10_000

    @Test func sixtyFourRequestsInFlightMatchTheModel() throws {
        try withTestServer { server in
            let connection = try server.connect()
            var model = DiskModel()
            var random = SplitMix64(seed: 60)
            // In-flight writes may complete in any order, so each round's writes use disjoint slots.
            let slotByteCount = model.byteCount / UInt64(Self.inFlightCount)
            for round in 0..<4 {
                var writes: Set<NBDCookie> = []
                for slotIndex in 0..<UInt64(Self.inFlightCount) {
                    let byteCount = UInt64.random(
                        in: 1...min(slotByteCount, 65_536), using: &random)
                    let byteOffset =
                        slotIndex * slotByteCount
                        + UInt64.random(in: 0...(slotByteCount - byteCount), using: &random)
                    let data = patternBytes(count: Int(byteCount), seed: random.next())
                    let flags: CommandFlags = random.next() % 4 == 0 ? .fua : []
                    writes.insert(try connection.aioPwrite(data, at: byteOffset, flags: flags))
                    model.write(data, at: byteOffset)
                }
                #expect(try connection.aioInFlightCount() == Self.inFlightCount)
                for _ in 0..<Self.inFlightCount {
                    let completion = try connection.waitForNextCompletion(
                        timeoutMilliseconds: Self.completionTimeoutMilliseconds)
                    #expect(writes.remove(completion.cookie) != nil)
                    if case .failure(let error) = completion.result {
                        Issue.record("round \(round): write failed: \(error)")
                    }
                }
                try readInFlight(connection, model: model, count: Self.inFlightCount, &random)
            }
            try expectExport(connection, matches: model)
        }
    }

    /// Writes of 256 KiB to almost a slot, several in flight and completing in any order (the
    /// FUA ones on pool workers, the others on the reader): first touches at unaligned
    /// offsets (copy-ups at both ends), then rewrites, with small writes between them, must
    /// all read back as the model says, on this connection and, after FLUSH, on another.
    @Test func largeWritesInFlightMatchTheModel() throws {
        try withTestServer { server in
            let connection = try server.connect()
            var model = DiskModel()
            var random = SplitMix64(seed: 62)
            let slotCount: UInt64 = 8
            let slotByteCount = model.byteCount / slotCount
            for round in 0..<3 {
                var writes: Set<NBDCookie> = []
                for slotIndex in 0..<slotCount {
                    let isLarge = slotIndex % 4 != 3
                    let byteCount =
                        isLarge
                        ? UInt64.random(in: (256 << 10)...(slotByteCount - 4096), using: &random)
                        : UInt64.random(in: 1...8192, using: &random)
                    let byteOffset =
                        slotIndex * slotByteCount
                        + UInt64.random(in: 0...(slotByteCount - byteCount), using: &random)
                    let data = patternBytes(count: Int(byteCount), seed: random.next())
                    let flags: CommandFlags = random.next() % 3 == 0 ? .fua : []
                    writes.insert(try connection.aioPwrite(data, at: byteOffset, flags: flags))
                    model.write(data, at: byteOffset)
                }
                for _ in 0..<slotCount {
                    let completion = try connection.waitForNextCompletion(
                        timeoutMilliseconds: Self.completionTimeoutMilliseconds)
                    #expect(writes.remove(completion.cookie) != nil)
                    if case .failure(let error) = completion.result {
                        Issue.record("round \(round): write failed: \(error)")
                    }
                }
                try expectExport(connection, matches: model)
            }
            try connection.flush()
            let other = try server.connect()
            try expectExport(other, matches: model)
        }
    }

    @Test func sixtyFourReadsStayInFlightUntilAThousandHaveCompleted() throws {
        try withTestServer { server in
            let connection = try server.connect()
            var random = SplitMix64(seed: 61)
            try readInFlight(connection, model: DiskModel(), count: 1000, &random)
        }
    }

    /// Keeps `inFlightCount` random reads queued until `count` have completed, comparing each
    /// with `model`.
    func readInFlight(
        _ connection: NBDConnection, model: DiskModel, count: Int, _ random: inout SplitMix64
    ) throws {
        var expected: [NBDCookie: (byteOffset: UInt64, bytes: [UInt8])] = [:]
        var queuedCount = 0
        var completedCount = 0
        while completedCount < count {
            while expected.count < Self.inFlightCount && queuedCount < count {
                let byteCount = Int.random(in: 1...100_000, using: &random)
                let byteOffset = UInt64.random(
                    in: 0...(model.byteCount - UInt64(byteCount)), using: &random)
                let cookie = try connection.aioPread(at: byteOffset, byteCount: byteCount)
                expected[cookie] = (byteOffset, model.read(at: byteOffset, byteCount: byteCount))
                queuedCount += 1
            }
            let completion = try connection.waitForNextCompletion(
                timeoutMilliseconds: Self.completionTimeoutMilliseconds)
            completedCount += 1
            guard let read = expected.removeValue(forKey: completion.cookie) else {
                Issue.record("completion of unknown \(completion.cookie)")
                continue
            }
            switch completion.result {
            case .success(let bytes):
                let difference = firstDifference(bytes, read.bytes, base: read.byteOffset)
                #expect(
                    difference == nil, "async read of \(read.bytes.count) at \(read.byteOffset)")
            case .failure(let error):
                Issue.record("async read at \(read.byteOffset) failed: \(error)")
            }
        }
    }

    @Test func writeFlushedOnOneConnectionIsReadOnAnother() throws {
        try withTestServer { server in
            let writer = try server.connect()
            let reader = try server.connect()
            #expect(try writer.canMultiConn())
            var model = DiskModel()
            // The reader looks first, so a stale cache on its side would show.
            try expectRead(reader, matches: model, at: 0, byteCount: 1 << 20)
            for (index, byteOffset) in [UInt64(5), 70_000, 1 << 19].enumerated() {
                let data = patternBytes(count: 30_000, seed: 70 + UInt64(index))
                try writer.pwrite(data, at: byteOffset)
                model.write(data, at: byteOffset)
            }
            try writer.zero(at: 200_000, byteCount: 10_000)
            model.zero(at: 200_000, byteCount: 10_000)
            try writer.flush()
            try expectRead(reader, matches: model, at: 0, byteCount: 1 << 20)
        }
    }
}
